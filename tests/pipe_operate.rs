//! Operating commands over real TCP: DRAIN_*, CIRCUIT_BREAKER_STATUS/RESET with a live breaker, STATS_GET (plain and compressed) and BACKEND_TEST (PROTOCOL §4.18–§4.19, §4.25–§4.27, §4.31–§4.32).

mod common;
use common::*;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A session on a new connection serving `host` `/` from `backend`.
async fn serve(
    app: &TestApp,
    service: &str,
    instance: &str,
    host: &str,
    backend: &str,
) -> (Pipe, String, String) {
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, service, instance).await;
    let rid = pipe.add_route(&sid, host, "/", backend).await;
    pipe.apply(&sid).await;
    (pipe, sid, rid)
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

fn assert_no_backend(reply: &Reply) {
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        reply.body, r#"{"code":"unavailable","message":"no backend available"}"#,
        "{reply:?}"
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

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
    (era * 146097 + doe - 719468) * 86400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

fn ts_of(value: &Value) -> i64 {
    unix_of(
        value
            .as_str()
            .unwrap_or_else(|| panic!("timestamp expected, got {value}")),
    )
}

async fn drain_status(pipe: &mut Pipe, sid: &str) -> Value {
    payload(
        &pipe.cmd(&format!("DRAIN_STATUS|{sid}")).await,
        "DRAIN_STATUS_OK",
    )
}

async fn breaker_status(pipe: &mut Pipe, sid: &str, rid: &str) -> Value {
    payload(
        &pipe
            .cmd(&format!("CIRCUIT_BREAKER_STATUS|{sid}|{rid}"))
            .await,
        "CIRCUIT_STATUS_OK",
    )
}

/// Sends `line` and returns its reply, collecting any `EVENT` lines that arrive before it.
async fn cmd_collecting(pipe: &mut Pipe, line: &str, events: &mut Vec<(String, Value)>) -> String {
    pipe.send(line).await;
    loop {
        let got = pipe.recv().await;
        match got.strip_prefix("EVENT|") {
            Some(rest) => {
                let (kind, json) = rest.split_once('|').expect("event payload");
                events.push((
                    kind.to_string(),
                    serde_json::from_str(json).expect("event JSON"),
                ));
            }
            None => return got,
        }
    }
}

/// Waits (reading the pipe) until `events` holds `n` events.
async fn collect_events(pipe: &mut Pipe, events: &mut Vec<(String, Value)>, n: usize) {
    while events.len() < n {
        let line = pipe
            .try_recv(REPLY_WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} events: {events:?}", events.len()));
        let rest = line
            .strip_prefix("EVENT|")
            .unwrap_or_else(|| panic!("not an event: {line}"));
        let (kind, json) = rest.split_once('|').expect("event payload");
        events.push((
            kind.to_string(),
            serde_json::from_str(json).expect("event JSON"),
        ));
    }
}

/// A backend answering 500 while `failing` is set, 200 otherwise.
async fn switchable_backend(name: &str, failing: Arc<AtomicBool>) -> Backend {
    Backend::start_with(name, move |_| {
        failing
            .load(Ordering::SeqCst)
            .then(|| (500, vec![], "boom".to_string()))
    })
    .await
}

fn gunzip_base64(text: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("not standard base64 ({e}): {text}"));
    let mut out = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("not gzip: {e}"));
    out
}

// ---------------------------------------------------------------------------------------------
// DRAIN (§4.25–§4.27)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn drain_start_answers_the_completion_time_and_drain_status_reports_the_ramp() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let proxy = app.proxy_addr();
    let (mut pipe, sid, _) = serve(
        &app,
        "drain",
        "drain-1",
        "drain.example.com",
        &backend.url(),
    )
    .await;

    expect(
        &mut pipe,
        &format!("DRAIN_STATUS|{sid}"),
        "ERROR|no drain in progress",
    )
    .await;
    let before = unix_now();
    let reply = pipe.cmd(&format!("DRAIN_START|{sid}|30")).await;
    let completes = reply
        .strip_prefix("DRAIN_OK|")
        .unwrap_or_else(|| panic!("{reply}"));
    let at = unix_of(completes);
    assert!(
        (before + 29..=unix_now() + 31).contains(&at),
        "{completes} is not ~30 s from now"
    );

    let status = drain_status(&mut pipe, &sid).await;
    assert_eq!(
        keys(&status),
        [
            "active",
            "completed",
            "started_at",
            "completes_at",
            "duration_seconds",
            "elapsed_seconds",
            "remaining_seconds",
            "start_percent",
            "traffic_percent"
        ]
    );
    assert_eq!(status["active"], true);
    assert_eq!(status["completed"], false);
    assert_eq!(status["completes_at"], completes);
    assert_eq!(
        ts_of(&status["completes_at"]) - ts_of(&status["started_at"]),
        30
    );
    assert_eq!(status["duration_seconds"], 30);
    let elapsed = status["elapsed_seconds"].as_u64().expect("elapsed");
    let remaining = status["remaining_seconds"].as_u64().expect("remaining");
    assert!(elapsed <= 1 && (29..=30).contains(&remaining), "{status}");
    assert_eq!(status["start_percent"], 100);
    let traffic = status["traffic_percent"].as_u64().expect("traffic");
    assert!((95..=100).contains(&traffic), "{status}");

    // A lone member keeps receiving all traffic until the weight reaches 0.
    assert_eq!(get(proxy, "drain.example.com", "/still").await.status, 200);
    let info = payload(
        &pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(info["draining"], true);

    // A new DRAIN_START replaces the drain and starts from the current level.
    let reply = pipe.cmd(&format!("DRAIN_START|{sid}|1m")).await;
    assert!(reply.starts_with("DRAIN_OK|"), "{reply}");
    let status = drain_status(&mut pipe, &sid).await;
    assert_eq!(status["duration_seconds"], 60);
    let start = status["start_percent"].as_u64().expect("start_percent");
    assert!((95..=100).contains(&start), "{status}");
    assert!(status["traffic_percent"].as_u64().expect("traffic") <= start);

    for bad in ["30S", "-1", "25h", "abc", "1d", "30 s", ""] {
        expect(
            &mut pipe,
            &format!("DRAIN_START|{sid}|{bad}"),
            "ERROR|invalid duration",
        )
        .await;
    }
    for good in ["24h", "1h30m", "1.5", "500ms"] {
        let reply = pipe.cmd(&format!("DRAIN_START|{sid}|{good}")).await;
        assert!(
            reply.starts_with("DRAIN_OK|"),
            "DRAIN_START {good}: {reply}"
        );
    }
    expect(
        &mut pipe,
        &format!("DRAIN_CANCEL|{sid}|txn:c1"),
        "DRAIN_OK|txn:c1",
    )
    .await;
}

#[tokio::test]
async fn a_zero_drain_stops_traffic_at_once_and_cancel_restores_it() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let proxy = app.proxy_addr();
    let (mut pipe, sid, _) = serve(
        &app,
        "drain",
        "drain-1",
        "drain.example.com",
        &backend.url(),
    )
    .await;

    let reply = pipe.cmd(&format!("DRAIN_START|{sid}|0")).await;
    let completes = reply
        .strip_prefix("DRAIN_OK|")
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    assert!((unix_now() - 2..=unix_now()).contains(&unix_of(&completes)));

    let seen = backend.count();
    let reply = get_json(proxy, "drain.example.com", "/drained").await;
    assert_no_backend(&reply);
    assert_eq!(reply.header("x-drain-mode"), Some("true"), "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("30"), "{reply:?}");
    assert_eq!(backend.count(), seen);

    let status = drain_status(&mut pipe, &sid).await;
    assert_eq!(
        status,
        json!({
            "active": true, "completed": true,
            "started_at": completes, "completes_at": completes,
            "duration_seconds": 0, "elapsed_seconds": 0, "remaining_seconds": 0,
            "start_percent": 100, "traffic_percent": 0
        })
    );

    // A route applied while the drain lasts joins it.
    pipe.add_route(&sid, "later.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    let reply = get_json(proxy, "later.example.com", "/").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("x-drain-mode"), Some("true"));

    expect(&mut pipe, &format!("DRAIN_CANCEL|{sid}"), "DRAIN_OK").await;
    let reply = get(proxy, "drain.example.com", "/back").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "b /back"));
    assert_eq!(get(proxy, "later.example.com", "/").await.status, 200);
    expect(
        &mut pipe,
        &format!("DRAIN_STATUS|{sid}"),
        "ERROR|no drain in progress",
    )
    .await;
    expect(
        &mut pipe,
        &format!("DRAIN_CANCEL|{sid}"),
        "ERROR|no drain in progress",
    )
    .await;
    let info = payload(
        &pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(info["draining"], false);
}

#[tokio::test]
async fn a_timed_drain_ramps_down_linearly_and_stays_completed() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let proxy = app.proxy_addr();
    let (mut pipe, sid, _) = serve(
        &app,
        "drain",
        "drain-1",
        "drain.example.com",
        &backend.url(),
    )
    .await;

    let started = Instant::now();
    let reply = pipe.cmd(&format!("DRAIN_START|{sid}|2")).await;
    assert!(reply.starts_with("DRAIN_OK|"), "{reply}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = drain_status(&mut pipe, &sid).await;
    let elapsed = started.elapsed().as_secs_f64();
    let traffic = status["traffic_percent"].as_f64().expect("traffic_percent");
    let expected = 100.0 * (1.0 - elapsed / 2.0);
    assert!(
        (traffic - expected).abs() <= 15.0,
        "traffic_percent {traffic} after {elapsed:.2} s of a 2 s drain: {status}"
    );
    assert_eq!(status["completed"], false);
    // Still above 0: a lone member keeps all traffic.
    assert_eq!(
        get(proxy, "drain.example.com", "/ramping").await.status,
        200
    );

    let deadline = Instant::now() + REPLY_WAIT;
    let status = loop {
        let status = drain_status(&mut pipe, &sid).await;
        if status["completed"] == true {
            break status;
        }
        assert!(Instant::now() < deadline, "drain never completed: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "completed early"
    );
    assert_eq!(status["duration_seconds"], 2);
    assert_eq!(status["elapsed_seconds"], 2);
    assert_eq!(status["remaining_seconds"], 0);
    assert_eq!(status["traffic_percent"], 0);
    let reply = get_json(proxy, "drain.example.com", "/done").await;
    assert_no_backend(&reply);
    assert_eq!(reply.header("x-drain-mode"), Some("true"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = drain_status(&mut pipe, &sid).await;
    assert_eq!(
        later["elapsed_seconds"], 2,
        "elapsed stays at the duration: {later}"
    );
    assert_eq!(later["remaining_seconds"], 0);
}

#[tokio::test]
async fn draining_one_member_of_a_pool_to_zero_sends_everything_to_the_other() {
    let app = TestApp::start().await;
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let proxy = app.proxy_addr();
    let (mut p1, s1, _) = serve(&app, "pool", "pool-1", "pool.example.com", &one.url()).await;
    let (_p2, _s2, _) = serve(&app, "pool", "pool-2", "pool.example.com", &two.url()).await;

    let reply = p1.cmd(&format!("DRAIN_START|{s1}|0")).await;
    assert!(reply.starts_with("DRAIN_OK|"), "{reply}");
    let seen = one.count();
    for i in 0..20 {
        let reply = get(proxy, "pool.example.com", &format!("/d/{i}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-backend"), Some("two"));
        assert_eq!(reply.header("x-drain-mode"), None);
    }
    assert_eq!(one.count(), seen);

    expect(&mut p1, &format!("DRAIN_CANCEL|{s1}"), "DRAIN_OK").await;
    let mut names = std::collections::HashSet::new();
    for i in 0..40 {
        let reply = get(proxy, "pool.example.com", &format!("/c/{i}")).await;
        names.insert(reply.header("x-backend").unwrap_or_default().to_string());
    }
    assert!(
        names.contains("one") && names.contains("two"),
        "balanced again: {names:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker (§4.17–§4.19)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_breaker_opens_after_threshold_failures_and_reset_closes_it() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let failing = Arc::new(AtomicBool::new(true));
    let backend = switchable_backend("flaky", failing.clone()).await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "cb", "cb-1").await;
    let rid = pipe
        .add_route(&sid, "cb.example.com", "/", &backend.url())
        .await;
    expect(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_SET|{sid}|{rid}|2|30s|1"),
        "CIRCUIT_OK",
    )
    .await;
    pipe.apply(&sid).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|circuit_breaker_state_changed"),
        "SUBSCRIBE_OK",
    )
    .await;
    let mut events = Vec::new();

    let closed = breaker_status(&mut pipe, &sid, &rid).await;
    assert_eq!(
        keys(&closed),
        [
            "route_id",
            "configured",
            "state",
            "failures",
            "successes",
            "threshold",
            "timeout_seconds",
            "half_open_requests",
            "last_failure",
            "next_attempt",
            "healthy",
            "in_maintenance",
            "draining"
        ]
    );
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["configured"], true);

    for i in 0..2 {
        let reply = get(proxy, "cb.example.com", &format!("/fail/{i}")).await;
        assert_eq!((reply.status, reply.body.as_str()), (500, "boom"));
    }
    assert_eq!(backend.count(), 2);

    let raw = cmd_collecting(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_STATUS|{sid}|{rid}"),
        &mut events,
    )
    .await;
    assert!(
        raw.contains(r#""timeout_seconds":30,"#),
        "timeout_seconds is the number 30: {raw}"
    );
    let open = payload(&raw, "CIRCUIT_STATUS_OK");
    assert_eq!(open["route_id"], rid.as_str());
    assert_eq!(open["configured"], true);
    assert_eq!(open["state"], "open");
    assert_eq!(open["failures"], 2);
    assert_eq!(open["successes"], 0);
    assert_eq!(open["threshold"], 2);
    assert_eq!(open["half_open_requests"], 1);
    assert!(
        (unix_now() - 3..=unix_now()).contains(&ts_of(&open["last_failure"])),
        "{open}"
    );
    let next = ts_of(&open["next_attempt"]);
    assert!(
        (unix_now() + 27..=unix_now() + 31).contains(&next),
        "{open}"
    );
    assert_eq!(open["healthy"], true);
    assert_eq!(open["in_maintenance"], false);
    assert_eq!(open["draining"], false);

    // Open: the member is skipped; 503 with Retry-After = seconds until next_attempt.
    let reply = get_json(proxy, "cb.example.com", "/skipped").await;
    assert_no_backend(&reply);
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {reply:?}"));
    // Seconds until next_attempt, rounded up: about 30 right after opening.
    assert!((25..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(reply.header("x-drain-mode"), None);
    assert_eq!(backend.count(), 2, "an open breaker does not forward");

    collect_events(&mut pipe, &mut events, 1).await;
    let (kind, event) = &events[0];
    assert_eq!(kind, "circuit_breaker_state_changed");
    assert_eq!(
        keys(event),
        [
            "seq",
            "time",
            "session_id",
            "route_id",
            "backend",
            "from",
            "to",
            "failures",
            "next_attempt"
        ]
    );
    assert_eq!(event["session_id"], sid.as_str());
    assert_eq!(event["route_id"], rid.as_str());
    assert_eq!(event["backend"], backend.url().as_str());
    assert_eq!(
        (event["from"].as_str(), event["to"].as_str()),
        (Some("closed"), Some("open"))
    );
    assert_eq!(event["failures"], 2);
    assert_eq!(event["next_attempt"], open["next_attempt"]);

    // RESET closes it in the proxy before the reply.
    failing.store(false, Ordering::SeqCst);
    let reply = cmd_collecting(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_RESET|{sid}|{rid}"),
        &mut events,
    )
    .await;
    assert_eq!(reply, "CIRCUIT_OK");
    let reply = get(proxy, "cb.example.com", "/after-reset").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(backend.count(), 3);
    let status = payload(
        &cmd_collecting(
            &mut pipe,
            &format!("CIRCUIT_BREAKER_STATUS|{sid}|{rid}"),
            &mut events,
        )
        .await,
        "CIRCUIT_STATUS_OK",
    );
    assert_eq!(status["state"], "closed");
    assert_eq!(status["failures"], 0);
    assert_eq!(status["next_attempt"], Value::Null);
    collect_events(&mut pipe, &mut events, 2).await;
    let (kind, event) = &events[1];
    assert_eq!(kind, "circuit_breaker_state_changed");
    assert_eq!(
        (event["from"].as_str(), event["to"].as_str()),
        (Some("open"), Some("closed"))
    );
    assert_eq!(event["next_attempt"], Value::Null);

    // Resetting a closed breaker changes nothing and emits nothing.
    assert_eq!(
        cmd_collecting(
            &mut pipe,
            &format!("CIRCUIT_BREAKER_RESET|{sid}|ALL"),
            &mut events
        )
        .await,
        "CIRCUIT_OK"
    );
    assert_eq!(
        cmd_collecting(&mut pipe, &format!("PING|{sid}"), &mut events).await,
        "PONG"
    );
    assert_eq!(events.len(), 2, "{events:?}");
}

#[tokio::test]
async fn an_open_breaker_goes_half_open_by_itself_and_a_successful_trial_closes_it() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let failing = Arc::new(AtomicBool::new(true));
    let backend = switchable_backend("flaky", failing.clone()).await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "cb", "cb-1").await;
    let rid = pipe
        .add_route(&sid, "cb.example.com", "/", &backend.url())
        .await;
    expect(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_SET|{sid}|ALL|1|500ms|1"),
        "CIRCUIT_OK",
    )
    .await;
    pipe.apply(&sid).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|circuit_breaker_state_changed"),
        "SUBSCRIBE_OK",
    )
    .await;
    let mut events = Vec::new();

    assert_eq!(get(proxy, "cb.example.com", "/fail").await.status, 500);
    let raw = cmd_collecting(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_STATUS|{sid}|{rid}"),
        &mut events,
    )
    .await;
    assert!(
        raw.contains(r#""timeout_seconds":0.5,"#),
        "inherited from ALL, as a number: {raw}"
    );
    assert_eq!(payload(&raw, "CIRCUIT_STATUS_OK")["state"], "open");

    // No request needed: half_open at next_attempt.
    collect_events(&mut pipe, &mut events, 2).await;
    let transitions: Vec<(String, String)> = events
        .iter()
        .map(|(_, e)| {
            (
                e["from"].as_str().unwrap_or("").to_string(),
                e["to"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        transitions[..2],
        [
            ("closed".into(), "open".into()),
            ("open".into(), "half_open".into())
        ]
    );
    let status = payload(
        &cmd_collecting(
            &mut pipe,
            &format!("CIRCUIT_BREAKER_STATUS|{sid}|{rid}"),
            &mut events,
        )
        .await,
        "CIRCUIT_STATUS_OK",
    );
    assert_eq!(status["state"], "half_open");
    assert_eq!(
        status["next_attempt"],
        Value::Null,
        "next_attempt only while open"
    );

    failing.store(false, Ordering::SeqCst);
    assert_eq!(get(proxy, "cb.example.com", "/trial").await.status, 200);
    collect_events(&mut pipe, &mut events, 3).await;
    assert_eq!(
        (events[2].1["from"].as_str(), events[2].1["to"].as_str()),
        (Some("half_open"), Some("closed"))
    );
    let status = payload(
        &cmd_collecting(
            &mut pipe,
            &format!("CIRCUIT_BREAKER_STATUS|{sid}|{rid}"),
            &mut events,
        )
        .await,
        "CIRCUIT_STATUS_OK",
    );
    assert_eq!(status["state"], "closed");
    assert_eq!(status["failures"], 0);
}

#[tokio::test]
async fn an_apply_keeps_stats_and_breaker_state_unless_the_backend_changes() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let bad = Backend::start_with("bad", |_| Some((500, vec![], "boom".into()))).await;
    let good = Backend::start("good").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "cb", "cb-1").await;
    let rid = pipe
        .add_route(&sid, "keep.example.com", "/", &bad.url())
        .await;
    expect(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_SET|{sid}|{rid}|2|30s|1"),
        "CIRCUIT_OK",
    )
    .await;
    pipe.apply(&sid).await;
    for _ in 0..2 {
        assert_eq!(get(proxy, "keep.example.com", "/").await.status, 500);
    }
    assert_eq!(breaker_status(&mut pipe, &sid, &rid).await["state"], "open");

    // An apply that changes another route keeps this route's stats and breaker.
    pipe.add_route(&sid, "other.example.com", "/", &good.url())
        .await;
    expect(
        &mut pipe,
        &format!("ROUTE_UPDATE|{sid}|{rid}|priority|3"),
        "ROUTE_OK",
    )
    .await;
    pipe.apply(&sid).await;
    let status = breaker_status(&mut pipe, &sid, &rid).await;
    assert_eq!(status["state"], "open", "{status}");
    assert_eq!(status["failures"], 2, "{status}");
    let stats = payload(
        &pipe.cmd(&format!("STATS_GET|{sid}|{rid}")).await,
        "STATS_OK",
    );
    assert_eq!(stats["requests"], 2, "{stats}");
    assert_eq!(stats["status_codes"], json!({"500": 2}));

    // A new backend URL: health up, breaker closed (§4.21).
    expect(
        &mut pipe,
        &format!("ROUTE_UPDATE|{sid}|{rid}|backend|{}", good.url()),
        "ROUTE_OK",
    )
    .await;
    pipe.apply(&sid).await;
    let status = breaker_status(&mut pipe, &sid, &rid).await;
    assert_eq!(status["state"], "closed", "{status}");
    assert_eq!(status["failures"], 0, "{status}");
    let reply = get(proxy, "keep.example.com", "/x").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "good /x"));
}

#[tokio::test]
async fn an_open_breaker_only_takes_its_own_member_out_of_the_pool() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let bad = Backend::start_with("bad", |_| Some((500, vec![], "boom".into()))).await;
    let good = Backend::start("good").await;
    let mut p1 = app.pipe().await;
    let s1 = register_quiet(&mut p1, "pool", "pool-1").await;
    let r1 = p1.add_route(&s1, "pool.example.com", "/", &bad.url()).await;
    expect(
        &mut p1,
        &format!("CIRCUIT_BREAKER_SET|{s1}|ALL|1|30s|1"),
        "CIRCUIT_OK",
    )
    .await;
    p1.apply(&s1).await;
    let mut p2 = app.pipe().await;
    let s2 = register_quiet(&mut p2, "pool", "pool-2").await;
    let r2 = p2
        .add_route(&s2, "pool.example.com", "/", &good.url())
        .await;
    expect(
        &mut p2,
        &format!("CIRCUIT_BREAKER_SET|{s2}|ALL|1|30s|1"),
        "CIRCUIT_OK",
    )
    .await;
    p2.apply(&s2).await;

    // Until the failing member has been tried once.
    let mut tries = 0;
    while bad.count() == 0 {
        get(proxy, "pool.example.com", "/try").await;
        tries += 1;
        assert!(tries < 200, "the failing member never chosen");
    }
    assert_eq!(breaker_status(&mut p1, &s1, &r1).await["state"], "open");
    assert_eq!(breaker_status(&mut p2, &s2, &r2).await["state"], "closed");
    for i in 0..20 {
        let reply = get(proxy, "pool.example.com", &format!("/after/{i}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-backend"), Some("good"));
    }
    assert_eq!(bad.count(), 1);
}

#[tokio::test]
async fn breaker_status_and_reset_without_a_breaker_and_for_other_routes() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let bad = Backend::start_with("bad", |_| Some((503, vec![], "down".into()))).await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "cb", "cb-1").await;
    let rid = pipe
        .add_route(&sid, "plain.example.com", "/", &bad.url())
        .await;
    pipe.apply(&sid).await;
    let staged = pipe
        .add_route(&sid, "plain.example.com", "/staged", &bad.url())
        .await;
    let mut other = app.pipe().await;
    let other_sid = register_quiet(&mut other, "else", "else-1").await;
    let foreign = other
        .add_route(&other_sid, "else.example.com", "/", &bad.url())
        .await;
    other.apply(&other_sid).await;

    // Failures are counted even without a breaker.
    assert_eq!(get(proxy, "plain.example.com", "/").await.status, 503);
    let status = breaker_status(&mut pipe, &sid, &rid).await;
    assert_eq!(
        status,
        json!({
            "route_id": rid, "configured": false, "state": "closed", "failures": 1,
            "successes": 0, "threshold": null, "timeout_seconds": null,
            "half_open_requests": null, "last_failure": status["last_failure"].clone(),
            "next_attempt": null, "healthy": true, "in_maintenance": false, "draining": false
        })
    );
    assert!(status["last_failure"].is_string(), "{status}");

    for (line, want) in [
        (
            format!("CIRCUIT_BREAKER_RESET|{sid}|{rid}"),
            "ERROR|circuit breaker not found".to_string(),
        ),
        (
            format!("CIRCUIT_BREAKER_RESET|{sid}|ALL"),
            "CIRCUIT_OK".to_string(),
        ),
        (
            format!("CIRCUIT_BREAKER_STATUS|{sid}|{staged}"),
            "ERROR|route not active".to_string(),
        ),
        (
            format!("CIRCUIT_BREAKER_RESET|{sid}|{staged}"),
            "ERROR|route not active".to_string(),
        ),
        (
            format!("CIRCUIT_BREAKER_STATUS|{sid}|r999"),
            "ERROR|route not found".to_string(),
        ),
        (
            format!("CIRCUIT_BREAKER_RESET|{sid}|r999"),
            "ERROR|route not found".to_string(),
        ),
        (
            format!("CIRCUIT_BREAKER_STATUS|{sid}|{foreign}"),
            format!("ERROR|permission denied: route {foreign} belongs to another session"),
        ),
        (
            format!("CIRCUIT_BREAKER_RESET|{sid}|{foreign}"),
            format!("ERROR|permission denied: route {foreign} belongs to another session"),
        ),
    ] {
        expect(&mut pipe, &line, &want).await;
    }

    // A breaker inherited from ALL counts as the route's own (§3.3).
    expect(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_SET|{sid}|ALL|3|1m|2"),
        "CIRCUIT_OK",
    )
    .await;
    // Staged only: STATUS still reads the active configuration.
    assert_eq!(
        breaker_status(&mut pipe, &sid, &rid).await["configured"],
        false
    );
    pipe.apply(&sid).await;
    let status = breaker_status(&mut pipe, &sid, &rid).await;
    assert_eq!(status["configured"], true);
    assert_eq!(status["threshold"], 3);
    assert_eq!(status["timeout_seconds"], 60);
    assert_eq!(status["half_open_requests"], 2);
    expect(
        &mut pipe,
        &format!("CIRCUIT_BREAKER_RESET|{sid}|{rid}"),
        "CIRCUIT_OK",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// STATS_GET (§4.31, §1.7)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stats_count_forwarded_requests_bytes_and_status_codes() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let proxy = app.proxy_addr();
    let (mut pipe, sid, rid) = serve(
        &app,
        "stats",
        "stats-1",
        "stats.example.com",
        &backend.url(),
    )
    .await;

    let mut body_bytes = 0;
    for i in 0..4 {
        let reply = get(proxy, "stats.example.com", &format!("/s/{i}")).await;
        assert_eq!(reply.status, 200);
        body_bytes += reply.body.len();
    }
    let reply = http_request(
        proxy,
        "POST",
        Some("stats.example.com"),
        "/upload",
        &[],
        "hello",
    )
    .await;
    assert_eq!(reply.status, 200);
    body_bytes += reply.body.len();

    let raw = pipe.cmd(&format!("STATS_GET|{sid}")).await;
    let all = payload(&raw, "STATS_OK");
    let list = all
        .as_array()
        .unwrap_or_else(|| panic!("STATS_GET|sid is an array: {raw}"));
    assert_eq!(list.len(), 1);
    let stats = &list[0];
    assert_eq!(
        keys(stats),
        [
            "route_id",
            "requests",
            "errors",
            "avg_latency_ms",
            "p95_latency_ms",
            "p99_latency_ms",
            "bytes_sent",
            "bytes_received",
            "status_codes",
            "rate_limited",
            "unavailable",
            "since"
        ]
    );
    assert_eq!(stats["route_id"], rid.as_str());
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["errors"], 0);
    for k in ["avg_latency_ms", "p95_latency_ms", "p99_latency_ms"] {
        assert!(stats[k].is_u64(), "{k}: {stats}");
    }
    assert!(stats["avg_latency_ms"].as_u64() <= stats["p99_latency_ms"].as_u64().map(|v| v + 1));
    assert_eq!(stats["bytes_sent"], body_bytes as u64);
    assert_eq!(stats["bytes_received"], 5);
    assert_eq!(stats["status_codes"], json!({"200": 5}));
    assert_eq!(stats["rate_limited"], 0);
    assert_eq!(stats["unavailable"], 0);
    assert!(
        (unix_now() - 10..=unix_now()).contains(&ts_of(&stats["since"])),
        "{stats}"
    );

    // Object form for one route; ALL / empty / absent are the array.
    let one = payload(
        &pipe.cmd(&format!("STATS_GET|{sid}|{rid}")).await,
        "STATS_OK",
    );
    assert_eq!(&one, stats);
    for line in [
        format!("STATS_GET|{sid}|ALL"),
        format!("STATS_GET|{sid}|"),
        format!("STATS_GET|{sid}|{rid}|x"),
    ] {
        let reply = pipe.cmd(&line).await;
        let want = if line.ends_with("|x") {
            one.clone()
        } else {
            all.clone()
        };
        assert_eq!(payload(&reply, "STATS_OK"), want, "{line}");
    }

    // Compressed: base64 of gzip of the same JSON.
    let reply = pipe.cmd(&format!("STATS_GET|{sid}|compressed")).await;
    let text = reply
        .strip_prefix("STATS_OK|")
        .unwrap_or_else(|| panic!("{reply}"));
    assert!(
        !text.starts_with('['),
        "compressed payload expected: {reply}"
    );
    let decoded: Value = serde_json::from_str(&gunzip_base64(text)).expect("JSON inside");
    assert_eq!(decoded, all);
    let reply = pipe.cmd(&format!("STATS_GET|{sid}|{rid}|compressed")).await;
    let decoded: Value = serde_json::from_str(&gunzip_base64(
        reply.strip_prefix("STATS_OK|").expect("STATS_OK"),
    ))
    .expect("JSON");
    assert_eq!(decoded, one);
    let reply = pipe
        .cmd(&format!("STATS_GET|{sid}|txn:st|compressed"))
        .await;
    let text = reply
        .strip_prefix("STATS_OK|txn:st|")
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(
        serde_json::from_str::<Value>(&gunzip_base64(text)).expect("JSON"),
        all
    );

    let staged = pipe
        .add_route(&sid, "stats.example.com", "/staged", &backend.url())
        .await;
    expect(
        &mut pipe,
        &format!("STATS_GET|{sid}|{staged}"),
        "ERROR|route not active",
    )
    .await;
    expect(
        &mut pipe,
        &format!("STATS_GET|{sid}|r999"),
        "ERROR|route not found",
    )
    .await;
}

#[tokio::test]
async fn stats_count_errors_and_unavailable() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let bad = Backend::start_with("bad", |_| Some((500, vec![], "boom".into()))).await;
    let good = Backend::start("good").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "stats", "stats-1").await;
    let r_bad = pipe
        .add_route(&sid, "bad.example.com", "/", &bad.url())
        .await;
    let r_dead = pipe
        .add_route(&sid, "dead.example.com", "/", &closed_port_url())
        .await;
    let r_good = pipe
        .add_route(&sid, "good.example.com", "/", &good.url())
        .await;
    pipe.apply(&sid).await;

    for _ in 0..2 {
        assert_eq!(get(proxy, "bad.example.com", "/").await.status, 500);
    }
    assert_eq!(get(proxy, "dead.example.com", "/").await.status, 502);
    assert_eq!(get(proxy, "good.example.com", "/").await.status, 200);

    let reply = pipe.cmd(&format!("DRAIN_START|{sid}|0")).await;
    assert!(reply.starts_with("DRAIN_OK|"), "{reply}");
    for _ in 0..3 {
        assert_eq!(get(proxy, "bad.example.com", "/").await.status, 503);
    }
    expect(&mut pipe, &format!("DRAIN_CANCEL|{sid}"), "DRAIN_OK").await;

    let all = payload(&pipe.cmd(&format!("STATS_GET|{sid}")).await, "STATS_OK");
    let ids: Vec<&str> = all
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["route_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        [r_bad.as_str(), r_dead.as_str(), r_good.as_str()],
        "ascending route ids"
    );
    let bad_stats = &all[0];
    assert_eq!(bad_stats["requests"], 2);
    assert_eq!(bad_stats["errors"], 2);
    assert_eq!(bad_stats["status_codes"], json!({"500": 2}));
    assert_eq!(bad_stats["unavailable"], 3);
    let dead_stats = &all[1];
    assert_eq!(dead_stats["requests"], 1);
    assert_eq!(dead_stats["errors"], 1);
    assert_eq!(dead_stats["status_codes"], json!({"502": 1}));
    let good_stats = &all[2];
    assert_eq!(good_stats["requests"], 1);
    assert_eq!(good_stats["errors"], 0);
    assert_eq!(good_stats["unavailable"], 0);
    assert_eq!(good_stats["status_codes"], json!({"200": 1}));
}

#[tokio::test]
async fn rate_limited_requests_get_429_and_count_in_stats() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let good = Backend::start("good").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "stats", "stats-1").await;
    let rid = pipe
        .add_route(&sid, "good.example.com", "/", &good.url())
        .await;
    expect(
        &mut pipe,
        &format!("RATELIMIT_SET|{sid}|{rid}|1|1h"),
        "RATELIMIT_OK",
    )
    .await;
    pipe.apply(&sid).await;

    assert_eq!(get(proxy, "good.example.com", "/").await.status, 200);
    let reply = get_json(proxy, "good.example.com", "/").await;
    assert_eq!(
        reply.status, 429,
        "the bucket of 1 is empty (§4.16): {reply:?}"
    );
    assert_eq!(
        reply.body,
        r#"{"code":"resource_exhausted","message":"rate limited"}"#
    );
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(retry >= 1, "{reply:?}");
    assert_eq!(good.count(), 1, "a rate-limited request is not forwarded");
    let stats = payload(
        &pipe.cmd(&format!("STATS_GET|{sid}|{rid}")).await,
        "STATS_OK",
    );
    assert_eq!(stats["requests"], 1);
    assert_eq!(stats["rate_limited"], 1);
}

// ---------------------------------------------------------------------------------------------
// BACKEND_TEST (§4.32)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn backend_test_reports_a_reachable_backend() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("bt", "bt-1").await;

    let url = backend.url();
    let reply = pipe.cmd(&format!("BACKEND_TEST|{sid}|{url}")).await;
    let result = payload(&reply, "BACKEND_OK");
    assert_eq!(
        keys(&result),
        [
            "url",
            "reachable",
            "response_time_ms",
            "status_code",
            "tls_valid",
            "tls_error"
        ]
    );
    assert_eq!(result["url"], url.as_str());
    assert_eq!(result["reachable"], true);
    assert!(result["response_time_ms"].is_u64(), "{reply}");
    assert_eq!(result["status_code"], 200);
    assert_eq!(result["tls_valid"], Value::Null);
    assert_eq!(result["tls_error"], Value::Null);
    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].uri.as_str()),
        ("GET", "/")
    );

    // The URL's path is used as is; the URL is echoed exactly as sent (after trimming).
    let with_path = format!("HTTP://{}/health/", backend.addr);
    let result = payload(
        &pipe
            .cmd(&format!("BACKEND_TEST|{sid}|  {with_path} "))
            .await,
        "BACKEND_OK",
    );
    assert_eq!(result["url"], with_path.as_str());
    assert_eq!(
        backend.seen().last().map(|r| r.uri.clone()),
        Some("/health/".to_string())
    );

    // ws is tested as http.
    let ws = format!("ws://{}/sock", backend.addr);
    let result = payload(
        &pipe.cmd(&format!("BACKEND_TEST|{sid}|{ws}")).await,
        "BACKEND_OK",
    );
    assert_eq!(result["url"], ws.as_str());
    assert_eq!(result["status_code"], 200);

    // Any status is an HTTP response.
    let broken = Backend::start_with("broken", |_| Some((500, vec![], "x".into()))).await;
    let result = payload(
        &pipe
            .cmd(&format!("BACKEND_TEST|{sid}|{}", broken.url()))
            .await,
        "BACKEND_OK",
    );
    assert_eq!(result["reachable"], true);
    assert_eq!(result["status_code"], 500);

    // No session on a fresh connection and no auth token: the test still runs.
    let reply = app.oneshot(&format!("BACKEND_TEST||{url}")).await;
    assert_eq!(payload(&reply, "BACKEND_OK")["status_code"], 200);
    let reply = app.oneshot(&format!("BACKEND_TEST||txn:bt|{url}")).await;
    assert!(reply.starts_with("BACKEND_OK|txn:bt|{"), "{reply}");
}

#[tokio::test]
async fn backend_test_reports_an_unreachable_backend_and_refuses_bad_urls() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("bt", "bt-1").await;

    let dead = closed_port_url();
    let started = Instant::now();
    let reply = pipe.cmd(&format!("BACKEND_TEST|{sid}|{dead}")).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let result = payload(&reply, "BACKEND_FAIL");
    assert_eq!(
        keys(&result),
        ["url", "reachable", "error", "response_time_ms"]
    );
    assert_eq!(result["url"], dead.as_str());
    assert_eq!(result["reachable"], false);
    assert_eq!(result["error"], "connection refused");
    assert!(result["response_time_ms"].is_u64(), "{reply}");

    for bad in [
        "ftp://127.0.0.1/",
        "not a url",
        "http://",
        "http://user:pw@127.0.0.1/",
        "http://127.0.0.1/?q=1",
        "",
    ] {
        expect(
            &mut pipe,
            &format!("BACKEND_TEST|{sid}|{bad}"),
            "ERROR|invalid backend url format",
        )
        .await;
    }
    // The session is resolved before the URL (§1.8).
    assert_eq!(
        app.oneshot("BACKEND_TEST|nobody|ftp://x").await,
        "ERROR|session not found"
    );
}

#[tokio::test]
async fn backend_test_of_a_silent_backend_fails_after_5_seconds_and_later_replies_wait() {
    let app = TestApp::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut pipe = app.pipe().await;
    let sid = pipe.register("bt", "bt-1").await;
    let started = Instant::now();
    pipe.send_raw(format!("BACKEND_TEST|{sid}|{url}\nPING|{sid}\n").as_bytes())
        .await;
    let reply = pipe.recv().await;
    let elapsed = started.elapsed();
    let result = payload(&reply, "BACKEND_FAIL");
    assert_eq!(result["url"], url.as_str());
    assert_eq!(result["reachable"], false);
    assert!(result["error"].is_string(), "{reply}");
    assert!(
        elapsed >= Duration::from_millis(4500) && elapsed < Duration::from_millis(6500),
        "BACKEND_TEST took {elapsed:?}, the timeout is 5 s"
    );
    assert_eq!(pipe.recv().await, "PONG");
    silent.abort();
}
