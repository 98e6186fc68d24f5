//! Engine behaviour through the real network path: one retry of an idempotent request whose
//! connect failed, and the client address taken from trusted proxies for rate limits.

mod common;
use common::*;

/// A loopback URL where nothing listens.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

async fn quiet_session(app: &TestApp, instance: &str) -> (Pipe, String) {
    let mut pipe = app.pipe().await;
    let sid = pipe.register("shop", instance).await;
    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
            .await,
        "OPTIONS_OK"
    );
    (pipe, sid)
}

#[tokio::test]
async fn an_idempotent_request_whose_connect_failed_is_retried_on_another_member() {
    let app = TestApp::start().await;
    let alive = Backend::start("alive").await;
    let dead = closed_url().await;
    let (mut a, sa) = quiet_session(&app, "shop-dead").await;
    a.add_route(&sa, "shop.example.com", "/", &dead).await;
    a.apply(&sa).await;
    let (mut b, sb) = quiet_session(&app, "shop-alive").await;
    b.add_route(&sb, "shop.example.com", "/", &alive.url())
        .await;
    b.apply(&sb).await;

    for i in 0..30 {
        let reply = get(app.proxy_addr(), "shop.example.com", &format!("/get/{i}")).await;
        assert_eq!(reply.status, 200, "GET {i} is retried on the live member");
        assert_eq!(reply.header("x-backend"), Some("alive"));
    }
    let mut posts = Vec::new();
    for i in 0..30 {
        let reply = http_request(
            app.proxy_addr(),
            "POST",
            Some("shop.example.com"),
            &format!("/post/{i}"),
            &[],
            "payload",
        )
        .await;
        posts.push(reply.status);
    }
    assert!(
        posts.contains(&502),
        "a POST with a body is never sent twice: {posts:?}"
    );
    assert!(posts.contains(&200), "{posts:?}");
    let stats = a.cmd(&format!("STATS_GET|{sa}|r1")).await;
    let stats = payload(&stats, "STATS_OK");
    assert!(
        stats["status_codes"]["502"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
}

#[tokio::test]
async fn rate_limits_use_the_forwarded_address_only_from_trusted_proxies() {
    let trusted = TestApp::start_with(|c| {
        c.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    })
    .await;
    let untrusted = TestApp::start().await;
    let backend = Backend::start("b").await;
    for app in [&trusted, &untrusted] {
        let (mut pipe, sid) = quiet_session(app, "shop-1").await;
        pipe.add_route(&sid, "shop.example.com", "/", &backend.url())
            .await;
        assert_eq!(
            pipe.cmd(&format!("RATELIMIT_SET|{sid}|ALL|1|1h")).await,
            "RATELIMIT_OK"
        );
        pipe.apply(&sid).await;
        let from = |client: &'static str| {
            let addr = app.proxy_addr();
            async move {
                http_request(
                    addr,
                    "GET",
                    Some("shop.example.com"),
                    "/",
                    &[("x-forwarded-for", client)],
                    "",
                )
                .await
                .status
            }
        };
        assert_eq!(from("203.0.113.1").await, 200);
        let second = from("203.0.113.2").await;
        if std::ptr::eq(app, &trusted) {
            assert_eq!(
                second, 200,
                "another client behind a trusted proxy has its own bucket"
            );
            assert_eq!(
                from("203.0.113.1").await,
                429,
                "the first client's bucket is empty"
            );
        } else {
            assert_eq!(
                second, 429,
                "an untrusted peer's X-Forwarded-For is ignored"
            );
        }
    }
}

/// Sends a chunked POST of `chunks` × 1 KiB straight over TCP; returns the status line.
async fn chunked_post(proxy: std::net::SocketAddr, chunks: usize) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let head =
        "POST /upload HTTP/1.1\r\nHost: shop.example.com\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
    for _ in 0..chunks {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    tokio::time::timeout(REPLY_WAIT, reader.read_line(&mut status))
        .await
        .expect("status in time")
        .expect("read status");
    status.trim_end().to_string()
}

#[tokio::test]
async fn a_streamed_body_past_max_body_size_gets_413() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let (mut pipe, sid) = quiet_session(&app, "shop-1").await;
    let rid = pipe
        .add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|{rid}|max_body_size|2K"))
            .await,
        "OPTIONS_OK"
    );
    pipe.apply(&sid).await;
    assert!(chunked_post(app.proxy_addr(), 2)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(
        chunked_post(app.proxy_addr(), 6)
            .await
            .starts_with("HTTP/1.1 413"),
        "announced or not, a body over the limit is refused"
    );
    let stats = payload(
        &pipe.cmd(&format!("STATS_GET|{sid}|{rid}")).await,
        "STATS_OK",
    );
    assert_eq!(stats["status_codes"]["413"], 1, "{stats}");
    assert_eq!(
        stats["errors"], 0,
        "the client's fault is not a backend error"
    );
}
