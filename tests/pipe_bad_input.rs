//! Malformed pipe input (PROTOCOL §1.2–1.4, §1.8, field rules of §4): every bad line gets its exact error, changes nothing, and the connection and other sessions keep working.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Placeholder replaced by the session id at run time.
const SID: &str = "{sid}";

fn case(line: impl Into<String>, want: impl Into<String>) -> (String, String) {
    (line.into(), want.into())
}

/// `ROUTE_ADD` with one field replaced: `domains`, `path`, `backend_url` or `priority`.
fn route_add(domains: &str, path: &str, backend: &str, priority: &str) -> String {
    format!("ROUTE_ADD|{SID}|{domains}|{path}|{backend}|{priority}")
}

/// A session with one applied route r1 on `good.example.com/`, on its own connection.
async fn registered(app: &TestApp, service: &str, backend: &Backend) -> (Pipe, String) {
    let mut pipe = app.pipe().await;
    let sid = pipe.register(service, &format!("{service}-1")).await;
    pipe.add_route(&sid, &format!("{service}.example.com"), "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    (pipe, sid)
}

/// Every malformed line and its exact reply, for a session whose route r1 is
/// `good.example.com/` and whose neighbour (another service) owns r2 on `bystander.example.com/`.
fn bad_lines() -> Vec<(String, String)> {
    let s = SID;
    let mut cases = vec![
        // Unknown command words (§1.3), before anything else (§1.8 step 2).
        case("FOO", "ERROR|unknown command: FOO"),
        case(format!("FOO|{s}|x"), "ERROR|unknown command: FOO"),
        case("FOO|nosuch", "ERROR|unknown command: FOO"),
        case(format!("route_add|{s}"), "ERROR|unknown command: route_add"),
        // Missing required fields (step 3) — before the session (step 4).
        case("ROUTE_ADD", "ERROR|invalid format"),
        case(format!("ROUTE_ADD|{s}"), "ERROR|invalid format"),
        case(
            format!("ROUTE_ADD|{s}|a.example.com|/"),
            "ERROR|invalid format",
        ),
        case("ROUTE_ADD|nosuch", "ERROR|invalid format"),
        case(format!("ROUTE_ADD_BULK|{s}"), "ERROR|invalid format"),
        case(
            format!("ROUTE_UPDATE|{s}|r1|priority"),
            "ERROR|invalid format",
        ),
        case(format!("ROUTE_REMOVE|{s}"), "ERROR|invalid format"),
        case(format!("HEADERS_SET|{s}|ALL|X-A"), "ERROR|invalid format"),
        case(format!("HEADERS_REMOVE|{s}|ALL"), "ERROR|invalid format"),
        case(
            format!("OPTIONS_SET|{s}|ALL|timeout"),
            "ERROR|invalid format",
        ),
        case(format!("OPTIONS_REMOVE|{s}|ALL"), "ERROR|invalid format"),
        case(format!("HEALTH_SET|{s}|ALL|/|10s"), "ERROR|invalid format"),
        case(format!("RATELIMIT_SET|{s}|ALL|10"), "ERROR|invalid format"),
        case(
            format!("CIRCUIT_BREAKER_SET|{s}|ALL|5|30s"),
            "ERROR|invalid format",
        ),
        case(format!("CONFIG_APPLY_PARTIAL|{s}"), "ERROR|invalid format"),
        case("REGISTER", "ERROR|invalid format"),
        case("REGISTER|svc", "ERROR|invalid format"),
        case("REGISTER|svc|svc-9", "ERROR|invalid format"),
        // The session (step 4) before field syntax (step 5).
        case(
            "ROUTE_ADD|nosuch|-a.com|api|ftp://x|abc",
            "ERROR|session not found",
        ),
        case("ROUTE_LIST|nosuch", "ERROR|session not found"),
        case("PING|nosuch", "ERROR|session not found"),
        // Fields in the order the command lists them, then state (steps 5 and 6).
        case(
            route_add("-a.com", "api", "ftp://x", "abc"),
            "ERROR|invalid domain: -a.com",
        ),
        case(
            route_add("ok.example.com", "api", "ftp://x", "abc"),
            "ERROR|invalid path: api",
        ),
        case(
            route_add("ok.example.com", "/", "ftp://x", "abc"),
            "ERROR|invalid backend url format",
        ),
        case(
            route_add("good.example.com", "/", "http://h.example.com", "abc"),
            "ERROR|invalid priority",
        ),
        case(
            route_add("good.example.com", "/", "http://h.example.com", "0"),
            "ERROR|duplicate route: good.example.com/",
        ),
        case(
            route_add("bystander.example.com", "/", "http://h.example.com", "0"),
            "ERROR|permission denied: bystander.example.com/ is claimed by another service",
        ),
        case(
            format!("HEADERS_SET|{s}|r999|Bad Name|v"),
            "ERROR|invalid header name",
        ),
        case(
            format!("HEADERS_SET|{s}|r999|X-A|v"),
            "ERROR|route not found",
        ),
        case(
            format!("ROUTE_UPDATE|{s}|r999|nofield|1"),
            "ERROR|unknown field: nofield",
        ),
        case(
            format!("ROUTE_UPDATE|{s}|r999|priority|abc"),
            "ERROR|invalid priority",
        ),
        case(
            format!("HEALTH_SET|{s}|r999|/h|30S|1s"),
            "ERROR|invalid interval",
        ),
        case(
            format!("RATELIMIT_SET|{s}|r999|-1|1s"),
            "ERROR|invalid requests",
        ),
        case(
            format!("HEALTH_SET|{s}|r1|bad|30S|x"),
            "ERROR|invalid health path",
        ),
        case(
            format!("RATELIMIT_SET|{s}|r1|-1|50ms"),
            "ERROR|invalid requests",
        ),
        case(
            format!("CIRCUIT_BREAKER_SET|{s}|r1|-1|50ms|0"),
            "ERROR|invalid threshold",
        ),
        // Route-id resolution (§4).
        case(format!("ROUTE_REMOVE|{s}|r999"), "ERROR|route not found"),
        case(format!("ROUTE_REMOVE|{s}|r01"), "ERROR|route not found"),
        case(format!("ROUTE_REMOVE|{s}|R1"), "ERROR|route not found"),
        case(format!("ROUTE_REMOVE|{s}|1"), "ERROR|route not found"),
        case(
            format!("HEADERS_SET|{s}|all|X-A|v"),
            "ERROR|route not found",
        ),
        case(
            format!("ROUTE_REMOVE|{s}|r2"),
            "ERROR|permission denied: route r2 belongs to another session",
        ),
        case(
            format!("HEADERS_SET|{s}|r2|X-A|v"),
            "ERROR|permission denied: route r2 belongs to another session",
        ),
        // Empty fields.
        case(
            route_add("", "/", "http://h.example.com", "0"),
            "ERROR|no domains specified",
        ),
        case(
            route_add(" , ,", "/", "http://h.example.com", "0"),
            "ERROR|no domains specified",
        ),
        case(
            route_add("p.example.com", "", "http://h.example.com", "0"),
            "ERROR|path cannot be empty",
        ),
        case(
            route_add("p.example.com", "  ", "http://h.example.com", "0"),
            "ERROR|path cannot be empty",
        ),
        case(
            route_add("p.example.com", "/", "", "0"),
            "ERROR|invalid backend url format",
        ),
        case(
            format!("HEADERS_SET|{s}|ALL||v"),
            "ERROR|invalid header name",
        ),
        case(
            format!("OPTIONS_SET|{s}|ALL||1"),
            "ERROR|invalid option key",
        ),
        case(
            format!("OPTIONS_REMOVE|{s}|ALL|"),
            "ERROR|invalid option key",
        ),
        case(
            format!("HEALTH_SET|{s}|ALL|/||1s"),
            "ERROR|invalid interval",
        ),
        case(
            format!("HEALTH_SET|{s}|ALL||10s|1s"),
            "ERROR|invalid health path",
        ),
        case(
            format!("RATELIMIT_SET|{s}|ALL||1s"),
            "ERROR|invalid requests",
        ),
        case(
            format!("CIRCUIT_BREAKER_SET|{s}|ALL||30s|1"),
            "ERROR|invalid threshold",
        ),
        case(format!("CONFIG_APPLY_PARTIAL|{s}|"), "ERROR|invalid format"),
        case(
            format!("CONFIG_APPLY_PARTIAL|{s}| , "),
            "ERROR|invalid format",
        ),
        case(
            format!("CONFIG_APPLY_PARTIAL|{s}|routes,x"),
            "ERROR|unknown scope: x",
        ),
        case(format!("ROUTE_ADD_BULK|{s}|"), "ERROR|invalid json"),
        case("REGISTER|||", "ERROR|invalid service name"),
    ];

    // Domains (§4.6): the bad item is echoed trimmed, as received.
    let label64 = "a".repeat(64);
    let label63 = "a".repeat(63);
    let too_long_name = format!("{label63}.{label63}.{label63}.{label63}.com");
    let bad_domains = [
        "-a.com".to_string(),
        "a-.com".to_string(),
        "a..b".to_string(),
        "a.com:80".to_string(),
        "http://a.com".to_string(),
        "a.com/x".to_string(),
        "a_b.com".to_string(),
        format!("{label64}.com"),
        too_long_name,
        "*.com".to_string(),
        "a.*.com".to_string(),
        "*".to_string(),
        "b\u{fc}cher.de".to_string(),
    ];
    for domain in &bad_domains {
        cases.push(case(
            route_add(domain, "/", "http://h.example.com", "0"),
            format!("ERROR|invalid domain: {domain}"),
        ));
    }
    cases.push(case(
        route_add(
            "ok.example.com, -A.com ,a..b",
            "/",
            "http://h.example.com",
            "0",
        ),
        "ERROR|invalid domain: -A.com",
    ));
    let many: Vec<String> = (1..=33).map(|i| format!("m{i}.example.com")).collect();
    cases.push(case(
        route_add(&many.join(","), "/", "http://h.example.com", "0"),
        "ERROR|too many domains",
    ));
    cases.push(case(
        route_add(
            &format!("{},-z.com", many.join(",")),
            "/",
            "http://h.example.com",
            "0",
        ),
        "ERROR|invalid domain: -z.com",
    ));

    // Paths (§4.6).
    let long_path = format!("/{}", "a".repeat(1024));
    for path in [
        "api",
        "/a//b",
        "//",
        "/a/../b",
        "/a/./b",
        "/a?x",
        "/a b",
        "/a#b",
        "/a%zz",
        "/a%2",
        long_path.as_str(),
    ] {
        cases.push(case(
            route_add("p.example.com", path, "http://h.example.com", "0"),
            format!("ERROR|invalid path: {path}"),
        ));
    }
    // A control character in an echoed value is written as a JSON escape (§1.5).
    cases.push(case(
        route_add("p.example.com", "/a\tb", "http://h.example.com", "0"),
        "ERROR|invalid path: /a\\tb",
    ));

    // Backend URLs (§4.6).
    let long_url = format!("http://h.example.com/{}", "a".repeat(2048));
    for url in [
        "ftp://x",
        "http://",
        "http://u:p@h",
        "http://h?q=1",
        "http://h#f",
        "http://h:0",
        "http://h:70000",
        "http://h:abc",
        "h.example.com:80",
        "http//h",
        "http://a b",
        long_url.as_str(),
    ] {
        cases.push(case(
            route_add("u.example.com", "/", url, "0"),
            "ERROR|invalid backend url format",
        ));
    }
    cases.push(case(
        route_add("u.example.com", "/", "http://169.254.169.254/latest", "0"),
        "ERROR|backend not allowed: 169.254.169.254",
    ));

    // Priorities (§1.4 integers, §4.6 range).
    for priority in [
        "10001",
        "-10001",
        "1.5",
        "+5",
        "abc",
        "5 0",
        "0x10",
        "1e3",
        "99999999999999999999",
    ] {
        cases.push(case(
            route_add("q.example.com", "/", "http://h.example.com", priority),
            "ERROR|invalid priority",
        ));
    }

    // Durations (§1.4): HEALTH_SET interval, then timeout.
    for interval in [
        "30S", "-1", "1d", " ", "50ms", "2h", "1 m", "1h30", "1.", "s", "1e3", "+1s",
    ] {
        cases.push(case(
            format!("HEALTH_SET|{s}|r1|/h|{interval}|10ms"),
            "ERROR|invalid interval",
        ));
    }
    for (interval, timeout) in [
        ("1s", "2s"),
        ("10s", "5ms"),
        ("2m", "61s"),
        ("10s", ""),
        ("10s", "abc"),
        ("10s", "1S"),
    ] {
        cases.push(case(
            format!("HEALTH_SET|{s}|r1|/h|{interval}|{timeout}"),
            "ERROR|invalid timeout",
        ));
    }
    for path in ["health", "/a//b", "/h#x", "/h x"] {
        cases.push(case(
            format!("HEALTH_SET|{s}|r1|{path}|10s|1s"),
            "ERROR|invalid health path",
        ));
    }

    // Header names and values (§4.11).
    let long_name = format!("X-{}", "a".repeat(127));
    for name in [
        "Bad Name",
        "X-A:",
        "X(A)",
        "X/A",
        "X@A",
        "X-\u{c4}",
        long_name.as_str(),
    ] {
        cases.push(case(
            format!("HEADERS_SET|{s}|r1|{name}|v"),
            "ERROR|invalid header name",
        ));
    }
    cases.push(case(
        format!("HEADERS_REMOVE|{s}|r1|Bad Name"),
        "ERROR|invalid header name",
    ));
    for name in [
        "Connection",
        "keep-alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "Transfer-Encoding",
        "TE",
        "Trailer",
        "upgrade",
        "Content-Length",
        "CONTENT-ENCODING",
    ] {
        cases.push(case(
            format!("HEADERS_SET|{s}|r1|{name}|v"),
            format!("ERROR|header not allowed: {name}"),
        ));
    }
    let long_value = "v".repeat(4097);
    for value in ["caf\u{e9}", "\u{2603}", long_value.as_str()] {
        cases.push(case(
            format!("HEADERS_SET|{s}|r1|X-A|{value}"),
            "ERROR|invalid header value",
        ));
    }

    // Option keys and values (§4.13).
    cases.push(case(
        format!("OPTIONS_SET|{s}|r1|{}|1", "k".repeat(129)),
        "ERROR|invalid option key",
    ));
    for (key, value) in [
        ("timeout", "50ms"),
        ("timeout", "2h"),
        ("timeout", "5x"),
        ("timeout", "30S"),
        ("connect_timeout", "50ms"),
        ("connect_timeout", "61s"),
        ("websocket", "maybe"),
        ("compression", "2"),
        ("http2", "tru"),
        ("http3", "nope"),
        ("strip_prefix", "yes please"),
        ("preserve_host", "-1"),
        ("tls_skip_verify", "t"),
        ("max_body_size", "2G"),
        ("max_body_size", "1025M"),
        ("max_body_size", "-1"),
        ("max_body_size", "1.5M"),
        ("max_body_size", "10X"),
        ("backend_protocol", "h3"),
        ("health_check_interval", "50ms"),
        ("health_check_interval", "2h"),
        ("health_check_timeout", "5ms"),
        ("health_check_timeout", "61s"),
        ("health_check_path", "nope"),
        ("health_check_path", "/a//b"),
    ] {
        cases.push(case(
            format!("OPTIONS_SET|{s}|r1|{key}|{value}"),
            format!("ERROR|invalid value for {key}: {value}"),
        ));
    }

    // Rate limits (§4.16).
    for requests in ["-1", "1000001", "1.5", "+5", "abc"] {
        cases.push(case(
            format!("RATELIMIT_SET|{s}|r1|{requests}|1s"),
            "ERROR|invalid requests",
        ));
    }
    for window in ["50ms", "25h", "", "x", "1 s"] {
        cases.push(case(
            format!("RATELIMIT_SET|{s}|r1|10|{window}"),
            "ERROR|invalid window",
        ));
    }

    // Circuit breakers (§4.17).
    for threshold in ["10001", "-1", "abc", "1.5"] {
        cases.push(case(
            format!("CIRCUIT_BREAKER_SET|{s}|r1|{threshold}|30s|1"),
            "ERROR|invalid threshold",
        ));
    }
    for timeout in ["50ms", "2h", "", "30S"] {
        cases.push(case(
            format!("CIRCUIT_BREAKER_SET|{s}|r1|5|{timeout}|1"),
            "ERROR|invalid timeout",
        ));
    }
    for half_open in ["0", "1001", "", "x", "-1"] {
        cases.push(case(
            format!("CIRCUIT_BREAKER_SET|{s}|r1|5|30s|{half_open}"),
            "ERROR|invalid half_open_requests",
        ));
    }

    // ROUTE_ADD_BULK (§4.7).
    let element =
        |domain: &str| format!(r#"{{"domains":"{domain}","path":"/","backend":"http://h"}}"#);
    let too_many: Vec<String> = (1..=257).map(|i| element(&format!("d{i}.io"))).collect();
    for (json, want) in [
        ("{".to_string(), "ERROR|invalid json"),
        ("[1]".to_string(), "ERROR|invalid json"),
        (r#"{"a":1}"#.to_string(), "ERROR|invalid json"),
        (r#""[]""#.to_string(), "ERROR|invalid json"),
        (format!("[{}] trailing", element("b.example.com")), "ERROR|invalid json"),
        (
            r#"[{"domains":"b.example.com","path":"/","backend_url":"http://h","priority":"5"}]"#.to_string(),
            "ERROR|route 0: invalid json",
        ),
        (
            r#"[{"domains":["b.example.com",5],"path":"/","backend_url":"http://h"}]"#.to_string(),
            "ERROR|route 0: invalid json",
        ),
        (
            format!(r#"[{},{{"domains":"c.example.com","path":"/","backend_url":"ftp://h"}}]"#, element("b.example.com")),
            "ERROR|route 1: invalid backend url format",
        ),
        (format!("[{},{}]", element("b.example.com"), element("b.example.com")), "ERROR|route 1: duplicate route: b.example.com/"),
        (format!("[{}]", element("good.example.com")), "ERROR|route 0: duplicate route: good.example.com/"),
        (
            format!("[{}]", element("bystander.example.com")),
            "ERROR|route 0: permission denied: bystander.example.com/ is claimed by another service",
        ),
        (r#"[{"domains":[],"path":"/","backend_url":"http://h"}]"#.to_string(), "ERROR|route 0: no domains specified"),
        (r#"[{"domains":"b.example.com","path":null,"backend_url":"http://h"}]"#.to_string(), "ERROR|route 0: path cannot be empty"),
        (r#"[{"domains":"b.example.com","path":"api","backend_url":"http://h"}]"#.to_string(), "ERROR|route 0: invalid path: api"),
        // A '|' inside an echoed JSON string is written \u007c (§1.5).
        (r#"[{"domains":"b.example.com","path":"/a|b","backend_url":"http://h"}]"#.to_string(), r"ERROR|route 0: invalid path: /a\u007cb"),
        (
            r#"[{"domains":"b.example.com","path":"/","backend_url":"http://h","priority":20000}]"#.to_string(),
            "ERROR|route 0: invalid priority",
        ),
        (format!("[{}]", too_many.join(",")), "ERROR|too many routes"),
    ] {
        cases.push(case(format!("ROUTE_ADD_BULK|{s}|{json}"), want));
    }

    // REGISTER (§4.1).
    let big_metadata = format!(r#"{{"k":"{}"}}"#, "a".repeat(8200));
    for (line, want) in [
        (
            "REGISTER|-x|i|0|{}".to_string(),
            "ERROR|invalid service name",
        ),
        (
            "REGISTER|_x|i|0|{}".to_string(),
            "ERROR|invalid service name",
        ),
        (
            "REGISTER|a b|i|0|{}".to_string(),
            "ERROR|invalid service name",
        ),
        (
            "REGISTER|a/b|i|0|{}".to_string(),
            "ERROR|invalid service name",
        ),
        (
            format!("REGISTER|{}|i|0|{{}}", "s".repeat(65)),
            "ERROR|invalid service name",
        ),
        (
            "REGISTER|-x|in stance|70000|{bad".to_string(),
            "ERROR|invalid service name",
        ),
        (
            "REGISTER|svc|in stance|0|{}".to_string(),
            "ERROR|invalid instance name",
        ),
        (
            "REGISTER|svc|i/x|0|{}".to_string(),
            "ERROR|invalid instance name",
        ),
        (
            format!("REGISTER|svc|{}|0|{{}}", "i".repeat(129)),
            "ERROR|invalid instance name",
        ),
        (
            "REGISTER|svc|svc-9|70000|{}".to_string(),
            "ERROR|invalid maintenance port",
        ),
        (
            "REGISTER|svc|svc-9|-1|{}".to_string(),
            "ERROR|invalid maintenance port",
        ),
        (
            "REGISTER|svc|svc-9|80a|{}".to_string(),
            "ERROR|invalid maintenance port",
        ),
        (
            "REGISTER|svc|svc-9|0|{bad".to_string(),
            "ERROR|invalid metadata json",
        ),
        (
            r#"REGISTER|svc|svc-9|0|{"a":1} x"#.to_string(),
            "ERROR|invalid metadata json",
        ),
        (
            format!("REGISTER|svc|svc-9|0|{big_metadata}"),
            "ERROR|invalid metadata json",
        ),
        (
            r#"REGISTER|svc|svc-9|0|{"liveness":"sometimes"}"#.to_string(),
            "ERROR|invalid liveness",
        ),
    ] {
        cases.push(case(line, want));
    }
    cases
}

#[tokio::test]
async fn malformed_lines_get_their_exact_error_and_change_nothing() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let (mut pipe, sid) = registered(&app, "good", &backend).await;
    let (mut neighbour, neighbour_sid) = registered(&app, "bystander", &backend).await;
    let neighbour_list = neighbour.cmd(&format!("ROUTE_LIST|{neighbour_sid}")).await;
    assert!(
        neighbour_list.contains(r#""route_id":"r2""#),
        "{neighbour_list}"
    );
    let list_before = pipe.cmd(&format!("ROUTE_LIST|{sid}")).await;

    let mut failures = Vec::new();
    for (line, want) in bad_lines() {
        let line = line.replace(SID, &sid);
        assert!(
            line.len() <= 16_384,
            "case longer than a command line: {}…",
            &line[..80]
        );
        let got = pipe.cmd(&line).await;
        if got != want {
            let shown: String = line.chars().take(200).collect();
            failures.push(format!("{shown}\n    got:  {got}\n    want: {want}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} wrong replies:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The connection still works and nothing changed.
    assert_eq!(pipe.cmd(&format!("PING|{sid}")).await, "PONG");
    assert_eq!(pipe.cmd("PING").await, "PONG");
    assert_eq!(pipe.cmd(&format!("ROUTE_LIST|{sid}")).await, list_before);
    let list = payload(&list_before, "ROUTE_LIST_OK");
    assert_eq!(list[0]["status"], "active");
    let diff = payload(&pipe.cmd(&format!("CONFIG_DIFF|{sid}")).await, "DIFF_OK");
    assert_eq!(
        diff["pending"], false,
        "a failed command staged something: {diff}"
    );
    let info = payload(
        &pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(info["routes_active"], 1);
    assert_eq!(info["routes_staged"], 0);
    assert_eq!(info["ignored_options"], serde_json::json!([]));

    // The other session on its own connection is unaffected and still usable.
    assert_eq!(
        neighbour.cmd(&format!("PING|{neighbour_sid}")).await,
        "PONG"
    );
    assert_eq!(
        neighbour.cmd(&format!("ROUTE_LIST|{neighbour_sid}")).await,
        neighbour_list
    );
    let rid = neighbour
        .add_route(
            &neighbour_sid,
            "bystander.example.com",
            "/more",
            &backend.url(),
        )
        .await;
    assert!(rid.starts_with('r'), "{rid}");
    neighbour.apply(&neighbour_sid).await;
}

// ---------------------------------------------------------------------------------------------
// Raw bytes (§1.2)
// ---------------------------------------------------------------------------------------------

/// A session on a fresh app (no routes).
async fn fresh_session() -> (TestApp, Pipe, String) {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("raw", "raw-1").await;
    (app, pipe, sid)
}

/// `prefix` padded with `x` to exactly `len` bytes.
fn padded(prefix: &str, len: usize) -> String {
    format!("{prefix}{}", "x".repeat(len - prefix.len()))
}

#[tokio::test]
async fn a_line_of_16384_bytes_is_accepted_and_one_more_byte_is_too_long() {
    let (_app, mut pipe, sid) = fresh_session().await;
    // PING ignores fields beyond its own, so the padding is harmless.
    let exact = padded(&format!("PING|{sid}|"), 16_384);
    pipe.send_raw(format!("{exact}\n").as_bytes()).await;
    assert_eq!(pipe.recv().await, "PONG", "16,384 bytes + LF");
    pipe.send_raw(format!("{exact}\r\n").as_bytes()).await;
    assert_eq!(
        pipe.recv().await,
        "PONG",
        "16,384 bytes + CRLF (the terminator does not count)"
    );

    let long = padded(&format!("PING|{sid}|"), 16_385);
    pipe.send_raw(format!("{long}\n").as_bytes()).await;
    assert_eq!(pipe.recv().await, "ERROR|line too long");
    assert_eq!(
        pipe.cmd(&format!("PING|{sid}")).await,
        "PONG",
        "the connection stays usable"
    );

    // Earlier and later lines of the same write are unaffected.
    pipe.send_raw(format!("PING|{sid}\n{long}\nROUTE_LIST|{sid}\n").as_bytes())
        .await;
    assert_eq!(pipe.recv().await, "PONG");
    assert_eq!(pipe.recv().await, "ERROR|line too long");
    assert_eq!(pipe.recv().await, "ROUTE_LIST_OK|[]");
}

#[tokio::test]
async fn a_too_long_line_split_across_writes_gets_one_error_after_its_lf() {
    let (_app, mut pipe, sid) = fresh_session().await;
    pipe.send_raw(format!("PING|{sid}|").as_bytes()).await;
    let chunk = "x".repeat(8_000);
    for _ in 0..3 {
        pipe.send_raw(chunk.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        pipe.try_recv(Duration::from_millis(300)).await,
        None,
        "the line is answered once its LF arrives"
    );
    pipe.send_raw(b"tail|more\n").await;
    assert_eq!(pipe.recv().await, "ERROR|line too long");
    // Exactly one reply: the next one belongs to the next command.
    assert_eq!(pipe.cmd(&format!("PING|{sid}")).await, "PONG");
}

#[tokio::test]
async fn control_characters_and_invalid_utf8_are_refused() {
    let (_app, mut pipe, sid) = fresh_session().await;
    let cases: Vec<(&[u8], &str)> = vec![
        (&b"PING\x01\n"[..], "ERROR|invalid characters"),
        (&b"PING|\x00\n"[..], "ERROR|invalid characters"),
        (&b"PING\x7f\n"[..], "ERROR|invalid characters"),
        (&b"PING|\x1b[0m\n"[..], "ERROR|invalid characters"),
        (&b"PING|\xff\n"[..], "ERROR|invalid characters"),
        (&b"\xc3\x28\n"[..], "ERROR|invalid characters"),
        (&b"PING|\xe2\x82\n"[..], "ERROR|invalid characters"),
        // Only one CR right before the LF is removed.
        (&b"PING\r|x\n"[..], "ERROR|invalid characters"),
        (&b"PING\r\r\n"[..], "ERROR|invalid characters"),
        // Line checks come before the command word, ACK included.
        (&b"FOO\x01\n"[..], "ERROR|invalid characters"),
        (&b"ACK|\x01\n"[..], "ERROR|invalid characters"),
        // Valid non-ASCII UTF-8 is fine at line level.
        ("PING|\u{e9}\n".as_bytes(), "ERROR|session not found"),
    ];
    for (bytes, want) in cases {
        pipe.send_raw(bytes).await;
        assert_eq!(
            pipe.recv().await,
            want,
            "reply to {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(pipe.cmd(&format!("PING|{sid}")).await, "PONG");
}

#[tokio::test]
async fn crlf_and_surrounding_spaces_and_tabs_are_accepted() {
    let (_app, mut pipe, sid) = fresh_session().await;
    pipe.send_raw(format!("PING|{sid}\r\n").as_bytes()).await;
    assert_eq!(pipe.recv().await, "PONG");
    pipe.send_raw(format!("\tPING\t| {sid} \t\n").as_bytes())
        .await;
    assert_eq!(pipe.recv().await, "PONG");
    pipe.send_raw(format!("ROUTE_LIST|{sid}\r\n").as_bytes())
        .await;
    assert_eq!(pipe.recv().await, "ROUTE_LIST_OK|[]");
    pipe.send_raw(
        format!("ROUTE_ADD| {sid} | a.example.com | / | http://h.example.com | 1 \r\n").as_bytes(),
    )
    .await;
    assert_eq!(pipe.recv().await, "ROUTE_OK|r1");
}

#[tokio::test]
async fn blank_lines_and_ack_lines_get_no_reply() {
    let (_app, mut pipe, sid) = fresh_session().await;
    pipe.send_raw(b"\n   \n\t \t\n\r\n").await;
    pipe.send_raw(b"ACK\nACK|whatever\nACK|x|y|z\n ACK \t\n")
        .await;
    pipe.send_raw(format!("PING|{sid}\n").as_bytes()).await;
    assert_eq!(pipe.recv().await, "PONG", "the first reply is the PING's");
    assert_eq!(
        pipe.try_recv(Duration::from_millis(300)).await,
        None,
        "nothing else was owed"
    );

    // Also interleaved with commands.
    pipe.send_raw(format!("\nSESSION_INFO|{sid}\n\nACK|MAINT_OK\nPING|{sid}\n").as_bytes())
        .await;
    assert!(pipe.recv().await.starts_with("SESSION_OK|"));
    assert_eq!(pipe.recv().await, "PONG");
    assert_eq!(pipe.try_recv(Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn a_final_line_without_lf_is_answered_at_end_of_stream() {
    let (app, mut pipe, sid) = fresh_session().await;
    pipe.send_raw(format!("PING|{sid}\nSESSION_INFO|{sid}\nPING|{sid}").as_bytes())
        .await;
    pipe.shutdown_write().await;
    assert_eq!(pipe.recv().await, "PONG");
    let info = pipe.recv().await;
    assert!(info.starts_with("SESSION_OK|"), "{info}");
    assert_eq!(
        pipe.recv().await,
        "PONG",
        "the unterminated last line is processed"
    );
    assert!(
        pipe.closed_within(REPLY_WAIT).await,
        "then the registry closes"
    );
    // End of stream disconnects but does not end the session.
    assert_eq!(app.oneshot(&format!("PING|{sid}")).await, "PONG");
}

#[tokio::test]
async fn a_too_long_final_line_at_end_of_stream_is_still_answered() {
    let (_app, mut pipe, sid) = fresh_session().await;
    pipe.send_raw(padded(&format!("PING|{sid}|"), 20_000).as_bytes())
        .await;
    pipe.shutdown_write().await;
    assert_eq!(pipe.recv().await, "ERROR|line too long");
    assert!(pipe.closed_within(REPLY_WAIT).await);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let (_app, mut pipe, sid) = fresh_session().await;
    let lines = [
        format!("PING|{sid}"),
        "FOO".to_string(),
        format!("ROUTE_ADD|{sid}|a.example.com|/|http://h.example.com|0"),
        format!("ROUTE_ADD|{sid}|-a.com|/|http://h.example.com|0"),
        format!("ROUTE_ADD|{sid}|b.example.com|/|http://h.example.com|0"),
        "PING|nosuch".to_string(),
        format!("CONFIG_APPLY|{sid}"),
    ];
    pipe.send_raw(format!("{}\n", lines.join("\n")).as_bytes())
        .await;
    let mut replies = Vec::new();
    for _ in &lines {
        replies.push(pipe.recv().await);
    }
    assert_eq!(
        replies,
        [
            "PONG",
            "ERROR|unknown command: FOO",
            "ROUTE_OK|r1",
            "ERROR|invalid domain: -a.com",
            "ROUTE_OK|r2",
            "ERROR|session not found",
            "OK",
        ]
    );
    let list = payload(
        &pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    let statuses: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, [&Value::from("active"), &Value::from("active")]);
}
