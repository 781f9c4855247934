//! The `recovery` Lambda: dead-lettered job messages, and the schedule's sweep.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use pipeline::adapters::{DynamoJobStore, S3ArtifactStore, SqsJobQueue};
use recovery::{Config, Recovery, RecoveryEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (config, aws) = pipeline::init(Config::from_env).await?;
    let recovery = Recovery::new(
        DynamoJobStore::new(&aws, config.table),
        S3ArtifactStore::new(&aws, config.artifacts_bucket),
        SqsJobQueue::new(&aws, config.queue_url),
        SqsJobQueue::new(&aws, config.dead_letter_queue_url),
        config.settings,
    );
    lambda_runtime::run(service_fn(|event: LambdaEvent<RecoveryEvent>| async {
        Ok::<_, Error>(recovery.handle(event.payload).await?)
    }))
    .await
}
