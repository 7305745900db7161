#!/usr/bin/env bash
# One command on a fresh machine: set up, build the default model repository
# (offline, first run only, ~5 min on 2 cores), serve it on 127.0.0.1:8000 (HTTP) and :8001 (gRPC).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/fusionserve serve "$@"
