#!/usr/bin/env bash
# Build the kvstore Docker image, with or without a registry and network in the build.
#
# Subcommands:
#   lock      Regenerate requirements/docker.lock (runtime deps of kvstore[fast], pinned to
#             the versions resolved in the shared .venv) and requirements/docker-build.lock
#             (the build backend, setuptools + wheel).
#   wheels    Download every pinned wheel for the image's platform (CPython 3.11, manylinux,
#             the engine's architecture) into build/docker-wheels on the host; skipped when
#             they are all there already (so a cached run needs no PyPI either).
#   offline   The no-registry path: make the Debian base image if missing
#             (scripts/docker_base_image.sh), download the wheels, then build the image with
#             BASE_IMAGE=kvstore-base:bookworm and WHEELS=build/docker-wheels, so pip inside
#             the build runs with --no-index and the build needs no network.
#   online    Plain `docker build .` on python:3.11-slim (needs a registry and PyPI).
#
# Env: KV_IMAGE (default kvstore:latest), KV_BASE_IMAGE (default kvstore-base:bookworm for
#      offline), PYTHON (default .venv/bin/python, else python3).
# Prints the elapsed seconds of each step on stderr.
set -euo pipefail

cd "$(dirname "$0")/.."
image="${KV_IMAGE:-kvstore:latest}"
base="${KV_BASE_IMAGE:-kvstore-base:bookworm}"
wheels="build/docker-wheels"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

log() { printf '[docker_build] %s\n' "$*" >&2; }

# Without buildx the docker CLI falls back to the classic builder; say so explicitly so it
# does not fail looking for BuildKit. Both builders accept this Dockerfile.
if [ -z "${DOCKER_BUILDKIT:-}" ] && ! docker buildx version >/dev/null 2>&1; then
  export DOCKER_BUILDKIT=0
fi

cmd_lock() {
  "$python" - <<'PY'
"""Pin the runtime closure of kvstore[fast] to the versions installed in this venv."""
from importlib.metadata import PackageNotFoundError, distribution
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

env = default_environment()  # the image is Linux CPython 3.11, like this venv
pins: dict[str, str] = {}
# hdrhistogram: `kv` imports the bench commands (and so hdrh) at start-up although it is
# only in the `bench` extra; pinned here so the CLI starts in the image.
todo = [(Requirement("kvstore"), "fast"), (Requirement("hdrhistogram"), "")]
while todo:
    req, extra = todo.pop()
    name = canonicalize_name(req.name)
    dist = distribution(req.name)
    if name != "kvstore":
        if name in pins:
            continue
        pins[name] = dist.version
    for raw in dist.requires or []:
        sub = Requirement(raw)
        if sub.marker is None or sub.marker.evaluate({**env, "extra": extra or ""}):
            try:
                distribution(sub.name)
            except PackageNotFoundError:
                raise SystemExit(f"{sub.name} (needed by {req.name}) is not installed") from None
            todo.append((sub, ""))
with open("requirements/docker.lock", "w") as f:
    f.write("# Runtime dependencies of kvstore[fast] for the Docker image, pinned to the\n"
            "# versions resolved in the project's .venv (plus hdrhistogram, which `kv` imports\n"
            "# at start-up). Regenerate: scripts/docker_build.sh lock\n")
    for name in sorted(pins):
        f.write(f"{name}=={pins[name]}\n")
print("requirements/docker.lock:", ", ".join(f"{n}=={v}" for n, v in sorted(pins.items())))
PY
  local setuptools_version
  setuptools_version=$("$python" -c 'import importlib.metadata as m; print(m.version("setuptools"))' \
    2>/dev/null || echo 84.2.1)
  cat >requirements/docker-build.lock <<EOF
# Build backend for installing kvstore from source inside the image (pyproject's
# build-system.requires), pinned. Used as PIP_CONSTRAINT. Regenerate: scripts/docker_build.sh lock
setuptools==${setuptools_version}
wheel==0.45.1
EOF
  log "wrote requirements/docker.lock and requirements/docker-build.lock"
}

# Keep only wheels of the pinned versions for this architecture in $wheels; exit 0 when
# every pin has one (nothing to download), 1 otherwise.
prune_wheels() {
  "$python" - "$wheels" "$1" <<'PY'
import pathlib
import sys

from packaging.utils import canonicalize_name, parse_wheel_filename

directory, arch = pathlib.Path(sys.argv[1]), sys.argv[2]
pins = {}
for lock in ("requirements/docker.lock", "requirements/docker-build.lock"):
    for line in pathlib.Path(lock).read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
have = set()
for wheel in directory.glob("*.whl"):
    name, version, _, tags = parse_wheel_filename(wheel.name)
    platform_ok = all(t.platform == "any" or t.platform.endswith(arch) for t in tags)
    if pins.get(name) != str(version) or not platform_ok:
        wheel.unlink()
    else:
        have.add(name)
sys.exit(0 if have == set(pins) else 1)
PY
}

cmd_wheels() {
  local arch start
  start=$(date +%s)
  arch=$(docker info --format '{{.Architecture}}' 2>/dev/null || uname -m)
  case "$arch" in amd64) arch=x86_64 ;; arm64) arch=aarch64 ;; esac
  mkdir -p "$wheels"
  if prune_wheels "$arch"; then
    log "every pinned wheel for cp311/${arch} is already in $wheels"
    return
  fi
  # pip does not widen --platform, so name every manylinux tag bookworm's glibc 2.36 runs.
  local platforms=(--platform any --platform "manylinux2014_${arch}" \
    --platform "manylinux2010_${arch}" --platform "manylinux1_${arch}")
  local minor
  for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_${arch}"); done
  "$python" -m pip download --quiet --disable-pip-version-check \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 \
    --abi none "${platforms[@]}" \
    --no-deps -r requirements/docker.lock -r requirements/docker-build.lock -d "$wheels"
  prune_wheels "$arch" || { log "some pinned wheels are missing from $wheels"; exit 1; }
  log "wheels for cp311/${arch} in $wheels in $(( $(date +%s) - start ))s"
}

cmd_offline() {
  local start
  start=$(date +%s)
  scripts/docker_base_image.sh "$base"
  cmd_wheels
  log "docker build (no network: --network none, pip --no-index) -> $image"
  docker build --network none --quiet --force-rm --build-arg "BASE_IMAGE=$base" \
    --build-arg "WHEELS=$wheels" -t "$image" . >/dev/null
  log "built $image on $base in $(( $(date +%s) - start ))s, $(( $(docker image inspect \
    --format '{{.Size}}' "$image") / 1024 / 1024 )) MiB"
}

cmd_online() {
  docker build --force-rm -t "$image" .
}

case "${1:-offline}" in
  lock) cmd_lock ;;
  wheels) cmd_wheels ;;
  offline) cmd_offline ;;
  online) cmd_online ;;
  -h|--help|help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) echo "usage: scripts/docker_build.sh [lock|wheels|offline|online]" >&2; exit 2 ;;
esac
