//! The Lambda binaries themselves: without their configuration they stop at init, and the log
//! says which variable is missing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The freshly built binary `name` of this workspace. The whole workspace is built, as
/// `cargo test --workspace` builds it: a single package alone would resolve other features
/// and rebuild the AWS SDK crates.
fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --workspace --bins");
    });
    // Test binaries live in <target>/<profile>/deps; the functions' binaries one level up.
    let profile_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    profile_dir.join(name)
}

#[test]
fn each_function_names_its_missing_variable_and_stops() {
    let cases = [
        ("api", vec![], "JOBS_TABLE"),
        ("api", vec![("JOBS_TABLE", "jobs")], "JOBS_QUEUE_URL"),
        (
            "api",
            vec![("JOBS_TABLE", "jobs"), ("JOBS_QUEUE_URL", "http://q")],
            "ARTIFACTS_BUCKET",
        ),
        (
            "api",
            vec![
                ("JOBS_TABLE", "jobs"),
                ("JOBS_QUEUE_URL", "http://q"),
                ("ARTIFACTS_BUCKET", "b"),
                ("MAX_OUTPUT_TOKENS", "lots"),
            ],
            "MAX_OUTPUT_TOKENS",
        ),
        ("worker", vec![("JOBS_TABLE", "jobs")], "ARTIFACTS_BUCKET"),
        (
            "worker",
            vec![("JOBS_TABLE", "jobs"), ("ARTIFACTS_BUCKET", "b")],
            "JOBS_QUEUE_URL",
        ),
        (
            "worker",
            vec![
                ("JOBS_TABLE", "jobs"),
                ("ARTIFACTS_BUCKET", "b"),
                ("JOBS_QUEUE_URL", "http://q"),
                ("MAX_ATTEMPTS", "0"),
            ],
            "MAX_ATTEMPTS",
        ),
        ("status", vec![], "JOBS_TABLE"),
        (
            "recovery",
            vec![
                ("JOBS_TABLE", "jobs"),
                ("ARTIFACTS_BUCKET", "b"),
                ("JOBS_QUEUE_URL", "http://q"),
            ],
            "DEAD_LETTER_QUEUE_URL",
        ),
        (
            "recovery",
            vec![
                ("JOBS_TABLE", "jobs"),
                ("ARTIFACTS_BUCKET", "b"),
                ("JOBS_QUEUE_URL", "http://q"),
                ("DEAD_LETTER_QUEUE_URL", "http://dlq"),
                ("RECOVER_AFTER_SECONDS", "soon"),
            ],
            "RECOVER_AFTER_SECONDS",
        ),
    ];
    for (name, vars, missing) in cases {
        let output = Command::new(binary(name))
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{name} must not start");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let log_line = stdout
            .lines()
            .find(|line| line.contains("configuration error"))
            .unwrap_or_else(|| panic!("{name}: no log line in {stdout:?}"));
        let log: serde_json::Value = serde_json::from_str(log_line).expect("logs are JSON lines");
        assert_eq!(log["level"], "ERROR");
        assert!(
            log["error"].as_str().unwrap().contains(missing),
            "{name}: {log}"
        );
    }
}

/// The `local-stack` binary as a newcomer meets it: what its banner says, the export lines
/// it prints, a token for curl, `ALLOWED_ORIGIN` honoured, its sweep repairing a job that was
/// never enqueued, and logs without colour codes when they do not go to a terminal.
#[tokio::test]
async fn the_local_stack_prints_what_a_newcomer_needs_and_serves_curl() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    let root = integration_tests::workspace_root();
    let mut stack = Command::new(binary("local-stack"))
        .args([
            "--port",
            "0",
            "--latency-ms",
            "5",
            "--throttle-rate",
            "0.25",
            "--sweep-every",
            "1",
        ])
        .current_dir(&root)
        .env("ALLOWED_ORIGIN", "https://app.example")
        .env("RECOVER_AFTER_SECONDS", "2")
        .env("RETRY_MAX_SECONDS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let stderr = BufReader::new(stack.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let mut banner = Vec::new();
    while !banner
        .iter()
        .any(|line: &String| line.contains("access token for curl"))
    {
        let line = received
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("the local stack did not get ready: {banner:#?}"));
        banner.push(line);
    }
    let text = banner.join("\n");
    assert!(
        text.contains("faults: +5 ms latency, 25% throttled"),
        "the banner shows the fault knobs: {text}"
    );
    for export in [
        "AWS_ENDPOINT_URL=http://127.0.0.1:",
        "JOBS_TABLE=bedrock-jobs-jobs",
        "JOBS_QUEUE_URL=http://127.0.0.1:",
        "ARTIFACTS_BUCKET=",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME=",
        "DEAD_LETTER_QUEUE_URL=http://127.0.0.1:",
        "EVENTS_HTTP_URL=http://127.0.0.1:",
        "EVENTS_REALTIME_URL=ws://127.0.0.1:",
    ] {
        assert!(
            banner
                .iter()
                .any(|line| line.trim_start().starts_with("export") && line.contains(export)),
            "{export} in the export lines: {text}"
        );
    }
    assert!(
        text.contains("sweep every 1 s, repairs after 2 s"),
        "the banner shows the recovery settings: {text}"
    );
    let gateway = banner
        .iter()
        .find(|line| line.contains("gateway (web UI and API)"))
        .unwrap();
    let url = gateway.split_whitespace().last().unwrap().to_owned();
    let port = url.rsplit(':').next().unwrap();
    // The web UI learns where the Event API is from its configuration.
    let config: serde_json::Value = reqwest::get(format!("{url}/config.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config["events"],
        serde_json::json!({
            "http": format!("{url}/event"),
            "realtime": format!("ws://127.0.0.1:{port}/event/realtime"),
        })
    );

    let token = Command::new(binary("local-stack"))
        .args(["token", "--port", port])
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let http = reqwest::Client::new();
    let accepted = http
        .post(format!("{url}/generate"))
        .bearer_auth(&token)
        .body(r#"{"prompt": "Hello from curl"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    assert_eq!(
        accepted.headers()["access-control-allow-origin"],
        "https://app.example"
    );

    // A job whose api died before enqueueing it: the local stack's sweep sends it, and its
    // worker runs it.
    let aws_url = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix("AWS_ENDPOINT_URL="))
        .unwrap();
    let store = pipeline::adapters::DynamoJobStore::new(
        &integration_tests::sdk_config(aws_url).await,
        "bedrock-jobs-jobs",
    );
    let request =
        pipeline::domain::GenerateRequest::new("Left behind", integration_tests::DEFAULT_MODEL, 32);
    let stranded = pipeline::domain::Job::queued(
        pipeline::domain::Owner::new("nobody"),
        request,
        None,
        chrono::Utc::now(),
        chrono::Duration::days(1),
    );
    use pipeline::ports::JobStore;
    store.insert(&stranded, &Default::default()).await.unwrap();
    let mut status = stranded.status;
    for _ in 0..150 {
        status = store.get(stranded.id).await.unwrap().unwrap().status;
        if status.is_terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, pipeline::domain::JobStatus::Succeeded);

    let wrong = Command::new(binary("local-stack"))
        .args(["token", "--port", port, "--password", "not-the-password"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("did not sign demo@example.com in"));

    let _ = Command::new("kill").arg(stack.id().to_string()).status();
    let mut logs = String::new();
    stack
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    stack.wait().unwrap();
    assert!(logs.contains("POST /generate → 202"), "{logs}");
    assert!(
        !logs.contains('\u{1b}') && !text.contains('\u{1b}'),
        "no ANSI codes in {logs}"
    );
}

/// `./scripts/dev.sh --help` answers at once: it installs and builds nothing.
#[test]
fn the_run_commands_help_installs_nothing() {
    let root = integration_tests::workspace_root();
    let fake_bin = std::env::temp_dir().join(format!("no-tools-{}", std::process::id()));
    std::fs::create_dir_all(&fake_bin).unwrap();
    let marker = fake_bin.join("called");
    for tool in ["cargo", "python3", "pip"] {
        let path = fake_bin.join(tool);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho {tool} >> {}\nexit 1\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    let output = Command::new("bash")
        .args(["scripts/dev.sh", "--help"])
        .current_dir(&root)
        .env(
            "PATH",
            format!("{}:{}", fake_bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("LOCAL_STACK_BIN", binary("local-stack"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Usage"), "{stdout}");
    assert!(
        stdout.contains("--throttle-rate"),
        "the local stack's options: {stdout}"
    );
    assert!(
        !marker.exists(),
        "--help ran {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
}
