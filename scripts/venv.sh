#!/usr/bin/env bash
# Create .venv and install the project with its dev tools, once per pyproject change.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import sys; assert sys.version_info >= (3, 11)" 2>/dev/null; then
    echo "[venv] Python 3.11 or newer is required (Debian: apt-get install python3)" >&2
    exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.installed-$(cat pyproject.toml client/pyproject.toml demo/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "[venv] installing molecule-registry and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    # The client and the demo tooling are distributions of their own (client/, demo/).
    .venv/bin/python -m pip install -q -e ./client -e ".[dev]" -e ./demo
    rm -f .venv/.installed-*
    touch "$stamp"
fi
