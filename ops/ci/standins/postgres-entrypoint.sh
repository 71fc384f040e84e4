#!/bin/bash
# As the official image's, for the settings docker-compose.yml uses: POSTGRES_PASSWORD_FILE is
# read as root; a first start makes the cluster (POSTGRES_USER with that password, POSTGRES_DB),
# listening on every address with scram-sha-256; the server runs as the postgres user.
set -euo pipefail
if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
    export POSTGRES_PASSWORD
    unset POSTGRES_PASSWORD_FILE
  fi
  mkdir -p "$PGDATA"
  chown -R postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  password="${POSTGRES_PASSWORD:-}"
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then password="$(cat "$POSTGRES_PASSWORD_FILE")"; fi
  [ -n "$password" ] || { echo "postgres: no POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2; exit 1; }
  # UTF8 as the official image's cluster (LANG en_US.utf8 there): in a minimal Debian's C locale
  # initdb would pick SQL_ASCII, whose text psycopg hands over as bytes.
  initdb --username="$user" --pwfile=<(printf '%s\n' "$password") --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  db="${POSTGRES_DB:-$user}"
  if [ "$db" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "postgres: cluster made in $PGDATA (user $user, database $db)"
fi
unset POSTGRES_PASSWORD
exec "$@"
