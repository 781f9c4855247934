use std::fmt;

/// The contract's error codes. Which HTTP status each one answers with is the HTTP layer's
/// business (`pipeline::http::ApiError`), not the domain's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    UnsupportedModel,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    NotCancellable,
    PromptTooLong,
    RateLimited,
    BudgetExceeded,
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
            Self::NotCancellable => "not_cancellable",
            Self::PromptTooLong => "prompt_too_long",
            Self::RateLimited => "rate_limited",
            Self::BudgetExceeded => "budget_exceeded",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A request the domain refuses: a code from the contract and a sentence for a person,
/// which names the field it is about without markup (people read it as it is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RequestError {}
