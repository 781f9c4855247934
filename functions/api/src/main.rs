//! The `api` Lambda: `POST /generate`.

use api::{Config, GenerateApi};
use pipeline::adapters::{CognitoSessionCheck, DynamoJobStore, SqsJobQueue};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let (config, aws) = pipeline::init(Config::from_env).await?;
    let sessions = (config.settings.http.revocation_check).then(|| CognitoSessionCheck::new(&aws));
    let api = GenerateApi::new(
        DynamoJobStore::new(&aws, config.table),
        SqsJobQueue::new(&aws, config.queue_url),
        config.artifacts_bucket,
        config.settings,
    );
    lambda_http::run(api::router(api, sessions)).await
}
