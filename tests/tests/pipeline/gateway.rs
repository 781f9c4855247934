//! The local gateway's authorizer, with real tokens signed by moto's Cognito and forgeries
//! of them: every bad token is a 401 that reaches no function.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_sdk_cognitoidentityprovider::Client as Cognito;
use aws_sdk_cognitoidentityprovider::types::ExplicitAuthFlowsType;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::*;
use local::authorizer::JwtAuthorizer;
use local::gateway::{self, GatewayConfig, HttpFunction};
use local::provision::{UserPool, create_user, create_user_pool};
use pipeline::http::Cors;
use serde_json::{Value, json};

/// A function that counts its calls and answers with the claims it was given.
#[derive(Clone, Default)]
struct Recorder(Arc<AtomicUsize>);

impl HttpFunction for Recorder {
    async fn invoke(&self, request: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        self.0.fetch_add(1, Ordering::SeqCst);
        let claims = request
            .request_context
            .authorizer
            .and_then(|authorizer| authorizer.jwt)
            .map(|jwt| jwt.claims)
            .unwrap_or_default();
        Cors::new("*").json(
            200,
            &json!({ "claims": claims, "route": request.route_key }),
        )
    }
}

struct Tokens {
    access: String,
    id: String,
    other_client_access: String,
}

async fn tokens(stack: &Stack, pool: &UserPool) -> Tokens {
    create_user(&stack.aws, pool, "ada@example.com", PASSWORD)
        .await
        .unwrap();
    let other_client = Cognito::new(&stack.aws)
        .create_user_pool_client()
        .user_pool_id(&pool.pool_id)
        .client_name("someone-elses-app")
        .explicit_auth_flows(ExplicitAuthFlowsType::AllowUserPasswordAuth)
        .send()
        .await
        .unwrap()
        .user_pool_client
        .unwrap()
        .client_id
        .unwrap();
    let mine = sign_in(&stack.aws, &pool.client_id, "ada@example.com").await;
    let theirs = sign_in(&stack.aws, &other_client, "ada@example.com").await;
    Tokens {
        access: mine.access_token.unwrap(),
        id: mine.id_token.unwrap(),
        other_client_access: theirs.access_token.unwrap(),
    }
}

/// Serves the gateway (with `clock_skew` seconds added to its clock) and returns its URL.
async fn serve(pool: &UserPool, functions: &Recorder, clock_skew: u64) -> String {
    let authorizer = JwtAuthorizer::new(
        format!(
            "https://cognito-idp.us-east-1.amazonaws.com/{}",
            pool.pool_id
        ),
        pool.client_id.clone(),
        format!("{}/{}/.well-known/jwks.json", moto_url(), pool.pool_id),
    )
    .with_clock(Arc::new(move || {
        chrono::Utc::now().timestamp() as u64 + clock_skew
    }));
    let web_dir = std::env::temp_dir().join("gateway-test-web");
    std::fs::create_dir_all(&web_dir).unwrap();
    std::fs::write(web_dir.join("index.html"), "<h1>ui</h1>").unwrap();
    let app = gateway::router(
        functions.clone(),
        functions.clone(),
        authorizer,
        GatewayConfig {
            web_dir,
            web_config: json!({ "userPoolId": pool.pool_id }),
            cognito_endpoint: format!("{}/", moto_url()),
            allowed_origin: ORIGIN.into(),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

fn decode(segment: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
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
    let tokens = tokens(&stack, &pool).await;
    let calls = Recorder::default();
    let url = serve(&pool, &calls, 0).await;

    // The real thing passes, with its claims as API Gateway would pass them.
    let (status, body) = get(&url, Some(&tokens.access)).await;
    assert_eq!(status, 200, "{body}");
    let claims = &body["claims"];
    assert_eq!(claims["token_use"], "access");
    assert_eq!(claims["client_id"], pool.client_id.as_str());
    assert_eq!(claims["sub"], decode(&segments(&tokens.access)[1])["sub"]);
    assert_eq!(body["route"], "POST /generate");
    assert_eq!(calls.0.load(Ordering::SeqCst), 1);

    let [header, payload, signature] = <[String; 3]>::try_from(segments(&tokens.access)).unwrap();
    let mut flipped = signature.clone().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let bad_signature = format!("{header}.{payload}.{}", String::from_utf8(flipped).unwrap());
    let mut claims_of_another = decode(&payload);
    claims_of_another["sub"] = json!("someone-else");
    let tampered = format!("{header}.{}.{signature}", encode(&claims_of_another));
    let mut none_header = decode(&header);
    none_header["alg"] = json!("none");
    let alg_none = format!("{}.{payload}.", encode(&none_header));
    let mut hs_header = decode(&header);
    hs_header["alg"] = json!("HS256");
    let alg_hs256 = format!("{}.{payload}.{signature}", encode(&hs_header));

    for (case, token) in [
        ("a bad signature", Some(bad_signature.as_str())),
        ("claims changed after signing", Some(tampered.as_str())),
        ("alg none", Some(alg_none.as_str())),
        ("alg HS256", Some(alg_hs256.as_str())),
        ("an ID token", Some(tokens.id.as_str())),
        (
            "another app client's token",
            Some(tokens.other_client_access.as_str()),
        ),
        ("not a JWT", Some("let-me-in")),
        ("no Authorization header", None),
    ] {
        let (status, body) = get(&url, token).await;
        assert_eq!(status, 401, "{case}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");
    }
    assert_eq!(
        calls.0.load(Ordering::SeqCst),
        1,
        "no refused request reached a function"
    );

    // Two hours later, the same token has expired.
    let later = serve(&pool, &calls, 2 * 3600).await;
    let (status, _) = get(&later, Some(&tokens.access)).await;
    assert_eq!(status, 401, "an expired token");
    assert_eq!(calls.0.load(Ordering::SeqCst), 1);
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

    assert_eq!(calls.0.load(Ordering::SeqCst), 0);
}
