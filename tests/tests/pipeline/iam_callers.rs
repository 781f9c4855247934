//! `ApiAuth=iam`: machine clients sign with SigV4, and a job belongs to the IAM principal.

use aws_lambda_events::http::Method;
use integration_tests::*;

const CI_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/ci-runner/session-1";
const OTHER_USER: &str = "arn:aws:iam::123456789012:user/someone-else";

#[tokio::test]
async fn an_iam_principal_owns_and_polls_its_jobs() {
    let stack = Stack::new().await;
    let response = stack
        .api()
        .handle(iam_request(
            Method::POST,
            "/generate",
            CI_ROLE,
            Some(r#"{"prompt": "from CI"}"#),
        ))
        .await;
    assert_eq!(response.status_code, 202, "{:?}", response.body);
    let job_id = json_body(&response)["job_id"].as_str().unwrap().to_owned();
    assert_eq!(
        stack.item(&job_id).await.unwrap()["owner"].as_s().unwrap(),
        CI_ROLE
    );

    stack.deliver_once(&stack.worker()).await;
    let key = stack.item(&job_id).await.unwrap()["artifact_key"]
        .as_s()
        .unwrap()
        .clone();
    assert!(key.starts_with(&format!("artifacts/{CI_ROLE}/{job_id}/")));
    assert_eq!(stack.artifact(&key).await.unwrap().1["owner"], CI_ROLE);

    let path = format!("/jobs/{job_id}");
    let mine = stack
        .status()
        .handle(iam_request(Method::GET, &path, CI_ROLE, None))
        .await;
    assert_eq!(json_body(&mine)["status"], "succeeded");
    assert_eq!(json_body(&mine)["artifact"]["key"], key);

    let theirs = stack
        .status()
        .handle(iam_request(Method::GET, &path, OTHER_USER, None))
        .await;
    assert_error(&theirs, 404, "not_found");
    let list = stack
        .status()
        .handle(iam_request(Method::GET, "/jobs", OTHER_USER, None))
        .await;
    assert_eq!(json_body(&list)["jobs"], serde_json::json!([]));
}
