# Stand-in for postgres:16.6-bookworm (ops/ci/containers.sh, when no registry is reachable):
# Debian's PostgreSQL 15, user postgres with uid/gid 999, and an entrypoint that does what the
# official one does for the settings docker-compose.yml uses (POSTGRES_USER, POSTGRES_DB,
# POSTGRES_PASSWORD[_FILE]).
set -eu
groupadd --system --gid 999 postgres
useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15
rm -rf /var/lib/apt/lists/*
mkdir -p /var/lib/postgresql/data /var/run/postgresql
chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
install -m 755 /standin/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
