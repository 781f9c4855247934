//! The local HTTP gateway: what API Gateway and CloudFront do when deployed.
//!
//! - `/generate`, `/jobs`, `/jobs/{id}`, `/usage`: the JWT authorizer's check, then the functions' own
//!   axum routers, mounted unchanged, with the claims in the request context as API Gateway
//!   puts them there. Preflights are answered first, as API Gateway's CORS configuration does.
//! - `/config.json`: the web UI's configuration.
//! - `/metrics`: the pipeline's metrics as the local stack aggregates them (`crate::metrics`);
//!   no token, like the UI's files: it is local-only, and holds counts, no job or user.
//! - `/cognito`: the client-side calls of Cognito's JSON API that the web UI makes (and only
//!   those), forwarded to the emulator's Cognito, on the UI's own origin.
//! - `/event` and `/event/realtime`: the Event API that AppSync Events runs when deployed
//!   (`crate::events`), which has its own authorization (SigV4 to publish, access tokens to
//!   subscribe) and needs no CORS (browsers only subscribe, over WebSocket).
//! - a GET or HEAD of anything else: the static files of `web/`; any other method: the status
//!   function behind the authorizer, as the HTTP API's `$default` route sends it there.
//!
//! It listens on a well-known port, so it assumes that any page in the user's browser can
//! reach it: it answers only requests addressed to itself by name (no DNS rebinding), sends
//! the UI with headers that keep it out of frames, and forwards nothing to the emulator but
//! those Cognito calls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription,
    ApiGatewayV2httpRequestContext,
};
use lambda_http::request::RequestContext;
use lambda_http::tower::ServiceExt;
use pipeline::http::{ApiError, with_cors};
use serde_json::{Value, json};
use tower_http::services::ServeDir;
use tracing::{info, warn};

use crate::authorizer::{JwtAuthorizer, claims_as_strings};

/// The Cognito calls the web UI makes, all of them client-side (no admin call, nothing that
/// lists users or pools): the only ones `/cognito` forwards.
pub const COGNITO_ACTIONS: [&str; 8] = [
    "SignUp",
    "ConfirmSignUp",
    "ResendConfirmationCode",
    "InitiateAuth",
    "GlobalSignOut",
    "RevokeToken",
    "ForgotPassword",
    "ConfirmForgotPassword",
];

/// The web UI's Content Security Policy, sent as a header (a `<meta>` tag cannot say
/// `frame-ancestors`); `web/index.html` carries the same policy for where no header is set.
/// `connect-src` names the Event API's real-time endpoint too: `ws://` locally, and deployed
/// `wss://<id>.appsync-realtime-api.<region>.amazonaws.com`, which only `wss://*.amazonaws.com`
/// can say (a CSP host takes a wildcard in its leftmost label only).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self' https://*.amazonaws.com wss://*.amazonaws.com http://127.0.0.1:* http://localhost:* ws://127.0.0.1:* ws://localhost:*; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The largest Cognito call forwarded.
const MAX_COGNITO_BODY: usize = 64 * 1024;

pub struct GatewayConfig {
    pub web_dir: PathBuf,
    /// Served as `/config.json`.
    pub web_config: Value,
    /// Where `/cognito` forwards to (the emulator's endpoint).
    pub cognito_endpoint: String,
    /// The CORS origin of the API routes (`ALLOWED_ORIGIN`, else the gateway's own).
    pub allowed_origin: String,
    /// The port the gateway listens on: the only `Host` it answers is `127.0.0.1:PORT` or
    /// `localhost:PORT`.
    pub port: u16,
}

struct Gateway {
    authorizer: JwtAuthorizer,
    http: reqwest::Client,
    config: GatewayConfig,
}

/// The gateway in front of the `api` and `status` routers, and of the Event API's (`events`,
/// from `crate::events::EventApi::router`).
pub fn router(
    api: Router,
    status: Router,
    events: Router,
    authorizer: JwtAuthorizer,
    config: GatewayConfig,
) -> Router {
    let allowed_origin = config.allowed_origin.clone();
    let static_files = ServeDir::new(&config.web_dir)
        .append_index_html_on_directories(true)
        .not_found_service(get(|| async { ApiError::not_found() }));
    let gateway = Arc::new(Gateway {
        authorizer,
        http: reqwest::Client::new(),
        config,
    });
    // The functions' routers see each request whole, path included, as in Lambda: routed
    // here by a fallback, so that no path parameter of the gateway's reaches them.
    let functions = Router::new()
        .fallback(move |request: Request| {
            let function = if request.uri().path() == "/generate" {
                api.clone()
            } else {
                status.clone()
            };
            function.oneshot(request)
        })
        .layer(middleware::from_fn_with_state(gateway.clone(), authorize));
    let functions = with_cors(functions, &allowed_origin);
    let site = move |request: Request| {
        let (functions, static_files) = (functions.clone(), static_files.clone());
        async move {
            let path = request.uri().path();
            let routed = ["/generate", "/jobs", "/usage"].contains(&path);
            // Deployed, the web UI's files are a GET away on their own origin, and anything
            // else reaches the status function through the HTTP API's `$default` route.
            let reads_a_file = [Method::GET, Method::HEAD].contains(request.method());
            if routed || path.starts_with("/jobs/") || !reads_a_file {
                functions.oneshot(request).await.into_response()
            } else {
                static_files.oneshot(request).await.into_response()
            }
        }
    };
    Router::new()
        .route("/config.json", get(web_config))
        .route("/metrics", get(crate::metrics::serve))
        .route("/cognito", post(cognito))
        .with_state(gateway.clone())
        .merge(events)
        .fallback(site)
        .layer(middleware::map_response(hide_server_errors))
        .layer(middleware::map_response(security_headers))
        .layer(middleware::from_fn_with_state(gateway, only_our_host))
        .layer(middleware::from_fn(log_request))
}

/// API Gateway's JWT authorizer: a valid access token of the pool's app client, or `401`
/// before any function runs. The claims go into the request context as strings, as
/// API Gateway passes them.
async fn authorize(
    State(gateway): State<Arc<Gateway>>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let claims = match gateway.authorizer.authorize(authorization).await {
        Ok(claims) => claims,
        Err(rejection) => {
            info!(%rejection, "the authorizer refused the request");
            return ApiError::unauthorized().into_response();
        }
    };
    request
        .extensions_mut()
        .insert(RequestContext::ApiGatewayV2(request_context(
            claims_as_strings(&claims),
        )));
    next.run(request).await
}

/// The part of the event's request context the functions read: the authorizer's claims.
fn request_context(claims: HashMap<String, String>) -> ApiGatewayV2httpRequestContext {
    let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
    jwt.claims = claims;
    let mut authorizer = ApiGatewayRequestAuthorizer::default();
    authorizer.jwt = Some(jwt);
    let mut context = ApiGatewayV2httpRequestContext::default();
    context.stage = Some("$default".into());
    context.request_id = Some(uuid::Uuid::new_v4().to_string());
    context.time_epoch = chrono::Utc::now().timestamp_millis();
    context.authorizer = Some(authorizer);
    context
}

async fn web_config(State(gateway): State<Arc<Gateway>>) -> Response {
    let mut response = Json(gateway.config.web_config.clone()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Forwards one of [`COGNITO_ACTIONS`] to the emulator's Cognito; anything else is `403`.
async fn cognito(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let action = target
        .strip_prefix("AWSCognitoIdentityProviderService.")
        .filter(|action| COGNITO_ACTIONS.contains(action));
    let Some(action) = action else {
        warn!(target, "refused a call through the Cognito proxy");
        let message = format!(
            "The local gateway forwards only the web UI's own Cognito calls ({}); {} is not one of them.",
            COGNITO_ACTIONS.join(", "),
            if target.is_empty() {
                "a call without X-Amz-Target"
            } else {
                target
            },
        );
        return cognito_error(StatusCode::FORBIDDEN, "AccessDeniedException", &message);
    };
    if body.len() > MAX_COGNITO_BODY {
        let message = format!("A Cognito call may have at most {MAX_COGNITO_BODY} bytes.");
        return cognito_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidParameterException",
            &message,
        );
    }
    let call = gateway
        .http
        .post(&gateway.config.cognito_endpoint)
        .header(header::CONTENT_TYPE, "application/x-amz-json-1.1")
        .header(
            "x-amz-target",
            format!("AWSCognitoIdentityProviderService.{action}"),
        )
        .body(body);
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
            cognito_error(
                StatusCode::BAD_GATEWAY,
                "ServiceUnavailable",
                "The local Cognito emulator did not answer; is the local stack still running?",
            )
        }
    }
}

/// An error in Cognito's own shape, which the web UI reads.
fn cognito_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"__type": kind, "message": message}))).into_response()
}

/// Refuses requests addressed to any other name than `127.0.0.1:PORT` or `localhost:PORT`:
/// a page on another site that rebinds its own name to 127.0.0.1 gets nothing.
async fn only_our_host(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let port = gateway.config.port;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if host == format!("127.0.0.1:{port}") || host == format!("localhost:{port}") {
        return next.run(request).await;
    }
    warn!(host, "refused a request addressed to another host name");
    let message = format!(
        "This local gateway answers only requests to http://127.0.0.1:{port} or http://localhost:{port}."
    );
    (
        StatusCode::FORBIDDEN,
        Json(json!({"error": {"code": "forbidden_host", "message": message}})),
    )
        .into_response()
}

/// The headers CloudFront's security headers policy adds when deployed.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (HeaderName::from_static("x-frame-options"), "DENY"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A static file name the file system cannot take (too long, odd bytes) makes `ServeDir`
/// answer an empty `500`; for a caller that is simply nothing there.
async fn hide_server_errors(response: Response) -> Response {
    if response.status().is_server_error() && response.headers().get(header::CONTENT_TYPE).is_none()
    {
        warn!(status = %response.status(), "a static file could not be served; answered 404");
        return ApiError::not_found().into_response();
    }
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
