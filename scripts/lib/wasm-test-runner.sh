#!/usr/bin/env bash
# Cargo's runner for the wasm browser tests: wasm-bindgen-test-runner, bounded in time.
# Seen here now and then (2 of 3 CI runs on one busy day, each time a different test
# binary; on a later day twice in one run): headless Chromium starts but never loads the
# test page, and the runner waits forever. A run that hangs like that is stopped after WASM_TEST_LIMIT seconds (every
# binary finishes in a few seconds when the page loads) and tried again, at most
# WASM_TEST_ATTEMPTS times in all; a test that fails is never retried.
set -uo pipefail

# At about one hang in four attempts, 3 attempts left a CI run a few percent likely to fail
# on no test at all; 5 shorter ones make it about one in a thousand for each binary, at the
# cost of at most 5 minutes a binary.
limit=${WASM_TEST_LIMIT:-60}
attempts=${WASM_TEST_ATTEMPTS:-5}
for ((attempt = 1; attempt <= attempts; attempt++)); do
    timeout --kill-after=10 "$limit" wasm-bindgen-test-runner "$@"
    status=$?
    if ((status != 124 && status != 137)); then
        exit "$status"
    fi
    echo "wasm-test-runner: no result after ${limit}s (attempt $attempt of $attempts)" >&2
done
exit "$status"
