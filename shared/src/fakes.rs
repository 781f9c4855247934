//! In-memory fakes of the ports, for fast unit tests of the handlers' decisions (compiled for
//! this crate's tests and with the `fakes` feature only, which only dev-dependencies enable).
//!
//! Each fake is a handle on shared state: a clone shares it, so a test hands one clone to the
//! handler and keeps another to seed, script and inspect. None has a clock of its own; time
//! comes in with the calls, as it does to the adapters. Failures are injected per operation
//! and used up one at a time, so a test says exactly which call fails.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{
    Artifact, Budget, BudgetOverride, Job, JobId, LeaseId, Owner, Period, PeriodKind, PeriodUsage,
    Revision, TextPiece, Transition, Transitioned, format_timestamp,
};
use crate::ports::{
    ArtifactStore, Flushed, Inserted, JobQueue, JobStore, LiveFeed, MAX_EVENTS_PER_PUBLISH,
    ModelError, ModelReply, ModelRequest, Page, PageCursor, Progress, Redelivery, TextModel,
    Unavailable, UsageLedger,
};

/// A poisoned lock only means that another test thread panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Uses up one injected failure of `op`, if any is left.
fn injected<K: Eq + std::hash::Hash>(failures: &mut HashMap<K, u32>, op: K) -> bool {
    match failures.get_mut(&op) {
        Some(left) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    }
}

/// A job store operation, to inject a failure into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    Insert,
    Get,
    List,
    Start,
    Succeed,
    Flush,
    Release,
    Fail,
    Cancel,
    Requeue,
    RecordUsage,
    FindStale,
}

impl StoreOp {
    fn of(transition: &Transition) -> Self {
        match transition {
            Transition::Start { .. } => Self::Start,
            Transition::Succeed { .. } => Self::Succeed,
            Transition::Flush { .. } => Self::Flush,
            Transition::Release { .. } => Self::Release,
            Transition::Fail { .. } => Self::Fail,
            Transition::Cancel { .. } => Self::Cancel,
            Transition::Requeue { .. } => Self::Requeue,
            Transition::RecordUsage { .. } => Self::RecordUsage,
        }
    }
}

/// The job table: a map under one lock, so that every transition is atomic, and applied by
/// [`Job::apply`], the rule the DynamoDB adapter's conditions implement.
#[derive(Clone, Default)]
pub struct InMemoryJobStore {
    state: Arc<Mutex<StoreState>>,
}

#[derive(Default)]
struct StoreState {
    jobs: HashMap<JobId, Job>,
    /// Every version each transition wrote, oldest first.
    history: HashMap<JobId, Vec<Job>>,
    /// The users' ledgers by key, as the table keeps them.
    ledgers: HashMap<String, PeriodUsage>,
    overrides: HashMap<Owner, BudgetOverride>,
    failures: HashMap<StoreOp, u32>,
}

impl InMemoryJobStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `job` in the table as it is, replacing any job with its id: any state, even one no
    /// transition leads to, so that tests can start anywhere.
    pub fn seed(&self, job: Job) {
        lock(&self.state).jobs.insert(job.id, job);
    }

    /// The job as it is now.
    pub fn job(&self, id: JobId) -> Option<Job> {
        lock(&self.state).jobs.get(&id).cloned()
    }

    /// Every version of the job that a transition wrote, oldest first.
    pub fn history(&self, id: JobId) -> Vec<Job> {
        lock(&self.state)
            .history
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// The next call of `op` fails with [`Unavailable`], writing nothing; calling this `n`
    /// times fails the next `n` calls.
    pub fn fail_next(&self, op: StoreOp) {
        *lock(&self.state).failures.entry(op).or_default() += 1;
    }

    /// What [`JobStore::transition`] does, minus injected failures, callable from anywhere
    /// (such as a model call's hook acting as the owner who cancels).
    pub fn apply(&self, id: JobId, transition: &Transition, at: DateTime<Utc>) -> Transitioned {
        let mut state = lock(&self.state);
        let StoreState {
            jobs,
            history,
            ledgers,
            ..
        } = &mut *state;
        let Some(job) = jobs.get_mut(&id) else {
            return Transitioned::Refused(None);
        };
        match job.apply(transition, at) {
            Some(next) => {
                if let Some(settlement) = job.settlement(transition) {
                    for key in &settlement.ledgers {
                        if let Some(ledger) = ledgers.get_mut(key) {
                            ledger.settle(&settlement);
                        }
                    }
                }
                *job = next.clone();
                history.entry(id).or_default().push(next.clone());
                Transitioned::Done(next)
            }
            None => Transitioned::Refused(Some(job.clone())),
        }
    }

    /// The owner stops the job as it is now (see [`Transition::cancel`]).
    pub fn cancel(&self, id: JobId, at: DateTime<Utc>) -> Transitioned {
        let Some(job) = self.job(id) else {
            return Transitioned::Refused(None);
        };
        self.apply(id, &Transition::cancel(&job), at)
    }

    /// The ledger kept under `key` (see [`Period::ledger_key`]), if any.
    pub fn ledger(&self, key: &str) -> Option<PeriodUsage> {
        lock(&self.state).ledgers.get(key).cloned()
    }

    /// The operator sets `owner`'s limits.
    pub fn set_budget_override(&self, owner: &Owner, limits: BudgetOverride) {
        lock(&self.state).overrides.insert(owner.clone(), limits);
    }

    fn check(&self, op: StoreOp) -> Result<(), Unavailable> {
        if injected(&mut lock(&self.state).failures, op) {
            return Err(Unavailable::new(
                "InMemoryJobStore",
                format!("{op:?} failed"),
            ));
        }
        Ok(())
    }
}

impl JobStore for InMemoryJobStore {
    async fn insert(&self, job: &Job, budget: &Budget) -> Result<Inserted, Unavailable> {
        self.check(StoreOp::Insert)?;
        let mut state = lock(&self.state);
        if state.jobs.contains_key(&job.id) {
            return Ok(Inserted::AlreadyExists);
        }
        if let Some(worst_case) = job.reservation {
            let mut reserved = Vec::new();
            for kind in PeriodKind::ALL {
                let period = Period::containing(kind, job.created_at);
                let key = period.ledger_key(&job.owner);
                let mut ledger = (state.ledgers.get(&key).cloned())
                    .unwrap_or_else(|| PeriodUsage::empty(period));
                if let Err(over) = ledger.reserve(&worst_case, budget.limit(kind)) {
                    return Ok(Inserted::OverBudget(over));
                }
                reserved.push((key, ledger));
            }
            state.ledgers.extend(reserved);
        }
        state.jobs.insert(job.id, job.clone());
        Ok(Inserted::Created)
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, Unavailable> {
        self.check(StoreOp::Get)?;
        Ok(self.job(id))
    }

    async fn revision(&self, id: JobId) -> Result<Option<Revision>, Unavailable> {
        self.check(StoreOp::Get)?;
        Ok(self.job(id).map(|job| job.revision()))
    }

    async fn flush(
        &self,
        id: JobId,
        lease: &LeaseId,
        piece: &TextPiece,
        at: DateTime<Utc>,
    ) -> Result<Flushed, Unavailable> {
        let flush = Transition::Flush {
            lease: lease.clone(),
            piece: piece.clone(),
        };
        self.check(StoreOp::of(&flush))?;
        Ok(match self.apply(id, &flush, at) {
            Transitioned::Done(job) => Flushed::Kept {
                watched_until: job.watched_until,
            },
            Transitioned::Refused(current) => Flushed::Lost(current.map(Box::new)),
        })
    }

    /// Newest first by `created_at` (then id, for a stable order), as the owner index sorts.
    async fn list(
        &self,
        owner: &Owner,
        limit: usize,
        after: Option<&PageCursor>,
    ) -> Result<Page, Unavailable> {
        self.check(StoreOp::List)?;
        let state = lock(&self.state);
        let position = |job: &Job| (format_timestamp(job.created_at), job.id);
        let mut jobs: Vec<Job> = state
            .jobs
            .values()
            .filter(|job| job.owner == *owner)
            .filter(|job| {
                after
                    .is_none_or(|cursor| position(job) < (cursor.created_at.clone(), cursor.job_id))
            })
            .cloned()
            .collect();
        jobs.sort_by_key(|job| std::cmp::Reverse(position(job)));
        Ok(Page::of(jobs, limit, false))
    }

    async fn transition(
        &self,
        id: JobId,
        transition: &Transition,
        at: DateTime<Utc>,
    ) -> Result<Transitioned, Unavailable> {
        self.check(StoreOp::of(transition))?;
        Ok(self.apply(id, transition, at))
    }

    async fn watch(
        &self,
        id: JobId,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<bool, Unavailable> {
        self.check(StoreOp::Get)?;
        let mut state = lock(&self.state);
        match state.jobs.get_mut(&id) {
            Some(job) if job.owner == *owner && !job.status.is_terminal() => {
                job.watched_until = Some(until);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Oldest change first.
    async fn find_stale(
        &self,
        unchanged_since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, Unavailable> {
        self.check(StoreOp::FindStale)?;
        let state = lock(&self.state);
        let mut stale: Vec<&Job> = state
            .jobs
            .values()
            .filter(|job| !job.status.is_terminal() && job.updated_at <= unchanged_since)
            .collect();
        stale.sort_by_key(|job| (job.updated_at, job.id));
        Ok(stale.into_iter().take(limit).map(|job| job.id).collect())
    }
}

impl UsageLedger for InMemoryJobStore {
    async fn budget_override(&self, owner: &Owner) -> Result<BudgetOverride, Unavailable> {
        self.check(StoreOp::Get)?;
        Ok(lock(&self.state)
            .overrides
            .get(owner)
            .copied()
            .unwrap_or_default())
    }

    async fn usage(
        &self,
        owner: &Owner,
        periods: &[Period],
    ) -> Result<Vec<PeriodUsage>, Unavailable> {
        self.check(StoreOp::Get)?;
        Ok(periods
            .iter()
            .map(|period| {
                self.ledger(&period.ledger_key(owner))
                    .unwrap_or_else(|| PeriodUsage::empty(period.clone()))
            })
            .collect())
    }
}

/// The artifact bucket: key → artifact.
#[derive(Clone, Default)]
pub struct InMemoryArtifacts {
    state: Arc<Mutex<ArtifactState>>,
}

#[derive(Default)]
struct ArtifactState {
    objects: HashMap<String, Artifact>,
    puts: usize,
    failing_puts: u32,
}

impl InMemoryArtifacts {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<Artifact> {
        lock(&self.state).objects.get(key).cloned()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.state).objects.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Puts that stored an artifact so far, including those deleted since.
    pub fn puts(&self) -> usize {
        lock(&self.state).puts
    }

    /// The next put fails with [`Unavailable`], storing nothing.
    pub fn fail_next_put(&self) {
        lock(&self.state).failing_puts += 1;
    }
}

impl ArtifactStore for InMemoryArtifacts {
    async fn put(&self, key: &str, artifact: &Artifact) -> Result<(), Unavailable> {
        let mut state = lock(&self.state);
        if state.failing_puts > 0 {
            state.failing_puts -= 1;
            return Err(Unavailable::new("InMemoryArtifacts", "put failed"));
        }
        state.objects.insert(key.to_owned(), artifact.clone());
        state.puts += 1;
        Ok(())
    }

    /// Like S3's, removing a key that is not there succeeds.
    async fn delete(&self, key: &str) -> Result<(), Unavailable> {
        lock(&self.state).objects.remove(key);
        Ok(())
    }
}

/// One scripted model call.
#[derive(Debug)]
pub enum Step {
    /// The call ends with this (an answer's text all at once).
    Reply(Result<ModelReply, ModelError>),
    /// The call streams `chunks`, `pause` apart, then ends with `end` (an answer's text is
    /// the chunks).
    Stream {
        chunks: Vec<String>,
        pause: Duration,
        end: Result<ModelReply, ModelError>,
    },
    /// The call never ends (a model slower than the invocation allows).
    Hang,
}

type Hook = Arc<dyn Fn(&ModelRequest) + Send + Sync>;

/// A model that answers from a script, in order, and records what it was asked. A call with
/// nothing left in the script panics: the test did not expect it.
#[derive(Clone, Default)]
pub struct ScriptedModel {
    state: Arc<Mutex<ModelState>>,
}

#[derive(Default)]
struct ModelState {
    script: VecDeque<Step>,
    requests: Vec<ModelRequest>,
    /// Chunks streamed so far, over all calls.
    streamed: usize,
    during_call: Option<Hook>,
}

impl ScriptedModel {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the result of the next unscripted call.
    pub fn push(&self, result: Result<ModelReply, ModelError>) {
        lock(&self.state).script.push_back(Step::Reply(result));
    }

    /// Adds a call that streams `chunks`, `pause` apart, then ends with `end`.
    pub fn push_stream(
        &self,
        chunks: &[impl AsRef<str>],
        pause: Duration,
        end: Result<ModelReply, ModelError>,
    ) {
        lock(&self.state).script.push_back(Step::Stream {
            chunks: chunks
                .iter()
                .map(|chunk| chunk.as_ref().to_owned())
                .collect(),
            pause,
            end,
        });
    }

    /// Adds a call that never ends.
    pub fn push_hang(&self) {
        lock(&self.state).script.push_back(Step::Hang);
    }

    /// Runs `hook` inside every call, before it ends: what happens elsewhere while the model
    /// works (the owner cancelling, another attempt taking over).
    pub fn during_call(&self, hook: impl Fn(&ModelRequest) + Send + Sync + 'static) {
        lock(&self.state).during_call = Some(Arc::new(hook));
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        lock(&self.state).requests.len()
    }

    /// What each call asked, in order.
    pub fn requests(&self) -> Vec<ModelRequest> {
        lock(&self.state).requests.clone()
    }

    /// Chunks of streamed answers sent so far (a stopped stream sends no more).
    pub fn streamed(&self) -> usize {
        lock(&self.state).streamed
    }

    /// Scripted calls not made (yet).
    pub fn unused(&self) -> usize {
        lock(&self.state).script.len()
    }
}

/// A reply of `text`, ended normally, with some usage.
pub fn model_reply(text: &str) -> ModelReply {
    ModelReply {
        text: text.to_owned(),
        stop_reason: "end_turn".to_owned(),
        usage: crate::domain::Usage {
            input_tokens: 7,
            output_tokens: 11,
        },
    }
}

impl TextModel for ScriptedModel {
    async fn generate(
        &self,
        request: &ModelRequest,
        progress: &Progress,
    ) -> Result<ModelReply, ModelError> {
        let (step, hook) = {
            let mut state = lock(&self.state);
            state.requests.push(request.clone());
            let step = state.script.pop_front();
            (step, state.during_call.clone())
        };
        let step = step.unwrap_or_else(|| panic!("unexpected model call: {request:?}"));
        if let Some(hook) = hook {
            hook(request);
        }
        match step {
            Step::Reply(result) => {
                if let Ok(reply) = &result {
                    progress.push(&reply.text);
                }
                result
            }
            Step::Stream { chunks, pause, end } => {
                for chunk in &chunks {
                    progress.push(chunk);
                    lock(&self.state).streamed += 1;
                    tokio::time::sleep(pause).await;
                }
                end.map(|reply| ModelReply {
                    text: chunks.concat(),
                    ..reply
                })
            }
            Step::Hang => std::future::pending().await,
        }
    }
}

/// Records when each message was asked to come back: `(receipt handle, delay)`.
#[derive(Clone, Default)]
pub struct RecordedRedelivery {
    state: Arc<Mutex<RedeliveryState>>,
}

#[derive(Default)]
struct RedeliveryState {
    calls: Vec<(String, Duration)>,
    failing: u32,
}

impl RecordedRedelivery {
    pub fn new() -> Self {
        Self::default()
    }

    /// The redeliveries asked for and granted, in order (failed ones are not recorded).
    pub fn calls(&self) -> Vec<(String, Duration)> {
        lock(&self.state).calls.clone()
    }

    /// The next call fails with [`Unavailable`].
    pub fn fail_next(&self) {
        lock(&self.state).failing += 1;
    }
}

impl Redelivery for RecordedRedelivery {
    async fn redeliver_after(
        &self,
        receipt_handle: &str,
        delay: Duration,
    ) -> Result<(), Unavailable> {
        let mut state = lock(&self.state);
        if state.failing > 0 {
            state.failing -= 1;
            return Err(Unavailable::new("RecordedRedelivery", "failed"));
        }
        state.calls.push((receipt_handle.to_owned(), delay));
        Ok(())
    }
}

/// Records what is published on each channel, in order.
#[derive(Clone, Default)]
pub struct RecordedFeed {
    state: Arc<Mutex<FeedState>>,
}

#[derive(Default)]
struct FeedState {
    published: Vec<(String, Vec<String>)>,
    failing: u32,
}

impl RecordedFeed {
    pub fn new() -> Self {
        Self::default()
    }

    /// Each publish so far: its channel and its events (failed publishes are not recorded).
    pub fn published(&self) -> Vec<(String, Vec<String>)> {
        lock(&self.state).published.clone()
    }

    /// The next publish fails with [`Unavailable`].
    pub fn fail_next(&self) {
        lock(&self.state).failing += 1;
    }
}

impl LiveFeed for RecordedFeed {
    async fn publish(&self, channel: &str, events: &[String]) -> Result<(), Unavailable> {
        let mut state = lock(&self.state);
        if state.failing > 0 {
            state.failing -= 1;
            return Err(Unavailable::new("Event API", "injected failure"));
        }
        assert!(events.len() <= MAX_EVENTS_PER_PUBLISH, "too many events");
        state.published.push((channel.to_owned(), events.to_vec()));
        Ok(())
    }
}

/// Records the jobs sent to the queue, in order.
#[derive(Clone, Default)]
pub struct RecordedQueue {
    state: Arc<Mutex<QueueState>>,
}

#[derive(Default)]
struct QueueState {
    sent: Vec<JobId>,
    failing: u32,
}

impl RecordedQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// The jobs sent so far (failed sends are not recorded).
    pub fn sent(&self) -> Vec<JobId> {
        lock(&self.state).sent.clone()
    }

    /// The next send fails with [`Unavailable`].
    pub fn fail_next(&self) {
        lock(&self.state).failing += 1;
    }
}

impl JobQueue for RecordedQueue {
    async fn enqueue(&self, id: JobId) -> Result<(), Unavailable> {
        let mut state = lock(&self.state);
        if state.failing > 0 {
            state.failing -= 1;
            return Err(Unavailable::new("RecordedQueue", "send failed"));
        }
        state.sent.push(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration as Span;

    use super::*;
    use crate::domain::{
        ArtifactResponse, FailureCode, GenerateRequest, JobFailure, JobStatus, Lease, Usage,
    };

    fn job(owner: &str, created_at: DateTime<Utc>) -> Job {
        let request = GenerateRequest::new("hi", "m", 1);
        Job::queued(Owner::new(owner), request, None, created_at, Span::days(1))
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_860_000 + seconds, 0).unwrap()
    }

    #[tokio::test]
    async fn the_store_applies_transitions_as_job_apply_says_and_refuses_with_the_job() {
        let store = InMemoryJobStore::new();
        let queued = job("o", at(0));
        assert_eq!(
            store.insert(&queued, &Budget::default()).await.unwrap(),
            Inserted::Created
        );
        assert_eq!(
            store.insert(&queued, &Budget::default()).await.unwrap(),
            Inserted::AlreadyExists
        );

        let start = Transition::Start {
            lease: Lease::new(at(100)),
            max_attempts: 3,
        };
        let started = queued.apply(&start, at(1)).unwrap();
        assert_eq!(
            store.transition(queued.id, &start, at(1)).await.unwrap(),
            Transitioned::Done(started.clone())
        );
        assert_eq!(store.get(queued.id).await.unwrap(), Some(started.clone()));

        // A second start, while the first lease lives: refused, nothing written.
        let again = Transition::Start {
            lease: Lease::new(at(200)),
            max_attempts: 3,
        };
        assert_eq!(
            store.transition(queued.id, &again, at(2)).await.unwrap(),
            Transitioned::Refused(Some(started.clone()))
        );
        assert_eq!(store.job(queued.id), Some(started));

        let missing = JobId::random();
        assert_eq!(
            store
                .transition(missing, &Transition::Cancel { running: false }, at(3))
                .await
                .unwrap(),
            Transitioned::Refused(None)
        );
        assert_eq!(store.job(missing), None, "no record is conjured up");
    }

    #[tokio::test]
    async fn injected_store_failures_hit_their_operation_once_and_write_nothing() {
        let store = InMemoryJobStore::new();
        let queued = job("o", at(0));
        store.fail_next(StoreOp::Insert);
        assert!(store.insert(&queued, &Budget::default()).await.is_err());
        assert_eq!(store.job(queued.id), None);
        assert_eq!(
            store.insert(&queued, &Budget::default()).await.unwrap(),
            Inserted::Created
        );

        store.fail_next(StoreOp::Cancel);
        let fail = Transition::Fail {
            lease: None,
            failure: JobFailure::new(FailureCode::EnqueueFailed, "no"),
        };
        store.fail_next(StoreOp::Get);
        assert!(store.get(queued.id).await.is_err());
        assert!(
            store
                .transition(queued.id, &Transition::cancel(&queued), at(1))
                .await
                .is_err()
        );
        assert_eq!(
            store.job(queued.id),
            Some(queued.clone()),
            "nothing written"
        );
        let failed = store.transition(queued.id, &fail, at(2)).await.unwrap();
        assert!(matches!(failed, Transitioned::Done(job) if job.status == JobStatus::Failed));
    }

    #[tokio::test]
    async fn the_store_lists_an_owners_jobs_newest_first_in_pages() {
        let store = InMemoryJobStore::new();
        let jobs: Vec<Job> = (0..5).map(|i| job("a", at(i))).collect();
        for job in &jobs {
            store.seed(job.clone());
        }
        store.seed(job("b", at(10)));
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list(&Owner::new("a"), 2, cursor.as_ref())
                .await
                .unwrap();
            assert!(page.jobs.len() <= 2);
            seen.extend(page.jobs.iter().map(|job| job.id));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let newest_first: Vec<JobId> = jobs.iter().rev().map(|job| job.id).collect();
        assert_eq!(seen, newest_first);
    }

    #[tokio::test]
    async fn artifacts_are_put_and_deleted_and_a_failed_put_stores_nothing() {
        let artifacts = InMemoryArtifacts::new();
        let job = job("o", at(0));
        let response = ArtifactResponse {
            text: "t".into(),
            stop_reason: "end_turn".into(),
        };
        let artifact = Artifact::new(&job, response, Usage::default(), None, at(1), 5);
        artifacts.fail_next_put();
        assert!(artifacts.put("k", &artifact).await.is_err());
        assert!(artifacts.keys().is_empty());
        artifacts.put("k", &artifact).await.unwrap();
        assert_eq!(artifacts.get("k"), Some(artifact));
        artifacts.delete("k").await.unwrap();
        artifacts.delete("k").await.unwrap();
        assert!(artifacts.keys().is_empty());
        assert_eq!(artifacts.puts(), 1, "the failed put is not counted");
    }

    #[tokio::test]
    async fn the_model_answers_from_its_script_in_order_and_runs_its_hook() {
        let model = ScriptedModel::new();
        model.push(Ok(model_reply("one")));
        model.push(Err(ModelError::Retryable("slow down".into())));
        let hooked = Arc::new(Mutex::new(0));
        let counter = hooked.clone();
        model.during_call(move |_| *lock(&counter) += 1);
        let request = ModelRequest {
            model: "m".into(),
            prompt: "p".into(),
            system: None,
            max_tokens: 1,
            temperature: None,
        };
        let (progress, text) = Progress::channel();
        assert_eq!(
            model.generate(&request, &progress).await,
            Ok(model_reply("one"))
        );
        assert_eq!(*text.borrow(), "one", "the answer's text, all at once");
        assert_eq!(
            model.generate(&request, &Progress::channel().0).await,
            Err(ModelError::Retryable("slow down".into()))
        );
        model.push_stream(&["t", "w", "o"], Duration::ZERO, Ok(model_reply("ignored")));
        let (progress, text) = Progress::channel();
        let streamed = model.generate(&request, &progress).await.unwrap();
        assert_eq!(streamed.text, "two", "a streamed answer is its chunks");
        assert_eq!(*text.borrow(), "two");
        assert_eq!(model.calls(), 3);
        assert_eq!(model.unused(), 0);
        assert_eq!(
            model.requests(),
            vec![request.clone(), request.clone(), request]
        );
        assert_eq!(*lock(&hooked), 3);
    }

    #[tokio::test]
    async fn redeliveries_are_recorded_unless_they_fail() {
        let queue = RecordedRedelivery::new();
        queue.fail_next();
        assert!(
            queue
                .redeliver_after("r1", Duration::from_secs(1))
                .await
                .is_err()
        );
        queue
            .redeliver_after("r2", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            queue.calls(),
            vec![("r2".to_owned(), Duration::from_secs(2))]
        );
    }
}
