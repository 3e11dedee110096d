# A Mjölnir server in the background, for the browser tests. Source this file, then:
#   server_start BIN APP_DIR DATABASE_URL LOG
#                 run `BIN dev --database-url DATABASE_URL --port P APP_DIR` on a free
#                 127.0.0.1 port, wait (at most 60 s) until /healthz answers; sets
#                 SERVER_PORT and SERVER_PID
#   server_stop   stop it (safe to call more than once, and when nothing was started)

# shellcheck source=port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"

SERVER_PID=""
SERVER_PORT=""

server_say() { printf 'server: %s\n' "$*"; }

# Seconds to wait for /healthz: the app's migrations run before the server listens.
SERVER_START_TIMEOUT=60

server_start() {
    local bin=$1 app_dir=$2 database_url=$3 log=$4
    local attempt port waited
    # A port that refuses connections now may be taken before the server binds it: the
    # server then exits at once, and another port is tried.
    for attempt in 1 2 3 4 5; do
        port=$(random_port)
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            continue # something listens there
        fi
        # The binary itself is the background job, so $! is the server's PID (no subshell).
        "$bin" dev --database-url "$database_url" --listen 127.0.0.1 --port "$port" "$app_dir" \
            >"$log" 2>&1 &
        SERVER_PID=$!
        for ((waited = 0; waited < SERVER_START_TIMEOUT * 4; waited++)); do
            if curl -fs "http://127.0.0.1:$port/healthz" >/dev/null; then
                SERVER_PORT=$port
                server_say "running on 127.0.0.1:$port (pid $SERVER_PID, log: $log)"
                return 0
            fi
            kill -0 "$SERVER_PID" 2>/dev/null || break # it exited
            sleep 0.25
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            server_say "no answer from /healthz after ${SERVER_START_TIMEOUT} s" >&2
            break
        fi
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        if ! grep -qi 'address already in use' "$log"; then
            break
        fi
    done
    server_say "could not start the server; last lines of $log:" >&2
    # Without the backtrace that RUST_BACKTRACE adds to anyhow's error, which would fill them.
    sed '/^Stack backtrace:/,$d' "$log" | tail -n 20 >&2 || true
    server_stop
    return 1
}

server_stop() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        server_say "stopping the server (pid $SERVER_PID)"
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        # It shuts down gracefully on SIGTERM; give it 10 s before forcing it.
        local waited
        for ((waited = 0; waited < 40; waited++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
