//! Loading the AWS SDK configuration, once per Lambda init.

use aws_config::environment::EnvironmentVariableCredentialsProvider;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_runtime::env_config::EnvConfigValue;
use aws_smithy_async::rt::sleep::default_async_sleep;
use aws_smithy_async::time::SharedTimeSource;
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::shared::IntoShared;
use aws_smithy_types::config_bag::ConfigBag;
use aws_types::os_shim_internal::Env;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};

/// The functions' configuration, from what Lambda gives them: the region (`AWS_REGION`), the
/// role's credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), and
/// the `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` overrides used for local runs; the
/// SDK's standard retries, and the HTTPS client of [`https_client`].
///
/// Not `aws_config`'s loader: its default credentials chain (profiles, SSO, web identity
/// through STS, IMDS, containers) is code that a Lambda function never runs, and about 0.4 MiB
/// of each binary.
pub async fn load_sdk_config() -> SdkConfig {
    let env = Env::real();
    let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .into_iter()
        .find_map(|name| env.get(name).ok())
        .map(Region::new);
    let credentials = EnvironmentVariableCredentialsProvider::new();
    let mut config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .http_client(https_client())
        .time_source(SharedTimeSource::default())
        .retry_config(RetryConfig::standard())
        .service_config(EndpointsFromEnv(env));
    config.set_sleep_impl(default_async_sleep());
    config.build()
}

/// `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`, as the SDK's own loader reads them.
#[derive(Debug)]
struct EndpointsFromEnv(Env);

impl LoadServiceConfig for EndpointsFromEnv {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        let (value, _source) = EnvConfigValue::new()
            .env(key.env())
            .profile(key.profile())
            .service_id(key.service_id())
            .load(&self.0, None)?;
        Some(value.into_owned())
    }
}

/// `aws_config::defaults`, with the HTTPS client of [`https_client`]: the whole standard
/// chain, for the local stack (with `--model bedrock`, the developer's own credentials).
pub fn sdk_defaults() -> ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest()).http_client(https_client())
}

/// One HTTPS client for every SDK client built from the configuration (and so one connection
/// pool): rustls on ring, trusting the system's CA bundle file.
///
/// The SDK's default client (`default-https-client`) is rustls on aws-lc-rs, which is about
/// 1.5 MiB of each binary and, on the first TLS handshake of each process, gathers CPU jitter
/// entropy for some 30 ms. It also reads the root certificates as OpenSSL does: the bundle
/// file, then every file of the certificate directory (`/etc/ssl/certs`), which was half of a
/// cold start's CPU; the bundle alone holds the same roots.
pub fn https_client() -> SharedHttpClient {
    let client = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls_context())
        .build_https();
    NoEagerConnector(client).into_shared()
}

/// One HTTPS connection pool of the same kind for calls that no SDK client makes (the Event
/// API's publish), with a short connect and read time-out: a live feed that does not answer
/// is skipped, not waited for.
pub fn https_connector() -> aws_smithy_http_client::Connector {
    let settings = HttpConnectorSettings::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .read_timeout(std::time::Duration::from_secs(2))
        .build();
    aws_smithy_http_client::Connector::builder()
        .connector_settings(settings)
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(tls_context())
        .build()
}

fn tls_context() -> TlsContext {
    TlsContext::builder()
        .with_trust_store(trust_store())
        .build()
        .expect("a TLS context of a trust store alone is valid")
}

/// The CA bundle named by `SSL_CERT_FILE`, else the distribution's (Amazon Linux, as in
/// Lambda, then Debian and others); the platform's own lookup when there is none, or when
/// `SSL_CERT_DIR` names a directory.
fn trust_store() -> TrustStore {
    const BUNDLES: [&str; 4] = [
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    if std::env::var_os("SSL_CERT_DIR").is_some() {
        return TrustStore::default();
    }
    let named = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    named
        .into_iter()
        .chain(BUNDLES.iter().map(Into::into))
        .find_map(|path| std::fs::read(path).ok())
        .map_or_else(TrustStore::default, |pem| {
            TrustStore::empty().with_pem_certificate(pem)
        })
}

/// The SDK's client, less its check at the build of each SDK client, which builds a whole TLS
/// connector only to drop it: its one use is to fill the cache of the platform's root
/// certificates early. A trust store of PEM has no such cache (every connector decodes it
/// again), so the check would cost a decode per SDK client (and `aws-config` builds one more,
/// for STS) and save nothing. The connector is built by the first request, and kept.
#[derive(Debug)]
struct NoEagerConnector(SharedHttpClient);

impl HttpClient for NoEagerConnector {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.validate_final_config(components, cfg)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// Whether S3 requests go to an emulator, which cannot serve `bucket.host` names.
pub(crate) fn s3_endpoint_overridden(config: &SdkConfig) -> bool {
    config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
}
