#!/usr/bin/env bash
# Warden engine setup: the one script CI and users run (as root, on a Debian bookworm machine) to get
# a Docker engine and the Warden images without any image registry. Idempotent and cached: the first
# run takes a few minutes, a second run only checks (seconds).
#
#   sudo bash scripts/engine.sh            # set everything up, print `export DOCKER_HOST=...`
#   eval "$(sudo bash scripts/engine.sh)"  # ... and use the engine in this shell
#   . ./.warden-engine.env                 # the same export lines, written for scripts
#
# Steps (each skipped when already done):
#   1. apt packages: docker.io docker-compose debootstrap (+ prometheus prometheus-alertmanager
#      with --no-install-recommends); `apt-get update` at most once.
#   2. engine: use $DOCKER_HOST, the private socket or the default socket if one answers; otherwise
#      start dockerd on unix:///run/warden-docker.sock with data root /var/lib/warden-docker.
#   3. base image local/bookworm-py:base: debootstrap (minbase + python3, python3-venv) + docker
#      import. The rootfs tarball is cached in $WARDEN_CACHE_DIR, so wiping the engine does not
#      redo debootstrap.
#   4. wheelhouse in $WARDEN_CACHE_DIR/wheels: every wheel the images need, from the host's pip.
#   5. images (BuildKit, offline: `--network none`, `pip install --no-index`):
#      warden-inference:good, :bad (canaries fail), :broken (cannot load its model),
#      warden-agent:latest, warden-prometheus:local, warden-alertmanager:local,
#      warden-haproxy:local (Debian's haproxy .debs, fetched once with `apt-get download`).
#      An image is rebuilt only when the content hash of its sources (label warden.source-hash)
#      differs from the one it was built from.
#
# Progress goes to stderr; stdout carries only the export lines.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/engine.sh [--no-images] [--check] [--force] [--help]

Sets up a Docker engine and the Warden images offline (no image registry needed). Run as root.

  --no-images   only packages + engine (no base image, wheelhouse or images)
  --check       change nothing; report what is missing or stale; exit 1 if anything is
  --force       rebuild all Warden images (base image, rootfs and wheelhouse caches are kept)
  --help        this text

Environment (defaults in brackets):
  WARDEN_CACHE_DIR         rootfs tarball, wheelhouse, build contexts [/var/cache/warden]
  WARDEN_DOCKER_SOCK       private engine socket [/run/warden-docker.sock]
  WARDEN_DOCKER_DATA_ROOT  private engine data root [/var/lib/warden-docker]
  WARDEN_DOCKER_LOG        private engine log [/var/log/warden-docker.log]
  WARDEN_DEBIAN_MIRROR     debootstrap mirror [http://deb.debian.org/debian]
  WARDEN_TAG               tag of the normal inference image [good]
  WARDEN_AGENT_TAG         tag of the agent image [latest]
  WARDEN_PYTHON            python used for `pip download` (must be 3.11) [python3]
  WARDEN_DOCKERD_ARGS      extra dockerd flags when this script starts the engine []
  WARDEN_ENGINE_ENV_FILE   where the export lines go [REPO/.warden-engine.env]
  (also WARDEN_DOCKER_EXEC_ROOT [/run/warden-docker], WARDEN_DOCKER_PIDFILE [/run/warden-docker.pid])

Afterwards:  . ./.warden-engine.env   (exports DOCKER_HOST, WARDEN_DOCKER_SOCK, WARDEN_DOCKER_GID)
EOF
}

MODE=all
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --no-images) MODE=engine ;;
    --check) MODE=check ;;
    --force) FORCE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "engine.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${WARDEN_CACHE_DIR:-/var/cache/warden}
SOCK=${WARDEN_DOCKER_SOCK:-/run/warden-docker.sock}
DATA_ROOT=${WARDEN_DOCKER_DATA_ROOT:-/var/lib/warden-docker}
EXEC_ROOT=${WARDEN_DOCKER_EXEC_ROOT:-/run/warden-docker}
PIDFILE=${WARDEN_DOCKER_PIDFILE:-/run/warden-docker.pid}
LOG=${WARDEN_DOCKER_LOG:-/var/log/warden-docker.log}
MIRROR=${WARDEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TAG=${WARDEN_TAG:-good}
AGENT_TAG=${WARDEN_AGENT_TAG:-latest}
PY=${WARDEN_PYTHON:-python3}
ENV_FILE=${WARDEN_ENGINE_ENV_FILE:-$REPO/.warden-engine.env}
# Extra dockerd flags, word-split. Never "--bridge=none" beside another engine: dockerd then
# deletes the host's docker0 interface, which the other engine's default bridge uses.
DOCKERD_ARGS=${WARDEN_DOCKERD_ARGS:-}
BASE_IMAGE=local/bookworm-py:base
ROOTFS_TAR=$CACHE/bookworm-py-rootfs.tar
WHEELS=$CACHE/wheels
export DOCKER_BUILDKIT=1

T0=$(date +%s)
say() { printf '[engine %3ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
die() {
  printf '[engine] ERROR: %s\n' "$1" >&2
  shift
  for line in "$@"; do printf '[engine]   -> %s\n' "$line" >&2; done
  exit 1
}
MISSING=()
missing() { MISSING+=("$1"); say "missing: $1"; }

# ---------------------------------------------------------------------------------------------- 1
APT_PKGS=(docker.io docker-compose debootstrap)
APT_PKGS_NOREC=(prometheus prometheus-alertmanager)
apt_run() {
  # apt/dpkg chatter goes to a log; its tail is shown when something fails.
  if ! NEEDRESTART_SUSPEND=1 apt-get -q "$@" >>"$CACHE/apt.log" 2>&1; then
    tail -n 20 "$CACHE/apt.log" >&2
    return 1
  fi
}
APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" = 1 ] && return 0
  say "packages: apt-get update"
  apt_run update && APT_UPDATED=1
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

step_packages() {
  local need=() need_norec=() p
  for p in "${APT_PKGS[@]}"; do pkg_installed "$p" || need+=("$p"); done
  for p in "${APT_PKGS_NOREC[@]}"; do pkg_installed "$p" || need_norec+=("$p"); done
  if [ "$MODE" = check ] && [ $((${#need[@]} + ${#need_norec[@]})) -gt 0 ]; then
    for p in "${need[@]}" "${need_norec[@]}"; do missing "apt package $p"; done
    return 0
  fi
  if [ ${#need[@]} -eq 0 ] && [ ${#need_norec[@]} -eq 0 ]; then
    say "packages: present (${APT_PKGS[*]} ${APT_PKGS_NOREC[*]})"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "missing packages: ${need[*]} ${need_norec[*]}" \
    "run this script as root: sudo bash scripts/engine.sh"
  export DEBIAN_FRONTEND=noninteractive
  local log=$CACHE/apt.log
  apt_update || die "apt-get update failed (log: $log)" "check the Debian mirror in /etc/apt/sources.list*"
  if [ ${#need[@]} -gt 0 ]; then
    say "packages: apt-get install ${need[*]}"
    apt_run install -y "${need[@]}" || die "apt-get install ${need[*]} failed (log: $log)"
  fi
  if [ ${#need_norec[@]} -gt 0 ]; then
    say "packages: apt-get install --no-install-recommends ${need_norec[*]}"
    apt_run install -y --no-install-recommends "${need_norec[@]}" ||
      die "apt-get install ${need_norec[*]} failed (log: $log)"
  fi
}

# ---------------------------------------------------------------------------------------------- 2
DOCKER=docker
pick_docker_cli() {
  # /usr/bin/docker is the CLI that matches Debian's engine (API 1.41); a newer one may sit earlier
  # in PATH and works too.
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker
  elif command -v docker >/dev/null 2>&1; then DOCKER=$(command -v docker)
  else DOCKER=""; fi
}
engine_ok() { [ -n "$DOCKER" ] && DOCKER_HOST=$1 timeout 15 "$DOCKER" info >/dev/null 2>&1; }

ENGINE_HOST=""
step_engine() {
  pick_docker_cli
  local cand
  for cand in "${DOCKER_HOST:-}" "unix://$SOCK" "unix:///var/run/docker.sock"; do
    [ -n "$cand" ] || continue
    if engine_ok "$cand"; then ENGINE_HOST=$cand; break; fi
  done
  if [ -n "$ENGINE_HOST" ]; then
    say "engine: reachable at $ENGINE_HOST ($(DOCKER_HOST=$ENGINE_HOST "$DOCKER" version -f '{{.Server.Version}} API {{.Server.APIVersion}}' 2>/dev/null))"
  elif [ "$MODE" = check ]; then
    missing "docker engine (none answers at ${DOCKER_HOST:-\$DOCKER_HOST unset}, unix://$SOCK or the default socket)"
    return 0
  else
    [ -n "$DOCKER" ] || die "no docker CLI found" "install docker.io: apt-get install docker.io"
    command -v dockerd >/dev/null || die "dockerd not found" "install docker.io: apt-get install docker.io"
    [ "$(id -u)" = 0 ] || die "no engine is running and starting dockerd needs root" \
      "run: sudo bash scripts/engine.sh"
    if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      say "engine: dockerd pid $(cat "$PIDFILE") exists but does not answer yet; waiting"
    else
      rm -f "$PIDFILE"
      mkdir -p "$DATA_ROOT" "$EXEC_ROOT" "$(dirname "$LOG")"
      say "engine: starting dockerd (socket $SOCK, data root $DATA_ROOT, log $LOG)"
      # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1: Swarm services use local images instead of asking a
      # registry for the digest. setsid + nohup: the daemon outlives this script; 9>&-: it must not
      # inherit (and hold forever) the lock of this script.
      # shellcheck disable=SC2086 # DOCKERD_ARGS is a list of flags
      DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 setsid nohup dockerd \
        --data-root "$DATA_ROOT" --exec-root "$EXEC_ROOT" \
        -H "unix://$SOCK" --pidfile "$PIDFILE" $DOCKERD_ARGS >>"$LOG" 2>&1 </dev/null 9>&- &
    fi
    local deadline=$(($(date +%s) + 60))
    until engine_ok "unix://$SOCK"; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        tail -n 25 "$LOG" >&2 || true
        die "dockerd did not answer on unix://$SOCK within 60 s (log above: $LOG)" \
          "look for the cause in $LOG (iptables, cgroups, a stale $PIDFILE, another dockerd)" \
          "stop a half-started daemon: kill \$(cat $PIDFILE)"
      fi
      sleep 0.5
    done
    ENGINE_HOST=unix://$SOCK
    say "engine: dockerd is up at $ENGINE_HOST"
  fi
  export DOCKER_HOST=$ENGINE_HOST
  [ "$MODE" = check ] || write_env_file
  step_swarm
}

# The Swarm backend's tests and users need this engine to be a swarm manager (idempotent).
step_swarm() {
  local state
  state=$("$DOCKER" info -f '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown)
  if [ "$state" = active ]; then
    say "swarm: this engine is a swarm manager"
  elif [ "$MODE" = check ]; then
    missing "swarm mode (docker swarm init --advertise-addr 127.0.0.1)"
  else
    "$DOCKER" swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null \
      || die "docker swarm init failed" "see: docker info; docker swarm leave --force"
    say "swarm: initialised (advertise 127.0.0.1)"
  fi
}

write_env_file() {
  local sock=${ENGINE_HOST#unix://} gid=0
  [ -S "$sock" ] && gid=$(stat -c %g "$sock")
  local content
  content=$(printf 'export DOCKER_HOST=%s\nexport WARDEN_DOCKER_SOCK=%s\nexport WARDEN_DOCKER_GID=%s\n' \
    "$ENGINE_HOST" "$sock" "$gid")
  if [ ! -f "$ENV_FILE" ] || [ "$(cat "$ENV_FILE")" != "$content" ]; then
    printf '%s\n' "$content" >"$ENV_FILE.tmp" && mv "$ENV_FILE.tmp" "$ENV_FILE"
  fi
  say "engine: wrote $ENV_FILE"
}

# ---------------------------------------------------------------------------------------------- 3
image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
image_label() { "$DOCKER" image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

step_base_image() {
  if image_exists "$BASE_IMAGE"; then say "base image: $BASE_IMAGE present"; return 0; fi
  if [ "$MODE" = check ]; then missing "base image $BASE_IMAGE"; return 0; fi
  mkdir -p "$CACHE"
  if [ ! -s "$ROOTFS_TAR" ]; then
    command -v debootstrap >/dev/null || die "debootstrap not found" "apt-get install debootstrap"
    local rootfs=$CACHE/rootfs.tmp
    rm -rf "$rootfs"
    say "base image: debootstrap bookworm (minbase + python3, python3-venv) from $MIRROR (~40 s)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
      { tail -n 20 "$CACHE/debootstrap.log" >&2
        die "debootstrap failed (log: $CACHE/debootstrap.log)" \
          "check that $MIRROR is reachable, or set WARDEN_DEBIAN_MIRROR"; }
    # Shrink: downloaded .debs and apt lists are not needed in the image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -cf "$ROOTFS_TAR.tmp" . && mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$rootfs"
  else
    say "base image: using cached rootfs $ROOTFS_TAR"
  fi
  "$DOCKER" import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' \
    -m "debootstrap bookworm minbase + python3 (warden engine.sh)" "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
  say "base image: imported $BASE_IMAGE ($("$DOCKER" run --rm "$BASE_IMAGE" python3 --version))"
}

# ---------------------------------------------------------------------------------------------- 4
wheel_reqs() {
  # Everything either image installs, plus the project's build backend.
  local k
  for k in inference agent build; do "$PY" "$REPO/scripts/requirements.py" "$k" "$REPO/pyproject.toml"; done | sort -u
}
wheels_want() {
  { "$PY" -c 'import sys; print(sys.implementation.cache_tag)'
    wheel_reqs
    echo "--no-deps"; "$PY" "$REPO/scripts/requirements.py" nodeps "$REPO/pyproject.toml"
  } | sha256sum | cut -c1-16
}

step_wheelhouse() {
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' ||
    die "$PY is not Python 3.11; the images run bookworm's python3 (3.11)" "set WARDEN_PYTHON=python3.11"
  if ! "$PY" -m pip --version >/dev/null 2>&1; then
    [ "$MODE" = check ] && { missing "pip for $PY (apt package python3-pip)"; return 0; }
    [ "$(id -u)" = 0 ] || die "$PY has no pip" "apt-get install python3-pip, or set WARDEN_PYTHON"
    apt_update || die "apt-get update failed"
    say "packages: apt-get install --no-install-recommends python3-pip (for pip download)"
    DEBIAN_FRONTEND=noninteractive apt_run install -y --no-install-recommends python3-pip ||
      die "apt-get install python3-pip failed (log: $CACHE/apt.log)"
  fi
  local want
  want=$(wheels_want)
  if [ -f "$WHEELS/.stamp" ] && [ "$(cat "$WHEELS/.stamp")" = "$want" ]; then
    say "wheelhouse: up to date ($WHEELS, $(du -sh "$WHEELS" | cut -f1))"
    return 0
  fi
  if [ "$MODE" = check ]; then missing "wheelhouse $WHEELS (stamp $want)"; return 0; fi
  mkdir -p "$WHEELS"
  say "wheelhouse: pip download into $WHEELS (torch==2.13.0 CPU, transformers, agent deps; ~10-60 s)"
  local reqf=$CACHE/wheel-requirements.txt
  wheel_reqs >"$reqf"
  # Only wheels: the images have no compiler; a package without a wheel fails here, loudly.
  local plog=$CACHE/pip-download.log
  "$PY" -m pip download --only-binary=:all: -d "$WHEELS" -r "$reqf" >"$plog" 2>&1 ||
    { tail -n 20 "$plog" >&2; die "pip download failed (log: $plog)" "check PyPI access from this host (pip config list)"; }
  # shellcheck disable=SC2046
  "$PY" -m pip download --no-deps -d "$WHEELS" \
    $("$PY" "$REPO/scripts/requirements.py" nodeps "$REPO/pyproject.toml") >>"$plog" 2>&1 ||
    { tail -n 20 "$plog" >&2; die "pip download --no-deps failed (log: $plog)"; }
  echo "$want" >"$WHEELS/.stamp"
  say "wheelhouse: $(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"
}

# ---------------------------------------------------------------------------------------------- 5
# Content hash of a list of files/directories (bytecode caches ignored).
hash_paths() {
  (cd "$REPO" && find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

# stage_context DIR PATH... : a build context with the given repo paths + the wheelhouse
# (hard links: instant, no extra disk).
stage_context() {
  local ctx=$1 p
  shift
  rm -rf "$ctx"
  mkdir -p "$ctx"
  for p in "$@"; do
    [ -e "$REPO/$p" ] || continue
    mkdir -p "$ctx/$(dirname "$p")"
    cp -a "$REPO/$p" "$ctx/$p"
  done
  find "$ctx" -name __pycache__ -type d -prune -exec rm -rf {} +
  cp -al "$WHEELS" "$ctx/wheels" 2>/dev/null || cp -a "$WHEELS" "$ctx/wheels"
}

# up_to_date IMAGE HASH : IMAGE exists with label warden.source-hash=HASH (and no --force)
up_to_date() {
  [ "$FORCE" = 0 ] && image_exists "$1" && [ "$(image_label "$1" warden.source-hash)" = "$2" ]
}

# build IMAGE HASH LOG docker-build-args... : build unless IMAGE is up to date with HASH
build() {
  local image=$1 hash=$2 name=$3
  shift 3
  if up_to_date "$image" "$hash"; then
    say "image: $image up to date ($hash)"
    return 0
  fi
  if [ "$MODE" = check ]; then missing "image $image (sources hash $hash)"; return 0; fi
  local t=$(($(date +%s))) log=$CACHE/build-$name.log
  say "image: building $image ($hash) ..."
  if ! "$DOCKER" build --progress=plain --label "warden.source-hash=$hash" -t "$image" "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "building $image failed (full log: $log)" "fix the error above, then run scripts/engine.sh again"
  fi
  say "image: built $image in $(($(date +%s) - t)) s ($(image_size "$image"))"
}
image_size() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }

step_images() {
  [ -f "$REPO/inference/Dockerfile" ] || die "inference/Dockerfile is missing"
  local base_id h ctx
  base_id=$("$DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo none)
  local wstamp
  wstamp=$(cat "$WHEELS/.stamp" 2>/dev/null || echo none)
  local common=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --network none)

  # inference: the normal release, the one tests and users call "good"
  if [ ! -f "$REPO/inference/__main__.py" ] && [ ! -f "$REPO/inference/server.py" ]; then
    die "inference/ has no server yet (inference/__main__.py or server.py)" "wait for it, or run with --no-images"
  fi
  h=$( { echo "$base_id $wstamp $TAG"; hash_paths pyproject.toml scripts/requirements.py inference; } | sha256sum | cut -c1-16)
  ctx=$CACHE/ctx/inference
  if [ "$MODE" != check ] && ! up_to_date "warden-inference:$TAG" "$h"; then
    stage_context "$ctx" pyproject.toml README.md LICENSE scripts/requirements.py inference
  fi
  build "warden-inference:$TAG" "$h" inference "${common[@]}" --build-arg "RELEASE=$TAG" \
    -f "$ctx/inference/Dockerfile" "$ctx"
  local good_id
  good_id=$("$DOCKER" image inspect -f '{{.Id}}' "warden-inference:$TAG" 2>/dev/null || echo none)
  [ "$TAG" = good ] || { [ "$MODE" = check ] || "$DOCKER" tag "warden-inference:$TAG" warden-inference:good; }

  # bad / broken: thin layers on top of good (seconds)
  local r
  for r in bad broken; do
    h=$( { echo "$good_id"; hash_paths "deploy/releases/$r"; } | sha256sum | cut -c1-16)
    build "warden-inference:$r" "$h" "inference-$r" --network none \
      --build-arg FROM_IMAGE=warden-inference:good --build-arg "RELEASE=$r" \
      -f "$REPO/deploy/releases/$r/Dockerfile" "$REPO/deploy/releases/$r"
  done

  # agent: base dependencies only, no torch
  if [ -f "$REPO/agent/Dockerfile" ]; then
    h=$( { echo "$base_id $wstamp $AGENT_TAG"; hash_paths pyproject.toml scripts/requirements.py agent; } | sha256sum | cut -c1-16)
    ctx=$CACHE/ctx/agent
    if [ "$MODE" != check ] && ! up_to_date "warden-agent:$AGENT_TAG" "$h"; then
      stage_context "$ctx" pyproject.toml README.md LICENSE scripts/requirements.py agent
    fi
    build "warden-agent:$AGENT_TAG" "$h" agent "${common[@]}" --build-arg "RELEASE=$AGENT_TAG" \
      -f "$ctx/agent/Dockerfile" "$ctx"
  else
    say "image: agent/Dockerfile missing, skipping warden-agent"
  fi

  # prometheus + alertmanager: the host's Debian binaries (+ the files they read from
  # /usr/share/prometheus: web assets, alertmanager's default templates) copied onto the base image
  local bin src share
  for bin in prometheus alertmanager; do
    src=/usr/bin/$bin share=/usr/share/prometheus/web
    if [ "$bin" = alertmanager ]; then src=/usr/bin/prometheus-alertmanager share=/usr/share/prometheus/alertmanager; fi
    if [ ! -x "$src" ]; then
      [ "$MODE" = check ] && { missing "$src (apt package)"; continue; }
      die "$src missing" "apt-get install --no-install-recommends prometheus prometheus-alertmanager"
    fi
    h=$( { echo "$base_id"; sha256sum "$src" | cut -c1-64; [ -d "$share" ] && (cd "$share" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
           hash_paths "deploy/$bin.Dockerfile"; } | sha256sum | cut -c1-16)
    ctx=$CACHE/ctx/$bin
    if [ "$MODE" != check ] && ! up_to_date "warden-$bin:local" "$h"; then
      rm -rf "$ctx" && mkdir -p "$ctx/share" && cp "$src" "$ctx/$bin"
      if [ -d "$share" ]; then cp -a "$share/." "$ctx/share/"; fi
    fi
    build "warden-$bin:local" "$h" "$bin" --build-arg "BASE_IMAGE=$BASE_IMAGE" --network none \
      -f "$REPO/deploy/$bin.Dockerfile" "$ctx"
  done

  step_haproxy_image "$base_id"
}

# haproxy: Debian's package + the libraries the base image lacks, as .debs fetched once with
# `apt-get download` into $CACHE/debs/haproxy (the build itself is offline: --network none).
HAPROXY_DEBS=(haproxy liblua5.3-0 libopentracing-c-wrapper0 libopentracing1)
haproxy_debs_present() {
  local p
  for p in "${HAPROXY_DEBS[@]}"; do compgen -G "$CACHE/debs/haproxy/${p}_*.deb" >/dev/null || return 1; done
}
step_haproxy_image() {
  local base_id=$1 h ctx debs=$CACHE/debs/haproxy
  if ! haproxy_debs_present; then
    [ "$MODE" = check ] && { missing "HAProxy packages in $debs (apt-get download ${HAPROXY_DEBS[*]})"; return 0; }
    mkdir -p "$debs"
    say "image: apt-get download ${HAPROXY_DEBS[*]} into $debs"
    (cd "$debs" && apt_run download "${HAPROXY_DEBS[@]}") ||
      { apt_update && (cd "$debs" && apt_run download "${HAPROXY_DEBS[@]}"); } ||
      die "apt-get download ${HAPROXY_DEBS[*]} failed (log: $CACHE/apt.log)" \
        "check the Debian mirror in /etc/apt/sources.list*"
  fi
  h=$( { echo "$base_id"; (cd "$debs" && find . -name '*.deb' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
         hash_paths deploy/haproxy; } | sha256sum | cut -c1-16)
  ctx=$CACHE/ctx/haproxy
  if [ "$MODE" != check ] && ! up_to_date warden-haproxy:local "$h"; then
    rm -rf "$ctx" && mkdir -p "$ctx/debs"
    cp -a "$REPO/deploy/haproxy/." "$ctx/"
    cp -al "$debs/." "$ctx/debs/" 2>/dev/null || cp -a "$debs/." "$ctx/debs/"
  fi
  build warden-haproxy:local "$h" haproxy --build-arg "BASE_IMAGE=$BASE_IMAGE" --network none \
    -f "$ctx/Dockerfile" "$ctx"
}

# ---------------------------------------------------------------------------------------------- main
mkdir -p "$CACHE" 2>/dev/null || true
if [ "$MODE" != check ] && [ -w "$CACHE" ]; then
  # One run at a time (CI and a user, or two CI jobs, on the same machine).
  exec 9>"$CACHE/engine.lock"
  flock -w 900 9 || die "another engine.sh run holds $CACHE/engine.lock for 15 min"
fi

step_packages
step_engine
if [ "$MODE" != engine ] && [ -n "$ENGINE_HOST" ]; then
  if [ "$MODE" = all ]; then
    # Independent and both mostly waiting on downloads: debootstrap and pip download in parallel.
    step_wheelhouse &
    wheel_pid=$!
    step_base_image
    wait "$wheel_pid" || die "the wheelhouse step failed (see above)"
  else
    step_base_image
    step_wheelhouse
  fi
  if [ "$MODE" = check ] && ! image_exists "$BASE_IMAGE"; then
    missing "all images (no base image yet)"
  else
    step_images
    if [ "$MODE" != check ]; then
      # Superseded builds (untagged now) of these images: free the space, keep the build cache.
      "$DOCKER" image prune -f --filter label=warden.source-hash >/dev/null || true
    fi
  fi
fi

if [ "$MODE" = check ]; then
  if [ ${#MISSING[@]} -gt 0 ]; then
    say "check: ${#MISSING[@]} thing(s) missing or stale; run: sudo bash scripts/engine.sh"
    exit 1
  fi
  say "check: everything is in place"
fi
say "done in $(($(date +%s) - T0)) s; use the engine with:  . $ENV_FILE"
[ -n "$ENGINE_HOST" ] && cat "$ENV_FILE"
exit 0
