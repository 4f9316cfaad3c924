#!/usr/bin/env bash
# The README's docker command: build the image (offline when no registry answers) and run
# the compose cluster, with whichever compose front-end this machine has.
#
#   scripts/docker_cluster.sh up [SERVICE...]   (make docker-up)   build, start, wait healthy
#   scripts/docker_cluster.sh build             build $KV_IMAGE only (step 2 below)
#   scripts/docker_cluster.sh down [-v]         (make docker-down) stop, remove containers
#                                                  and network; -v also the data volumes
#   scripts/docker_cluster.sh compose ARGS...   run `docker compose`/`docker-compose` ARGS
#                                                  with this project's name and file
#
# What `up` does:
#   1. picks `docker compose` (v2 plugin) if it answers, else `docker-compose` (v1);
#   2. builds $KV_IMAGE unless KV_NO_BUILD=1: `docker build` on $KV_BASE_IMAGE when that
#      image is in the engine or a registry answers a pull of it within 30 s, else the
#      offline build (scripts/docker_build.sh offline: a Debian base image made with
#      debootstrap, pre-downloaded wheels, `docker build --network none`), and that at
#      once, with no pull attempt, when KV_BASE_IMAGE is that base (kvstore-base:bookworm);
#      then removes the dangling intermediate images the build left (label kvstore.build);
#   3. passes KV_RAFT_BOOTSTRAP=1 only when the project has no n1 data volume yet (a new
#      cluster: the Raft voters n1..n3 create the group; never on a later `up`, see
#      docs/raft.md);
#   4. `compose up -d --no-build`, waits (bounded) until every started node's healthcheck
#      says healthy, and prints the endpoints.
#
# Env: COMPOSE_PROJECT_NAME (default: this directory's name, as compose forms it),
#      KV_COMPOSE (force a front-end, e.g. "docker-compose"), KV_IMAGE, KV_BASE_IMAGE,
#      KV_NO_BUILD=1, KV_PROFILE (e.g. five), KV_HEALTHY_TIMEOUT (seconds, default 180),
#      and every variable docker-compose.yml reads (KV_BIND, KV_N1_PORT, ...).
set -euo pipefail

cd "$(dirname "$0")/.."
log() { printf '[docker_cluster] %s\n' "$*" >&2; }

if [ -n "${KV_COMPOSE:-}" ]; then
  read -r -a compose <<<"$KV_COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
  compose=(docker-compose)
else
  log "neither \`docker compose\` nor \`docker-compose\` answers: install one of them"
  exit 3
fi
# compose's default project name: the directory name, lower case, [-_a-z0-9] only (as
# docker-compose 1.29 and compose v2 form it; kv chaos --compose forms it the same way).
named_project="${COMPOSE_PROJECT_NAME:-}"
project="${COMPOSE_PROJECT_NAME:-$(basename "$PWD" | tr 'A-Z' 'a-z' | tr -cd -- '-_a-z0-9')}"
project="${project:-kvstore}"
export COMPOSE_PROJECT_NAME="$project"
image="${KV_IMAGE:-kvstore:latest}"
export KV_IMAGE="$image"
profile=()
if [ -n "${KV_PROFILE:-}" ]; then profile=(--profile "$KV_PROFILE"); fi
run_compose() { "${compose[@]}" -p "$project" -f docker-compose.yml "$@"; }

build() {
  local base="${KV_BASE_IMAGE:-python:3.11-slim}"
  if [ "$base" = "kvstore-base:bookworm" ]; then
    # the offline build's own base (scripts/docker_base_image.sh): no registry to probe
    log "building $image on $base offline (scripts/docker_build.sh offline)"
    KV_BASE_IMAGE="$base" scripts/docker_build.sh offline
  elif docker image inspect "$base" >/dev/null 2>&1 \
      || timeout 30 docker pull --quiet "$base" >/dev/null 2>&1; then
    log "building $image on $base (docker build)"
    docker build --quiet --force-rm --build-arg "BASE_IMAGE=$base" \
      --build-arg "WHEELS=${KV_WHEELS:-requirements}" -t "$image" . >/dev/null
  else
    log "no registry answers for $base: offline build (scripts/docker_build.sh offline)"
    KV_BASE_IMAGE="kvstore-base:bookworm" scripts/docker_build.sh offline
  fi
  docker image prune --force --filter label=kvstore.build >/dev/null
}

wait_healthy() {
  local timeout="${KV_HEALTHY_TIMEOUT:-180}" start ids status
  start=$(date +%s)
  ids=$(run_compose ps -q)
  while true; do
    # shellcheck disable=SC2086
    status=$(docker inspect --format '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' $ids)
    if ! grep -qv ' running healthy$' <<<"$status"; then
      log "healthy after $(( $(date +%s) - start ))s"
      return 0
    fi
    if (( $(date +%s) - start > timeout )); then
      log "not healthy within ${timeout}s:"; printf '%s\n' "$status" >&2
      run_compose logs --no-color --tail 20 >&2 || true
      return 1
    fi
    sleep 1
  done
}

cmd_up() {
  if [ "${KV_NO_BUILD:-}" != "1" ]; then build; fi
  if [ -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$project" \
            --filter label=com.docker.compose.volume=n1-data)" ]; then
    log "new cluster (no n1-data volume in project $project): the Raft voters create the group"
    export KV_RAFT_BOOTSTRAP=1
  else
    export KV_RAFT_BOOTSTRAP=
  fi
  run_compose "${profile[@]}" up -d --no-build "$@"
  wait_healthy
  local bind="${KV_BIND:-127.0.0.1}" endpoints="" i service port
  for i in 1 2 3 4 5; do
    service="n$i"
    if [ -n "$(run_compose ps -q "$service" 2>/dev/null)" ]; then
      port_var="KV_N${i}_PORT"; port="${!port_var:-700$i}"
      endpoints+="${endpoints:+,}$bind:$port"
    fi
  done
  [ "$bind" = "0.0.0.0" ] && endpoints="${endpoints//0.0.0.0/127.0.0.1}"
  log "project $project is up (${compose[*]}); stop it with: ${named_project:+COMPOSE_PROJECT_NAME=$named_project }make docker-down (data kept; V=1 deletes it); from the host:"
  printf 'kv --endpoints %s status\n' "$endpoints"
}

cmd_down() {
  local volumes=()
  for arg in "$@"; do
    case "$arg" in
      -v|--volumes) volumes=(-v) ;;
      *) log "down: unknown argument $arg (only -v)"; exit 2 ;;
    esac
  done
  run_compose --profile five down --remove-orphans -t 15 "${volumes[@]}"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  build) build ;;
  down) shift; cmd_down "$@" ;;
  compose) shift; run_compose "$@" ;;
  -h|--help|help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0" ;;
  *) echo "usage: scripts/docker_cluster.sh up [SERVICE...] | build | down [-v] | compose ARGS..." >&2
     exit 2 ;;
esac
