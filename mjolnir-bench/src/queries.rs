//! The queries benchmark (issue 15): reading a query of 50 rows out of 1,000,000, against
//! pgbench running the same `SELECT`; and commits whose read set holds a query, against
//! the same commits with point reads only. Its search, run through the same `queries-run`,
//! is in `search.rs`.
//!
//! The data is `queries-app/migrations/0001_items.sql`: 1,000,000 items in 20,000 rooms of
//! exactly 50 (item `id` is in room `(id - 1) % 20000 + 1`), an index on `(room, n)`, a
//! version for every item in `mjolnir.versions`, and 1,000 accounts. `scripts/bench.sh`
//! serves it with its own `mjolnir dev`, on a database of its own in the same cluster.
//!
//! Mjölnir is driven through the native client's raw API (`Client::read`,
//! `Client::commit_new`, `Client::commit_queries`), since `Client::run`'s transactions do
//! not read queries: each operation reads what it needs in one round trip, commits (for the
//! commits), and then unsubscribes from everything it read, so that subscriptions do not
//! pile up over a run (the transfers' `cache_capacity: 0` does the same). A conflict reads
//! everything again after a back-off and tries again.

use crate::cpu;
use crate::driver::{self, Job, Outcome, Window};
use crate::search::{self, SearchWorker};
use crate::stats::RunResult;
use crate::systems::pgbench::Pgbench;
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use mjolnir_client::{Client, CommitOutcome};
use mjolnir_core::{ClientMessage, Key, Op, Query, QueryRead, ReadSet, WriteOp, WriteSet};
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// Items in the table.
pub const ITEMS: i32 = 1_000_000;
/// Rooms: each holds `ITEMS / ROOMS` items.
pub const ROOMS: i32 = 20_000;
/// Items per room, which is what the room query returns.
pub const ROOM_SIZE: i32 = ITEMS / ROOMS;
/// Accounts (`queries-app` seeds 1,000, with 1,000,000 each).
pub const ACCOUNTS: i32 = 1000;
/// Conflicting attempts after which a transaction gives up.
const MAX_ATTEMPTS: u64 = 1000;

/// What is measured.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Bench {
    /// Reading one room's items, 50 rows in `n` order, with their versions.
    Read,
    /// Moving one unit of `qty` from one item of a room to another: the commit writes the
    /// table its query reads.
    Room,
    /// Moving one unit between two accounts, having read a room's items: the commit's
    /// query reads a table nobody writes.
    Accounts,
    /// Searching 1,000,000 short notes for one or two words: the 20 most relevant, with
    /// their versions (`search.rs`).
    Search,
}

impl Bench {
    pub fn name(self) -> &'static str {
        match self {
            Bench::Read => "read",
            Bench::Room => "room",
            Bench::Accounts => "accounts",
            Bench::Search => "search",
        }
    }
}

/// How it is done.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// pgbench running the same `SELECT` as a prepared statement (reads only).
    Pgbench,
    /// Mjölnir, reading the two rows the commit writes by key (commits only).
    Points,
    /// Mjölnir, reading a query of two rows, `items where room = R order by n limit 2`
    /// (commits only): in *room*, the two rows it writes; in *accounts*, besides them.
    Query2,
    /// Mjölnir, reading the room's 50 items by key (commits only): the rows of the room
    /// query, without the query.
    Keys50,
    /// Mjölnir, reading the room query, `items where room = R order by n limit 50`.
    Query50,
    /// Mjölnir, reading a search, `notes.search(body, W).limit(20)` (search only).
    Search20,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Pgbench => "pgbench",
            Variant::Points => "points",
            Variant::Query2 => "query2",
            Variant::Keys50 => "keys50",
            Variant::Query50 => "query50",
            Variant::Search20 => "search20",
        }
    }

    /// The query this variant reads, of room `room`, if any.
    fn query(self, room: i32) -> Option<Query> {
        match self {
            Variant::Query2 => Some(room_query(room, 2)),
            Variant::Query50 => Some(room_query(room, ROOM_SIZE.unsigned_abs())),
            _ => None,
        }
    }
}

/// Which run this was.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueryLabel {
    pub bench: Bench,
    pub variant: Variant,
    pub clients: u32,
    pub round: u32,
}

/// `items where room = R order by n limit L`: a room's first `limit` items.
pub fn room_query(room: i32, limit: u32) -> Query {
    Query::table("items")
        .filter("room", Op::Eq, json!(room))
        .order_by("n", false)
        .limit(limit)
}

/// The `k`-th item of `room` (`k` from 0 to 49), by id.
pub fn item_id(room: i32, k: i32) -> i32 {
    room + ROOMS * k
}

fn item(id: i64) -> Key {
    Key::row("items", id)
}

fn account(id: i32) -> Key {
    Key::row("accounts", i64::from(id))
}

/// The room query as pgbench runs it: the same rows, in the same order, each with its
/// version looked up as Mjölnir does (one index lookup in `mjolnir.versions` per row), as
/// columns rather than JSON.
pub fn pgbench_script() -> String {
    format!(
        "\\set r random(1, {ROOMS})\n\
         SELECT i.id, i.room, i.n, i.qty, i.body,\n\
         \x20      coalesce((SELECT v.version FROM mjolnir.versions v\n\
         \x20                 WHERE v.space = 'items' AND v.pk = i.id::text), 0) AS version\n\
         FROM items i WHERE i.room = :r ORDER BY i.n, i.id LIMIT {ROOM_SIZE};\n"
    )
}

/// One simulated client of Mjölnir: one connection.
#[derive(Debug)]
pub struct QueryWorker {
    client: Client,
    bench: Bench,
    variant: Variant,
}

impl QueryWorker {
    pub async fn connect_all(
        url: &str,
        clients: u32,
        bench: Bench,
        variant: Variant,
    ) -> anyhow::Result<Vec<QueryWorker>> {
        anyhow::ensure!(
            variant != Variant::Pgbench,
            "pgbench is not driven through Mjölnir"
        );
        anyhow::ensure!(
            bench != Bench::Read || variant == Variant::Query50,
            "a read of Mjölnir reads the query"
        );
        let mut workers = Vec::new();
        for _ in 0..clients {
            let client = Client::connect(url, None)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            workers.push(QueryWorker {
                client,
                bench,
                variant,
            });
        }
        Ok(workers)
    }

    /// Ends the subscriptions a read made (no reply comes).
    async fn unsubscribe(&self, keys: Vec<Key>) -> anyhow::Result<()> {
        let msg = ClientMessage::Unsubscribe { keys };
        self.client.send_raw(msg.to_json()).await?;
        Ok(())
    }

    async fn read(&mut self, room: i32) -> anyhow::Result<Outcome> {
        let query = room_query(room, ROOM_SIZE.unsigned_abs());
        let entries = self.client.read(vec![Key::query(query)]).await?;
        anyhow::ensure!(
            entries.len() == 1 + ROOM_SIZE.unsigned_abs() as usize,
            "room {room} gave {} entries",
            entries.len()
        );
        self.unsubscribe(entries.into_iter().map(|e| e.key).collect())
            .await?;
        Ok(Outcome::Done { attempts: 1 })
    }

    /// One transfer-like transaction: read, move one unit if there is one, commit; again
    /// on a conflict, after a back-off.
    async fn transfer(&mut self, pick: Pick, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        let query = self.variant.query(pick.room);
        // What is read, besides the query.
        let mut keys: Vec<Key> = Vec::new();
        match (self.bench, self.variant) {
            (Bench::Room, Variant::Points) => {
                keys.push(item(i64::from(item_id(pick.room, pick.a))));
                keys.push(item(i64::from(item_id(pick.room, pick.b))));
            }
            (_, Variant::Keys50) => {
                keys.extend((0..ROOM_SIZE).map(|k| item(i64::from(item_id(pick.room, k)))));
            }
            _ => {}
        }
        if self.bench == Bench::Accounts {
            keys.push(account(pick.a + 1));
            keys.push(account(pick.b + 1));
        }
        let column = match self.bench {
            Bench::Room => "qty",
            _ => "balance",
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut asked = Vec::with_capacity(keys.len() + 1);
            asked.extend(query.clone().map(Key::query));
            asked.extend(keys.iter().cloned());
            let entries = self.client.read(asked).await?;
            let mut reads = ReadSet::new();
            let mut values: HashMap<Key, Option<Value>> = HashMap::new();
            let mut seen = None;
            for e in &entries {
                if matches!(e.key, Key::Query(_)) {
                    seen = e.value.clone();
                } else {
                    reads.record(e.key.clone(), e.version);
                    values.insert(e.key.clone(), e.value.clone());
                }
            }
            // The two keys written: by position in the query's result (of two rows: its
            // first and second, in the order of the two positions drawn), or in the room.
            let (from, to) = match (self.bench, &query) {
                (Bench::Room, Some(query)) => {
                    let pks = seen
                        .as_ref()
                        .and_then(Value::as_array)
                        .context("the query's value is not an array")?;
                    let pk = |i: i32| -> anyhow::Result<Key> {
                        let pk = pks
                            .get(i.unsigned_abs() as usize)
                            .and_then(Value::as_i64)
                            .with_context(|| format!("room {} has no item {i}", pick.room))?;
                        Ok(item(pk))
                    };
                    if query.limit == Some(2) {
                        let first = i32::from(pick.a > pick.b);
                        (pk(first)?, pk(1 - first)?)
                    } else {
                        (pk(pick.a)?, pk(pick.b)?)
                    }
                }
                (Bench::Room, _) => (
                    item(i64::from(item_id(pick.room, pick.a))),
                    item(i64::from(item_id(pick.room, pick.b))),
                ),
                _ => (account(pick.a + 1), account(pick.b + 1)),
            };
            let amount = |key: &Key| -> anyhow::Result<i64> {
                values
                    .get(key)
                    .and_then(Option::as_ref)
                    .and_then(|row| row[column].as_i64())
                    .with_context(|| format!("{key:?} was not read"))
            };
            let (from_amount, to_amount) = (amount(&from)?, amount(&to)?);
            let mut writes = WriteSet::new();
            if from_amount >= 1 {
                let set = |v: i64| {
                    let mut set = Map::new();
                    set.insert(column.to_owned(), json!(v));
                    WriteOp::Update { set }
                };
                writes.push(from, set(from_amount - 1));
                writes.push(to, set(to_amount + 1));
            }
            let outcome = match (&query, seen) {
                (Some(query), Some(seen)) => {
                    let read = QueryRead {
                        query: query.clone(),
                        seen,
                    };
                    self.client
                        .commit_queries(reads, writes, vec![read])
                        .await?
                }
                (Some(_), None) => anyhow::bail!("the read gave no entry for the query"),
                (None, _) => self.client.commit_new(reads, writes).await?,
            }
            .1;
            self.unsubscribe(entries.into_iter().map(|e| e.key).collect())
                .await?;
            match outcome {
                CommitOutcome::Committed(_) => return Ok(Outcome::Done { attempts }),
                CommitOutcome::Conflict(_) if attempts >= MAX_ATTEMPTS => {
                    return Ok(Outcome::GaveUp { attempts });
                }
                CommitOutcome::Conflict(_) => {
                    // 2 ms doubling up to 200 ms, with jitter, as the transfers' policy.
                    let cap = (2u64 << (attempts - 1).min(7)).min(200);
                    let ms = rng.random_range(cap / 2..=cap);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                CommitOutcome::Rejected(error) => {
                    anyhow::bail!("the commit was refused: {error:?}")
                }
            }
        }
    }
}

/// The random choices of one operation: a room, and two distinct positions (in the room
/// for items, or accounts - 1).
#[derive(Clone, Copy, Debug)]
struct Pick {
    room: i32,
    a: i32,
    b: i32,
}

impl Pick {
    fn draw(bench: Bench, rng: &mut StdRng) -> Pick {
        let n = if bench == Bench::Accounts {
            ACCOUNTS
        } else {
            ROOM_SIZE
        };
        let a = rng.random_range(0..n);
        let b = rng.random_range(0..n - 1);
        Pick {
            room: rng.random_range(1..=ROOMS),
            a,
            b: if b >= a { b + 1 } else { b },
        }
    }
}

impl Job for QueryWorker {
    async fn step(&mut self, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        let pick = Pick::draw(self.bench, rng);
        match self.bench {
            Bench::Read => self.read(pick.room).await,
            Bench::Room | Bench::Accounts => self.transfer(pick, rng).await,
            Bench::Search => anyhow::bail!("searches are read by search::SearchWorker"),
        }
    }
}

/// `mjolnir-bench queries-run`: one run of one variant at one point.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    bench: Bench,
    #[arg(long, value_enum)]
    variant: Variant,
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Load before the window, not measured, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// Mjölnir's WebSocket URL (serving `queries-app`, or `search-app` for the search).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    mjolnir_url: String,
    /// The database, for pgbench (and, for the search, its list of searches).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin/pgbench")]
    pgbench: PathBuf,
    /// Scratch directory for pgbench's script and logs.
    #[arg(long, default_value = "/tmp/mjolnir-bench")]
    work_dir: PathBuf,
    /// Where to append the result line.
    #[arg(long)]
    out: PathBuf,
    /// The postmaster's process id, to measure PostgreSQL's CPU time.
    #[arg(long)]
    postgres_pid: Option<u32>,
    /// Mjölnir's process id, to measure its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let window = Window {
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
    };
    let pgbench = args.variant == Variant::Pgbench;
    anyhow::ensure!(
        !pgbench || matches!(args.bench, Bench::Read | Bench::Search),
        "pgbench runs the reads only"
    );
    anyhow::ensure!(
        match args.bench {
            Bench::Search => matches!(args.variant, Variant::Pgbench | Variant::Search20),
            _ => args.variant != Variant::Search20,
        },
        "the search runs pgbench and search20, and search20 runs only the search"
    );
    // The search's list, the same for both sides, and its check before Mjölnir's runs.
    let searches = if args.bench == Bench::Search {
        let url = args
            .database_url
            .as_deref()
            .context("--database-url (or DATABASE_URL) is needed for the search's list")?;
        let pool = search::connect(url).await?;
        let searches = search::load(&pool).await?;
        if !pgbench {
            let notes = search::check(&args.mjolnir_url, &pool, &searches).await?;
            println!(
                "  search: the {} searches give the same {notes} notes, in the same order and at the same versions, through Mjölnir as directly",
                searches.len()
            );
        }
        pool.close().await;
        Some(searches)
    } else {
        None
    };
    let probe = cpu::Probe {
        postgres: args.postgres_pid,
        server: args.server_pid.filter(|_| !pgbench),
    };
    // The commit lanes matter to commits only.
    let lanes =
        (!pgbench && matches!(args.bench, Bench::Room | Bench::Accounts)).then(|| cpu::Lanes {
            metrics_url: args
                .mjolnir_url
                .replacen("ws://", "http://", 1)
                .trim_end_matches("/ws")
                .to_owned()
                + "/metrics",
        });
    let (rec, used) = if pgbench {
        let pgbench = Pgbench {
            bin: args.pgbench.clone(),
            database_url: args
                .database_url
                .clone()
                .context("--database-url (or DATABASE_URL) is needed for pgbench")?,
            work_dir: args.work_dir.clone(),
        };
        let cpu = probe.spawn(None, window.warmup, window.measure);
        let rec = match &searches {
            Some(searches) => {
                let scripts = search::pgbench_scripts(searches);
                pgbench
                    .run_scripts("search", &scripts, args.clients, window)
                    .await?
            }
            None => {
                pgbench
                    .run_script("room-read", &pgbench_script(), args.clients, window)
                    .await?
            }
        };
        (rec, cpu.await?)
    } else if let Some(searches) = &searches {
        let workers = SearchWorker::connect_all(&args.mjolnir_url, args.clients, searches).await?;
        let cpu = probe.spawn(None, window.warmup, window.measure);
        let rec = driver::drive_jobs(workers, window).await?;
        (rec, cpu.await?)
    } else {
        let workers =
            QueryWorker::connect_all(&args.mjolnir_url, args.clients, args.bench, args.variant)
                .await?;
        let cpu = probe.spawn(lanes, window.warmup, window.measure);
        let rec = driver::drive_jobs(workers, window).await?;
        (rec, cpu.await?)
    };
    let label = QueryLabel {
        bench: args.bench,
        variant: args.variant,
        clients: args.clients,
        round: args.round,
    };
    let mut result = RunResult::new(label, window.measure, &rec);
    result.cpu_us = used.and_then(|u| u.per_transfer(rec.committed));
    result.commit_lane_busy = used.and_then(|u| u.lane_busy);
    println!(
        "{:>8} {:>7} {:>3} clients round {}: {:>7.0} per s, abort {:>5.1} %, p50 {:.2} ms, p99 {:.2} ms, max attempts {}, gave up {}",
        result.label.bench.name(),
        result.label.variant.name(),
        result.label.clients,
        result.label.round,
        result.tps,
        100.0 * result.abort_rate,
        result.p50_us as f64 / 1000.0,
        result.p99_us as f64 / 1000.0,
        result.max_attempts,
        result.failed,
    );
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    writeln!(out, "{}", serde_json::to_string(&result)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_rooms_items_are_its_ids() {
        // room = (id - 1) % ROOMS + 1, as the migration seeds it.
        for room in [1, 2, ROOMS - 1, ROOMS] {
            for k in 0..ROOM_SIZE {
                let id = item_id(room, k);
                assert!((1..=ITEMS).contains(&id));
                assert_eq!((id - 1) % ROOMS + 1, room);
            }
        }
    }

    #[test]
    fn picks_are_distinct_and_in_range() {
        let mut rng = StdRng::seed_from_u64(3);
        for bench in [Bench::Room, Bench::Accounts] {
            for _ in 0..10_000 {
                let p = Pick::draw(bench, &mut rng);
                let n = if bench == Bench::Room {
                    ROOM_SIZE
                } else {
                    ACCOUNTS
                };
                assert!((1..=ROOMS).contains(&p.room));
                assert!((0..n).contains(&p.a) && (0..n).contains(&p.b) && p.a != p.b);
            }
        }
    }

    #[test]
    fn the_pgbench_script_reads_one_room_in_order() {
        let script = pgbench_script();
        assert!(script.contains("random(1, 20000)"));
        assert!(script.contains("ORDER BY i.n, i.id LIMIT 50;"));
    }
}
