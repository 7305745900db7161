#!/usr/bin/env bash
# Set up a fresh machine for fusionserve: system packages and a virtualenv in .venv.
#   scripts/setup.sh          serving + training (builds the default repository)
#   scripts/setup.sh --dev    also the test, lint and deployment-check tools
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
[[ "${1:-}" == "--dev" ]] && dev=1

# espeak-ng synthesises the dataset's speech; the rest serve the tests and benchmarks.
packages=(espeak-ng)
# chromium: the browser tests of /ui and /docs (tests/e2e/test_browser.py).
(( dev )) && packages+=(sox wrk nghttp2-client prometheus docker-compose chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch resolves to a multi-GB CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
extras="cpu,torch"
(( dev )) && extras="cpu,torch,media,dev,test"
.venv/bin/pip install -q -e ".[${extras}]" "torch==2.13.0"
echo "setup done: .venv ready (extras: ${extras})"
