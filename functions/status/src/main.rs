//! The `status` Lambda: `GET /jobs/{id}`, `GET /jobs`, `POST /jobs/{id}/cancel`, `GET /usage`.

use pipeline::adapters::{CognitoSessionCheck, DynamoJobStore};
use status::{Config, StatusApi};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let (config, aws) = pipeline::init(Config::from_env).await?;
    let sessions = (config.settings.http.revocation_check).then(|| CognitoSessionCheck::new(&aws));
    let status = StatusApi::new(
        DynamoJobStore::new(&aws, config.table),
        config.artifacts_bucket,
        config.settings,
    );
    lambda_http::run(status::router(status, sessions)).await
}
