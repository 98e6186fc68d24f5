//! The one internal service: sessions, staging, validation and atomic apply. Every front calls
//! a `Registry` method; the registry resolves the session first, then validates fields, then
//! state (PROTOCOL §1.8), so all fronts report the same first error.

pub mod apply;
pub mod clock;
pub mod error;
pub mod events;
pub mod feed;
mod liveness;
pub mod maintenance;
pub mod metrics;
pub mod model;
pub mod operate;
pub mod session;
pub mod staging;
pub mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::proxy::breaker::BreakerConfig;
use crate::proxy::live::{MaintenanceMark, MaintenancePage};
use crate::proxy::probe::ProbeTarget;
use crate::proxy::{Engine, MemberLive};
use crate::shutdown::Shutdown;
use apply::{build_snapshot, upstream_of, Claims, PoolLives, ProxyDefaults};
use clock::{rfc3339, unix_seconds, Clock};
pub use error::{Error, ErrorKind, Result};
use events::{Audience, EventBus, EventType, Outbox};
use model::{
    is_known_option, parse_domains, parse_int, parse_route_path, split_list, validate_header_value,
    validate_instance_name, validate_option, validate_service_name, validate_settable_header,
    BackendUrl, RouteId, RouteInput, RouteSpec, Target, MAX_METADATA_BYTES, MAX_OPTION_KEY_BYTES,
};
pub use session::ConnId;
use session::{ConfigSet, HeaderEntry, Liveness, MaintMark, Session};
use staging::{Ownership, RouteStatus, Scopes};
use views::{ActiveValues, BulkResult, RouteEntry, SessionInfo, ShutdownOutcome};

/// Who is calling: a pipe connection (which can be attached and serve as a fallback), or a
/// connection-less front (gRPC, HTTP), which renews the session's front lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Pipe(ConnId),
    Front,
}

/// Registry settings (PROTOCOL §8.4–§8.5).
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub max_sessions: usize,
    pub max_routes_per_session: usize,
    pub max_connections_per_session: usize,
    pub max_headers_per_target: usize,
    pub max_options_per_target: usize,
    pub session_grace: Duration,
    pub session_lease: Duration,
    pub staged_ttl: Duration,
    pub auth_token: Option<String>,
    /// Bytes of events one pipe connection may have queued (§8.4).
    pub outbound_queue: usize,
    /// Events the bus retains for replay.
    pub event_ring: usize,
    /// Bound of a maintenance completion (§5.1).
    pub maintenance_bound: Duration,
    pub backend_test_timeout: Duration,
    pub proxy: ProxyDefaults,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            max_sessions: 1024,
            max_routes_per_session: 256,
            max_connections_per_session: 64,
            max_headers_per_target: 64,
            max_options_per_target: 64,
            session_grace: Duration::from_secs(300),
            session_lease: Duration::from_secs(30),
            staged_ttl: Duration::from_secs(30 * 60),
            auth_token: None,
            outbound_queue: 256 * 1024,
            event_ring: 1024,
            maintenance_bound: Duration::from_secs(8),
            backend_test_timeout: Duration::from_secs(5),
            proxy: ProxyDefaults::default(),
        }
    }
}

/// The handle every front holds; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    settings: RegistrySettings,
    bus: EventBus,
    /// Triggered when the server stops: event streams end.
    stopping: Shutdown,
    /// Wakes the timer task when a deadline moved.
    timers: Notify,
    next_conn: AtomicU64,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, Session>,
    /// (service, instance) → session id, for replacement (§2.2).
    names: HashMap<(String, String), String>,
    /// Which session a route id was allocated to.
    route_owner: HashMap<RouteId, String>,
    claims: Claims,
    next_route: u64,
    /// Sessions each open pipe connection is attached to.
    conns: HashMap<ConnId, BTreeSet<String>>,
    /// Where each open pipe connection takes its asynchronous lines.
    outboxes: HashMap<ConnId, Outbox>,
    /// Live state of every active route.
    members: HashMap<RouteId, Arc<MemberLive>>,
    pool_lives: PoolLives,
    /// Order of maintenance entries and generation of maintenance commands.
    counter: u64,
    /// When the timer task wakes next (`None`: it waits for a notification).
    next_wake: Option<Instant>,
}

/// Which configuration a command reads when it resolves a route id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reads {
    Staged,
    Active,
}

/// Ownership as seen by one session, for validation.
struct SessionView<'a> {
    claims: &'a Claims,
    session: &'a str,
}

impl Ownership for SessionView<'_> {
    fn claimed_by(&self, domain: &str, path: &str) -> Option<&str> {
        self.claims.claimed_by(domain, path, self.session)
    }

    fn backend_allowed(&self, route: &RouteSpec) -> Result<()> {
        backend_allowed(&route.backend)
    }
}

/// The default allow-list of §8.3: everything but link-local literals.
fn backend_allowed(url: &BackendUrl) -> Result<()> {
    let link_local = match url.host_name().parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_link_local(),
        Ok(IpAddr::V6(v6)) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        Err(_) => false,
    };
    if link_local {
        return Err(Error::invalid(format!(
            "backend not allowed: {}",
            error::echo(url.host_name())
        )));
    }
    Ok(())
}

/// The `GET` that probes a URL: its path (`/` when it has none) and query.
fn probe_target(url: &BackendUrl, query: Option<&str>) -> ProbeTarget {
    let upstream = upstream_of(url);
    let mut path_and_query = if url.path.is_empty() {
        "/".to_string()
    } else {
        url.path.clone()
    };
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    ProbeTarget {
        scheme: upstream.scheme,
        authority: upstream.authority,
        host_header: upstream.host_header,
        path_and_query,
        verify: true,
    }
}

/// A maintenance page URL (§4.28): `http`/`https`, a query allowed, allow-listed; with the
/// probe that confirms it.
fn parse_page_url(raw: &str) -> Result<Option<(MaintenancePage, ProbeTarget)>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("invalid maintenance url");
    let (base, query) = match raw.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (raw, None),
    };
    if raw.len() > model::MAX_URL_BYTES || query.is_some_and(|q| q.contains(['#', ' '])) {
        return Err(bad());
    }
    let url = BackendUrl::parse_with(base, &["http", "https"]).ok_or_else(bad)?;
    backend_allowed(&url)?;
    let page = MaintenancePage {
        raw: raw.to_string(),
        upstream: upstream_of(&url),
        query: query.map(str::to_string),
    };
    Ok(Some((page, probe_target(&url, query))))
}

impl State {
    fn session(&self, id: &str) -> &Session {
        self.sessions
            .get(id)
            .expect("resolved session ids name live sessions")
    }

    fn session_mut(&mut self, id: &str) -> &mut Session {
        self.sessions
            .get_mut(id)
            .expect("resolved session ids name live sessions")
    }

    fn next_counter(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// Route-id resolution (§4 table).
    fn resolve_route(&self, session: &str, text: &str, reads: Reads) -> Result<RouteId> {
        let s = self.session(session);
        let Some(id) = RouteId::parse(text) else {
            return Err(Error::RouteNotFound);
        };
        let (here, there) = match reads {
            Reads::Staged => (&s.staged, &s.active),
            Reads::Active => (&s.active, &s.staged),
        };
        if here.routes.contains_key(&id) {
            return Ok(id);
        }
        if there.routes.contains_key(&id) {
            return Err(match reads {
                Reads::Staged => Error::RouteNotFound,
                Reads::Active => Error::RouteNotActive,
            });
        }
        if self.foreign_route(session, id) {
            return Err(Error::PermissionDenied(format!(
                "route {id} belongs to another session"
            )));
        }
        Err(Error::RouteNotFound)
    }

    /// Whether `id` is a route of a session other than `session`.
    fn foreign_route(&self, session: &str, id: RouteId) -> bool {
        self.route_owner
            .get(&id)
            .filter(|owner| owner.as_str() != session)
            .and_then(|owner| self.sessions.get(owner))
            .is_some_and(|o| o.staged.routes.contains_key(&id) || o.active.routes.contains_key(&id))
    }

    fn resolve_target(&self, session: &str, text: &str, reads: Reads) -> Result<Target> {
        if text == "ALL" {
            return Ok(Target::All);
        }
        self.resolve_route(session, text, reads).map(Target::Route)
    }

    /// The staging state checks of §4.6 for `route` (replacing `except` when updating).
    fn check_pairs(&self, session: &str, route: &RouteSpec, except: Option<RouteId>) -> Result<()> {
        let s = self.session(session);
        for (domain, path) in route.pairs() {
            let taken = s
                .staged
                .routes
                .iter()
                .filter(|(id, _)| Some(**id) != except)
                .any(|(_, r)| r.path == path && r.domains.iter().any(|d| d == domain));
            if taken {
                return Err(Error::DuplicateRoute(format!("{domain}{path}")));
            }
        }
        for (domain, path) in route.pairs() {
            if self
                .claims
                .claimed_by(domain, path, session)
                .is_some_and(|svc| svc != s.service)
            {
                return Err(staging::claimed_error(domain, path));
            }
        }
        Ok(())
    }

    /// The live state of a session's active routes.
    fn live_of<'a>(
        &'a self,
        session: &'a Session,
    ) -> impl Iterator<Item = (RouteId, &'a Arc<MemberLive>)> + 'a {
        session
            .active
            .routes
            .keys()
            .filter_map(|rid| self.members.get(rid).map(|m| (*rid, m)))
    }
}

/// The proxy's maintenance mark for a session mark.
fn member_mark(mark: &MaintMark) -> MaintenanceMark {
    MaintenanceMark {
        // Marks were validated when entered.
        page: parse_page_url(&mark.page)
            .ok()
            .flatten()
            .map(|(page, _)| page),
        order: mark.order,
    }
}

/// Validated `REGISTER` metadata.
#[derive(Debug)]
struct Metadata {
    stored: Map<String, Value>,
    liveness: Liveness,
    token: Option<String>,
}

fn parse_metadata(text: &str) -> Result<Metadata> {
    let bad = || Error::invalid("invalid metadata json");
    if text.len() > MAX_METADATA_BYTES {
        return Err(bad());
    }
    let mut map = match text {
        "" | "null" => Map::new(),
        t if t.starts_with('{') => match serde_json::from_str::<Value>(t) {
            Ok(Value::Object(m)) => m,
            _ => return Err(bad()),
        },
        t => Map::from_iter([("legacy".to_string(), Value::String(t.to_string()))]),
    };
    let liveness = match map.remove("liveness") {
        None => Liveness::Connection,
        Some(Value::String(s)) if s == "connection" => Liveness::Connection,
        Some(Value::String(s)) if s == "lease" => Liveness::Lease,
        Some(_) => return Err(Error::invalid("invalid liveness")),
    };
    let token = map.remove("auth_token").map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    });
    Ok(Metadata {
        stored: map,
        liveness,
        token,
    })
}

/// Constant-time comparison of secrets.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// A new session id (§2.1).
fn new_session_id(instance: &str, now: SystemTime) -> String {
    let clean: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let mut bytes = [0u8; 16];
    // ThreadRng is a CSPRNG (ChaCha, seeded and reseeded from the OS).
    rand::rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{clean}-{}-{hex}", unix_seconds(now))
}

/// Arguments of `REGISTER` as received.
#[derive(Debug, Clone, Default)]
pub struct RegisterRequest {
    pub service_name: String,
    pub instance_name: String,
    pub maintenance_port: String,
    pub metadata: String,
    /// The peer address, the instance name when none is given.
    pub peer: Option<IpAddr>,
    /// The token a front has taken from the call itself (gRPC/HTTP bearer); when `None` the
    /// metadata's `auth_token` is the token (the pipe, PROTOCOL §8.2).
    pub token: Option<String>,
}

/// Bulk items as a front parsed them: the whole list may be malformed, or single elements.
pub type BulkInput = Result<Vec<Result<RouteInput>>>;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndReason {
    GraceExpired,
    LeaseExpired,
    Replaced,
    ClientShutdown,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::GraceExpired => "grace_expired",
            EndReason::LeaseExpired => "lease_expired",
            EndReason::Replaced => "replaced",
            EndReason::ClientShutdown => "client_shutdown",
        }
    }
}

impl Registry {
    /// A registry that publishes into `engine`; its streams end when `stopping` fires.
    pub fn new(
        engine: Arc<Engine>,
        clock: Arc<dyn Clock>,
        settings: RegistrySettings,
        stopping: Shutdown,
    ) -> Registry {
        let bus = EventBus::new(settings.event_ring);
        Registry {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next_route: 1,
                    ..State::default()
                }),
                engine,
                clock,
                settings,
                bus,
                stopping,
                timers: Notify::new(),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation completes before anything can panic, so a poisoned lock still holds a
        // consistent state: keep serving.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// The event bus (streams subscribe to it).
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    /// §2.3: the session a command names, with the bookkeeping of §1.8 step 4.
    fn resolve(&self, st: &mut State, caller: Caller, sid: &str) -> Result<String> {
        let id = if sid.is_empty() {
            let fallback = match caller {
                Caller::Pipe(conn) => st
                    .conns
                    .get(&conn)
                    .filter(|set| set.len() == 1)
                    .and_then(|set| set.iter().next().cloned()),
                Caller::Front => None,
            };
            fallback.ok_or(Error::NoSession)?
        } else if st.sessions.contains_key(sid) {
            sid.to_string()
        } else {
            return Err(Error::SessionNotFound);
        };
        self.check_attach(st, caller, &id)?;
        self.touch(st, caller, &id);
        Ok(id)
    }

    /// §8.4: attaching one more connection must stay within the per-session limit.
    fn check_attach(&self, st: &State, caller: Caller, id: &str) -> Result<()> {
        let Caller::Pipe(conn) = caller else {
            return Ok(());
        };
        let s = st.session(id);
        if !s.connections.contains(&conn)
            && s.connections.len() >= self.inner.settings.max_connections_per_session
        {
            return Err(Error::TooMany("connections for session"));
        }
        Ok(())
    }

    /// Attachment, lease renewal, implicit reconnection and activity of a resolved session.
    fn touch(&self, st: &mut State, caller: Caller, id: &str) {
        let now = Instant::now();
        let lease = self.inner.settings.session_lease;
        let session = st.session_mut(id);
        session.last_activity = self.now();
        session.lease_until = Some(now + lease);
        let leased = session.liveness == Liveness::Lease || caller == Caller::Front;
        match caller {
            Caller::Pipe(conn) => {
                session.connections.insert(conn);
                if session.event_conn.is_none() {
                    session.event_conn = Some(conn);
                }
                st.conns.entry(conn).or_default().insert(id.to_string());
            }
            Caller::Front => session.front_lease_until = Some(now + lease),
        }
        if leased {
            self.schedule(st, now + lease);
        }
        self.update_liveness(st, id);
    }

    /// Makes sure the timer task wakes by `at` (it is notified only when `at` is earlier than
    /// its next wake-up, so renewing a lease costs nothing on the hot path).
    fn schedule(&self, st: &mut State, at: Instant) {
        if st.next_wake.is_none_or(|wake| at < wake) {
            st.next_wake = Some(at);
            self.inner.timers.notify_one();
        }
    }

    /// Publishes the snapshot of every active configuration.
    fn publish(&self, st: &mut State) {
        let State {
            sessions,
            members,
            pool_lives,
            ..
        } = st;
        let snapshot = build_snapshot(
            sessions.values(),
            members,
            pool_lives,
            &self.inner.settings.proxy,
        );
        self.inner.engine.publish(snapshot);
        self.inner
            .engine
            .sync_health(apply::health_checks(sessions.values(), members));
    }

    /// Publishes an event and queues it for the pipe sessions that should see it (§5.2).
    fn emit(
        &self,
        st: &mut State,
        kind: EventType,
        session: &str,
        route: Option<RouteId>,
        data: Value,
    ) -> Arc<events::Event> {
        let data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let audience = match kind {
            EventType::GlobalConfigChanged => Audience::Everyone,
            EventType::SessionExpired => Audience::Service(
                data.get("service_name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            _ => Audience::Owner,
        };
        let now = self.now();
        let event = self
            .inner
            .bus
            .publish(kind, session, route, data, audience, now);
        let recipients: Vec<String> = st
            .sessions
            .values()
            .filter(|s| event.reaches(&s.id, &s.service))
            .map(|s| s.id.clone())
            .collect();
        for id in recipients {
            let Some(s) = st.sessions.get_mut(&id) else {
                continue;
            };
            if !s.subscriptions.contains(&kind) {
                continue;
            }
            let Some(outbox) = s.event_conn.and_then(|c| st.outboxes.get(&c)) else {
                continue;
            };
            if !outbox.push_event(event.clone()) {
                s.events_dropped += 1;
            }
        }
        event
    }

    /// Ends a session (replacement, shutdown, expiry): routes leave the proxy at once, pending
    /// completions are dropped, peers of the same service hear `session_expired`.
    fn end_session(&self, st: &mut State, id: &str, reason: EndReason) {
        let Some(session) = st.sessions.remove(id) else {
            return;
        };
        st.names
            .remove(&(session.service.clone(), session.instance.clone()));
        st.claims.remove(id, &session.active);
        for rid in session
            .active
            .routes
            .keys()
            .chain(session.staged.routes.keys())
        {
            st.route_owner.remove(rid);
            st.members.remove(rid);
        }
        for conn in &session.connections {
            if let Some(set) = st.conns.get_mut(conn) {
                set.remove(id);
            }
        }
        if let Some(pending) = &session.pending_maint {
            if let Some(probe) = &pending.probe {
                probe.abort();
            }
            if let Some(outbox) = pending.conn.and_then(|c| st.outboxes.get(&c)) {
                outbox.cancel_completion();
            }
        }
        tracing::info!(
            session = %session.log_id(),
            service = %session.service,
            reason = reason.as_str(),
            "session ended"
        );
        self.publish(st);
        let data = json!({
            "service_name": session.service,
            "instance_name": session.instance,
            "reason": reason.as_str(),
        });
        let event = self.emit(st, EventType::SessionExpired, id, None, data);
        // A replaced session hears about it on its old event connection if it subscribed.
        if reason == EndReason::Replaced
            && session.subscriptions.contains(&EventType::SessionExpired)
        {
            if let Some(outbox) = session.event_conn.and_then(|c| st.outboxes.get(&c)) {
                outbox.push_event(event);
            }
        }
    }

    /// `REGISTER` (§4.1).
    pub fn register(&self, caller: Caller, req: RegisterRequest) -> Result<String> {
        validate_service_name(&req.service_name)?;
        validate_instance_name(&req.instance_name)?;
        let port = if req.maintenance_port.is_empty() {
            0
        } else {
            parse_int(&req.maintenance_port, 0, 65535)
                .ok_or_else(|| Error::invalid("invalid maintenance port"))? as u16
        };
        let meta = parse_metadata(&req.metadata)?;
        if let Some(expected) = &self.inner.settings.auth_token {
            let given = req.token.as_deref().or(meta.token.as_deref()).unwrap_or("");
            if !same_secret(given, expected) {
                return Err(Error::PermissionDenied("invalid auth token".into()));
            }
        }
        let instance = if req.instance_name.is_empty() {
            req.peer.map(|ip| ip.to_string()).unwrap_or_default()
        } else {
            req.instance_name.clone()
        };
        let now = self.now();
        let mut st = self.lock();
        let key = (req.service_name.clone(), instance.clone());
        let replacing = st.names.get(&key).cloned();
        if replacing.is_none() && st.sessions.len() >= self.inner.settings.max_sessions {
            return Err(Error::TooMany("sessions"));
        }
        if let Some(old) = replacing {
            self.end_session(&mut st, &old, EndReason::Replaced);
        }
        let id = new_session_id(&instance, now);
        let session = Session::new(
            id.clone(),
            req.service_name,
            instance,
            port,
            meta.stored,
            meta.liveness,
            now,
        );
        tracing::info!(session = %session.log_id(), service = %session.service, "session registered");
        st.names.insert(key, id.clone());
        st.sessions.insert(id.clone(), session);
        self.touch(&mut st, caller, &id);
        if let Caller::Pipe(conn) = caller {
            st.session_mut(&id).event_conn = Some(conn);
        }
        Ok(id)
    }

    /// `PING` (§4.3): with no session and no fallback it is a pure liveness probe.
    pub fn ping(&self, caller: Caller, sid: &str) -> Result<()> {
        let mut st = self.lock();
        match self.resolve(&mut st, caller, sid) {
            Ok(_) | Err(Error::NoSession) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `SESSION_INFO` (§4.4).
    pub fn session_info(&self, caller: Caller, sid: &str) -> Result<SessionInfo> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        Ok(self.info_of(&st, st.session(&id)))
    }

    /// The `SESSION_OK` payload of a session.
    fn info_of(&self, st: &State, s: &Session) -> SessionInfo {
        let now = self.now();
        let routes_staged = s
            .active
            .routes
            .keys()
            .chain(s.staged.routes.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|rid| {
                RouteStatus::of(s.staged.routes.get(rid), s.active.routes.get(rid))
                    != Some(RouteStatus::Active)
            })
            .count() as u64;
        let in_maintenance =
            s.maintenance.all.is_some() || st.live_of(s).any(|(_, m)| m.in_maintenance());
        let staged_expires_at = s
            .pending()
            .then_some(s.staged_at)
            .flatten()
            .map(|t| t + self.inner.settings.staged_ttl);
        let ignored_options = s
            .staged
            .options
            .iter()
            .flat_map(|(t, m)| {
                m.keys()
                    .filter(|k| !is_known_option(k))
                    .map(move |k| format!("{t}:{k}"))
            })
            .collect();
        let mut subscriptions: Vec<String> = s
            .subscriptions
            .iter()
            .map(|t| t.as_str().to_string())
            .collect();
        subscriptions.sort();
        SessionInfo {
            session_id: s.id.clone(),
            service_name: s.service.clone(),
            instance_name: s.instance.clone(),
            maintenance_port: s.maintenance_port,
            connected_at: s.created_at,
            uptime_seconds: now
                .duration_since(s.created_at)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            last_activity: s.last_activity,
            last_apply: s.last_apply,
            routes_active: s.active.routes.len() as u64,
            routes_staged,
            metadata: s.metadata.clone(),
            subscriptions,
            liveness: s.liveness.as_str(),
            connections: s.connections.len() as u64,
            draining: s.drain.is_some(),
            in_maintenance,
            staged_expires_at,
            ignored_options,
            events_dropped: s.events_dropped,
        }
    }

    /// `CLIENT_SHUTDOWN` (§2.8).
    pub fn client_shutdown(&self, caller: Caller, sid: &str) -> Result<ShutdownOutcome> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        self.end_session(&mut st, &id, EndReason::ClientShutdown);
        let close_connection = match caller {
            Caller::Pipe(conn) => st.conns.get(&conn).is_none_or(|s| s.is_empty()),
            Caller::Front => false,
        };
        Ok(ShutdownOutcome { close_connection })
    }

    /// Runs a staging command: resolve the session, run `stage` on the state, and on success
    /// restart the staged TTL (§3.2).
    fn stage<T>(
        &self,
        caller: Caller,
        sid: &str,
        stage: impl FnOnce(&mut State, &str) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let out = stage(&mut st, &id)?;
        let ttl = self.inner.settings.staged_ttl;
        let deadline = Instant::now() + ttl;
        let session = st.session_mut(&id);
        session.staged_at = Some(self.now());
        session.staged_deadline = Some(deadline);
        self.schedule(&mut st, deadline);
        Ok(out)
    }

    fn allocate_route(&self, st: &mut State, session: &str, route: RouteSpec) -> RouteId {
        let id = RouteId(st.next_route);
        st.next_route += 1;
        st.route_owner.insert(id, session.to_string());
        st.session_mut(session).staged.routes.insert(id, route);
        id
    }

    /// `ROUTE_ADD` (§4.6).
    pub fn route_add(&self, caller: Caller, sid: &str, input: RouteInput) -> Result<RouteId> {
        let limit = self.inner.settings.max_routes_per_session;
        self.stage(caller, sid, |st, id| {
            let route = input.validate()?;
            backend_allowed(&route.backend)?;
            st.check_pairs(id, &route, None)?;
            if st.session(id).staged.routes.len() >= limit {
                return Err(Error::TooMany("routes"));
            }
            Ok(self.allocate_route(st, id, route))
        })
    }

    /// `ROUTE_ADD_BULK` (§4.7): all or nothing.
    pub fn route_add_bulk(
        &self,
        caller: Caller,
        sid: &str,
        input: BulkInput,
    ) -> Result<Vec<BulkResult>> {
        let limit = self.inner.settings.max_routes_per_session;
        self.stage(caller, sid, |st, id| {
            let items = input?;
            if items.len() > 256 {
                return Err(Error::TooMany("routes"));
            }
            let mut accepted: Vec<RouteSpec> = Vec::with_capacity(items.len());
            let staged_count = st.session(id).staged.routes.len();
            for (index, item) in items.into_iter().enumerate() {
                let wrap = |reason: Error| Error::BulkItem {
                    index,
                    reason: Box::new(reason),
                };
                let route = item.and_then(|i| i.validate()).map_err(wrap)?;
                backend_allowed(&route.backend).map_err(wrap)?;
                if let Some((d, p)) = route.pairs().find(|(d, p)| {
                    accepted
                        .iter()
                        .any(|r| r.path == *p && r.domains.iter().any(|x| x == d))
                }) {
                    return Err(wrap(Error::DuplicateRoute(format!("{d}{p}"))));
                }
                st.check_pairs(id, &route, None).map_err(wrap)?;
                if staged_count + accepted.len() >= limit {
                    return Err(wrap(Error::TooMany("routes")));
                }
                accepted.push(route);
            }
            Ok(accepted
                .into_iter()
                .map(|route| BulkResult {
                    route_id: self.allocate_route(st, id, route).to_string(),
                    status: "ok",
                })
                .collect())
        })
    }

    /// `ROUTE_UPDATE` (§4.8).
    pub fn route_update(
        &self,
        caller: Caller,
        sid: &str,
        rid: &str,
        field: &str,
        value: &str,
    ) -> Result<()> {
        self.stage(caller, sid, |st, id| {
            enum Change {
                Backend(BackendUrl),
                Priority(i32),
                Domains(Vec<String>),
                Path(String),
            }
            let change = match field {
                "backend_url" | "backend" => {
                    let url = model::parse_backend(value)?;
                    backend_allowed(&url)?;
                    Change::Backend(url)
                }
                "priority" => Change::Priority(model::parse_priority(value)?),
                "domains" => Change::Domains(parse_domains(&split_list(value))?),
                "path" => Change::Path(parse_route_path(value)?),
                other => return Err(Error::invalid_value("unknown field", other)),
            };
            let rid = st.resolve_route(id, rid, Reads::Staged)?;
            let mut route = st.session(id).staged.routes[&rid].clone();
            match change {
                Change::Backend(url) => route.backend = url,
                Change::Priority(p) => route.priority = p,
                Change::Domains(d) => route.domains = d,
                Change::Path(p) => route.path = p,
            }
            st.check_pairs(id, &route, Some(rid))?;
            st.session_mut(id).staged.routes.insert(rid, route);
            Ok(())
        })
    }

    /// `ROUTE_REMOVE` (§4.9).
    pub fn route_remove(&self, caller: Caller, sid: &str, rid: &str) -> Result<()> {
        self.stage(caller, sid, |st, id| {
            let rid = st.resolve_route(id, rid, Reads::Staged)?;
            st.session_mut(id).staged.remove_route(rid);
            Ok(())
        })
    }

    /// `ROUTE_LIST` (§4.10).
    pub fn route_list(&self, caller: Caller, sid: &str) -> Result<Vec<RouteEntry>> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let s = st.session(&id);
        let ids: BTreeSet<&RouteId> = s
            .active
            .routes
            .keys()
            .chain(s.staged.routes.keys())
            .collect();
        let entries = ids
            .into_iter()
            .filter_map(|rid| {
                let staged = s.staged.routes.get(rid);
                let active = s.active.routes.get(rid);
                let status = RouteStatus::of(staged, active)?;
                let shown = staged.or(active)?;
                let live = active.and_then(|_| st.members.get(rid));
                Some(RouteEntry {
                    route_id: rid.to_string(),
                    id: rid.to_string(),
                    domains: shown.domains.clone(),
                    path: shown.path.clone(),
                    backend: shown.backend.raw.clone(),
                    backend_url: shown.backend.raw.clone(),
                    priority: shown.priority,
                    status: status.as_str(),
                    in_maintenance: s.maintenance.mark(*rid).is_some(),
                    healthy: live.map(|m| m.healthy()),
                    active: (status == RouteStatus::Modified)
                        .then_some(active)
                        .flatten()
                        .map(|a| ActiveValues {
                            domains: a.domains.clone(),
                            path: a.path.clone(),
                            backend: a.backend.raw.clone(),
                            priority: a.priority,
                        }),
                })
            })
            .collect();
        Ok(entries)
    }

    /// `HEADERS_SET` (§4.11).
    pub fn headers_set(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        name: &str,
        value: &str,
    ) -> Result<()> {
        let limit = self.inner.settings.max_headers_per_target;
        self.stage(caller, sid, |st, id| {
            validate_settable_header(name)?;
            validate_header_value(value)?;
            let target = st.resolve_target(id, target, Reads::Staged)?;
            let map = st.session_mut(id).staged.headers.entry(target).or_default();
            let key = name.to_ascii_lowercase();
            if !map.contains_key(&key) && map.len() >= limit {
                return Err(Error::TooMany("headers"));
            }
            map.insert(
                key,
                HeaderEntry {
                    name: name.to_string(),
                    value: value.to_string(),
                },
            );
            Ok(())
        })
    }

    /// `HEADERS_REMOVE` (§4.12).
    pub fn headers_remove(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        name: &str,
    ) -> Result<()> {
        self.stage(caller, sid, |st, id| {
            model::validate_header_name(name)?;
            let target = st.resolve_target(id, target, Reads::Staged)?;
            let staged = &mut st.session_mut(id).staged;
            if let Some(map) = staged.headers.get_mut(&target) {
                map.remove(&name.to_ascii_lowercase());
                if map.is_empty() {
                    staged.headers.remove(&target);
                }
            }
            Ok(())
        })
    }

    /// `OPTIONS_SET` (§4.13).
    pub fn options_set(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let limit = self.inner.settings.max_options_per_target;
        self.stage(caller, sid, |st, id| {
            check_option_key(key)?;
            validate_option(key, value)?;
            let target = st.resolve_target(id, target, Reads::Staged)?;
            let map = st.session_mut(id).staged.options.entry(target).or_default();
            if !map.contains_key(key) && map.len() >= limit {
                return Err(Error::TooMany("options"));
            }
            map.insert(key.to_string(), value.to_string());
            Ok(())
        })
    }

    /// `OPTIONS_REMOVE` (§4.14).
    pub fn options_remove(&self, caller: Caller, sid: &str, target: &str, key: &str) -> Result<()> {
        self.stage(caller, sid, |st, id| {
            check_option_key(key)?;
            let target = st.resolve_target(id, target, Reads::Staged)?;
            let staged = &mut st.session_mut(id).staged;
            if let Some(map) = staged.options.get_mut(&target) {
                map.remove(key);
                if map.is_empty() {
                    staged.options.remove(&target);
                }
            }
            Ok(())
        })
    }

    /// `HEALTH_SET` (§4.15).
    pub fn health_set(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        path: &str,
        interval: &str,
        timeout: &str,
    ) -> Result<()> {
        self.stage(caller, sid, |st, id| {
            let spec = model::parse_health(path, interval, timeout)?;
            let target = st.resolve_target(id, target, Reads::Staged)?;
            set_or_drop(&mut st.session_mut(id).staged.health, target, spec);
            Ok(())
        })
    }

    /// `RATELIMIT_SET` (§4.16).
    pub fn ratelimit_set(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        requests: &str,
        window: &str,
    ) -> Result<()> {
        self.stage(caller, sid, |st, id| {
            let spec = model::parse_ratelimit(requests, window)?;
            let target = st.resolve_target(id, target, Reads::Staged)?;
            set_or_drop(&mut st.session_mut(id).staged.ratelimit, target, spec);
            Ok(())
        })
    }

    /// `CIRCUIT_BREAKER_SET` (§4.17).
    pub fn circuit_breaker_set(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        threshold: &str,
        timeout: &str,
        half_open_requests: &str,
    ) -> Result<()> {
        self.stage(caller, sid, |st, id| {
            let spec = model::parse_breaker(threshold, timeout, half_open_requests)?;
            let target = st.resolve_target(id, target, Reads::Staged)?;
            set_or_drop(&mut st.session_mut(id).staged.circuit_breaker, target, spec);
            Ok(())
        })
    }

    /// `CONFIG_VALIDATE` (§4.20): changes nothing.
    pub fn config_validate(&self, caller: Caller, sid: &str) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let s = st.session(&id);
        let view = SessionView {
            claims: &st.claims,
            session: &id,
        };
        staging::validate(&s.staged, &s.service, &view)
    }

    /// `CONFIG_APPLY` (§4.21).
    pub fn config_apply(&self, caller: Caller, sid: &str) -> Result<()> {
        self.apply_scopes(caller, sid, Ok(Scopes::everything()))
    }

    /// `CONFIG_APPLY_PARTIAL` (§4.24): `scopes` are the list items as received.
    pub fn config_apply_partial(&self, caller: Caller, sid: &str, scopes: &[String]) -> Result<()> {
        self.apply_scopes(caller, sid, Scopes::parse(scopes))
    }

    fn apply_scopes(&self, caller: Caller, sid: &str, scopes: Result<Scopes>) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let scopes = scopes?;
        let s = st.session(&id);
        let next = staging::candidate(&s.active, &s.staged, &scopes);
        if next == s.active {
            return Ok(());
        }
        let view = SessionView {
            claims: &st.claims,
            session: &id,
        };
        staging::validate(&next, &s.service, &view)?;
        self.activate(&mut st, &id, next, &scopes);
        Ok(())
    }

    /// Makes `next` the session's active configuration, brings the live state of its members
    /// in line, publishes the new table, then reports the change (§4.21).
    fn activate(&self, st: &mut State, id: &str, next: ConfigSet, scopes: &Scopes) {
        let now = self.now();
        let session = st.session_mut(id);
        let previous = std::mem::replace(&mut session.active, next);
        session.last_apply = Some(now);
        let active = session.active.clone();
        let service = session.service.clone();
        let added: Vec<RouteId> = active
            .routes
            .keys()
            .filter(|r| !previous.routes.contains_key(r))
            .copied()
            .collect();
        let removed: Vec<RouteId> = previous
            .routes
            .keys()
            .filter(|r| !active.routes.contains_key(r))
            .copied()
            .collect();
        let modified: Vec<RouteId> = active
            .routes
            .iter()
            .filter(|(r, spec)| {
                previous
                    .routes
                    .get(r)
                    .is_some_and(|old| !old.same_fields(spec))
            })
            .map(|(r, _)| *r)
            .collect();
        st.claims.remove(id, &previous);
        st.claims.add(id, &service, &active);
        for rid in &removed {
            st.members.remove(rid);
            st.session_mut(id).maintenance.routes.remove(rid);
        }
        for rid in &added {
            let live = self.new_member(st, id, *rid, now);
            st.members.insert(*rid, live);
        }
        for (rid, spec) in &active.routes {
            let Some(live) = st.members.get(rid).cloned() else {
                continue;
            };
            let backend_changed = previous
                .routes
                .get(rid)
                .is_some_and(|old| old.backend.raw != spec.backend.raw);
            if backend_changed {
                live.set_healthy(true);
                if let Some(t) = live.breaker.reset() {
                    self.inner.engine.report_breaker(rid.0, &live, t);
                }
            }
            let config =
                ConfigSet::inherited(&active.circuit_breaker, *rid).map(|b| BreakerConfig {
                    threshold: b.threshold,
                    timeout: b.timeout,
                    half_open_requests: b.half_open_requests,
                });
            if let Some(t) = live.breaker.configure(config) {
                self.inner.engine.report_breaker(rid.0, &live, t);
            }
        }
        self.publish(st);
        tracing::info!(
            session = %session::log_id(id),
            added = added.len(),
            removed = removed.len(),
            "configuration applied"
        );
        for rid in &added {
            let r = &active.routes[rid];
            let data = json!({
                "domains": r.domains, "path": r.path, "backend": r.backend.raw, "priority": r.priority,
            });
            self.emit(st, EventType::RouteAdded, id, Some(*rid), data);
        }
        for rid in &removed {
            let r = &previous.routes[rid];
            let data = json!({"domains": r.domains, "path": r.path, "reason": "applied"});
            self.emit(st, EventType::RouteRemoved, id, Some(*rid), data);
        }
        let ids = |v: &[RouteId]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        let data = json!({
            "scopes": scopes.names(),
            "routes_added": ids(&added),
            "routes_removed": ids(&removed),
            "routes_modified": ids(&modified),
        });
        self.emit(st, EventType::ConfigApplied, id, None, data);
    }

    /// Live state for a route that becomes active: the session's connection state, its
    /// maintenance mark and its drain ramp carry over (§4.6).
    fn new_member(
        &self,
        st: &mut State,
        id: &str,
        rid: RouteId,
        now: SystemTime,
    ) -> Arc<MemberLive> {
        let live = MemberLive::new(now);
        let session = st.session_mut(id);
        live.set_connected(session.connected);
        if let Some(all) = session.maintenance.all.clone() {
            session.maintenance.routes.entry(rid).or_insert(all);
        }
        if let Some(mark) = session.maintenance.mark(rid) {
            live.set_maintenance(Some(member_mark(mark)));
        }
        if let Some(drain) = &session.drain {
            live.set_drain(Some(drain.ramp));
        }
        Arc::new(live)
    }

    /// `CONFIG_ROLLBACK` (§4.22).
    pub fn config_rollback(&self, caller: Caller, sid: &str) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let s = st.session_mut(&id);
        s.staged = s.active.clone();
        Ok(())
    }

    /// `CONFIG_DIFF` (§4.23).
    pub fn config_diff(&self, caller: Caller, sid: &str) -> Result<staging::Diff> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let s = st.session(&id);
        Ok(staging::diff(&s.staged, &s.active))
    }
}

fn check_option_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_OPTION_KEY_BYTES {
        return Err(Error::invalid("invalid option key"));
    }
    Ok(())
}

fn set_or_drop<T>(map: &mut BTreeMap<Target, T>, target: Target, value: Option<T>) {
    match value {
        Some(v) => {
            map.insert(target, v);
        }
        None => {
            map.remove(&target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::EngineSettings;

    struct FixedClock(SystemTime);

    impl Clock for FixedClock {
        fn now(&self) -> SystemTime {
            self.0
        }
    }

    fn registry() -> (Registry, Arc<Engine>) {
        let engine = Engine::new(EngineSettings::default());
        let clock = Arc::new(FixedClock(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_734_694_200),
        ));
        let reg = Registry::new(
            engine.clone(),
            clock,
            RegistrySettings::default(),
            Shutdown::new(),
        );
        (reg, engine)
    }

    fn register(reg: &Registry, caller: Caller, service: &str, instance: &str) -> String {
        reg.register(
            caller,
            RegisterRequest {
                service_name: service.into(),
                instance_name: instance.into(),
                maintenance_port: "0".into(),
                metadata: "{}".into(),
                peer: None,
                token: None,
            },
        )
        .expect("register")
    }

    fn input(domain: &str, path: &str) -> RouteInput {
        RouteInput {
            domains: vec![domain.into()],
            path: path.into(),
            backend_url: "http://127.0.0.1:9".into(),
            priority: String::new(),
        }
    }

    #[test]
    fn session_ids_have_the_documented_shape() {
        let (reg, _) = registry();
        let id = register(&reg, Caller::Front, "shop", "shop@1");
        let parts: Vec<&str> = id.rsplitn(3, '-').collect();
        assert_eq!(parts[2], "shop_1");
        assert_eq!(parts[1], "1734694200");
        assert_eq!(parts[0].len(), 32);
        assert!(parts[0]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn stage_apply_publishes_and_rollback_restores() {
        let (reg, engine) = registry();
        let sid = register(&reg, Caller::Front, "shop", "a");
        let r1 = reg
            .route_add(Caller::Front, &sid, input("a.com", "/"))
            .expect("add");
        assert_eq!(r1, RouteId(1));
        assert!(engine.snapshot().table.is_empty());
        reg.config_apply(Caller::Front, &sid).expect("apply");
        assert!(engine.snapshot().table.lookup("a.com", "/").is_some());
        reg.route_remove(Caller::Front, &sid, "r1").expect("remove");
        let list = reg.route_list(Caller::Front, &sid).expect("list");
        assert_eq!(list[0].status, "pending_removal");
        reg.config_rollback(Caller::Front, &sid).expect("rollback");
        assert_eq!(
            reg.route_list(Caller::Front, &sid).expect("list")[0].status,
            "active"
        );
        let r2 = reg
            .route_add(Caller::Front, &sid, input("b.com", "/"))
            .expect("add");
        assert_eq!(r2, RouteId(2), "ids are never reused");
    }

    #[test]
    fn route_ids_are_isolated_between_sessions() {
        let (reg, _) = registry();
        let a = register(&reg, Caller::Front, "a", "1");
        let b = register(&reg, Caller::Front, "b", "1");
        reg.route_add(Caller::Front, &a, input("a.com", "/"))
            .expect("add");
        let err = reg.route_remove(Caller::Front, &b, "r1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied: route r1 belongs to another session"
        );
        assert_eq!(
            reg.route_remove(Caller::Front, &b, "r9").unwrap_err(),
            Error::RouteNotFound
        );
        assert_eq!(
            reg.route_remove(Caller::Front, &b, "r01").unwrap_err(),
            Error::RouteNotFound
        );
    }

    #[test]
    fn other_services_cannot_claim_an_applied_pair() {
        let (reg, _) = registry();
        let a = register(&reg, Caller::Front, "a", "1");
        let b = register(&reg, Caller::Front, "b", "1");
        let a2 = register(&reg, Caller::Front, "a", "2");
        let b2 = register(&reg, Caller::Front, "b", "2");
        reg.route_add(Caller::Front, &b, input("a.com", "/"))
            .expect("unclaimed yet");
        reg.route_add(Caller::Front, &a, input("a.com", "/"))
            .expect("add");
        reg.config_apply(Caller::Front, &a).expect("apply");
        let err = reg
            .route_add(Caller::Front, &b2, input("a.com", "/"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied: a.com/ is claimed by another service"
        );
        let err = reg.config_apply(Caller::Front, &b).unwrap_err();
        assert_eq!(
            err.to_string(),
            "route r1: permission denied: a.com/ is claimed by another service"
        );
        reg.route_add(Caller::Front, &a2, input("a.com", "/"))
            .expect("same service pools");
        reg.config_apply(Caller::Front, &a2)
            .expect("apply pool member");
    }

    #[test]
    fn replacement_and_shutdown_release_pairs() {
        let (reg, engine) = registry();
        let a = register(&reg, Caller::Front, "a", "1");
        reg.route_add(Caller::Front, &a, input("a.com", "/"))
            .expect("add");
        reg.config_apply(Caller::Front, &a).expect("apply");
        let a_new = register(&reg, Caller::Front, "a", "1");
        assert_eq!(
            reg.ping(Caller::Front, &a).unwrap_err(),
            Error::SessionNotFound
        );
        assert!(engine.snapshot().table.is_empty());
        assert!(reg
            .route_list(Caller::Front, &a_new)
            .expect("list")
            .is_empty());
        let b = register(&reg, Caller::Front, "b", "1");
        reg.route_add(Caller::Front, &b, input("a.com", "/"))
            .expect("released");
    }

    #[test]
    fn pipe_fallback_needs_exactly_one_attached_session() {
        let (reg, _) = registry();
        let (conn, _outbox) = reg.open_connection();
        assert_eq!(
            reg.route_list(Caller::Pipe(conn), "").unwrap_err(),
            Error::NoSession
        );
        assert!(reg.ping(Caller::Pipe(conn), "").is_ok());
        register(&reg, Caller::Pipe(conn), "a", "1");
        assert!(reg.route_list(Caller::Pipe(conn), "").is_ok());
        register(&reg, Caller::Pipe(conn), "a", "2");
        assert_eq!(
            reg.route_list(Caller::Pipe(conn), "").unwrap_err(),
            Error::NoSession
        );
    }

    #[test]
    fn metadata_forms() {
        let m = parse_metadata("9001").expect("legacy");
        assert_eq!(m.stored["legacy"], "9001");
        assert!(parse_metadata("null").expect("null").stored.is_empty());
        assert!(parse_metadata("{bad").is_err());
        assert!(
            parse_metadata("[1]").is_ok(),
            "not starting with {{ is legacy text"
        );
        let m = parse_metadata(r#"{"auth_token":"s","liveness":"lease","v":1}"#).expect("valid");
        assert_eq!(m.liveness, Liveness::Lease);
        assert_eq!(m.token.as_deref(), Some("s"));
        assert_eq!(m.stored.len(), 1);
        assert_eq!(
            parse_metadata(r#"{"liveness":"sometimes"}"#)
                .err()
                .map(|e| e.to_string()),
            Some("invalid liveness".into())
        );
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
