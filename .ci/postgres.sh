# A throwaway PostgreSQL server for the test suite. Source it from bash:
#
#     . .ci/postgres.sh && postgres_start
#
# It installs the Debian packages when no server binaries are found, runs the server (as the
# `postgres` system user when run as root, which PostgreSQL refuses) on 127.0.0.1 and a free port, from
# a data folder made by mktemp, with trust authentication for local connections only, creates
# the database labelfix_test and exports LABELFIX_TEST_POSTGRES_URL. postgres_stop stops the
# server and removes the folder; postgres_start installs it as an EXIT trap. fsync is off
# unless LABELFIX_PG_FSYNC=on (benchmarks).

postgres_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$found" ] || [ ! -x "$found/pg_ctl" ]; then
        return 1
    fi
    echo "$found"
}

postgres_install() {
    if postgres_bin >/dev/null; then
        return 0
    fi
    echo "postgres.sh: no PostgreSQL server found; installing the Debian packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
    # The package starts a cluster of its own; the tests use their own server, so stop it.
    if command -v pg_ctlcluster >/dev/null; then
        pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _rest; do
            pg_ctlcluster "$version" "$cluster" stop 2>/dev/null || true
        done
    fi
}

# PostgreSQL refuses to run as root: as root, run its programs as the postgres user.
postgres_as() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

postgres_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

postgres_start() {
    postgres_install
    local bin port
    bin=$(postgres_bin)
    port=$(postgres_free_port)
    LABELFIX_PG_DIR=$(mktemp -d -t labelfix-pg.XXXXXX)
    export LABELFIX_PG_DIR
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$LABELFIX_PG_DIR"
    fi
    trap postgres_stop EXIT
    postgres_as "$bin/initdb" -D "$LABELFIX_PG_DIR/data" -U postgres \
        --auth-local=trust --auth-host=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    # Sockets in the throwaway folder, not /var/run/postgresql: nothing else is touched, and
    # fsync off because the data is thrown away at exit (LABELFIX_PG_FSYNC=on for timings).
    postgres_as "$bin/pg_ctl" -D "$LABELFIX_PG_DIR/data" -w -t 60 \
        -l "$LABELFIX_PG_DIR/server.log" \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $LABELFIX_PG_DIR -c fsync=${LABELFIX_PG_FSYNC:-off} -c max_connections=200" \
        start >/dev/null
    postgres_as psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -q \
        -c "CREATE DATABASE labelfix_test" >/dev/null
    LABELFIX_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/labelfix_test"
    export LABELFIX_TEST_POSTGRES_URL
    echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') at $LABELFIX_TEST_POSTGRES_URL" >&2
}

postgres_stop() {
    if [ -n "${LABELFIX_PG_DIR:-}" ] && [ -d "$LABELFIX_PG_DIR" ]; then
        local bin
        bin=$(postgres_bin) || true
        if [ -n "$bin" ] && [ -f "$LABELFIX_PG_DIR/data/postmaster.pid" ]; then
            postgres_as "$bin/pg_ctl" -D "$LABELFIX_PG_DIR/data" -m immediate -w \
                stop >/dev/null 2>&1 || true
        fi
        rm -rf "$LABELFIX_PG_DIR"
    fi
    unset LABELFIX_PG_DIR
}
