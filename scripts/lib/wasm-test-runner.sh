#!/usr/bin/env bash
# Cargo's runner for the wasm browser tests: wasm-bindgen-test-runner, with a workaround for
# a hang in its test server, and bounded in time.
#
# `wasm-pack test` makes cargo run the `wasm-bindgen-test-runner` beside the `wasm-bindgen`
# it finds on PATH. scripts/lib/wasm-bin/ holds this script under that name, beside a
# `wasm-bindgen` that runs the real one, so with that directory first on PATH wasm-pack runs
# this script:
#   PATH="$PWD/scripts/lib/wasm-bin:$PATH" wasm-pack test --headless --chrome mjolnir-wasm
# It runs the real runner: the first `wasm-bindgen-test-runner` on PATH that is not itself.
# It also works as cargo's runner on its own (CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER).
#
# The hang: Chromium commits the test page but one of the module scripts it imports never
# arrives, so the page never finishes loading. The cause is in the runner's HTTP server,
# tiny_http 0.12: each accepted connection occupies one pool thread for as long as the
# connection stays open. TaskPool::spawn queues a new connection when it counts an idle
# thread, but it also counts a thread that was already woken for an earlier connection and
# has not yet taken it. When Chromium opens several connections at once for the page's
# imports, one connection can be left in the queue while every thread waits on another of
# Chromium's keep-alive connections, which stay open for the whole run. In a hung run, one
# socket's request sat unread in the kernel and every pool thread was blocked reading
# another idle connection.
#
# A queued connection gets a thread as soon as any connection ends, and a new connection
# gets a new thread when no thread is idle. So while the runner runs, this script opens
# and closes an empty connection to its server every second: a new thread takes that
# connection, sees it close, and then takes the queued one. The runner listens on a port the
# kernel picks (127.0.0.1:0, its default when headless), which this script reads from `ss`.
# How often runs hung without this and with it is measured in docs/benchmarks.md,
# "Measurements behind the code".
#
# The bug itself is in tiny_http, outside this project. As a safety net, a run with no
# result after WASM_TEST_LIMIT seconds is stopped (a binary takes a few seconds when its
# page loads) and started again, up to WASM_TEST_ATTEMPTS runs in all. A failing test is
# never retried.
set -uo pipefail

limit=${WASM_TEST_LIMIT:-60}
attempts=${WASM_TEST_ATTEMPTS:-3}

# shellcheck source=scripts/lib/path.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/path.sh"
if ! real_runner=$(next_on_path wasm-bindgen-test-runner "${BASH_SOURCE[0]}"); then
    echo "wasm-test-runner: no wasm-bindgen-test-runner on PATH besides $0 (scripts/setup.sh installs it)" >&2
    exit 127
fi

# Opens and closes a connection to 127.0.0.1:$1.
poke() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The port process $1 listens on at 127.0.0.1, once it does.
port_of() {
    ss -Hltnp 2>/dev/null | sed -n "s/^.* 127\.0\.0\.1:\([0-9]*\) .*pid=$1,.*$/\1/p" | head -n 1
}

# chromedriver gives Chromium a new profile (about 20 MB) under TMPDIR and deletes it only on
# a clean quit, but the runner kills chromedriver: every run left its profile in /tmp. They
# go in a directory of this script's own, removed at the end.
scratch=$(mktemp -d)
export TMPDIR=$scratch

runner=""
trap 'if [[ -n "$runner" ]]; then kill "$runner" 2>/dev/null; fi; rm -rf "$scratch"' EXIT

for ((attempt = 1; attempt <= attempts; attempt++)); do
    "$real_runner" "$@" &
    runner=$!
    # A WASM_BINDGEN_TEST_ADDRESS given from outside names the port.
    port=${WASM_BINDGEN_TEST_ADDRESS:+${WASM_BINDGEN_TEST_ADDRESS##*:}}
    for ((tick = 1; tick <= limit * 4; tick++)); do
        sleep 0.25
        kill -0 "$runner" 2>/dev/null || break
        if ((tick % 4 == 0)); then # once a second
            [[ -n "$port" ]] || port=$(port_of "$runner")
            [[ -z "$port" ]] || poke "$port" || true
        fi
    done
    if kill -0 "$runner" 2>/dev/null; then
        echo "wasm-test-runner: no result after ${limit}s (attempt $attempt of $attempts)" >&2
        kill -TERM "$runner" 2>/dev/null
        for ((tick = 0; tick < 40; tick++)); do
            kill -0 "$runner" 2>/dev/null || break
            sleep 0.25
        done
        kill -KILL "$runner" 2>/dev/null
        wait "$runner" 2>/dev/null
        runner=""
        status=124
        continue
    fi
    wait "$runner"
    status=$?
    runner=""
    exit "$status"
done
exit "$status"
