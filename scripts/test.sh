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
# Three test processes share the machine's cores (most tests wait on sshd, TensorFlow or a timeout, not the CPU):
# the 2-core suite takes about half as long. Each process has its own host home and sshd servers; a test file runs
# whole in one process, since some share a module-scoped host. GPUBOX_TEST_WORKERS=0 runs them one at a time.
exec .venv/bin/pytest -n "${GPUBOX_TEST_WORKERS:-3}" --dist loadfile "$@"
