//! The HTTP/JSON gateway (API.md): the registry's operations as REST resources, events as
//! Server-Sent Events, `/healthz` and `/openapi.json`. Handlers parse, call, render.

pub mod dto;
pub mod error;
pub mod events;
pub mod openapi;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::registry::model::{route_input_from_json, RouteInput};
use crate::registry::operate::{BackendTest, StatsReport};
use crate::registry::views::Reconnect;
use crate::registry::{Caller, Error, RegisterRequest, Registry};
use dto::*;
use error::ApiError;

/// Largest request body the gateway reads (API.md).
pub const MAX_BODY: usize = 1 << 20;

const FRONT: Caller = Caller::Front;

type ApiResult = Result<Response, ApiError>;

/// A JSON body: empty means every field absent; malformed or mistyped → `invalid format`;
/// larger than 1 MiB → 413.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "resource_exhausted",
                    "request body too large",
                )
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Body(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|_| ApiError::invalid_format())
    }
}

fn ok(value: impl serde::Serialize) -> ApiResult {
    Ok(Json(value).into_response())
}

fn created(value: impl serde::Serialize) -> ApiResult {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

fn done(result: crate::registry::Result<()>) -> ApiResult {
    result?;
    ok(json!({}))
}

/// Bearer tokens the gateway requires (API.md, Authentication).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub admin_token: Option<String>,
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Refuses calls without the right token; `/healthz` and `/openapi.json` are open.
async fn authorize(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let expected = if path == "/healthz" || path == "/openapi.json" {
        None
    } else if path.starts_with("/v2/admin/") || path == "/metrics" {
        auth.admin_token.as_ref().or(auth.token.as_ref())
    } else {
        auth.token.as_ref()
    };
    if let Some(expected) = expected {
        let given = bearer(req.headers()).unwrap_or("");
        if !crate::registry::same_secret(given, expected) {
            return ApiError::from(Error::PermissionDenied("invalid auth token".into()))
                .into_response();
        }
    }
    next.run(req).await
}

/// The gateway's routes over `registry`, guarded by `auth`.
pub fn router(registry: Registry, auth: Auth) -> Router {
    routes(registry).layer(axum::middleware::from_fn_with_state(auth, authorize))
}

fn routes(registry: Registry) -> Router {
    let s = "/v2/sessions/{session_id}";
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics))
        .route("/v2/sessions", post(register))
        .route(s, get(session_info).delete(client_shutdown))
        .route(&format!("{s}/reconnect"), post(reconnect))
        .route(&format!("{s}/ping"), post(ping))
        .route(&format!("{s}/routes"), post(route_add).get(route_list))
        .route(&format!("{s}/routes/bulk"), post(route_add_bulk))
        .route(
            &format!("{s}/routes/{{route_id}}"),
            patch(route_update).delete(route_remove),
        )
        .route(
            &format!("{s}/headers/{{target}}/{{name}}"),
            put(headers_set).delete(headers_remove),
        )
        .route(
            &format!("{s}/options/{{target}}/{{key}}"),
            put(options_set).delete(options_remove),
        )
        .route(&format!("{s}/health/{{target}}"), put(health_set))
        .route(&format!("{s}/ratelimits/{{target}}"), put(ratelimit_set))
        .route(
            &format!("{s}/circuit-breakers/{{target}}"),
            put(breaker_set).get(breaker_status),
        )
        .route(
            &format!("{s}/circuit-breakers/{{target}}/reset"),
            post(breaker_reset),
        )
        .route(&format!("{s}/config/validate"), post(config_validate))
        .route(&format!("{s}/config/apply"), post(config_apply))
        .route(&format!("{s}/config/rollback"), post(config_rollback))
        .route(&format!("{s}/config/diff"), get(config_diff))
        .route(
            &format!("{s}/config/apply-partial"),
            post(config_apply_partial),
        )
        .route(
            &format!("{s}/drain"),
            post(drain_start).get(drain_status).delete(drain_cancel),
        )
        .route(
            &format!("{s}/maintenance"),
            post(maint_enter).get(maint_status),
        )
        .route(&format!("{s}/maintenance/exit"), post(maint_exit))
        .route(&format!("{s}/stats"), get(stats_get))
        .route("/v2/backend-test", post(backend_test))
        .route(&format!("{s}/events"), get(events::subscribe))
        .route(&format!("{s}/events/{{event_type}}"), delete(unsubscribe))
        .route("/v2/admin/sessions", get(admin_sessions))
        .route("/v2/admin/routes", get(admin_routes))
        .route("/v2/admin/stats", get(admin_stats))
        .route("/v2/admin/events", get(events::admin))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(registry)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "unimplemented",
        "method not allowed",
    )
}

async fn metrics(State(r): State<Registry>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        r.prometheus_text(),
    )
        .into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn register(
    State(r): State<Registry>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Body(b): Body<RegisterBody>,
) -> ApiResult {
    let mut metadata = b.metadata.unwrap_or_default();
    metadata.remove("auth_token");
    let session_id = r.register(
        FRONT,
        RegisterRequest {
            service_name: b.service_name.unwrap_or_default(),
            instance_name: b.instance_name.unwrap_or_default(),
            maintenance_port: b
                .maintenance_port
                .map(|p| p.to_string())
                .unwrap_or_default(),
            metadata: Value::Object(metadata).to_string(),
            peer: peer.map(|Extension(ConnectInfo(addr))| addr.ip()),
            token: Some(bearer(&headers).unwrap_or("").to_string()),
        },
    )?;
    created(json!({ "session_id": session_id }))
}

async fn reconnect(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    let again = r.reconnect(FRONT, &sid)? == Reconnect::Reregister;
    ok(json!({ "reregister": again }))
}

async fn ping(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    done(r.ping(FRONT, &sid))
}

async fn session_info(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    ok(r.session_info(FRONT, &sid)?)
}

async fn client_shutdown(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    r.client_shutdown(FRONT, &sid)?;
    ok(json!({}))
}

async fn route_add(
    State(r): State<Registry>,
    Path(sid): Path<String>,
    Body(b): Body<Value>,
) -> ApiResult {
    let input = match b {
        Value::Null => Ok(RouteInput::default()),
        other => route_input_from_json(&other).map_err(|_| Error::InvalidFormat),
    };
    let id = r.route_add(FRONT, &sid, input?)?;
    created(json!({ "route_id": id.to_string() }))
}

async fn route_add_bulk(
    State(r): State<Registry>,
    Path(sid): Path<String>,
    Body(b): Body<BulkBody>,
) -> ApiResult {
    let items = b
        .routes
        .unwrap_or_default()
        .iter()
        .map(route_input_from_json)
        .collect();
    let results = r.route_add_bulk(FRONT, &sid, Ok(items))?;
    created(json!({ "results": results }))
}

async fn route_update(
    State(r): State<Registry>,
    Path((sid, rid)): Path<(String, String)>,
    Body(b): Body<UpdateBody>,
) -> ApiResult {
    done(r.route_update(
        FRONT,
        &sid,
        &rid,
        &b.field.unwrap_or_default(),
        &b.value.map(|v| v.text()).unwrap_or_default(),
    ))
}

async fn route_remove(
    State(r): State<Registry>,
    Path((sid, rid)): Path<(String, String)>,
) -> ApiResult {
    done(r.route_remove(FRONT, &sid, &rid))
}

async fn route_list(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    ok(json!({ "routes": r.route_list(FRONT, &sid)? }))
}

async fn headers_set(
    State(r): State<Registry>,
    Path((sid, target, name)): Path<(String, String, String)>,
    Body(b): Body<ValueBody>,
) -> ApiResult {
    let value = b.value.ok_or(Error::InvalidFormat)?;
    done(r.headers_set(FRONT, &sid, &target, &name, &value.text()))
}

async fn headers_remove(
    State(r): State<Registry>,
    Path((sid, target, name)): Path<(String, String, String)>,
) -> ApiResult {
    done(r.headers_remove(FRONT, &sid, &target, &name))
}

async fn options_set(
    State(r): State<Registry>,
    Path((sid, target, key)): Path<(String, String, String)>,
    Body(b): Body<ValueBody>,
) -> ApiResult {
    let value = b.value.ok_or(Error::InvalidFormat)?;
    done(r.options_set(FRONT, &sid, &target, &key, &value.text()))
}

async fn options_remove(
    State(r): State<Registry>,
    Path((sid, target, key)): Path<(String, String, String)>,
) -> ApiResult {
    done(r.options_remove(FRONT, &sid, &target, &key))
}

async fn health_set(
    State(r): State<Registry>,
    Path((sid, target)): Path<(String, String)>,
    Body(b): Body<HealthBody>,
) -> ApiResult {
    done(r.health_set(
        FRONT,
        &sid,
        &target,
        &b.path.unwrap_or_default(),
        &text(b.interval),
        &text(b.timeout),
    ))
}

async fn ratelimit_set(
    State(r): State<Registry>,
    Path((sid, target)): Path<(String, String)>,
    Body(b): Body<RateLimitBody>,
) -> ApiResult {
    done(r.ratelimit_set(FRONT, &sid, &target, &text(b.requests), &text(b.window)))
}

async fn breaker_set(
    State(r): State<Registry>,
    Path((sid, target)): Path<(String, String)>,
    Body(b): Body<BreakerBody>,
) -> ApiResult {
    done(r.circuit_breaker_set(
        FRONT,
        &sid,
        &target,
        &text(b.threshold),
        &text(b.timeout),
        &text(b.half_open_requests),
    ))
}

async fn breaker_status(
    State(r): State<Registry>,
    Path((sid, target)): Path<(String, String)>,
) -> ApiResult {
    ok(r.circuit_breaker_status(FRONT, &sid, &target)?)
}

async fn breaker_reset(
    State(r): State<Registry>,
    Path((sid, target)): Path<(String, String)>,
) -> ApiResult {
    done(r.circuit_breaker_reset(FRONT, &sid, &target))
}

async fn config_validate(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    done(r.config_validate(FRONT, &sid))
}

async fn config_apply(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    done(r.config_apply(FRONT, &sid))
}

async fn config_rollback(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    done(r.config_rollback(FRONT, &sid))
}

async fn config_diff(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    ok(r.config_diff(FRONT, &sid)?)
}

async fn config_apply_partial(
    State(r): State<Registry>,
    Path(sid): Path<String>,
    Body(b): Body<ScopesBody>,
) -> ApiResult {
    let scopes = list(b.scopes.unwrap_or_default());
    done(r.config_apply_partial(FRONT, &sid, &scopes))
}

async fn drain_start(
    State(r): State<Registry>,
    Path(sid): Path<String>,
    Body(b): Body<DrainBody>,
) -> ApiResult {
    let at = r.drain_start(FRONT, &sid, &text(b.duration))?;
    ok(json!({ "completes_at": crate::registry::clock::rfc3339(at) }))
}

async fn drain_status(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    ok(r.drain_status(FRONT, &sid)?)
}

async fn drain_cancel(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    done(r.drain_cancel(FRONT, &sid))
}

async fn maint_enter(
    State(r): State<Registry>,
    Path(sid): Path<String>,
    Body(b): Body<MaintBody>,
) -> ApiResult {
    let target = b.target.unwrap_or_default();
    let page = b.page_url.unwrap_or_default();
    done(r.maint_enter(FRONT, &sid, target.trim(), page.trim(), None))
}

async fn maint_exit(
    State(r): State<Registry>,
    Path(sid): Path<String>,
    Body(b): Body<MaintBody>,
) -> ApiResult {
    let target = b.target.unwrap_or_default();
    done(r.maint_exit(FRONT, &sid, target.trim(), None))
}

async fn maint_status(State(r): State<Registry>, Path(sid): Path<String>) -> ApiResult {
    ok(r.maint_status(FRONT, &sid)?)
}

async fn stats_get(
    State(r): State<Registry>,
    Path(sid): Path<String>,
    Query(q): Query<StatsQuery>,
) -> ApiResult {
    let target = q.target.unwrap_or_default();
    let stats = match r.stats_get(FRONT, &sid, target.trim())? {
        StatsReport::All(all) => all,
        StatsReport::One(one) => vec![one],
    };
    ok(json!({ "stats": stats }))
}

async fn backend_test(State(r): State<Registry>, Body(b): Body<BackendTestBody>) -> ApiResult {
    let sid = b.session_id.unwrap_or_default();
    let url = b.backend_url.unwrap_or_default();
    let result: BackendTest = r.backend_test(FRONT, &sid, url.trim()).await?;
    ok(result)
}

async fn unsubscribe(
    State(r): State<Registry>,
    Path((sid, kind)): Path<(String, String)>,
) -> ApiResult {
    done(r.unsubscribe(FRONT, &sid, &list(vec![kind])))
}

async fn admin_sessions(State(r): State<Registry>) -> ApiResult {
    ok(json!({ "sessions": r.list_sessions() }))
}

async fn admin_routes(State(r): State<Registry>) -> ApiResult {
    ok(json!({ "routes": r.route_table() }))
}

async fn admin_stats(State(r): State<Registry>) -> ApiResult {
    let stats: Vec<Value> = r
        .all_stats()
        .into_iter()
        .map(|(session_id, service_name, stats)| {
            let mut v = serde_json::to_value(stats).unwrap_or_default();
            if let Value::Object(map) = &mut v {
                map.insert("session_id".into(), session_id.into());
                map.insert("service_name".into(), service_name.into());
            }
            v
        })
        .collect();
    ok(json!({ "stats": stats }))
}

/// Trimmed, non-empty list items (as the pipe splits its lists).
fn list(items: Vec<String>) -> Vec<String> {
    items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A scalar field in the pipe's text form ("" when absent).
fn text(v: Option<Scalar>) -> String {
    v.map(|s| s.text()).unwrap_or_default()
}
