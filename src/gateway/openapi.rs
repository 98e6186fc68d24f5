//! `GET /openapi.json`: the OpenAPI 3 description of the gateway. Request and reply schemas
//! are generated (utoipa) from the very types the handlers deserialize and serialize; the
//! table below binds them to methods and paths.

use axum::Json;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::dto::*;
use crate::registry::maintenance::MaintStatus;
use crate::registry::operate::{BackendTest, BreakerReport, DrainStatus, RouteStats};
use crate::registry::staging::Diff;
use crate::registry::views::{BulkResult, RouteEntry, SessionInfo, TableRoute};

/// Schemas referenced by the document, collected as operations name them.
#[derive(Default)]
struct Components(Map<String, Value>);

impl Components {
    /// Registers `T` (and what it refers to) and returns a `$ref` to it.
    fn of<T: ToSchema>(&mut self) -> Value {
        let mut deps = Vec::new();
        T::schemas(&mut deps);
        for (name, schema) in deps {
            self.0
                .insert(name, serde_json::to_value(schema).unwrap_or_default());
        }
        let name = T::name().to_string();
        self.0.insert(
            name.clone(),
            serde_json::to_value(T::schema()).unwrap_or_default(),
        );
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }
}

/// An object with one key holding a list of `items` (the gateway wraps lists).
fn wrapped(key: &str, items: Value) -> Value {
    json!({"type": "object", "properties": { key: {"type": "array", "items": items} }})
}

fn object(props: &[(&str, Value)]) -> Value {
    let properties: Map<String, Value> = props
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    json!({"type": "object", "properties": properties})
}

/// One operation: method, path, id, request schema, success status and schema.
struct Operation {
    method: &'static str,
    path: String,
    id: &'static str,
    body: Option<Value>,
    status: u16,
    reply: Value,
}

const S: &str = "/v2/sessions/{session_id}";

fn operations(c: &mut Components) -> Vec<Operation> {
    let p = |tail: &str| format!("{S}{tail}");
    let empty = || json!({"type": "object"});
    let string = || json!({"type": "string"});
    let op = |method, path: String, id, body: Option<Value>, status, reply| Operation {
        method,
        path,
        id,
        body,
        status,
        reply,
    };
    let session = c.of::<SessionInfo>();
    let route = c.of::<RouteEntry>();
    let stats = c.of::<RouteStats>();
    vec![
        op(
            "post",
            "/v2/sessions".into(),
            "Register",
            Some(c.of::<RegisterBody>()),
            201,
            object(&[("session_id", string())]),
        ),
        op(
            "post",
            p("/reconnect"),
            "Reconnect",
            None,
            200,
            object(&[("reregister", json!({"type": "boolean"}))]),
        ),
        op("post", p("/ping"), "Ping", None, 200, empty()),
        op("get", p(""), "SessionInfo", None, 200, session.clone()),
        op("delete", p(""), "ClientShutdown", None, 200, empty()),
        op(
            "post",
            p("/routes"),
            "RouteAdd",
            Some(c.of::<RouteBody>()),
            201,
            object(&[("route_id", string())]),
        ),
        op(
            "post",
            p("/routes/bulk"),
            "RouteAddBulk",
            Some(c.of::<BulkBody>()),
            201,
            wrapped("results", c.of::<BulkResult>()),
        ),
        op(
            "patch",
            p("/routes/{route_id}"),
            "RouteUpdate",
            Some(c.of::<UpdateBody>()),
            200,
            empty(),
        ),
        op(
            "delete",
            p("/routes/{route_id}"),
            "RouteRemove",
            None,
            200,
            empty(),
        ),
        op(
            "get",
            p("/routes"),
            "RouteList",
            None,
            200,
            wrapped("routes", route),
        ),
        op(
            "put",
            p("/headers/{target}/{name}"),
            "HeadersSet",
            Some(c.of::<ValueBody>()),
            200,
            empty(),
        ),
        op(
            "delete",
            p("/headers/{target}/{name}"),
            "HeadersRemove",
            None,
            200,
            empty(),
        ),
        op(
            "put",
            p("/options/{target}/{key}"),
            "OptionsSet",
            Some(c.of::<ValueBody>()),
            200,
            empty(),
        ),
        op(
            "delete",
            p("/options/{target}/{key}"),
            "OptionsRemove",
            None,
            200,
            empty(),
        ),
        op(
            "put",
            p("/health/{target}"),
            "HealthSet",
            Some(c.of::<HealthBody>()),
            200,
            empty(),
        ),
        op(
            "put",
            p("/ratelimits/{target}"),
            "RateLimitSet",
            Some(c.of::<RateLimitBody>()),
            200,
            empty(),
        ),
        op(
            "put",
            p("/circuit-breakers/{target}"),
            "CircuitBreakerSet",
            Some(c.of::<BreakerBody>()),
            200,
            empty(),
        ),
        op(
            "get",
            p("/circuit-breakers/{target}"),
            "CircuitBreakerStatus",
            None,
            200,
            c.of::<BreakerReport>(),
        ),
        op(
            "post",
            p("/circuit-breakers/{target}/reset"),
            "CircuitBreakerReset",
            None,
            200,
            empty(),
        ),
        op(
            "post",
            p("/config/validate"),
            "ConfigValidate",
            None,
            200,
            empty(),
        ),
        op(
            "post",
            p("/config/apply"),
            "ConfigApply",
            None,
            200,
            empty(),
        ),
        op(
            "post",
            p("/config/rollback"),
            "ConfigRollback",
            None,
            200,
            empty(),
        ),
        op(
            "get",
            p("/config/diff"),
            "ConfigDiff",
            None,
            200,
            c.of::<Diff>(),
        ),
        op(
            "post",
            p("/config/apply-partial"),
            "ConfigApplyPartial",
            Some(c.of::<ScopesBody>()),
            200,
            empty(),
        ),
        op(
            "post",
            p("/drain"),
            "DrainStart",
            Some(c.of::<DrainBody>()),
            200,
            object(&[("completes_at", string())]),
        ),
        op(
            "get",
            p("/drain"),
            "DrainStatus",
            None,
            200,
            c.of::<DrainStatus>(),
        ),
        op("delete", p("/drain"), "DrainCancel", None, 200, empty()),
        op(
            "post",
            p("/maintenance"),
            "MaintEnter",
            Some(c.of::<MaintBody>()),
            200,
            empty(),
        ),
        op(
            "post",
            p("/maintenance/exit"),
            "MaintExit",
            Some(c.of::<MaintBody>()),
            200,
            empty(),
        ),
        op(
            "get",
            p("/maintenance"),
            "MaintStatus",
            None,
            200,
            c.of::<MaintStatus>(),
        ),
        op(
            "get",
            p("/stats"),
            "StatsGet",
            None,
            200,
            wrapped("stats", stats.clone()),
        ),
        op(
            "post",
            "/v2/backend-test".into(),
            "BackendTest",
            Some(c.of::<BackendTestBody>()),
            200,
            c.of::<BackendTest>(),
        ),
        op("get", p("/events"), "Subscribe", None, 200, string()),
        op(
            "delete",
            p("/events/{event_type}"),
            "Unsubscribe",
            None,
            200,
            empty(),
        ),
        op(
            "get",
            "/v2/admin/sessions".into(),
            "ListSessions",
            None,
            200,
            wrapped("sessions", session),
        ),
        op(
            "get",
            "/v2/admin/routes".into(),
            "GetRouteTable",
            None,
            200,
            wrapped("routes", c.of::<TableRoute>()),
        ),
        op(
            "get",
            "/v2/admin/stats".into(),
            "GetStats",
            None,
            200,
            wrapped("stats", stats),
        ),
        op(
            "get",
            "/v2/admin/events".into(),
            "WatchEvents",
            None,
            200,
            string(),
        ),
        op(
            "get",
            "/healthz".into(),
            "Healthz",
            None,
            200,
            object(&[("status", string())]),
        ),
        op("get", "/openapi.json".into(), "OpenApi", None, 200, empty()),
        op("get", "/metrics".into(), "Metrics", None, 200, string()),
    ]
}

fn parameters(path: &str, id: &str) -> Vec<Value> {
    let mut params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    match id {
        "StatsGet" => {
            params.push(json!({"name": "target", "in": "query", "schema": {"type": "string"}}))
        }
        "Subscribe" | "WatchEvents" => {
            params.push(json!({"name": "types", "in": "query", "schema": {"type": "string"}}))
        }
        _ => {}
    }
    params
}

/// The OpenAPI 3 document.
pub fn build() -> Value {
    let mut components = Components::default();
    let ops = operations(&mut components);
    let error = json!({
        "description": "error",
        "content": {"application/json": {"schema": object(&[
            ("code", json!({"type": "string"})),
            ("message", json!({"type": "string"})),
        ])}}
    });
    let mut paths = Map::new();
    for op in ops {
        let content_type = match op.id {
            "Subscribe" | "WatchEvents" => "text/event-stream",
            "Metrics" => "text/plain",
            _ => "application/json",
        };
        let mut operation = Map::new();
        operation.insert("operationId".into(), op.id.into());
        operation.insert(
            "parameters".into(),
            Value::Array(parameters(&op.path, op.id)),
        );
        if let Some(schema) = op.body {
            operation.insert(
                "requestBody".into(),
                json!({"required": false, "content": {"application/json": {"schema": schema}}}),
            );
        }
        operation.insert(
            "responses".into(),
            json!({
                op.status.to_string(): {
                    "description": "success",
                    "content": {content_type: {"schema": op.reply}},
                },
                "default": error.clone(),
            }),
        );
        let entry = paths
            .entry(op.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(op.method.into(), Value::Object(operation));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Switchyard registry API", "version": "2"},
        "paths": paths,
        "components": {"schemas": components.0},
    })
}

/// The handler.
pub async fn document() -> Json<Value> {
    Json(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_come_from_the_types() {
        let doc = build();
        let schemas = &doc["components"]["schemas"];
        let info = &schemas["SessionInfo"]["properties"];
        assert!(info["events_dropped"].is_object());
        assert!(info["staged_expires_at"].is_object());
        assert!(schemas["RegisterBody"]["properties"]["service_name"].is_object());
        assert!(schemas["RouteEntry"]["properties"]["backend_url"].is_object());
        let refs = doc.to_string();
        for name in schemas.as_object().expect("schemas").keys() {
            assert!(
                refs.contains(&format!("#/components/schemas/{name}")),
                "{name} is used"
            );
        }
    }
}
