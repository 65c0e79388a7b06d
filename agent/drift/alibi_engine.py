"""The ``alibi`` engine: alibi-detect's ``KSDrift`` behind the same ``DriftResult``.

Optional (extra ``drift-alibi``: BSL-1.1 licence, pins numpy<2) and imported only when
``drift.engine: alibi`` is configured or ``--engine alibi`` is given: importing ``agent`` never
imports alibi-detect. Its per-feature p-values and KS distances (float32) go through the same
correction and decision as the scipy engine's, so the two engines differ only in who computed the
p-values; ``scripts/alibi-check.sh`` checks they agree to 1e-6.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agent.drift.detector import DriftInputError, DriftResult, DriftSettings, check_inputs, decide

INSTALL_HINT = "pip install 'warden[drift-alibi]' (alibi-detect)"


def load_ks_drift() -> Any:
    """alibi-detect's ``KSDrift`` class, or a ``DriftInputError`` saying how to install it."""
    try:
        from alibi_detect.cd import KSDrift
    except ImportError as exc:
        raise DriftInputError(
            f"the alibi drift engine needs alibi-detect, which is not installed ({exc}); "
            f"{INSTALL_HINT}, or use engine scipy"
        ) from None
    return KSDrift


def detect_alibi(reference: object, current: object, settings: DriftSettings) -> DriftResult:
    """Test ``current`` against ``reference`` with alibi-detect (KS only)."""
    if settings.test != "ks":
        raise DriftInputError("the alibi engine runs the KS test only; use test ks or engine scipy")
    ref, cur = check_inputs(reference, current)
    detector = load_ks_drift()(ref, p_val=settings.alpha, correction=settings.correction)
    out = detector.predict(cur, drift_type="batch", return_p_val=True, return_distance=True)
    p_values = np.asarray(out["data"]["p_val"], dtype=np.float64)
    statistics = np.asarray(out["data"]["distance"], dtype=np.float64)
    return decide(
        p_values,
        statistics,
        settings,
        n_reference=ref.shape[0],
        n_current=cur.shape[0],
        engine="alibi",
    )
