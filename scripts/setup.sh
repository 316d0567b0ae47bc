#!/usr/bin/env bash
# Sets up everything gpubox's demo and tests need on a fresh Debian/Ubuntu machine, then stays out of the way:
# system packages (through apt when root, else a message naming them), a Python >= 3.11 venv in .venv,
# and gpubox installed into it in editable mode with its dev tools. Safe to run again; it redoes only what changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11 /usr/bin/python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

missing=()
{ command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
{ command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ]; } || missing+=(iproute2)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)  # the dashboard's real-terminal test
python=$(find_python || true)
if [ -z "$python" ]; then
    missing+=(python3 python3-venv)
elif ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian and Ubuntu split venv's pip bootstrap into its own package.
    missing+=("python3-venv")
fi

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "missing system packages: ${missing[*]}"
        say "install them with: sudo apt-get install ${missing[*]}   (then run this again)"
        exit 1
    fi
    python=$(find_python || true)
fi
if [ -z "$python" ]; then
    say "gpubox needs Python 3.11 or newer; set PYTHON=/path/to/python3.11 and run this again"
    exit 1
fi

stamp=.venv/.gpubox-installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    if [ ! -x .venv/bin/python ]; then
        say "creating .venv with $python"
        "$python" -m venv .venv
    fi
    say "installing gpubox and its dev tools into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
