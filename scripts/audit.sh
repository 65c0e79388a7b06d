#!/usr/bin/env bash
# Known vulnerabilities in the dependencies Warden is tested with (the packages installed in
# .venv by bootstrap.sh, which are the versions the images get too), with pip-audit against
# PyPI's vulnerability data. Fails on any vulnerability that audit-exceptions.txt does not list
# with a reason. Exit 0: clean; 1: a new vulnerability or a bad exceptions file.
#
#   WARDEN_AUDIT_STRICT=1   also fail when a package could not be audited (the vulnerability
#                           service did not know it: a private index or an offline mirror)
#   PIP_AUDIT=...           the pip-audit to run (tests put a stand-in here)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_AUDIT=${PIP_AUDIT:-.venv/bin/pip-audit}
EXCEPTIONS=${WARDEN_AUDIT_EXCEPTIONS:-audit-exceptions.txt}
PY=${PYTHON:-python3}
report=$(mktemp)
trap 'rm -f "$report"' EXIT

# pip-audit exits 1 when it found something; the report below decides. No report: it failed.
"$PIP_AUDIT" --skip-editable --format json --output "$report" --progress-spinner off || true
if [ ! -s "$report" ]; then
  echo "audit: pip-audit wrote no report (see its error above)" >&2
  exit 1
fi

"$PY" - "$report" "$EXCEPTIONS" "${WARDEN_AUDIT_STRICT:-0}" <<'PYEOF'
import json, re, sys

report_path, exceptions_path, strict = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
problems, excepted = [], {}
try:
    lines = open(exceptions_path, encoding="utf-8").read().splitlines()
except FileNotFoundError:
    lines = []
for number, line in enumerate(lines, start=1):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"(\S+)\s+(\S+)\s+(.+)", line)
    if not m:
        problems.append(f"{exceptions_path}:{number}: expected 'ID PACKAGE REASON'; got {line!r}")
        continue
    excepted[m[1]] = (m[2].lower(), m[3])

deps = json.load(open(report_path, encoding="utf-8"))["dependencies"]
audited = [d for d in deps if "skip_reason" not in d]
skipped = [d for d in deps if "skip_reason" in d]
seen = set()
for dep in audited:
    for vuln in dep.get("vulns", []):
        ids = [vuln["id"], *vuln.get("aliases", [])]
        hit = next((i for i in ids if i in excepted), None)
        if hit is not None and excepted[hit][0] == dep["name"].lower():
            seen.add(hit)
            print(f"audit: excepted {hit} in {dep['name']} {dep['version']}: {excepted[hit][1]}")
            continue
        fix = ", ".join(vuln.get("fix_versions", [])) or "none yet"
        problems.append(
            f"{dep['name']} {dep['version']}: {' / '.join(ids)} (fixed in: {fix}); upgrade, or "
            f"add 'ID PACKAGE REASON' to {exceptions_path} if it cannot affect Warden"
        )
for stale in sorted(set(excepted) - seen):
    print(f"audit: note: exception {stale} matches nothing any more; remove it")
print(f"audit: {len(audited)} packages audited, {len(skipped)} could not be audited")
if skipped:
    names = ", ".join(d["name"] for d in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
    message = f"audit: the vulnerability service does not know {len(skipped)} packages ({names})"
    if strict:
        problems.append(message)
    else:
        print(f"{message}; WARDEN_AUDIT_STRICT=1 makes this an error")
for problem in problems:
    print(f"audit: {problem}", file=sys.stderr)
sys.exit(1 if problems else 0)
PYEOF
