#!/usr/bin/env bash
# Create .venv with exactly the locked versions (uv.lock) of the registry, the client
# and the demo (a uv workspace: the registry's dependency on the client resolves to
# ./client, never to an index). Re-syncs only when the lock or a pyproject changed.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
if ! python3 -c "import sys; assert sys.version_info >= (3, 11)" 2>/dev/null; then
    echo "[venv] Python 3.11 or newer is required (Debian: apt-get install python3)" >&2
    exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
# uv itself, pinned, in a tools environment of its own (uv sync would remove it from .venv).
tools=.venv-tools
if ! "$tools/bin/uv" --version 2>/dev/null | grep -q " $UV_VERSION"; then
    echo "[venv] installing uv $UV_VERSION into $tools"
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
stamp=.venv/.synced-$(cat uv.lock pyproject.toml client/pyproject.toml demo/pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    echo "[venv] installing the locked versions (uv.lock) into .venv"
    # --frozen: install exactly what uv.lock says, never re-resolve; this machine's
    # python3, never a downloaded interpreter.
    UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never \
        "$tools/bin/uv" sync --frozen --all-packages --extra dev --python "$(command -v python3)" -q
    rm -f .venv/.synced-* .venv/.installed-*
    touch "$stamp"
fi
