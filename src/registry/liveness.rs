//! Session liveness (PROTOCOL §2.4–§2.7, §3.7): connections and their outboxes, leases,
//! disconnect → disabled routes → grace → expiry, reconnection, subscriptions, and the one
//! timer task that fires every deadline.

use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::events::{outbox, EventType, OutboxReceiver};
use super::session::Liveness;
use super::views::Reconnect;
use super::{staging, Caller, ConnId, EndReason, Registry, Result, State};
use crate::proxy::LiveEvent;
use crate::shutdown::Shutdown;

impl Registry {
    /// Registers a new pipe connection; its asynchronous lines arrive on the receiver.
    pub fn open_connection(&self) -> (ConnId, OutboxReceiver) {
        let conn = ConnId(
            self.inner
                .next_conn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        let (tx, rx) = outbox(self.inner.settings.outbound_queue);
        self.lock().outboxes.insert(conn, tx);
        (conn, rx)
    }

    /// A pipe connection closed: it is detached, and sessions it held connected disconnect.
    pub fn close_connection(&self, conn: ConnId) {
        let mut st = self.lock();
        st.outboxes.remove(&conn);
        let Some(sessions) = st.conns.remove(&conn) else {
            return;
        };
        for id in sessions {
            let Some(s) = st.sessions.get_mut(&id) else {
                continue;
            };
            s.connections.remove(&conn);
            if s.event_conn == Some(conn) {
                s.event_conn = None;
            }
            self.update_liveness(&mut st, &id);
        }
    }

    /// Recomputes whether a session is connected (§2.5) and applies a change: members are
    /// disabled or re-enabled in the proxy at once, the grace timer starts or stops.
    pub(super) fn update_liveness(&self, st: &mut State, id: &str) {
        let now = Instant::now();
        let grace = self.inner.settings.session_grace;
        let Some(s) = st.sessions.get_mut(id) else {
            return;
        };
        let by_pipe = match s.liveness {
            Liveness::Connection => !s.connections.is_empty(),
            Liveness::Lease => s.lease_until.is_some_and(|t| t > now),
        };
        let holds = by_pipe || s.front_lease_until.is_some_and(|t| t > now) || s.streams > 0;
        if holds == s.connected {
            return;
        }
        s.connected = holds;
        s.grace_deadline = (!holds).then_some(now + grace);
        let grace_deadline = s.grace_deadline;
        tracing::info!(
            session = %s.log_id(),
            connected = holds,
            "session {}",
            if holds { "reconnected" } else { "disconnected" }
        );
        let s = st.session(id);
        for (_, live) in st.live_of(s) {
            live.set_connected(holds);
        }
        if let Some(at) = grace_deadline {
            self.schedule(st, at);
        }
    }

    /// `RECONNECT` (§4.2): `Reregister` for anything but a live session.
    pub fn reconnect(&self, caller: Caller, sid: &str) -> Result<Reconnect> {
        let mut st = self.lock();
        if sid.is_empty() || !st.sessions.contains_key(sid) {
            return Ok(Reconnect::Reregister);
        }
        self.check_attach(&st, caller, sid)?;
        self.touch(&mut st, caller, sid);
        if let Caller::Pipe(conn) = caller {
            st.session_mut(sid).event_conn = Some(conn);
        }
        Ok(Reconnect::Ok)
    }

    /// `SUBSCRIBE` (§4.33): `types` as received.
    pub fn subscribe(&self, caller: Caller, sid: &str, types: &[String]) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let types = EventType::parse_list(types)?;
        let s = st.session_mut(&id);
        s.subscriptions.extend(types);
        if let Caller::Pipe(conn) = caller {
            s.event_conn = Some(conn);
        }
        Ok(())
    }

    /// `UNSUBSCRIBE` (§4.34).
    pub fn unsubscribe(&self, caller: Caller, sid: &str, types: &[String]) -> Result<()> {
        let mut st = self.lock();
        let id = self.resolve(&mut st, caller, sid)?;
        let types = EventType::parse_list(types)?;
        let s = st.session_mut(&id);
        for t in types {
            s.subscriptions.remove(&t);
        }
        Ok(())
    }

    /// An event stream (gRPC `Subscribe`, SSE) opened for a session: it holds the session
    /// connected until [`Registry::stream_closed`].
    pub fn stream_opened(&self, id: &str) {
        let mut st = self.lock();
        if let Some(s) = st.sessions.get_mut(id) {
            s.streams += 1;
            self.update_liveness(&mut st, id);
        }
    }

    /// The stream of [`Registry::stream_opened`] closed.
    pub fn stream_closed(&self, id: &str) {
        let mut st = self.lock();
        if let Some(s) = st.sessions.get_mut(id) {
            s.streams = s.streams.saturating_sub(1);
            self.update_liveness(&mut st, id);
        }
    }

    /// Counts events a stream could not take into the session's `events_dropped`.
    pub fn count_dropped(&self, id: &str, dropped: u64) {
        if let Some(s) = self.lock().sessions.get_mut(id) {
            s.events_dropped += dropped;
        }
    }

    /// Starts the background work: the timer task and the consumer of the engine's live events.
    pub fn spawn_background(&self, shutdown: Shutdown) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        let timers = self.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move { timers.run_timers(stop).await }));
        if let Some(mut events) = self.inner.engine.take_live_events() {
            let registry = self.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        event = events.recv() => match event {
                            Some(event) => registry.live_event(event),
                            None => break,
                        },
                    }
                }
            }));
        }
        tasks
    }

    /// Reports a change of a member's live state as an event of its session.
    fn live_event(&self, event: LiveEvent) {
        let mut st = self.lock();
        let member = match &event {
            LiveEvent::Breaker { member, .. } | LiveEvent::Health { member, .. } => *member,
        };
        let rid = super::RouteId(member);
        // The member may have left since (its route removed, its session ended).
        let Some(owner) = st.route_owner.get(&rid).cloned() else {
            return;
        };
        let Some(backend) = st
            .sessions
            .get(&owner)
            .and_then(|s| s.active.routes.get(&rid))
            .map(|r| r.backend.raw.clone())
        else {
            return;
        };
        let (kind, data) = match event {
            LiveEvent::Breaker { transition, .. } => (
                EventType::CircuitBreakerStateChanged,
                json!({
                    "backend": backend,
                    "from": transition.from.as_str(),
                    "to": transition.to.as_str(),
                    "failures": transition.failures,
                    "next_attempt": transition.next_attempt.map(super::rfc3339),
                }),
            ),
            LiveEvent::Health {
                healthy,
                reason,
                status,
                ..
            } => (
                EventType::BackendHealthChanged,
                json!({
                    "backend": backend,
                    "healthy": healthy,
                    "reason": reason,
                    "status_code": status,
                }),
            ),
        };
        self.emit(&mut st, kind, &owner, Some(rid), data);
    }

    async fn run_timers(&self, shutdown: Shutdown) {
        loop {
            let next = self.fire_due(Instant::now());
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = self.inner.timers.notified() => {}
                _ = sleep => {}
            }
        }
    }

    /// Fires every deadline that is due; returns the next one.
    fn fire_due(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let ids: Vec<String> = st.sessions.keys().cloned().collect();
        for id in &ids {
            self.update_liveness(&mut st, id);
            let Some(s) = st.sessions.get(id) else {
                continue;
            };
            if s.grace_deadline.is_some_and(|t| t <= now) {
                let reason = match s.liveness {
                    Liveness::Lease => EndReason::LeaseExpired,
                    Liveness::Connection => EndReason::GraceExpired,
                };
                self.end_session(&mut st, id, reason);
                continue;
            }
            if s.staged_deadline.is_some_and(|t| t <= now) {
                self.expire_staged(&mut st, id);
            }
            self.report_drain_completion(&mut st, id, now);
        }
        let next = st
            .sessions
            .values()
            .flat_map(|s| {
                let leases = if s.connected {
                    [
                        s.lease_until.filter(|_| s.liveness == Liveness::Lease),
                        s.front_lease_until,
                    ]
                } else {
                    [None, None]
                };
                leases
                    .into_iter()
                    .chain([
                        s.grace_deadline,
                        s.staged_deadline,
                        s.drain
                            .as_ref()
                            .filter(|d| !d.completion_reported)
                            .map(|d| d.ramp.completes_at()),
                    ])
                    .flatten()
            })
            .filter(|t| *t > now)
            .min();
        st.next_wake = next;
        next
    }

    /// §3.7: staged changes nobody touched for `staged_ttl` are discarded.
    fn expire_staged(&self, st: &mut State, id: &str) {
        let s = st.session_mut(id);
        s.staged_deadline = None;
        if !s.pending() {
            return;
        }
        let discarded = staging::diff(&s.staged, &s.active);
        s.staged = s.active.clone();
        s.staged_at = None;
        tracing::info!(session = %s.log_id(), "staged changes expired");
        let data = json!({ "discarded": discarded });
        self.emit(st, EventType::StagedExpired, id, None, data);
    }
}
