#!/usr/bin/env bash
# Agent benchmark: time to detect and heal a crash and a hang (Warden vs a Kubernetes-style
# liveness-probe supervisor) and the agent's idle CPU/RSS with 1 and 20 replicas (about 10
# minutes). Writes the "Agent recovery and overhead" section of docs/benchmarks.md. Extra
# arguments go to the script (e.g. --runs 7, --idle-seconds 90, --no-write).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/bench/bench_agent.py "$@"
