# Sourced by the deploy scripts: the SAM tools' venv, first on PATH (cargo-lambda finds zig
# through it).
source scripts/common.sh
if [ ! -x .venv-sam/bin/sam ]; then
  step "installing the SAM CLI, cargo-lambda and zig into .venv-sam"
  venv .venv-sam requirements-sam.txt
fi
export PATH="$PWD/.venv-sam/bin:$PATH"
export SAM_CLI_TELEMETRY=0
