#!/usr/bin/env bash
# Staged rollout on Swarm, split by replicas (no HAProxy): failed requests during a full rollout
# and an abort, the candidate's measured share per step, and the time from the breach decision to
# the candidate's last request (real agent, Swarm engine and model containers; about 3 minutes
# per round). Needs the engine and images of scripts/engine.sh. Writes the "Staged rollout on
# Swarm" section of docs/benchmarks.md. Extra arguments go to the script (--runs 3, --no-write).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .warden-engine.env ] && . ./.warden-engine.env
exec .venv/bin/python tests/bench/bench_rollout_swarm.py "$@"
