//! Per-member live state: what changes without an apply (connected, maintenance, drain weight,
//! health, in-flight requests, counters). Atomics behind an `Arc` that snapshots point to.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Full traffic weight of a member that is not draining.
pub const FULL_WEIGHT: f32 = 100.0;

/// The live state of one member (one route of one session). A member that survives an apply
/// keeps the same `MemberLive`, so its state and counters carry over.
#[derive(Debug)]
pub struct MemberLive {
    connected: AtomicBool,
    maintenance: AtomicBool,
    healthy: AtomicBool,
    /// f32 bits of the drain weight, 0 ..= 100.
    weight: AtomicU32,
    in_flight: AtomicU32,
    /// Counters of forwarded requests.
    pub stats: MemberCounters,
}

/// Cheap counters on the hot path; the engine issue adds status codes and latency.
#[derive(Debug, Default)]
pub struct MemberCounters {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

impl Default for MemberLive {
    fn default() -> Self {
        MemberLive {
            connected: AtomicBool::new(true),
            maintenance: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            weight: AtomicU32::new(FULL_WEIGHT.to_bits()),
            in_flight: AtomicU32::new(0),
            stats: MemberCounters::default(),
        }
    }
}

impl MemberLive {
    /// Whether new requests may be sent to this member (§3.10 step 4).
    pub fn available(&self) -> bool {
        self.connected.load(Ordering::Acquire)
            && !self.maintenance.load(Ordering::Acquire)
            && self.healthy.load(Ordering::Acquire)
            && self.weight() > 0.0
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, on: bool) {
        self.connected.store(on, Ordering::Release);
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance.load(Ordering::Acquire)
    }

    pub fn set_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::Release);
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Release);
    }

    /// The drain weight, 0 ..= 100.
    pub fn weight(&self) -> f32 {
        f32::from_bits(self.weight.load(Ordering::Acquire))
    }

    pub fn set_weight(&self, weight: f32) {
        self.weight
            .store(weight.clamp(0.0, FULL_WEIGHT).to_bits(), Ordering::Release);
    }

    /// Requests in flight to this member right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

/// Decrements the in-flight count when dropped.
pub struct InFlight<'a>(&'a MemberLive);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_follows_every_flag() {
        let m = MemberLive::default();
        assert!(m.available());
        m.set_connected(false);
        assert!(!m.available());
        m.set_connected(true);
        m.set_maintenance(true);
        assert!(!m.available());
        m.set_maintenance(false);
        m.set_healthy(false);
        assert!(!m.available());
        m.set_healthy(true);
        m.set_weight(0.0);
        assert!(!m.available());
        m.set_weight(0.5);
        assert!(m.available());
        {
            let _a = m.begin();
            let _b = m.begin();
            assert_eq!(m.in_flight(), 2);
        }
        assert_eq!(m.in_flight(), 0);
    }
}
