#!/usr/bin/env bash
# The end-to-end demo on a fresh clone: install, then run examples/demo.py
# (a node on the embedded default, a few hundred pings, example jobs on every executor)
# in a fresh temporary directory, deleted at the end unless --keep: bash examples/demo.sh --keep
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/telemetry ] || { python3 -m venv .venv && .venv/bin/pip install -q -e . -e plugins/telemetry-pdfjs; }
exec .venv/bin/python examples/demo.py "$@"
