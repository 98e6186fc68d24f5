//! Health checks (PROTOCOL §3.3, §4.15): one probe loop per distinct check target, shared by
//! every member that uses it; down after 3 consecutive failures, up after 2 passes; each flip
//! updates the members at once and is reported as a live event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::live::MemberLive;
use super::probe::{self, ProbeOutcome, ProbeTarget, Probes};
use super::LiveEvent;

/// Consecutive failures that take a target down, passes that bring it back.
const DOWN_AFTER: u32 = 3;
const UP_AFTER: u32 = 2;

/// What one check probes and how (the sharing key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    pub scheme: &'static str,
    pub authority: String,
    pub host_header: String,
    pub path_and_query: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// The default check of §3.3 passes on any status below 500; explicit checks on 200–399.
    pub lenient: bool,
    /// Verify the backend's certificate (off for `tls_skip_verify`).
    pub verify: bool,
}

/// A member and the check it uses.
pub struct Checked {
    pub member: u64,
    pub live: Arc<MemberLive>,
    pub spec: CheckSpec,
}

/// Why a probe failed, in `backend_health_changed`'s words.
fn reason(outcome: &ProbeOutcome, pass: bool) -> &'static str {
    if pass {
        return "ok";
    }
    if outcome.status.is_some() {
        return "bad_status";
    }
    match outcome.error.as_deref() {
        Some("connection refused") => "connection_refused",
        Some("connection timeout") => "connection_timeout",
        Some("timeout") => "timeout",
        Some("dns error") => "dns_error",
        Some(e) if e.contains("tls") => "tls_error",
        _ => "error",
    }
}

struct Shared {
    members: Mutex<Vec<(u64, Weak<MemberLive>)>>,
}

struct Running {
    shared: Arc<Shared>,
    task: AbortHandle,
}

/// Every running check, keyed by what it probes.
pub struct HealthChecker {
    client: Probes,
    events: mpsc::UnboundedSender<LiveEvent>,
    running: Mutex<HashMap<CheckSpec, Running>>,
}

impl HealthChecker {
    pub fn new(client: Probes, events: mpsc::UnboundedSender<LiveEvent>) -> HealthChecker {
        HealthChecker {
            client,
            events,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the running checks exactly those of `checked`: new targets start, unused ones
    /// stop, shared ones take their new member lists. Needs a Tokio runtime.
    pub fn sync(&self, checked: Vec<Checked>) {
        let mut wanted: HashMap<CheckSpec, Vec<(u64, Weak<MemberLive>)>> = HashMap::new();
        for c in checked {
            wanted
                .entry(c.spec)
                .or_default()
                .push((c.member, Arc::downgrade(&c.live)));
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|spec, r| {
            let keep = wanted.contains_key(spec);
            if !keep {
                r.task.abort();
            }
            keep
        });
        for (spec, members) in wanted {
            if let Some(r) = running.get(&spec) {
                *r.shared.members.lock().unwrap_or_else(|p| p.into_inner()) = members;
                continue;
            }
            let shared = Arc::new(Shared {
                members: Mutex::new(members),
            });
            let task = tokio::spawn(check_loop(
                self.client.clone(),
                spec.clone(),
                shared.clone(),
                self.events.clone(),
            ))
            .abort_handle();
            running.insert(spec, Running { shared, task });
        }
    }

    /// How many distinct targets are being probed.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for r in self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            r.task.abort();
        }
    }
}

async fn check_loop(
    client: Probes,
    spec: CheckSpec,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<LiveEvent>,
) {
    let target = ProbeTarget {
        scheme: spec.scheme,
        authority: spec.authority.clone(),
        host_header: spec.host_header.clone(),
        path_and_query: spec.path_and_query.clone(),
        verify: spec.verify,
    };
    let (mut fails, mut passes) = (0u32, 0u32);
    let mut up = true;
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + spec.interval, spec.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let members: Vec<(u64, Arc<MemberLive>)> = shared
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(id, w)| Some((*id, w.upgrade()?)))
            .collect();
        // Checks pause while every session using the target is disconnected.
        if !members.iter().any(|(_, m)| m.connected()) {
            continue;
        }
        let outcome = probe::get(&client, &target, spec.timeout).await;
        let pass = match outcome.status {
            Some(s) if spec.lenient => s < 500,
            Some(s) => (200..400).contains(&s),
            None => false,
        };
        if pass {
            passes += 1;
            fails = 0;
        } else {
            fails += 1;
            passes = 0;
        }
        let flip = (up && fails >= DOWN_AFTER) || (!up && passes >= UP_AFTER);
        if !flip {
            continue;
        }
        up = !up;
        let why = reason(&outcome, pass);
        tracing::info!(backend = %spec.authority, healthy = up, reason = why, "health changed");
        for (member, live) in members.iter().filter(|(_, m)| m.connected()) {
            if live.set_healthy(up) != up {
                let _ = events.send(LiveEvent::Health {
                    member: *member,
                    healthy: up,
                    reason: why,
                    status: outcome.status,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_use_the_protocol_words() {
        let o = |status, error: Option<&str>| ProbeOutcome {
            status,
            error: error.map(str::to_string),
            elapsed: Duration::ZERO,
        };
        assert_eq!(reason(&o(Some(200), None), true), "ok");
        assert_eq!(reason(&o(Some(503), None), false), "bad_status");
        assert_eq!(
            reason(&o(None, Some("connection refused")), false),
            "connection_refused"
        );
        assert_eq!(reason(&o(None, Some("timeout")), false), "timeout");
        assert_eq!(reason(&o(None, Some("dns error")), false), "dns_error");
        assert_eq!(reason(&o(None, Some("weird")), false), "error");
    }
}
