# Throwaway PostgreSQL cluster for the test suite. Source this file, then:
#   pg_start DIR   initdb a fresh cluster in DIR, start it on a free 127.0.0.1 port, set PG_PORT
#   pg_stop        stop it (safe to call more than once, and when nothing was started)
#   pg_create_database NAME
#                  (re)create the empty database NAME in that cluster
# The Rust tests use mjolnir_server::vstack instead; this stays in bash so test.sh needs no build.

# shellcheck source=port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"

PG_DIR=""
PG_PORT=""
PG_BIN=""

pg_say() { printf 'pg: %s\n' "$*"; }

# The server refuses to run as root, so root runs its programs as `postgres`.
pg_as_owner() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# pg_config when it points at a server install, else the newest /usr/lib/postgresql/*/bin.
pg_find_bin() {
    local dir
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [[ ! -x "$dir/initdb" ]]; then
        dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
    fi
    if [[ ! -x "$dir/initdb" || ! -x "$dir/pg_ctl" || ! -x "$dir/postgres" ]]; then
        pg_say "PostgreSQL server binaries not found: install them with \`apt-get install postgresql\` (Debian/Ubuntu)" >&2
        return 1
    fi
    PG_BIN=$dir
}

# Stops whatever a killed earlier run left running on DIR, so its data can be wiped.
pg_stop_leftover() {
    local dir=$1
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        pg_say "stopping a server left running in $dir"
        pg_as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}

pg_start() {
    local dir
    dir=$(realpath -m "$1")
    pg_find_bin

    # As root the cluster belongs to `postgres`, which must be able to reach it; a target dir
    # under a private home (/root is 0700) is not, so fall back to a private dir in /tmp.
    mkdir -p "$(dirname "$dir")"
    if ((EUID == 0)) && ! runuser -u postgres -- test -x "$(dirname "$dir")"; then
        pg_say "postgres cannot reach $(dirname "$dir"); using a directory in /tmp instead"
        dir=$(mktemp -d /tmp/mjolnir-test-pg.XXXXXX)
    fi

    pg_stop_leftover "$dir"
    rm -rf "$dir"
    mkdir -p "$dir/run"
    if ((EUID == 0)); then
        chown -R postgres:postgres "$dir"
    fi
    PG_DIR=$dir

    pg_say "initdb in $dir"
    # --no-sync: the cluster is rebuilt on every run, so a crash cannot lose anything.
    pg_as_owner "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        return 1
    }

    # A port that refuses connections now may be taken before postgres binds it: retry then.
    local attempt port
    for attempt in 1 2 3 4 5; do
        port=$(random_port)
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue # something listens there
        fi
        # max_connections: tests run in parallel, each with its own pool.
        if pg_as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 -s \
            -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories='$dir/run' -c max_connections=300" \
            start; then
            PG_PORT=$port
            pg_say "server running on 127.0.0.1:$port (log: $dir/log)"
            return 0
        fi
        if ! tail -n 20 "$dir/log" | grep -q 'Address already in use'; then
            break
        fi
    done
    pg_say "could not start the server; last lines of $dir/log:" >&2
    tail -n 20 "$dir/log" >&2 || true
    return 1
}

pg_stop() {
    if [[ -n "$PG_DIR" && -f "$PG_DIR/data/postmaster.pid" ]]; then
        pg_say "stopping the server in $PG_DIR"
        pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w -s stop ||
            pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w -s stop || true
    fi
    # A fallback dir in /tmp is ours alone; one under the target dir is kept for its log.
    if [[ "$PG_DIR" == /tmp/mjolnir-test-pg.* ]]; then
        rm -rf "$PG_DIR"
    fi
    PG_DIR=""
}

# Drops NAME if a previous use left it, and creates it empty. Over TCP as `postgres`, which
# the cluster trusts (initdb -A trust).
pg_create_database() {
    local name=$1
    pg_say "creating the database $name"
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" \
        -c "CREATE DATABASE \"$name\""
}
