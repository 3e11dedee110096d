#!/usr/bin/env bash
# Cargo's runner for the wasm browser tests: wasm-bindgen-test-runner, bounded in time.
# Seen here once: headless Chromium started but never loaded the test page, and the runner
# waited forever. A run that hangs like that is stopped after WASM_TEST_LIMIT seconds and
# tried once more; a test that fails is not retried.
set -uo pipefail

limit=${WASM_TEST_LIMIT:-180}
for attempt in 1 2; do
    timeout --kill-after=10 "$limit" wasm-bindgen-test-runner "$@"
    status=$?
    if ((status != 124 && status != 137)); then
        exit "$status"
    fi
    echo "wasm-test-runner: no result after ${limit}s (attempt $attempt of 2)" >&2
done
exit "$status"
