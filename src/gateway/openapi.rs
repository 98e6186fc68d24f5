//! `GET /openapi.json`: the OpenAPI 3 description of the gateway, built from one table of
//! operations with the JSON schemas of their bodies.

use axum::Json;
use serde_json::{json, Map, Value};

/// One gateway operation: method, path, operation id, request body schema, success status.
pub struct Operation {
    pub method: &'static str,
    pub path: String,
    pub id: &'static str,
    pub body: Option<fn() -> Value>,
    pub status: u16,
}

const S: &str = "/v2/sessions/{session_id}";

macro_rules! op {
    ($m:literal, $p:expr, $id:literal) => {
        Operation {
            method: $m,
            path: $p.to_string(),
            id: $id,
            body: None,
            status: 200,
        }
    };
    ($m:literal, $p:expr, $id:literal, $body:expr) => {
        Operation {
            method: $m,
            path: $p.to_string(),
            id: $id,
            body: Some($body),
            status: 200,
        }
    };
    ($m:literal, $p:expr, $id:literal, $body:expr, $status:literal) => {
        Operation {
            method: $m,
            path: $p.to_string(),
            id: $id,
            body: Some($body),
            status: $status,
        }
    };
}

fn object(props: &[(&str, Value)]) -> Value {
    let properties: Map<String, Value> = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    json!({"type": "object", "properties": properties})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn integer() -> Value {
    json!({"type": "integer"})
}

fn duration() -> Value {
    json!({"type": "string", "description": "PROTOCOL §1.4 duration: 30, 1.5, 300ms, 1h30m"})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn route_spec() -> Value {
    object(&[
        ("domains", strings()),
        ("path", string()),
        ("backend_url", string()),
        ("priority", integer()),
    ])
}

/// Every operation of the gateway (API.md's table).
pub fn operations() -> Vec<Operation> {
    let p = |tail: &str| format!("{S}{tail}");
    vec![
        op!(
            "post",
            "/v2/sessions",
            "Register",
            || object(&[
                ("service_name", string()),
                ("instance_name", string()),
                ("maintenance_port", integer()),
                ("metadata", json!({"type": "object"})),
            ]),
            201
        ),
        op!("post", p("/reconnect"), "Reconnect"),
        op!("post", p("/ping"), "Ping"),
        op!("get", p(""), "SessionInfo"),
        op!("delete", p(""), "ClientShutdown"),
        op!("post", p("/routes"), "RouteAdd", route_spec, 201),
        op!(
            "post",
            p("/routes/bulk"),
            "RouteAddBulk",
            || object(&[("routes", json!({"type": "array", "items": route_spec()}))]),
            201
        ),
        op!("patch", p("/routes/{route_id}"), "RouteUpdate", || object(
            &[("field", string()), ("value", string()),]
        )),
        op!("delete", p("/routes/{route_id}"), "RouteRemove"),
        op!("get", p("/routes"), "RouteList"),
        op!("put", p("/headers/{target}/{name}"), "HeadersSet", || {
            object(&[("value", string())])
        }),
        op!("delete", p("/headers/{target}/{name}"), "HeadersRemove"),
        op!(
            "put",
            p("/options/{target}/{key}"),
            "OptionsSet",
            || object(&[("value", string())])
        ),
        op!("delete", p("/options/{target}/{key}"), "OptionsRemove"),
        op!("put", p("/health/{target}"), "HealthSet", || object(&[
            ("path", string()),
            ("interval", duration()),
            ("timeout", duration()),
        ])),
        op!("put", p("/ratelimits/{target}"), "RateLimitSet", || object(
            &[("requests", integer()), ("window", duration()),]
        )),
        op!(
            "put",
            p("/circuit-breakers/{target}"),
            "CircuitBreakerSet",
            || object(&[
                ("threshold", integer()),
                ("timeout", duration()),
                ("half_open_requests", integer()),
            ])
        ),
        op!(
            "get",
            p("/circuit-breakers/{target}"),
            "CircuitBreakerStatus"
        ),
        op!(
            "post",
            p("/circuit-breakers/{target}/reset"),
            "CircuitBreakerReset"
        ),
        op!("post", p("/config/validate"), "ConfigValidate"),
        op!("post", p("/config/apply"), "ConfigApply"),
        op!("post", p("/config/rollback"), "ConfigRollback"),
        op!("get", p("/config/diff"), "ConfigDiff"),
        op!(
            "post",
            p("/config/apply-partial"),
            "ConfigApplyPartial",
            || object(&[("scopes", strings())])
        ),
        op!("post", p("/drain"), "DrainStart", || object(&[(
            "duration",
            duration()
        )])),
        op!("get", p("/drain"), "DrainStatus"),
        op!("delete", p("/drain"), "DrainCancel"),
        op!("post", p("/maintenance"), "MaintEnter", || object(&[
            ("target", string()),
            ("page_url", string()),
        ])),
        op!("post", p("/maintenance/exit"), "MaintExit", || object(&[(
            "target",
            string()
        )])),
        op!("get", p("/maintenance"), "MaintStatus"),
        op!("get", p("/stats"), "StatsGet"),
        op!("post", "/v2/backend-test", "BackendTest", || object(&[
            ("backend_url", string()),
            ("session_id", string()),
        ])),
        op!("get", p("/events"), "Subscribe"),
        op!("delete", p("/events/{event_type}"), "Unsubscribe"),
        op!("get", "/v2/admin/sessions", "ListSessions"),
        op!("get", "/v2/admin/routes", "GetRouteTable"),
        op!("get", "/v2/admin/stats", "GetStats"),
        op!("get", "/v2/admin/events", "WatchEvents"),
        op!("get", "/healthz", "Healthz"),
        op!("get", "/openapi.json", "OpenApi"),
        op!("get", "/metrics", "Metrics"),
    ]
}

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

/// The OpenAPI 3 document.
pub fn build() -> Value {
    let error = json!({
        "description": "error",
        "content": {"application/json": {"schema": object(&[("code", string()), ("message", string())])}}
    });
    let mut paths = Map::new();
    for op in operations() {
        let mut operation = Map::new();
        operation.insert("operationId".into(), op.id.into());
        operation.insert("parameters".into(), Value::Array(parameters(&op.path)));
        if let Some(schema) = op.body {
            operation.insert(
                "requestBody".into(),
                json!({"required": false, "content": {"application/json": {"schema": schema()}}}),
            );
        }
        let content_type = if op.id == "Subscribe" || op.id == "WatchEvents" {
            "text/event-stream"
        } else {
            "application/json"
        };
        operation.insert(
            "responses".into(),
            json!({
                op.status.to_string(): {"description": "success", "content": {content_type: {}}},
                "default": error.clone(),
            }),
        );
        let entry = paths
            .entry(op.path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(op.method.into(), Value::Object(operation));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Switchyard registry API", "version": "2"},
        "paths": paths,
    })
}

/// The handler.
pub async fn document() -> Json<Value> {
    Json(build())
}
