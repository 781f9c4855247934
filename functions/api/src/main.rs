//! The `api` Lambda: `POST /generate`.

use api::{Config, GenerateApi};
use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use pipeline::adapters::{CognitoSessionCheck, DynamoJobStore, SqsJobQueue};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (config, aws) = pipeline::init(Config::from_env).await?;
    let api = GenerateApi::new(
        DynamoJobStore::new(&aws, config.table),
        SqsJobQueue::new(&aws, config.queue_url),
        config
            .revocation_check
            .then(|| CognitoSessionCheck::new(&aws)),
        config.settings,
    );
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayV2httpRequest>| async {
            Ok::<_, Error>(api.handle(event.payload).await)
        },
    ))
    .await
}
