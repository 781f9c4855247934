#!/usr/bin/env bash
# Proves that `sam build` builds the four functions for x86_64 with cargo-lambda: a release
# build (LTO, one codegen unit) of about ten minutes on two cores the first time. arm64 needs
# the aarch64 Rust target, which this check does not assume.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sam-env.sh

build_dir=$(mktemp -d)
trap 'rm -rf "$build_dir"' EXIT
started=$SECONDS

step "sam build --parameter-overrides Architecture=x86_64"
sam build --parameter-overrides Architecture=x86_64 --build-dir "$build_dir"

step "checking the bootstrap binaries"
for function in GenerateFunction JobStatusFunction WorkerFunction RecoveryFunction; do
  python3 - "$build_dir/$function/bootstrap" <<'PY'
import os, struct, sys
path = sys.argv[1]
with open(path, "rb") as f:
    header = f.read(20)
assert header[:4] == b"\x7fELF", f"{path} is not an ELF binary"
machine = struct.unpack("<H", header[18:20])[0]
assert machine == 0x3E, f"{path} is not x86_64 (e_machine {machine:#x})"
assert os.access(path, os.X_OK), f"{path} is not executable"
print(f"  {path.split('/')[-2]}: x86_64 ELF, {os.path.getsize(path) // 1024} KiB")
PY
done
step "sam build succeeded in $((SECONDS - started)) s"
