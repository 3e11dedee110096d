//! The property of query validation, tested against the real server and PostgreSQL rather
//! than a model of the check: random histories of inserts, updates, deletes and query
//! reads from several concurrent clients; the commits the server accepted, replayed one
//! at a time in commit order on a plain in-memory table, must each have seen exactly what
//! its queries give at that point of the replay.

mod support;

use mjolnir_client::{Client, CommitOutcome};
use mjolnir_core::{Key, Op, Query, QueryRead, ReadSet, Version, WriteOp, WriteSet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use support::{TestDb, app_with_schema, obj, writes};

const SCHEMA: &str =
    "CREATE TABLE items (id integer PRIMARY KEY, room integer NOT NULL, n integer NOT NULL);
INSERT INTO items SELECT i, i % 3, i * 7 % 10 FROM generate_series(1, 12) AS i;";

/// A row of the replay: (room, n).
type Table = BTreeMap<i64, (i64, i64)>;

/// What the query gives on `table`, as the server spells it.
fn evaluate(query: &Query, table: &Table) -> Value {
    let mut rows: Vec<(i64, i64, i64)> = table
        .iter()
        .map(|(id, (room, n))| (*id, *room, *n))
        .filter(|(_, room, n)| {
            query.filter.iter().all(|c| {
                let v = match c.column.as_str() {
                    "room" => *room,
                    _ => *n,
                };
                let x = c.value.0.as_i64().unwrap_or_default();
                match c.op {
                    Op::Eq => v == x,
                    Op::Lt => v < x,
                    Op::Gte => v >= x,
                    _ => unreachable!("the histories use eq, lt and gte"),
                }
            })
        })
        .collect();
    if query.count {
        return json!(rows.len());
    }
    // Ordered by n (when asked), then by id.
    if let Some(o) = query.order.first() {
        rows.sort_by_key(|(id, _, n)| (if o.desc { -n } else { *n }, *id));
    }
    rows.truncate(query.limit.unwrap_or(u32::MAX) as usize);
    Value::Array(rows.iter().map(|(id, _, _)| json!(id)).collect())
}

fn random_query(rng: &mut StdRng) -> Query {
    let mut q = Query::table("items");
    match rng.random_range(0..3) {
        0 => q = q.filter("room", Op::Eq, json!(rng.random_range(0..3))),
        1 => q = q.filter("n", Op::Lt, json!(rng.random_range(0..10))),
        _ => {
            q = q
                .filter("room", Op::Eq, json!(rng.random_range(0..3)))
                .filter("n", Op::Gte, json!(rng.random_range(0..10)))
        }
    }
    match rng.random_range(0..3) {
        0 => q.counted(),
        1 => q
            .order_by("n", rng.random_bool(0.5))
            .limit(rng.random_range(1..4)),
        _ => q,
    }
}

/// One accepted transaction: its version, what its queries saw, its writes.
struct Accepted {
    version: Version,
    queries: Vec<QueryRead>,
    writes: Vec<(i64, Option<(i64, i64)>)>,
}

/// One client's part of a history: `steps` transactions, each reading one or two queries
/// (and the rows they return) and writing from what it saw.
async fn run_client(url: String, who: i64, seed: u64, steps: usize) -> (Vec<Accepted>, usize) {
    let client = Client::connect(&url, Some(&format!("c{who}")))
        .await
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut accepted = Vec::new();
    let mut conflicts = 0;
    let mut next_id = 1000 * (who + 1);
    for _ in 0..steps {
        let mut reads = ReadSet::new();
        let mut queries = Vec::new();
        let mut rows: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for _ in 0..rng.random_range(1..3) {
            let q = random_query(&mut rng);
            let entries = client.read(vec![Key::query(q.clone())]).await.unwrap();
            for e in &entries[1..] {
                reads.record(e.key.clone(), e.version);
                if let (Key::Row { pk, .. }, Some(v)) = (&e.key, &e.value) {
                    let id: i64 = pk.to_string().parse().unwrap();
                    rows.insert(id, (v["room"].as_i64().unwrap(), v["n"].as_i64().unwrap()));
                }
            }
            queries.push(QueryRead {
                query: q,
                seen: entries[0].value.clone().unwrap(),
            });
        }
        // A write that depends on what was read: the count or the rows seen.
        let seen_total: i64 = queries
            .iter()
            .map(|q| match &q.seen {
                Value::Array(a) => a.len() as i64,
                v => v.as_i64().unwrap_or_default(),
            })
            .sum();
        let mut ops: Vec<(i64, Option<(i64, i64)>)> = Vec::new();
        let existing: Vec<i64> = rows.keys().copied().collect();
        match rng.random_range(0..3) {
            0 if !existing.is_empty() => {
                let id = existing[rng.random_range(0..existing.len())];
                let (room, _) = rows[&id];
                let moved = if rng.random_bool(0.5) {
                    (room + 1) % 3
                } else {
                    room
                };
                ops.push((id, Some((moved, (seen_total + id) % 10))));
            }
            1 if !existing.is_empty() => {
                let id = existing[rng.random_range(0..existing.len())];
                ops.push((id, None));
            }
            _ => {
                next_id += 1;
                ops.push((next_id, Some((rng.random_range(0..3), seen_total % 10))));
            }
        }
        let mut ws = Vec::new();
        for (id, op) in &ops {
            let key = Key::row("items", *id);
            ws.push((
                key,
                match op {
                    Some((room, n)) if rows.contains_key(id) => WriteOp::Update {
                        set: obj(json!({"room": room, "n": n})),
                    },
                    Some((room, n)) => WriteOp::Insert {
                        row: obj(json!({"room": room, "n": n})),
                    },
                    None => WriteOp::Delete,
                },
            ));
        }
        let ws: WriteSet = writes(ws);
        let (_, outcome) = client
            .commit_queries(reads, ws, queries.clone())
            .await
            .unwrap();
        match outcome {
            CommitOutcome::Committed(version) => accepted.push(Accepted {
                version,
                queries,
                writes: ops,
            }),
            CommitOutcome::Conflict(_) => conflicts += 1,
            CommitOutcome::Rejected(e) => panic!("client {who}: {e:?}"),
        }
    }
    (accepted, conflicts)
}

async fn histories(group_commit: usize, instances: usize, seed: u64) {
    let db = TestDb::new(&format!("q_hist_{group_commit}_{instances}_{seed}")).await;
    let app = app_with_schema(SCHEMA);
    let mut servers = Vec::new();
    for _ in 0..instances {
        servers.push(
            db.start_with(app.path(), |c| c.knobs.group_commit = group_commit)
                .await,
        );
    }
    let clients = 4;
    let tasks: Vec<_> = (0..clients)
        .map(|who| {
            let url = servers[who as usize % instances].ws_url();
            tokio::spawn(run_client(url, who, seed * 100 + who as u64, 30))
        })
        .collect();
    let mut accepted = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (a, c) = t.await.unwrap();
        accepted.extend(a);
        conflicts += c;
    }
    accepted.sort_by_key(|a| a.version);
    let mut table: Table = (1..=12).map(|i| (i, (i % 3, i * 7 % 10))).collect();
    for a in &accepted {
        for q in &a.queries {
            assert_eq!(
                q.seen,
                evaluate(&q.query, &table),
                "seed {seed}: the commit at {} saw {} give {}, but the replay gives another",
                a.version,
                q.query,
                q.seen
            );
        }
        for (id, row) in &a.writes {
            match row {
                Some(r) => table.insert(*id, *r),
                None => table.remove(id),
            };
        }
    }
    eprintln!(
        "seed {seed}, group commit {group_commit}, {instances} instance(s): {} committed, {conflicts} conflicts",
        accepted.len()
    );
    assert!(!accepted.is_empty());
    for s in servers {
        s.stop().await.unwrap();
    }
}

#[tokio::test]
async fn accepted_query_reads_equal_a_serial_replay_with_group_commit() {
    for seed in 1..=3 {
        histories(64, 1, seed).await;
    }
}

#[tokio::test]
async fn accepted_query_reads_equal_a_serial_replay_without_group_commit() {
    for seed in 4..=6 {
        histories(1, 1, seed).await;
    }
}

#[tokio::test]
async fn accepted_query_reads_equal_a_serial_replay_across_two_instances() {
    for seed in 7..=9 {
        histories(64, 2, seed).await;
    }
}
