//! What becomes of SQS deliveries of job messages: the batch plumbing and the rules that the
//! worker (the jobs queue) and the recovery function (the dead-letter queue) share.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use tracing::{Instrument, info, info_span, warn};

use crate::domain::{
    Job, JobFailure, JobId, LeaseId, Standing, Transition, Transitioned, decode_job_message,
};
use crate::ports::{ArtifactStore, JobStore, Redelivery};

/// What becomes of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done with it, for good or ill: delete it from the queue.
    Acknowledge,
    /// Report it as a batch item failure, so that it comes back (when its visibility was set
    /// to, or after the queue's visibility timeout).
    Retry,
}

/// Runs `run` once per job of the batch, concurrently, and lists the messages to retry.
///
/// A body that is not `{"job_id": "<uuid>"}` can never succeed: it is logged and
/// acknowledged. Two messages for one job in one batch must cost one run: it gets the
/// most-delivered one, and the others are acknowledged.
pub async fn each_job<'a, F, Run>(event: &'a SqsEvent, run: F) -> SqsBatchResponse
where
    F: Fn(JobId, &'a SqsMessage) -> Run,
    Run: Future<Output = Outcome>,
{
    let mut jobs: BTreeMap<JobId, &SqsMessage> = BTreeMap::new();
    for message in &event.records {
        let Some(job_id) = message.body.as_deref().and_then(decode_job_message) else {
            warn!(
                message_id = message.message_id.as_deref().unwrap_or("?"),
                "malformed message acknowledged: the body is not {{\"job_id\": \"<uuid>\"}}"
            );
            continue;
        };
        let kept = jobs.entry(job_id).or_insert(message);
        if receive_count(message) > receive_count(kept) {
            *kept = message;
        }
    }

    let runs = jobs.into_iter().map(|(job_id, message)| {
        let span = info_span!("job", job_id = %job_id);
        let run = run(job_id, message).instrument(span);
        async move { (message, run.await) }
    });
    let batch_item_failures = futures::future::join_all(runs)
        .await
        .into_iter()
        .filter(|(_, outcome)| *outcome == Outcome::Retry)
        .filter_map(|(message, _)| message.message_id.clone())
        .map(|id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            failure
        })
        .collect();
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = batch_item_failures;
    response
}

/// SQS's `ApproximateReceiveCount`: 1 on the first delivery.
pub fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// The writes of a delivery: to the job, to its artifacts, and to its message's return.
pub struct Deliveries<'a, S, A, R> {
    pub store: &'a S,
    pub artifacts: &'a A,
    /// Where the message came from, which times its return.
    pub queue: &'a R,
}

impl<S: JobStore, A: ArtifactStore, R: Redelivery> Deliveries<'_, S, A, R> {
    /// For a job this delivery does not start (`job` as it was at `at`; `None`: there is
    /// none): a missing job needs nothing, a finished one only its leftovers removed; a job
    /// another attempt holds is looked at again once that lease can have ended; a free job
    /// is one that attempts stopped working on for good (its model calls used up, or its
    /// message dead-lettered), and fails with `worker_error` and the sentence `failure` says.
    pub async fn settle_unstarted(
        &self,
        message: &SqsMessage,
        job: Option<Job>,
        at: DateTime<Utc>,
        failure: fn(&Job) -> JobFailure,
    ) -> Outcome {
        let Some(job) = job else {
            info!("job is missing (expired or deleted); message acknowledged");
            return Outcome::Acknowledge;
        };
        match job.standing(at) {
            Standing::Finished => {
                info!(status = %job.status, "job is already finished; message acknowledged");
                self.tidy(&job).await
            }
            Standing::HeldUntil(expires_at) => {
                let wait = (expires_at - Utc::now()).to_std().unwrap_or_default();
                info!(
                    wait_ms = wait.as_millis() as u64,
                    "another attempt holds the job; it will be looked at again"
                );
                self.come_back(message, wait + Duration::from_secs(1)).await
            }
            Standing::Free => self.fail(job.id, None, failure(&job)).await,
        }
    }

    /// Reports the message for retry, after `delay` instead of the queue's whole visibility
    /// timeout.
    pub async fn come_back(&self, message: &SqsMessage, delay: Duration) -> Outcome {
        if let Some(handle) = &message.receipt_handle
            && let Err(cause) = self.queue.redeliver_after(handle, delay).await
        {
            warn!(%cause, "could not shorten the wait; the message returns after the visibility timeout");
        }
        Outcome::Retry
    }

    /// Fails the job: by the attempt holding `lease`, or (`None`) a job no live lease holds.
    pub async fn fail(&self, id: JobId, lease: Option<LeaseId>, failure: JobFailure) -> Outcome {
        warn!(code = %failure.code, message = %failure.message, "job failed");
        let fail = Transition::Fail { lease, failure };
        match self.store.transition(id, &fail, Utc::now()).await {
            Ok(Transitioned::Done(job)) => {
                crate::metrics::job_ended(&job);
                self.tidy(&job).await
            }
            Ok(Transitioned::Refused(current)) => self.lost(current).await,
            Err(cause) => {
                warn!(%cause, "could not record the failure; the job will be retried");
                Outcome::Retry
            }
        }
    }

    /// The attempt's write was refused: someone else decided the job's fate (the owner's
    /// cancel, another attempt, recovery), or took it over. Nothing is left for this delivery
    /// to do but, for a finished job, remove what its attempts left behind.
    pub async fn lost(&self, current: Option<Job>) -> Outcome {
        info!(
            status = current
                .as_ref()
                .map_or("missing", |job| job.status.as_str()),
            "the attempt lost the job; message acknowledged"
        );
        match current {
            Some(job) if job.status.is_terminal() => self.tidy(&job).await,
            _ => Outcome::Acknowledge,
        }
    }

    /// Removes what attempts of a finished job left behind (see [`Job::leftover_artifacts`]).
    /// If that fails, the message is retried, so that the next delivery, finding the job
    /// finished, tries again.
    pub async fn tidy(&self, job: &Job) -> Outcome {
        let mut outcome = Outcome::Acknowledge;
        for key in job.leftover_artifacts() {
            if let Err(cause) = self.artifacts.delete(&key).await {
                warn!(%cause, key, "could not remove a leftover artifact; the message is retried");
                outcome = Outcome::Retry;
            }
        }
        outcome
    }
}
