//! Pipe commands one by one (PROTOCOL §2, §4.1–4.17, §4.20–4.24): exact success replies with every payload key, and the error texts the spec gives each command.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh app with one persistent connection registered as `service`/`instance`.
async fn start_session(service: &str, instance: &str) -> (TestApp, Pipe, String) {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register(service, instance).await;
    (app, pipe, sid)
}

/// Sends a whole `REGISTER` line and returns the session id of its `ACK`.
async fn register_line(pipe: &mut Pipe, line: &str) -> String {
    let reply = pipe.cmd(line).await;
    reply
        .strip_prefix("ACK|")
        .unwrap_or_else(|| panic!("{line} → {reply}"))
        .to_string()
}

/// Sends each line on `pipe` and asserts its exact reply, in order.
async fn expect_replies(pipe: &mut Pipe, cases: &[(String, &str)]) {
    for (line, want) in cases {
        assert_eq!(pipe.cmd(line).await, *want, "reply to {line}");
    }
}

async fn session_info(pipe: &mut Pipe, sid: &str) -> Value {
    payload(
        &pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    )
}

async fn route_list(pipe: &mut Pipe, sid: &str) -> Value {
    payload(
        &pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    )
}

async fn config_diff(pipe: &mut Pipe, sid: &str) -> Value {
    payload(&pipe.cmd(&format!("CONFIG_DIFF|{sid}")).await, "DIFF_OK")
}

/// The `DIFF_OK` payload when staged equals active (§4.23: every key always present).
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

/// The element of a `ROUTE_LIST` payload with that route id.
fn listed<'a>(list: &'a Value, rid: &str) -> &'a Value {
    list.as_array()
        .expect("ROUTE_LIST payload is an array")
        .iter()
        .find(|route| route["route_id"] == rid)
        .unwrap_or_else(|| panic!("{rid} not listed in {list}"))
}

/// Route ids of a `ROUTE_LIST` payload, in reply order.
fn listed_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("ROUTE_LIST payload is an array")
        .iter()
        .map(|route| {
            route["route_id"]
                .as_str()
                .expect("route_id is a string")
                .to_string()
        })
        .collect()
}

/// The domains of a listed route, sorted (the spec compares domains as a set).
fn sorted_domains(route: &Value) -> Vec<String> {
    let mut domains: Vec<String> = route["domains"]
        .as_array()
        .expect("domains is an array")
        .iter()
        .map(|d| d.as_str().expect("domain is a string").to_string())
        .collect();
    domains.sort();
    domains
}

/// Asserts the §2.1 shape `<instance>-<unix_seconds>-<32 lowercase hex digits>`.
fn assert_session_id(sid: &str, instance_part: &str) {
    let mut parts = sid.rsplitn(3, '-');
    let hex = parts.next().unwrap_or_default();
    let unix = parts.next().unwrap_or_default();
    let instance = parts.next().unwrap_or_default();
    assert_eq!(instance, instance_part, "instance part of session id {sid}");
    assert_eq!(hex.len(), 32, "random part of session id {sid}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "random part of session id {sid} is lowercase hex"
    );
    assert!(
        !unix.is_empty() && unix.bytes().all(|b| b.is_ascii_digit()),
        "unix seconds of session id {sid}"
    );
    let unix: u64 = unix.parse().expect("unix seconds fit u64");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        unix <= now + 1 && unix + 120 >= now,
        "registration time {unix} in {sid} is not now ({now})"
    );
    assert!(!sid.contains('|'), "session id {sid} contains |");
}

/// Asserts an RFC 3339 UTC timestamp with whole seconds: `2024-12-20T11:35:00Z` (§1.4).
fn assert_timestamp(value: &Value, what: &str) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a timestamp, got {value}"));
    let well_formed = text.len() == 20
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    assert!(well_formed, "{what}: {text} is not YYYY-MM-DDTHH:MM:SSZ");
}

/// JSON types of the `SESSION_INFO` keys (§4.4).
#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Int,
    Bool,
    Object,
    StrArray,
    Time,
    TimeOrNull,
}

const SESSION_INFO_KEYS: &[(&str, Kind)] = &[
    ("session_id", Kind::Str),
    ("service_name", Kind::Str),
    ("instance_name", Kind::Str),
    ("maintenance_port", Kind::Int),
    ("connected_at", Kind::Time),
    ("uptime_seconds", Kind::Int),
    ("last_activity", Kind::Time),
    ("last_apply", Kind::TimeOrNull),
    ("routes_active", Kind::Int),
    ("routes_staged", Kind::Int),
    ("metadata", Kind::Object),
    ("subscriptions", Kind::StrArray),
    ("liveness", Kind::Str),
    ("connections", Kind::Int),
    ("draining", Kind::Bool),
    ("in_maintenance", Kind::Bool),
    ("staged_expires_at", Kind::TimeOrNull),
    ("ignored_options", Kind::StrArray),
    ("events_dropped", Kind::Int),
];

fn assert_kind(info: &Value, key: &str, kind: Kind) {
    let value = info
        .get(key)
        .unwrap_or_else(|| panic!("SESSION_INFO lacks key {key}: {info}"));
    let ok = match kind {
        Kind::Str => value.is_string(),
        Kind::Int => value.is_u64() || value.is_i64(),
        Kind::Bool => value.is_boolean(),
        Kind::Object => value.is_object(),
        Kind::StrArray => value
            .as_array()
            .is_some_and(|items| items.iter().all(Value::is_string)),
        Kind::Time => {
            assert_timestamp(value, key);
            true
        }
        Kind::TimeOrNull => {
            if !value.is_null() {
                assert_timestamp(value, key);
            }
            true
        }
    };
    assert!(ok, "SESSION_INFO key {key} should be {kind:?}, got {value}");
}

// ---------------------------------------------------------------------------------------------
// REGISTER (§2.1, §2.2, §4.1)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_answers_ack_with_a_session_id_of_the_spec_format() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = register_line(
        &mut pipe,
        r#"REGISTER|shop|shop-1|3001|{"version":"1.4.0"}"#,
    )
    .await;
    assert_session_id(&sid, "shop-1");

    let other = pipe.register("shop", "shop-2").await;
    assert_session_id(&other, "shop-2");
    assert_ne!(
        &sid[sid.len() - 32..],
        &other[other.len() - 32..],
        "each session gets its own random part"
    );
}

#[tokio::test]
async fn register_session_id_sanitises_and_cuts_the_instance_name() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;

    // ':' and '@' are valid in an instance name but outside [A-Za-z0-9._-] → '_'.
    let sid = pipe.register("shop", "web:1@host.a").await;
    assert_session_id(&sid, "web_1_host.a");
    assert_eq!(
        session_info(&mut pipe, &sid).await["instance_name"],
        "web:1@host.a"
    );

    // Cut to 64 characters.
    let sid = pipe.register("shop", &"i".repeat(100)).await;
    assert_session_id(&sid, &"i".repeat(64));

    // Empty instance name → the peer's IP address as text.
    let sid = pipe.register("shop", "").await;
    assert_session_id(&sid, "127.0.0.1");
    assert_eq!(
        session_info(&mut pipe, &sid).await["instance_name"],
        "127.0.0.1"
    );
}

#[tokio::test]
async fn register_with_same_service_and_instance_replaces_the_old_session() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut old_conn = app.pipe().await;
    let old = old_conn.register("shop", "shop-1").await;
    old_conn
        .add_route(&old, "shop.example.com", "/", &backend.url())
        .await;
    old_conn.apply(&old).await;
    old_conn
        .add_route(&old, "shop.example.com", "/staged", &backend.url())
        .await;

    let mut new_conn = app.pipe().await;
    let new = new_conn.register("shop", "shop-1").await;
    assert_ne!(new, old);
    assert_session_id(&new, "shop-1");

    // The old id is unknown everywhere.
    for line in [
        format!("PING|{old}"),
        format!("SESSION_INFO|{old}"),
        format!("ROUTE_LIST|{old}"),
        format!("CONFIG_APPLY|{old}"),
    ] {
        assert_eq!(
            old_conn.cmd(&line).await,
            "ERROR|session not found",
            "{line} on the old connection"
        );
        assert_eq!(
            app.oneshot(&line).await,
            "ERROR|session not found",
            "{line} on a fresh connection"
        );
    }
    // The old connection is detached from it, not closed.
    assert_eq!(old_conn.cmd("PING").await, "PONG");
    assert_eq!(old_conn.cmd("ROUTE_LIST").await, "ERROR|no session");

    // The new session starts empty: no routes, nothing staged.
    assert_eq!(
        new_conn.cmd(&format!("ROUTE_LIST|{new}")).await,
        "ROUTE_LIST_OK|[]"
    );
    let info = session_info(&mut new_conn, &new).await;
    assert_eq!(info["routes_active"], 0);
    assert_eq!(info["routes_staged"], 0);
    assert_eq!(info["last_apply"], Value::Null);
    assert_eq!(config_diff(&mut new_conn, &new).await, no_changes());
    assert_eq!(
        new_conn.cmd(&format!("ROUTE_REMOVE|{new}|r1")).await,
        "ERROR|route not found"
    );

    // The old session's pairs were released: another service may claim them now.
    let mut other = app.pipe().await;
    let other_sid = other.register("other", "other-1").await;
    other
        .add_route(&other_sid, "shop.example.com", "/", &backend.url())
        .await;
    other.apply(&other_sid).await;
}

#[tokio::test]
async fn register_with_another_instance_or_service_keeps_the_first_session() {
    let (app, mut pipe, first) = start_session("shop", "shop-1").await;
    assert_eq!(
        pipe.add_route(&first, "shop.example.com", "/", "http://127.0.0.1:9")
            .await,
        "r1"
    );

    let mut second = app.pipe().await;
    let same_service = second.register("shop", "shop-2").await;
    let same_instance = second.register("other", "shop-1").await;
    assert_ne!(same_service, first);
    assert_ne!(same_instance, first);

    assert_eq!(pipe.cmd(&format!("PING|{first}")).await, "PONG");
    assert_eq!(listed_ids(&route_list(&mut pipe, &first).await), ["r1"]);
}

// ---------------------------------------------------------------------------------------------
// PING (§4.3) and session resolution (§2.3)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ping_checks_a_named_session_and_answers_a_bare_probe() {
    let (app, mut pipe, sid) = start_session("shop", "shop-1").await;
    expect_replies(
        &mut pipe,
        &[
            (format!("PING|{sid}"), "PONG"),
            (format!("PING|{sid}|extra|fields"), "PONG"),
            ("PING".to_string(), "PONG"),
            ("PING|".to_string(), "PONG"),
            ("PING|nosuch".to_string(), "ERROR|session not found"),
            (format!("PING|{sid}0"), "ERROR|session not found"),
        ],
    )
    .await;

    for (line, want) in [
        (format!("PING|{sid}"), "PONG"),
        ("PING".to_string(), "PONG"),
        ("PING|".to_string(), "PONG"),
        ("PING|nosuch".to_string(), "ERROR|session not found"),
    ] {
        assert_eq!(
            app.oneshot(&line).await,
            want,
            "{line} on a fresh connection"
        );
    }
}

/// Every in-scope session command with arguments after the session id, invalid where possible:
/// the session is checked before any field (§1.8 step 4 before step 5).
const SESSION_COMMANDS: &[(&str, &str)] = &[
    ("SESSION_INFO", ""),
    ("CLIENT_SHUTDOWN", ""),
    ("ROUTE_ADD", "-bad|api|ftp://x|abc"),
    ("ROUTE_ADD_BULK", "{"),
    ("ROUTE_UPDATE", "r1|nofield|x"),
    ("ROUTE_REMOVE", "r1"),
    ("ROUTE_LIST", ""),
    ("HEADERS_SET", "ALL|Bad Name|v"),
    ("HEADERS_REMOVE", "ALL|Bad Name"),
    ("OPTIONS_SET", "ALL|timeout|5x"),
    ("OPTIONS_REMOVE", "ALL|"),
    ("HEALTH_SET", "ALL|x|30S|y"),
    ("RATELIMIT_SET", "ALL|-1|x"),
    ("CIRCUIT_BREAKER_SET", "ALL|-1|x|0"),
    ("CONFIG_VALIDATE", ""),
    ("CONFIG_APPLY", ""),
    ("CONFIG_ROLLBACK", ""),
    ("CONFIG_DIFF", ""),
    ("CONFIG_APPLY_PARTIAL", "bogus"),
];

#[tokio::test]
async fn every_session_command_resolves_the_session_before_its_fields() {
    let (app, mut owner, sid) = start_session("shop", "shop-1").await;
    let mut failures = Vec::new();
    for (word, args) in SESSION_COMMANDS {
        let line_for = |id: &str| {
            if args.is_empty() {
                format!("{word}|{id}")
            } else {
                format!("{word}|{id}|{args}")
            }
        };
        let mut cases = vec![
            (line_for("nosuch"), "ERROR|session not found"),
            (line_for(&format!("{sid}0")), "ERROR|session not found"),
            // A fresh connection is attached to no session: no fallback.
            (line_for(""), "ERROR|no session"),
        ];
        if args.is_empty() {
            cases.push((word.to_string(), "ERROR|no session"));
        }
        for (line, want) in cases {
            let got = app.oneshot(&line).await;
            if got != want {
                failures.push(format!("{line}\n    got:  {got}\n    want: {want}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "wrong replies:\n{}",
        failures.join("\n")
    );
    // The real session was never touched.
    assert_eq!(owner.cmd(&format!("PING|{sid}")).await, "PONG");
    assert_eq!(
        owner.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK|[]"
    );
}

#[tokio::test]
async fn unknown_command_words_are_refused_before_anything_else() {
    let (app, mut pipe, sid) = start_session("shop", "shop-1").await;
    for (line, want) in [
        ("FOO".to_string(), "ERROR|unknown command: FOO"),
        ("FOO|x|y".to_string(), "ERROR|unknown command: FOO"),
        (format!("FOO|{sid}"), "ERROR|unknown command: FOO"),
        ("ping".to_string(), "ERROR|unknown command: ping"),
        (
            format!("Route_List|{sid}"),
            "ERROR|unknown command: Route_List",
        ),
        // Server-to-client lines are not commands (§4 intro).
        ("SHUTDOWN".to_string(), "ERROR|unknown command: SHUTDOWN"),
        ("ROUTE_OK|r1".to_string(), "ERROR|unknown command: ROUTE_OK"),
    ] {
        assert_eq!(
            pipe.cmd(&line).await,
            want,
            "{line} on the registered connection"
        );
        assert_eq!(
            app.oneshot(&line).await,
            want,
            "{line} on a fresh connection"
        );
    }
    assert_eq!(pipe.cmd(&format!("PING|{sid}")).await, "PONG");
}

// ---------------------------------------------------------------------------------------------
// SESSION_INFO (§4.4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn session_info_reports_every_key_with_its_type() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = register_line(
        &mut pipe,
        r#"REGISTER|shop|shop-1|3001|{"version":"1.4.0","liveness":"connection","auth_token":"s3cret"}"#,
    )
    .await;

    let reply = pipe.cmd(&format!("SESSION_INFO|{sid}")).await;
    assert!(
        !reply.contains("s3cret"),
        "the auth token is never echoed: {reply}"
    );
    let info = payload(&reply, "SESSION_OK");
    for (key, kind) in SESSION_INFO_KEYS {
        assert_kind(&info, key, *kind);
    }
    assert_eq!(info["session_id"], sid.as_str());
    assert_eq!(info["service_name"], "shop");
    assert_eq!(info["instance_name"], "shop-1");
    assert_eq!(info["maintenance_port"], 3001);
    assert!(info["uptime_seconds"].as_u64().unwrap() < 60);
    assert!(info["last_activity"].as_str() >= info["connected_at"].as_str());
    assert_eq!(info["last_apply"], Value::Null);
    assert_eq!(info["routes_active"], 0);
    assert_eq!(info["routes_staged"], 0);
    assert_eq!(
        info["metadata"],
        json!({"version": "1.4.0"}),
        "reserved keys removed"
    );
    assert_eq!(info["subscriptions"], json!([]));
    assert_eq!(info["liveness"], "connection");
    assert_eq!(info["connections"], 1);
    assert_eq!(info["draining"], false);
    assert_eq!(info["in_maintenance"], false);
    assert_eq!(info["staged_expires_at"], Value::Null, "nothing pending");
    assert_eq!(info["ignored_options"], json!([]));
    assert_eq!(info["events_dropped"], 0);

    // Something pending → staged_expires_at is a timestamp; apply → last_apply set, nothing pending.
    pipe.add_route(&sid, "shop.example.com", "/", "http://127.0.0.1:9")
        .await;
    let info = session_info(&mut pipe, &sid).await;
    assert_timestamp(&info["staged_expires_at"], "staged_expires_at");
    assert_eq!(info["last_apply"], Value::Null);
    pipe.apply(&sid).await;
    let info = session_info(&mut pipe, &sid).await;
    for (key, kind) in SESSION_INFO_KEYS {
        assert_kind(&info, key, *kind);
    }
    assert_timestamp(&info["last_apply"], "last_apply");
    assert_eq!(info["staged_expires_at"], Value::Null);

    // The empty session_id field falls back to the attached session.
    let fallback = payload(&pipe.cmd("SESSION_INFO").await, "SESSION_OK");
    assert_eq!(fallback["session_id"], sid.as_str());
    let fallback = payload(&pipe.cmd("SESSION_INFO|").await, "SESSION_OK");
    assert_eq!(fallback["session_id"], sid.as_str());
}

#[tokio::test]
async fn session_info_keeps_metadata_as_registered() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let cases: &[(&str, Value, u64)] = &[
        // A bare port number written by older clients is legacy text.
        (
            "REGISTER|api|api-v2|9000|9001",
            json!({"legacy": "9001"}),
            9000,
        ),
        ("REGISTER|api|api-3|0|null", json!({}), 0),
        ("REGISTER|api|api-4|0|{}", json!({}), 0),
        ("REGISTER|api|api-5|0|", json!({}), 0),
        ("REGISTER|api|api-6|", json!({}), 0),
        (
            "REGISTER|api|api-7|65535|  {\"a\":1}  ",
            json!({"a": 1}),
            65535,
        ),
        // The metadata is a rest field: it may contain '|'.
        (
            r#"REGISTER|api|api-8|0|{"note":"a|b"}"#,
            json!({"note": "a|b"}),
            0,
        ),
        (
            "REGISTER|api|api-9|0|legacy text|with pipe",
            json!({"legacy": "legacy text|with pipe"}),
            0,
        ),
        (
            r#"REGISTER|api|api-10|0|{"liveness":"lease","k":"v"}"#,
            json!({"k": "v"}),
            0,
        ),
    ];
    for (line, metadata, port) in cases {
        let sid = register_line(&mut pipe, line).await;
        let reply = pipe.cmd(&format!("SESSION_INFO|{sid}")).await;
        assert_eq!(
            reply.matches('|').count(),
            1,
            "no raw | inside a JSON payload (§1.5): {reply}"
        );
        let info = payload(&reply, "SESSION_OK");
        assert_eq!(&info["metadata"], metadata, "metadata after {line}");
        assert_eq!(
            info["maintenance_port"], *port,
            "maintenance_port after {line}"
        );
    }
    let lease = register_line(&mut pipe, r#"REGISTER|api|api-11|0|{"liveness":"lease"}"#).await;
    assert_eq!(session_info(&mut pipe, &lease).await["liveness"], "lease");
}

#[tokio::test]
async fn session_info_counts_active_and_pending_routes() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    for path in ["/a", "/b", "/c"] {
        pipe.add_route(&sid, "a.example.com", path, &url).await;
    }
    let counts = |info: &Value| (info["routes_active"].clone(), info["routes_staged"].clone());
    assert_eq!(
        counts(&session_info(&mut pipe, &sid).await),
        (json!(0), json!(3))
    );

    pipe.apply(&sid).await;
    assert_eq!(
        counts(&session_info(&mut pipe, &sid).await),
        (json!(3), json!(0))
    );

    // modified + pending_removal + staged all count as staged.
    expect_replies(
        &mut pipe,
        &[
            (format!("ROUTE_UPDATE|{sid}|r1|priority|5"), "ROUTE_OK"),
            (format!("ROUTE_REMOVE|{sid}|r2"), "ROUTE_OK"),
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/d|{url}|0"),
                "ROUTE_OK|r4",
            ),
        ],
    )
    .await;
    assert_eq!(
        counts(&session_info(&mut pipe, &sid).await),
        (json!(3), json!(3))
    );

    assert_eq!(pipe.cmd(&format!("CONFIG_ROLLBACK|{sid}")).await, "OK");
    assert_eq!(
        counts(&session_info(&mut pipe, &sid).await),
        (json!(3), json!(0))
    );
}

#[tokio::test]
async fn session_info_lists_ignored_options_in_order() {
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    let elements: Vec<String> = (1..=10)
        .map(|i| {
            format!(
                r#"{{"domains":"d{i}.example.com","path":"/","backend_url":"http://127.0.0.1:9"}}"#
            )
        })
        .collect();
    let reply = pipe
        .cmd(&format!("ROUTE_ADD_BULK|{sid}|[{}]", elements.join(",")))
        .await;
    assert!(reply.starts_with("ROUTE_BULK_OK|"), "{reply}");
    // "Ascending" is by number: r2 before r10.
    let ids: Vec<String> = (1..=10).map(|i| format!("r{i}")).collect();
    assert_eq!(listed_ids(&route_list(&mut pipe, &sid).await), ids);

    expect_replies(
        &mut pipe,
        &[
            (format!("OPTIONS_SET|{sid}|r10|zeta|1"), "OPTIONS_OK"),
            (format!("OPTIONS_SET|{sid}|r2|zeta|1"), "OPTIONS_OK"),
            (format!("OPTIONS_SET|{sid}|r2|alpha|x"), "OPTIONS_OK"),
            (
                format!("OPTIONS_SET|{sid}|ALL|zz_custom|anything"),
                "OPTIONS_OK",
            ),
            // Keys are case-sensitive: `Timeout` is unknown, `timeout` is known.
            (format!("OPTIONS_SET|{sid}|ALL|Timeout|30s"), "OPTIONS_OK"),
            (format!("OPTIONS_SET|{sid}|ALL|timeout|30s"), "OPTIONS_OK"),
        ],
    )
    .await;
    assert_eq!(
        session_info(&mut pipe, &sid).await["ignored_options"],
        json!([
            "ALL:Timeout",
            "ALL:zz_custom",
            "r2:alpha",
            "r2:zeta",
            "r10:zeta"
        ])
    );

    expect_replies(
        &mut pipe,
        &[
            (format!("OPTIONS_REMOVE|{sid}|ALL|zz_custom"), "OPTIONS_OK"),
            (format!("ROUTE_REMOVE|{sid}|r10"), "ROUTE_OK"),
        ],
    )
    .await;
    assert_eq!(
        session_info(&mut pipe, &sid).await["ignored_options"],
        json!(["ALL:Timeout", "r2:alpha", "r2:zeta"])
    );
}

#[tokio::test]
async fn session_info_counts_open_attached_connections() {
    let (app, mut pipe, sid) = start_session("shop", "shop-1").await;
    assert_eq!(session_info(&mut pipe, &sid).await["connections"], 1);

    let mut second = app.pipe().await;
    assert_eq!(second.cmd(&format!("PING|{sid}")).await, "PONG");
    assert_eq!(session_info(&mut pipe, &sid).await["connections"], 2);

    drop(second);
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    loop {
        let count = session_info(&mut pipe, &sid).await["connections"].clone();
        if count == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections still {count} after the second connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// CLIENT_SHUTDOWN (§2.8, §4.5)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_shutdown_ends_the_session_and_closes_the_connection() {
    let backend = Backend::start("b").await;
    let (app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "shop.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    pipe.add_route(&sid, "shop.example.com", "/staged", &backend.url())
        .await;

    assert_eq!(
        pipe.cmd(&format!("CLIENT_SHUTDOWN|{sid}")).await,
        "SHUTDOWN_OK"
    );
    assert!(
        pipe.closed_within(REPLY_WAIT).await,
        "the registry closes the connection after SHUTDOWN_OK"
    );

    for line in [
        format!("PING|{sid}"),
        format!("SESSION_INFO|{sid}"),
        format!("ROUTE_LIST|{sid}"),
    ] {
        assert_eq!(
            app.oneshot(&line).await,
            "ERROR|session not found",
            "{line}"
        );
    }
    // Its pairs were released.
    let mut other = app.pipe().await;
    let other_sid = other.register("other", "other-1").await;
    other
        .add_route(&other_sid, "shop.example.com", "/", &backend.url())
        .await;
    other.apply(&other_sid).await;
}

#[tokio::test]
async fn client_shutdown_keeps_a_connection_attached_to_another_live_session() {
    let (_app, mut pipe, first) = start_session("alpha", "alpha-1").await;
    let second = pipe.register("beta", "beta-1").await;

    assert_eq!(
        pipe.cmd(&format!("CLIENT_SHUTDOWN|{first}")).await,
        "SHUTDOWN_OK"
    );
    assert_eq!(pipe.cmd(&format!("PING|{second}")).await, "PONG");
    assert_eq!(
        pipe.cmd(&format!("PING|{first}")).await,
        "ERROR|session not found"
    );
    // Now attached to exactly one live session: the fallback picks it.
    let info = payload(&pipe.cmd("SESSION_INFO").await, "SESSION_OK");
    assert_eq!(info["session_id"], second.as_str());
}

#[tokio::test]
async fn client_shutdown_from_a_fresh_connection_closes_only_that_connection() {
    let (app, mut pipe, sid) = start_session("shop", "shop-1").await;
    let mut fresh = app.pipe().await;
    assert_eq!(
        fresh.cmd(&format!("CLIENT_SHUTDOWN|{sid}")).await,
        "SHUTDOWN_OK"
    );
    assert!(
        fresh.closed_within(REPLY_WAIT).await,
        "the connection that carried CLIENT_SHUTDOWN closes"
    );

    // The registering connection is detached, not closed.
    assert_eq!(
        pipe.cmd(&format!("PING|{sid}")).await,
        "ERROR|session not found"
    );
    assert_eq!(pipe.cmd("PING").await, "PONG");
}

// ---------------------------------------------------------------------------------------------
// ROUTE_ADD (§4.6)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn route_ids_come_from_one_registry_wide_counter_and_are_never_reused() {
    let (app, mut a, sa) = start_session("shop", "shop-1").await;
    expect_replies(
        &mut a,
        &[
            (
                format!("ROUTE_ADD|{sa}|a.example.com|/|http://127.0.0.1:9|0"),
                "ROUTE_OK|r1",
            ),
            (
                format!("ROUTE_ADD|{sa}|a.example.com|/x|http://127.0.0.1:9|0"),
                "ROUTE_OK|r2",
            ),
            (format!("CONFIG_ROLLBACK|{sa}"), "OK"),
            (
                format!("ROUTE_ADD|{sa}|a.example.com|/|http://127.0.0.1:9|0"),
                "ROUTE_OK|r3",
            ),
        ],
    )
    .await;

    let mut b = app.pipe().await;
    let sb = b.register("other", "other-1").await;
    let bad_bulk = r#"[{"domains":"c.example.com","path":"/","backend_url":"http://h"},{"domains":"d.example.com","path":"/","backend_url":"ftp://h"}]"#;
    expect_replies(
        &mut b,
        &[
            (
                format!("ROUTE_ADD|{sb}|b.example.com|/|http://127.0.0.1:9|0"),
                "ROUTE_OK|r4",
            ),
            // A failed bulk allocates no id.
            (
                format!("ROUTE_ADD_BULK|{sb}|{bad_bulk}"),
                "ERROR|route 1: invalid backend url format",
            ),
            (
                format!("ROUTE_ADD|{sb}|b.example.com|/y|http://127.0.0.1:9|0"),
                "ROUTE_OK|r5",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn route_add_normalises_domains_and_path_and_keeps_the_backend_as_sent() {
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD|{sid}| Shop.Example.COM. ,www.shop.example.com,shop.example.com,, | /api/ | HTTP://Backend.Local:8080/ | "),
                "ROUTE_OK|r1",
            ),
            (format!("ROUTE_ADD|{sid}|*.example.com,10.0.0.1|/a%20b/c|http://[::1]:8080|-10000"), "ROUTE_OK|r2"),
            (format!("ROUTE_ADD|{sid}|x.example.com|/|wss://h.example.com/base|10000"), "ROUTE_OK|r3"),
            // priority is optional.
            (format!("ROUTE_ADD|{sid}|y.example.com|/|https://h.example.com"), "ROUTE_OK|r4"),
            // Pairs compare normalised: shop.example.com/api is taken by r1.
            (format!("ROUTE_ADD|{sid}|shop.example.com|/api|http://other:1|0"), "ERROR|duplicate route: shop.example.com/api"),
        ],
    )
    .await;

    let list = route_list(&mut pipe, &sid).await;
    let r1 = listed(&list, "r1");
    assert_eq!(
        sorted_domains(r1),
        ["shop.example.com", "www.shop.example.com"]
    );
    assert_eq!(r1["path"], "/api");
    assert_eq!(r1["backend"], "HTTP://Backend.Local:8080/");
    assert_eq!(r1["backend_url"], "HTTP://Backend.Local:8080/");
    assert_eq!(r1["priority"], 0);
    assert_eq!(r1["status"], "staged");

    let r2 = listed(&list, "r2");
    assert_eq!(sorted_domains(r2), ["*.example.com", "10.0.0.1"]);
    assert_eq!(r2["path"], "/a%20b/c");
    assert_eq!(r2["backend"], "http://[::1]:8080");
    assert_eq!(r2["priority"], -10000);
    assert_eq!(listed(&list, "r3")["priority"], 10000);
    assert_eq!(listed(&list, "r3")["backend"], "wss://h.example.com/base");
    assert_eq!(listed(&list, "r4")["priority"], 0);
}

#[tokio::test]
async fn route_add_refuses_duplicates_and_more_than_32_domains() {
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    let domains = |prefix: &str, n: usize| -> Vec<String> {
        (1..=n)
            .map(|i| format!("{prefix}{i}.example.com"))
            .collect()
    };
    let thirty_three = domains("d", 33).join(",");
    let thirty_two = domains("d", 32).join(",");
    // 33 items, one a duplicate: 32 distinct.
    let mut with_duplicate = domains("e", 32);
    with_duplicate.push("E1.example.com.".to_string());
    // Items are checked before their number.
    let mut bad_last = domains("f", 32);
    bad_last.push("-x.com".to_string());

    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/x|http://127.0.0.1:9|0"),
                "ROUTE_OK|r1",
            ),
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/x|http://127.0.0.1:10|5"),
                "ERROR|duplicate route: a.example.com/x",
            ),
            (
                format!("ROUTE_ADD|{sid}|b.example.com,a.example.com|/x|http://127.0.0.1:9|0"),
                "ERROR|duplicate route: a.example.com/x",
            ),
            (
                format!("ROUTE_ADD|{sid}|{thirty_three}|/|http://127.0.0.1:9|0"),
                "ERROR|too many domains",
            ),
            (
                format!(
                    "ROUTE_ADD|{sid}|{},-x.com|/|http://127.0.0.1:9|0",
                    domains("g", 40).join(",")
                ),
                "ERROR|invalid domain: -x.com",
            ),
            (
                format!(
                    "ROUTE_ADD|{sid}|{}|/|http://127.0.0.1:9|0",
                    bad_last.join(",")
                ),
                "ERROR|invalid domain: -x.com",
            ),
            (
                format!("ROUTE_ADD|{sid}| , ,|/|http://127.0.0.1:9|0"),
                "ERROR|no domains specified",
            ),
            (
                format!("ROUTE_ADD|{sid}|{thirty_two}|/|http://127.0.0.1:9|0"),
                "ROUTE_OK|r2",
            ),
            (
                format!(
                    "ROUTE_ADD|{sid}|{}|/|http://127.0.0.1:9|0",
                    with_duplicate.join(",")
                ),
                "ROUTE_OK|r3",
            ),
        ],
    )
    .await;
    let list = route_list(&mut pipe, &sid).await;
    assert_eq!(listed(&list, "r2")["domains"].as_array().unwrap().len(), 32);
    assert_eq!(listed(&list, "r3")["domains"].as_array().unwrap().len(), 32);
}

// ---------------------------------------------------------------------------------------------
// ROUTE_ADD_BULK (§4.7)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn route_add_bulk_stages_every_element_in_input_order() {
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    let bulk = concat!(
        r#"[{"domains":["a.example.com"],"path":"/","backend_url":"http://10.0.0.7:3000"},"#,
        r#"{"domains":"b.example.com, c.example.com","path":"/b/","backend":"http://10.0.0.8:3000","priority":5,"note":"x|y"},"#,
        r#"{"domains":["d.example.com"],"path":"/","backend_url":"http://10.0.0.9:3000","backend":"http://ignored:1"}]"#
    );
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD_BULK|{sid}|{bulk}"),
                r#"ROUTE_BULK_OK|[{"route_id":"r1","status":"ok"},{"route_id":"r2","status":"ok"},{"route_id":"r3","status":"ok"}]"#,
            ),
            (format!("ROUTE_ADD_BULK|{sid}|[]"), "ROUTE_BULK_OK|[]"),
            (
                format!(r#"ROUTE_ADD_BULK|{sid}| [{{"domains":"e.example.com","path":"/","backend_url":"http://h","priority":null,"extra":[1,2]}}] "#),
                r#"ROUTE_BULK_OK|[{"route_id":"r4","status":"ok"}]"#,
            ),
        ],
    )
    .await;

    let list = route_list(&mut pipe, &sid).await;
    assert_eq!(listed_ids(&list), ["r1", "r2", "r3", "r4"]);
    let r1 = listed(&list, "r1");
    assert_eq!(r1["domains"], json!(["a.example.com"]));
    assert_eq!(r1["backend"], "http://10.0.0.7:3000");
    assert_eq!(r1["priority"], 0);
    let r2 = listed(&list, "r2");
    assert_eq!(sorted_domains(r2), ["b.example.com", "c.example.com"]);
    assert_eq!(r2["path"], "/b");
    assert_eq!(r2["backend"], "http://10.0.0.8:3000");
    assert_eq!(r2["priority"], 5);
    assert_eq!(
        listed(&list, "r3")["backend_url"],
        "http://10.0.0.9:3000",
        "backend_url wins over backend"
    );
    assert_eq!(listed(&list, "r4")["priority"], 0, "null priority = 0");
    for route in list.as_array().unwrap() {
        assert_eq!(route["status"], "staged");
    }
}

#[tokio::test]
async fn route_add_bulk_is_all_or_nothing() {
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    let ok =
        |domain: &str| format!(r#"{{"domains":"{domain}","path":"/","backend_url":"http://h"}}"#);
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                r#"[{},{{"domains":"y.example.com","path":"/","backend_url":"ftp://h"}}]"#,
                ok("x.example.com")
            ),
            "ERROR|route 1: invalid backend url format",
        ),
        (
            format!("[{},{}]", ok("g.example.com"), ok("g.example.com")),
            "ERROR|route 1: duplicate route: g.example.com/",
        ),
        (
            r#"[{"domains":"h.example.com","path":null,"backend_url":"http://h"}]"#.to_string(),
            "ERROR|route 0: path cannot be empty",
        ),
        (
            r#"[{"path":"/","backend_url":"http://h"}]"#.to_string(),
            "ERROR|route 0: no domains specified",
        ),
        (
            r#"[{"domains":"h.example.com","path":"/"}]"#.to_string(),
            "ERROR|route 0: invalid backend url format",
        ),
        (
            r#"[{"domains":"h.example.com","path":"/","backend_url":"http://h","priority":"5"}]"#
                .to_string(),
            "ERROR|route 0: invalid json",
        ),
        (
            r#"[{"domains":[1],"path":"/","backend_url":"http://h"}]"#.to_string(),
            "ERROR|route 0: invalid json",
        ),
        (
            r#"[{"domains":"h.example.com","path":"/","backend_url":"http://h","priority":10001}]"#
                .to_string(),
            "ERROR|route 0: invalid priority",
        ),
        ("{".to_string(), "ERROR|invalid json"),
        (
            r#"{"domains":"h.example.com","path":"/","backend_url":"http://h"}"#.to_string(),
            "ERROR|invalid json",
        ),
    ];
    for (json_field, want) in cases {
        assert_eq!(
            pipe.cmd(&format!("ROUTE_ADD_BULK|{sid}|{json_field}"))
                .await,
            want,
            "bulk {json_field}"
        );
    }
    assert_eq!(
        pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK|[]"
    );
    assert_eq!(config_diff(&mut pipe, &sid).await, no_changes());
    assert_eq!(
        pipe.add_route(&sid, "x.example.com", "/", "http://h").await,
        "r1",
        "failed bulks allocate no id"
    );
}

// ---------------------------------------------------------------------------------------------
// ROUTE_UPDATE (§4.8), ROUTE_REMOVE (§4.9), ROUTE_LIST (§4.10)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn route_update_changes_each_field() {
    let (backend1, backend2) = (Backend::start("b1").await, Backend::start("b2").await);
    let (b1, b2) = (backend1.url(), backend2.url());
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "a.example.com", "/a", &b1).await;
    pipe.add_route(&sid, "a.example.com", "/b", &b1).await;
    pipe.apply(&sid).await;
    pipe.add_route(&sid, "s.example.com", "/s", &b1).await;

    expect_replies(
        &mut pipe,
        &[
            // A staged-only route stays staged.
            (format!("ROUTE_UPDATE|{sid}|r3|priority|3"), "ROUTE_OK"),
            // An active route becomes modified, field by field.
            (
                format!("ROUTE_UPDATE|{sid}|r1|backend_url|{b2}"),
                "ROUTE_OK",
            ),
            (format!("ROUTE_UPDATE|{sid}|r1|priority|7"), "ROUTE_OK"),
            (
                format!("ROUTE_UPDATE|{sid}|r1|domains|a.example.com, A2.example.com"),
                "ROUTE_OK",
            ),
            (format!("ROUTE_UPDATE|{sid}|r1|path|/a2/"), "ROUTE_OK"),
            // `backend` is an alias of backend_url.
            (format!("ROUTE_UPDATE|{sid}|r2|backend|{b2}"), "ROUTE_OK"),
        ],
    )
    .await;
    let list = route_list(&mut pipe, &sid).await;
    let r1 = listed(&list, "r1");
    assert_eq!(r1["status"], "modified");
    assert_eq!(sorted_domains(r1), ["a.example.com", "a2.example.com"]);
    assert_eq!(r1["path"], "/a2");
    assert_eq!(r1["backend"], b2.as_str());
    assert_eq!(r1["backend_url"], b2.as_str());
    assert_eq!(r1["priority"], 7);
    assert_eq!(
        r1["active"],
        json!({"domains": ["a.example.com"], "path": "/a", "backend": b1, "priority": 0})
    );
    assert_eq!(listed(&list, "r2")["status"], "modified");
    assert_eq!(listed(&list, "r2")["backend"], b2.as_str());
    let r3 = listed(&list, "r3");
    assert_eq!(
        (r3["status"].clone(), r3["priority"].clone()),
        (json!("staged"), json!(3))
    );

    // Back to the active values: active again. Empty priority = 0.
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_UPDATE|{sid}|r2|backend_url|{b1}"),
                "ROUTE_OK",
            ),
            (format!("ROUTE_UPDATE|{sid}|r3|priority|"), "ROUTE_OK"),
        ],
    )
    .await;
    let list = route_list(&mut pipe, &sid).await;
    assert_eq!(listed(&list, "r2")["status"], "active");
    assert_eq!(listed(&list, "r2")["active"], Value::Null);
    assert_eq!(listed(&list, "r3")["priority"], 0);
}

#[tokio::test]
async fn route_update_errors() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (app, mut pipe, sid) = start_session("shop", "shop-1").await;
    for path in ["/a", "/b", "/c"] {
        pipe.add_route(&sid, "a.example.com", path, &url).await;
    }
    pipe.apply(&sid).await;
    assert_eq!(
        pipe.cmd(&format!("ROUTE_REMOVE|{sid}|r3")).await,
        "ROUTE_OK"
    );

    let mut other = app.pipe().await;
    let other_sid = other.register("other", "other-1").await;
    assert_eq!(
        other
            .add_route(&other_sid, "o.example.com", "/", &url)
            .await,
        "r4"
    );
    other.apply(&other_sid).await;

    let before = pipe.cmd(&format!("ROUTE_LIST|{sid}")).await;
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_UPDATE|{sid}|r1|x|1"),
                "ERROR|unknown field: x",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r99|priority|1"),
                "ERROR|route not found",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r01|priority|1"),
                "ERROR|route not found",
            ),
            // pending_removal: not in staged.
            (
                format!("ROUTE_UPDATE|{sid}|r3|priority|1"),
                "ERROR|route not found",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r4|priority|1"),
                "ERROR|permission denied: route r4 belongs to another session",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|priority|abc"),
                "ERROR|invalid priority",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|priority|10001"),
                "ERROR|invalid priority",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|backend_url|ftp://x"),
                "ERROR|invalid backend url format",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|backend|http://"),
                "ERROR|invalid backend url format",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|domains|"),
                "ERROR|no domains specified",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|domains|-a.com"),
                "ERROR|invalid domain: -a.com",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|path|"),
                "ERROR|path cannot be empty",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|path|a"),
                "ERROR|invalid path: a",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r2|path|/a"),
                "ERROR|duplicate route: a.example.com/a",
            ),
            (
                format!("ROUTE_UPDATE|{sid}|r1|priority"),
                "ERROR|invalid format",
            ),
        ],
    )
    .await;
    assert_eq!(
        pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        before,
        "failed updates change nothing"
    );
}

#[tokio::test]
async fn route_remove_drops_staged_routes_and_marks_active_ones() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "a.example.com", "/a", &url).await;
    pipe.apply(&sid).await;
    pipe.add_route(&sid, "a.example.com", "/b", &url).await;

    expect_replies(
        &mut pipe,
        &[
            (format!("HEADERS_SET|{sid}|r2|X-A|1"), "HEADERS_OK"),
            (format!("ROUTE_REMOVE|{sid}|r2"), "ROUTE_OK"),
            (format!("ROUTE_REMOVE|{sid}|r2"), "ERROR|route not found"),
        ],
    )
    .await;
    // The staged-only route vanished with its route-targeted header.
    assert_eq!(listed_ids(&route_list(&mut pipe, &sid).await), ["r1"]);
    assert_eq!(config_diff(&mut pipe, &sid).await, no_changes());

    expect_replies(
        &mut pipe,
        &[
            (format!("ROUTE_REMOVE|{sid}|r1"), "ROUTE_OK"),
            (format!("ROUTE_REMOVE|{sid}|r1"), "ERROR|route not found"),
            (format!("ROUTE_REMOVE|{sid}|r9"), "ERROR|route not found"),
            (format!("ROUTE_REMOVE|{sid}"), "ERROR|invalid format"),
        ],
    )
    .await;
    let list = route_list(&mut pipe, &sid).await;
    let r1 = listed(&list, "r1");
    assert_eq!(r1["status"], "pending_removal");
    assert_eq!(r1["path"], "/a");
    assert_eq!(r1["backend"], url.as_str());
    assert_eq!(r1["active"], Value::Null);

    pipe.apply(&sid).await;
    assert_eq!(
        pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK|[]"
    );
    assert_eq!(
        pipe.cmd(&format!("ROUTE_REMOVE|{sid}|r1")).await,
        "ERROR|route not found"
    );
}

#[tokio::test]
async fn route_list_reports_every_key_and_all_four_statuses() {
    let (backend1, backend2) = (Backend::start("b1").await, Backend::start("b2").await);
    let (b1, b2) = (backend1.url(), backend2.url());
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    assert_eq!(
        pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK|[]"
    );
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/a|{b1}|0"),
                "ROUTE_OK|r1",
            ),
            (
                format!("ROUTE_ADD|{sid}|b.example.com|/b|{b1}|5"),
                "ROUTE_OK|r2",
            ),
            (
                format!("ROUTE_ADD|{sid}|c.example.com|/c|{b1}|0"),
                "ROUTE_OK|r3",
            ),
            (format!("CONFIG_APPLY|{sid}"), "OK"),
            (
                format!("ROUTE_UPDATE|{sid}|r2|backend_url|{b2}"),
                "ROUTE_OK",
            ),
            (format!("ROUTE_UPDATE|{sid}|r2|priority|6"), "ROUTE_OK"),
            (format!("ROUTE_REMOVE|{sid}|r3"), "ROUTE_OK"),
            (
                format!("ROUTE_ADD|{sid}|d.example.com|/d|{b2}|-1"),
                "ROUTE_OK|r4",
            ),
        ],
    )
    .await;
    let want = json!([
        {"route_id": "r1", "id": "r1", "domains": ["a.example.com"], "path": "/a", "backend": b1,
         "backend_url": b1, "priority": 0, "status": "active", "in_maintenance": false,
         "healthy": true, "active": null},
        {"route_id": "r2", "id": "r2", "domains": ["b.example.com"], "path": "/b", "backend": b2,
         "backend_url": b2, "priority": 6, "status": "modified", "in_maintenance": false,
         "healthy": true,
         "active": {"domains": ["b.example.com"], "path": "/b", "backend": b1, "priority": 5}},
        {"route_id": "r3", "id": "r3", "domains": ["c.example.com"], "path": "/c", "backend": b1,
         "backend_url": b1, "priority": 0, "status": "pending_removal", "in_maintenance": false,
         "healthy": true, "active": null},
        {"route_id": "r4", "id": "r4", "domains": ["d.example.com"], "path": "/d", "backend": b2,
         "backend_url": b2, "priority": -1, "status": "staged", "in_maintenance": false,
         "healthy": null, "active": null}
    ]);
    assert_eq!(route_list(&mut pipe, &sid).await, want);
}

#[tokio::test]
async fn route_list_falls_back_to_the_one_attached_session() {
    let (app, mut pipe, a) = start_session("alpha", "alpha-1").await;
    pipe.add_route(&a, "a.example.com", "/", "http://127.0.0.1:9")
        .await;
    let named = pipe.cmd(&format!("ROUTE_LIST|{a}")).await;
    assert!(named.starts_with("ROUTE_LIST_OK|[{"), "{named}");
    assert_eq!(pipe.cmd("ROUTE_LIST").await, named);
    assert_eq!(pipe.cmd("ROUTE_LIST|").await, named);

    // A fresh connection has no session to fall back to.
    assert_eq!(app.oneshot("ROUTE_LIST").await, "ERROR|no session");
    assert_eq!(app.oneshot("ROUTE_LIST|").await, "ERROR|no session");

    // Any command naming the session attaches the connection (§2.4).
    let mut second = app.pipe().await;
    assert_eq!(second.cmd(&format!("PING|{a}")).await, "PONG");
    assert_eq!(second.cmd("ROUTE_LIST").await, named);
    assert_eq!(
        second
            .cmd("ROUTE_ADD||b.example.com|/|http://127.0.0.1:9|0")
            .await,
        "ROUTE_OK|r2"
    );
    assert_eq!(listed_ids(&route_list(&mut pipe, &a).await), ["r1", "r2"]);

    // Attached to two live sessions: no fallback.
    let b = pipe.register("beta", "beta-1").await;
    assert_eq!(pipe.cmd("ROUTE_LIST").await, "ERROR|no session");
    assert_eq!(
        pipe.cmd(&format!("ROUTE_LIST|{b}")).await,
        "ROUTE_LIST_OK|[]"
    );
}

// ---------------------------------------------------------------------------------------------
// HEADERS_SET / HEADERS_REMOVE (§4.11, §4.12)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn headers_set_and_remove_stage_response_headers() {
    let backend = Backend::start("b").await;
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "a.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;

    expect_replies(
        &mut pipe,
        &[
            (
                format!("HEADERS_SET|{sid}|ALL|X-Frame-Options|DENY"),
                "HEADERS_OK",
            ),
            // The value is a rest field: it may contain '|'.
            (format!("HEADERS_SET|{sid}|r1|X-Pipe|a|b"), "HEADERS_OK"),
            // Present but empty value.
            (format!("HEADERS_SET|{sid}|r1|X-Empty|"), "HEADERS_OK"),
        ],
    )
    .await;
    let mut want = no_changes();
    want["headers"]["added"] = json!(3);
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);
    pipe.apply(&sid).await;

    expect_replies(
        &mut pipe,
        &[
            // Names are case-insensitive: this replaces X-Frame-Options.
            (
                format!("HEADERS_SET|{sid}|ALL|x-frame-options|SAMEORIGIN"),
                "HEADERS_OK",
            ),
            (format!("HEADERS_REMOVE|{sid}|r1|X-PIPE"), "HEADERS_OK"),
            // Removing a header that is not set is not an error.
            (format!("HEADERS_REMOVE|{sid}|r1|X-Never-Set"), "HEADERS_OK"),
            (
                format!("HEADERS_REMOVE|{sid}|ALL|X-Never-Set"),
                "HEADERS_OK",
            ),
        ],
    )
    .await;
    let mut want = no_changes();
    want["headers"] = json!({"added": 0, "removed": 1, "modified": 1});
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);

    expect_replies(
        &mut pipe,
        &[
            (
                format!("HEADERS_SET|{sid}|ALL|Connection|close"),
                "ERROR|header not allowed: Connection",
            ),
            (
                format!("HEADERS_SET|{sid}|r1|transfer-encoding|chunked"),
                "ERROR|header not allowed: transfer-encoding",
            ),
            (
                format!("HEADERS_SET|{sid}|ALL|Bad Name|x"),
                "ERROR|invalid header name",
            ),
            (
                format!("HEADERS_SET|{sid}|ALL|X-A|caf\u{e9}"),
                "ERROR|invalid header value",
            ),
            (format!("HEADERS_SET|{sid}|ALL|X-A"), "ERROR|invalid format"),
            (
                format!("HEADERS_SET|{sid}|r9|X-A|1"),
                "ERROR|route not found",
            ),
            (
                format!("HEADERS_REMOVE|{sid}|r9|X-A"),
                "ERROR|route not found",
            ),
            (
                format!("HEADERS_REMOVE|{sid}|ALL|Bad Name"),
                "ERROR|invalid header name",
            ),
            (format!("HEADERS_REMOVE|{sid}|ALL"), "ERROR|invalid format"),
        ],
    )
    .await;
    assert_eq!(
        config_diff(&mut pipe, &sid).await,
        want,
        "failed commands change nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// OPTIONS_SET / OPTIONS_REMOVE (§4.13, §4.14)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn options_set_accepts_every_known_key_and_stores_unknown_ones() {
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "a.example.com", "/", "http://127.0.0.1:9")
        .await;
    let settings = [
        ("ALL", "timeout", "30s"),
        ("ALL", "connect_timeout", "100ms"),
        ("ALL", "x-custom", "anything at all"),
        ("r1", "timeout", "1.5"),
        ("r1", "websocket", "YES"),
        ("r1", "compression", "off"),
        ("r1", "http2", "False"),
        ("r1", "http3", "1"),
        ("r1", "backend_protocol", "h2"),
        ("r1", "health_check_interval", "0"),
        ("r1", "health_check_timeout", "10ms"),
        ("r1", "health_check_path", "/healthz?full=1"),
        ("r1", "max_body_size", "10MB"),
        ("r1", "strip_prefix", "on"),
        ("r1", "preserve_host", "no"),
        ("r1", "tls_skip_verify", "0"),
    ];
    for (target, key, value) in settings {
        let line = format!("OPTIONS_SET|{sid}|{target}|{key}|{value}");
        assert_eq!(pipe.cmd(&line).await, "OPTIONS_OK", "{line}");
    }
    let mut want = no_changes();
    want["routes"]["added"] = json!(["r1"]);
    want["options"]["added"] = json!(settings.len());
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);
    assert_eq!(
        session_info(&mut pipe, &sid).await["ignored_options"],
        json!(["ALL:x-custom"])
    );

    let long_key = "k".repeat(129);
    expect_replies(
        &mut pipe,
        &[
            (
                format!("OPTIONS_SET|{sid}|ALL|timeout|5x"),
                "ERROR|invalid value for timeout: 5x",
            ),
            (
                format!("OPTIONS_SET|{sid}|ALL|{long_key}|1"),
                "ERROR|invalid option key",
            ),
            (
                format!("OPTIONS_SET|{sid}|ALL||1"),
                "ERROR|invalid option key",
            ),
            (
                format!("OPTIONS_SET|{sid}|r9|timeout|5s"),
                "ERROR|route not found",
            ),
            (
                format!("OPTIONS_SET|{sid}|ALL|timeout"),
                "ERROR|invalid format",
            ),
            (
                format!("OPTIONS_REMOVE|{sid}|r9|timeout"),
                "ERROR|route not found",
            ),
            (
                format!("OPTIONS_REMOVE|{sid}|ALL|"),
                "ERROR|invalid option key",
            ),
            (format!("OPTIONS_REMOVE|{sid}|ALL"), "ERROR|invalid format"),
        ],
    )
    .await;
    assert_eq!(
        config_diff(&mut pipe, &sid).await,
        want,
        "failed commands change nothing"
    );

    expect_replies(
        &mut pipe,
        &[
            // Removing an absent key is not an error.
            (format!("OPTIONS_REMOVE|{sid}|ALL|never_set"), "OPTIONS_OK"),
            (format!("OPTIONS_REMOVE|{sid}|ALL|x-custom"), "OPTIONS_OK"),
            (format!("OPTIONS_REMOVE|{sid}|r1|timeout"), "OPTIONS_OK"),
            // Setting an existing key replaces it.
            (format!("OPTIONS_SET|{sid}|ALL|timeout|45s"), "OPTIONS_OK"),
        ],
    )
    .await;
    want["options"]["added"] = json!(settings.len() - 2);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);
    assert_eq!(
        session_info(&mut pipe, &sid).await["ignored_options"],
        json!([])
    );
}

#[tokio::test]
async fn options_diff_counts_modified_and_removed_entries() {
    let backend = Backend::start("b").await;
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "a.example.com", "/", &backend.url())
        .await;
    expect_replies(
        &mut pipe,
        &[
            (format!("OPTIONS_SET|{sid}|ALL|timeout|30s"), "OPTIONS_OK"),
            (
                format!("OPTIONS_SET|{sid}|r1|strip_prefix|true"),
                "OPTIONS_OK",
            ),
            (format!("CONFIG_APPLY|{sid}"), "OK"),
            (format!("OPTIONS_SET|{sid}|ALL|timeout|40s"), "OPTIONS_OK"),
            (
                format!("OPTIONS_REMOVE|{sid}|r1|strip_prefix"),
                "OPTIONS_OK",
            ),
            (
                format!("OPTIONS_SET|{sid}|r1|compression|true"),
                "OPTIONS_OK",
            ),
        ],
    )
    .await;
    let mut want = no_changes();
    want["options"] = json!({"added": 1, "removed": 1, "modified": 1});
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);
}

// ---------------------------------------------------------------------------------------------
// HEALTH_SET, RATELIMIT_SET, CIRCUIT_BREAKER_SET (§4.15–4.17)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_ratelimit_and_breaker_set_and_drop_per_target() {
    let backend = Backend::start("b").await;
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "a.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;

    expect_replies(
        &mut pipe,
        &[
            // Bare numbers are seconds.
            (format!("HEALTH_SET|{sid}|ALL|/|30|5"), "HEALTH_OK"),
            // Query allowed, trailing '/' kept, timeout may equal the interval.
            (
                format!("HEALTH_SET|{sid}|r1|/status/?deep=1|1m|1m"),
                "HEALTH_OK",
            ),
            (format!("RATELIMIT_SET|{sid}|ALL|100|1s"), "RATELIMIT_OK"),
            (
                format!("RATELIMIT_SET|{sid}|r1|1000000|24h"),
                "RATELIMIT_OK",
            ),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|10000|1h|1000"),
                "CIRCUIT_OK",
            ),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|r1|5|30s|3"),
                "CIRCUIT_OK",
            ),
        ],
    )
    .await;
    let mut want = no_changes();
    for category in ["health", "ratelimit", "circuit_breaker"] {
        want[category]["added"] = json!(["ALL", "r1"]);
    }
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);
    pipe.apply(&sid).await;

    expect_replies(
        &mut pipe,
        &[
            // 0 drops the target's entry; the other fields may then be empty.
            (format!("HEALTH_SET|{sid}|r1||0|"), "HEALTH_OK"),
            (format!("RATELIMIT_SET|{sid}|r1|0|"), "RATELIMIT_OK"),
            (format!("CIRCUIT_BREAKER_SET|{sid}|r1|0||"), "CIRCUIT_OK"),
            (format!("HEALTH_SET|{sid}|ALL|/ready|30s|5s"), "HEALTH_OK"),
            (format!("RATELIMIT_SET|{sid}|ALL|200|1s"), "RATELIMIT_OK"),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|3|1h|1000"),
                "CIRCUIT_OK",
            ),
        ],
    )
    .await;
    let mut want = no_changes();
    for category in ["health", "ratelimit", "circuit_breaker"] {
        want[category] = json!({"added": [], "removed": ["r1"], "modified": ["ALL"]});
    }
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);

    expect_replies(
        &mut pipe,
        &[
            (
                format!("HEALTH_SET|{sid}|r9|/|10s|1s"),
                "ERROR|route not found",
            ),
            (
                format!("RATELIMIT_SET|{sid}|r9|10|1s"),
                "ERROR|route not found",
            ),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|r9|5|30s|1"),
                "ERROR|route not found",
            ),
            (
                format!("HEALTH_SET|{sid}|ALL|/|10s"),
                "ERROR|invalid format",
            ),
            (
                format!("RATELIMIT_SET|{sid}|ALL|10"),
                "ERROR|invalid format",
            ),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|5|30s"),
                "ERROR|invalid format",
            ),
            (
                format!("HEALTH_SET|{sid}|ALL|health|10s|1s"),
                "ERROR|invalid health path",
            ),
            (
                format!("HEALTH_SET|{sid}|ALL|/|50ms|10ms"),
                "ERROR|invalid interval",
            ),
            (
                format!("HEALTH_SET|{sid}|ALL|/|5s|10s"),
                "ERROR|invalid timeout",
            ),
            (
                format!("RATELIMIT_SET|{sid}|ALL|-1|1s"),
                "ERROR|invalid requests",
            ),
            (
                format!("RATELIMIT_SET|{sid}|ALL|10|50ms"),
                "ERROR|invalid window",
            ),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|10001|30s|1"),
                "ERROR|invalid threshold",
            ),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|5|50ms|1"),
                "ERROR|invalid timeout",
            ),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|5|30s|0"),
                "ERROR|invalid half_open_requests",
            ),
        ],
    )
    .await;
    assert_eq!(
        config_diff(&mut pipe, &sid).await,
        want,
        "failed commands change nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// CONFIG_VALIDATE, CONFIG_APPLY, CONFIG_ROLLBACK (§3.4–3.6, §4.20–4.22)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn config_validate_checks_ownership_again_and_changes_nothing() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (app, mut a, sa) = start_session("shop", "shop-1").await;
    assert_eq!(
        a.cmd(&format!("CONFIG_VALIDATE|{sa}")).await,
        "OK",
        "nothing pending"
    );
    assert_eq!(a.add_route(&sa, "shop.example.com", "/", &url).await, "r1");
    assert_eq!(a.cmd(&format!("CONFIG_VALIDATE|{sa}")).await, "OK");
    let staged = a.cmd(&format!("ROUTE_LIST|{sa}")).await;
    assert_eq!(
        listed(&payload(&staged, "ROUTE_LIST_OK"), "r1")["status"],
        "staged",
        "validate applies nothing"
    );
    assert_eq!(session_info(&mut a, &sa).await["last_apply"], Value::Null);

    // Another service stages the same (still unclaimed) pair and applies first.
    let mut b = app.pipe().await;
    let sb = b.register("other", "other-1").await;
    assert_eq!(b.add_route(&sb, "shop.example.com", "/", &url).await, "r2");
    b.apply(&sb).await;

    let conflict =
        "ERROR|route r1: permission denied: shop.example.com/ is claimed by another service";
    expect_replies(
        &mut a,
        &[
            (format!("CONFIG_VALIDATE|{sa}"), conflict),
            (format!("CONFIG_APPLY|{sa}"), conflict),
            (format!("CONFIG_APPLY_PARTIAL|{sa}|routes"), conflict),
        ],
    )
    .await;
    assert_eq!(a.cmd(&format!("ROUTE_LIST|{sa}")).await, staged);
}

#[tokio::test]
async fn config_apply_activates_staged_routes_and_sets_last_apply() {
    let backend = Backend::start("b").await;
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;

    // Nothing pending: OK, and last_apply stays null.
    assert_eq!(pipe.cmd(&format!("CONFIG_APPLY|{sid}")).await, "OK");
    assert_eq!(
        session_info(&mut pipe, &sid).await["last_apply"],
        Value::Null
    );

    pipe.add_route(&sid, "a.example.com", "/", &backend.url())
        .await;
    assert_eq!(pipe.cmd(&format!("CONFIG_APPLY|{sid}")).await, "OK");
    let info = session_info(&mut pipe, &sid).await;
    assert_timestamp(&info["last_apply"], "last_apply");
    assert_eq!(info["routes_active"], 1);
    assert_eq!(info["routes_staged"], 0);
    assert_eq!(info["staged_expires_at"], Value::Null);
    assert_eq!(
        listed(&route_list(&mut pipe, &sid).await, "r1")["status"],
        "active"
    );
    assert_eq!(config_diff(&mut pipe, &sid).await, no_changes());

    // A later apply with nothing pending leaves last_apply unchanged.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(pipe.cmd(&format!("CONFIG_APPLY|{sid}")).await, "OK");
    assert_eq!(
        session_info(&mut pipe, &sid).await["last_apply"],
        info["last_apply"]
    );
}

#[tokio::test]
async fn config_rollback_restores_staged_to_active() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    pipe.add_route(&sid, "a.example.com", "/a", &url).await;
    pipe.add_route(&sid, "a.example.com", "/b", &url).await;
    assert_eq!(
        pipe.cmd(&format!("HEADERS_SET|{sid}|ALL|X-A|1")).await,
        "HEADERS_OK"
    );
    pipe.apply(&sid).await;
    let applied = pipe.cmd(&format!("ROUTE_LIST|{sid}")).await;

    expect_replies(
        &mut pipe,
        &[
            (format!("ROUTE_UPDATE|{sid}|r1|priority|9"), "ROUTE_OK"),
            (format!("ROUTE_REMOVE|{sid}|r2"), "ROUTE_OK"),
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/c|{url}|0"),
                "ROUTE_OK|r3",
            ),
            (format!("HEADERS_SET|{sid}|ALL|X-A|2"), "HEADERS_OK"),
            (format!("OPTIONS_SET|{sid}|ALL|foo|1"), "OPTIONS_OK"),
            (format!("HEALTH_SET|{sid}|ALL|/|10s|1s"), "HEALTH_OK"),
            (format!("RATELIMIT_SET|{sid}|ALL|10|1s"), "RATELIMIT_OK"),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|5|30s|1"),
                "CIRCUIT_OK",
            ),
            (format!("CONFIG_ROLLBACK|{sid}"), "OK"),
        ],
    )
    .await;
    assert_eq!(pipe.cmd(&format!("ROUTE_LIST|{sid}")).await, applied);
    assert_eq!(config_diff(&mut pipe, &sid).await, no_changes());
    let info = session_info(&mut pipe, &sid).await;
    assert_eq!(info["routes_staged"], 0);
    assert_eq!(info["ignored_options"], json!([]));
    assert_eq!(info["staged_expires_at"], Value::Null);

    // Always OK; discarded ids are not reused.
    assert_eq!(pipe.cmd(&format!("CONFIG_ROLLBACK|{sid}")).await, "OK");
    assert_eq!(
        pipe.add_route(&sid, "a.example.com", "/d", &url).await,
        "r4"
    );
}

// ---------------------------------------------------------------------------------------------
// CONFIG_DIFF (§4.23, §9)
// ---------------------------------------------------------------------------------------------

const EMPTY_DIFF: &str = r#"DIFF_OK|{"routes":{"added":[],"removed":[],"modified":[]},"headers":{"added":0,"removed":0,"modified":0},"options":{"added":0,"removed":0,"modified":0},"health":{"added":[],"removed":[],"modified":[]},"ratelimit":{"added":[],"removed":[],"modified":[]},"circuit_breaker":{"added":[],"removed":[],"modified":[]},"pending":false}"#;

#[tokio::test]
async fn worked_example_of_the_appendix_gives_the_exact_replies() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = register_line(
        &mut pipe,
        r#"REGISTER|shop|shop-1|3001|{"version":"1.4.0"}"#,
    )
    .await;
    assert_session_id(&sid, "shop-1");
    expect_replies(
        &mut pipe,
        &[
            (format!("ROUTE_ADD|{sid}|shop.example.com,www.shop.example.com|/|http://10.0.0.7:3000|0"), "ROUTE_OK|r1"),
            (format!("ROUTE_ADD|{sid}|shop.example.com|/api|http://10.0.0.7:3000|10"), "ROUTE_OK|r2"),
            (format!("HEALTH_SET|{sid}|r2|/api/health|10s|2s"), "HEALTH_OK"),
            (format!("OPTIONS_SET|{sid}|ALL|compression|true"), "OPTIONS_OK"),
            (
                format!("CONFIG_DIFF|{sid}"),
                r#"DIFF_OK|{"routes":{"added":["r1","r2"],"removed":[],"modified":[]},"headers":{"added":0,"removed":0,"modified":0},"options":{"added":1,"removed":0,"modified":0},"health":{"added":["r2"],"removed":[],"modified":[]},"ratelimit":{"added":[],"removed":[],"modified":[]},"circuit_breaker":{"added":[],"removed":[],"modified":[]},"pending":true}"#,
            ),
            (format!("CONFIG_APPLY|{sid}"), "OK"),
            (
                format!("ROUTE_LIST|{sid}"),
                r#"ROUTE_LIST_OK|[{"route_id":"r1","id":"r1","domains":["shop.example.com","www.shop.example.com"],"path":"/","backend":"http://10.0.0.7:3000","backend_url":"http://10.0.0.7:3000","priority":0,"status":"active","in_maintenance":false,"healthy":true,"active":null},{"route_id":"r2","id":"r2","domains":["shop.example.com"],"path":"/api","backend":"http://10.0.0.7:3000","backend_url":"http://10.0.0.7:3000","priority":10,"status":"active","in_maintenance":false,"healthy":true,"active":null}]"#,
            ),
            (format!("CONFIG_DIFF|{sid}"), EMPTY_DIFF),
        ],
    )
    .await;
}

#[tokio::test]
async fn config_diff_reproduces_the_documented_example() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    assert_eq!(pipe.cmd(&format!("CONFIG_DIFF|{sid}")).await, EMPTY_DIFF);
    expect_replies(
        &mut pipe,
        &[
            (format!("ROUTE_ADD|{sid}|a.example.com|/|{url}|0"), "ROUTE_OK|r1"),
            (format!("ROUTE_ADD|{sid}|a.example.com|/b|{url}|0"), "ROUTE_OK|r2"),
            (format!("HEADERS_SET|{sid}|ALL|X-Old|1"), "HEADERS_OK"),
            (format!("OPTIONS_SET|{sid}|ALL|timeout|30s"), "OPTIONS_OK"),
            (format!("OPTIONS_SET|{sid}|ALL|compression|true"), "OPTIONS_OK"),
            (format!("OPTIONS_SET|{sid}|r2|strip_prefix|true"), "OPTIONS_OK"),
            (format!("HEALTH_SET|{sid}|ALL|/|30s|5s"), "HEALTH_OK"),
            (format!("CONFIG_APPLY|{sid}"), "OK"),
            (format!("CONFIG_DIFF|{sid}"), EMPTY_DIFF),
            (format!("ROUTE_REMOVE|{sid}|r1"), "ROUTE_OK"),
            (format!("ROUTE_UPDATE|{sid}|r2|priority|5"), "ROUTE_OK"),
            (format!("ROUTE_ADD|{sid}|a.example.com|/c|{url}|0"), "ROUTE_OK|r3"),
            (format!("HEADERS_SET|{sid}|ALL|X-New|1"), "HEADERS_OK"),
            (format!("HEADERS_SET|{sid}|r3|X-New|2"), "HEADERS_OK"),
            (format!("HEADERS_REMOVE|{sid}|ALL|x-old"), "HEADERS_OK"),
            (format!("OPTIONS_SET|{sid}|ALL|timeout|40s"), "OPTIONS_OK"),
            (format!("OPTIONS_SET|{sid}|ALL|compression|false"), "OPTIONS_OK"),
            (format!("OPTIONS_SET|{sid}|r2|strip_prefix|false"), "OPTIONS_OK"),
            (format!("HEALTH_SET|{sid}|ALL|/|20s|5s"), "HEALTH_OK"),
            (format!("HEALTH_SET|{sid}|r3|/c|10s|2s"), "HEALTH_OK"),
            (
                format!("CONFIG_DIFF|{sid}"),
                r#"DIFF_OK|{"routes":{"added":["r3"],"removed":["r1"],"modified":["r2"]},"headers":{"added":2,"removed":1,"modified":0},"options":{"added":0,"removed":0,"modified":3},"health":{"added":["r3"],"removed":[],"modified":["ALL"]},"ratelimit":{"added":[],"removed":[],"modified":[]},"circuit_breaker":{"added":[],"removed":[],"modified":[]},"pending":true}"#,
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn config_diff_counts_entries_that_leave_with_a_removed_route() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/|{url}|0"),
                "ROUTE_OK|r1",
            ),
            (format!("HEADERS_SET|{sid}|r1|X-A|1"), "HEADERS_OK"),
            (format!("OPTIONS_SET|{sid}|r1|timeout|5s"), "OPTIONS_OK"),
            (format!("HEALTH_SET|{sid}|r1|/|10s|1s"), "HEALTH_OK"),
            (format!("RATELIMIT_SET|{sid}|r1|10|1s"), "RATELIMIT_OK"),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|r1|5|30s|1"),
                "CIRCUIT_OK",
            ),
            (format!("CONFIG_APPLY|{sid}"), "OK"),
            (format!("ROUTE_REMOVE|{sid}|r1"), "ROUTE_OK"),
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/b|{url}|0"),
                "ROUTE_OK|r2",
            ),
            (format!("RATELIMIT_SET|{sid}|r2|10|1s"), "RATELIMIT_OK"),
            (format!("RATELIMIT_SET|{sid}|ALL|10|1s"), "RATELIMIT_OK"),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|ALL|5|30s|1"),
                "CIRCUIT_OK",
            ),
        ],
    )
    .await;
    let mut want = no_changes();
    want["routes"]["added"] = json!(["r2"]);
    want["routes"]["removed"] = json!(["r1"]);
    want["headers"]["removed"] = json!(1);
    want["options"]["removed"] = json!(1);
    want["health"]["removed"] = json!(["r1"]);
    want["ratelimit"]["added"] = json!(["ALL", "r2"]);
    want["ratelimit"]["removed"] = json!(["r1"]);
    want["circuit_breaker"]["added"] = json!(["ALL"]);
    want["circuit_breaker"]["removed"] = json!(["r1"]);
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);
}

// ---------------------------------------------------------------------------------------------
// CONFIG_APPLY_PARTIAL (§3.6, §4.24)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn config_apply_partial_applies_the_listed_scopes() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    assert_eq!(
        pipe.cmd(&format!("CONFIG_APPLY_PARTIAL|{sid}|routes"))
            .await,
        "OK",
        "nothing pending"
    );
    assert_eq!(
        session_info(&mut pipe, &sid).await["last_apply"],
        Value::Null
    );

    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/|{url}|0"),
                "ROUTE_OK|r1",
            ),
            (format!("HEADERS_SET|{sid}|r1|X-A|1"), "HEADERS_OK"),
            (format!("OPTIONS_SET|{sid}|r1|timeout|5s"), "OPTIONS_OK"),
            (format!("HEALTH_SET|{sid}|r1|/h|10s|1s"), "HEALTH_OK"),
            (format!("RATELIMIT_SET|{sid}|r1|10|1s"), "RATELIMIT_OK"),
            (
                format!("CIRCUIT_BREAKER_SET|{sid}|r1|5|30s|1"),
                "CIRCUIT_OK",
            ),
        ],
    )
    .await;
    let staged_list = pipe.cmd(&format!("ROUTE_LIST|{sid}")).await;

    // Each route-targeted category without `routes`: r1 is not in the candidate.
    let mut failures = Vec::new();
    for scope in [
        "headers",
        "options",
        "health",
        "ratelimit",
        "circuit_breaker",
    ] {
        let line = format!("CONFIG_APPLY_PARTIAL|{sid}|{scope}");
        let want = format!("ERROR|{scope} r1: route not active (include scope routes)");
        let got = pipe.cmd(&line).await;
        if got != want {
            failures.push(format!("{line}\n    got:  {got}\n    want: {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "wrong replies:\n{}",
        failures.join("\n")
    );
    // Validation reports categories in §3.4 order, whatever the order of the list.
    expect_replies(
        &mut pipe,
        &[
            (
                format!("CONFIG_APPLY_PARTIAL|{sid}|circuit_breaker,headers"),
                "ERROR|headers r1: route not active (include scope routes)",
            ),
            (
                format!("CONFIG_APPLY_PARTIAL|{sid}|x"),
                "ERROR|unknown scope: x",
            ),
            (
                format!("CONFIG_APPLY_PARTIAL|{sid}|routes,bogus"),
                "ERROR|unknown scope: bogus",
            ),
            (
                format!("CONFIG_APPLY_PARTIAL|{sid}|"),
                "ERROR|invalid format",
            ),
            (
                format!("CONFIG_APPLY_PARTIAL|{sid}| , "),
                "ERROR|invalid format",
            ),
            (
                format!("CONFIG_APPLY_PARTIAL|{sid}"),
                "ERROR|invalid format",
            ),
        ],
    )
    .await;
    assert_eq!(
        pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        staged_list,
        "failed partial applies change nothing"
    );
    assert_eq!(
        session_info(&mut pipe, &sid).await["last_apply"],
        Value::Null
    );

    // routes + health: the other categories stay pending.
    assert_eq!(
        pipe.cmd(&format!("CONFIG_APPLY_PARTIAL|{sid}| routes , health "))
            .await,
        "OK"
    );
    assert_eq!(
        listed(&route_list(&mut pipe, &sid).await, "r1")["status"],
        "active"
    );
    assert_timestamp(
        &session_info(&mut pipe, &sid).await["last_apply"],
        "last_apply",
    );
    let mut want = no_changes();
    want["headers"]["added"] = json!(1);
    want["options"]["added"] = json!(1);
    want["ratelimit"]["added"] = json!(["r1"]);
    want["circuit_breaker"]["added"] = json!(["r1"]);
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);

    assert_eq!(
        pipe.cmd(&format!(
            "CONFIG_APPLY_PARTIAL|{sid}|headers,options,ratelimit,circuit_breaker"
        ))
        .await,
        "OK"
    );
    assert_eq!(config_diff(&mut pipe, &sid).await, no_changes());

    // `all` = CONFIG_APPLY.
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/b|{url}|0"),
                "ROUTE_OK|r2",
            ),
            (format!("HEADERS_SET|{sid}|r2|X-B|1"), "HEADERS_OK"),
            (format!("CONFIG_APPLY_PARTIAL|{sid}|all"), "OK"),
        ],
    )
    .await;
    assert_eq!(config_diff(&mut pipe, &sid).await, no_changes());
    assert_eq!(
        listed(&route_list(&mut pipe, &sid).await, "r2")["status"],
        "active"
    );
}

#[tokio::test]
async fn config_apply_partial_routes_drops_entries_of_removed_routes() {
    let backend = Backend::start("b").await;
    let url = backend.url();
    let (_app, mut pipe, sid) = start_session("shop", "shop-1").await;
    expect_replies(
        &mut pipe,
        &[
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/a|{url}|0"),
                "ROUTE_OK|r1",
            ),
            (
                format!("ROUTE_ADD|{sid}|a.example.com|/b|{url}|0"),
                "ROUTE_OK|r2",
            ),
            (format!("HEADERS_SET|{sid}|r1|X-A|1"), "HEADERS_OK"),
            (format!("OPTIONS_SET|{sid}|r1|timeout|5s"), "OPTIONS_OK"),
            (format!("CONFIG_APPLY|{sid}"), "OK"),
            (format!("ROUTE_REMOVE|{sid}|r1"), "ROUTE_OK"),
        ],
    )
    .await;
    let mut want = no_changes();
    want["routes"]["removed"] = json!(["r1"]);
    want["headers"]["removed"] = json!(1);
    want["options"]["removed"] = json!(1);
    want["pending"] = json!(true);
    assert_eq!(config_diff(&mut pipe, &sid).await, want);

    // Staged removals are applied; r1's header and option leave active with it.
    assert_eq!(
        pipe.cmd(&format!("CONFIG_APPLY_PARTIAL|{sid}|routes"))
            .await,
        "OK"
    );
    assert_eq!(config_diff(&mut pipe, &sid).await, no_changes());
    assert_eq!(listed_ids(&route_list(&mut pipe, &sid).await), ["r2"]);
}

// ---------------------------------------------------------------------------------------------
// One connection per command (§2.3, §9 second part)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_may_open_one_connection_per_command() {
    let app = TestApp::start().await;
    let reply = app
        .oneshot(r#"REGISTER|shop|shop-2|0|{"liveness":"lease"}"#)
        .await;
    let sid = reply
        .strip_prefix("ACK|")
        .unwrap_or_else(|| panic!("REGISTER: {reply}"))
        .to_string();
    assert_session_id(&sid, "shop-2");

    for (line, want) in [
        (
            format!("ROUTE_ADD|{sid}|shop.example.com|/|http://10.0.0.8:3000|0"),
            "ROUTE_OK|r1",
        ),
        (format!("CONFIG_APPLY|{sid}"), "OK"),
        (format!("PING|{sid}"), "PONG"),
        ("PING".to_string(), "PONG"),
        ("PING|nosuch".to_string(), "ERROR|session not found"),
        ("ROUTE_LIST".to_string(), "ERROR|no session"),
        ("ROUTE_LIST|".to_string(), "ERROR|no session"),
    ] {
        assert_eq!(
            app.oneshot(&line).await,
            want,
            "{line} on a fresh connection"
        );
    }
    let list = payload(
        &app.oneshot(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    assert_eq!(listed(&list, "r1")["status"], "active");
    let info = payload(
        &app.oneshot(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(info["liveness"], "lease");
    assert_eq!(info["routes_active"], 1);
    assert_eq!(
        app.oneshot(&format!("CLIENT_SHUTDOWN|{sid}")).await,
        "SHUTDOWN_OK"
    );
    assert_eq!(
        app.oneshot(&format!("PING|{sid}")).await,
        "ERROR|session not found"
    );
}
