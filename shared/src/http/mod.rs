//! The edge between HTTP and the handlers, shared by the HTTP functions: who is calling, the
//! contract's error answers, CORS, panics, and what every router does around its routes.
//!
//! Each HTTP function is one axum [`Router`]; `lambda_http` runs it in Lambda (turning API
//! Gateway's payload-2.0 events into requests) and the local gateway mounts it unchanged.

mod body;
mod caller;
mod error;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{ConfigError, Env};
use crate::domain::ErrorCode;
use crate::ports::SessionCheck;

pub use body::TextBody;
pub use caller::{Caller, require_live_session};
pub use error::{ApiError, status_of};
pub use views::{
    ArtifactLocation, BudgetView, ErrorView, JobLinks, JobView, PeriodView, SubmittedJob,
    UsageView, location,
};

/// The largest request body accepted (`413` above it).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The request headers a browser may send across origins.
pub const ALLOWED_HEADERS: [HeaderName; 4] = [
    AUTHORIZATION,
    CONTENT_TYPE,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("prefer"),
];

/// The response headers a browser's script may read across origins.
pub const EXPOSED_HEADERS: [HeaderName; 2] =
    [LOCATION, HeaderName::from_static("preference-applied")];

/// What every HTTP function reads from the environment the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// `ALLOWED_ORIGIN`; unset, any origin in Lambda, the gateway's own origin locally.
    pub allowed_origin: Option<String>,
    /// `COGNITO_REVOCATION_CHECK`: ask Cognito whether each access token is still valid.
    pub revocation_check: bool,
}

impl HttpSettings {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            allowed_origin: env.optional("ALLOWED_ORIGIN"),
            revocation_check: env.parsed_or("COGNITO_REVOCATION_CHECK", false, "true or false")?,
        })
    }

    pub fn origin(&self) -> &str {
        self.allowed_origin.as_deref().unwrap_or("*")
    }
}

/// Wraps a function's routes in what every HTTP function does: the revocation check on every
/// route (when `sessions` is given), the contract's `404` and `405` (with `Allow`), the body
/// limit, a `500 internal` for a panic instead of a bare gateway error, and CORS.
pub fn finish<C: SessionCheck + 'static>(
    routes: Router,
    settings: &HttpSettings,
    sessions: Option<C>,
) -> Router {
    let routes = match sessions {
        Some(sessions) => routes.route_layer(middleware::from_fn_with_state(
            Arc::new(sessions),
            require_live_session::<C>,
        )),
        None => routes,
    };
    let routes = routes
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("the handler panicked; answered 500");
            ApiError::internal().into_response()
        }));
    with_cors(routes, settings.origin())
}

/// axum fills in the `Allow` header of a `405` itself; this gives it the contract's body.
async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "This address does not answer {}; its Allow header lists the methods it answers.",
            request.method()
        ),
    )
}

/// CORS for the one allowed origin (every answer carries it), and preflights answered
/// `204` before they reach any route, as API Gateway's CORS configuration does.
pub fn with_cors(router: Router, origin: &str) -> Router {
    let allow_origin = match origin {
        "*" => AllowOrigin::any(),
        origin => AllowOrigin::exact(
            HeaderValue::from_str(origin).unwrap_or_else(|_| HeaderValue::from_static("null")),
        ),
    };
    let cors = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(ALLOWED_HEADERS)
        .expose_headers(EXPOSED_HEADERS)
        .max_age(Duration::from_secs(600));
    router
        .layer(cors)
        .layer(middleware::from_fn(preflight_no_content))
}

async fn preflight_no_content(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use lambda_http::aws_lambda_events::apigw::{
        ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerIamDescription,
        ApiGatewayRequestAuthorizerJwtDescription, ApiGatewayV2httpRequestContext,
    };
    use lambda_http::request::RequestContext;
    use lambda_http::tower::ServiceExt;
    use serde_json::Value;

    use crate::domain::Owner;
    use crate::ports::Unavailable;

    fn context(claims: &[(&str, &str)]) -> ApiGatewayV2httpRequestContext {
        let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
        jwt.claims = claims
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let mut authorizer = ApiGatewayRequestAuthorizer::default();
        authorizer.jwt = Some(jwt);
        let mut context = ApiGatewayV2httpRequestContext::default();
        context.authorizer = Some(authorizer);
        context
    }

    #[test]
    fn the_caller_is_the_access_tokens_sub_or_the_iam_principal() {
        let access = context(&[("sub", "user-1"), ("token_use", "access")]);
        let caller = Caller::from_context(&access, Some("Bearer abc.def")).unwrap();
        assert_eq!(caller.owner, Owner::new("user-1"));
        assert_eq!(caller.access_token.as_deref(), Some("abc.def"));

        for refused in [
            context(&[("sub", "user-1"), ("token_use", "id")]),
            context(&[("sub", "user-1")]),
            context(&[("sub", ""), ("token_use", "access")]),
            ApiGatewayV2httpRequestContext::default(),
        ] {
            assert_eq!(Caller::from_context(&refused, None), None, "{refused:?}");
        }

        let mut iam = ApiGatewayRequestAuthorizerIamDescription::default();
        iam.user_arn = Some("arn:aws:iam::123456789012:user/ci".into());
        let mut authorizer = ApiGatewayRequestAuthorizer::default();
        authorizer.iam = Some(iam);
        let mut signed = ApiGatewayV2httpRequestContext::default();
        signed.authorizer = Some(authorizer);
        let caller = Caller::from_context(&signed, None).unwrap();
        assert_eq!(caller.owner.as_str(), "arn:aws:iam::123456789012:user/ci");
        assert_eq!(caller.access_token, None);
    }

    struct NoSessions;
    impl SessionCheck for NoSessions {
        async fn is_active(&self, _: &str) -> Result<bool, Unavailable> {
            Ok(false)
        }
    }

    async fn echo(caller: Caller, TextBody(body): TextBody) -> String {
        format!("{}:{body}", caller.owner.as_str())
    }

    async fn buggy() -> &'static str {
        panic!("a bug in a handler")
    }

    fn app(sessions: Option<NoSessions>) -> Router {
        let routes = Router::new()
            .route("/echo", post(echo))
            .route("/panic", get(buggy));
        let settings = HttpSettings {
            allowed_origin: Some("https://app.example".into()),
            revocation_check: sessions.is_some(),
        };
        finish(routes, &settings, sessions)
    }

    fn request(method: Method, path: &str, body: impl Into<Body>) -> Request {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(AUTHORIZATION, "Bearer token")
            .body(body.into())
            .unwrap();
        let access = context(&[("sub", "user-1"), ("token_use", "access")]);
        request
            .extensions_mut()
            .insert(RequestContext::ApiGatewayV2(access));
        request
    }

    async fn call(app: Router, request: Request) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = app.oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn a_route_gets_the_caller_and_the_body() {
        let (status, headers, body) = call(app(None), request(Method::POST, "/echo", "hi")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "user-1:hi");
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example"
        );
    }

    #[tokio::test]
    async fn errors_are_the_contracts_with_their_status_and_headers() {
        let cases = [
            (request(Method::GET, "/nowhere", ""), 404, "not_found"),
            (request(Method::GET, "/echo", ""), 405, "method_not_allowed"),
            (request(Method::GET, "/panic", ""), 500, "internal"),
            (
                request(Method::POST, "/echo", vec![b'x'; MAX_BODY_BYTES + 1]),
                413,
                "prompt_too_long",
            ),
            (
                request(Method::POST, "/echo", vec![0xff, 0xfe]),
                400,
                "invalid_json",
            ),
        ];
        for (request, status, code) in cases {
            let path = request.uri().clone();
            let (got, headers, body) = call(app(None), request).await;
            assert_eq!(got.as_u16(), status, "{path}: {body}");
            assert_eq!(body["error"]["code"], code, "{path}");
            assert!(!body["error"]["message"].as_str().unwrap().contains("bug"));
            assert_eq!(headers[CONTENT_TYPE], "application/json", "{path}");
            assert_eq!(
                headers["access-control-allow-origin"],
                "https://app.example"
            );
            if status == 405 {
                assert_eq!(headers["allow"], "POST", "RFC 9110 wants Allow on a 405");
            }
        }
    }

    #[tokio::test]
    async fn an_unreadable_body_is_400_not_413() {
        let broken = Body::from_stream(futures::stream::iter([
            Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"{\"prompt\"")),
            Err(std::io::Error::other("connection reset")),
        ]));
        let (status, _, body) = call(app(None), request(Method::POST, "/echo", broken)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request");
    }

    #[tokio::test]
    async fn callers_without_an_access_token_identity_are_401() {
        let mut anonymous = request(Method::POST, "/echo", "hi");
        anonymous.extensions_mut().clear();
        let (status, _, body) = call(app(None), anonymous).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "unauthorized");

        let mut id_token = request(Method::POST, "/echo", "hi");
        id_token
            .extensions_mut()
            .insert(RequestContext::ApiGatewayV2(context(&[
                ("sub", "user-1"),
                ("token_use", "id"),
            ])));
        assert_eq!(call(app(None), id_token).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn with_the_revocation_check_a_signed_out_token_is_refused_on_every_route() {
        let (status, _, body) =
            call(app(Some(NoSessions)), request(Method::POST, "/echo", "hi")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, _, _) = call(app(Some(NoSessions)), request(Method::GET, "/panic", "")).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "checked before the handler runs"
        );
    }

    #[tokio::test]
    async fn preflights_are_answered_204_before_any_route() {
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .uri("/echo")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .unwrap();
        let (status, headers, _) = call(app(Some(NoSessions)), preflight).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example"
        );
        let allowed = headers["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("idempotency-key"), "{allowed}");
        assert!(allowed.contains("prefer"), "{allowed}");
    }
}
