//! Test support for the integration tests.
//!
//! One `moto_server` per test binary (started on a free 127.0.0.1 port, stopped when the
//! binary exits), a fresh table, queue and bucket per test so that tests never share state,
//! the Bedrock-compatible endpoint from `local`, and builders for the events Lambda receives.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use api::GenerateApi;
use aws_config::SdkConfig;
use aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerIamDescription,
    ApiGatewayRequestAuthorizerJwtDescription, ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderValue, Method};
use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent};
use aws_sdk_cognitoidentityprovider::types::{AuthFlowType, AuthenticationResultType};
use axum::Router;
use lambda_http::request::LambdaRequest;
use lambda_http::tower::ServiceExt;
use lambda_http::{Adapter, Context, LambdaEvent};
use local::converse::{Backend, ConverseServer, Knobs};
use local::event_source::{Settled, SqsEventSource};
use local::moto::Moto;
use local::provision::{Names, Resources, provision};
use pipeline::adapters::{
    BedrockTextModel, CognitoSessionCheck, DynamoJobStore, S3ArtifactStore, SqsJobQueue,
};
use pipeline::domain::Limits;
use pipeline::http::HttpSettings;
use recovery::Recovery;
use serde_json::Value;
use status::StatusApi;
use worker::Worker;

pub const DEFAULT_MODEL: &str = "amazon.nova-micro-v1:0";
pub const OTHER_MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
pub const ORIGIN: &str = "https://app.example";
pub const MAX_PROMPT_CHARS: usize = 1_000;
pub const MAX_ATTEMPTS: u32 = 3;
/// Flushes of streamed text into the job, at most this often (ms).
pub const STREAM_FLUSH_MS: u64 = 50;

pub type JobWorker = Worker<DynamoJobStore, S3ArtifactStore, BedrockTextModel, SqsJobQueue>;
pub type JobRecovery = Recovery<DynamoJobStore, S3ArtifactStore, SqsJobQueue, SqsJobQueue>;

/// The moto server of this test binary: `MOTO_ENDPOINT` if set, else one of our own,
/// stopped when the test binary exits.
enum MotoServer {
    External(String),
    Own(Mutex<Moto>),
}

static MOTO: OnceLock<MotoServer> = OnceLock::new();

pub fn moto_url() -> String {
    let server = MOTO.get_or_init(|| match std::env::var("MOTO_ENDPOINT") {
        Ok(url) => MotoServer::External(url),
        Err(_) => {
            let binary = std::env::var("MOTO_SERVER")
                .map(PathBuf::from)
                .unwrap_or_else(|_| Moto::find_binary(&workspace_root()));
            MotoServer::Own(Mutex::new(Moto::start(&binary).unwrap_or_else(|error| {
                panic!("{error}\n(or set MOTO_SERVER or MOTO_ENDPOINT)")
            })))
        }
    });
    match server {
        MotoServer::External(url) => url.clone(),
        MotoServer::Own(moto) => moto.lock().unwrap().url().to_owned(),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// An SDK configuration aimed at `endpoint`, with fake credentials.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    local::moto::sdk_config(endpoint, "us-east-1").await
}

/// One test's own resources on moto, and the model endpoint.
pub struct Stack {
    pub aws: SdkConfig,
    pub resources: Resources,
    pub bedrock: ConverseServer,
    pub events: SqsEventSource,
}

impl Stack {
    pub async fn new() -> Self {
        Self::with_visibility_timeout(30).await
    }

    /// A stack whose queue makes a reported failure visible again after `seconds`.
    pub async fn with_visibility_timeout(seconds: u32) -> Self {
        Self::build(seconds, Knobs::default()).await
    }

    /// A stack whose offline model writes `words_per_second`.
    pub async fn with_words_per_second(words_per_second: f64) -> Self {
        let knobs = Knobs {
            words_per_second,
            ..Knobs::default()
        };
        Self::build(30, knobs).await
    }

    async fn build(visibility_timeout: u32, knobs: Knobs) -> Self {
        let aws = sdk_config(&moto_url()).await;
        let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let resources = provision(&aws, &Names::with_prefix(&prefix), visibility_timeout)
            .await
            .expect("resources are created on moto");
        let address = ([127, 0, 0, 1], 0).into();
        let bedrock = ConverseServer::start_with(address, Backend::Offline, knobs)
            .await
            .expect("the model endpoint starts");
        let events = SqsEventSource::new(&aws, &resources.queue_url, &resources.queue_arn);
        Self {
            aws,
            resources,
            bedrock,
            events,
        }
    }

    pub fn store(&self) -> DynamoJobStore {
        DynamoJobStore::new(&self.aws, &self.resources.table)
    }

    pub fn api_settings(&self) -> api::Settings {
        api::Settings {
            limits: Limits {
                max_prompt_chars: MAX_PROMPT_CHARS,
                max_output_tokens: 4096,
                default_model: DEFAULT_MODEL.into(),
                allowed_models: vec![DEFAULT_MODEL.into(), OTHER_MODEL.into()],
            },
            job_ttl: chrono::Duration::days(30),
            jobs_per_minute: None,
            budget: pipeline::domain::Budget::default(),
            prices: std::sync::Arc::new(pipeline::domain::PriceTable::defaults()),
            http: http_settings(),
            clock: chrono::Utc::now,
        }
    }

    /// The api function's router, as `lambda_http` runs it.
    pub fn api(&self) -> Router {
        self.api_with_queue(&self.resources.queue_url)
    }

    pub fn api_with_queue(&self, queue_url: &str) -> Router {
        self.api_with(queue_url, self.api_settings(), None)
    }

    pub fn api_with_settings(&self, settings: api::Settings) -> Router {
        self.api_with(&self.resources.queue_url, settings, None)
    }

    pub fn api_with(
        &self,
        queue_url: &str,
        settings: api::Settings,
        sessions: Option<CognitoSessionCheck>,
    ) -> Router {
        let api = GenerateApi::new(
            self.store(),
            SqsJobQueue::new(&self.aws, queue_url),
            &self.resources.bucket,
            settings,
        );
        api::router(api, sessions)
    }

    /// The status function's router, as `lambda_http` runs it.
    pub fn status(&self) -> Router {
        self.status_with(None)
    }

    pub fn status_with(&self, sessions: Option<CognitoSessionCheck>) -> Router {
        self.status_with_budget(pipeline::domain::Budget::default(), sessions)
    }

    /// The status function with `budget` as everybody's default (what `GET /usage` shows).
    pub fn status_with_budget(
        &self,
        budget: pipeline::domain::Budget,
        sessions: Option<CognitoSessionCheck>,
    ) -> Router {
        let settings = status::Settings {
            http: http_settings(),
            budget,
        };
        let status = StatusApi::new(self.store(), &self.resources.bucket, settings);
        status::router(status, sessions)
    }

    pub fn model(&self) -> BedrockTextModel {
        let config = self
            .aws
            .to_builder()
            .endpoint_url(self.bedrock.url())
            .build();
        BedrockTextModel::new(&config)
    }

    pub fn worker_settings() -> worker::Settings {
        worker::Settings {
            max_attempts: MAX_ATTEMPTS,
            write_reserve: Duration::from_millis(500),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(4),
            stream_flush: Duration::from_millis(STREAM_FLUSH_MS),
            live_interval: Duration::from_millis(50),
            prices: std::sync::Arc::new(pipeline::domain::PriceTable::defaults()),
        }
    }

    pub fn worker(&self) -> JobWorker {
        self.worker_with_bucket(&self.resources.bucket)
    }

    pub fn worker_with_bucket(&self, bucket: &str) -> JobWorker {
        Worker::new(
            self.store(),
            S3ArtifactStore::new(&self.aws, bucket),
            self.model(),
            SqsJobQueue::new(&self.aws, &self.resources.queue_url),
            Self::worker_settings(),
        )
    }

    /// The recovery function, repairing jobs unchanged for `recover_after`.
    pub fn recovery(&self, recover_after: Duration) -> JobRecovery {
        Recovery::new(
            self.store(),
            S3ArtifactStore::new(&self.aws, &self.resources.bucket),
            SqsJobQueue::new(&self.aws, &self.resources.queue_url),
            SqsJobQueue::new(&self.aws, &self.resources.dead_letter_queue_url),
            recovery::Settings {
                max_attempts: MAX_ATTEMPTS,
                recover_after,
                sweep_limit: 1000,
            },
        )
    }

    /// The dead-letter queue, as the recovery function's event source mapping reads it.
    pub fn dead_letter_events(&self) -> SqsEventSource {
        SqsEventSource::new(
            &self.aws,
            &self.resources.dead_letter_queue_url,
            &self.resources.dead_letter_queue_arn,
        )
    }

    /// Submits a prompt as `user` and returns the new job's id.
    pub async fn submit(&self, user: &str, prompt: &str) -> String {
        let body = serde_json::json!({ "prompt": prompt }).to_string();
        let response = self
            .api()
            .handle(request(Method::POST, "/generate", Some(user), Some(&body)))
            .await;
        assert_eq!(response.status_code, 202, "{:?}", response.body);
        json_body(&response)["job_id"].as_str().unwrap().to_owned()
    }

    /// What the event source mapping does once: receive a batch, invoke the worker with
    /// `deadline_in` left, delete what it acknowledged, and make its failures visible again
    /// at once (instead of after the visibility timeout).
    pub async fn deliver<F: pipeline::ports::LiveFeed>(
        &self,
        worker: &Worker<DynamoJobStore, S3ArtifactStore, BedrockTextModel, SqsJobQueue, F>,
        deadline_in: Duration,
    ) -> (SqsEvent, SqsBatchResponse, Settled) {
        let event = self.events.receive(Duration::from_secs(1)).await.unwrap();
        let response = worker
            .handle(lambda_event(event.clone(), deadline_in))
            .await;
        let settled = self
            .events
            .settle(&event, &response, Some(Duration::ZERO))
            .await
            .unwrap();
        (event, response, settled)
    }

    /// `deliver` with a generous deadline.
    pub async fn deliver_once<F: pipeline::ports::LiveFeed>(
        &self,
        worker: &Worker<DynamoJobStore, S3ArtifactStore, BedrockTextModel, SqsJobQueue, F>,
    ) -> (SqsEvent, SqsBatchResponse, Settled) {
        self.deliver(worker, Duration::from_secs(60)).await
    }

    /// The messages waiting on the queue now (received, then made visible again).
    pub async fn queued_bodies(&self) -> Vec<String> {
        let event = self.events.receive(Duration::ZERO).await.unwrap();
        let none_failed = SqsBatchResponse::default();
        let mut every_one_failed = none_failed.clone();
        every_one_failed.batch_item_failures = event
            .records
            .iter()
            .map(|record| {
                let mut failure = aws_lambda_events::sqs::BatchItemFailure::default();
                failure.item_identifier = record.message_id.clone().unwrap();
                failure
            })
            .collect();
        self.events
            .settle(&event, &every_one_failed, Some(Duration::ZERO))
            .await
            .unwrap();
        event.records.into_iter().filter_map(|r| r.body).collect()
    }

    /// Messages on the queue at `queue_url`, waiting or in flight.
    pub async fn messages_in(&self, queue_url: &str) -> u64 {
        use aws_sdk_sqs::types::QueueAttributeName;
        aws_sdk_sqs::Client::new(&self.aws)
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default()
            .values()
            .map(|count| count.parse::<u64>().unwrap())
            .sum()
    }

    /// The raw DynamoDB item of a job.
    /// The job as the store reads it: its state, request and text joined.
    pub async fn job(&self, job_id: &str) -> Option<pipeline::domain::Job> {
        let id = pipeline::domain::JobId::parse(job_id).unwrap();
        pipeline::ports::JobStore::get(&self.store(), id)
            .await
            .unwrap()
    }

    /// The text a job's record holds: its answer, or what its attempt flushed.
    pub async fn text_of(&self, job_id: &str) -> Option<String> {
        let job = self.job(job_id).await?;
        job.completion
            .map(|done| done.output)
            .or(job.partial_output)
    }

    /// The item holding a job's request, the one its state names (`request_digest`).
    pub async fn request_item(
        &self,
        job_id: &str,
    ) -> Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        let state = self.item(job_id).await?;
        let digest = state.get("request_digest")?.as_s().ok()?;
        self.item(&format!("{job_id}#request#{digest}")).await
    }

    pub async fn item(
        &self,
        job_id: &str,
    ) -> Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
        aws_sdk_dynamodb::Client::new(&self.aws)
            .get_item()
            .table_name(&self.resources.table)
            .key(
                "job_id",
                aws_sdk_dynamodb::types::AttributeValue::S(job_id.into()),
            )
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
    }

    /// An S3 client for the emulator, which needs path-style addresses.
    fn s3(&self) -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.aws)
                .force_path_style(true)
                .build(),
        )
    }

    /// An S3 object as (content type, JSON), or `None` if there is none.
    pub async fn artifact(&self, key: &str) -> Option<(String, Value)> {
        let object = self
            .s3()
            .get_object()
            .bucket(&self.resources.bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        let content_type = object.content_type.clone().unwrap_or_default();
        let bytes = object.body.collect().await.unwrap().into_bytes();
        Some((content_type, serde_json::from_slice(&bytes).unwrap()))
    }

    /// Every key in the artifacts bucket.
    pub async fn artifact_keys(&self) -> Vec<String> {
        let mut pages = self
            .s3()
            .list_objects_v2()
            .bucket(&self.resources.bucket)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            keys.extend(
                page.unwrap()
                    .contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|object| object.key),
            );
        }
        keys
    }

    /// How many artifacts the bucket holds.
    pub async fn artifact_count(&self) -> usize {
        self.s3()
            .list_objects_v2()
            .bucket(&self.resources.bucket)
            .send()
            .await
            .unwrap()
            .contents
            .unwrap_or_default()
            .len()
    }
}

fn http_settings() -> HttpSettings {
    HttpSettings {
        allowed_origin: Some(ORIGIN.into()),
        revocation_check: false,
    }
}

/// Invokes an HTTP function's router with an API Gateway event, through the adapter that
/// `lambda_http::run` puts around it in Lambda: the event becomes an HTTP request, and the
/// router's answer the payload-2.0 response, serialized as the runtime sends it.
pub trait HttpFunction {
    fn handle(
        &self,
        event: ApiGatewayV2httpRequest,
    ) -> impl std::future::Future<Output = ApiGatewayV2httpResponse>;
}

impl HttpFunction for Router {
    async fn handle(&self, event: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
        let adapter: Adapter<'_, _, _> = Adapter::from(self.clone());
        let invocation = LambdaEvent::new(LambdaRequest::ApiGatewayV2(event), Context::default());
        let Ok(response) = adapter.oneshot(invocation).await;
        let json = serde_json::to_value(response).expect("responses serialize");
        serde_json::from_value(json).expect("an HTTP API function answers in payload 2.0")
    }
}

/// A password that satisfies the template's password policy.
pub const PASSWORD: &str = "Correct-Horse-Battery-9!";

/// Signs `email` in through the app client `client_id` (`USER_PASSWORD_AUTH`): real tokens,
/// RS256-signed by the emulator's Cognito.
pub async fn sign_in(aws: &SdkConfig, client_id: &str, email: &str) -> AuthenticationResultType {
    aws_sdk_cognitoidentityprovider::Client::new(aws)
        .initiate_auth()
        .client_id(client_id)
        .auth_flow(AuthFlowType::UserPasswordAuth)
        .auth_parameters("USERNAME", email)
        .auth_parameters("PASSWORD", PASSWORD)
        .send()
        .await
        .unwrap()
        .authentication_result
        .unwrap()
}

/// A Lambda invocation whose deadline is `deadline_in` from now.
pub use local::worker_loop::invocation as lambda_event;

/// An HTTP API (payload 2.0) event as API Gateway sends it after its JWT authorizer
/// accepted a token whose `sub` is `user`; `None` is an event with no identity.
pub fn request(
    method: Method,
    path_and_query: &str,
    user: Option<&str>,
    body: Option<&str>,
) -> ApiGatewayV2httpRequest {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut request = ApiGatewayV2httpRequest::default();
    request.version = Some("2.0".into());
    request.route_key = Some(format!("{method} {path}"));
    request.raw_path = Some(path.into());
    request.raw_query_string = Some(query.into());
    request.query_string_parameters = query.parse().unwrap();
    request.body = body.map(str::to_owned);
    request.request_context.stage = Some("$default".into());
    request.request_context.http.method = method;
    request.request_context.http.path = Some(path.into());
    request
        .headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(user) = user {
        let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
        jwt.claims.insert("sub".into(), user.into());
        jwt.claims.insert("token_use".into(), "access".into());
        let mut authorizer = ApiGatewayRequestAuthorizer::default();
        authorizer.jwt = Some(jwt);
        request.request_context.authorizer = Some(authorizer);
    }
    request
}

/// `POST /generate` of `body` by `user` with an `Idempotency-Key`.
pub fn with_key(body: &str, user: &str, key: &str) -> ApiGatewayV2httpRequest {
    let mut event = request(Method::POST, "/generate", Some(user), Some(body));
    event
        .headers
        .insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    event
}

/// The same event as it arrives through the HTTP API's IAM authorizer (`ApiAuth=iam`): the
/// caller is a SigV4-signed IAM principal, and no JWT is involved.
pub fn iam_request(
    method: Method,
    path_and_query: &str,
    principal_arn: &str,
    body: Option<&str>,
) -> ApiGatewayV2httpRequest {
    let mut request = request(method, path_and_query, None, body);
    let mut iam = ApiGatewayRequestAuthorizerIamDescription::default();
    iam.account_id = principal_arn.split(':').nth(4).map(str::to_owned);
    iam.user_arn = Some(principal_arn.to_owned());
    iam.user_id = Some("AIDAEXAMPLEUSERID".into());
    let mut authorizer = ApiGatewayRequestAuthorizer::default();
    authorizer.iam = Some(iam);
    request.request_context.authorizer = Some(authorizer);
    request
}

pub fn json_body(response: &ApiGatewayV2httpResponse) -> Value {
    match &response.body {
        Some(Body::Text(text)) => serde_json::from_str(text).unwrap(),
        other => panic!("expected a JSON text body, got {other:?}"),
    }
}

/// Asserts the contract's error shape and returns the message.
pub fn assert_error(response: &ApiGatewayV2httpResponse, status: i64, code: &str) -> String {
    let body = json_body(response);
    assert_eq!(response.status_code, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(response.headers["content-type"], "application/json");
    assert_eq!(response.headers["access-control-allow-origin"], ORIGIN);
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.len() > 10, "a sentence for a person: {message:?}");
    assert!(
        !message.contains('`'),
        "people read it as it is, no markup: {message:?}"
    );
    message
}

/// Real Cognito tokens of one user, RS256-signed by the emulator's Cognito: an access token of
/// the pool's app client, its ID token, and an access token of another app client of the same
/// pool. The gateway's tests and the Event API's share them.
pub struct Tokens {
    /// The user's `sub` claim.
    pub sub: String,
    pub access: String,
    pub id: String,
    pub other_client_access: String,
}

/// Creates `email` in `pool` and signs it in through the pool's app client and another one.
pub async fn tokens(aws: &SdkConfig, pool: &local::provision::UserPool, email: &str) -> Tokens {
    use aws_sdk_cognitoidentityprovider::types::ExplicitAuthFlowsType;
    local::provision::create_user(aws, pool, email, PASSWORD)
        .await
        .unwrap();
    let other_client = aws_sdk_cognitoidentityprovider::Client::new(aws)
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
    let mine = sign_in(aws, &pool.client_id, email).await;
    let theirs = sign_in(aws, &other_client, email).await;
    let access = mine.access_token.unwrap();
    let sub = jwt::decode(&jwt::segments(&access)[1])["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    Tokens {
        sub,
        access,
        id: mine.id_token.unwrap(),
        other_client_access: theirs.access_token.unwrap(),
    }
}

/// Where moto serves `pool`'s JWKS.
pub fn jwks_url(pool: &local::provision::UserPool) -> String {
    format!("{}/{}/.well-known/jwks.json", moto_url(), pool.pool_id)
}

/// The local stack's authorizer for `pool`'s app client, its clock `clock_skew` seconds ahead.
pub fn authorizer(
    pool: &local::provision::UserPool,
    jwks_url: String,
    clock_skew: i64,
) -> local::authorizer::JwtAuthorizer {
    authorizer_with_clock(
        pool,
        jwks_url,
        std::sync::Arc::new(move || (chrono::Utc::now().timestamp() + clock_skew) as u64),
    )
}

/// The same, with the clock a test moves.
pub fn authorizer_with_clock(
    pool: &local::provision::UserPool,
    jwks_url: String,
    clock: local::authorizer::Clock,
) -> local::authorizer::JwtAuthorizer {
    local::authorizer::JwtAuthorizer::new(
        format!(
            "https://cognito-idp.us-east-1.amazonaws.com/{}",
            pool.pool_id
        ),
        pool.client_id.clone(),
        jwks_url,
    )
    .with_clock(clock)
}

/// Taking JWTs apart, and forging them.
pub mod jwt {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{Value, json};

    pub fn segments(token: &str) -> Vec<String> {
        token.split('.').map(str::to_owned).collect()
    }

    pub fn decode(segment: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
    }

    pub fn encode(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    /// Forgeries of a real token: each names what was done to it.
    pub fn forgeries(token: &str) -> Vec<(&'static str, String)> {
        let [header, payload, signature] = <[String; 3]>::try_from(segments(token)).unwrap();
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
        vec![
            ("a bad signature", bad_signature),
            ("claims changed after signing", tampered),
            ("alg none", alg_none),
            ("alg HS256", alg_hs256),
            ("not a JWT", "let-me-in".to_owned()),
        ]
    }
}
