//! The HTTP/JSON gateway over real TCP: every row of API.md's table with its statuses and reply keys, error bodies, limits, OpenAPI, Server-Sent Events, front leases and auth (API.md).

mod common;
use common::*;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One gateway call over a new HTTP/1.1 connection, with `content-type: application/json`.
async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    http_request(addr, method, Some("127.0.0.1"), path, &all, body).await
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    call_with(addr, method, path, &[], body).await
}

/// The JSON body of a reply (which must be JSON).
#[track_caller]
fn body(reply: &Reply) -> Value {
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "JSON content type expected: {reply:?}"
    );
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {reply:?}"))
}

/// A success: `status` and a JSON object body, returned.
#[track_caller]
fn expect_ok(reply: &Reply, status: u16, what: &str) -> Value {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    let value = body(reply);
    assert!(
        value.is_object(),
        "{what}: replies are JSON objects: {value}"
    );
    value
}

/// An error: `status` and exactly `{"code","message"}`.
#[track_caller]
fn expect_error(reply: &Reply, status: u16, code: &str, message: &str) {
    assert_eq!(reply.status, status, "status for `{message}`: {reply:?}");
    assert_eq!(
        body(reply),
        json!({"code": code, "message": message}),
        "error body"
    );
}

#[track_caller]
fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

#[track_caller]
fn assert_keys(value: &Value, expected: &[&str], what: &str) {
    let want: BTreeSet<String> = expected.iter().map(|k| k.to_string()).collect();
    assert_eq!(
        keys(value),
        want,
        "{what}: every documented key, no other: {value}"
    );
}

const SESSION_KEYS: [&str; 19] = [
    "session_id",
    "service_name",
    "instance_name",
    "maintenance_port",
    "connected_at",
    "uptime_seconds",
    "last_activity",
    "last_apply",
    "routes_active",
    "routes_staged",
    "metadata",
    "subscriptions",
    "liveness",
    "connections",
    "draining",
    "in_maintenance",
    "staged_expires_at",
    "ignored_options",
    "events_dropped",
];
const ROUTE_KEYS: [&str; 11] = [
    "route_id",
    "id",
    "domains",
    "path",
    "backend",
    "backend_url",
    "priority",
    "status",
    "in_maintenance",
    "healthy",
    "active",
];
const DIFF_KEYS: [&str; 7] = [
    "routes",
    "headers",
    "options",
    "health",
    "ratelimit",
    "circuit_breaker",
    "pending",
];
const DRAIN_KEYS: [&str; 9] = [
    "active",
    "completed",
    "started_at",
    "completes_at",
    "duration_seconds",
    "elapsed_seconds",
    "remaining_seconds",
    "start_percent",
    "traffic_percent",
];
const BREAKER_KEYS: [&str; 13] = [
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
    "draining",
];
const MAINT_KEYS: [&str; 5] = [
    "in_maintenance",
    "all",
    "maintenance_backend",
    "entered_at",
    "routes",
];
const STATS_KEYS: [&str; 12] = [
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
    "since",
];
const TABLE_KEYS: [&str; 8] = [
    "session_id",
    "service_name",
    "route_id",
    "domains",
    "path",
    "backend_url",
    "priority",
    "status",
];

fn s(sid: &str, tail: &str) -> String {
    format!("/v2/sessions/{sid}{tail}")
}

async fn register(addr: SocketAddr, service: &str, instance: &str) -> String {
    let reply = call(
        addr,
        "POST",
        "/v2/sessions",
        &json!({"service_name": service, "instance_name": instance}).to_string(),
    )
    .await;
    let value = expect_ok(&reply, 201, "Register");
    value["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no session_id: {value}"))
        .to_string()
}

/// Registers and turns the default health check off (no probe traffic, no health events).
async fn register_quiet(addr: SocketAddr, service: &str, instance: &str) -> String {
    let sid = register(addr, service, instance).await;
    let reply = call(
        addr,
        "PUT",
        &s(&sid, "/options/ALL/health_check_interval"),
        r#"{"value":"0"}"#,
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "OptionsSet"), json!({}));
    sid
}

async fn add_route(addr: SocketAddr, sid: &str, domain: &str, path: &str, backend: &str) -> String {
    let reply = call(
        addr,
        "POST",
        &s(sid, "/routes"),
        &json!({"domains": [domain], "path": path, "backend_url": backend}).to_string(),
    )
    .await;
    let value = expect_ok(&reply, 201, "RouteAdd");
    value["route_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no route_id: {value}"))
        .to_string()
}

async fn apply(addr: SocketAddr, sid: &str) {
    let reply = call(addr, "POST", &s(sid, "/config/apply"), "").await;
    assert_eq!(expect_ok(&reply, 200, "ConfigApply"), json!({}));
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let reply = call(addr, "GET", path, "").await;
    expect_ok(&reply, 200, path)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Seconds since the epoch of a whole-second UTC RFC 3339 timestamp.
#[track_caller]
fn unix_of(value: &Value) -> i64 {
    let ts = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp expected, got {value}"));
    let b = ts.as_bytes();
    assert!(
        ts.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z',
        "not an RFC 3339 UTC timestamp: {ts}"
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

#[track_caller]
fn assert_near_now(value: &Value, what: &str) {
    let t = unix_of(value);
    let now = unix_now();
    assert!(
        (now - 3..=now + 1).contains(&t),
        "{what}: {value} not near now"
    );
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------------
// A Server-Sent Events reader over a raw TCP connection
// ---------------------------------------------------------------------------------------------

/// One SSE event.
#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

impl SseEvent {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad data ({e}): {self:?}"))
    }
}

struct Sse {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: HashMap<String, String>,
    /// The whole body of a non-200 answer.
    body: String,
    chunked: bool,
    pending: String,
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let n = tokio::time::timeout(REPLY_WAIT, reader.read_line(&mut line))
        .await
        .expect("a line in time")
        .expect("read");
    assert!(n > 0, "connection closed early");
    line.trim_end_matches(['\r', '\n']).to_string()
}

impl Sse {
    /// `GET path` as an event-stream request; reads the status line and headers (and the whole
    /// body when the status is not 200).
    async fn open(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Sse {
        let mut stream = TcpStream::connect(addr).await.expect("connect to api");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
        for (k, v) in extra {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut reader = BufReader::new(stream);
        let status_line = read_line(&mut reader).await;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line}"));
        let mut headers = HashMap::new();
        loop {
            let line = read_line(&mut reader).await;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let chunked = headers
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut sse = Sse {
            reader,
            status,
            headers,
            body: String::new(),
            chunked,
            pending: String::new(),
        };
        if status != 200 {
            let mut bytes = Vec::new();
            if let Some(len) = sse.headers.get("content-length") {
                bytes.resize(len.parse().expect("length"), 0);
                tokio::time::timeout(REPLY_WAIT, sse.reader.read_exact(&mut bytes))
                    .await
                    .expect("body in time")
                    .expect("body");
            } else {
                while let Some(text) = sse.read_more().await {
                    bytes.extend_from_slice(text.as_bytes());
                }
            }
            sse.body = String::from_utf8_lossy(&bytes).to_string();
        }
        sse
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The next piece of the body; `None` at its end.
    async fn read_more(&mut self) -> Option<String> {
        if self.chunked {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                return None;
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await.ok()?;
            chunk.truncate(size);
            Some(String::from_utf8_lossy(&chunk).to_string())
        } else {
            let mut buf = vec![0; 8192];
            let n = self.reader.read(&mut buf).await.ok()?;
            (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).to_string())
        }
    }

    /// The next event (comments and keep-alives skipped) within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + wait;
        loop {
            while let Some(pos) = self.pending.find("\n\n") {
                let block: String = self.pending[..pos].to_string();
                self.pending.drain(..pos + 2);
                let mut event = SseEvent::default();
                let mut any = false;
                let mut data = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    any = true;
                    match field {
                        "event" => event.event = Some(value.to_string()),
                        "id" => event.id = Some(value.to_string()),
                        "data" => data.push(value.to_string()),
                        _ => {}
                    }
                }
                if any {
                    event.data = data.join("\n");
                    return Some(event);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.read_more()).await {
                Ok(Some(text)) => self.pending.push_str(&text.replace("\r\n", "\n")),
                _ => return None,
            }
        }
    }

    async fn next(&mut self) -> SseEvent {
        self.next_within(REPLY_WAIT)
            .await
            .unwrap_or_else(|| panic!("no SSE event within {REPLY_WAIT:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_answers_201_and_session_info_has_every_key() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let reply = call(
        addr,
        "POST",
        "/v2/sessions",
        &json!({
            "service_name": "shop",
            "instance_name": "shop-1",
            "maintenance_port": 3001,
            "metadata": {"version": "1.4.0", "auth_token": "x", "liveness": "connection"}
        })
        .to_string(),
    )
    .await;
    let value = expect_ok(&reply, 201, "Register");
    assert_keys(&value, &["session_id"], "Register");
    let sid = value["session_id"].as_str().expect("string").to_string();
    assert!(sid.starts_with("shop-1-"), "{sid}");

    let info = get_json(addr, &s(&sid, "")).await;
    assert_keys(&info, &SESSION_KEYS, "SessionInfo");
    assert_eq!(info["session_id"], json!(sid));
    assert_eq!(info["service_name"], json!("shop"));
    assert_eq!(info["instance_name"], json!("shop-1"));
    assert_eq!(info["maintenance_port"], json!(3001));
    assert_near_now(&info["connected_at"], "connected_at");
    assert!(info["uptime_seconds"].as_u64().is_some_and(|u| u <= 2));
    assert_near_now(&info["last_activity"], "last_activity");
    assert_eq!(info["last_apply"], Value::Null);
    assert_eq!(info["routes_active"], json!(0));
    assert_eq!(info["routes_staged"], json!(0));
    assert_eq!(info["metadata"], json!({"version": "1.4.0"}));
    assert_eq!(info["subscriptions"], json!([]));
    assert_eq!(info["liveness"], json!("connection"));
    assert_eq!(info["connections"], json!(0));
    assert_eq!(info["draining"], json!(false));
    assert_eq!(info["in_maintenance"], json!(false));
    assert_eq!(info["staged_expires_at"], Value::Null);
    assert_eq!(info["ignored_options"], json!([]));
    assert_eq!(info["events_dropped"], json!(0));

    // A minimal register: service only; an empty body is not enough.
    let reply = call(addr, "POST", "/v2/sessions", r#"{"service_name":"min"}"#).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    expect_error(
        &call(addr, "POST", "/v2/sessions", "").await,
        400,
        "invalid_argument",
        "invalid service name",
    );
}

#[tokio::test]
async fn register_errors() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let cases: [(&str, &str); 8] = [
        ("{", "invalid format"),
        ("[]", "invalid format"),
        (r#"{"service_name":5}"#, "invalid format"),
        (
            r#"{"service_name":"a","metadata":"text"}"#,
            "invalid format",
        ),
        (r#"{"service_name":"-a"}"#, "invalid service name"),
        (
            r#"{"service_name":"a","instance_name":"a b"}"#,
            "invalid instance name",
        ),
        (
            r#"{"service_name":"a","maintenance_port":70000}"#,
            "invalid maintenance port",
        ),
        (
            r#"{"service_name":"a","metadata":{"liveness":"forever"}}"#,
            "invalid liveness",
        ),
    ];
    for (request, message) in cases {
        let reply = call(addr, "POST", "/v2/sessions", request).await;
        expect_error(&reply, 400, "invalid_argument", message);
    }
}

#[tokio::test]
async fn reconnect_ping_and_shutdown() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register(addr, "svc", "svc-1").await;

    let reply = call(addr, "POST", &s(&sid, "/reconnect"), "").await;
    assert_eq!(
        expect_ok(&reply, 200, "Reconnect"),
        json!({"reregister": false})
    );
    let reply = call(addr, "POST", &s("nosuch", "/reconnect"), "").await;
    assert_eq!(
        expect_ok(&reply, 200, "Reconnect unknown"),
        json!({"reregister": true})
    );
    let reply = call(addr, "POST", &s(&sid, "/ping"), "").await;
    assert_eq!(expect_ok(&reply, 200, "Ping"), json!({}));
    expect_error(
        &call(addr, "POST", &s("nosuch", "/ping"), "").await,
        404,
        "not_found",
        "session not found",
    );
    expect_error(
        &call(addr, "GET", &s("nosuch", ""), "").await,
        404,
        "not_found",
        "session not found",
    );

    let reply = call(addr, "DELETE", &s(&sid, ""), "").await;
    assert_eq!(expect_ok(&reply, 200, "ClientShutdown"), json!({}));
    expect_error(
        &call(addr, "GET", &s(&sid, ""), "").await,
        404,
        "not_found",
        "session not found",
    );
    expect_error(
        &call(addr, "DELETE", &s(&sid, ""), "").await,
        404,
        "not_found",
        "session not found",
    );
    let reply = call(addr, "POST", &s(&sid, "/reconnect"), "").await;
    assert_eq!(
        expect_ok(&reply, 200, "Reconnect"),
        json!({"reregister": true})
    );
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn routes_add_bulk_list_update_remove() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "shop", "shop-1").await;

    let reply = call(
        addr,
        "POST",
        &s(&sid, "/routes"),
        &json!({
            "domains": ["shop.example.com"],
            "path": "/api/",
            "backend_url": "http://127.0.0.1:9001",
            "priority": 10
        })
        .to_string(),
    )
    .await;
    assert_eq!(
        expect_ok(&reply, 201, "RouteAdd"),
        json!({"route_id": "r1"})
    );

    let reply = call(
        addr,
        "POST",
        &s(&sid, "/routes/bulk"),
        &json!({"routes": [
            {"domains": ["a.example.com"], "path": "/", "backend_url": "http://127.0.0.1:9002"},
            {"domains": "b.example.com,c.example.com", "path": "/b", "backend": "http://127.0.0.1:9003", "priority": -1}
        ]})
        .to_string(),
    )
    .await;
    assert_eq!(
        expect_ok(&reply, 201, "RouteAddBulk"),
        json!({"results": [
            {"route_id": "r2", "status": "ok"},
            {"route_id": "r3", "status": "ok"}
        ]})
    );
    let reply = call(addr, "POST", &s(&sid, "/routes/bulk"), r#"{"routes":[]}"#).await;
    assert_eq!(
        expect_ok(&reply, 201, "RouteAddBulk empty"),
        json!({"results": []})
    );

    let list = get_json(addr, &s(&sid, "/routes")).await;
    assert_keys(&list, &["routes"], "RouteList");
    let routes = list["routes"].as_array().expect("array");
    assert_eq!(routes.len(), 3);
    for r in routes {
        assert_keys(r, &ROUTE_KEYS, "RouteList element");
    }
    assert_eq!(
        routes[0],
        json!({
            "route_id": "r1", "id": "r1", "domains": ["shop.example.com"], "path": "/api",
            "backend": "http://127.0.0.1:9001", "backend_url": "http://127.0.0.1:9001",
            "priority": 10, "status": "staged", "in_maintenance": false, "healthy": null,
            "active": null
        })
    );
    assert_eq!(
        routes[2]["domains"],
        json!(["b.example.com", "c.example.com"])
    );
    assert_eq!(routes[2]["backend_url"], json!("http://127.0.0.1:9003"));

    apply(addr, &sid).await;
    let reply = call(
        addr,
        "PATCH",
        &s(&sid, "/routes/r2"),
        r#"{"field":"priority","value":5}"#,
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "RouteUpdate"), json!({}));
    let reply = call(
        addr,
        "PATCH",
        &s(&sid, "/routes/r2"),
        r#"{"field":"backend_url","value":"http://127.0.0.1:9999"}"#,
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "RouteUpdate"), json!({}));
    let reply = call(addr, "DELETE", &s(&sid, "/routes/r3"), "").await;
    assert_eq!(expect_ok(&reply, 200, "RouteRemove"), json!({}));
    let list = get_json(addr, &s(&sid, "/routes")).await;
    let routes = list["routes"].as_array().expect("array");
    assert_eq!(routes[0]["status"], json!("active"));
    assert_eq!(routes[0]["healthy"], json!(true));
    assert_eq!(routes[1]["status"], json!("modified"));
    assert_eq!(routes[1]["priority"], json!(5));
    assert_eq!(
        routes[1]["active"],
        json!({"domains": ["a.example.com"], "path": "/", "backend": "http://127.0.0.1:9002", "priority": 0})
    );
    assert_eq!(routes[2]["status"], json!("pending_removal"));
    expect_error(
        &call(addr, "DELETE", &s(&sid, "/routes/r3"), "").await,
        404,
        "not_found",
        "route not found",
    );
}

#[tokio::test]
async fn route_errors_with_statuses() {
    let app = TestApp::start_with(|config| config.max_routes_per_session = 3).await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "shop", "shop-1").await;
    let other = register_quiet(addr, "other", "other-1").await;
    let foreign = add_route(
        addr,
        &other,
        "other.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    add_route(
        addr,
        &other,
        "claimed.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    apply(addr, &other).await;
    add_route(addr, &sid, "a.com", "/", "http://127.0.0.1:9001").await;

    let route = |domains: Value, path: &str, backend: &str| {
        json!({"domains": domains, "path": path, "backend_url": backend}).to_string()
    };
    let cases: Vec<(String, u16, &str, String)> = vec![
        (
            route(json!(["-bad"]), "/", "http://127.0.0.1:9001"),
            400,
            "invalid_argument",
            "invalid domain: -bad".into(),
        ),
        (
            route(json!([]), "/", "http://127.0.0.1:9001"),
            400,
            "invalid_argument",
            "no domains specified".into(),
        ),
        (
            String::new(),
            400,
            "invalid_argument",
            "no domains specified".into(),
        ),
        (
            route(json!(["x.com"]), "", "http://127.0.0.1:9001"),
            400,
            "invalid_argument",
            "path cannot be empty".into(),
        ),
        (
            route(json!(["x.com"]), "/", "ftp://127.0.0.1"),
            400,
            "invalid_argument",
            "invalid backend url format".into(),
        ),
        (
            r#"{"domains":["x.com"],"path":"/","backend_url":"http://127.0.0.1:9001","priority":"5"}"#
                .into(),
            400,
            "invalid_argument",
            "invalid format".into(),
        ),
        (
            r#"{"domains":["x.com"],"path":"/","backend_url":"http://127.0.0.1:9001","priority":99999}"#
                .into(),
            400,
            "invalid_argument",
            "invalid priority".into(),
        ),
        (
            "{not json".into(),
            400,
            "invalid_argument",
            "invalid format".into(),
        ),
        (
            route(json!(["a.com"]), "/", "http://127.0.0.1:9002"),
            409,
            "already_exists",
            "duplicate route: a.com/".into(),
        ),
        (
            route(json!(["claimed.example.com"]), "/", "http://127.0.0.1:9002"),
            403,
            "permission_denied",
            "permission denied: claimed.example.com/ is claimed by another service".into(),
        ),
    ];
    for (request, status, code, message) in cases {
        let reply = call(addr, "POST", &s(&sid, "/routes"), &request).await;
        expect_error(&reply, status, code, &message);
    }

    let denied = format!("permission denied: route {foreign} belongs to another session");
    expect_error(
        &call(
            addr,
            "PATCH",
            &s(&sid, &format!("/routes/{foreign}")),
            r#"{"field":"priority","value":"1"}"#,
        )
        .await,
        403,
        "permission_denied",
        &denied,
    );
    expect_error(
        &call(addr, "DELETE", &s(&sid, &format!("/routes/{foreign}")), "").await,
        403,
        "permission_denied",
        &denied,
    );
    expect_error(
        &call(
            addr,
            "PATCH",
            &s(&sid, "/routes/r3"),
            r#"{"field":"colour","value":"red"}"#,
        )
        .await,
        400,
        "invalid_argument",
        "unknown field: colour",
    );
    expect_error(
        &call(
            addr,
            "PATCH",
            &s(&sid, "/routes/r3"),
            r#"{"field":"priority","value":[1]}"#,
        )
        .await,
        400,
        "invalid_argument",
        "invalid format",
    );
    expect_error(
        &call(
            addr,
            "PATCH",
            &s(&sid, "/routes/r99"),
            r#"{"field":"priority","value":1}"#,
        )
        .await,
        404,
        "not_found",
        "route not found",
    );

    // Bulk: per-element errors and mistyped elements.
    let bulk_cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"routes": [
                {"domains": ["b.com"], "path": "/", "backend_url": "http://127.0.0.1:9001"},
                {"domains": ["c.com"], "path": "/", "backend_url": "nope"}
            ]}),
            400,
            "invalid_argument",
            "route 1: invalid backend url format",
        ),
        (
            json!({"routes": [
                {"domains": ["b.com"], "path": "/", "backend_url": "http://127.0.0.1:9001", "priority": "high"}
            ]}),
            400,
            "invalid_argument",
            "route 0: invalid json",
        ),
        (
            json!({"routes": [
                {"domains": ["b.com"], "path": "/", "backend_url": "http://127.0.0.1:9001"},
                {"domains": [7], "path": "/", "backend_url": "http://127.0.0.1:9001"}
            ]}),
            400,
            "invalid_argument",
            "route 1: invalid json",
        ),
        (
            json!({"routes": [
                {"domains": ["b.com"], "path": "/", "backend_url": "http://127.0.0.1:9001"},
                {"domains": ["b.com"], "path": "/", "backend_url": "http://127.0.0.1:9002"}
            ]}),
            409,
            "already_exists",
            "route 1: duplicate route: b.com/",
        ),
        (
            json!({"routes": [
                {"domains": ["claimed.example.com"], "path": "/", "backend_url": "http://127.0.0.1:9001"}
            ]}),
            403,
            "permission_denied",
            "route 0: permission denied: claimed.example.com/ is claimed by another service",
        ),
        (
            json!({"routes": [
                {"domains": ["b.com"], "path": "/", "backend_url": "http://127.0.0.1:9001"},
                {"domains": ["c.com"], "path": "/", "backend_url": "http://127.0.0.1:9001"},
                {"domains": ["d.com"], "path": "/", "backend_url": "http://127.0.0.1:9001"}
            ]}),
            429,
            "resource_exhausted",
            "route 2: too many routes",
        ),
        (
            json!({"routes": "b.com"}),
            400,
            "invalid_argument",
            "invalid format",
        ),
    ];
    for (request, status, code, message) in bulk_cases {
        let reply = call(addr, "POST", &s(&sid, "/routes/bulk"), &request.to_string()).await;
        expect_error(&reply, status, code, message);
    }
    let list = get_json(addr, &s(&sid, "/routes")).await;
    assert_eq!(
        list["routes"].as_array().map(Vec::len),
        Some(1),
        "failed bulk calls stage nothing"
    );
    // The limit on single adds: 429.
    add_route(addr, &sid, "e.com", "/", "http://127.0.0.1:9001").await;
    add_route(addr, &sid, "f.com", "/", "http://127.0.0.1:9001").await;
    expect_error(
        &call(
            addr,
            "POST",
            &s(&sid, "/routes"),
            &route(json!(["g.com"]), "/", "http://127.0.0.1:9001"),
        )
        .await,
        429,
        "resource_exhausted",
        "too many routes",
    );
}

#[tokio::test]
async fn a_route_added_over_http_serves_traffic() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let backend = Backend::start("http-backend").await;
    let sid = register_quiet(addr, "web", "web-1").await;
    add_route(addr, &sid, "web.example.com", "/", &backend.url()).await;
    let reply = call(
        addr,
        "PUT",
        &s(&sid, "/headers/ALL/X-Served-By"),
        r#"{"value":"switchyard"}"#,
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "HeadersSet"), json!({}));
    apply(addr, &sid).await;
    let reply = get(app.proxy_addr(), "web.example.com", "/p?q=1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "http-backend /p?q=1");
    assert_eq!(reply.header("x-served-by"), Some("switchyard"));
}

// ---------------------------------------------------------------------------------------------
// Staged settings and configuration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn headers_options_health_ratelimit_breakers() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register(addr, "svc", "svc-1").await;
    let rid = add_route(addr, &sid, "s.example.com", "/", "http://127.0.0.1:9001").await;

    let ok_cases: Vec<(&str, String, String)> = vec![
        (
            "PUT",
            s(&sid, "/headers/ALL/X-A"),
            r#"{"value":"1"}"#.into(),
        ),
        (
            "PUT",
            s(&sid, &format!("/headers/{rid}/X-B")),
            r#"{"value":""}"#.into(),
        ),
        ("DELETE", s(&sid, "/headers/ALL/X-None"), String::new()),
        (
            "PUT",
            s(&sid, &format!("/options/{rid}/timeout")),
            r#"{"value":"30s"}"#.into(),
        ),
        (
            "PUT",
            s(&sid, "/options/ALL/compression"),
            r#"{"value":true}"#.into(),
        ),
        (
            "PUT",
            s(&sid, "/options/ALL/colour"),
            r#"{"value":"blue"}"#.into(),
        ),
        ("DELETE", s(&sid, "/options/ALL/compression"), String::new()),
        (
            "PUT",
            s(&sid, &format!("/health/{rid}")),
            r#"{"path":"/healthz","interval":"10s","timeout":"2s"}"#.into(),
        ),
        (
            "PUT",
            s(&sid, "/health/ALL"),
            r#"{"path":"/h","interval":5,"timeout":1}"#.into(),
        ),
        (
            "PUT",
            s(&sid, "/ratelimits/ALL"),
            r#"{"requests":100,"window":"1m"}"#.into(),
        ),
        (
            "PUT",
            s(&sid, &format!("/circuit-breakers/{rid}")),
            r#"{"threshold":5,"timeout":"30s","half_open_requests":2}"#.into(),
        ),
    ];
    for (method, path, request) in ok_cases {
        let reply = call(addr, method, &path, &request).await;
        assert_eq!(
            expect_ok(&reply, 200, &format!("{method} {path}")),
            json!({}),
            "{method} {path}"
        );
    }
    let info = get_json(addr, &s(&sid, "")).await;
    assert_eq!(info["ignored_options"], json!(["ALL:colour"]));

    let diff = get_json(addr, &s(&sid, "/config/diff")).await;
    assert_keys(&diff, &DIFF_KEYS, "ConfigDiff");
    assert_eq!(
        diff,
        json!({
            "routes": {"added": [rid], "removed": [], "modified": []},
            "headers": {"added": 2, "removed": 0, "modified": 0},
            "options": {"added": 2, "removed": 0, "modified": 0},
            "health": {"added": ["ALL", rid], "removed": [], "modified": []},
            "ratelimit": {"added": ["ALL"], "removed": [], "modified": []},
            "circuit_breaker": {"added": [rid], "removed": [], "modified": []},
            "pending": true
        })
    );

    let err_cases: Vec<(&str, String, &str, u16, &str, String)> = vec![
        (
            "PUT",
            s(&sid, "/headers/ALL/X-A"),
            "{}",
            400,
            "invalid_argument",
            "invalid format".into(),
        ),
        (
            "PUT",
            s(&sid, "/headers/ALL/X-A"),
            "",
            400,
            "invalid_argument",
            "invalid format".into(),
        ),
        (
            "PUT",
            s(&sid, "/headers/ALL/X-A"),
            r#"{"value":{}}"#,
            400,
            "invalid_argument",
            "invalid format".into(),
        ),
        (
            "PUT",
            s(&sid, "/headers/ALL/Connection"),
            r#"{"value":"close"}"#,
            400,
            "invalid_argument",
            "header not allowed: Connection".into(),
        ),
        (
            "PUT",
            s(&sid, "/headers/r99/X-A"),
            r#"{"value":"1"}"#,
            404,
            "not_found",
            "route not found".into(),
        ),
        (
            "PUT",
            s(&sid, "/headers/all/X-A"),
            r#"{"value":"1"}"#,
            404,
            "not_found",
            "route not found".into(),
        ),
        (
            "PUT",
            s(&sid, "/options/ALL/timeout"),
            r#"{"value":"abc"}"#,
            400,
            "invalid_argument",
            "invalid value for timeout: abc".into(),
        ),
        (
            "PUT",
            s(&sid, "/options/ALL/timeout"),
            "{}",
            400,
            "invalid_argument",
            "invalid format".into(),
        ),
        (
            "PUT",
            s(&sid, "/health/ALL"),
            r#"{"path":"/h","interval":"30S","timeout":"1s"}"#,
            400,
            "invalid_argument",
            "invalid interval".into(),
        ),
        (
            "PUT",
            s(&sid, "/health/ALL"),
            r#"{"path":"/h","interval":"10s","timeout":"20s"}"#,
            400,
            "invalid_argument",
            "invalid timeout".into(),
        ),
        (
            "PUT",
            s(&sid, "/health/ALL"),
            r#"{"path":"/h","interval":[10]}"#,
            400,
            "invalid_argument",
            "invalid format".into(),
        ),
        (
            "PUT",
            s(&sid, "/ratelimits/ALL"),
            r#"{"requests":"many","window":"1s"}"#,
            400,
            "invalid_argument",
            "invalid requests".into(),
        ),
        (
            "PUT",
            s(&sid, "/ratelimits/ALL"),
            r#"{"requests":5,"window":"1d"}"#,
            400,
            "invalid_argument",
            "invalid window".into(),
        ),
        (
            "PUT",
            s(&sid, "/circuit-breakers/ALL"),
            r#"{"threshold":5,"timeout":"30s","half_open_requests":0}"#,
            400,
            "invalid_argument",
            "invalid half_open_requests".into(),
        ),
        (
            "PUT",
            s(&sid, "/circuit-breakers/ALL"),
            r#"{"threshold":-1,"timeout":"30s","half_open_requests":1}"#,
            400,
            "invalid_argument",
            "invalid threshold".into(),
        ),
    ];
    for (method, path, request, status, code, message) in err_cases {
        let reply = call(addr, method, &path, request).await;
        expect_error(&reply, status, code, &message);
    }
}

#[tokio::test]
async fn config_validate_apply_rollback_diff_and_partial() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let a = register_quiet(addr, "alpha", "alpha-1").await;
    let b = register_quiet(addr, "beta", "beta-1").await;
    let ra = add_route(addr, &a, "a.example.com", "/", "http://127.0.0.1:9001").await;
    let contested = add_route(addr, &a, "x.example.com", "/", "http://127.0.0.1:9001").await;
    add_route(addr, &b, "x.example.com", "/", "http://127.0.0.1:9002").await;
    apply(addr, &b).await;

    let refusal = format!(
        "route {contested}: permission denied: x.example.com/ is claimed by another service"
    );
    for path in ["/config/validate", "/config/apply"] {
        expect_error(
            &call(addr, "POST", &s(&a, path), "").await,
            409,
            "failed_precondition",
            &refusal,
        );
    }
    expect_error(
        &call(
            addr,
            "POST",
            &s(&a, "/config/apply-partial"),
            r#"{"scopes":["routes"]}"#,
        )
        .await,
        409,
        "failed_precondition",
        &refusal,
    );
    let reply = call(addr, "DELETE", &s(&a, &format!("/routes/{contested}")), "").await;
    assert_eq!(expect_ok(&reply, 200, "RouteRemove"), json!({}));
    let reply = call(addr, "POST", &s(&a, "/config/validate"), "").await;
    assert_eq!(expect_ok(&reply, 200, "ConfigValidate"), json!({}));

    let reply = call(
        addr,
        "PUT",
        &s(&a, &format!("/health/{ra}")),
        r#"{"path":"/h","interval":"10s","timeout":"1s"}"#,
    )
    .await;
    expect_ok(&reply, 200, "HealthSet");
    expect_error(
        &call(
            addr,
            "POST",
            &s(&a, "/config/apply-partial"),
            r#"{"scopes":["health"]}"#,
        )
        .await,
        409,
        "failed_precondition",
        &format!("health {ra}: route not active (include scope routes)"),
    );
    for (request, message) in [
        (r#"{"scopes":[]}"#, "invalid format"),
        ("", "invalid format"),
        (r#"{"scopes":"routes"}"#, "invalid format"),
        (r#"{"scopes":["routes","bogus"]}"#, "unknown scope: bogus"),
    ] {
        expect_error(
            &call(addr, "POST", &s(&a, "/config/apply-partial"), request).await,
            400,
            "invalid_argument",
            message,
        );
    }
    let reply = call(
        addr,
        "POST",
        &s(&a, "/config/apply-partial"),
        r#"{"scopes":["routes"]}"#,
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "ConfigApplyPartial"), json!({}));
    let diff = get_json(addr, &s(&a, "/config/diff")).await;
    assert_eq!(diff["health"]["added"], json!([ra]));
    assert_eq!(
        diff["routes"],
        json!({"added": [], "removed": [], "modified": []})
    );
    let reply = call(addr, "POST", &s(&a, "/config/rollback"), "").await;
    assert_eq!(expect_ok(&reply, 200, "ConfigRollback"), json!({}));
    let diff = get_json(addr, &s(&a, "/config/diff")).await;
    assert_eq!(diff["pending"], json!(false));
    let info = get_json(addr, &s(&a, "")).await;
    assert_eq!(info["routes_active"], json!(1));
    assert_near_now(&info["last_apply"], "last_apply");
}

// ---------------------------------------------------------------------------------------------
// Operating
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn circuit_breaker_status_and_reset() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "cb", "cb-1").await;
    let r1 = add_route(addr, &sid, "cb.example.com", "/", "http://127.0.0.1:9001").await;
    let r2 = add_route(
        addr,
        &sid,
        "plain.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    let reply = call(
        addr,
        "PUT",
        &s(&sid, &format!("/circuit-breakers/{r1}")),
        r#"{"threshold":5,"timeout":"500ms","half_open_requests":3}"#,
    )
    .await;
    expect_ok(&reply, 200, "CircuitBreakerSet");
    expect_error(
        &call(
            addr,
            "GET",
            &s(&sid, &format!("/circuit-breakers/{r1}")),
            "",
        )
        .await,
        409,
        "failed_precondition",
        "route not active",
    );
    apply(addr, &sid).await;

    let status = get_json(addr, &s(&sid, &format!("/circuit-breakers/{r1}"))).await;
    assert_keys(&status, &BREAKER_KEYS, "CircuitBreakerStatus");
    assert_eq!(
        status,
        json!({
            "route_id": r1, "configured": true, "state": "closed", "failures": 0,
            "successes": 0, "threshold": 5, "timeout_seconds": 0.5, "half_open_requests": 3,
            "last_failure": null, "next_attempt": null, "healthy": true,
            "in_maintenance": false, "draining": false
        })
    );
    let plain = get_json(addr, &s(&sid, &format!("/circuit-breakers/{r2}"))).await;
    assert_keys(
        &plain,
        &BREAKER_KEYS,
        "CircuitBreakerStatus without breaker",
    );
    assert_eq!(plain["configured"], json!(false));
    assert_eq!(plain["threshold"], Value::Null);
    assert_eq!(plain["timeout_seconds"], Value::Null);
    assert_eq!(plain["half_open_requests"], Value::Null);

    let reply = call(
        addr,
        "POST",
        &s(&sid, &format!("/circuit-breakers/{r1}/reset")),
        "",
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "CircuitBreakerReset"), json!({}));
    let reply = call(addr, "POST", &s(&sid, "/circuit-breakers/ALL/reset"), "").await;
    assert_eq!(expect_ok(&reply, 200, "CircuitBreakerReset ALL"), json!({}));
    expect_error(
        &call(
            addr,
            "POST",
            &s(&sid, &format!("/circuit-breakers/{r2}/reset")),
            "",
        )
        .await,
        404,
        "not_found",
        "circuit breaker not found",
    );
    expect_error(
        &call(addr, "GET", &s(&sid, "/circuit-breakers/r99"), "").await,
        404,
        "not_found",
        "route not found",
    );
}

#[tokio::test]
async fn drain_start_status_cancel() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "dr", "dr-1").await;
    add_route(addr, &sid, "d.example.com", "/", "http://127.0.0.1:9001").await;
    apply(addr, &sid).await;
    for method in ["GET", "DELETE"] {
        expect_error(
            &call(addr, method, &s(&sid, "/drain"), "").await,
            409,
            "failed_precondition",
            "no drain in progress",
        );
    }
    for request in [r#"{"duration":"30S"}"#, r#"{"duration":"-5"}"#, "{}", ""] {
        expect_error(
            &call(addr, "POST", &s(&sid, "/drain"), request).await,
            400,
            "invalid_argument",
            "invalid duration",
        );
    }
    expect_error(
        &call(addr, "POST", &s(&sid, "/drain"), r#"{"duration":[30]}"#).await,
        400,
        "invalid_argument",
        "invalid format",
    );

    let now = unix_now();
    let reply = call(addr, "POST", &s(&sid, "/drain"), r#"{"duration":"30s"}"#).await;
    let started = expect_ok(&reply, 200, "DrainStart");
    assert_keys(&started, &["completes_at"], "DrainStart");
    let completes = unix_of(&started["completes_at"]);
    assert!((now + 29..=now + 31).contains(&completes), "{started}");

    let status = get_json(addr, &s(&sid, "/drain")).await;
    assert_keys(&status, &DRAIN_KEYS, "DrainStatus");
    assert_eq!(status["active"], json!(true));
    assert_eq!(status["completed"], json!(false));
    assert_near_now(&status["started_at"], "started_at");
    assert_eq!(status["completes_at"], started["completes_at"]);
    assert_eq!(status["duration_seconds"], json!(30));
    assert_eq!(status["start_percent"], json!(100));
    assert!(
        status["traffic_percent"]
            .as_u64()
            .is_some_and(|p| (96..=100).contains(&p)),
        "{status}"
    );
    assert!(status["elapsed_seconds"].is_u64() && status["remaining_seconds"].is_u64());

    let reply = call(addr, "POST", &s(&sid, "/drain"), r#"{"duration":30}"#).await;
    expect_ok(&reply, 200, "DrainStart with a bare number of seconds");
    let reply = call(addr, "DELETE", &s(&sid, "/drain"), "").await;
    assert_eq!(expect_ok(&reply, 200, "DrainCancel"), json!({}));
    expect_error(
        &call(addr, "GET", &s(&sid, "/drain"), "").await,
        409,
        "failed_precondition",
        "no drain in progress",
    );
}

#[tokio::test]
async fn maintenance_enter_status_exit() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let backend = Backend::start("app").await;
    let sid = register_quiet(addr, "mt", "mt-1").await;
    let r1 = add_route(addr, &sid, "m.example.com", "/", &backend.url()).await;
    apply(addr, &sid).await;

    let status = get_json(addr, &s(&sid, "/maintenance")).await;
    assert_eq!(
        status,
        json!({"in_maintenance": [], "all": false, "maintenance_backend": null, "entered_at": null, "routes": []})
    );
    let reply = call(
        addr,
        "POST",
        &s(&sid, "/maintenance"),
        &json!({"target": r1, "page_url": ""}).to_string(),
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "MaintEnter"), json!({}));
    let status = get_json(addr, &s(&sid, "/maintenance")).await;
    assert_keys(&status, &MAINT_KEYS, "MaintStatus");
    assert_eq!(status["in_maintenance"], json!([r1]));
    assert_eq!(status["all"], json!(false));
    assert_eq!(status["maintenance_backend"], json!(""));
    assert_near_now(&status["entered_at"], "entered_at");
    assert_eq!(status["routes"][0]["route_id"], json!(r1));
    assert_keys(
        &status["routes"][0],
        &["route_id", "maintenance_backend", "entered_at"],
        "MaintStatus routes[]",
    );
    let reply = get(app.proxy_addr(), "m.example.com", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-maintenance-mode"), Some("true"));

    let reply = call(
        addr,
        "POST",
        &s(&sid, "/maintenance/exit"),
        r#"{"target":"ALL"}"#,
    )
    .await;
    assert_eq!(expect_ok(&reply, 200, "MaintExit"), json!({}));
    assert_eq!(
        get(app.proxy_addr(), "m.example.com", "/").await.status,
        200
    );

    for (path, request, message) in [
        (
            "/maintenance",
            r#"{"target":"/missing"}"#,
            "unknown target: /missing",
        ),
        ("/maintenance", "{}", "invalid format"),
        (
            "/maintenance",
            r#"{"target":"ALL","page_url":"ftp://x"}"#,
            "invalid maintenance url",
        ),
        ("/maintenance", r#"{"target":1}"#, "invalid format"),
        (
            "/maintenance/exit",
            r#"{"target":"nosuch.example.com"}"#,
            "unknown target: nosuch.example.com",
        ),
        ("/maintenance/exit", "", "invalid format"),
    ] {
        expect_error(
            &call(addr, "POST", &s(&sid, path), request).await,
            400,
            "invalid_argument",
            message,
        );
    }
}

#[tokio::test]
async fn stats_of_all_routes_and_one_route() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let backend = Backend::start("st").await;
    let sid = register_quiet(addr, "st", "st-1").await;
    let r1 = add_route(addr, &sid, "st.example.com", "/", &backend.url()).await;
    apply(addr, &sid).await;
    let staged = add_route(addr, &sid, "later.example.com", "/", &backend.url()).await;
    assert_eq!(
        get(app.proxy_addr(), "st.example.com", "/x").await.status,
        200
    );
    let path = s(&sid, "/stats?target=ALL");
    wait_until(|| {
        let path = path.clone();
        async move { get_json(addr, &path).await["stats"][0]["requests"] == json!(1) }
    })
    .await;
    let all = get_json(addr, &path).await;
    assert_keys(&all, &["stats"], "StatsGet");
    let stats = all["stats"].as_array().expect("array");
    assert_eq!(stats.len(), 1);
    assert_keys(&stats[0], &STATS_KEYS, "StatsGet element");
    assert_eq!(stats[0]["route_id"], json!(r1));
    assert_eq!(stats[0]["requests"], json!(1));
    assert_eq!(stats[0]["status_codes"], json!({"200": 1}));
    assert_eq!(stats[0]["bytes_sent"], json!("st /x".len()));
    assert_near_now(&stats[0]["since"], "since");

    let one = get_json(addr, &s(&sid, &format!("/stats?target={r1}"))).await;
    assert_eq!(one, all, "a route id gives a one-element list");
    let default = get_json(addr, &s(&sid, "/stats")).await;
    assert_eq!(default, all, "no target = ALL");
    expect_error(
        &call(
            addr,
            "GET",
            &s(&sid, &format!("/stats?target={staged}")),
            "",
        )
        .await,
        409,
        "failed_precondition",
        "route not active",
    );
}

#[tokio::test]
async fn backend_test_over_http() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let backend = Backend::start("bt").await;
    let sid = register(addr, "bt", "bt-1").await;
    let reply = call(
        addr,
        "POST",
        "/v2/backend-test",
        &json!({"session_id": sid, "backend_url": backend.url()}).to_string(),
    )
    .await;
    let value = expect_ok(&reply, 200, "BackendTest");
    assert_keys(
        &value,
        &[
            "url",
            "reachable",
            "response_time_ms",
            "status_code",
            "tls_valid",
            "tls_error",
        ],
        "BackendTest reachable",
    );
    assert_eq!(value["url"], json!(backend.url()));
    assert_eq!(value["reachable"], json!(true));
    assert_eq!(value["status_code"], json!(200));
    assert_eq!(value["tls_valid"], Value::Null);
    assert_eq!(value["tls_error"], Value::Null);

    let closed = closed_port_url();
    let reply = call(
        addr,
        "POST",
        "/v2/backend-test",
        &json!({"backend_url": closed}).to_string(),
    )
    .await;
    let value = expect_ok(&reply, 200, "BackendTest unreachable is 200");
    assert_keys(
        &value,
        &["url", "reachable", "error", "response_time_ms"],
        "BackendTest unreachable",
    );
    assert_eq!(value["reachable"], json!(false));
    assert!(value["error"].as_str().is_some_and(|e| !e.is_empty()));

    expect_error(
        &call(
            addr,
            "POST",
            "/v2/backend-test",
            r#"{"backend_url":"ftp://x"}"#,
        )
        .await,
        400,
        "invalid_argument",
        "invalid backend url format",
    );
    expect_error(
        &call(
            addr,
            "POST",
            "/v2/backend-test",
            r#"{"session_id":"nosuch","backend_url":"http://127.0.0.1:9"}"#,
        )
        .await,
        404,
        "not_found",
        "session not found",
    );
    expect_error(
        &call(addr, "POST", "/v2/backend-test", r#"{"backend_url":5}"#).await,
        400,
        "invalid_argument",
        "invalid format",
    );
}

// ---------------------------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_sessions_routes_and_stats() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let backend = Backend::start("adm").await;
    assert_eq!(
        get_json(addr, "/v2/admin/sessions").await,
        json!({"sessions": []})
    );
    let s1 = register_quiet(addr, "one", "one-1").await;
    let r1 = add_route(addr, &s1, "one.example.com", "/", &backend.url()).await;
    apply(addr, &s1).await;
    add_route(addr, &s1, "staged.example.com", "/", &backend.url()).await;

    let sessions = get_json(addr, "/v2/admin/sessions").await;
    assert_keys(&sessions, &["sessions"], "ListSessions");
    let list = sessions["sessions"].as_array().expect("array");
    assert_eq!(list.len(), 1);
    assert_keys(&list[0], &SESSION_KEYS, "ListSessions element");
    assert_eq!(list[0]["session_id"], json!(s1));

    let routes = get_json(addr, "/v2/admin/routes").await;
    assert_keys(&routes, &["routes"], "GetRouteTable");
    assert_eq!(
        routes["routes"],
        json!([{
            "session_id": s1, "service_name": "one", "route_id": r1,
            "domains": ["one.example.com"], "path": "/", "backend_url": backend.url(),
            "priority": 0, "status": "active"
        }])
    );
    assert_keys(&routes["routes"][0], &TABLE_KEYS, "GetRouteTable element");

    assert_eq!(
        get(app.proxy_addr(), "one.example.com", "/").await.status,
        200
    );
    wait_until(|| async move {
        get_json(addr, "/v2/admin/stats").await["stats"][0]["requests"] == json!(1)
    })
    .await;
    let stats = get_json(addr, "/v2/admin/stats").await;
    let element = &stats["stats"][0];
    let mut expected: Vec<&str> = STATS_KEYS.to_vec();
    expected.extend(["session_id", "service_name"]);
    assert_keys(element, &expected, "GetStats element");
    assert_eq!(element["session_id"], json!(s1));
    assert_eq!(element["service_name"], json!("one"));
    assert_eq!(element["route_id"], json!(r1));
}

// ---------------------------------------------------------------------------------------------
// Protocol-level details: limits, unknown paths and methods, healthz, metrics, OpenAPI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bodies_over_one_mib_are_413() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let make = |total: usize| {
        let head = r#"{"service_name":"big","pad":""#;
        let tail = r#""}"#;
        format!(
            "{head}{}{tail}",
            "a".repeat(total - head.len() - tail.len())
        )
    };
    let exact = make(1 << 20);
    assert_eq!(exact.len(), 1 << 20);
    let reply = call(addr, "POST", "/v2/sessions", &exact).await;
    assert_eq!(
        reply.status, 201,
        "exactly 1 MiB is accepted: {}",
        reply.body
    );
    let over = make((1 << 20) + 1);
    expect_error(
        &call(addr, "POST", "/v2/sessions", &over).await,
        413,
        "resource_exhausted",
        "request body too large",
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    for path in [
        "/",
        "/v3/sessions",
        "/v2/nothing",
        "/v2/sessions/x/unknown",
        "/v2/sessions/x/routes/r1/more",
    ] {
        expect_error(
            &call(addr, "GET", path, "").await,
            404,
            "not_found",
            "not found",
        );
    }
    for (method, path) in [
        ("GET", "/v2/sessions"),
        ("PUT", "/v2/sessions"),
        ("PATCH", "/v2/sessions/x"),
        ("POST", "/v2/sessions/x/config/diff"),
        ("GET", "/v2/sessions/x/config/apply"),
        ("PUT", "/v2/sessions/x/drain"),
        ("POST", "/v2/admin/sessions"),
        ("GET", "/v2/backend-test"),
        ("POST", "/healthz"),
    ] {
        expect_error(
            &call(addr, method, path, "").await,
            405,
            "unimplemented",
            "method not allowed",
        );
    }
}

#[tokio::test]
async fn healthz_answers_without_a_session() {
    let app = TestApp::start().await;
    let reply = call(app.api_addr(), "GET", "/healthz", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = TestApp::start().await;
    let reply = http_request(
        app.api_addr(),
        "GET",
        Some("127.0.0.1"),
        "/metrics",
        &[],
        "",
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "API.md: /metrics on the api listener: {reply:?}"
    );
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain; version=0.0.4")),
        "{reply:?}"
    );
}

/// API.md's HTTP table (plus `/healthz` and `/openapi.json`), written by hand.
const SERVED: [(&str, &str); 41] = [
    ("POST", "/v2/sessions"),
    ("POST", "/v2/sessions/{session_id}/reconnect"),
    ("POST", "/v2/sessions/{session_id}/ping"),
    ("GET", "/v2/sessions/{session_id}"),
    ("DELETE", "/v2/sessions/{session_id}"),
    ("POST", "/v2/sessions/{session_id}/routes"),
    ("POST", "/v2/sessions/{session_id}/routes/bulk"),
    ("PATCH", "/v2/sessions/{session_id}/routes/{route_id}"),
    ("DELETE", "/v2/sessions/{session_id}/routes/{route_id}"),
    ("GET", "/v2/sessions/{session_id}/routes"),
    ("PUT", "/v2/sessions/{session_id}/headers/{target}/{name}"),
    (
        "DELETE",
        "/v2/sessions/{session_id}/headers/{target}/{name}",
    ),
    ("PUT", "/v2/sessions/{session_id}/options/{target}/{key}"),
    ("DELETE", "/v2/sessions/{session_id}/options/{target}/{key}"),
    ("PUT", "/v2/sessions/{session_id}/health/{target}"),
    ("PUT", "/v2/sessions/{session_id}/ratelimits/{target}"),
    ("PUT", "/v2/sessions/{session_id}/circuit-breakers/{target}"),
    ("GET", "/v2/sessions/{session_id}/circuit-breakers/{target}"),
    (
        "POST",
        "/v2/sessions/{session_id}/circuit-breakers/{target}/reset",
    ),
    ("POST", "/v2/sessions/{session_id}/config/validate"),
    ("POST", "/v2/sessions/{session_id}/config/apply"),
    ("POST", "/v2/sessions/{session_id}/config/rollback"),
    ("GET", "/v2/sessions/{session_id}/config/diff"),
    ("POST", "/v2/sessions/{session_id}/config/apply-partial"),
    ("POST", "/v2/sessions/{session_id}/drain"),
    ("GET", "/v2/sessions/{session_id}/drain"),
    ("DELETE", "/v2/sessions/{session_id}/drain"),
    ("POST", "/v2/sessions/{session_id}/maintenance"),
    ("POST", "/v2/sessions/{session_id}/maintenance/exit"),
    ("GET", "/v2/sessions/{session_id}/maintenance"),
    ("GET", "/v2/sessions/{session_id}/stats"),
    ("POST", "/v2/backend-test"),
    ("GET", "/v2/sessions/{session_id}/events"),
    ("DELETE", "/v2/sessions/{session_id}/events/{event_type}"),
    ("GET", "/v2/admin/sessions"),
    ("GET", "/v2/admin/routes"),
    ("GET", "/v2/admin/stats"),
    ("GET", "/v2/admin/events"),
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
];

#[tokio::test]
async fn openapi_lists_exactly_the_served_operations() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let reply = call(addr, "GET", "/openapi.json", "").await;
    let doc = expect_ok(&reply, 200, "openapi.json");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let paths = doc["paths"].as_object().expect("paths object");
    let mut listed = BTreeSet::new();
    for (path, methods) in paths {
        for method in methods.as_object().expect("path item object").keys() {
            listed.insert((method.to_ascii_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "openapi.json differs from the served routes: missing {missing:?}, extra {extra:?}"
    );
    for (id, path) in [
        ("post", "/v2/sessions"),
        ("post", "/v2/sessions/{session_id}/routes"),
        ("post", "/v2/sessions/{session_id}/routes/bulk"),
    ] {
        assert!(
            paths[path][id]["responses"].get("201").is_some(),
            "{id} {path} documents 201"
        );
    }

    // Every listed operation is really served: not the router's 404 or 405.
    let sid = register(addr, "probe", "probe-1").await;
    for (method, template) in SERVED {
        let path = template
            .replace("{session_id}", &sid)
            .replace("{route_id}", "r99")
            .replace("{target}", "ALL")
            .replace("{name}", "X-Probe")
            .replace("{key}", "probe_key")
            .replace("{event_type}", "route_added");
        let (status, text) = if path.ends_with("/events") {
            let sse = Sse::open(addr, &format!("{path}?types=route_added"), &[]).await;
            (sse.status, sse.body.clone())
        } else {
            let reply = call(addr, method, &path, "").await;
            (reply.status, reply.body)
        };
        assert_ne!(status, 405, "{method} {path} is routed: {text}");
        let unrouted = status == 404
            && serde_json::from_str::<Value>(&text).ok()
                == Some(json!({"code": "not_found", "message": "not found"}));
        assert!(!unrouted, "{method} {path} is routed: {text}");
    }
}

#[tokio::test]
async fn the_gateway_also_speaks_h2c() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let app = TestApp::start().await;
    let stream = TcpStream::connect(app.api_addr()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake (prior knowledge)");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://{}/v2/sessions", app.api_addr()))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from_static(
            br#"{"service_name":"h2","instance_name":"h2-1"}"#,
        )))
        .expect("request");
    let response = tokio::time::timeout(REPLY_WAIT, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), 201);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert!(value["session_id"]
        .as_str()
        .is_some_and(|s| s.starts_with("h2-1-")));
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sse_streams_events_with_type_after_seq() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "ev", "ev-1").await;
    let mut stream = Sse::open(addr, &s(&sid, "/events?types=all"), &[]).await;
    assert_eq!(stream.status, 200, "{}", stream.body);
    assert!(
        stream
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/event-stream")),
        "{:?}",
        stream.headers
    );
    let info = get_json(addr, &s(&sid, "")).await;
    assert_eq!(info["subscriptions"].as_array().map(Vec::len), Some(11));

    let rid = add_route(addr, &sid, "ev.example.com", "/", "http://127.0.0.1:9001").await;
    apply(addr, &sid).await;

    let added = stream.next().await;
    assert_eq!(added.event.as_deref(), Some("route_added"));
    let data = added.json();
    let seq = data["seq"].as_u64().expect("seq");
    assert_eq!(added.id, Some(seq.to_string()), "id: is the seq");
    assert!(
        added
            .data
            .starts_with(&format!(r#"{{"seq":{seq},"type":"route_added","time":""#)),
        "type right after seq: {}",
        added.data
    );
    let order: Vec<&str> = data
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        order,
        [
            "seq",
            "type",
            "time",
            "session_id",
            "route_id",
            "domains",
            "path",
            "backend",
            "priority"
        ]
    );
    assert_near_now(&data["time"], "time");
    assert_eq!(data["session_id"], json!(sid));
    assert_eq!(data["route_id"], json!(rid));
    assert_eq!(data["domains"], json!(["ev.example.com"]));
    assert_eq!(data["backend"], json!("http://127.0.0.1:9001"));

    let applied = stream.next().await;
    assert_eq!(applied.event.as_deref(), Some("config_applied"));
    let data = applied.json();
    assert_eq!(data["seq"], json!(seq + 1));
    assert_eq!(applied.id, Some((seq + 1).to_string()));
    assert_eq!(data["type"], json!("config_applied"));
    assert_eq!(data["route_id"], Value::Null);
    assert_eq!(data["scopes"], json!(["all"]));
    assert_eq!(data["routes_added"], json!([rid]));
}

#[tokio::test]
async fn sse_last_event_id_replays_then_goes_live() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "ev", "ev-1").await;
    let other = register_quiet(addr, "ev", "ev-2").await;
    add_route(addr, &sid, "one.example.com", "/", "http://127.0.0.1:9001").await;
    apply(addr, &sid).await; // route_added (n), config_applied (n+1)
    add_route(
        addr,
        &other,
        "other.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    apply(addr, &other).await; // another session's events: never replayed here
    add_route(addr, &sid, "two.example.com", "/", "http://127.0.0.1:9001").await;
    apply(addr, &sid).await; // route_added (n+4), config_applied (n+5)

    // Find the seqs through a first replay from 0.
    let mut all = Sse::open(
        addr,
        &s(&sid, "/events?types=route_added,config_applied"),
        &[("Last-Event-ID", "0")],
    )
    .await;
    assert_eq!(all.status, 200, "{}", all.body);
    let mut replayed = Vec::new();
    for _ in 0..4 {
        let e = all.next().await;
        let data = e.json();
        assert_eq!(
            data["session_id"],
            json!(sid),
            "only the session's own events"
        );
        replayed.push((
            e.event.clone().expect("event"),
            data["seq"].as_u64().expect("seq"),
        ));
    }
    let types: Vec<&str> = replayed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "route_added",
            "config_applied",
            "route_added",
            "config_applied"
        ]
    );
    let first_seq = replayed[0].1;

    // Resume after the first route_added, config_applied only: replay, then live.
    let mut resumed = Sse::open(
        addr,
        &s(&sid, "/events?types=config_applied"),
        &[("Last-Event-ID", &first_seq.to_string())],
    )
    .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let e1 = resumed.next().await;
    assert_eq!(e1.event.as_deref(), Some("config_applied"));
    assert_eq!(e1.json()["seq"], json!(replayed[1].1));
    let e2 = resumed.next().await;
    assert_eq!(e2.event.as_deref(), Some("config_applied"));
    assert_eq!(e2.json()["seq"], json!(replayed[3].1));
    add_route(
        addr,
        &sid,
        "three.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    apply(addr, &sid).await;
    let live = resumed.next().await;
    assert_eq!(live.event.as_deref(), Some("config_applied"));
    assert!(live.json()["seq"].as_u64().expect("seq") > replayed[3].1);
    // The first stream got the live pair too: several streams at once.
    let a = all.next().await;
    let b = all.next().await;
    assert_eq!(
        (a.event.as_deref(), b.event.as_deref()),
        (Some("route_added"), Some("config_applied"))
    );
}

#[tokio::test]
async fn sse_last_event_id_older_than_the_window_replays_from_the_oldest_retained() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "win", "win-1").await;
    let enter = json!({"target": "ALL", "page_url": ""}).to_string();
    // 650 MaintEnter → 1,300 maintenance_changed events, more than the 1,024 retained.
    for _ in 0..650 {
        let reply = call(addr, "POST", &s(&sid, "/maintenance"), &enter).await;
        assert_eq!(reply.status, 200);
    }
    // Settle: a first stream reads until idle, so every (asynchronous) completion is out.
    let mut settle = Sse::open(
        addr,
        &s(&sid, "/events?types=maintenance_changed"),
        &[("Last-Event-ID", "0")],
    )
    .await;
    assert_eq!(settle.status, 200, "{}", settle.body);
    let mut settled = 0;
    while settle.next_within(Duration::from_secs(1)).await.is_some() {
        settled += 1;
    }
    assert!(settled >= 1024, "replayed {settled}");
    // Now the bus holds its last 1,024 events, all of this session: an id older than the
    // window replays exactly those, from the oldest.
    let mut probe = Sse::open(
        addr,
        &s(&sid, "/events?types=maintenance_changed"),
        &[("Last-Event-ID", "1")],
    )
    .await;
    assert_eq!(probe.status, 200, "{}", probe.body);
    let first = probe.next().await;
    let oldest: u64 = first.id.as_deref().expect("id").parse().expect("seq");
    assert!(
        oldest > 2,
        "events older than the window are gone (oldest {oldest})"
    );
    let mut last = oldest;
    let mut count = 1;
    while let Some(e) = probe.next_within(Duration::from_secs(1)).await {
        let seq: u64 = e.id.as_deref().expect("id").parse().expect("seq");
        assert_eq!(seq, last + 1, "replay is contiguous");
        last = seq;
        count += 1;
    }
    assert_eq!(
        count, 1024,
        "the retained window replays whole: {oldest}..={last}"
    );
}

#[tokio::test]
async fn other_sessions_events_never_count_as_dropped_for_a_stream() {
    // A stream replaying its retained window to a reader that does not read yet (h2c, small
    // flow-control window) while *another* session produces more than the bus holds: the
    // stream's own session missed nothing of its own, so nothing may be reported dropped
    // for it (API.md: "Events a slow stream cannot take are dropped and counted").
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let app = TestApp::start().await;
    let addr = app.api_addr();
    let mine = register_quiet(addr, "mine", "mine-1").await;
    let noisy = register_quiet(addr, "noisy", "noisy-1").await;
    let enter = json!({"target": "ALL", "page_url": ""}).to_string();
    for _ in 0..300 {
        let reply = call(addr, "POST", &s(&mine, "/maintenance"), &enter).await;
        assert_eq!(reply.status, 200);
    }
    // Settle, so all 600 of my events are on the bus.
    let mut settle = Sse::open(
        addr,
        &s(&mine, "/events?types=maintenance_changed"),
        &[("Last-Event-ID", "0")],
    )
    .await;
    let mut mine_count = 0;
    while settle.next_within(Duration::from_secs(1)).await.is_some() {
        mine_count += 1;
    }
    assert_eq!(mine_count, 600);
    drop(settle);

    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let request = hyper::Request::builder()
        .uri(format!(
            "http://{addr}/v2/sessions/{mine}/events?types=maintenance_changed"
        ))
        .header("last-event-id", "0")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(REPLY_WAIT, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();

    // The other session: more events than the bus retains, while my replay is stuck.
    for _ in 0..700 {
        let reply = call(addr, "POST", &s(&noisy, "/maintenance"), &enter).await;
        assert_eq!(reply.status, 200);
    }
    // Now read my stream.
    let mut text = String::new();
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
        let frame = frame.expect("frame");
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    let replayed = text.matches("event: maintenance_changed").count();
    assert_eq!(replayed, 600, "my whole retained history was replayed");
    assert!(
        !text.contains("event: lagged"),
        "a lagged notice although none of my events was lost"
    );
    let info = get_json(addr, &s(&mine, "")).await;
    assert_eq!(
        info["events_dropped"],
        json!(0),
        "none of my events was dropped; the other session's events were counted as mine"
    );
}

#[tokio::test]
async fn sse_type_errors_come_before_the_stream() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register(addr, "ev", "ev-1").await;
    for (query, message) in [
        ("?types=nope", "unknown event type: nope"),
        ("?types=route_added,nope", "unknown event type: nope"),
        ("?types=", "invalid format"),
        ("", "invalid format"),
    ] {
        let sse = Sse::open(addr, &s(&sid, &format!("/events{query}")), &[]).await;
        assert_eq!(sse.status, 400, "events{query}: {}", sse.body);
        assert_eq!(
            serde_json::from_str::<Value>(&sse.body).ok(),
            Some(json!({"code": "invalid_argument", "message": message})),
            "events{query}"
        );
    }
    let sse = Sse::open(addr, &s("nosuch", "/events?types=all"), &[]).await;
    assert_eq!(sse.status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&sse.body).ok(),
        Some(json!({"code": "not_found", "message": "session not found"}))
    );
    let sse = Sse::open(addr, "/v2/admin/events?types=nope", &[]).await;
    assert_eq!(sse.status, 400, "{}", sse.body);
    let info = get_json(addr, &s(&sid, "")).await;
    assert_eq!(
        info["subscriptions"],
        json!([]),
        "nothing subscribed by the failures"
    );
}

#[tokio::test]
async fn unsubscribe_stops_events_on_open_streams() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "ev", "ev-1").await;
    let mut stream = Sse::open(
        addr,
        &s(&sid, "/events?types=route_added,config_applied"),
        &[],
    )
    .await;
    assert_eq!(stream.status, 200);
    let reply = call(addr, "DELETE", &s(&sid, "/events/route_added"), "").await;
    assert_eq!(expect_ok(&reply, 200, "Unsubscribe"), json!({}));
    expect_error(
        &call(addr, "DELETE", &s(&sid, "/events/nope"), "").await,
        400,
        "invalid_argument",
        "unknown event type: nope",
    );
    let reply = call(addr, "DELETE", &s(&sid, "/events/cert_renewed"), "").await;
    assert_eq!(
        expect_ok(&reply, 200, "Unsubscribe of a type not subscribed"),
        json!({})
    );
    assert_eq!(
        get_json(addr, &s(&sid, "")).await["subscriptions"],
        json!(["config_applied"])
    );
    add_route(addr, &sid, "u.example.com", "/", "http://127.0.0.1:9001").await;
    apply(addr, &sid).await;
    let event = stream.next().await;
    assert_eq!(
        event.event.as_deref(),
        Some("config_applied"),
        "route_added stopped"
    );
}

#[tokio::test]
async fn a_slow_sse_reader_gets_event_lagged() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let sid = register_quiet(addr, "slow", "slow-1").await;
    let mut stream = Sse::open(addr, &s(&sid, "/events?types=maintenance_changed"), &[]).await;
    assert_eq!(stream.status, 200);
    let enter = json!({"target": "ALL", "page_url": ""}).to_string();
    // Do not read; cause events until the session reports drops.
    let mut cycles = 0;
    while get_json(addr, &s(&sid, "")).await["events_dropped"] == json!(0) {
        for _ in 0..100 {
            let reply = call(addr, "POST", &s(&sid, "/maintenance"), &enter).await;
            assert_eq!(reply.status, 200);
        }
        cycles += 100;
        assert!(
            cycles < 20_000,
            "no event was ever dropped for the unread stream"
        );
    }
    let mut events = Vec::new();
    while let Some(e) = stream.next_within(Duration::from_secs(2)).await {
        events.push(e);
    }
    // One more event after catching up: the notice must precede it at the latest.
    let reply = call(addr, "POST", &s(&sid, "/maintenance"), &enter).await;
    assert_eq!(reply.status, 200);
    while let Some(e) = stream.next_within(Duration::from_secs(2)).await {
        events.push(e);
    }
    let lagged = events
        .iter()
        .find(|e| e.event.as_deref() == Some("lagged"))
        .unwrap_or_else(|| panic!("no `event: lagged` among {} events", events.len()));
    let data = lagged.json();
    assert_keys(&data, &["dropped"], "lagged data");
    assert!(data["dropped"].as_u64().is_some_and(|n| n > 0), "{data}");
}

#[tokio::test]
async fn admin_events_stream_every_session() {
    let app = TestApp::start().await;
    let addr = app.api_addr();
    let mut stream = Sse::open(addr, "/v2/admin/events", &[]).await;
    assert_eq!(stream.status, 200, "{}", stream.body);
    assert!(stream
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("text/event-stream")));
    let s1 = register_quiet(addr, "one", "one-1").await;
    let s2 = register_quiet(addr, "two", "two-1").await;
    add_route(addr, &s1, "a1.example.com", "/", "http://127.0.0.1:9001").await;
    apply(addr, &s1).await;
    add_route(addr, &s2, "a2.example.com", "/", "http://127.0.0.1:9001").await;
    apply(addr, &s2).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = stream.next().await;
        let data = e.json();
        seen.push((
            e.event.expect("event"),
            data["session_id"].as_str().expect("sid").to_string(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("route_added".to_string(), s1.clone()),
            ("config_applied".to_string(), s1.clone()),
            ("route_added".to_string(), s2.clone()),
            ("config_applied".to_string(), s2.clone()),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Front lease over HTTP
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_http_session_lapses_without_calls_and_an_sse_stream_holds_it() {
    let app = TestApp::start_with(|config| {
        config.session_lease = Duration::from_millis(300);
        config.session_grace = Duration::from_millis(300);
    })
    .await;
    let addr = app.api_addr();
    let proxy = app.proxy_addr();
    let backend = Backend::start("lease").await;
    let sid = register_quiet(addr, "lease", "lease-1").await;
    add_route(addr, &sid, "lease.example.com", "/", &backend.url()).await;
    apply(addr, &sid).await;
    assert_eq!(get(proxy, "lease.example.com", "/").await.status, 200);
    wait_until(|| async move { get(proxy, "lease.example.com", "/").await.status == 503 }).await;
    // Any call restores it within the grace.
    let reply = call(addr, "POST", &s(&sid, "/ping"), "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(get(proxy, "lease.example.com", "/").await.status, 200);

    // An open SSE stream holds it well past lease + grace.
    let stream = Sse::open(addr, &s(&sid, "/events?types=config_applied"), &[]).await;
    assert_eq!(stream.status, 200);
    let until = Instant::now() + Duration::from_millis(1200);
    let mut tick = tokio::time::interval(Duration::from_millis(75));
    while Instant::now() < until {
        tick.tick().await;
        assert_eq!(
            get(proxy, "lease.example.com", "/").await.status,
            200,
            "the open SSE stream keeps the session connected"
        );
    }
    drop(stream);
    wait_until(|| async move { get(proxy, "lease.example.com", "/").await.status == 503 }).await;
    wait_until(|| async move { get(proxy, "lease.example.com", "/").await.status == 404 }).await;
    expect_error(
        &call(addr, "GET", &s(&sid, ""), "").await,
        404,
        "not_found",
        "session not found",
    );
}

#[tokio::test]
async fn a_failing_call_that_names_the_session_still_renews_its_lease() {
    // PROTOCOL §1.8: the bookkeeping (lease renewal, implicit reconnection) happens as soon
    // as the session is resolved, also when the command then fails.
    let app = TestApp::start_with(|config| {
        config.session_lease = Duration::from_millis(300);
        config.session_grace = Duration::from_secs(30);
    })
    .await;
    let addr = app.api_addr();
    let proxy = app.proxy_addr();
    let backend = Backend::start("renew").await;
    let sid = register_quiet(addr, "renew", "renew-1").await;
    add_route(addr, &sid, "renew.example.com", "/", &backend.url()).await;
    apply(addr, &sid).await;
    let failing: [(&str, String, &str); 3] = [
        (
            "POST",
            s(&sid, "/routes"),
            r#"{"domains":["-bad"],"path":"/","backend_url":"http://127.0.0.1:9"}"#,
        ),
        ("GET", s(&sid, "/drain"), ""),
        ("DELETE", s(&sid, "/routes/r99"), ""),
    ];
    for (method, path, request) in failing {
        wait_until(|| async move { get(proxy, "renew.example.com", "/").await.status == 503 })
            .await;
        let reply = call(addr, method, &path, request).await;
        assert!(reply.status >= 400, "{method} {path} fails: {reply:?}");
        assert_eq!(
            get(proxy, "renew.example.com", "/").await.status,
            200,
            "{method} {path} failed but reconnected the session"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_an_auth_token_every_call_needs_the_bearer() {
    let app = TestApp::start_with(|config| config.auth_token = Some("t".into())).await;
    let addr = app.api_addr();
    let register_body = r#"{"service_name":"sec","metadata":{"auth_token":"t","team":"x"}}"#;
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "t")],
    ] {
        expect_error(
            &call_with(addr, "POST", "/v2/sessions", &headers, register_body).await,
            403,
            "permission_denied",
            "permission denied: invalid auth token",
        );
    }
    let bearer = [("authorization", "Bearer t")];
    let reply = call_with(addr, "POST", "/v2/sessions", &bearer, register_body).await;
    let sid = expect_ok(&reply, 201, "Register with the bearer")["session_id"]
        .as_str()
        .expect("sid")
        .to_string();
    expect_error(
        &call(addr, "GET", &s(&sid, ""), "").await,
        403,
        "permission_denied",
        "permission denied: invalid auth token",
    );
    let info = call_with(addr, "GET", &s(&sid, ""), &bearer, "").await;
    assert_eq!(
        expect_ok(&info, 200, "SessionInfo")["metadata"],
        json!({"team": "x"}),
        "the metadata auth_token is removed"
    );
    // Open endpoints.
    assert_eq!(call(addr, "GET", "/healthz", "").await.status, 200);
    assert_eq!(call(addr, "GET", "/openapi.json", "").await.status, 200);
    // Admin takes the auth token when no admin token is set.
    expect_error(
        &call(addr, "GET", "/v2/admin/sessions", "").await,
        403,
        "permission_denied",
        "permission denied: invalid auth token",
    );
    let reply = call_with(addr, "GET", "/v2/admin/sessions", &bearer, "").await;
    expect_ok(&reply, 200, "ListSessions with the auth token");
    // SSE needs it too.
    let sse = Sse::open(addr, &s(&sid, "/events?types=all"), &[]).await;
    assert_eq!(sse.status, 403);
    let sse = Sse::open(addr, &s(&sid, "/events?types=all"), &bearer).await;
    assert_eq!(sse.status, 200);
    // With auth on, a backend test needs a session.
    expect_error(
        &call_with(
            addr,
            "POST",
            "/v2/backend-test",
            &bearer,
            r#"{"backend_url":"http://127.0.0.1:9"}"#,
        )
        .await,
        400,
        "invalid_argument",
        "no session",
    );
}

#[tokio::test]
async fn admin_endpoints_take_the_admin_token_when_set() {
    let app = TestApp::start_with(|config| {
        config.auth_token = Some("t".into());
        config.admin_token = Some("a".into());
    })
    .await;
    let addr = app.api_addr();
    for path in ["/v2/admin/sessions", "/v2/admin/routes", "/v2/admin/stats"] {
        expect_error(
            &call_with(addr, "GET", path, &[("authorization", "Bearer t")], "").await,
            403,
            "permission_denied",
            "permission denied: invalid auth token",
        );
        let reply = call_with(addr, "GET", path, &[("authorization", "Bearer a")], "").await;
        expect_ok(&reply, 200, path);
    }
    let sse = Sse::open(addr, "/v2/admin/events", &[("authorization", "Bearer a")]).await;
    assert_eq!(sse.status, 200);
    let sse = Sse::open(addr, "/v2/admin/events", &[("authorization", "Bearer t")]).await;
    assert_eq!(sse.status, 403);
}

#[tokio::test]
async fn metrics_take_the_admin_token_when_auth_is_on() {
    let app = TestApp::start_with(|config| {
        config.auth_token = Some("t".into());
        config.admin_token = Some("a".into());
    })
    .await;
    let addr = app.api_addr();
    let reply = http_request(
        addr,
        "GET",
        Some("127.0.0.1"),
        "/metrics",
        &[("authorization", "Bearer a")],
        "",
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "/metrics with the admin token: {reply:?}"
    );
    let reply = http_request(addr, "GET", Some("127.0.0.1"), "/metrics", &[], "").await;
    assert_eq!(reply.status, 403, "/metrics without a token: {reply:?}");
}
