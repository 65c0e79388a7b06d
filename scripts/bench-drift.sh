#!/usr/bin/env bash
# Drift benchmark: time of one drift test (1000 x 33 and 1000 x 384), agent memory with and
# without the alibi engine (builds .venv-alibi via scripts/alibi-check.sh when missing), power
# and detection delay on real MiniLM features, and the p-value plot docs/img/drift-pvalues.png.
# Writes the "Drift detection" section of docs/benchmarks.md. Extra arguments go to the script
# (--trials N, --reuse to skip re-embedding the texts, --no-write).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-alibi/bin/python ] || bash scripts/alibi-check.sh -q
exec nice -n 10 .venv/bin/python tests/bench/bench_drift.py "$@"
