#!/usr/bin/env bash
# Podman set-up and the stand-in torch base image for building the Dockerfile on a machine with
# no Docker daemon and no public container registry (DESIGN §12).
#
#   scripts/container_base.sh ensure   # install podman if missing (root + apt), write containers.conf
#   scripts/container_base.sh base     # ensure + build the stand-in base if not cached; prints its name
#   scripts/container_base.sh env      # prints the CONTAINERS_CONF=... line to export
#
# The stand-in base is what the default pytorch/pytorch CUDA image provides to the Dockerfile:
# Debian bookworm (debootstrap minbase), Python 3.11 as `python`/`pip` on PATH, torch 2.14.1 and
# torchvision 0.29.1 (with their CUDA wheels) from this machine's local wheel folders, and pip
# set up to reach PyPI through this machine's CA bundle. It is cached in podman's image store
# under a tag derived from the recipe, so a second run costs nothing.
#
# Every podman call needs: --runtime runc --cgroup-manager cgroupfs (see PODMAN below);
# builds: --network host --format docker (the OCI format drops HEALTHCHECK).
set -euo pipefail

CACHE=${CONTAINER_CACHE:-/var/tmp/promptclip-container}
PIP_CMD=${PIP_CMD:-python3 -m pip}
TORCH=${STANDIN_TORCH:-torch==2.14.1 torchvision==0.29.1}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$CACHE/containers.conf}
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "container_base: $*" >&2; }

ensure() {
  mkdir -p "$CACHE"
  if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      log "podman/runc/debootstrap missing and cannot apt-get install them (need root and apt)"; exit 2
    fi
    log "installing podman runc debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q podman runc debootstrap >"$CACHE/apt.log" 2>&1 \
      || { apt-get update -q >>"$CACHE/apt.log" 2>&1 && apt-get install -y -q podman runc debootstrap >>"$CACHE/apt.log" 2>&1; } \
      || { log "apt-get install podman runc debootstrap failed: see $CACHE/apt.log"; exit 2; }
  fi
  # the runtime may not set rlimits here
  if [ ! -f "$CONTAINERS_CONF" ]; then
    printf '[containers]\ndefault_ulimits = []\n' >"$CONTAINERS_CONF"
  fi
}

# "key='value'" lines of `pip config list` -> value of the first matching key
pip_conf() { $PIP_CMD config list 2>/dev/null | sed -n "s/^[^ ]*\.$1='\(.*\)'\$/\1/p" | head -1; }

debian_mirror() {
  local m
  m=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1 || true)
  [ -n "$m" ] || m=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

base() {
  ensure
  # one build at a time (CI starts one in the background; the tests then wait here for it)
  exec 9>"$CACHE/base.lock"
  flock 9
  local rootfs=localhost/promptclip-standin-rootfs:bookworm
  local recipe tag
  recipe=$(cat "$HERE/../tests/container/standin-base.Containerfile"; echo "$TORCH")
  tag=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
  local name=localhost/promptclip-standin-base:$tag
  if "${PODMAN[@]}" image exists "$name"; then echo "$name"; return; fi

  if ! "${PODMAN[@]}" image exists "$rootfs"; then
    local dir=$CACHE/rootfs mirror
    mirror=$(debian_mirror)
    log "debootstrap --variant=minbase bookworm from $mirror"
    rm -rf "$dir"
    debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || { log "debootstrap failed: see $CACHE/debootstrap.log"; exit 1; }
    tar -C "$dir" -c . | "${PODMAN[@]}" import - "$rootfs" >/dev/null
    rm -rf "$dir"
  fi

  # pip inside the build: this machine's CA bundle, and the local wheel folders pip is configured with
  local cert ctx mounts=() local_idx=() u
  cert=$(pip_conf cert); cert=${cert:-/etc/ssl/certs/ca-certificates.crt}
  ctx=$(mktemp -d "$CACHE/ctx.XXXXXX")
  cp "$HERE/../tests/container/standin-base.Containerfile" "$ctx/Containerfile"
  cp "$cert" "$ctx/pip-ca.crt"
  # local wheels go in as --find-links folders: pip ranks them ahead of the same file on PyPI (the
  # default index, still used for what is not here), so torch's CUDA wheels are never downloaded
  for u in $(pip_conf extra-index-url) $(pip_conf index-url); do
    case "$u" in file://*/simple|file://*/simple/)
      local p=${u#file://}; p=${p%/}; local top=${p%/simple}
      if [ -d "$top/files" ]; then mounts+=(-v "$top:$top:ro"); local_idx+=(--find-links "$top/files"); fi;;
    esac
  done
  [ ${#local_idx[@]} -gt 0 ] || { log "pip config names no local wheel folder for torch"; exit 1; }
  log "building $name ($TORCH from ${local_idx[*]})"
  "${PODMAN[@]}" build --network host --format docker "${mounts[@]}" \
    --build-arg ROOTFS="$rootfs" --build-arg TORCH="$TORCH" --build-arg PIP_LOCAL="${local_idx[*]}" \
    -t "$name" "$ctx" >"$CACHE/base-build.log" 2>&1 \
    || { rm -rf "$ctx"; log "stand-in base build failed: see $CACHE/base-build.log"; tail -20 "$CACHE/base-build.log" >&2; exit 1; }
  rm -rf "$ctx"
  echo "$name"
}

case "${1:-base}" in
  ensure) ensure ;;
  base) base ;;
  env) echo "CONTAINERS_CONF=$CONTAINERS_CONF" ;;
  *) echo "usage: $0 ensure|base|env" >&2; exit 2 ;;
esac
