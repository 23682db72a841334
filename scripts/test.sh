#!/usr/bin/env bash
# The README's test command: venv, install, start services, lint, type-check, import contract, shape, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,bench,chart]"
scripts/start_services.sh

.venv/bin/ruff check domain adapters smeg_actors tests scripts
.venv/bin/ruff format --check domain adapters smeg_actors tests scripts
.venv/bin/mypy domain adapters smeg_actors scripts
.venv/bin/lint-imports
.venv/bin/python scripts/shape.py
CI=${CI:-true} .venv/bin/python -m pytest "$@"
