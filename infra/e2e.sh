#!/usr/bin/env bash
# `make e2e`: the deployed shape on one machine. moto serves DynamoDB + SQS (with the
# tables and queue `lineup aws init` makes), `cargo lambda watch` serves the three
# functions as the Lambda runtime would; the Go original's story goes through the
# gateway's function URL, and `schedule` and `release` are invoked with the EventBridge
# sample event. Asserts the alloc reaches the worker's queue and the capacity comes back.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"
WORK=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "e2e: FAIL: $*" >&2; echo "--- watch log" >&2; tail -40 "$WORK/watch.log" >&2 || true; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() { # url seconds
  for _ in $(seq 1 $(( $2 * 5 ))); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.2; done
  return 1
}

MOTO_PORT=$(free_port)
WATCH_PORT=$(free_port)
python crates/conformance/python/moto_serialized.py -H 127.0.0.1 -p "$MOTO_PORT" >"$WORK/moto.log" 2>&1 &
wait_http "http://127.0.0.1:$MOTO_PORT/moto-api/" 30 || fail "moto did not start"

export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT" AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test \
  AWS_SECRET_ACCESS_KEY=test AWS_EC2_METADATA_DISABLED=true LINEUP_DEPLOYMENT=e2e
TOKEN=e2e-admin-token
cargo build -q -p lineup-cli --bin lineup
target/debug/lineup aws init --aws-endpoint "$AWS_ENDPOINT_URL"

ENV="AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL,AWS_REGION=us-east-1,AWS_ACCESS_KEY_ID=test,AWS_SECRET_ACCESS_KEY=test"
ENV="$ENV,AWS_EC2_METADATA_DISABLED=true,LINEUP_DEPLOYMENT=e2e,LINEUP_ADMIN_TOKEN=$TOKEN"
ENV="$ENV,AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH=true,LINEUP_SCHEDULE_MARGIN=1,LINEUP_SCHEDULE_WAIT=1,LINEUP_SCHEDULE_MAX=5"
cargo lambda watch --invoke-address 127.0.0.1 --invoke-port "$WATCH_PORT" --ignore-changes --timeout 8 \
  --env-var "$ENV" >"$WORK/watch.log" 2>&1 &
URL="http://127.0.0.1:$WATCH_PORT/lambda-url/gateway"
# The first request builds the function: give it time. (Under watch the context's
# deadline is not an epoch time, so LINEUP_SCHEDULE_MAX bounds the schedule invocation.)
for _ in $(seq 1 3000); do
  curl -fsS -o /dev/null "$URL/health" 2>/dev/null && break
  grep -q "could not compile" "$WORK/watch.log" && fail "the functions do not build"
  sleep 0.2
done
curl -fsS -o /dev/null "$URL/health" || fail "gateway did not answer"

api() { # method token path [body]
  curl -sS -X "$1" -H "Authorization: Bearer $2" ${4:+-d "$4"} "$URL$3"
}
invoke() {
  cargo lambda invoke "$1" --invoke-address 127.0.0.1 --invoke-port "$WATCH_PORT" \
    --data-file tests/data/example-eventbridge-schedule.json
}

POOL=$(api POST "$TOKEN" /v1/pools '{}' | jq -r .pool_id)
[ ${#POOL} -eq 20 ] || fail "no pool: $POOL"
REG=$(api POST "$TOKEN" "/v1/pools/$POOL/workers" '{"capacity": 10}')
WORKER=$(echo "$REG" | jq -r .worker_id)
WTOKEN=$(echo "$REG" | jq -r .token)
echo "$REG" | jq -e '.queue_url | startswith("http://127.0.0.1")' >/dev/null || fail "queue url: $REG"
api POST "$WTOKEN" "/v1/pools/$POOL/workers/$WORKER/heartbeat" '{"datasets": ["d1"]}' | jq -e '.cancelled == []' >/dev/null \
  || fail "heartbeat"
EVAL=$(api POST "$TOKEN" "/v1/pools/$POOL/evals" '{"size": 3, "dataset": "d1"}' | jq -r .eval_id)

SUMMARY=$(invoke schedule) || fail "schedule invoke"
echo "schedule: $SUMMARY"
echo "$SUMMARY" | jq -e '.placed == 1' >/dev/null || fail "schedule placed nothing: $SUMMARY"

ALLOC=$(api POST "$WTOKEN" "/v1/pools/$POOL/workers/$WORKER/poll?wait=1" | jq -r ".allocs[0] | select(.eval_id == \"$EVAL\") | .alloc_id")
[ ${#ALLOC} -eq 20 ] || fail "the alloc did not reach the worker's queue"
api GET "$TOKEN" "/v1/pools/$POOL/workers" | jq -e '.workers[0].free == 7' >/dev/null || fail "capacity not claimed"
api POST "$WTOKEN" "/v1/pools/$POOL/workers/$WORKER/heartbeat" "{\"datasets\": [\"d1\"], \"allocs\": [\"$ALLOC\"]}" >/dev/null
api POST "$WTOKEN" "/v1/pools/$POOL/allocs/$ALLOC/complete" '{"exit_code": 0}' | jq -e .released >/dev/null || fail "complete"
api GET "$TOKEN" "/v1/pools/$POOL/workers" | jq -e '.workers[0].free == 10' >/dev/null || fail "capacity not back"
api GET "$TOKEN" "/v1/pools/$POOL/evals/$EVAL" | jq -e '.status == "complete"' >/dev/null || fail "eval not complete"

SUMMARY=$(invoke release) || fail "release invoke"
echo "release: $SUMMARY"
echo "$SUMMARY" | jq -e '.errors == 0' >/dev/null || fail "release: $SUMMARY"
echo "e2e: 1 passed, 0 failed"
