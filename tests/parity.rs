//! One registry, three fronts: the same scenario and the same errors through the pipe, gRPC and HTTP give the same state, messages and consistent codes; sessions cross fronts (API.md, PROTOCOL §2.5).

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use switchyard::grpc::pb;
use switchyard::grpc::pb::registry_client::RegistryClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

// ---------------------------------------------------------------------------------------------
// A driver per front
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Front {
    Pipe,
    Grpc,
    Http,
}

const FRONTS: [Front; 3] = [Front::Pipe, Front::Grpc, Front::Http];

impl Front {
    fn name(self) -> &'static str {
        match self {
            Front::Pipe => "pipe",
            Front::Grpc => "grpc",
            Front::Http => "http",
        }
    }

    /// A word for names and domains that occurs nowhere else (not in URLs).
    fn token(self) -> &'static str {
        match self {
            Front::Pipe => "frontpipe",
            Front::Grpc => "frontgrpc",
            Front::Http => "fronthttp",
        }
    }
}

/// How a front said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Pipe,
    Grpc(Code),
    Http(u16, &'static str),
}

#[derive(Debug, Clone)]
struct Failure {
    class: Class,
    message: String,
}

type Res<T> = Result<T, Failure>;

/// gRPC code → (HTTP status, snake_case code), API.md's status mapping.
fn http_of(code: Code) -> (u16, &'static str) {
    match code {
        Code::InvalidArgument => (400, "invalid_argument"),
        Code::PermissionDenied => (403, "permission_denied"),
        Code::NotFound => (404, "not_found"),
        Code::FailedPrecondition => (409, "failed_precondition"),
        Code::AlreadyExists => (409, "already_exists"),
        Code::ResourceExhausted => (429, "resource_exhausted"),
        Code::Unavailable => (503, "unavailable"),
        Code::Internal => (500, "internal"),
        other => panic!("no HTTP mapping for {other:?}"),
    }
}

fn code_name(code: &str) -> &'static str {
    match code {
        "invalid_argument" => "invalid_argument",
        "permission_denied" => "permission_denied",
        "not_found" => "not_found",
        "failed_precondition" => "failed_precondition",
        "already_exists" => "already_exists",
        "resource_exhausted" => "resource_exhausted",
        "unavailable" => "unavailable",
        "internal" => "internal",
        other => panic!("unexpected error code {other}"),
    }
}

/// A duration argument: the pipe's text; gRPC gets the typed value when the text is a plain
/// `<n>s`/`<n>`, else a negative (malformed) Duration.
fn grpc_duration(text: &str) -> Option<prost_types::Duration> {
    let digits = text.strip_suffix('s').unwrap_or(text);
    match digits.parse::<i64>() {
        Ok(seconds) => Some(prost_types::Duration { seconds, nanos: 0 }),
        Err(_) => Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        }),
    }
}

struct Driver {
    front: Front,
    api: SocketAddr,
    grpc: RegistryClient<Channel>,
    pipe: Pipe,
}

fn g<T>(result: Result<Response<T>, Status>) -> Res<T> {
    result.map(Response::into_inner).map_err(|s| Failure {
        class: Class::Grpc(s.code()),
        message: s.message().to_string(),
    })
}

/// A pipe reply: `token` or `token|payload` → the payload; `ERROR|m` → a failure.
#[track_caller]
fn p(reply: String, token: &str) -> Res<String> {
    if let Some(message) = reply.strip_prefix("ERROR|") {
        return Err(Failure {
            class: Class::Pipe,
            message: message.to_string(),
        });
    }
    if reply == token {
        return Ok(String::new());
    }
    match reply.strip_prefix(token).and_then(|r| r.strip_prefix('|')) {
        Some(payload) => Ok(payload.to_string()),
        None => panic!("expected {token}, got {reply}"),
    }
}

fn pj(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("bad pipe JSON ({e}): {payload}"))
}

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(_) => json!("<ts>"),
        None => Value::Null,
    }
}

fn json_of_struct(s: &prost_types::Struct) -> Value {
    fn conv(v: &prost_types::Value) -> Value {
        use prost_types::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::BoolValue(b)) => json!(b),
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 => json!(*n as i64),
            Some(Kind::NumberValue(n)) => json!(n),
            Some(Kind::StringValue(s)) => json!(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(conv).collect()),
            Some(Kind::StructValue(s)) => json_of_struct(s),
        }
    }
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), conv(v)))
            .collect::<Map<String, Value>>(),
    )
}

fn route_json(r: &pb::RouteInfo) -> Value {
    json!({
        "route_id": r.route_id, "id": r.id, "domains": r.domains, "path": r.path,
        "backend": r.backend, "backend_url": r.backend_url, "priority": r.priority,
        "status": r.status, "in_maintenance": r.in_maintenance, "healthy": r.healthy,
        "active": r.active.as_ref().map(|a| json!({
            "domains": a.domains, "path": a.path, "backend": a.backend, "priority": a.priority
        })),
    })
}

fn session_json(s: &pb::SessionInfoReply) -> Value {
    json!({
        "session_id": s.session_id, "service_name": s.service_name,
        "instance_name": s.instance_name, "maintenance_port": s.maintenance_port,
        "connected_at": ts(&s.connected_at), "uptime_seconds": s.uptime_seconds,
        "last_activity": ts(&s.last_activity), "last_apply": ts(&s.last_apply),
        "routes_active": s.routes_active, "routes_staged": s.routes_staged,
        "metadata": s.metadata.as_ref().map(json_of_struct),
        "subscriptions": s.subscriptions, "liveness": s.liveness,
        "connections": s.connections, "draining": s.draining,
        "in_maintenance": s.in_maintenance, "staged_expires_at": ts(&s.staged_expires_at),
        "ignored_options": s.ignored_options, "events_dropped": s.events_dropped,
    })
}

fn stats_json(s: &pb::RouteStats) -> Value {
    let codes: Map<String, Value> = s
        .status_codes
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "route_id": s.route_id, "requests": s.requests, "errors": s.errors,
        "avg_latency_ms": s.avg_latency_ms, "p95_latency_ms": s.p95_latency_ms,
        "p99_latency_ms": s.p99_latency_ms, "bytes_sent": s.bytes_sent,
        "bytes_received": s.bytes_received, "status_codes": codes,
        "rate_limited": s.rate_limited, "unavailable": s.unavailable, "since": ts(&s.since),
    })
}

impl Driver {
    async fn new(app: &TestApp, front: Front) -> Driver {
        Driver {
            front,
            api: app.api_addr(),
            grpc: RegistryClient::connect(format!("http://{}", app.api_addr()))
                .await
                .expect("gRPC connects"),
            pipe: app.pipe().await,
        }
    }

    /// One HTTP call; a status ≥ 400 is a failure (whose body must be the error shape).
    async fn http(&self, method: &str, path: &str, body: Value) -> Res<Value> {
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let reply = http_request(
            self.api,
            method,
            Some("127.0.0.1"),
            path,
            &[("content-type", "application/json")],
            &text,
        )
        .await;
        let value: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {reply:?}"));
        if reply.status >= 400 {
            let keys: Vec<&String> = value.as_object().expect("error object").keys().collect();
            assert_eq!(keys, ["code", "message"], "error body of {method} {path}");
            return Err(Failure {
                class: Class::Http(
                    reply.status,
                    code_name(value["code"].as_str().expect("code")),
                ),
                message: value["message"].as_str().expect("message").to_string(),
            });
        }
        Ok(value)
    }

    async fn register(&mut self, service: &str, instance: &str) -> String {
        match self.front {
            Front::Pipe => self.pipe.register(service, instance).await,
            Front::Grpc => {
                g(self
                    .grpc
                    .register(pb::RegisterRequest {
                        service_name: service.into(),
                        instance_name: instance.into(),
                        maintenance_port: 0,
                        metadata: None,
                    })
                    .await)
                .expect("Register")
                .session_id
            }
            Front::Http => self
                .http(
                    "POST",
                    "/v2/sessions",
                    json!({"service_name": service, "instance_name": instance}),
                )
                .await
                .expect("Register")["session_id"]
                .as_str()
                .expect("session_id")
                .to_string(),
        }
    }

    async fn route_add(
        &mut self,
        sid: &str,
        domains: &[&str],
        path: &str,
        backend: &str,
        priority: i32,
    ) -> Res<String> {
        match self.front {
            Front::Pipe => p(
                self.pipe
                    .cmd(&format!(
                        "ROUTE_ADD|{sid}|{}|{path}|{backend}|{priority}",
                        domains.join(",")
                    ))
                    .await,
                "ROUTE_OK",
            ),
            Front::Grpc => g(self
                .grpc
                .route_add(pb::RouteAddRequest {
                    session_id: sid.into(),
                    domains: domains.iter().map(|d| d.to_string()).collect(),
                    path: path.into(),
                    backend_url: backend.into(),
                    priority,
                })
                .await)
            .map(|r| r.route_id),
            Front::Http => self
                .http(
                    "POST",
                    &format!("/v2/sessions/{sid}/routes"),
                    json!({"domains": domains, "path": path, "backend_url": backend, "priority": priority}),
                )
                .await
                .map(|v| v["route_id"].as_str().expect("route_id").to_string()),
        }
    }

    async fn route_update(&mut self, sid: &str, rid: &str, field: &str, value: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe
                    .cmd(&format!("ROUTE_UPDATE|{sid}|{rid}|{field}|{value}"))
                    .await,
                "ROUTE_OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .route_update(pb::RouteUpdateRequest {
                    session_id: sid.into(),
                    route_id: rid.into(),
                    field: field.into(),
                    value: value.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "PATCH",
                    &format!("/v2/sessions/{sid}/routes/{rid}"),
                    json!({"field": field, "value": value}),
                )
                .await
                .map(drop),
        }
    }

    async fn route_remove(&mut self, sid: &str, rid: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe.cmd(&format!("ROUTE_REMOVE|{sid}|{rid}")).await,
                "ROUTE_OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .route_remove(pb::RouteRequest {
                    session_id: sid.into(),
                    route_id: rid.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "DELETE",
                    &format!("/v2/sessions/{sid}/routes/{rid}"),
                    Value::Null,
                )
                .await
                .map(drop),
        }
    }

    async fn route_list(&mut self, sid: &str) -> Res<Vec<Value>> {
        match self.front {
            Front::Pipe => p(
                self.pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
                "ROUTE_LIST_OK",
            )
            .map(|payload| pj(&payload).as_array().expect("array").clone()),
            Front::Grpc => g(self
                .grpc
                .route_list(pb::SessionRequest {
                    session_id: sid.into(),
                })
                .await)
            .map(|r| r.routes.iter().map(route_json).collect()),
            Front::Http => self
                .http("GET", &format!("/v2/sessions/{sid}/routes"), Value::Null)
                .await
                .map(|v| v["routes"].as_array().expect("routes").clone()),
        }
    }

    async fn headers_set(&mut self, sid: &str, target: &str, name: &str, value: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe
                    .cmd(&format!("HEADERS_SET|{sid}|{target}|{name}|{value}"))
                    .await,
                "HEADERS_OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .headers_set(pb::HeadersSetRequest {
                    session_id: sid.into(),
                    target: target.into(),
                    header_name: name.into(),
                    header_value: value.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "PUT",
                    &format!("/v2/sessions/{sid}/headers/{target}/{name}"),
                    json!({ "value": value }),
                )
                .await
                .map(drop),
        }
    }

    async fn options_set(&mut self, sid: &str, target: &str, key: &str, value: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe
                    .cmd(&format!("OPTIONS_SET|{sid}|{target}|{key}|{value}"))
                    .await,
                "OPTIONS_OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .options_set(pb::OptionsSetRequest {
                    session_id: sid.into(),
                    target: target.into(),
                    key: key.into(),
                    value: value.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "PUT",
                    &format!("/v2/sessions/{sid}/options/{target}/{key}"),
                    json!({ "value": value }),
                )
                .await
                .map(drop),
        }
    }

    async fn apply(&mut self, sid: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(self.pipe.cmd(&format!("CONFIG_APPLY|{sid}")).await, "OK").map(drop),
            Front::Grpc => g(self
                .grpc
                .config_apply(pb::SessionRequest {
                    session_id: sid.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "POST",
                    &format!("/v2/sessions/{sid}/config/apply"),
                    Value::Null,
                )
                .await
                .map(drop),
        }
    }

    async fn apply_partial(&mut self, sid: &str, scopes: &[&str]) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe
                    .cmd(&format!("CONFIG_APPLY_PARTIAL|{sid}|{}", scopes.join(",")))
                    .await,
                "OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .config_apply_partial(pb::ConfigApplyPartialRequest {
                    session_id: sid.into(),
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "POST",
                    &format!("/v2/sessions/{sid}/config/apply-partial"),
                    json!({ "scopes": scopes }),
                )
                .await
                .map(drop),
        }
    }

    /// MAINT_ENTER; on the pipe also reads the completion (`MAINT_OK|<target>`).
    async fn maint_enter(&mut self, sid: &str, target: &str, page: &str) -> Res<()> {
        match self.front {
            Front::Pipe => {
                p(
                    self.pipe
                        .cmd(&format!("MAINT_ENTER|{sid}|{target}|{page}"))
                        .await,
                    "ACK",
                )?;
                assert_eq!(self.pipe.recv().await, format!("MAINT_OK|{target}"));
                Ok(())
            }
            Front::Grpc => g(self
                .grpc
                .maint_enter(pb::MaintEnterRequest {
                    session_id: sid.into(),
                    target: target.into(),
                    page_url: page.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "POST",
                    &format!("/v2/sessions/{sid}/maintenance"),
                    json!({"target": target, "page_url": page}),
                )
                .await
                .map(drop),
        }
    }

    async fn maint_exit(&mut self, sid: &str, target: &str) -> Res<()> {
        match self.front {
            Front::Pipe => {
                p(
                    self.pipe.cmd(&format!("MAINT_EXIT|{sid}|{target}")).await,
                    "ACK",
                )?;
                assert_eq!(self.pipe.recv().await, format!("MAINT_OK|{target}"));
                Ok(())
            }
            Front::Grpc => g(self
                .grpc
                .maint_exit(pb::TargetRequest {
                    session_id: sid.into(),
                    target: target.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "POST",
                    &format!("/v2/sessions/{sid}/maintenance/exit"),
                    json!({ "target": target }),
                )
                .await
                .map(drop),
        }
    }

    async fn maint_status(&mut self, sid: &str) -> Res<Value> {
        match self.front {
            Front::Pipe => p(
                self.pipe.cmd(&format!("MAINT_STATUS|{sid}")).await,
                "MAINT_STATUS_OK",
            )
            .map(|s| pj(&s)),
            Front::Grpc => g(self
                .grpc
                .maint_status(pb::SessionRequest {
                    session_id: sid.into(),
                })
                .await)
            .map(|m| {
                json!({
                    "in_maintenance": m.in_maintenance, "all": m.all,
                    "maintenance_backend": m.maintenance_backend,
                    "entered_at": ts(&m.entered_at),
                    "routes": m.routes.iter().map(|r| json!({
                        "route_id": r.route_id, "maintenance_backend": r.maintenance_backend,
                        "entered_at": ts(&r.entered_at)
                    })).collect::<Vec<_>>(),
                })
            }),
            Front::Http => {
                self.http(
                    "GET",
                    &format!("/v2/sessions/{sid}/maintenance"),
                    Value::Null,
                )
                .await
            }
        }
    }

    async fn drain_start(&mut self, sid: &str, duration: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe
                    .cmd(&format!("DRAIN_START|{sid}|{duration}"))
                    .await,
                "DRAIN_OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .drain_start(pb::DrainStartRequest {
                    session_id: sid.into(),
                    duration: grpc_duration(duration),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "POST",
                    &format!("/v2/sessions/{sid}/drain"),
                    json!({ "duration": duration }),
                )
                .await
                .map(drop),
        }
    }

    async fn drain_status(&mut self, sid: &str) -> Res<Value> {
        match self.front {
            Front::Pipe => p(
                self.pipe.cmd(&format!("DRAIN_STATUS|{sid}")).await,
                "DRAIN_STATUS_OK",
            )
            .map(|s| pj(&s)),
            Front::Grpc => g(self
                .grpc
                .drain_status(pb::SessionRequest {
                    session_id: sid.into(),
                })
                .await)
            .map(|d| {
                json!({
                    "active": d.active, "completed": d.completed,
                    "started_at": ts(&d.started_at), "completes_at": ts(&d.completes_at),
                    "duration_seconds": d.duration_seconds, "elapsed_seconds": d.elapsed_seconds,
                    "remaining_seconds": d.remaining_seconds, "start_percent": d.start_percent,
                    "traffic_percent": d.traffic_percent,
                })
            }),
            Front::Http => {
                self.http("GET", &format!("/v2/sessions/{sid}/drain"), Value::Null)
                    .await
            }
        }
    }

    async fn drain_cancel(&mut self, sid: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe.cmd(&format!("DRAIN_CANCEL|{sid}")).await,
                "DRAIN_OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .drain_cancel(pb::SessionRequest {
                    session_id: sid.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http("DELETE", &format!("/v2/sessions/{sid}/drain"), Value::Null)
                .await
                .map(drop),
        }
    }

    async fn stats(&mut self, sid: &str) -> Res<Vec<Value>> {
        match self.front {
            Front::Pipe => p(self.pipe.cmd(&format!("STATS_GET|{sid}")).await, "STATS_OK")
                .map(|s| pj(&s).as_array().expect("array").clone()),
            Front::Grpc => g(self
                .grpc
                .stats_get(pb::StatsGetRequest {
                    session_id: sid.into(),
                    target: "ALL".into(),
                })
                .await)
            .map(|r| r.stats.iter().map(stats_json).collect()),
            Front::Http => self
                .http(
                    "GET",
                    &format!("/v2/sessions/{sid}/stats?target=ALL"),
                    Value::Null,
                )
                .await
                .map(|v| v["stats"].as_array().expect("stats").clone()),
        }
    }

    async fn session_info(&mut self, sid: &str) -> Res<Value> {
        match self.front {
            Front::Pipe => p(
                self.pipe.cmd(&format!("SESSION_INFO|{sid}")).await,
                "SESSION_OK",
            )
            .map(|s| pj(&s)),
            Front::Grpc => g(self
                .grpc
                .session_info(pb::SessionRequest {
                    session_id: sid.into(),
                })
                .await)
            .map(|s| session_json(&s)),
            Front::Http => {
                self.http("GET", &format!("/v2/sessions/{sid}"), Value::Null)
                    .await
            }
        }
    }

    async fn unsubscribe(&mut self, sid: &str, kind: &str) -> Res<()> {
        match self.front {
            Front::Pipe => p(
                self.pipe.cmd(&format!("UNSUBSCRIBE|{sid}|{kind}")).await,
                "UNSUBSCRIBE_OK",
            )
            .map(drop),
            Front::Grpc => g(self
                .grpc
                .unsubscribe(pb::EventTypesRequest {
                    session_id: sid.into(),
                    event_types: vec![kind.into()],
                })
                .await)
            .map(drop),
            Front::Http => self
                .http(
                    "DELETE",
                    &format!("/v2/sessions/{sid}/events/{kind}"),
                    Value::Null,
                )
                .await
                .map(drop),
        }
    }

    /// CLIENT_SHUTDOWN (the pipe closes the connection afterwards: a new one is opened).
    async fn shutdown(&mut self, app: &TestApp, sid: &str) -> Res<()> {
        match self.front {
            Front::Pipe => {
                let result = p(
                    self.pipe.cmd(&format!("CLIENT_SHUTDOWN|{sid}")).await,
                    "SHUTDOWN_OK",
                )
                .map(drop);
                self.pipe = app.pipe().await;
                result
            }
            Front::Grpc => g(self
                .grpc
                .client_shutdown(pb::SessionRequest {
                    session_id: sid.into(),
                })
                .await)
            .map(drop),
            Front::Http => self
                .http("DELETE", &format!("/v2/sessions/{sid}"), Value::Null)
                .await
                .map(drop),
        }
    }
}

#[track_caller]
fn must<T>(result: Res<T>, what: &str, front: Front) -> T {
    result.unwrap_or_else(|f| panic!("{what} over {}: {f:?}", front.name()))
}

/// Replaces timestamps by `<ts>`, route ids by their labels, and the front's name by `F`.
fn normalize(value: &Value, front: Front, ids: &[(String, &str)]) -> Value {
    match value {
        Value::String(s) => {
            let b = s.as_bytes();
            if s.len() == 20 && b[10] == b'T' && b[19] == b'Z' {
                return json!("<ts>");
            }
            if let Some((_, label)) = ids.iter().find(|(rid, _)| rid == s) {
                return json!(label);
            }
            json!(s.replace(front.token(), "F"))
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| normalize(v, front, ids)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalize(v, front, ids)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn without(mut value: Value, keys: &[&str]) -> Value {
    if let Value::Object(map) = &mut value {
        for k in keys {
            map.remove(*k);
        }
    }
    value
}

fn sorted_keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

/// What one front's run of the scenario left behind, normalized.
#[derive(Debug)]
struct Outcome {
    routes: Value,
    session: Value,
    session_keys: Vec<String>,
    maint: Value,
    drain: Value,
    stats: Value,
}

async fn scenario(app: &TestApp, d: &mut Driver, backend: &Backend) -> Outcome {
    let f = d.front;
    let n = f.token();
    let proxy = app.proxy_addr();
    let sid = d.register(&format!("par-{n}"), &format!("par-{n}-1")).await;
    must(
        d.options_set(&sid, "ALL", "health_check_interval", "0")
            .await,
        "OptionsSet",
        f,
    );
    let host = format!("{n}.example.com");
    let ra = must(
        d.route_add(&sid, &[&host], "/", &backend.url(), 0).await,
        "RouteAdd",
        f,
    );
    let www = format!("www.{n}.example.com");
    let rb = must(
        d.route_add(&sid, &[&host, &www], "/api", &backend.url(), 10)
            .await,
        "RouteAdd",
        f,
    );
    must(
        d.headers_set(&sid, "ALL", "X-Front", "same").await,
        "HeadersSet",
        f,
    );
    must(
        d.headers_set(&sid, &rb, "X-Api", "1").await,
        "HeadersSet",
        f,
    );
    must(
        d.options_set(&sid, &ra, "timeout", "30s").await,
        "OptionsSet",
        f,
    );
    must(
        d.options_set(&sid, "ALL", "colour", "blue").await,
        "OptionsSet",
        f,
    );
    must(d.apply(&sid).await, "ConfigApply", f);
    let late = format!("late.{n}.example.com");
    let rc = must(
        d.route_add(&sid, &[&late], "/", &backend.url(), 0).await,
        "RouteAdd",
        f,
    );
    must(
        d.route_update(&sid, &rb, "priority", "20").await,
        "RouteUpdate",
        f,
    );

    for _ in 0..2 {
        let reply = get(proxy, &host, "/").await;
        assert_eq!(reply.status, 200, "{n}: {reply:?}");
        assert_eq!(reply.header("x-front"), Some("same"), "{n}");
    }
    let reply = get(proxy, &host, "/api/x").await;
    assert_eq!(reply.header("x-api"), Some("1"), "{n}: route header");

    must(d.maint_enter(&sid, &ra, "").await, "MaintEnter", f);
    let reply = get(proxy, &host, "/").await;
    assert_eq!(reply.status, 503, "{n}: maintenance");
    assert_eq!(reply.header("x-maintenance-mode"), Some("true"), "{n}");
    let maint = must(d.maint_status(&sid).await, "MaintStatus", f);
    must(d.maint_exit(&sid, &ra).await, "MaintExit", f);
    assert_eq!(
        get(proxy, &host, "/").await.status,
        200,
        "{n}: out of maintenance"
    );

    must(d.drain_start(&sid, "30s").await, "DrainStart", f);
    let drain = must(d.drain_status(&sid).await, "DrainStatus", f);
    let traffic = drain["traffic_percent"].as_u64().expect("traffic_percent");
    assert!((96..=100).contains(&traffic), "{n}: {drain}");
    must(d.drain_cancel(&sid).await, "DrainCancel", f);

    // 4 forwarded requests (3 to r_a, 1 to r_b), 1 maintenance answer.
    let deadline = Instant::now() + REPLY_WAIT;
    let stats = loop {
        let stats = must(d.stats(&sid).await, "StatsGet", f);
        let total: u64 = stats
            .iter()
            .map(|s| s["requests"].as_u64().unwrap_or(0))
            .sum();
        if total == 4 {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "{n}: stats never reached 4 requests: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let routes = must(d.route_list(&sid).await, "RouteList", f);
    let session = must(d.session_info(&sid).await, "SessionInfo", f);

    let ids = [(ra, "A"), (rb, "B"), (rc, "C")];
    let stats: Vec<Value> = stats
        .iter()
        .map(|s| {
            without(
                s.clone(),
                &["avg_latency_ms", "p95_latency_ms", "p99_latency_ms"],
            )
        })
        .collect();
    let outcome = Outcome {
        routes: normalize(&Value::Array(routes), f, &ids),
        session_keys: sorted_keys(&session),
        session: normalize(
            &without(session, &["session_id", "uptime_seconds", "connections"]),
            f,
            &ids,
        ),
        maint: normalize(&maint, f, &ids),
        drain: normalize(
            &without(
                drain,
                &["elapsed_seconds", "remaining_seconds", "traffic_percent"],
            ),
            f,
            &ids,
        ),
        stats: normalize(&Value::Array(stats), f, &ids),
    };

    must(d.shutdown(app, &sid).await, "ClientShutdown", f);
    assert_eq!(get(proxy, &host, "/").await.status, 404, "{n}: routes gone");
    // Gone for every front.
    for other in FRONTS {
        let mut reader = Driver::new(app, other).await;
        let failure = reader
            .session_info(&sid)
            .await
            .expect_err("the session ended");
        assert_eq!(
            failure.message, "session not found",
            "{n} session read over {other:?}"
        );
    }
    outcome
}

#[tokio::test]
async fn the_same_scenario_gives_the_same_state_on_every_front() {
    let app = TestApp::start().await;
    let backend = Backend::start("b").await;
    let mut outcomes = Vec::new();
    for front in FRONTS {
        let mut d = Driver::new(&app, front).await;
        outcomes.push((front, scenario(&app, &mut d, &backend).await));
    }
    let (_, reference) = &outcomes[0];
    // A sanity check of the reference itself.
    let routes = reference.routes.as_array().expect("routes");
    let statuses: Vec<&str> = routes
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        ["active", "modified", "staged"],
        "{}",
        reference.routes
    );
    assert_eq!(reference.maint["in_maintenance"], json!(["A"]));
    assert_eq!(reference.stats.as_array().map(Vec::len), Some(2));
    for (front, outcome) in &outcomes[1..] {
        assert_eq!(
            outcome.routes, reference.routes,
            "route list over {front:?} vs pipe"
        );
        assert_eq!(
            outcome.session_keys, reference.session_keys,
            "SESSION_INFO keys over {front:?} vs pipe"
        );
        assert_eq!(
            outcome.session, reference.session,
            "session info over {front:?} vs pipe"
        );
        assert_eq!(
            outcome.maint, reference.maint,
            "maintenance status over {front:?} vs pipe"
        );
        assert_eq!(
            outcome.drain, reference.drain,
            "drain status over {front:?} vs pipe"
        );
        assert_eq!(
            outcome.stats, reference.stats,
            "stats over {front:?} vs pipe"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The same errors everywhere
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Case {
    UnknownSession,
    BadDomain,
    BadUrl,
    BadDuration,
    ForeignRoute,
    Duplicate,
    NoDrain,
    RouteNotFound,
    UnknownTarget,
    ClaimedPair,
    HeaderNotAllowed,
    BadOptionValue,
    UnknownEventType,
    UnknownScope,
    ApplyConflict,
}

const CASES: [Case; 15] = [
    Case::UnknownSession,
    Case::BadDomain,
    Case::BadUrl,
    Case::BadDuration,
    Case::ForeignRoute,
    Case::Duplicate,
    Case::NoDrain,
    Case::RouteNotFound,
    Case::UnknownTarget,
    Case::ClaimedPair,
    Case::HeaderNotAllowed,
    Case::BadOptionValue,
    Case::UnknownEventType,
    Case::UnknownScope,
    Case::ApplyConflict,
];

struct ErrorWorld {
    foreign_rid: String,
}

/// Runs `case` over the driver's front for its session `sid` (which stages `dup.example.com/`
/// and `contested.example.com/` as `contested`); returns the failure and the expected message.
async fn run_case(
    d: &mut Driver,
    sid: &str,
    contested: &str,
    world: &ErrorWorld,
    case: Case,
) -> (Res<()>, String, Code) {
    let ok = "http://127.0.0.1:9001";
    match case {
        Case::UnknownSession => (
            d.route_list("nosuch").await.map(drop),
            "session not found".into(),
            Code::NotFound,
        ),
        Case::BadDomain => (
            d.route_add(sid, &["-bad"], "/", ok, 0).await.map(drop),
            "invalid domain: -bad".into(),
            Code::InvalidArgument,
        ),
        Case::BadUrl => (
            d.route_add(sid, &["x.example.com"], "/", "ftp://x", 0).await.map(drop),
            "invalid backend url format".into(),
            Code::InvalidArgument,
        ),
        Case::BadDuration => (
            d.drain_start(sid, "30S").await,
            "invalid duration".into(),
            Code::InvalidArgument,
        ),
        Case::ForeignRoute => (
            d.route_remove(sid, &world.foreign_rid).await,
            format!(
                "permission denied: route {} belongs to another session",
                world.foreign_rid
            ),
            Code::PermissionDenied,
        ),
        Case::Duplicate => (
            d.route_add(sid, &["dup.example.com"], "/", ok, 0).await.map(drop),
            "duplicate route: dup.example.com/".into(),
            Code::AlreadyExists,
        ),
        Case::NoDrain => (
            d.drain_status(sid).await.map(drop),
            "no drain in progress".into(),
            Code::FailedPrecondition,
        ),
        Case::RouteNotFound => (
            d.route_remove(sid, "r999").await,
            "route not found".into(),
            Code::NotFound,
        ),
        Case::UnknownTarget => (
            d.maint_enter(sid, "/missing", "").await,
            "unknown target: /missing".into(),
            Code::InvalidArgument,
        ),
        Case::ClaimedPair => (
            d.route_add(sid, &["claimed.example.com"], "/", ok, 0).await.map(drop),
            "permission denied: claimed.example.com/ is claimed by another service".into(),
            Code::PermissionDenied,
        ),
        Case::HeaderNotAllowed => (
            d.headers_set(sid, "ALL", "Connection", "close").await,
            "header not allowed: Connection".into(),
            Code::InvalidArgument,
        ),
        Case::BadOptionValue => (
            d.options_set(sid, "ALL", "timeout", "abc").await,
            "invalid value for timeout: abc".into(),
            Code::InvalidArgument,
        ),
        Case::UnknownEventType => (
            d.unsubscribe(sid, "nope").await,
            "unknown event type: nope".into(),
            Code::InvalidArgument,
        ),
        Case::UnknownScope => (
            d.apply_partial(sid, &["bogus"]).await,
            "unknown scope: bogus".into(),
            Code::InvalidArgument,
        ),
        Case::ApplyConflict => (
            d.apply(sid).await,
            format!(
                "route {contested}: permission denied: contested.example.com/ is claimed by another service"
            ),
            Code::FailedPrecondition,
        ),
    }
}

#[tokio::test]
async fn the_same_errors_with_the_same_messages_and_consistent_codes() {
    let app = TestApp::start().await;
    // Another service owns claimed.example.com/ and, applied after the fronts staged it,
    // contested.example.com/.
    let mut owner = Driver::new(&app, Front::Pipe).await;
    let foreign_sid = owner.register("owner", "owner-1").await;
    let foreign_rid = must(
        owner
            .route_add(
                &foreign_sid,
                &["claimed.example.com"],
                "/",
                "http://127.0.0.1:9001",
                0,
            )
            .await,
        "RouteAdd",
        Front::Pipe,
    );
    must(owner.apply(&foreign_sid).await, "ConfigApply", Front::Pipe);
    let world = ErrorWorld { foreign_rid };

    let mut drivers = Vec::new();
    for front in FRONTS {
        let mut d = Driver::new(&app, front).await;
        let sid = d.register("errs", &format!("errs-{}", front.name())).await;
        must(
            d.route_add(&sid, &["dup.example.com"], "/", "http://127.0.0.1:9001", 0)
                .await,
            "RouteAdd",
            front,
        );
        let contested = must(
            d.route_add(
                &sid,
                &["contested.example.com"],
                "/",
                "http://127.0.0.1:9001",
                0,
            )
            .await,
            "RouteAdd",
            front,
        );
        drivers.push((d, sid, contested));
    }
    must(
        owner
            .route_add(
                &foreign_sid,
                &["contested.example.com"],
                "/",
                "http://127.0.0.1:9001",
                0,
            )
            .await,
        "RouteAdd",
        Front::Pipe,
    );
    must(owner.apply(&foreign_sid).await, "ConfigApply", Front::Pipe);

    let mut problems = Vec::new();
    for case in CASES {
        for (d, sid, contested) in drivers.iter_mut() {
            let (result, message, code) = run_case(d, sid, contested, &world, case).await;
            let front = d.front;
            let Err(failure) = result else {
                problems.push(format!("{case:?} over {front:?}: succeeded"));
                continue;
            };
            if failure.message != message {
                problems.push(format!(
                    "{case:?} over {front:?}: message `{}`, expected `{message}`",
                    failure.message
                ));
            }
            let expected_class = match front {
                Front::Pipe => Class::Pipe,
                Front::Grpc => Class::Grpc(code),
                Front::Http => {
                    let (status, name) = http_of(code);
                    Class::Http(status, name)
                }
            };
            if failure.class != expected_class {
                problems.push(format!(
                    "{case:?} over {front:?}: {:?}, expected {expected_class:?}",
                    failure.class
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Sessions cross fronts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_pipe_session_is_usable_over_http_and_grpc() {
    let app = TestApp::start().await;
    let backend = Backend::start("x").await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("cross", "cross-1").await;
    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
            .await,
        "OPTIONS_OK"
    );
    let mut http = Driver::new(&app, Front::Http).await;
    let mut grpc = Driver::new(&app, Front::Grpc).await;
    let r1 = must(
        http.route_add(&sid, &["cross.example.com"], "/", &backend.url(), 0)
            .await,
        "RouteAdd",
        Front::Http,
    );
    must(
        grpc.headers_set(&sid, "ALL", "X-Cross", "1").await,
        "HeadersSet",
        Front::Grpc,
    );
    must(http.apply(&sid).await, "ConfigApply", Front::Http);
    let listed = payload(
        &pipe.cmd(&format!("ROUTE_LIST|{sid}")).await,
        "ROUTE_LIST_OK",
    );
    assert_eq!(listed[0]["route_id"], json!(r1));
    assert_eq!(listed[0]["status"], json!("active"));
    let reply = get(app.proxy_addr(), "cross.example.com", "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-cross"), Some("1"));
    let info = must(grpc.session_info(&sid).await, "SessionInfo", Front::Grpc);
    assert_eq!(
        info["connections"],
        json!(1),
        "the pipe connection stays the only one"
    );
    assert_eq!(info["routes_active"], json!(1));
}

#[tokio::test]
async fn an_http_session_is_usable_over_the_pipe_and_grpc() {
    let app = TestApp::start().await;
    let backend = Backend::start("x").await;
    let mut http = Driver::new(&app, Front::Http).await;
    let sid = http.register("cross", "cross-1").await;
    must(
        http.options_set(&sid, "ALL", "health_check_interval", "0")
            .await,
        "OptionsSet",
        Front::Http,
    );
    let mut pipe = app.pipe().await;
    let r1 = pipe
        .add_route(&sid, "hcross.example.com", "/", &backend.url())
        .await;
    let mut grpc = Driver::new(&app, Front::Grpc).await;
    must(grpc.apply(&sid).await, "ConfigApply", Front::Grpc);
    let routes = must(grpc.route_list(&sid).await, "RouteList", Front::Grpc);
    assert_eq!(routes[0]["route_id"], json!(r1));
    assert_eq!(routes[0]["status"], json!("active"));
    assert_eq!(
        get(app.proxy_addr(), "hcross.example.com", "/")
            .await
            .status,
        200
    );
    assert_eq!(
        pipe.cmd(&format!("CLIENT_SHUTDOWN|{sid}")).await,
        "SHUTDOWN_OK"
    );
    let failure = http
        .session_info(&sid)
        .await
        .expect_err("ended over the pipe");
    assert_eq!(failure.message, "session not found");
}

fn short_lease(config: &mut switchyard::config::Config) {
    config.session_lease = Duration::from_millis(300);
    config.session_grace = Duration::from_millis(300);
}

async fn wait_for_status(addr: SocketAddr, host: &str, status: u16) {
    let host = host.to_string();
    wait_until(|| {
        let host = host.clone();
        async move { get(addr, &host, "/").await.status == status }
    })
    .await;
}

#[tokio::test]
async fn an_http_call_holds_a_pipe_session_for_one_lease() {
    let app = TestApp::start_with(short_lease).await;
    let backend = Backend::start("x").await;
    let proxy = app.proxy_addr();
    let sid = {
        let mut pipe = app.pipe().await;
        let sid = pipe.register("pl", "pl-1").await;
        assert_eq!(
            pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
                .await,
            "OPTIONS_OK"
        );
        pipe.add_route(&sid, "pl.example.com", "/", &backend.url())
            .await;
        pipe.apply(&sid).await;
        assert_eq!(get(proxy, "pl.example.com", "/").await.status, 200);
        sid
        // The pipe connection closes here: connection mode, nothing else holds it.
    };
    wait_for_status(proxy, "pl.example.com", 503).await;
    // One HTTP call: connected again, for one lease, without any pipe connection.
    let mut http = Driver::new(&app, Front::Http).await;
    let info = must(http.session_info(&sid).await, "SessionInfo", Front::Http);
    assert_eq!(info["connections"], json!(0));
    assert_eq!(info["liveness"], json!("connection"));
    assert_eq!(get(proxy, "pl.example.com", "/").await.status, 200);
    wait_for_status(proxy, "pl.example.com", 503).await;
    // And then, with no call, the grace ends.
    wait_for_status(proxy, "pl.example.com", 404).await;
    let failure = http.session_info(&sid).await.expect_err("expired");
    assert_eq!(failure.message, "session not found");
}

#[tokio::test]
async fn a_pipe_connection_holds_an_http_session_past_its_front_lease() {
    let app = TestApp::start_with(short_lease).await;
    let backend = Backend::start("x").await;
    let proxy = app.proxy_addr();
    let mut http = Driver::new(&app, Front::Http).await;
    let sid = http.register("hp", "hp-1").await;
    must(
        http.options_set(&sid, "ALL", "health_check_interval", "0")
            .await,
        "OptionsSet",
        Front::Http,
    );
    let mut pipe = app.pipe().await;
    pipe.add_route(&sid, "hp.example.com", "/", &backend.url())
        .await;
    pipe.apply(&sid).await;
    // Well past lease + grace with no HTTP call: the attached pipe connection holds it.
    let until = Instant::now() + Duration::from_millis(1200);
    let mut tick = tokio::time::interval(Duration::from_millis(75));
    while Instant::now() < until {
        tick.tick().await;
        assert_eq!(get(proxy, "hp.example.com", "/").await.status, 200);
    }
    drop(pipe);
    wait_for_status(proxy, "hp.example.com", 503).await;
    wait_for_status(proxy, "hp.example.com", 404).await;
}

#[tokio::test]
async fn streams_and_calls_leave_the_pipe_event_connection_alone() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("evx", "evx-1").await;
    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
            .await,
        "OPTIONS_OK"
    );
    assert_eq!(
        pipe.cmd(&format!("SUBSCRIBE|{sid}|config_applied")).await,
        "SUBSCRIBE_OK"
    );
    let mut grpc = RegistryClient::connect(format!("http://{}", app.api_addr()))
        .await
        .expect("gRPC connects");
    let mut stream = grpc
        .subscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec!["config_applied".into()],
        })
        .await
        .expect("Subscribe")
        .into_inner();
    let mut http = Driver::new(&app, Front::Http).await;
    let rid = must(
        http.route_add(&sid, &["evx.example.com"], "/", "http://127.0.0.1:9001", 0)
            .await,
        "RouteAdd",
        Front::Http,
    );
    must(http.apply(&sid).await, "ConfigApply", Front::Http);

    // The pipe connection is still the event connection: the EVENT line arrives there.
    let line = pipe.recv().await;
    let json = line
        .strip_prefix("EVENT|config_applied|")
        .unwrap_or_else(|| panic!("expected an EVENT line, got {line}"));
    let pipe_payload: Value = serde_json::from_str(json).expect("event JSON");
    assert!(
        pipe_payload.get("type").is_none(),
        "the pipe payload has no type key"
    );
    assert_eq!(pipe_payload["routes_added"], json!([rid]));

    // The gRPC stream carries the same event: same seq, session, and own keys.
    let event = tokio::time::timeout(REPLY_WAIT, stream.message())
        .await
        .expect("in time")
        .expect("stream ok")
        .expect("an event");
    assert_eq!(event.r#type, "config_applied");
    assert_eq!(json!(event.seq), pipe_payload["seq"]);
    assert_eq!(json!(event.session_id), pipe_payload["session_id"]);
    let own: Map<String, Value> = pipe_payload
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, _)| !["seq", "time", "session_id", "route_id"].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        json_of_struct(event.payload.as_ref().expect("payload")),
        Value::Object(own),
        "the gRPC payload holds the pipe payload's own keys"
    );
}

#[tokio::test]
async fn an_empty_instance_name_is_the_peer_address_on_every_front() {
    // PROTOCOL §4.1: instance_name "Empty → the peer's IP address as text"; API.md: the
    // fronts share the pipe's semantics and validation.
    let app = TestApp::start().await;
    let mut problems = Vec::new();
    for front in FRONTS {
        let mut d = Driver::new(&app, front).await;
        let sid = d.register(&format!("anon-{}", front.name()), "").await;
        let info = must(d.session_info(&sid).await, "SessionInfo", front);
        if info["instance_name"] != json!("127.0.0.1") || !sid.starts_with("127.0.0.1-") {
            problems.push(format!(
                "{front:?}: instance_name {} and session id {sid}",
                info["instance_name"]
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "an empty instance name must become the peer's IP:\n{}",
        problems.join("\n")
    );
}

/// The first SSE event of a stream: (event, id, data), read from a raw connection.
async fn first_sse_event(reader: &mut BufReader<TcpStream>) -> (String, String, String) {
    let (mut event, mut id, mut data) = (String::new(), String::new(), String::new());
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_WAIT, reader.read_line(&mut line))
            .await
            .expect("an SSE line in time")
            .expect("read");
        assert!(n > 0, "stream ended");
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim_start().to_string();
        } else if let Some(v) = line.strip_prefix("id:") {
            id = v.trim_start().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data = v.strip_prefix(' ').unwrap_or(v).to_string();
        } else if line.is_empty() && !data.is_empty() {
            return (event, id, data);
        }
        // Anything else: status line, headers, chunk sizes, comments.
    }
}

#[tokio::test]
async fn an_event_reads_the_same_on_the_pipe_sse_and_grpc() {
    let app = TestApp::start().await;
    let mut pipe = app.pipe().await;
    let sid = pipe.register("evs", "evs-1").await;
    assert_eq!(
        pipe.cmd(&format!("OPTIONS_SET|{sid}|ALL|health_check_interval|0"))
            .await,
        "OPTIONS_OK"
    );
    assert_eq!(
        pipe.cmd(&format!("SUBSCRIBE|{sid}|route_added")).await,
        "SUBSCRIBE_OK"
    );
    let mut tcp = TcpStream::connect(app.api_addr()).await.expect("connect");
    tcp.write_all(
        format!(
            "GET /v2/sessions/{sid}/events?types=route_added HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let mut sse = BufReader::new(tcp);
    let mut status = String::new();
    tokio::time::timeout(REPLY_WAIT, sse.read_line(&mut status))
        .await
        .expect("status in time")
        .expect("read");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut grpc = RegistryClient::connect(format!("http://{}", app.api_addr()))
        .await
        .expect("gRPC connects");
    let mut stream = grpc
        .subscribe(pb::EventTypesRequest {
            session_id: sid.clone(),
            event_types: vec!["route_added".into()],
        })
        .await
        .expect("Subscribe")
        .into_inner();

    let rid = pipe
        .add_route(&sid, "evs.example.com", "/api", "http://127.0.0.1:9001/")
        .await;
    pipe.apply(&sid).await;

    let line = pipe.recv().await;
    let json = line
        .strip_prefix("EVENT|route_added|")
        .unwrap_or_else(|| panic!("expected the EVENT line, got {line}"));
    let pipe_payload: Value = serde_json::from_str(json).expect("JSON");
    assert_eq!(pipe_payload["route_id"], json!(rid));

    // SSE data: the pipe payload with "type" right after "seq".
    let (event, id, data) = first_sse_event(&mut sse).await;
    assert_eq!(event, "route_added");
    assert_eq!(json!(id), json!(pipe_payload["seq"].to_string()));
    let mut expected = Map::new();
    for (k, v) in pipe_payload.as_object().expect("object") {
        expected.insert(k.clone(), v.clone());
        if k == "seq" {
            expected.insert("type".into(), json!("route_added"));
        }
    }
    assert_eq!(
        data,
        Value::Object(expected).to_string(),
        "SSE data = pipe payload + type after seq, byte for byte"
    );

    // gRPC: the same seq, session, route and own keys.
    let e = tokio::time::timeout(REPLY_WAIT, stream.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("an event");
    assert_eq!(e.r#type, "route_added");
    assert_eq!(json!(e.seq), pipe_payload["seq"]);
    assert_eq!(json!(e.session_id), pipe_payload["session_id"]);
    assert_eq!(json!(e.route_id), pipe_payload["route_id"]);
    assert_eq!(
        json_of_struct(e.payload.as_ref().expect("payload")),
        json!({
            "domains": pipe_payload["domains"], "path": pipe_payload["path"],
            "backend": pipe_payload["backend"], "priority": pipe_payload["priority"]
        })
    );
}

#[tokio::test]
async fn a_route_list_too_large_for_the_pipe_is_whole_on_grpc_and_http() {
    // The 64 KiB reply limit is pipe framing (PROTOCOL §1.5); the typed fronts have none.
    let app = TestApp::start().await;
    let mut http = Driver::new(&app, Front::Http).await;
    let sid = http.register("big", "big-1").await;
    let long_path = format!("/{}", "p".repeat(300));
    let routes: Vec<Value> = (0..200)
        .map(|i| {
            json!({
                "domains": [format!("d{i}-{}.example.com", "x".repeat(40))],
                "path": long_path,
                "backend_url": "http://127.0.0.1:9001"
            })
        })
        .collect();
    let added = http
        .http(
            "POST",
            &format!("/v2/sessions/{sid}/routes/bulk"),
            json!({ "routes": routes }),
        )
        .await
        .expect("RouteAddBulk");
    assert_eq!(added["results"].as_array().map(Vec::len), Some(200));

    let mut pipe = Driver::new(&app, Front::Pipe).await;
    let failure = pipe
        .route_list(&sid)
        .await
        .expect_err("too large for one pipe line");
    assert_eq!(failure.message, "response too large; use compressed");
    let listed = must(http.route_list(&sid).await, "RouteList", Front::Http);
    assert_eq!(listed.len(), 200, "HTTP lists every route");
    let mut grpc = Driver::new(&app, Front::Grpc).await;
    let listed = must(grpc.route_list(&sid).await, "RouteList", Front::Grpc);
    assert_eq!(listed.len(), 200, "gRPC lists every route");
}
