#!/usr/bin/env bash
# Set up everything the tests need (venv, extras, local storage servers) and run lint + tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k keys -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python bash scripts/install-servers.sh
PY=.venv/bin/python bash scripts/install-llm.sh
.venv/bin/ruff check repolib mount tests bench examples
.venv/bin/ruff format --check repolib mount tests bench examples scripts
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
