#!/usr/bin/env bash
# The whole check: lint, types, and every test (real sshd, network namespaces when root). Extra arguments go
# to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy (strict on gpubox/)"
.venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest "$@"
