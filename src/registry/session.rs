//! A session's identity, liveness bookkeeping and its two configurations (staged and active).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::events::EventType;
use super::model::{BreakerSpec, HealthSpec, RateLimitSpec, RouteId, RouteSpec, Target};
use crate::proxy::live::DrainRamp;

/// One pipe connection, as the registry knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// How a session stays connected (§2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Connection,
    Lease,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Connection => "connection",
            Liveness::Lease => "lease",
        }
    }
}

/// A response header entry; the map key is the lower-cased name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    /// As sent.
    pub name: String,
    pub value: String,
}

/// One complete configuration of a session (§3.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSet {
    pub routes: BTreeMap<RouteId, RouteSpec>,
    pub headers: BTreeMap<Target, BTreeMap<String, HeaderEntry>>,
    pub options: BTreeMap<Target, BTreeMap<String, String>>,
    pub health: BTreeMap<Target, HealthSpec>,
    pub ratelimit: BTreeMap<Target, RateLimitSpec>,
    pub circuit_breaker: BTreeMap<Target, BreakerSpec>,
}

impl ConfigSet {
    /// Removes a route and every entry that targets it.
    pub fn remove_route(&mut self, id: RouteId) {
        self.routes.remove(&id);
        let t = Target::Route(id);
        self.headers.remove(&t);
        self.options.remove(&t);
        self.health.remove(&t);
        self.ratelimit.remove(&t);
        self.circuit_breaker.remove(&t);
    }

    /// Drops route-targeted entries whose route is not in this configuration.
    pub fn drop_orphans(&mut self) {
        let routes = &self.routes;
        let keep = |t: &Target| match t {
            Target::All => true,
            Target::Route(id) => routes.contains_key(id),
        };
        self.headers.retain(|t, _| keep(t));
        self.options.retain(|t, _| keep(t));
        self.health.retain(|t, _| keep(t));
        self.ratelimit.retain(|t, _| keep(t));
        self.circuit_breaker.retain(|t, _| keep(t));
    }

    /// An option's value for a route: its own, else `ALL`'s (§3.3).
    pub fn option(&self, id: RouteId, key: &str) -> Option<&str> {
        [Target::Route(id), Target::All]
            .iter()
            .find_map(|t| self.options.get(t).and_then(|m| m.get(key)))
            .map(String::as_str)
    }

    /// A per-target setting for a route: its own, else `ALL`'s.
    pub fn inherited<T>(map: &BTreeMap<Target, T>, id: RouteId) -> Option<&T> {
        map.get(&Target::Route(id))
            .or_else(|| map.get(&Target::All))
    }

    /// Effective response headers of a route: `ALL`'s, overridden name by name by its own.
    pub fn effective_headers(&self, id: RouteId) -> Vec<&HeaderEntry> {
        let mut merged: BTreeMap<&str, &HeaderEntry> = BTreeMap::new();
        for t in [Target::All, Target::Route(id)] {
            if let Some(map) = self.headers.get(&t) {
                for (k, v) in map {
                    merged.insert(k, v);
                }
            }
        }
        merged.into_values().collect()
    }
}

/// One registered instance of a service.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub service: String,
    pub instance: String,
    pub maintenance_port: u16,
    /// Reserved keys removed.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub liveness: Liveness,
    pub created_at: SystemTime,
    pub last_activity: SystemTime,
    pub last_apply: Option<SystemTime>,
    pub active: ConfigSet,
    pub staged: ConfigSet,
    /// Time of the most recent staging command (the staged TTL runs from it, §3.7).
    pub staged_at: Option<SystemTime>,
    /// Deadline of the staged TTL (§3.7), from the most recent staging command.
    pub staged_deadline: Option<Instant>,
    pub subscriptions: BTreeSet<EventType>,
    pub events_dropped: u64,
    /// Open pipe connections attached to the session.
    pub connections: BTreeSet<ConnId>,
    /// The connection that gets `EVENT` lines (§2.4).
    pub event_conn: Option<ConnId>,
    /// Whether the proxy may choose the session's members (§2.5).
    pub connected: bool,
    /// Lease of `lease` mode: the last command for the session plus the session lease.
    pub lease_until: Option<Instant>,
    /// Front lease: the last gRPC/HTTP call naming the session plus the session lease.
    pub front_lease_until: Option<Instant>,
    /// Open gRPC/SSE event streams.
    pub streams: u32,
    /// When a disconnected session expires.
    pub grace_deadline: Option<Instant>,
    pub maintenance: Maintenance,
    pub drain: Option<Drain>,
    /// The maintenance command whose completion is still owed (§5.1).
    pub pending_maint: Option<PendingMaint>,
}

/// A maintenance mark: the page URL as sent (`""` = built-in page) and when it was entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintMark {
    pub page: String,
    pub entered_at: SystemTime,
    /// Registry-wide order of entries (larger = more recent).
    pub order: u64,
}

/// A session's maintenance marks, for active and staged routes alike.
#[derive(Debug, Clone, Default)]
pub struct Maintenance {
    /// The whole-session mark of `MAINT_ENTER … ALL`: routes activated later join it.
    pub all: Option<MaintMark>,
    pub routes: BTreeMap<RouteId, MaintMark>,
}

impl Maintenance {
    /// The mark in effect for a route (its own, else the whole-session one).
    pub fn mark(&self, id: RouteId) -> Option<&MaintMark> {
        self.routes.get(&id).or(self.all.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_none() && self.routes.is_empty()
    }
}

/// A drain in effect (§4.25).
#[derive(Debug, Clone)]
pub struct Drain {
    pub started_at: SystemTime,
    pub ramp: DrainRamp,
    /// `drain_completed` was emitted.
    pub completion_reported: bool,
}

/// A maintenance completion still owed to a pipe connection.
#[derive(Debug)]
pub struct PendingMaint {
    pub conn: Option<ConnId>,
    pub txn: Option<String>,
    /// The target as received.
    pub target: String,
    pub generation: u64,
    pub probe: Option<AbortHandle>,
    /// The payload of its first `maintenance_changed`, for the confirming one.
    pub event: serde_json::Map<String, serde_json::Value>,
}

impl Session {
    /// A new, connected, empty session.
    pub fn new(
        id: String,
        service: String,
        instance: String,
        maintenance_port: u16,
        metadata: serde_json::Map<String, serde_json::Value>,
        liveness: Liveness,
        now: SystemTime,
    ) -> Session {
        Session {
            id,
            service,
            instance,
            maintenance_port,
            metadata,
            liveness,
            created_at: now,
            last_activity: now,
            last_apply: None,
            active: ConfigSet::default(),
            staged: ConfigSet::default(),
            staged_at: None,
            staged_deadline: None,
            subscriptions: BTreeSet::new(),
            events_dropped: 0,
            connections: BTreeSet::new(),
            event_conn: None,
            connected: true,
            lease_until: None,
            front_lease_until: None,
            streams: 0,
            grace_deadline: None,
            maintenance: Maintenance::default(),
            drain: None,
            pending_maint: None,
        }
    }

    /// Whether staged differs from active.
    pub fn pending(&self) -> bool {
        self.staged != self.active
    }

    /// The id as logs may show it: the part before the random suffix plus 8 hex digits (§8.1).
    pub fn log_id(&self) -> String {
        log_id(&self.id)
    }
}

/// See [`Session::log_id`].
pub fn log_id(id: &str) -> String {
    match id.rsplit_once('-') {
        Some((head, hex)) => format!("{head}-{}", &hex[..hex.len().min(8)]),
        None => String::from("?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{BackendUrl, RouteId};

    fn route(path: &str) -> RouteSpec {
        RouteSpec {
            domains: vec!["a.com".into()],
            path: path.into(),
            backend: BackendUrl::parse("http://b:1").expect("valid"),
            priority: 0,
        }
    }

    #[test]
    fn removing_a_route_removes_its_entries() {
        let mut c = ConfigSet::default();
        c.routes.insert(RouteId(1), route("/"));
        c.routes.insert(RouteId(2), route("/x"));
        for t in [
            Target::All,
            Target::Route(RouteId(1)),
            Target::Route(RouteId(2)),
        ] {
            c.options
                .entry(t)
                .or_default()
                .insert("timeout".into(), "1".into());
        }
        c.remove_route(RouteId(1));
        assert_eq!(c.options.len(), 2);
        assert_eq!(c.option(RouteId(2), "timeout"), Some("1"));
        c.routes.remove(&RouteId(2));
        c.drop_orphans();
        assert_eq!(c.options.keys().collect::<Vec<_>>(), vec![&Target::All]);
    }

    #[test]
    fn route_headers_override_all_by_name() {
        let mut c = ConfigSet::default();
        let entry = |n: &str, v: &str| HeaderEntry {
            name: n.into(),
            value: v.into(),
        };
        c.headers
            .entry(Target::All)
            .or_default()
            .insert("x-a".into(), entry("X-A", "all"));
        c.headers
            .entry(Target::All)
            .or_default()
            .insert("x-b".into(), entry("X-B", "all"));
        c.headers
            .entry(Target::Route(RouteId(1)))
            .or_default()
            .insert("x-a".into(), entry("x-a", "route"));
        let eff = c.effective_headers(RouteId(1));
        assert_eq!(eff.len(), 2);
        assert_eq!(eff[0].value, "route");
        assert_eq!(eff[1].value, "all");
    }

    #[test]
    fn log_ids_hide_the_secret() {
        assert_eq!(
            log_id("shop-1-1734694200-4f9a0c2e8b1d4e7fa3c65b0d9e2f1a87"),
            "shop-1-1734694200-4f9a0c2e"
        );
    }
}
