#!/usr/bin/env bash
# The project's test command (README "Test"; CI runs exactly this).
# On a fresh machine it installs what the tests need, then checks formatting and lints and
# runs every test: unit tests, and integration tests against moto (an AWS emulator).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
started=$SECONDS

step "Python tools into .venv (moto, the AWS emulator)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
.venv/bin/moto_server --help >/dev/null

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "all checks passed in $((SECONDS - started)) s"
