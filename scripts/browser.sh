#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the status-page browser test (Debian packages
# `chromium` and `chromium-driver`; Playwright cannot download browsers offline). Idempotent:
# installs only what is missing.
#
#   sudo bash scripts/browser.sh          # install if missing
#   bash scripts/browser.sh check         # only check (fails if a binary is missing)
set -euo pipefail

MODE=${1:-install}
BINARIES=(chromium chromedriver)

missing() {
  local out=()
  for bin in "${BINARIES[@]}"; do command -v "$bin" >/dev/null 2>&1 || out+=("$bin"); done
  echo "${out[@]:-}"
}

if [ -n "$(missing)" ]; then
  if [ "$MODE" = check ]; then
    echo "browser: missing $(missing); run: sudo bash scripts/browser.sh" >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "browser: need root (or sudo) to apt-get install" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "browser: installing chromium chromium-driver (missing: $(missing))"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be stale on a fresh machine: update only when the install fails.
  $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver; }
  if [ -n "$(missing)" ]; then
    echo "browser: still missing after install: $(missing)" >&2
    exit 1
  fi
fi
echo "browser: $(chromium --version 2>/dev/null | head -n1), $(chromedriver --version | head -n1)"
