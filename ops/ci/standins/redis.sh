# Stand-in for redis:7.2.7-bookworm (ops/ci/containers.sh, when no registry is reachable):
# Debian's redis-server (7.0), user redis with uid/gid 999 and an entrypoint that drops root, as
# in the official image.
set -eu
groupadd --system --gid 999 redis
useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools
rm -rf /var/lib/apt/lists/*
mkdir -p /data /usr/local/etc/redis
chown redis:redis /data
install -m 755 /standin/redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
