//! Recovery against moto: nothing stays unfinished without work on it. A job whose message
//! is dead-lettered fails (`worker_error`); a job that was never enqueued, or whose attempt
//! died and whose message was lost, is found by the sweep in the index of unfinished jobs
//! and sent again, or failed when its model calls are used up.

use std::time::Duration;

use chrono::Utc;
use integration_tests::*;
use local::converse::Fault;
use pipeline::domain::{
    GenerateRequest, Job, JobId, JobStatus, Lease, Owner, Transition, Transitioned,
};
use pipeline::ports::JobStore;

const RECOVER_AFTER: Duration = Duration::from_secs(60);

/// A job as the api writes it, `age` ago, whose message was never sent (the api died
/// between the write and the send).
async fn written_but_never_sent(stack: &Stack, age: chrono::Duration) -> Job {
    let request = GenerateRequest::new("left behind", DEFAULT_MODEL, 64);
    let job = Job::queued(
        Owner::new("user-a"),
        request,
        None,
        Utc::now() - age,
        chrono::Duration::days(1),
    );
    stack
        .store()
        .insert(&job, &Default::default())
        .await
        .unwrap();
    job
}

/// `calls` attempts that started and died without a word, each taking the job with a lease
/// that ended 5 s later; the last of them started `age` ago.
async fn abandoned_after(stack: &Stack, calls: u32, age: chrono::Duration) -> Job {
    let apart = chrono::Duration::seconds(10);
    let mut current = written_but_never_sent(stack, age + apart * calls as i32).await;
    for call in 0..calls {
        let started_at = Utc::now() - age - apart * (calls - 1 - call) as i32;
        let start = Transition::Start {
            lease: Lease::new(started_at + chrono::Duration::seconds(5)),
            max_attempts: MAX_ATTEMPTS,
        };
        let Transitioned::Done(started) = stack
            .store()
            .transition(current.id, &start, started_at)
            .await
            .unwrap()
        else {
            panic!("the job starts");
        };
        current = started;
    }
    current
}

fn a_while(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap() + chrono::Duration::seconds(5)
}

#[tokio::test]
async fn a_job_written_but_never_enqueued_is_sent_again_by_the_sweep_and_runs() {
    let stack = Stack::new().await;
    let recovery = stack.recovery(RECOVER_AFTER);
    let fresh = written_but_never_sent(&stack, chrono::Duration::seconds(1)).await;
    let stranded = written_but_never_sent(&stack, a_while(RECOVER_AFTER)).await;

    let report = recovery.sweep(Utc::now()).await.unwrap();
    assert_eq!((report.candidates, report.requeued), (1, 1), "{report:?}");
    assert_eq!(
        stack.queued_bodies().await,
        [format!(r#"{{"job_id":"{}"}}"#, stranded.id)],
        "only the stranded job is sent; the fresh one may still be on its way"
    );

    stack.deliver_once(&stack.worker()).await;
    let done = stack.store().get(stranded.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(
        stack.store().get(fresh.id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    // A finished job leaves the index of unfinished jobs: even far in the future, only the
    // unfinished one is a candidate.
    let far = Utc::now() + chrono::Duration::days(1);
    let candidates = stack.store().find_stale(far, 100).await.unwrap();
    assert_eq!(candidates, [fresh.id]);
}

#[tokio::test]
async fn an_attempt_that_died_with_its_message_lost_is_repaired_by_the_sweep() {
    let stack = Stack::new().await;
    let recovery = stack.recovery(RECOVER_AFTER);
    let with_calls_left = abandoned_after(&stack, 1, a_while(RECOVER_AFTER)).await;
    let used_up = abandoned_after(&stack, MAX_ATTEMPTS, a_while(RECOVER_AFTER)).await;
    let working = abandoned_after(&stack, 1, chrono::Duration::seconds(1)).await;

    let report = recovery.sweep(Utc::now()).await.unwrap();
    assert_eq!(
        (
            report.candidates,
            report.requeued,
            report.failed,
            report.errors
        ),
        (2, 1, 1, 0),
        "{report:?}"
    );

    let failed = stack.store().get(used_up.id).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    let failure = failed.failure.unwrap();
    assert_eq!(failure.code, "worker_error");
    assert_eq!(
        failure.message,
        format!("The worker stopped before finishing the job, after {MAX_ATTEMPTS} model calls.")
    );

    stack.deliver_once(&stack.worker()).await;
    let done = stack
        .store()
        .get(with_calls_left.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(
        done.attempts, 2,
        "the lost attempt and the one that answered"
    );
    assert_eq!(stack.bedrock.calls().len(), 1);

    let untouched = stack.store().get(working.id).await.unwrap().unwrap();
    assert_eq!(untouched, working, "a recent attempt is left alone");

    // Sent once: the next sweep does not send it again while it is fresh.
    let again = recovery.sweep(Utc::now()).await.unwrap();
    assert_eq!(again.requeued, 0, "{again:?}");
}

/// The worker dies on every delivery: first after taking the job (its model call never ends
/// within the invocation), then before it can. SQS dead-letters the message after
/// `MAX_RECEIVE_COUNT` receives; the recovery function, fed by the dead-letter queue, waits
/// for the dead attempt's lease to end and fails the job.
#[tokio::test]
async fn a_message_dead_lettered_after_repeated_crashes_fails_its_job() {
    let stack = Stack::with_visibility_timeout(1).await;
    let job_id = stack.submit("user-a", "doomed").await;
    let worker = stack.worker();

    // The first delivery starts the job and dies in the model call (the invocation is cut
    // off, as a crash or a time-out would): the job stays running under a lease.
    stack
        .bedrock
        .fail_next(Fault::Delay(Duration::from_secs(30)));
    let event = stack.events.receive(Duration::from_secs(2)).await.unwrap();
    assert_eq!(event.records.len(), 1);
    let crashed = tokio::time::timeout(
        Duration::from_millis(500),
        worker.handle(lambda_event(event, Duration::from_secs(2))),
    )
    .await;
    assert!(crashed.is_err(), "the invocation was cut off");

    // Four more deliveries whose invocations die before doing anything.
    let mut receives = 1;
    while receives < local::provision::MAX_RECEIVE_COUNT {
        let event = stack.events.receive(Duration::from_secs(3)).await.unwrap();
        receives += event.records.len() as u32;
    }
    // The next receive moves it to the dead-letter queue.
    let dead_letters = stack.dead_letter_events();
    let recovery = stack.recovery(RECOVER_AFTER);
    let mut polls = 0;
    let job = loop {
        polls += 1;
        assert!(polls < 30, "the job was never failed");
        let _ = stack.events.receive(Duration::from_secs(1)).await.unwrap();
        let batch = dead_letters.receive(Duration::from_secs(1)).await.unwrap();
        if !batch.records.is_empty() {
            let response = recovery.dead_letters(&batch).await;
            // A dead letter whose job is still held comes back when the lease has ended.
            dead_letters.settle(&batch, &response, None).await.unwrap();
        }
        let job = stack
            .store()
            .get(JobId::parse(&job_id).unwrap())
            .await
            .unwrap()
            .unwrap();
        if job.status.is_terminal() {
            break job;
        }
    };
    assert_eq!(job.status, JobStatus::Failed);
    let failure = job.failure.unwrap();
    assert_eq!(failure.code, "worker_error");
    assert!(
        failure.message.contains("after 1 model calls"),
        "{failure:?}"
    );
    assert_eq!(stack.bedrock.calls().len(), 1);
    assert!(
        stack
            .dead_letter_events()
            .receive(Duration::ZERO)
            .await
            .unwrap()
            .records
            .is_empty(),
        "the dead letter was acknowledged"
    );
}
