#!/usr/bin/env bash
# Try qrfarm on this machine with nothing else running: start the sandbox
# PACS (pure Python, synthetic studies), then echo, find and get against it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/qrfarm ] || bash scripts/setup.sh
qrfarm=.venv/bin/qrfarm
port=${SANDBOX_PORT:-11112}
node="SANDBOX@127.0.0.1:$port"

$qrfarm sandbox --port "$port" &
sandbox=$!
trap 'kill $sandbox 2>/dev/null; wait $sandbox 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do $qrfarm echo "$node" >/dev/null 2>&1 && break; sleep 0.2; done

set -x
$qrfarm echo "$node"
$qrfarm find "$node" --level STUDY -k PatientName -k 'StudyDate=20150101-'
study=$($qrfarm find "$node" --level STUDY --no-default-keys -k StudyInstanceUID -k PatientID=P004 --json \
        | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["0020000D"]["Value"][0])')
$qrfarm find "$node" --level SERIES -k StudyInstanceUID="$study"
$qrfarm get "$node" --level STUDY -k StudyInstanceUID="$study" --out received
