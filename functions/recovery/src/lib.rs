//! Recovery: no job stays unfinished without work on it.
//!
//! Two triggers, one function:
//! - **Dead letters.** A message SQS dead-lettered went through `QueueMaxReceiveCount`
//!   deliveries without an outcome (its invocations kept dying). Its job, if still unfinished
//!   and held by no live lease, fails with `worker_error`; if an attempt holds it, the message
//!   is looked at again once that lease can have ended.
//! - **The sweep**, on a schedule. An unfinished job that no attempt holds and that has not
//!   changed for `RECOVER_AFTER_SECONDS` is stranded: a message that was never sent (the api
//!   died between its write and its send) or that was lost. It is sent again while it has
//!   model calls left, else it fails with `worker_error`. The candidates come from an index
//!   that holds only unfinished jobs, so the sweep never scans the table.
//!
//! Every write is a conditional transition, so recovery never overrides an attempt that is
//! working: a job changed since it was found is left alone.

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use pipeline::config::{ConfigError, Env};
use pipeline::delivery::{self, Deliveries, Outcome};
use pipeline::domain::{Job, JobId, Standing, Transition, Transitioned};
use pipeline::metrics;
use pipeline::ports::{ArtifactStore, JobQueue, JobStore, Redelivery, Unavailable};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct Config {
    pub table: String,
    /// Where attempts of the jobs it fails may have left artifacts.
    pub artifacts_bucket: String,
    /// Where stranded jobs are sent again.
    pub queue_url: String,
    /// Where dead-lettered messages wait; their return is timed on it.
    pub dead_letter_queue_url: String,
    pub settings: Settings,
}

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The worker's `MAX_ATTEMPTS`: a stranded job with fewer model calls is sent again.
    pub max_attempts: u32,
    /// How long an unfinished job that no attempt holds may stay unchanged before the sweep
    /// repairs it. Longer than the worker's retry backoff (`RETRY_MAX_SECONDS`), so that a
    /// job waiting for its retry is never mistaken for a stranded one.
    pub recover_after: Duration,
    /// The most jobs one sweep repairs (the rest wait for the next).
    pub sweep_limit: usize,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            table: env.required("JOBS_TABLE")?,
            artifacts_bucket: env.required("ARTIFACTS_BUCKET")?,
            queue_url: env.required("JOBS_QUEUE_URL")?,
            dead_letter_queue_url: env.required("DEAD_LETTER_QUEUE_URL")?,
            settings: Settings::from_env(env)?,
        })
    }
}

impl Settings {
    /// `MAX_ATTEMPTS`, `RECOVER_AFTER_SECONDS`, `SWEEP_LIMIT`; the local stack reads them the
    /// same way.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            max_attempts: env.max_attempts()?,
            recover_after: Duration::from_secs(env.positive("RECOVER_AFTER_SECONDS", 900)?),
            sweep_limit: env.positive("SWEEP_LIMIT", 1000)?,
        })
    }
}

/// Repairs a sweep makes at a time.
const REPAIRS_AT_ONCE: usize = 16;

/// What invokes the function: a batch from the dead-letter queue, or the schedule, whose
/// input is `{"sweep": {}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RecoveryEvent {
    DeadLetters(SqsEvent),
    Sweep { sweep: SweepRequest },
}

#[derive(Debug, Default, Deserialize)]
pub struct SweepRequest {}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RecoveryResponse {
    DeadLetters(SqsBatchResponse),
    Sweep(SweepReport),
}

/// What one sweep found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Unfinished jobs unchanged for `recover_after`, as the index had them.
    pub candidates: usize,
    /// Sent again.
    pub requeued: usize,
    /// Failed with `worker_error`: stranded with no model calls left.
    pub failed: usize,
    /// Repairs that met an error (DynamoDB or SQS); they are tried again by the next sweep.
    pub errors: usize,
}

pub struct Recovery<S, A, Q, R> {
    store: S,
    artifacts: A,
    jobs: Q,
    dead_letters: R,
    settings: Settings,
}

/// What became of one stranded candidate.
enum Repair {
    Requeued,
    Failed,
    /// It was working, finished or changed since the index listed it.
    LeftAlone,
}

impl<S: JobStore, A: ArtifactStore, Q: JobQueue, R: Redelivery> Recovery<S, A, Q, R> {
    /// `jobs` is the jobs queue; `dead_letters` the dead-letter queue.
    pub fn new(store: S, artifacts: A, jobs: Q, dead_letters: R, settings: Settings) -> Self {
        Self {
            store,
            artifacts,
            jobs,
            dead_letters,
            settings,
        }
    }

    fn deliveries(&self) -> Deliveries<'_, S, A, R> {
        Deliveries {
            store: &self.store,
            artifacts: &self.artifacts,
            queue: &self.dead_letters,
        }
    }

    pub async fn handle(&self, event: RecoveryEvent) -> Result<RecoveryResponse, Unavailable> {
        Ok(match event {
            RecoveryEvent::DeadLetters(batch) => {
                RecoveryResponse::DeadLetters(self.dead_letters(&batch).await)
            }
            RecoveryEvent::Sweep { .. } => RecoveryResponse::Sweep(self.sweep(Utc::now()).await?),
        })
    }

    /// Settles each dead-lettered job; lists the messages to look at again.
    pub async fn dead_letters(&self, batch: &SqsEvent) -> SqsBatchResponse {
        let deliveries = &self.deliveries();
        delivery::each_job(batch, |job_id, message| async move {
            let now = Utc::now();
            match self.store.get(job_id).await {
                Ok(job) => {
                    warn!("the job's message was dead-lettered");
                    // Counted where it is repaired: a job free to be failed for it.
                    if job
                        .as_ref()
                        .is_some_and(|job| job.standing(now) == Standing::Free)
                    {
                        metrics::recovery("dead_lettered");
                    }
                    deliveries
                        .settle_unstarted(message, job, now, Job::dead_lettered)
                        .await
                }
                Err(cause) => {
                    warn!(%cause, "could not read the dead-lettered job; it will be retried");
                    Outcome::Retry
                }
            }
        })
        .await
    }

    /// Repairs up to `sweep_limit` stranded jobs, as of `now`. Fails only if the candidates
    /// cannot be listed; a repair that fails is counted, and the next sweep tries again.
    pub async fn sweep(&self, now: DateTime<Utc>) -> Result<SweepReport, Unavailable> {
        let unchanged_since = now
            - chrono::Duration::from_std(self.settings.recover_after)
                .unwrap_or(chrono::Duration::MAX);
        let candidates = self
            .store
            .find_stale(unchanged_since, self.settings.sweep_limit)
            .await?;
        let mut report = SweepReport {
            candidates: candidates.len(),
            ..SweepReport::default()
        };
        // Several at once: after an outage a sweep may have hundreds to repair within its
        // function's minute.
        let repairs = futures::stream::iter(candidates)
            .map(|id| async move { (id, self.repair(id, unchanged_since, now).await) })
            .buffer_unordered(REPAIRS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        for (id, repair) in repairs {
            match repair {
                Ok(Repair::Requeued) => report.requeued += 1,
                Ok(Repair::Failed) => report.failed += 1,
                Ok(Repair::LeftAlone) => {}
                Err(cause) => {
                    warn!(job_id = %id, %cause, "could not repair the job; the next sweep will");
                    report.errors += 1;
                }
            }
        }
        info!(
            candidates = report.candidates,
            requeued = report.requeued,
            failed = report.failed,
            errors = report.errors,
            "sweep done"
        );
        Ok(report)
    }

    /// Sends a stranded job again if it has model calls left, else fails it. The requeue is
    /// conditional on the job being as the sweep found it (stranded since `unchanged_since`);
    /// the fail on no live lease, which is enough: a free job with no model calls left can
    /// only be failed or cancelled, never started again.
    async fn repair(
        &self,
        id: JobId,
        unchanged_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Repair, Unavailable> {
        let requeue = Transition::Requeue {
            unchanged_since,
            max_attempts: self.settings.max_attempts,
        };
        let job = match self.store.transition(id, &requeue, now).await? {
            Transitioned::Done(job) => {
                // Touched first, then sent: if the send fails, the job is stranded still and
                // the sweep after next sends it.
                self.jobs.enqueue(id).await?;
                info!(job_id = %id, status = %job.status, attempts = job.attempts, "stranded job sent again");
                metrics::recovery("requeued");
                return Ok(Repair::Requeued);
            }
            Transitioned::Refused(Some(job)) => job,
            Transitioned::Refused(None) => return Ok(Repair::LeftAlone),
        };
        // Refused: finished, held, changed since, or free with no model calls left. Only the
        // last is failed here, and only if it is unchanged still.
        let stranded = job.standing(now) == Standing::Free && job.updated_at <= unchanged_since;
        if !stranded {
            return Ok(Repair::LeftAlone);
        }
        let fail = Transition::Fail {
            lease: None,
            failure: job.abandoned(),
        };
        Ok(match self.store.transition(id, &fail, now).await? {
            Transitioned::Done(failed) => {
                warn!(job_id = %id, attempts = job.attempts, "stranded job failed: no model calls left");
                metrics::recovery("failed");
                metrics::job_ended(&failed);
                // Its message is lost, so no delivery will remove what its attempts left.
                self.deliveries().tidy(&failed).await;
                Repair::Failed
            }
            Transitioned::Refused(_) => Repair::LeftAlone,
        })
    }
}
