"""Quantities as operators write them: durations ("1h30m") and sizes ("150MiB"), in and out.

Everything inside the agent works in float seconds and float bytes; these functions turn what an
operator wrote into those numbers, and back into short human text for log lines and reasons.
"""

from __future__ import annotations

import json
import math
import re

_DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_HINT = 'use a number with a unit: ms, s, m, h or d, e.g. "500ms", "30s", "1h30m"'

_SIZE_UNITS: dict[str, float] = {
    "": 1.0,
    "b": 1.0,
    "kb": 1e3,
    "mb": 1e6,
    "gb": 1e9,
    "tb": 1e12,
    "kib": 2.0**10,
    "mib": 2.0**20,
    "gib": 2.0**30,
    "tib": 2.0**40,
    # Docker's single-letter suffixes are binary ("512m" = 512 MiB), like `docker run --memory`.
    "k": 2.0**10,
    "m": 2.0**20,
    "g": 2.0**30,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_HINT = 'use a number with a unit: B, KB, MB, GB, KiB, MiB or GiB, e.g. "512MiB", "1GB"'


class DurationError(ValueError):
    """A duration or size that cannot be parsed. The message says what was expected."""


def parse_duration(text: object) -> float:
    """Parse a duration such as ``"500ms"``, ``"30s"``, ``"2m"`` or ``"1h30m"`` into seconds.

    Units must come largest first and at most once each. A bare ``0`` is accepted (zero needs
    no unit); any other bare number is refused because "30" could mean seconds or minutes.
    """
    if isinstance(text, bool):
        raise DurationError(f"expected a duration, got {str(text).lower()}; {_DURATION_HINT}")
    if isinstance(text, int | float):
        if text == 0:
            return 0.0
        raise DurationError(f"duration {text} has no unit; {_DURATION_HINT}")
    if not isinstance(text, str):
        raise DurationError(f"expected a duration, got {type(text).__name__}; {_DURATION_HINT}")
    stripped = text.strip()
    if stripped == "0":
        return 0.0
    if not stripped:
        raise DurationError(f"duration is empty; {_DURATION_HINT}")
    return _sum_duration_parts(stripped)


def _sum_duration_parts(text: str) -> float:
    total = 0.0
    position = 0
    last_rank = math.inf
    shown = quote(text)
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise DurationError(f"{shown} is not a duration; {_DURATION_HINT}")
        number, unit = match.groups()
        rank = _DURATION_UNITS[unit]
        if rank >= last_rank:
            raise DurationError(f"{shown}: units must go from largest to smallest, each once")
        last_rank = rank
        total += float(number) * rank
        position = match.end()
    if not math.isfinite(total):
        raise DurationError(f"{shown} is too long")
    return total


def parse_size(text: object) -> float:
    """Parse a byte size such as ``"150MiB"``, ``"1GB"`` or ``1048576`` into bytes.

    Decimal units (KB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) and
    Docker's single letters (k, m, g) powers of 1024. A bare number is bytes.
    """
    if isinstance(text, bool):
        raise DurationError(f"expected a size, got {str(text).lower()}; {_SIZE_HINT}")
    if isinstance(text, int | float):
        if text < 0 or not math.isfinite(text):
            raise DurationError(f"size {text} must be a positive number of bytes")
        return float(text)
    if not isinstance(text, str):
        raise DurationError(f"expected a size, got {type(text).__name__}; {_SIZE_HINT}")
    match = _SIZE.fullmatch(text.strip())
    shown = quote(text)
    if match is None:
        raise DurationError(f"{shown} is not a size; {_SIZE_HINT}")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise DurationError(f"{shown} has an unknown unit {quote(unit)}; {_SIZE_HINT}")
    value = float(number) * factor
    if not math.isfinite(value):
        raise DurationError(f"{shown} is too large")
    return value


def format_duration(seconds: float) -> str:
    """Short human text for a duration: ``"500 ms"``, ``"30 s"``, ``"2 min"``, ``"1 h"``."""
    if seconds < 1:
        return f"{format_number(seconds * 1000)} ms"
    if seconds < 60 or seconds % 60:
        return f"{format_number(seconds)} s"
    if seconds % 3600 == 0:
        return f"{format_number(seconds / 3600)} h"
    return f"{format_number(seconds / 60)} min"


def format_number(value: float) -> str:
    """A number with about three significant digits and no trailing zeros: 183, 12.3, 0.005."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    text = f"{value:.3g}"
    if "e" in text:  # very small values: plain decimals read better in a sentence
        text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def quote(text: str, limit: int = 60) -> str:
    """Quote text from a file for a message: double quotes, escapes, one line, not too long."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return json.dumps(text, ensure_ascii=False)
