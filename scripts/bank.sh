#!/usr/bin/env bash
# The README's first command: install what is missing, build Mjölnir and run the paper's
# bank example with its own private PostgreSQL (under examples/bank/.mjolnir/).
# Extra arguments go to `mjolnir dev`, e.g. `scripts/bank.sh --port 9000`. Ctrl-C stops
# the server and its PostgreSQL; the next run reuses the database.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" # wasm-bindgen, installed by setup.sh
node js/build.mjs # the browser client, served at /_mjolnir/ from js/dist
cargo build --release -p mjolnir-server --bin mjolnir
exec "${CARGO_TARGET_DIR:-target}/release/mjolnir" dev examples/bank "$@"
