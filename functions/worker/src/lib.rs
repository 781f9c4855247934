//! The worker: SQS batches in, one Converse call per job, artifact to S3, status to DynamoDB.
//!
//! Delivery is at least once, so every step is safe to repeat: the table's conditional
//! transitions decide who may run and finish a job, and a terminal job is never run again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::Utc;
use lambda_runtime::LambdaEvent;
use pipeline::config::{ConfigError, Env};
use pipeline::domain::{
    Artifact, ArtifactResponse, Completion, FailureCode, Job, JobFailure, JobId, Transition,
    decode_job_message,
};
use pipeline::ports::{ArtifactStore, JobStore, ModelError, ModelReply, ModelRequest, TextModel};
use tracing::{Instrument, info, info_span, warn};

#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    pub artifacts_bucket: String,
    pub settings: Settings,
}

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Deliveries of a message before a retryable model failure becomes `model_unavailable`.
    pub max_attempts: u32,
    /// Time kept back from the invocation's deadline for writing the result after the model
    /// call: a model call still running then is abandoned and retried later.
    pub write_reserve: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required("JOBS_TABLE")?,
            artifacts_bucket: env.required("ARTIFACTS_BUCKET")?,
            settings: Settings::from_env(env)?,
        })
    }
}

impl Settings {
    /// `MAX_ATTEMPTS`; the local stack reads it the same way.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_attempts: env.positive("MAX_ATTEMPTS", 3)?,
            write_reserve: Duration::from_secs(5),
        })
    }
}

/// What becomes of one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Done with it, for good or ill: delete it from the queue.
    Acknowledge,
    /// Report it as a batch item failure, so that it comes back after the visibility timeout.
    Retry,
}

pub struct Worker<S, A, M> {
    store: S,
    artifacts: A,
    model: M,
    settings: Settings,
}

impl<S: JobStore, A: ArtifactStore, M: TextModel> Worker<S, A, M> {
    pub fn new(store: S, artifacts: A, model: M, settings: Settings) -> Self {
        Self {
            store,
            artifacts,
            model,
            settings,
        }
    }

    /// Processes a batch concurrently and lists only the messages to retry.
    pub async fn handle(&self, event: LambdaEvent<SqsEvent>) -> SqsBatchResponse {
        let model_budget = remaining_time(event.context.deadline)
            .map(|left| left.saturating_sub(self.settings.write_reserve));

        // Two messages for one job in one batch must cost one model call: group them, run
        // the job once for the most-delivered message, and acknowledge the others.
        let mut jobs: BTreeMap<JobId, &SqsMessage> = BTreeMap::new();
        for message in &event.payload.records {
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

        let runs = jobs.into_iter().map(|(job_id, message)| async move {
            let span = info_span!("job", job_id = %job_id);
            let outcome = self
                .run(job_id, receive_count(message), model_budget)
                .instrument(span)
                .await;
            (message, outcome)
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

    async fn run(&self, job_id: JobId, delivery: u32, model_budget: Option<Duration>) -> Outcome {
        let job = match self
            .store
            .transition(job_id, &Transition::Start, Utc::now())
            .await
        {
            Ok(Some(job)) => job,
            Ok(None) => {
                info!("job is missing or already finished; message acknowledged");
                return Outcome::Acknowledge;
            }
            Err(cause) => {
                warn!(%cause, "could not start the job; it will be retried");
                return Outcome::Retry;
            }
        };
        info!(attempt = job.attempts, delivery, model = %job.request.model, "job running");

        let started = Instant::now();
        let reply = self.generate(&job, model_budget).await;
        let latency = started.elapsed();
        match reply {
            Ok(reply) => self.succeed(&job, reply, latency).await,
            Err(ModelError::Retryable(cause)) if delivery < self.settings.max_attempts => {
                warn!(%cause, delivery, "model unavailable; the job will be retried");
                Outcome::Retry
            }
            Err(ModelError::Retryable(cause)) => {
                let message = format!(
                    "The model was unavailable on all {} attempts; the last error was: {cause}",
                    self.settings.max_attempts
                );
                self.fail(&job, FailureCode::ModelUnavailable, message)
                    .await
            }
            Err(ModelError::Permanent(cause)) => {
                self.fail(&job, FailureCode::ModelError, cause).await
            }
        }
    }

    async fn generate(
        &self,
        job: &Job,
        budget: Option<Duration>,
    ) -> Result<ModelReply, ModelError> {
        let request = &job.request;
        let request = ModelRequest {
            model: request.model.clone(),
            prompt: request.prompt.clone(),
            system: request.system.clone(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        let call = self.model.generate(&request);
        match budget {
            None => call.await,
            Some(budget) => tokio::time::timeout(budget, call)
                .await
                .unwrap_or_else(|_| {
                    Err(ModelError::Retryable(format!(
                        "no answer within {budget:?}, the time left in this invocation"
                    )))
                }),
        }
    }

    /// The artifact goes to S3 first, so that a `succeeded` job always has one.
    async fn succeed(&self, job: &Job, reply: ModelReply, latency: Duration) -> Outcome {
        let completed_at = Utc::now();
        let key = job.artifact_key();
        let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let response = ArtifactResponse {
            text: reply.text,
            stop_reason: reply.stop_reason,
        };
        let artifact = Artifact::new(job, response, reply.usage, completed_at, latency_ms);
        if let Err(cause) = self.artifacts.put(&key, &artifact).await {
            warn!(%cause, "could not write the artifact; the job will be retried");
            return Outcome::Retry;
        }
        let completion = Completion {
            output: artifact.response.text,
            stop_reason: artifact.response.stop_reason,
            usage: reply.usage,
            artifact_key: key,
        };
        let succeed = Transition::Succeed(completion);
        match self.store.transition(job.id, &succeed, completed_at).await {
            Ok(Some(_)) => {
                info!(
                    input_tokens = reply.usage.input_tokens,
                    output_tokens = reply.usage.output_tokens,
                    latency_ms,
                    "job succeeded"
                );
                Outcome::Acknowledge
            }
            Ok(None) => {
                info!("job was finished by another delivery; message acknowledged");
                Outcome::Acknowledge
            }
            Err(cause) => {
                warn!(%cause, "could not record the success; the job will be retried");
                Outcome::Retry
            }
        }
    }

    async fn fail(&self, job: &Job, code: FailureCode, message: String) -> Outcome {
        warn!(code = code.as_str(), %message, "job failed");
        let fail = Transition::Fail(JobFailure::new(code, message));
        match self.store.transition(job.id, &fail, Utc::now()).await {
            Ok(_) => Outcome::Acknowledge,
            Err(cause) => {
                warn!(%cause, "could not record the failure; the job will be retried");
                Outcome::Retry
            }
        }
    }
}

/// SQS's `ApproximateReceiveCount`: 1 on the first delivery.
fn receive_count(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|count| count.parse().ok())
        .unwrap_or(1)
}

/// Time until the invocation's deadline (epoch milliseconds; 0 when there is none).
fn remaining_time(deadline_ms: u64) -> Option<Duration> {
    if deadline_ms == 0 {
        return None;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Some(Duration::from_millis(deadline_ms).saturating_sub(now))
}
