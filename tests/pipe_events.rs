//! Events over real TCP: SUBSCRIBE/UNSUBSCRIBE, payload keys and order, seq, placement between replies, the event connection, session_expired fan-out, slow readers (PROTOCOL §2.4, §4.33–§4.34, §5).

mod common;
use common::*;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn session_info(pipe: &mut Pipe, sid: &str) -> Value {
    payload(
        &pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
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

/// Splits an `EVENT|type|json` line; checks the raw JSON starts with `{"seq":`.
fn parse_event(line: &str) -> (String, Value) {
    let rest = line
        .strip_prefix("EVENT|")
        .unwrap_or_else(|| panic!("not an event: {line}"));
    let (kind, json) = rest
        .split_once('|')
        .unwrap_or_else(|| panic!("event without payload: {line}"));
    assert!(
        json.starts_with(r#"{"seq":"#),
        "payload starts with seq: {line}"
    );
    let value: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("bad JSON in {line}: {e}"));
    (kind.to_string(), value)
}

/// The next line, which must be `EVENT|<kind>|…`; returns its payload.
async fn next_event(pipe: &mut Pipe, kind: &str) -> Value {
    let line = pipe
        .try_recv(REPLY_WAIT)
        .await
        .unwrap_or_else(|| panic!("no EVENT|{kind} within {REPLY_WAIT:?}"));
    let (got, value) = parse_event(&line);
    assert_eq!(got, kind, "{line}");
    value
}

/// Asserts nothing at all arrives on `pipe` before the reply to a PING.
async fn assert_no_event(pipe: &mut Pipe, sid: &str, why: &str) {
    pipe.send(&format!("PING|{sid}")).await;
    let line = pipe.recv().await;
    assert_eq!(line, "PONG", "{why}");
}

/// The four keys every payload starts with (§5.2).
fn assert_head(event: &Value, sid: &str, route_id: Option<&str>) {
    assert!(event["seq"].is_u64(), "{event}");
    let time = event["time"]
        .as_str()
        .unwrap_or_else(|| panic!("time: {event}"));
    assert_recent(time);
    assert_eq!(event["session_id"], sid, "{event}");
    match route_id {
        Some(rid) => assert_eq!(event["route_id"], rid, "{event}"),
        None => assert_eq!(event["route_id"], Value::Null, "{event}"),
    }
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

fn assert_recent(ts: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let delta = unix_of(ts) - now;
    assert!((-5..=1).contains(&delta), "{ts} is not now");
}

const ALL_TYPES_SORTED: [&str; 11] = [
    "backend_health_changed",
    "cert_renewed",
    "circuit_breaker_state_changed",
    "config_applied",
    "drain_completed",
    "global_config_changed",
    "maintenance_changed",
    "route_added",
    "route_removed",
    "session_expired",
    "staged_expired",
];

// ---------------------------------------------------------------------------------------------
// route_added, route_removed, config_applied (§4.21, §5.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn config_apply_replies_ok_then_route_added_then_config_applied() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ev", "ev-1").await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|route_added,config_applied"),
        "SUBSCRIBE_OK",
    )
    .await;
    let url = format!("{}/v1/", backend.url());
    let rid = pipe
        .add_route(&sid, "Shop.Example.com,www.shop.example.com.", "/x/", &url)
        .await;
    expect(&mut pipe, &format!("CONFIG_APPLY|{sid}"), "OK").await;

    let added = next_event(&mut pipe, "route_added").await;
    assert_eq!(
        keys(&added),
        [
            "seq",
            "time",
            "session_id",
            "route_id",
            "domains",
            "path",
            "backend",
            "priority"
        ]
    );
    assert_head(&added, &sid, Some(&rid));
    let mut domains: Vec<String> =
        serde_json::from_value(added["domains"].clone()).expect("domains");
    domains.sort();
    assert_eq!(domains, ["shop.example.com", "www.shop.example.com"]);
    assert_eq!(added["path"], "/x");
    assert_eq!(added["backend"], url.as_str());
    assert_eq!(added["priority"], 0);

    let applied = next_event(&mut pipe, "config_applied").await;
    assert_eq!(
        keys(&applied),
        [
            "seq",
            "time",
            "session_id",
            "route_id",
            "scopes",
            "routes_added",
            "routes_removed",
            "routes_modified"
        ]
    );
    assert_head(&applied, &sid, None);
    assert_eq!(applied["scopes"], json!(["all"]));
    assert_eq!(applied["routes_added"], json!([rid]));
    assert_eq!(applied["routes_removed"], json!([]));
    assert_eq!(applied["routes_modified"], json!([]));
    assert!(
        applied["seq"].as_u64() > added["seq"].as_u64(),
        "seq increases"
    );

    // Nothing pending: OK, no validation, no event (§3.5).
    assert_eq!(pipe.cmd(&format!("CONFIG_APPLY|{sid}")).await, "OK");
    assert_no_event(
        &mut pipe,
        &sid,
        "an apply with nothing pending emits nothing",
    )
    .await;
}

#[tokio::test]
async fn route_removed_and_partial_apply_scopes() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ev", "ev-1").await;
    let r1 = pipe
        .add_route(&sid, "a.example.com", "/old", &backend.url())
        .await;
    let r2 = pipe
        .add_route(&sid, "a.example.com", "/keep", &backend.url())
        .await;
    pipe.apply(&sid).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|route_removed,config_applied,route_added"),
        "SUBSCRIBE_OK",
    )
    .await;

    expect(&mut pipe, &format!("ROUTE_REMOVE|{sid}|{r1}"), "ROUTE_OK").await;
    expect(
        &mut pipe,
        &format!("ROUTE_UPDATE|{sid}|{r2}|priority|5"),
        "ROUTE_OK",
    )
    .await;
    expect(
        &mut pipe,
        &format!("OPTIONS_SET|{sid}|ALL|timeout|10s"),
        "OPTIONS_OK",
    )
    .await;
    expect(
        &mut pipe,
        &format!("CONFIG_APPLY_PARTIAL|{sid}|options,routes,options"),
        "OK",
    )
    .await;

    let removed = next_event(&mut pipe, "route_removed").await;
    assert_eq!(
        keys(&removed),
        [
            "seq",
            "time",
            "session_id",
            "route_id",
            "domains",
            "path",
            "reason"
        ]
    );
    assert_head(&removed, &sid, Some(&r1));
    assert_eq!(removed["domains"], json!(["a.example.com"]));
    assert_eq!(removed["path"], "/old");
    assert_eq!(removed["reason"], "applied");

    let applied = next_event(&mut pipe, "config_applied").await;
    assert_eq!(
        applied["scopes"],
        json!(["routes", "options"]),
        "once each, in the spec's order"
    );
    assert_eq!(applied["routes_added"], json!([]));
    assert_eq!(applied["routes_removed"], json!([r1]));
    assert_eq!(applied["routes_modified"], json!([r2]));
    assert!(applied["seq"].as_u64() > removed["seq"].as_u64());
    assert_no_event(&mut pipe, &sid, "a modified route emits no route_added").await;

    // `all` among the scopes is reported as ["all"].
    expect(
        &mut pipe,
        &format!("HEADERS_SET|{sid}|ALL|X-A|1"),
        "HEADERS_OK",
    )
    .await;
    expect(
        &mut pipe,
        &format!("CONFIG_APPLY_PARTIAL|{sid}|headers,all"),
        "OK",
    )
    .await;
    let applied = next_event(&mut pipe, "config_applied").await;
    assert_eq!(applied["scopes"], json!(["all"]));
    assert_eq!(applied["routes_added"], json!([]));
}

#[tokio::test]
async fn events_are_written_only_between_replies_and_after_the_reply_of_their_command() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ev", "ev-1").await;
    expect(&mut pipe, &format!("SUBSCRIBE|{sid}|all"), "SUBSCRIBE_OK").await;

    // 20 rounds pipelined in one write: ROUTE_ADD, CONFIG_APPLY, PING, ROUTE_LIST.
    let mut batch = String::new();
    for i in 0..20 {
        batch.push_str(&format!(
            "ROUTE_ADD|{sid}|p.example.com|/r{i}|{}|0\nCONFIG_APPLY|{sid}\nPING|{sid}\nSESSION_INFO|{sid}\n",
            backend.url()
        ));
    }
    pipe.send_raw(batch.as_bytes()).await;

    let mut replies = Vec::new();
    let mut events = Vec::new();
    let mut last_seq = 0;
    while replies.len() < 80 || events.len() < 40 {
        let line = pipe.recv().await;
        if line.starts_with("EVENT|") {
            let (kind, value) = parse_event(&line);
            let seq = value["seq"].as_u64().expect("seq");
            assert!(seq > last_seq, "events in seq order: {line}");
            last_seq = seq;
            // Each event follows the OK of the apply that produced it.
            let applies_answered = replies
                .iter()
                .filter(|r: &&String| r.as_str() == "OK")
                .count();
            let needed = match kind.as_str() {
                "route_added" | "config_applied" => events.len() / 2 + 1,
                other => panic!("unexpected event {other}: {line}"),
            };
            assert!(
                applies_answered >= needed,
                "event before its apply's reply (after {} replies): {line}",
                replies.len()
            );
            events.push(kind);
        } else {
            replies.push(line);
        }
    }
    for (i, round) in replies.chunks(4).enumerate() {
        assert!(round[0].starts_with("ROUTE_OK|r"), "round {i}: {round:?}");
        assert_eq!(round[1], "OK", "round {i}: {round:?}");
        assert_eq!(round[2], "PONG", "round {i}: {round:?}");
        assert!(round[3].starts_with("SESSION_OK|{"), "round {i}: {round:?}");
    }
    let expected: Vec<&str> = (0..20)
        .flat_map(|_| ["route_added", "config_applied"])
        .collect();
    assert_eq!(events, expected);
    assert_eq!(pipe.try_recv(Duration::from_millis(200)).await, None);
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE (§4.33, §4.34)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_validates_types_and_session_info_lists_them_sorted() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("ev", "ev-1").await;

    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|bogus"),
        "ERROR|unknown event type: bogus",
    )
    .await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|route_added,bogus"),
        "ERROR|unknown event type: bogus",
    )
    .await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|"),
        "ERROR|invalid format",
    )
    .await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}| , ,"),
        "ERROR|invalid format",
    )
    .await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}"),
        "ERROR|invalid format",
    )
    .await;
    expect(
        &mut pipe,
        &format!("UNSUBSCRIBE|{sid}|bogus"),
        "ERROR|unknown event type: bogus",
    )
    .await;
    expect(
        &mut pipe,
        &format!("UNSUBSCRIBE|{sid}|"),
        "ERROR|invalid format",
    )
    .await;
    expect(&mut pipe, "SUBSCRIBE|nobody|all", "ERROR|session not found").await;
    assert_eq!(
        session_info(&mut pipe, &sid).await["subscriptions"],
        json!([]),
        "a failed SUBSCRIBE changes nothing"
    );

    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}| staged_expired , route_added,route_added"),
        "SUBSCRIBE_OK",
    )
    .await;
    assert_eq!(
        session_info(&mut pipe, &sid).await["subscriptions"],
        json!(["route_added", "staged_expired"])
    );
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|txn:s1|all"),
        "SUBSCRIBE_OK|txn:s1",
    )
    .await;
    assert_eq!(
        session_info(&mut pipe, &sid).await["subscriptions"],
        json!(ALL_TYPES_SORTED)
    );

    expect(
        &mut pipe,
        &format!("UNSUBSCRIBE|{sid}|route_added"),
        "UNSUBSCRIBE_OK",
    )
    .await;
    let rest: Vec<&str> = ALL_TYPES_SORTED
        .iter()
        .copied()
        .filter(|t| *t != "route_added")
        .collect();
    assert_eq!(
        session_info(&mut pipe, &sid).await["subscriptions"],
        json!(rest)
    );
    expect(
        &mut pipe,
        &format!("UNSUBSCRIBE|{sid}|route_added"),
        "UNSUBSCRIBE_OK",
    )
    .await;
    expect(
        &mut pipe,
        &format!("UNSUBSCRIBE|{sid}|all"),
        "UNSUBSCRIBE_OK",
    )
    .await;
    assert_eq!(
        session_info(&mut pipe, &sid).await["subscriptions"],
        json!([])
    );
}

#[tokio::test]
async fn unsubscribe_stops_events() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ev", "ev-1").await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|route_added"),
        "SUBSCRIBE_OK",
    )
    .await;
    pipe.add_route(&sid, "u.example.com", "/a", &backend.url())
        .await;
    pipe.apply(&sid).await;
    next_event(&mut pipe, "route_added").await;

    expect(
        &mut pipe,
        &format!("UNSUBSCRIBE|{sid}|route_added"),
        "UNSUBSCRIBE_OK",
    )
    .await;
    pipe.add_route(&sid, "u.example.com", "/b", &backend.url())
        .await;
    pipe.apply(&sid).await;
    assert_no_event(&mut pipe, &sid, "no event after UNSUBSCRIBE").await;
}

// ---------------------------------------------------------------------------------------------
// The event connection (§2.4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn events_go_only_to_the_connection_that_last_registered_reconnected_or_subscribed() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut a = app.pipe().await;
    let sid = register_quiet(&mut a, "ev", "ev-1").await;
    expect(
        &mut a,
        &format!("SUBSCRIBE|{sid}|route_added"),
        "SUBSCRIBE_OK",
    )
    .await;

    // B carries commands for the session but is not the event connection.
    let mut b = app.pipe().await;
    let r1 = b
        .add_route(&sid, "c.example.com", "/1", &backend.url())
        .await;
    b.apply(&sid).await;
    assert_no_event(&mut b, &sid, "B is not the event connection").await;
    assert_eq!(
        next_event(&mut a, "route_added").await["route_id"],
        r1.as_str()
    );

    // RECONNECT on C moves it.
    let mut c = app.pipe().await;
    expect(&mut c, &format!("RECONNECT|{sid}"), "OK").await;
    let r2 = b
        .add_route(&sid, "c.example.com", "/2", &backend.url())
        .await;
    b.apply(&sid).await;
    assert_eq!(
        next_event(&mut c, "route_added").await["route_id"],
        r2.as_str()
    );
    assert_no_event(&mut a, &sid, "A lost the event connection to C").await;
    assert_no_event(&mut b, &sid, "B still not the event connection").await;

    // SUBSCRIBE on D moves it.
    let mut d = app.pipe().await;
    expect(
        &mut d,
        &format!("SUBSCRIBE|{sid}|config_applied"),
        "SUBSCRIBE_OK",
    )
    .await;
    let r3 = b
        .add_route(&sid, "c.example.com", "/3", &backend.url())
        .await;
    b.apply(&sid).await;
    assert_eq!(
        next_event(&mut d, "route_added").await["route_id"],
        r3.as_str()
    );
    next_event(&mut d, "config_applied").await;
    assert_no_event(&mut c, &sid, "C lost the event connection to D").await;

    // D closes: the next connection that carries a command for the session takes over.
    drop(d);
    let mut e = app.pipe().await;
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        // Wait until the registry has noticed D is gone.
        let info = session_info(&mut e, &sid).await;
        if info["connections"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "D still counted: {info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // E's SESSION_INFO was the first command after D closed: E is the event connection now.
    let r4 = b
        .add_route(&sid, "c.example.com", "/4", &backend.url())
        .await;
    b.apply(&sid).await;
    assert_eq!(
        next_event(&mut e, "route_added").await["route_id"],
        r4.as_str()
    );
    next_event(&mut e, "config_applied").await;
    assert_no_event(&mut a, &sid, "A is not the event connection").await;
    assert_no_event(&mut b, &sid, "B is not the event connection").await;
    assert_no_event(&mut c, &sid, "C is not the event connection").await;
}

// ---------------------------------------------------------------------------------------------
// session_expired (§2.2, §2.8, §5.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn session_expired_goes_to_subscribed_sessions_of_the_same_service() {
    let app = TestApp::start().await;
    let mut watcher = app.pipe().await;
    let watch_sid = watcher.register("shop", "watch").await;
    expect(
        &mut watcher,
        &format!("SUBSCRIBE|{watch_sid}|session_expired"),
        "SUBSCRIBE_OK",
    )
    .await;
    let mut stranger = app.pipe().await;
    let stranger_sid = stranger.register("other", "other-1").await;
    expect(
        &mut stranger,
        &format!("SUBSCRIBE|{stranger_sid}|all"),
        "SUBSCRIBE_OK",
    )
    .await;

    // CLIENT_SHUTDOWN of another instance of the same service.
    let mut leaving = app.pipe().await;
    let leaving_sid = leaving.register("shop", "shop-2").await;
    expect(
        &mut leaving,
        &format!("CLIENT_SHUTDOWN|{leaving_sid}"),
        "SHUTDOWN_OK",
    )
    .await;
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
    assert_head(&event, &leaving_sid, None);
    assert_eq!(event["service_name"], "shop");
    assert_eq!(event["instance_name"], "shop-2");
    assert_eq!(event["reason"], "client_shutdown");

    // Replacement: the peer and the replaced session's own (subscribed) event connection.
    let mut old = app.pipe().await;
    let old_sid = old.register("shop", "shop-3").await;
    expect(
        &mut old,
        &format!("SUBSCRIBE|{old_sid}|session_expired"),
        "SUBSCRIBE_OK",
    )
    .await;
    let mut restarted = app.pipe().await;
    let new_sid = restarted.register("shop", "shop-3").await;
    assert_ne!(new_sid, old_sid);
    let event = next_event(&mut watcher, "session_expired").await;
    assert_head(&event, &old_sid, None);
    assert_eq!(event["instance_name"], "shop-3");
    assert_eq!(event["reason"], "replaced");
    let own = next_event(&mut old, "session_expired").await;
    assert_eq!(own["session_id"], old_sid.as_str());
    assert_eq!(own["reason"], "replaced");
    assert_eq!(own["seq"], event["seq"], "the same event");
    // Detached, not closed.
    expect(&mut old, "PING", "PONG").await;
    expect(
        &mut old,
        &format!("PING|{old_sid}"),
        "ERROR|session not found",
    )
    .await;

    // Another service never hears about it; the new instance did not subscribe.
    assert_no_event(
        &mut stranger,
        &stranger_sid,
        "other services get no session_expired",
    )
    .await;
    assert_no_event(
        &mut restarted,
        &new_sid,
        "the new session has no subscriptions",
    )
    .await;
    assert_no_event(
        &mut watcher,
        &watch_sid,
        "exactly two session_expired events",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Slow readers (§5.2, §8.4)
// ---------------------------------------------------------------------------------------------

/// A raw pipe connection with a tiny receive buffer, so the registry's writes back up quickly.
async fn tiny_window_connection(
    app: &TestApp,
) -> (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(app.pipe_addr()).await.expect("connect");
    let (r, w) = stream.into_split();
    (BufReader::new(r), w)
}

#[tokio::test]
async fn a_slow_event_reader_loses_events_but_never_slows_anyone_else() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut control = app.pipe().await;
    let sid = register_quiet(&mut control, "slow", "slow-1").await;

    // The event connection: subscribe to everything, then never read again.
    let (mut slow_read, mut slow_write) = tiny_window_connection(&app).await;
    slow_write
        .write_all(format!("SUBSCRIBE|{sid}|all\n").as_bytes())
        .await
        .expect("write");
    let mut line = String::new();
    tokio::time::timeout(REPLY_WAIT, slow_read.read_line(&mut line))
        .await
        .expect("SUBSCRIBE reply in time")
        .expect("read");
    assert_eq!(line, "SUBSCRIBE_OK\n");

    // Large route_added/route_removed events: 32 long domains each.
    let domains: Vec<String> = (0..32)
        .map(|i| format!("{}{i:02}.{}.example.com", "d".repeat(56), "e".repeat(60)))
        .collect();
    let domains = domains.join(",");
    let mut other = app.pipe().await;
    let other_sid = other.register("bystander", "bystander-1").await;

    let started = Instant::now();
    let mut dropped = 0;
    for round in 0..12 {
        let mut batch = String::new();
        for i in 0..100 {
            batch.push_str(&format!(
                "ROUTE_ADD|{sid}|{domains}|/p{i}|{}|0\n",
                backend.url()
            ));
        }
        batch.push_str(&format!("CONFIG_APPLY|{sid}\n"));
        control.send_raw(batch.as_bytes()).await;
        let mut ids = Vec::new();
        for _ in 0..100 {
            let reply = control.recv().await;
            ids.push(
                reply
                    .strip_prefix("ROUTE_OK|")
                    .unwrap_or_else(|| panic!("round {round}: {reply}"))
                    .to_string(),
            );
        }
        assert_eq!(control.recv().await, "OK", "round {round}");
        let mut batch = String::new();
        for id in &ids {
            batch.push_str(&format!("ROUTE_REMOVE|{sid}|{id}\n"));
        }
        batch.push_str(&format!("CONFIG_APPLY|{sid}\n"));
        control.send_raw(batch.as_bytes()).await;
        for _ in 0..100 {
            assert_eq!(control.recv().await, "ROUTE_OK", "round {round}");
        }
        assert_eq!(control.recv().await, "OK", "round {round}");

        // Others are answered promptly while the event connection is stuck.
        let asked = Instant::now();
        assert_eq!(other.cmd(&format!("PING|{other_sid}")).await, "PONG");
        let info = session_info(&mut control, &sid).await;
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "replies slowed down: {:?}",
            asked.elapsed()
        );
        dropped = info["events_dropped"].as_u64().expect("events_dropped");
        if dropped > 0 {
            break;
        }
    }
    assert!(
        dropped > 0,
        "no event was dropped after {:?}",
        started.elapsed()
    );
    let asked = Instant::now();
    assert_eq!(app.oneshot("PING").await, "PONG");
    assert!(asked.elapsed() < Duration::from_secs(1));

    // Reading again: every queued line is a whole event, in seq order, and new events flow.
    let mut last_seq = 0;
    let mut read = 0;
    loop {
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_millis(500), slow_read.read_line(&mut line)).await
        {
            Err(_) => break,
            Ok(Ok(0)) => panic!("event connection closed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("read: {e}"),
        }
        let line = line
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("line without LF"));
        let (_, event) = parse_event(line);
        let seq = event["seq"].as_u64().expect("seq");
        assert!(seq > last_seq, "seq order");
        last_seq = seq;
        read += 1;
    }
    assert!(read > 0);
    control
        .add_route(&sid, "after.example.com", "/", &backend.url())
        .await;
    control.apply(&sid).await;
    let mut line = String::new();
    tokio::time::timeout(REPLY_WAIT, slow_read.read_line(&mut line))
        .await
        .expect("event in time")
        .expect("read");
    let (kind, event) = parse_event(line.trim_end_matches('\n'));
    assert_eq!(kind, "route_added");
    assert!(event["seq"].as_u64().expect("seq") > last_seq);
    drop(slow_write);
}

// ---------------------------------------------------------------------------------------------
// drain_completed, maintenance_changed (§4.25, §4.28, §5.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn drain_completed_follows_a_zero_drain_at_once_and_a_short_drain_when_it_ends() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ev", "ev-1").await;
    pipe.add_route(&sid, "drain.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|drain_completed"),
        "SUBSCRIBE_OK",
    )
    .await;

    let reply = pipe.cmd(&format!("DRAIN_START|{sid}|0")).await;
    let completes = reply
        .strip_prefix("DRAIN_OK|")
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    let event = next_event(&mut pipe, "drain_completed").await;
    assert_eq!(
        keys(&event),
        [
            "seq",
            "time",
            "session_id",
            "route_id",
            "started_at",
            "completed_at",
            "duration_seconds"
        ]
    );
    assert_head(&event, &sid, None);
    assert_eq!(event["completed_at"], completes.as_str());
    assert_eq!(event["started_at"], event["completed_at"]);
    assert_eq!(event["duration_seconds"], 0);
    assert_no_event(&mut pipe, &sid, "one drain_completed per drain").await;

    expect(&mut pipe, &format!("DRAIN_CANCEL|{sid}"), "DRAIN_OK").await;
    let started = Instant::now();
    let reply = pipe.cmd(&format!("DRAIN_START|{sid}|1s")).await;
    assert!(reply.starts_with("DRAIN_OK|"), "{reply}");
    let event = next_event(&mut pipe, "drain_completed").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "completed early: {:?}",
        started.elapsed()
    );
    assert_eq!(event["duration_seconds"], 1);
    let start = unix_of(event["started_at"].as_str().expect("started_at"));
    let end = unix_of(event["completed_at"].as_str().expect("completed_at"));
    assert!((1..=2).contains(&(end - start)), "{event}");
}

#[tokio::test]
async fn maintenance_changed_is_sent_unconfirmed_then_confirmed() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ev", "ev-1").await;
    let rid = pipe
        .add_route(&sid, "m.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|maintenance_changed"),
        "SUBSCRIBE_OK",
    )
    .await;

    // Built-in page: ACK, MAINT_OK, then the two events (§5.4 rule 3).
    pipe.send(&format!("MAINT_ENTER|{sid}|{rid}|")).await;
    assert_eq!(pipe.recv().await, "ACK");
    assert_eq!(pipe.recv().await, format!("MAINT_OK|{rid}"));
    let first = next_event(&mut pipe, "maintenance_changed").await;
    assert_eq!(
        keys(&first),
        [
            "seq",
            "time",
            "session_id",
            "route_id",
            "target",
            "route_ids",
            "in_maintenance",
            "maintenance_backend",
            "confirmed"
        ]
    );
    assert_head(&first, &sid, None);
    assert_eq!(first["target"], rid.as_str());
    assert_eq!(first["route_ids"], json!([rid]));
    assert_eq!(first["in_maintenance"], true);
    assert_eq!(first["maintenance_backend"], "");
    assert_eq!(first["confirmed"], Value::Null);
    let second = next_event(&mut pipe, "maintenance_changed").await;
    assert!(second["seq"].as_u64() > first["seq"].as_u64());
    assert_eq!(second["confirmed"], true);
    assert_eq!(second["in_maintenance"], true);
    assert_eq!(second["route_ids"], json!([rid]));

    // Exit: unconfirmed event, MAINT_OK after the probe, confirmed event — in seq order.
    pipe.send(&format!("MAINT_EXIT|{sid}|ALL")).await;
    assert_eq!(pipe.recv().await, "ACK");
    let mut events = Vec::new();
    let mut completion = None;
    while events.len() < 2 || completion.is_none() {
        let line = pipe.recv().await;
        if line.starts_with("EVENT|") {
            events.push(parse_event(&line));
        } else {
            assert_eq!(line, "MAINT_OK|ALL");
            assert!(
                events.len() < 2,
                "the confirmed event follows the completion"
            );
            completion = Some(line);
        }
    }
    let (k1, e1) = &events[0];
    let (k2, e2) = &events[1];
    assert_eq!(
        (k1.as_str(), k2.as_str()),
        ("maintenance_changed", "maintenance_changed")
    );
    assert_eq!(e1["target"], "ALL");
    assert_eq!(e1["in_maintenance"], false);
    assert_eq!(e1["route_ids"], json!([rid]));
    assert_eq!(e1["confirmed"], Value::Null);
    assert_eq!(e2["confirmed"], true);
    assert_eq!(e2["in_maintenance"], false);
    assert!(e2["seq"].as_u64() > e1["seq"].as_u64());
}

#[tokio::test]
async fn maintenance_changed_is_confirmed_false_when_the_page_times_out() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ev", "ev-1").await;
    pipe.add_route(&sid, "m.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    expect(
        &mut pipe,
        &format!("SUBSCRIBE|{sid}|maintenance_changed"),
        "SUBSCRIBE_OK",
    )
    .await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);

    pipe.send(&format!("MAINT_ENTER|{sid}|ALL|{dead}")).await;
    assert_eq!(pipe.recv().await, "ACK");
    let first = next_event(&mut pipe, "maintenance_changed").await;
    assert_eq!(first["confirmed"], Value::Null);
    assert_eq!(first["maintenance_backend"], dead.as_str());
    let done = pipe.try_recv(Duration::from_secs(9)).await;
    assert_eq!(
        done.as_deref(),
        Some("ERROR|timeout waiting for maintenance page to become reachable")
    );
    let second = next_event(&mut pipe, "maintenance_changed").await;
    assert_eq!(second["confirmed"], false);
    assert_eq!(second["in_maintenance"], true);
}
