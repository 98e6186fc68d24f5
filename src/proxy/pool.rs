//! Member choice within a pool: weighted power of two choices on in-flight requests, skipping
//! members that are not available (§3.10 step 4).

use std::cell::Cell;

use super::snapshot::Member;

thread_local! {
    static RNG: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// xorshift64*: a fast per-thread generator; balancing needs spread, not secrecy.
fn next_random() -> u64 {
    RNG.with(|cell| {
        let mut x = cell.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        cell.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A member drawn at random in proportion to the weights of the available ones.
fn weighted_pick(members: &[Member], total: f64) -> Option<&Member> {
    let mut point = (next_random() >> 11) as f64 / (1u64 << 53) as f64 * total;
    let mut last = None;
    for m in members {
        let w = m.live.weight();
        if w > 0.0 && m.live.available() {
            last = Some(m);
            if point < w {
                return Some(m);
            }
            point -= w;
        }
    }
    last
}

/// Chooses the member for a new request (weighted power of two choices), or `None` when none
/// is available.
pub fn choose(members: &[Member]) -> Option<&Member> {
    if let [only] = members {
        return only.live.available().then_some(only);
    }
    let total: f64 = members
        .iter()
        .filter(|m| m.live.available())
        .map(|m| m.live.weight())
        .sum();
    if total <= 0.0 {
        return None;
    }
    let a = weighted_pick(members, total)?;
    let b = weighted_pick(members, total)?;
    // Both draws follow the weights, so an idle pool splits traffic in proportion to them;
    // in-flight counts then steer away from a member that is slow right now.
    Some(if b.live.in_flight() < a.live.in_flight() {
        b
    } else {
        a
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::live::MemberLive;
    use crate::proxy::snapshot::Upstream;
    use std::sync::Arc;
    use std::time::Duration;

    fn ramp(percent: f64) -> crate::proxy::live::DrainRamp {
        crate::proxy::live::DrainRamp {
            start: tokio::time::Instant::now(),
            duration: Duration::from_secs(3600),
            start_percent: percent,
        }
    }

    fn member(id: u64) -> Member {
        Member {
            id,
            upstream: Upstream {
                scheme: "http",
                authority: "127.0.0.1:1".into(),
                host_header: "127.0.0.1:1".into(),
                base_path: String::new(),
            },
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            protocol: Default::default(),
            tls_skip_verify: false,
            live: Arc::new(MemberLive::new(std::time::SystemTime::UNIX_EPOCH)),
        }
    }

    #[test]
    fn skips_unavailable_and_spreads_by_weight() {
        let members = vec![member(1), member(2), member(3)];
        members[2].live.set_connected(false);
        members[1].live.set_drain(Some(ramp(25.0)));
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            let m = choose(&members).expect("a member is available");
            counts[(m.id - 1) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        let ratio = f64::from(counts[1]) / f64::from(counts[0]);
        assert!(
            ratio > 0.1 && ratio < 0.5,
            "ratio {ratio} for weights 25:100"
        );
        members[0]
            .live
            .set_maintenance(Some(crate::proxy::live::MaintenanceMark {
                page: None,
                order: 1,
            }));
        members[1].live.set_drain(Some(ramp(0.0)));
        assert!(choose(&members).is_none());
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let members = vec![member(1), member(2)];
        let _busy: Vec<_> = (0..50).map(|_| members[0].live.begin()).collect();
        let picks_idle = (0..1000)
            .filter(|_| choose(&members).map(|m| m.id) == Some(2))
            .count();
        assert!(picks_idle > 700, "idle member picked {picks_idle} of 1000");
    }
}
