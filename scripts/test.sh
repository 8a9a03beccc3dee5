#!/usr/bin/env bash
# The whole check: peers installed, lint, types, import contracts, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-peers.sh
bash scripts/setup.sh
export QRFARM_ALLOWED_HOSTS=127.0.0.1
.venv/bin/ruff check qrfarm tests bench
.venv/bin/ruff format --check qrfarm tests bench
.venv/bin/mypy
.venv/bin/lint-imports
# Two test processes (most tests wait on peers, not on the cores); a module's
# tests stay in one process, with the peers its fixtures start.
.venv/bin/pytest -n 2 --dist loadfile "$@"
# The storage SCP's tests once more on pynetdicom's receive path (the whole
# suite ran them on the default one, asyncio).
if [ "$#" -eq 0 ]; then
    QRFARM_SCP_RECEIVE_PATH=pynetdicom .venv/bin/pytest -n 2 --dist loadfile tests/scp
fi
