//! `COGNITO_REVOCATION_CHECK`: a token that Cognito no longer honours is refused with `401`,
//! even though it is still correctly signed and unexpired.

use aws_lambda_events::http::{HeaderValue, Method};
use aws_sdk_cognitoidentityprovider::Client as Cognito;
use base64::Engine;
use integration_tests::*;
use local::provision::{create_user, create_user_pool};
use pipeline::adapters::CognitoSessionCheck;

/// Signs a new user in on moto's Cognito and returns the (real, RS256-signed) access token.
async fn access_token(stack: &Stack, email: &str) -> String {
    let pool = create_user_pool(
        &stack.aws,
        &format!("pool-{}", uuid::Uuid::new_v4().simple()),
    )
    .await
    .unwrap();
    create_user(&stack.aws, &pool, email, PASSWORD)
        .await
        .unwrap();
    sign_in(&stack.aws, &pool.client_id, email)
        .await
        .access_token
        .unwrap()
}

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_signed_out_token_is_refused_when_the_check_is_on() {
    let stack = Stack::new().await;
    let token = access_token(&stack, "ada@example.com").await;
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "RS256", "a real signed JWT");
    let claims = claims(&token);
    assert_eq!(claims["token_use"], "access");
    let sub = claims["sub"].as_str().unwrap();

    let api = stack.api_with(
        &stack.resources.queue_url,
        stack.api_settings(),
        Some(CognitoSessionCheck::new(&stack.aws)),
    );
    let status = stack.status_with(Some(CognitoSessionCheck::new(&stack.aws)));
    let signed = |method: Method, path: &str, bearer: &str| {
        let body = (method == Method::POST).then_some(r#"{"prompt": "hi"}"#);
        let mut event = request(method, path, Some(sub), body);
        event.headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {bearer}")).unwrap(),
        );
        event
    };

    let event = |bearer: &str| signed(Method::POST, "/generate", bearer);
    let response = api.handle(event(&token)).await;
    assert_eq!(response.status_code, 202, "{:?}", response.body);
    let job = format!("/jobs/{}", json_body(&response)["job_id"].as_str().unwrap());
    let read = status.handle(signed(Method::GET, &job, &token)).await;
    assert_eq!(read.status_code, 200, "{:?}", read.body);

    Cognito::new(&stack.aws)
        .global_sign_out()
        .access_token(&token)
        .send()
        .await
        .unwrap();
    assert_error(&api.handle(event(&token)).await, 401, "unauthorized");
    assert_error(&api.handle(event("not-a-token")).await, 401, "unauthorized");
    // Reads too: a signed-out token sees nothing, not even its own jobs.
    for path in [job.as_str(), "/jobs"] {
        let read = status.handle(signed(Method::GET, path, &token)).await;
        assert_error(&read, 401, "unauthorized");
    }
    assert_eq!(
        stack.queued_bodies().await.len(),
        1,
        "only the first request made a job"
    );
}
