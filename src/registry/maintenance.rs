//! Maintenance (PROTOCOL §4.28–§4.30, §6): target resolution, the immediate switch in the
//! proxy, and the single completion line within the bound, confirmed by probes.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::clock::ser;
use super::model::{normalize_domain, parse_route_path, split_list, RouteId};
use super::session::{MaintMark, PendingMaint, Session};
use super::{
    member_mark, parse_page_url, probe_target, Caller, ConnId, Error, EventType, Registry, Result,
    State,
};
use crate::proxy::probe::ProbeTarget;

/// What a maintenance target resolved to.
struct Resolved {
    all: bool,
    routes: BTreeSet<RouteId>,
}

/// One route of `MAINT_STATUS_OK`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MaintRoute {
    pub route_id: String,
    pub maintenance_backend: String,
    #[serde(serialize_with = "ser::time")]
    #[schema(value_type = String, format = DateTime)]
    pub entered_at: SystemTime,
}

/// `MAINT_STATUS_OK` (§4.30).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MaintStatus {
    pub in_maintenance: Vec<String>,
    pub all: bool,
    pub maintenance_backend: Option<String>,
    #[serde(serialize_with = "ser::opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub entered_at: Option<SystemTime>,
    pub routes: Vec<MaintRoute>,
}

/// Which maintenance command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Enter,
    Exit,
}

/// The target field must name at least one item (§6).
fn check_target_syntax(target: &str) -> Result<()> {
    if target != "ALL" && split_list(target).is_empty() {
        return Err(Error::InvalidFormat);
    }
    Ok(())
}

fn resolve_targets(st: &State, session: &Session, target: &str) -> Result<Resolved> {
    let routes_of = |pred: &dyn Fn(&super::model::RouteSpec) -> bool| -> BTreeSet<RouteId> {
        session
            .active
            .routes
            .iter()
            .chain(session.staged.routes.iter())
            .filter(|(_, r)| pred(r))
            .map(|(id, _)| *id)
            .collect()
    };
    if target == "ALL" {
        return Ok(Resolved {
            all: true,
            routes: routes_of(&|_| true),
        });
    }
    let mut routes = BTreeSet::new();
    for item in split_list(target) {
        let unknown = || Error::invalid_value("unknown target", &item);
        let found = if super::model::RouteId::looks_like(&item) {
            let id = RouteId::parse(&item).ok_or_else(unknown)?;
            if session.active.routes.contains_key(&id) || session.staged.routes.contains_key(&id) {
                BTreeSet::from([id])
            } else if st.foreign_route(&session.id, id) {
                return Err(Error::PermissionDenied(format!(
                    "route {id} belongs to another session"
                )));
            } else {
                BTreeSet::new()
            }
        } else if item.starts_with('/') {
            match parse_route_path(&item) {
                Ok(path) => routes_of(&|r| r.path == path),
                Err(_) => BTreeSet::new(),
            }
        } else if let Some(slash) = item[1..].find('/').map(|i| i + 1) {
            let (domain, path) = item.split_at(slash);
            match (normalize_domain(domain), parse_route_path(path)) {
                (Some(d), Ok(p)) => routes_of(&|r| r.path == p && r.domains.contains(&d)),
                _ => BTreeSet::new(),
            }
        } else {
            match normalize_domain(&item) {
                Some(d) => routes_of(&|r| r.domains.contains(&d)),
                None => BTreeSet::new(),
            }
        };
        if found.is_empty() {
            return Err(unknown());
        }
        routes.extend(found);
    }
    Ok(Resolved { all: false, routes })
}

/// Probes `target` once a second (3 s per attempt) until it answers below 500 or `deadline`.
async fn probe_until(
    engine: std::sync::Arc<crate::proxy::Engine>,
    target: ProbeTarget,
    deadline: Instant,
) -> bool {
    loop {
        let start = Instant::now();
        if start >= deadline {
            return false;
        }
        let budget = Duration::from_secs(3).min(deadline - start);
        if engine.probe(&target, budget).await.reachable() {
            return true;
        }
        let next = (start + Duration::from_secs(1)).max(Instant::now());
        if next >= deadline {
            return false;
        }
        tokio::time::sleep_until(next).await;
    }
}

impl Registry {
    /// `MAINT_ENTER` (§4.28): `txn` is the pipe tag its completion line carries.
    pub fn maint_enter(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        page_url: &str,
        txn: Option<String>,
    ) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        check_target_syntax(target)?;
        let page = parse_page_url(page_url)?;
        let resolved = resolve_targets(&st, st.session(&id), target)?;
        let mark = MaintMark {
            page: page_url.to_string(),
            entered_at: self.now(),
            order: st.next_counter(),
        };
        let session = st.session_mut(&id);
        if resolved.all {
            session.maintenance.all = Some(mark.clone());
        }
        for rid in &resolved.routes {
            session.maintenance.routes.insert(*rid, mark.clone());
        }
        let in_proxy = member_mark(&mark);
        for rid in &resolved.routes {
            if let Some(live) = st.members.get(rid) {
                live.set_maintenance(Some(in_proxy.clone()));
            }
        }
        let probes = page.map(|(_, probe)| vec![probe]);
        self.begin_completion(
            &mut st,
            &id,
            caller,
            txn,
            target,
            Direction::Enter,
            &resolved,
            page_url,
            probes,
        );
        Ok(())
    }

    /// `MAINT_EXIT` (§4.29).
    pub fn maint_exit(
        &self,
        caller: Caller,
        sid: &str,
        target: &str,
        txn: Option<String>,
    ) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        check_target_syntax(target)?;
        let resolved = resolve_targets(&st, st.session(&id), target)?;
        let session = st.session_mut(&id);
        session.maintenance.all = None;
        for rid in &resolved.routes {
            session.maintenance.routes.remove(rid);
        }
        let session = st.session(&id);
        let mut probes = Vec::new();
        for rid in &resolved.routes {
            let Some(route) = session.active.routes.get(rid) else {
                continue;
            };
            if let Some(live) = st.members.get(rid) {
                live.set_maintenance(None);
            }
            let mut target = probe_target(&route.backend, None);
            target.verify = !session
                .active
                .option(*rid, "tls_skip_verify")
                .and_then(super::model::parse_bool)
                .unwrap_or(false);
            probes.push(target);
        }
        let probes = (!probes.is_empty()).then_some(probes);
        self.begin_completion(
            &mut st,
            &id,
            caller,
            txn,
            target,
            Direction::Exit,
            &resolved,
            "",
            probes,
        );
        Ok(())
    }

    /// The asynchronous part shared by enter and exit: supersede the pending completion, emit
    /// the first `maintenance_changed`, and complete at once (no probes) or after probing.
    #[allow(clippy::too_many_arguments)]
    fn begin_completion(
        &self,
        st: &mut State,
        id: &str,
        caller: Caller,
        txn: Option<String>,
        target: &str,
        direction: Direction,
        resolved: &Resolved,
        page_url: &str,
        probes: Option<Vec<ProbeTarget>>,
    ) {
        if let Some(old) = st.session_mut(id).pending_maint.take() {
            if let Some(probe) = &old.probe {
                probe.abort();
            }
            let superseded = Error::invalid("superseded by a newer maintenance command");
            self.complete(st, id, old, Err(superseded));
        }
        let conn = match caller {
            Caller::Pipe(conn) => Some(conn),
            Caller::Front => None,
        };
        if let Some(outbox) = conn.and_then(|c| st.outboxes.get(&c)) {
            outbox.expect_completion();
        }
        let route_ids: Vec<String> = resolved.routes.iter().map(|r| r.to_string()).collect();
        let mut data = Map::new();
        data.insert("target".into(), target.into());
        data.insert("route_ids".into(), json!(route_ids));
        data.insert(
            "in_maintenance".into(),
            (direction == Direction::Enter).into(),
        );
        data.insert("maintenance_backend".into(), page_url.into());
        data.insert("confirmed".into(), Value::Null);
        let generation = st.next_counter();
        let mut pending = PendingMaint {
            conn,
            txn,
            target: target.to_string(),
            generation,
            probe: None,
            event: data.clone(),
        };
        let Some(probes) = probes else {
            // Immediate completion: the MAINT_OK line goes before the events (§5.4).
            self.complete_line(st, &pending, Ok(()));
            self.emit(
                st,
                EventType::MaintenanceChanged,
                id,
                None,
                Value::Object(data.clone()),
            );
            data.insert("confirmed".into(), true.into());
            self.emit(
                st,
                EventType::MaintenanceChanged,
                id,
                None,
                Value::Object(data),
            );
            return;
        };
        self.emit(
            st,
            EventType::MaintenanceChanged,
            id,
            None,
            Value::Object(data),
        );
        let deadline = Instant::now() + self.inner.settings.maintenance_bound;
        let registry = self.clone();
        let engine = self.inner.engine.clone();
        let session = id.to_string();
        let failure = match direction {
            Direction::Enter => "timeout waiting for maintenance page to become reachable",
            Direction::Exit => "timeout waiting for backend to become reachable",
        };
        let task = tokio::spawn(async move {
            let mut set = JoinSet::new();
            for target in probes {
                set.spawn(probe_until(engine.clone(), target, deadline));
            }
            let mut reachable = true;
            while let Some(done) = set.join_next().await {
                reachable &= done.unwrap_or(false);
            }
            registry.finish_maintenance(
                &session,
                generation,
                reachable.then_some(()).ok_or(failure),
            );
        });
        pending.probe = Some(task.abort_handle());
        st.session_mut(id).pending_maint = Some(pending);
    }

    /// Probing ended: write the completion unless a newer command superseded it.
    fn finish_maintenance(
        &self,
        id: &str,
        generation: u64,
        outcome: std::result::Result<(), &str>,
    ) {
        let mut st = self.lock();
        let Some(s) = st.sessions.get_mut(id) else {
            return;
        };
        if s.pending_maint
            .as_ref()
            .is_none_or(|p| p.generation != generation)
        {
            return;
        }
        let Some(pending) = s.pending_maint.take() else {
            return;
        };
        self.complete(&mut st, id, pending, outcome.map_err(Error::invalid));
    }

    /// Writes a completion line and emits the second `maintenance_changed`.
    fn complete(&self, st: &mut State, id: &str, pending: PendingMaint, outcome: Result<()>) {
        let confirmed = outcome.is_ok();
        self.complete_line(st, &pending, outcome);
        let mut data = pending.event;
        data.insert("confirmed".into(), confirmed.into());
        self.emit(
            st,
            EventType::MaintenanceChanged,
            id,
            None,
            Value::Object(data),
        );
    }

    fn complete_line(&self, st: &State, pending: &PendingMaint, outcome: Result<()>) {
        let conn: Option<ConnId> = pending.conn;
        if let Some(outbox) = conn.and_then(|c| st.outboxes.get(&c)) {
            outbox.push_completion(
                pending.txn.clone(),
                outcome.map(|()| pending.target.clone()),
            );
        }
    }

    /// `MAINT_STATUS` (§4.30).
    pub fn maint_status(&self, caller: Caller, sid: &str) -> Result<MaintStatus> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let s = st.session(&id);
        let ids: BTreeSet<RouteId> = s
            .active
            .routes
            .keys()
            .chain(s.staged.routes.keys())
            .copied()
            .collect();
        let marked: Vec<(RouteId, &MaintMark)> = ids
            .into_iter()
            .filter_map(|rid| s.maintenance.mark(rid).map(|m| (rid, m)))
            .collect();
        let latest = marked
            .iter()
            .map(|(_, m)| *m)
            .chain(s.maintenance.all.as_ref())
            .max_by_key(|m| m.order);
        Ok(MaintStatus {
            in_maintenance: marked.iter().map(|(r, _)| r.to_string()).collect(),
            all: s.maintenance.all.is_some(),
            maintenance_backend: latest.map(|m| m.page.clone()),
            entered_at: latest.map(|m| m.entered_at),
            routes: marked
                .iter()
                .map(|(rid, m)| MaintRoute {
                    route_id: rid.to_string(),
                    maintenance_backend: m.page.clone(),
                    entered_at: m.entered_at,
                })
                .collect(),
        })
    }
}
