#!/usr/bin/env bash
# The project's full check, as CI runs it: install what is missing, check formatting, lints
# and the wasm build, then run every test against one shared throwaway PostgreSQL cluster
# (`mjolnir pg`, the one `mjolnir dev` runs). Tests create their own fresh databases from
# $MJOLNIR_TEST_DATABASE_URL.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/server.sh
source scripts/lib/server.sh

# setup.sh installs wasm-bindgen-cli and wasm-pack into the default cargo root.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo check -p mjolnir-core --target wasm32-unknown-unknown"
cargo check -p mjolnir-core --target wasm32-unknown-unknown

step "cargo clippy -p mjolnir-wasm --target wasm32-unknown-unknown --all-targets -- -D warnings"
cargo clippy -p mjolnir-wasm --target wasm32-unknown-unknown --all-targets -- -D warnings

step "node js/build.mjs (the npm package and the <script> drop-in)"
node js/build.mjs

step "PostgreSQL for the tests (mjolnir pg start --fresh)"
cargo build -p mjolnir-server --bin mjolnir
target_dir=${CARGO_TARGET_DIR:-target}
mjolnir=$(realpath "$target_dir/debug/mjolnir")
pg_dir=$target_dir/test-pg
# The EXIT trap stops the test server and then the cluster however the script ends; INT and
# TERM go through exit so that it runs for them too.
cleanup() {
    server_stop
    "$mjolnir" pg stop --remove-data "$pg_dir" || true # the log stays
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Two runs sharing one target dir would wipe each other's cluster: refuse the second.
exec 9>"$target_dir/test-pg.lock"
if ! flock -n 9; then
    echo "another test run is using $pg_dir" >&2
    exit 1
fi
# An empty cluster each run; PostgreSQL must not inherit (and hold) the lock. As root, when
# `postgres` cannot enter the target dir (under /root), it says where the cluster went.
MJOLNIR_TEST_DATABASE_URL=$("$mjolnir" pg start --fresh "$pg_dir" 9>&-)
export MJOLNIR_TEST_DATABASE_URL
echo "MJOLNIR_TEST_DATABASE_URL=$MJOLNIR_TEST_DATABASE_URL"

step "cargo test --workspace"
cargo test --workspace

step "the commit-path tests again with group commit off"
# Correctness must not depend on batching: the bank, the anomalies and the batch scenarios
# also pass when every commit is its own PostgreSQL transaction.
MJOLNIR_TEST_GROUP_COMMIT=off cargo test -p mjolnir-server --test bank --test anomalies --test group_commit

step "Mjölnir server for the browser tests"
# mjolnir-wasm's browser tests talk to a real server, serving mjolnir-wasm/tests/app on a
# fresh database of the test cluster. Its address is compiled into the tests
# (option_env!("MJOLNIR_TEST_WS_URL")), so a new port only rebuilds the test crates.
wasm_db=$("$mjolnir" pg start --database mjolnir_wasm_tests "$pg_dir" 9>&-)
server_start mjolnir "$target_dir/mjolnir-wasm-tests-server.log" \
    "$mjolnir" dev --database-url "$wasm_db" --listen 127.0.0.1 --port 0 mjolnir-wasm/tests/app \
    9>&- # nor may the server hold the lock
export MJOLNIR_TEST_WS_URL="ws://${SERVER_ADDR[mjolnir]}/ws"
echo "MJOLNIR_TEST_WS_URL=$MJOLNIR_TEST_WS_URL"

step "wasm-pack test --headless --chrome mjolnir-wasm (the browser runtime's tests)"
# wasm-pack builds the tests and runs `cargo test --target wasm32-unknown-unknown` with, as
# cargo's runner, the wasm-bindgen-test-runner beside the wasm-bindgen it finds on PATH (of
# Cargo.lock's version); the runner starts chromedriver, which starts Chromium headless with
# the flags in mjolnir-wasm/webdriver.json. scripts/lib/wasm-bin/, first on PATH, makes that
# runner scripts/lib/wasm-test-runner.sh, which works around a hang in the real runner's
# HTTP server and bounds each run in time. With --mode no-install and --chromedriver,
# wasm-pack fails rather than download anything. (Options go before the crate's path:
# wasm-pack hands whatever follows it to cargo.)
PATH="$PWD/scripts/lib/wasm-bin:$PATH" wasm-pack test --headless --chrome --mode no-install \
    --chromedriver "${CHROMEDRIVER:-$(command -v chromedriver || echo /usr/bin/chromedriver)}" mjolnir-wasm

step "end-to-end tests: the server, the runtime, the package and the examples (tests/, headless Chromium)"
# Each test file starts its own `mjolnir dev` on a fresh database of the test cluster and
# drives Chromium through playwright-core. One file at a time: they share two cores with
# PostgreSQL and the servers.
export MJOLNIR_BIN=$mjolnir
for file in tests/*.test.mjs; do
    echo "--- $file"
    timeout 600 node --test "$file" 9>&-
done

step "all checks passed"
