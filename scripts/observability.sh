#!/usr/bin/env bash
# Prometheus, promtool, Alertmanager and HAProxy for the observability and rollout tests and for
# running Warden on one host (Debian packages prometheus 2.42, prometheus-alertmanager 0.25 and
# haproxy 2.6; their services are NOT started: Warden and the tests run the binaries themselves).
# Idempotent: installs only what is missing, then checks prometheus/ with promtool (config, rules,
# rule unit tests).
#
#   sudo bash scripts/observability.sh          # install if missing + check
#   bash scripts/observability.sh check         # only check (fails if a binary is missing)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-install}
BINARIES=(prometheus promtool prometheus-alertmanager amtool haproxy)

missing() {
  local out=()
  for bin in "${BINARIES[@]}"; do command -v "$bin" >/dev/null 2>&1 || out+=("$bin"); done
  echo "${out[@]:-}"
}

if [ -n "$(missing)" ]; then
  if [ "$MODE" = check ]; then
    echo "observability: missing $(missing); run: sudo bash scripts/observability.sh" >&2
    exit 1
  fi
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "observability: need root (or sudo) to apt-get install" >&2; exit 1; }
    SUDO=sudo
  fi
  echo "observability: installing prometheus prometheus-alertmanager haproxy (missing: $(missing))"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be stale on a fresh machine: update only when the install fails.
  $SUDO apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager haproxy \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends prometheus prometheus-alertmanager haproxy; }
  if [ -n "$(missing)" ]; then
    echo "observability: still missing after install: $(missing)" >&2
    exit 1
  fi
fi

echo "observability: $(prometheus --version 2>&1 | head -n1)"
echo "observability: $(prometheus-alertmanager --version 2>&1 | head -n1)"
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/alerts.yml prometheus/recording_rules.yml
promtool test rules prometheus/tests/*.yml
echo "observability: ready"
