#!/usr/bin/env bash
# The run command (README "Run locally"): the whole pipeline on this machine, no AWS account.
# Options go to local-stack, e.g. ./scripts/dev.sh --port 8080 --model openai; see --help.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

step "Python tools into .venv (moto, the AWS emulator)"
venv .venv requirements.txt

step "building local-stack (the first build compiles the AWS SDK: several minutes)"
cargo build --locked -p local --bin local-stack

step "starting the local stack"
exec cargo run --quiet --locked -p local --bin local-stack -- "$@"
