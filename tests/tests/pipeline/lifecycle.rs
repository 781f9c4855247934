//! The job lifecycle under at-least-once delivery: leases, attempts counted as model calls,
//! fast retries and cancellation. Each test reproduces a way the first lifecycle broke.

use std::time::{Duration, Instant};

use aws_lambda_events::http::Method;
use integration_tests::*;
use local::converse::Fault;
use pipeline::domain::{JobId, Lease, Transition, Transitioned};
use pipeline::ports::JobStore;

fn text(
    stack_item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
    name: &str,
) -> String {
    match &stack_item[name] {
        aws_sdk_dynamodb::types::AttributeValue::S(text) => text.clone(),
        aws_sdk_dynamodb::types::AttributeValue::N(number) => number.clone(),
        other => panic!("{name}: {other:?}"),
    }
}

/// Two worker invocations holding the same message at once (a duplicate delivery): one model
/// call runs to completion, the record and its artifact agree, and no other artifact is left.
#[tokio::test]
async fn two_workers_holding_one_message_run_the_job_once() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "only one of you").await;
    let event = stack.events.receive(Duration::from_secs(1)).await.unwrap();
    assert_eq!(event.records.len(), 1);
    // The first call is slow, so that the second delivery arrives while it runs.
    stack
        .bedrock
        .fail_next(Fault::Delay(Duration::from_millis(700)));
    let (first, second) = (stack.worker(), stack.worker());
    let first_run = first.handle(lambda_event(event.clone(), Duration::from_secs(30)));
    let second_run = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        second
            .handle(lambda_event(event.clone(), Duration::from_secs(30)))
            .await
    };
    let (first_response, second_response) = tokio::join!(first_run, second_run);

    assert!(first_response.batch_item_failures.is_empty());
    assert_eq!(
        second_response.batch_item_failures.len(),
        1,
        "the copy comes back once the lease can have ended"
    );
    assert_eq!(stack.bedrock.calls().len(), 1, "one model call");
    let item = stack.item(&job_id).await.unwrap();
    assert_eq!(text(&item, "status"), "succeeded");
    assert_eq!(text(&item, "attempts"), "1");
    assert_eq!(stack.artifact_count().await, 1, "no orphan artifact");
    let (_, artifact) = stack.artifact(&text(&item, "artifact_key")).await.unwrap();
    let output = stack.text_of(&job_id).await.unwrap();
    assert_eq!(artifact["response"]["text"], output);
}

/// A delivery that never reached the model (the worker died before) is not an attempt:
/// `MAX_ATTEMPTS` counts model calls, not deliveries.
#[tokio::test]
async fn deliveries_lost_before_a_model_call_use_up_no_attempt() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "patience").await;
    let mut event = stack.events.receive(Duration::from_secs(1)).await.unwrap();
    // SQS has delivered it five times; the earlier four died before starting the job.
    event.records[0]
        .attributes
        .insert("ApproximateReceiveCount".into(), "5".into());
    stack.bedrock.fail_next(Fault::Throttle);
    let response = stack
        .worker()
        .handle(lambda_event(event, Duration::from_secs(30)))
        .await;
    assert_eq!(response.batch_item_failures.len(), 1, "retried, not failed");
    let item = stack.item(&job_id).await.unwrap();
    assert_eq!(text(&item, "status"), "running");
    assert_eq!(text(&item, "attempts"), "1");
}

/// After `MAX_ATTEMPTS` throttled calls the job fails, and the message says how many calls
/// were really made.
#[tokio::test]
async fn the_failure_counts_the_model_calls_made() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "throttled").await;
    for _ in 0..MAX_ATTEMPTS {
        stack.bedrock.fail_next(Fault::Throttle);
    }
    let worker = stack.worker();
    for _ in 0..MAX_ATTEMPTS {
        stack.deliver_once(&worker).await;
    }
    let item = stack.item(&job_id).await.unwrap();
    assert_eq!(text(&item, "status"), "failed");
    assert_eq!(text(&item, "error_code"), "model_unavailable");
    assert!(
        text(&item, "error_message").contains(&format!("all {MAX_ATTEMPTS} calls")),
        "{}",
        text(&item, "error_message")
    );
    assert_eq!(stack.bedrock.calls().len(), MAX_ATTEMPTS as usize);
}

/// A throttled job comes back after a short backoff, not after the queue's whole
/// visibility timeout (a minute here; 30 minutes as deployed).
#[tokio::test]
async fn a_throttled_job_is_retried_in_seconds() {
    let stack = Stack::with_visibility_timeout(60).await;
    let job_id = stack.submit("user-a", "again soon").await;
    stack.bedrock.fail_next(Fault::Throttle);
    let worker = stack.worker();
    let event = stack.events.receive(Duration::from_secs(1)).await.unwrap();
    let response = worker
        .handle(lambda_event(event.clone(), Duration::from_secs(30)))
        .await;
    // Settled as the event source mapping does: the failure is left to come back.
    stack.events.settle(&event, &response, None).await.unwrap();
    let failed_at = Instant::now();
    let mut again = stack.events.receive(Duration::from_secs(20)).await.unwrap();
    while again.records.is_empty() && failed_at.elapsed() < Duration::from_secs(50) {
        again = stack.events.receive(Duration::from_secs(20)).await.unwrap();
    }
    let waited = failed_at.elapsed();
    assert_eq!(again.records.len(), 1);
    assert!(
        waited < Duration::from_secs(30),
        "back after {waited:?}, well before the 60 s visibility timeout"
    );
    let response = worker
        .handle(lambda_event(again, Duration::from_secs(30)))
        .await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        text(&stack.item(&job_id).await.unwrap(), "status"),
        "succeeded"
    );
}

/// An attempt that died with the job (its lease ran out, nobody finished it) is taken over
/// by the next delivery.
#[tokio::test]
async fn a_job_whose_attempt_died_is_taken_over_after_its_lease() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "take over").await;
    let id = JobId::parse(&job_id).unwrap();
    let now = chrono::Utc::now();
    let crashed = Transition::Start {
        lease: Lease::new(now + chrono::Duration::milliseconds(300)),
        max_attempts: MAX_ATTEMPTS,
    };
    assert!(matches!(
        stack.store().transition(id, &crashed, now).await.unwrap(),
        Transitioned::Done(_)
    ));
    let worker = stack.worker();
    let (_, response, _) = stack.deliver_once(&worker).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "not while the lease lives"
    );
    assert!(stack.bedrock.calls().is_empty());

    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, response, _) = stack.deliver_once(&worker).await;
    assert!(response.batch_item_failures.is_empty());
    let item = stack.item(&job_id).await.unwrap();
    assert_eq!(text(&item, "status"), "succeeded");
    assert_eq!(text(&item, "attempts"), "2");
}

async fn cancel(
    stack: &Stack,
    user: &str,
    job_id: &str,
) -> aws_lambda_events::apigw::ApiGatewayV2httpResponse {
    stack
        .status()
        .handle(request(
            Method::POST,
            &format!("/jobs/{job_id}/cancel"),
            Some(user),
            None,
        ))
        .await
}

#[tokio::test]
async fn a_cancelled_queued_job_is_never_started() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "never mind").await;
    let response = cancel(&stack, "user-a", &job_id).await;
    assert_eq!(response.status_code, 200, "{:?}", response.body);
    let job = json_body(&response);
    assert_eq!(job["status"], "cancelled");
    assert!(job["completed_at"].is_string());
    let seq = job["seq"].as_u64().unwrap();

    let again = cancel(&stack, "user-a", &job_id).await;
    assert_eq!(again.status_code, 200);
    assert_eq!(json_body(&again)["seq"].as_u64().unwrap(), seq, "unchanged");

    let (_, response, settled) = stack.deliver_once(&stack.worker()).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(settled.acknowledged, 1);
    assert!(
        stack.bedrock.calls().is_empty(),
        "no model call for a cancelled job"
    );

    assert_error(&cancel(&stack, "user-b", &job_id).await, 404, "not_found");
    assert_error(
        &cancel(&stack, "user-a", "not-a-uuid").await,
        404,
        "not_found",
    );
    let wrong_method = stack
        .status()
        .handle(request(
            Method::GET,
            &format!("/jobs/{job_id}/cancel"),
            Some("user-a"),
            None,
        ))
        .await;
    assert_error(&wrong_method, 405, "method_not_allowed");
    assert_eq!(wrong_method.headers["allow"], "POST");
}

#[tokio::test]
async fn a_running_attempt_stops_at_its_next_write_and_leaves_no_artifact() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "stop me").await;
    stack
        .bedrock
        .fail_next(Fault::Delay(Duration::from_millis(700)));
    let worker = stack.worker();
    let run = stack.deliver_once(&worker);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel(&stack, "user-a", &job_id).await
    };
    let ((_, response, _), cancelled) = tokio::join!(run, stop);
    assert_eq!(cancelled.status_code, 200, "{:?}", cancelled.body);
    assert!(response.batch_item_failures.is_empty(), "acknowledged");
    let item = stack.item(&job_id).await.unwrap();
    assert_eq!(text(&item, "status"), "cancelled");
    assert!(!item.contains_key("artifact_key"));
    assert_eq!(stack.text_of(&job_id).await, None, "no text was flushed");
    assert_eq!(
        stack.artifact_count().await,
        0,
        "the attempt removed its artifact"
    );
}

#[tokio::test]
async fn a_finished_job_is_not_cancellable() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "done already").await;
    stack.deliver_once(&stack.worker()).await;
    let message = assert_error(
        &cancel(&stack, "user-a", &job_id).await,
        409,
        "not_cancellable",
    );
    assert!(message.contains("succeeded"), "{message}");
    assert_eq!(
        text(&stack.item(&job_id).await.unwrap(), "status"),
        "succeeded"
    );
}

/// The api died between writing a job and sending its message: the client's retry with the
/// same `Idempotency-Key` enqueues it, so the job runs instead of staying `queued` forever.
#[tokio::test]
async fn an_idempotent_repeat_enqueues_a_job_that_was_never_enqueued() {
    let stack = Stack::new().await;
    // The record exactly as the api writes it, and then the process died: no message.
    let key = pipeline::domain::IdempotencyKey::parse("retry-1").unwrap();
    let request = pipeline::domain::GenerateRequest::new("are you there", DEFAULT_MODEL, 64);
    let owner = pipeline::domain::Owner::new("user-a");
    let written = chrono::Utc::now() - api::ENQUEUE_GRACE - chrono::Duration::seconds(1);
    let job = pipeline::domain::Job::queued(
        owner,
        request,
        Some(key),
        written,
        chrono::Duration::days(1),
    );
    stack
        .store()
        .insert(&job, &Default::default())
        .await
        .unwrap();
    let job_id = job.id.to_string();

    let body = r#"{"prompt": "are you there"}"#;
    let again = stack
        .api()
        .handle(with_key(body, "user-a", "retry-1"))
        .await;
    assert_eq!(again.status_code, 200, "{:?}", again.body);
    assert_eq!(json_body(&again)["job_id"], job_id);
    let (event, response, _) = stack.deliver_once(&stack.worker()).await;
    assert_eq!(event.records.len(), 1, "the repeat sent the job's message");
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        text(&stack.item(&job_id).await.unwrap(), "status"),
        "succeeded"
    );

    // A repeat of a job that was enqueued sends nothing more.
    let fresh = stack
        .api()
        .handle(with_key(body, "user-a", "retry-2"))
        .await;
    assert_eq!(fresh.status_code, 202);
    let repeat = stack
        .api()
        .handle(with_key(body, "user-a", "retry-2"))
        .await;
    assert_eq!(repeat.status_code, 200);
    assert_eq!(
        stack.queued_bodies().await.len(),
        1,
        "one message for retry-2"
    );
}

/// The emulator is atomic as DynamoDB is (local/moto/sitecustomize.py): of many attempts
/// racing to start one job, exactly one wins, and every reader sees the job whole.
#[tokio::test]
async fn racing_starts_on_the_emulator_have_exactly_one_winner() {
    let stack = Stack::new().await;
    let job_id = JobId::parse(&stack.submit("user-a", "race").await).unwrap();
    let store = stack.store();
    let starts = (0..24).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let start = Transition::Start {
                lease: Lease::new(chrono::Utc::now() + chrono::Duration::seconds(60)),
                max_attempts: MAX_ATTEMPTS,
            };
            store
                .transition(job_id, &start, chrono::Utc::now())
                .await
                .unwrap()
        })
    });
    let results = futures::future::join_all(starts).await;
    let winners = results
        .iter()
        .filter(|result| matches!(result, Ok(Transitioned::Done(_))))
        .count();
    assert_eq!(winners, 1);
    let job = store.get(job_id).await.unwrap().unwrap();
    assert_eq!(job.attempts, 1);
    assert_eq!(job.seq, 1);
}
