//! Group commit: transactions that queue up while a batch commits are validated and applied
//! together, in one PostgreSQL transaction, and each still gets exactly the outcome it
//! would get alone. The batch is forced: a first commit blocks on a row lock the test
//! holds, so the only lane is busy while the others queue up behind it.

mod support;

use mjolnir_client::{Client, CommitOutcome, RetryPolicy, TxAbort};
use mjolnir_core::{ErrorKind, Key, ReadSet, TxnId, WriteOp, WriteSet};
use mjolnir_server::server::Running;
use rand::Rng;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{TestDb, app_with_schema, metric, obj, writes};

/// Tables without deferred constraints or triggers: batches of them can be set-based.
const PLAIN: &str = "
CREATE TABLE gate (id integer PRIMARY KEY, n integer NOT NULL);
INSERT INTO gate VALUES (1, 0);
CREATE TABLE accounts (id integer PRIMARY KEY, balance integer NOT NULL CHECK (balance >= 0));
INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 10) g;
CREATE TABLE profiles (name text PRIMARY KEY, motto text NOT NULL);
INSERT INTO profiles VALUES ('alice', 'hi'), ('bob', 'yo');
ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON profiles FOR SELECT USING (true);
CREATE POLICY own_row ON profiles FOR UPDATE USING (name = mjolnir.user_id());
CREATE TABLE notes (id text PRIMARY KEY, body text NOT NULL);
";

/// Money is conserved, checked at the end of each transaction by a deferred trigger.
const CONSERVE: &str = "
CREATE TABLE bank_total (total integer NOT NULL);
INSERT INTO bank_total VALUES (1000);
CREATE FUNCTION conserve() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT sum(balance) FROM accounts) IS DISTINCT FROM (SELECT total FROM bank_total) THEN
        RAISE EXCEPTION 'money must be conserved' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER conserve AFTER UPDATE ON accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION conserve();
";

fn schema() -> String {
    format!("{PLAIN}{CONSERVE}")
}

fn acct(id: i64) -> Key {
    Key::row("accounts", id)
}

fn set_balances(pairs: &[(i64, i64)]) -> WriteSet {
    writes(
        pairs
            .iter()
            .map(|&(id, b)| {
                (
                    acct(id),
                    WriteOp::Update {
                        set: obj(json!({ "balance": b })),
                    },
                )
            })
            .collect(),
    )
}

async fn read_set(client: &Client, keys: &[Key]) -> ReadSet {
    let entries = client.read(keys.to_vec()).await.unwrap();
    entries.iter().map(|e| (e.key.clone(), e.version)).collect()
}

/// Keeps the only lane of a server busy: a first commit (the gatekeeper's) waits on a row
/// lock the test holds, so the commits that follow queue up and form one batch when the
/// gate opens.
struct Gate {
    hold: sqlx::Transaction<'static, sqlx::Postgres>,
    /// Since when the gatekeeper's commit holds the lane, blocked.
    blocked: Instant,
    commit: tokio::task::JoinHandle<Result<CommitOutcome, mjolnir_client::ClientError>>,
}

/// Waits until `ready` holds, checking every few milliseconds, for at most 10 s.
async fn wait_until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Gate {
    async fn close(db: &TestDb, url: &str) -> Gate {
        let mut hold = db.pool().await.begin().await.unwrap();
        sqlx::query("SELECT n FROM gate WHERE id = 1 FOR UPDATE")
            .execute(&mut *hold)
            .await
            .unwrap();
        let gate = Client::connect(url, Some("gatekeeper")).await.unwrap();
        let gate_writes = writes(vec![(
            Key::row("gate", 1),
            WriteOp::Update {
                set: obj(json!({"n": 1})),
            },
        )]);
        let gate_txn = gate.next_txn_id();
        let commit =
            tokio::spawn(async move { gate.commit(gate_txn, ReadSet::new(), gate_writes).await });
        // The lane holds it, blocked on the row lock the test holds.
        let pool = db.pool().await;
        wait_until(
            "the gatekeeper's commit to wait for the row lock",
            async || {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                waiting > 0
            },
        )
        .await;
        Gate {
            hold,
            blocked: Instant::now(),
            commit,
        }
    }

    /// Queues `txns` behind the gate in this order, then opens it: they form one batch.
    /// Returns their outcomes, in order.
    /// Each waits until the one before is in the queue (or answered, if the server
    /// refused it before the queue), so the queue holds them in this order. Also returns
    /// how long the gate held the lane, at least.
    async fn commit_in_order(
        self,
        server: &Running,
        txns: Vec<(Client, TxnId, ReadSet, WriteSet)>,
    ) -> (Vec<CommitOutcome>, Duration) {
        let queued = || server.state.metrics.commits_queued.get();
        let mut running = Vec::new();
        for (client, txn, reads, w) in txns {
            let before = queued();
            let task = tokio::spawn(async move { client.commit(txn, reads, w).await });
            wait_until("the commit to be queued", async || {
                queued() > before || task.is_finished()
            })
            .await;
            running.push(task);
        }
        let held = self.blocked.elapsed();
        self.hold.rollback().await.unwrap();
        assert!(matches!(
            self.commit.await.unwrap().unwrap(),
            CommitOutcome::Committed(_)
        ));
        let mut outcomes = Vec::new();
        for r in running {
            outcomes.push(r.await.unwrap().unwrap());
        }
        (outcomes, held)
    }
}

/// A server whose commits share one lane, in batches of at most `group_commit`.
async fn start_one_lane(db: &TestDb, app: &std::path::Path, group_commit: usize) -> Running {
    db.start_with(app, |c| {
        c.knobs.group_commit = group_commit;
        c.knobs.group_commit_lanes = 1;
    })
    .await
}

/// Transactions per batch seen by `server`: (batches, transactions, batches of more than 4).
fn batches(server: &Running) -> (u64, u64, u64) {
    let value = |prefix: &str| metric(server, prefix);
    let count = value("mjolnir_commit_batch_size_count ") as u64;
    let sum = value("mjolnir_commit_batch_size_sum ") as u64;
    let upto4 = value("mjolnir_commit_batch_size_bucket{le=\"4.0\"} ") as u64;
    (count, sum, count - upto4)
}

/// One batch holding: a commit, a conflict with it, a deferred-constraint failure, a
/// forbidden write, a transfer whose intermediate state breaks the deferred constraint, a
/// re-send of that transfer under the same txn id, an immediate CHECK failure, and a commit
/// after it. Each must get its own outcome.
async fn mixed_batch(group_commit: usize) {
    let db = TestDb::new(&format!("gc_mixed_{group_commit}")).await;
    let app = app_with_schema(&schema());
    let server = start_one_lane(&db, app.path(), group_commit).await;
    let url = server.ws_url();
    let connect = async |user: &str| Client::connect(&url, Some(user)).await.unwrap();

    let gate = Gate::close(&db, &url).await;

    let (alice, bob, carol, dave, dave2, erin) = (
        connect("alice").await,
        connect("bob").await,
        connect("carol").await,
        connect("dave").await,
        connect("dave").await,
        connect("erin").await,
    );
    let r1 = read_set(&alice, &[acct(1), acct(2)]).await;
    let r2 = read_set(&bob, &[acct(1), acct(3)]).await;
    let r3 = read_set(&carol, &[acct(4)]).await;
    let r4 = read_set(&alice, &[Key::row("profiles", "bob")]).await;
    let r5 = read_set(&dave, &[acct(5), acct(6)]).await;
    let r8 = read_set(&erin, &[acct(7), acct(8)]).await;
    let t5 = dave.next_txn_id();

    let deface = writes(vec![(
        Key::row("profiles", "bob"),
        WriteOp::Update {
            set: obj(json!({"motto": "pwned"})),
        },
    )]);
    let txns: Vec<(Client, TxnId, ReadSet, WriteSet)> = vec![
        // 1: a transfer.
        (
            alice.clone(),
            alice.next_txn_id(),
            r1,
            set_balances(&[(1, 90), (2, 110)]),
        ),
        // 2: read account 1 before 1 wrote it: a conflict, answered with 1's value.
        (
            bob.clone(),
            bob.next_txn_id(),
            r2,
            set_balances(&[(1, 80), (3, 120)]),
        ),
        // 3: creates money: the deferred trigger refuses it.
        (
            carol.clone(),
            carol.next_txn_id(),
            r3,
            set_balances(&[(4, 150)]),
        ),
        // 4: someone else's row: forbidden by the policies.
        (alice.clone(), alice.next_txn_id(), r4, deface),
        // 5: a transfer; after its first update the total is off, so it commits only if
        // the conservation trigger is deferred again after 3's check.
        (
            dave.clone(),
            t5.clone(),
            r5.clone(),
            set_balances(&[(5, 60), (6, 140)]),
        ),
        // 6: 5 again, re-sent under the same txn id from another connection.
        (dave2.clone(), t5, r5, set_balances(&[(5, 60), (6, 140)])),
        // 7: a negative balance: the immediate CHECK refuses it.
        (
            erin.clone(),
            erin.next_txn_id(),
            r8.clone(),
            set_balances(&[(7, -5), (8, 205)]),
        ),
        // 8: reads what 7 would have written: current, since 7 was undone.
        (
            erin.clone(),
            erin.next_txn_id(),
            r8,
            set_balances(&[(7, 50), (8, 150)]),
        ),
    ];
    let (outcomes, held) = gate.commit_in_order(&server, txns).await;

    let CommitOutcome::Committed(v1) = outcomes[0] else {
        panic!("1 commits: {outcomes:?}")
    };
    let CommitOutcome::Conflict(stale) = &outcomes[1] else {
        panic!("2 conflicts: {outcomes:?}")
    };
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0].key, acct(1));
    assert_eq!(stale[0].version, v1, "the conflict carries 1's version");
    assert_eq!(stale[0].value.as_ref().unwrap()["balance"], 90);
    assert!(
        matches!(&outcomes[2], CommitOutcome::Rejected(e) if e.code == ErrorKind::ConstraintViolation),
        "3: {outcomes:?}"
    );
    assert!(
        matches!(&outcomes[3], CommitOutcome::Rejected(e) if e.code == ErrorKind::Forbidden),
        "4: {outcomes:?}"
    );
    let CommitOutcome::Committed(v5) = outcomes[4] else {
        panic!("5 commits: {outcomes:?}")
    };
    assert_eq!(
        outcomes[5],
        CommitOutcome::Committed(v5),
        "the re-send answers 5's version"
    );
    assert!(
        matches!(&outcomes[6], CommitOutcome::Rejected(e) if e.code == ErrorKind::ConstraintViolation),
        "7: {outcomes:?}"
    );
    let CommitOutcome::Committed(v8) = outcomes[7] else {
        panic!("8 commits: {outcomes:?}")
    };
    assert!(v1 < v5 && v5 < v8, "versions follow commit order");

    let pool = db.pool().await;
    let balances: Vec<(i32, i32)> = sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected = [90, 110, 100, 100, 60, 140, 50, 150, 100, 100];
    assert_eq!(
        balances,
        expected
            .iter()
            .enumerate()
            .map(|(i, &b)| (i as i32 + 1, b))
            .collect::<Vec<_>>()
    );
    let (motto,): (String,) = sqlx::query_as("SELECT motto FROM profiles WHERE name = 'bob'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(motto, "yo");
    let (recorded,): (i64,) = sqlx::query_as("SELECT count(*) FROM mjolnir.txns")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, 4, "the gate, 1, 5 and 8");
    let versions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT pk, version FROM mjolnir.versions WHERE space = 'accounts' ORDER BY pk::int",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let v = |n: u64| n as i64;
    assert_eq!(
        versions,
        vec![
            ("1".into(), v(v1.0)),
            ("2".into(), v(v1.0)),
            ("5".into(), v(v5.0)),
            ("6".into(), v(v5.0)),
            ("7".into(), v(v8.0)),
            ("8".into(), v(v8.0)),
        ]
    );

    let (_, _, big) = batches(&server);
    // The gate's commit held the lane on the test's lock: busy time.
    let busy = metric(&server, "mjolnir_commit_lane_busy_seconds_total ");
    if group_commit > 1 {
        assert!(big >= 1, "the 8 transactions must have formed one batch");
        assert!(
            busy >= held.as_secs_f64(),
            "the lane was busy {busy} s, held {held:?}"
        );
    } else {
        assert_eq!(big, 0);
        assert_eq!(busy, 0.0, "no lane without group commit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_batch_gives_each_transaction_its_own_outcome() {
    mixed_batch(64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_transactions_without_group_commit() {
    mixed_batch(1).await;
}

/// A batch whose transactions write each key at most once, in a database without deferred
/// constraints, is applied set-based: one statement per (user, table, kind of write) for the
/// whole batch. Its transactions get the same outcomes as alone: a conflict with an earlier
/// transaction of the batch, transfers, a kv put and an insert, and an update under another
/// user's row-level security.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_batch_is_applied_set_based() {
    let db = TestDb::new("gc_set_based").await;
    let app = app_with_schema(PLAIN);
    let server = start_one_lane(&db, app.path(), 64).await;
    let url = server.ws_url();
    let connect = async |user: &str| Client::connect(&url, Some(user)).await.unwrap();
    let gate = Gate::close(&db, &url).await;
    let (alice, bob, carol, dave) = (
        connect("alice").await,
        connect("bob").await,
        connect("carol").await,
        connect("dave").await,
    );
    let r1 = read_set(&alice, &[acct(1), acct(2)]).await;
    let r2 = read_set(&bob, &[acct(1)]).await;
    let r3 = read_set(&carol, &[acct(3), acct(4)]).await;
    let r5 = read_set(&bob, &[Key::row("profiles", "bob")]).await;
    let txns: Vec<(Client, ReadSet, WriteSet)> = vec![
        // 1: a transfer.
        (alice.clone(), r1, set_balances(&[(1, 90), (2, 110)])),
        // 2: read account 1 before 1 wrote it: a conflict.
        (bob.clone(), r2, set_balances(&[(9, 200), (10, 0)])),
        // 3: another transfer.
        (carol.clone(), r3, set_balances(&[(3, 95), (4, 105)])),
        // 4: a kv put and an insert, read nothing.
        (
            dave.clone(),
            ReadSet::new(),
            writes(vec![
                (
                    Key::kv("greeting"),
                    WriteOp::Put {
                        value: json!({"hi": 1}),
                    },
                ),
                (
                    Key::row("notes", "n1"),
                    WriteOp::Insert {
                        row: obj(json!({"body": "first"})),
                    },
                ),
            ]),
        ),
        // 5: bob's own row, which only bob may update.
        (
            bob.clone(),
            r5,
            writes(vec![(
                Key::row("profiles", "bob"),
                WriteOp::Update {
                    set: obj(json!({"motto": "set-based"})),
                },
            )]),
        ),
    ];
    let txns = txns
        .into_iter()
        .map(|(client, reads, w)| (client.clone(), client.next_txn_id(), reads, w))
        .collect();
    let (outcomes, _) = gate.commit_in_order(&server, txns).await;

    let committed = |i: usize| match &outcomes[i] {
        CommitOutcome::Committed(v) => *v,
        other => panic!("{} commits: {other:?}", i + 1),
    };
    let (v1, v3, v4, v5) = (committed(0), committed(2), committed(3), committed(4));
    assert!(v1 < v3 && v3 < v4 && v4 < v5, "versions follow batch order");
    let CommitOutcome::Conflict(stale) = &outcomes[1] else {
        panic!("2 conflicts: {outcomes:?}")
    };
    assert_eq!(stale[0].key, acct(1));
    assert_eq!(stale[0].version, v1);
    assert_eq!(stale[0].value.as_ref().unwrap()["balance"], 90);

    let pool = db.pool().await;
    let balances: Vec<(i32,)> = sqlx::query_as("SELECT balance FROM accounts ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let balances: Vec<i32> = balances.into_iter().map(|(b,)| b).collect();
    assert_eq!(balances, [90, 110, 95, 105, 100, 100, 100, 100, 100, 100]);
    let one = async |sql: &'static str| -> Value {
        let (value,): (Value,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
        value
    };
    assert_eq!(
        one("SELECT value FROM mjolnir.kv WHERE key = 'greeting'").await,
        json!({"hi": 1})
    );
    assert_eq!(
        one("SELECT to_jsonb(body) FROM notes WHERE id = 'n1'").await,
        json!("first")
    );
    assert_eq!(
        one("SELECT to_jsonb(motto) FROM profiles WHERE name = 'bob'").await,
        json!("set-based")
    );
    let versions: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT space, pk, version FROM mjolnir.versions WHERE space <> 'gate' ORDER BY version, space, pk",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let at = |v: mjolnir_core::Version| v.0 as i64;
    assert_eq!(
        versions,
        vec![
            ("accounts".into(), "1".into(), at(v1)),
            ("accounts".into(), "2".into(), at(v1)),
            ("accounts".into(), "3".into(), at(v3)),
            ("accounts".into(), "4".into(), at(v3)),
            ("".into(), "greeting".into(), at(v4)),
            ("notes".into(), "n1".into(), at(v4)),
            ("profiles".into(), "bob".into(), at(v5)),
        ]
    );
    assert_set_based(&server, 5);
}

/// Fails unless at least `n` transactions were decided by the set-based path.
fn assert_set_based(server: &Running, n: u32) {
    let metrics = server.state.metrics.render();
    let set_based = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mjolnir_set_based_commits_total "))
        .map(|v| v.trim().parse::<f64>().unwrap())
        .unwrap_or(0.0);
    assert!(
        set_based >= f64::from(n),
        "fewer than {n} transactions were set-based:\n{metrics}"
    );
}

/// The set forms of the other writes: deleting a row and a kv entry, and an update that
/// sets nothing (it still locks the row). Each is a prepared statement of its own (migration
/// 0005); one that failed would send the batch down the slow path, which the metric shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_and_empty_updates_are_applied_set_based() {
    let db = TestDb::new("gc_set_deletes").await;
    let app = app_with_schema(PLAIN);
    let server = start_one_lane(&db, app.path(), 64).await;
    let url = server.ws_url();
    let pool = db.pool().await;
    sqlx::query("INSERT INTO notes VALUES ('n1', 'gone soon'), ('n2', 'stays')")
        .execute(&pool)
        .await
        .unwrap();
    let alice = Client::connect(&url, Some("alice")).await.unwrap();
    let put = writes(vec![(Key::kv("k"), WriteOp::Put { value: json!(1) })]);
    let outcome = alice.commit(alice.next_txn_id(), ReadSet::new(), put).await;
    assert!(
        matches!(outcome, Ok(CommitOutcome::Committed(_))),
        "{outcome:?}"
    );

    let gate = Gate::close(&db, &url).await;
    let blind = |w: Vec<(Key, WriteOp)>| {
        (
            alice.clone(),
            alice.next_txn_id(),
            ReadSet::new(),
            writes(w),
        )
    };
    let txns = vec![
        blind(vec![
            (Key::row("notes", "n1"), WriteOp::Delete),
            (Key::kv("k"), WriteOp::Delete),
        ]),
        blind(vec![(
            acct(5),
            WriteOp::Update {
                set: obj(json!({})),
            },
        )]),
        blind(vec![(acct(6), WriteOp::Delete)]),
    ];
    let (outcomes, _) = gate.commit_in_order(&server, txns).await;
    for (i, o) in outcomes.iter().enumerate() {
        assert!(matches!(o, CommitOutcome::Committed(_)), "{}: {o:?}", i + 1);
    }
    let count = async |sql: &'static str| -> i64 {
        let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
        n
    };
    assert_eq!(count("SELECT count(*) FROM notes WHERE id = 'n1'").await, 0);
    assert_eq!(count("SELECT count(*) FROM notes").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM mjolnir.kv WHERE key = 'k'").await,
        0
    );
    assert_eq!(count("SELECT count(*) FROM accounts").await, 9);
    assert_eq!(
        count("SELECT count(*) FROM accounts WHERE id = 5 AND balance = 100").await,
        1
    );
    assert_set_based(&server, 3);
}

/// Writes that change nothing, in a set-based batch: an empty update, an update to the same
/// balance, a put of the value already stored and the delete of an absent kv entry. Each is
/// applied (its statement runs) but draws no new value version: a transaction that read
/// those keys before still commits, and only the real change of the batch is announced
/// (migration 0006).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_that_change_nothing_draw_no_new_version_in_a_set_based_batch() {
    let db = TestDb::new("gc_set_noops").await;
    let app = app_with_schema(PLAIN);
    let server = start_one_lane(&db, app.path(), 64).await;
    let url = server.ws_url();
    let alice = Client::connect(&url, Some("alice")).await.unwrap();
    let put = |v: Value| writes(vec![(Key::kv("k"), WriteOp::Put { value: v })]);
    let outcome = alice
        .commit(alice.next_txn_id(), ReadSet::new(), put(json!({"a": 1})))
        .await;
    assert!(
        matches!(outcome, Ok(CommitOutcome::Committed(_))),
        "{outcome:?}"
    );
    let keys = [acct(1), acct(2), Key::kv("k"), Key::kv("absent"), acct(3)];
    let before = read_set(&alice, &keys).await;
    let mut pushes = alice.pushes();

    let gate = Gate::close(&db, &url).await;
    let blind = |w: WriteSet| (alice.clone(), alice.next_txn_id(), ReadSet::new(), w);
    let txns = vec![
        blind(writes(vec![(
            acct(1),
            WriteOp::Update {
                set: obj(json!({})),
            },
        )])),
        blind(set_balances(&[(2, 100)])),
        blind(put(json!({"a": 1}))),
        blind(writes(vec![(Key::kv("absent"), WriteOp::Delete)])),
        blind(set_balances(&[(3, 99)])),
    ];
    let (outcomes, _) = gate.commit_in_order(&server, txns).await;
    let mut versions = Vec::new();
    for (i, o) in outcomes.iter().enumerate() {
        match o {
            CommitOutcome::Committed(v) => versions.push(*v),
            other => panic!("{}: {other:?}", i + 1),
        }
    }
    assert_set_based(&server, 5);

    // Reads from before the batch: current but for account 3's.
    for key in &keys {
        let reads: ReadSet = before
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(k, v)| (k.clone(), v))
            .collect();
        let outcome = alice
            .commit(alice.next_txn_id(), reads, set_balances(&[(9, 1)]))
            .await
            .unwrap();
        match (key == &acct(3), &outcome) {
            (false, CommitOutcome::Committed(_)) | (true, CommitOutcome::Conflict(_)) => {}
            _ => panic!("a read of {key} from before the batch: {outcome:?}"),
        }
    }
    // The writer's own view: each key at its commit's version is current too.
    for (key, version) in keys[..4].iter().zip(&versions) {
        let reads: ReadSet = [(key.clone(), *version)].into_iter().collect();
        let outcome = alice
            .commit(alice.next_txn_id(), reads, set_balances(&[(10, 1)]))
            .await
            .unwrap();
        assert!(
            matches!(outcome, CommitOutcome::Committed(_)),
            "a read of {key} at {version}: {outcome:?}"
        );
    }
    // The first push from the batch is account 3's change: the no-ops announced nothing.
    // (A push of a commit from before the batch may still arrive first: the change feed
    // can reach this connection after its reads subscribed it.)
    let newest_before = before.iter().map(|(_, v)| v).max().unwrap_or_default();
    let (pushed, changes) = loop {
        let (pushed, changes) = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
            .await
            .expect("a push within 10 s")
            .unwrap();
        if pushed > newest_before {
            break (pushed, changes);
        }
    };
    assert_eq!(pushed, versions[4]);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key, acct(3));
}

/// With a deferred constraint in the database, batches are decided one transaction at a
/// time. Here a deferred UNIQUE: the first transaction takes a value the second one frees.
/// Checked at the end of each transaction, in batch order, the first is refused; checked
/// once after a set-based batch, both would pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deferred_constraint_is_checked_for_each_transaction_of_a_batch() {
    let db = TestDb::new("gc_deferred").await;
    let app = app_with_schema(&format!(
        "{PLAIN}
         CREATE TABLE tags (id integer PRIMARY KEY, x integer NOT NULL,
                            CONSTRAINT x_once UNIQUE (x) DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO tags VALUES (1, 1), (2, 5);"
    ));
    let server = start_one_lane(&db, app.path(), 64).await;
    let url = server.ws_url();
    let gate = Gate::close(&db, &url).await;
    let (alice, bob) = (
        Client::connect(&url, Some("alice")).await.unwrap(),
        Client::connect(&url, Some("bob")).await.unwrap(),
    );
    let tag = |id: i64| Key::row("tags", id);
    let set_x = |id: i64, x: i64| {
        writes(vec![(
            tag(id),
            WriteOp::Update {
                set: obj(json!({ "x": x })),
            },
        )])
    };
    let r1 = read_set(&alice, &[tag(1)]).await;
    let r2 = read_set(&bob, &[tag(2)]).await;
    let (outcomes, _) = gate
        .commit_in_order(
            &server,
            vec![
                (alice.clone(), alice.next_txn_id(), r1, set_x(1, 5)),
                (bob.clone(), bob.next_txn_id(), r2, set_x(2, 6)),
            ],
        )
        .await;
    assert!(
        matches!(&outcomes[0], CommitOutcome::Rejected(e) if e.code == ErrorKind::ConstraintViolation),
        "the first takes a value still in use: {outcomes:?}"
    );
    assert!(
        matches!(outcomes[1], CommitOutcome::Committed(_)),
        "{outcomes:?}"
    );
    let xs: Vec<(i32, i32)> = sqlx::query_as("SELECT id, x FROM tags ORDER BY id")
        .fetch_all(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(xs, [(1, 1), (2, 6)]);
    let (count, sum, _) = batches(&server);
    assert!(sum > count, "the two must have formed one batch");
}

/// The lane keeps its connection between batches. If that connection dies meanwhile (here:
/// its backend is terminated), the next commit on the lane fails on it, and is committed on
/// a pooled connection instead: the client sees it commit, once, not an internal error.
#[tokio::test]
async fn a_lane_whose_connection_died_commits_on_another() {
    let db = TestDb::new("gc_lane_conn").await;
    let app = app_with_schema(&schema());
    let server = start_one_lane(&db, app.path(), 16).await;
    let client = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let bump = |n: i64| {
        writes(vec![(
            Key::row("gate", 1),
            WriteOp::Update {
                set: obj(json!({ "n": n })),
            },
        )])
    };
    let reads = read_set(&client, &[Key::row("gate", 1)]).await;
    let (_, first) = client.commit_new(reads, bump(1)).await.unwrap();
    assert!(matches!(first, CommitOutcome::Committed(_)), "{first:?}");

    let pool = db.pool().await;
    let (killed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND query LIKE '%mjolnir.commit_batch%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(killed >= 1, "the lane's connection ran the first commit");

    let reads = read_set(&client, &[Key::row("gate", 1)]).await;
    let (_, second) = client.commit_new(reads, bump(2)).await.unwrap();
    assert!(matches!(second, CommitOutcome::Committed(_)), "{second:?}");
    let (n,): (i32,) = sqlx::query_as("SELECT n FROM gate WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

/// Counters bumped by many clients through two instances, in batches of at most 3: every
/// acknowledged increment is there exactly once, and the conflicts inside batches are
/// answered and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_batches_from_many_clients_lose_no_increment() {
    const CLIENTS: usize = 12;
    const BUMPS: usize = 40;
    let db = TestDb::new("gc_small").await;
    let app = app_with_schema(
        "CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL);
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 3) g;",
    );
    let tweak = |c: &mut mjolnir_server::server::Config| {
        c.knobs.group_commit = 3;
        c.knobs.group_commit_lanes = 1;
    };
    let a = db.start_with(app.path(), tweak).await;
    let b = db.start_with(app.path(), tweak).await;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = if c % 2 == 0 { a.ws_url() } else { b.ws_url() };
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(&url, Some(&format!("c{c}"))).await.unwrap();
            let policy = RetryPolicy {
                max_attempts: 1000,
                base_delay_ms: 1,
                max_delay_ms: 20,
            };
            let mut conflicts = 0;
            for _ in 0..BUMPS {
                let id = rand::rng().random_range(1..=3i64);
                let done = client
                    .run(&policy, async move |tx| {
                        let k = Key::row("counters", id);
                        let row = tx.get(k.clone()).await?;
                        let n = row.as_ref().and_then(|r| r["n"].as_i64()).unwrap();
                        tx.update(k, obj(json!({ "n": n + 1 })));
                        Ok::<(), TxAbort>(())
                    })
                    .await
                    .unwrap();
                conflicts += done.attempts - 1;
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let (total,): (i64,) = sqlx::query_as("SELECT sum(n)::bigint FROM counters")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(total, (CLIENTS * BUMPS) as i64, "an increment was lost");
    let (count_a, sum_a, _) = batches(&a);
    let (count_b, sum_b, _) = batches(&b);
    eprintln!(
        "{} transactions in {} batches, {conflicts} conflicts",
        sum_a + sum_b,
        count_a + count_b
    );
    assert!(
        sum_a + sum_b > count_a + count_b,
        "some batches must hold several transactions"
    );
}

/// Throughput: 32 clients doing transfers between 1,000 accounts (read both, update both:
/// what pgbench's transfer does) for a few seconds, with and without group commit.
/// `cargo test -p mjolnir-server --release --test group_commit -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check"]
async fn throughput_at_32_clients() {
    for (label, group_commit, lanes) in [
        ("off", 1, 1),
        ("on, 1 lane", 64, 1),
        ("on, 2 lanes", 64, 2),
        ("on, 4 lanes", 64, 4),
    ] {
        let db = TestDb::new("gc_tput").await;
        let app = app_with_schema(
            "CREATE TABLE accounts (id integer PRIMARY KEY, balance integer NOT NULL);
             INSERT INTO accounts SELECT g, 100000 FROM generate_series(1, 1000) g;",
        );
        let server = db
            .start_with(app.path(), |c| {
                c.knobs.group_commit = group_commit;
                c.knobs.group_commit_lanes = lanes;
                c.knobs.pool_size = 40;
            })
            .await;
        let secs = std::env::var("MJOLNIR_TPUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5u64);
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for c in 0..32 {
            let url = server.ws_url();
            tasks.push(tokio::spawn(async move {
                let client = Client::connect(&url, Some(&format!("c{c}"))).await.unwrap();
                let policy = RetryPolicy::default();
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let (from, to) = {
                        let mut rng = rand::rng();
                        let from = rng.random_range(1..=1000i64);
                        let mut to = rng.random_range(1..=1000i64);
                        while to == from {
                            to = rng.random_range(1..=1000i64);
                        }
                        (from, to)
                    };
                    client
                        .run(&policy, async move |tx| {
                            let rows = tx.get_many(vec![acct(from), acct(to)]).await?;
                            let b = |r: &Option<Value>| {
                                r.as_ref().unwrap()["balance"].as_i64().unwrap()
                            };
                            let (fb, tb) = (b(&rows[0]), b(&rows[1]));
                            tx.update(acct(from), obj(json!({ "balance": fb - 1 })));
                            tx.update(acct(to), obj(json!({ "balance": tb + 1 })));
                            Ok::<(), TxAbort>(())
                        })
                        .await
                        .unwrap();
                    done += 1;
                }
                done
            }));
        }
        let started = Instant::now();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let (count, sum, _) = batches(&server);
        eprintln!(
            "group commit {label}: {:.0} transfers/s ({total} in {:.1} s), mean batch {:.1}",
            total as f64 / started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64(),
            if count > 0 {
                sum as f64 / count as f64
            } else {
                1.0
            }
        );
    }
}
