#!/usr/bin/env bash
# Docker recovery benchmark: Warden's Docker backend vs what a user has today (restart policy,
# HEALTHCHECK + autoheal, a person re-running the old tag) for a crash, a hang and a bad release,
# median of --runs rounds (default 5; --budget-min stops earlier, default 9 min). Needs the engine
# and images of scripts/engine.sh. Writes the "Docker recovery" section of docs/benchmarks.md
# (--no-write: print only).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .warden-engine.env ] && . ./.warden-engine.env
exec .venv/bin/python tests/bench/bench_docker_recovery.py "$@"
