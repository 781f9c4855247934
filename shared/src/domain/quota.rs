use chrono::{DateTime, Utc};

use super::Owner;

/// One caller's one-minute window of submissions, for `MAX_JOBS_PER_MINUTE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateWindow {
    /// The counter's key. Never a UUID, so it can share the jobs table without ever being
    /// mistaken for a job.
    pub key: String,
    pub resets_at: DateTime<Utc>,
}

impl RateWindow {
    pub fn of(owner: &Owner, now: DateTime<Utc>) -> Self {
        let minute = now.timestamp().div_euclid(60);
        Self {
            key: format!("rate#{}#{minute}", owner.as_str()),
            resets_at: DateTime::from_timestamp((minute + 1) * 60, 0).unwrap_or(now),
        }
    }

    /// Whole seconds until the window resets (at least 1), for `Retry-After`.
    pub fn retry_after_secs(&self, now: DateTime<Utc>) -> i64 {
        (self.resets_at - now).num_seconds().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{JobId, parse_timestamp};

    #[test]
    fn a_window_is_one_owner_and_one_minute() {
        let at = |text| parse_timestamp(text).unwrap();
        let alice = Owner::new("alice");
        let early = RateWindow::of(&alice, at("2026-11-22T10:00:00.000Z"));
        let late = RateWindow::of(&alice, at("2026-11-22T10:00:59.999Z"));
        let next = RateWindow::of(&alice, at("2026-11-22T10:01:00.000Z"));
        assert_eq!(early, late);
        assert_ne!(early.key, next.key);
        assert_ne!(
            early.key,
            RateWindow::of(&Owner::new("bob"), at("2026-11-22T10:00:00.000Z")).key
        );
        assert_eq!(early.resets_at, at("2026-11-22T10:01:00.000Z"));
        assert_eq!(late.retry_after_secs(at("2026-11-22T10:00:59.999Z")), 1);
        assert_eq!(early.retry_after_secs(at("2026-11-22T10:00:15.000Z")), 45);
        assert_eq!(JobId::parse(&early.key), None, "never a job id");
    }
}
