# Servers in the background for the scripts. Each listens on port 0, so the kernel gives it
# a free port (nothing here picks one, or retries when another process took it first), and
# is found at the first http:// address it prints. Source this file, then:
#   server_start NAME LOG COMMAND...
#                 run COMMAND (it must listen on port 0 of 127.0.0.1 and print its http://
#                 address) with its output in LOG, and wait (at most 60 s) until it prints
#                 its address; sets SERVER_ADDR[NAME] (host:port) and SERVER_PID[NAME]
#   server_stop [NAME...]
#                 stop them (all when no NAME is given): SIGTERM, then SIGKILL after 10 s;
#                 safe to call more than once, and when nothing was started

declare -gA SERVER_PID=() SERVER_ADDR=()

server_say() { printf 'server: %s\n' "$*"; }

# Seconds to wait for the address: `mjolnir` applies the app's migrations before it listens.
SERVER_START_TIMEOUT=60

server_start() {
    local name=$1 log=$2 pid addr waited
    shift 2
    # The command itself is the background job, so $! is the server's PID (no subshell).
    "$@" >"$log" 2>&1 &
    pid=$!
    SERVER_PID[$name]=$pid
    for ((waited = 0; waited < SERVER_START_TIMEOUT * 10; waited++)); do
        addr=$(grep -o -m 1 'http://[^/[:space:]]*' "$log" 2>/dev/null | head -n 1) || true
        if [[ -n "$addr" ]]; then
            SERVER_ADDR[$name]=${addr#http://}
            server_say "$name running on ${SERVER_ADDR[$name]} (pid $pid, log: $log)"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break # it exited
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        server_say "$name printed no address in ${SERVER_START_TIMEOUT} s" >&2
    fi
    server_say "could not start $name; last lines of $log:" >&2
    # Without the backtrace that RUST_BACKTRACE adds to anyhow's error, which would fill them.
    sed '/^Stack backtrace:/,$d' "$log" | tail -n 20 >&2 || true
    server_stop "$name"
    return 1
}

server_stop() {
    local names=("$@") name pid waited
    if ((${#names[@]} == 0)); then
        names=("${!SERVER_PID[@]}")
    fi
    for name in "${names[@]}"; do
        pid=${SERVER_PID[$name]:-}
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            server_say "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            # It shuts down gracefully on SIGTERM; give it 10 s before forcing it.
            for ((waited = 0; waited < 40; waited++)); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.25
            done
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
        unset "SERVER_PID[$name]" "SERVER_ADDR[$name]"
    done
}
