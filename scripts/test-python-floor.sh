#!/usr/bin/env bash
# pyproject.toml claims Python >= 3.10: run the serving core's tests on a 3.10
# interpreter too (the main suite runs on the distribution's 3.11). On 3.10
# asyncio.TimeoutError is not the builtin TimeoutError, which broke the
# batcher and the drain at shutdown once; these tests catch that class.
#
# The interpreter: python3.10 on PATH, or pyenv's 3.10.x (FUSIONSERVE_PYTHON310
# overrides). None found: this fails, unless FUSIONSERVE_SKIP_PYTHON_FLOOR=1
# says to skip (then the 3.10 claim is untested on that machine: say so).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${FUSIONSERVE_SKIP_PYTHON_FLOOR:-0}" == "1" ]]; then
  echo "python floor: SKIPPED (FUSIONSERVE_SKIP_PYTHON_FLOOR=1): Python 3.10 untested here"
  exit 0
fi
root="${PYENV_ROOT:-$HOME/.pyenv}"
py=""
# The first candidate that really is a working 3.10 (a pyenv shim on PATH may not be).
for candidate in "${FUSIONSERVE_PYTHON310:-}" \
    $(ls -d "$root"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -rV) \
    "$(command -v python3.10 || true)"; do
  if [[ -n "$candidate" ]] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
    py="$candidate"
    break
  fi
done
if [[ -z "$py" ]]; then
  echo "python floor: no Python 3.10 interpreter found (python3.10 on PATH, pyenv 3.10.x," >&2
  echo "or FUSIONSERVE_PYTHON310); set FUSIONSERVE_SKIP_PYTHON_FLOOR=1 to skip knowingly" >&2
  exit 1
fi
echo "python floor: $("$py" --version) at $py"
venv=.venv-py310
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# The ONNX serving core and the test clients; no torch (the core never imports it).
"$venv/bin/pip" install -q -e ".[cpu]" "tritonclient[http,grpc]==2.73.0" \
  "pytest>=8" pytest-asyncio pytest-timeout
"$venv/bin/python" -m pytest -q -p no:cacheprovider \
  tests/unit/test_batcher.py tests/unit/test_repository.py tests/unit/test_grpc_door.py \
  tests/unit/test_v2_rest_door.py tests/unit/test_http_middleware.py \
  tests/security/test_01_management_plane.py tests/security/test_04_metric_labels.py \
  tests/security/test_06_repository.py tests/security/test_09_logs.py \
  tests/integration/test_lifecycle.py
