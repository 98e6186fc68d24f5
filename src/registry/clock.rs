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
