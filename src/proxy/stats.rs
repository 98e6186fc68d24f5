//! Per-member statistics: cheap counters on the hot path, status codes, and latency
//! percentiles over a sliding 5-minute window from a compact log-bucketed histogram that is
//! allocated only once a member sees traffic (PERFORMANCE.md, scale notes).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Sub-buckets per power of two: about 9 % relative precision.
const SUB_BUCKETS: usize = 8;
/// Powers of two covered in microseconds: 1 µs … 2^32 µs (≈ 71 min).
const OCTAVES: usize = 32;
const BUCKETS: usize = SUB_BUCKETS * OCTAVES;
/// The window is this many one-minute slots.
const SLOTS: usize = 5;
const SLOT: Duration = Duration::from_secs(60);

/// A member's counters since it became active.
#[derive(Debug)]
pub struct MemberStats {
    pub since: SystemTime,
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    detail: Mutex<Option<Box<Detail>>>,
}

/// Status codes and the latency window, allocated on first use.
#[derive(Debug)]
struct Detail {
    status: BTreeMap<u16, u64>,
    slots: [Slot; SLOTS],
}

#[derive(Debug, Clone)]
struct Slot {
    /// Which minute (since the window's epoch) the slot holds.
    minute: u64,
    counts: Box<[u32; BUCKETS]>,
    sum_micros: u64,
    samples: u64,
}

/// Latency figures in whole milliseconds (rounded down), 0 without samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub avg_ms: u64,
    pub p95_ms: u64,
    pub p99_ms: u64,
}

fn bucket_of(micros: u64) -> usize {
    let v = micros.max(1);
    let octave = 63 - v.leading_zeros() as usize;
    if octave >= OCTAVES {
        return BUCKETS - 1;
    }
    let sub = if octave >= 3 {
        ((v >> (octave - 3)) & (SUB_BUCKETS as u64 - 1)) as usize
    } else {
        ((v << (3 - octave)) & (SUB_BUCKETS as u64 - 1)) as usize
    };
    octave * SUB_BUCKETS + sub
}

/// The lower bound of a bucket, in microseconds.
fn bucket_floor(index: usize) -> u64 {
    let octave = index / SUB_BUCKETS;
    let sub = (index % SUB_BUCKETS) as u64;
    let base = 1u64 << octave;
    base + base * sub / SUB_BUCKETS as u64
}

fn minute_now() -> u64 {
    // Minutes on tokio's clock since an arbitrary process-wide origin.
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    (Instant::now().saturating_duration_since(origin).as_secs()) / SLOT.as_secs()
}

impl MemberStats {
    pub fn new(since: SystemTime) -> MemberStats {
        MemberStats {
            since,
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            detail: Mutex::new(None),
        }
    }

    fn detail(&self) -> std::sync::MutexGuard<'_, Option<Box<Detail>>> {
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one forwarded request: its status (a 502/504 for transport failures) and the
    /// time to response headers.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let minute = minute_now();
        let mut guard = self.detail();
        let detail = guard.get_or_insert_with(|| {
            Box::new(Detail {
                status: BTreeMap::new(),
                slots: std::array::from_fn(|_| Slot {
                    minute: u64::MAX,
                    counts: Box::new([0; BUCKETS]),
                    sum_micros: 0,
                    samples: 0,
                }),
            })
        });
        *detail.status.entry(status).or_insert(0) += 1;
        let slot = &mut detail.slots[(minute % SLOTS as u64) as usize];
        if slot.minute != minute {
            slot.minute = minute;
            slot.counts.fill(0);
            slot.sum_micros = 0;
            slot.samples = 0;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        slot.counts[bucket_of(micros)] += 1;
        slot.sum_micros = slot.sum_micros.saturating_add(micros);
        slot.samples += 1;
    }

    /// Status code → count.
    pub fn status_codes(&self) -> BTreeMap<u16, u64> {
        self.detail()
            .as_ref()
            .map(|d| d.status.clone())
            .unwrap_or_default()
    }

    /// Average, p95 and p99 over the last five minutes.
    pub fn latency(&self) -> Latency {
        let now = minute_now();
        let guard = self.detail();
        let Some(detail) = guard.as_ref() else {
            return Latency::default();
        };
        let live = detail
            .slots
            .iter()
            .filter(|s| s.minute != u64::MAX && now.saturating_sub(s.minute) < SLOTS as u64);
        let mut counts = [0u64; BUCKETS];
        let (mut sum, mut samples) = (0u64, 0u64);
        for slot in live {
            for (total, c) in counts.iter_mut().zip(slot.counts.iter()) {
                *total += u64::from(*c);
            }
            sum = sum.saturating_add(slot.sum_micros);
            samples += slot.samples;
        }
        if samples == 0 {
            return Latency::default();
        }
        let quantile = |q: f64| {
            let rank = ((samples as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_floor(i) / 1000;
                }
            }
            0
        };
        Latency {
            avg_ms: sum / samples / 1000,
            p95_ms: quantile(0.95),
            p99_ms: quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [
            1u64,
            2,
            3,
            7,
            8,
            9,
            15,
            16,
            100,
            1000,
            12_345,
            1 << 20,
            1 << 31,
        ] {
            let b = bucket_of(v);
            assert!(b >= last, "{v}");
            last = b;
            let floor = bucket_floor(b);
            assert!(
                floor <= v && v - floor <= v / 8 + 1,
                "{v} in bucket from {floor}"
            );
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_over_the_window() {
        let s = MemberStats::new(SystemTime::UNIX_EPOCH);
        assert_eq!(s.latency(), Latency::default());
        for _ in 0..90 {
            s.record(200, Duration::from_millis(10));
        }
        for _ in 0..10 {
            s.record(502, Duration::from_millis(400));
        }
        let l = s.latency();
        assert!(
            (360..=400).contains(&l.p95_ms),
            "p95 ≈ 400 ms within a bucket: {l:?}"
        );
        assert!(l.avg_ms >= 45 && l.avg_ms <= 49, "{l:?}");
        assert_eq!(s.requests.load(Ordering::Relaxed), 100);
        assert_eq!(s.errors.load(Ordering::Relaxed), 10);
        assert_eq!(s.status_codes()[&200], 90);
        tokio::time::advance(Duration::from_secs(6 * 60)).await;
        assert_eq!(
            s.latency(),
            Latency::default(),
            "old samples leave the window"
        );
        assert_eq!(s.status_codes()[&502], 10, "counters stay");
    }
}
