//! `GET /jobs/{id}` and `GET /jobs`: only the owner sees a job, pages come newest first.

use aws_lambda_events::http::Method;
use integration_tests::*;
use pipeline::domain::JobId;
use serde_json::Value;

async fn get(
    stack: &Stack,
    path: &str,
    user: Option<&str>,
) -> aws_lambda_events::apigw::ApiGatewayV2httpResponse {
    stack
        .status()
        .handle(request(Method::GET, path, user, None))
        .await
}

#[tokio::test]
async fn a_new_job_shows_as_queued_to_its_owner() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "hello").await;
    let response = get(&stack, &format!("/jobs/{job_id}"), Some("user-a")).await;
    assert_eq!(response.status_code, 200);
    let view = json_body(&response);
    assert_eq!(view["status"], "queued");
    assert_eq!(view["prompt"], "hello");
    assert_eq!(view["model"], DEFAULT_MODEL);
    assert_eq!(view["updated_at"], view["created_at"]);
    for absent in ["completed_at", "output", "usage", "artifact", "error"] {
        assert!(view.get(absent).is_none(), "{absent} before the job ends");
    }
    // Upper-case spelling of the same id finds the same job.
    let upper = get(
        &stack,
        &format!("/jobs/{}", job_id.to_uppercase()),
        Some("user-a"),
    )
    .await;
    assert_eq!(json_body(&upper)["job_id"], job_id);
}

#[tokio::test]
async fn someone_elses_job_unknown_ids_and_non_uuids_are_all_404() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "private").await;
    let foreign = get(&stack, &format!("/jobs/{job_id}"), Some("user-b")).await;
    let unknown = get(
        &stack,
        &format!("/jobs/{}", JobId::random()),
        Some("user-a"),
    )
    .await;
    let not_uuid = get(&stack, "/jobs/12345", Some("user-a")).await;
    for response in [&foreign, &unknown, &not_uuid] {
        assert_error(response, 404, "not_found");
    }
    // Nothing tells a foreign job from a missing one.
    assert_eq!(json_body(&foreign), json_body(&unknown));
}

#[tokio::test]
async fn identity_routes_and_methods_are_checked() {
    let stack = Stack::new().await;
    let job_id = stack.submit("user-a", "x").await;
    assert_error(
        &get(&stack, &format!("/jobs/{job_id}"), None).await,
        401,
        "unauthorized",
    );
    assert_error(&get(&stack, "/jobs", None).await, 401, "unauthorized");
    assert_error(
        &get(&stack, "/elsewhere", Some("user-a")).await,
        404,
        "not_found",
    );
    assert_error(
        &get(&stack, &format!("/jobs/{job_id}/more"), Some("user-a")).await,
        404,
        "not_found",
    );
    for (method, path, allowed) in [
        (Method::POST, format!("/jobs/{job_id}"), "GET,HEAD"),
        (Method::DELETE, "/jobs".to_owned(), "GET,HEAD"),
        // Deployed, the status function is the $default route: /generate's other methods.
        (Method::GET, "/generate".to_owned(), "POST"),
    ] {
        let response = stack
            .status()
            .handle(request(method, &path, Some("user-a"), None))
            .await;
        assert_error(&response, 405, "method_not_allowed");
        assert_eq!(response.headers["allow"], allowed, "{path}");
    }
}

#[tokio::test]
async fn the_list_pages_through_the_callers_jobs_newest_first() {
    let stack = Stack::new().await;
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(stack.submit("user-a", &format!("mine {i}")).await);
        stack.submit("user-b", &format!("theirs {i}")).await;
        // Distinct creation times, so that "newest first" has one right answer.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    mine.reverse();

    let mut seen = Vec::new();
    let mut path = "/jobs?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let response = get(&stack, &path, Some("user-a")).await;
        assert_eq!(response.status_code, 200);
        let page = json_body(&response);
        let jobs = page["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2);
        for job in jobs {
            assert!(job.get("output").is_none());
            assert!(job["prompt"].as_str().unwrap().starts_with("mine"));
            seen.push(job["job_id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        match &page["next_cursor"] {
            Value::String(cursor) => path = format!("/jobs?limit=2&cursor={cursor}"),
            Value::Null => break,
            other => panic!("next_cursor is {other}"),
        }
    }
    assert_eq!(pages, 3, "2 + 2 + 1, and no empty last page");
    assert_eq!(seen, mine);

    // Without a limit: the default page of 20 holds all five.
    let all = json_body(&get(&stack, "/jobs", Some("user-a")).await);
    assert_eq!(all["jobs"].as_array().unwrap().len(), 5);
    assert_eq!(all["next_cursor"], Value::Null);

    // Exactly a page's worth: still no cursor to an empty page.
    let exact = json_body(&get(&stack, "/jobs?limit=5", Some("user-a")).await);
    assert_eq!(exact["jobs"].as_array().unwrap().len(), 5);
    assert_eq!(exact["next_cursor"], Value::Null);
}

#[tokio::test]
async fn a_caller_with_no_jobs_gets_an_empty_list() {
    let stack = Stack::new().await;
    let body = json_body(&get(&stack, "/jobs", Some("nobody")).await);
    assert_eq!(body, serde_json::json!({"jobs": [], "next_cursor": null}));
}

#[tokio::test]
async fn bad_limits_and_cursors_are_400() {
    let stack = Stack::new().await;
    for query in [
        "limit=0",
        "limit=101",
        "limit=ten",
        "limit=-1",
        "limit=2.5",
        "cursor=garbage",
        "cursor=eyJ9",
    ] {
        let response = get(&stack, &format!("/jobs?{query}"), Some("user-a")).await;
        let message = assert_error(&response, 400, "invalid_request");
        let field = query.split('=').next().unwrap();
        assert!(message.contains(&format!("{field} ")), "{query}: {message}");
    }
    assert_eq!(
        get(&stack, "/jobs?limit=100", Some("user-a"))
            .await
            .status_code,
        200
    );
}
