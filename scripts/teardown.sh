#!/usr/bin/env bash
# Deletes the stack and everything in it: jobs, artifacts, users and the web UI.
#   ./scripts/teardown.sh            # asks first
#   ./scripts/teardown.sh --yes      # does not
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sam-env.sh

stack=${STACK_NAME:-bedrock-jobs}
if [ "${1:-}" != "--yes" ]; then
  read -r -p "Delete stack $stack with all its jobs, artifacts and users? [y/N] " answer
  [ "$answer" = "y" ] || [ "$answer" = "Y" ] || { echo "Nothing deleted."; exit 1; }
fi

step "emptying the buckets (CloudFormation cannot delete a bucket that holds objects)"
python scripts/stack.py empty-buckets "$stack"

step "sam delete --stack-name $stack"
sam delete --stack-name "$stack" --no-prompts
