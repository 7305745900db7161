#!/usr/bin/env bash
# One command on a fresh machine: set up everything the tests need, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check service models fusionserve tests benchmarks
# One module name per file: fusionserve/service and fusionserve/models link to service/ and models/.
.venv/bin/mypy fusionserve
.venv/bin/mypy --explicit-package-bases benchmarks
# The door tests' fake data plane must stay a DataPlaneApi (service/dataplane.py).
.venv/bin/mypy tests/unit/v2_fakes.py tests/unit/test_v2_rest_door.py tests/unit/test_grpc_door.py
# The integration tests serve the real default repository: build it first
# (reused from its cache when already built), outside pytest's per-test timeout.
.venv/bin/fusionserve build-repo --out "${FUSIONSERVE_HOME:-$HOME/.cache/fusionserve}/model-repository"
.venv/bin/python -m pytest -q -m "not slow" "$@"
# pyproject.toml's floor, Python 3.10: the serving core's tests on that interpreter.
scripts/test-python-floor.sh
