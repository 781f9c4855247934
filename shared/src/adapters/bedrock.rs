use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput, InferenceConfiguration, Message,
    SystemContentBlock,
};

use super::describe;
use crate::domain::Usage;
use crate::ports::{ModelError, ModelReply, ModelRequest, TextModel};

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
    async fn generate(&self, request: &ModelRequest) -> Result<ModelReply, ModelError> {
        let message = Message::builder()
            .role(ConversationRole::User)
            .content(ContentBlock::Text(request.prompt.clone()))
            .build()
            .map_err(|error| ModelError::Permanent(error.to_string()))?;
        let inference = InferenceConfiguration::builder()
            .max_tokens(i32::try_from(request.max_tokens).unwrap_or(i32::MAX))
            .set_temperature(request.temperature)
            .build();
        let output = self
            .client
            .converse()
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
            .map_err(classify)?;

        let text = match output.output() {
            Some(ConverseOutput::Message(message)) => message
                .content()
                .iter()
                .filter_map(|block| block.as_text().ok())
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        };
        let usage = output.usage().map_or_else(Usage::default, |usage| Usage {
            input_tokens: usage.input_tokens().max(0) as u64,
            output_tokens: usage.output_tokens().max(0) as u64,
        });
        Ok(ModelReply {
            text,
            stop_reason: output.stop_reason().as_str().to_owned(),
            usage,
        })
    }
}

/// Throttling, server errors and lost connections may pass; a refused request never will.
fn classify(error: SdkError<ConverseError>) -> ModelError {
    let SdkError::ServiceError(service) = &error else {
        // Timeouts, connection failures, unreadable responses.
        return ModelError::Retryable(describe(&error));
    };
    let message = service
        .err()
        .message()
        .map_or_else(|| describe(&error), str::to_owned);
    match service.err() {
        ConverseError::ThrottlingException(_)
        | ConverseError::ServiceUnavailableException(_)
        | ConverseError::InternalServerException(_)
        | ConverseError::ModelNotReadyException(_)
        | ConverseError::ModelTimeoutException(_) => ModelError::Retryable(message),
        ConverseError::ValidationException(_)
        | ConverseError::AccessDeniedException(_)
        | ConverseError::ResourceNotFoundException(_)
        | ConverseError::ModelErrorException(_) => ModelError::Permanent(message),
        _ => {
            let status = service.raw().status().as_u16();
            if status == 429 || status >= 500 {
                ModelError::Retryable(message)
            } else {
                ModelError::Permanent(message)
            }
        }
    }
}
