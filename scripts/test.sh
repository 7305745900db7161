#!/usr/bin/env bash
# One command on a fresh machine: set up everything the tests need, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/mypy service models
.venv/bin/python -m pytest -q -m "not slow" "$@"
