//! The edge between API Gateway (HTTP API, payload 2.0) events and the handlers: who is
//! calling, what they sent, and JSON answers with CORS headers.

mod views;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, CONTENT_TYPE, HeaderName, VARY,
};
use aws_lambda_events::http::{HeaderValue, Method};
use std::future::Future;
use std::panic::AssertUnwindSafe;

use base64::Engine;
use futures::FutureExt;
use serde::Serialize;

use crate::domain::{ApiError, ErrorCode, Owner};

pub use views::{ArtifactLocation, ErrorView, JobLinks, JobView, SubmittedJob, location};

/// The largest request body accepted (`413` above it).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The signed-in caller, as the authorizer vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub owner: Owner,
    /// The Cognito access token, for the optional revocation check. None for IAM callers.
    pub access_token: Option<String>,
}

/// The identity that API Gateway's authorizer (or the local gateway) put in the event:
/// the JWT's `sub`, or the IAM caller's principal ARN.
pub fn caller(request: &ApiGatewayV2httpRequest) -> Option<Caller> {
    let authorizer = request.request_context.authorizer.as_ref()?;
    let sub = authorizer
        .jwt
        .as_ref()
        .and_then(|jwt| jwt.claims.get("sub"))
        .filter(|sub| !sub.is_empty());
    if let Some(sub) = sub {
        let access_token = header(request, "authorization").map(|value| {
            let token = value.strip_prefix("Bearer ").unwrap_or(value);
            token.trim().to_owned()
        });
        return Some(Caller {
            owner: Owner::new(sub),
            access_token,
        });
    }
    let arn = authorizer
        .iam
        .as_ref()
        .and_then(|iam| iam.user_arn.as_deref())
        .filter(|arn| !arn.is_empty())?;
    Some(Caller {
        owner: Owner::new(arn),
        access_token: None,
    })
}

pub fn method(request: &ApiGatewayV2httpRequest) -> &Method {
    &request.request_context.http.method
}

/// The request path without the stage prefix (`/prod/jobs` → `/jobs`) or a trailing slash.
pub fn path(request: &ApiGatewayV2httpRequest) -> &str {
    let raw = request
        .raw_path
        .as_deref()
        .or(request.request_context.http.path.as_deref())
        .unwrap_or("/");
    let without_stage = match request.request_context.stage.as_deref() {
        Some(stage) if stage != "$default" => raw
            .strip_prefix('/')
            .and_then(|rest| rest.strip_prefix(stage))
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or(raw),
        _ => raw,
    };
    match without_stage.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

pub fn header<'a>(request: &'a ApiGatewayV2httpRequest, name: &str) -> Option<&'a str> {
    request.headers.get(name)?.to_str().ok()
}

pub fn query<'a>(request: &'a ApiGatewayV2httpRequest, name: &str) -> Option<&'a str> {
    request.query_string_parameters.first(name)
}

/// The request body as text: base64 undone, size and encoding checked.
pub fn body_text(request: &ApiGatewayV2httpRequest) -> Result<String, ApiError> {
    let raw = request.body.as_deref().unwrap_or("");
    let bytes = if request.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "The body is not valid base64."))?
    } else {
        raw.as_bytes().to_vec()
    };
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(
            ErrorCode::PromptTooLong,
            format!(
                "The request body has {} bytes; the limit is {MAX_BODY_BYTES}.",
                bytes.len()
            ),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "The body is not UTF-8 text."))
}

/// The CORS headers every answer carries, for the one allowed origin.
#[derive(Clone, Debug)]
pub struct Cors {
    allowed_origin: HeaderValue,
}

impl Cors {
    pub fn new(allowed_origin: &str) -> Self {
        Self {
            allowed_origin: HeaderValue::from_str(allowed_origin)
                .unwrap_or_else(|_| HeaderValue::from_static("null")),
        }
    }

    fn apply(&self, response: &mut ApiGatewayV2httpResponse) {
        let headers = &mut response.headers;
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, self.allowed_origin.clone());
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Location"),
        );
        if self.allowed_origin != "*" {
            headers.insert(VARY, HeaderValue::from_static("Origin"));
        }
    }

    /// The answer to a preflight `OPTIONS`, for where no gateway answers it first.
    pub fn preflight(&self) -> ApiGatewayV2httpResponse {
        let mut response = ApiGatewayV2httpResponse::default();
        response.status_code = 204;
        self.apply(&mut response);
        let headers = &mut response.headers;
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type, Idempotency-Key"),
        );
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        response
    }

    pub fn json(&self, status: u16, body: &impl Serialize) -> ApiGatewayV2httpResponse {
        let mut response = ApiGatewayV2httpResponse::default();
        response.status_code = i64::from(status);
        response
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.apply(&mut response);
        let text = serde_json::to_string(body).expect("response bodies always serialize");
        response.body = Some(Body::Text(text));
        response
    }

    /// `{"error": {"code": …, "message": …}}` with the code's status.
    pub fn error(&self, error: &ApiError) -> ApiGatewayV2httpResponse {
        let body = serde_json::json!({
            "error": {"code": error.code.as_str(), "message": error.message}
        });
        self.json(error.code.http_status(), &body)
    }

    pub fn respond(
        &self,
        result: Result<ApiGatewayV2httpResponse, ApiError>,
    ) -> ApiGatewayV2httpResponse {
        result.unwrap_or_else(|error| self.error(&error))
    }
}

/// Answers one request: preflights directly, everything else through `route`. A panic in
/// `route` becomes the contract's `500 internal` (not a bare gateway error), and is logged.
pub async fn answer<F>(
    cors: &Cors,
    request: &ApiGatewayV2httpRequest,
    route: F,
) -> ApiGatewayV2httpResponse
where
    F: Future<Output = Result<ApiGatewayV2httpResponse, ApiError>>,
{
    if *method(request) == Method::OPTIONS {
        return cors.preflight();
    }
    match AssertUnwindSafe(route).catch_unwind().await {
        Ok(result) => cors.respond(result),
        Err(_) => {
            tracing::error!("the handler panicked; answered 500");
            cors.error(&ApiError::internal())
        }
    }
}

/// Adds a header to a built response.
pub fn with_header(
    mut response: ApiGatewayV2httpResponse,
    name: HeaderName,
    value: &str,
) -> ApiGatewayV2httpResponse {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers.insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lambda_events::apigw::{
        ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerIamDescription,
        ApiGatewayRequestAuthorizerJwtDescription,
    };

    fn request(stage: &str, raw_path: &str) -> ApiGatewayV2httpRequest {
        let mut request = ApiGatewayV2httpRequest::default();
        request.raw_path = Some(raw_path.into());
        request.request_context.stage = Some(stage.into());
        request
    }

    #[test]
    fn paths_lose_their_stage_and_trailing_slash() {
        assert_eq!(path(&request("$default", "/jobs/1")), "/jobs/1");
        assert_eq!(path(&request("prod", "/prod/jobs/1")), "/jobs/1");
        assert_eq!(
            path(&request("prod", "/production/jobs")),
            "/production/jobs"
        );
        assert_eq!(path(&request("prod", "/prod")), "/");
        assert_eq!(path(&request("$default", "/jobs/")), "/jobs");
        assert_eq!(path(&request("$default", "/")), "/");
    }

    #[test]
    fn the_caller_comes_from_jwt_claims_or_the_iam_principal() {
        let mut request = ApiGatewayV2httpRequest::default();
        assert_eq!(caller(&request), None);

        let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
        jwt.claims.insert("sub".into(), "user-1".into());
        let mut authorizer = ApiGatewayRequestAuthorizer::default();
        authorizer.jwt = Some(jwt);
        request.request_context.authorizer = Some(authorizer.clone());
        request
            .headers
            .insert("authorization", HeaderValue::from_static("Bearer abc.def"));
        let found = caller(&request).unwrap();
        assert_eq!(found.owner, Owner::new("user-1"));
        assert_eq!(found.access_token.as_deref(), Some("abc.def"));

        let mut iam = ApiGatewayRequestAuthorizerIamDescription::default();
        iam.user_arn = Some("arn:aws:iam::123456789012:user/ci".into());
        authorizer.jwt = None;
        authorizer.iam = Some(iam);
        request.request_context.authorizer = Some(authorizer.clone());
        let found = caller(&request).unwrap();
        assert_eq!(found.owner.as_str(), "arn:aws:iam::123456789012:user/ci");
        assert_eq!(found.access_token, None);

        authorizer.iam = None;
        let mut empty = ApiGatewayRequestAuthorizerJwtDescription::default();
        empty.claims.insert("sub".into(), String::new());
        authorizer.jwt = Some(empty);
        request.request_context.authorizer = Some(authorizer);
        assert_eq!(caller(&request), None);
    }

    #[test]
    fn bodies_are_decoded_and_bounded() {
        let mut request = ApiGatewayV2httpRequest::default();
        request.body = Some("eyJwcm9tcHQiOiJoaSJ9".into());
        request.is_base64_encoded = true;
        assert_eq!(body_text(&request).unwrap(), r#"{"prompt":"hi"}"#);

        request.body = Some("%%%".into());
        assert_eq!(
            body_text(&request).unwrap_err().code,
            ErrorCode::InvalidJson
        );

        request.is_base64_encoded = false;
        request.body = Some("x".repeat(MAX_BODY_BYTES + 1));
        assert_eq!(
            body_text(&request).unwrap_err().code,
            ErrorCode::PromptTooLong
        );
        request.body = Some("x".repeat(MAX_BODY_BYTES));
        assert!(body_text(&request).is_ok());
    }

    async fn buggy_route() -> Result<ApiGatewayV2httpResponse, ApiError> {
        panic!("a bug in a handler");
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_internal() {
        let cors = Cors::new("*");
        let mut request = ApiGatewayV2httpRequest::default();
        request.request_context.http.method = Method::POST;
        let response = answer(&cors, &request, buggy_route()).await;
        assert_eq!(response.status_code, 500);
        let Some(Body::Text(text)) = response.body else {
            panic!("a text body")
        };
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body["error"]["message"].as_str().unwrap().contains("bug"));
    }

    #[tokio::test]
    async fn preflights_never_reach_the_route() {
        let cors = Cors::new("https://app.example");
        let mut request = ApiGatewayV2httpRequest::default();
        request.request_context.http.method = Method::OPTIONS;
        let response = answer(&cors, &request, buggy_route()).await;
        assert_eq!(response.status_code, 204);
        assert_eq!(
            response.headers["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(response.headers["vary"], "Origin");
    }

    #[test]
    fn every_answer_is_json_with_cors() {
        let cors = Cors::new("https://app.example");
        let response = cors.error(&ApiError::not_found());
        assert_eq!(response.status_code, 404);
        assert_eq!(response.headers["content-type"], "application/json");
        assert_eq!(
            response.headers["access-control-allow-origin"],
            "https://app.example"
        );
        let Some(Body::Text(text)) = response.body else {
            panic!("a text body")
        };
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
    }
}
