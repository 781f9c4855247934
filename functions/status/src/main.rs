//! The `status` Lambda: `GET /jobs/{id}` and `GET /jobs`.

use aws_lambda_events::apigw::ApiGatewayV2httpRequest;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use pipeline::adapters::DynamoJobStore;
use status::{Config, StatusApi};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (config, aws) = pipeline::init(Config::from_env).await?;
    let status = StatusApi::new(
        DynamoJobStore::new(&aws, config.table),
        config.artifacts_bucket,
        config.cors,
    );
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<ApiGatewayV2httpRequest>| async {
            Ok::<_, Error>(status.handle(event.payload).await)
        },
    ))
    .await
}
