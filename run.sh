#!/usr/bin/env bash
# Run the assistant: installs on first use, then passes every argument to `assistant`.
# ./run.sh                 the terminal UI (or `./run.sh chat` for a plain line chat)
# ./run.sh ask "question"  one answer
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/scripts/install.sh"
# bench/ (the benchmarks) is not installed with the package: it runs from this checkout
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$here/.venv/bin/assistant" "$@"
