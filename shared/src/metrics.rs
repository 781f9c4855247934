//! The pipeline's metrics, as CloudWatch Embedded Metric Format (EMF) records written by
//! [`metrique`]: each call below emits one record (a JSON line) to a process-wide sink, from
//! which CloudWatch Logs extracts the metrics. No `PutMetricData` call, no extra permission.
//!
//! - In Lambda, [`init_emf_stdout`] (called by [`crate::init`]) writes the records to stdout,
//!   between the JSON log lines, which Lambda ships to CloudWatch Logs.
//! - The local stack hands each line to its own aggregator with [`init_with_lines`].
//! - Tests read what a call emitted with `capture()` (tests and the `fakes` feature).
//! - With no sink installed (unit tests), every call is a cheap no-op: nothing is built.
//!
//! The namespace is `METRICS_NAMESPACE`, else `BedrockJobs`. Records carry no prompt, answer or
//! owner: only the dimensions below, a few non-metric properties (`Attempt`, `ErrorCode`), and
//! `Function` (Lambda's `AWS_LAMBDA_FUNCTION_NAME`, where set).
//!
//! Dimension sets: a record has one list of dimension sets, which applies to all of its metrics
//! (metrique's `emf::dimension_sets`). Where two metrics need different sets
//! ([`job_finished`]: `JobsFinished` by `Outcome`, `JobsFailed` by `ErrorCode`), two records
//! are emitted.

use std::io::{self, Write};
use std::sync::Once;
use std::time::Duration;

use metrique::emf::Emf;
use metrique::emf::flags::NoMetric;
use metrique::unit::{Count, Millisecond};
use metrique::unit_of_work::metrics;
use metrique::writer::{
    AttachGlobalEntrySink, AttachGlobalEntrySinkExt, Entry, EntryIoStream, EntrySink, EntryWriter,
    FormatExt, format::Format,
};
use metrique::{CloseValue, InflectableEntry, RootEntry};

/// The namespace when `METRICS_NAMESPACE` is unset.
pub const DEFAULT_NAMESPACE: &str = "BedrockJobs";

mod sink {
    // The pipeline's own global sink, rather than metrique's `ServiceMetrics`: no library
    // writing there can mix its records into ours.
    metrique::writer::sink::global_entry_sink! { PipelineMetrics }
}
use sink::PipelineMetrics;

/// One model call that got an answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelCall {
    pub latency: Duration,
    /// Streamed calls only.
    pub time_to_first_token: Option<Duration>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// `None` for a model without a price.
    pub cost_usd: Option<f64>,
}

/// `Submissions` by `Outcome`: "accepted", "repeated" (an idempotent repeat) or the error code
/// of a refusal ("invalid_request", "rate_limited", "budget_exceeded", "unavailable", …).
pub fn submission(outcome: &str) {
    emit(|| Submission {
        outcome: outcome.to_owned(),
        submissions: 1,
    });
}

/// `BudgetRefusals` by `Period`: "day" or "month".
pub fn budget_refusal(period: &str) {
    emit(|| BudgetRefusal {
        period: period.to_owned(),
        budget_refusals: 1,
    });
}

/// A job's start by the worker: its first start reports `QueueWait` (created → started), a
/// later one counts in `Retries`. Attempt 0 is taken as a first start, so that every record
/// has a metric.
pub fn job_started(queue_wait: Duration, attempt: u32) {
    let first = attempt <= 1;
    emit(|| JobStarted {
        queue_wait: first.then_some(queue_wait),
        retries: (!first).then_some(1),
        attempt,
    });
}

/// A model call that got an answer, by model and over all models.
pub fn model_call(model: &str, call: &ModelCall) {
    emit(|| ModelCallRecord {
        model: model.to_owned(),
        model_latency: call.latency,
        time_to_first_token: call.time_to_first_token,
        input_tokens: call.input_tokens,
        output_tokens: call.output_tokens,
        // A NaN or an infinity would make the line invalid JSON.
        cost_usd: call.cost_usd.filter(|cost| cost.is_finite()),
    });
}

/// A model call refused for throttling, by model and over all models.
pub fn model_throttled(model: &str) {
    emit(|| ModelThrottled {
        model: model.to_owned(),
        model_throttles: 1,
    });
}

/// A job that reached a final status: `JobsFinished` by `Outcome` ("succeeded", "failed",
/// "cancelled"); a failure also counts in `JobsFailed` by `ErrorCode` ("unknown" if none),
/// in a second record.
pub fn job_finished(status: &str, error_code: Option<&str>) {
    let failed = status == "failed";
    emit(|| JobFinished {
        outcome: status.to_owned(),
        jobs_finished: 1,
        error_code: error_code.map(str::to_owned),
    });
    if failed {
        emit(|| JobFailed {
            error_code: error_code.unwrap_or("unknown").to_owned(),
            jobs_failed: 1,
        });
    }
}

/// `job`'s ending, as [`job_finished`] counts it: its status, and its failure's code.
pub fn job_ended(job: &crate::domain::Job) {
    let code = job.failure.as_ref().map(|failure| failure.code.as_str());
    job_finished(job.status.as_str(), code);
}

/// A repair by the recovery function, by `Action`: "requeued", "failed" or "dead_lettered".
pub fn recovery(action: &str) {
    emit(|| Recovery {
        action: action.to_owned(),
        recoveries: 1,
    });
}

/// Lambda: the records go to stdout as EMF lines. The first sink installed stays; later calls
/// (and [`init_with_lines`] after this) do nothing.
pub fn init_emf_stdout() {
    // The lock keeps a record whole between the log lines that other threads write.
    install(format().output_to_makewriter(|| io::stdout().lock()));
}

/// The local stack: each record, one EMF JSON line without its newline, goes to `on_line`
/// (synchronously, on the emitting thread: keep it short). First sink installed wins.
pub fn init_with_lines(on_line: impl Fn(&str) + Send + Sync + 'static) {
    install(format().output_to(Lines::new(on_line)));
}

/// Tests: what this thread, and the tokio runtime it is in if any, emits while the returned
/// value lives, as EMF lines, whether or not a sink is installed. One at a time per thread.
#[cfg(any(test, feature = "fakes"))]
pub fn capture() -> Captured {
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let collected = lines.clone();
    let sink = metrique::writer::sink::FlushImmediately::new_boxed(format().output_to(Lines::new(
        move |line: &str| collected.lock().unwrap().push(line.to_owned()),
    )));
    let mut guards: Vec<Box<dyn std::any::Any>> =
        vec![Box::new(PipelineMetrics::set_test_sink(sink.clone()))];
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        // The thread's sink comes first; the runtime's catches its other worker threads.
        guards.push(Box::new(PipelineMetrics::set_test_sink_for_tokio_runtime(
            &runtime, sink,
        )));
    }
    Captured {
        lines,
        _guards: guards,
    }
}

/// The lines [`capture`] collects.
#[cfg(any(test, feature = "fakes"))]
pub struct Captured {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _guards: Vec<Box<dyn std::any::Any>>,
}

#[cfg(any(test, feature = "fakes"))]
impl Captured {
    /// The EMF lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The lines so far, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|line| serde_json::from_str(line).expect("an EMF line is a JSON object"))
            .collect()
    }
}

fn install(stream: impl EntryIoStream + Send + Sync + 'static) {
    static INSTALLED: Once = Once::new();
    // Written as each record is emitted, with no background thread: a Lambda environment is
    // frozen between invocations and would hold a queue's records back.
    INSTALLED.call_once(|| PipelineMetrics::write_directly_to(stream).forget());
}

/// `METRICS_NAMESPACE`, else [`DEFAULT_NAMESPACE`].
pub fn namespace(env: &crate::config::Env) -> String {
    env.optional("METRICS_NAMESPACE")
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

fn format() -> impl Format + Send + Sync + 'static {
    let namespace = namespace(&crate::config::Env::from_process());
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok();
    // `[[]]`: every metric also without dimensions, as the records' own sets are multiplied
    // by these. Validations are on in debug builds (tests) and off in release.
    Emf::builder(namespace, vec![vec![]])
        .build()
        .merge_globals(Globals { function })
}

/// Builds and writes a record only when a sink is installed.
fn emit<M>(record: impl FnOnce() -> M)
where
    M: CloseValue,
    M::Closed: InflectableEntry + Send + 'static,
{
    if let Some(sink) = PipelineMetrics::try_sink() {
        sink.append(RootEntry::new(record().close()));
    }
}

/// Properties of every record.
struct Globals {
    function: Option<String>,
}

impl Entry for Globals {
    fn write<'a>(&'a self, writer: &mut impl EntryWriter<'a>) {
        if let Some(function) = &self.function {
            writer.value("Function", function.as_str());
        }
    }
}

/// An `io::Write` that hands over each complete line.
struct Lines<F> {
    pending: Vec<u8>,
    on_line: F,
}

impl<F: Fn(&str)> Lines<F> {
    fn new(on_line: F) -> Self {
        Self {
            pending: Vec::new(),
            on_line,
        }
    }
}

impl<F: Fn(&str)> Write for Lines<F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(bytes);
        while let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            (self.on_line)(String::from_utf8_lossy(&line[..end]).trim_end());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[metrics(rename_all = "PascalCase", emf::dimension_sets = [["Outcome"]])]
struct Submission {
    outcome: String,
    #[metrics(unit = Count)]
    submissions: u64,
}

#[metrics(rename_all = "PascalCase", emf::dimension_sets = [["Period"]])]
struct BudgetRefusal {
    period: String,
    #[metrics(unit = Count)]
    budget_refusals: u64,
}

#[metrics(rename_all = "PascalCase")]
struct JobStarted {
    #[metrics(unit = Millisecond)]
    queue_wait: Option<Duration>,
    #[metrics(unit = Count)]
    retries: Option<u64>,
    #[metrics(flags(NoMetric))]
    attempt: u32,
}

#[metrics(rename_all = "PascalCase", emf::dimension_sets = [[], ["Model"]])]
struct ModelCallRecord {
    model: String,
    #[metrics(unit = Millisecond)]
    model_latency: Duration,
    #[metrics(unit = Millisecond)]
    time_to_first_token: Option<Duration>,
    #[metrics(unit = Count)]
    input_tokens: u64,
    #[metrics(unit = Count)]
    output_tokens: u64,
    cost_usd: Option<f64>,
}

#[metrics(rename_all = "PascalCase", emf::dimension_sets = [[], ["Model"]])]
struct ModelThrottled {
    model: String,
    #[metrics(unit = Count)]
    model_throttles: u64,
}

#[metrics(rename_all = "PascalCase", emf::dimension_sets = [["Outcome"]])]
struct JobFinished {
    outcome: String,
    #[metrics(unit = Count)]
    jobs_finished: u64,
    /// A property only: `JobsFailed` has it as its dimension.
    error_code: Option<String>,
}

#[metrics(rename_all = "PascalCase", emf::dimension_sets = [["ErrorCode"]])]
struct JobFailed {
    error_code: String,
    #[metrics(unit = Count)]
    jobs_failed: u64,
}

#[metrics(rename_all = "PascalCase", emf::dimension_sets = [["Action"]])]
struct Recovery {
    action: String,
    #[metrics(unit = Count)]
    recoveries: u64,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// Checks that `record` is an EMF record of `metrics` (name, unit; `None`: no unit, which
    /// CloudWatch takes as "None") under `dimensions`, each with a top-level value, and
    /// returns it.
    fn emf<'a>(
        record: &'a Value,
        dimensions: Value,
        metrics: &[(&str, Option<&str>)],
    ) -> &'a Value {
        let aws = &record["_aws"];
        assert!(
            aws["Timestamp"].as_u64().is_some(),
            "no timestamp: {record}"
        );
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives.len(), 1, "{record}");
        let namespace = std::env::var("METRICS_NAMESPACE").unwrap_or(DEFAULT_NAMESPACE.into());
        assert_eq!(directives[0]["Namespace"], namespace.as_str());
        assert_eq!(directives[0]["Dimensions"], dimensions, "{record}");
        let declared: Vec<(String, Option<String>)> = directives[0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|metric| {
                let unit = metric.get("Unit").map(|unit| unit.as_str().unwrap().into());
                (metric["Name"].as_str().unwrap().into(), unit)
            })
            .collect();
        let expected: Vec<(String, Option<String>)> = metrics
            .iter()
            .map(|(name, unit)| (name.to_string(), unit.map(Into::into)))
            .collect();
        assert_eq!(declared, expected, "{record}");
        for (name, _) in metrics {
            assert!(record[name].is_number(), "no value of {name}: {record}");
        }
        for set in dimensions.as_array().unwrap() {
            for dimension in set.as_array().unwrap() {
                let dimension = dimension.as_str().unwrap();
                assert!(record[dimension].is_string(), "no {dimension}: {record}");
            }
        }
        record
    }

    #[test]
    fn submissions_count_by_outcome() {
        let captured = capture();
        submission("accepted");
        submission("rate_limited");
        let records = captured.records();
        assert_eq!(records.len(), 2);
        for (record, outcome) in records.iter().zip(["accepted", "rate_limited"]) {
            emf(
                record,
                json!([["Outcome"]]),
                &[("Submissions", Some("Count"))],
            );
            assert_eq!(record["Submissions"], 1);
            assert_eq!(record["Outcome"], outcome);
        }
    }

    #[test]
    fn budget_refusals_count_by_period() {
        let captured = capture();
        budget_refusal("month");
        let record = &captured.records()[0];
        emf(
            record,
            json!([["Period"]]),
            &[("BudgetRefusals", Some("Count"))],
        );
        assert_eq!(record["BudgetRefusals"], 1);
        assert_eq!(record["Period"], "month");
    }

    #[test]
    fn a_first_start_reports_its_queue_wait_and_a_later_one_a_retry() {
        let captured = capture();
        job_started(Duration::from_millis(1500), 1);
        job_started(Duration::from_secs(40), 3);
        let records = captured.records();
        assert_eq!(records.len(), 2);

        let first = emf(
            &records[0],
            json!([[]]),
            &[("QueueWait", Some("Milliseconds"))],
        );
        assert_eq!(first["QueueWait"].as_f64(), Some(1500.0));
        assert_eq!(first["Attempt"], 1, "the attempt is a property");
        assert!(first.get("Retries").is_none());

        let retry = emf(&records[1], json!([[]]), &[("Retries", Some("Count"))]);
        assert_eq!(retry["Retries"], 1);
        assert_eq!(retry["Attempt"], 3);
        assert!(retry.get("QueueWait").is_none());
    }

    #[test]
    fn a_model_call_reports_latency_tokens_and_cost_overall_and_by_model() {
        let captured = capture();
        let streamed = ModelCall {
            latency: Duration::from_millis(2500),
            time_to_first_token: Some(Duration::from_millis(300)),
            input_tokens: 120,
            output_tokens: 800,
            cost_usd: Some(0.0125),
        };
        model_call("amazon.nova-lite-v1:0", &streamed);
        let unpriced = ModelCall {
            latency: Duration::from_millis(40),
            input_tokens: 3,
            ..ModelCall::default()
        };
        model_call("local.model", &unpriced);
        let records = captured.records();
        assert_eq!(records.len(), 2);

        let record = emf(
            &records[0],
            json!([[], ["Model"]]),
            &[
                ("ModelLatency", Some("Milliseconds")),
                ("TimeToFirstToken", Some("Milliseconds")),
                ("InputTokens", Some("Count")),
                ("OutputTokens", Some("Count")),
                ("CostUsd", None),
            ],
        );
        assert_eq!(record["Model"], "amazon.nova-lite-v1:0");
        assert_eq!(record["ModelLatency"].as_f64(), Some(2500.0));
        assert_eq!(record["TimeToFirstToken"].as_f64(), Some(300.0));
        assert_eq!(record["InputTokens"], 120);
        assert_eq!(record["OutputTokens"], 800);
        assert_eq!(record["CostUsd"].as_f64(), Some(0.0125));

        // What is not known is left out, not reported as zero.
        let record = emf(
            &records[1],
            json!([[], ["Model"]]),
            &[
                ("ModelLatency", Some("Milliseconds")),
                ("InputTokens", Some("Count")),
                ("OutputTokens", Some("Count")),
            ],
        );
        assert_eq!(record["Model"], "local.model");
        assert!(record.get("TimeToFirstToken").is_none() && record.get("CostUsd").is_none());
    }

    #[test]
    fn throttles_count_overall_and_by_model() {
        let captured = capture();
        model_throttled("anthropic.claude-3-haiku");
        let record = &captured.records()[0];
        emf(
            record,
            json!([[], ["Model"]]),
            &[("ModelThrottles", Some("Count"))],
        );
        assert_eq!(record["ModelThrottles"], 1);
        assert_eq!(record["Model"], "anthropic.claude-3-haiku");
    }

    #[test]
    fn a_failed_job_also_counts_by_error_code_in_a_second_record() {
        let captured = capture();
        job_finished("succeeded", None);
        job_finished("failed", Some("model_error"));
        job_finished("failed", None);
        job_finished("cancelled", None);
        let records = captured.records();
        assert_eq!(records.len(), 6);

        let outcomes = [
            (0, "succeeded"),
            (1, "failed"),
            (3, "failed"),
            (5, "cancelled"),
        ];
        for (index, outcome) in outcomes {
            let record = emf(
                &records[index],
                json!([["Outcome"]]),
                &[("JobsFinished", Some("Count"))],
            );
            assert_eq!(record["JobsFinished"], 1);
            assert_eq!(record["Outcome"], outcome);
        }
        assert_eq!(records[1]["ErrorCode"], "model_error", "a property too");
        assert!(records[0].get("ErrorCode").is_none());

        for (index, code) in [(2, "model_error"), (4, "unknown")] {
            let record = emf(
                &records[index],
                json!([["ErrorCode"]]),
                &[("JobsFailed", Some("Count"))],
            );
            assert_eq!(record["JobsFailed"], 1);
            assert_eq!(record["ErrorCode"], code);
            assert!(record.get("Outcome").is_none());
        }
    }

    #[test]
    fn recoveries_count_by_action() {
        let captured = capture();
        recovery("dead_lettered");
        let record = &captured.records()[0];
        emf(
            record,
            json!([["Action"]]),
            &[("Recoveries", Some("Count"))],
        );
        assert_eq!(record["Recoveries"], 1);
        assert_eq!(record["Action"], "dead_lettered");
    }

    #[test]
    fn each_record_is_one_line() {
        let captured = capture();
        submission("accepted");
        model_call("m", &ModelCall::default());
        let lines = captured.lines();
        assert_eq!(lines.len(), 2);
        assert!(
            lines
                .iter()
                .all(|line| line.starts_with('{') && !line.contains('\n'))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_capture_in_a_runtime_also_sees_its_other_threads() {
        let captured = capture();
        tokio::spawn(async { recovery("requeued") }).await.unwrap();
        tokio::task::spawn_blocking(|| recovery("failed"))
            .await
            .unwrap();
        let actions: Vec<Value> = captured
            .records()
            .iter()
            .map(|r| r["Action"].clone())
            .collect();
        assert_eq!(actions, [json!("requeued"), json!("failed")]);
    }

    #[test]
    fn without_a_sink_nothing_is_built() {
        // No test in this crate installs the process-wide sink (tests/emf_sink.rs does, in a
        // process of its own), and this thread has no capture.
        emit(|| -> Submission { panic!("a record was built without a sink") });
        submission("accepted");
        job_started(Duration::ZERO, 0);
        model_call("m", &ModelCall::default());
        job_finished("failed", None);
    }

    #[test]
    fn lines_are_handed_over_whole_whatever_the_writes() {
        let seen = std::sync::Mutex::new(Vec::new());
        let mut lines = Lines::new(|line: &str| seen.lock().unwrap().push(line.to_owned()));
        for chunk in ["{\"a\":", "1}\n{\"b\"", ":2}\r\n", "{\"c\":3}"] {
            lines.write_all(chunk.as_bytes()).unwrap();
        }
        drop(lines);
        assert_eq!(*seen.lock().unwrap(), ["{\"a\":1}", "{\"b\":2}"]);
    }
}
