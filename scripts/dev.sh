#!/usr/bin/env bash
# The run command (README "Run locally"): the whole pipeline on this machine, no AWS account.
# Options go to local-stack, e.g. ./scripts/dev.sh --port 8080 --model openai; see --help.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

# --help answers at once: it installs and builds nothing.
for arg in "$@"; do
  if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
    echo "Usage: ./scripts/dev.sh [OPTIONS]   (or: ./scripts/dev.sh token [--email E] [--password P])"
    echo "Installs moto into .venv, builds local-stack and starts it with these options."
    echo
    built="${LOCAL_STACK_BIN:-${CARGO_TARGET_DIR:-target}/debug/local-stack}"
    if [ -x "$built" ]; then
      exec "$built" --help
    fi
    echo "Options: --port, --model offline|openai|bedrock, --latency-ms, --throttle-rate,"
    echo "--error-rate, ... The full list is shown here once local-stack is built: run"
    echo "./scripts/dev.sh once (the first build takes several minutes)."
    exit 0
  fi
done

step "Python tools into .venv (moto, the AWS emulator)"
venv .venv requirements.txt

step "building local-stack (the first build compiles the AWS SDK: several minutes)"
cargo build --locked -p local --bin local-stack

step "starting the local stack"
exec cargo run --quiet --locked -p local --bin local-stack -- "$@"
