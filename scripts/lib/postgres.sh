# Starts a throw-away Postgres on loopback for the tests and exports DATABASE_URL.
# Sourced by scripts/test. Postgres refuses to run as root, so it runs as the `postgres` user.

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && { echo "$d"; return; }; done
  dirname "$(command -v initdb)"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

postgres_start() {
  if [ -n "${DATABASE_URL:-}" ]; then
    echo "using DATABASE_URL from the environment"
    return 0
  fi
  local bin user=()
  bin=$(pg_bin)
  PG_DIR=$(mktemp -d /tmp/starling-pg.XXXXXX)
  PG_PORT=$(free_port)
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_DIR"
    user=(runuser -u postgres --)
  fi
  "${user[@]}" "$bin/initdb" -D "$PG_DIR/data" -U starling --auth=trust -E UTF8 >"$PG_DIR/initdb.log" 2>&1
  "${user[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=300 -c fsync=off" start >/dev/null
  export DATABASE_URL="postgres://starling@127.0.0.1:$PG_PORT/postgres"
  export PG_BIN="$bin" PG_DIR PG_PORT
  echo "postgres on 127.0.0.1:$PG_PORT"
}

postgres_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  local user=()
  [ "$(id -u)" -eq 0 ] && user=(runuser -u postgres --)
  "${user[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=
}
