"""Write one benchmark's section of docs/benchmarks.md, leaving the other sections alone."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Figures measured on a real machine by the scripts in `scripts/bench-*.sh`; each script rewrites
only its own section. Machines are shared and noisy: compare figures within one section.
"""


def write_marked_section(heading: str, start: str, end: str, text: str, docs: Path = DOCS) -> None:
    """Replace what is between the ``start``/``end`` markers, or append ``heading`` and ``text``.

    The heading stays outside the markers, so a script that rewrites "up to the next ## heading"
    never swallows another script's marker.
    """
    old = docs.read_text(encoding="utf-8") if docs.exists() else HEADER
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + f"\n\n{heading}\n\n{text}\n"
    docs.write_text(new.rstrip("\n") + "\n", encoding="utf-8")
