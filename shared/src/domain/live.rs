//! Live output: what the worker publishes on a job's channel of the Event API (AWS AppSync
//! Events), so that a watcher sees the text as the model writes it without holding a Lambda.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::{JobId, Owner};

/// The Event API's channel namespace of the jobs.
pub const LIVE_NAMESPACE: &str = "jobs";

/// How long a subscription to a job's channel marks the job as watched: the worker publishes
/// a job's text only while it is watched (each publish is paid for, watched or not). Longer
/// than any attempt (the worker's timeout is 5 minutes).
pub const WATCH_FOR: Duration = Duration::minutes(15);

/// The longest channel segment AppSync Events takes.
pub const MAX_SEGMENT_CHARS: usize = 50;

/// Whether `segment` may be one segment of a channel: 1 to 50 letters, digits or dashes,
/// starting and ending with a letter or digit (AppSync Events' rule).
pub fn is_channel_segment(segment: &str) -> bool {
    (1..=MAX_SEGMENT_CHARS).contains(&segment.len())
        && segment
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        && !segment.starts_with('-')
        && !segment.ends_with('-')
}

/// A job's channel, `/jobs/<owner>/<job id>`: the namespace's subscribe handler lets only
/// the subscriber whose `sub` is the owner segment in. `None` for an owner whose name cannot
/// be a channel segment ([`is_channel_segment`]: an IAM principal's ARN, say), whose jobs
/// are followed by long-polls only.
pub fn job_channel(owner: &Owner, id: JobId) -> Option<String> {
    let segment = owner.as_str();
    is_channel_segment(segment).then(|| format!("/{LIVE_NAMESPACE}/{segment}/{id}"))
}

/// Whether a job watched until `until` is watched at `at`.
pub fn is_watched(until: Option<DateTime<Utc>>, at: DateTime<Utc>) -> bool {
    until.is_some_and(|until| until > at)
}

/// One event on a job's channel, published as a JSON string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    /// Text the model wrote: `text` starts `offset` bytes into the text of attempt number
    /// `attempt`. A watcher that holds `offset` bytes of that attempt appends it; one that
    /// holds more skips what it has (an event published again); one that holds less missed
    /// an event, and reads the job again. A new attempt starts its text anew.
    Text {
        job_id: String,
        attempt: u32,
        offset: usize,
        text: String,
    },
}

impl LiveEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a live event is always JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_named_by_its_owner_and_job_when_the_owner_can_be_a_segment() {
        let id = JobId::random();
        let sub = Owner::new("7d1f3c2a-5b6e-4f80-9a1b-2c3d4e5f6a7b");
        assert_eq!(
            job_channel(&sub, id),
            Some(format!("/jobs/7d1f3c2a-5b6e-4f80-9a1b-2c3d4e5f6a7b/{id}"))
        );
        let arn = Owner::new("arn:aws:sts::123456789012:assumed-role/ci/session");
        for owner in [
            arn,
            Owner::new(""),
            Owner::new("a".repeat(MAX_SEGMENT_CHARS + 1)),
            Owner::new("a/b"),
            Owner::new("-a"),
            Owner::new("a-"),
        ] {
            assert_eq!(job_channel(&owner, id), None, "{owner:?}");
        }
    }

    #[test]
    fn text_events_carry_what_a_watcher_needs_to_splice_them_once() {
        let event = LiveEvent::Text {
            job_id: "j".into(),
            attempt: 2,
            offset: 11,
            text: "upon".into(),
        };
        assert_eq!(
            event.to_json(),
            r#"{"type":"text","job_id":"j","attempt":2,"offset":11,"text":"upon"}"#
        );
    }

    #[test]
    fn a_watch_holds_until_it_ends() {
        let now = Utc::now();
        assert!(is_watched(Some(now + WATCH_FOR), now));
        assert!(!is_watched(Some(now), now));
        assert!(!is_watched(None, now));
    }
}
