#!/usr/bin/env bash
# Make a local Docker base image from Debian's own packages, for machines whose Docker
# engine cannot pull from a registry (no python:3.11-slim available).
#
# What it does, in order:
#   1. If the image (default kvstore-base:bookworm) already exists in the engine, stop:
#      the engine is the cache. Pass --force to rebuild it.
#   2. Install debootstrap with apt-get if it is missing (needs root).
#   3. debootstrap a minimal Debian bookworm (variant=minbase) with python3 (3.11),
#      python3-venv and ca-certificates into a temporary directory, from $DEBIAN_MIRROR.
#   4. Trim what a Python service never needs (apt lists and caches, docs, man pages,
#      locales) to keep the image small.
#   5. `docker import` the tree as the image, with ENV PATH/LANG and CMD set via --change.
#   6. Remove the temporary tree.
#
# The result has no pip of its own; the kvstore Dockerfile makes a venv (python3 -m venv),
# exactly as it does on top of python:3.11-slim.
#
# Usage: scripts/docker_base_image.sh [--force] [IMAGE]
# Env:   DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SUITE (bookworm),
#        KV_BASE_IMAGE (default kvstore-base:bookworm; IMAGE argument wins).
set -euo pipefail

force=0
image="${KV_BASE_IMAGE:-kvstore-base:bookworm}"
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "docker_base_image.sh: unknown option $arg" >&2; exit 2 ;;
    *) image="$arg" ;;
  esac
done
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite="${DEBIAN_SUITE:-bookworm}"

log() { printf '[docker_base_image] %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
  log "no Docker engine answers (docker info failed)"; exit 3
fi
if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  log "$image already exists; nothing to do (--force rebuilds it)"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    log "debootstrap is missing and installing it needs root (apt-get install debootstrap)"
    exit 4
  fi
  log "installing debootstrap with apt-get"
  apt-get install -y --no-install-recommends debootstrap >/dev/null \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends debootstrap >/dev/null; }
fi
if [ "$(id -u)" != 0 ]; then
  log "debootstrap needs root (it creates device nodes and chroots)"; exit 4
fi

start=$(date +%s)
rootfs="$(mktemp -d "${TMPDIR:-/tmp}/kvstore-rootfs.XXXXXX")"
trap 'rm -rf --one-file-system "$rootfs"' EXIT

log "debootstrap --variant=minbase $suite from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 30 "$rootfs.log" >&2; rm -f "$rootfs.log"
    log "debootstrap failed"; exit 5; }
rm -f "$rootfs.log"

log "trimming apt caches, docs, man pages and locales"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
       "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
       "$rootfs"/tmp/* "$rootfs"/var/tmp/*
find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' \
  -exec rm -rf {} + 2>/dev/null || true
find "$rootfs"/usr/lib/python3* -name '__pycache__' -type d -prune -exec rm -rf {} + || true

log "docker import as $image"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "kvstore base: debootstrap $suite minbase + python3, python3-venv, ca-certificates" \
  - "$image" >/dev/null

size=$(docker image inspect --format '{{.Size}}' "$image")
log "built $image in $(( $(date +%s) - start ))s, $(( size / 1024 / 1024 )) MiB"
