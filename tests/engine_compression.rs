//! The `compression` option (§3.10 step 8): br or gzip by `Accept-Encoding` for compressible
//! bodies of at least 1 KiB, never for encoded, small, opaque or `no-transform` responses;
//! `bytes_sent` counts what the client received.

mod common;
use common::*;

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// One request through the proxy; returns status, headers and the raw body bytes.
async fn fetch(
    proxy: std::net::SocketAddr,
    path: &str,
    accept_encoding: Option<&str>,
) -> (u16, http::HeaderMap, Bytes) {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", "zip.example.com");
    if let Some(ae) = accept_encoding {
        req = req.header("accept-encoding", ae);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

fn text(len: usize) -> String {
    "switchyard compresses text. ".repeat(len / 28 + 1)[..len].to_string()
}

#[tokio::test]
async fn compressible_bodies_are_compressed_as_the_client_accepts() {
    let app = TestApp::start().await;
    let backend = Backend::start_with("b", |req| {
        let (ct, body, extra) = match req.uri.as_str() {
            "/small" => ("text/plain", text(100), None),
            "/png" => ("image/png", text(4000), None),
            "/keep" => (
                "text/html",
                text(4000),
                Some(("cache-control", "no-transform")),
            ),
            "/json" => ("application/json", format!("[\"{}\"]", text(4000)), None),
            _ => ("text/plain; charset=utf-8", text(4000), None),
        };
        let mut headers = vec![("content-type".to_string(), ct.to_string())];
        if let Some((k, v)) = extra {
            headers.push((k.to_string(), v.to_string()));
        }
        Some((200, headers, body))
    })
    .await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("zip", "zip-1").await;
    let rid = pipe
        .add_route(&sid, "zip.example.com", "/", &backend.url())
        .await;
    pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
        .await;
    pipe.apply(&sid).await;

    let (_, h, body) = fetch(app.proxy_addr(), "/text", Some("gzip")).await;
    assert!(
        h.get("content-encoding").is_none(),
        "compression is off by default"
    );
    assert_eq!(body.len(), 4000);

    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|{rid}|compression|on"))
            .await,
        "OPTIONS_OK"
    );
    pipe.apply(&sid).await;
    let before = payload(
        &pipe.cmd(&format!("STATS_GET|{sid}|{rid}")).await,
        "STATS_OK",
    )["bytes_sent"]
        .as_u64()
        .unwrap_or(0);
    let (status, h, body) = fetch(app.proxy_addr(), "/text", Some("gzip")).await;
    assert_eq!(status, 200);
    assert_eq!(
        h.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert!(
        body.len() < 1000,
        "4000 repetitive bytes shrink: {}",
        body.len()
    );
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut plain)
        .expect("valid gzip");
    assert_eq!(plain, text(4000));
    let after = payload(
        &pipe.cmd(&format!("STATS_GET|{sid}|{rid}")).await,
        "STATS_OK",
    )["bytes_sent"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(
        after - before,
        body.len() as u64,
        "bytes_sent counts the compressed bytes"
    );

    let (_, h, _) = fetch(app.proxy_addr(), "/json", Some("br, gzip;q=0.5")).await;
    assert_eq!(
        h.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"br"[..])
    );
    for (path, why) in [
        ("/small", "under 1 KiB"),
        ("/png", "not a compressible type"),
        ("/keep", "no-transform"),
    ] {
        let (_, h, _) = fetch(app.proxy_addr(), path, Some("gzip")).await;
        assert!(h.get("content-encoding").is_none(), "{path}: {why}");
    }
    let (_, h, body) = fetch(app.proxy_addr(), "/text", None).await;
    assert!(
        h.get("content-encoding").is_none(),
        "the client accepts no encoding"
    );
    assert_eq!(body.len(), 4000);
}
