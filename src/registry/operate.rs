//! Commands that act on live state without an apply: drain (§4.25–§4.27), breaker status and
//! reset (§4.18–§4.19), statistics (§4.31) and `BACKEND_TEST` (§4.32).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;
use utoipa::ToSchema;

use super::clock::{rfc3339, ser};
use super::model::{duration_in, RouteId};
use super::session::{ConfigSet, Drain};
use super::staging::RouteStatus;
use super::views::{SessionInfo, TableRoute};
use super::{
    backend_allowed, model, probe_target, Caller, Error, EventType, Reads, Registry, Result, State,
};
use crate::proxy::live::DrainRamp;

/// `DRAIN_STATUS_OK` (§4.26).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DrainStatus {
    pub active: bool,
    pub completed: bool,
    #[serde(serialize_with = "ser::time")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: SystemTime,
    #[serde(serialize_with = "ser::time")]
    #[schema(value_type = String, format = DateTime)]
    pub completes_at: SystemTime,
    pub duration_seconds: u64,
    pub elapsed_seconds: u64,
    pub remaining_seconds: u64,
    pub start_percent: u64,
    pub traffic_percent: u64,
}

/// `CIRCUIT_STATUS_OK` (§4.18).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BreakerReport {
    pub route_id: String,
    pub configured: bool,
    pub state: &'static str,
    pub failures: u32,
    pub successes: u32,
    pub threshold: Option<u32>,
    #[serde(rename = "timeout_seconds", serialize_with = "ser::opt_seconds")]
    #[schema(value_type = Option<f64>)]
    pub timeout: Option<Duration>,
    pub half_open_requests: Option<u32>,
    #[serde(serialize_with = "ser::opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_failure: Option<SystemTime>,
    #[serde(serialize_with = "ser::opt_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_attempt: Option<SystemTime>,
    pub healthy: bool,
    pub in_maintenance: bool,
    pub draining: bool,
}

/// One route's statistics (§4.31).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RouteStats {
    pub route_id: String,
    pub requests: u64,
    pub errors: u64,
    pub avg_latency_ms: u64,
    pub p95_latency_ms: u64,
    pub p99_latency_ms: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub status_codes: BTreeMap<String, u64>,
    pub rate_limited: u64,
    pub unavailable: u64,
    #[serde(serialize_with = "ser::time")]
    #[schema(value_type = String, format = DateTime)]
    pub since: SystemTime,
}

/// `STATS_GET` answers an array for the session and an object for one route.
#[derive(Debug, Clone)]
pub enum StatsReport {
    All(Vec<RouteStats>),
    One(RouteStats),
}

/// `BACKEND_OK` / `BACKEND_FAIL` payloads (§4.32).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BackendTest {
    Reachable {
        url: String,
        reachable: bool,
        response_time_ms: u64,
        status_code: u16,
        tls_valid: Option<bool>,
        tls_error: Option<String>,
    },
    Unreachable {
        url: String,
        reachable: bool,
        error: String,
        response_time_ms: u64,
    },
}

fn floor_secs(d: Duration) -> u64 {
    d.as_secs()
}

impl Registry {
    /// `DRAIN_START` (§4.25): the ramp takes effect in the proxy before the reply; returns the
    /// completion time.
    pub fn drain_start(&self, caller: Caller, sid: &str, duration: &str) -> Result<SystemTime> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let duration = duration_in(duration, Duration::ZERO, Duration::from_secs(86_400))
            .ok_or_else(|| Error::invalid("invalid duration"))?;
        let now = Instant::now();
        let start_percent = st
            .session(&id)
            .drain
            .as_ref()
            .map_or(100.0, |d| d.ramp.weight_at(now));
        let ramp = DrainRamp {
            start: now,
            duration,
            start_percent,
        };
        let started_at = self.now();
        let s = st.session(&id);
        for (_, live) in st.live_of(s) {
            live.set_drain(Some(ramp));
        }
        st.session_mut(&id).drain = Some(Drain {
            started_at,
            ramp,
            completion_reported: false,
        });
        self.report_drain_completion(&mut st, &id, now);
        self.schedule(&mut st, ramp.completes_at());
        Ok(started_at + duration)
    }

    /// Emits `drain_completed` once the ramp has reached 0.
    pub(super) fn report_drain_completion(&self, st: &mut State, id: &str, now: Instant) {
        let Some(drain) = st.sessions.get_mut(id).and_then(|s| s.drain.as_mut()) else {
            return;
        };
        if drain.completion_reported || drain.ramp.completes_at() > now {
            return;
        }
        drain.completion_reported = true;
        let data = json!({
            "started_at": rfc3339(drain.started_at),
            "completed_at": rfc3339(drain.started_at + drain.ramp.duration),
            "duration_seconds": floor_secs(drain.ramp.duration),
        });
        self.emit(st, EventType::DrainCompleted, id, None, data);
    }

    /// `DRAIN_STATUS` (§4.26).
    pub fn drain_status(&self, caller: Caller, sid: &str) -> Result<DrainStatus> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let drain = st.session(&id).drain.as_ref().ok_or(Error::NoDrain)?;
        let now = Instant::now();
        let ramp = drain.ramp;
        let completed = now >= ramp.completes_at();
        let elapsed = now.saturating_duration_since(ramp.start).min(ramp.duration);
        let (elapsed_seconds, remaining_seconds) = if completed {
            (floor_secs(ramp.duration), 0)
        } else {
            (floor_secs(elapsed), floor_secs(ramp.duration - elapsed))
        };
        Ok(DrainStatus {
            active: true,
            completed,
            started_at: drain.started_at,
            completes_at: drain.started_at + ramp.duration,
            duration_seconds: floor_secs(ramp.duration),
            elapsed_seconds,
            remaining_seconds,
            start_percent: ramp.start_percent.floor() as u64,
            traffic_percent: ramp.weight_at(now).floor() as u64,
        })
    }

    /// `DRAIN_CANCEL` (§4.27): full weight again, before the reply.
    pub fn drain_cancel(&self, caller: Caller, sid: &str) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        if st.session_mut(&id).drain.take().is_none() {
            return Err(Error::NoDrain);
        }
        let s = st.session(&id);
        for (_, live) in st.live_of(s) {
            live.set_drain(None);
        }
        Ok(())
    }

    /// `CIRCUIT_BREAKER_STATUS` (§4.18).
    pub fn circuit_breaker_status(
        &self,
        caller: Caller,
        sid: &str,
        rid: &str,
    ) -> Result<BreakerReport> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let rid = st.resolve_route(&id, rid, Reads::Active)?;
        let s = st.session(&id);
        let live = st.members.get(&rid).ok_or(Error::Internal)?;
        let status = live.breaker.status();
        let config = status.config;
        Ok(BreakerReport {
            route_id: rid.to_string(),
            configured: config.is_some(),
            state: status.state.as_str(),
            failures: status.failures,
            successes: status.successes,
            threshold: config.map(|c| c.threshold),
            timeout: config.map(|c| c.timeout),
            half_open_requests: config.map(|c| c.half_open_requests),
            last_failure: status.last_failure,
            next_attempt: status.next_attempt,
            healthy: live.healthy(),
            in_maintenance: live.in_maintenance(),
            draining: s.drain.is_some(),
        })
    }

    /// `CIRCUIT_BREAKER_RESET` (§4.19): the live breaker closes before the reply.
    pub fn circuit_breaker_reset(&self, caller: Caller, sid: &str, target: &str) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let targets: Vec<RouteId> = if target == "ALL" {
            let active = &st.session(&id).active;
            active
                .routes
                .keys()
                .filter(|r| ConfigSet::inherited(&active.circuit_breaker, **r).is_some())
                .copied()
                .collect()
        } else {
            let rid = st.resolve_route(&id, target, Reads::Active)?;
            let active = &st.session(&id).active;
            if ConfigSet::inherited(&active.circuit_breaker, rid).is_none() {
                return Err(Error::BreakerNotFound);
            }
            vec![rid]
        };
        for rid in targets {
            if let Some(live) = st.members.get(&rid) {
                if let Some(t) = live.breaker.reset() {
                    self.inner.engine.report_breaker(rid.0, live, t);
                }
            }
        }
        Ok(())
    }

    /// `STATS_GET` (§4.31): `target` empty or `ALL` = every active route.
    pub fn stats_get(&self, caller: Caller, sid: &str, target: &str) -> Result<StatsReport> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        if target.is_empty() || target == "ALL" {
            let s = st.session(&id);
            let all = s
                .active
                .routes
                .keys()
                .filter_map(|rid| self.route_stats(&st, &id, *rid))
                .collect();
            return Ok(StatsReport::All(all));
        }
        let rid = st.resolve_route(&id, target, Reads::Active)?;
        self.route_stats(&st, &id, rid)
            .map(StatsReport::One)
            .ok_or(Error::Internal)
    }

    fn route_stats(&self, st: &State, id: &str, rid: RouteId) -> Option<RouteStats> {
        let live = st.members.get(&rid)?;
        let route = st.session(id).active.routes.get(&rid)?;
        let stats = &live.stats;
        let latency = stats.latency();
        let (mut rate_limited, mut unavailable) = (0, 0);
        for (domain, path) in route.pairs() {
            if let Some(pool) = st.pool_lives.get(&(domain.to_string(), path.to_string())) {
                rate_limited += pool.rate_limited.load(Ordering::Relaxed);
                unavailable += pool.unavailable.load(Ordering::Relaxed);
            }
        }
        Some(RouteStats {
            route_id: rid.to_string(),
            requests: stats.requests.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            avg_latency_ms: latency.avg_ms,
            p95_latency_ms: latency.p95_ms,
            p99_latency_ms: latency.p99_ms,
            bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: stats.bytes_received.load(Ordering::Relaxed),
            status_codes: stats
                .status_codes()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            rate_limited,
            unavailable,
            since: stats.since,
        })
    }

    /// Admin `ListSessions`: every live session, by id.
    pub fn list_sessions(&self) -> Vec<SessionInfo> {
        let st = self.lock();
        let mut all: Vec<SessionInfo> =
            st.sessions.values().map(|s| self.info_of(&st, s)).collect();
        all.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        all
    }

    /// Admin `GetRouteTable`: every active route of every session, with its status.
    pub fn route_table(&self) -> Vec<TableRoute> {
        let st = self.lock();
        let mut rows: Vec<(RouteId, TableRoute)> = st
            .sessions
            .values()
            .flat_map(|s| {
                s.active.routes.iter().map(move |(rid, r)| {
                    let status = RouteStatus::of(s.staged.routes.get(rid), Some(r))
                        .map_or("active", RouteStatus::as_str);
                    (
                        *rid,
                        TableRoute {
                            session_id: s.id.clone(),
                            service_name: s.service.clone(),
                            route_id: rid.to_string(),
                            domains: r.domains.clone(),
                            path: r.path.clone(),
                            backend_url: r.backend.raw.clone(),
                            priority: r.priority,
                            status,
                        },
                    )
                })
            })
            .collect();
        rows.sort_by_key(|(rid, _)| *rid);
        rows.into_iter().map(|(_, row)| row).collect()
    }

    /// Admin `GetStats`: (session id, service, stats) of every active route.
    pub fn all_stats(&self) -> Vec<(String, String, RouteStats)> {
        let st = self.lock();
        let mut out: Vec<(RouteId, (String, String, RouteStats))> = st
            .sessions
            .values()
            .flat_map(|s| {
                let st = &st;
                s.active.routes.keys().filter_map(move |rid| {
                    let stats = self.route_stats(st, &s.id, *rid)?;
                    Some((*rid, (s.id.clone(), s.service.clone(), stats)))
                })
            })
            .collect();
        out.sort_by_key(|(rid, _)| *rid);
        out.into_iter().map(|(_, row)| row).collect()
    }

    /// `BACKEND_TEST` (§4.32): one `GET`, redirects not followed, within the test timeout.
    pub async fn backend_test(&self, caller: Caller, sid: &str, url: &str) -> Result<BackendTest> {
        {
            let mut st = self.lock();
            match self.resolve(&mut st, caller, sid) {
                Ok(_) => {}
                Err(Error::NoSession) if self.inner.settings.auth_token.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        let backend = model::parse_backend(url)?;
        backend_allowed(&backend)?;
        let mut target = probe_target(&backend, None);
        let budget = self.inner.settings.backend_test_timeout;
        let started = Instant::now();
        let mut outcome = self.inner.engine.probe(&target, budget).await;
        let mut tls_error = None;
        let tls_failed = outcome
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("tls error"));
        if tls_failed {
            // One unverified attempt measures reachability, within the same budget.
            tls_error = outcome.error.take();
            target.verify = false;
            let left = budget.saturating_sub(started.elapsed());
            outcome = self.inner.engine.probe(&target, left).await;
        }
        let response_time_ms = started.elapsed().as_millis() as u64;
        Ok(match outcome.status {
            Some(status_code) => BackendTest::Reachable {
                url: url.to_string(),
                reachable: true,
                response_time_ms,
                status_code,
                tls_valid: backend.scheme.is_tls().then_some(tls_error.is_none()),
                tls_error,
            },
            None => BackendTest::Unreachable {
                url: url.to_string(),
                reachable: false,
                error: outcome
                    .error
                    .or(tls_error)
                    .unwrap_or_else(|| "error".into()),
                response_time_ms,
            },
        })
    }
}
