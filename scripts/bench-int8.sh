#!/usr/bin/env bash
# Serving options benchmark: float32 vs dynamic int8 on CPU (float16 on CUDA when there is a GPU),
# with and without length bucketing, plus int8's agreement with float32 (2-4 minutes, under nice).
# Writes the "Serving options" section of docs/benchmarks.md. Extra arguments go to the script
# (e.g. --items 384, --queries 1000, --no-write).
set -euo pipefail
cd "$(dirname "$0")/.."
exec nice -n 10 .venv/bin/python tests/bench/bench_int8.py "$@"
