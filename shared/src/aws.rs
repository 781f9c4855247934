//! Loading the AWS SDK configuration, once per Lambda init.

use aws_config::SdkConfig;

/// The standard chain: region, credentials and the `AWS_ENDPOINT_URL` /
/// `AWS_ENDPOINT_URL_<SERVICE>` overrides used for local runs.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::load_from_env().await
}

/// Whether S3 requests go to an emulator, which cannot serve `bucket.host` names.
pub(crate) fn s3_endpoint_overridden(config: &SdkConfig) -> bool {
    config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
}
