#!/usr/bin/env bash
# The project's full check, as CI runs it: install what is missing, check formatting, lints
# and the wasm build, then run every test against one shared throwaway PostgreSQL cluster.
# Tests create their own fresh databases from $MJOLNIR_TEST_DATABASE_URL.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib/pg.sh
source scripts/lib/pg.sh

step() { printf '\n==> %s\n' "$*"; }

step "setup"
scripts/setup.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo check -p mjolnir-core --target wasm32-unknown-unknown"
cargo check -p mjolnir-core --target wasm32-unknown-unknown

step "PostgreSQL for the tests"
# The EXIT trap stops the cluster however the script ends; INT and TERM go through exit so
# that it runs for them too.
trap pg_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
target_dir=${CARGO_TARGET_DIR:-target}
# Two runs sharing one target dir would wipe each other's cluster: refuse the second.
mkdir -p "$target_dir"
exec 9>"$target_dir/test-pg.lock"
if ! flock -n 9; then
    echo "another test run is using $target_dir/test-pg" >&2
    exit 1
fi
pg_start "$target_dir/test-pg" 9>&- # the server must not inherit (and hold) the lock
export MJOLNIR_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
echo "MJOLNIR_TEST_DATABASE_URL=$MJOLNIR_TEST_DATABASE_URL"

step "cargo test --workspace"
cargo test --workspace

step "all checks passed"
