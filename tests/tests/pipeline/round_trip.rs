use aws_lambda_events::http::Method;
use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::*;
use pipeline::domain::parse_timestamp;
use serde_json::json;

#[tokio::test]
async fn a_prompt_goes_all_the_way_to_an_artifact_and_back() {
    let stack = Stack::new().await;
    let body = json!({
        "prompt": "  Explain SQS visibility timeouts  ",
        "model": OTHER_MODEL,
        "max_tokens": 200,
        "temperature": 0.25,
        "system": "You are terse."
    })
    .to_string();

    // POST /generate answers 202 at once, with the job's address.
    let response = stack
        .api()
        .handle(request(
            Method::POST,
            "/generate",
            Some("user-a"),
            Some(&body),
        ))
        .await;
    assert_eq!(response.status_code, 202);
    let accepted = json_body(&response);
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&job_id).unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(job_id, job_id.to_lowercase());
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["links"]["self"], format!("/jobs/{job_id}"));
    assert_eq!(response.headers["location"], format!("/jobs/{job_id}"));
    assert_eq!(response.headers["access-control-allow-origin"], ORIGIN);
    let created_at = accepted["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == 24,
        "{created_at}"
    );
    assert_eq!(accepted.as_object().unwrap().len(), 4, "{accepted}");

    // The record holds the request, in the contract's attribute names and types.
    let item = stack.item(&job_id).await.unwrap();
    let text = |name: &str| item[name].as_s().unwrap().clone();
    let number = |name: &str| item[name].as_n().unwrap().clone();
    assert_eq!(text("owner"), "user-a");
    assert_eq!(text("status"), "queued");
    assert_eq!(text("model_id"), OTHER_MODEL);
    // The prompt and the system prompt are kept beside the state, which every change and
    // every poll touches, in an item of their own that never changes.
    assert!(!item.contains_key("prompt") && !item.contains_key("system"));
    let asked = stack.request_item(&job_id).await.unwrap();
    assert_eq!(
        asked["prompt"].as_s().unwrap(),
        "Explain SQS visibility timeouts"
    );
    assert_eq!(asked["system"].as_s().unwrap(), "You are terse.");
    assert_eq!(asked["expires_at"], item["expires_at"]);
    assert!(!asked.contains_key("owner") && !asked.contains_key("unfinished"));
    assert_eq!(number("max_tokens"), "200");
    assert_eq!(number("temperature"), "0.25");
    assert_eq!(number("attempts"), "0");
    assert_eq!(text("created_at"), created_at);
    let created = parse_timestamp(created_at).unwrap();
    let ttl: i64 = number("expires_at").parse().unwrap();
    assert_eq!(ttl, (created + chrono::Duration::days(30)).timestamp());
    assert!(!item.contains_key("idempotency_key"));

    // The message carries the id only.
    assert_eq!(
        stack.queued_bodies().await,
        [json!({ "job_id": job_id }).to_string()]
    );

    // The worker runs it.
    let worker = stack.worker();
    let (event, response, settled) = stack.deliver_once(&worker).await;
    assert_eq!(event.records.len(), 1);
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(settled.acknowledged, 1);
    assert!(
        stack.queued_bodies().await.is_empty(),
        "the message is deleted"
    );

    // The model got what was asked, through the Converse API.
    let calls = stack.bedrock.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].model, OTHER_MODEL);
    let sent = &calls[0].body;
    assert_eq!(sent["messages"][0]["role"], "user");
    assert_eq!(
        sent["messages"][0]["content"][0]["text"],
        "Explain SQS visibility timeouts"
    );
    assert_eq!(sent["system"][0]["text"], "You are terse.");
    assert_eq!(sent["inferenceConfig"]["maxTokens"], 200);
    assert!((sent["inferenceConfig"]["temperature"].as_f64().unwrap() - 0.25).abs() < 1e-6);

    // The record says succeeded, with output and usage.
    let item = stack.item(&job_id).await.unwrap();
    let text = |name: &str| item[name].as_s().unwrap().clone();
    assert_eq!(text("status"), "succeeded");
    assert_eq!(item["attempts"], AttributeValue::N("1".into()));
    // The answer is the pieces the state names, joined.
    assert!(!item.contains_key("output"));
    let output = stack.text_of(&job_id).await.unwrap();
    assert_eq!(
        item["text_bytes"],
        AttributeValue::N(output.len().to_string())
    );
    assert!(
        output.contains("offline model") && output.ends_with("Explain SQS visibility timeouts")
    );
    assert_eq!(text("stop_reason"), "end_turn");
    // One artifact per attempt: the record names the one that matches it.
    let key = text("artifact_key");
    assert!(
        key.starts_with(&format!("artifacts/user-a/{job_id}/")) && key.ends_with(".json"),
        "{key}"
    );
    let completed_at = text("completed_at");
    assert!(parse_timestamp(&completed_at).unwrap() >= created);
    let output_tokens = output.split_whitespace().count().to_string();
    // The offline model counts words: 4 in the prompt, 3 in the system prompt.
    assert_eq!(item["input_tokens"], AttributeValue::N("7".into()));
    assert_eq!(
        item["output_tokens"],
        AttributeValue::N(output_tokens.clone())
    );

    // The artifact is the contract's JSON.
    let (content_type, artifact) = stack.artifact(&key).await.expect("the artifact exists");
    assert_eq!(content_type, "application/json");
    assert_eq!(artifact["job_id"], job_id);
    assert_eq!(artifact["owner"], "user-a");
    assert_eq!(artifact["model"], OTHER_MODEL);
    assert_eq!(
        artifact["request"],
        json!({"prompt": "Explain SQS visibility timeouts", "system": "You are terse.",
               "max_tokens": 200, "temperature": 0.25})
    );
    assert_eq!(
        artifact["response"],
        json!({"text": output, "stop_reason": "end_turn"})
    );
    assert_eq!(
        artifact["usage"],
        json!({"input_tokens": 7, "output_tokens": output_tokens.parse::<u64>().unwrap()})
    );
    assert_eq!(artifact["created_at"], created_at);
    assert_eq!(artifact["completed_at"], completed_at);
    assert!(artifact["latency_ms"].is_u64());
    // Its cost at the model's shipped price (Claude 3 Haiku: $0.00025 in, $0.00125 out per
    // 1,000 tokens), in nano-dollars: 7 × 250 + n × 1,250.
    let cost_nano = 7 * 250 + output_tokens.parse::<u64>().unwrap() * 1_250;
    assert_eq!(
        item["cost_nano_usd"],
        AttributeValue::N(cost_nano.to_string())
    );
    let cost_usd = cost_nano as f64 / 1e9;
    assert_eq!(artifact["cost_usd"].as_f64(), Some(cost_usd));
    assert_eq!(artifact.as_object().unwrap().len(), 10, "{artifact}");

    // The owner polls and sees it all.
    let response = stack
        .status()
        .handle(request(
            Method::GET,
            &format!("/jobs/{job_id}"),
            Some("user-a"),
            None,
        ))
        .await;
    assert_eq!(response.status_code, 200);
    assert_eq!(response.headers["access-control-allow-origin"], ORIGIN);
    let view = json_body(&response);
    assert_eq!(view["job_id"], job_id);
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["model"], OTHER_MODEL);
    assert_eq!(view["prompt"], "Explain SQS visibility timeouts");
    assert_eq!(view["created_at"], created_at);
    assert_eq!(view["completed_at"], completed_at);
    assert_eq!(view["updated_at"], completed_at);
    assert_eq!(view["output"], output);
    assert_eq!(view["usage"], artifact["usage"]);
    assert_eq!(view["cost_usd"], artifact["cost_usd"]);
    assert_eq!(
        view["artifact"],
        json!({"bucket": stack.resources.bucket, "key": key})
    );
    assert!(view.get("error").is_none());

    // And in the list, without the output.
    let response = stack
        .status()
        .handle(request(Method::GET, "/jobs", Some("user-a"), None))
        .await;
    let list = json_body(&response);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list["jobs"][0]["job_id"], job_id);
    assert_eq!(list["jobs"][0]["usage"], artifact["usage"]);
    assert_eq!(list["jobs"][0]["cost_usd"], artifact["cost_usd"]);
    assert!(list["jobs"][0].get("output").is_none());
    assert_eq!(list["next_cursor"], serde_json::Value::Null);
}
