//! Session liveness over real TCP: RECONNECT, disconnect/grace/expiry, lease mode, connection counting, server SHUTDOWN and the staged TTL (PROTOCOL §2, §3.7, §4.2).

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A session on `pipe` with one applied route `host` `/` → `backend`.
async fn serving(
    pipe: &mut Pipe,
    service: &str,
    instance: &str,
    host: &str,
    backend: &str,
) -> (String, String) {
    let sid = register_quiet(pipe, service, instance).await;
    let rid = pipe.add_route(&sid, host, "/", backend).await;
    pipe.apply(&sid).await;
    (sid, rid)
}

/// `GET` through the proxy asking for the JSON form of built-in pages.
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

/// The built-in "no backend available" 503 of §3.10 step 4.
fn assert_no_backend(reply: &Reply) {
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        reply.body, r#"{"code":"unavailable","message":"no backend available"}"#,
        "{reply:?}"
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("30"), "{reply:?}");
    assert_eq!(reply.header("x-drain-mode"), None, "{reply:?}");
}

/// The built-in 404 of §3.10 step 2.
fn assert_no_route(reply: &Reply) {
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(
        reply.body, r#"{"code":"not_found","message":"no route"}"#,
        "{reply:?}"
    );
}

async fn session_info(pipe: &mut Pipe, sid: &str) -> Value {
    payload(
        &pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    )
}

/// Polls SESSION_INFO on `pipe` until `check` holds (at most [`REPLY_WAIT`]).
async fn wait_info(
    pipe: &mut Pipe,
    sid: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let info = session_info(pipe, sid).await;
        if check(&info) {
            return info;
        }
        assert!(Instant::now() < deadline, "{what}: still {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a GET through the proxy answers `status`.
async fn wait_status(addr: SocketAddr, host: &str, status: u16) {
    let host = host.to_string();
    wait_until(move || {
        let host = host.clone();
        async move { get_json(addr, &host, "/wait").await.status == status }
    })
    .await;
}

fn no_changes() -> Value {
    json!({
        "routes": {"added": [], "removed": [], "modified": []},
        "headers": {"added": 0, "removed": 0, "modified": 0},
        "options": {"added": 0, "removed": 0, "modified": 0},
        "health": {"added": [], "removed": [], "modified": []},
        "ratelimit": {"added": [], "removed": [], "modified": []},
        "circuit_breaker": {"added": [], "removed": [], "modified": []},
        "pending": false
    })
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

/// Reads lines until an `EVENT|<kind>|…` arrives; returns its payload. Other lines fail the test.
async fn next_event(pipe: &mut Pipe, kind: &str) -> Value {
    let line = pipe
        .try_recv(REPLY_WAIT)
        .await
        .unwrap_or_else(|| panic!("no EVENT|{kind} within {REPLY_WAIT:?}"));
    let prefix = format!("EVENT|{kind}|");
    let json = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("expected {prefix}…, got {line}"));
    assert!(json.starts_with(r#"{"seq":"#), "{line}");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("bad JSON in {line}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// RECONNECT (§2.6, §4.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn closing_the_last_connection_disables_routes_and_reconnect_on_a_new_connection_restores_them(
) {
    let app = TestApp::start().await;
    let backend = Backend::start("live").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let (sid, rid) = serving(
        &mut pipe,
        "live",
        "live-1",
        "live.example.com",
        &backend.url(),
    )
    .await;
    let reply = get(proxy, "live.example.com", "/before").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "live /before"));

    drop(pipe);
    wait_status(proxy, "live.example.com", 503).await;
    let seen = backend.count();
    for i in 0..3 {
        assert_no_backend(&get_json(proxy, "live.example.com", &format!("/off/{i}")).await);
    }
    assert_eq!(
        backend.count(),
        seen,
        "a disabled route's backend is never chosen"
    );

    let mut again = app.pipe().await;
    expect(&mut again, &format!("RECONNECT|{sid}"), "OK").await;
    // Effects are in place before the reply (§1.5): no waiting.
    let reply = get(proxy, "live.example.com", "/after").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "live /after"));

    // Same route, same id, still active; the new connection is attached.
    let list = payload(
        &again.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    assert_eq!(list[0]["route_id"], rid.as_str());
    assert_eq!(list[0]["status"], "active");
    assert_eq!(session_info(&mut again, &sid).await["connections"], 1);
}

#[tokio::test]
async fn reconnect_of_an_unknown_or_empty_session_answers_reregister() {
    let app = TestApp::start().await;
    assert_eq!(
        app.oneshot("RECONNECT|nobody-1734694200-00000000000000000000000000000000")
            .await,
        "REREGISTER"
    );
    assert_eq!(app.oneshot("RECONNECT").await, "REREGISTER");
    assert_eq!(app.oneshot("RECONNECT|").await, "REREGISTER");
    assert_eq!(app.oneshot("RECONNECT|  ").await, "REREGISTER");
    assert_eq!(
        app.oneshot("RECONNECT|bogus|txn:r-1").await,
        "REREGISTER|txn:r-1"
    );
    assert_eq!(
        app.oneshot("RECONNECT||txn:r-2").await,
        "REREGISTER|txn:r-2"
    );
    // A txn value in the session_id position is the session id (§1.6).
    assert_eq!(app.oneshot("RECONNECT|txn:9").await, "REREGISTER");

    // No fallback to the attached session for RECONNECT (§2.3 rule 3).
    let mut pipe = app.pipe().await;
    let sid = pipe.register("svc", "svc-1").await;
    expect(&mut pipe, "RECONNECT", "REREGISTER").await;
    expect(&mut pipe, "RECONNECT|", "REREGISTER").await;
    expect(&mut pipe, &format!("RECONNECT|{sid}"), "OK").await;
    expect(&mut pipe, &format!("RECONNECT|{sid}|txn:abc"), "OK|txn:abc").await;
    // …while PING does take the fallback.
    expect(&mut pipe, "PING", "PONG").await;
}

#[tokio::test]
async fn reconnect_keeps_staged_configuration_and_subscriptions() {
    let app = TestApp::start().await;
    let backend = Backend::start("keep").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let (sid, _rid) = serving(
        &mut pipe,
        "keep",
        "keep-1",
        "keep.example.com",
        &backend.url(),
    )
    .await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|route_added"),
        "SUBSCRIBE_OK",
    )
    .await;
    let staged = pipe
        .add_route(&sid, "keep.example.com", "/staged", &backend.url())
        .await;

    drop(pipe);
    wait_status(proxy, "keep.example.com", 503).await;

    let mut again = app.pipe().await;
    expect(&mut again, &format!("RECONNECT|{sid}"), "OK").await;
    let diff = payload(&again.cmd(&format!("CONFIG_DIFF|{sid}")).await, "DIFF_OK");
    assert_eq!(diff["routes"]["added"], json!([staged]), "{diff}");
    assert_eq!(diff["pending"], true);
    let info = session_info(&mut again, &sid).await;
    assert_eq!(info["subscriptions"], json!(["route_added"]), "{info}");

    // The reconnecting connection is the event connection now.
    again.apply(&sid).await;
    let event = next_event(&mut again, "route_added").await;
    assert_eq!(event["route_id"], staged.as_str(), "{event}");
    assert_eq!(
        get(proxy, "keep.example.com", "/staged/x").await.status,
        200
    );
}

#[tokio::test]
async fn any_command_naming_a_disconnected_session_reconnects_it() {
    let app = TestApp::start().await;
    let backend = Backend::start("impl").await;
    let proxy = app.proxy_addr();

    // PING on a new connection.
    let mut pipe = app.pipe().await;
    let (sid, _) = serving(
        &mut pipe,
        "impl",
        "impl-1",
        "implicit.example.com",
        &backend.url(),
    )
    .await;
    drop(pipe);
    wait_status(proxy, "implicit.example.com", 503).await;
    let mut second = app.pipe().await;
    expect(&mut second, &format!("PING|{sid}"), "PONG").await;
    assert_eq!(
        get(proxy, "implicit.example.com", "/ping").await.status,
        200
    );

    // A command that fails still reconnects (bookkeeping happens once the session resolved, §1.8).
    drop(second);
    wait_status(proxy, "implicit.example.com", 503).await;
    let mut third = app.pipe().await;
    expect(
        &mut third,
        &format!("ROUTE_REMOVE|{sid}|r999"),
        "ERROR|route not found",
    )
    .await;
    assert_eq!(
        get(proxy, "implicit.example.com", "/failed-command")
            .await
            .status,
        200
    );
    assert_eq!(session_info(&mut third, &sid).await["connections"], 1);
}

#[tokio::test]
async fn reconnect_within_the_grace_period_cancels_expiry() {
    let app = TestApp::start_with(|c| c.session_grace = Duration::from_millis(600)).await;
    let backend = Backend::start("grace").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let (sid, _) = serving(
        &mut pipe,
        "grace",
        "grace-1",
        "grace.example.com",
        &backend.url(),
    )
    .await;
    drop(pipe);
    wait_status(proxy, "grace.example.com", 503).await;
    let mut again = app.pipe().await;
    expect(&mut again, &format!("RECONNECT|{sid}"), "OK").await;

    // Well past the original grace deadline, the session is alive and serving.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    expect(&mut again, &format!("PING|{sid}"), "PONG").await;
    assert_eq!(get(proxy, "grace.example.com", "/still").await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Expiry (§2.7)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_session_ends_when_the_grace_period_runs_out() {
    let app = TestApp::start_with(|c| c.session_grace = Duration::from_millis(300)).await;
    let backend = Backend::start("gone").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let (sid, _) = serving(
        &mut pipe,
        "gone",
        "gone-1",
        "gone.example.com",
        &backend.url(),
    )
    .await;
    assert_eq!(get(proxy, "gone.example.com", "/").await.status, 200);

    drop(pipe);
    wait_status(proxy, "gone.example.com", 404).await;
    assert_no_route(&get_json(proxy, "gone.example.com", "/x").await);

    assert_eq!(
        app.oneshot(&format!("PING|{sid}")).await,
        "ERROR|session not found"
    );
    assert_eq!(
        app.oneshot(&format!("SESSION_INFO|{sid}")).await,
        "ERROR|session not found"
    );
    assert_eq!(app.oneshot(&format!("RECONNECT|{sid}")).await, "REREGISTER");

    // The pair was released: another service can claim it.
    let other_backend = Backend::start("other").await;
    let mut other = app.pipe().await;
    let (_, _) = serving(
        &mut other,
        "other",
        "other-1",
        "gone.example.com",
        &other_backend.url(),
    )
    .await;
    let reply = get(proxy, "gone.example.com", "/now").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "other /now"));
}

#[tokio::test]
async fn expiry_sends_session_expired_with_grace_or_lease_reason_to_same_service_peers() {
    let app = TestApp::start_with(|c| {
        c.session_grace = Duration::from_millis(300);
        c.session_lease = Duration::from_millis(300);
    })
    .await;
    let mut watcher = app.pipe().await;
    let watch_sid = watcher.register("shop", "watch").await;
    expect(
        &mut watcher,
        &format!("SUBSCRIBE|{watch_sid}|session_expired"),
        "SUBSCRIBE_OK",
    )
    .await;

    // Connection mode: closing the connection, then grace → grace_expired.
    let mut a = app.pipe().await;
    let a_sid = a.register("shop", "shop-a").await;
    drop(a);
    let event = next_event(&mut watcher, "session_expired").await;
    assert_eq!(
        keys(&event),
        [
            "seq",
            "time",
            "session_id",
            "route_id",
            "service_name",
            "instance_name",
            "reason"
        ]
    );
    assert_eq!(event["session_id"], a_sid.as_str());
    assert_eq!(event["route_id"], Value::Null);
    assert_eq!(event["service_name"], "shop");
    assert_eq!(event["instance_name"], "shop-a");
    assert_eq!(event["reason"], "grace_expired");
    let first_seq = event["seq"].as_u64().expect("seq is an integer");

    // Lease mode, registered by a one-shot connection: lease, then grace → lease_expired.
    let reply = app
        .oneshot(r#"REGISTER|shop|shop-b|0|{"liveness":"lease"}"#)
        .await;
    let b_sid = reply.strip_prefix("ACK|").expect("ACK").to_string();
    let event = next_event(&mut watcher, "session_expired").await;
    assert_eq!(event["session_id"], b_sid.as_str());
    assert_eq!(event["instance_name"], "shop-b");
    assert_eq!(event["reason"], "lease_expired");
    assert!(event["seq"].as_u64().expect("seq") > first_seq);
    assert_eq!(
        app.oneshot(&format!("RECONNECT|{b_sid}")).await,
        "REREGISTER"
    );
}

// ---------------------------------------------------------------------------------------------
// Lease mode (§2.5)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_lease_session_stays_connected_while_commands_arrive_on_fresh_connections() {
    let app = TestApp::start_with(|c| c.session_lease = Duration::from_millis(400)).await;
    let backend = Backend::start("lease").await;
    let proxy = app.proxy_addr();
    let reply = app
        .oneshot(r#"REGISTER|leased|leased-1|0|{"liveness":"lease"}"#)
        .await;
    let sid = reply
        .strip_prefix("ACK|")
        .unwrap_or_else(|| panic!("REGISTER: {reply}"))
        .to_string();
    for (line, want) in [
        (
            format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"),
            "OPTIONS_OK".to_string(),
        ),
        (
            format!("ROUTE_ADD|{sid}|lease.example.com|/|{}|0", backend.url()),
            "ROUTE_OK|".to_string(),
        ),
        (format!("CONFIG_APPLY|{sid}"), "OK".to_string()),
    ] {
        let reply = app.oneshot(&line).await;
        assert!(reply.starts_with(&want), "{line} → {reply}");
    }

    // Three leases' worth of time, a PING every 100 ms on a new connection each: always serving.
    let until = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < until {
        assert_eq!(app.oneshot(&format!("PING|{sid}")).await, "PONG");
        let reply = get_json(proxy, "lease.example.com", "/renewed").await;
        assert_eq!(
            reply.status, 200,
            "lease session disabled while renewed: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // No more commands: the lease lapses and the routes are disabled.
    wait_status(proxy, "lease.example.com", 503).await;
    assert_no_backend(&get_json(proxy, "lease.example.com", "/lapsed").await);

    // Any command renews it at once.
    assert_eq!(app.oneshot(&format!("PING|{sid}")).await, "PONG");
    assert_eq!(get(proxy, "lease.example.com", "/back").await.status, 200);
    let info = payload(
        &app.oneshot(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(info["liveness"], "lease");
}

#[tokio::test]
async fn an_open_idle_connection_does_not_hold_a_lease_session() {
    let app = TestApp::start_with(|c| c.session_lease = Duration::from_millis(400)).await;
    let backend = Backend::start("idle").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let reply = pipe
        .cmd(r#"REGISTER|idle|idle-1|0|{"liveness":"lease"}"#)
        .await;
    let sid = reply.strip_prefix("ACK|").expect("ACK").to_string();
    expect(
        &mut pipe,
        &format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"),
        "OPTIONS_OK",
    )
    .await;
    pipe.add_route(&sid, "idle.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    assert_eq!(get(proxy, "idle.example.com", "/").await.status, 200);

    // The connection stays open but carries nothing: the lease still lapses.
    wait_status(proxy, "idle.example.com", 503).await;
    expect(&mut pipe, &format!("PING|{sid}"), "PONG").await;
    assert_eq!(get(proxy, "idle.example.com", "/again").await.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Attached connections (§2.4, §4.4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn session_info_connections_counts_open_attached_connections() {
    let app = TestApp::start().await;
    let mut first = app.pipe().await;
    let sid = first.register("count", "count-1").await;
    let mut second = app.pipe().await;
    expect(&mut second, &format!("PING|{sid}"), "PONG").await;
    let mut third = app.pipe().await;
    assert_eq!(session_info(&mut third, &sid).await["connections"], 3);

    // A bare PING attaches nothing.
    let mut probe = app.pipe().await;
    expect(&mut probe, "PING", "PONG").await;
    assert_eq!(session_info(&mut third, &sid).await["connections"], 3);

    // A failing command still attaches (§1.8).
    let mut failing = app.pipe().await;
    expect(
        &mut failing,
        &format!("ROUTE_REMOVE|{sid}|r4242"),
        "ERROR|route not found",
    )
    .await;
    assert_eq!(session_info(&mut third, &sid).await["connections"], 4);

    drop(second);
    drop(failing);
    wait_info(&mut third, &sid, "connections after closing two", |i| {
        i["connections"] == 2
    })
    .await;
    drop(first);
    let info = wait_info(
        &mut third,
        &sid,
        "connections after closing the first",
        |i| i["connections"] == 1,
    )
    .await;
    assert_eq!(info["session_id"], sid.as_str());
}

// ---------------------------------------------------------------------------------------------
// Server shutdown (§2.9, §5.3)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn server_shutdown_sends_shutdown_on_every_connection_and_refuses_later_commands() {
    let app = TestApp::start().await;
    let mut registered = app.pipe().await;
    let sid = registered.register("bye", "bye-1").await;
    let mut attached = app.pipe().await;
    expect(&mut attached, &format!("PING|{sid}"), "PONG").await;
    let mut anonymous = app.pipe().await;
    expect(&mut anonymous, "PING", "PONG").await;
    let mut subscribed = app.pipe().await;
    expect(
        &mut subscribed,
        &format!("SUBSCRIBE|{sid}|all"),
        "SUBSCRIBE_OK",
    )
    .await;

    app.handle.trigger_shutdown();
    for (name, pipe) in [
        ("registered", &mut registered),
        ("attached", &mut attached),
        ("anonymous", &mut anonymous),
        ("subscribed", &mut subscribed),
    ] {
        let line = pipe.try_recv(REPLY_WAIT).await;
        assert_eq!(line.as_deref(), Some("SHUTDOWN"), "{name} connection");
    }

    expect(
        &mut registered,
        &format!("PING|{sid}"),
        "ERROR|server shutting down",
    )
    .await;
    expect(
        &mut attached,
        &format!("SESSION_INFO|{sid}"),
        "ERROR|server shutting down",
    )
    .await;
    expect(&mut anonymous, "PING", "ERROR|server shutting down").await;
    expect(
        &mut anonymous,
        "NOT_A_COMMAND|x",
        "ERROR|server shutting down",
    )
    .await;
    expect(
        &mut subscribed,
        "RECONNECT|whoever",
        "ERROR|server shutting down",
    )
    .await;
    // Line-level errors still come first (§1.8).
    subscribed.send_raw(b"PI\x01NG\n").await;
    assert_eq!(subscribed.recv().await, "ERROR|invalid characters");
    // SHUTDOWN is written once only.
    assert_eq!(
        anonymous.try_recv(Duration::from_millis(200)).await,
        None,
        "nothing more after SHUTDOWN"
    );

    // The registry closes what the clients leave open (shutdown wait 2 s in tests).
    for pipe in [
        &mut registered,
        &mut attached,
        &mut anonymous,
        &mut subscribed,
    ] {
        assert!(
            pipe.closed_within(Duration::from_secs(6)).await,
            "connection closed after the wait"
        );
    }
}

#[tokio::test]
async fn server_shutdown_stops_accepting_connections() {
    let app = TestApp::start().await;
    let addr = app.pipe_addr();
    let mut pipe = app.pipe().await;
    expect(&mut pipe, "PING", "PONG").await;
    app.handle.trigger_shutdown();
    assert_eq!(pipe.recv().await, "SHUTDOWN");

    match tokio::time::timeout(REPLY_WAIT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(_)) => {} // refused
        Ok(Ok(stream)) => {
            // Accepted by the kernel backlog at most: never served.
            drop(stream);
            let mut late = Pipe::connect(addr).await;
            late.send("PING").await;
            let line = late.try_recv(Duration::from_secs(3)).await;
            assert!(
                line.is_none() || line.as_deref() == Some("ERROR|server shutting down"),
                "a connection made after shutdown was served: {line:?}"
            );
        }
        Err(_) => panic!("connect neither failed nor succeeded"),
    }
}

// ---------------------------------------------------------------------------------------------
// Staged TTL (§3.7)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn staged_changes_expire_after_the_staged_ttl_with_a_staged_expired_event() {
    let app = TestApp::start_with(|c| c.staged_ttl = Duration::from_millis(300)).await;
    let backend = Backend::start("ttl").await;
    let proxy = app.proxy_addr();
    let mut pipe = app.pipe().await;
    let (sid, r1) = serving(&mut pipe, "ttl", "ttl-1", "ttl.example.com", &backend.url()).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|staged_expired"),
        "SUBSCRIBE_OK",
    )
    .await;

    // Stage a route and a header in one write so both are staged well within the TTL.
    pipe.send_raw(
        format!(
            "ROUTE_ADD|{sid}|ttl.example.com|/two|{}|0\nHEADERS_SET|{sid}|ALL|X-Staged|1\nSESSION_INFO|{sid}\n",
            backend.url()
        )
        .as_bytes(),
    )
    .await;
    let r2 = pipe
        .recv()
        .await
        .strip_prefix("ROUTE_OK|")
        .expect("ROUTE_OK")
        .to_string();
    assert_eq!(pipe.recv().await, "HEADERS_OK");
    let info = payload(&pipe.recv().await, "SESSION_OK");
    assert!(
        info["staged_expires_at"].is_string(),
        "pending changes expire: {info}"
    );
    assert_eq!(info["routes_staged"], 1);

    let event = next_event(&mut pipe, "staged_expired").await;
    assert_eq!(
        keys(&event),
        ["seq", "time", "session_id", "route_id", "discarded"]
    );
    assert_eq!(event["session_id"], sid.as_str());
    assert_eq!(event["route_id"], Value::Null);
    let mut discarded = no_changes();
    discarded["routes"]["added"] = json!([r2]);
    discarded["headers"]["added"] = json!(1);
    discarded["pending"] = json!(true);
    assert_eq!(event["discarded"], discarded);

    let list = payload(
        &pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["route_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, [r1.as_str()], "{list}");
    assert_eq!(list[0]["status"], "active");
    assert_eq!(
        payload(&pipe.cmd(&format!("CONFIG_DIFF|{sid}")).await, "DIFF_OK"),
        no_changes()
    );
    let info = session_info(&mut pipe, &sid).await;
    assert_eq!(info["staged_expires_at"], Value::Null, "{info}");
    assert_eq!(info["routes_staged"], 0, "{info}");

    // The active configuration is untouched, and nothing more expires.
    assert_eq!(get(proxy, "ttl.example.com", "/").await.status, 200);
    assert_eq!(pipe.try_recv(Duration::from_millis(600)).await, None);
}

#[tokio::test]
async fn each_staging_command_restarts_the_staged_ttl() {
    let app = TestApp::start_with(|c| c.staged_ttl = Duration::from_millis(1000)).await;
    let backend = Backend::start("restart").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "restart", "restart-1").await;
    pipe.apply(&sid).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|staged_expired"),
        "SUBSCRIBE_OK",
    )
    .await;

    pipe.add_route(&sid, "restart.example.com", "/a", &backend.url())
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // A non-staging command does not extend the TTL, a staging one does.
    expect(&mut pipe, &format!("CONFIG_VALIDATE|{sid}"), "OK").await;
    pipe.add_route(&sid, "restart.example.com", "/b", &backend.url())
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // 1.2 s after the first staging command, 0.6 s after the last: still pending.
    let diff = payload(&pipe.cmd(&format!("CONFIG_DIFF|{sid}")).await, "DIFF_OK");
    assert_eq!(diff["pending"], true, "staged discarded too early: {diff}");
    assert_eq!(
        diff["routes"]["added"].as_array().map(|a| a.len()),
        Some(2),
        "{diff}"
    );

    let event = next_event(&mut pipe, "staged_expired").await;
    assert_eq!(
        event["discarded"]["routes"]["added"]
            .as_array()
            .map(|a| a.len()),
        Some(2)
    );
    assert_eq!(
        payload(&pipe.cmd(&format!("CONFIG_DIFF|{sid}")).await, "DIFF_OK"),
        no_changes()
    );
}

#[tokio::test]
async fn events_are_not_queued_while_a_session_has_no_connection() {
    let app = TestApp::start_with(|c| c.staged_ttl = Duration::from_millis(200)).await;
    let backend = Backend::start("q").await;
    let mut pipe = app.pipe().await;
    let (sid, _) = serving(
        &mut pipe,
        "queue",
        "queue-1",
        "queue.example.com",
        &backend.url(),
    )
    .await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|staged_expired"),
        "SUBSCRIBE_OK",
    )
    .await;
    pipe.add_route(&sid, "queue.example.com", "/staged", &backend.url())
        .await;
    drop(pipe);
    // The staged TTL runs out while nobody is connected (nothing to poll without reconnecting).
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut again = app.pipe().await;
    expect(&mut again, &format!("RECONNECT|{sid}"), "OK").await;
    expect(&mut again, &format!("PING|{sid}"), "PONG").await;
    assert_eq!(
        payload(&again.cmd(&format!("CONFIG_DIFF|{sid}")).await, "DIFF_OK"),
        no_changes()
    );
    assert_eq!(
        again.try_recv(Duration::from_millis(300)).await,
        None,
        "no stale event"
    );
}

#[tokio::test]
async fn a_disconnected_member_leaves_its_pool_until_it_reconnects() {
    let app = TestApp::start().await;
    let proxy = app.proxy_addr();
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let mut p1 = app.pipe().await;
    let (s1, _) = serving(&mut p1, "pool", "pool-1", "pool.example.com", &one.url()).await;
    let mut p2 = app.pipe().await;
    let (_s2, _) = serving(&mut p2, "pool", "pool-2", "pool.example.com", &two.url()).await;

    drop(p1);
    // Once the registry noticed, every request goes to the connected member.
    wait_until(move || async move {
        let mut all_two = true;
        for _ in 0..10 {
            all_two &= get(proxy, "pool.example.com", "/w")
                .await
                .header("x-backend")
                == Some("two");
        }
        all_two
    })
    .await;
    let settled = one.count();
    for i in 0..20 {
        let reply = get(proxy, "pool.example.com", &format!("/d/{i}")).await;
        assert_eq!(reply.header("x-backend"), Some("two"), "{reply:?}");
    }
    assert_eq!(one.count(), settled);

    let mut again = app.pipe().await;
    expect(&mut again, &format!("RECONNECT|{s1}"), "OK").await;
    let mut names = std::collections::HashSet::new();
    for i in 0..40 {
        let reply = get(proxy, "pool.example.com", &format!("/r/{i}")).await;
        names.insert(reply.header("x-backend").unwrap_or_default().to_string());
    }
    assert!(names.contains("one") && names.contains("two"), "{names:?}");
}

#[tokio::test]
async fn a_lease_session_that_never_stages_anything_still_lapses_and_expires() {
    // Nothing else in this registry has a deadline pending: only the new session's lease.
    let app = TestApp::start_with(|c| {
        c.session_grace = Duration::from_millis(200);
        c.session_lease = Duration::from_millis(200);
    })
    .await;
    let mut watcher = app.pipe().await;
    let watch_sid = watcher.register("lone", "watch").await;
    expect(
        &mut watcher,
        &format!("SUBSCRIBE|{watch_sid}|session_expired"),
        "SUBSCRIBE_OK",
    )
    .await;
    let reply = app
        .oneshot(r#"REGISTER|lone|lone-1|0|{"liveness":"lease"}"#)
        .await;
    let sid = reply.strip_prefix("ACK|").expect("ACK").to_string();
    assert_eq!(app.oneshot(&format!("PING|{sid}")).await, "PONG");

    // Lease (200 ms) + grace (200 ms), then session_expired with reason lease_expired.
    let event = next_event(&mut watcher, "session_expired").await;
    assert_eq!(event["session_id"], sid.as_str());
    assert_eq!(event["reason"], "lease_expired");
    assert_eq!(
        app.oneshot(&format!("PING|{sid}")).await,
        "ERROR|session not found"
    );
}

#[tokio::test]
async fn a_command_in_progress_at_shutdown_gets_its_normal_reply_before_shutdown() {
    let app = TestApp::start_with(|c| c.shutdown_wait = Duration::from_secs(8)).await;
    // A backend that accepts and never answers: BACKEND_TEST runs for its 5 s timeout.
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
    let sid = pipe.register("late", "late-1").await;
    pipe.send(&format!("BACKEND_TEST|{sid}|{url}")).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // let the test start
    app.handle.trigger_shutdown();

    let reply = pipe.recv().await;
    assert!(
        reply.starts_with("BACKEND_FAIL|{"),
        "the command in progress keeps its reply: {reply}"
    );
    assert_eq!(pipe.recv().await, "SHUTDOWN");
    expect(
        &mut pipe,
        &format!("PING|{sid}"),
        "ERROR|server shutting down",
    )
    .await;
    silent.abort();
}
