#!/usr/bin/env bash
# The README's first command: venv, install, then `smeg demo` on embedded defaults (SQLite, in-memory broker).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[chart]"
exec .venv/bin/smeg demo "$@"
