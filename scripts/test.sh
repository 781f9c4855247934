#!/usr/bin/env bash
# The project's test command (README "Test"; CI runs exactly this).
# On a fresh machine it installs what the tests need (Python tools, Chromium, playwright-core),
# then checks formatting and lints, runs every Rust test (unit tests, and integration tests
# against moto, an AWS emulator), checks the SAM template (cfn-lint, sam validate --lint,
# property tests), runs the browser tests of the web UI against the local stack, and checks
# the local stack's real answers against the HTTP contract (docs/openapi.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
started=$SECONDS

step "Python tools: moto, cfn-lint and the contract tests' tools into .venv, the SAM CLI into .venv-sam"
venv .venv requirements.txt
venv .venv-sam requirements-sam.txt

step "Chromium (Debian) and playwright-core (npm) for the browser tests"
command -v chromium >/dev/null || apt_install chromium
chromium --version
npm ci --prefix tests/e2e --no-audit --no-fund --loglevel=error

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "template.yaml: cfn-lint, sam validate --lint, property tests"
.venv/bin/cfn-lint template.yaml
SAM_CLI_TELEMETRY=0 .venv-sam/bin/sam validate --lint --template template.yaml --region us-east-1
.venv-sam/bin/python -m pytest -q -p no:cacheprovider tests/template

step "web UI in headless Chromium, against the local stack"
cargo build --locked --workspace --bins
LOCAL_STACK_BIN="${CARGO_TARGET_DIR:-target}/debug/local-stack" node --test tests/e2e/

step "contract: real responses of the local stack against docs/openapi.yaml"
LOCAL_STACK_BIN="${CARGO_TARGET_DIR:-target}/debug/local-stack" \
  .venv/bin/python -m pytest -q -p no:cacheprovider tests/contract

step "all checks passed in $((SECONDS - started)) s"
