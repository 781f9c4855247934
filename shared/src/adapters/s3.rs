use aws_config::SdkConfig;
use aws_sdk_s3::{Client, primitives::ByteStream};

use super::describe;
use crate::domain::Artifact;
use crate::ports::{ArtifactStore, Unavailable};

/// The artifacts bucket on S3.
#[derive(Clone, Debug)]
pub struct S3ArtifactStore {
    client: Client,
    bucket: String,
}

impl S3ArtifactStore {
    pub fn new(config: &SdkConfig, bucket: impl Into<String>) -> Self {
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(crate::aws::s3_endpoint_overridden(config))
            .build();
        Self {
            client: Client::from_conf(s3_config),
            bucket: bucket.into(),
        }
    }
}

impl ArtifactStore for S3ArtifactStore {
    async fn put(&self, key: &str, artifact: &Artifact) -> Result<(), Unavailable> {
        let body = serde_json::to_vec(artifact).expect("artifacts always serialize");
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|error| Unavailable::new("S3 PutObject", describe(&error)))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), Unavailable> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| Unavailable::new("S3 DeleteObject", describe(&error)))?;
        Ok(())
    }
}
