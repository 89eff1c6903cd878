#!/usr/bin/env bash
# Start (or reuse) a throw-away PostgreSQL server for the multi-worker tests and print
# its URL on stdout; everything else goes to stderr.
#
#   eval "$(bash .ci/postgres.sh)"   # exports PROTEGE_TEST_POSTGRES=postgresql+psycopg2://...
#
# The server comes from Debian's packages (installed here when missing), runs as the
# `postgres` user when this script runs as root (initdb refuses root), keeps its data
# and unix socket under $PROTEGE_PG_DIR (default /tmp/protege-pg) and listens on
# 127.0.0.1:$PROTEGE_PG_PORT (default 55432) with trust authentication: a test
# server, never one to keep data in. Running the script again reuses a running server.
set -euo pipefail

PGDIR=${PROTEGE_PG_DIR:-/tmp/protege-pg}
PORT=${PROTEGE_PG_PORT:-55432}
DB=protege_test
URL="postgresql+psycopg2://postgres@127.0.0.1:${PORT}/${DB}"

log() { echo "postgres.sh: $*" >&2; }

bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

BIN=$(bindir || true)
if [ -z "$BIN" ]; then
  log "installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BIN=$(bindir)
fi

# Run a server command as the cluster's owner: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
  log "reusing the server on port $PORT"
else
  mkdir -p "$PGDIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDIR"
  if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
    log "initdb in $PGDIR/data"
    as_owner "$BIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  # A server killed earlier leaves its pid file behind; pg_ctl handles a stale one.
  log "starting the server on 127.0.0.1:$PORT"
  as_owner "$BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 start \
    -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" \
    >/dev/null || { cat "$PGDIR/server.log" >&2; exit 1; }
fi

if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DB"
fi

echo "export PROTEGE_TEST_POSTGRES=$URL"
