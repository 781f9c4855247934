//! The worker's decisions against in-memory fakes of its ports: for each state a job can be
//! delivered in and each result the model can give, what becomes of the message (acknowledged
//! or retried, and when it comes back), of the job's record, of its artifact, and how many
//! model calls it cost. The same worker runs against moto in tests/tests/pipeline; these
//! tests cover every case, fast and without any service.

use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use lambda_runtime::{Context, LambdaEvent};
use pipeline::domain::{
    Budget, Completion, FailureCode, GenerateRequest, Job, JobFailure, JobId, JobStatus, Lease,
    LeaseId, NanoUsd, Owner, Revision, TextPiece, Transition, Transitioned, Usage,
};
use pipeline::fakes::{
    InMemoryArtifacts, InMemoryJobStore, RecordedFeed, RecordedRedelivery, ScriptedModel, StoreOp,
    model_reply,
};
use pipeline::ports::{
    Flushed, Inserted, JobStore, ModelError, ModelRequest, Page, PageCursor, Unavailable,
};
use worker::{Settings, Worker};

const BASE: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_millis(400);
const STREAM_FLUSH_MS: u64 = 20;
const ANSWER: &str = "Hi there.";
const REFUSAL: &str = "The provided model identifier is invalid.";
const THROTTLED: &str = "Too many requests";

fn settings(max_attempts: u32) -> Settings {
    Settings {
        max_attempts,
        write_reserve: Duration::from_secs(1),
        retry_base: BASE,
        retry_cap: CAP,
        stream_flush: Duration::from_millis(STREAM_FLUSH_MS),
        live_interval: Duration::from_millis(20),
        prices: std::sync::Arc::new(pipeline::domain::PriceTable::defaults()),
    }
}

/// The fakes, and a worker on clones of them.
struct World<S = InMemoryJobStore> {
    store: InMemoryJobStore,
    artifacts: InMemoryArtifacts,
    model: ScriptedModel,
    queue: RecordedRedelivery,
    feed: RecordedFeed,
    worker: Worker<S, InMemoryArtifacts, ScriptedModel, RecordedRedelivery, RecordedFeed>,
}

impl World {
    fn new(max_attempts: u32) -> Self {
        let store = InMemoryJobStore::new();
        World::around(store.clone(), store, max_attempts)
    }
}

impl<S: JobStore> World<S> {
    /// A worker on `worker_store`, which wraps `store`.
    fn around(store: InMemoryJobStore, worker_store: S, max_attempts: u32) -> Self {
        let (artifacts, model, queue, feed) = Default::default();
        let worker = Worker::new(
            worker_store,
            InMemoryArtifacts::clone(&artifacts),
            ScriptedModel::clone(&model),
            RecordedRedelivery::clone(&queue),
            settings(max_attempts),
        )
        .with_feed(RecordedFeed::clone(&feed));
        Self {
            store,
            artifacts,
            model,
            queue,
            feed,
            worker,
        }
    }

    async fn deliver(&self, messages: Vec<SqsMessage>) -> Vec<String> {
        let response = self
            .worker
            .handle(invocation(messages, Some(Duration::from_secs(30))))
            .await;
        retried(&response)
    }
}

fn retried(response: &SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

/// An invocation with `time_left` until its deadline (`None`: no deadline).
fn invocation(records: Vec<SqsMessage>, time_left: Option<Duration>) -> LambdaEvent<SqsEvent> {
    let mut event = SqsEvent::default();
    event.records = records;
    let mut context = Context::default();
    context.request_id = "request-1".into();
    if let Some(time_left) = time_left {
        let deadline = Utc::now() + time_left;
        context.deadline = u64::try_from(deadline.timestamp_millis()).unwrap();
    }
    LambdaEvent::new(event, context)
}

/// Message `id` for `job_id`, its receipt handle `receipt-<id>`.
fn message(job_id: JobId, id: &str, receive_count: u32) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.message_id = Some(id.into());
    message.receipt_handle = Some(format!("receipt-{id}"));
    message.body = Some(format!(r#"{{"job_id":"{job_id}"}}"#));
    message
        .attributes
        .insert("ApproximateReceiveCount".into(), receive_count.to_string());
    message
}

fn queued_job() -> Job {
    let request = GenerateRequest {
        temperature: Some(0.5),
        system: Some("Be brief.".into()),
        ..GenerateRequest::new("Say hi", "amazon.nova-micro-v1:0", 64)
    };
    let created = Utc::now() - chrono::Duration::minutes(1);
    let mut job = Job::queued(
        Owner::new("user-a"),
        request,
        None,
        created,
        chrono::Duration::days(1),
    );
    job.seq = 3;
    job
}

/// What the model is asked for `job`.
fn model_request(job: &Job) -> ModelRequest {
    ModelRequest {
        model: job.request.model.clone(),
        prompt: job.request.prompt.clone(),
        system: job.request.system.clone(),
        max_tokens: job.request.max_tokens,
        temperature: job.request.temperature,
    }
}

/// How a job is when its message is delivered.
#[derive(Clone, Copy, Debug)]
enum Before {
    Queued,
    /// `running` under another attempt's lease, live for another minute.
    HeldByAnother,
    /// `running` under another attempt's lease, which ended a second ago.
    HeldExpired,
    /// `running` with no lease: an earlier attempt gave it back.
    Released,
    Succeeded,
    Failed,
    Cancelled,
    /// No record (expired or deleted).
    Missing,
}

impl Before {
    fn job(self, attempts: u32) -> Option<Job> {
        let mut job = queued_job();
        job.attempts = attempts;
        let now = Utc::now();
        match self {
            Self::Queued => {}
            Self::HeldByAnother => {
                job.status = JobStatus::Running;
                job.lease = Some(Lease::new(now + chrono::Duration::seconds(60)));
            }
            Self::HeldExpired => {
                job.status = JobStatus::Running;
                job.lease = Some(Lease::new(now - chrono::Duration::seconds(1)));
            }
            Self::Released => job.status = JobStatus::Running,
            Self::Succeeded => {
                job.status = JobStatus::Succeeded;
                job.completed_at = Some(now);
                job.completion = Some(Completion {
                    output: "earlier".into(),
                    stop_reason: "end_turn".into(),
                    usage: Usage::default(),
                    artifact_key: "artifacts/user-a/earlier.json".into(),
                    cost: None,
                });
            }
            Self::Failed => {
                job.status = JobStatus::Failed;
                job.completed_at = Some(now);
                job.failure = Some(JobFailure::new(FailureCode::ModelError, "earlier"));
            }
            Self::Cancelled => {
                job.status = JobStatus::Cancelled;
                job.completed_at = Some(now);
            }
            Self::Missing => return None,
        }
        Some(job)
    }
}

/// What the model does when called.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reply {
    Answer,
    Retryable,
    Permanent,
    /// No call is expected: none is scripted, so a call fails the test.
    NoCall,
}

impl Reply {
    fn script(self, model: &ScriptedModel) {
        match self {
            Self::Answer => model.push(Ok(model_reply(ANSWER))),
            Self::Retryable => model.push(Err(ModelError::Retryable(THROTTLED.into()))),
            Self::Permanent => model.push(Err(ModelError::Permanent(REFUSAL.into()))),
            Self::NoCall => {}
        }
    }
}

/// When a retried message is to come back.
#[derive(Clone, Copy, Debug)]
enum Back {
    /// It is not asked to come back (acknowledged, or left to the visibility timeout).
    Never,
    /// A backoff between these many milliseconds.
    Within(u64, u64),
    /// One second after the other attempt's lease ends.
    AfterTheLease,
}

struct Case {
    name: &'static str,
    before: Before,
    attempts: u32,
    max_attempts: u32,
    reply: Reply,
    // What is expected:
    retried: bool,
    /// `None`: still no record.
    status: Option<JobStatus>,
    error: Option<FailureCode>,
    attempts_after: u32,
    /// Changes of the record (how much `seq` grows).
    writes: u64,
    calls: usize,
    artifact: bool,
    back: Back,
}

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Back::*;
    use Before::*;
    use JobStatus::{Cancelled as C, Failed as F, Running as R, Succeeded as S};
    use FailureCode::*;
    use Reply::*;
    let case = |name, before, attempts, max_attempts, reply, retried, status, error, attempts_after, writes, calls, artifact, back| Case {
        name, before, attempts, max_attempts, reply, retried, status, error, attempts_after, writes, calls, artifact, back,
    };
    vec![
        //   name                                                   before         att max reply      retried status   error                   att' writes calls artifact back
        case("a queued job is answered",                            Queued,        0,  3,  Answer,    false, Some(S), None,                   1,   2,     1,    true,    Never),
        case("a queued job's throttled call is retried",            Queued,        0,  3,  Retryable, true,  Some(R), None,                   1,   2,     1,    false,   Within(50, 100)),
        case("a queued job's throttled only call fails it",         Queued,        0,  1,  Retryable, false, Some(F), Some(ModelUnavailable), 1,   2,     1,    false,   Never),
        case("a queued job's refused call fails it",                Queued,        0,  3,  Permanent, false, Some(F), Some(ModelError),       1,   2,     1,    false,   Never),
        case("a released job is answered",                          Released,      1,  3,  Answer,    false, Some(S), None,                   2,   2,     1,    true,    Never),
        case("a released job's throttled call is retried, later",   Released,      1,  3,  Retryable, true,  Some(R), None,                   2,   2,     1,    false,   Within(100, 200)),
        case("a released job's last throttled call fails it",       Released,      2,  3,  Retryable, false, Some(F), Some(ModelUnavailable), 3,   2,     1,    false,   Never),
        case("a released job's refused call fails it",              Released,      1,  3,  Permanent, false, Some(F), Some(ModelError),       2,   2,     1,    false,   Never),
        case("the backoff stops growing at the cap",                Released,      4,  10, Retryable, true,  Some(R), None,                   5,   2,     1,    false,   Within(200, 400)),
        case("an expired lease's job is taken over and answered",   HeldExpired,   1,  3,  Answer,    false, Some(S), None,                   2,   2,     1,    true,    Never),
        case("an expired lease's job is taken over and retried",    HeldExpired,   1,  3,  Retryable, true,  Some(R), None,                   2,   2,     1,    false,   Within(100, 200)),
        case("an expired lease's job fails on its last call",       HeldExpired,   2,  3,  Permanent, false, Some(F), Some(ModelError),       3,   2,     1,    false,   Never),
        case("a job held by another attempt is left to it",         HeldByAnother, 1,  3,  NoCall,    true,  Some(R), None,                   1,   0,     0,    false,   AfterTheLease),
        case("a held job with no call left is still left to it",    HeldByAnother, 3,  3,  NoCall,    true,  Some(R), None,                   3,   0,     0,    false,   AfterTheLease),
        case("a released job with no call left fails",              Released,      3,  3,  NoCall,    false, Some(F), Some(WorkerError),      3,   1,     0,    false,   Never),
        case("an expired lease's job with no call left fails",      HeldExpired,   3,  3,  NoCall,    false, Some(F), Some(WorkerError),      3,   1,     0,    false,   Never),
        case("a succeeded job is left alone",                       Succeeded,     1,  3,  NoCall,    false, Some(S), None,                   1,   0,     0,    false,   Never),
        case("a failed job is left alone",                          Failed,        1,  3,  NoCall,    false, Some(F), Some(ModelError),       1,   0,     0,    false,   Never),
        case("a cancelled queued job is never started",             Cancelled,     0,  3,  NoCall,    false, Some(C), None,                   0,   0,     0,    false,   Never),
        case("a cancelled running job is left alone",               Cancelled,     2,  3,  NoCall,    false, Some(C), None,                   2,   0,     0,    false,   Never),
        case("a missing job is acknowledged",                       Missing,       0,  3,  NoCall,    false, None,    None,                   0,   0,     0,    false,   Never),
    ]
}

/// Checks a failed job's message against its code.
fn assert_failure_message(name: &str, failure: &JobFailure, code: FailureCode, attempts: u32) {
    let message = &failure.message;
    match code {
        FailureCode::ModelUnavailable => {
            assert!(
                message.contains(&format!("all {attempts} calls")),
                "{name}: {message}"
            );
            assert!(
                message.contains(THROTTLED),
                "{name}: names the last error: {message}"
            );
        }
        FailureCode::ModelError => {}
        FailureCode::WorkerError => {
            assert!(
                message.contains(&format!("after {attempts} model calls")),
                "{name}: {message}"
            )
        }
        FailureCode::EnqueueFailed => panic!("{name}: the worker never fails an enqueue"),
    }
}

/// Checks that the only artifact is the one `job`'s record names, and that they agree.
fn assert_artifact_matches(name: &str, artifacts: &InMemoryArtifacts, job: &Job) {
    let completion = job
        .completion
        .as_ref()
        .expect("a succeeded job has its completion");
    assert_eq!(
        artifacts.keys(),
        vec![completion.artifact_key.clone()],
        "{name}: the record names the only artifact"
    );
    let prefix = format!("artifacts/user-a/{}/", job.id);
    assert!(
        completion.artifact_key.starts_with(&prefix) && completion.artifact_key.ends_with(".json"),
        "{name}"
    );
    let artifact = artifacts.get(&completion.artifact_key).unwrap();
    assert_eq!(artifact.response.text, completion.output, "{name}");
    assert_eq!(
        artifact.response.stop_reason, completion.stop_reason,
        "{name}"
    );
    assert_eq!(artifact.usage, completion.usage, "{name}");
    // Amazon Nova Micro's shipped price: $0.000035 in and $0.00014 out per 1,000 tokens.
    let reply_usage = model_reply(ANSWER).usage;
    let cost = NanoUsd(reply_usage.input_tokens * 35 + reply_usage.output_tokens * 140);
    assert_eq!(
        completion.cost,
        Some(cost),
        "{name}: the job's cost at its model's price"
    );
    assert_eq!(artifact.cost_usd, Some(cost.as_usd()), "{name}");
    assert_eq!(artifact.job_id, job.id.to_string(), "{name}");
    assert_eq!(artifact.request.prompt, job.request.prompt, "{name}");
    let reply = model_reply(ANSWER);
    assert_eq!(
        (completion.output.as_str(), completion.usage),
        (ANSWER, reply.usage),
        "{name}"
    );
}

#[tokio::test]
async fn every_state_and_model_result_is_decided_as_the_lifecycle_says() {
    for case in cases() {
        let name = case.name;
        let world = World::new(case.max_attempts);
        let before = case.before.job(case.attempts);
        let job_id = before.as_ref().map_or_else(JobId::random, |job| job.id);
        if let Some(job) = &before {
            world.store.seed(job.clone());
        }
        case.reply.script(&world.model);

        let sent = Utc::now();
        let retried = world.deliver(vec![message(job_id, "m-1", 1)]).await;
        let answered = Utc::now();

        let expected: &[&str] = if case.retried { &["m-1"] } else { &[] };
        assert_eq!(retried, expected, "{name}: retried");
        let after = world.store.job(job_id);
        assert_eq!(after.as_ref().map(|job| job.status), case.status, "{name}");
        assert_eq!(world.model.calls(), case.calls, "{name}: model calls");
        assert_eq!(
            world.model.unused(),
            0,
            "{name}: the scripted reply was used"
        );
        if let Some(before) = &before {
            assert!(
                world
                    .model
                    .requests()
                    .iter()
                    .all(|asked| *asked == model_request(before)),
                "{name}: the model gets the job's request"
            );
        }
        match &world.queue.calls()[..] {
            [] => assert!(
                matches!(case.back, Back::Never),
                "{name}: no redelivery asked"
            ),
            [(handle, delay)] => {
                assert_eq!(handle, "receipt-m-1", "{name}");
                assert!(
                    case.retried,
                    "{name}: only a retried message is redelivered"
                );
                match case.back {
                    Back::Never => panic!("{name}: redelivered after {delay:?}"),
                    Back::Within(low, high) => assert!(
                        (Duration::from_millis(low)..=Duration::from_millis(high)).contains(delay),
                        "{name}: back after {delay:?}, not within {low}..={high} ms"
                    ),
                    Back::AfterTheLease => {
                        let ends = before
                            .as_ref()
                            .and_then(|job| job.lease.as_ref())
                            .unwrap()
                            .expires_at;
                        let second = chrono::Duration::seconds(1);
                        let earliest = (ends - answered + second).to_std().unwrap();
                        let latest = (ends - sent + second).to_std().unwrap();
                        assert!(
                            (earliest..=latest).contains(delay),
                            "{name}: back after {delay:?}, not a second after the lease ends ({earliest:?}..={latest:?})"
                        );
                    }
                }
            }
            calls => panic!("{name}: {calls:?}"),
        }

        let (Some(before), Some(after)) = (before, after) else {
            assert!(world.artifacts.keys().is_empty(), "{name}");
            continue;
        };
        if before.status.is_terminal() || case.writes == 0 {
            assert_eq!(after, before, "{name}: the record is untouched");
        }
        assert_eq!(after.attempts, case.attempts_after, "{name}: attempts");
        assert_eq!(after.seq, before.seq + case.writes, "{name}: writes");
        assert_eq!(
            after.completed_at.is_some(),
            after.status.is_terminal(),
            "{name}"
        );
        if after.status.is_terminal() || case.writes > 0 {
            assert_eq!(after.lease, None, "{name}: no lease is left behind");
        }
        assert_eq!(
            after.failure.as_ref().map(|failure| failure.code.as_str()),
            case.error.map(FailureCode::as_str),
            "{name}"
        );
        if let (Some(failure), Some(code), true) = (&after.failure, case.error, case.writes > 0) {
            assert_failure_message(name, failure, code, case.attempts_after);
            if code == FailureCode::ModelError {
                assert_eq!(failure.message, REFUSAL, "{name}: the model's message");
            }
        }
        assert_eq!(
            world.artifacts.keys().len(),
            usize::from(case.artifact),
            "{name}: artifacts"
        );
        if case.artifact {
            assert_artifact_matches(name, &world.artifacts, &after);
        }
    }
}

/// The owner cancels while the model works: whatever the model then says, the attempt's
/// next write is refused, the job stays cancelled, and no artifact is left; an answer's use is
/// recorded on the cancelled job.
#[tokio::test]
async fn a_cancellation_during_the_model_call_stops_the_attempt_at_its_next_write() {
    for reply in [Reply::Answer, Reply::Retryable, Reply::Permanent] {
        let world = World::new(3);
        let job = queued_job();
        world.store.seed(job.clone());
        reply.script(&world.model);
        let owner = world.store.clone();
        let id = job.id;
        world.model.during_call(move |_| {
            let cancelled = owner.cancel(id, Utc::now());
            assert!(
                matches!(cancelled, Transitioned::Done(_)),
                "cancelled while running"
            );
        });

        let retried = world.deliver(vec![message(id, "m-1", 1)]).await;

        assert!(retried.is_empty(), "{reply:?}: acknowledged");
        let after = world.store.job(id).unwrap();
        assert_eq!(after.status, JobStatus::Cancelled, "{reply:?}");
        assert_eq!(
            (after.completion, after.failure, after.lease),
            (None, None, None),
            "{reply:?}"
        );
        assert_eq!(after.attempts, 1, "{reply:?}");
        let answered = reply == Reply::Answer;
        assert_eq!(
            after.seq,
            job.seq + 2 + u64::from(answered),
            "{reply:?}: start, cancel, and the use of a call that ended after all"
        );
        let reported = model_reply(ANSWER).usage;
        assert_eq!(
            after.recorded_usage.map(|used| used.usage),
            answered.then_some(reported),
            "{reply:?}: the cancelled job is charged what its call used"
        );
        assert_eq!(world.model.calls(), 1, "{reply:?}");
        let puts = usize::from(reply == Reply::Answer);
        assert_eq!(
            world.artifacts.puts(),
            puts,
            "{reply:?}: the answer was written first"
        );
        assert!(
            world.artifacts.keys().is_empty(),
            "{reply:?}: and then removed"
        );
        assert!(world.queue.calls().is_empty(), "{reply:?}");
    }
}

/// While the model works, the job is this attempt's: its lease lasts until the invocation's
/// deadline and 5 s more (15 min with no deadline), and the call is counted.
#[tokio::test]
async fn the_attempt_holds_the_job_until_the_invocation_can_have_ended() {
    for time_left in [Some(Duration::from_secs(30)), None] {
        let world = World::new(3);
        let job = queued_job();
        world.store.seed(job.clone());
        world.model.push(Ok(model_reply(ANSWER)));
        let store = world.store.clone();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let during = seen.clone();
        world
            .model
            .during_call(move |_| *during.lock().unwrap() = store.job(job.id));

        let sent = Utc::now();
        let event = invocation(vec![message(job.id, "m-1", 1)], time_left);
        let deadline = event.context.deadline;
        let response = world.worker.handle(event).await;
        let answered = Utc::now();

        assert!(response.batch_item_failures.is_empty());
        let running = seen.lock().unwrap().take().expect("the model was called");
        assert_eq!(running.status, JobStatus::Running);
        assert_eq!(running.attempts, 1);
        let lease = running.lease.expect("held while the model works");
        let extra = chrono::Duration::seconds(5);
        match time_left {
            Some(_) => {
                let deadline = DateTime::from_timestamp_millis(deadline as i64).unwrap();
                assert_eq!(lease.expires_at, deadline + extra);
            }
            None => {
                let most = chrono::Duration::minutes(15) + extra;
                assert!((sent + most..=answered + most).contains(&lease.expires_at));
            }
        }
        let after = world.store.job(job.id).unwrap();
        assert_eq!(after.status, JobStatus::Succeeded);
        assert_eq!(
            after.completion.unwrap().artifact_key,
            job.artifact_key(1),
            "the first attempt's own artifact key"
        );
    }
}

/// A model still working when only the write reserve is left is abandoned: a retryable
/// failure, the job given back.
#[tokio::test]
async fn a_model_call_that_outlasts_the_invocation_is_retried() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    world.model.push_hang();
    // Half a second left, less than the 1 s write reserve: no time for the model at all.
    let event = invocation(
        vec![message(job.id, "m-1", 1)],
        Some(Duration::from_millis(500)),
    );
    // (A guard, not a measure: a worker that waited for the model would hang the test.)
    let response = tokio::time::timeout(Duration::from_secs(10), world.worker.handle(event))
        .await
        .expect("the call is abandoned at once, not awaited");

    assert_eq!(retried(&response), vec!["m-1"]);
    let after = world.store.job(job.id).unwrap();
    assert_eq!(
        (after.status, after.attempts, after.lease),
        (JobStatus::Running, 1, None)
    );
    assert_eq!(world.model.calls(), 1);
    let [(_, delay)] = world.queue.calls()[..] else {
        panic!("{:?}", world.queue.calls())
    };
    assert!((BASE / 2..=BASE).contains(&delay), "{delay:?}");
}

/// A failed artifact write gives the job back for another attempt: no job succeeds without
/// its artifact.
#[tokio::test]
async fn an_artifact_that_cannot_be_written_releases_the_job_for_a_retry() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    world.model.push(Ok(model_reply(ANSWER)));
    world.artifacts.fail_next_put();

    assert_eq!(
        world.deliver(vec![message(job.id, "m-1", 1)]).await,
        vec!["m-1"]
    );
    let after = world.store.job(job.id).unwrap();
    assert_eq!(
        (after.status, after.attempts, after.lease),
        (JobStatus::Running, 1, None),
        "released"
    );
    assert_eq!(after.completion, None);
    assert!(world.artifacts.keys().is_empty());
    let [(_, delay)] = world.queue.calls()[..] else {
        panic!("{:?}", world.queue.calls())
    };
    assert!((BASE / 2..=BASE).contains(&delay), "{delay:?}");

    // The message comes back: a second call, and this time the artifact is written.
    world.model.push(Ok(model_reply(ANSWER)));
    assert!(
        world
            .deliver(vec![message(job.id, "m-1", 2)])
            .await
            .is_empty()
    );
    let after = world.store.job(job.id).unwrap();
    assert_eq!((after.status, after.attempts), (JobStatus::Succeeded, 2));
    assert_artifact_matches("second delivery", &world.artifacts, &after);
}

/// On the last allowed call, a failed artifact write still releases the job; the next
/// delivery finds no call left and fails it as `worker_error`, without calling the model.
#[tokio::test]
async fn an_artifact_lost_on_the_last_call_fails_the_job_at_the_next_delivery() {
    let world = World::new(1);
    let job = queued_job();
    world.store.seed(job.clone());
    world.model.push(Ok(model_reply(ANSWER)));
    world.artifacts.fail_next_put();

    assert_eq!(
        world.deliver(vec![message(job.id, "m-1", 1)]).await,
        vec!["m-1"]
    );
    assert!(
        world
            .deliver(vec![message(job.id, "m-1", 2)])
            .await
            .is_empty()
    );
    let after = world.store.job(job.id).unwrap();
    assert_eq!(after.status, JobStatus::Failed);
    assert_eq!(
        after.failure.unwrap().code,
        FailureCode::WorkerError.as_str()
    );
    assert_eq!((after.attempts, world.model.calls()), (1, 1));
    assert!(world.artifacts.keys().is_empty());
}

/// Two copies of one job's message in a batch cost one model call; the most-delivered copy
/// stands for both, the other is acknowledged, and so is a malformed message.
#[tokio::test]
async fn two_messages_for_one_job_in_a_batch_cost_one_call() {
    for (reply, expected) in [(Reply::Answer, vec![]), (Reply::Retryable, vec!["m-2"])] {
        let world = World::new(3);
        let job = queued_job();
        world.store.seed(job.clone());
        reply.script(&world.model);
        let mut malformed = message(job.id, "m-3", 1);
        malformed.body = Some(r#"{"job_id": "nope"}"#.into());
        let batch = vec![
            message(job.id, "m-1", 1),
            message(job.id, "m-2", 2),
            malformed,
        ];

        assert_eq!(world.deliver(batch).await, expected, "{reply:?}");
        assert_eq!(world.model.calls(), 1, "{reply:?}: one call");
        let after = world.store.job(job.id).unwrap();
        assert_eq!(after.attempts, 1, "{reply:?}");
        assert_eq!(after.seq, job.seq + 2, "{reply:?}: started once");
        match reply {
            Reply::Answer => {
                assert_eq!(after.status, JobStatus::Succeeded);
                assert_artifact_matches("batch", &world.artifacts, &after);
                assert!(world.queue.calls().is_empty());
            }
            _ => {
                assert_eq!(after.status, JobStatus::Running);
                let handles: Vec<String> = world
                    .queue
                    .calls()
                    .into_iter()
                    .map(|(handle, _)| handle)
                    .collect();
                assert_eq!(
                    handles,
                    vec!["receipt-m-2"],
                    "the copy that is retried comes back"
                );
            }
        }
    }
}

/// Each message of a batch gets its own job's outcome.
#[tokio::test]
async fn each_message_of_a_batch_gets_its_own_outcome() {
    let world = World::new(3);
    let answered = queued_job();
    let held = Before::HeldByAnother.job(1).unwrap();
    let cancelled = Before::Cancelled.job(0).unwrap();
    for job in [&answered, &held, &cancelled] {
        world.store.seed(job.clone());
    }
    world.model.push(Ok(model_reply(ANSWER)));
    let batch = vec![
        message(answered.id, "answered", 1),
        message(held.id, "held", 1),
        message(cancelled.id, "cancelled", 1),
        message(JobId::random(), "missing", 1),
    ];

    assert_eq!(world.deliver(batch).await, vec!["held"]);
    assert_eq!(world.model.calls(), 1);
    assert_eq!(
        world.store.job(answered.id).unwrap().status,
        JobStatus::Succeeded
    );
    assert_eq!(world.store.job(held.id), Some(held));
    assert_eq!(world.store.job(cancelled.id), Some(cancelled));
    let handles: Vec<String> = world
        .queue
        .calls()
        .into_iter()
        .map(|(handle, _)| handle)
        .collect();
    assert_eq!(handles, vec!["receipt-held"]);
}

/// When the job store fails, nothing is decided: the message is retried after the
/// visibility timeout (no fast return), and the attempt keeps whatever it held.
#[tokio::test]
async fn a_store_failure_retries_the_message_and_decides_nothing() {
    #[rustfmt::skip]
    let cases = [
        // failing op,     before,           att reply             status after        lease  calls artifacts
        (StoreOp::Start,   Before::Queued,   0, Reply::NoCall,    JobStatus::Queued,  false, 0, 0),
        // The success may have been recorded (only its answer lost), so the artifact stays.
        (StoreOp::Succeed, Before::Queued,   0, Reply::Answer,    JobStatus::Running, true,  1, 1),
        (StoreOp::Release, Before::Queued,   0, Reply::Retryable, JobStatus::Running, true,  1, 0),
        (StoreOp::Fail,    Before::Queued,   0, Reply::Permanent, JobStatus::Running, true,  1, 0),
        (StoreOp::Fail,    Before::Released, 3, Reply::NoCall,    JobStatus::Running, false, 0, 0),
    ];
    for (op, before, attempts, reply, status, lease_kept, calls, artifacts) in cases {
        let world = World::new(3);
        let job = before.job(attempts).unwrap();
        world.store.seed(job.clone());
        world.store.fail_next(op);
        reply.script(&world.model);

        assert_eq!(
            world.deliver(vec![message(job.id, "m-1", 1)]).await,
            vec!["m-1"],
            "{op:?}"
        );
        let after = world.store.job(job.id).unwrap();
        assert_eq!(after.status, status, "{op:?}");
        assert_eq!(after.lease.is_some(), lease_kept, "{op:?}");
        assert_eq!((after.failure, after.completion), (None, None), "{op:?}");
        assert_eq!(world.model.calls(), calls, "{op:?}");
        assert_eq!(world.artifacts.keys().len(), artifacts, "{op:?}");
        assert!(world.queue.calls().is_empty(), "{op:?}: no fast return");
    }
}

/// A message whose return cannot be shortened is retried all the same.
#[tokio::test]
async fn a_failed_redelivery_still_retries_the_message() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    world
        .model
        .push(Err(ModelError::Retryable(THROTTLED.into())));
    world.queue.fail_next();

    assert_eq!(
        world.deliver(vec![message(job.id, "m-1", 1)]).await,
        vec!["m-1"]
    );
    let after = world.store.job(job.id).unwrap();
    assert_eq!(
        (after.status, after.attempts, after.lease),
        (JobStatus::Running, 1, None)
    );
    assert!(world.queue.calls().is_empty());
}

/// The in-memory store, except that another attempt's lease covers the job when a start is
/// tried, and has run out (by 1 ms) when the refusal reaches the worker: a delivery that
/// arrives just as another attempt's lease ends.
#[derive(Clone)]
struct LeaseEndsDuringTheRefusal(InMemoryJobStore);

impl JobStore for LeaseEndsDuringTheRefusal {
    async fn insert(&self, job: &Job, budget: &Budget) -> Result<Inserted, Unavailable> {
        self.0.insert(job, budget).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, Unavailable> {
        self.0.get(id).await
    }

    async fn revision(&self, id: JobId) -> Result<Option<Revision>, Unavailable> {
        self.0.revision(id).await
    }

    async fn flush(
        &self,
        id: JobId,
        lease: &LeaseId,
        piece: &TextPiece,
        at: DateTime<Utc>,
    ) -> Result<Flushed, Unavailable> {
        self.0.flush(id, lease, piece, at).await
    }

    async fn list(
        &self,
        owner: &Owner,
        limit: usize,
        after: Option<&PageCursor>,
    ) -> Result<Page, Unavailable> {
        self.0.list(owner, limit, after).await
    }

    async fn transition(
        &self,
        id: JobId,
        transition: &Transition,
        at: DateTime<Utc>,
    ) -> Result<Transitioned, Unavailable> {
        let Transition::Start { .. } = transition else {
            return self.0.transition(id, transition, at).await;
        };
        let ends = at + chrono::Duration::milliseconds(1);
        if let Some(mut job) = self.0.job(id) {
            job.lease = Some(Lease::new(ends));
            self.0.seed(job);
        }
        let result = self.0.transition(id, transition, at).await;
        while Utc::now() <= ends {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        result
    }

    async fn watch(
        &self,
        id: JobId,
        owner: &Owner,
        until: DateTime<Utc>,
    ) -> Result<bool, Unavailable> {
        self.0.watch(id, owner, until).await
    }

    async fn find_stale(
        &self,
        unchanged_since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<JobId>, Unavailable> {
        self.0.find_stale(unchanged_since, limit).await
    }
}

/// A start refused because another attempt held the job is not a job whose attempts are
/// used up, even if that attempt's lease has ended by the time the worker looks: the job,
/// with calls left, must not be failed as `worker_error`.
#[tokio::test]
async fn a_job_held_when_its_start_was_refused_is_not_failed_as_stranded() {
    let store = InMemoryJobStore::new();
    let world = World::around(store.clone(), LeaseEndsDuringTheRefusal(store), 3);
    let job = Before::HeldByAnother.job(1).unwrap();
    world.store.seed(job.clone());

    let retried = world.deliver(vec![message(job.id, "m-1", 1)]).await;

    let after = world.store.job(job.id).unwrap();
    assert_eq!(after.status, JobStatus::Running, "{:?}", after.failure);
    assert_eq!(after.attempts, 1);
    assert_eq!(retried, vec!["m-1"], "looked at again, as any held job");
    let [(_, delay)] = world.queue.calls()[..] else {
        panic!("{:?}", world.queue.calls())
    };
    assert!(
        delay <= Duration::from_secs(1),
        "soon, the lease being over: {delay:?}"
    );
    assert_eq!(world.model.calls(), 0);
}

/// Attempts that died between writing their artifact and recording their outcome left
/// objects behind. Whoever finishes the job removes them, and so does any later delivery that
/// finds the job finished: a finished job keeps only the artifact its record names.
#[tokio::test]
async fn a_finished_job_keeps_no_artifact_of_the_attempts_that_died() {
    use pipeline::ports::ArtifactStore;
    async fn left_behind(world: &World, job: &Job, attempts: u32) {
        for attempt in 1..=attempts {
            let response = pipeline::domain::ArtifactResponse {
                text: "lost".into(),
                stop_reason: "end_turn".into(),
            };
            let artifact = pipeline::domain::Artifact::new(
                job,
                response,
                Usage::default(),
                None,
                Utc::now(),
                1,
            );
            world
                .artifacts
                .put(&job.artifact_key(attempt), &artifact)
                .await
                .unwrap();
        }
    }
    for (name, before, reply, kept) in [
        (
            "succeeds on the third call",
            Before::Released,
            Reply::Answer,
            Some(3),
        ),
        (
            "fails on the third call",
            Before::Released,
            Reply::Permanent,
            None,
        ),
        (
            "was finished by the second",
            Before::Succeeded,
            Reply::NoCall,
            Some(2),
        ),
    ] {
        let world = World::new(3);
        let mut job = before.job(2).unwrap();
        let second = job.artifact_key(2);
        if let Some(completion) = job.completion.as_mut() {
            completion.artifact_key = second;
        }
        world.store.seed(job.clone());
        left_behind(&world, &job, 2).await;
        reply.script(&world.model);

        let retried = world.deliver(vec![message(job.id, "m-1", 1)]).await;

        assert!(retried.is_empty(), "{name}");
        let after = world.store.job(job.id).unwrap();
        assert!(after.status.is_terminal(), "{name}");
        let expected: Vec<String> = kept.map(|n| job.artifact_key(n)).into_iter().collect();
        assert_eq!(world.artifacts.keys(), expected, "{name}");
    }
}

/// A streamed answer reaches the record as it is written: each flush under the attempt's
/// lease, with the text so far (it only grows), at most once per `stream_flush`; then the
/// success with the whole text.
#[tokio::test]
async fn a_streamed_answer_is_flushed_as_it_grows() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    let chunks = ["Hello", ", ", "streaming ", "world", "."];
    let pause = Duration::from_millis(STREAM_FLUSH_MS * 3);
    world
        .model
        .push_stream(&chunks, pause, Ok(model_reply("ignored")));

    let retried = world.deliver(vec![message(job.id, "m-1", 1)]).await;

    assert!(retried.is_empty());
    let history = world.store.history(job.id);
    let flushed: Vec<String> = history
        .iter()
        .filter(|version| version.status == JobStatus::Running)
        .filter_map(|version| version.partial_output.clone())
        .collect();
    assert!(
        flushed.len() >= 2,
        "the text reached the record as it grew: {flushed:?}"
    );
    assert!(
        flushed
            .windows(2)
            .all(|pair| pair[1].starts_with(&pair[0]) && pair[1] != pair[0]),
        "each flush adds to the last: {flushed:?}"
    );
    let started = &history[0];
    assert!(
        history[1..history.len() - 1]
            .iter()
            .all(|version| version.lease == started.lease && version.lease.is_some()),
        "every flush under the attempt's own lease"
    );
    let done = history.last().unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.completion.as_ref().unwrap().output, chunks.concat());
    assert_eq!(done.partial_output, None);
    assert_eq!(
        done.seq,
        job.seq + history.len() as u64,
        "each write one change"
    );

    // Chunks closer together than the flush interval are flushed together.
    let world = World::new(3);
    world.store.seed(job.clone());
    let many = words(40);
    world
        .model
        .push_stream(&many, Duration::from_millis(1), Ok(model_reply("ignored")));
    world.deliver(vec![message(job.id, "m-1", 1)]).await;
    let flushes = world.store.history(job.id).len() - 2;
    assert!(
        (1..20).contains(&flushes),
        "{flushes} flushes for 40 chunks"
    );
}

/// `count` chunks of a streamed answer, a word each: `w0 w1 …`.
fn words(count: usize) -> Vec<String> {
    (0..count).map(|n| format!("w{n} ")).collect()
}

/// The owner cancels while the answer streams: the attempt's next flush is refused, its
/// stream is stopped, and the cancelled job keeps the text it had; no artifact is written.
#[tokio::test]
async fn a_cancellation_mid_stream_stops_the_stream_and_keeps_the_text() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    let chunks = words(100);
    world.model.push_stream(
        &chunks,
        Duration::from_millis(5),
        Ok(model_reply("ignored")),
    );
    let owner = world.store.clone();
    let cancel = tokio::spawn(async move {
        loop {
            let current = owner.job(job.id).unwrap();
            if current.partial_output.is_some() {
                owner.cancel(job.id, Utc::now());
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });

    let retried = world.deliver(vec![message(job.id, "m-1", 1)]).await;
    cancel.await.unwrap();

    assert!(retried.is_empty(), "acknowledged");
    let after = world.store.job(job.id).unwrap();
    assert_eq!(after.status, JobStatus::Cancelled);
    let kept = after
        .partial_output
        .expect("the cancelled job keeps its text");
    assert!(
        !kept.is_empty() && chunks.concat().starts_with(&kept),
        "{kept}"
    );
    assert!(
        world.model.streamed() < chunks.len(),
        "the stream was stopped"
    );
    assert!(world.artifacts.keys().is_empty());
}

/// A retryable error in the middle of the stream fails the attempt, which releases the job
/// with its text; the next attempt starts from nothing and its text replaces it.
#[tokio::test]
async fn a_retryable_error_mid_stream_is_the_attempts_failure() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    world.model.push_stream(
        &["half ", "an "],
        Duration::from_millis(STREAM_FLUSH_MS * 2),
        Err(ModelError::Retryable(THROTTLED.into())),
    );
    let retried = world.deliver(vec![message(job.id, "m-1", 1)]).await;
    assert_eq!(retried, ["m-1"]);
    let released = world.store.job(job.id).unwrap();
    assert_eq!(released.status, JobStatus::Running);
    assert_eq!(released.lease, None);
    assert!(released.partial_output.is_some());

    world.model.push(Ok(model_reply(ANSWER)));
    world.deliver(vec![message(job.id, "m-1", 2)]).await;
    let history = world.store.history(job.id);
    let second_start = history
        .iter()
        .rfind(|version| {
            version.attempts == 2
                && version.partial_output.is_none()
                && version.status == JobStatus::Running
        })
        .expect("the second attempt started");
    assert_eq!(
        second_start.partial_output, None,
        "a new attempt starts empty"
    );
    let done = world.store.job(job.id).unwrap();
    assert_eq!(done.completion.unwrap().output, ANSWER);
}

/// A model without a price (none shipped, none in MODEL_PRICES) still runs; its job records
/// no cost rather than a wrong one.
#[tokio::test]
async fn a_job_of_a_model_without_a_price_records_no_cost() {
    let world = World::new(3);
    let mut job = queued_job();
    job.request.model = "some.unpriced-model-v1:0".into();
    world.store.seed(job.clone());
    world.model.push(Ok(model_reply(ANSWER)));
    assert!(
        world
            .deliver(vec![message(job.id, "m-1", 1)])
            .await
            .is_empty()
    );
    let done = world.store.job(job.id).unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.completion.unwrap().cost, None);
    let key = &world.artifacts.keys()[0];
    assert_eq!(world.artifacts.get(key).unwrap().cost_usd, None);
}

/// The EMF records of one model call, by name: each metric's record, as CloudWatch would
/// read it.
fn record_with<'a>(records: &'a [serde_json::Value], metric: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|record| record.get(metric).is_some())
        .unwrap_or_else(|| panic!("no {metric} in {records:#?}"))
}

/// What operators see of a job: its wait in the queue, the model call (latency, time to first
/// token, tokens, cost, by model and overall), a retry, a throttle, and its outcome.
#[tokio::test]
async fn a_jobs_life_is_written_as_emf_metrics() {
    let captured = pipeline::metrics::capture();
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    world
        .model
        .push(Err(ModelError::Retryable(THROTTLED.into())));
    world.model.push_stream(
        &["Hi ", "there."],
        Duration::from_millis(30),
        Ok(model_reply(ANSWER)),
    );
    assert_eq!(
        world.deliver(vec![message(job.id, "m-1", 1)]).await,
        ["m-1"]
    );
    assert!(
        world
            .deliver(vec![message(job.id, "m-1", 2)])
            .await
            .is_empty()
    );

    let records = captured.records();
    let waited = record_with(&records, "QueueWait");
    assert!(
        waited["QueueWait"].as_f64().unwrap() >= 60_000.0,
        "created a minute ago"
    );
    assert_eq!(record_with(&records, "Retries")["Retries"], 1);
    let throttled = record_with(&records, "ModelThrottles");
    assert_eq!(throttled["Model"], job.request.model);
    let call = record_with(&records, "ModelLatency");
    let definition = &call["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(definition["Dimensions"], serde_json::json!([[], ["Model"]]));
    assert_eq!(call["Model"], "amazon.nova-micro-v1:0");
    let reply = model_reply(ANSWER);
    assert_eq!(call["InputTokens"], reply.usage.input_tokens);
    assert_eq!(call["OutputTokens"], reply.usage.output_tokens);
    assert!(
        call["CostUsd"].as_f64().unwrap() > 0.0,
        "the model has a price"
    );
    let first = call["TimeToFirstToken"].as_f64().unwrap();
    assert!(first <= call["ModelLatency"].as_f64().unwrap());
    let finished = record_with(&records, "JobsFinished");
    assert_eq!(finished["Outcome"], "succeeded");
    assert!(
        records
            .iter()
            .all(|record| record.get("JobsFailed").is_none()),
        "it did not fail"
    );
}

/// The text events published for `job`: each on its channel, parsed.
fn published_text(world: &World, job: &Job) -> Vec<serde_json::Value> {
    let channel = pipeline::domain::job_channel(&job.owner, job.id).unwrap();
    world
        .feed
        .published()
        .into_iter()
        .inspect(|(on, _)| assert_eq!(*on, channel))
        .flat_map(|(_, events)| events)
        .map(|event| serde_json::from_str(&event).unwrap())
        .collect()
}

/// What a watcher makes of the events: each starts where the last ended, so they join to the
/// text exactly once.
fn joined(events: &[serde_json::Value]) -> String {
    let mut text = String::new();
    for event in events {
        assert_eq!(event["type"], "text", "{event}");
        assert_eq!(
            event["offset"].as_u64().unwrap() as usize,
            text.len(),
            "{event}"
        );
        text.push_str(event["text"].as_str().unwrap());
    }
    text
}

const STORY: [&str; 5] = ["Once", " upon", " a", " time", "."];

fn stream_story(world: &World) {
    world.model.push_stream(
        &STORY,
        Duration::from_millis(60),
        Ok(model_reply(&STORY.concat())),
    );
}

/// A watched job's text reaches its channel as it is written, in events that join to the
/// whole answer, all published before the job is recorded as succeeded.
#[tokio::test]
async fn a_watched_jobs_text_is_published_as_it_comes() {
    let world = World::new(3);
    let mut job = queued_job();
    job.watched_until = Some(Utc::now() + chrono::Duration::minutes(15));
    world.store.seed(job.clone());
    stream_story(&world);

    assert!(
        world
            .deliver(vec![message(job.id, "m-1", 1)])
            .await
            .is_empty()
    );

    let events = published_text(&world, &job);
    assert!(events.len() >= 3, "published as it came: {events:?}");
    assert!(
        events
            .iter()
            .all(|event| event["attempt"] == 1 && event["job_id"] == job.id.to_string())
    );
    assert_eq!(joined(&events), STORY.concat());
    let after = world.store.job(job.id).unwrap();
    assert_eq!(after.status, JobStatus::Succeeded);
    assert_eq!(after.completion.unwrap().output, STORY.concat());
}

/// Nobody watches: nothing is published (each publish is paid for).
#[tokio::test]
async fn an_unwatched_job_publishes_nothing() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    stream_story(&world);

    assert!(
        world
            .deliver(vec![message(job.id, "m-1", 1)])
            .await
            .is_empty()
    );
    assert!(world.feed.published().is_empty());
    assert_eq!(
        world.store.job(job.id).unwrap().status,
        JobStatus::Succeeded
    );
}

/// Someone subscribes after the attempt started: the attempt learns it at its next flush and
/// publishes from the start of its text, so the watcher misses nothing; a failed publish is
/// made up by the next one.
#[tokio::test]
async fn a_job_watched_after_its_start_publishes_all_its_text_from_then_on() {
    let world = World::new(3);
    let job = queued_job();
    world.store.seed(job.clone());
    stream_story(&world);
    let store = world.store.clone();
    let id = job.id;
    world.model.during_call(move |_| {
        let mut started = store.job(id).unwrap();
        started.watched_until = Some(Utc::now() + chrono::Duration::minutes(15));
        store.seed(started);
    });
    world.feed.fail_next();

    assert!(
        world
            .deliver(vec![message(job.id, "m-1", 1)])
            .await
            .is_empty()
    );

    let events = published_text(&world, &job);
    assert!(!events.is_empty());
    assert_eq!(joined(&events), STORY.concat(), "from offset 0, once");
}
