//! Prometheus text exposition (format 0.0.4) of the registry and its members: sessions and
//! routes by state, dropped events, and per-route traffic, health, drain and breaker state.
//! Labels are route ids and service names only, never client-controlled request values.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::Registry;
use crate::proxy::breaker::BreakerState;

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{name}");
        if !labels.is_empty() {
            let _ = write!(self.out, "{{");
            for (i, (k, v)) in labels.iter().enumerate() {
                let escaped = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(
                    self.out,
                    "{}{k}=\"{escaped}\"",
                    if i > 0 { "," } else { "" }
                );
            }
            let _ = write!(self.out, "}}");
        }
        let _ = writeln!(self.out, " {value}");
    }
}

impl Registry {
    /// The `/metrics` page.
    pub fn prometheus_text(&self) -> String {
        let st = self.lock();
        let mut out = String::with_capacity(4096);
        let mut f = Family { out: &mut out };
        let connected = st.sessions.values().filter(|s| s.connected).count();
        f.header("switchyard_sessions", "gauge", "Live sessions by state.");
        f.sample("switchyard_sessions", &[("state", "connected")], connected);
        f.sample(
            "switchyard_sessions",
            &[("state", "disconnected")],
            st.sessions.len() - connected,
        );
        let active: usize = st.sessions.values().map(|s| s.active.routes.len()).sum();
        let staged: usize = st.sessions.values().map(|s| s.staged.routes.len()).sum();
        f.header(
            "switchyard_routes",
            "gauge",
            "Routes in active and staged configurations.",
        );
        f.sample("switchyard_routes", &[("config", "active")], active);
        f.sample("switchyard_routes", &[("config", "staged")], staged);
        let dropped: u64 = st.sessions.values().map(|s| s.events_dropped).sum();
        f.header(
            "switchyard_events_dropped_total",
            "counter",
            "Events not delivered to live sessions because a reader was too slow.",
        );
        f.sample("switchyard_events_dropped_total", &[], dropped);
        f.header(
            "switchyard_pipe_connections",
            "gauge",
            "Open pipe connections.",
        );
        f.sample("switchyard_pipe_connections", &[], st.outboxes.len());

        let mut rows: Vec<(&str, &str, super::RouteId)> = st
            .sessions
            .values()
            .flat_map(|s| {
                s.active
                    .routes
                    .keys()
                    .map(move |rid| (s.service.as_str(), s.id.as_str(), *rid))
            })
            .collect();
        rows.sort_by_key(|r| r.2);
        type Read = fn(&crate::proxy::MemberLive) -> f64;
        let families: [(&str, &str, &str, Read); 8] = [
            (
                "switchyard_route_requests_total",
                "counter",
                "Requests forwarded to the member.",
                |m| m.stats.requests.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_route_errors_total",
                "counter",
                "Forwarded requests that failed (5xx or transport).",
                |m| m.stats.errors.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_route_bytes_sent_total",
                "counter",
                "Response body bytes written to clients.",
                |m| m.stats.bytes_sent.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_route_bytes_received_total",
                "counter",
                "Request body bytes read from clients.",
                |m| m.stats.bytes_received.load(Ordering::Relaxed) as f64,
            ),
            (
                "switchyard_route_healthy",
                "gauge",
                "1 when the member's health is up.",
                |m| f64::from(u8::from(m.healthy())),
            ),
            (
                "switchyard_route_drain_weight",
                "gauge",
                "Traffic weight of the member, 0 to 100.",
                |m| m.weight(),
            ),
            (
                "switchyard_route_in_maintenance",
                "gauge",
                "1 when the member is in maintenance.",
                |m| f64::from(u8::from(m.in_maintenance())),
            ),
            (
                "switchyard_route_breaker_open",
                "gauge",
                "1 while the member's breaker is open, 0.5 half-open.",
                |m| match m.breaker.status().state {
                    BreakerState::Closed => 0.0,
                    BreakerState::HalfOpen => 0.5,
                    BreakerState::Open => 1.0,
                },
            ),
        ];
        for (name, kind, help, read) in families {
            f.header(name, kind, help);
            for (service, _, rid) in &rows {
                if let Some(m) = st.members.get(rid) {
                    let route = rid.to_string();
                    f.sample(name, &[("service", service), ("route_id", &route)], read(m));
                }
            }
        }
        f.header(
            "switchyard_route_responses_total",
            "counter",
            "Forwarded requests by status class.",
        );
        for (service, _, rid) in &rows {
            let Some(m) = st.members.get(rid) else {
                continue;
            };
            let mut classes = [0u64; 5];
            for (status, count) in m.stats.status_codes() {
                if let Some(slot) = classes.get_mut(usize::from(status / 100).saturating_sub(1)) {
                    *slot += count;
                }
            }
            let route = rid.to_string();
            for (i, count) in classes.iter().enumerate() {
                let class = format!("{}xx", i + 1);
                f.sample(
                    "switchyard_route_responses_total",
                    &[
                        ("service", service),
                        ("route_id", &route),
                        ("class", &class),
                    ],
                    count,
                );
            }
        }
        out
    }
}
