//! The classic anomalies OCC must prevent, each forced with two clients.

mod support;

use mjolnir_client::{Client, CommitOutcome};
use mjolnir_core::{ErrorKind, Key, ReadSet, Version, WriteOp};
use serde_json::{Value, json};
use support::{COUNTER_SCHEMA, TestDb, app_with_schema, obj, writes};

/// Reads `keys` and returns a read set of the versions seen, plus the values.
async fn read(client: &Client, keys: &[Key]) -> (ReadSet, Vec<Option<Value>>) {
    let entries = client.read(keys.to_vec()).await.unwrap();
    let reads = entries.iter().map(|e| (e.key.clone(), e.version)).collect();
    (reads, entries.into_iter().map(|e| e.value).collect())
}

#[tokio::test]
async fn write_skew_between_two_doctors_aborts_one() {
    let db = TestDb::new("skew").await;
    let app = app_with_schema(
        "CREATE TABLE doctors (name text PRIMARY KEY, on_call boolean NOT NULL);
         INSERT INTO doctors VALUES ('alice', true), ('bob', true);",
    );
    let server = db.start(app.path()).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let bob = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();
    let both = [Key::row("doctors", "alice"), Key::row("doctors", "bob")];

    // Each sees two doctors on call, so each thinks it may leave.
    let (reads_a, seen_a) = read(&alice, &both).await;
    let (reads_b, seen_b) = read(&bob, &both).await;
    assert!(
        seen_a
            .iter()
            .chain(&seen_b)
            .all(|r| r.as_ref().unwrap()["on_call"] == true)
    );
    let leave = |who: &str| {
        writes(vec![(
            Key::row("doctors", who),
            WriteOp::Update {
                set: obj(json!({"on_call": false})),
            },
        )])
    };

    let a = alice
        .commit(alice.next_txn_id(), reads_a, leave("alice"))
        .await
        .unwrap();
    let b = bob
        .commit(bob.next_txn_id(), reads_b, leave("bob"))
        .await
        .unwrap();
    assert!(matches!(a, CommitOutcome::Committed(_)), "{a:?}");
    let CommitOutcome::Conflict(stale) = b else {
        panic!("bob must conflict, got {b:?}")
    };
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].key, Key::row("doctors", "alice"));
    assert_eq!(
        stale[0].value.as_ref().unwrap()["on_call"],
        false,
        "the conflict carries the current value"
    );

    let (on_call,): (i64,) = sqlx::query_as("SELECT count(*) FROM doctors WHERE on_call")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(on_call, 1, "someone must stay on call");
}

#[tokio::test]
async fn two_inserts_of_one_missing_key_conflict() {
    let db = TestDb::new("insert_race").await;
    let app = app_with_schema("CREATE TABLE names (name text PRIMARY KEY, owner text NOT NULL);");
    let server = db.start(app.path()).await;
    let a = Client::connect(&server.ws_url(), Some("a")).await.unwrap();
    let b = Client::connect(&server.ws_url(), Some("b")).await.unwrap();
    let k = Key::row("names", "thor");

    let (reads_a, seen_a) = read(&a, std::slice::from_ref(&k)).await;
    let (reads_b, seen_b) = read(&b, std::slice::from_ref(&k)).await;
    assert_eq!(seen_a, vec![None]);
    assert_eq!(seen_b, vec![None]);
    assert_eq!(reads_a.get(&k), Some(Version::ABSENT));

    let claim = |who: &str| {
        writes(vec![(
            k.clone(),
            WriteOp::Insert {
                row: obj(json!({"owner": who})),
            },
        )])
    };
    let ra = a
        .commit(a.next_txn_id(), reads_a, claim("a"))
        .await
        .unwrap();
    let rb = b
        .commit(b.next_txn_id(), reads_b, claim("b"))
        .await
        .unwrap();
    assert!(matches!(ra, CommitOutcome::Committed(_)), "{ra:?}");
    let CommitOutcome::Conflict(stale) = rb else {
        panic!("the second insert must conflict, got {rb:?}")
    };
    assert_eq!(stale[0].value.as_ref().unwrap()["owner"], "a");
}

#[tokio::test]
async fn a_commit_resent_after_a_dropped_connection_is_applied_once() {
    let db = TestDb::new("dedup").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let k = Key::row("counters", 1);

    let first = Client::connect(&a.ws_url(), Some("u")).await.unwrap();
    let (reads, seen) = read(&first, std::slice::from_ref(&k)).await;
    let n = seen[0].as_ref().unwrap()["n"].as_i64().unwrap();
    let txn = first.next_txn_id();
    let bump = writes(vec![(
        k.clone(),
        WriteOp::Update {
            set: obj(json!({"n": n + 1})),
        },
    )]);
    // Send the commit and drop the connection before any reply can arrive.
    let commit = mjolnir_core::ClientMessage::Commit {
        txn: txn.clone(),
        reads: reads.clone(),
        writes: bump.clone(),
        first: true,
        deps: Vec::new(),
        follows: None,
        queries: Vec::new(),
    };
    first.send_raw(commit.to_json()).await.unwrap();
    first.close().await;

    // The client does not know the outcome, so it re-sends the same transaction, through
    // the other instance.
    let again = Client::connect(&b.ws_url(), Some("u")).await.unwrap();
    let outcome = again
        .commit(txn.clone(), reads.clone(), bump.clone())
        .await
        .unwrap();
    let CommitOutcome::Committed(version) = outcome else {
        panic!("a re-sent commit answers committed, got {outcome:?}")
    };
    // And once more: still the same answer, still applied once.
    let outcome = again.commit(txn, reads, bump).await.unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Committed(v) if v == version),
        "{outcome:?}"
    );

    let (n_now,): (i32,) = sqlx::query_as("SELECT n FROM counters WHERE id = 1")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(i64::from(n_now), n + 1, "applied exactly once");
    assert!(
        b.state
            .metrics
            .render()
            .contains("mjolnir_duplicate_commits_total")
    );
}

#[tokio::test]
async fn row_level_security_refuses_a_write_to_someone_elses_row() {
    let db = TestDb::new("rls").await;
    let app = app_with_schema(
        "CREATE TABLE profiles (name text PRIMARY KEY, motto text NOT NULL);
         INSERT INTO profiles VALUES ('alice', 'hi'), ('bob', 'yo');
         ALTER TABLE profiles ENABLE ROW LEVEL SECURITY;
         CREATE POLICY read_all ON profiles FOR SELECT USING (true);
         CREATE POLICY own_row ON profiles FOR UPDATE USING (name = mjolnir.user_id());",
    );
    let server = db.start(app.path()).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let keys = [Key::row("profiles", "alice"), Key::row("profiles", "bob")];
    let (reads, _) = read(&alice, &keys).await;

    let deface = writes(vec![(
        keys[1].clone(),
        WriteOp::Update {
            set: obj(json!({"motto": "pwned"})),
        },
    )]);
    let outcome = alice
        .commit(alice.next_txn_id(), reads.clone(), deface)
        .await
        .unwrap();
    let CommitOutcome::Rejected(err) = outcome else {
        panic!("expected forbidden, got {outcome:?}")
    };
    assert_eq!(err.code, ErrorKind::Forbidden);
    assert_eq!(err.key, Some(keys[1].clone()));

    // Her own row is fine, and the refused write left nothing behind.
    let own = writes(vec![(
        keys[0].clone(),
        WriteOp::Update {
            set: obj(json!({"motto": "hej"})),
        },
    )]);
    let outcome = alice.commit(alice.next_txn_id(), reads, own).await.unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name, motto FROM profiles ORDER BY name")
            .fetch_all(&db.pool().await)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![("alice".into(), "hej".into()), ("bob".into(), "yo".into())]
    );
}

#[tokio::test]
async fn the_bank_example_refuses_theft_and_money_creation() {
    let db = TestDb::new("bank_rules").await;
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bank");
    let server = db.start(&app).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let (a, b) = (Key::row("users", "alice"), Key::row("users", "bob"));
    let (reads, seen) = read(&alice, &[a.clone(), b.clone()]).await;
    assert_eq!(seen[0].as_ref().unwrap()["balance"], 100);

    let set = |k: &Key, balance: i64| {
        (
            k.clone(),
            WriteOp::Update {
                set: obj(json!({"balance": balance})),
            },
        )
    };
    let steal = writes(vec![set(&a, 150), set(&b, 50)]);
    let outcome = alice
        .commit(alice.next_txn_id(), reads.clone(), steal)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, CommitOutcome::Rejected(e) if e.code == ErrorKind::Forbidden),
        "{outcome:?}"
    );

    let print_money = writes(vec![set(&b, 1000)]);
    let outcome = alice
        .commit(alice.next_txn_id(), reads.clone(), print_money)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, CommitOutcome::Rejected(e) if e.code == ErrorKind::ConstraintViolation),
        "{outcome:?}"
    );

    let transfer = writes(vec![set(&a, 70), set(&b, 130)]);
    let outcome = alice
        .commit(alice.next_txn_id(), reads, transfer)
        .await
        .unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );
}
