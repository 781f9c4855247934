//! The local gateway's authorizer, with real tokens signed by moto's Cognito and forgeries
//! of them: every bad token is a 401 that reaches no function.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_cognitoidentityprovider::Client as Cognito;
use axum::Router;
use axum::extract::{Path, Request};
use integration_tests::jwt::{decode, encode, forgeries, segments};
use integration_tests::*;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use local::authorizer::JwtAuthorizer;
use local::events::EventApi;
use local::gateway::{self, GatewayConfig};
use local::provision::{UserPool, create_user, create_user_pool};
use serde_json::{Value, json};

/// A function that counts its calls and answers with the claims it was given.
#[derive(Clone, Default)]
struct Recorder(Arc<AtomicUsize>);

impl Recorder {
    fn router(&self) -> Router {
        let calls = self.0.clone();
        // A route with a path parameter, as the status function has: it must see its own.
        let counted = calls.clone();
        let job = move |Path(id): Path<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { axum::Json(json!({ "id": id })) }
        };
        Router::new()
            .route("/jobs/{id}", axum::routing::get(job))
            .fallback(move |request: Request| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let claims = match request.request_context_ref() {
                        Some(RequestContext::ApiGatewayV2(context)) => context
                            .authorizer
                            .as_ref()
                            .and_then(|authorizer| authorizer.jwt.as_ref())
                            .map(|jwt| json!(jwt.claims)),
                        _ => None,
                    };
                    axum::Json(json!({ "claims": claims, "path": request.uri().path() }))
                }
            })
    }

    fn calls(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves the gateway (with `clock_skew` seconds added to its clock) and returns its URL.
async fn serve(pool: &UserPool, functions: &Recorder, clock_skew: i64) -> String {
    serve_with(
        authorizer(pool, jwks_url(pool), clock_skew),
        pool,
        functions,
    )
    .await
}

async fn serve_with(authorizer: JwtAuthorizer, pool: &UserPool, functions: &Recorder) -> String {
    let web_dir = std::env::temp_dir().join("gateway-test-web");
    std::fs::create_dir_all(&web_dir).unwrap();
    std::fs::write(web_dir.join("index.html"), "<h1>ui</h1>").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    // The Event API's own authorizer is never asked here: no JWKS fetch comes from it.
    let events = Arc::new(EventApi::new(
        integration_tests::authorizer(pool, jwks_url(pool), 0),
        "us-east-1",
    ));
    let app = gateway::router(
        functions.router(),
        functions.router(),
        events.router(),
        authorizer,
        GatewayConfig {
            web_dir,
            web_config: json!({ "userPoolId": pool.pool_id, "userPoolClientId": pool.client_id }),
            cognito_endpoint: format!("{}/", moto_url()),
            allowed_origin: ORIGIN.into(),
            port,
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn get(url: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut call = reqwest::Client::new()
        .post(format!("{url}/generate"))
        .body("{}");
    if let Some(token) = bearer {
        call = call.bearer_auth(token);
    }
    let response = call.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn only_a_valid_access_token_of_our_client_reaches_a_function() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-test").await.unwrap();
    let tokens = tokens(&stack.aws, &pool, "ada@example.com").await;
    let calls = Recorder::default();
    let url = serve(&pool, &calls, 0).await;

    // The real thing passes, with its claims as API Gateway would pass them.
    let (status, body) = get(&url, Some(&tokens.access)).await;
    assert_eq!(status, 200, "{body}");
    let claims = &body["claims"];
    assert_eq!(claims["token_use"], "access");
    assert_eq!(claims["client_id"], pool.client_id.as_str());
    assert_eq!(claims["sub"], decode(&segments(&tokens.access)[1])["sub"]);
    assert_eq!(body["path"], "/generate");
    assert_eq!(calls.calls(), 1);
    let job = reqwest::Client::new()
        .get(format!("{url}/jobs/job-1"))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 200);
    assert_eq!(job.json::<Value>().await.unwrap()["id"], "job-1");
    let usage = reqwest::Client::new()
        .get(format!("{url}/usage"))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap();
    assert_eq!(usage.status(), 200, "GET /usage is the status function's");
    assert_eq!(usage.json::<Value>().await.unwrap()["path"], "/usage");
    let anonymous = reqwest::get(format!("{url}/usage")).await.unwrap();
    assert_eq!(anonymous.status(), 401, "behind the authorizer");
    assert_eq!(calls.calls(), 3);

    let forged = forgeries(&tokens.access);
    let bad_tokens = forged
        .iter()
        .map(|(case, token)| (*case, Some(token.as_str())))
        .chain([
            ("an ID token", Some(tokens.id.as_str())),
            (
                "another app client's token",
                Some(tokens.other_client_access.as_str()),
            ),
            ("no Authorization header", None),
        ]);
    for (case, token) in bad_tokens {
        let (status, body) = get(&url, token).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");
    }
    assert_eq!(calls.calls(), 3, "no refused request reached a function");

    // Two hours later, the same token has expired.
    let later = serve(&pool, &calls, 2 * 3600).await;
    let (status, _) = get(&later, Some(&tokens.access)).await;
    assert_eq!(status, 401, "an expired token");
    // An hour earlier, it was issued in the future (iat), which API Gateway refuses too.
    let earlier = serve(&pool, &calls, -3600).await;
    let (status, _) = get(&earlier, Some(&tokens.access)).await;
    assert_eq!(status, 401, "a token issued in the future");
    assert_eq!(calls.calls(), 3);
}

/// Deployed, a request that is neither an API route nor a GET of the web UI's files reaches
/// the status function through the HTTP API's `$default` route, behind the authorizer: `401`
/// without a token, the function's own JSON `404` with one. Locally it once got the static
/// files' empty `405`.
#[tokio::test]
async fn other_methods_on_unknown_paths_reach_the_functions_behind_the_authorizer() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-test-default")
        .await
        .unwrap();
    let tokens = tokens(&stack.aws, &pool, "ada@example.com").await;
    let calls = Recorder::default();
    let url = serve(&pool, &calls, 0).await;
    let http = reqwest::Client::new();
    let methods = [
        reqwest::Method::DELETE,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::POST,
    ];
    for method in methods {
        for path in ["/nope", "/conversations/x", "/index.html"] {
            let what = format!("{method} {path}");
            let anonymous = http
                .request(method.clone(), format!("{url}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(anonymous.status(), 401, "{what}");
            assert_eq!(
                anonymous.headers()["content-type"],
                "application/json",
                "{what}"
            );
            let body: Value = anonymous.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{what}");

            let before = calls.calls();
            let signed_in = http
                .request(method.clone(), format!("{url}{path}"))
                .bearer_auth(&tokens.access)
                .send()
                .await
                .unwrap();
            assert_eq!(signed_in.status(), 200, "{what}: the recorder answered");
            let body: Value = signed_in.json().await.unwrap();
            assert_eq!(body["path"], path, "{what}");
            assert_eq!(calls.calls(), before + 1, "{what}");
        }
    }
}

#[tokio::test]
async fn preflights_static_files_and_unknown_paths_need_no_token() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-test-2")
        .await
        .unwrap();
    let calls = Recorder::default();
    let url = serve(&pool, &calls, 0).await;
    let http = reqwest::Client::new();

    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{url}/jobs/123"))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], ORIGIN);

    let page = http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), "<h1>ui</h1>");

    let config: Value = http
        .get(format!("{url}/config.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["userPoolId"], pool.pool_id.as_str());

    let missing = http
        .get(format!("{url}/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    assert_eq!(calls.calls(), 0);
}

async fn cognito_call(url: &str, target: Option<&str>, body: Value) -> (u16, Value) {
    let mut call = reqwest::Client::new()
        .post(format!("{url}/cognito"))
        .header("content-type", "application/x-amz-json-1.1")
        .json(&body);
    if let Some(target) = target {
        call = call.header("x-amz-target", target);
    }
    let response = call.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_cognito_proxy_forwards_only_the_web_uis_own_calls() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-proxy").await.unwrap();
    create_user(&stack.aws, &pool, "ada@example.com", PASSWORD)
        .await
        .unwrap();
    let url = serve(&pool, &Recorder::default(), 0).await;

    let (status, body) = cognito_call(
        &url,
        Some("AWSCognitoIdentityProviderService.InitiateAuth"),
        json!({"AuthFlow": "USER_PASSWORD_AUTH", "ClientId": pool.client_id,
               "AuthParameters": {"USERNAME": "ada@example.com", "PASSWORD": PASSWORD}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["AuthenticationResult"]["AccessToken"].is_string());

    let admin_create = json!({"UserPoolId": pool.pool_id, "Username": "mallory@example.com"});
    for (target, body) in [
        (
            Some("AWSCognitoIdentityProviderService.AdminCreateUser"),
            admin_create,
        ),
        (
            Some("AWSCognitoIdentityProviderService.ListUserPools"),
            json!({"MaxResults": 10}),
        ),
        (
            Some("AWSCognitoIdentityProviderService.ListUsers"),
            json!({"UserPoolId": pool.pool_id}),
        ),
        (Some("DynamoDB_20120810.ListTables"), json!({})),
        (Some("AmazonSQS.ListQueues"), json!({})),
        (None, json!({"Action": "ListQueues"})),
    ] {
        let (status, answer) = cognito_call(&url, target, body).await;
        assert_eq!(status, 403, "{target:?}: {answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains("forwards only"), "{message}");
    }
    let created = Cognito::new(&stack.aws)
        .admin_get_user()
        .user_pool_id(&pool.pool_id)
        .username("mallory@example.com")
        .send()
        .await;
    assert!(
        created.is_err(),
        "the refused admin call never reached Cognito"
    );
}

#[tokio::test]
async fn only_requests_addressed_to_the_gateway_by_name_are_answered() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-host").await.unwrap();
    let url = serve(&pool, &Recorder::default(), 0).await;
    let port = url.rsplit(':').next().unwrap();
    let http = reqwest::Client::new();
    for (host, expected) in [
        (format!("127.0.0.1:{port}"), 200),
        (format!("localhost:{port}"), 200),
        (format!("attacker.example:{port}"), 403),
        ("127.0.0.1".to_owned(), 403),
        (format!("localhost.attacker.example:{port}"), 403),
    ] {
        let response = http
            .get(format!("{url}/config.json"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "Host: {host}");
    }
}

#[tokio::test]
async fn an_unknown_key_id_refetches_the_jwks_at_most_once_per_interval() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-jwks").await.unwrap();
    let tokens = tokens(&stack.aws, &pool, "ada@example.com").await;

    // A JWKS endpoint in front of moto's that counts its fetches.
    let fetches = Arc::new(AtomicUsize::new(0));
    let upstream = jwks_url(&pool);
    let counting = {
        let fetches = fetches.clone();
        Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (fetches, upstream) = (fetches.clone(), upstream.clone());
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    reqwest::get(upstream).await.unwrap().text().await.unwrap()
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, counting).await.unwrap() });
    let calls = Recorder::default();
    let url = serve_with(authorizer(&pool, jwks, 0), &pool, &calls).await;

    let [header, payload, signature] = <[String; 3]>::try_from(segments(&tokens.access)).unwrap();
    for n in 0..5 {
        let mut made_up = decode(&header);
        made_up["kid"] = json!(format!("made-up-{n}"));
        let token = format!("{}.{payload}.{signature}", encode(&made_up));
        assert_eq!(get(&url, Some(&token)).await.0, 401);
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch for five unknown keys"
    );
    // The real key came with that one fetch.
    assert_eq!(get(&url, Some(&tokens.access)).await.0, 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    assert_eq!(calls.calls(), 1);
}

/// The first requests of a fresh gateway arrive together, before it has the pool's keys:
/// they all wait for the one fetch, and none is refused for a key it did not have yet.
#[tokio::test]
async fn concurrent_first_requests_wait_for_the_keys_and_pass() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-first").await.unwrap();
    let tokens = tokens(&stack.aws, &pool, "ada@example.com").await;
    let calls = Recorder::default();
    let url = serve(&pool, &calls, 0).await;
    let requests = (0..8).map(|_| get(&url, Some(&tokens.access)));
    let statuses: Vec<u16> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect();
    assert_eq!(statuses, [200; 8]);
    assert_eq!(calls.calls(), 8);
}

#[tokio::test]
async fn the_ui_is_served_with_security_headers_and_odd_names_are_404() {
    let stack = Stack::new().await;
    let pool = create_user_pool(&stack.aws, "gateway-static")
        .await
        .unwrap();
    let url = serve(&pool, &Recorder::default(), 0).await;
    let http = reqwest::Client::new();

    let page = http.get(format!("{url}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    // The page's own <meta> policy says the same, for where no header is set.
    let index = std::fs::read_to_string(workspace_root().join("web/index.html")).unwrap();
    assert!(
        index.contains(&format!("content=\"{policy}\"")),
        "web/index.html's CSP differs"
    );

    let long_name = "a".repeat(300);
    for path in [
        long_name.as_str(),
        "%00",
        "a%00b.js",
        "..%2f..%2fetc%2fpasswd",
        "%ff%fe",
        "index.html/x",
    ] {
        let response = http.get(format!("{url}/{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "/{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "/{path}");
    }
}
