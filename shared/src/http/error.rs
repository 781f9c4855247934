//! Every error answer: the contract's body, the code's HTTP status, and any headers it needs.

use axum::Json;
use axum::http::header::{ALLOW, RETRY_AFTER};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::domain::{ErrorCode, OverBudget, RequestError};
use crate::ports::Unavailable;

/// An error the caller sees: a code from the contract, a sentence for a person, and the
/// headers that go with it (`Retry-After`, `Allow`).
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Few and rare, so a list rather than a (much larger) `HeaderMap`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The HTTP status of each of the contract's error codes.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidJson | ErrorCode::InvalidRequest | ErrorCode::UnsupportedModel => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::NotCancellable => StatusCode::CONFLICT,
        ErrorCode::PromptTooLong => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, value));
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "Sign in first: this request carries no valid access token.",
        )
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "There is nothing at this address.")
    }

    pub fn job_not_found() -> Self {
        Self::new(ErrorCode::NotFound, "No job with this id belongs to you.")
    }

    pub fn not_cancellable(status: &str) -> Self {
        Self::new(
            ErrorCode::NotCancellable,
            format!("The job has already {status}; only a queued or running job can be cancelled."),
        )
    }

    /// `allowed` is what goes in the `Allow` header, e.g. `POST` or `GET,HEAD`.
    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            format!("This address only answers {}.", allowed.replace(',', ", ")),
        )
        .with_header(ALLOW, allowed)
    }

    pub fn rate_limited(limit: u32, retry_after_secs: i64) -> Self {
        Self::new(
            ErrorCode::RateLimited,
            format!(
                "You have submitted {limit} jobs this minute, the most allowed; try again in {retry_after_secs} s."
            ),
        )
        .with_header(RETRY_AFTER, retry_after_secs)
    }

    /// `429` with `Retry-After` at the end of the budget's period, and a sentence saying
    /// what was used and when it resets.
    pub fn budget_exceeded(over: &OverBudget, now: chrono::DateTime<chrono::Utc>) -> Self {
        Self::new(ErrorCode::BudgetExceeded, over.explain())
            .with_header(RETRY_AFTER, over.period.retry_after_secs(now))
    }

    /// A dependency failed; the details belong in the log, not in the answer.
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "The service is briefly unavailable; please retry in a few seconds.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "Something went wrong on our side; it has been logged.",
        )
    }
}

impl From<RequestError> for ApiError {
    fn from(error: RequestError) -> Self {
        Self::new(error.code, error.message)
    }
}

impl From<Unavailable> for ApiError {
    fn from(cause: Unavailable) -> Self {
        tracing::error!(%cause, "dependency failed; answered 503");
        Self::unavailable()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        let mut response = (self.status(), Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}
