//! Who is calling: the identity API Gateway's authorizer (or the local gateway, playing its
//! part) put in the request context, and the optional check that the session is still live.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::RequestExt;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpRequestContext;
use lambda_http::request::RequestContext;

use super::ApiError;
use crate::domain::Owner;
use crate::ports::SessionCheck;

/// The signed-in caller, as the authorizer vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub owner: Owner,
    /// The Cognito access token, for the optional revocation check. None for IAM callers.
    pub access_token: Option<String>,
}

impl Caller {
    /// The JWT's `sub` (access tokens only) or the IAM caller's principal ARN.
    ///
    /// API Gateway's JWT authorizer checks a Cognito token's `aud` or `client_id` against
    /// the app client, so it also lets ID tokens through (their `aud` is the app client):
    /// refusing anything but an access token is the function's job.
    pub fn from_context(
        context: &ApiGatewayV2httpRequestContext,
        authorization: Option<&str>,
    ) -> Option<Self> {
        let authorizer = context.authorizer.as_ref()?;
        if let Some(jwt) = &authorizer.jwt {
            let claim = |name: &str| jwt.claims.get(name).map(String::as_str);
            let sub = claim("sub").filter(|sub| !sub.is_empty())?;
            if claim("token_use") != Some("access") {
                return None;
            }
            let access_token = authorization.map(|value| {
                let token = value.strip_prefix("Bearer ").unwrap_or(value);
                token.trim().to_owned()
            });
            return Some(Self {
                owner: Owner::new(sub),
                access_token,
            });
        }
        let arn = authorizer
            .iam
            .as_ref()
            .and_then(|iam| iam.user_arn.as_deref())
            .filter(|arn| !arn.is_empty())?;
        Some(Self {
            owner: Owner::new(arn),
            access_token: None,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(RequestContext::ApiGatewayV2(context)) = parts.request_context_ref() else {
            return Err(ApiError::unauthorized());
        };
        let authorization = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        Self::from_context(context, authorization).ok_or_else(ApiError::unauthorized)
    }
}

/// Middleware for every route when `COGNITO_REVOCATION_CHECK` is on: a token that was signed
/// out is refused even before it expires, on reads as well as writes.
pub async fn require_live_session<C: SessionCheck>(
    State(sessions): State<Arc<C>>,
    caller: Caller,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &caller.access_token
        && !sessions.is_active(token).await?
    {
        tracing::info!("the access token was revoked; answered 401");
        return Err(ApiError::unauthorized());
    }
    Ok(next.run(request).await)
}
