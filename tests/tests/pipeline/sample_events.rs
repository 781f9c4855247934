//! Every file in `events/` is a valid input of its function and gets the answer it is for.

use std::path::PathBuf;

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use aws_lambda_events::sqs::SqsEvent;
use chrono::Utc;
use integration_tests::*;
use pipeline::domain::{GenerateRequest, Job, JobId, Owner};
use pipeline::ports::JobStore;
use serde::de::DeserializeOwned;

const SAMPLE_OWNER: &str = "7d1f3c2a-5b6e-4f80-9a1b-2c3d4e5f6a7b";

fn sample<T: DeserializeOwned>(name: &str) -> T {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// Puts a queued job with this id in the table, as the api would have.
async fn seed(stack: &Stack, id: &str) {
    let request = GenerateRequest::new("Write a haiku about queues.", DEFAULT_MODEL, 256);
    let mut job = Job::queued(
        Owner::new(SAMPLE_OWNER),
        request,
        None,
        Utc::now(),
        chrono::Duration::days(1),
    );
    job.id = JobId::parse(id).unwrap();
    stack
        .store()
        .insert(&job, &Default::default())
        .await
        .unwrap();
}

#[test]
fn there_is_a_sample_for_each_input() {
    let mut names: Vec<String> =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "generate-invalid.json",
            "generate.json",
            "job-cancel.json",
            "job-status.json",
            "jobs-list.json",
            "recovery-dead-letters.json",
            "recovery-sweep.json",
            "usage.json",
            "worker-batch.json"
        ]
    );
}

#[tokio::test]
async fn generate_json_is_accepted() {
    let stack = Stack::new().await;
    let event: ApiGatewayV2httpRequest = sample("generate.json");
    let response = stack.api().handle(event.clone()).await;
    assert_eq!(response.status_code, 202, "{:?}", response.body);
    let item = stack
        .item(json_body(&response)["job_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(item["owner"].as_s().unwrap(), SAMPLE_OWNER);
    assert_eq!(item["idempotency_key"].as_s().unwrap(), "haiku-2026-11-22");
    // The sample carries an Idempotency-Key: sending it again is the same job.
    assert_eq!(stack.api().handle(event).await.status_code, 200);
}

#[tokio::test]
async fn usage_json_shows_the_owners_use_of_the_day_and_month() {
    let stack = Stack::new().await;
    let event: ApiGatewayV2httpRequest = sample("usage.json");
    let before = json_body(&stack.status().handle(event.clone()).await);
    assert_eq!(before["day"]["jobs"], 0);
    stack.api().handle(sample("generate.json")).await;
    let response = stack.status().handle(event).await;
    assert_eq!(response.status_code, 200, "{:?}", response.body);
    let after = json_body(&response);
    for period in ["day", "month"] {
        assert_eq!(
            after[period]["jobs"], 1,
            "{period}: the sample job, by the same owner"
        );
        assert!(after[period]["reserved_tokens"].as_u64().unwrap() > 0);
    }
}

#[tokio::test]
async fn generate_invalid_json_is_refused_with_the_field_named() {
    let stack = Stack::new().await;
    let response = stack.api().handle(sample("generate-invalid.json")).await;
    let message = assert_error(&response, 400, "invalid_request");
    assert!(message.contains("\"stream\""), "{message}");
}

#[tokio::test]
async fn job_status_jobs_list_and_job_cancel_act_on_the_owners_job() {
    let stack = Stack::new().await;
    let status_event: ApiGatewayV2httpRequest = sample("job-status.json");
    let id = status_event.path_parameters["id"].clone();
    assert_eq!(
        stack
            .status()
            .handle(status_event.clone())
            .await
            .status_code,
        404
    );

    seed(&stack, &id).await;
    let response = stack.status().handle(status_event).await;
    assert_eq!(response.status_code, 200);
    assert_eq!(json_body(&response)["job_id"], id);

    let response = stack.status().handle(sample("jobs-list.json")).await;
    assert_eq!(response.status_code, 200);
    assert_eq!(json_body(&response)["jobs"][0]["job_id"], id);

    let cancel: ApiGatewayV2httpRequest = sample("job-cancel.json");
    assert_eq!(cancel.path_parameters["id"], id, "the same job");
    let response = stack.status().handle(cancel.clone()).await;
    assert_eq!(response.status_code, 200, "{:?}", response.body);
    assert_eq!(json_body(&response)["status"], "cancelled");
}

#[tokio::test]
async fn worker_batch_json_runs_both_jobs() {
    let stack = Stack::new().await;
    let event: SqsEvent = sample("worker-batch.json");
    assert_eq!(event.records.len(), 2);
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|record| {
            let body: serde_json::Value =
                serde_json::from_str(record.body.as_deref().unwrap()).unwrap();
            body["job_id"].as_str().unwrap().to_owned()
        })
        .collect();
    for id in &ids {
        seed(&stack, id).await;
    }
    let worker = stack.worker();
    let response = worker
        .handle(lambda_event(event, std::time::Duration::from_secs(60)))
        .await;
    assert!(response.batch_item_failures.is_empty());
    for id in &ids {
        assert_eq!(
            stack.item(id).await.unwrap()["status"].as_s().unwrap(),
            "succeeded"
        );
    }
    assert_eq!(stack.bedrock.calls().len(), 2);
}

/// The recovery function's two inputs: the dead letter fails its stranded job, the sweep's
/// tick sends a job that was never enqueued.
#[tokio::test]
async fn recovery_samples_fail_a_dead_lettered_job_and_sweep() {
    let stack = Stack::new().await;
    let recovery = stack.recovery(std::time::Duration::from_secs(60));
    let dead_letters: recovery::RecoveryEvent = sample("recovery-dead-letters.json");
    let recovery::RecoveryEvent::DeadLetters(batch) = &dead_letters else {
        panic!("recovery-dead-letters.json is not a batch of dead letters");
    };
    let body: serde_json::Value =
        serde_json::from_str(batch.records[0].body.as_deref().unwrap()).unwrap();
    seed(&stack, body["job_id"].as_str().unwrap()).await;
    let answer = recovery.handle(dead_letters).await.unwrap();
    assert_eq!(
        serde_json::to_value(&answer).unwrap(),
        serde_json::json!({"batchItemFailures": []})
    );
    let item = stack.item(body["job_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(item["status"].as_s().unwrap(), "failed");
    assert_eq!(item["error_code"].as_s().unwrap(), "worker_error");

    let sweep: recovery::RecoveryEvent = sample("recovery-sweep.json");
    let answer = recovery.handle(sweep).await.unwrap();
    assert_eq!(
        serde_json::to_value(&answer).unwrap(),
        serde_json::json!({"candidates": 0, "requeued": 0, "failed": 0, "errors": 0}),
        "nothing is stranded: the failed job left the index"
    );
}
