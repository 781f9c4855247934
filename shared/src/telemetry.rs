//! Logs as JSON lines. `lambda_runtime` opens a span per invocation holding `requestId`, and
//! the handlers open one per job holding `job_id`: both appear on every line inside them.
//! The level comes from `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `info`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .with_env_filter(
            EnvFilter::try_new(level.to_lowercase()).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .try_init();
}
