//! Per-member live state: what changes without an apply (connected, maintenance, drain ramp,
//! health, breaker, in-flight requests, statistics). Atomics behind an `Arc` that snapshots
//! point to, so a member that survives an apply keeps its state.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::breaker::Breaker;
use super::snapshot::Upstream;
use super::stats::MemberStats;

/// Full traffic weight of a member that is not draining.
pub const FULL_WEIGHT: f64 = 100.0;

/// Where a member in maintenance sends its requests.
#[derive(Debug, Clone)]
pub struct MaintenancePage {
    /// The page URL as sent.
    pub raw: String,
    pub upstream: Upstream,
    /// The URL's own query, used when the request has none.
    pub query: Option<String>,
}

/// A member's maintenance mark.
#[derive(Debug, Clone)]
pub struct MaintenanceMark {
    /// `None`: the built-in maintenance page.
    pub page: Option<MaintenancePage>,
    /// Larger is more recent: the pool answers with the most recent member's page.
    pub order: u64,
}

/// A linear drain ramp (PROTOCOL §4.25).
#[derive(Debug, Clone, Copy)]
pub struct DrainRamp {
    pub start: Instant,
    pub duration: Duration,
    /// 0 ..= 100.
    pub start_percent: f64,
}

impl DrainRamp {
    /// `start_percent × max(0, 1 − elapsed/duration)`; a zero duration is drained at once.
    pub fn weight_at(&self, now: Instant) -> f64 {
        if self.duration.is_zero() {
            return 0.0;
        }
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        self.start_percent * (1.0 - elapsed / self.duration.as_secs_f64()).max(0.0)
    }

    /// When the weight reaches 0.
    pub fn completes_at(&self) -> Instant {
        self.start + self.duration
    }
}

/// The live state of one member (one route of one session).
#[derive(Debug)]
pub struct MemberLive {
    connected: AtomicBool,
    healthy: AtomicBool,
    maintenance: ArcSwapOption<MaintenanceMark>,
    drain: ArcSwapOption<DrainRamp>,
    in_flight: AtomicU32,
    pub breaker: Breaker,
    pub stats: MemberStats,
}

impl MemberLive {
    /// A member that became active at `since`.
    pub fn new(since: SystemTime) -> MemberLive {
        MemberLive {
            connected: AtomicBool::new(true),
            healthy: AtomicBool::new(true),
            maintenance: ArcSwapOption::empty(),
            drain: ArcSwapOption::empty(),
            in_flight: AtomicU32::new(0),
            breaker: Breaker::default(),
            stats: MemberStats::new(since),
        }
    }

    /// Whether new requests may be sent to this member (§3.10 step 4).
    pub fn available(&self) -> bool {
        self.connected()
            && self.healthy()
            && !self.in_maintenance()
            && self.breaker.admits()
            && self.weight() > 0.0
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn set_connected(&self, on: bool) {
        self.connected.store(on, Ordering::Release);
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Sets health; returns the previous value.
    pub fn set_healthy(&self, up: bool) -> bool {
        self.healthy.swap(up, Ordering::AcqRel)
    }

    pub fn in_maintenance(&self) -> bool {
        self.maintenance.load().is_some()
    }

    pub fn maintenance(&self) -> Option<Arc<MaintenanceMark>> {
        self.maintenance.load_full()
    }

    pub fn set_maintenance(&self, mark: Option<MaintenanceMark>) {
        self.maintenance.store(mark.map(Arc::new));
    }

    /// The drain weight now, 0 ..= 100.
    pub fn weight(&self) -> f64 {
        match &*self.drain.load() {
            None => FULL_WEIGHT,
            Some(ramp) => ramp.weight_at(Instant::now()),
        }
    }

    pub fn drain(&self) -> Option<DrainRamp> {
        self.drain.load().as_deref().copied()
    }

    pub fn set_drain(&self, ramp: Option<DrainRamp>) {
        self.drain.store(ramp.map(Arc::new));
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

/// A pool's rate limit: requests per window, per client IP (§4.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

/// The token buckets of one rate limit, keyed by client IP.
struct Limiter {
    limit: RateLimit,
    buckets: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limit", &self.limit)
            .finish()
    }
}

/// Live state shared by every member of one pool (one domain + path), across applies.
#[derive(Debug, Default)]
pub struct PoolLive {
    /// `429`s the proxy produced for the pool.
    pub rate_limited: AtomicU64,
    /// Requests the pool answered itself because no member was available.
    pub unavailable: AtomicU64,
    limiter: ArcSwapOption<Limiter>,
}

impl PoolLive {
    /// Takes the pool's limit on apply; buckets survive when the limit is unchanged.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        let current = self.limiter.load().as_ref().map(|l| l.limit);
        if current == limit {
            return;
        }
        let limiter = limit.and_then(|limit| {
            let burst = NonZeroU32::new(limit.requests)?;
            let period = limit.window / limit.requests;
            let quota = Quota::with_period(period)?.allow_burst(burst);
            Some(Arc::new(Limiter {
                limit,
                buckets: RateLimiter::dashmap(quota),
            }))
        });
        self.limiter.store(limiter);
    }

    /// Takes a token for `client`; `Err(wait)` when the bucket is empty.
    pub fn admit(&self, client: IpAddr) -> Result<(), Duration> {
        let guard = self.limiter.load();
        let Some(limiter) = guard.as_ref() else {
            return Ok(());
        };
        limiter
            .buckets
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Forgets buckets that are full again (idle clients).
    pub fn reclaim_idle(&self) {
        if let Some(limiter) = self.limiter.load().as_ref() {
            limiter.buckets.retain_recent();
            limiter.buckets.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_follows_every_flag() {
        let m = MemberLive::new(SystemTime::UNIX_EPOCH);
        assert!(m.available());
        m.set_connected(false);
        assert!(!m.available());
        m.set_connected(true);
        m.set_maintenance(Some(MaintenanceMark {
            page: None,
            order: 1,
        }));
        assert!(!m.available());
        m.set_maintenance(None);
        m.set_healthy(false);
        assert!(!m.available());
        m.set_healthy(true);
        m.set_drain(Some(DrainRamp {
            start: Instant::now(),
            duration: Duration::ZERO,
            start_percent: 100.0,
        }));
        assert!(!m.available());
        m.set_drain(None);
        assert!(m.available());
        {
            let _a = m.begin();
            let _b = m.begin();
            assert_eq!(m.in_flight(), 2);
        }
        assert_eq!(m.in_flight(), 0);
    }

    #[test]
    fn rate_limits_per_client_with_a_full_bucket_to_start() {
        let pool = PoolLive::default();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(pool.admit(a).is_ok(), "no limit set");
        pool.set_rate_limit(Some(RateLimit {
            requests: 2,
            window: Duration::from_secs(60),
        }));
        assert!(pool.admit(a).is_ok());
        assert!(pool.admit(a).is_ok());
        let wait = pool.admit(a).expect_err("bucket empty");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert!(pool.admit(b).is_ok(), "each client has its own bucket");
        pool.set_rate_limit(Some(RateLimit {
            requests: 2,
            window: Duration::from_secs(60),
        }));
        assert!(
            pool.admit(a).is_err(),
            "an unchanged limit keeps its buckets"
        );
        pool.set_rate_limit(None);
        assert!(pool.admit(a).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ramps_linearly_to_zero() {
        let ramp = DrainRamp {
            start: Instant::now(),
            duration: Duration::from_secs(30),
            start_percent: 100.0,
        };
        let m = MemberLive::new(SystemTime::UNIX_EPOCH);
        m.set_drain(Some(ramp));
        assert_eq!(m.weight(), 100.0);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!((m.weight() - 50.0).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(m.weight(), 0.0);
        assert!(!m.available());
    }
}
