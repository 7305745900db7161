#!/usr/bin/env bash
# The long forms of the reliability suite (tests/reliability/, issue 12):
#   30 min soak at ~0.8 x saturation over the four doors, overload at 2x and 4x for
#   60 s each, SIGTERM under 128 keep-alive clients 10 times, SIGKILL 3 times under a
#   restarting supervisor, 128 x 20 MB uploads against a 512 MB budget, reload under
#   64 clients. Every test prints the figures it asserts ([title] key=value lines).
# Usage: scripts/soak.sh [soak seconds (default 1800)] [extra pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-1800}"
shift || true
FUSIONSERVE_SOAK_SECONDS="$seconds" .venv/bin/python -m pytest -q -s -p no:cacheprovider \
  -m slow tests/reliability "$@" 2>&1 | tee "soak-$(date -u +%Y%m%dT%H%M%SZ).log" | grep -E '^\[|passed|failed|Error'
