//! Pure staging logic: scopes, the partial-apply candidate, validation in §3.4's order,
//! diff (§4.23) and route status (§3.8). No sockets, no locks, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use utoipa::ToSchema;

use super::error::{Error, Result};
use super::model::{RouteId, RouteSpec, Target};
use super::session::ConfigSet;

/// One category of a configuration, as `CONFIG_APPLY_PARTIAL` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Routes,
    Headers,
    Options,
    Health,
    Ratelimit,
    CircuitBreaker,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Routes,
        Scope::Headers,
        Scope::Options,
        Scope::Health,
        Scope::Ratelimit,
        Scope::CircuitBreaker,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Routes => "routes",
            Scope::Headers => "headers",
            Scope::Options => "options",
            Scope::Health => "health",
            Scope::Ratelimit => "ratelimit",
            Scope::CircuitBreaker => "circuit_breaker",
        }
    }
}

/// The scopes of an apply; `all` = every category (a full `CONFIG_APPLY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    pub all: bool,
    pub set: BTreeSet<Scope>,
}

impl Scopes {
    pub fn everything() -> Scopes {
        Scopes {
            all: true,
            set: Scope::ALL.into_iter().collect(),
        }
    }

    /// Parses the scope items of `CONFIG_APPLY_PARTIAL` (§4.24).
    pub fn parse(items: &[String]) -> Result<Scopes> {
        if items.is_empty() {
            return Err(Error::InvalidFormat);
        }
        let mut scopes = Scopes {
            all: false,
            set: BTreeSet::new(),
        };
        for item in items {
            if item == "all" {
                scopes.all = true;
                continue;
            }
            let scope = Scope::ALL
                .into_iter()
                .find(|s| s.as_str() == item)
                .ok_or_else(|| Error::invalid_value("unknown scope", item))?;
            scopes.set.insert(scope);
        }
        if scopes.all {
            scopes.set = Scope::ALL.into_iter().collect();
        }
        Ok(scopes)
    }

    /// The names `config_applied` lists: `["all"]`, or the scopes in the canonical order.
    pub fn names(&self) -> Vec<&'static str> {
        if self.all {
            vec!["all"]
        } else {
            self.set.iter().map(|s| s.as_str()).collect()
        }
    }
}

/// The configuration that would become active: active with the listed categories replaced by
/// their staged versions (§3.6). Entries of unlisted categories whose route disappears are
/// dropped; entries of listed ones are kept so that validation reports them.
pub fn candidate(active: &ConfigSet, staged: &ConfigSet, scopes: &Scopes) -> ConfigSet {
    if scopes.all {
        return staged.clone();
    }
    let pick = |s: Scope| scopes.set.contains(&s);
    let mut next = ConfigSet {
        routes: if pick(Scope::Routes) {
            &staged.routes
        } else {
            &active.routes
        }
        .clone(),
        headers: if pick(Scope::Headers) {
            &staged.headers
        } else {
            &active.headers
        }
        .clone(),
        options: if pick(Scope::Options) {
            &staged.options
        } else {
            &active.options
        }
        .clone(),
        health: if pick(Scope::Health) {
            &staged.health
        } else {
            &active.health
        }
        .clone(),
        ratelimit: if pick(Scope::Ratelimit) {
            &staged.ratelimit
        } else {
            &active.ratelimit
        }
        .clone(),
        circuit_breaker: if pick(Scope::CircuitBreaker) {
            &staged.circuit_breaker
        } else {
            &active.circuit_breaker
        }
        .clone(),
    };
    let routes = next.routes.clone();
    let keep = |t: &Target| match t {
        Target::All => true,
        Target::Route(id) => routes.contains_key(id),
    };
    if !pick(Scope::Headers) {
        next.headers.retain(|t, _| keep(t));
    }
    if !pick(Scope::Options) {
        next.options.retain(|t, _| keep(t));
    }
    if !pick(Scope::Health) {
        next.health.retain(|t, _| keep(t));
    }
    if !pick(Scope::Ratelimit) {
        next.ratelimit.retain(|t, _| keep(t));
    }
    if !pick(Scope::CircuitBreaker) {
        next.circuit_breaker.retain(|t, _| keep(t));
    }
    next
}

/// What validation needs to know beyond the configuration itself.
pub trait Ownership {
    /// The service that claims `domain`+`path` through an active route of a session other
    /// than the one being validated, if any.
    fn claimed_by(&self, domain: &str, path: &str) -> Option<&str>;
    /// Refuses a backend host by the allow-list (§8.3).
    fn backend_allowed(&self, route: &RouteSpec) -> Result<()>;
}

/// Validates a candidate configuration in §3.4's order; the first failure is reported as
/// `<category> <target>: <reason>`.
pub fn validate(cfg: &ConfigSet, service: &str, owners: &dyn Ownership) -> Result<()> {
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for (id, route) in &cfg.routes {
        let fail = |e: Error| e.in_validation("route", id);
        for (domain, path) in route.pairs() {
            if !seen.insert((domain, path)) {
                return Err(fail(Error::DuplicateRoute(format!("{domain}{path}"))));
            }
        }
        for (domain, path) in route.pairs() {
            if owners
                .claimed_by(domain, path)
                .is_some_and(|s| s != service)
            {
                return Err(fail(claimed_error(domain, path)));
            }
        }
        owners.backend_allowed(route).map_err(fail)?;
    }
    check_references(cfg)
}

/// `permission denied: <domain><path> is claimed by another service`
pub fn claimed_error(domain: &str, path: &str) -> Error {
    Error::PermissionDenied(format!("{domain}{path} is claimed by another service"))
}

/// §3.4 step 5: every route-targeted entry refers to a route of the configuration.
fn check_references(cfg: &ConfigSet) -> Result<()> {
    fn first_orphan<T>(map: &BTreeMap<Target, T>, cfg: &ConfigSet) -> Option<RouteId> {
        map.keys().find_map(|t| match t {
            Target::Route(id) if !cfg.routes.contains_key(id) => Some(*id),
            _ => None,
        })
    }
    let orphans = [
        ("headers", first_orphan(&cfg.headers, cfg)),
        ("options", first_orphan(&cfg.options, cfg)),
        ("health", first_orphan(&cfg.health, cfg)),
        ("ratelimit", first_orphan(&cfg.ratelimit, cfg)),
        ("circuit_breaker", first_orphan(&cfg.circuit_breaker, cfg)),
    ];
    match orphans.into_iter().find_map(|(c, id)| id.map(|id| (c, id))) {
        Some((category, id)) => {
            Err(Error::invalid("route not active (include scope routes)")
                .in_validation(category, id))
        }
        None => Ok(()),
    }
}

/// Added / removed / modified route ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct IdChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub modified: Vec<String>,
}

/// Added / removed / modified entry counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct CountChanges {
    pub added: u64,
    pub removed: u64,
    pub modified: u64,
}

/// The payload of `DIFF_OK` (§4.23), keys in the documented order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Diff {
    pub routes: IdChanges,
    pub headers: CountChanges,
    pub options: CountChanges,
    pub health: IdChanges,
    pub ratelimit: IdChanges,
    pub circuit_breaker: IdChanges,
    pub pending: bool,
}

/// Compares staged (new) with active (old).
pub fn diff(staged: &ConfigSet, active: &ConfigSet) -> Diff {
    let routes = id_changes(&staged.routes, &active.routes, |a, b| a.same_fields(b));
    let headers = count_changes(
        &flatten(&staged.headers, |e| {
            (e.name.to_ascii_lowercase(), e.value.clone())
        }),
        &flatten(&active.headers, |e| {
            (e.name.to_ascii_lowercase(), e.value.clone())
        }),
    );
    let options = count_changes(
        &flatten(&staged.options, |v| v.clone()),
        &flatten(&active.options, |v| v.clone()),
    );
    let health = id_changes(&staged.health, &active.health, PartialEq::eq);
    let ratelimit = id_changes(&staged.ratelimit, &active.ratelimit, PartialEq::eq);
    let circuit_breaker = id_changes(
        &staged.circuit_breaker,
        &active.circuit_breaker,
        PartialEq::eq,
    );
    let pending = staged != active;
    Diff {
        routes,
        headers,
        options,
        health,
        ratelimit,
        circuit_breaker,
        pending,
    }
}

fn id_changes<K: Ord + std::fmt::Display, V>(
    new: &BTreeMap<K, V>,
    old: &BTreeMap<K, V>,
    same: impl Fn(&V, &V) -> bool,
) -> IdChanges {
    let mut out = IdChanges::default();
    for (k, v) in new {
        match old.get(k) {
            None => out.added.push(k.to_string()),
            Some(o) if !same(v, o) => out.modified.push(k.to_string()),
            Some(_) => {}
        }
    }
    out.removed = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .map(|k| k.to_string())
        .collect();
    out
}

fn flatten<V, W>(
    map: &BTreeMap<Target, BTreeMap<String, V>>,
    value: impl Fn(&V) -> W,
) -> HashMap<(Target, String), W> {
    map.iter()
        .flat_map(|(t, m)| m.iter().map(move |(k, v)| ((*t, k.clone()), v)))
        .map(|(k, v)| (k, value(v)))
        .collect()
}

fn count_changes<W: PartialEq>(
    new: &HashMap<(Target, String), W>,
    old: &HashMap<(Target, String), W>,
) -> CountChanges {
    let mut out = CountChanges::default();
    for (k, v) in new {
        match old.get(k) {
            None => out.added += 1,
            Some(o) if o != v => out.modified += 1,
            Some(_) => {}
        }
    }
    out.removed = old.keys().filter(|k| !new.contains_key(*k)).count() as u64;
    out
}

/// A route's status in `ROUTE_LIST` (§3.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteStatus {
    Active,
    Staged,
    Modified,
    PendingRemoval,
}

impl RouteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteStatus::Active => "active",
            RouteStatus::Staged => "staged",
            RouteStatus::Modified => "modified",
            RouteStatus::PendingRemoval => "pending_removal",
        }
    }

    /// The status of a route present in `staged` and/or `active`.
    pub fn of(staged: Option<&RouteSpec>, active: Option<&RouteSpec>) -> Option<RouteStatus> {
        match (staged, active) {
            (Some(s), Some(a)) if s.same_fields(a) => Some(RouteStatus::Active),
            (Some(_), Some(_)) => Some(RouteStatus::Modified),
            (Some(_), None) => Some(RouteStatus::Staged),
            (None, Some(_)) => Some(RouteStatus::PendingRemoval),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::{BackendUrl, HealthSpec};
    use crate::registry::session::HeaderEntry;
    use std::time::Duration;

    fn route(domain: &str, path: &str) -> RouteSpec {
        RouteSpec {
            domains: vec![domain.into()],
            path: path.into(),
            backend: BackendUrl::parse("http://b:1").expect("valid"),
            priority: 0,
        }
    }

    struct Claims(Vec<(&'static str, &'static str, &'static str)>);

    impl Ownership for Claims {
        fn claimed_by(&self, domain: &str, path: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(d, p, _)| *d == domain && *p == path)
                .map(|c| c.2)
        }
        fn backend_allowed(&self, _: &RouteSpec) -> Result<()> {
            Ok(())
        }
    }

    fn health() -> HealthSpec {
        HealthSpec {
            path: "/h".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn scopes_parse() {
        let s = |v: &[&str]| {
            Scopes::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .map_err(|e| e.to_string())
        };
        assert_eq!(s(&[]), Err("invalid format".into()));
        assert_eq!(s(&["routes", "bogus"]), Err("unknown scope: bogus".into()));
        let parsed = s(&["health", "routes", "health"]).expect("valid");
        assert_eq!(parsed.names(), vec!["routes", "health"]);
        assert_eq!(s(&["routes", "all"]).expect("valid").names(), vec!["all"]);
    }

    #[test]
    fn validation_reports_in_order() {
        let none = Claims(vec![]);
        let mut c = ConfigSet::default();
        c.routes.insert(RouteId(1), route("a.com", "/"));
        c.routes.insert(RouteId(2), route("a.com", "/"));
        let err = validate(&c, "shop", &none).unwrap_err();
        assert_eq!(err.to_string(), "route r2: duplicate route: a.com/");
        c.routes.remove(&RouteId(2));
        let other = Claims(vec![("a.com", "/", "blog")]);
        assert_eq!(
            validate(&c, "shop", &other).unwrap_err().to_string(),
            "route r1: permission denied: a.com/ is claimed by another service"
        );
        let same = Claims(vec![("a.com", "/", "shop")]);
        assert!(validate(&c, "shop", &same).is_ok());
        c.health.insert(Target::Route(RouteId(5)), health());
        c.ratelimit.insert(
            Target::Route(RouteId(4)),
            crate::registry::model::RateLimitSpec {
                requests: 1,
                window: Duration::from_secs(1),
            },
        );
        assert_eq!(
            validate(&c, "shop", &none).unwrap_err().to_string(),
            "health r5: route not active (include scope routes)"
        );
    }

    #[test]
    fn partial_candidate_replaces_only_listed_categories() {
        let mut active = ConfigSet::default();
        active.routes.insert(RouteId(1), route("a.com", "/"));
        active.health.insert(Target::Route(RouteId(1)), health());
        let mut staged = active.clone();
        staged.remove_route(RouteId(1));
        staged.routes.insert(RouteId(2), route("a.com", "/x"));
        staged.health.insert(Target::Route(RouteId(2)), health());
        let only_health = Scopes::parse(&["health".to_string()]).expect("valid");
        let c = candidate(&active, &staged, &only_health);
        assert!(c.routes.contains_key(&RouteId(1)));
        assert!(c.health.contains_key(&Target::Route(RouteId(2))));
        assert!(validate(&c, "s", &Claims(vec![])).is_err());
        let only_routes = Scopes::parse(&["routes".to_string()]).expect("valid");
        let c = candidate(&active, &staged, &only_routes);
        assert_eq!(c.routes.keys().collect::<Vec<_>>(), vec![&RouteId(2)]);
        assert!(c.health.is_empty(), "r1's health dropped with its route");
    }

    #[test]
    fn diff_counts_and_lists() {
        let mut active = ConfigSet::default();
        active.routes.insert(RouteId(1), route("a.com", "/"));
        active.routes.insert(RouteId(2), route("a.com", "/b"));
        active
            .headers
            .entry(Target::Route(RouteId(1)))
            .or_default()
            .insert(
                "x-a".into(),
                HeaderEntry {
                    name: "X-A".into(),
                    value: "1".into(),
                },
            );
        let mut staged = active.clone();
        staged.remove_route(RouteId(1));
        staged.routes.insert(RouteId(2), route("a.com", "/c"));
        staged.routes.insert(RouteId(3), route("a.com", "/d"));
        staged.health.insert(Target::All, health());
        let d = diff(&staged, &active);
        assert_eq!(d.routes.added, vec!["r3"]);
        assert_eq!(d.routes.removed, vec!["r1"]);
        assert_eq!(d.routes.modified, vec!["r2"]);
        assert_eq!(d.headers.removed, 1);
        assert_eq!(d.health.added, vec!["ALL"]);
        assert!(d.pending);
        let json = serde_json::to_string(&diff(&active, &active)).expect("json");
        assert_eq!(
            json,
            r#"{"routes":{"added":[],"removed":[],"modified":[]},"headers":{"added":0,"removed":0,"modified":0},"options":{"added":0,"removed":0,"modified":0},"health":{"added":[],"removed":[],"modified":[]},"ratelimit":{"added":[],"removed":[],"modified":[]},"circuit_breaker":{"added":[],"removed":[],"modified":[]},"pending":false}"#
        );
    }

    #[test]
    fn statuses() {
        let a = route("a.com", "/");
        let b = route("a.com", "/b");
        assert_eq!(
            RouteStatus::of(Some(&a), Some(&a)),
            Some(RouteStatus::Active)
        );
        assert_eq!(
            RouteStatus::of(Some(&b), Some(&a)),
            Some(RouteStatus::Modified)
        );
        assert_eq!(RouteStatus::of(Some(&a), None), Some(RouteStatus::Staged));
        assert_eq!(
            RouteStatus::of(None, Some(&a)),
            Some(RouteStatus::PendingRemoval)
        );
    }
}
