#!/usr/bin/env bash
# CI: a Docker engine, the base images and both fleet images, for tests/containers/.
#
#   bash ops/ci/containers.sh        # or `up`: engine, bases, `docker build` of both Dockerfiles
#   bash ops/ci/containers.sh down   # the stack's containers gone; dockerd stopped if started here
#
# When no engine answers, Debian's docker.io is installed and dockerd runs in the background (its
# pid in $STATE/dockerd.pid; `down` stops that pid and nothing else), on the overlay2 storage
# driver where the kernel allows it, else on vfs (FLEET_CI_STORAGE_DRIVER chooses).
# The Dockerfiles and docker-compose.yml name official base images. When a pull of one fails
# (no registry reachable), a stand-in is built offline from a debootstrapped Debian and tagged with
# the official name, and this script says so. The stand-ins (Debian's python3, redis-server and
# PostgreSQL in place of the official builds) are cached per Debian release under $CACHE, with the
# debootstrap tarball; a machine without that cache builds them again.
# Both fleet images are then built from Dockerfile.api and Dockerfile.worker as they are.
set -euo pipefail
cd "$(dirname "$0")/../.."

RELEASE="${FLEET_CI_DEBIAN_RELEASE:-bookworm}"
MIRROR="${FLEET_CI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${FLEET_CI_CACHE:-/var/cache/agentfleet-ci}/$RELEASE"
STATE="${FLEET_CI_STATE:-/run/agentfleet-ci}"
TAG="${FLEET_IMAGE_TAG:-ci}"
PROJECT="${FLEET_CI_PROJECT:-agentfleet-ci}"

log() { printf '== containers: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

base_images() {
  # Every FROM of the Dockerfiles and every image: of the compose file that is not built here.
  {
    sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' Dockerfile.api Dockerfile.worker
    sed -n 's/^[[:space:]]*image:[[:space:]]*\([^[:space:]]\+\).*/\1/p' docker-compose.yml | grep -v '^agentfleet-'
  } | sort -u
}

storage_driver() {
  # overlay2 where the kernel mounts an overlay on /var/lib/docker's filesystem; vfs otherwise
  # (no kernel support, or a root that is itself an overlay). On vfs every layer, even an ENV
  # line, is a full copy of the image: builds take several times longer.
  if [ -n "${FLEET_CI_STORAGE_DRIVER:-}" ]; then echo "$FLEET_CI_STORAGE_DRIVER"; return; fi
  local probe driver=vfs
  as_root mkdir -p /var/lib/docker
  probe="$(as_root mktemp -d /var/lib/docker/overlay-probe.XXXXXX)"
  as_root mkdir "$probe/lower" "$probe/upper" "$probe/work" "$probe/merged"
  if as_root mount -t overlay overlay \
    -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
    as_root touch "$probe/merged/file" 2>/dev/null && driver=overlay2
    as_root umount "$probe/merged"
  fi
  as_root rm -rf "$probe"
  echo "$driver"
}

engine_up() {
  if docker info >/dev/null 2>&1; then
    log "a Docker engine answers: $(docker version --format '{{.Server.Version}}')"
    return
  fi
  command -v dockerd >/dev/null 2>&1 || { log "installing docker.io"; apt_install docker.io; }
  command -v docker >/dev/null 2>&1 || apt_install docker.io
  as_root mkdir -p "$STATE"
  local driver
  driver="$(storage_driver)"
  log "starting dockerd --storage-driver=$driver (log: $STATE/dockerd.log)"
  # setsid: dockerd outlives this script (the tests use it); `down` stops it by its pid.
  as_root setsid dockerd --storage-driver="$driver" --pidfile "$STATE/dockerd.pid" \
    >"$STATE/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && { log "dockerd is up (pid $(cat "$STATE/dockerd.pid"))"; return; }
    sleep 1
  done
  tail -20 "$STATE/dockerd.log" >&2
  log "dockerd did not answer within 60 s" >&2
  exit 1
}

debian_image() {
  # A minimal Debian from debootstrap, imported as an image; the tarball is cached.
  local image="agentfleet-ci/debian:$RELEASE"
  if docker image inspect "$image" >/dev/null 2>&1; then return; fi
  as_root mkdir -p "$CACHE"
  if [ ! -s "$CACHE/rootfs.tar" ]; then
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local rootfs
    rootfs="$(mktemp -d)"
    log "debootstrap --variant=minbase $RELEASE from $MIRROR (about 1.5 min)"
    as_root debootstrap --variant=minbase "$RELEASE" "$rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
      || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    as_root chmod 755 "$rootfs" # mktemp's 0700 would become the image's / and lock out non-root users
    as_root tar -C "$rootfs" -cf "$CACHE/rootfs.tar.part" .
    as_root mv "$CACHE/rootfs.tar.part" "$CACHE/rootfs.tar"
    as_root rm -rf "$rootfs"
  fi
  log "importing $CACHE/rootfs.tar as $image"
  docker import - "$image" <"$CACHE/rootfs.tar" >/dev/null
}

recipe_key() {
  # The stand-in's recipe (its files in ops/ci/standins/) as a short hash: a changed recipe makes
  # a new stand-in, also where the engine still holds one built from the old recipe.
  cat ops/ci/standins/"$1"[.-]* | sha256sum | cut -c1-12
}

standin_name() {
  case "$1" in
    python:*) echo python ;;
    redis:*) echo redis ;;
    postgres:*) echo postgres ;;
    *) return 1 ;;
  esac
}

standin() {
  # standin OFFICIAL NAME: ops/ci/standins/NAME.sh run as root in the Debian image (the stand-in's
  # files mounted at /standin), committed with the instructions of NAME.changes, tagged OFFICIAL.
  # One container and one commit: on vfs, every layer of a `docker build` is a full copy.
  # Cached as a `docker save` tarball, keyed by the release and the recipe's files.
  local official="$1" name="$2"
  local key
  key="$(recipe_key "$name")"
  local saved="$CACHE/standin-$name-$key.tar"
  if [ -s "$saved" ]; then
    log "loading the cached stand-in for $official ($saved)"
    docker load -i "$saved" >/dev/null
    docker tag "agentfleet-ci/$name:$RELEASE" "agentfleet-ci/$name:$RELEASE-$key"
    docker tag "agentfleet-ci/$name:$RELEASE" "$official"
    return
  fi
  debian_image
  local context cid line
  context="$(mktemp -d)"
  cp ops/ci/standins/"$name"[.-]* "$context/"
  # PyPI may be reached through a TLS-intercepting proxy: the host's CA bundle goes in, so that pip
  # in the builds trusts what the host trusts. It holds public certificates only.
  cp /etc/ssl/certs/ca-certificates.crt "$context/ca-certificates.crt"
  chmod -R a+rX "$context"
  log "building the stand-in for $official from ops/ci/standins/$name.sh"
  cid="$(docker create -v "$context:/standin:ro" "agentfleet-ci/debian:$RELEASE" bash "/standin/$name.sh")"
  if ! docker start -a "$cid" >"$STATE/standin-$name.log" 2>&1; then
    tail -30 "$STATE/standin-$name.log" >&2
    docker rm -f "$cid" >/dev/null
    exit 1
  fi
  local changes=()
  while IFS= read -r line; do
    case "$line" in '' | '#'*) ;; *) changes+=(--change "$line") ;; esac
  done <"ops/ci/standins/$name.changes"
  docker commit "${changes[@]}" "$cid" "agentfleet-ci/$name:$RELEASE" >/dev/null || { docker rm -f "$cid" >/dev/null; exit 1; }
  docker rm "$cid" >/dev/null
  rm -rf "$context"
  docker tag "agentfleet-ci/$name:$RELEASE" "agentfleet-ci/$name:$RELEASE-$key"
  docker tag "agentfleet-ci/$name:$RELEASE" "$official"
  as_root mkdir -p "$CACHE"
  rm -f "$CACHE/standin-$name-"*.tar
  docker save -o "$saved.part" "agentfleet-ci/$name:$RELEASE"
  mv "$saved.part" "$saved"
}

bases() {
  local image name
  for image in $(base_images); do
    if docker image inspect "$image" >/dev/null 2>&1; then
      # The official image, or a stand-in built from the recipe as it is now: nothing to do.
      # (each stand-in is also tagged agentfleet-ci/NAME:RELEASE-RECIPE_KEY).
      local standin current
      standin="$(docker image inspect -f '{{index .Config.Labels "org.agentfleet.ci.standin"}}' "$image")"
      [ -n "$standin" ] || continue
      name="$(standin_name "$image")"
      current="$(docker image inspect -f '{{.Id}}' "agentfleet-ci/$name:$RELEASE-$(recipe_key "$name")" 2>/dev/null || true)"
      [ "$current" != "$(docker image inspect -f '{{.Id}}' "$image")" ] || continue
      log "the stand-in for $image was built from an older recipe"
    elif docker pull -q "$image" >/dev/null 2>&1; then
      log "pulled $image"
      continue
    fi
    name="$(standin_name "$image")" || { log "cannot pull $image and there is no stand-in for it" >&2; exit 1; }
    log "cannot pull $image: using a local stand-in built from Debian $RELEASE (not the official image)"
    standin "$image" "$name"
  done
}

images() {
  log "docker build -f Dockerfile.api -t agentfleet-api:$TAG ."
  docker build -q -f Dockerfile.api -t "agentfleet-api:$TAG" . >/dev/null
  log "docker build -f Dockerfile.worker -t agentfleet-worker:$TAG ."
  docker build -q -f Dockerfile.worker -t "agentfleet-worker:$TAG" . >/dev/null
  docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^agentfleet-\(api\|worker\):' | sed 's/^/   /'
}

down() {
  if docker info >/dev/null 2>&1; then
    # The test stack's containers and volumes (tests/containers/ names its compose project so).
    local ids
    ids="$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
    docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker volume rm >/dev/null
    docker network ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker network rm >/dev/null
  fi
  if [ -s "$STATE/dockerd.pid" ]; then
    local pid
    pid="$(cat "$STATE/dockerd.pid")"
    log "stopping dockerd (pid $pid)"
    as_root kill "$pid" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    as_root rm -f "$STATE/dockerd.pid"
  fi
}

case "${1:-up}" in
  up)
    start=$SECONDS
    as_root mkdir -p "$STATE"
    engine_up
    bases
    images
    log "ready in $((SECONDS - start)) s"
    ;;
  down) down ;;
  *) echo "usage: $0 [up|down]" >&2; exit 2 ;;
esac
