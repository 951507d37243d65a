#!/usr/bin/env bash
# Run the tests: installs what they need on first use, then runs pytest in two tiers and prints
# how long each took.
#   fast tier: tiny random models, no subprocesses or servers, under a minute (`-m "not real and not slow"`)
#   slow + real tier: the rest; `slow` tests start processes or servers or take seconds, `real` ones use the
#              real default model (SmolLM2-135M-Instruct) and the packaged embedder
#   ./test.sh           both tiers (what CI runs)
#   ./test.sh --fast    the fast tier only
#   ./test.sh ARGS...   one pytest run with ARGS (e.g. tests/test_engine.py -k stream)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/scripts/install.sh"
cd "$here"
pytest=(.venv/bin/python -m pytest -q -p no:cacheprovider)

if [[ $# -gt 0 && "$1" != "--fast" ]]; then
  exec "${pytest[@]}" "$@"
fi

tier() {  # tier NAME PYTEST-ARGS...: run one tier, print its time, return its status
  local name=$1 start rc=0
  shift
  start=$(date +%s)
  "${pytest[@]}" "$@" || rc=$?
  echo "[test.sh] $name tier: $(( $(date +%s) - start )) s (exit $rc)"
  return $rc
}

t0=$(date +%s)
fast=0
tier fast -m "not real and not slow" || fast=$?
if [[ "${1:-}" == "--fast" ]]; then
  exit $fast
fi
rest=0
tier "slow + real" -m "real or slow" || rest=$?
echo "[test.sh] all tests: $(( $(date +%s) - t0 )) s (fast tier exit $fast, slow + real tier exit $rest; load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?'))"
# pytest exit 5 = no tests collected in a tier: not a failure
[[ $fast -eq 0 || $fast -eq 5 ]] && [[ $rest -eq 0 || $rest -eq 5 ]]
