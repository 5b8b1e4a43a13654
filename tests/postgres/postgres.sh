#!/usr/bin/env bash
# A throwaway PostgreSQL server (loopback, trust auth) for the test suite.
#
#   tests/postgres/postgres.sh start <work-dir> <port>   init, start, print the admin URL
#   tests/postgres/postgres.sh stop <work-dir>
#   tests/postgres/postgres.sh resume <work-dir> <port>  start a stopped server again
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  echo "postgres.sh: no PostgreSQL server found (Debian package: postgresql)" >&2
  exit 1
fi

# PostgreSQL refuses to run as root: run it as the postgres account when we are root.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -A trust -U mlops >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2; exit 1; }
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null || {
    tail -n 30 "$dir/postgres.log" >&2; exit 1; }
  echo "postgres://mlops@127.0.0.1:$port/postgres"
}

resume() {
  local dir=$1 port=$2
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null || {
    tail -n 30 "$dir/postgres.log" >&2; exit 1; }
}

stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
}

case "${1:-}" in
  start) start "$2" "$3" ;;
  stop) stop "$2" ;;
  resume) resume "$2" "$3" ;;
  *) echo "usage: $0 start <dir> <port> | stop <dir> | resume <dir> <port>" >&2; exit 2 ;;
esac
