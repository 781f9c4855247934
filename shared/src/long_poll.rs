//! Waiting for a job to change, for long-polls (`GET /jobs/{id}?wait=N&after=S`) and
//! one-request use (`Prefer: wait=N` on `POST /generate`).
//!
//! DynamoDB offers no push to a waiting Lambda, so the job's small state is read every
//! [`POLL_INTERVAL`] (eventually consistent: half a read unit for the state alone, whatever
//! the size of the prompt and the answer), and the whole job only once the change waited for
//! shows. The answer comes about one interval after the change, or a little later when an
//! eventually consistent read lags (the worker writes text every `STREAM_FLUSH_MS`; live
//! text reaches subscribers by push, not by this).

use std::time::Duration;

use crate::domain::{Job, JobId, Revision};
use crate::ports::{JobStore, Unavailable};

pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// For a job the caller has just read and found not `done`: looks at how far it has come
/// every [`POLL_INTERVAL`] until `done` holds, or `wait` has passed; then reads it whole
/// (`None`: there is no such job any more).
pub async fn wait_for<S: JobStore>(
    store: &S,
    id: JobId,
    wait: Duration,
    done: impl Fn(&Revision) -> bool,
) -> Result<Option<Job>, Unavailable> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tokio::time::sleep(left.min(POLL_INTERVAL)).await;
        let revision = store.revision(id).await?;
        if left <= POLL_INTERVAL || revision.as_ref().is_none_or(&done) {
            // The state read may lag; the whole read is consistent, and is what counts.
            return store.get(id).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::domain::{GenerateRequest, JobStatus, Owner};
    use crate::fakes::InMemoryJobStore;

    fn job() -> Job {
        let request = GenerateRequest::new("hi", "m", 1);
        let now: DateTime<Utc> = Utc::now();
        Job::queued(
            Owner::new("o"),
            request,
            None,
            now,
            chrono::Duration::days(1),
        )
    }

    #[tokio::test]
    async fn it_answers_once_it_sees_the_change_not_at_the_end_of_the_wait() {
        let store = InMemoryJobStore::new();
        let job = job();
        store.seed(job.clone());
        let (owner, id) = (store.clone(), job.id);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            owner.cancel(id, Utc::now());
        });
        let started = tokio::time::Instant::now();
        let seen = wait_for(&store, job.id, Duration::from_secs(20), |revision| {
            revision.status.is_terminal()
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(seen.status, JobStatus::Cancelled);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
            "answered at the change: {waited:?}"
        );
    }

    #[tokio::test]
    async fn it_gives_up_after_the_wait_and_at_the_first_read_for_a_missing_job() {
        let store = InMemoryJobStore::new();
        let job = job();
        store.seed(job.clone());
        let started = tokio::time::Instant::now();
        let seen = wait_for(&store, job.id, Duration::from_millis(250), |_| false)
            .await
            .unwrap();
        assert_eq!(seen, Some(job), "the job as it is when the wait is over");
        assert!(started.elapsed() >= Duration::from_millis(250));

        let missing = wait_for(&store, JobId::random(), Duration::from_secs(3600), |_| {
            false
        })
        .await
        .unwrap();
        assert_eq!(
            missing, None,
            "answered at the first read, not after an hour"
        );
    }
}
