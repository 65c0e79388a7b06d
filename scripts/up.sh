#!/usr/bin/env bash
# Set up (first run only) and start Warden on its embedded default: model server + agent + default
# model, process backend, no Docker needed. Extra arguments go to `warden up`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/warden up "$@"
