//! Logs as JSON lines. `lambda_runtime` opens a span per invocation holding `requestId`, and
//! the handlers open one per job holding `job_id`: both appear on every line inside them.
//! The level comes from `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `info`.

use tracing_subscriber::filter::LevelFilter;

pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    // A level, not `EnvFilter` directives: those bring a regex engine (about 0.25 MiB).
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .with_max_level(level.parse().unwrap_or(LevelFilter::INFO))
        .try_init();
}
