//! The worker: SQS batches in, one Converse call per job attempt, artifact to S3, status to
//! DynamoDB.
//!
//! Delivery is at least once, and a worker can die anywhere, so every step is safe to repeat:
//! an attempt takes the job with a lease (a conditional write), and every later write of that
//! attempt holds only while the lease is still its own, so two deliveries of one message never
//! both finish a job, and a `succeeded` job's record and artifact always agree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use lambda_runtime::LambdaEvent;
use pipeline::config::{ConfigError, Env};
use pipeline::delivery::{self, Deliveries, Outcome};
use pipeline::domain::{
    Artifact, ArtifactResponse, CallUsage, Completion, FailureCode, Job, JobFailure, JobId,
    JobStatus, Lease, LeaseId, LiveEvent, NanoUsd, PriceTable, TokenCounts, Transition,
    Transitioned, Usage, Written, is_watched, job_channel,
};
use pipeline::metrics;
use pipeline::ports::{
    ArtifactStore, Flushed, JobStore, LiveFeed, ModelError, ModelReply, ModelRequest, NoFeed,
    Progress, Redelivery, TextModel,
};
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    pub artifacts_bucket: String,
    /// The jobs queue, whose messages' return the worker times (fast retries).
    pub queue_url: String,
    /// The Event API's HTTP publish endpoint (`EVENTS_HTTP_URL`); unset, nothing is
    /// published live.
    pub events_url: Option<String>,
    pub settings: Settings,
}

#[derive(Clone, Debug)]
pub struct Settings {
    /// Model calls a job may have before a retryable failure becomes `model_unavailable`.
    pub max_attempts: u32,
    /// Time kept back from the invocation's deadline for writing the result after the model
    /// call: a model call still running then is abandoned and retried later.
    pub write_reserve: Duration,
    /// The first retry's delay; each further one doubles it, up to `retry_cap`, with jitter.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// The least time between two flushes of a streaming answer into the job: how much of
    /// its text a crash may lose, and how often a long-poll sees it grow.
    pub stream_flush: Duration,
    /// The least time between two publishes of a watched job's new text on its live channel:
    /// smoothness against cost (AppSync Events bills each publish and each delivery).
    pub live_interval: Duration,
    /// What each model's tokens cost: a succeeded job records its cost.
    pub prices: Arc<PriceTable>,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required("JOBS_TABLE")?,
            artifacts_bucket: env.required("ARTIFACTS_BUCKET")?,
            queue_url: env.required("JOBS_QUEUE_URL")?,
            events_url: env.optional("EVENTS_HTTP_URL"),
            settings: Settings::from_env(env)?,
        })
    }
}

impl Settings {
    /// `MAX_ATTEMPTS`, `RETRY_BASE_SECONDS`, `RETRY_MAX_SECONDS`, `STREAM_FLUSH_MS`,
    /// `LIVE_PUBLISH_MS`, `MODEL_PRICES`; the local stack reads them the same way.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_attempts: env.max_attempts()?,
            write_reserve: Duration::from_secs(5),
            retry_base: Duration::from_secs(env.positive("RETRY_BASE_SECONDS", 2)?),
            retry_cap: Duration::from_secs(env.positive("RETRY_MAX_SECONDS", 60)?),
            stream_flush: Duration::from_millis(env.positive("STREAM_FLUSH_MS", 2000)?),
            live_interval: Duration::from_millis(env.positive("LIVE_PUBLISH_MS", 200)?),
            prices: Arc::new(env.prices()?),
        })
    }
}

/// How long a retry waits after `attempts` model calls: doubling from `base`, at most `cap`,
/// and spread over its upper half by `jitter` (0 to 1) so that throttled jobs do not all
/// come back at once.
pub fn retry_delay(attempts: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let doubling = 2u32.saturating_pow(attempts.saturating_sub(1));
    let ceiling = base.saturating_mul(doubling).min(cap);
    ceiling.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

pub struct Worker<S, A, M, R, F = NoFeed> {
    store: S,
    artifacts: A,
    model: M,
    queue: R,
    /// Where a watched job's text goes as it comes (the Event API).
    feed: F,
    settings: Settings,
}

/// What an attempt publishes on its job's live channel.
struct Live {
    /// `None`: the job's owner has no channel.
    channel: Option<String>,
    watched: bool,
    /// The bytes of the attempt's text published so far.
    published: usize,
}

/// One delivery of a job, in one invocation.
struct Delivery<'a> {
    job_id: JobId,
    message: &'a SqsMessage,
    /// When the invocation must have answered (None: no deadline, as in some tests).
    deadline: Option<DateTime<Utc>>,
}

impl<S, A, M, R> Worker<S, A, M, R> {
    /// A worker that publishes nothing live (see [`Worker::with_feed`]).
    pub fn new(store: S, artifacts: A, model: M, queue: R, settings: Settings) -> Self {
        Self {
            store,
            artifacts,
            model,
            queue,
            feed: NoFeed,
            settings,
        }
    }
}

impl<S, A, M, R, F> Worker<S, A, M, R, F> {
    /// The same worker, publishing watched jobs' text on `feed`.
    pub fn with_feed<G: LiveFeed>(self, feed: G) -> Worker<S, A, M, R, G> {
        Worker {
            store: self.store,
            artifacts: self.artifacts,
            model: self.model,
            queue: self.queue,
            feed,
            settings: self.settings,
        }
    }
}

impl<S: JobStore, A: ArtifactStore, M: TextModel, R: Redelivery, F: LiveFeed>
    Worker<S, A, M, R, F>
{
    /// Processes a batch concurrently and lists only the messages to retry.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> SqsBatchResponse {
        let deadline = (event.context.deadline > 0)
            .then(|| DateTime::from_timestamp_millis(event.context.deadline as i64))
            .flatten();
        delivery::each_job(&event.payload, |job_id, message| {
            self.run(Delivery {
                job_id,
                message,
                deadline,
            })
        })
        .await
    }

    fn deliveries(&self) -> Deliveries<'_, S, A, R> {
        Deliveries {
            store: &self.store,
            artifacts: &self.artifacts,
            queue: &self.queue,
        }
    }

    async fn run(&self, delivery: Delivery<'_>) -> Outcome {
        let now = Utc::now();
        // The lease lasts as long as this invocation can: past its deadline nobody is working.
        let lease_ends = delivery
            .deadline
            .unwrap_or(now + chrono::Duration::minutes(15))
            + chrono::Duration::seconds(5);
        let start = Transition::Start {
            lease: Lease::new(lease_ends),
            max_attempts: self.settings.max_attempts,
        };
        let job = match self.store.transition(delivery.job_id, &start, now).await {
            Ok(Transitioned::Done(job)) => job,
            Ok(Transitioned::Refused(current)) => {
                // Judged as the store judged it: a lease that has ended since the refusal
                // still held the job then, which is no sign that its attempts are used up.
                return self
                    .deliveries()
                    .settle_unstarted(delivery.message, current, now, Job::abandoned)
                    .await;
            }
            Err(cause) => {
                warn!(%cause, "could not start the job; it will be retried");
                return Outcome::Retry;
            }
        };
        let Some(lease) = job.lease.clone() else {
            return Outcome::Retry; // a started job always has its lease
        };
        let queued_for = (now - job.created_at).to_std().unwrap_or_default();
        metrics::job_started(queued_for, job.attempts);
        info!(
            attempt = job.attempts,
            delivery = delivery::receive_count(delivery.message),
            model = %job.request.model,
            "job running"
        );

        let started = Instant::now();
        let (progress, text) = Progress::channel();
        let flusher = self.stream_out(&job, &lease.id, text);
        tokio::pin!(flusher);
        let reply = tokio::select! {
            reply = self.generate(&job, delivery.deadline, &progress) => reply,
            ended = &mut flusher => {
                // While the call runs, the flusher ends only when the attempt lost the job.
                // Dropping the call stops its stream: nothing of this attempt is written
                // any more, and the job keeps its last flush.
                return self.deliveries().lost(ended.err().flatten()).await;
            }
        };
        let latency = started.elapsed();
        let first_text = progress.first_text_at().map(|at| at - started);
        // The text is complete: the flusher ends once its flush in flight (if any) has
        // landed, so that no write of it can land after the outcome's.
        drop(progress);
        let written = match flusher.await {
            Ok(written) => written,
            Err(current) => return self.deliveries().lost(current).await,
        };
        if let Err(ModelError::Retryable(_)) = &reply {
            metrics::model_throttled(&job.request.model);
        }
        match reply {
            Ok(reply) => {
                let call = (latency, first_text);
                self.succeed(&delivery, &job, &lease.id, &written, reply, call)
                    .await
            }
            Err(ModelError::Retryable(cause)) if job.attempts < self.settings.max_attempts => {
                self.release(&delivery, &job, &lease.id, &cause).await
            }
            Err(ModelError::Retryable(cause)) => {
                let message = format!(
                    "The model was unavailable on all {} calls; the last error was: {cause}",
                    job.attempts
                );
                let failure = JobFailure::new(FailureCode::ModelUnavailable, message);
                self.deliveries()
                    .fail(job.id, Some(lease.id.clone()), failure)
                    .await
            }
            Err(ModelError::Permanent(cause)) => {
                let failure = JobFailure::new(FailureCode::ModelError, cause);
                self.deliveries()
                    .fail(job.id, Some(lease.id.clone()), failure)
                    .await
            }
        }
    }

    /// Follows the call's text as it grows. While the job is watched (someone subscribed to
    /// its live channel), publishes what is new at most every `live_interval`, so that a
    /// watcher sees the text as it is written; and adds what is new to the job itself at the
    /// first text and then at most every `stream_flush`, each write conditional on the lease
    /// and writing only what is new, so a job's writes grow with its answer. Ends when the call
    /// is over (its text's sender dropped), having published the rest, with what the job holds
    /// of this attempt's text; or when a flush is refused: the attempt lost the job (`None`:
    /// the job is gone).
    async fn stream_out(
        &self,
        job: &Job,
        lease: &LeaseId,
        mut text: tokio::sync::watch::Receiver<String>,
    ) -> Result<Written, Option<Job>> {
        let mut live = Live {
            channel: job_channel(&job.owner, job.id),
            watched: is_watched(job.watched_until, Utc::now()),
            published: 0,
        };
        let mut written = Written::default();
        // The first text goes out at once; then at most one publish per `live_interval` and
        // one flush per `stream_flush`.
        let (mut next_publish, mut next_flush) = (Instant::now(), Instant::now());
        loop {
            // A call that has ended leaves its last text to the outcome's write.
            if text.changed().await.is_err() || text.has_changed().is_err() {
                let rest = text.borrow().clone();
                self.publish(job, &mut live, &rest).await;
                return Ok(written);
            }
            // Gather what comes until a publish or a flush is due, unless the call ends.
            let due = if live.watched {
                next_publish.min(next_flush)
            } else {
                next_flush
            };
            while due > Instant::now() {
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => break,
                    changed = text.changed() => if changed.is_err() {
                        let rest = text.borrow().clone();
                        self.publish(job, &mut live, &rest).await;
                        return Ok(written);
                    },
                }
            }
            let so_far = text.borrow_and_update().clone();
            if live.watched && Instant::now() >= next_publish {
                next_publish = Instant::now() + self.settings.live_interval;
                self.publish(job, &mut live, &so_far).await;
            }
            if Instant::now() < next_flush {
                continue;
            }
            next_flush = Instant::now() + self.settings.stream_flush;
            let piece = written.piece_for(job, &so_far);
            match self.store.flush(job.id, lease, &piece, Utc::now()).await {
                Ok(Flushed::Kept { watched_until }) => {
                    written = written.with(&piece);
                    live.watched = is_watched(watched_until, Utc::now());
                }
                Ok(Flushed::Lost(current)) => return Err(current.map(|job| *job)),
                Err(cause) => warn!(%cause, "could not flush the text so far; the next flush will"),
            }
        }
    }

    /// Publishes what `text` adds to what was published, if the job is watched. Best effort:
    /// a failed publish is logged and its text goes with the next one (watchers of a feed
    /// that fails read the job instead).
    async fn publish(&self, job: &Job, live: &mut Live, text: &str) {
        let Some(channel) = live.channel.as_deref().filter(|_| live.watched) else {
            return;
        };
        let Some(new) = text.get(live.published..).filter(|new| !new.is_empty()) else {
            return;
        };
        let event = LiveEvent::Text {
            job_id: job.id.to_string(),
            attempt: job.attempts,
            offset: live.published,
            text: new.to_owned(),
        };
        match self.feed.publish(channel, &[event.to_json()]).await {
            Ok(()) => live.published = text.len(),
            Err(cause) => warn!(%cause, "could not publish the text so far; the next publish will"),
        }
    }

    async fn generate(
        &self,
        job: &Job,
        deadline: Option<DateTime<Utc>>,
        progress: &Progress,
    ) -> Result<ModelReply, ModelError> {
        let request = &job.request;
        let request = ModelRequest {
            model: request.model.clone(),
            prompt: request.prompt.clone(),
            system: request.system.clone(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        let call = self.model.generate(&request, progress);
        let Some(deadline) = deadline else {
            return call.await;
        };
        let budget = (deadline - Utc::now())
            .to_std()
            .unwrap_or_default()
            .saturating_sub(self.settings.write_reserve);
        tokio::time::timeout(budget, call)
            .await
            .unwrap_or_else(|_| {
                Err(ModelError::Retryable(format!(
                    "no answer within {budget:?}, the time left in this invocation"
                )))
            })
    }

    /// The artifact goes to S3 first, under this attempt's own key, so that a `succeeded`
    /// job always has the artifact its record names; an attempt that loses removes its own.
    async fn succeed(
        &self,
        delivery: &Delivery<'_>,
        job: &Job,
        lease: &LeaseId,
        written: &Written,
        reply: ModelReply,
        (latency, first_text): (Duration, Option<Duration>),
    ) -> Outcome {
        let completed_at = Utc::now();
        let key = job.artifact_key(job.attempts);
        let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let response = ArtifactResponse {
            text: reply.text,
            stop_reason: reply.stop_reason,
        };
        let cost = self.settings.prices.price(&job.request.model).map(|price| {
            price.cost(&TokenCounts {
                input: reply.usage.input_tokens,
                output: reply.usage.output_tokens,
                ..TokenCounts::default()
            })
        });
        metrics::model_call(
            &job.request.model,
            &metrics::ModelCall {
                latency,
                time_to_first_token: first_text,
                input_tokens: reply.usage.input_tokens,
                output_tokens: reply.usage.output_tokens,
                cost_usd: cost.map(NanoUsd::as_usd),
            },
        );
        let artifact = Artifact::new(job, response, reply.usage, cost, completed_at, latency_ms);
        if let Err(cause) = self.artifacts.put(&key, &artifact).await {
            let cause = format!("could not write the artifact: {cause}");
            return self.release(delivery, job, lease, &cause).await;
        }
        let succeed = Transition::Succeed {
            lease: lease.clone(),
            tail: written.piece_for(job, &artifact.response.text),
            completion: Completion {
                output: artifact.response.text,
                stop_reason: artifact.response.stop_reason,
                usage: reply.usage,
                artifact_key: key.clone(),
                cost,
            },
        };
        match self.store.transition(job.id, &succeed, completed_at).await {
            Ok(Transitioned::Done(succeeded)) => {
                info!(
                    input_tokens = reply.usage.input_tokens,
                    output_tokens = reply.usage.output_tokens,
                    cost_usd = cost.map(|cost| cost.to_string()),
                    latency_ms,
                    "job succeeded"
                );
                metrics::job_ended(&succeeded);
                self.deliveries().tidy(&succeeded).await
            }
            Ok(Transitioned::Refused(Some(finished))) if finished.status.is_terminal() => {
                if finished.status == JobStatus::Cancelled {
                    self.record_usage(&finished, reply.usage, cost).await;
                }
                // Its leftovers include this attempt's artifact.
                self.deliveries().lost(Some(finished)).await
            }
            Ok(Transitioned::Refused(current)) => {
                info!("another attempt took the job over; this attempt's artifact is removed");
                if let Err(cause) = self.artifacts.delete(&key).await {
                    warn!(%cause, key, "could not remove the losing attempt's artifact");
                }
                self.deliveries().lost(current).await
            }
            Err(cause) => {
                warn!(%cause, "could not record the success; the job will be retried");
                Outcome::Retry
            }
        }
    }

    /// The owner stopped the job while its call was ending: it is charged what the call used
    /// rather than its worst case. Best effort: if this fails, the worst case stands.
    async fn record_usage(&self, job: &Job, usage: Usage, cost: Option<NanoUsd>) {
        let record = Transition::RecordUsage {
            used: CallUsage { usage, cost },
        };
        match self.store.transition(job.id, &record, Utc::now()).await {
            Ok(Transitioned::Done(_)) => {
                info!("the cancelled job's call ended; its use is recorded")
            }
            Ok(Transitioned::Refused(_)) => {}
            Err(cause) => {
                warn!(%cause, "could not record the cancelled job's use; its worst case stands")
            }
        }
    }

    /// A retryable failure: give the job back and let the message return after a short
    /// backoff, for an attempt with a model call left (else the next delivery fails it).
    async fn release(
        &self,
        delivery: &Delivery<'_>,
        job: &Job,
        lease: &LeaseId,
        cause: &str,
    ) -> Outcome {
        let release = Transition::Release {
            lease: lease.clone(),
        };
        match self.store.transition(job.id, &release, Utc::now()).await {
            Ok(Transitioned::Done(_)) => {}
            Ok(Transitioned::Refused(current)) => return self.deliveries().lost(current).await,
            Err(error) => {
                warn!(%error, "could not release the job; it is retried once its lease ends");
                return Outcome::Retry;
            }
        }
        let delay = retry_delay(
            job.attempts,
            self.settings.retry_base,
            self.settings.retry_cap,
            fastrand::f64(),
        );
        warn!(%cause, attempt = job.attempts, retry_in_ms = delay.as_millis() as u64, "the attempt failed; the job will be retried");
        self.deliveries().come_back(delivery.message, delay).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_doubling_with_jitter_up_to_the_cap() {
        let (base, cap) = (Duration::from_secs(2), Duration::from_secs(60));
        let cases = [
            (1, 2.0),
            (2, 4.0),
            (3, 8.0),
            (5, 32.0),
            (6, 60.0),
            (40, 60.0),
        ];
        for (attempts, ceiling) in cases {
            let highest = retry_delay(attempts, base, cap, 1.0).as_secs_f64();
            let lowest = retry_delay(attempts, base, cap, 0.0).as_secs_f64();
            assert_eq!(highest, ceiling, "after {attempts} calls");
            assert_eq!(lowest, ceiling / 2.0, "after {attempts} calls");
            let any = retry_delay(attempts, base, cap, 0.37).as_secs_f64();
            assert!(lowest <= any && any <= highest);
        }
    }
}
