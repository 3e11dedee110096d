//! The live queries benchmark (issue 15): how fast a commit reaches the subscribers of the
//! queries it changes, what the queries it does not change cost it, and what one commit
//! costs under row-level security with many users subscribed.
//!
//! The data is `live-app/migrations/0001_live.sql`: 240,000 items in 12,000 rooms of 20,
//! open to every user; and a board of 50 notes under row-level security, which its members
//! (`member1` … `member1000`) read. `scripts/bench.sh` serves it with its own `mjolnir dev`
//! (which believes the user a client names in its hello), on a database of its own.
//!
//! Three parts, run one after another on one server, each leaving nothing subscribed:
//!
//! - **fan-out**: `--connections` connections (each its own user) subscribe to
//!   `--per-connection` room queries each, overlapping: connection c reads rooms
//!   c, c + stride, … (mod the number of rooms, stride = connections / per-connection), so
//!   each room's query has `per-connection` subscribers. A separate connection commits a
//!   change of one item of a random room, blind, one at a time; the push latency is from the
//!   commit's send until every subscriber of that room got its push.
//! - **untouched**: one connection subscribes to the watched room, and 100 others hold N
//!   room queries the commits never touch (N from `--untouched`, in a rotating order each
//!   round); the commits change items of the watched room, each waiting for its push. The
//!   server's and PostgreSQL's CPU time per commit come from `/proc` (`cpu.rs`).
//! - **rls**: `--rls-users` members each subscribe to the board's query; each commit
//!   changes one note; measured until all of them got the push.

use crate::cpu;
use anyhow::Context as _;
use clap::{Args, ValueEnum};
use mjolnir_client::{Client, CommitOutcome};
use mjolnir_core::{ClientMessage, Key, Op, Query, ReadSet, Version, WriteOp, WriteSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Rooms in `items`.
pub const ROOMS: i32 = 12_000;
/// Items per room.
pub const ROOM_SIZE: i32 = 20;
/// The limit of every room query: above a room's size, so its result is the whole room.
pub const ROOM_LIMIT: u32 = 50;
/// The room the untouched part's commits change; no other part reads it.
const WATCHED: i32 = ROOMS;
/// The first room of the untouched queries: above the fan-out's rooms.
const UNTOUCHED_FROM: i32 = 1001;
/// Connections holding the untouched queries.
const HOLDERS: usize = 100;
/// Queries per read request: under the server's limit (32).
const QUERIES_PER_READ: usize = 25;
/// Connections opened, or reading, at once while a part sets up.
const SETUP_CONCURRENCY: usize = 32;
/// How long one commit's pushes may take before the run fails.
const PUSH_TIMEOUT: Duration = Duration::from_secs(120);

/// `items where room = R order by n limit 50`.
pub fn room_query(room: i32) -> Query {
    Query::table("items")
        .filter("room", Op::Eq, json!(room))
        .order_by("n", false)
        .limit(ROOM_LIMIT)
}

/// `notes where board = 1 order by n limit 50`: the board every member reads.
pub fn board_query() -> Query {
    Query::table("notes")
        .filter("board", Op::Eq, json!(1))
        .order_by("n", false)
        .limit(50)
}

/// The `k`-th item of `room` (`k` from 0 to 19), by id.
pub fn item_id(room: i32, k: i32) -> i32 {
    room + ROOMS * k
}

/// The part of the benchmark to run.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Fanout,
    Untouched,
    Rls,
}

/// What one part measured: one line of the results file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "lowercase")]
pub enum Record {
    Fanout {
        connections: u32,
        per_connection: u32,
        /// Subscribers of each room's query.
        subscribers: u32,
        commits: u64,
        /// From the commit's send until its acknowledgement, µs.
        ack_p50_us: u64,
        ack_p99_us: u64,
        /// From the commit's send until the last subscriber got its push, µs.
        push_p50_us: u64,
        push_p99_us: u64,
        push_max_us: u64,
        reruns_per_commit: f64,
    },
    Untouched {
        untouched: u32,
        round: u32,
        commits: u64,
        commits_per_s: f64,
        /// CPU time per commit, µs.
        server_us: f64,
        postgres_us: f64,
        push_p50_us: u64,
        reruns_per_commit: f64,
    },
    Rls {
        users: u32,
        /// Per commit, in order: from the send until the first, and the last, push, µs.
        first_push_us: Vec<u64>,
        all_pushed_us: Vec<u64>,
        /// Per commit: CPU time from the send until the last push, µs.
        server_us: Vec<f64>,
        postgres_us: Vec<f64>,
        reruns_per_commit: f64,
    },
}

/// `mjolnir-bench live-run`: the parts of the live queries benchmark.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The parts to run (all by default, in this order).
    #[arg(long, value_enum, value_delimiter = ',')]
    parts: Vec<Part>,
    #[arg(long, default_value_t = 1000)]
    connections: u32,
    #[arg(long, default_value_t = 10)]
    per_connection: u32,
    /// Fan-out commits measured (after 20 not measured).
    #[arg(long, default_value_t = 500)]
    commits: u64,
    /// Numbers of untouched queries to compare.
    #[arg(long, value_delimiter = ',', default_value = "100,10000")]
    untouched: Vec<u32>,
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Commits per round and number of untouched queries.
    #[arg(long, default_value_t = 2000)]
    cpu_commits: u64,
    #[arg(long, default_value_t = 400)]
    rls_users: u32,
    #[arg(long, default_value_t = 10)]
    rls_commits: u32,
    /// Mjölnir's WebSocket URL (serving `live-app`).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    mjolnir_url: String,
    /// Where to append the result lines.
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
    anyhow::ensure!(
        args.per_connection >= 1
            && args.connections.is_multiple_of(args.per_connection)
            && i32::try_from(args.connections).is_ok_and(|c| c < UNTOUCHED_FROM),
        "--connections must be a multiple of --per-connection, and at most 1000"
    );
    anyhow::ensure!(
        args.untouched
            .iter()
            .all(|&n| i64::from(n) + i64::from(UNTOUCHED_FROM) <= i64::from(WATCHED)),
        "at most {} untouched queries",
        WATCHED - UNTOUCHED_FROM
    );
    anyhow::ensure!(args.rls_users <= 1000, "the board has 1,000 members");
    let metrics_url = args
        .mjolnir_url
        .replacen("ws://", "http://", 1)
        .trim_end_matches("/ws")
        .to_owned()
        + "/metrics";
    let bench = Bench {
        url: args.mjolnir_url.clone(),
        metrics_url,
        probe: cpu::Probe {
            postgres: args.postgres_pid,
            server: args.server_pid,
        },
        rng: StdRng::from_os_rng(),
    };
    let parts = if args.parts.is_empty() {
        vec![Part::Fanout, Part::Untouched, Part::Rls]
    } else {
        args.parts.clone()
    };
    let mut bench = bench;
    for part in parts {
        let records = match part {
            Part::Fanout => vec![bench.fanout(&args).await?],
            Part::Untouched => bench.untouched(&args).await?,
            Part::Rls => vec![bench.rls(&args).await?],
        };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&args.out)
            .with_context(|| format!("opening {}", args.out.display()))?;
        for r in records {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
        }
    }
    Ok(())
}

/// One push a connection received: the connection's number, the commit, when.
type Arrival = (usize, Version, Instant);

struct Bench {
    url: String,
    metrics_url: String,
    probe: cpu::Probe,
    rng: StdRng,
}

impl Bench {
    async fn fanout(&mut self, args: &RunArgs) -> anyhow::Result<Record> {
        let n = args.connections as usize;
        let per = args.per_connection as usize;
        let stride = n / per;
        println!("  fan-out: {n} connections subscribing to {per} room queries each");
        let users: Vec<String> = (0..n).map(|c| format!("fan{c}")).collect();
        let clients = connect(&self.url, &users).await?;
        // Room r (1-based, r ≤ n) is read by the connections c with c ≡ r - 1 (mod stride).
        let mut subscribers: HashMap<i32, Vec<usize>> = HashMap::new();
        let mut wanted = Vec::with_capacity(n);
        for c in 0..n {
            let rooms: Vec<i32> = (0..per)
                .map(|j| i32::try_from((c + j * stride) % n).unwrap_or(0) + 1)
                .collect();
            for &room in &rooms {
                subscribers.entry(room).or_default().push(c);
            }
            wanted.push(rooms.into_iter().map(room_query).collect());
        }
        subscribe_all(&clients, wanted).await?;
        let (arrivals, listeners) = listen(&clients);
        let writer = Client::connect(&self.url, Some("writer")).await?;
        let mut collector = Collector::new(arrivals);
        let (mut ack, mut push) = (latencies(), latencies());
        let warmup = 20;
        let mut counted = 0.0;
        for i in 0..warmup + args.commits {
            if i == warmup {
                counted = self.reruns().await;
            }
            let room = self.rng.random_range(1..=i32::try_from(n)?);
            let k = self.rng.random_range(0..ROOM_SIZE);
            let expected: HashSet<usize> = subscribers[&room].iter().copied().collect();
            let (sent, acked, version) = self.change_item(&writer, item_id(room, k)).await?;
            let (_, last) = collector.wait(version, expected, sent).await?;
            if i >= warmup {
                record(&mut ack, acked - sent);
                record(&mut push, last - sent);
            }
        }
        let reruns = self.reruns().await;
        close_all(clients, listeners, writer).await;
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let reruns_per_commit = (reruns - counted) / args.commits as f64;
        let r = Record::Fanout {
            connections: args.connections,
            per_connection: args.per_connection,
            subscribers: args.per_connection,
            commits: args.commits,
            ack_p50_us: push_quantile(&ack, 0.5),
            ack_p99_us: push_quantile(&ack, 0.99),
            push_p50_us: push_quantile(&push, 0.5),
            push_p99_us: push_quantile(&push, 0.99),
            push_max_us: push.max(),
            reruns_per_commit,
        };
        println!(
            "  fan-out: push p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (ack p50 {:.2} ms); {reruns_per_commit:.1} re-runs per commit",
            ms(push_quantile(&push, 0.5)),
            ms(push_quantile(&push, 0.99)),
            ms(push.max()),
            ms(push_quantile(&ack, 0.5)),
        );
        Ok(r)
    }

    async fn untouched(&mut self, args: &RunArgs) -> anyhow::Result<Vec<Record>> {
        let holders = connect(
            &self.url,
            &(0..HOLDERS)
                .map(|h| format!("holder{h}"))
                .collect::<Vec<_>>(),
        )
        .await?;
        let watcher = Client::connect(&self.url, Some("watcher")).await?;
        subscribe(&watcher, vec![room_query(WATCHED)]).await?;
        let (arrivals, listeners) = listen(std::slice::from_ref(&watcher));
        let mut collector = Collector::new(arrivals);
        let writer = Client::connect(&self.url, Some("writer")).await?;
        // What each holder has subscribed: per room, the keys the read gave.
        let mut held: Vec<Vec<Vec<Key>>> = vec![Vec::new(); HOLDERS];
        let mut records = Vec::new();
        for round in 1..=args.rounds {
            let mut order = args.untouched.clone();
            let turn = (round as usize - 1) % order.len().max(1);
            order.rotate_left(turn);
            for &untouched in &order {
                hold(&holders, &mut held, untouched as usize).await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut push = latencies();
                let reruns = self.reruns().await;
                let start = self.probe.mark();
                let began = Instant::now();
                for _ in 0..args.cpu_commits {
                    let k = self.rng.random_range(0..ROOM_SIZE);
                    let (sent, _, version) = self.change_item(&writer, item_id(WATCHED, k)).await?;
                    let (_, last) = collector.wait(version, HashSet::from([0]), sent).await?;
                    record(&mut push, last - sent);
                }
                let elapsed = began.elapsed().as_secs_f64();
                let used = start.zip(self.probe.mark()).map(|(a, b)| b.since(&a));
                let per = used.and_then(|u| u.per_transfer(args.cpu_commits));
                #[allow(clippy::cast_precision_loss)] // counts far below 2^52
                let commits = args.cpu_commits as f64;
                let r = Record::Untouched {
                    untouched,
                    round,
                    commits: args.cpu_commits,
                    commits_per_s: commits / elapsed,
                    server_us: per.map_or(0.0, |p| p.server),
                    postgres_us: per.map_or(0.0, |p| p.postgres),
                    push_p50_us: push_quantile(&push, 0.5),
                    reruns_per_commit: (self.reruns().await - reruns) / commits,
                };
                if let Record::Untouched {
                    server_us,
                    postgres_us,
                    commits_per_s,
                    reruns_per_commit,
                    ..
                } = &r
                {
                    println!(
                        "  untouched {untouched:>5} round {round}: {commits_per_s:.0} commits/s, server {server_us:.0} µs + PostgreSQL {postgres_us:.0} µs per commit, push p50 {:.2} ms, {reruns_per_commit:.2} re-runs per commit",
                        ms(push_quantile(&push, 0.5)),
                    );
                }
                records.push(r);
            }
        }
        close_all(holders, listeners, writer).await;
        watcher.close().await;
        Ok(records)
    }

    async fn rls(&mut self, args: &RunArgs) -> anyhow::Result<Record> {
        let users: Vec<String> = (1..=args.rls_users).map(|u| format!("member{u}")).collect();
        println!("  rls: {} members subscribing to the board", args.rls_users);
        let clients = connect(&self.url, &users).await?;
        subscribe_all(&clients, vec![vec![board_query()]; clients.len()]).await?;
        let (arrivals, listeners) = listen(&clients);
        let mut collector = Collector::new(arrivals);
        let writer = Client::connect(&self.url, Some("member1")).await?;
        let everyone: HashSet<usize> = (0..clients.len()).collect();
        let reruns = self.reruns().await;
        let (mut first_push_us, mut all_pushed_us) = (Vec::new(), Vec::new());
        let (mut server_us, mut postgres_us) = (Vec::new(), Vec::new());
        for i in 0..args.rls_commits {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let start = self.probe.mark();
            let id = i32::try_from(i % 50)? + 1;
            let mut set = Map::new();
            set.insert(
                "body".into(),
                json!(format!("{:x}", self.rng.random::<u64>())),
            );
            let mut writes = WriteSet::new();
            writes.push(Key::row("notes", i64::from(id)), WriteOp::Update { set });
            let (sent, _, version) = commit(&writer, writes).await?;
            let (first, last) = collector.wait(version, everyone.clone(), sent).await?;
            let used = start.zip(self.probe.mark()).map(|(a, b)| b.since(&a));
            let per = used.and_then(|u| u.per_transfer(1));
            first_push_us.push(micros(first - sent));
            all_pushed_us.push(micros(last - sent));
            server_us.push(per.map_or(0.0, |p| p.server));
            postgres_us.push(per.map_or(0.0, |p| p.postgres));
            println!(
                "  rls commit {}: first push {:.1} ms, all {} {:.1} ms; CPU server {:.0} ms, PostgreSQL {:.0} ms",
                i + 1,
                ms(micros(first - sent)),
                args.rls_users,
                ms(micros(last - sent)),
                per.map_or(0.0, |p| p.server) / 1000.0,
                per.map_or(0.0, |p| p.postgres) / 1000.0,
            );
        }
        let reruns_per_commit = (self.reruns().await - reruns) / f64::from(args.rls_commits);
        close_all(clients, listeners, writer).await;
        Ok(Record::Rls {
            users: args.rls_users,
            first_push_us,
            all_pushed_us,
            server_us,
            postgres_us,
            reruns_per_commit,
        })
    }

    /// Sets a fresh `qty` on item `id`, blind (nothing read): when it was sent, when it
    /// was acknowledged, and its version.
    async fn change_item(
        &mut self,
        writer: &Client,
        id: i32,
    ) -> anyhow::Result<(Instant, Instant, Version)> {
        let mut set = Map::new();
        // A value the row does not hold already: a write that changes nothing is pushed to
        // no one.
        set.insert("qty".into(), json!(self.rng.random_range(1..i32::MAX)));
        let mut writes = WriteSet::new();
        writes.push(Key::row("items", i64::from(id)), WriteOp::Update { set });
        commit(writer, writes).await
    }

    /// The server's `mjolnir_query_reruns_total`, or 0 if it could not be read.
    async fn reruns(&self) -> f64 {
        let text = async { reqwest::get(&self.metrics_url).await?.text().await };
        text.await
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("mjolnir_query_reruns_total "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

async fn commit(writer: &Client, writes: WriteSet) -> anyhow::Result<(Instant, Instant, Version)> {
    let sent = Instant::now();
    let (_, outcome) = writer.commit_new(ReadSet::new(), writes).await?;
    let acked = Instant::now();
    match outcome {
        CommitOutcome::Committed(version) => Ok((sent, acked, version)),
        other => anyhow::bail!("a blind write did not commit: {other:?}"),
    }
}

/// Connects one client per user, a few at a time.
async fn connect(url: &str, users: &[String]) -> anyhow::Result<Vec<Client>> {
    let mut clients: Vec<Option<Client>> = vec![None; users.len()];
    for (chunk_at, chunk) in users.chunks(SETUP_CONCURRENCY).enumerate() {
        let mut set = JoinSet::new();
        for (i, user) in chunk.iter().enumerate() {
            let (url, user) = (url.to_owned(), user.clone());
            let at = chunk_at * SETUP_CONCURRENCY + i;
            set.spawn(async move { (at, Client::connect(&url, Some(&user)).await) });
        }
        while let Some(done) = set.join_next().await {
            let (at, client) = done?;
            clients[at] = Some(client.with_context(|| format!("connecting to {url}"))?);
        }
    }
    Ok(clients.into_iter().flatten().collect())
}

/// Reads `queries` on `client` (so it is subscribed to them and their rows): the keys the
/// reads gave, to unsubscribe.
async fn subscribe(client: &Client, queries: Vec<Query>) -> anyhow::Result<Vec<Key>> {
    let mut keys = Vec::new();
    for chunk in queries.chunks(QUERIES_PER_READ) {
        let entries = client
            .read(chunk.iter().cloned().map(Key::query).collect())
            .await?;
        keys.extend(entries.into_iter().map(|e| e.key));
    }
    Ok(keys)
}

/// `wanted[c]` on `clients[c]`, a few clients at a time.
async fn subscribe_all(clients: &[Client], wanted: Vec<Vec<Query>>) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    for (client, queries) in clients.iter().zip(wanted) {
        if set.len() >= SETUP_CONCURRENCY {
            set.join_next().await.transpose()?.transpose()?;
        }
        let client = client.clone();
        set.spawn(async move { subscribe(&client, queries).await.map(drop) });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// Makes the holders hold the first `n` untouched rooms (room `UNTOUCHED_FROM + i` is
/// held by holder `i % HOLDERS`), reading the rooms they lack and unsubscribing, rows and
/// all, from those beyond.
async fn hold(holders: &[Client], held: &mut [Vec<Vec<Key>>], n: usize) -> anyhow::Result<()> {
    let mut set = JoinSet::new();
    for (h, client) in holders.iter().enumerate() {
        let mine = n / HOLDERS + usize::from(h < n % HOLDERS);
        let have = std::mem::take(&mut held[h]);
        let client = client.clone();
        set.spawn(async move {
            let mut have = have;
            if have.len() > mine {
                let dropped: Vec<Key> = have.drain(mine..).flatten().collect();
                let msg = ClientMessage::Unsubscribe { keys: dropped };
                client.send_raw(msg.to_json()).await?;
            }
            let missing: Vec<i32> = (have.len()..mine)
                .map(|j| UNTOUCHED_FROM + i32::try_from(j * HOLDERS + h).unwrap_or(0))
                .collect();
            for chunk in missing.chunks(QUERIES_PER_READ) {
                let queries: Vec<Key> = chunk.iter().map(|&r| Key::query(room_query(r))).collect();
                let entries = client.read(queries.clone()).await?;
                // A room's keys: its query, and the rows whose table and room are its.
                for (q, room) in queries.into_iter().zip(chunk) {
                    let mut keys = vec![q];
                    keys.extend(
                        entries
                            .iter()
                            .filter(|e| {
                                e.value.as_ref().and_then(|v| v.get("room")) == Some(&json!(room))
                            })
                            .map(|e| e.key.clone()),
                    );
                    have.push(keys);
                }
            }
            anyhow::Ok((h, have))
        });
    }
    while let Some(done) = set.join_next().await {
        let (h, have) = done??;
        held[h] = have;
    }
    Ok(())
}

/// A task per client forwarding each push it receives, with its arrival time.
fn listen(
    clients: &[Client],
) -> (
    mpsc::UnboundedReceiver<Arrival>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = clients
        .iter()
        .enumerate()
        .map(|(c, client)| {
            let mut pushes = client.pushes();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match pushes.recv().await {
                        Ok((version, _)) => {
                            if tx.send((c, version, Instant::now())).is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        })
        .collect();
    (rx, tasks)
}

async fn close_all(
    clients: Vec<Client>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
    writer: Client,
) {
    for l in listeners {
        l.abort();
    }
    writer.close().await;
    for c in clients {
        c.close().await;
    }
}

/// The pushes of the commits, as they arrive.
struct Collector {
    arrivals: mpsc::UnboundedReceiver<Arrival>,
}

impl Collector {
    fn new(arrivals: mpsc::UnboundedReceiver<Arrival>) -> Collector {
        Collector { arrivals }
    }

    /// Waits until every connection of `expected` got the push of `version`: when the first
    /// and the last did. Pushes of earlier commits are skipped.
    async fn wait(
        &mut self,
        version: Version,
        mut expected: HashSet<usize>,
        sent: Instant,
    ) -> anyhow::Result<(Instant, Instant)> {
        let deadline = tokio::time::Instant::from_std(sent + PUSH_TIMEOUT);
        let (mut first, mut last) = (None, sent);
        while !expected.is_empty() {
            let Ok(arrival) = tokio::time::timeout_at(deadline, self.arrivals.recv()).await else {
                anyhow::bail!(
                    "{} subscriber(s) got no push of version {} in {PUSH_TIMEOUT:?}",
                    expected.len(),
                    version.0
                );
            };
            let (c, v, at) = arrival.context("the pushes stopped")?;
            if v == version && expected.remove(&c) {
                first.get_or_insert(at);
                last = last.max(at);
            }
        }
        Ok((first.unwrap_or(last), last))
    }
}

fn latencies() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds")
}

fn record(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    h.saturating_record(micros(d).max(1));
}

fn push_quantile(h: &hdrhistogram::Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[allow(clippy::cast_precision_loss)] // microseconds, far below 2^52
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_items_are_its_ids() {
        // room = (id - 1) % ROOMS + 1, as the migration seeds it.
        for room in [1, 2, ROOMS - 1, ROOMS] {
            for k in 0..ROOM_SIZE {
                let id = item_id(room, k);
                assert!((1..=ROOMS * ROOM_SIZE).contains(&id));
                assert_eq!((id - 1) % ROOMS + 1, room);
            }
        }
    }
}
