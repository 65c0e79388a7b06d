"""Reference windows on disk: one ``.npy`` (rows x features) + a small JSON per release.

A reference is the traffic a release was validated on, captured when it was promoted good. It is
kept in ``state_dir/drift/`` so an agent restart does not forget it (and does not need to wait for
another 1000 observations), and one per release so the previous good release's reference is still
there when a new deploy is compared with it. Files are written whole, then renamed into place: a
crash leaves the old reference or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.drift.detector import DriftInputError, FloatArray, as_matrix
from agent.drift.files import load_features

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """What a release's traffic looked like when it was proven good."""

    release: str  # the release it belongs to ("*" for a reference file used for every release)
    features: FloatArray
    captured_at: float
    source: str  # "live traffic" or the file it came from

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def width(self) -> int:
        return int(self.features.shape[1])


def reference_from_file(path: Path) -> Reference:
    """A reference loaded from a feature file (``drift.reference_file``)."""
    return Reference(
        release="*",
        features=load_features(path),
        captured_at=path.stat().st_mtime,
        source=str(path),
    )


class ReferenceStore:
    """Reads and writes references under ``directory`` (``state_dir/drift``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _paths(self, release: str) -> tuple[Path, Path]:
        # release tags are validated as [A-Za-z0-9_.-]: safe as file names
        return (
            self.directory / f"reference-{release}.npy",
            self.directory / f"reference-{release}.json",
        )

    def save(self, reference: Reference) -> None:
        """Write ``reference`` atomically (array first, then the metadata that names it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        array_path, meta_path = self._paths(reference.release)
        tmp = array_path.with_suffix(".npy.tmp")
        with tmp.open("wb") as f:
            np.save(f, reference.features, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, array_path)
        meta = {
            "release": reference.release,
            "captured_at": reference.captured_at,
            "n": reference.n,
            "features": reference.width,
            "source": reference.source,
        }
        tmp_meta = meta_path.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp_meta, meta_path)

    def load(self, release: str) -> Reference | None:
        """The saved reference of ``release``, or ``None`` (none saved, or unreadable: logged)."""
        array_path, meta_path = self._paths(release)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            features = as_matrix(load_features(array_path), str(array_path))
        except (OSError, ValueError, DriftInputError) as exc:
            log.error("drift reference of %s is unreadable (%s); capturing a new one", release, exc)
            return None
        return Reference(
            release=release,
            features=features,
            captured_at=float(meta.get("captured_at", 0.0)),
            source=str(meta.get("source", "live traffic")),
        )
