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
            vec![
                ("JOBS_TABLE", "jobs"),
                ("JOBS_QUEUE_URL", "http://q"),
                ("MAX_OUTPUT_TOKENS", "lots"),
            ],
            "MAX_OUTPUT_TOKENS",
        ),
        ("worker", vec![("JOBS_TABLE", "jobs")], "ARTIFACTS_BUCKET"),
        (
            "worker",
            vec![
                ("JOBS_TABLE", "jobs"),
                ("ARTIFACTS_BUCKET", "b"),
                ("MAX_ATTEMPTS", "0"),
            ],
            "MAX_ATTEMPTS",
        ),
        ("status", vec![], "JOBS_TABLE"),
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
