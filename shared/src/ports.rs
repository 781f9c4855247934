//! The ports: what the handlers need from the outside world, as traits.
//!
//! Each has one AWS adapter in [`crate::adapters`]; tests may plug in fakes. Methods return
//! `Send` futures so that handlers stay usable from `lambda_runtime` and from spawned tasks.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::domain::{
    Artifact, Budget, BudgetOverride, Job, JobId, LeaseId, OverBudget, Owner, Period, PeriodUsage,
    RateWindow, Revision, TextPiece, Transition, Transitioned, Usage,
};

/// A dependency that did not answer as it should. The caller sees `503` (API) or the
/// message is retried (worker); the detail goes to the log only.
#[derive(Debug, thiserror::Error)]
#[error("{dependency} failed: {detail}")]
pub struct Unavailable {
    pub dependency: &'static str,
    pub detail: String,
}

impl Unavailable {
    pub fn new(dependency: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            dependency,
            detail: detail.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    Created,
    /// A job with this id already exists (an idempotent repeat); nothing was written.
    AlreadyExists,
    /// The job's reservation would take its owner over `budget`; nothing was written.
    OverBudget(OverBudget),
}

/// Where to resume listing an owner's jobs: the last job of the previous page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageCursor {
    pub job_id: JobId,
    pub created_at: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    pub jobs: Vec<Job>,
    pub next: Option<PageCursor>,
}

impl Page {
    /// The first `limit` of `jobs` (newest first), with a cursor after the last of them only
    /// when `more` exist beyond: the last page never points at an empty one.
    pub fn of(mut jobs: Vec<Job>, limit: usize, more_beyond: bool) -> Self {
        let more = jobs.len() > limit || more_beyond;
        jobs.truncate(limit);
        let next = jobs.last().filter(|_| more).map(|last| PageCursor {
            job_id: last.id,
            created_at: crate::domain::format_timestamp(last.created_at),
        });
        Self { jobs, next }
    }
}

/// What became of a flush of an attempt's text.
#[derive(Clone, Debug, PartialEq)]
pub enum Flushed {
    /// The piece is part of the job's text; the attempt still holds the job, watched until
    /// then (see [`Job::watched_until`]).
    Kept {
        watched_until: Option<DateTime<Utc>>,
    },
    /// The attempt no longer holds the job: the job as it is (`None`: there is no such job).
    Lost(Option<Box<Job>>),
}

/// The jobs. A job is kept as a small record of its state beside what never changes (its
/// request) and its text in pieces, so that a change of state, a flush or a poll costs
/// DynamoDB the size of the state, not of the prompt and the answer. Every job it answers
/// is whole: state, request and text.
pub trait JobStore: Send + Sync {
    /// Writes a new job and counts its reservation (if it has one) in its owner's ledgers of
    /// the day and month, all at once; nothing is written if a job with its id exists, or if
    /// the reservation would take a ledger over its limit in `budget`. Atomic, so that
    /// concurrent submissions can never together exceed a budget.
    fn insert(
        &self,
        job: &Job,
        budget: &Budget,
    ) -> impl Future<Output = Result<Inserted, Unavailable>> + Send;

    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<Job>, Unavailable>> + Send;

    /// How far the job has come (`None`: no such job), for readers that wait for a change:
    /// a read of its small state only, eventually consistent (a change shows within about
    /// a second, usually at once).
    fn revision(
        &self,
        id: JobId,
    ) -> impl Future<Output = Result<Option<Revision>, Unavailable>> + Send;

    /// Adds `piece` to the text of the attempt holding `lease`: [`Transition::Flush`],
    /// answering without the whole job when it is applied, since the attempt streaming it
    /// has no use for it.
    fn flush(
        &self,
        id: JobId,
        lease: &LeaseId,
        piece: &TextPiece,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Flushed, Unavailable>> + Send;

    /// The owner's jobs, newest first, at most `limit`, after `after`.
    fn list(
        &self,
        owner: &Owner,
        limit: usize,
        after: Option<&PageCursor>,
    ) -> impl Future<Output = Result<Page, Unavailable>> + Send;

    /// Applies `transition` at `at`, atomically, if the job exists and the transition's guard
    /// admits it (exactly as [`Job::apply`] describes): the job as it is afterwards, or, when
    /// refused, as it is (`None`: no such job). A transition that ends a job which reserved
    /// budget settles its reservation ([`Job::settlement`]) in the same atomic write, so that
    /// it is settled exactly once.
    fn transition(
        &self,
        id: JobId,
        transition: &Transition,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Transitioned, Unavailable>> + Send;

    /// Marks `owner`'s unfinished job `id` as watched until `until` (someone subscribed to its
    /// live channel), without changing it otherwise (its `seq` and `updated_at` stay): `false`
    /// if there is no such unfinished job of `owner`.
    fn watch(
        &self,
        id: JobId,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> impl Future<Output = Result<bool, Unavailable>> + Send;

    /// The ids of up to `limit` unfinished jobs that have not changed after `unchanged_since`
    /// (recovery's candidates), from an index of unfinished jobs: never a scan of the table.
    fn find_stale(
        &self,
        unchanged_since: DateTime<Utc>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobId>, Unavailable>> + Send;
}

/// The users' budgets and ledgers (kept beside the jobs).
pub trait UsageLedger: Send + Sync {
    /// The operator's limits for `owner`, if any are set.
    fn budget_override(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<BudgetOverride, Unavailable>> + Send;

    /// What `owner` has used in each of `periods` (an empty ledger where none is kept).
    fn usage(
        &self,
        owner: &Owner,
        periods: &[Period],
    ) -> impl Future<Output = Result<Vec<PeriodUsage>, Unavailable>> + Send;
}

/// The Event API: live events on a job's channel, for whoever subscribed to it.
pub trait LiveFeed: Send + Sync {
    /// Publishes `events` (JSON strings, at most [`MAX_EVENTS_PER_PUBLISH`]) on `channel`, in
    /// order.
    fn publish(
        &self,
        channel: &str,
        events: &[String],
    ) -> impl Future<Output = Result<(), Unavailable>> + Send;
}

/// No live feed: nothing is published (no Event API is configured).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFeed;

impl LiveFeed for NoFeed {
    async fn publish(&self, _channel: &str, _events: &[String]) -> Result<(), Unavailable> {
        Ok(())
    }
}

/// A feed that may not be configured: `None` publishes nothing.
impl<F: LiveFeed> LiveFeed for Option<F> {
    async fn publish(&self, channel: &str, events: &[String]) -> Result<(), Unavailable> {
        match self {
            Some(feed) => feed.publish(channel, events).await,
            None => Ok(()),
        }
    }
}

/// The most events one publish carries (AppSync Events' limit).
pub const MAX_EVENTS_PER_PUBLISH: usize = 5;

/// Counts submissions per caller, for `MAX_JOBS_PER_MINUTE`.
pub trait SubmissionQuota: Send + Sync {
    /// Counts one submission in `window`, unless `limit` are counted there already: then
    /// nothing is counted and the answer is `false`. Atomic, so concurrent requests cannot
    /// overshoot the limit together.
    fn acquire(
        &self,
        window: &RateWindow,
        limit: u32,
    ) -> impl Future<Output = Result<bool, Unavailable>> + Send;
}

pub trait JobQueue: Send + Sync {
    fn enqueue(&self, id: JobId) -> impl Future<Output = Result<(), Unavailable>> + Send;
}

/// When a received message comes back: the worker's fast retries and waits.
pub trait Redelivery: Send + Sync {
    /// Makes the message received with `receipt_handle` visible again after `delay`.
    fn redeliver_after(
        &self,
        receipt_handle: &str,
        delay: std::time::Duration,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send;
}

pub trait ArtifactStore: Send + Sync {
    fn put(
        &self,
        key: &str,
        artifact: &Artifact,
    ) -> impl Future<Output = Result<(), Unavailable>> + Send;

    /// Removes an artifact that no record names (an attempt that lost its race).
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), Unavailable>> + Send;
}

/// A text generation request as the model port sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRequest {
    pub model: String,
    pub prompt: String,
    pub system: Option<String>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelReply {
    pub text: String,
    pub stop_reason: String,
    pub usage: Usage,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// Throttling, 5xx, timeouts: trying again later may work.
    #[error("the model is unavailable for now: {0}")]
    Retryable(String),
    /// Validation, access denied, unknown model: it will never work.
    #[error("the model refused the request: {0}")]
    Permanent(String),
}

pub trait TextModel: Send + Sync {
    /// Generates the answer, putting its text into `progress` as it comes (a model that does
    /// not stream puts it all at once), and returns it whole with its stop reason and usage.
    fn generate(
        &self,
        request: &ModelRequest,
        progress: &Progress,
    ) -> impl Future<Output = Result<ModelReply, ModelError>> + Send;
}

/// The text of a model call so far, as it streams: the model pushes, the worker watches it
/// and flushes it into the job's record.
#[derive(Debug)]
pub struct Progress {
    text: tokio::sync::watch::Sender<String>,
    /// When the first text came: the model's time to first token.
    first_text_at: std::sync::OnceLock<std::time::Instant>,
}

impl Progress {
    /// A new, empty text and the receiver that sees it grow.
    pub fn channel() -> (Self, tokio::sync::watch::Receiver<String>) {
        let (sender, receiver) = tokio::sync::watch::channel(String::new());
        let progress = Self {
            text: sender,
            first_text_at: std::sync::OnceLock::new(),
        };
        (progress, receiver)
    }

    pub fn push(&self, delta: &str) {
        if !delta.is_empty() {
            self.first_text_at.get_or_init(std::time::Instant::now);
            self.text.send_modify(|text| text.push_str(delta));
        }
    }

    /// When the first text came, if any has.
    pub fn first_text_at(&self) -> Option<std::time::Instant> {
        self.first_text_at.get().copied()
    }

    /// The text so far.
    pub fn text(&self) -> String {
        self.text.borrow().clone()
    }
}

/// Asks the identity provider whether an access token is still valid (not signed out).
pub trait SessionCheck: Send + Sync {
    fn is_active(
        &self,
        access_token: &str,
    ) -> impl Future<Output = Result<bool, Unavailable>> + Send;
}
