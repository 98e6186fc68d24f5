//! The registry's injected wall clock, so timestamps in replies are testable.

use std::time::SystemTime;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// RFC 3339, UTC, whole seconds, `Z` (PROTOCOL §1.4); fractions are truncated.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whole seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serde helpers that write times and durations as PROTOCOL writes them.
pub mod ser {
    use std::time::{Duration, SystemTime};

    use serde::Serializer;

    /// A timestamp as RFC 3339.
    pub fn time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*t))
    }

    /// An optional timestamp: RFC 3339 or null.
    pub fn opt_time<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => time(t, s),
            None => s.serialize_none(),
        }
    }

    /// An optional duration as a number of seconds (`30`, `0.5`) or null.
    pub fn opt_seconds<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) if d.subsec_nanos() == 0 => s.serialize_u64(d.as_secs()),
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_whole_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_734_694_200_999);
        assert_eq!(rfc3339(t), "2024-12-20T11:30:00Z");
        assert_eq!(unix_seconds(t), 1_734_694_200);
    }
}
