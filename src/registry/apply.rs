//! Building the engine snapshot from every session's active configuration (effective settings
//! of §3.3, pools of §3.9) and the pair claims that ownership checks read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue};

use super::model::{
    parse_bool, parse_duration, parse_size, BackendUrl, RouteId, RouteSpec, Scheme,
};
use super::session::{ConfigSet, Session};
use crate::proxy::health::{CheckSpec, Checked};
use crate::proxy::live::RateLimit;
use crate::proxy::snapshot::BackendProtocol;
use crate::proxy::table::join_path;
use crate::proxy::{Member, MemberLive, Pool, PoolLive, PoolSettings, Snapshot, Upstream};

/// Server-wide defaults of the options of §4.13.
#[derive(Debug, Clone)]
pub struct ProxyDefaults {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_body_size: u64,
}

impl Default for ProxyDefaults {
    fn default() -> Self {
        ProxyDefaults {
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            max_body_size: 100 << 20,
        }
    }
}

/// Which service claims each (domain, path) pair, and through which sessions.
#[derive(Debug, Default)]
pub struct Claims {
    pairs: HashMap<(String, String), Claim>,
}

#[derive(Debug)]
struct Claim {
    service: String,
    sessions: BTreeSet<String>,
}

impl Claims {
    /// The service claiming the pair through a session other than `except`, if any.
    pub fn claimed_by(&self, domain: &str, path: &str, except: &str) -> Option<&str> {
        let claim = self.pairs.get(&(domain.to_string(), path.to_string()))?;
        claim
            .sessions
            .iter()
            .any(|s| s != except)
            .then_some(claim.service.as_str())
    }

    /// Records the pairs of a session's active configuration.
    pub fn add(&mut self, session: &str, service: &str, cfg: &ConfigSet) {
        for route in cfg.routes.values() {
            for (d, p) in route.pairs() {
                self.pairs
                    .entry((d.to_string(), p.to_string()))
                    .or_insert_with(|| Claim {
                        service: service.to_string(),
                        sessions: BTreeSet::new(),
                    })
                    .sessions
                    .insert(session.to_string());
            }
        }
    }

    /// Releases the pairs of a session's active configuration.
    pub fn remove(&mut self, session: &str, cfg: &ConfigSet) {
        for route in cfg.routes.values() {
            for (d, p) in route.pairs() {
                let key = (d.to_string(), p.to_string());
                if let Some(claim) = self.pairs.get_mut(&key) {
                    claim.sessions.remove(session);
                    if claim.sessions.is_empty() {
                        self.pairs.remove(&key);
                    }
                }
            }
        }
    }
}

/// Pool-wide live state by (domain, path), kept across applies while the pair is served.
pub type PoolLives = HashMap<(String, String), Arc<PoolLive>>;

/// Builds the snapshot of every session's active configuration.
pub fn build_snapshot<'a>(
    sessions: impl Iterator<Item = &'a Session>,
    members: &HashMap<RouteId, Arc<MemberLive>>,
    pool_lives: &mut PoolLives,
    defaults: &ProxyDefaults,
) -> Snapshot {
    struct Building {
        pool: Pool,
        applied: (Option<SystemTime>, String),
    }
    let mut pools: HashMap<(String, String), Building> = HashMap::new();
    for session in sessions {
        let cfg = &session.active;
        let applied = (session.last_apply, session.id.clone());
        for (id, route) in &cfg.routes {
            let Some(live) = members.get(id) else {
                continue;
            };
            let member = member(*id, route, cfg, live.clone(), defaults);
            let settings = pool_settings(*id, route, cfg, defaults);
            for (domain, path) in route.pairs() {
                let key = (domain.to_string(), path.to_string());
                let entry = pools.entry(key.clone()).or_insert_with(|| Building {
                    pool: Pool {
                        domain: domain.to_string(),
                        path: path.to_string(),
                        priority: route.priority,
                        settings: settings.clone(),
                        members: Vec::new(),
                        live: pool_lives.entry(key).or_default().clone(),
                    },
                    applied: applied.clone(),
                });
                if applied > entry.applied {
                    entry.applied = applied.clone();
                    entry.pool.priority = route.priority;
                    entry.pool.settings = settings.clone();
                }
                entry.pool.members.push(member.clone());
            }
        }
    }
    pool_lives.retain(|key, _| pools.contains_key(key));
    Snapshot::new(pools.into_values().map(|b| b.pool).collect())
}

/// The effective health check of every active route (§3.3): its own `HEALTH_SET`, else the
/// session's `ALL`, else the default check built from the options; interval 0 disables it.
pub fn health_checks<'a>(
    sessions: impl Iterator<Item = &'a Session>,
    members: &HashMap<RouteId, Arc<MemberLive>>,
) -> Vec<Checked> {
    let mut out = Vec::new();
    for session in sessions {
        let cfg = &session.active;
        for (id, route) in &cfg.routes {
            let Some(live) = members.get(id) else {
                continue;
            };
            let (path, interval, timeout, lenient) = match ConfigSet::inherited(&cfg.health, *id) {
                Some(h) => (h.path.clone(), h.interval, h.timeout, false),
                None => {
                    let duration = |key, default| {
                        cfg.option(*id, key)
                            .and_then(parse_duration)
                            .unwrap_or(default)
                    };
                    let interval = duration("health_check_interval", Duration::from_secs(30));
                    let timeout = duration("health_check_timeout", Duration::from_secs(5));
                    let path = cfg
                        .option(*id, "health_check_path")
                        .unwrap_or("/")
                        .to_string();
                    (path, interval, timeout.min(interval), true)
                }
            };
            if interval.is_zero() {
                continue;
            }
            let upstream = upstream_of(&route.backend);
            let (p, q) = match path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path.as_str(), None),
            };
            out.push(Checked {
                member: id.0,
                live: live.clone(),
                spec: CheckSpec {
                    scheme: upstream.scheme,
                    authority: upstream.authority,
                    host_header: upstream.host_header,
                    path_and_query: join_path(&upstream.base_path, "/", false, p, q),
                    interval,
                    timeout,
                    lenient,
                    verify: !cfg
                        .option(*id, "tls_skip_verify")
                        .and_then(parse_bool)
                        .unwrap_or(false),
                },
            });
        }
    }
    out
}

/// Where the proxy sends a member's requests for a backend URL.
pub fn upstream_of(backend: &BackendUrl) -> Upstream {
    let host_header = match backend.port {
        Some(port) => format!("{}:{port}", backend.host),
        None => backend.host.clone(),
    };
    Upstream {
        scheme: backend.scheme.http(),
        authority: backend.authority(),
        host_header,
        base_path: backend.base_path().to_string(),
    }
}

fn member(
    id: RouteId,
    route: &RouteSpec,
    cfg: &ConfigSet,
    live: Arc<MemberLive>,
    defaults: &ProxyDefaults,
) -> Member {
    let duration = |key| cfg.option(id, key).and_then(parse_duration);
    Member {
        id: id.0,
        upstream: upstream_of(&route.backend),
        timeout: duration("timeout").unwrap_or(defaults.timeout),
        connect_timeout: duration("connect_timeout").unwrap_or(defaults.connect_timeout),
        tls_skip_verify: cfg
            .option(id, "tls_skip_verify")
            .and_then(parse_bool)
            .unwrap_or(false),
        protocol: match cfg.option(id, "backend_protocol") {
            Some("http1") => BackendProtocol::Http1,
            Some("h2") => BackendProtocol::H2,
            _ => BackendProtocol::Auto,
        },
        live,
    }
}

fn pool_settings(
    id: RouteId,
    route: &RouteSpec,
    cfg: &ConfigSet,
    defaults: &ProxyDefaults,
) -> PoolSettings {
    let flag = |key, default| cfg.option(id, key).and_then(parse_bool).unwrap_or(default);
    let ws_backend = matches!(route.backend.scheme, Scheme::Ws | Scheme::Wss);
    let headers = cfg
        .effective_headers(id)
        .into_iter()
        .filter_map(|h| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
            ))
        })
        .collect();
    PoolSettings {
        headers,
        websocket: flag("websocket", ws_backend),
        compression: flag("compression", false),
        max_body_size: cfg
            .option(id, "max_body_size")
            .and_then(parse_size)
            .unwrap_or(defaults.max_body_size),
        strip_prefix: flag("strip_prefix", false),
        preserve_host: flag("preserve_host", true),
        rate_limit: ConfigSet::inherited(&cfg.ratelimit, id).map(|r| RateLimit {
            requests: r.requests,
            window: r.window,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{BackendUrl, Target};
    use crate::registry::session::Liveness;
    use std::collections::BTreeMap;

    fn session(id: &str, service: &str, applied: u64, routes: &[(u64, &str, &str)]) -> Session {
        let mut cfg = ConfigSet::default();
        for (rid, path, backend) in routes {
            cfg.routes.insert(
                RouteId(*rid),
                RouteSpec {
                    domains: vec!["a.com".into()],
                    path: (*path).into(),
                    backend: BackendUrl::parse(backend).expect("valid"),
                    priority: 0,
                },
            );
        }
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(applied);
        let mut s = Session::new(
            id.into(),
            service.into(),
            id.into(),
            0,
            serde_json::Map::new(),
            Liveness::Connection,
            t,
        );
        s.last_apply = Some(t);
        s.staged = cfg.clone();
        s.active = cfg;
        s
    }

    #[test]
    fn same_pair_forms_one_pool_with_the_latest_settings() {
        let a = session("a", "shop", 1, &[(1, "/", "http://b1:1/v1/")]);
        let mut b = session("b", "shop", 2, &[(2, "/", "http://b2:2")]);
        b.active.options.insert(
            Target::All,
            BTreeMap::from([("strip_prefix".into(), "yes".into())]),
        );
        let members: HashMap<RouteId, Arc<MemberLive>> = [1, 2]
            .into_iter()
            .map(|i| {
                (
                    RouteId(i),
                    Arc::new(MemberLive::new(SystemTime::UNIX_EPOCH)),
                )
            })
            .collect();
        let mut lives = PoolLives::new();
        let snap = build_snapshot(
            [&a, &b].into_iter(),
            &members,
            &mut lives,
            &ProxyDefaults::default(),
        );
        assert_eq!(lives.len(), 1, "one pair, one pool");
        let pool = snap.table.lookup("a.com", "/x").expect("pool");
        assert_eq!(pool.members.len(), 2);
        assert!(pool.settings.strip_prefix, "b applied last");
        let m1 = pool.members.iter().find(|m| m.id == 1).expect("member 1");
        assert_eq!(m1.upstream.base_path, "/v1");
        assert_eq!(m1.upstream.authority, "b1:1");
        assert!(Arc::ptr_eq(&m1.live, &members[&RouteId(1)]));
    }

    #[test]
    fn claims_track_sessions() {
        let a = session("a", "shop", 1, &[(1, "/", "http://b:1")]);
        let mut claims = Claims::default();
        claims.add("a", "shop", &a.active);
        assert_eq!(claims.claimed_by("a.com", "/", "b"), Some("shop"));
        assert_eq!(claims.claimed_by("a.com", "/", "a"), None);
        claims.remove("a", &a.active);
        assert_eq!(claims.claimed_by("a.com", "/", "b"), None);
    }
}
