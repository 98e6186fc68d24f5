//! Conversions between the generated protobuf types and the registry's model and views.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use super::pb;
use crate::registry::events::Event;
use crate::registry::maintenance::MaintStatus;
use crate::registry::model::RouteInput;
use crate::registry::operate::{BackendTest, BreakerReport, DrainStatus, RouteStats};
use crate::registry::staging::{CountChanges, Diff, IdChanges};
use crate::registry::views::{RouteEntry, SessionInfo};

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let (seconds, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i32),
        Err(e) => (-(e.duration().as_secs() as i64), 0),
    };
    prost_types::Timestamp { seconds, nanos }
}

/// A protobuf duration.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A request duration in the pipe's syntax, so the registry validates it once for every front:
/// absent is empty, negative is malformed.
pub fn duration_text(d: Option<&prost_types::Duration>) -> String {
    match d {
        None => String::new(),
        Some(d) if d.seconds < 0 || d.nanos < 0 => "-1".into(),
        Some(d) if d.nanos == 0 => format!("{}s", d.seconds),
        Some(d) => format!("{}.{:09}s", d.seconds, d.nanos),
    }
}

/// JSON object → `google.protobuf.Struct`.
pub fn to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn to_value(v: &Value) -> prost_types::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// `google.protobuf.Struct` → JSON object (whole numbers stay integers).
pub fn from_struct(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_value(v)))
        .collect()
}

fn from_value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            Value::Number(Number::from(*n as i64))
        }
        Some(Kind::NumberValue(n)) => Number::from_f64(*n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(from_struct(s)),
    }
}

/// Route fields of a typed request.
pub fn route_input(
    domains: Vec<String>,
    path: String,
    backend_url: String,
    priority: i32,
) -> RouteInput {
    RouteInput {
        domains,
        path,
        backend_url,
        priority: priority.to_string(),
    }
}

impl From<SessionInfo> for pb::SessionInfoReply {
    fn from(s: SessionInfo) -> Self {
        pb::SessionInfoReply {
            session_id: s.session_id,
            service_name: s.service_name,
            instance_name: s.instance_name,
            maintenance_port: u32::from(s.maintenance_port),
            connected_at: Some(timestamp(s.connected_at)),
            uptime_seconds: s.uptime_seconds,
            last_activity: Some(timestamp(s.last_activity)),
            last_apply: s.last_apply.map(timestamp),
            routes_active: s.routes_active,
            routes_staged: s.routes_staged,
            metadata: Some(to_struct(&s.metadata)),
            subscriptions: s.subscriptions,
            liveness: s.liveness.to_string(),
            connections: s.connections,
            draining: s.draining,
            in_maintenance: s.in_maintenance,
            staged_expires_at: s.staged_expires_at.map(timestamp),
            ignored_options: s.ignored_options,
            events_dropped: s.events_dropped,
        }
    }
}

impl From<RouteEntry> for pb::RouteInfo {
    fn from(r: RouteEntry) -> Self {
        pb::RouteInfo {
            route_id: r.route_id,
            id: r.id,
            domains: r.domains,
            path: r.path,
            backend: r.backend,
            backend_url: r.backend_url,
            priority: r.priority,
            status: r.status.to_string(),
            in_maintenance: r.in_maintenance,
            healthy: r.healthy,
            active: r.active.map(|a| pb::ActiveRoute {
                domains: a.domains,
                path: a.path,
                backend: a.backend,
                priority: a.priority,
            }),
        }
    }
}

impl From<IdChanges> for pb::IdChanges {
    fn from(c: IdChanges) -> Self {
        pb::IdChanges {
            added: c.added,
            removed: c.removed,
            modified: c.modified,
        }
    }
}

impl From<CountChanges> for pb::CountChanges {
    fn from(c: CountChanges) -> Self {
        pb::CountChanges {
            added: c.added,
            removed: c.removed,
            modified: c.modified,
        }
    }
}

impl From<Diff> for pb::ConfigDiffReply {
    fn from(d: Diff) -> Self {
        pb::ConfigDiffReply {
            routes: Some(d.routes.into()),
            headers: Some(d.headers.into()),
            options: Some(d.options.into()),
            health: Some(d.health.into()),
            ratelimit: Some(d.ratelimit.into()),
            circuit_breaker: Some(d.circuit_breaker.into()),
            pending: d.pending,
        }
    }
}

impl From<DrainStatus> for pb::DrainStatusReply {
    fn from(d: DrainStatus) -> Self {
        pb::DrainStatusReply {
            active: d.active,
            completed: d.completed,
            started_at: Some(timestamp(d.started_at)),
            completes_at: Some(timestamp(d.completes_at)),
            duration_seconds: d.duration_seconds,
            elapsed_seconds: d.elapsed_seconds,
            remaining_seconds: d.remaining_seconds,
            start_percent: d.start_percent,
            traffic_percent: d.traffic_percent,
        }
    }
}

impl From<BreakerReport> for pb::CircuitBreakerStatusReply {
    fn from(b: BreakerReport) -> Self {
        pb::CircuitBreakerStatusReply {
            route_id: b.route_id,
            configured: b.configured,
            state: b.state.to_string(),
            failures: b.failures,
            successes: b.successes,
            threshold: b.threshold,
            timeout_seconds: b.timeout.map(|d| d.as_secs_f64()),
            half_open_requests: b.half_open_requests,
            last_failure: b.last_failure.map(timestamp),
            next_attempt: b.next_attempt.map(timestamp),
            healthy: b.healthy,
            in_maintenance: b.in_maintenance,
            draining: b.draining,
        }
    }
}

impl From<MaintStatus> for pb::MaintStatusReply {
    fn from(m: MaintStatus) -> Self {
        pb::MaintStatusReply {
            in_maintenance: m.in_maintenance,
            all: m.all,
            maintenance_backend: m.maintenance_backend,
            entered_at: m.entered_at.map(timestamp),
            routes: m
                .routes
                .into_iter()
                .map(|r| pb::MaintRoute {
                    route_id: r.route_id,
                    maintenance_backend: r.maintenance_backend,
                    entered_at: Some(timestamp(r.entered_at)),
                })
                .collect(),
        }
    }
}

impl From<RouteStats> for pb::RouteStats {
    fn from(s: RouteStats) -> Self {
        pb::RouteStats {
            route_id: s.route_id,
            requests: s.requests,
            errors: s.errors,
            avg_latency_ms: s.avg_latency_ms,
            p95_latency_ms: s.p95_latency_ms,
            p99_latency_ms: s.p99_latency_ms,
            bytes_sent: s.bytes_sent,
            bytes_received: s.bytes_received,
            status_codes: s
                .status_codes
                .into_iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v)))
                .collect(),
            rate_limited: s.rate_limited,
            unavailable: s.unavailable,
            since: Some(timestamp(s.since)),
        }
    }
}

impl From<BackendTest> for pb::BackendTestReply {
    fn from(t: BackendTest) -> Self {
        match t {
            BackendTest::Reachable {
                url,
                reachable,
                response_time_ms,
                status_code,
                tls_valid,
                tls_error,
            } => pb::BackendTestReply {
                url,
                reachable,
                response_time_ms,
                status_code: Some(u32::from(status_code)),
                tls_valid,
                tls_error,
                error: None,
            },
            BackendTest::Unreachable {
                url,
                reachable,
                error,
                response_time_ms,
            } => pb::BackendTestReply {
                url,
                reachable,
                response_time_ms,
                status_code: None,
                tls_valid: None,
                tls_error: None,
                error: Some(error),
            },
        }
    }
}

/// A bus event as a stream message.
pub fn event(e: &Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        r#type: e.kind.as_str().to_string(),
        time: Some(timestamp(e.time)),
        session_id: e.session_id.clone(),
        route_id: e.route_id.map(|r| r.to_string()).unwrap_or_default(),
        payload: Some(to_struct(&e.data)),
    }
}

/// The stream-local notice that `dropped` events were lost (API.md).
pub fn lagged(session_id: &str, dropped: u64) -> pb::Event {
    let mut payload = Map::new();
    payload.insert("dropped".into(), Value::from(dropped));
    pb::Event {
        seq: 0,
        r#type: "lagged".into(),
        time: Some(timestamp(SystemTime::now())),
        session_id: session_id.to_string(),
        route_id: String::new(),
        payload: Some(to_struct(&payload)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_the_pipe_syntax() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(duration_text(None), "");
        assert_eq!(duration_text(Some(&d(30, 0))), "30s");
        assert_eq!(duration_text(Some(&d(1, 500_000_000))), "1.500000000s");
        assert_eq!(duration_text(Some(&d(-1, 0))), "-1");
        assert_eq!(
            crate::registry::model::parse_duration(&duration_text(Some(&d(0, 100_000_000)))),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn structs_round_trip() {
        let json = serde_json::json!({"a": 1, "b": [true, null, "x"], "c": {"d": 1.5}});
        let map = json.as_object().expect("object").clone();
        assert_eq!(from_struct(&to_struct(&map)), map);
    }
}
