#!/usr/bin/env bash
# Try qrfarm with nothing else running: `qrfarm demo` starts a sandbox PACS
# (pure Python, synthetic studies) and the farm on SQLite with the embedded
# broker, then runs a find, a move and a get through it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/qrfarm ] || bash scripts/setup.sh
exec .venv/bin/qrfarm demo "$@"
