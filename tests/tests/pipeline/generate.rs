//! `POST /generate`: validation, identity, idempotency and dependency failures.

use aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use aws_lambda_events::http::{HeaderValue, Method};
use integration_tests::*;
use serde_json::json;

async fn post(stack: &Stack, user: Option<&str>, body: &str) -> ApiGatewayV2httpResponse {
    post_to(&stack.api(), user, body).await
}

async fn post_to(api: &axum::Router, user: Option<&str>, body: &str) -> ApiGatewayV2httpResponse {
    api.handle(request(Method::POST, "/generate", user, Some(body)))
        .await
}

#[tokio::test]
async fn no_identity_is_401_and_nothing_is_recorded() {
    let stack = Stack::new().await;
    let response = post(&stack, None, r#"{"prompt": "hi"}"#).await;
    assert_error(&response, 401, "unauthorized");
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn every_bad_body_gets_its_status_and_code() {
    let stack = Stack::new().await;
    let long_prompt = json!({ "prompt": "x".repeat(MAX_PROMPT_CHARS + 1) }).to_string();
    let long_system =
        json!({ "prompt": "hi", "system": "y".repeat(MAX_PROMPT_CHARS + 1) }).to_string();
    let huge_body = json!({ "prompt": "z".repeat(300 * 1024) }).to_string();
    let cases: Vec<(&str, i64, &str, &str)> = vec![
        ("not json", 400, "invalid_json", "not valid JSON"),
        ("", 400, "invalid_json", "not valid JSON"),
        ("[1, 2]", 400, "invalid_json", "JSON object"),
        ("{}", 400, "invalid_request", "prompt"),
        (
            r#"{"prompt": "hi", "colour": "red"}"#,
            400,
            "invalid_request",
            "\"colour\"",
        ),
        (
            r#"{"prompt": "hi", "max_tokens": 5000}"#,
            400,
            "invalid_request",
            "max_tokens",
        ),
        (
            r#"{"prompt": "hi", "temperature": 2}"#,
            400,
            "invalid_request",
            "temperature",
        ),
        (
            r#"{"prompt": "hi", "model": "gpt-4"}"#,
            400,
            "unsupported_model",
            OTHER_MODEL,
        ),
        (&long_prompt, 413, "prompt_too_long", "prompt"),
        (&long_system, 413, "prompt_too_long", "system"),
        (&huge_body, 413, "prompt_too_long", "262144"),
    ];
    for (body, status, code, fragment) in cases {
        let response = post(&stack, Some("user-a"), body).await;
        let message = assert_error(&response, status, code);
        assert!(
            message.contains(fragment),
            "{code}: {message:?} lacks {fragment:?}"
        );
    }
    assert!(
        stack.queued_bodies().await.is_empty(),
        "no bad request reaches the queue"
    );
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let stack = Stack::new().await;
    let api = stack.api();
    let response = api
        .handle(request(
            Method::POST,
            "/generate/more",
            Some("user-a"),
            Some("{}"),
        ))
        .await;
    assert_error(&response, 404, "not_found");
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let response = api
            .handle(request(method.clone(), "/generate", Some("user-a"), None))
            .await;
        let message = assert_error(&response, 405, "method_not_allowed");
        assert!(message.contains(method.as_str()), "{message}");
        assert_eq!(
            response.headers["allow"], "POST",
            "RFC 9110: a 405 says what is allowed"
        );
    }
}

/// What an outside contract tester found: values inside the contract's ranges that were
/// refused, or accepted but then refused by DynamoDB.
#[tokio::test]
async fn every_value_the_contract_allows_is_accepted_and_stored() {
    let stack = Stack::new().await;
    let cases = [
        (
            json!({"prompt": "hi", "temperature": 1e-200}),
            "temperature",
            "0",
        ),
        (
            json!({"prompt": "hi", "temperature": 5e-324}),
            "temperature",
            "0",
        ),
        (
            json!({"prompt": "hi", "temperature": 0.7}),
            "temperature",
            "0.7",
        ),
        (
            json!({"prompt": "hi", "max_tokens": 747.0}),
            "max_tokens",
            "747",
        ),
        (
            json!({"prompt": "hi", "max_tokens": 1e3}),
            "max_tokens",
            "1000",
        ),
        (
            json!({"prompt": "hi", "max_tokens": null}),
            "max_tokens",
            "512",
        ),
    ];
    for (body, attribute, stored) in cases {
        let response = post(&stack, Some("user-a"), &body.to_string()).await;
        assert_eq!(response.status_code, 202, "{body}: {:?}", response.body);
        let id = json_body(&response)["job_id"].as_str().unwrap().to_owned();
        let item = stack.item(&id).await.unwrap();
        assert_eq!(item[attribute].as_n().unwrap(), stored, "{body}");
    }
    let nulls = json!({"prompt": "hi", "model": null, "temperature": null, "system": null});
    let response = post(&stack, Some("user-a"), &nulls.to_string()).await;
    assert_eq!(
        response.status_code, 202,
        "null means absent: {:?}",
        response.body
    );
    let item = stack
        .item(json_body(&response)["job_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(item["model_id"].as_s().unwrap(), DEFAULT_MODEL);
    assert!(!item.contains_key("temperature") && !item.contains_key("system"));
}

#[tokio::test]
async fn preflight_is_answered_with_cors() {
    let stack = Stack::new().await;
    let response = stack
        .api()
        .handle(request(Method::OPTIONS, "/generate", None, None))
        .await;
    assert_eq!(response.status_code, 204);
    assert_eq!(response.headers["access-control-allow-origin"], ORIGIN);
    let allowed = response.headers["access-control-allow-headers"]
        .to_str()
        .unwrap();
    let allowed = allowed.to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("idempotency-key"));
}

#[tokio::test]
async fn a_base64_body_is_accepted() {
    let stack = Stack::new().await;
    let mut event = request(
        Method::POST,
        "/generate",
        Some("user-a"),
        Some("eyJwcm9tcHQiOiAiaGkifQ=="),
    );
    event.is_base64_encoded = true;
    let response = stack.api().handle(event).await;
    assert_eq!(response.status_code, 202, "{:?}", response.body);
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_job() {
    let stack = Stack::new().await;
    let api = stack.api();
    let body = r#"{"prompt": "once only"}"#;

    let first = api.handle(with_key(body, "user-a", "order-1")).await;
    assert_eq!(first.status_code, 202);
    let first_body = json_body(&first);
    let job_id = first_body["job_id"].as_str().unwrap();
    assert_eq!(
        stack.item(job_id).await.unwrap()["idempotency_key"]
            .as_s()
            .unwrap(),
        "order-1"
    );

    let again = api.handle(with_key(body, "user-a", "order-1")).await;
    assert_eq!(again.status_code, 200);
    assert_eq!(
        json_body(&again),
        first_body,
        "the same body shape, for the original job"
    );
    assert_eq!(again.headers["location"], first.headers["location"]);

    // Another user's identical key is another job.
    let other = api.handle(with_key(body, "user-b", "order-1")).await;
    assert_eq!(other.status_code, 202);
    assert_ne!(json_body(&other)["job_id"], first_body["job_id"]);

    assert_eq!(stack.queued_bodies().await.len(), 2, "one message per job");
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_job() {
    let stack = Stack::new().await;
    let api = stack.api();
    let body = r#"{"prompt": "race"}"#;
    let responses =
        futures::future::join_all((0..8).map(|_| api.handle(with_key(body, "user-a", "race-key"))))
            .await;
    let created = responses.iter().filter(|r| r.status_code == 202).count();
    let repeated = responses.iter().filter(|r| r.status_code == 200).count();
    assert_eq!((created, repeated), (1, 7));
    let ids: std::collections::HashSet<_> = responses
        .iter()
        .map(|r| json_body(r)["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(stack.queued_bodies().await.len(), 1);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_400() {
    let stack = Stack::new().await;
    let long = "k".repeat(129);
    for key in ["", long.as_str(), "caf\u{e9}"] {
        let mut event = request(
            Method::POST,
            "/generate",
            Some("user-a"),
            Some(r#"{"prompt": "hi"}"#),
        );
        event.headers.insert(
            "idempotency-key",
            HeaderValue::from_bytes(key.as_bytes()).unwrap(),
        );
        let response = stack.api().handle(event).await;
        let message = assert_error(&response, 400, "invalid_request");
        assert!(message.contains("Idempotency-Key"));
    }
}

#[tokio::test]
async fn a_failed_enqueue_fails_the_job_and_answers_503() {
    let stack = Stack::new().await;
    let missing_queue = format!("{}-missing", stack.resources.queue_url);
    let api = stack.api_with_queue(&missing_queue);
    let mut event = request(
        Method::POST,
        "/generate",
        Some("user-a"),
        Some(r#"{"prompt": "hi"}"#),
    );
    event
        .headers
        .insert("idempotency-key", HeaderValue::from_static("lost-1"));
    let response = api.handle(event).await;
    assert_error(&response, 503, "unavailable");

    // The record is not left queued forever: find it through the owner's list.
    let list = stack
        .status()
        .handle(request(Method::GET, "/jobs", Some("user-a"), None))
        .await;
    let jobs = json_body(&list)["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["status"], "failed");
    assert_eq!(jobs[0]["error"]["code"], "enqueue_failed");
    assert!(jobs[0]["completed_at"].is_string());
}

#[tokio::test]
async fn a_missing_table_is_503_not_a_crash() {
    let stack = Stack::new().await;
    let broken = api::router(
        api::GenerateApi::new(
            pipeline::adapters::DynamoJobStore::new(&stack.aws, "no-such-table"),
            pipeline::adapters::SqsJobQueue::new(&stack.aws, &stack.resources.queue_url),
            &stack.resources.bucket,
            stack.api_settings(),
        ),
        None::<pipeline::adapters::CognitoSessionCheck>,
    );
    let response = broken
        .handle(request(
            Method::POST,
            "/generate",
            Some("user-a"),
            Some(r#"{"prompt": "hi"}"#),
        ))
        .await;
    let message = assert_error(&response, 503, "unavailable");
    assert!(
        !message.contains("no-such-table"),
        "details stay in the log"
    );
    assert!(stack.queued_bodies().await.is_empty());
}

#[tokio::test]
async fn over_the_per_minute_quota_is_429_with_retry_after() {
    let stack = Stack::new().await;
    let mut settings = stack.api_settings();
    settings.jobs_per_minute = Some(2);
    // A fixed minute, 15 s in, so that the test never straddles two windows.
    settings.clock = || chrono::DateTime::from_timestamp(1_795_860_015, 0).unwrap();
    let api = stack.api_with_settings(settings);
    let body = r#"{"prompt": "again"}"#;
    for _ in 0..2 {
        let response = post_to(&api, Some("user-a"), body).await;
        assert_eq!(response.status_code, 202);
    }
    let refused = post_to(&api, Some("user-a"), body).await;
    let message = assert_error(&refused, 429, "rate_limited");
    assert!(
        message.contains("2 jobs") && message.contains("45 s"),
        "{message}"
    );
    assert_eq!(refused.headers["retry-after"], "45");

    // Another caller has a quota of its own; an invalid request costs none.
    let other = post_to(&api, Some("user-b"), body).await;
    assert_eq!(other.status_code, 202);
    let invalid = post_to(&api, Some("user-b"), "{}").await;
    assert_eq!(invalid.status_code, 400);
    let second = post_to(&api, Some("user-b"), body).await;
    assert_eq!(second.status_code, 202);

    assert_eq!(
        stack.queued_bodies().await.len(),
        4,
        "no job for the refused request"
    );
    // The counters never show up as jobs.
    let list = stack
        .status()
        .handle(request(Method::GET, "/jobs", Some("user-a"), None))
        .await;
    assert_eq!(json_body(&list)["jobs"].as_array().unwrap().len(), 2);
}

/// A client that retries a submission with its `Idempotency-Key` asks for nothing new: the
/// repeat answers with the original job even when the caller has used up the minute.
#[tokio::test]
async fn an_idempotent_repeat_is_not_counted_against_the_quota() {
    let stack = Stack::new().await;
    let mut settings = stack.api_settings();
    settings.jobs_per_minute = Some(1);
    settings.clock = || chrono::DateTime::from_timestamp(1_795_860_015, 0).unwrap();
    let api = stack.api_with_settings(settings);
    let body = r#"{"prompt": "once"}"#;
    let first = api.handle(with_key(body, "user-a", "retry-me")).await;
    assert_eq!(first.status_code, 202);
    for _ in 0..3 {
        let again = api.handle(with_key(body, "user-a", "retry-me")).await;
        assert_eq!(again.status_code, 200, "{:?}", again.body);
        assert_eq!(json_body(&again)["job_id"], json_body(&first)["job_id"]);
    }
    let new_key = api.handle(with_key(body, "user-a", "another")).await;
    assert_error(&new_key, 429, "rate_limited");
}
