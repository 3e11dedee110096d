#!/usr/bin/env bash
# The bank-transfer benchmark: pgbench (the database's ceiling), a hand-written axum + sqlx
# endpoint and Mjölnir, on one private PostgreSQL, interleaved over several rounds, with
# synchronous_commit on and then off; then queries (a query of 50 rows out of 1,000,000
# against pgbench, and commits that read a query against the same commits with point reads,
# see mjolnir-bench/src/queries.rs); then search (the 20 most relevant of 1,000,000 notes
# against pgbench running the same SELECT, mjolnir-bench/src/search.rs); then live queries
# (push latency to 1,000 connections, the CPU a commit pays for queries it does not touch,
# 400 users under row-level security, see mjolnir-bench/src/live.rs); then the browser
# runtime's client benchmark (js/bench/client.mjs) and what a user feels at a 100 ms round
# trip (js/bench/latency.mjs). Writes docs/benchmarks.md (see mjolnir-bench/).
#
#   scripts/bench.sh                 the full comparison (about 22 minutes on 2 cores, once built)
#   scripts/bench.sh --quick         a smoke check (about 8 minutes once built)
#   scripts/bench.sh --only queries  the queries section alone, written to its own document
#                                    (default: $CARGO_TARGET_DIR/benchmarks-queries.md)
#   scripts/bench.sh --only search   the search section alone, likewise
#                                    (default: $CARGO_TARGET_DIR/benchmarks-search.md)
#   scripts/bench.sh --only live     the live queries section alone, likewise
#                                    (default: $CARGO_TARGET_DIR/benchmarks-live.md)
#   options: --seconds N  --warmup N  --rounds N  --clients "1 8 32 64"  --out FILE
#            (--clients is the transfers'; queries and searches run at 1 and 8 clients, commits
#            also at 32)
#
# Everything it starts (PostgreSQL through `mjolnir pg`, on a unix socket only; the two
# servers on 127.0.0.1, each on a port the kernel picks) is stopped when it exits, and every
# measurement is bounded in time.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
COMMAND_STARTED=$(date +%s)
INVOKED="scripts/bench.sh${*:+ $*}"

MODE=full SECONDS_PER_RUN=2 WARMUP=0.5 ROUNDS=3 CLIENTS="1 8 32 64" OUT="" ONLY=""
QUERY_READ_CLIENTS="1 8" QUERY_COMMIT_CLIENTS="1 8 32"
# Live queries: fan-out commits measured, commits per round and number of untouched
# queries, commits under row-level security.
LIVE_COMMITS=500 LIVE_CPU_COMMITS=2000 LIVE_RLS_COMMITS=10
while (($#)); do
    case $1 in
    --quick)
        MODE=quick SECONDS_PER_RUN=1 ROUNDS=1 CLIENTS="1 32" QUERY_COMMIT_CLIENTS="1 8"
        LIVE_COMMITS=100 LIVE_CPU_COMMITS=500 LIVE_RLS_COMMITS=3
        ;;
    --only)
        [[ ${2:-} == queries || ${2:-} == search || ${2:-} == live ]] ||
            { echo "--only takes queries, search or live (see the top of $0)" >&2 && exit 2; }
        ONLY=$2 && shift
        ;;
    --seconds) SECONDS_PER_RUN=$2 && shift ;;
    --warmup) WARMUP=$2 && shift ;;
    --rounds) ROUNDS=$2 && shift ;;
    --clients) CLIENTS=$2 && shift ;;
    --out) OUT=$2 && shift ;;
    *) echo "unknown option $1 (see the top of $0)" >&2 && exit 2 ;;
    esac
    shift
done

say() { printf 'bench: %s\n' "$*"; }

# Each run is bounded: its warm-up and window (seconds, maybe fractional), plus a minute.
RUN_TIMEOUT=$(awk -v w="$WARMUP" -v s="$SECONDS_PER_RUN" 'BEGIN { printf "%d", w + s + 61 }')

# Everything the build needs (packages, the wasm target, pinned wasm-bindgen-cli, the npm
# packages of js/): a fresh clone runs this one command.
scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" # wasm-bindgen, installed by setup.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
# `--only queries` (or search, or live) writes a document of its own, not the transfers'
# report.
[[ -z "$OUT" && -n "$ONLY" ]] && OUT=$CARGO_TARGET_DIR/benchmarks-$ONLY.md
OUT=${OUT:-docs/benchmarks.md}
say "building (release) into $CARGO_TARGET_DIR"
cargo build --release -p mjolnir-server --bin mjolnir -p mjolnir-bench --bin mjolnir-bench
MJOLNIR=$CARGO_TARGET_DIR/release/mjolnir
BENCH=$CARGO_TARGET_DIR/release/mjolnir-bench

# The live queries benchmark holds 1,000 WebSocket connections, each a descriptor in the
# server and one in the load generator, which inherit this shell's limit.
if (($(ulimit -n) < 4096)); then
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    (($(ulimit -n) >= 4096)) || { say "open files: the limit is $(ulimit -n), and 1,000 connections need more" >&2 && exit 1; }
fi

WORK=$(mktemp -d /tmp/mjolnir-bench.XXXXXX)
# The cluster below belongs to `postgres` when root runs this, and stays in $WORK (to be
# removed with it) only if `postgres` can enter it.
chmod 755 "$WORK"
RESULTS=$WORK/results.jsonl

# shellcheck source=lib/server.sh
source scripts/lib/server.sh

cleanup() {
    local status=$?
    server_stop
    "$MJOLNIR" pg stop "$WORK/pg" || true
    # A failed run leaves what the servers and PostgreSQL said, since $WORK goes with it.
    if ((status != 0)); then
        local log
        for log in "$WORK"/*.log "$WORK/pg/log"; do
            [[ -f "$log" ]] || continue
            grep -E 'ERROR|DETAIL|CONTEXT|FATAL|PANIC' "$log" | tail -n 20 | sed "s|^|$(basename "$log"): |" >&2 || true
        done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DB_URL=$("$MJOLNIR" pg start --database bench "$WORK/pg")

psql_bench() { psql "$DB_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }
# The server's own programs (pgbench), and its data directory (postmaster.pid).
PG_BIN=$(psql_bench -At -c "SELECT setting FROM pg_config WHERE name = 'BINDIR'")
PG_DATA=$(psql_bench -At -c 'SHOW data_directory')

# Sets synchronous_commit for every session of the cluster, then (re)starts both servers so
# that every pooled connection is new and runs with it.
use_sync() {
    local mode=$1
    server_stop
    psql_bench -c "ALTER SYSTEM SET synchronous_commit = $mode" -c "SELECT pg_reload_conf()" >/dev/null
    # Mjölnir applies the benchmark's migration (mjolnir-bench/app/migrations) at start, so
    # it starts first: the endpoint and pgbench use its accounts table.
    RUST_LOG=warn server_start mjolnir "$WORK/mjolnir-$mode.log" \
        "$MJOLNIR" dev --database-url "$DB_URL" --listen 127.0.0.1 --port 0 mjolnir-bench/app
    server_start endpoint "$WORK/endpoint.log" \
        "$BENCH" endpoint --database-url "$DB_URL" --listen 127.0.0.1 --port 0
    say "synchronous_commit = $(psql_bench -At -c 'SHOW synchronous_commit')"
}

run_one() {
    local system=$1 workload=$2 clients=$3 sync=$4 round=$5 server_pid=""
    # The processes whose CPU time the run accounts for (see mjolnir-bench/src/cpu.rs).
    case $system in
        mjolnir | endpoint) server_pid=${SERVER_PID[$system]} ;;
    esac
    timeout --kill-after=5 "$RUN_TIMEOUT" \
        "$BENCH" run --system "$system" --workload "$workload" --clients "$clients" \
        --postgres-pid "$(head -n 1 "$PG_DATA/postmaster.pid")" ${server_pid:+--server-pid "$server_pid"} \
        --seconds "$SECONDS_PER_RUN" --warmup "$WARMUP" --sync "$sync" --round "$round" \
        --mjolnir-url "ws://${SERVER_ADDR[mjolnir]}/ws" \
        --endpoint-url "http://${SERVER_ADDR[endpoint]}" \
        --database-url "$DB_URL" --pgbench "$PG_BIN/pgbench" \
        --work-dir "$WORK" --out "$RESULTS"
}

# One run of `mjolnir-bench queries-run` (BENCH VARIANT CLIENTS ROUND) against the server
# NAME (started by server_start) serving the database DB_URL, appended to RESULTS.
queries_run() {
    local name=$1 db_url=$2 results=$3
    shift 3
    timeout --kill-after=5 "$RUN_TIMEOUT" \
        "$BENCH" queries-run --bench "$1" --variant "$2" --clients "$3" --round "$4" \
        --postgres-pid "$(head -n 1 "$PG_DATA/postmaster.pid")" --server-pid "${SERVER_PID[$name]}" \
        --seconds "$SECONDS_PER_RUN" --warmup "$WARMUP" \
        --mjolnir-url "ws://${SERVER_ADDR[$name]}/ws" \
        --database-url "$db_url" --pgbench "$PG_BIN/pgbench" \
        --work-dir "$WORK" --out "$results"
}

# The queries benchmark (mjolnir-bench/src/queries.rs): its own `mjolnir dev` on its own
# database of the same cluster (`mjolnir-bench/queries-app`, which seeds 1,000,000 items),
# reads against pgbench, then commits with and without a query read, interleaved in a
# rotating order over the rounds. Appends its sections to $OUT, or with `--only queries`
# writes them as a document of their own.
queries_section() {
    local started load_before load_after qdb_url results=$WORK/queries.jsonl bench clients i
    say "queries: seeding 1,000,000 items (the app's migration)"
    qdb_url=$("$MJOLNIR" pg start --database queries "$WORK/pg")
    RUST_LOG=warn server_start queries "$WORK/queries.log" \
        "$MJOLNIR" dev --database-url "$qdb_url" --listen 127.0.0.1 --port 0 mjolnir-bench/queries-app
    # Hint bits, the visibility map and statistics, so the first run pays for none of them,
    # and a checkpoint, so that the seeding's is not under way while the commits fsync.
    psql "$qdb_url" -X -q -v ON_ERROR_STOP=1 -c 'VACUUM ANALYZE' -c 'CHECKPOINT'
    local reads=(pgbench query50) commits=(points query2 keys50 query50)
    started=$(date +%s)
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for ((round = 1; round <= ROUNDS; round++)); do
        for clients in $QUERY_READ_CLIENTS; do
            for ((i = 0; i < ${#reads[@]}; i++)); do
                queries_run queries "$qdb_url" "$results" read "${reads[(i + round - 1) % ${#reads[@]}]}" "$clients" "$round"
            done
        done
        for bench in room accounts; do
            for clients in $QUERY_COMMIT_CLIENTS; do
                for ((i = 0; i < ${#commits[@]}; i++)); do
                    queries_run queries "$qdb_url" "$results" "$bench" "${commits[(i + round - 1) % ${#commits[@]}]}" "$clients" "$round"
                done
            done
        done
    done
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    server_stop queries
    say "queries: measured in $(($(date +%s) - started)) s"
    # Every transaction moved one unit between two rows: the totals stand.
    local totals
    totals=$(psql "$qdb_url" -X -At -c "SELECT (SELECT sum(qty) FROM items) || ' ' || (SELECT sum(balance) FROM accounts)")
    if [[ "$totals" != "1000000000000 1000000000" ]]; then
        say "queries: items and accounts hold $totals instead of 1000000000000 1000000000" >&2
        exit 1
    fi
    local environment="Mode: **$MODE** ($ROUNDS round(s), ${SECONDS_PER_RUN} s measured after ${WARMUP} s of warm-up per run; \
reads at ${QUERY_READ_CLIENTS// /, } clients, commits at ${QUERY_COMMIT_CLIENTS// /, }). Run on $(date -u '+%Y-%m-%d %H:%M UTC'), \
$(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $("$PG_BIN/postgres" --version), the \
cluster of the transfers (shared_buffers $(psql_bench -At -c 'SHOW shared_buffers'): the items, their index and their \
versions, $(psql "$qdb_url" -X -At -c "SELECT pg_size_pretty(pg_database_size(current_database()))") in all, do not fit, \
and are read from the kernel's cache); the server's pool: 16 connections (load average before: $load_before, after: $load_after)."
    if [[ -n "$ONLY" ]]; then
        "$BENCH" queries-report --results "$results" --out "$OUT" --command "$INVOKED" --environment "$environment"
    else
        "$BENCH" queries-report --results "$results" --out "$OUT" --append --environment "$environment"
    fi
}

# The search benchmark (mjolnir-bench/src/search.rs): its own `mjolnir dev` on its own
# database of the same cluster (`mjolnir-bench/search-app`, which seeds 1,000,000 notes and
# their GIN index), searches through Mjölnir against pgbench, interleaved in a rotating
# order over the rounds. Appends its section to $OUT (under the queries' heading), or with
# `--only search` writes it as a document of its own.
search_section() {
    local started load_before load_after sdb_url results=$WORK/search.jsonl clients i
    say "search: seeding 1,000,000 notes and their GIN index (the app's migration)"
    sdb_url=$("$MJOLNIR" pg start --database search "$WORK/pg")
    # The seeding takes about a minute on 2 busy cores, more than server_start waits by default.
    SERVER_START_TIMEOUT=600 RUST_LOG=warn server_start search "$WORK/search.log" \
        "$MJOLNIR" dev --database-url "$sdb_url" --listen 127.0.0.1 --port 0 mjolnir-bench/search-app
    psql "$sdb_url" -X -q -v ON_ERROR_STOP=1 -c 'VACUUM ANALYZE' -c 'CHECKPOINT'
    local variants=(pgbench search20)
    started=$(date +%s)
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    for ((round = 1; round <= ROUNDS; round++)); do
        for clients in $QUERY_READ_CLIENTS; do
            for ((i = 0; i < ${#variants[@]}; i++)); do
                queries_run search "$sdb_url" "$results" search "${variants[(i + round - 1) % ${#variants[@]}]}" "$clients" "$round"
            done
        done
    done
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    server_stop search
    say "search: measured in $(($(date +%s) - started)) s"
    local environment="Mode: **$MODE** ($ROUNDS round(s), ${SECONDS_PER_RUN} s measured after ${WARMUP} s of warm-up per run; \
${QUERY_READ_CLIENTS// /, } clients). Run on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores \
($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $("$PG_BIN/postgres" --version), the cluster of the \
transfers (shared_buffers $(psql_bench -At -c 'SHOW shared_buffers'); the notes, their index and their versions: \
$(psql "$sdb_url" -X -At -c "SELECT pg_size_pretty(pg_database_size(current_database()))") in all); the server's pool: 16 \
connections (load average before: $load_before, after: $load_after)."
    if [[ -n "$ONLY" ]]; then
        "$BENCH" queries-report --section search --results "$results" --out "$OUT" --command "$INVOKED" --environment "$environment"
    else
        "$BENCH" queries-report --section search --results "$results" --out "$OUT" --append --environment "$environment"
    fi
}

# The live queries benchmark (mjolnir-bench/src/live.rs): its own `mjolnir dev` on its own
# database of the same cluster (`mjolnir-bench/live-app`); one `live-run` does the three
# parts (fan-out, untouched queries in interleaved rounds, row-level security). Appends its
# section to $OUT, or with `--only live` writes it as a document of its own.
live_section() {
    local started load_before load_after ldb_url results=$WORK/live.jsonl
    say "live queries: seeding 240,000 items (the app's migration)"
    ldb_url=$("$MJOLNIR" pg start --database live "$WORK/pg")
    RUST_LOG=warn server_start live "$WORK/live.log" \
        "$MJOLNIR" dev --database-url "$ldb_url" --listen 127.0.0.1 --port 0 mjolnir-bench/live-app
    psql "$ldb_url" -X -q -v ON_ERROR_STOP=1 -c 'VACUUM ANALYZE' -c 'CHECKPOINT'
    started=$(date +%s)
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    timeout --kill-after=5 1800 \
        "$BENCH" live-run --rounds "$ROUNDS" --commits "$LIVE_COMMITS" \
        --cpu-commits "$LIVE_CPU_COMMITS" --rls-commits "$LIVE_RLS_COMMITS" \
        --postgres-pid "$(head -n 1 "$PG_DATA/postmaster.pid")" --server-pid "${SERVER_PID[live]}" \
        --mjolnir-url "ws://${SERVER_ADDR[live]}/ws" --out "$results"
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    server_stop live
    say "live queries: measured in $(($(date +%s) - started)) s"
    local environment="Mode: **$MODE** ($ROUNDS round(s) of the untouched queries, $LIVE_CPU_COMMITS commits each; \
$LIVE_COMMITS fan-out commits; $LIVE_RLS_COMMITS commits under row-level security). Run on $(date -u '+%Y-%m-%d %H:%M UTC'), \
$(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $("$PG_BIN/postgres" --version), the \
cluster of the transfers, \`synchronous_commit = on\`; the server's pool: 16 connections, the feed's reads at once: 8; \
server, PostgreSQL and load generator share the cores (load average before: $load_before, after: $load_after)."
    if [[ -n "$ONLY" ]]; then
        "$BENCH" live-report --results "$results" --out "$OUT" --command "$INVOKED" --environment "$environment"
    else
        "$BENCH" live-report --results "$results" --out "$OUT" --append --environment "$environment"
    fi
}

if [[ -n "$ONLY" ]]; then
    "${ONLY}_section"
    elapsed=$(($(date +%s) - COMMAND_STARTED))
    printf '\nThe whole command, building included, took %d min %02d s.\n' $((elapsed / 60)) $((elapsed % 60)) >>"$OUT"
    say "wrote $OUT in $((elapsed / 60)) min $((elapsed % 60)) s"
    exit 0
fi

SYSTEMS=(pgbench endpoint mjolnir)
started=$(date +%s)
# Nothing else is stopped: the load average tells the reader whether the machine was shared.
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for sync in on off; do
    use_sync "$sync"
    for ((round = 1; round <= ROUNDS; round++)); do
        for workload in uniform hot; do
            for clients in $CLIENTS; do
                # Rotate the order each round, so no system always runs right after another.
                for ((i = 0; i < ${#SYSTEMS[@]}; i++)); do
                    run_one "${SYSTEMS[(i + round - 1) % ${#SYSTEMS[@]}]}" "$workload" "$clients" "$sync" "$round"
                done
            done
        done
    done
    curl -fs "http://${SERVER_ADDR[mjolnir]}/metrics" >"$WORK/metrics-$sync.txt" || true
done
psql_bench -c "ALTER SYSTEM RESET synchronous_commit" -c "SELECT pg_reload_conf()" >/dev/null
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
say "measured in $(($(date +%s) - started)) s"

# The money is conserved whatever the systems did: a cheap check that they really transferred.
total=$(psql_bench -At -c 'SELECT sum(balance) FROM accounts')
if [[ "$total" != 1000000000 ]]; then
    say "the accounts hold $total instead of 1000000000" >&2
    exit 1
fi

environment="Mode: **$MODE** ($ROUNDS round(s), ${SECONDS_PER_RUN} s measured after ${WARMUP} s of warm-up per run; \
clients: ${CLIENTS// /, }). Run on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores \
($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $("$PG_BIN/postgres" --version), \
one private cluster (\`mjolnir pg\`: default settings, max_connections 300, fsync on; every client on its unix socket). \
Mjölnir and the endpoint each use a pool of 16 database connections; all processes share the machine \
(load average before: $load_before, after: $load_after)."
"$BENCH" report --results "$RESULTS" --out "$OUT" --command "$INVOKED" --environment "$environment"

# The server's memory: 1,000 idle connections, then 100,000 subscribed keys between them,
# on the Mjölnir server still running from the last setting.
say "server memory"
"$BENCH" memory --mjolnir-url "ws://${SERVER_ADDR[mjolnir]}/ws" --pid "${SERVER_PID[mjolnir]}" --out "$OUT" |
    sed 's/^/  /'
server_stop mjolnir endpoint

queries_section
search_section
live_section

# The client half: the browser runtime in headless Chromium (js/bench/client.mjs), served
# by the same release server; its section is appended to the same document.
say "client benchmark (headless Chromium)"
node js/build.mjs >"$WORK/js-build.log" 2>&1 ||
    { tail -n 20 "$WORK/js-build.log" >&2 && exit 1; }
client_args=()
[[ $MODE == quick ]] && client_args=(--quick)
MJOLNIR_BIN=$MJOLNIR timeout 1500 node js/bench/client.mjs "${client_args[@]}" | sed 's/^/  /'
{ echo && cat js/bench/client-results.md; } >>"$OUT"

# A user far from the server: the counter through a proxy adding 50 ms each way, measured in
# the page (js/bench/latency.mjs), on the same release server.
say "latency benchmark (headless Chromium, 100 ms round trip)"
MJOLNIR_BIN=$MJOLNIR timeout 900 node js/bench/latency.mjs "${client_args[@]}" | sed 's/^/  /'
{ echo && cat js/bench/latency-results.md; } >>"$OUT"
# Figures behind code decisions, measured once and kept as written.
{ echo && cat mjolnir-bench/measurements.md; } >>"$OUT"
elapsed=$(($(date +%s) - COMMAND_STARTED))
printf '\nThe whole command, building included, took %d min %02d s.\n' $((elapsed / 60)) $((elapsed % 60)) >>"$OUT"
say "wrote $OUT in $((elapsed / 60)) min $((elapsed % 60)) s"
