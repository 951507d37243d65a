#!/usr/bin/env bash
# Run the tests: installs what they need on first use, then runs pytest (extra args go to pytest).
# Unit tests use tiny random models; tests marked `real` use the real default model.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/scripts/install.sh"
cd "$here"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
