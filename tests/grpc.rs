//! The gRPC front over real HTTP/2: every Registry RPC with its reply fields and error statuses, event streams (lagged notice included), Admin, health, reflection, front leases and auth (API.md).

mod common;
use common::*;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost_types::value::Kind;
use serde_json::{json, Map, Value};
use switchyard::grpc::pb;
use switchyard::grpc::pb::admin_client::AdminClient;
use switchyard::grpc::pb::registry_client::RegistryClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

type Client = RegistryClient<Channel>;

fn api_url(app: &TestApp) -> String {
    format!("http://{}", app.api_addr())
}

async fn client(app: &TestApp) -> Client {
    RegistryClient::connect(api_url(app))
        .await
        .expect("gRPC client connects")
}

async fn admin(app: &TestApp) -> AdminClient<Channel> {
    AdminClient::connect(api_url(app))
        .await
        .expect("gRPC admin client connects")
}

async fn channel(app: &TestApp) -> Channel {
    Channel::from_shared(api_url(app))
        .expect("uri")
        .connect()
        .await
        .expect("channel connects")
}

fn sreq(sid: &str) -> pb::SessionRequest {
    pb::SessionRequest {
        session_id: sid.to_string(),
    }
}

fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata value"),
    );
    request
}

/// The reply of a call that must succeed.
#[track_caller]
fn ok<T>(result: Result<Response<T>, Status>, what: &str) -> T {
    match result {
        Ok(reply) => reply.into_inner(),
        Err(status) => panic!(
            "{what}: expected OK, got {:?} `{}`",
            status.code(),
            status.message()
        ),
    }
}

/// A call that must fail with exactly `code` and `message`.
#[track_caller]
fn expect_status<T: std::fmt::Debug>(
    result: Result<Response<T>, Status>,
    code: Code,
    message: &str,
) {
    match result {
        Ok(reply) => panic!(
            "expected {code:?} `{message}`, got OK {:?}",
            reply.get_ref()
        ),
        Err(status) => assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "status of the call"
        ),
    }
}

async fn register(c: &mut Client, service: &str, instance: &str) -> String {
    ok(
        c.register(pb::RegisterRequest {
            service_name: service.into(),
            instance_name: instance.into(),
            maintenance_port: 0,
            metadata: None,
        })
        .await,
        "Register",
    )
    .session_id
}

/// Turns the default health check off for the session, so no probe traffic or health events.
async fn quiet(c: &mut Client, sid: &str) {
    ok(
        c.options_set(pb::OptionsSetRequest {
            session_id: sid.into(),
            target: "ALL".into(),
            key: "health_check_interval".into(),
            value: "0".into(),
        })
        .await,
        "OptionsSet health_check_interval 0",
    );
}

async fn register_quiet(c: &mut Client, service: &str, instance: &str) -> String {
    let sid = register(c, service, instance).await;
    quiet(c, &sid).await;
    sid
}

fn route_req(sid: &str, domains: &[&str], path: &str, backend: &str) -> pb::RouteAddRequest {
    pb::RouteAddRequest {
        session_id: sid.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        path: path.into(),
        backend_url: backend.into(),
        priority: 0,
    }
}

async fn add_route(c: &mut Client, sid: &str, domain: &str, path: &str, backend: &str) -> String {
    ok(
        c.route_add(route_req(sid, &[domain], path, backend)).await,
        "RouteAdd",
    )
    .route_id
}

async fn apply(c: &mut Client, sid: &str) {
    ok(c.config_apply(sreq(sid)).await, "ConfigApply");
}

fn spec(domains: &[&str], path: &str, backend: &str) -> pb::RouteSpec {
    pb::RouteSpec {
        domains: domains.iter().map(|d| d.to_string()).collect(),
        path: path.into(),
        backend_url: backend.into(),
        priority: 0,
    }
}

fn json_of_value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 1e15 => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(*n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json_of_value).collect()),
        Some(Kind::StructValue(s)) => json_of(s),
    }
}

/// A `google.protobuf.Struct` as a JSON object.
fn json_of(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), json_of_value(v)))
            .collect::<Map<String, Value>>(),
    )
}

fn struct_of(value: Value) -> prost_types::Struct {
    fn conv(v: Value) -> prost_types::Value {
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().expect("number")),
            Value::String(s) => Kind::StringValue(s),
            Value::Array(a) => Kind::ListValue(prost_types::ListValue {
                values: a.into_iter().map(conv).collect(),
            }),
            Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.into_iter().map(|(k, v)| (k, conv(v))).collect(),
            }),
        };
        prost_types::Value { kind: Some(kind) }
    }
    match value {
        Value::Object(o) => prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, conv(v))).collect(),
        },
        other => panic!("not an object: {other}"),
    }
}

fn keys_of(s: &Option<prost_types::Struct>) -> Vec<String> {
    let mut keys: Vec<String> = s
        .as_ref()
        .expect("payload present")
        .fields
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[track_caller]
fn unix(ts: &Option<prost_types::Timestamp>) -> i64 {
    ts.as_ref().expect("timestamp present").seconds
}

#[track_caller]
fn assert_near_now(ts: &Option<prost_types::Timestamp>, what: &str) {
    let t = unix(ts);
    let now = unix_now();
    assert!(
        (now - 3..=now + 1).contains(&t),
        "{what}: {t} not near {now}"
    );
}

async fn next_event(stream: &mut Streaming<pb::Event>) -> pb::Event {
    match tokio::time::timeout(REPLY_WAIT, stream.message()).await {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => panic!("event stream ended"),
        Ok(Err(status)) => panic!("event stream failed: {status:?}"),
        Err(_) => panic!("no event within {REPLY_WAIT:?}"),
    }
}

/// Some event within `wait`, `None` when nothing arrives.
async fn try_next_event(stream: &mut Streaming<pb::Event>, wait: Duration) -> Option<pb::Event> {
    match tokio::time::timeout(wait, stream.message()).await {
        Ok(Ok(Some(event))) => Some(event),
        Ok(Ok(None)) => None,
        Ok(Err(status)) => panic!("event stream failed: {status:?}"),
        Err(_) => None,
    }
}

async fn subscribe(c: &mut Client, sid: &str, types: &[&str]) -> Streaming<pb::Event> {
    ok(
        c.subscribe(pb::EventTypesRequest {
            session_id: sid.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
        })
        .await,
        "Subscribe",
    )
}

async fn session_ids(a: &mut AdminClient<Channel>) -> Vec<String> {
    ok(a.list_sessions(pb::Empty {}).await, "ListSessions")
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect()
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

const ALL_TYPES: [&str; 11] = [
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
// Sessions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_reply_and_every_session_info_field() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let before = unix_now();
    let reply = ok(
        c.register(pb::RegisterRequest {
            service_name: "shop".into(),
            instance_name: "shop-1".into(),
            maintenance_port: 3001,
            metadata: Some(struct_of(json!({
                "version": "1.4.0",
                "replicas": 3,
                "auth_token": "ignored",
                "liveness": "connection"
            }))),
        })
        .await,
        "Register",
    );
    let sid = reply.session_id;
    // <instance>-<unix_seconds>-<32 lowercase hex digits> (PROTOCOL §2.1)
    let parts: Vec<&str> = sid.rsplitn(3, '-').collect();
    assert_eq!(parts.len(), 3, "{sid}");
    assert_eq!(parts[2], "shop-1", "{sid}");
    let t: i64 = parts[1].parse().expect("unix seconds in the id");
    assert!((before..=unix_now()).contains(&t), "{sid}");
    assert_eq!(parts[0].len(), 32, "{sid}");
    assert!(
        parts[0]
            .chars()
            .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch)),
        "{sid}"
    );

    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!(info.session_id, sid);
    assert_eq!(info.service_name, "shop");
    assert_eq!(info.instance_name, "shop-1");
    assert_eq!(info.maintenance_port, 3001);
    assert_near_now(&info.connected_at, "connected_at");
    assert!(info.uptime_seconds <= 2, "uptime {}", info.uptime_seconds);
    assert_near_now(&info.last_activity, "last_activity");
    assert_eq!(info.last_apply, None, "no apply yet");
    assert_eq!(info.routes_active, 0);
    assert_eq!(info.routes_staged, 0);
    assert_eq!(
        info.metadata.as_ref().map(json_of),
        Some(json!({"version": "1.4.0", "replicas": 3})),
        "reserved keys auth_token and liveness are removed"
    );
    assert!(info.subscriptions.is_empty());
    assert_eq!(info.liveness, "connection");
    assert_eq!(info.connections, 0, "front calls attach no pipe connection");
    assert!(!info.draining);
    assert!(!info.in_maintenance);
    assert_eq!(info.staged_expires_at, None);
    assert!(info.ignored_options.is_empty());
    assert_eq!(info.events_dropped, 0);

    // Staging something sets routes_staged and staged_expires_at; an unknown option shows.
    add_route(
        &mut c,
        &sid,
        "shop.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    ok(
        c.options_set(pb::OptionsSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            key: "colour".into(),
            value: "blue".into(),
        })
        .await,
        "OptionsSet unknown key",
    );
    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!(info.routes_staged, 1);
    assert_eq!(info.routes_active, 0);
    assert!(info.staged_expires_at.is_some(), "pending changes expire");
    assert_eq!(info.ignored_options, vec!["ALL:colour".to_string()]);
    apply(&mut c, &sid).await;
    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!((info.routes_active, info.routes_staged), (1, 0));
    assert_near_now(&info.last_apply, "last_apply");
    assert_eq!(info.staged_expires_at, None);
}

#[tokio::test]
async fn register_in_lease_mode_and_field_errors() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = ok(
        c.register(pb::RegisterRequest {
            service_name: "api".into(),
            instance_name: "api-1".into(),
            maintenance_port: 0,
            metadata: Some(struct_of(json!({"liveness": "lease"}))),
        })
        .await,
        "Register lease",
    )
    .session_id;
    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!(info.liveness, "lease");
    assert_eq!(info.metadata.as_ref().map(json_of), Some(json!({})));

    let base = pb::RegisterRequest {
        service_name: "api".into(),
        instance_name: "api-2".into(),
        maintenance_port: 0,
        metadata: None,
    };
    expect_status(
        c.register(pb::RegisterRequest {
            service_name: "-bad".into(),
            ..base.clone()
        })
        .await,
        Code::InvalidArgument,
        "invalid service name",
    );
    expect_status(
        c.register(pb::RegisterRequest {
            service_name: String::new(),
            ..base.clone()
        })
        .await,
        Code::InvalidArgument,
        "invalid service name",
    );
    expect_status(
        c.register(pb::RegisterRequest {
            instance_name: "bad name".into(),
            ..base.clone()
        })
        .await,
        Code::InvalidArgument,
        "invalid instance name",
    );
    expect_status(
        c.register(pb::RegisterRequest {
            maintenance_port: 70000,
            ..base.clone()
        })
        .await,
        Code::InvalidArgument,
        "invalid maintenance port",
    );
    expect_status(
        c.register(pb::RegisterRequest {
            metadata: Some(struct_of(json!({"liveness": "forever"}))),
            ..base.clone()
        })
        .await,
        Code::InvalidArgument,
        "invalid liveness",
    );

    // Re-registering the same service + instance replaces the old session.
    let again = register(&mut c, "api", "api-1").await;
    assert_ne!(again, sid);
    expect_status(
        c.session_info(sreq(&sid)).await,
        Code::NotFound,
        "session not found",
    );
    let reply = ok(c.reconnect(sreq(&sid)).await, "Reconnect replaced");
    assert!(reply.reregister);
}

#[tokio::test]
async fn reconnect_and_ping_with_live_empty_and_unknown_ids() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register(&mut c, "svc", "svc-1").await;

    let reply = ok(c.reconnect(sreq(&sid)).await, "Reconnect live");
    assert!(!reply.reregister, "a live session reconnects");
    let reply = ok(c.reconnect(sreq("")).await, "Reconnect empty");
    assert!(reply.reregister, "empty id → reregister");
    let reply = ok(
        c.reconnect(sreq("nosuch-1-00000000000000000000000000000000"))
            .await,
        "Reconnect unknown",
    );
    assert!(reply.reregister, "unknown id → reregister");

    ok(c.ping(sreq(&sid)).await, "Ping live");
    ok(
        c.ping(sreq("")).await,
        "Ping with no session is a pure probe",
    );
    expect_status(
        c.ping(sreq("nosuch")).await,
        Code::NotFound,
        "session not found",
    );
}

/// Calls every session-scoped RPC of `Registry` for `sid` with otherwise plausible fields.
async fn every_session_rpc(c: &mut Client, sid: &str) -> Vec<(&'static str, Result<(), Status>)> {
    let s = sid.to_string();
    let mut out: Vec<(&'static str, Result<(), Status>)> = Vec::new();
    macro_rules! call {
        ($name:literal, $call:expr) => {
            out.push(($name, $call.await.map(|_| ())));
        };
    }
    call!("SessionInfo", c.session_info(sreq(sid)));
    call!(
        "RouteAdd",
        c.route_add(route_req(
            sid,
            &["a.example.com"],
            "/",
            "http://127.0.0.1:9001"
        ))
    );
    call!(
        "RouteAddBulk",
        c.route_add_bulk(pb::RouteAddBulkRequest {
            session_id: s.clone(),
            routes: vec![spec(&["b.example.com"], "/", "http://127.0.0.1:9001")],
        })
    );
    call!(
        "RouteUpdate",
        c.route_update(pb::RouteUpdateRequest {
            session_id: s.clone(),
            route_id: "r1".into(),
            field: "priority".into(),
            value: "5".into(),
        })
    );
    call!(
        "RouteRemove",
        c.route_remove(pb::RouteRequest {
            session_id: s.clone(),
            route_id: "r1".into(),
        })
    );
    call!("RouteList", c.route_list(sreq(sid)));
    call!(
        "HeadersSet",
        c.headers_set(pb::HeadersSetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            header_name: "X-A".into(),
            header_value: "1".into(),
        })
    );
    call!(
        "HeadersRemove",
        c.headers_remove(pb::HeadersRemoveRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            header_name: "X-A".into(),
        })
    );
    call!(
        "OptionsSet",
        c.options_set(pb::OptionsSetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            key: "timeout".into(),
            value: "30s".into(),
        })
    );
    call!(
        "OptionsRemove",
        c.options_remove(pb::OptionsRemoveRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            key: "timeout".into(),
        })
    );
    call!(
        "HealthSet",
        c.health_set(pb::HealthSetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            path: "/health".into(),
            interval: secs(10),
            timeout: secs(2),
        })
    );
    call!(
        "RateLimitSet",
        c.rate_limit_set(pb::RateLimitSetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            requests: 10,
            window: secs(1),
        })
    );
    call!(
        "CircuitBreakerSet",
        c.circuit_breaker_set(pb::CircuitBreakerSetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            threshold: 5,
            timeout: secs(30),
            half_open_requests: 1,
        })
    );
    call!(
        "CircuitBreakerStatus",
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: s.clone(),
            route_id: "r1".into(),
        })
    );
    call!(
        "CircuitBreakerReset",
        c.circuit_breaker_reset(pb::TargetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
        })
    );
    call!("ConfigValidate", c.config_validate(sreq(sid)));
    call!("ConfigApply", c.config_apply(sreq(sid)));
    call!("ConfigRollback", c.config_rollback(sreq(sid)));
    call!("ConfigDiff", c.config_diff(sreq(sid)));
    call!(
        "ConfigApplyPartial",
        c.config_apply_partial(pb::ConfigApplyPartialRequest {
            session_id: s.clone(),
            scopes: vec!["routes".into()],
        })
    );
    call!(
        "DrainStart",
        c.drain_start(pb::DrainStartRequest {
            session_id: s.clone(),
            duration: secs(30),
        })
    );
    call!("DrainStatus", c.drain_status(sreq(sid)));
    call!("DrainCancel", c.drain_cancel(sreq(sid)));
    call!(
        "MaintEnter",
        c.maint_enter(pb::MaintEnterRequest {
            session_id: s.clone(),
            target: "ALL".into(),
            page_url: String::new(),
        })
    );
    call!(
        "MaintExit",
        c.maint_exit(pb::TargetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
        })
    );
    call!("MaintStatus", c.maint_status(sreq(sid)));
    call!(
        "StatsGet",
        c.stats_get(pb::StatsGetRequest {
            session_id: s.clone(),
            target: "ALL".into(),
        })
    );
    call!(
        "Subscribe",
        c.subscribe(pb::EventTypesRequest {
            session_id: s.clone(),
            event_types: vec!["all".into()],
        })
    );
    call!(
        "Unsubscribe",
        c.unsubscribe(pb::EventTypesRequest {
            session_id: s.clone(),
            event_types: vec!["all".into()],
        })
    );
    call!("ClientShutdown", c.client_shutdown(sreq(sid)));
    out
}

#[tokio::test]
async fn every_session_rpc_refuses_an_empty_or_unknown_session_id() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let results = every_session_rpc(&mut c, "").await;
    assert_eq!(
        results.len(),
        30,
        "every session-scoped RPC but Ping/Reconnect/BackendTest"
    );
    for (name, result) in results {
        match result {
            Ok(()) => panic!("{name} with an empty session_id answered OK"),
            Err(s) => assert_eq!(
                (s.code(), s.message()),
                (Code::InvalidArgument, "no session"),
                "{name} with an empty session_id"
            ),
        }
    }
    for (name, result) in every_session_rpc(&mut c, "nosuch").await {
        match result {
            Ok(()) => panic!("{name} with an unknown session_id answered OK"),
            Err(s) => assert_eq!(
                (s.code(), s.message()),
                (Code::NotFound, "session not found"),
                "{name} with an unknown session_id"
            ),
        }
    }
    expect_status(
        c.backend_test(pb::BackendTestRequest {
            session_id: Some("nosuch".into()),
            backend_url: "http://127.0.0.1:9001".into(),
        })
        .await,
        Code::NotFound,
        "session not found",
    );
}

#[tokio::test]
async fn client_shutdown_ends_the_session_and_its_routes() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "svc", "svc-1").await;
    add_route(&mut c, &sid, "bye.example.com", "/", &backend.url()).await;
    apply(&mut c, &sid).await;
    assert_eq!(
        get(app.proxy_addr(), "bye.example.com", "/").await.status,
        200
    );
    ok(c.client_shutdown(sreq(&sid)).await, "ClientShutdown");
    expect_status(
        c.session_info(sreq(&sid)).await,
        Code::NotFound,
        "session not found",
    );
    assert!(ok(c.reconnect(sreq(&sid)).await, "Reconnect").reregister);
    assert_eq!(
        get(app.proxy_addr(), "bye.example.com", "/").await.status,
        404,
        "the route left the proxy before the reply"
    );
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn route_add_bulk_update_remove_and_list_statuses() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "shop", "shop-1").await;

    let r1 = ok(
        c.route_add(pb::RouteAddRequest {
            priority: 10,
            ..route_req(
                &sid,
                &["Shop.Example.com.", "www.shop.example.com"],
                "/api/",
                "http://127.0.0.1:9001/",
            )
        })
        .await,
        "RouteAdd",
    )
    .route_id;
    assert_eq!(r1, "r1", "route ids start at r1");
    let bulk = ok(
        c.route_add_bulk(pb::RouteAddBulkRequest {
            session_id: sid.clone(),
            routes: vec![
                spec(&["a.example.com"], "/", "http://127.0.0.1:9002"),
                pb::RouteSpec {
                    priority: -5,
                    ..spec(&["b.example.com"], "/x", "http://127.0.0.1:9003")
                },
            ],
        })
        .await,
        "RouteAddBulk",
    );
    assert_eq!(
        bulk.results,
        vec![
            pb::BulkResult {
                route_id: "r2".into(),
                status: "ok".into()
            },
            pb::BulkResult {
                route_id: "r3".into(),
                status: "ok".into()
            },
        ]
    );
    let empty = ok(
        c.route_add_bulk(pb::RouteAddBulkRequest {
            session_id: sid.clone(),
            routes: vec![],
        })
        .await,
        "RouteAddBulk with no routes",
    );
    assert!(empty.results.is_empty());

    let list = ok(c.route_list(sreq(&sid)).await, "RouteList").routes;
    assert_eq!(list.len(), 3);
    assert_eq!(
        list[0],
        pb::RouteInfo {
            route_id: "r1".into(),
            id: "r1".into(),
            domains: vec!["shop.example.com".into(), "www.shop.example.com".into()],
            path: "/api".into(),
            backend: "http://127.0.0.1:9001/".into(),
            backend_url: "http://127.0.0.1:9001/".into(),
            priority: 10,
            status: "staged".into(),
            in_maintenance: false,
            healthy: None,
            active: None,
        }
    );
    assert_eq!(list[2].priority, -5);
    assert_eq!(list[2].path, "/x");

    apply(&mut c, &sid).await;
    let list = ok(c.route_list(sreq(&sid)).await, "RouteList").routes;
    for r in &list {
        assert_eq!(r.status, "active", "{r:?}");
        assert_eq!(r.healthy, Some(true), "{r:?}");
        assert_eq!(r.active, None, "{r:?}");
    }

    // modified: staged values with the live ones under `active`.
    ok(
        c.route_update(pb::RouteUpdateRequest {
            session_id: sid.clone(),
            route_id: "r2".into(),
            field: "backend".into(),
            value: "http://127.0.0.1:9999".into(),
        })
        .await,
        "RouteUpdate backend (alias)",
    );
    ok(
        c.route_update(pb::RouteUpdateRequest {
            session_id: sid.clone(),
            route_id: "r2".into(),
            field: "priority".into(),
            value: "7".into(),
        })
        .await,
        "RouteUpdate priority",
    );
    // pending_removal: live, removed at the next apply.
    ok(
        c.route_remove(pb::RouteRequest {
            session_id: sid.clone(),
            route_id: "r3".into(),
        })
        .await,
        "RouteRemove",
    );
    expect_status(
        c.route_remove(pb::RouteRequest {
            session_id: sid.clone(),
            route_id: "r3".into(),
        })
        .await,
        Code::NotFound,
        "route not found",
    );
    let list = ok(c.route_list(sreq(&sid)).await, "RouteList").routes;
    assert_eq!(list[1].status, "modified");
    assert_eq!(list[1].backend_url, "http://127.0.0.1:9999");
    assert_eq!(list[1].backend, "http://127.0.0.1:9999");
    assert_eq!(list[1].priority, 7);
    assert_eq!(
        list[1].active,
        Some(pb::ActiveRoute {
            domains: vec!["a.example.com".into()],
            path: "/".into(),
            backend: "http://127.0.0.1:9002".into(),
            priority: 0,
        })
    );
    assert_eq!(list[2].status, "pending_removal");
    assert_eq!(
        list[2].backend_url, "http://127.0.0.1:9003",
        "active values"
    );
    assert_eq!(list[2].active, None);

    let diff = ok(c.config_diff(sreq(&sid)).await, "ConfigDiff");
    assert_eq!(
        diff.routes,
        Some(pb::IdChanges {
            added: vec![],
            removed: vec!["r3".into()],
            modified: vec!["r2".into()],
        })
    );
    assert!(diff.pending);

    apply(&mut c, &sid).await;
    let list = ok(c.route_list(sreq(&sid)).await, "RouteList").routes;
    let ids: Vec<&str> = list.iter().map(|r| r.route_id.as_str()).collect();
    assert_eq!(ids, ["r1", "r2"]);
    assert_eq!(list[1].status, "active");
    assert_eq!(list[1].priority, 7);
}

#[tokio::test]
async fn route_errors_have_the_pipe_texts_and_codes() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "shop", "shop-1").await;
    let other = register_quiet(&mut c, "other", "other-1").await;
    let foreign = add_route(
        &mut c,
        &other,
        "other.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    add_route(
        &mut c,
        &other,
        "claimed.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    apply(&mut c, &other).await;
    add_route(&mut c, &sid, "a.com", "/", "http://127.0.0.1:9001").await;

    let cases: Vec<(pb::RouteAddRequest, Code, String)> = vec![
        (
            route_req(&sid, &["-bad"], "/", "http://127.0.0.1:9001"),
            Code::InvalidArgument,
            "invalid domain: -bad".into(),
        ),
        (
            route_req(&sid, &[], "/", "http://127.0.0.1:9001"),
            Code::InvalidArgument,
            "no domains specified".into(),
        ),
        (
            route_req(&sid, &["x.com"], "", "http://127.0.0.1:9001"),
            Code::InvalidArgument,
            "path cannot be empty".into(),
        ),
        (
            route_req(&sid, &["x.com"], "/a//b", "http://127.0.0.1:9001"),
            Code::InvalidArgument,
            "invalid path: /a//b".into(),
        ),
        (
            route_req(&sid, &["x.com"], "/", "ftp://127.0.0.1"),
            Code::InvalidArgument,
            "invalid backend url format".into(),
        ),
        (
            route_req(&sid, &["x.com"], "/", "http://169.254.169.254/"),
            Code::InvalidArgument,
            "backend not allowed: 169.254.169.254".into(),
        ),
        (
            pb::RouteAddRequest {
                priority: 10_001,
                ..route_req(&sid, &["x.com"], "/", "http://127.0.0.1:9001")
            },
            Code::InvalidArgument,
            "invalid priority".into(),
        ),
        (
            route_req(&sid, &["a.com"], "/", "http://127.0.0.1:9002"),
            Code::AlreadyExists,
            "duplicate route: a.com/".into(),
        ),
        (
            route_req(&sid, &["claimed.example.com"], "/", "http://127.0.0.1:9002"),
            Code::PermissionDenied,
            "permission denied: claimed.example.com/ is claimed by another service".into(),
        ),
    ];
    for (request, code, message) in cases {
        expect_status(c.route_add(request).await, code, &message);
    }

    // Another session's route id, on every command that resolves one.
    let denied = format!("permission denied: route {foreign} belongs to another session");
    expect_status(
        c.route_update(pb::RouteUpdateRequest {
            session_id: sid.clone(),
            route_id: foreign.clone(),
            field: "priority".into(),
            value: "1".into(),
        })
        .await,
        Code::PermissionDenied,
        &denied,
    );
    expect_status(
        c.route_remove(pb::RouteRequest {
            session_id: sid.clone(),
            route_id: foreign.clone(),
        })
        .await,
        Code::PermissionDenied,
        &denied,
    );
    expect_status(
        c.headers_set(pb::HeadersSetRequest {
            session_id: sid.clone(),
            target: foreign.clone(),
            header_name: "X-A".into(),
            header_value: "1".into(),
        })
        .await,
        Code::PermissionDenied,
        &denied,
    );
    expect_status(
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: sid.clone(),
            route_id: foreign.clone(),
        })
        .await,
        Code::PermissionDenied,
        &denied,
    );
    expect_status(
        c.stats_get(pb::StatsGetRequest {
            session_id: sid.clone(),
            target: foreign.clone(),
        })
        .await,
        Code::PermissionDenied,
        &denied,
    );

    // ROUTE_UPDATE field and value errors.
    expect_status(
        c.route_update(pb::RouteUpdateRequest {
            session_id: sid.clone(),
            route_id: "r3".into(),
            field: "colour".into(),
            value: "red".into(),
        })
        .await,
        Code::InvalidArgument,
        "unknown field: colour",
    );
    expect_status(
        c.route_update(pb::RouteUpdateRequest {
            session_id: sid.clone(),
            route_id: "r999".into(),
            field: "priority".into(),
            value: "1".into(),
        })
        .await,
        Code::NotFound,
        "route not found",
    );

    // RouteAddBulk: `route <i>: <reason>` with the reason's code; nothing staged on failure.
    let bulk = |routes: Vec<pb::RouteSpec>| pb::RouteAddBulkRequest {
        session_id: sid.clone(),
        routes,
    };
    expect_status(
        c.route_add_bulk(bulk(vec![
            spec(&["b.com"], "/", "http://127.0.0.1:9001"),
            spec(&["c.com"], "/", "not a url"),
        ]))
        .await,
        Code::InvalidArgument,
        "route 1: invalid backend url format",
    );
    expect_status(
        c.route_add_bulk(bulk(vec![
            spec(&["b.com"], "/", "http://127.0.0.1:9001"),
            spec(&["b.com"], "/", "http://127.0.0.1:9002"),
        ]))
        .await,
        Code::AlreadyExists,
        "route 1: duplicate route: b.com/",
    );
    expect_status(
        c.route_add_bulk(bulk(vec![spec(&["a.com"], "/", "http://127.0.0.1:9001")]))
            .await,
        Code::AlreadyExists,
        "route 0: duplicate route: a.com/",
    );
    expect_status(
        c.route_add_bulk(bulk(vec![spec(
            &["claimed.example.com"],
            "/",
            "http://127.0.0.1:9001",
        )]))
        .await,
        Code::PermissionDenied,
        "route 0: permission denied: claimed.example.com/ is claimed by another service",
    );
    expect_status(
        c.route_add_bulk(bulk(vec![spec(&["b.com"], "", "http://127.0.0.1:9001")]))
            .await,
        Code::InvalidArgument,
        "route 0: path cannot be empty",
    );
    expect_status(
        c.route_add_bulk(bulk(
            (0..257)
                .map(|i| spec(&[&format!("h{i}.com")], "/", "http://127.0.0.1:9001"))
                .collect(),
        ))
        .await,
        Code::ResourceExhausted,
        "too many routes",
    );
    let list = ok(c.route_list(sreq(&sid)).await, "RouteList").routes;
    assert_eq!(list.len(), 1, "failed bulk calls staged nothing: {list:?}");
    // No route id was allocated by the failed calls.
    assert_eq!(
        add_route(&mut c, &sid, "next.com", "/", "http://127.0.0.1:9001").await,
        "r4"
    );
}

#[tokio::test]
async fn route_limit_is_resource_exhausted() {
    let app = TestApp::start_with(|config| config.max_routes_per_session = 2).await;
    let mut c = client(&app).await;
    let sid = register(&mut c, "svc", "svc-1").await;
    add_route(&mut c, &sid, "a.com", "/", "http://127.0.0.1:9001").await;
    add_route(&mut c, &sid, "b.com", "/", "http://127.0.0.1:9001").await;
    expect_status(
        c.route_add(route_req(&sid, &["c.com"], "/", "http://127.0.0.1:9001"))
            .await,
        Code::ResourceExhausted,
        "too many routes",
    );
}

#[tokio::test]
async fn a_route_added_over_grpc_serves_traffic_after_apply() {
    let app = TestApp::start().await;
    let backend = Backend::start("grpc-backend").await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "web", "web-1").await;
    add_route(&mut c, &sid, "web.example.com", "/", &backend.url()).await;
    ok(
        c.headers_set(pb::HeadersSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            header_name: "X-Served-By".into(),
            header_value: "switchyard".into(),
        })
        .await,
        "HeadersSet",
    );
    assert_eq!(
        get(app.proxy_addr(), "web.example.com", "/hello")
            .await
            .status,
        404,
        "staged only: not served yet"
    );
    apply(&mut c, &sid).await;
    let reply = get(app.proxy_addr(), "web.example.com", "/hello?x=1").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "grpc-backend /hello?x=1");
    assert_eq!(reply.header("x-served-by"), Some("switchyard"));
    assert_eq!(backend.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Staged settings, diff, validate, apply, rollback, partial apply
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn settings_diff_rollback_and_their_errors() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register(&mut c, "svc", "svc-1").await;
    let rid = add_route(&mut c, &sid, "s.example.com", "/", "http://127.0.0.1:9001").await;
    apply(&mut c, &sid).await;

    let empty = ok(c.config_diff(sreq(&sid)).await, "ConfigDiff");
    let none = pb::IdChanges::default();
    let zero = pb::CountChanges::default();
    assert_eq!(
        empty,
        pb::ConfigDiffReply {
            routes: Some(none.clone()),
            headers: Some(zero),
            options: Some(zero),
            health: Some(none.clone()),
            ratelimit: Some(none.clone()),
            circuit_breaker: Some(none.clone()),
            pending: false,
        },
        "every diff field present, nothing pending"
    );

    ok(
        c.headers_set(pb::HeadersSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            header_name: "X-A".into(),
            header_value: "1".into(),
        })
        .await,
        "HeadersSet ALL",
    );
    ok(
        c.headers_set(pb::HeadersSetRequest {
            session_id: sid.clone(),
            target: rid.clone(),
            header_name: "X-B".into(),
            header_value: String::new(),
        })
        .await,
        "HeadersSet route, empty value",
    );
    ok(
        c.options_set(pb::OptionsSetRequest {
            session_id: sid.clone(),
            target: rid.clone(),
            key: "timeout".into(),
            value: "30s".into(),
        })
        .await,
        "OptionsSet",
    );
    ok(
        c.health_set(pb::HealthSetRequest {
            session_id: sid.clone(),
            target: rid.clone(),
            path: "/healthz".into(),
            interval: secs(10),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
        })
        .await,
        "HealthSet",
    );
    ok(
        c.rate_limit_set(pb::RateLimitSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            requests: 100,
            window: secs(60),
        })
        .await,
        "RateLimitSet",
    );
    ok(
        c.circuit_breaker_set(pb::CircuitBreakerSetRequest {
            session_id: sid.clone(),
            target: rid.clone(),
            threshold: 5,
            timeout: secs(30),
            half_open_requests: 2,
        })
        .await,
        "CircuitBreakerSet",
    );
    let diff = ok(c.config_diff(sreq(&sid)).await, "ConfigDiff");
    assert_eq!(
        diff,
        pb::ConfigDiffReply {
            routes: Some(none.clone()),
            headers: Some(pb::CountChanges {
                added: 2,
                removed: 0,
                modified: 0
            }),
            options: Some(pb::CountChanges {
                added: 1,
                removed: 0,
                modified: 0
            }),
            health: Some(pb::IdChanges {
                added: vec![rid.clone()],
                ..Default::default()
            }),
            ratelimit: Some(pb::IdChanges {
                added: vec!["ALL".into()],
                ..Default::default()
            }),
            circuit_breaker: Some(pb::IdChanges {
                added: vec![rid.clone()],
                ..Default::default()
            }),
            pending: true,
        }
    );
    ok(c.config_validate(sreq(&sid)).await, "ConfigValidate");
    assert!(
        ok(c.config_diff(sreq(&sid)).await, "ConfigDiff").pending,
        "validate changes nothing"
    );
    ok(c.config_rollback(sreq(&sid)).await, "ConfigRollback");
    assert_eq!(ok(c.config_diff(sreq(&sid)).await, "ConfigDiff"), empty);

    // Removing: HeadersRemove / OptionsRemove of absent names are no errors; zero drops.
    ok(
        c.headers_remove(pb::HeadersRemoveRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            header_name: "X-None".into(),
        })
        .await,
        "HeadersRemove absent",
    );
    ok(
        c.options_remove(pb::OptionsRemoveRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            key: "whatever".into(),
        })
        .await,
        "OptionsRemove absent",
    );
    ok(
        c.health_set(pb::HealthSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            path: String::new(),
            interval: secs(0),
            timeout: None,
        })
        .await,
        "HealthSet interval 0 drops",
    );
    ok(
        c.rate_limit_set(pb::RateLimitSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            requests: 0,
            window: None,
        })
        .await,
        "RateLimitSet 0 drops",
    );
    ok(
        c.circuit_breaker_set(pb::CircuitBreakerSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            threshold: 0,
            timeout: None,
            half_open_requests: 0,
        })
        .await,
        "CircuitBreakerSet 0 drops",
    );
    assert!(!ok(c.config_diff(sreq(&sid)).await, "ConfigDiff").pending);

    // Field errors, with the pipe's texts.
    expect_status(
        c.headers_set(pb::HeadersSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            header_name: "Connection".into(),
            header_value: "close".into(),
        })
        .await,
        Code::InvalidArgument,
        "header not allowed: Connection",
    );
    expect_status(
        c.headers_set(pb::HeadersSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            header_name: "Bad Name".into(),
            header_value: "1".into(),
        })
        .await,
        Code::InvalidArgument,
        "invalid header name",
    );
    expect_status(
        c.headers_set(pb::HeadersSetRequest {
            session_id: sid.clone(),
            target: "r999".into(),
            header_name: "X-A".into(),
            header_value: "1".into(),
        })
        .await,
        Code::NotFound,
        "route not found",
    );
    expect_status(
        c.options_set(pb::OptionsSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            key: "timeout".into(),
            value: "abc".into(),
        })
        .await,
        Code::InvalidArgument,
        "invalid value for timeout: abc",
    );
    expect_status(
        c.options_set(pb::OptionsSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            key: String::new(),
            value: "1".into(),
        })
        .await,
        Code::InvalidArgument,
        "invalid option key",
    );
    expect_status(
        c.health_set(pb::HealthSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            path: "/h".into(),
            interval: secs(-1),
            timeout: secs(1),
        })
        .await,
        Code::InvalidArgument,
        "invalid interval",
    );
    expect_status(
        c.health_set(pb::HealthSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            path: "/h".into(),
            interval: secs(10),
            timeout: secs(20),
        })
        .await,
        Code::InvalidArgument,
        "invalid timeout",
    );
    expect_status(
        c.health_set(pb::HealthSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            path: "no-slash".into(),
            interval: secs(10),
            timeout: secs(1),
        })
        .await,
        Code::InvalidArgument,
        "invalid health path",
    );
    expect_status(
        c.rate_limit_set(pb::RateLimitSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            requests: 2_000_000,
            window: secs(1),
        })
        .await,
        Code::InvalidArgument,
        "invalid requests",
    );
    expect_status(
        c.rate_limit_set(pb::RateLimitSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            requests: 5,
            window: Some(prost_types::Duration {
                seconds: 0,
                nanos: -5,
            }),
        })
        .await,
        Code::InvalidArgument,
        "invalid window",
    );
    expect_status(
        c.circuit_breaker_set(pb::CircuitBreakerSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            threshold: 5,
            timeout: secs(30),
            half_open_requests: 0,
        })
        .await,
        Code::InvalidArgument,
        "invalid half_open_requests",
    );
    expect_status(
        c.circuit_breaker_set(pb::CircuitBreakerSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            threshold: 20_000,
            timeout: secs(30),
            half_open_requests: 1,
        })
        .await,
        Code::InvalidArgument,
        "invalid threshold",
    );
    expect_status(
        c.circuit_breaker_set(pb::CircuitBreakerSetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            threshold: 5,
            timeout: secs(-30),
            half_open_requests: 1,
        })
        .await,
        Code::InvalidArgument,
        "invalid timeout",
    );
}

#[tokio::test]
async fn apply_conflicts_and_partial_apply() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let a = register_quiet(&mut c, "alpha", "alpha-1").await;
    let b = register_quiet(&mut c, "beta", "beta-1").await;
    let ra = add_route(&mut c, &a, "a.example.com", "/", "http://127.0.0.1:9001").await;
    let contested = add_route(&mut c, &a, "x.example.com", "/", "http://127.0.0.1:9001").await;
    add_route(&mut c, &b, "x.example.com", "/", "http://127.0.0.1:9002").await;
    apply(&mut c, &b).await;

    let refusal = format!(
        "route {contested}: permission denied: x.example.com/ is claimed by another service"
    );
    expect_status(
        c.config_validate(sreq(&a)).await,
        Code::FailedPrecondition,
        &refusal,
    );
    expect_status(
        c.config_apply(sreq(&a)).await,
        Code::FailedPrecondition,
        &refusal,
    );
    expect_status(
        c.config_apply_partial(pb::ConfigApplyPartialRequest {
            session_id: a.clone(),
            scopes: vec!["routes".into()],
        })
        .await,
        Code::FailedPrecondition,
        &refusal,
    );
    let info = ok(c.session_info(sreq(&a)).await, "SessionInfo");
    assert_eq!(info.routes_active, 0, "a failed apply changes nothing");
    assert_eq!(info.last_apply, None);

    ok(
        c.route_remove(pb::RouteRequest {
            session_id: a.clone(),
            route_id: contested,
        })
        .await,
        "RouteRemove",
    );
    ok(
        c.health_set(pb::HealthSetRequest {
            session_id: a.clone(),
            target: ra.clone(),
            path: "/h".into(),
            interval: secs(10),
            timeout: secs(1),
        })
        .await,
        "HealthSet",
    );
    expect_status(
        c.config_apply_partial(pb::ConfigApplyPartialRequest {
            session_id: a.clone(),
            scopes: vec!["health".into()],
        })
        .await,
        Code::FailedPrecondition,
        &format!("health {ra}: route not active (include scope routes)"),
    );
    expect_status(
        c.config_apply_partial(pb::ConfigApplyPartialRequest {
            session_id: a.clone(),
            scopes: vec!["routes".into(), "bogus".into()],
        })
        .await,
        Code::InvalidArgument,
        "unknown scope: bogus",
    );
    expect_status(
        c.config_apply_partial(pb::ConfigApplyPartialRequest {
            session_id: a.clone(),
            scopes: vec![" ".into()],
        })
        .await,
        Code::InvalidArgument,
        "invalid format",
    );
    ok(
        c.config_apply_partial(pb::ConfigApplyPartialRequest {
            session_id: a.clone(),
            scopes: vec!["routes".into()],
        })
        .await,
        "ConfigApplyPartial routes",
    );
    let diff = ok(c.config_diff(sreq(&a)).await, "ConfigDiff");
    assert_eq!(
        diff.health,
        Some(pb::IdChanges {
            added: vec![ra.clone()],
            ..Default::default()
        }),
        "health stays pending"
    );
    assert_eq!(diff.routes, Some(pb::IdChanges::default()));
    let list = ok(c.route_list(sreq(&a)).await, "RouteList").routes;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].status, "active");
    ok(
        c.config_apply_partial(pb::ConfigApplyPartialRequest {
            session_id: a.clone(),
            scopes: vec!["all".into()],
        })
        .await,
        "ConfigApplyPartial all",
    );
    assert!(!ok(c.config_diff(sreq(&a)).await, "ConfigDiff").pending);
}

// ---------------------------------------------------------------------------------------------
// Operating: breakers, drain, maintenance, stats, backend test
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn circuit_breaker_status_and_reset_act_on_the_live_breaker() {
    let app = TestApp::start().await;
    let failing = Backend::start_with("failing", |_| Some((500, vec![], "boom".into()))).await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "cb", "cb-1").await;
    let r1 = add_route(&mut c, &sid, "cb.example.com", "/", &failing.url()).await;
    let r2 = add_route(&mut c, &sid, "plain.example.com", "/", &failing.url()).await;
    ok(
        c.circuit_breaker_set(pb::CircuitBreakerSetRequest {
            session_id: sid.clone(),
            target: r1.clone(),
            threshold: 2,
            timeout: secs(30),
            half_open_requests: 3,
        })
        .await,
        "CircuitBreakerSet",
    );
    expect_status(
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: sid.clone(),
            route_id: r1.clone(),
        })
        .await,
        Code::FailedPrecondition,
        "route not active",
    );
    expect_status(
        c.circuit_breaker_reset(pb::TargetRequest {
            session_id: sid.clone(),
            target: r1.clone(),
        })
        .await,
        Code::FailedPrecondition,
        "route not active",
    );
    apply(&mut c, &sid).await;

    let status = ok(
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: sid.clone(),
            route_id: r1.clone(),
        })
        .await,
        "CircuitBreakerStatus",
    );
    assert_eq!(
        status,
        pb::CircuitBreakerStatusReply {
            route_id: r1.clone(),
            configured: true,
            state: "closed".into(),
            failures: 0,
            successes: 0,
            threshold: Some(2),
            timeout_seconds: Some(30.0),
            half_open_requests: Some(3),
            last_failure: None,
            next_attempt: None,
            healthy: true,
            in_maintenance: false,
            draining: false,
        }
    );
    let plain = ok(
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: sid.clone(),
            route_id: r2.clone(),
        })
        .await,
        "CircuitBreakerStatus without breaker",
    );
    assert_eq!(
        plain,
        pb::CircuitBreakerStatusReply {
            route_id: r2.clone(),
            configured: false,
            state: "closed".into(),
            failures: 0,
            successes: 0,
            threshold: None,
            timeout_seconds: None,
            half_open_requests: None,
            last_failure: None,
            next_attempt: None,
            healthy: true,
            in_maintenance: false,
            draining: false,
        }
    );
    expect_status(
        c.circuit_breaker_reset(pb::TargetRequest {
            session_id: sid.clone(),
            target: r2.clone(),
        })
        .await,
        Code::NotFound,
        "circuit breaker not found",
    );
    expect_status(
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: sid.clone(),
            route_id: "r999".into(),
        })
        .await,
        Code::NotFound,
        "route not found",
    );

    // Two failures open it.
    for _ in 0..2 {
        assert_eq!(
            get(app.proxy_addr(), "cb.example.com", "/").await.status,
            500
        );
    }
    let open = ok(
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: sid.clone(),
            route_id: r1.clone(),
        })
        .await,
        "CircuitBreakerStatus open",
    );
    assert_eq!(open.state, "open");
    assert_eq!(open.failures, 2);
    assert_near_now(&open.last_failure, "last_failure");
    let next = unix(&open.next_attempt);
    assert!(
        (unix_now() + 27..=unix_now() + 31).contains(&next),
        "next_attempt {next}"
    );
    assert_eq!(
        get(app.proxy_addr(), "cb.example.com", "/").await.status,
        503
    );

    ok(
        c.circuit_breaker_reset(pb::TargetRequest {
            session_id: sid.clone(),
            target: r1.clone(),
        })
        .await,
        "CircuitBreakerReset",
    );
    let reset = ok(
        c.circuit_breaker_status(pb::CircuitBreakerStatusRequest {
            session_id: sid.clone(),
            route_id: r1.clone(),
        })
        .await,
        "CircuitBreakerStatus after reset",
    );
    assert_eq!((reset.state.as_str(), reset.failures), ("closed", 0));
    assert_eq!(reset.next_attempt, None);
    assert_eq!(
        get(app.proxy_addr(), "cb.example.com", "/").await.status,
        500,
        "the reset reached the proxy before the reply"
    );
    ok(
        c.circuit_breaker_reset(pb::TargetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
        })
        .await,
        "CircuitBreakerReset ALL",
    );
}

#[tokio::test]
async fn drain_start_status_and_cancel() {
    let app = TestApp::start().await;
    let backend = Backend::start("d").await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "dr", "dr-1").await;
    add_route(&mut c, &sid, "drain.example.com", "/", &backend.url()).await;
    apply(&mut c, &sid).await;

    expect_status(
        c.drain_status(sreq(&sid)).await,
        Code::FailedPrecondition,
        "no drain in progress",
    );
    expect_status(
        c.drain_cancel(sreq(&sid)).await,
        Code::FailedPrecondition,
        "no drain in progress",
    );
    expect_status(
        c.drain_start(pb::DrainStartRequest {
            session_id: sid.clone(),
            duration: secs(-30),
        })
        .await,
        Code::InvalidArgument,
        "invalid duration",
    );
    expect_status(
        c.drain_start(pb::DrainStartRequest {
            session_id: sid.clone(),
            duration: secs(25 * 3600),
        })
        .await,
        Code::InvalidArgument,
        "invalid duration",
    );

    let now = unix_now();
    let started = ok(
        c.drain_start(pb::DrainStartRequest {
            session_id: sid.clone(),
            duration: secs(30),
        })
        .await,
        "DrainStart",
    );
    let completes = unix(&started.completes_at);
    assert!(
        (now + 29..=now + 31).contains(&completes),
        "completes_at {completes}"
    );
    let status = ok(c.drain_status(sreq(&sid)).await, "DrainStatus");
    assert!(status.active);
    assert!(!status.completed);
    assert_near_now(&status.started_at, "started_at");
    assert_eq!(unix(&status.completes_at), completes);
    assert_eq!(status.duration_seconds, 30);
    assert!(status.elapsed_seconds <= 1, "{status:?}");
    assert!(
        (29..=30).contains(&(status.elapsed_seconds + status.remaining_seconds)),
        "{status:?}"
    );
    assert_eq!(status.start_percent, 100);
    assert!((96..=100).contains(&status.traffic_percent), "{status:?}");
    assert!(ok(c.session_info(sreq(&sid)).await, "SessionInfo").draining);
    assert_eq!(
        get(app.proxy_addr(), "drain.example.com", "/").await.status,
        200,
        "alone in its pool: still served while the weight is above 0"
    );
    ok(c.drain_cancel(sreq(&sid)).await, "DrainCancel");
    expect_status(
        c.drain_status(sreq(&sid)).await,
        Code::FailedPrecondition,
        "no drain in progress",
    );

    // A zero drain completes at once.
    ok(
        c.drain_start(pb::DrainStartRequest {
            session_id: sid.clone(),
            duration: secs(0),
        })
        .await,
        "DrainStart 0",
    );
    let status = ok(c.drain_status(sreq(&sid)).await, "DrainStatus");
    assert!(status.completed);
    assert_eq!(
        (
            status.traffic_percent,
            status.duration_seconds,
            status.remaining_seconds
        ),
        (0, 0, 0)
    );
    let reply = get(app.proxy_addr(), "drain.example.com", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-drain-mode"), Some("true"));
    ok(c.drain_cancel(sreq(&sid)).await, "DrainCancel completed");
    assert_eq!(
        get(app.proxy_addr(), "drain.example.com", "/").await.status,
        200
    );
}

#[tokio::test]
async fn maintenance_enter_status_exit_and_confirmation_events() {
    let app = TestApp::start().await;
    let backend = Backend::start("app").await;
    let page = Backend::start("page").await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "mt", "mt-1").await;
    let r1 = add_route(&mut c, &sid, "m.example.com", "/", &backend.url()).await;
    add_route(&mut c, &sid, "m.example.com", "/api", &backend.url()).await;
    apply(&mut c, &sid).await;
    let mut events = subscribe(&mut c, &sid, &["maintenance_changed"]).await;

    let page_url = format!("{}/", page.url());
    ok(
        c.maint_enter(pb::MaintEnterRequest {
            session_id: sid.clone(),
            target: r1.clone(),
            page_url: page_url.clone(),
        })
        .await,
        "MaintEnter",
    );
    let status = ok(c.maint_status(sreq(&sid)).await, "MaintStatus");
    assert_eq!(status.in_maintenance, vec![r1.clone()]);
    assert!(!status.all);
    assert_eq!(
        status.maintenance_backend.as_deref(),
        Some(page_url.as_str())
    );
    assert_near_now(&status.entered_at, "entered_at");
    assert_eq!(status.routes.len(), 1);
    assert_eq!(status.routes[0].route_id, r1);
    assert_eq!(status.routes[0].maintenance_backend, page_url);
    assert_near_now(&status.routes[0].entered_at, "routes[0].entered_at");
    assert!(ok(c.session_info(sreq(&sid)).await, "SessionInfo").in_maintenance);
    let reply = get(app.proxy_addr(), "m.example.com", "/x").await;
    assert_eq!(
        reply.header("x-maintenance-mode"),
        Some("true"),
        "{reply:?}"
    );
    assert_eq!(reply.body, "page /x");

    let sync = next_event(&mut events).await;
    assert_eq!(sync.r#type, "maintenance_changed");
    assert_eq!(sync.session_id, sid);
    assert_eq!(sync.route_id, "");
    assert_eq!(
        sync.payload.as_ref().map(json_of),
        Some(json!({
            "target": r1,
            "route_ids": [r1],
            "in_maintenance": true,
            "maintenance_backend": page_url,
            "confirmed": null
        }))
    );
    let done = next_event(&mut events).await;
    assert_eq!(done.r#type, "maintenance_changed");
    assert!(done.seq > sync.seq);
    assert_eq!(
        done.payload.as_ref().map(json_of).expect("payload")["confirmed"],
        json!(true),
        "the page answered: confirmed"
    );

    expect_status(
        c.maint_enter(pb::MaintEnterRequest {
            session_id: sid.clone(),
            target: "/missing".into(),
            page_url: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "unknown target: /missing",
    );
    expect_status(
        c.maint_enter(pb::MaintEnterRequest {
            session_id: sid.clone(),
            target: " , ".into(),
            page_url: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "invalid format",
    );
    expect_status(
        c.maint_enter(pb::MaintEnterRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            page_url: "ftp://page".into(),
        })
        .await,
        Code::InvalidArgument,
        "invalid maintenance url",
    );
    expect_status(
        c.maint_exit(pb::TargetRequest {
            session_id: sid.clone(),
            target: "nosuch.example.com".into(),
        })
        .await,
        Code::InvalidArgument,
        "unknown target: nosuch.example.com",
    );

    ok(
        c.maint_enter(pb::MaintEnterRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            page_url: String::new(),
        })
        .await,
        "MaintEnter ALL",
    );
    let status = ok(c.maint_status(sreq(&sid)).await, "MaintStatus");
    assert!(status.all);
    assert_eq!(
        status.in_maintenance,
        vec!["r1".to_string(), "r2".to_string()]
    );
    assert_eq!(status.maintenance_backend.as_deref(), Some(""));
    let reply = get(app.proxy_addr(), "m.example.com", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-maintenance-mode"), Some("true"));
    let sync = next_event(&mut events).await;
    let payload = sync.payload.as_ref().map(json_of).expect("payload");
    assert_eq!(payload["target"], json!("ALL"));
    assert_eq!(payload["confirmed"], Value::Null);
    let done = next_event(&mut events).await;
    assert_eq!(
        done.payload.as_ref().map(json_of).expect("payload")["confirmed"],
        json!(true)
    );

    ok(
        c.maint_exit(pb::TargetRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
        })
        .await,
        "MaintExit",
    );
    let status = ok(c.maint_status(sreq(&sid)).await, "MaintStatus");
    assert_eq!(
        status,
        pb::MaintStatusReply {
            in_maintenance: vec![],
            all: false,
            maintenance_backend: None,
            entered_at: None,
            routes: vec![],
        }
    );
    assert_eq!(
        get(app.proxy_addr(), "m.example.com", "/").await.status,
        200
    );
    let sync = next_event(&mut events).await;
    let payload = sync.payload.as_ref().map(json_of).expect("payload");
    assert_eq!(payload["in_maintenance"], json!(false));
    assert_eq!(payload["confirmed"], Value::Null);
    let done = next_event(&mut events).await;
    assert_eq!(
        done.payload.as_ref().map(json_of).expect("payload")["confirmed"],
        json!(true),
        "the backend answered the exit probe"
    );
}

#[tokio::test]
async fn an_unreachable_maintenance_page_is_confirmed_false() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "mt", "mt-1").await;
    let mut events = subscribe(&mut c, &sid, &["maintenance_changed"]).await;
    let page = format!("{}/", closed_port_url());
    let started = Instant::now();
    ok(
        c.maint_enter(pb::MaintEnterRequest {
            session_id: sid.clone(),
            target: "ALL".into(),
            page_url: page.clone(),
        })
        .await,
        "MaintEnter",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "MaintEnter returns after the synchronous part"
    );
    let sync = next_event(&mut events).await;
    assert_eq!(
        sync.payload.as_ref().map(json_of).expect("payload")["confirmed"],
        Value::Null
    );
    let done = next_event(&mut events).await;
    let payload = done.payload.as_ref().map(json_of).expect("payload");
    assert_eq!(payload["confirmed"], json!(false), "{payload}");
    assert_eq!(payload["maintenance_backend"], json!(page));
    assert!(
        started.elapsed() <= Duration::from_millis(9500),
        "completion within the 8 s bound: {:?}",
        started.elapsed()
    );
    // Maintenance stays entered either way.
    assert!(ok(c.maint_status(sreq(&sid)).await, "MaintStatus").all);
}

#[tokio::test]
async fn stats_get_counts_proxied_requests() {
    let app = TestApp::start().await;
    let backend = Backend::start("st").await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "st", "st-1").await;
    let r1 = add_route(&mut c, &sid, "stats.example.com", "/", &backend.url()).await;
    apply(&mut c, &sid).await;
    let staged = add_route(&mut c, &sid, "later.example.com", "/", &backend.url()).await;
    for _ in 0..3 {
        assert_eq!(
            get(app.proxy_addr(), "stats.example.com", "/s")
                .await
                .status,
            200
        );
    }
    let all = || pb::StatsGetRequest {
        session_id: sid.clone(),
        target: "ALL".into(),
    };
    let mut c2 = c.clone();
    wait_until(|| {
        let mut c2 = c2.clone();
        let req = all();
        async move {
            c2.stats_get(req)
                .await
                .map(|r| r.into_inner().stats.first().map(|s| s.requests) == Some(3))
                .unwrap_or(false)
        }
    })
    .await;
    let stats = ok(c2.stats_get(all()).await, "StatsGet ALL").stats;
    assert_eq!(stats.len(), 1, "active routes only");
    let s = &stats[0];
    assert_eq!(s.route_id, r1);
    assert_eq!(s.requests, 3);
    assert_eq!(s.errors, 0);
    assert!(s.avg_latency_ms <= s.p95_latency_ms && s.p95_latency_ms <= s.p99_latency_ms);
    assert_eq!(s.bytes_sent, 3 * "st /s".len() as u64);
    assert_eq!(s.bytes_received, 0);
    assert_eq!(s.status_codes.get(&200), Some(&3));
    assert_eq!(s.status_codes.len(), 1);
    assert_eq!(s.rate_limited, 0);
    assert_eq!(s.unavailable, 0);
    assert_near_now(&s.since, "since");

    let one = ok(
        c.stats_get(pb::StatsGetRequest {
            session_id: sid.clone(),
            target: r1.clone(),
        })
        .await,
        "StatsGet route",
    )
    .stats;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0], stats[0]);
    let empty_target = ok(
        c.stats_get(pb::StatsGetRequest {
            session_id: sid.clone(),
            target: String::new(),
        })
        .await,
        "StatsGet empty target",
    )
    .stats;
    assert_eq!(empty_target.len(), 1);
    expect_status(
        c.stats_get(pb::StatsGetRequest {
            session_id: sid.clone(),
            target: staged,
        })
        .await,
        Code::FailedPrecondition,
        "route not active",
    );
    expect_status(
        c.stats_get(pb::StatsGetRequest {
            session_id: sid.clone(),
            target: "r999".into(),
        })
        .await,
        Code::NotFound,
        "route not found",
    );
}

#[tokio::test]
async fn backend_test_reachable_unreachable_and_invalid() {
    let app = TestApp::start().await;
    let backend = Backend::start("bt").await;
    let mut c = client(&app).await;
    let sid = register(&mut c, "bt", "bt-1").await;

    let reply = ok(
        c.backend_test(pb::BackendTestRequest {
            session_id: Some(sid.clone()),
            backend_url: format!(" {} ", backend.url()),
        })
        .await,
        "BackendTest",
    );
    assert_eq!(reply.url, backend.url(), "the URL as sent, trimmed");
    assert!(reply.reachable);
    assert!(reply.response_time_ms < 5000);
    assert_eq!(reply.status_code, Some(200));
    assert_eq!(reply.tls_valid, None);
    assert_eq!(reply.tls_error, None);
    assert_eq!(reply.error, None);
    assert_eq!(backend.seen()[0].uri, "/", "path / if none");

    let closed = closed_port_url();
    let reply = ok(
        c.backend_test(pb::BackendTestRequest {
            session_id: None,
            backend_url: closed.clone(),
        })
        .await,
        "BackendTest unreachable (no session, no auth)",
    );
    assert_eq!(reply.url, closed);
    assert!(!reply.reachable);
    assert!(
        reply.error.as_deref().is_some_and(|e| !e.is_empty()),
        "{reply:?}"
    );
    assert_eq!(reply.status_code, None);
    assert_eq!(reply.tls_valid, None);

    expect_status(
        c.backend_test(pb::BackendTestRequest {
            session_id: Some(sid.clone()),
            backend_url: "ftp://127.0.0.1".into(),
        })
        .await,
        Code::InvalidArgument,
        "invalid backend url format",
    );
    expect_status(
        c.backend_test(pb::BackendTestRequest {
            session_id: None,
            backend_url: "http://169.254.169.254".into(),
        })
        .await,
        Code::InvalidArgument,
        "backend not allowed: 169.254.169.254",
    );
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscribe_streams_the_events_of_a_later_apply() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "ev", "ev-1").await;
    let mut stream = subscribe(&mut c, &sid, &["route_added", "config_applied"]).await;
    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!(
        info.subscriptions,
        vec!["config_applied".to_string(), "route_added".to_string()]
    );

    // Caused by another client (another HTTP/2 connection) after the headers arrived.
    let mut other = client(&app).await;
    let rid = add_route(
        &mut other,
        &sid,
        "ev.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    apply(&mut other, &sid).await;

    let added = next_event(&mut stream).await;
    assert_eq!(added.r#type, "route_added");
    assert!(added.seq > 0);
    assert_eq!(added.session_id, sid);
    assert_eq!(added.route_id, rid);
    assert_near_now(&added.time, "time");
    assert_eq!(
        keys_of(&added.payload),
        ["backend", "domains", "path", "priority"]
    );
    assert_eq!(
        added.payload.as_ref().map(json_of),
        Some(json!({
            "domains": ["ev.example.com"],
            "path": "/",
            "backend": "http://127.0.0.1:9001",
            "priority": 0
        }))
    );
    let applied = next_event(&mut stream).await;
    assert_eq!(applied.r#type, "config_applied");
    assert_eq!(applied.seq, added.seq + 1);
    assert_eq!(applied.session_id, sid);
    assert_eq!(applied.route_id, "", "null route_id is empty");
    assert_eq!(
        applied.payload.as_ref().map(json_of),
        Some(json!({
            "scopes": ["all"],
            "routes_added": [rid],
            "routes_removed": [],
            "routes_modified": []
        }))
    );
    // Subscriptions stay after the stream closes.
    drop(stream);
    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!(info.subscriptions.len(), 2);
}

#[tokio::test]
async fn subscribe_type_errors() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register(&mut c, "ev", "ev-1").await;
    expect_status(
        c.subscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec![],
        })
        .await,
        Code::InvalidArgument,
        "invalid format",
    );
    expect_status(
        c.subscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec!["route_added".into(), "nope".into()],
        })
        .await,
        Code::InvalidArgument,
        "unknown event type: nope",
    );
    expect_status(
        c.unsubscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec![],
        })
        .await,
        Code::InvalidArgument,
        "invalid format",
    );
    expect_status(
        c.unsubscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec!["nope".into()],
        })
        .await,
        Code::InvalidArgument,
        "unknown event type: nope",
    );
    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert!(
        info.subscriptions.is_empty(),
        "a failed subscribe changes nothing"
    );
    let _all = subscribe(&mut c, &sid, &["all"]).await;
    let info = ok(c.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!(info.subscriptions, ALL_TYPES.map(String::from).to_vec());
}

#[tokio::test]
async fn a_subscribe_stream_carries_only_the_types_it_asked_for() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "ev", "ev-1").await;
    // The session is subscribed to everything (e.g. by an earlier stream) …
    let _everything = subscribe(&mut c, &sid, &["all"]).await;
    // … and this stream asks for config_applied only (API.md: "Each stream carries the
    // session's events whose type it asked for and the session is still subscribed to").
    let mut only_applied = subscribe(&mut c, &sid, &["config_applied"]).await;
    add_route(&mut c, &sid, "t.example.com", "/", "http://127.0.0.1:9001").await;
    apply(&mut c, &sid).await;
    let first = next_event(&mut only_applied).await;
    assert_eq!(
        first.r#type, "config_applied",
        "a stream opened for config_applied carried {:?}",
        first.r#type
    );
}

#[tokio::test]
async fn unsubscribe_stops_the_events_on_an_open_stream() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "ev", "ev-1").await;
    let mut stream = subscribe(&mut c, &sid, &["route_added", "config_applied"]).await;
    ok(
        c.unsubscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec!["route_added".into()],
        })
        .await,
        "Unsubscribe",
    );
    assert_eq!(
        ok(c.session_info(sreq(&sid)).await, "SessionInfo").subscriptions,
        vec!["config_applied".to_string()]
    );
    add_route(&mut c, &sid, "u.example.com", "/", "http://127.0.0.1:9001").await;
    apply(&mut c, &sid).await;
    let event = next_event(&mut stream).await;
    assert_eq!(
        event.r#type, "config_applied",
        "route_added no longer flows"
    );
    // Unsubscribing from a type not subscribed is no error; `all` removes everything.
    ok(
        c.unsubscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec!["cert_renewed".into(), "all".into()],
        })
        .await,
        "Unsubscribe all",
    );
    assert!(ok(c.session_info(sreq(&sid)).await, "SessionInfo")
        .subscriptions
        .is_empty());
}

#[tokio::test]
async fn session_expired_reaches_subscribed_peers_of_the_same_service() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let a = register(&mut c, "pool", "pool-1").await;
    let b = register(&mut c, "pool", "pool-2").await;
    let stranger = register(&mut c, "else", "else-1").await;
    let mut peer = subscribe(&mut c, &b, &["session_expired", "config_applied"]).await;
    let mut other = subscribe(&mut c, &stranger, &["session_expired", "config_applied"]).await;
    ok(c.client_shutdown(sreq(&a)).await, "ClientShutdown");
    let event = next_event(&mut peer).await;
    assert_eq!(event.r#type, "session_expired");
    assert_eq!(event.session_id, a, "the session the event concerns");
    assert_eq!(event.route_id, "");
    assert_eq!(
        event.payload.as_ref().map(json_of),
        Some(
            json!({"service_name": "pool", "instance_name": "pool-1", "reason": "client_shutdown"})
        )
    );
    // Another service never sees it: its next event is its own apply.
    add_route(
        &mut c,
        &stranger,
        "st.example.com",
        "/",
        "http://127.0.0.1:9001",
    )
    .await;
    apply(&mut c, &stranger).await;
    let own = next_event(&mut other).await;
    assert_eq!(own.r#type, "config_applied");
    assert_eq!(own.session_id, stranger);
}

#[tokio::test]
async fn session_limit_is_resource_exhausted() {
    let app = TestApp::start_with(|config| config.max_sessions = 1).await;
    let mut c = client(&app).await;
    register(&mut c, "one", "one-1").await;
    expect_status(
        c.register(pb::RegisterRequest {
            service_name: "two".into(),
            instance_name: "two-1".into(),
            maintenance_port: 0,
            metadata: None,
        })
        .await,
        Code::ResourceExhausted,
        "too many sessions",
    );
    // Replacing is never refused by the limit.
    register(&mut c, "one", "one-1").await;
}

#[tokio::test]
async fn a_slow_subscriber_gets_a_lagged_notice() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "slow", "slow-1").await;
    // Open the stream and do not read it.
    let mut stream = subscribe(&mut c, &sid, &["all"]).await;
    let mut other = client(&app).await;
    // Each MaintEnter ALL (built-in page, no routes) emits two events: the synchronous
    // `maintenance_changed` and its confirmation. Go on until the session reports drops.
    let mut cycles = 0;
    loop {
        for _ in 0..100 {
            ok(
                other
                    .maint_enter(pb::MaintEnterRequest {
                        session_id: sid.clone(),
                        target: "ALL".into(),
                        page_url: String::new(),
                    })
                    .await,
                "MaintEnter",
            );
        }
        cycles += 100;
        let dropped = ok(other.session_info(sreq(&sid)).await, "SessionInfo").events_dropped;
        if dropped > 0 {
            break;
        }
        assert!(
            cycles < 20_000,
            "no event was ever dropped for the unread stream"
        );
    }
    // Read everything the stream has; it must carry a `lagged` notice in place of the drops.
    let mut items = Vec::new();
    while let Some(event) = try_next_event(&mut stream, Duration::from_secs(2)).await {
        items.push(event);
    }
    let lagged: Vec<&pb::Event> = items.iter().filter(|e| e.r#type == "lagged").collect();
    assert!(
        !lagged.is_empty(),
        "read {} items after the drops without any `lagged` notice (the notice waits for a \
         later event)",
        items.len()
    );
    let notice = lagged[0];
    assert_eq!(notice.session_id, sid);
    assert_eq!(notice.route_id, "");
    let payload = notice.payload.as_ref().map(json_of).expect("payload");
    assert_eq!(keys_of(&notice.payload), ["dropped"]);
    let dropped = payload["dropped"].as_u64().expect("dropped is a number");
    assert!(dropped > 0);
    // In their place: the seq gap around the notice is exactly the number dropped.
    let at = items
        .iter()
        .position(|e| e.r#type == "lagged")
        .expect("position");
    if at > 0 && at + 1 < items.len() {
        let (before, after) = (&items[at - 1], &items[at + 1]);
        assert_eq!(
            after.seq - before.seq - 1,
            dropped,
            "events between seq {} and {} were dropped",
            before.seq,
            after.seq
        );
    }
    let total: u64 = lagged
        .iter()
        .map(|e| {
            json_of(e.payload.as_ref().expect("payload"))["dropped"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    let info = ok(other.session_info(sreq(&sid)).await, "SessionInfo");
    assert_eq!(
        info.events_dropped, total,
        "events_dropped counts exactly the events the notices announced"
    );
}

#[tokio::test]
async fn lagged_notice_arrives_once_another_event_follows() {
    // The weaker form of the previous test: after the drops, one more event is caused; the
    // notice must be on the stream before that event.
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let sid = register_quiet(&mut c, "slow", "slow-1").await;
    let mut stream = subscribe(&mut c, &sid, &["all"]).await;
    let mut other = client(&app).await;
    let enter = |sid: &str| pb::MaintEnterRequest {
        session_id: sid.to_string(),
        target: "ALL".into(),
        page_url: String::new(),
    };
    let mut cycles = 0;
    while ok(other.session_info(sreq(&sid)).await, "SessionInfo").events_dropped == 0 {
        for _ in 0..100 {
            ok(other.maint_enter(enter(&sid)).await, "MaintEnter");
        }
        cycles += 100;
        assert!(
            cycles < 20_000,
            "no event was ever dropped for the unread stream"
        );
    }
    let mut items = Vec::new();
    while let Some(event) = try_next_event(&mut stream, Duration::from_secs(2)).await {
        items.push(event);
    }
    ok(
        other.maint_enter(enter(&sid)).await,
        "MaintEnter after the reader caught up",
    );
    while let Some(event) = try_next_event(&mut stream, Duration::from_secs(2)).await {
        items.push(event);
    }
    let lagged = items
        .iter()
        .find(|e| e.r#type == "lagged")
        .expect("a lagged notice on the stream");
    assert_eq!(lagged.session_id, sid);
    assert!(
        json_of(lagged.payload.as_ref().expect("payload"))["dropped"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{lagged:?}"
    );
    let announced: u64 = items
        .iter()
        .filter(|e| e.r#type == "lagged")
        .map(|e| {
            json_of(e.payload.as_ref().expect("payload"))["dropped"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    let counted = ok(other.session_info(sreq(&sid)).await, "SessionInfo").events_dropped;
    assert_eq!(
        counted, announced,
        "events_dropped counts the events the notices announced"
    );
}

// ---------------------------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_list_sessions_route_table_and_stats() {
    let app = TestApp::start().await;
    let backend = Backend::start("adm").await;
    let mut c = client(&app).await;
    let mut a = admin(&app).await;
    assert!(ok(a.list_sessions(pb::Empty {}).await, "ListSessions")
        .sessions
        .is_empty());
    let s1 = register_quiet(&mut c, "one", "one-1").await;
    let s2 = register_quiet(&mut c, "two", "two-1").await;
    let r1 = add_route(&mut c, &s1, "one.example.com", "/", &backend.url()).await;
    apply(&mut c, &s1).await;
    let r2 = ok(
        c.route_add(pb::RouteAddRequest {
            priority: 3,
            ..route_req(&s2, &["two.example.com"], "/api", &backend.url())
        })
        .await,
        "RouteAdd",
    )
    .route_id;
    apply(&mut c, &s2).await;
    add_route(&mut c, &s2, "staged.example.com", "/", &backend.url()).await;

    let sessions = ok(a.list_sessions(pb::Empty {}).await, "ListSessions").sessions;
    assert_eq!(sessions.len(), 2);
    let one = sessions
        .iter()
        .find(|s| s.session_id == s1)
        .expect("session one listed");
    let fresh = ok(c.session_info(sreq(&s1)).await, "SessionInfo");
    assert_eq!(
        one,
        &pb::SessionInfoReply {
            uptime_seconds: one.uptime_seconds,
            last_activity: one.last_activity,
            ..fresh
        },
        "ListSessions shows SessionInfo messages"
    );
    let two = sessions
        .iter()
        .find(|s| s.session_id == s2)
        .expect("session two listed");
    assert_eq!(two.service_name, "two");
    assert_eq!((two.routes_active, two.routes_staged), (1, 1));

    let mut table = ok(a.get_route_table(pb::Empty {}).await, "GetRouteTable").routes;
    table.sort_by(|x, y| x.route_id.cmp(&y.route_id));
    assert_eq!(
        table,
        vec![
            pb::TableRoute {
                session_id: s1.clone(),
                service_name: "one".into(),
                route_id: r1.clone(),
                domains: vec!["one.example.com".into()],
                path: "/".into(),
                backend_url: backend.url(),
                priority: 0,
                status: "active".into(),
            },
            pb::TableRoute {
                session_id: s2.clone(),
                service_name: "two".into(),
                route_id: r2.clone(),
                domains: vec!["two.example.com".into()],
                path: "/api".into(),
                backend_url: backend.url(),
                priority: 3,
                status: "active".into(),
            },
        ],
        "the live table: staged-only routes are not in it"
    );

    assert_eq!(
        get(app.proxy_addr(), "one.example.com", "/").await.status,
        200
    );
    let mut a2 = a.clone();
    wait_until(|| {
        let mut a2 = a2.clone();
        async move {
            a2.get_stats(pb::Empty {})
                .await
                .map(|r| {
                    r.into_inner()
                        .stats
                        .iter()
                        .any(|s| s.stats.as_ref().is_some_and(|st| st.requests == 1))
                })
                .unwrap_or(false)
        }
    })
    .await;
    let mut stats = ok(a2.get_stats(pb::Empty {}).await, "GetStats").stats;
    stats.sort_by(|x, y| x.session_id.cmp(&y.session_id));
    assert_eq!(stats.len(), 2, "every active route: {stats:?}");
    let first = stats
        .iter()
        .find(|s| s.session_id == s1)
        .expect("stats of session one");
    assert_eq!(first.service_name, "one");
    let st = first.stats.as_ref().expect("stats");
    assert_eq!(st.route_id, r1);
    assert_eq!(st.requests, 1);
    assert_eq!(st.status_codes.get(&200), Some(&1));
    let second = stats
        .iter()
        .find(|s| s.session_id == s2)
        .expect("stats of session two");
    assert_eq!(second.service_name, "two");
    assert_eq!(second.stats.as_ref().expect("stats").route_id, r2);
}

#[tokio::test]
async fn admin_watch_events_sees_every_session_and_filters_types() {
    let app = TestApp::start().await;
    let mut c = client(&app).await;
    let mut a = admin(&app).await;
    let mut everything = ok(
        a.watch_events(pb::WatchEventsRequest {
            event_types: vec![],
        })
        .await,
        "WatchEvents",
    );
    let mut applied_only = ok(
        a.watch_events(pb::WatchEventsRequest {
            event_types: vec!["config_applied".into()],
        })
        .await,
        "WatchEvents config_applied",
    );
    expect_status(
        a.watch_events(pb::WatchEventsRequest {
            event_types: vec!["nope".into()],
        })
        .await,
        Code::InvalidArgument,
        "unknown event type: nope",
    );

    let s1 = register_quiet(&mut c, "one", "one-1").await;
    let s2 = register_quiet(&mut c, "two", "two-1").await;
    let r1 = add_route(&mut c, &s1, "w1.example.com", "/", "http://127.0.0.1:9001").await;
    apply(&mut c, &s1).await;
    let r2 = add_route(&mut c, &s2, "w2.example.com", "/", "http://127.0.0.1:9001").await;
    apply(&mut c, &s2).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let e = next_event(&mut everything).await;
        seen.push((e.r#type.clone(), e.session_id.clone(), e.route_id.clone()));
    }
    assert_eq!(
        seen,
        vec![
            ("route_added".to_string(), s1.clone(), r1.clone()),
            ("config_applied".to_string(), s1.clone(), String::new()),
            ("route_added".to_string(), s2.clone(), r2.clone()),
            ("config_applied".to_string(), s2.clone(), String::new()),
        ],
        "no subscription needed: every session's events"
    );
    let e1 = next_event(&mut applied_only).await;
    let e2 = next_event(&mut applied_only).await;
    assert_eq!(
        (e1.r#type.as_str(), e1.session_id.as_str()),
        ("config_applied", s1.as_str())
    );
    assert_eq!(
        (e2.r#type.as_str(), e2.session_id.as_str()),
        ("config_applied", s2.as_str())
    );
}

// ---------------------------------------------------------------------------------------------
// Health and reflection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_service_reports_serving_and_not_found() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let app = TestApp::start().await;
    let mut h = HealthClient::new(channel(&app).await);
    for service in ["", "switchyard.v2.Registry", "switchyard.v2.Admin"] {
        let reply = ok(
            h.check(HealthCheckRequest {
                service: service.into(),
            })
            .await,
            service,
        );
        assert_eq!(
            reply.status,
            ServingStatus::Serving as i32,
            "health of `{service}`"
        );
    }
    let unknown = h
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    match unknown {
        Ok(reply) => panic!("unknown service answered {:?}", reply.get_ref()),
        Err(status) => assert_eq!(status.code(), Code::NotFound),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_services() {
    let app = TestApp::start().await;
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;

        let mut r = ServerReflectionClient::new(channel(&app).await);
        let requests = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "switchyard.v2.Registry".into(),
                )),
            },
        ];
        let mut replies = ok(
            r.server_reflection_info(tokio_stream::iter(requests)).await,
            "ServerReflectionInfo v1",
        );
        let first = replies.message().await.expect("reply").expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("v1: not a list_services reply: {first:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for wanted in ["switchyard.v2.Registry", "switchyard.v2.Admin"] {
            assert!(
                names.iter().any(|n| n == wanted),
                "v1 lists {wanted}: {names:?}"
            );
        }
        let second = replies
            .message()
            .await
            .expect("reply")
            .expect("two replies");
        let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
            panic!("v1: not a file descriptor reply: {second:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty());

        // grpcurl resolves the imports by file name: they must be served too.
        let imports = [
            "google/protobuf/duration.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/timestamp.proto",
        ];
        let requests: Vec<ServerReflectionRequest> = imports
            .iter()
            .map(|name| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileByFilename(name.to_string())),
            })
            .collect();
        let mut replies = ok(
            r.server_reflection_info(tokio_stream::iter(requests)).await,
            "ServerReflectionInfo v1 imports",
        );
        for name in imports {
            let reply = replies.message().await.expect("reply").expect("a reply");
            match reply.message_response {
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    assert!(!files.file_descriptor_proto.is_empty(), "{name}")
                }
                other => panic!("reflection cannot serve {name}: {other:?}"),
            }
        }
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

        let mut r = ServerReflectionClient::new(channel(&app).await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ok(
            r.server_reflection_info(tokio_stream::iter(vec![request]))
                .await,
            "ServerReflectionInfo v1alpha",
        );
        let first = replies.message().await.expect("reply").expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
            panic!("v1alpha: not a list_services reply: {first:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == "switchyard.v2.Registry"),
            "v1alpha lists the Registry: {names:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Front lease (PROTOCOL §2.5, API.md "Sessions on gRPC and HTTP")
// ---------------------------------------------------------------------------------------------

async fn short_lease_app() -> TestApp {
    TestApp::start_with(|config| {
        config.session_lease = Duration::from_millis(300);
        config.session_grace = Duration::from_millis(300);
    })
    .await
}

/// A session registered over gRPC serving `host` from `backend`, checked to serve once.
async fn serving_session(app: &TestApp, c: &mut Client, host: &str, backend: &Backend) -> String {
    let sid = register_quiet(c, "lease", "lease-1").await;
    add_route(c, &sid, host, "/", &backend.url()).await;
    apply(c, &sid).await;
    // Serving (a Ping first, so a slow machine does not see a lapsed lease here).
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        ok(c.ping(sreq(&sid)).await, "Ping");
        if get(app.proxy_addr(), host, "/").await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the session never served {host}");
    }
    sid
}

async fn proxy_status(app: &TestApp, host: &str) -> u16 {
    get(app.proxy_addr(), host, "/").await.status
}

/// Waits until a request for `host` through the proxy answers `status`.
async fn wait_for_status(app: &TestApp, host: &str, status: u16) {
    let addr = app.proxy_addr();
    let host = host.to_string();
    wait_until(|| {
        let host = host.clone();
        async move { get(addr, &host, "/").await.status == status }
    })
    .await;
}

#[tokio::test]
async fn the_front_lease_lapses_then_the_session_expires() {
    let app = short_lease_app().await;
    let backend = Backend::start("lease").await;
    let mut c = client(&app).await;
    let sid = serving_session(&app, &mut c, "lease.example.com", &backend).await;
    let mut a = admin(&app).await;

    // No calls: the lease lapses, routes are disabled (503), then the grace ends.
    wait_for_status(&app, "lease.example.com", 503).await;
    wait_until(|| {
        let mut a = a.clone();
        let sid = sid.clone();
        async move { !session_ids(&mut a).await.contains(&sid) }
    })
    .await;
    assert_eq!(
        proxy_status(&app, "lease.example.com").await,
        404,
        "expired: its routes left the proxy"
    );
    expect_status(
        c.session_info(sreq(&sid)).await,
        Code::NotFound,
        "session not found",
    );
    assert!(ok(c.reconnect(sreq(&sid)).await, "Reconnect").reregister);
    assert!(session_ids(&mut a).await.is_empty());
}

#[tokio::test]
async fn a_call_within_the_grace_reconnects() {
    let app = short_lease_app().await;
    let backend = Backend::start("lease").await;
    let mut c = client(&app).await;
    let sid = serving_session(&app, &mut c, "re.example.com", &backend).await;
    wait_for_status(&app, "re.example.com", 503).await;
    ok(c.ping(sreq(&sid)).await, "Ping within the grace");
    assert_eq!(
        proxy_status(&app, "re.example.com").await,
        200,
        "the call renewed the front lease and re-enabled the routes"
    );
}

#[tokio::test]
async fn pings_within_the_lease_keep_the_session() {
    let app = short_lease_app().await;
    let backend = Backend::start("lease").await;
    let mut c = client(&app).await;
    let sid = serving_session(&app, &mut c, "ping.example.com", &backend).await;
    // Keep-alive every 75 ms for well over lease + grace (600 ms).
    let until = Instant::now() + Duration::from_millis(1500);
    let mut tick = tokio::time::interval(Duration::from_millis(75));
    while Instant::now() < until {
        tick.tick().await;
        ok(c.ping(sreq(&sid)).await, "Ping");
        assert_eq!(
            proxy_status(&app, "ping.example.com").await,
            200,
            "pinged within the lease: still connected"
        );
    }
    // Stop pinging: it lapses.
    wait_for_status(&app, "ping.example.com", 503).await;
}

#[tokio::test]
async fn an_open_subscribe_stream_keeps_the_session_connected() {
    let app = short_lease_app().await;
    let backend = Backend::start("lease").await;
    let mut c = client(&app).await;
    let sid = serving_session(&app, &mut c, "stream.example.com", &backend).await;
    let stream = subscribe(&mut c, &sid, &["all"]).await;
    let until = Instant::now() + Duration::from_millis(1500);
    let mut tick = tokio::time::interval(Duration::from_millis(75));
    while Instant::now() < until {
        tick.tick().await;
        assert_eq!(
            proxy_status(&app, "stream.example.com").await,
            200,
            "the open stream holds the session connected"
        );
    }
    let mut a = admin(&app).await;
    assert!(session_ids(&mut a).await.contains(&sid));
    drop(stream);
    wait_for_status(&app, "stream.example.com", 503).await;
    wait_until(|| {
        let mut a = a.clone();
        let sid = sid.clone();
        async move { !session_ids(&mut a).await.contains(&sid) }
    })
    .await;
}

#[tokio::test]
async fn a_lapsed_front_session_expires_with_the_right_reason() {
    let app = short_lease_app().await;
    let mut c = client(&app).await;
    // A peer of the same service, held connected by its own open stream.
    let peer = register(&mut c, "exp", "exp-peer").await;
    let mut events = subscribe(&mut c, &peer, &["session_expired"]).await;
    let conn_mode = register(&mut c, "exp", "exp-1").await;
    let lease_mode = ok(
        c.register(pb::RegisterRequest {
            service_name: "exp".into(),
            instance_name: "exp-2".into(),
            maintenance_port: 0,
            metadata: Some(struct_of(json!({"liveness": "lease"}))),
        })
        .await,
        "Register lease mode",
    )
    .session_id;
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let e = next_event(&mut events).await;
        assert_eq!(e.r#type, "session_expired");
        let payload = e.payload.as_ref().map(json_of).expect("payload");
        reasons.push((e.session_id.clone(), payload["reason"].clone()));
    }
    reasons.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (conn_mode.clone(), json!("grace_expired")),
        (lease_mode.clone(), json!("lease_expired")),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(reasons, expected);
    // The peer, held by its stream, is still there.
    let mut a = admin(&app).await;
    assert_eq!(session_ids(&mut a).await, vec![peer]);
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_an_auth_token_every_call_needs_the_bearer() {
    let app = TestApp::start_with(|config| config.auth_token = Some("t".into())).await;
    let mut c = client(&app).await;
    let denied = "permission denied: invalid auth token";
    let register_req = || pb::RegisterRequest {
        service_name: "sec".into(),
        instance_name: "sec-1".into(),
        maintenance_port: 0,
        metadata: Some(struct_of(json!({"auth_token": "t", "team": "x"}))),
    };
    // The metadata token does not count on gRPC: the bearer is required.
    expect_status(
        c.register(register_req()).await,
        Code::PermissionDenied,
        denied,
    );
    expect_status(
        c.register(with_token(register_req(), "wrong")).await,
        Code::PermissionDenied,
        denied,
    );
    let sid = ok(
        c.register(with_token(register_req(), "t")).await,
        "Register with the bearer",
    )
    .session_id;
    expect_status(c.ping(sreq(&sid)).await, Code::PermissionDenied, denied);
    expect_status(
        c.session_info(sreq(&sid)).await,
        Code::PermissionDenied,
        denied,
    );
    let info = ok(
        c.session_info(with_token(sreq(&sid), "t")).await,
        "SessionInfo with the bearer",
    );
    assert_eq!(
        info.metadata.as_ref().map(json_of),
        Some(json!({"team": "x"})),
        "the metadata auth_token is removed"
    );
    ok(
        c.ping(with_token(sreq(&sid), "t")).await,
        "Ping with the bearer",
    );
    // Admin takes the auth token when no admin token is set.
    let mut a = admin(&app).await;
    expect_status(
        a.list_sessions(pb::Empty {}).await,
        Code::PermissionDenied,
        denied,
    );
    let sessions = ok(
        a.list_sessions(with_token(pb::Empty {}, "t")).await,
        "ListSessions with the auth token",
    )
    .sessions;
    assert_eq!(sessions.len(), 1);
    // With auth on, BackendTest needs a live session.
    expect_status(
        c.backend_test(with_token(
            pb::BackendTestRequest {
                session_id: None,
                backend_url: "http://127.0.0.1:9".into(),
            },
            "t",
        ))
        .await,
        Code::InvalidArgument,
        "no session",
    );
}

#[tokio::test]
async fn admin_calls_take_the_admin_token_when_set() {
    let app = TestApp::start_with(|config| {
        config.auth_token = Some("t".into());
        config.admin_token = Some("a".into());
    })
    .await;
    let mut a = admin(&app).await;
    let denied = "permission denied: invalid auth token";
    expect_status(
        a.list_sessions(with_token(pb::Empty {}, "t")).await,
        Code::PermissionDenied,
        denied,
    );
    ok(
        a.list_sessions(with_token(pb::Empty {}, "a")).await,
        "ListSessions with the admin token",
    );
    ok(
        a.get_route_table(with_token(pb::Empty {}, "a")).await,
        "GetRouteTable with the admin token",
    );
    ok(
        a.get_stats(with_token(pb::Empty {}, "a")).await,
        "GetStats with the admin token",
    );
    expect_status(
        a.watch_events(pb::WatchEventsRequest {
            event_types: vec![],
        })
        .await,
        Code::PermissionDenied,
        denied,
    );
    ok(
        a.watch_events(with_token(
            pb::WatchEventsRequest {
                event_types: vec![],
            },
            "a",
        ))
        .await,
        "WatchEvents with the admin token",
    );
}
