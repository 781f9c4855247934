use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse_stream::ConverseStreamError;
use aws_sdk_bedrockruntime::types::error::ConverseStreamOutputError;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ContentBlockDelta, ConversationRole, ConverseStreamOutput,
    InferenceConfiguration, Message, SystemContentBlock,
};

use super::describe;
use crate::domain::Usage;
use crate::ports::{ModelError, ModelReply, ModelRequest, Progress, TextModel};

/// Any Bedrock text model, through the Converse API.
#[derive(Clone, Debug)]
pub struct BedrockTextModel {
    client: Client,
}

impl BedrockTextModel {
    pub fn new(config: &SdkConfig) -> Self {
        // No retries inside the SDK: a retryable failure goes back to the queue, so that every
        // model call is one counted attempt and `MAX_ATTEMPTS` means what it says.
        let bedrock_config = aws_sdk_bedrockruntime::config::Builder::from(config)
            .retry_config(RetryConfig::disabled())
            .build();
        Self {
            client: Client::from_conf(bedrock_config),
        }
    }
}

impl TextModel for BedrockTextModel {
    /// One `ConverseStream` call: each text delta goes to `progress` as it arrives; the
    /// stream's end brings the stop reason and the usage.
    async fn generate(
        &self,
        request: &ModelRequest,
        progress: &Progress,
    ) -> Result<ModelReply, ModelError> {
        let message = Message::builder()
            .role(ConversationRole::User)
            .content(ContentBlock::Text(request.prompt.clone()))
            .build()
            .map_err(|error| ModelError::Permanent(error.to_string()))?;
        let inference = InferenceConfiguration::builder()
            .max_tokens(i32::try_from(request.max_tokens).unwrap_or(i32::MAX))
            .set_temperature(request.temperature)
            .build();
        let mut output = self
            .client
            .converse_stream()
            .model_id(&request.model)
            .messages(message)
            .set_system(
                request
                    .system
                    .clone()
                    .map(|system| vec![SystemContentBlock::Text(system)]),
            )
            .inference_config(inference)
            .send()
            .await
            .map_err(|error| classify(error, call_error_kind))?;

        let mut stop_reason = None;
        let mut usage = Usage::default();
        loop {
            let event = output
                .stream
                .recv()
                .await
                .map_err(|error| classify(error, stream_error_kind))?;
            match event {
                Some(ConverseStreamOutput::ContentBlockDelta(event)) => {
                    if let Some(ContentBlockDelta::Text(text)) = event.delta() {
                        progress.push(text);
                    }
                }
                Some(ConverseStreamOutput::MessageStop(event)) => {
                    stop_reason = Some(event.stop_reason().as_str().to_owned());
                }
                Some(ConverseStreamOutput::Metadata(event)) => {
                    if let Some(reported) = event.usage() {
                        usage = Usage {
                            input_tokens: reported.input_tokens().max(0) as u64,
                            output_tokens: reported.output_tokens().max(0) as u64,
                        };
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        // A stream that ends without its messageStop was cut off: try again.
        let stop_reason = stop_reason.ok_or_else(|| {
            ModelError::Retryable("the model's stream ended before its last message".into())
        })?;
        Ok(ModelReply {
            text: progress.text(),
            stop_reason,
            usage,
        })
    }
}

/// Whether an error of the call or of its stream may pass if tried again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Retryable,
    Permanent,
    /// Not modelled: decided by the HTTP status.
    Other,
}

fn call_error_kind(error: &ConverseStreamError) -> Kind {
    match error {
        ConverseStreamError::ThrottlingException(_)
        | ConverseStreamError::ServiceUnavailableException(_)
        | ConverseStreamError::InternalServerException(_)
        | ConverseStreamError::ModelNotReadyException(_)
        | ConverseStreamError::ModelTimeoutException(_)
        | ConverseStreamError::ModelStreamErrorException(_) => Kind::Retryable,
        ConverseStreamError::ValidationException(_)
        | ConverseStreamError::AccessDeniedException(_)
        | ConverseStreamError::ResourceNotFoundException(_)
        | ConverseStreamError::ModelErrorException(_) => Kind::Permanent,
        _ => Kind::Other,
    }
}

fn stream_error_kind(error: &ConverseStreamOutputError) -> Kind {
    match error {
        ConverseStreamOutputError::ThrottlingException(_)
        | ConverseStreamOutputError::ServiceUnavailableException(_)
        | ConverseStreamOutputError::InternalServerException(_)
        | ConverseStreamOutputError::ModelStreamErrorException(_) => Kind::Retryable,
        ConverseStreamOutputError::ValidationException(_) => Kind::Permanent,
        _ => Kind::Other,
    }
}

/// Throttling, server errors, broken streams and lost connections may pass; a refused request
/// never will.
fn classify<E, R>(error: SdkError<E, R>, kind: fn(&E) -> Kind) -> ModelError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: HttpStatus + std::fmt::Debug + 'static,
{
    let status = match &error {
        SdkError::ServiceError(context) => context.raw().http_status(),
        _ => None,
    };
    let Some(service) = error.as_service_error() else {
        // Timeouts, connection failures, unreadable responses.
        return ModelError::Retryable(describe(&error));
    };
    let message = service
        .message()
        .map_or_else(|| describe(&error), str::to_owned);
    let retryable = match kind(service) {
        Kind::Retryable => true,
        Kind::Permanent => false,
        // An unmodelled exception inside the stream has no status of its own: the stream
        // broke, which may pass.
        Kind::Other => status.is_none_or(|status| status == 429 || status >= 500),
    };
    if retryable {
        ModelError::Retryable(message)
    } else {
        ModelError::Permanent(message)
    }
}

/// The HTTP status of what carried an error: the response to the call, or none for a
/// message inside the stream.
trait HttpStatus {
    fn http_status(&self) -> Option<u16>;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn http_status(&self) -> Option<u16> {
        Some(self.status().as_u16())
    }
}

impl HttpStatus for aws_smithy_types::event_stream::RawMessage {
    fn http_status(&self) -> Option<u16> {
        None
    }
}
