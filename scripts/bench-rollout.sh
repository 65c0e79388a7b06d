#!/usr/bin/env bash
# Staged rollout benchmark: failed requests during a full rollout and an abort, time from breach
# to candidate weight 0, and the latency the HAProxy hop adds (real agent, model servers and
# HAProxy; about 2 minutes per round). Needs haproxy (bash scripts/observability.sh) and root for
# the cgroup CPU quota that makes the candidate slow. Writes the "Staged rollout" section of
# docs/benchmarks.md. Extra arguments go to the script (e.g. --runs 5, --no-write).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/bench/bench_rollout.py "$@"
