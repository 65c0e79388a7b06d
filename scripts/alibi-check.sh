#!/usr/bin/env bash
# The drift engines agree: builds (once, cached) a separate venv .venv-alibi with alibi-detect -
# the optional `drift-alibi` extra, which pins numpy<2 and so cannot share the main venv - and runs
# tests/alibi/drift_alibi_equivalence.py there: the scipy and alibi engines must give the same
# p-values (to 1e-6) and decisions on the same data. Fails (never skips) when anything fails.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-alibi
STAMP="$VENV/.installed-alibi-detect"
if [ ! -f "$STAMP" ]; then
  rm -rf "$VENV"
  .venv/bin/python -m venv "$VENV"
  echo '*' > "$VENV/.gitignore"  # keep the venv out of git status
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "alibi-detect>=0.12" numpy scipy pytest pytest-timeout
  touch "$STAMP"
fi
"$VENV/bin/python" -c "import alibi_detect, numpy, scipy; print('alibi-detect', \
alibi_detect.__version__, 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
exec "$VENV/bin/python" -m pytest -p no:cacheprovider -q tests/alibi/drift_alibi_equivalence.py "$@"
