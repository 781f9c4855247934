#!/usr/bin/env bash
# Builds and deploys the stack with AWS SAM, then publishes the web UI configured for it.
#
#   ./scripts/deploy.sh                         # first time: answers SAM's guided questions
#   ./scripts/deploy.sh --parameter-overrides ModelId=amazon.nova-lite-v1:0 ...
#
# Needs: AWS credentials (aws configure / aws configure sso, or AWS_* variables), and the
# SAM tools in .venv-sam (created here if missing). STACK_NAME overrides the stack's name.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/sam-env.sh

stack=${STACK_NAME:-bedrock-jobs}
started=$SECONDS

step "sam build (release build of the four functions; several minutes the first time)"
sam build

step "sam deploy --stack-name $stack"
if python scripts/stack.py exists "$stack"; then
  sam deploy --stack-name "$stack" "$@"
else
  echo "The stack does not exist yet: SAM asks for the parameters once and saves them to samconfig.toml."
  sam deploy --guided --stack-name "$stack" "$@"
fi

step "publishing the web UI"
python scripts/stack.py publish-web "$stack"

step "done in $((SECONDS - started)) s"
python scripts/stack.py outputs "$stack"
