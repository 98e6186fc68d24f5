//! A scripted client that behaves like the production client library: persistent connection, replay on REGISTER, keepalive, RECONNECT on a new connection, re-registration after a registry restart, maintenance with its 30 s / 10 s deadlines (PROTOCOL §2.6, §2.9, §4.2, §5.5).

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The scripted production client
// ---------------------------------------------------------------------------------------------

/// What the production client remembers so that it can replay after `REREGISTER`.
struct ProdClient {
    pipe: Pipe,
    sid: String,
    service: String,
    instance: String,
    /// (domains, path, backend)
    routes: Vec<(String, String, String)>,
    /// `target|path|interval|timeout`
    health: Vec<String>,
    /// `target|key|value`
    options: Vec<String>,
}

impl ProdClient {
    /// Dials `addr`, registers and replays its configuration.
    async fn start(addr: SocketAddr, service: &str, instance: &str) -> Self {
        let mut client = ProdClient {
            pipe: Pipe::connect(addr).await,
            sid: String::new(),
            service: service.to_string(),
            instance: instance.to_string(),
            routes: Vec::new(),
            health: Vec::new(),
            options: vec!["ALL|health_check_interval|0".into()],
        };
        client.register_and_replay().await;
        client
    }

    /// One command, exactly one line read as its reply (§5.5).
    async fn call(&mut self, line: &str) -> String {
        self.pipe.cmd(line).await
    }

    async fn call_expect(&mut self, line: &str, want_prefix: &str) -> String {
        let reply = self.call(line).await;
        assert!(reply.starts_with(want_prefix), "{line} → {reply}");
        reply
    }

    /// `REGISTER` on the current connection, then the replay of routes, health checks and
    /// options, then `CONFIG_APPLY` (§4.2).
    async fn register_and_replay(&mut self) {
        let reply = self
            .call(&format!(
                r#"REGISTER|{}|{}|3001|{{"version":"1.4.0","region":"eu"}}"#,
                self.service, self.instance
            ))
            .await;
        self.sid = reply
            .strip_prefix("ACK|")
            .unwrap_or_else(|| panic!("REGISTER → {reply}"))
            .to_string();
        let sid = self.sid.clone();
        for (domains, path, backend) in self.routes.clone() {
            self.call_expect(
                &format!("ROUTE_ADD|{sid}|{domains}|{path}|{backend}|0"),
                "ROUTE_OK|r",
            )
            .await;
        }
        for health in self.health.clone() {
            assert_eq!(
                self.call(&format!("HEALTH_SET|{sid}|{health}")).await,
                "HEALTH_OK"
            );
        }
        for option in self.options.clone() {
            assert_eq!(
                self.call(&format!("OPTIONS_SET|{sid}|{option}")).await,
                "OPTIONS_OK"
            );
        }
        assert_eq!(self.call(&format!("CONFIG_APPLY|{sid}")).await, "OK");
    }

    /// Adds a route to what the client remembers and stages + applies it.
    async fn add_route(&mut self, domains: &str, path: &str, backend: &str) -> String {
        self.routes
            .push((domains.into(), path.into(), backend.into()));
        let sid = self.sid.clone();
        let reply = self
            .call_expect(
                &format!("ROUTE_ADD|{sid}|{domains}|{path}|{backend}|0"),
                "ROUTE_OK|",
            )
            .await;
        reply["ROUTE_OK|".len()..].to_string()
    }

    async fn set_health(&mut self, rest: &str) {
        self.health.push(rest.into());
        let line = format!("HEALTH_SET|{}|{rest}", self.sid);
        assert_eq!(self.call(&line).await, "HEALTH_OK");
    }

    async fn set_option(&mut self, rest: &str) {
        self.options.push(rest.into());
        let line = format!("OPTIONS_SET|{}|{rest}", self.sid);
        assert_eq!(self.call(&line).await, "OPTIONS_OK");
    }

    async fn apply(&mut self) {
        let line = format!("CONFIG_APPLY|{}", self.sid);
        assert_eq!(self.call(&line).await, "OK");
    }

    async fn keepalive(&mut self) -> String {
        let line = format!("PING|{}", self.sid);
        self.call(&line).await
    }

    /// After a network error: dial a NEW connection and send `RECONNECT|sid` as its first line;
    /// on `REREGISTER`, register again on that connection and replay. Returns the RECONNECT reply.
    async fn resume(&mut self, addr: SocketAddr) -> String {
        self.pipe = Pipe::connect(addr).await;
        let line = format!("RECONNECT|{}", self.sid);
        let reply = self.call(&line).await;
        match reply.as_str() {
            "OK" => {}
            "REREGISTER" => self.register_and_replay().await,
            other => panic!("RECONNECT → {other}"),
        }
        reply
    }

    /// `MAINT_ENTER`/`MAINT_EXIT` the way the production client does it: read the `ACK`, then
    /// read lines until one starts with `MAINT_OK` or `ERROR`, ignoring anything else, all within
    /// `deadline` (30 s after MAINT_ENTER, 10 s after the ACK of MAINT_EXIT).
    async fn maintenance(&mut self, line: &str, deadline: Duration) -> String {
        self.pipe.send(line).await;
        let ack = self.pipe.recv().await;
        assert_eq!(ack, "ACK", "{line}");
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let next = self.pipe.try_recv(left).await.unwrap_or_else(|| {
                panic!("{line}: no completion within the client's {deadline:?}")
            });
            if next.starts_with("MAINT_OK") || next.starts_with("ERROR") {
                return next;
            }
        }
    }
}

async fn backend_name(addr: SocketAddr, host: &str, path: &str) -> Reply {
    get(addr, host, path).await
}

/// Waits until a GET through the proxy answers `status`.
async fn wait_status(addr: SocketAddr, host: &'static str, path: &'static str, status: u16) {
    wait_until(move || async move { get(addr, host, path).await.status == status }).await;
}

// ---------------------------------------------------------------------------------------------
// The whole life of a production client
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn production_client_lifecycle_reconnect_restart_and_maintenance() {
    let app = TestApp::start().await;
    let backend = Backend::start("shop").await;
    let page = Backend::start("page").await;
    let proxy = app.proxy_addr();

    // Start-up on one persistent connection.
    let mut client = ProdClient::start(app.pipe_addr(), "shop", "shop-1").await;
    let rid = client
        .add_route("shop.example.com,www.shop.example.com", "/", &backend.url())
        .await;
    client.set_health("ALL|/healthz|10s|2s").await;
    client.set_option("ALL|timeout|30").await;
    client.set_option("ALL|legacy_retry_flag|1").await;
    client.apply().await;
    for _ in 0..3 {
        assert_eq!(client.keepalive().await, "PONG");
    }
    let reply = backend_name(proxy, "www.shop.example.com", "/hello").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "shop /hello"));

    // ROUTE_LIST: the client reads `id`.
    let sid = client.sid.clone();
    let list = payload(
        &client.call(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    assert_eq!(list[0]["id"], rid.as_str());
    assert_eq!(list[0]["route_id"], rid.as_str());
    let info = payload(
        &client.call(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(
        info["ignored_options"],
        serde_json::json!(["ALL:legacy_retry_flag"])
    );
    assert_eq!(info["maintenance_port"], 3001);

    // Network error: the connection is gone; traffic stops until the client comes back.
    drop(std::mem::replace(&mut client.pipe, app.pipe().await));
    wait_status(proxy, "shop.example.com", "/wait", 503).await;
    assert_eq!(client.resume(app.pipe_addr()).await, "OK");
    assert_eq!(client.sid, sid, "RECONNECT keeps the session");
    let reply = backend_name(proxy, "shop.example.com", "/resumed").await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "shop /resumed"));
    let list = payload(
        &client.call(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    assert_eq!(
        list.as_array().map(|a| a.len()),
        Some(1),
        "no replay after OK: {list}"
    );
    assert_eq!(list[0]["id"], rid.as_str());

    // Maintenance with the client's deadlines.
    let done = client
        .maintenance(
            &format!("MAINT_ENTER|{sid}|ALL|{}", page.url()),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(done, "MAINT_OK|ALL");
    client.pipe.send("ACK").await;
    assert_eq!(
        client.keepalive().await,
        "PONG",
        "the ACK line got no reply"
    );
    let reply = backend_name(proxy, "shop.example.com", "/in-maint").await;
    assert_eq!(reply.header("x-backend"), Some("page"));
    assert_eq!(reply.header("x-maintenance-mode"), Some("true"));
    let done = client
        .maintenance(&format!("MAINT_EXIT|{sid}|ALL"), Duration::from_secs(10))
        .await;
    assert_eq!(done, "MAINT_OK|ALL");
    client.pipe.send("ACK").await;
    assert_eq!(client.keepalive().await, "PONG");
    assert_eq!(
        backend_name(proxy, "shop.example.com", "/out")
            .await
            .header("x-backend"),
        Some("shop")
    );

    // Other calls the production client makes, each read as exactly one line.
    let reply = client.call(&format!("STATS_GET|{sid}")).await;
    assert!(payload(&reply, "STATS_OK").is_array(), "{reply}");
    let reply = client.call(&format!("DRAIN_START|{sid}|30")).await;
    assert!(reply.starts_with("DRAIN_OK|20"), "{reply}");
    assert_eq!(
        client.call(&format!("DRAIN_CANCEL|{sid}")).await,
        "DRAIN_OK"
    );

    // Registry restart: SHUTDOWN arrives in place of the next reply.
    app.handle.trigger_shutdown();
    assert_eq!(client.keepalive().await, "SHUTDOWN");
    app.handle.wait().await;

    let app2 = TestApp::start().await;
    let proxy2 = app2.proxy_addr();
    assert_eq!(client.resume(app2.pipe_addr()).await, "REREGISTER");
    assert_ne!(client.sid, sid, "a new session after re-registering");
    let new_sid = client.sid.clone();
    let reply = backend_name(proxy2, "shop.example.com", "/restarted").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "shop /restarted")
    );
    let list = payload(
        &client.call(&format!("ROUTE_LIST|{new_sid}")).await,
        "ROUTE_LIST_OK",
    );
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    assert_eq!(list[0]["status"], "active");
    let info = payload(
        &client.call(&format!("SESSION_INFO|{new_sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(
        info["ignored_options"],
        serde_json::json!(["ALL:legacy_retry_flag"])
    );
    assert_eq!(
        info["metadata"],
        serde_json::json!({"version":"1.4.0","region":"eu"})
    );
    assert_eq!(info["connections"], 1);
    assert_eq!(client.keepalive().await, "PONG");
    let stale = format!("PING|{sid}");
    assert_eq!(client.call(&stale).await, "ERROR|session not found");

    // Maintenance once more on the new registry.
    let done = client
        .maintenance(
            &format!("MAINT_ENTER|{new_sid}|ALL|"),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(done, "MAINT_OK|ALL");
    assert_eq!(get(proxy2, "shop.example.com", "/").await.status, 503);
    let done = client
        .maintenance(
            &format!("MAINT_EXIT|{new_sid}|ALL"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(done, "MAINT_OK|ALL");
    assert_eq!(get(proxy2, "shop.example.com", "/").await.status, 200);

    // Orderly stop.
    assert_eq!(
        client.call(&format!("CLIENT_SHUTDOWN|{new_sid}")).await,
        "SHUTDOWN_OK"
    );
    assert!(client.pipe.closed_within(REPLY_WAIT).await);
    assert_eq!(get(proxy2, "shop.example.com", "/").await.status, 404);
}

#[tokio::test]
async fn after_the_grace_period_reconnect_answers_reregister_and_the_replay_restores_traffic() {
    let app = TestApp::start_with(|c| c.session_grace = Duration::from_millis(300)).await;
    let backend = Backend::start("api").await;
    let proxy = app.proxy_addr();
    let mut client = ProdClient::start(app.pipe_addr(), "api", "api-1").await;
    client
        .add_route("api.example.com", "/v1", &backend.url())
        .await;
    client.set_option("ALL|strip_prefix|true").await;
    client.apply().await;
    assert_eq!(
        get(proxy, "api.example.com", "/v1/users").await.body,
        "api /users"
    );
    let old = client.sid.clone();

    drop(std::mem::replace(&mut client.pipe, app.pipe().await));
    wait_status(proxy, "api.example.com", "/v1/wait", 404).await;
    assert_eq!(client.resume(app.pipe_addr()).await, "REREGISTER");
    assert_ne!(client.sid, old);
    assert_eq!(
        get(proxy, "api.example.com", "/v1/users").await.body,
        "api /users",
        "options replayed"
    );
}

#[tokio::test]
async fn a_fast_container_restart_replaces_the_old_session_cleanly() {
    let app = TestApp::start().await;
    let old_backend = Backend::start("old").await;
    let new_backend = Backend::start("new").await;
    let proxy = app.proxy_addr();
    let mut old = ProdClient::start(app.pipe_addr(), "shop", "shop-1").await;
    old.add_route("shop.example.com", "/", &old_backend.url())
        .await;
    old.add_route("shop.example.com", "/legacy", &old_backend.url())
        .await;
    old.apply().await;
    assert_eq!(
        get(proxy, "shop.example.com", "/legacy")
            .await
            .header("x-backend"),
        Some("old")
    );

    // The new process registers the same instance name while the old connection is still open.
    let mut new = ProdClient::start(app.pipe_addr(), "shop", "shop-1").await;
    new.add_route("shop.example.com", "/", &new_backend.url())
        .await;
    new.apply().await;
    assert_eq!(
        get(proxy, "shop.example.com", "/x")
            .await
            .header("x-backend"),
        Some("new")
    );
    // /legacy fell to the / route of the new session; the old routes are gone.
    assert_eq!(
        get(proxy, "shop.example.com", "/legacy")
            .await
            .header("x-backend"),
        Some("new")
    );
    for _ in 0..10 {
        assert_eq!(
            get(proxy, "shop.example.com", "/y")
                .await
                .header("x-backend"),
            Some("new")
        );
    }

    // The old client learns it on its next keepalive; its connection is detached, not closed.
    assert_eq!(old.keepalive().await, "ERROR|session not found");
    assert_eq!(old.resume(app.pipe_addr()).await, "REREGISTER");
    // …and its replay (same instance name) now replaces the newer one in turn.
    assert_eq!(
        get(proxy, "shop.example.com", "/legacy")
            .await
            .header("x-backend"),
        Some("old")
    );
    let stale = format!("PING|{}", new.sid);
    assert_eq!(new.call(&stale).await, "ERROR|session not found");
}

#[tokio::test]
async fn a_one_connection_per_command_client_in_lease_mode_joins_the_pool() {
    let app = TestApp::start().await;
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let proxy = app.proxy_addr();
    let mut first = ProdClient::start(app.pipe_addr(), "shop", "shop-1").await;
    first.add_route("shop.example.com", "/", &one.url()).await;
    first.apply().await;

    let reply = app
        .oneshot(r#"REGISTER|shop|shop-2|0|{"liveness":"lease"}"#)
        .await;
    let sid = reply
        .strip_prefix("ACK|")
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    assert_eq!(
        app.oneshot(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
            .await,
        "OPTIONS_OK"
    );
    let reply = app
        .oneshot(&format!(
            "ROUTE_ADD|{sid}|shop.example.com|/|{}|0",
            two.url()
        ))
        .await;
    assert!(reply.starts_with("ROUTE_OK|r"), "{reply}");
    assert_eq!(app.oneshot(&format!("CONFIG_APPLY|{sid}")).await, "OK");
    assert_eq!(app.oneshot(&format!("PING|{sid}")).await, "PONG");
    assert_eq!(app.oneshot(&format!("RECONNECT|{sid}")).await, "OK");

    let mut names = std::collections::HashMap::new();
    for i in 0..40 {
        let reply = get(proxy, "shop.example.com", &format!("/p/{i}")).await;
        assert_eq!(reply.status, 200);
        *names
            .entry(reply.header("x-backend").unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    assert!(
        names.contains_key("one") && names.contains_key("two"),
        "pool shared: {names:?}"
    );

    let line = format!("CLIENT_SHUTDOWN|{}", first.sid);
    assert_eq!(first.call(&line).await, "SHUTDOWN_OK");
    for i in 0..10 {
        let reply = get(proxy, "shop.example.com", &format!("/q/{i}")).await;
        assert_eq!(reply.header("x-backend"), Some("two"));
    }
    let info: Value = payload(
        &app.oneshot(&format!("SESSION_INFO|{sid}")).await,
        "SESSION_OK",
    );
    assert_eq!(info["liveness"], "lease");
}
