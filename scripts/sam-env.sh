# Sourced by the deploy scripts: the SAM tools' venv first on PATH (cargo-lambda finds zig
# through it), created on first use.
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x .venv-sam/bin/sam ]; then
  step "installing the SAM CLI, cargo-lambda and zig into .venv-sam"
  python3 -m venv .venv-sam
  .venv-sam/bin/pip install --quiet --disable-pip-version-check -r requirements-sam.txt
fi
export PATH="$PWD/.venv-sam/bin:$PATH"
export SAM_CLI_TELEMETRY=0
