//! The local HTTP gateway: what API Gateway and CloudFront do when deployed.
//!
//! - `/generate`, `/jobs`, `/jobs/{id}`: the JWT authorizer's check, then the request as an
//!   `ApiGatewayV2httpRequest` (payload 2.0) to the `api` or `status` handler, in process.
//!   `OPTIONS` is answered here, as API Gateway's CORS configuration does.
//! - `/config.json`: the web UI's configuration.
//! - `/cognito`: Cognito's JSON API (the emulator's), on the UI's own origin.
//! - everything else: the static files of `web/`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use api::GenerateApi;
use aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription,
    ApiGatewayV2httpRequest, ApiGatewayV2httpResponse,
};
use aws_lambda_events::encodings::Body as LambdaBody;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use base64::Engine;
use pipeline::domain::{ApiError, ErrorCode};
use pipeline::http::Cors;
use pipeline::ports::{JobQueue, JobStore, SessionCheck, SubmissionQuota};
use serde_json::Value;
use status::StatusApi;
use tower_http::services::ServeDir;
use tracing::{info, warn};

use crate::authorizer::{JwtAuthorizer, claims_as_strings};

/// A function behind the gateway: an HTTP API Lambda handler.
pub trait HttpFunction: Send + Sync + 'static {
    fn invoke(
        &self,
        request: ApiGatewayV2httpRequest,
    ) -> impl Future<Output = ApiGatewayV2httpResponse> + Send;
}

impl<S, Q, C> HttpFunction for GenerateApi<S, Q, C>
where
    S: JobStore + SubmissionQuota + 'static,
    Q: JobQueue + 'static,
    C: SessionCheck + 'static,
{
    fn invoke(
        &self,
        request: ApiGatewayV2httpRequest,
    ) -> impl Future<Output = ApiGatewayV2httpResponse> + Send {
        self.handle(request)
    }
}

impl<S: JobStore + 'static> HttpFunction for StatusApi<S> {
    fn invoke(
        &self,
        request: ApiGatewayV2httpRequest,
    ) -> impl Future<Output = ApiGatewayV2httpResponse> + Send {
        self.handle(request)
    }
}

/// The largest body the gateway hands on; the `api` function itself refuses more than
/// 256 KiB with the contract's `413`.
const MAX_FORWARDED_BODY: usize = 8 * 1024 * 1024;

pub struct GatewayConfig {
    pub web_dir: PathBuf,
    /// Served as `/config.json`.
    pub web_config: Value,
    /// Where `/cognito` forwards to (the emulator's endpoint).
    pub cognito_endpoint: String,
    pub allowed_origin: String,
}

struct Gateway<A, S> {
    api: A,
    status: S,
    authorizer: JwtAuthorizer,
    cors: Cors,
    http: reqwest::Client,
    config: GatewayConfig,
}

pub fn router<A: HttpFunction, S: HttpFunction>(
    api: A,
    status: S,
    authorizer: JwtAuthorizer,
    config: GatewayConfig,
) -> Router {
    let gateway = Arc::new(Gateway {
        api,
        status,
        authorizer,
        cors: Cors::new(&config.allowed_origin),
        http: reqwest::Client::new(),
        config,
    });
    let not_found = {
        let gateway = gateway.clone();
        move || async move { lambda_to_axum(gateway.cors.error(&ApiError::not_found())) }
    };
    let static_files = ServeDir::new(&gateway.config.web_dir)
        .append_index_html_on_directories(true)
        .not_found_service(any(not_found));
    Router::new()
        .route("/config.json", get(web_config::<A, S>))
        .route("/cognito", post(cognito::<A, S>))
        .route("/generate", any(to_api::<A, S>))
        .route("/jobs", any(to_status::<A, S>))
        .route("/jobs/{*rest}", any(to_status::<A, S>))
        .fallback_service(static_files)
        .layer(middleware::from_fn(log_request))
        .with_state(gateway)
}

async fn web_config<A, S>(State(gateway): State<Arc<Gateway<A, S>>>) -> Response {
    let mut response = Json(gateway.config.web_config.clone()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Forwards a Cognito JSON API call (`X-Amz-Target` names the action) to the emulator.
async fn cognito<A, S>(State(gateway): State<Arc<Gateway<A, S>>>, request: Request) -> Response {
    let target = request.headers().get("x-amz-target").cloned();
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_FORWARDED_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut call = gateway
        .http
        .post(&gateway.config.cognito_endpoint)
        .header(header::CONTENT_TYPE, "application/x-amz-json-1.1")
        .body(body);
    if let Some(target) = target {
        call = call.header("x-amz-target", target);
    }
    match call.send().await {
        Ok(answer) => {
            let status =
                StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let bytes = answer.bytes().await.unwrap_or_default();
            (
                status,
                [(header::CONTENT_TYPE, "application/x-amz-json-1.1")],
                bytes,
            )
                .into_response()
        }
        Err(error) => {
            warn!(%error, "the Cognito emulator did not answer");
            (StatusCode::BAD_GATEWAY, Json(serde_json::json!({
                "__type": "ServiceUnavailable",
                "message": "The local Cognito emulator did not answer; is the local stack still running?"
            }))).into_response()
        }
    }
}

async fn to_api<A: HttpFunction, S>(
    State(gateway): State<Arc<Gateway<A, S>>>,
    request: Request,
) -> Response {
    gateway.call(&gateway.api, "/generate", request).await
}

async fn to_status<A, S: HttpFunction>(
    State(gateway): State<Arc<Gateway<A, S>>>,
    request: Request,
) -> Response {
    let route = if request.uri().path().trim_end_matches('/') == "/jobs" {
        "/jobs"
    } else {
        "/jobs/{id}"
    };
    gateway.call(&gateway.status, route, request).await
}

impl<A, S> Gateway<A, S> {
    /// The authorizer's check, then the function; its answer as an HTTP response.
    async fn call<F: HttpFunction>(&self, function: &F, route: &str, request: Request) -> Response {
        if request.method() == Method::OPTIONS {
            return lambda_to_axum(self.cors.preflight());
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let claims = match self.authorizer.authorize(authorization).await {
            Ok(claims) => claims,
            Err(rejection) => {
                info!(%rejection, "the authorizer refused the request");
                return lambda_to_axum(self.cors.error(&ApiError::unauthorized()));
            }
        };
        match to_event(request, route, claims_as_strings(&claims)).await {
            Ok(event) => lambda_to_axum(function.invoke(event).await),
            Err(error) => lambda_to_axum(self.cors.error(&error)),
        }
    }
}

/// The event API Gateway would send for this request, after its authorizer passed it.
async fn to_event(
    request: Request,
    route: &str,
    claims: std::collections::HashMap<String, String>,
) -> Result<ApiGatewayV2httpRequest, ApiError> {
    let (parts, body) = request.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, MAX_FORWARDED_BODY)
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::PromptTooLong,
                "The request body is far too large.",
            )
        })?;
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();

    let mut event = ApiGatewayV2httpRequest::default();
    event.version = Some("2.0".into());
    event.route_key = Some(format!("{} {route}", parts.method));
    event.raw_path = Some(path.clone());
    event.query_string_parameters = query.parse().unwrap_or_default();
    event.raw_query_string = Some(query);
    event.headers = parts.headers;
    if let Some(id) = path.strip_prefix("/jobs/") {
        event.path_parameters.insert("id".into(), id.to_owned());
    }
    if !bytes.is_empty() {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => event.body = Some(text),
            Err(_) => {
                event.body = Some(base64::engine::general_purpose::STANDARD.encode(&bytes));
                event.is_base64_encoded = true;
            }
        }
    }
    let context = &mut event.request_context;
    context.route_key = event.route_key.clone();
    context.stage = Some("$default".into());
    context.request_id = Some(uuid::Uuid::new_v4().to_string());
    context.time_epoch = chrono::Utc::now().timestamp_millis();
    context.http.method = parts.method;
    context.http.path = Some(path);
    context.http.protocol = Some("HTTP/1.1".into());
    context.http.source_ip = Some("127.0.0.1".into());
    let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
    jwt.claims = claims;
    let mut authorizer = ApiGatewayRequestAuthorizer::default();
    authorizer.jwt = Some(jwt);
    context.authorizer = Some(authorizer);
    Ok(event)
}

fn lambda_to_axum(answer: ApiGatewayV2httpResponse) -> Response {
    let status = u16::try_from(answer.status_code)
        .ok()
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match answer.body {
        Some(LambdaBody::Text(text)) => Body::from(text),
        Some(LambdaBody::Binary(bytes)) => Body::from(bytes),
        _ => Body::empty(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = answer.headers;
    response
}

/// One line per request.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    info!(
        "{method} {path} → {} in {} ms",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}
