//! Maintenance over real TCP: MAINT_ENTER/MAINT_EXIT replies and completions, page probing and its 8 s bound, supersession, targets, MAINT_STATUS and the proxy's maintenance responses (PROTOCOL §4.28–§4.30, §5.1, §6).

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh app, a backend, and a session serving `maint.example.com` `/` from it.
async fn setup() -> (TestApp, Backend, Pipe, String, String) {
    let app = TestApp::start().await;
    let backend = Backend::start("main").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "maint", "maint-1").await;
    let rid = pipe
        .add_route(&sid, "maint.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    (app, backend, pipe, sid, rid)
}

async fn get_json(addr: SocketAddr, host: &str, path: &str) -> Reply {
    http_request(
        addr,
        "GET",
        Some(host),
        path,
        &[("accept", "application/json")],
        "",
    )
    .await
}

/// The built-in maintenance 503 (§4.28, §3.10 built-in pages).
fn assert_builtin_maintenance(reply: &Reply) {
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        reply.body, r#"{"code":"unavailable","message":"maintenance"}"#,
        "{reply:?}"
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    assert_eq!(reply.header("retry-after"), Some("300"), "{reply:?}");
    assert_eq!(
        reply.header("x-maintenance-mode"),
        Some("true"),
        "{reply:?}"
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
}

/// `http://127.0.0.1:<port>` where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Sends a maintenance command, asserts its first reply is `ack` and returns when it was read.
async fn send_acked(pipe: &mut Pipe, line: &str, ack: &str) -> Instant {
    pipe.send(line).await;
    let reply = pipe.recv().await;
    assert_eq!(reply, ack, "reply to {line}");
    Instant::now()
}

/// MAINT_ENTER/EXIT whose completion must be `MAINT_OK|<target>` right away (built-in page, or
/// backends that answer).
async fn maint_ok(pipe: &mut Pipe, line: &str, target: &str) {
    send_acked(pipe, line, "ACK").await;
    let done = pipe.try_recv(Duration::from_secs(9)).await;
    assert_eq!(
        done,
        Some(format!("MAINT_OK|{target}")),
        "completion of {line}"
    );
}

async fn maint_status(pipe: &mut Pipe, sid: &str) -> Value {
    payload(
        &pipe.cmd(&format!("MAINT_STATUS|{sid}")).await,
        "MAINT_STATUS_OK",
    )
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Seconds since the epoch of an RFC 3339 `YYYY-MM-DDTHH:MM:SSZ` timestamp (§1.4).
fn unix_of(ts: &str) -> i64 {
    let b = ts.as_bytes();
    assert!(
        ts.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z',
        "not a whole-second UTC RFC 3339 timestamp: {ts}"
    );
    let n = |r: std::ops::Range<usize>| -> i64 {
        ts[r]
            .parse()
            .unwrap_or_else(|_| panic!("bad timestamp {ts}"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    days * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

fn assert_recent(ts: &Value) {
    let ts = ts
        .as_str()
        .unwrap_or_else(|| panic!("timestamp expected, got {ts}"));
    let delta = unix_of(ts) - unix_now();
    assert!((-5..=1).contains(&delta), "{ts} is not now");
}

/// A minimal HTTP/1.1 server on `listener` answering every request with 200 `late page`.
async fn serve_page(listener: tokio::net::TcpListener) {
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nlate page",
                )
                .await;
            let _ = stream.shutdown().await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// MAINT_ENTER (§4.28)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn maint_enter_with_the_builtin_page_acks_confirms_and_serves_the_maintenance_503() {
    let (app, backend, mut pipe, sid, _) = setup().await;
    let proxy = app.proxy_addr();
    send_acked(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|"), "ACK").await;
    assert_eq!(pipe.recv().await, "MAINT_OK|ALL");
    assert_eq!(
        pipe.try_recv(Duration::from_millis(300)).await,
        None,
        "exactly one completion"
    );

    let seen = backend.count();
    // In place before the ACK was written (§1.5): no waiting.
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/shop").await);
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/").await);
    assert_eq!(
        backend.count(),
        seen,
        "maintenance requests never reach the backend"
    );

    // The HTML form is the same response with an HTML body.
    let html = get(proxy, "maint.example.com", "/").await;
    assert_eq!(html.status, 503);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(html.header("x-maintenance-mode"), Some("true"));
    assert_eq!(html.header("retry-after"), Some("300"));

    // page_url absent is the same as empty.
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL"), "ALL").await;
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/").await);
}

#[tokio::test]
async fn maintenance_responses_carry_route_headers_but_keep_the_proxy_cache_control() {
    let (app, _backend, mut pipe, sid, _) = setup().await;
    let proxy = app.proxy_addr();
    expect(
        &mut pipe,
        &format!("HEADERS_SET|{sid}|ALL|X-Team|blue"),
        "HEADERS_OK",
    )
    .await;
    expect(
        &mut pipe,
        &format!("HEADERS_SET|{sid}|ALL|Cache-Control|max-age=60"),
        "HEADERS_OK",
    )
    .await;
    pipe.apply(&sid).await;
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|"), "ALL").await;
    let reply = get_json(proxy, "maint.example.com", "/").await;
    assert_builtin_maintenance(&reply);
    assert_eq!(reply.header("x-team"), Some("blue"), "{reply:?}");
}

#[tokio::test]
async fn maint_enter_with_a_running_page_forwards_requests_to_it() {
    let (app, backend, mut pipe, sid, _) = setup().await;
    let proxy = app.proxy_addr();
    let page = Backend::start("page").await;
    let page_url = format!("{}/maint/", page.url());
    let acked = send_acked(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|ALL|{page_url}"),
        "ACK",
    )
    .await;
    assert_eq!(pipe.recv().await, "MAINT_OK|ALL");
    assert!(acked.elapsed() < Duration::from_secs(8));
    assert!(page.count() >= 1, "the page was probed before MAINT_OK");

    let seen = backend.count();
    let reply = get(proxy, "maint.example.com", "/items/7?color=red").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-backend"), Some("page"));
    assert_eq!(reply.header("x-maintenance-mode"), Some("true"));
    assert_eq!(reply.body, "page /maint/items/7?color=red");
    assert_eq!(backend.count(), seen);

    let post = http_request(
        proxy,
        "POST",
        Some("maint.example.com"),
        "/form",
        &[],
        "a=1",
    )
    .await;
    assert_eq!(post.status, 200, "{post:?}");
    let last = page.seen().pop().expect("the page saw the POST");
    assert_eq!(
        (last.method.as_str(), last.uri.as_str()),
        ("POST", "/maint/form")
    );
    assert_eq!(&last.body[..], b"a=1");
}

#[tokio::test]
async fn an_unreachable_page_times_out_after_8_seconds_and_maintenance_stays_entered() {
    let (app, _backend, mut pipe, sid, _) = setup().await;
    let proxy = app.proxy_addr();
    let page = closed_port_url();
    let acked = send_acked(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|{page}"), "ACK").await;
    // In effect before the completion: the page fails, so the built-in page answers.
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/").await);

    let done = pipe.try_recv(Duration::from_secs(10)).await;
    let elapsed = acked.elapsed();
    assert_eq!(
        done.as_deref(),
        Some("ERROR|timeout waiting for maintenance page to become reachable")
    );
    assert!(
        // Attempts start at 0, 1, … 7 s; once the one at 7 s has failed nothing can succeed
        // before the 8 s bound, so the error may come from then on.
        elapsed >= Duration::from_millis(6500) && elapsed <= Duration::from_secs(9),
        "completion after {elapsed:?}, expected 7–8 s"
    );
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/").await);
    let status = maint_status(&mut pipe, &sid).await;
    assert_eq!(status["all"], true, "{status}");
    assert_eq!(status["maintenance_backend"], page.as_str(), "{status}");
}

#[tokio::test]
async fn a_page_answering_500_is_probed_once_a_second_and_never_served() {
    let (app, _backend, mut pipe, sid, _) = setup().await;
    let proxy = app.proxy_addr();
    let page = Backend::start_with("broken", |_| Some((500, vec![], "broken page".into()))).await;
    let acked = send_acked(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|ALL|{}", page.url()),
        "ACK",
    )
    .await;
    let done = pipe.try_recv(Duration::from_secs(10)).await;
    let elapsed = acked.elapsed();
    assert_eq!(
        done.as_deref(),
        Some("ERROR|timeout waiting for maintenance page to become reachable"),
        "a status >= 500 is not reachable"
    );
    assert!(
        elapsed >= Duration::from_millis(6500) && elapsed <= Duration::from_secs(9),
        "{elapsed:?}"
    );
    let probes = page.count();
    assert!(
        (7..=9).contains(&probes),
        "one attempt per second for 8 s, saw {probes}"
    );
    // A failing page falls back to the built-in maintenance page.
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/").await);
}

#[tokio::test]
async fn a_page_that_comes_up_late_confirms_with_maint_ok() {
    let (app, _backend, mut pipe, sid, _) = setup().await;
    let proxy = app.proxy_addr();
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = reserved.local_addr().expect("addr").port();
    drop(reserved);
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the reserved port");
        serve_page(listener).await;
    });

    let acked = send_acked(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|ALL|http://127.0.0.1:{port}"),
        "ACK",
    )
    .await;
    let done = pipe.try_recv(Duration::from_secs(9)).await;
    let elapsed = acked.elapsed();
    assert_eq!(done.as_deref(), Some("MAINT_OK|ALL"));
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(8),
        "MAINT_OK after {elapsed:?}"
    );
    let reply = get(proxy, "maint.example.com", "/").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "late page"));
    assert_eq!(reply.header("x-maintenance-mode"), Some("true"));
    server.abort();
}

#[tokio::test]
async fn a_newer_maintenance_command_supersedes_a_pending_completion() {
    let (app, _backend, mut pipe, sid, rid) = setup().await;
    let dead = closed_port_url();

    // Same connection, tagged: ACK of the newer one, then the superseded error, then its MAINT_OK.
    let started = Instant::now();
    send_acked(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|txn:a|ALL|{dead}"),
        "ACK|txn:a",
    )
    .await;
    pipe.send(&format!("MAINT_ENTER|{sid}|txn:b|ALL|")).await;
    assert_eq!(pipe.recv().await, "ACK|txn:b");
    assert_eq!(
        pipe.recv().await,
        "ERROR|txn:a|superseded by a newer maintenance command"
    );
    assert_eq!(pipe.recv().await, "MAINT_OK|txn:b|ALL");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "superseded at once"
    );

    // MAINT_EXIT supersedes too.
    send_acked(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|txn:c|ALL|{dead}"),
        "ACK|txn:c",
    )
    .await;
    pipe.send(&format!("MAINT_EXIT|{sid}|txn:d|ALL")).await;
    assert_eq!(pipe.recv().await, "ACK|txn:d");
    assert_eq!(
        pipe.recv().await,
        "ERROR|txn:c|superseded by a newer maintenance command"
    );
    assert_eq!(
        pipe.try_recv(Duration::from_secs(9)).await.as_deref(),
        Some("MAINT_OK|txn:d|ALL")
    );

    // Across connections: the pending one's connection gets the error at once.
    let started = Instant::now();
    send_acked(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|{dead}"), "ACK").await;
    let mut other = app.pipe().await;
    maint_ok(&mut other, &format!("MAINT_ENTER|{sid}|{rid}|"), &rid).await;
    let line = pipe.try_recv(Duration::from_secs(4)).await;
    assert_eq!(
        line.as_deref(),
        Some("ERROR|superseded by a newer maintenance command")
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(
        pipe.try_recv(Duration::from_millis(300)).await,
        None,
        "one completion per ACK"
    );
}

// ---------------------------------------------------------------------------------------------
// MAINT_EXIT (§4.29)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn maint_exit_probes_the_backend_then_confirms_and_traffic_flows_again() {
    let app = TestApp::start().await;
    let backend = Backend::start("main").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "maint", "maint-1").await;
    pipe.add_route(
        &sid,
        "maint.example.com",
        "/",
        &format!("{}/base", backend.url()),
    )
    .await;
    pipe.apply(&sid).await;
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|"), "ALL").await;
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/").await);
    let before = backend.count();

    let acked = send_acked(&mut pipe, &format!("MAINT_EXIT|{sid}|ALL"), "ACK").await;
    // Left at once, before the ACK (§4.29).
    let reply = get(proxy, "maint.example.com", "/x").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "main /base/x"));
    assert_eq!(pipe.recv().await, "MAINT_OK|ALL");
    assert!(acked.elapsed() < Duration::from_secs(8));
    let probes: Vec<String> = backend.seen()[before..]
        .iter()
        .filter(|r| r.uri != "/base/x")
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    assert!(!probes.is_empty(), "MAINT_EXIT probed the backend");
    assert!(
        probes.iter().all(|p| p == "GET /base"),
        "probe is a GET of the backend URL: {probes:?}"
    );

    let status = maint_status(&mut pipe, &sid).await;
    assert_eq!(
        status,
        json!({"in_maintenance":[],"all":false,"maintenance_backend":null,"entered_at":null,"routes":[]})
    );
}

#[tokio::test]
async fn maint_exit_with_an_unreachable_backend_times_out_after_8_seconds() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "maint", "maint-1").await;
    let rid = pipe
        .add_route(&sid, "down.example.com", "/", &closed_port_url())
        .await;
    pipe.apply(&sid).await;
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|{rid}|"), &rid).await;
    let acked = send_acked(&mut pipe, &format!("MAINT_EXIT|{sid}|{rid}"), "ACK").await;
    let done = pipe.try_recv(Duration::from_secs(10)).await;
    let elapsed = acked.elapsed();
    assert_eq!(
        done.as_deref(),
        Some("ERROR|timeout waiting for backend to become reachable")
    );
    assert!(
        elapsed >= Duration::from_millis(6500) && elapsed <= Duration::from_secs(9),
        "completion after {elapsed:?}, expected 7–8 s"
    );
    // The exit itself happened.
    assert_eq!(
        maint_status(&mut pipe, &sid).await["in_maintenance"],
        json!([])
    );
}

// ---------------------------------------------------------------------------------------------
// Targets (§6)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_target_form_resolves_to_the_documented_routes() {
    let app = TestApp::start().await;
    let backend = Backend::start("main").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "shop", "shop-1").await;
    let r1 = pipe
        .add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    let r2 = pipe
        .add_route(&sid, "shop.example.com", "/api", &backend.url())
        .await;
    let r3 = pipe
        .add_route(&sid, "admin.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;

    let cases: Vec<(String, Vec<&str>)> = vec![
        ("ALL".into(), vec![&r1, &r2, &r3]),
        (format!("{r2},{r3}"), vec![&r2, &r3]),
        ("/api".into(), vec![&r2]),
        ("/api/".into(), vec![&r2]),
        ("/".into(), vec![&r1, &r3]),
        ("admin.example.com".into(), vec![&r3]),
        ("Admin.Example.COM.".into(), vec![&r3]),
        ("shop.example.com/api".into(), vec![&r2]),
        ("shop.example.com".into(), vec![&r1, &r2]),
        (format!("{r1}, /api ,,"), vec![&r1, &r2]),
    ];
    for (target, want) in cases {
        maint_ok(
            &mut pipe,
            &format!("MAINT_ENTER|{sid}|{target}|"),
            target.trim(),
        )
        .await;
        let status = maint_status(&mut pipe, &sid).await;
        assert_eq!(
            status["in_maintenance"],
            json!(want),
            "target {target:?}: {status}"
        );
        assert_eq!(
            status["all"],
            target == "ALL",
            "target {target:?}: {status}"
        );
        maint_ok(&mut pipe, &format!("MAINT_EXIT|{sid}|ALL"), "ALL").await;
        assert_eq!(
            maint_status(&mut pipe, &sid).await["in_maintenance"],
            json!([])
        );
    }

    // The proxy follows the resolution: /api in maintenance, / still served.
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|/api|"), "/api").await;
    assert_builtin_maintenance(&get_json(proxy, "shop.example.com", "/api/x").await);
    assert_eq!(get(proxy, "shop.example.com", "/other").await.status, 200);
    assert_eq!(get(proxy, "admin.example.com", "/api").await.status, 200);
    maint_ok(&mut pipe, &format!("MAINT_EXIT|{sid}|/api"), "/api").await;
    assert_eq!(get(proxy, "shop.example.com", "/api/x").await.status, 200);
}

#[tokio::test]
async fn bad_targets_are_refused_and_change_nothing() {
    let app = TestApp::start().await;
    let backend = Backend::start("main").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "shop", "shop-1").await;
    let r1 = pipe
        .add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    let mut other = app.pipe().await;
    let other_sid = register_quiet(&mut other, "else", "else-1").await;
    let foreign = other
        .add_route(&other_sid, "else.example.com", "/", &backend.url())
        .await;

    for (line, want) in [
        (
            format!("MAINT_ENTER|{sid}|/missing|"),
            "ERROR|unknown target: /missing".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}|{r1},/missing|"),
            "ERROR|unknown target: /missing".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}|r999|"),
            "ERROR|unknown target: r999".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}|nowhere.example.com|"),
            "ERROR|unknown target: nowhere.example.com".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}|shop.example.com/nope|"),
            "ERROR|unknown target: shop.example.com/nope".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}||"),
            "ERROR|invalid format".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}| , |"),
            "ERROR|invalid format".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}"),
            "ERROR|invalid format".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}|{foreign}|"),
            format!("ERROR|permission denied: route {foreign} belongs to another session"),
        ),
        (
            format!("MAINT_ENTER|{sid}|ALL|ftp://x.example.com/"),
            "ERROR|invalid maintenance url".to_string(),
        ),
        (
            format!("MAINT_ENTER|{sid}|ALL|not a url"),
            "ERROR|invalid maintenance url".to_string(),
        ),
        (
            format!("MAINT_EXIT|{sid}|/missing"),
            "ERROR|unknown target: /missing".to_string(),
        ),
        (
            format!("MAINT_EXIT|{sid}|"),
            "ERROR|invalid format".to_string(),
        ),
        (
            format!("MAINT_EXIT|{sid}|{foreign}"),
            format!("ERROR|permission denied: route {foreign} belongs to another session"),
        ),
        (
            format!("MAINT_ENTER|{sid}|txn:t1|/missing|"),
            "ERROR|txn:t1|unknown target: /missing".to_string(),
        ),
    ] {
        expect(&mut pipe, &line, &want).await;
    }
    // No completion follows an error reply, and nothing entered maintenance.
    assert_eq!(pipe.try_recv(Duration::from_millis(300)).await, None);
    assert_eq!(
        maint_status(&mut pipe, &sid).await,
        json!({"in_maintenance":[],"all":false,"maintenance_backend":null,"entered_at":null,"routes":[]})
    );
    assert_eq!(
        maint_status(&mut other, &other_sid).await["in_maintenance"],
        json!([])
    );
}

#[tokio::test]
async fn an_ack_line_after_maint_ok_gets_no_reply() {
    let (_app, _backend, mut pipe, sid, _) = setup().await;
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|"), "ALL").await;
    pipe.send("ACK").await;
    pipe.send("ACK|whatever|x").await;
    expect(&mut pipe, &format!("PING|{sid}"), "PONG").await;
    maint_ok(&mut pipe, &format!("MAINT_EXIT|{sid}|ALL"), "ALL").await;
    pipe.send("ACK").await;
    expect(&mut pipe, &format!("PING|{sid}"), "PONG").await;
}

// ---------------------------------------------------------------------------------------------
// MAINT_STATUS and ROUTE_LIST (§4.30, §4.10)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn maint_status_reports_every_key_in_order() {
    let app = TestApp::start().await;
    let backend = Backend::start("main").await;
    let page = Backend::start("page").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "shop", "shop-1").await;
    let r1 = pipe
        .add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    let r2 = pipe
        .add_route(&sid, "shop.example.com", "/api", &backend.url())
        .await;
    pipe.apply(&sid).await;

    let empty = pipe.cmd(&format!("MAINT_STATUS|{sid}")).await;
    assert_eq!(
        empty,
        r#"MAINT_STATUS_OK|{"in_maintenance":[],"all":false,"maintenance_backend":null,"entered_at":null,"routes":[]}"#
    );

    let page_url = format!("{}/", page.url());
    maint_ok(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|{r2}|{page_url}"),
        &r2,
    )
    .await;
    let status = maint_status(&mut pipe, &sid).await;
    assert_eq!(
        keys(&status),
        [
            "in_maintenance",
            "all",
            "maintenance_backend",
            "entered_at",
            "routes"
        ]
    );
    assert_eq!(status["in_maintenance"], json!([r2]));
    assert_eq!(status["all"], false);
    assert_eq!(status["maintenance_backend"], page_url.as_str());
    assert_recent(&status["entered_at"]);
    let routes = status["routes"].as_array().expect("routes array");
    assert_eq!(routes.len(), 1, "{status}");
    assert_eq!(
        keys(&routes[0]),
        ["route_id", "maintenance_backend", "entered_at"]
    );
    assert_eq!(routes[0]["route_id"], r2.as_str());
    assert_eq!(routes[0]["maintenance_backend"], page_url.as_str());
    assert_eq!(routes[0]["entered_at"], status["entered_at"]);

    // ALL with the built-in page: the most recent entry is reported; "" = built-in.
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|"), "ALL").await;
    let status = maint_status(&mut pipe, &sid).await;
    assert_eq!(status["in_maintenance"], json!([r1, r2]));
    assert_eq!(status["all"], true);
    assert_eq!(status["maintenance_backend"], "");
    let routes = status["routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["route_id"], r1.as_str());
    assert_eq!(routes[0]["maintenance_backend"], "");
    assert_eq!(
        routes[1]["maintenance_backend"], "",
        "entering again updates the page URL"
    );

    let info = payload(
        &pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(info["in_maintenance"], true);
}

#[tokio::test]
async fn route_list_shows_in_maintenance_and_later_routes_join_an_all_maintenance() {
    let (app, backend, mut pipe, sid, r1) = setup().await;
    let proxy = app.proxy_addr();
    let r2 = pipe
        .add_route(&sid, "maint.example.com", "/two", &backend.url())
        .await;
    pipe.apply(&sid).await;

    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|{r1}|"), &r1).await;
    let list = payload(
        &pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    assert_eq!(list[0]["route_id"], r1.as_str());
    assert_eq!(list[0]["in_maintenance"], true);
    assert_eq!(list[1]["route_id"], r2.as_str());
    assert_eq!(list[1]["in_maintenance"], false);
    maint_ok(&mut pipe, &format!("MAINT_EXIT|{sid}|ALL"), "ALL").await;

    // Whole-session maintenance: a route staged and applied afterwards enters it too.
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|"), "ALL").await;
    let r3 = pipe
        .add_route(&sid, "later.example.com", "/", &backend.url())
        .await;
    let list = payload(
        &pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    let staged = list
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["route_id"] == r3.as_str())
        .expect("r3 listed")
        .clone();
    assert_eq!(staged["status"], "staged");
    assert_eq!(
        staged["in_maintenance"], true,
        "will be on activation: {staged}"
    );
    assert_eq!(
        maint_status(&mut pipe, &sid).await["in_maintenance"],
        json!([r1, r2, r3])
    );
    pipe.apply(&sid).await;
    let seen = backend.count();
    assert_builtin_maintenance(&get_json(proxy, "later.example.com", "/").await);
    assert_eq!(backend.count(), seen);

    // A staged route named explicitly: no active route to probe, so MAINT_EXIT confirms at once.
    let r4 = pipe
        .add_route(&sid, "staged.example.com", "/", &closed_port_url())
        .await;
    maint_ok(&mut pipe, &format!("MAINT_EXIT|{sid}|{r4}"), &r4).await;
}

// ---------------------------------------------------------------------------------------------
// Pools and liveness (§3.10 step 4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn in_a_pool_a_member_in_maintenance_just_stops_receiving_traffic() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let mut p1 = app.pipe().await;
    let s1 = register_quiet(&mut p1, "pool", "pool-1").await;
    p1.add_route(&s1, "pool.example.com", "/", &one.url()).await;
    p1.apply(&s1).await;
    let mut p2 = app.pipe().await;
    let s2 = register_quiet(&mut p2, "pool", "pool-2").await;
    p2.add_route(&s2, "pool.example.com", "/", &two.url()).await;
    p2.apply(&s2).await;

    maint_ok(&mut p1, &format!("MAINT_ENTER|{s1}|ALL|"), "ALL").await;
    let before = one.count();
    for i in 0..20 {
        let reply = get(proxy, "pool.example.com", &format!("/r/{i}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-backend"), Some("two"));
        assert_eq!(reply.header("x-maintenance-mode"), None);
    }
    assert_eq!(one.count(), before);

    // Both members in maintenance: the maintenance response.
    maint_ok(&mut p2, &format!("MAINT_ENTER|{s2}|ALL|"), "ALL").await;
    assert_builtin_maintenance(&get_json(proxy, "pool.example.com", "/").await);

    maint_ok(&mut p1, &format!("MAINT_EXIT|{s1}|ALL"), "ALL").await;
    let reply = get(proxy, "pool.example.com", "/back").await;
    assert_eq!(reply.header("x-backend"), Some("one"));
}

#[tokio::test]
async fn a_disconnected_session_in_maintenance_gives_the_plain_503() {
    let app = TestApp::start().await;
    let backend = Backend::start("main").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "maint", "maint-1").await;
    pipe.add_route(&sid, "gone.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|ALL|"), "ALL").await;
    drop(pipe);
    // Only members of connected sessions give the maintenance response (§3.10 step 4).
    wait_until(move || async move {
        get_json(proxy, "gone.example.com", "/")
            .await
            .header("x-maintenance-mode")
            .is_none()
    })
    .await;
    let reply = get_json(proxy, "gone.example.com", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.body,
        r#"{"code":"unavailable","message":"no backend available"}"#
    );
    assert_eq!(reply.header("retry-after"), Some("30"));

    // Reconnecting brings the maintenance (kept while disconnected) back.
    let mut again = app.pipe().await;
    expect(&mut again, &format!("RECONNECT|{sid}"), "OK").await;
    assert_builtin_maintenance(&get_json(proxy, "gone.example.com", "/").await);
}

// ---------------------------------------------------------------------------------------------
// Completions and the connection's life (§1.2, §5.1)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_completion_owed_at_end_of_stream_is_still_written_before_close() {
    let (app, _backend, _pipe, sid, _) = setup().await;
    let page = Backend::start("page").await;
    let mut oneshot = app.pipe().await;
    oneshot
        .send_raw(format!("MAINT_ENTER|{sid}|ALL|{}", page.url()).as_bytes())
        .await;
    oneshot.shutdown_write().await;
    assert_eq!(oneshot.recv().await, "ACK");
    assert_eq!(oneshot.recv().await, "MAINT_OK|ALL");
    assert!(
        oneshot.closed_within(REPLY_WAIT).await,
        "closed once nothing is owed"
    );
}

#[tokio::test]
async fn a_pending_completion_is_dropped_when_the_session_ends() {
    let (app, _backend, mut pipe, sid, _) = setup().await;
    send_acked(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|ALL|{}", closed_port_url()),
        "ACK",
    )
    .await;
    let mut other = app.pipe().await;
    expect(&mut other, &format!("CLIENT_SHUTDOWN|{sid}"), "SHUTDOWN_OK").await;
    // The registering connection is detached, not closed, and gets no completion (§5.1).
    expect(&mut pipe, "PING", "PONG").await;
    assert_eq!(pipe.try_recv(Duration::from_secs(9)).await, None);
}

#[tokio::test]
async fn the_member_that_entered_maintenance_most_recently_gives_the_response() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let page_a = Backend::start("page-a").await;
    let page_b = Backend::start("page-b").await;
    let mut p1 = app.pipe().await;
    let s1 = register_quiet(&mut p1, "pool", "pool-1").await;
    p1.add_route(&s1, "pool.example.com", "/", &one.url()).await;
    p1.apply(&s1).await;
    let mut p2 = app.pipe().await;
    let s2 = register_quiet(&mut p2, "pool", "pool-2").await;
    p2.add_route(&s2, "pool.example.com", "/", &two.url()).await;
    p2.apply(&s2).await;

    maint_ok(
        &mut p1,
        &format!("MAINT_ENTER|{s1}|ALL|{}", page_a.url()),
        "ALL",
    )
    .await;
    maint_ok(
        &mut p2,
        &format!("MAINT_ENTER|{s2}|ALL|{}", page_b.url()),
        "ALL",
    )
    .await;
    assert_eq!(
        get(proxy, "pool.example.com", "/")
            .await
            .header("x-backend"),
        Some("page-b")
    );
    maint_ok(
        &mut p1,
        &format!("MAINT_ENTER|{s1}|ALL|{}", page_a.url()),
        "ALL",
    )
    .await;
    assert_eq!(
        get(proxy, "pool.example.com", "/")
            .await
            .header("x-backend"),
        Some("page-a")
    );
}

#[tokio::test]
async fn maintenance_entered_for_a_staged_route_takes_effect_on_apply() {
    let (app, backend, mut pipe, sid, r1) = setup().await;
    let proxy = app.proxy_addr();
    let r2 = pipe
        .add_route(&sid, "maint.example.com", "/two", &backend.url())
        .await;
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|{r2}|"), &r2).await;
    assert_eq!(
        maint_status(&mut pipe, &sid).await["in_maintenance"],
        json!([r2])
    );
    // r2 is not active yet: /two is still served by r1.
    assert_eq!(get(proxy, "maint.example.com", "/two").await.status, 200);
    pipe.apply(&sid).await;
    assert_builtin_maintenance(&get_json(proxy, "maint.example.com", "/two").await);
    assert_eq!(get(proxy, "maint.example.com", "/one").await.status, 200);
    let _ = r1;
}

#[tokio::test]
async fn the_page_url_is_joined_like_a_backend_with_its_query_and_strip_prefix() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let backend = Backend::start("main").await;
    let page = Backend::start("page").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "maint", "maint-1").await;
    let api = pipe
        .add_route(&sid, "join.example.com", "/api", &backend.url())
        .await;
    let web = pipe
        .add_route(&sid, "join.example.com", "/", &backend.url())
        .await;
    expect(
        &mut pipe,
        &format!("OPTIONS_SET|{sid}|{api}|strip_prefix|true"),
        "OPTIONS_OK",
    )
    .await;
    pipe.apply(&sid).await;

    let with_query = format!("{}/m?from=maint", page.url());
    maint_ok(
        &mut pipe,
        &format!("MAINT_ENTER|{sid}|{web}|{with_query}"),
        &web,
    )
    .await;
    let probes = page.count();
    // The URL's own query only when the request has none (§4.28).
    let reply = get(proxy, "join.example.com", "/x").await;
    assert_eq!(reply.body, "page /m/x?from=maint", "{reply:?}");
    let reply = get(proxy, "join.example.com", "/x?y=1").await;
    assert_eq!(reply.body, "page /m/x?y=1", "{reply:?}");

    // strip_prefix applies to the page as to the backend.
    let plain = format!("{}/m", page.url());
    maint_ok(&mut pipe, &format!("MAINT_ENTER|{sid}|{api}|{plain}"), &api).await;
    let reply = get(proxy, "join.example.com", "/api/users?id=3").await;
    assert_eq!(reply.body, "page /m/users?id=3", "{reply:?}");
    let reply = get(proxy, "join.example.com", "/api").await;
    assert_eq!(reply.body, "page /m/", "{reply:?}");
    assert!(page.count() > probes);
}
