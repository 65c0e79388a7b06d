#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite: lint, format check, types, unit,
# integration (real server processes), Docker/Swarm (real engine) and Prometheus tests.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
V=.venv/bin
echo "== ruff check";        $V/ruff check agent inference tests
echo "== ruff format";       $V/ruff format --check agent inference tests
echo "== mypy --strict";     $V/mypy
echo "== pip-audit";           bash scripts/audit.sh   # exceptions: audit-exceptions.txt
echo "== drift engines agree (alibi-detect in .venv-alibi)"; bash scripts/alibi-check.sh
if [ -f scripts/engine.sh ] && [ "${WARDEN_SKIP_ENGINE:-}" != "1" ]; then
  echo "== engine setup (Docker, images, Prometheus)"
  bash scripts/engine.sh
  # shellcheck disable=SC1091
  [ -f .warden-engine.env ] && . ./.warden-engine.env
fi
echo "== Prometheus, promtool, Alertmanager"
bash scripts/observability.sh
echo "== headless chromium for the status-page test"; bash scripts/browser.sh
echo "== pytest"
exec $V/python -m pytest "$@"
