//! The paper's bank under load: many native clients, two server instances, one database.
//! Money is conserved, no balance goes negative, and every acknowledged transfer is in the
//! ledger exactly once.

mod support;

use mjolnir_client::{Client, RetryPolicy, TxAbort};
use mjolnir_core::Key;
use rand::Rng;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use support::{BANK_SCHEMA, TestDb, app_with_schema, obj};

const ACCOUNTS: i64 = 1000;
const CLIENTS: usize = 16;
const TRANSFERS_PER_CLIENT: usize = 200;

struct Run {
    acknowledged: BTreeSet<String>,
    conflicts: u64,
    max_attempts: u32,
}

/// Every client runs `TRANSFERS_PER_CLIENT` transfers: read both accounts; if the source
/// has enough, move the amount and record the transfer in the ledger, in one transaction.
async fn run_transfers(
    urls: &[String],
    pick: impl Fn(&mut rand::rngs::ThreadRng) -> (i64, i64) + Clone + Send + 'static,
) -> Run {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = urls[c % urls.len()].clone();
        let pick = pick.clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&url, Some(&format!("client{c}")))
                .await
                .expect("connect");
            let policy = RetryPolicy {
                max_attempts: 1000,
                base_delay_ms: 1,
                max_delay_ms: 50,
            };
            let mut acknowledged = Vec::new();
            let mut conflicts = 0u64;
            let mut max_attempts = 0u32;
            for t in 0..TRANSFERS_PER_CLIENT {
                let (from, to, amount) = {
                    let mut rng = rand::rng();
                    let (from, to) = pick(&mut rng);
                    (from, to, rng.random_range(1..=60))
                };
                let id = format!("c{c}-t{t}");
                let ledger = Key::row("transfers", id.as_str());
                let done = client
                    .run(&policy, async move |tx| {
                        let rows = tx
                            .get_many(vec![Key::row("accounts", from), Key::row("accounts", to)])
                            .await?;
                        let balance = |row: &Option<Value>| {
                            row.as_ref()
                                .and_then(|r| r["balance"].as_i64())
                                .expect("account exists")
                        };
                        let (fb, tb) = (balance(&rows[0]), balance(&rows[1]));
                        if fb < amount {
                            return Ok(false);
                        }
                        tx.update(
                            Key::row("accounts", from),
                            obj(json!({"balance": fb - amount})),
                        );
                        tx.update(
                            Key::row("accounts", to),
                            obj(json!({"balance": tb + amount})),
                        );
                        tx.insert(
                            ledger.clone(),
                            obj(json!({"from_account": from, "to_account": to, "amount": amount})),
                        );
                        Ok::<bool, TxAbort>(true)
                    })
                    .await
                    .expect("transfer finishes");
                conflicts += u64::from(done.attempts - 1);
                max_attempts = max_attempts.max(done.attempts);
                if done.value {
                    assert!(
                        done.version.is_some(),
                        "a transfer that wrote must have committed"
                    );
                    acknowledged.push(id);
                }
            }
            (acknowledged, conflicts, max_attempts)
        }));
    }
    let mut run = Run {
        acknowledged: BTreeSet::new(),
        conflicts: 0,
        max_attempts: 0,
    };
    for t in tasks {
        let (ack, conflicts, max) = t.await.unwrap();
        run.acknowledged.extend(ack);
        run.conflicts += conflicts;
        run.max_attempts = run.max_attempts.max(max);
    }
    run
}

async fn check_bank(db: &TestDb, run: &Run) {
    let pool = db.pool().await;
    let (total, negative): (i64, i64) = sqlx::query_as(
        "SELECT sum(balance)::bigint, count(*) FILTER (WHERE balance < 0) FROM accounts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(total, ACCOUNTS * 100, "money was created or destroyed");
    assert_eq!(negative, 0);
    let ledger: Vec<(String,)> = sqlx::query_as("SELECT id FROM transfers")
        .fetch_all(&pool)
        .await
        .unwrap();
    let ledger: BTreeSet<String> = ledger.into_iter().map(|(id,)| id).collect();
    assert_eq!(
        ledger, run.acknowledged,
        "the ledger must hold exactly the acknowledged transfers"
    );
    // The ledger replayed from the starting balances gives the final balances.
    let (mismatches,): (i64,) = sqlx::query_as(
        "WITH moves AS (
             SELECT from_account AS id, -amount AS delta FROM transfers
             UNION ALL SELECT to_account, amount FROM transfers)
         SELECT count(*) FROM accounts a
         WHERE a.balance <> 100 + coalesce((SELECT sum(delta) FROM moves m WHERE m.id = a.id), 0)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(mismatches, 0, "balances disagree with the ledger");
}

async fn bank(label: &str) -> (TestDb, tempfile::TempDir) {
    let db = TestDb::new(label).await;
    let seed = format!(
        "{BANK_SCHEMA}\nINSERT INTO accounts SELECT g, 100 FROM generate_series(1, {ACCOUNTS}) g;"
    );
    (db, app_with_schema(&seed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_transfers_through_two_instances_conserve_money() {
    let (db, app) = bank("bank").await;
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let run = run_transfers(&[a.ws_url(), b.ws_url()], |rng| {
        let from = rng.random_range(1..=ACCOUNTS);
        let mut to = rng.random_range(1..=ACCOUNTS);
        while to == from {
            to = rng.random_range(1..=ACCOUNTS);
        }
        (from, to)
    })
    .await;
    check_bank(&db, &run).await;
    assert!(
        run.acknowledged.len() > CLIENTS * TRANSFERS_PER_CLIENT / 2,
        "most transfers have enough money"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_account_transfers_conflict_and_still_conserve_money() {
    let (db, app) = bank("hot").await;
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let run = run_transfers(&[a.ws_url(), b.ws_url()], |rng| {
        let other = rng.random_range(2..=ACCOUNTS);
        if rng.random_bool(0.5) {
            (1, other)
        } else {
            (other, 1)
        }
    })
    .await;
    check_bank(&db, &run).await;
    assert!(run.conflicts > 0, "16 clients on one account must conflict");
    let metrics = a.state.metrics.render() + &b.state.metrics.render();
    assert!(
        metrics.contains("mjolnir_conflicts_total{table=\"accounts\"}"),
        "{metrics}"
    );
    eprintln!(
        "hot account: {} conflicts, at most {} attempts for one transfer",
        run.conflicts, run.max_attempts
    );
}

/// The bank again with batches of at most 4 and one lane per instance, so that batches
/// hold several transfers, some of them conflicting inside their batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_account_transfers_in_small_batches_conserve_money() {
    let (db, app) = bank("hot_batched").await;
    let tweak = |c: &mut mjolnir_server::server::Config| {
        c.knobs.group_commit = 4;
        c.knobs.group_commit_lanes = 1;
    };
    let a = db.start_with(app.path(), tweak).await;
    let b = db.start_with(app.path(), tweak).await;
    let run = run_transfers(&[a.ws_url(), b.ws_url()], |rng| {
        let other = rng.random_range(2..=ACCOUNTS);
        if rng.random_bool(0.5) {
            (1, other)
        } else {
            (other, 1)
        }
    })
    .await;
    check_bank(&db, &run).await;
    let metrics = a.state.metrics.render();
    let batched = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mjolnir_commit_batch_size_bucket{le=\"1.0\"} "))
        .zip(
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("mjolnir_commit_batch_size_count ")),
        )
        .is_some_and(|(ones, all)| ones != all);
    assert!(
        batched,
        "some batches must hold several transfers: {metrics}"
    );
}
