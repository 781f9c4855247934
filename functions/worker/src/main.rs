//! The `worker` Lambda: SQS batches of job ids → Bedrock → S3 and DynamoDB.

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use pipeline::adapters::{
    AppSyncEvents, BedrockTextModel, DynamoJobStore, S3ArtifactStore, SqsJobQueue,
};
use worker::{Config, Worker};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (config, aws) = pipeline::init(Config::from_env).await?;
    let worker = Worker::new(
        DynamoJobStore::new(&aws, config.table),
        S3ArtifactStore::new(&aws, config.artifacts_bucket),
        BedrockTextModel::new(&aws),
        SqsJobQueue::new(&aws, config.queue_url),
        config.settings,
    )
    .with_feed(
        config
            .events_url
            .and_then(|url| AppSyncEvents::new(&aws, url)),
    );
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async {
        Ok::<_, Error>(worker.handle(event).await)
    }))
    .await
}
