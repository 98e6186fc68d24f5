//! A member's circuit breaker (PROTOCOL §4.17): closed → open after `threshold` consecutive
//! failures, open → half-open at `next_attempt`, half-open → closed after enough good trials.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Breaker states, spelled as the protocol spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Effective breaker settings of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub threshold: u32,
    pub timeout: Duration,
    pub half_open_requests: u32,
}

/// A state change, reported as `circuit_breaker_state_changed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub failures: u32,
    /// Wall time of the next half-open attempt (while open).
    pub next_attempt: Option<SystemTime>,
    /// When the open state ends (while open), for the timer that moves it to half-open.
    pub reopen_at: Option<Instant>,
}

/// What `CIRCUIT_BREAKER_STATUS` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerStatus {
    pub config: Option<BreakerConfig>,
    pub state: BreakerState,
    pub failures: u32,
    pub successes: u32,
    pub last_failure: Option<SystemTime>,
    pub next_attempt: Option<SystemTime>,
}

/// Permission to send one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    /// A half-open trial: its outcome decides the state.
    Trial,
}

#[derive(Debug)]
struct Inner {
    config: Option<BreakerConfig>,
    state: BreakerState,
    failures: u32,
    successes: u32,
    trials_in_flight: u32,
    reopen_at: Option<Instant>,
    next_attempt: Option<SystemTime>,
    last_failure: Option<SystemTime>,
}

/// The breaker; a short mutex, uncontended in practice (one member, one decision at a time).
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                config: None,
                state: BreakerState::Closed,
                failures: 0,
                successes: 0,
                trials_in_flight: 0,
                reopen_at: None,
                next_attempt: None,
                last_failure: None,
            }),
        }
    }
}

impl Inner {
    fn to(&mut self, to: BreakerState) -> Option<Transition> {
        let from = self.state;
        if from == to {
            return None;
        }
        self.state = to;
        if to != BreakerState::Open {
            self.reopen_at = None;
            self.next_attempt = None;
        }
        if to != BreakerState::HalfOpen {
            self.successes = 0;
            self.trials_in_flight = 0;
        }
        Some(Transition {
            from,
            to,
            failures: self.failures,
            next_attempt: self.next_attempt,
            reopen_at: self.reopen_at,
        })
    }

    fn open(&mut self, timeout: Duration) -> Option<Transition> {
        self.reopen_at = Some(Instant::now() + timeout);
        self.next_attempt = Some(SystemTime::now() + timeout);
        let from = self.state;
        self.state = BreakerState::Open;
        self.successes = 0;
        self.trials_in_flight = 0;
        Some(Transition {
            from,
            to: BreakerState::Open,
            failures: self.failures,
            next_attempt: self.next_attempt,
            reopen_at: self.reopen_at,
        })
    }
}

impl Breaker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes new settings (on apply). Without a breaker the state is closed.
    pub fn configure(&self, config: Option<BreakerConfig>) -> Option<Transition> {
        let mut b = self.lock();
        b.config = config;
        if config.is_none() {
            return b.to(BreakerState::Closed);
        }
        None
    }

    /// Whether the breaker lets a new request through now (open: no; half-open: while a trial
    /// slot is free).
    pub fn admits(&self) -> bool {
        let b = self.lock();
        match b.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                b.trials_in_flight < b.config.map_or(1, |c| c.half_open_requests)
            }
        }
    }

    /// Takes permission for one request, `None` when the breaker refuses it.
    pub fn acquire(&self) -> Option<Permit> {
        let mut b = self.lock();
        match b.state {
            BreakerState::Closed => Some(Permit::Normal),
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                let slots = b.config.map_or(1, |c| c.half_open_requests);
                if b.trials_in_flight >= slots {
                    return None;
                }
                b.trials_in_flight += 1;
                Some(Permit::Trial)
            }
        }
    }

    /// Records the outcome of a request (§3.10 step 7).
    pub fn record(&self, permit: Permit, success: bool) -> Option<Transition> {
        let mut b = self.lock();
        let trial = permit == Permit::Trial && b.state == BreakerState::HalfOpen;
        if trial {
            b.trials_in_flight = b.trials_in_flight.saturating_sub(1);
        }
        if success {
            if trial {
                b.successes += 1;
                if b.successes >= b.config.map_or(1, |c| c.half_open_requests) {
                    b.failures = 0;
                    return b.to(BreakerState::Closed);
                }
            } else if b.state == BreakerState::Closed {
                b.failures = 0;
            }
            return None;
        }
        b.failures = b.failures.saturating_add(1);
        b.last_failure = Some(SystemTime::now());
        let config = b.config?;
        match b.state {
            BreakerState::Closed if b.failures >= config.threshold => b.open(config.timeout),
            BreakerState::HalfOpen if trial => b.open(config.timeout),
            _ => None,
        }
    }

    /// The open period ended: open → half-open. `None` if the state moved on meanwhile.
    pub fn reopen_due(&self, now: Instant) -> Option<Transition> {
        let mut b = self.lock();
        if b.state != BreakerState::Open || b.reopen_at.is_none_or(|t| t > now) {
            return None;
        }
        b.to(BreakerState::HalfOpen)
    }

    /// `CIRCUIT_BREAKER_RESET`: closed with zero failures.
    pub fn reset(&self) -> Option<Transition> {
        let mut b = self.lock();
        b.failures = 0;
        b.to(BreakerState::Closed)
    }

    /// What `CIRCUIT_BREAKER_STATUS` reports.
    pub fn status(&self) -> BreakerStatus {
        let b = self.lock();
        BreakerStatus {
            config: b.config,
            state: b.state,
            failures: b.failures,
            successes: if b.state == BreakerState::HalfOpen {
                b.successes
            } else {
                0
            },
            last_failure: b.last_failure,
            next_attempt: b.next_attempt,
        }
    }

    /// While open, when the next attempt is due (for `Retry-After`).
    pub fn reopen_at(&self) -> Option<Instant> {
        let b = self.lock();
        (b.state == BreakerState::Open)
            .then_some(b.reopen_at)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, half_open: u32) -> Breaker {
        let b = Breaker::default();
        b.configure(Some(BreakerConfig {
            threshold,
            timeout: Duration::from_secs(30),
            half_open_requests: half_open,
        }));
        b
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_recovers_through_half_open() {
        let b = breaker(3, 2);
        assert_eq!(b.record(Permit::Normal, false), None);
        assert_eq!(
            b.record(Permit::Normal, true),
            None,
            "a success resets the count"
        );
        assert_eq!(b.status().failures, 0);
        b.record(Permit::Normal, false);
        b.record(Permit::Normal, false);
        let t = b.record(Permit::Normal, false).expect("opens");
        assert_eq!(
            (t.from, t.to, t.failures),
            (BreakerState::Closed, BreakerState::Open, 3)
        );
        assert!(!b.admits());
        assert_eq!(b.acquire(), None);
        assert_eq!(b.reopen_due(Instant::now()), None, "not yet");
        tokio::time::advance(Duration::from_secs(30)).await;
        let t = b.reopen_due(Instant::now()).expect("half-open");
        assert_eq!(t.to, BreakerState::HalfOpen);
        assert_eq!(b.acquire(), Some(Permit::Trial));
        assert_eq!(b.acquire(), Some(Permit::Trial));
        assert_eq!(b.acquire(), None, "two trial slots");
        assert_eq!(b.record(Permit::Trial, true), None);
        assert_eq!(b.status().successes, 1);
        let t = b.record(Permit::Trial, true).expect("closes");
        assert_eq!(t.to, BreakerState::Closed);
        assert_eq!(b.status().failures, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens() {
        let b = breaker(1, 1);
        b.record(Permit::Normal, false).expect("opens");
        tokio::time::advance(Duration::from_secs(31)).await;
        b.reopen_due(Instant::now()).expect("half-open");
        let p = b.acquire().expect("trial");
        let t = b.record(p, false).expect("reopens");
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert!(b.status().next_attempt.is_some());
    }

    #[test]
    fn counts_failures_without_a_breaker_and_resets() {
        let b = Breaker::default();
        for _ in 0..5 {
            assert_eq!(b.record(Permit::Normal, false), None);
        }
        let s = b.status();
        assert_eq!(
            (s.state, s.failures, s.config),
            (BreakerState::Closed, 5, None)
        );
        assert!(s.last_failure.is_some());
        assert_eq!(b.reset(), None, "already closed");
        assert_eq!(b.status().failures, 0);
        let b = breaker(1, 1);
        b.record(Permit::Normal, false);
        assert_eq!(b.reset().map(|t| t.to), Some(BreakerState::Closed));
    }
}
