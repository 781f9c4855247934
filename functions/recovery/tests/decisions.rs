//! Recovery's decisions against in-memory fakes of its ports: for each state a job can be in
//! when the sweep finds it or its message is dead-lettered, what becomes of the job and of
//! the message. The same function runs against moto in tests/tests/pipeline/recovery.rs.

use std::time::Duration;

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use chrono::{DateTime, Utc};
use pipeline::domain::{
    Artifact, ArtifactResponse, Completion, FailureCode, GenerateRequest, Job, JobFailure, JobId,
    JobStatus, Lease, Owner, Usage,
};
use pipeline::fakes::{
    InMemoryArtifacts, InMemoryJobStore, RecordedQueue, RecordedRedelivery, StoreOp,
};
use pipeline::ports::ArtifactStore;
use recovery::{Recovery, RecoveryEvent, Settings, SweepReport};

const RECOVER_AFTER: Duration = Duration::from_secs(600);
const MAX_ATTEMPTS: u32 = 3;

struct World {
    store: InMemoryJobStore,
    artifacts: InMemoryArtifacts,
    jobs: RecordedQueue,
    dead_letters: RecordedRedelivery,
    recovery: Recovery<InMemoryJobStore, InMemoryArtifacts, RecordedQueue, RecordedRedelivery>,
}

impl World {
    fn new(sweep_limit: usize) -> Self {
        let (store, artifacts, jobs, dead_letters) = <(
            InMemoryJobStore,
            InMemoryArtifacts,
            RecordedQueue,
            RecordedRedelivery,
        )>::default();
        let settings = Settings {
            max_attempts: MAX_ATTEMPTS,
            recover_after: RECOVER_AFTER,
            sweep_limit,
        };
        let recovery = Recovery::new(
            store.clone(),
            artifacts.clone(),
            jobs.clone(),
            dead_letters.clone(),
            settings,
        );
        Self {
            store,
            artifacts,
            jobs,
            dead_letters,
            recovery,
        }
    }
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// How a job is when recovery looks at it.
#[derive(Clone, Copy, Debug)]
enum State {
    Queued,
    /// `running` with no lease: an attempt gave it back for a retry.
    Released,
    /// `running` under a lease that ended a minute ago: its attempt died.
    Abandoned,
    /// `running` under a lease live for another minute.
    Held,
    Succeeded,
    Failed,
    Cancelled,
}

/// A job in `state`, with `attempts` model calls, last changed `idle` ago.
fn job(state: State, attempts: u32, idle: Duration) -> Job {
    let request = GenerateRequest::new("Say hi", "amazon.nova-micro-v1:0", 64);
    let changed = now() - chrono::Duration::from_std(idle).unwrap();
    let mut job = Job::queued(
        Owner::new("user-a"),
        request,
        None,
        changed - chrono::Duration::seconds(1),
        chrono::Duration::days(1),
    );
    job.updated_at = changed;
    job.attempts = attempts;
    job.seq = 4;
    let minute = chrono::Duration::minutes(1);
    match state {
        State::Queued => {}
        State::Released => job.status = JobStatus::Running,
        State::Abandoned => {
            job.status = JobStatus::Running;
            job.lease = Some(Lease::new(now() - minute));
        }
        State::Held => {
            job.status = JobStatus::Running;
            job.lease = Some(Lease::new(now() + minute));
        }
        State::Succeeded => {
            job.status = JobStatus::Succeeded;
            job.completed_at = Some(changed);
            job.completion = Some(Completion {
                output: "hi".into(),
                stop_reason: "end_turn".into(),
                usage: Usage::default(),
                artifact_key: "artifacts/user-a/x.json".into(),
                cost: None,
            });
        }
        State::Failed => {
            job.status = JobStatus::Failed;
            job.completed_at = Some(changed);
            job.failure = Some(JobFailure::new(FailureCode::ModelError, "no"));
        }
        State::Cancelled => {
            job.status = JobStatus::Cancelled;
            job.completed_at = Some(changed);
        }
    }
    job
}

const STALE: Duration = Duration::from_secs(601);
const FRESH: Duration = Duration::from_secs(599);

/// What the sweep does to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repair {
    Requeued,
    FailedAsStranded,
    LeftAlone,
}

/// Every state, fresh and stale, with calls left and without: only a stranded job (free and
/// unchanged for `RECOVER_AFTER`) is repaired: sent again while it has calls left, else failed.
#[tokio::test]
async fn the_sweep_repairs_only_stranded_jobs() {
    use Repair::*;
    use State::*;
    #[rustfmt::skip]
    let cases = [
        (Queued, 0, STALE, Requeued),
        (Queued, 0, FRESH, LeftAlone),
        (Released, 1, STALE, Requeued),
        (Released, 1, FRESH, LeftAlone),
        (Abandoned, 2, STALE, Requeued),
        (Abandoned, 2, FRESH, LeftAlone),
        (Abandoned, 3, STALE, FailedAsStranded),
        (Released, 3, STALE, FailedAsStranded),
        (Queued, 3, STALE, FailedAsStranded),
        (Abandoned, 3, FRESH, LeftAlone),
        (Held, 1, STALE, LeftAlone),
        (Held, 3, STALE, LeftAlone),
        (Succeeded, 1, STALE, LeftAlone),
        (Failed, 1, STALE, LeftAlone),
        (Cancelled, 0, STALE, LeftAlone),
    ];
    for (state, attempts, idle, expected) in cases {
        let world = World::new(100);
        let before = job(state, attempts, idle);
        world.store.seed(before.clone());

        let swept_at = now();
        let report = world.recovery.sweep(swept_at).await.unwrap();

        let after = world.store.job(before.id).unwrap();
        let case = format!("{state:?} with {attempts} calls, idle {}s", idle.as_secs());
        let sent = world.jobs.sent();
        match expected {
            Requeued => {
                assert_eq!(sent, vec![before.id], "{case}: sent again");
                assert_eq!(after.status, before.status, "{case}: keeps its status");
                assert_eq!(after.attempts, before.attempts, "{case}: no call counted");
                assert_eq!(after.seq, before.seq + 1, "{case}");
                assert_eq!(after.updated_at, swept_at, "{case}: marked as touched");
                assert_eq!(after.lease, None, "{case}");
                assert_eq!((report.requeued, report.failed), (1, 0), "{case}");
            }
            FailedAsStranded => {
                assert!(sent.is_empty(), "{case}: not sent");
                assert_eq!(after.status, JobStatus::Failed, "{case}");
                let failure = after.failure.unwrap();
                assert_eq!(failure.code, "worker_error", "{case}");
                assert_eq!(
                    failure.message,
                    format!(
                        "The worker stopped before finishing the job, after {attempts} model calls."
                    ),
                    "{case}"
                );
                assert_eq!((report.requeued, report.failed), (0, 1), "{case}");
            }
            LeftAlone => {
                assert!(sent.is_empty(), "{case}: not sent");
                assert_eq!(after, before, "{case}: unchanged");
                assert_eq!((report.requeued, report.failed), (0, 0), "{case}");
            }
        }
        assert_eq!(report.errors, 0, "{case}");
    }
}

#[tokio::test]
async fn a_job_sent_again_is_not_sent_again_until_it_has_been_idle_once_more() {
    let world = World::new(100);
    let stranded = job(State::Queued, 0, STALE);
    world.store.seed(stranded.clone());

    let first = now();
    world.recovery.sweep(first).await.unwrap();
    let soon = first + chrono::Duration::seconds(300);
    let report = world.recovery.sweep(soon).await.unwrap();
    assert_eq!(
        report,
        SweepReport::default(),
        "nothing to do within RECOVER_AFTER"
    );
    assert_eq!(world.jobs.sent(), vec![stranded.id]);

    let later = first + chrono::Duration::from_std(STALE).unwrap();
    let report = world.recovery.sweep(later).await.unwrap();
    assert_eq!(
        report.requeued, 1,
        "still stranded after another RECOVER_AFTER"
    );
    assert_eq!(world.jobs.sent(), vec![stranded.id, stranded.id]);
}

#[tokio::test]
async fn a_failed_send_is_counted_and_the_next_sweep_sends_the_job() {
    let world = World::new(100);
    let stranded = job(State::Released, 1, STALE);
    world.store.seed(stranded.clone());
    world.jobs.fail_next();

    let first = now();
    let report = world.recovery.sweep(first).await.unwrap();
    assert_eq!(
        (report.candidates, report.requeued, report.errors),
        (1, 0, 1)
    );
    assert!(world.jobs.sent().is_empty());

    let later = first + chrono::Duration::from_std(STALE).unwrap();
    let report = world.recovery.sweep(later).await.unwrap();
    assert_eq!((report.requeued, report.errors), (1, 0));
    assert_eq!(world.jobs.sent(), vec![stranded.id]);
}

#[tokio::test]
async fn a_sweep_repairs_at_most_its_limit_and_fails_if_it_cannot_list() {
    let world = World::new(2);
    for _ in 0..3 {
        world.store.seed(job(State::Queued, 0, STALE));
    }
    let report = world.recovery.sweep(now()).await.unwrap();
    assert_eq!((report.candidates, report.requeued), (2, 2));
    let report = world.recovery.sweep(now()).await.unwrap();
    assert_eq!(report.requeued, 1, "the rest at the next sweep");

    world.store.fail_next(StoreOp::FindStale);
    assert!(world.recovery.sweep(now()).await.is_err());
}

#[tokio::test]
async fn a_repair_that_cannot_be_written_is_counted_and_changes_nothing() {
    let world = World::new(100);
    let stranded = job(State::Queued, 0, STALE);
    world.store.seed(stranded.clone());
    world.store.fail_next(StoreOp::Requeue);
    let report = world.recovery.sweep(now()).await.unwrap();
    assert_eq!((report.requeued, report.errors), (0, 1));
    assert_eq!(world.store.job(stranded.id), Some(stranded));
    assert!(world.jobs.sent().is_empty());
}

/// Dead-lettered message `id` for `job_id`.
fn dead_letter(job_id: JobId, id: &str) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.message_id = Some(id.into());
    message.receipt_handle = Some(format!("receipt-{id}"));
    message.body = Some(format!(r#"{{"job_id":"{job_id}"}}"#));
    message
}

fn batch(messages: Vec<SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages;
    event
}

/// A dead-lettered job that is unfinished and free fails with `worker_error`, whatever its
/// calls; one an attempt holds is looked at again when the lease can have ended; a finished
/// or missing one needs nothing. Recovery never sends a dead-lettered job again.
#[tokio::test]
async fn a_dead_lettered_job_fails_unless_finished_or_held() {
    use State::*;
    for (state, attempts) in [
        (Queued, 0),
        (Released, 1),
        (Abandoned, 2),
        (Abandoned, 3),
        (Held, 1),
        (Succeeded, 1),
        (Failed, 1),
        (Cancelled, 0),
    ] {
        let world = World::new(100);
        let before = job(state, attempts, FRESH);
        world.store.seed(before.clone());

        let response = world
            .recovery
            .dead_letters(&batch(vec![dead_letter(before.id, "d-1")]))
            .await;

        let after = world.store.job(before.id).unwrap();
        let retried: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|failure| failure.item_identifier.as_str())
            .collect();
        let case = format!("{state:?} with {attempts} calls");
        assert!(world.jobs.sent().is_empty(), "{case}");
        match state {
            Queued | Released | Abandoned => {
                assert!(retried.is_empty(), "{case}: acknowledged");
                assert_eq!(after.status, JobStatus::Failed, "{case}");
                let failure = after.failure.unwrap();
                assert_eq!(failure.code, "worker_error", "{case}");
                assert!(
                    failure
                        .message
                        .contains(&format!("after {attempts} model calls")),
                    "{case}: {}",
                    failure.message
                );
            }
            Held => {
                assert_eq!(retried, ["d-1"], "{case}: looked at again");
                assert_eq!(after, before, "{case}: unchanged");
                let calls = world.dead_letters.calls();
                assert_eq!(calls.len(), 1, "{case}");
                let (receipt, delay) = &calls[0];
                assert_eq!(receipt, "receipt-d-1");
                assert!(
                    (Duration::from_secs(59)..=Duration::from_secs(61)).contains(delay),
                    "{case}: back when the lease has ended, not {delay:?}"
                );
            }
            Succeeded | Failed | Cancelled => {
                assert!(retried.is_empty(), "{case}: acknowledged");
                assert_eq!(after, before, "{case}: unchanged");
            }
        }
    }
}

#[tokio::test]
async fn dead_letters_of_missing_jobs_and_malformed_bodies_are_acknowledged() {
    let world = World::new(100);
    let mut malformed = dead_letter(JobId::random(), "d-2");
    malformed.body = Some("not json".into());
    let response = world
        .recovery
        .dead_letters(&batch(vec![dead_letter(JobId::random(), "d-1"), malformed]))
        .await;
    assert!(response.batch_item_failures.is_empty());
}

#[tokio::test]
async fn a_dead_letter_whose_job_cannot_be_read_is_retried() {
    let world = World::new(100);
    let stranded = job(State::Abandoned, 1, FRESH);
    world.store.seed(stranded.clone());
    world.store.fail_next(StoreOp::Get);
    let response = world
        .recovery
        .dead_letters(&batch(vec![dead_letter(stranded.id, "d-1")]))
        .await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(world.store.job(stranded.id), Some(stranded));
}

/// The two triggers are told apart by their payloads; anything else is an error, not a sweep.
#[test]
fn the_payload_says_which_trigger_it_is() {
    let sweep: RecoveryEvent = serde_json::from_str(r#"{"sweep": {}}"#).unwrap();
    assert!(matches!(sweep, RecoveryEvent::Sweep { .. }));
    let records = r#"{"Records": [{"messageId": "m", "body": "{}", "attributes": {}, "messageAttributes": {}}]}"#;
    let dead_letters: RecoveryEvent = serde_json::from_str(records).unwrap();
    assert!(matches!(dead_letters, RecoveryEvent::DeadLetters(batch) if batch.records.len() == 1));
    for other in [r#"{}"#, r#"{"detail-type": "Scheduled Event"}"#, "[]"] {
        assert!(
            serde_json::from_str::<RecoveryEvent>(other).is_err(),
            "{other}"
        );
    }
}

/// Each attempt of `job` wrote its artifact and died before recording anything.
async fn left_behind(world: &World, job: &Job) -> Vec<String> {
    let mut keys = Vec::new();
    for attempt in 1..=job.attempts {
        let response = ArtifactResponse {
            text: "lost".into(),
            stop_reason: "end_turn".into(),
        };
        let artifact = Artifact::new(job, response, Usage::default(), None, now(), 1);
        let key = job.artifact_key(attempt);
        world.artifacts.put(&key, &artifact).await.unwrap();
        keys.push(key);
    }
    keys
}

/// A job recovery fails keeps no artifact of the attempts that died: its message is gone, so
/// no later delivery would remove them. A dead letter of a finished job removes them too.
#[tokio::test]
async fn jobs_recovery_fails_or_finds_finished_keep_no_leftover_artifacts() {
    let world = World::new(100);
    let swept = job(State::Abandoned, MAX_ATTEMPTS, STALE);
    let dead = job(State::Abandoned, 2, FRESH);
    let finished = job(State::Cancelled, 1, FRESH);
    for job in [&swept, &dead, &finished] {
        world.store.seed(job.clone());
        assert_eq!(left_behind(&world, job).await.len(), job.attempts as usize);
    }
    assert_eq!(world.artifacts.keys().len(), 6);

    let report = world.recovery.sweep(now()).await.unwrap();
    assert_eq!(report.failed, 1);
    let letters = batch(vec![
        dead_letter(dead.id, "d-1"),
        dead_letter(finished.id, "d-2"),
    ]);
    let response = world.recovery.dead_letters(&letters).await;
    assert!(response.batch_item_failures.is_empty());

    assert_eq!(world.store.job(dead.id).unwrap().status, JobStatus::Failed);
    assert!(
        world.artifacts.keys().is_empty(),
        "{:?}",
        world.artifacts.keys()
    );
}
