#!/usr/bin/env bash
# The main job on the built-in `local` host: set up, bring the host up in the background, show what is up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
.venv/bin/gpubox up local --detach
.venv/bin/gpubox status
echo
echo "local is up. Try: .venv/bin/gpubox ssh local -- uname -a   ·   stop it: .venv/bin/gpubox down local"
