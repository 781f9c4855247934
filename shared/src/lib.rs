//! What the three Lambda functions share, in hexagonal layers:
//!
//! - [`domain`]: jobs, their state machine, request validation and the contract's error codes.
//!   Pure logic, no AWS in it.
//! - [`ports`]: the traits the handlers are written against (job store, job queue, artifact
//!   store, text model, session check).
//! - [`adapters`]: one implementation of a port per AWS service.
//! - `fakes` (tests and the `fakes` feature only): in-memory ports for unit tests.
//! - [`delivery`]: what becomes of SQS deliveries of job messages (worker and recovery).
//! - [`long_poll`]: waiting for a job to change (long-polls, `Prefer: wait`).
//! - [`metrics`]: the pipeline's metrics, as CloudWatch Embedded Metric Format records.
//! - [`config`], [`http`], [`telemetry`], [`aws`]: the glue every function needs at its edges.

pub mod adapters;
pub mod aws;
pub mod config;
pub mod delivery;
pub mod domain;
#[cfg(any(test, feature = "fakes"))]
pub mod fakes;
pub mod http;
pub mod long_poll;
pub mod metrics;
pub mod ports;
pub mod telemetry;

/// The start of every function's `main`: JSON logs, EMF metrics on stdout, the configuration
/// read from the environment (a bad one is logged, naming the variable, and stops the
/// function), and the AWS SDK configuration that all of the function's clients share.
pub async fn init<C>(
    read: impl FnOnce(&config::Env) -> Result<C, config::ConfigError>,
) -> Result<(C, aws_config::SdkConfig), config::ConfigError> {
    telemetry::init();
    metrics::init_emf_stdout();
    let config = read(&config::Env::from_process()).inspect_err(|error| {
        tracing::error!(%error, "configuration error; the function cannot start");
    })?;
    Ok((config, aws::load_sdk_config().await))
}
