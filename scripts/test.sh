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
# gpubox compiled once here: where PYTHONDONTWRITEBYTECODE is set (some CI images set it), every `python -m
# gpubox` the tests start would otherwise compile it again (about 0.25 s each, thousands of times).
.venv/bin/python -m compileall -q -j 0 gpubox >/dev/null
exec .venv/bin/pytest "$@"
