//! The live feed on AWS AppSync Events: an HTTP publish to the Event API, signed with SigV4
//! for the `appsync` service (the jobs namespace lets only IAM principals, the pipeline's
//! roles, publish; subscribers sign in with Cognito).

use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::http::Request as HttpRequest;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use serde_json::json;

use super::describe;
use crate::ports::{LiveFeed, Unavailable};

/// The Event API's HTTP endpoint, its region and the credentials that sign for it.
pub struct AppSyncEvents {
    /// `https://<id>.appsync-api.<region>.amazonaws.com/event` (locally, the gateway's).
    endpoint: String,
    host: String,
    region: String,
    credentials: SharedCredentialsProvider,
    connector: Connector,
}

impl AppSyncEvents {
    /// `None` when `config` has no region or credentials to sign with, or `endpoint` is not
    /// an absolute URL.
    pub fn new(config: &SdkConfig, endpoint: impl Into<String>) -> Option<Self> {
        let endpoint = endpoint.into();
        let uri: http::Uri = endpoint.parse().ok()?;
        let host = match uri.port_u16() {
            Some(port) => format!("{}:{port}", uri.host()?),
            None => uri.host()?.to_owned(),
        };
        Some(Self {
            host,
            endpoint,
            region: config.region()?.to_string(),
            credentials: config.credentials_provider()?,
            connector: crate::aws::https_connector(),
        })
    }

    fn signed(&self, body: Vec<u8>, identity: &Identity) -> Result<HttpRequest, String> {
        let params = v4::SigningParams::builder()
            .identity(identity)
            .region(&self.region)
            .name("appsync")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|error| error.to_string())?
            .into();
        let headers = [
            ("content-type", "application/json"),
            ("host", self.host.as_str()),
        ];
        let signable = SignableRequest::new(
            "POST",
            &self.endpoint,
            headers.into_iter(),
            SignableBody::Bytes(&body),
        )
        .map_err(|error| error.to_string())?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|error| error.to_string())?
            .into_parts();
        let mut request = http::Request::builder().method("POST").uri(&self.endpoint);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut request = request
            .body(SdkBody::from(body))
            .map_err(|error| error.to_string())?;
        instructions.apply_to_request_http1x(&mut request);
        HttpRequest::try_from(request).map_err(|error| error.to_string())
    }
}

impl LiveFeed for AppSyncEvents {
    async fn publish(&self, channel: &str, events: &[String]) -> Result<(), Unavailable> {
        let failed = |detail: String| Unavailable::new("AppSync Events publish", detail);
        let credentials = self
            .credentials
            .provide_credentials()
            .await
            .map_err(|error| failed(describe(&error)))?;
        let body = json!({ "channel": channel, "events": events }).to_string();
        let request = self
            .signed(body.into_bytes(), &credentials.into())
            .map_err(failed)?;
        let response = self
            .connector
            .call(request)
            .await
            .map_err(|error| failed(describe(&error)))?;
        let status = response.status().as_u16();
        let answer = ByteStream::new(response.into_body())
            .collect()
            .await
            .map(|data| data.into_bytes())
            .unwrap_or_default();
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        // A 200 may still list events it refused.
        let refused = answer["failed"]
            .as_array()
            .is_some_and(|list| !list.is_empty());
        if status != 200 || refused {
            return Err(failed(format!("HTTP {status}: {answer}")));
        }
        Ok(())
    }
}
