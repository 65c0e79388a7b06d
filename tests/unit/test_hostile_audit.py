"""scripts/audit.sh: a new vulnerability fails the run, an excepted one (with a reason) does not.

pip-audit is replaced by a stand-in that writes a fixed report, so the test needs no network.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VULN = {"id": "PYSEC-2099-1", "fix_versions": ["2.0"], "aliases": ["CVE-2099-0001"]}


def run_audit(
    tmp_path: Path, dependencies: list[dict[str, Any]], exceptions: str, strict: bool = False
) -> subprocess.CompletedProcess[str]:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"dependencies": dependencies, "fixes": []}))
    stand_in = tmp_path / "pip-audit"
    stand_in.write_text(  # copies the report to the path after --output
        f'#!/bin/sh\nwhile [ "$1" != "--output" ]; do shift; done\ncp {report} "$2"\n'
    )
    stand_in.chmod(0o755)
    (tmp_path / "exceptions.txt").write_text(exceptions)
    env = {
        **os.environ,
        "PIP_AUDIT": str(stand_in),
        "WARDEN_AUDIT_EXCEPTIONS": str(tmp_path / "exceptions.txt"),
        "WARDEN_AUDIT_STRICT": "1" if strict else "0",
    }
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "audit.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_a_clean_report_passes(tmp_path: Path) -> None:
    done = run_audit(tmp_path, [{"name": "httpx", "version": "0.28.1", "vulns": []}], "")

    assert done.returncode == 0, done.stderr
    assert "audit: 1 packages audited, 0 could not be audited" in done.stdout


def test_a_new_vulnerability_fails_naming_package_advisory_and_fix(tmp_path: Path) -> None:
    done = run_audit(tmp_path, [{"name": "Jinja2", "version": "3.1.0", "vulns": [VULN]}], "")

    assert done.returncode == 1
    assert (
        "audit: Jinja2 3.1.0: PYSEC-2099-1 / CVE-2099-0001 (fixed in: 2.0); upgrade, or add"
        in done.stderr
    )


@pytest.mark.parametrize("advisory", ["PYSEC-2099-1", "CVE-2099-0001"])
def test_an_excepted_vulnerability_with_a_reason_passes(tmp_path: Path, advisory: str) -> None:
    exceptions = f"# why\n{advisory}  jinja2  only the sandbox is affected; Warden never uses it\n"

    done = run_audit(
        tmp_path, [{"name": "Jinja2", "version": "3.1.0", "vulns": [VULN]}], exceptions
    )

    assert done.returncode == 0, done.stderr
    assert f"audit: excepted {advisory} in Jinja2 3.1.0: only the sandbox" in done.stdout


def test_an_exception_for_another_package_does_not_hide_the_vulnerability(tmp_path: Path) -> None:
    done = run_audit(
        tmp_path,
        [{"name": "jinja2", "version": "3.1.0", "vulns": [VULN]}],
        "PYSEC-2099-1 httpx not this one\n",
    )

    assert done.returncode == 1


def test_an_exception_without_a_reason_is_an_error(tmp_path: Path) -> None:
    done = run_audit(tmp_path, [], "PYSEC-2099-1 jinja2\n")

    assert done.returncode == 1
    assert "exceptions.txt:1: expected 'ID PACKAGE REASON'" in done.stderr


def test_packages_the_service_does_not_know_fail_only_when_strict(tmp_path: Path) -> None:
    unknown = [{"name": "private-pkg", "skip_reason": "Dependency not found on PyPI"}]

    lenient = run_audit(tmp_path, unknown, "")
    strict = run_audit(tmp_path, unknown, "", strict=True)

    assert (lenient.returncode, strict.returncode) == (0, 1)
    assert "does not know 1 packages (private-pkg)" in strict.stderr
