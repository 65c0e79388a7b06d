"""Feature files for offline tests and file references: ``.npy``, CSV, or JSON lines.

One row per sample, one column per feature. JSON lines may hold a list of numbers per line, or an
observation as served by ``GET /v1/observations`` (``{"features": [...], "confidence": 0.9}``:
the confidence becomes the last column, as the monitor lays features out). A ``.json`` file may
hold a list of rows or a whole ``/v1/observations`` page. Problems name the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.drift.detector import DriftInputError, FloatArray, as_matrix

SUFFIXES = (".npy", ".csv", ".jsonl", ".ndjson", ".json")


def observation_row(item: Mapping[str, Any]) -> list[float] | None:
    """One observation as a feature row: its features, then its confidence when it has one."""
    features = item.get("features")
    if not isinstance(features, list):
        return None
    confidence = item.get("confidence")
    return [*features, confidence] if isinstance(confidence, int | float) else list(features)


def load_features(path: Path) -> FloatArray:
    """Rows of features from ``path``; ``DriftInputError`` naming the file and line when bad."""
    if not path.is_file():
        raise DriftInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            data: object = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DriftInputError(f"{path}: not a .npy array of numbers ({exc})") from None
    elif suffix == ".csv":
        data = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        data = _rows(path, _json_lines(path))
    elif suffix == ".json":
        data = _rows(path, _json_document(path))
    else:
        raise DriftInputError(
            f"{path}: unknown feature file type; use one of {', '.join(SUFFIXES)}"
        )
    return as_matrix(data, str(path))


def _read_csv(path: Path) -> list[list[float]]:
    rows: list[list[float]] = []
    width = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        cells = [c.strip() for c in line.split(",")]
        if not line.strip():
            continue
        try:
            row = [float(c) for c in cells]
        except ValueError:
            if number == 1:
                continue  # a header line
            raise DriftInputError(f"{path}:{number}: not a row of numbers: {line[:80]!r}") from None
        if width is not None and len(row) != width:
            raise DriftInputError(
                f"{path}:{number}: {len(row)} features, but the first row has {width}"
            )
        width = len(row)
        rows.append(row)
    return rows


def _json_lines(path: Path) -> Iterable[tuple[int, object]]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DriftInputError(f"{path}:{number}: not JSON ({exc.msg})") from None


def _json_document(path: Path) -> Iterable[tuple[int, object]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DriftInputError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    if isinstance(doc, dict) and isinstance(doc.get("observations"), list):
        doc = doc["observations"]
    if not isinstance(doc, list):
        raise DriftInputError(f"{path}: expected a list of rows or a /v1/observations page")
    return ((index, item) for index, item in enumerate(doc, 1))


def _rows(path: Path, items: Iterable[tuple[int, object]]) -> list[Sequence[object]]:
    rows: list[Sequence[object]] = []
    width = None
    for where, item in items:
        row = observation_row(item) if isinstance(item, dict) else item
        if not isinstance(row, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in row
        ):
            raise DriftInputError(
                f"{path}:{where}: expected a list of numbers or an observation with "
                '"features"; got ' + json.dumps(item)[:80]
            )
        if width is not None and len(row) != width:
            raise DriftInputError(
                f"{path}:{where}: {len(row)} features, but the first row has {width}"
            )
        width = len(row)
        rows.append(row)
    return rows
