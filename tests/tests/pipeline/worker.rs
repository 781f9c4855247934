//! The worker: at-least-once delivery, retries, failures, and what is never lost or doubled.

use std::time::Duration;

use aws_sdk_sqs::Client as Sqs;
use integration_tests::*;
use local::converse::Fault;
use pipeline::domain::JobId;

async fn send_raw(stack: &Stack, body: &str) {
    Sqs::new(&stack.aws)
        .send_message()
        .queue_url(&stack.resources.queue_url)
        .message_body(body)
        .send()
        .await
        .unwrap();
}

async fn status_of(stack: &Stack, job_id: &str) -> (String, String) {
    let item = stack.item(job_id).await.unwrap();
    (
        item["status"].as_s().unwrap().clone(),
        item["attempts"].as_n().unwrap().clone(),
    )
}

#[tokio::test]
async fn the_same_message_twice_in_one_batch_costs_one_model_call() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "duplicate me").await;
    send_raw(&stack, &format!(r#"{{"job_id":"{job_id}"}}"#)).await;

    let worker = stack.worker();
    let (event, response, settled) = stack.deliver_once(&worker).await;
    assert_eq!(event.records.len(), 2, "both copies came in one batch");
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(settled.acknowledged, 2);
    assert_eq!(stack.bedrock.calls().len(), 1);
    assert_eq!(stack.artifact_count().await, 1);
    assert_eq!(
        status_of(&stack, &job_id).await,
        ("succeeded".into(), "1".into())
    );
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn a_redelivery_after_success_is_acknowledged_without_a_model_call() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "only once").await;
    let worker = stack.worker();
    stack.deliver_once(&worker).await;
    let first = stack.item(&job_id).await.unwrap();

    send_raw(&stack, &format!(r#"{{"job_id":"{job_id}"}}"#)).await;
    let (event, response, _) = stack.deliver_once(&worker).await;
    assert_eq!(event.records.len(), 1);
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(stack.bedrock.calls().len(), 1);
    assert_eq!(stack.artifact_count().await, 1);
    assert_eq!(
        stack.item(&job_id).await.unwrap(),
        first,
        "a terminal job never changes"
    );
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn throttling_once_is_retried_and_then_succeeds() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "try again").await;
    stack.bedrock.fail_next(Fault::Throttle);
    let worker = stack.worker();

    let (event, response, settled) = stack.deliver_once(&worker).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(
        Some(&response.batch_item_failures[0].item_identifier),
        event.records[0].message_id.as_ref()
    );
    assert_eq!(settled.retried, 1);
    assert_eq!(
        status_of(&stack, &job_id).await,
        ("running".into(), "1".into())
    );
    assert_eq!(stack.artifact_count().await, 0);

    let (event, response, _) = stack.deliver_once(&worker).await;
    assert_eq!(event.records[0].attributes["ApproximateReceiveCount"], "2");
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        status_of(&stack, &job_id).await,
        ("succeeded".into(), "2".into())
    );
    assert_eq!(stack.bedrock.calls().len(), 2);
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn throttling_past_max_attempts_fails_the_job_as_model_unavailable() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "never served").await;
    for _ in 0..MAX_ATTEMPTS {
        stack.bedrock.fail_next(Fault::Throttle);
    }
    let worker = stack.worker();
    for delivery in 1..MAX_ATTEMPTS {
        let (_, response, _) = stack.deliver_once(&worker).await;
        assert_eq!(
            response.batch_item_failures.len(),
            1,
            "delivery {delivery} is retried"
        );
    }
    let (_, response, settled) = stack.deliver_once(&worker).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "the last delivery is acknowledged"
    );
    assert_eq!(settled.acknowledged, 1);

    let view = json_body(
        &stack
            .status()
            .handle(request(
                aws_lambda_events::http::Method::GET,
                &format!("/jobs/{job_id}"),
                Some("user-a"),
                None,
            ))
            .await,
    );
    assert_eq!(view["status"], "failed");
    assert_eq!(view["error"]["code"], "model_unavailable");
    assert!(
        view["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many requests")
    );
    assert!(view["completed_at"].is_string());
    assert!(view.get("output").is_none() && view.get("artifact").is_none());
    assert_eq!(stack.bedrock.calls().len(), MAX_ATTEMPTS as usize);
    assert_eq!(stack.artifact_count().await, 0);
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn a_server_error_is_retryable_too() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "flaky").await;
    stack.bedrock.fail_next(Fault::ServerError);
    let worker = stack.worker();
    let (_, response, _) = stack.deliver_once(&worker).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    stack.deliver_once(&worker).await;
    assert_eq!(status_of(&stack, &job_id).await.0, "succeeded");
}

#[tokio::test]
async fn a_validation_error_fails_the_job_at_once_as_model_error() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "bad request").await;
    stack.bedrock.fail_next(Fault::Reject(
        "The provided model identifier is invalid.".into(),
    ));
    let worker = stack.worker();
    let (_, response, settled) = stack.deliver_once(&worker).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(settled.acknowledged, 1);

    let item = stack.item(&job_id).await.unwrap();
    assert_eq!(item["status"].as_s().unwrap(), "failed");
    assert_eq!(item["error_code"].as_s().unwrap(), "model_error");
    assert_eq!(
        item["error_message"].as_s().unwrap(),
        "The provided model identifier is invalid."
    );
    assert!(item.contains_key("completed_at"));
    assert_eq!(
        stack.text_of(&job_id).await,
        None,
        "the model wrote nothing"
    );
    assert_eq!(stack.bedrock.calls().len(), 1);
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn malformed_messages_are_acknowledged_without_a_model_call() {
    let stack = Stack::new().await;
    for body in [
        "not json",
        "{}",
        r#"{"job_id": "nope"}"#,
        r#"{"job_id": 7}"#,
    ] {
        send_raw(&stack, body).await;
    }
    let worker = stack.worker();
    let (event, response, settled) = stack.deliver_once(&worker).await;
    assert_eq!(event.records.len(), 4);
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(settled.acknowledged, 4);
    assert!(stack.bedrock.calls().is_empty());
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn a_message_for_a_missing_job_is_acknowledged() {
    let stack = Stack::new().await;
    let ghost = JobId::random();
    send_raw(&stack, &format!(r#"{{"job_id":"{ghost}"}}"#)).await;
    let worker = stack.worker();
    let (_, response, settled) = stack.deliver_once(&worker).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(settled.acknowledged, 1);
    assert!(stack.bedrock.calls().is_empty());
    assert!(
        stack.item(&ghost.to_string()).await.is_none(),
        "no record is conjured up"
    );
}

#[tokio::test]
async fn a_model_slower_than_the_invocation_allows_is_retried() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "take your time").await;
    stack
        .bedrock
        .fail_next(Fault::Delay(Duration::from_secs(5)));
    let worker = stack.worker();

    // 2 s left, 0.5 s of which are kept for writing: the call is abandoned after 1.5 s,
    // long before the model's answer at 5 s would have made the job succeed.
    let (_, response, _) = stack.deliver(&worker, Duration::from_secs(2)).await;
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(status_of(&stack, &job_id).await.0, "running");

    stack.deliver_once(&worker).await;
    assert_eq!(
        status_of(&stack, &job_id).await,
        ("succeeded".into(), "2".into())
    );
}

#[tokio::test]
async fn a_batch_runs_its_jobs_concurrently() {
    let stack = Stack::new().await;
    let mut jobs = Vec::new();
    for i in 0..4 {
        jobs.push(stack.submit("user-a", &format!("job {i}")).await);
        // Each call answers only when all four are in flight: one at a time would fail.
        stack.bedrock.fail_next(Fault::Rendezvous(4));
    }
    let worker = stack.worker();
    let (event, response, _) = stack.deliver_once(&worker).await;
    assert_eq!(event.records.len(), 4);
    assert!(response.batch_item_failures.is_empty());
    for job_id in jobs {
        assert_eq!(status_of(&stack, &job_id).await.0, "succeeded");
    }
}

#[tokio::test]
async fn no_job_succeeds_without_its_artifact() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "keep a record").await;
    let broken = stack.worker_with_bucket("no-such-bucket");
    let (_, response, _) = stack.deliver_once(&broken).await;
    assert_eq!(response.batch_item_failures.len(), 1, "retried, not lost");
    assert_eq!(status_of(&stack, &job_id).await.0, "running");

    let worker = stack.worker();
    stack.deliver_once(&worker).await;
    assert_eq!(status_of(&stack, &job_id).await.0, "succeeded");
    let key = stack.item(&job_id).await.unwrap()["artifact_key"]
        .as_s()
        .unwrap()
        .clone();
    assert!(stack.artifact(&key).await.is_some());
    assert_eq!(stack.artifact_count().await, 1);
}
