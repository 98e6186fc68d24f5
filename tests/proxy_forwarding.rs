//! Black-box tests of proxy forwarding: matching, path joining, forwarded and response headers, built-in pages, apply/rollback, pools (PROTOCOL §3.3, §3.5, §3.9, §3.10).

mod common;

use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `line` and asserts its exact reply.
async fn expect_reply(pipe: &mut Pipe, line: &str, want: &str) {
    let reply = pipe.cmd(line).await;
    assert_eq!(reply, want, "reply to {line}");
}

/// REGISTERs and stages `health_check_interval 0` for `ALL`, so that the default health check
/// (§3.3) neither sends probes that the recording backends would count nor marks a member down.
async fn register_quiet(pipe: &mut Pipe, service: &str, instance: &str) -> String {
    let sid = pipe.register(service, instance).await;
    expect_reply(
        pipe,
        &format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"),
        "OPTIONS_OK",
    )
    .await;
    sid
}

/// A new session with one applied route. Keep the returned pipe alive: in connection mode a
/// session whose last connection closes has its routes disabled (§2.6).
async fn serve(
    app: &TestApp,
    service: &str,
    instance: &str,
    domains: &str,
    path: &str,
    backend: &str,
) -> (Pipe, String, String) {
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, service, instance).await;
    let rid = pipe.add_route(&sid, domains, path, backend).await;
    pipe.apply(&sid).await;
    (pipe, sid, rid)
}

/// Stages a route with an explicit priority and returns its id.
async fn add_route_prio(
    pipe: &mut Pipe,
    sid: &str,
    domains: &str,
    path: &str,
    backend: &str,
    priority: i32,
) -> String {
    let reply = pipe
        .cmd(&format!(
            "ROUTE_ADD|{sid}|{domains}|{path}|{backend}|{priority}"
        ))
        .await;
    reply
        .strip_prefix("ROUTE_OK|")
        .unwrap_or_else(|| panic!("ROUTE_ADD failed: {reply}"))
        .to_string()
}

/// `GET host path` through the proxy; asserts a proxied 200 and returns the name of the
/// recording backend that answered.
async fn backend_for(addr: SocketAddr, host: &str, path: &str) -> String {
    let reply = get(addr, host, path).await;
    assert_eq!(reply.status, 200, "GET {path} with Host {host}: {reply:?}");
    reply
        .header("x-backend")
        .unwrap_or_else(|| panic!("no x-backend header for {host}{path}: {reply:?}"))
        .to_string()
}

/// `GET host path` through the proxy with the given `Accept` header.
async fn get_accepting(addr: SocketAddr, host: &str, path: &str, accept: &str) -> Reply {
    http_request(addr, "GET", Some(host), path, &[("accept", accept)], "").await
}

/// Asserts a built-in page in its JSON form (§3.10 "Built-in pages").
fn assert_builtin_json(reply: &Reply, status: u16, code: &str, message: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    assert_eq!(
        reply.body,
        format!(r#"{{"code":"{code}","message":"{message}"}}"#),
        "{reply:?}"
    );
}

/// Asserts a built-in page in its HTML form (wording not normative).
fn assert_builtin_html(reply: &Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"), "{reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{reply:?}"
    );
}

/// The one request a backend saw with exactly this path and query.
fn seen_with_uri(backend: &Backend, uri: &str) -> SeenRequest {
    let seen = backend.seen();
    let mut matching = seen.iter().filter(|r| r.uri == uri);
    let found = matching
        .next()
        .unwrap_or_else(|| panic!("{} never saw {uri}; saw {seen:?}", backend.name))
        .clone();
    assert!(
        matching.next().is_none(),
        "{} saw {uri} more than once",
        backend.name
    );
    found
}

/// How many requests a backend saw whose path starts with `prefix`.
fn count_with_prefix(backend: &Backend, prefix: &str) -> usize {
    backend
        .seen()
        .iter()
        .filter(|r| r.uri.starts_with(prefix))
        .count()
}

/// `http://127.0.0.1:<port>` where nothing listens.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A backend that accepts connections and never answers.
struct SilentBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind silent backend");
        let addr = listener.local_addr().expect("silent backend addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        SilentBackend { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read from raw bytes.
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `request` verbatim on a new connection and reads until the server closes it.
async fn raw_request(addr: SocketAddr, request: &str) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    tokio::time::timeout(REPLY_WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let mut body = body.to_string();
    if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    RawReply {
        status,
        headers,
        body,
    }
}

// 1 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn forwards_with_forwarding_headers_and_without_hop_by_hop_headers() {
    let app = TestApp::start().await;
    let backend = Backend::start("shop").await;
    let (_pipe, _sid, _rid) = serve(
        &app,
        "shop",
        "shop-1",
        "shop.example.com",
        "/",
        &backend.url(),
    )
    .await;

    let reply = http_request(
        app.proxy_addr(),
        "GET",
        Some("shop.example.com"),
        "/cart?id=7",
        &[
            ("connection", "x-hop-custom"),
            ("x-hop-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-end-to-end", "kept"),
            ("x-real-ip", "9.9.9.9"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "shop /cart?id=7");
    assert_eq!(reply.header("x-backend"), Some("shop"));

    let seen = seen_with_uri(&backend, "/cart?id=7");
    let h = |name: &str| seen.headers.get(name).map(String::as_str);
    assert_eq!(seen.method, "GET");
    assert_eq!(h("host"), Some("shop.example.com"), "original Host kept");
    assert_eq!(h("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto"), Some("http"));
    assert_eq!(h("x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(
        h("x-real-ip"),
        Some("127.0.0.1"),
        "X-Real-IP is set, not appended"
    );
    assert_eq!(h("x-end-to-end"), Some("kept"), "end-to-end headers pass");
    for hop in ["keep-alive", "proxy-connection", "x-hop-custom"] {
        assert_eq!(h(hop), None, "hop-by-hop header {hop} forwarded: {seen:?}");
    }
    if let Some(connection) = h("connection") {
        assert!(
            !connection.to_ascii_lowercase().contains("x-hop-custom"),
            "client's Connection header forwarded: {connection}"
        );
    }

    // An incoming X-Forwarded-For is appended to.
    let reply = http_request(
        app.proxy_addr(),
        "GET",
        Some("shop.example.com"),
        "/second",
        &[("x-forwarded-for", "1.2.3.4")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen_with_uri(&backend, "/second");
    assert_eq!(
        seen.headers.get("x-forwarded-for").map(String::as_str),
        Some("1.2.3.4, 127.0.0.1")
    );

    let reply = http_request(
        app.proxy_addr(),
        "GET",
        Some("shop.example.com"),
        "/third",
        &[("x-forwarded-for", "1.2.3.4, 5.6.7.8")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen_with_uri(&backend, "/third");
    assert_eq!(
        seen.headers.get("x-forwarded-for").map(String::as_str),
        Some("1.2.3.4, 5.6.7.8, 127.0.0.1")
    );
}

// 2 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn staged_route_is_served_only_after_apply() {
    let app = TestApp::start().await;
    let backend = Backend::start("late").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "late", "late-1").await;
    pipe.add_route(&sid, "late.example.com", "/", &backend.url())
        .await;

    let reply = get_accepting(
        app.proxy_addr(),
        "late.example.com",
        "/x",
        "application/json",
    )
    .await;
    assert_builtin_json(&reply, 404, "not_found", "no route");

    // Validation publishes nothing either.
    expect_reply(&mut pipe, &format!("CONFIG_VALIDATE|{sid}"), "OK").await;
    let reply = get(app.proxy_addr(), "late.example.com", "/x").await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(count_with_prefix(&backend, "/x"), 0);

    pipe.apply(&sid).await;
    let reply = get(app.proxy_addr(), "late.example.com", "/x").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "late /x");
}

// 3 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn response_headers_layer_route_over_all_and_replace_backend_headers() {
    let app = TestApp::start().await;
    // The backend sends its own X-Frame-Options, and a 500 under /plain/err.
    let backend = Backend::start_with("web", |req| {
        let status = if req.uri.starts_with("/plain/err") {
            500
        } else {
            200
        };
        Some((
            status,
            vec![("x-frame-options".to_string(), "SAMEORIGIN".to_string())],
            format!("web {}", req.uri),
        ))
    })
    .await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "web", "web-1").await;
    let r1 = pipe
        .add_route(&sid, "hdr.example.com", "/", &backend.url())
        .await;
    pipe.add_route(&sid, "hdr.example.com", "/plain", &backend.url())
        .await;
    for (target, name, value) in [
        ("ALL", "X-Frame-Options", "DENY"),
        ("ALL", "X-Team", "platform"),
        (r1.as_str(), "X-Team", "storefront"),
        (r1.as_str(), "X-Backend", "proxy"),
    ] {
        expect_reply(
            &mut pipe,
            &format!("HEADERS_SET|{sid}|{target}|{name}|{value}"),
            "HEADERS_OK",
        )
        .await;
    }
    pipe.apply(&sid).await;

    let only = |reply: &Reply, name: &str| -> Vec<String> {
        reply
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .collect()
    };

    // r1: ALL headers, r1's X-Team over ALL's, r1's X-Backend over the backend's.
    let reply = get(app.proxy_addr(), "hdr.example.com", "/page").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "web /page");
    assert_eq!(only(&reply, "x-frame-options"), ["DENY"]);
    assert_eq!(only(&reply, "x-team"), ["storefront"]);
    assert_eq!(only(&reply, "x-backend"), ["proxy"]);

    // The other route: ALL headers only; the backend's own X-Backend passes.
    let reply = get(app.proxy_addr(), "hdr.example.com", "/plain/x").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(only(&reply, "x-frame-options"), ["DENY"]);
    assert_eq!(only(&reply, "x-team"), ["platform"]);
    assert_eq!(only(&reply, "x-backend"), ["web"]);

    // Every response of the route, whatever its status.
    let reply = get(app.proxy_addr(), "hdr.example.com", "/plain/err").await;
    assert_eq!(reply.status, 500, "{reply:?}");
    assert_eq!(reply.body, "web /plain/err");
    assert_eq!(only(&reply, "x-frame-options"), ["DENY"]);
    assert_eq!(only(&reply, "x-team"), ["platform"]);
}

// 4 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn priority_first_then_longest_segment_prefix() {
    let app = TestApp::start().await;
    let root = Backend::start("root").await;
    let api = Backend::start("api").await;
    let v2 = Backend::start("v2").await;
    let root10 = Backend::start("root10").await;
    let api0 = Backend::start("api0").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "lp", "lp-1").await;
    pipe.add_route(&sid, "lp.example.com", "/", &root.url())
        .await;
    pipe.add_route(&sid, "lp.example.com", "/api", &api.url())
        .await;
    pipe.add_route(&sid, "lp.example.com", "/api/v2", &v2.url())
        .await;
    add_route_prio(&mut pipe, &sid, "prio.example.com", "/", &root10.url(), 10).await;
    add_route_prio(&mut pipe, &sid, "prio.example.com", "/api", &api0.url(), 0).await;
    pipe.apply(&sid).await;

    let addr = app.proxy_addr();
    for (host, path, want) in [
        ("lp.example.com", "/api/x", "api"),
        ("lp.example.com", "/api", "api"),
        ("lp.example.com", "/api/", "api"),
        ("lp.example.com", "/api?q=1", "api"),
        ("lp.example.com", "/apix", "root"),
        ("lp.example.com", "/API/x", "root"),
        ("lp.example.com", "/", "root"),
        ("lp.example.com", "/other", "root"),
        ("lp.example.com", "/api/v2", "v2"),
        ("lp.example.com", "/api/v2/x", "v2"),
        ("lp.example.com", "/api/v2x", "api"),
        ("prio.example.com", "/api/x", "root10"),
        ("prio.example.com", "/api", "root10"),
        ("prio.example.com", "/other", "root10"),
    ] {
        assert_eq!(backend_for(addr, host, path).await, want, "{host}{path}");
    }
    assert_eq!(api0.count(), 0, "the lower-priority pool got traffic");
}

// 5 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn wildcard_matches_one_label_and_exact_domain_wins() {
    let app = TestApp::start().await;
    let wild = Backend::start("wild").await;
    let exact = Backend::start("exact").await;
    let partial = Backend::start("partial").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "wc", "wc-1").await;
    pipe.add_route(&sid, "*.example.com", "/", &wild.url())
        .await;
    pipe.add_route(&sid, "shop.example.com", "/", &exact.url())
        .await;
    pipe.add_route(&sid, "api.example.com", "/api", &partial.url())
        .await;
    pipe.apply(&sid).await;

    let addr = app.proxy_addr();
    for (host, path, want) in [
        ("a.example.com", "/", "wild"),
        ("a.example.com:8080", "/x", "wild"),
        ("A.EXAMPLE.com", "/", "wild"),
        ("a.example.com.", "/", "wild"),
        ("shop.example.com", "/", "exact"),
        ("Shop.Example.com.:8080", "/x", "exact"),
        ("SHOP.EXAMPLE.COM", "/", "exact"),
        ("api.example.com", "/api/x", "partial"),
        // The exact domain's pairs do not match this path, so the wildcard's are tried.
        ("api.example.com", "/other", "wild"),
    ] {
        assert_eq!(backend_for(addr, host, path).await, want, "{host}{path}");
    }
    for host in [
        "example.com",
        "a.b.example.com",
        "A.B.Example.com.:8080",
        "other.org",
    ] {
        let reply = get(addr, host, "/").await;
        assert_eq!(reply.status, 404, "{host}: {reply:?}");
    }
}

// 6 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn target_url_joins_backend_path_request_path_and_query_byte_for_byte() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let url = backend.url();
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "join", "join-1").await;
    let strip = pipe
        .add_route(&sid, "strip.example.com", "/api", &format!("{url}/v1/"))
        .await;
    pipe.add_route(&sid, "nostrip.example.com", "/api", &format!("{url}/v1/"))
        .await;
    pipe.add_route(&sid, "plain.example.com", "/api", &url)
        .await;
    pipe.add_route(&sid, "slash.example.com", "/", &format!("{url}/"))
        .await;
    let rootstrip = pipe
        .add_route(&sid, "rootstrip.example.com", "/", &format!("{url}/v1"))
        .await;
    for rid in [&strip, &rootstrip] {
        expect_reply(
            &mut pipe,
            &format!("OPTIONS_SET|{sid}|{rid}|strip_prefix|true"),
            "OPTIONS_OK",
        )
        .await;
    }
    pipe.apply(&sid).await;

    let addr = app.proxy_addr();
    for (host, path, want) in [
        ("strip.example.com", "/api?x=1", "/v1/?x=1"),
        ("strip.example.com", "/api/u", "/v1/u"),
        ("strip.example.com", "/api/", "/v1/"),
        ("strip.example.com", "/api/u/v?w=%20&z", "/v1/u/v?w=%20&z"),
        ("nostrip.example.com", "/api/u", "/v1/api/u"),
        ("nostrip.example.com", "/api?x=1", "/v1/api?x=1"),
        ("plain.example.com", "/api/u?q=%2F", "/api/u?q=%2F"),
        ("plain.example.com", "/api/a%2Fb", "/api/a%2Fb"),
        ("plain.example.com", "/api/x/../y", "/api/x/../y"),
        ("plain.example.com", "/api/./z", "/api/./z"),
        (
            "plain.example.com",
            "/api/%2e%2e/z?a=%41",
            "/api/%2e%2e/z?a=%41",
        ),
        ("slash.example.com", "/x", "/x"),
        ("slash.example.com", "/", "/"),
        // strip_prefix never strips the path `/`.
        ("rootstrip.example.com", "/x?y=1", "/v1/x?y=1"),
    ] {
        let reply = get(addr, host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}: {reply:?}");
        assert_eq!(reply.body, format!("b {want}"), "{host}{path}");
    }
}

// 7 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn preserve_host_off_sends_the_backend_host() {
    let app = TestApp::start().await;
    let backend = Backend::start("ph").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "ph", "ph-1").await;
    let off = pipe
        .add_route(&sid, "ph.example.com", "/", &backend.url())
        .await;
    pipe.add_route(&sid, "kept.example.com", "/", &backend.url())
        .await;
    expect_reply(
        &mut pipe,
        &format!("OPTIONS_SET|{sid}|{off}|preserve_host|false"),
        "OPTIONS_OK",
    )
    .await;
    pipe.apply(&sid).await;

    let reply = get(app.proxy_addr(), "ph.example.com", "/off").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen_with_uri(&backend, "/off");
    assert_eq!(
        seen.headers.get("host").map(String::as_str),
        Some(backend.addr.to_string().as_str())
    );
    assert_eq!(
        seen.headers.get("x-forwarded-host").map(String::as_str),
        Some("ph.example.com")
    );

    let reply = get(app.proxy_addr(), "kept.example.com", "/kept").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen_with_uri(&backend, "/kept");
    assert_eq!(
        seen.headers.get("host").map(String::as_str),
        Some("kept.example.com")
    );
}

// 8 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn staged_changes_and_rollback_leave_traffic_untouched() {
    let app = TestApp::start().await;
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let (mut pipe, sid, rid) = serve(&app, "rb", "rb-1", "rb.example.com", "/", &first.url()).await;
    let addr = app.proxy_addr();
    assert_eq!(backend_for(addr, "rb.example.com", "/a").await, "first");

    expect_reply(
        &mut pipe,
        &format!("ROUTE_UPDATE|{sid}|{rid}|backend_url|{}", second.url()),
        "ROUTE_OK",
    )
    .await;
    assert_eq!(backend_for(addr, "rb.example.com", "/b").await, "first");

    expect_reply(&mut pipe, &format!("CONFIG_ROLLBACK|{sid}"), "OK").await;
    assert_eq!(backend_for(addr, "rb.example.com", "/c").await, "first");

    // Nothing pending after the rollback: the apply changes nothing.
    pipe.apply(&sid).await;
    assert_eq!(backend_for(addr, "rb.example.com", "/d").await, "first");
    assert_eq!(second.count(), 0);
}

#[tokio::test]
async fn failed_apply_leaves_the_previous_table_serving() {
    let app = TestApp::start().await;
    let a = Backend::start("a").await;
    let c = Backend::start("c").await;
    let d = Backend::start("d").await;
    let addr = app.proxy_addr();

    let (mut alpha, alpha_sid, r1) =
        serve(&app, "alpha", "alpha-1", "keep.example.com", "/", &a.url()).await;
    // alpha stages a change of its live route and a new pair that is still unclaimed …
    expect_reply(
        &mut alpha,
        &format!("ROUTE_UPDATE|{alpha_sid}|{r1}|backend_url|{}", c.url()),
        "ROUTE_OK",
    )
    .await;
    alpha
        .add_route(&alpha_sid, "race.example.com", "/", &c.url())
        .await;
    // … but another service applies that pair first.
    let (_beta, _beta_sid, _) =
        serve(&app, "beta", "beta-1", "race.example.com", "/", &d.url()).await;

    let reply = alpha.cmd(&format!("CONFIG_APPLY|{alpha_sid}")).await;
    assert!(
        reply.starts_with("ERROR|") && reply.contains("claimed by another service"),
        "apply should fail on the claimed pair: {reply}"
    );

    // Nothing of the failed apply reached the proxy.
    assert_eq!(backend_for(addr, "keep.example.com", "/k").await, "a");
    assert_eq!(backend_for(addr, "race.example.com", "/r").await, "d");
    assert_eq!(c.count(), 0);
}

// 9 ─────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn apply_moves_a_route_to_its_new_path_and_domain() {
    let app = TestApp::start().await;
    let backend = Backend::start("mv").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "mv", "mv-1").await;
    let by_path = pipe
        .add_route(&sid, "move.example.com", "/old", &backend.url())
        .await;
    let by_domain = pipe
        .add_route(&sid, "olddomain.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    let addr = app.proxy_addr();
    let status = move |host: &'static str, path: &'static str| async move {
        get(addr, host, path).await.status
    };

    assert_eq!(status("move.example.com", "/old").await, 200);
    assert_eq!(status("move.example.com", "/new").await, 404);
    assert_eq!(status("olddomain.example.com", "/").await, 200);
    assert_eq!(status("newdomain.example.com", "/").await, 404);

    expect_reply(
        &mut pipe,
        &format!("ROUTE_UPDATE|{sid}|{by_path}|path|/new"),
        "ROUTE_OK",
    )
    .await;
    expect_reply(
        &mut pipe,
        &format!("ROUTE_UPDATE|{sid}|{by_domain}|domains|newdomain.example.com"),
        "ROUTE_OK",
    )
    .await;
    // Staged only: the old claims still serve.
    assert_eq!(status("move.example.com", "/old").await, 200);
    assert_eq!(status("move.example.com", "/new").await, 404);
    assert_eq!(status("olddomain.example.com", "/").await, 200);
    assert_eq!(status("newdomain.example.com", "/").await, 404);

    pipe.apply(&sid).await;
    assert_eq!(status("move.example.com", "/old").await, 404);
    assert_eq!(status("move.example.com", "/new").await, 200);
    assert_eq!(status("move.example.com", "/new/x").await, 200);
    assert_eq!(status("olddomain.example.com", "/").await, 404);
    assert_eq!(status("newdomain.example.com", "/").await, 200);
}

// 10 ────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn client_shutdown_removes_routes_from_the_proxy() {
    let app = TestApp::start().await;
    let site = Backend::start("site").await;
    let api = Backend::start("api").await;
    let addr = app.proxy_addr();
    let (mut web, web_sid, _) =
        serve(&app, "web", "web-1", "fall.example.com", "/", &site.url()).await;
    let (mut apisvc, api_sid, _) =
        serve(&app, "api", "api-1", "fall.example.com", "/api", &api.url()).await;
    assert_eq!(backend_for(addr, "fall.example.com", "/api/x").await, "api");

    expect_reply(
        &mut apisvc,
        &format!("CLIENT_SHUTDOWN|{api_sid}"),
        "SHUTDOWN_OK",
    )
    .await;
    assert!(
        apisvc.closed_within(REPLY_WAIT).await,
        "connection closed after SHUTDOWN_OK"
    );
    // The emptied pool disappears; the request falls to what else matches.
    assert_eq!(
        backend_for(addr, "fall.example.com", "/api/x").await,
        "site"
    );

    expect_reply(
        &mut web,
        &format!("CLIENT_SHUTDOWN|{web_sid}"),
        "SHUTDOWN_OK",
    )
    .await;
    let reply = get_accepting(addr, "fall.example.com", "/", "application/json").await;
    assert_builtin_json(&reply, 404, "not_found", "no route");
}

// 11 ────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn no_route_gives_the_builtin_404_in_the_form_accept_prefers() {
    let app = TestApp::start().await;
    let backend = Backend::start("nr").await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "nr", "nr-1").await;
    pipe.add_route(&sid, "known.example.com", "/api", &backend.url())
        .await;
    expect_reply(
        &mut pipe,
        &format!("HEADERS_SET|{sid}|ALL|X-Frame-Options|DENY"),
        "HEADERS_OK",
    )
    .await;
    pipe.apply(&sid).await;
    let addr = app.proxy_addr();

    for host in ["unknown.example.com", "known.example.com"] {
        for (accept, json) in [
            (Some("application/json"), true),
            (Some("text/html;q=0.5, application/json"), true),
            (Some("application/json, */*;q=0.1"), true),
            (Some("text/html"), false),
            (Some("*/*"), false),
            (Some("text/html, application/json"), false),
            (Some("text/html;q=0.9, application/json;q=0.5"), false),
            (None, false),
        ] {
            let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
            let reply = http_request(addr, "GET", Some(host), "/other", &headers, "").await;
            if json {
                assert_builtin_json(&reply, 404, "not_found", "no route");
            } else {
                assert_builtin_html(&reply, 404);
            }
            // A 404 given before a pool is chosen carries no route headers.
            assert_eq!(reply.header("x-frame-options"), None, "{host} {accept:?}");
        }
    }
    assert_eq!(backend.count(), 0);
}

#[tokio::test]
async fn missing_or_unparsable_host_gives_400() {
    let app = TestApp::start().await;
    let addr = app.proxy_addr();

    // HTTP/1.0 without Host, as raw bytes.
    let raw = raw_request(
        addr,
        "GET / HTTP/1.0\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.status, 400, "body {:?}", raw.body);
    assert_eq!(raw.header("cache-control"), Some("no-store"));
    assert_eq!(raw.header("content-type"), Some("application/json"));
    assert_eq!(
        raw.body,
        r#"{"code":"invalid_argument","message":"invalid host"}"#
    );

    // HTTP/1.1 without Host (the harness sends none for `None`).
    let reply = http_request(
        addr,
        "GET",
        None,
        "/",
        &[("accept", "application/json")],
        "",
    )
    .await;
    assert_builtin_json(&reply, 400, "invalid_argument", "invalid host");

    // A Host that is no authority at all.
    let reply = get_accepting(addr, "exa mple.com", "/", "application/json").await;
    assert_builtin_json(&reply, 400, "invalid_argument", "invalid host");

    let reply = get_accepting(addr, "exa mple.com", "/", "text/html").await;
    assert_builtin_html(&reply, 400);
}

#[tokio::test]
async fn unreachable_backend_gives_502() {
    let app = TestApp::start().await;
    let (_pipe, _sid, _rid) = serve(
        &app,
        "gone",
        "gone-1",
        "gone.example.com",
        "/",
        &closed_port_url(),
    )
    .await;

    let reply = get_accepting(
        app.proxy_addr(),
        "gone.example.com",
        "/x",
        "application/json",
    )
    .await;
    assert_builtin_json(&reply, 502, "unavailable", "bad gateway");

    let reply = get_accepting(app.proxy_addr(), "gone.example.com", "/x", "text/html").await;
    assert_builtin_html(&reply, 502);
}

#[tokio::test]
async fn backend_silent_past_the_route_timeout_gives_504() {
    let app = TestApp::start().await;
    let silent = SilentBackend::start().await;
    let mut pipe = app.pipe().await;
    let sid = register_quiet(&mut pipe, "slow", "slow-1").await;
    let rid = pipe
        .add_route(&sid, "slow.example.com", "/", &silent.url())
        .await;
    expect_reply(
        &mut pipe,
        &format!("OPTIONS_SET|{sid}|{rid}|timeout|200ms"),
        "OPTIONS_OK",
    )
    .await;
    pipe.apply(&sid).await;

    let started = Instant::now();
    let reply = get_accepting(
        app.proxy_addr(),
        "slow.example.com",
        "/x",
        "application/json",
    )
    .await;
    let elapsed = started.elapsed();
    assert_builtin_json(&reply, 504, "deadline_exceeded", "gateway timeout");
    assert!(
        elapsed >= Duration::from_millis(200),
        "504 before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "route timeout not honoured: {elapsed:?}"
    );
}

// 12 ────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn same_service_instances_share_a_pair_as_a_pool() {
    let app = TestApp::start().await;
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let addr = app.proxy_addr();
    let (mut first, first_sid, _) =
        serve(&app, "shop", "shop-1", "pool.example.com", "/", &one.url()).await;
    let (_second, _second_sid, _) =
        serve(&app, "shop", "shop-2", "pool.example.com", "/", &two.url()).await;

    for i in 0..40 {
        let name = backend_for(addr, "pool.example.com", &format!("/pool/{i}")).await;
        assert!(name == "one" || name == "two", "unexpected backend {name}");
    }
    let (n1, n2) = (
        count_with_prefix(&one, "/pool/"),
        count_with_prefix(&two, "/pool/"),
    );
    assert_eq!(n1 + n2, 40);
    assert!(n1 > 0 && n2 > 0, "pool not balanced: one={n1} two={n2}");

    expect_reply(
        &mut first,
        &format!("CLIENT_SHUTDOWN|{first_sid}"),
        "SHUTDOWN_OK",
    )
    .await;
    for i in 0..20 {
        let path = format!("/after/{i}");
        assert_eq!(
            backend_for(addr, "pool.example.com", &path).await,
            "two",
            "{path}"
        );
    }
    assert_eq!(count_with_prefix(&one, "/after/"), 0);
}

// 13 ────────────────────────────────────────────────────────────────────────────────────────

#[tokio::test]
async fn request_method_and_body_are_forwarded_intact() {
    let app = TestApp::start().await;
    let backend = Backend::start("sink").await;
    let (_pipe, _sid, _rid) = serve(
        &app,
        "sink",
        "sink-1",
        "sink.example.com",
        "/",
        &backend.url(),
    )
    .await;
    let addr = app.proxy_addr();

    let small = "hello | body\nwith ünïcode and \r\n bytes";
    let reply = http_request(
        addr,
        "POST",
        Some("sink.example.com"),
        "/submit?x=1",
        &[("content-type", "text/plain; charset=utf-8")],
        small,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen_with_uri(&backend, "/submit?x=1");
    assert_eq!(seen.method, "POST");
    assert_eq!(&seen.body[..], small.as_bytes());
    assert_eq!(
        seen.headers.get("content-type").map(String::as_str),
        Some("text/plain; charset=utf-8")
    );

    let large: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply = http_request(addr, "PUT", Some("sink.example.com"), "/large", &[], &large).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = seen_with_uri(&backend, "/large");
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body.len(), large.len());
    assert!(&seen.body[..] == large.as_bytes(), "large body altered");
}
