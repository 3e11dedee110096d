#!/usr/bin/env bash
# Cargo's runner for the wasm browser tests: wasm-bindgen-test-runner, with a workaround for
# a hang in its test server, and bounded in time.
#
# The hang (about 1 run in 4 on a busy 2-core machine): Chromium commits the test page but
# one of the module scripts it imports never arrives, so the page never finishes loading.
# The cause is in the runner's HTTP server, tiny_http 0.12: each accepted connection
# occupies one pool thread for as long as the connection stays open. TaskPool::spawn queues
# a new connection when it counts an idle thread, but it also counts a thread that was
# already woken for an earlier connection and has not yet taken it. When Chromium opens
# several connections at once for the page's imports, one connection can be left in the
# queue while every thread waits on another of Chromium's keep-alive connections, which
# stay open for the whole run. In a hung run, one socket's request sat unread in the kernel
# and every pool thread was blocked reading another idle connection.
#
# A queued connection gets a thread as soon as any connection ends, and a new connection
# gets a new thread when no thread is idle. So while the runner runs, this script opens
# and closes an empty connection to its server every second: a new thread takes that
# connection, sees it close, and then takes the queued one. That is why this script chooses
# the server's address (WASM_BINDGEN_TEST_ADDRESS). Measured on tests/dom.rs on a busy
# 2-core machine: 16 of 80 runs hung without this workaround and 0 of 80 with it. In 25
# more runs with it, two module requests stalled and got their answers after 0.8 s and 1.0 s.
#
# The bug itself is in tiny_http, outside this project. As a safety net, a run with no
# result after WASM_TEST_LIMIT seconds is stopped (a binary takes a few seconds when its
# page loads) and started again, up to WASM_TEST_ATTEMPTS runs in all. A failing test is
# never retried.
set -uo pipefail
# shellcheck source=port.sh
source "$(dirname "${BASH_SOURCE[0]}")/port.sh"

limit=${WASM_TEST_LIMIT:-60}
attempts=${WASM_TEST_ATTEMPTS:-3}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Opens and closes a connection to 127.0.0.1:$1 every second while this script runs.
kick() {
    while kill -0 "$$" 2>/dev/null && sleep 1; do
        listening "$1" || true
    done
}

# chromedriver gives Chromium a new profile (about 20 MB) under TMPDIR and deletes it only on
# a clean quit, but the runner kills chromedriver: every run left its profile in /tmp. They
# go in a directory of this script's own, removed at the end.
scratch=$(mktemp -d)
export TMPDIR=$scratch

kicker=""
trap 'if [[ -n "$kicker" ]]; then kill "$kicker" 2>/dev/null; fi; rm -rf "$scratch"' EXIT

taken=0
for ((attempt = 1; attempt <= attempts; attempt++)); do
    if [[ -n "${WASM_BINDGEN_TEST_ADDRESS:-}" ]]; then
        port=${WASM_BINDGEN_TEST_ADDRESS##*:}
    else
        # This port could be taken before the runner binds it; that case is tried again below.
        port=$(random_port)
        while listening "$port"; do port=$(random_port); done
    fi
    kick "$port" &
    kicker=$!
    WASM_BINDGEN_TEST_ADDRESS=${WASM_BINDGEN_TEST_ADDRESS:-127.0.0.1:$port} \
        timeout --kill-after=10 "$limit" wasm-bindgen-test-runner "$@"
    status=$?
    kill "$kicker" 2>/dev/null
    wait "$kicker" 2>/dev/null
    kicker=""
    if ((status == 124 || status == 137)); then
        echo "wasm-test-runner: no result after ${limit}s (attempt $attempt of $attempts)" >&2
    elif ((status != 0 && taken < 5)) && [[ -z "${WASM_BINDGEN_TEST_ADDRESS:-}" ]] && listening "$port"; then
        # The runner has exited, so whatever listens on the port now took it first.
        echo "wasm-test-runner: port $port was taken; trying another one" >&2
        ((taken++, attempt--))
    else
        exit "$status"
    fi
done
exit "$status"
