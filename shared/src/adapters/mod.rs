//! One adapter per AWS service, each implementing one port.

mod appsync;
mod bedrock;
mod cognito;
mod dynamodb;
mod s3;
mod sqs;

pub use appsync::AppSyncEvents;
pub use bedrock::BedrockTextModel;
pub use cognito::CognitoSessionCheck;
pub use dynamodb::{DynamoJobStore, OWNER_INDEX, UNFINISHED_INDEX};
pub use s3::S3ArtifactStore;
pub use sqs::SqsJobQueue;

/// The full chain of an SDK error, which its `Display` alone hides.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
