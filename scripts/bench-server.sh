#!/usr/bin/env bash
# Inference server benchmark: Warden vs a naive server vs the raw model (about 2-3 minutes).
# Writes the "Inference server" section of docs/benchmarks.md. Extra arguments go to the script
# (e.g. --seconds 10, --no-write).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/bench/bench_server.py "$@"
