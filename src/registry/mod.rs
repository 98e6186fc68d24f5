//! The one internal service: sessions, staging, validation and atomic apply. Every front calls
//! a `Registry` method; the registry resolves the session first, then validates fields, then
//! state (PROTOCOL §1.8), so all fronts report the same first error.

pub mod apply;
pub mod clock;
pub mod error;
pub mod model;
pub mod session;
pub mod staging;
pub mod views;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rand::RngCore;
use serde_json::{Map, Value};

use crate::proxy::{Engine, MemberLive};
use apply::{build_snapshot, Claims, ProxyDefaults};
use clock::{rfc3339, unix_seconds, Clock};
pub use error::{Error, ErrorKind, Result};
use model::{
    is_known_option, parse_domains, parse_int, parse_route_path, split_list, validate_header_value,
    validate_instance_name, validate_option, validate_service_name, validate_settable_header,
    BackendUrl, RouteId, RouteInput, RouteSpec, Target, MAX_METADATA_BYTES, MAX_OPTION_KEY_BYTES,
};
pub use session::ConnId;
use session::{ConfigSet, HeaderEntry, Liveness, Session};
use staging::{Ownership, RouteStatus, Scopes};
use views::{ActiveValues, BulkResult, Reconnect, RouteEntry, SessionInfo, ShutdownOutcome};

/// Who is calling: a pipe connection (which can be attached and serve as a fallback), or a
/// connection-less front (gRPC, HTTP).
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
    pub max_headers_per_target: usize,
    pub max_options_per_target: usize,
    pub staged_ttl: Duration,
    pub auth_token: Option<String>,
    pub proxy: ProxyDefaults,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            max_sessions: 1024,
            max_routes_per_session: 256,
            max_headers_per_target: 64,
            max_options_per_target: 64,
            staged_ttl: Duration::from_secs(30 * 60),
            auth_token: None,
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
    /// Live state of every active route.
    members: HashMap<RouteId, Arc<MemberLive>>,
}

/// Which configuration a command reads when it resolves a route id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // `Active` is read by the live-state commands that come next.
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

    /// §2.3: the session a command names, with the bookkeeping of §1.8 step 4.
    fn resolve(&mut self, caller: Caller, sid: &str, now: SystemTime) -> Result<String> {
        let id = if sid.is_empty() {
            let fallback = match caller {
                Caller::Pipe(conn) => self
                    .conns
                    .get(&conn)
                    .filter(|set| set.len() == 1)
                    .and_then(|set| set.iter().next().cloned()),
                Caller::Front => None,
            };
            fallback.ok_or(Error::NoSession)?
        } else if self.sessions.contains_key(sid) {
            sid.to_string()
        } else {
            return Err(Error::SessionNotFound);
        };
        self.touch(caller, &id, now);
        Ok(id)
    }

    /// Attachment and activity bookkeeping for a resolved session.
    fn touch(&mut self, caller: Caller, id: &str, now: SystemTime) {
        let session = self.session_mut(id);
        session.last_activity = now;
        if let Caller::Pipe(conn) = caller {
            session.connections.insert(conn);
            if session.event_conn.is_none() {
                session.event_conn = Some(conn);
            }
            self.conns.entry(conn).or_default().insert(id.to_string());
        }
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
        let foreign = self
            .route_owner
            .get(&id)
            .filter(|owner| owner.as_str() != session)
            .and_then(|owner| self.sessions.get(owner))
            .is_some_and(|o| {
                o.staged.routes.contains_key(&id) || o.active.routes.contains_key(&id)
            });
        if foreign {
            return Err(Error::PermissionDenied(format!(
                "route {id} belongs to another session"
            )));
        }
        Err(Error::RouteNotFound)
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
fn same_secret(a: &str, b: &str) -> bool {
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
}

/// Bulk items as a front parsed them: the whole list may be malformed, or single elements.
pub type BulkInput = Result<Vec<Result<RouteInput>>>;

impl Registry {
    /// A registry that publishes into `engine`.
    pub fn new(engine: Arc<Engine>, clock: Arc<dyn Clock>, settings: RegistrySettings) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    next_route: 1,
                    ..State::default()
                }),
                engine,
                clock,
                settings,
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state itself stays consistent
        // because every mutation completes before it can panic, so keep serving.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// Allocates the id of a new pipe connection.
    pub fn open_connection(&self) -> ConnId {
        ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// A pipe connection closed: it is detached from every session.
    pub fn close_connection(&self, conn: ConnId) {
        let mut st = self.lock();
        let Some(sessions) = st.conns.remove(&conn) else {
            return;
        };
        for id in sessions {
            if let Some(s) = st.sessions.get_mut(&id) {
                s.connections.remove(&conn);
                if s.event_conn == Some(conn) {
                    s.event_conn = None;
                }
            }
        }
    }

    /// Whether a connection is still attached to some live session.
    pub fn is_attached(&self, conn: ConnId) -> bool {
        self.lock().conns.get(&conn).is_some_and(|s| !s.is_empty())
    }

    /// Publishes the snapshot of every active configuration.
    fn publish(&self, st: &State) {
        let snapshot = build_snapshot(
            st.sessions.values(),
            &st.members,
            &self.inner.settings.proxy,
        );
        self.inner.engine.publish(snapshot);
    }

    /// Ends a session (replacement, shutdown, expiry): routes leave the proxy at once.
    fn end_session(&self, st: &mut State, id: &str) {
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
        tracing::info!(session = %session.log_id(), service = %session.service, "session ended");
        self.publish(st);
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
            let given = meta.token.as_deref().unwrap_or("");
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
            self.end_session(&mut st, &old);
        }
        let id = new_session_id(&instance, now);
        let session = Session {
            id: id.clone(),
            service: req.service_name,
            instance,
            maintenance_port: port,
            metadata: meta.stored,
            liveness: meta.liveness,
            created_at: now,
            last_activity: now,
            last_apply: None,
            active: ConfigSet::default(),
            staged: ConfigSet::default(),
            staged_at: None,
            subscriptions: BTreeSet::new(),
            events_dropped: 0,
            connections: BTreeSet::new(),
            event_conn: None,
        };
        tracing::info!(session = %session.log_id(), service = %session.service, "session registered");
        st.names.insert(key, id.clone());
        st.sessions.insert(id.clone(), session);
        st.touch(caller, &id, now);
        if let Caller::Pipe(conn) = caller {
            st.session_mut(&id).event_conn = Some(conn);
        }
        Ok(id)
    }

    /// `RECONNECT` (§4.2): `Reregister` for anything but a live session.
    pub fn reconnect(&self, caller: Caller, sid: &str) -> Result<Reconnect> {
        let now = self.now();
        let mut st = self.lock();
        if sid.is_empty() || !st.sessions.contains_key(sid) {
            return Ok(Reconnect::Reregister);
        }
        st.touch(caller, sid, now);
        if let Caller::Pipe(conn) = caller {
            st.session_mut(sid).event_conn = Some(conn);
        }
        Ok(Reconnect::Ok)
    }

    /// `PING` (§4.3): with no session and no fallback it is a pure liveness probe.
    pub fn ping(&self, caller: Caller, sid: &str) -> Result<()> {
        let now = self.now();
        match self.lock().resolve(caller, sid, now) {
            Ok(_) | Err(Error::NoSession) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `SESSION_INFO` (§4.4).
    pub fn session_info(&self, caller: Caller, sid: &str) -> Result<SessionInfo> {
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
        let s = st.session(&id);
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
        let in_maintenance = s
            .active
            .routes
            .keys()
            .any(|rid| st.members.get(rid).is_some_and(|m| m.in_maintenance()));
        let staged_expires_at = s
            .pending()
            .then_some(s.staged_at)
            .flatten()
            .map(|t| rfc3339(t + self.inner.settings.staged_ttl));
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
        Ok(SessionInfo {
            session_id: s.id.clone(),
            service_name: s.service.clone(),
            instance_name: s.instance.clone(),
            maintenance_port: s.maintenance_port,
            connected_at: rfc3339(s.created_at),
            uptime_seconds: now
                .duration_since(s.created_at)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            last_activity: rfc3339(s.last_activity),
            last_apply: s.last_apply.map(rfc3339),
            routes_active: s.active.routes.len() as u64,
            routes_staged,
            metadata: s.metadata.clone(),
            subscriptions: s.subscriptions.iter().cloned().collect(),
            liveness: s.liveness.as_str(),
            connections: s.connections.len() as u64,
            draining: false,
            in_maintenance,
            staged_expires_at,
            ignored_options,
            events_dropped: s.events_dropped,
        })
    }

    /// `CLIENT_SHUTDOWN` (§2.8).
    pub fn client_shutdown(&self, caller: Caller, sid: &str) -> Result<ShutdownOutcome> {
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
        self.end_session(&mut st, &id);
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
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
        let out = stage(&mut st, &id)?;
        st.session_mut(&id).staged_at = Some(now);
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
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
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
                    in_maintenance: live.is_some_and(|m| m.in_maintenance()),
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
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
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
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
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
        self.activate(&mut st, &id, next, now);
        Ok(())
    }

    /// Makes `next` the session's active configuration and publishes the new table.
    fn activate(&self, st: &mut State, id: &str, next: ConfigSet, now: SystemTime) {
        let session = st.sessions.get_mut(id).expect("resolved session");
        let previous = std::mem::replace(&mut session.active, next);
        session.last_apply = Some(now);
        let service = session.service.clone();
        let connected = true;
        let (added, removed, changed_backend): (Vec<RouteId>, Vec<RouteId>, Vec<RouteId>) = {
            let active = &session.active.routes;
            (
                active
                    .keys()
                    .filter(|r| !previous.routes.contains_key(r))
                    .copied()
                    .collect(),
                previous
                    .routes
                    .keys()
                    .filter(|r| !active.contains_key(r))
                    .copied()
                    .collect(),
                active
                    .iter()
                    .filter(|(r, spec)| {
                        previous
                            .routes
                            .get(r)
                            .is_some_and(|old| old.backend.raw != spec.backend.raw)
                    })
                    .map(|(r, _)| *r)
                    .collect(),
            )
        };
        st.claims.remove(id, &previous);
        let active = st.session(id).active.clone();
        st.claims.add(id, &service, &active);
        for rid in &removed {
            st.members.remove(rid);
        }
        for rid in &added {
            let live = MemberLive::default();
            live.set_connected(connected);
            st.members.insert(*rid, Arc::new(live));
        }
        for rid in &changed_backend {
            if let Some(live) = st.members.get(rid) {
                live.set_healthy(true);
            }
        }
        self.publish(st);
        tracing::info!(
            session = %session::log_id(id),
            added = added.len(),
            removed = removed.len(),
            "configuration applied"
        );
    }

    /// `CONFIG_ROLLBACK` (§4.22).
    pub fn config_rollback(&self, caller: Caller, sid: &str) -> Result<()> {
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
        let s = st.session_mut(&id);
        s.staged = s.active.clone();
        Ok(())
    }

    /// `CONFIG_DIFF` (§4.23).
    pub fn config_diff(&self, caller: Caller, sid: &str) -> Result<staging::Diff> {
        let now = self.now();
        let mut st = self.lock();
        let id = st.resolve(caller, sid, now)?;
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

fn set_or_drop<T>(
    map: &mut std::collections::BTreeMap<Target, T>,
    target: Target,
    value: Option<T>,
) {
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
        let engine = Engine::new(EngineSettings {
            connect_timeout: Duration::from_secs(1),
        });
        let clock = Arc::new(FixedClock(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_734_694_200),
        ));
        let reg = Registry::new(engine.clone(), clock, RegistrySettings::default());
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
        let conn = reg.open_connection();
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
