//! The process-wide sink, in a test process of its own: once installed, every record reaches
//! it, and a second installation changes nothing.

use std::sync::Mutex;
use std::time::Duration;

use pipeline::metrics;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[test]
fn the_first_sink_installed_gets_every_record_as_a_line() {
    metrics::init_with_lines(|line| LINES.lock().unwrap().push(line.to_owned()));
    // Ignored: the lines keep going to the first sink, none to stdout.
    metrics::init_emf_stdout();

    metrics::submission("accepted");
    metrics::job_started(Duration::from_millis(250), 1);
    metrics::job_finished("failed", Some("model_error"));

    let lines = LINES.lock().unwrap().clone();
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let names: Vec<&str> = records
        .iter()
        .map(|record| {
            record["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["Submissions", "QueueWait", "JobsFinished", "JobsFailed"]
    );
    assert_eq!(records[1]["QueueWait"].as_f64(), Some(250.0));
}
