#!/usr/bin/env bash
# The project's test command (README "Test"; CI runs exactly this).
# On a fresh machine it installs what the tests need, then checks formatting and lints, runs
# every Rust test (unit tests, and integration tests against moto, an AWS emulator) and
# checks the SAM template (cfn-lint, sam validate --lint, property tests).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
started=$SECONDS

# venv DIR REQUIREMENTS: a Python venv with exactly these pinned tools.
venv() {
  [ -x "$1/bin/python" ] || python3 -m venv "$1"
  "$1/bin/pip" install --quiet --disable-pip-version-check -r "$2"
}

step "Python tools: moto and cfn-lint into .venv, the SAM CLI into .venv-sam"
venv .venv requirements.txt
venv .venv-sam requirements-sam.txt

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

step "all checks passed in $((SECONDS - started)) s"
