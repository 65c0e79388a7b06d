#!/usr/bin/env bash
# Create .venv and install Warden into it (server + agent + dev tools). Idempotent: a second run
# only checks that everything is in place. Needs only python3 >= 3.11 and the PyPI registry.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${WARDEN_VENV:-.venv}
EXTRAS=${WARDEN_EXTRAS:-inference,dev}

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.warden-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing warden[$EXTRAS] into $VENV (torch is pinned to the CPU wheel 2.13.0)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch first and alone, so nothing else can pull a CUDA build of a newer release.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
echo "bootstrap: ready ($VENV/bin/warden)"
