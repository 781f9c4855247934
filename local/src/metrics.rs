//! The pipeline's metrics, kept by the local stack: where CloudWatch would extract them from
//! the EMF lines (`pipeline::metrics`), the stack aggregates the lines itself, per metric and
//! dimension set as CloudWatch does, serves them at `GET /metrics` (local only: the gateway
//! answers only on 127.0.0.1, and this route needs no token) and logs a one-line summary.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use axum::Json;
use serde_json::{Value, json};

/// The latest values kept per series for the percentiles: bounded memory in a long session.
const SAMPLES_KEPT: usize = 10_000;

/// Units whose series get p50 and p95.
const TIME_UNITS: [&str; 3] = ["Seconds", "Milliseconds", "Microseconds"];

/// Counts, sums and percentiles of the metrics in EMF lines.
#[derive(Default)]
pub struct Aggregator {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    series: BTreeMap<Key, Series>,
    records: u64,
    unreadable: u64,
}

/// A metric as CloudWatch stores it: a name and the values of one dimension set.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    name: String,
    dimensions: BTreeMap<String, String>,
}

struct Series {
    unit: String,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    /// Time units only.
    samples: VecDeque<f64>,
}

impl Series {
    fn new(unit: &str) -> Self {
        Self {
            unit: unit.to_owned(),
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            samples: VecDeque::new(),
        }
    }

    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if TIME_UNITS.contains(&self.unit.as_str()) {
            if self.samples.len() == SAMPLES_KEPT {
                self.samples.pop_front();
            }
            self.samples.push_back(value);
        }
    }

    /// Nearest rank over the kept samples.
    fn percentile(&self, p: f64) -> Option<f64> {
        let mut sorted: Vec<f64> = self.samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let rank = (p * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.max(1) - 1).copied()
    }

    fn percentiles(&self) -> Option<(f64, f64)> {
        Some((self.percentile(0.50)?, self.percentile(0.95)?))
    }
}

impl Aggregator {
    /// Adds one EMF line: each metric of each directive, under each of its dimension sets
    /// whose dimensions the record has (CloudWatch skips the others too).
    pub fn record(&self, line: &str) {
        let mut state = self.state.lock().unwrap();
        let Ok(record) = serde_json::from_str::<Value>(line) else {
            state.unreadable += 1;
            return;
        };
        let Some(directives) = record["_aws"]["CloudWatchMetrics"].as_array() else {
            state.unreadable += 1;
            return;
        };
        state.records += 1;
        for directive in directives {
            let empty = Vec::new();
            let metrics = directive["Metrics"].as_array().unwrap_or(&empty);
            for set in directive["Dimensions"].as_array().unwrap_or(&empty) {
                let Some(dimensions) = dimension_values(&record, set) else {
                    continue;
                };
                for metric in metrics {
                    let Some(name) = metric["Name"].as_str() else {
                        continue;
                    };
                    let unit = metric["Unit"].as_str().unwrap_or("None");
                    let key = Key {
                        name: name.to_owned(),
                        dimensions: dimensions.clone(),
                    };
                    let series = state.series.entry(key).or_insert_with(|| Series::new(unit));
                    // A value or a list of values (EMF allows both).
                    let values = match &record[name] {
                        Value::Array(values) => values.iter().filter_map(Value::as_f64).collect(),
                        value => value.as_f64().into_iter().collect::<Vec<_>>(),
                    };
                    values.into_iter().for_each(|value| series.add(value));
                }
            }
        }
    }

    /// How many records were added: what the summary compares to see a change.
    pub fn records(&self) -> u64 {
        self.state.lock().unwrap().records
    }

    /// What `GET /metrics` answers.
    pub fn snapshot(&self) -> Value {
        let state = self.state.lock().unwrap();
        let metrics: Vec<Value> = state
            .series
            .iter()
            .map(|(key, series)| {
                let mut metric = json!({
                    "name": key.name,
                    "dimensions": key.dimensions,
                    "unit": series.unit,
                    "count": series.count,
                    "sum": series.sum,
                    "min": finite(series.min),
                    "max": finite(series.max),
                });
                if let Some((p50, p95)) = series.percentiles() {
                    metric["p50"] = json!(p50);
                    metric["p95"] = json!(p95);
                }
                metric
            })
            .collect();
        json!({
            "records": state.records,
            "unreadable": state.unreadable,
            "metrics": metrics,
        })
    }

    /// One line: each series' sum, or its p50/p95 for a time.
    pub fn summary(&self) -> String {
        let state = self.state.lock().unwrap();
        let parts: Vec<String> = state
            .series
            .iter()
            .map(|(key, series)| {
                let dimensions: Vec<String> = key
                    .dimensions
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect();
                let name = if dimensions.is_empty() {
                    key.name.clone()
                } else {
                    format!("{}{{{}}}", key.name, dimensions.join(","))
                };
                match series.percentiles() {
                    Some((p50, p95)) => format!(
                        "{name} p50 {p50:.0} p95 {p95:.0} {} (n={})",
                        series.unit.to_lowercase(),
                        series.count
                    ),
                    None => format!("{name} {}", trim(series.sum)),
                }
            })
            .collect();
        format!("metrics ({} records): {}", state.records, parts.join(", "))
    }
}

/// The record's values of a dimension set, if it has them all.
fn dimension_values(record: &Value, set: &Value) -> Option<BTreeMap<String, String>> {
    set.as_array()?
        .iter()
        .map(|name| {
            let name = name.as_str()?;
            Some((name.to_owned(), record[name].as_str()?.to_owned()))
        })
        .collect()
}

fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!(value)
    } else {
        Value::Null
    }
}

/// A whole number without its `.0`; a fraction to the micro (costs in dollars are small).
fn trim(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The local stack's aggregator: one per process, as the pipeline's sink is.
pub fn aggregator() -> &'static Aggregator {
    static AGGREGATOR: LazyLock<Aggregator> = LazyLock::new(Aggregator::default);
    &AGGREGATOR
}

/// Sends the functions' metrics to [`aggregator`]; each line is also logged at debug level.
pub fn install() -> &'static Aggregator {
    pipeline::metrics::init_with_lines(|line| {
        tracing::debug!(target: "metrics", "{line}");
        aggregator().record(line);
    });
    aggregator()
}

/// Logs [`Aggregator::summary`] every `every`, when records came in since the last one.
pub async fn log_summaries(aggregator: &'static Aggregator, every: Duration) {
    let mut logged = 0;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        let records = aggregator.records();
        if records != logged {
            logged = records;
            tracing::info!("{}", aggregator.summary());
        }
    }
}

/// `GET /metrics`.
pub async fn serve() -> Json<Value> {
    Json(aggregator().snapshot())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use axum::{Router, routing::get};
    use lambda_http::tower::ServiceExt;
    use pipeline::metrics::{self, ModelCall};

    use super::*;
    use crate::authorizer::JwtAuthorizer;
    use crate::gateway::{self, GatewayConfig};

    /// The lines the pipeline emits for these calls (captured on this thread).
    fn lines(calls: impl FnOnce()) -> Vec<String> {
        let captured = metrics::capture();
        calls();
        captured.lines()
    }

    fn series<'a>(snapshot: &'a Value, name: &str, dimensions: Value) -> &'a Value {
        snapshot["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|metric| metric["name"] == name && metric["dimensions"] == dimensions)
            .unwrap_or_else(|| panic!("no {name} {dimensions} in {snapshot}"))
    }

    #[test]
    fn counts_are_summed_per_dimension_value() {
        let aggregator = Aggregator::default();
        let emitted = lines(|| {
            for outcome in ["accepted", "accepted", "rate_limited", "accepted"] {
                metrics::submission(outcome);
            }
        });
        emitted.iter().for_each(|line| aggregator.record(line));
        let snapshot = aggregator.snapshot();
        assert_eq!(snapshot["records"], 4);
        let accepted = series(&snapshot, "Submissions", json!({"Outcome": "accepted"}));
        assert_eq!(accepted["count"], 3);
        assert_eq!(accepted["sum"], 3.0);
        assert_eq!(accepted["unit"], "Count");
        assert!(accepted.get("p50").is_none(), "percentiles are for times");
        let limited = series(&snapshot, "Submissions", json!({"Outcome": "rate_limited"}));
        assert_eq!(limited["sum"], 1.0);
        assert_eq!(snapshot["metrics"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn latencies_get_min_max_and_percentiles_overall_and_by_model() {
        let aggregator = Aggregator::default();
        let emitted = lines(|| {
            for millis in 1..=100 {
                let call = ModelCall {
                    latency: Duration::from_millis(millis),
                    input_tokens: 10,
                    output_tokens: 2,
                    cost_usd: Some(0.5),
                    ..ModelCall::default()
                };
                let model = if millis % 2 == 0 { "even" } else { "odd" };
                metrics::model_call(model, &call);
            }
        });
        emitted.iter().for_each(|line| aggregator.record(line));
        let snapshot = aggregator.snapshot();

        let all = series(&snapshot, "ModelLatency", json!({}));
        assert_eq!(all["unit"], "Milliseconds");
        assert_eq!(all["count"], 100);
        assert_eq!(all["sum"], 5050.0);
        assert_eq!(
            (all["min"].as_f64(), all["max"].as_f64()),
            (Some(1.0), Some(100.0))
        );
        assert_eq!(
            (all["p50"].as_f64(), all["p95"].as_f64()),
            (Some(50.0), Some(95.0))
        );

        let even = series(&snapshot, "ModelLatency", json!({"Model": "even"}));
        assert_eq!(even["count"], 50);
        assert_eq!(
            (even["p50"].as_f64(), even["p95"].as_f64()),
            (Some(50.0), Some(96.0))
        );

        let tokens = series(&snapshot, "InputTokens", json!({}));
        assert_eq!(tokens["sum"], 1000.0);
        let cost = series(&snapshot, "CostUsd", json!({"Model": "odd"}));
        assert_eq!(
            (cost["unit"].as_str(), cost["sum"].as_f64()),
            (Some("None"), Some(25.0))
        );

        let summary = aggregator.summary();
        assert!(summary.starts_with("metrics (100 records): "), "{summary}");
        assert!(
            summary.contains("ModelLatency p50 50 p95 95 milliseconds (n=100)"),
            "{summary}"
        );
        assert!(summary.contains("InputTokens{Model=even} 500"), "{summary}");
        assert!(summary.contains("CostUsd{Model=odd} 25,"), "{summary}");
    }

    #[test]
    fn the_summary_shows_small_sums_to_the_micro() {
        let texts = [trim(5.0), trim(5.74e-6), trim(0.125), trim(1e-9)];
        assert_eq!(texts, ["5", "0.000006", "0.125", "0"]);
    }

    #[test]
    fn lines_that_are_not_emf_are_counted_apart() {
        let aggregator = Aggregator::default();
        aggregator.record("not json");
        aggregator.record(r#"{"level":"INFO","message":"a log line"}"#);
        let snapshot = aggregator.snapshot();
        assert_eq!(
            (
                snapshot["records"].as_u64(),
                snapshot["unreadable"].as_u64()
            ),
            (Some(0), Some(2))
        );
        assert_eq!(snapshot["metrics"], json!([]));
    }

    #[tokio::test]
    async fn the_gateway_serves_the_metrics_without_a_token() {
        let emitted = lines(|| metrics::recovery("gateway_test"));
        emitted.iter().for_each(|line| aggregator().record(line));
        let port = 3999;
        let web_dir = std::env::temp_dir().join("metrics-test-web");
        let app = gateway::router(
            Router::new().fallback(get(|| async { "function" })),
            Router::new().fallback(get(|| async { "function" })),
            Router::new(),
            // Never reached: no JWKS is fetched for /metrics.
            JwtAuthorizer::new(
                "https://issuer.invalid".into(),
                "client".into(),
                "http://127.0.0.1:9/jwks.json".into(),
            ),
            GatewayConfig {
                web_dir,
                web_config: json!({}),
                cognito_endpoint: "http://127.0.0.1:9/".into(),
                allowed_origin: format!("http://127.0.0.1:{port}"),
                port,
            },
        );
        let request = Request::get("/metrics")
            .header(header::HOST, format!("127.0.0.1:{port}"))
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let snapshot: Value = serde_json::from_slice(&body).unwrap();
        let recoveries = series(&snapshot, "Recoveries", json!({"Action": "gateway_test"}));
        assert_eq!(recoveries["sum"], 1.0);

        // The functions' routes still want a token.
        let request = Request::get("/jobs")
            .header(header::HOST, format!("127.0.0.1:{port}"))
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}
