use std::fmt;

/// The contract's error codes, each with its HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    UnsupportedModel,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PromptTooLong,
    RateLimited,
    Internal,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedModel => "unsupported_model",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PromptTooLong => "prompt_too_long",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidJson | Self::InvalidRequest | Self::UnsupportedModel => 400,
            Self::Unauthorized => 401,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PromptTooLong => 413,
            Self::RateLimited => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// An error the caller sees: a code from the contract and a sentence for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "Sign in first: this request carries no valid identity.",
        )
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "There is nothing at this address.")
    }

    pub fn job_not_found() -> Self {
        Self::new(ErrorCode::NotFound, "No job with this id belongs to you.")
    }

    pub fn rate_limited(limit: u32, retry_after_secs: i64) -> Self {
        Self::new(
            ErrorCode::RateLimited,
            format!(
                "You have submitted {limit} jobs this minute, the most allowed; try again in {retry_after_secs} s."
            ),
        )
    }

    pub fn method_not_allowed(allowed: &str) -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            format!("This path only answers {allowed}."),
        )
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

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}
