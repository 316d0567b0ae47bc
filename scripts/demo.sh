#!/usr/bin/env bash
# The main job on the built-in `local` host: bring it up (sync, env with TensorFlow), train the digits example
# as a detached run while following its log, bring the checkpoint back, and show what it cost.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
gpubox=$PWD/.venv/bin/gpubox
cd examples/digits
"$gpubox" up local --detach
"$gpubox" run -f -- python train.py --epochs 8
"$gpubox" pull
"$gpubox" runs
"$gpubox" status
echo
echo "local is still up (TensorBoard logs in examples/digits/logs, the model in examples/digits/checkpoints)."
echo "Stop it with: (cd examples/digits && ../../.venv/bin/gpubox down local)"
