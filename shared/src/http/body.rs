//! The request body as text, with the contract's answers when it cannot be had.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};

use super::{ApiError, MAX_BODY_BYTES};
use crate::domain::ErrorCode;

/// The body as UTF-8 text, at most [`MAX_BODY_BYTES`] of it.
pub struct TextBody(pub String);

impl<S: Send + Sync> FromRequest<S> for TextBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection {
                    BytesRejection::FailedToBufferBody(failure)
                        if failure.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
                    {
                        ApiError::new(
                            ErrorCode::PromptTooLong,
                            format!(
                                "The request body is over the limit of {MAX_BODY_BYTES} bytes."
                            ),
                        )
                    }
                    other => {
                        tracing::info!(error = %other, "the request body could not be read");
                        ApiError::invalid_request(
                            "The request body could not be read; please send the request again.",
                        )
                    }
                })?;
        String::from_utf8(bytes.into())
            .map(Self)
            .map_err(|_| ApiError::new(ErrorCode::InvalidJson, "The body is not UTF-8 text."))
    }
}
