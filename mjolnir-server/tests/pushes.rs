//! Pushes: every committed change reaches every connection holding the key, on any
//! instance, and never shows a user what the app's policies hide from them.

mod support;

use mjolnir_client::{Client, CommitOutcome};
use mjolnir_core::protocol::Entry;
use mjolnir_core::{Key, ReadSet, Version, WriteOp, WriteSet};
use serde_json::json;
use std::time::Duration;
use support::{COUNTER_SCHEMA, TestDb, app_with_schema, obj, writes};

async fn next_push(
    rx: &mut tokio::sync::broadcast::Receiver<(Version, Vec<Entry>)>,
) -> (Version, Vec<Entry>) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a push in time")
        .expect("push stream open")
}

fn update(key: &Key, set: serde_json::Value) -> WriteSet {
    writes(vec![(key.clone(), WriteOp::Update { set: obj(set) })])
}

#[tokio::test]
async fn pushes_arrive_in_commit_order_across_instances() {
    let db = TestDb::new("push_order").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let writer = Client::connect(&a.ws_url(), Some("w")).await.unwrap();
    let watcher = Client::connect(&b.ws_url(), Some("v")).await.unwrap();
    let k = Key::row("counters", 1);
    let mut pushes = watcher.pushes();
    watcher.read(vec![k.clone()]).await.unwrap();

    let mut committed = Vec::new();
    for n in 1..=20 {
        let e = writer.read(vec![k.clone()]).await.unwrap().remove(0);
        let reads: ReadSet = [(k.clone(), e.version)].into_iter().collect();
        let CommitOutcome::Committed(v) = writer
            .commit(writer.next_txn_id(), reads, update(&k, json!({"n": n})))
            .await
            .unwrap()
        else {
            panic!("a lone writer never conflicts")
        };
        committed.push((v, n));
    }
    for (version, n) in committed {
        let (pushed, changes) = next_push(&mut pushes).await;
        assert_eq!(pushed, version, "pushes come in commit order");
        assert_eq!(
            changes,
            vec![Entry {
                key: k.clone(),
                version,
                value: Some(json!({"id": 1, "n": n}))
            }]
        );
    }
}

#[tokio::test]
async fn pushes_never_show_a_row_the_policies_hide() {
    let db = TestDb::new("push_rls").await;
    let app = app_with_schema(
        "CREATE TABLE notes (id integer PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
         INSERT INTO notes VALUES (1, 'alice', 'secret');
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_notes ON notes USING (owner = mjolnir.user_id());",
    );
    let server = db.start(app.path()).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let bob = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();
    let k = Key::row("notes", 1);

    let (mut alice_pushes, mut bob_pushes) = (alice.pushes(), bob.pushes());
    let seen_by_bob = bob.read(vec![k.clone()]).await.unwrap().remove(0);
    assert_eq!(seen_by_bob.value, None, "bob cannot read alice's note");
    let mine = alice.read(vec![k.clone()]).await.unwrap().remove(0);
    assert_eq!(mine.value.as_ref().unwrap()["body"], "secret");

    let reads: ReadSet = [(k.clone(), mine.version)].into_iter().collect();
    let outcome = alice
        .commit(
            alice.next_txn_id(),
            reads,
            update(&k, json!({"body": "even more secret"})),
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );

    let (_, to_alice) = next_push(&mut alice_pushes).await;
    assert_eq!(
        to_alice[0].value.as_ref().unwrap()["body"],
        "even more secret"
    );
    let (_, to_bob) = next_push(&mut bob_pushes).await;
    assert_eq!(to_bob[0].key, k);
    assert_eq!(
        to_bob[0].value, None,
        "the push to bob must not carry the hidden row"
    );
}

/// A change set too large for a NOTIFY payload (8000 bytes) travels through
/// `mjolnir.commit_log` and still reaches the other instance whole, with JSON that needs
/// escaping (quotes, backslashes, non-ASCII) intact.
#[tokio::test]
async fn a_large_change_set_reaches_other_instances_through_the_log() {
    let db = TestDb::new("push_large").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let writer = Client::connect(&a.ws_url(), Some("w")).await.unwrap();
    let watcher = Client::connect(&b.ws_url(), Some("v")).await.unwrap();
    let k = Key::kv("essay \"quoted\" ünïcode");
    let mut pushes = watcher.pushes();
    watcher.read(vec![k.clone()]).await.unwrap();

    let text = "a \"line\" with a \\ and ö\n".repeat(1000);
    let value = json!({ "text": text, "n": 12345678901234i64 });
    let put = writes(vec![(
        k.clone(),
        WriteOp::Put {
            value: value.clone(),
        },
    )]);
    let CommitOutcome::Committed(version) = writer
        .commit(writer.next_txn_id(), ReadSet::new(), put)
        .await
        .unwrap()
    else {
        panic!("a blind put commits")
    };
    let (pushed, changes) = next_push(&mut pushes).await;
    assert_eq!(pushed, version);
    assert_eq!(
        changes,
        vec![Entry {
            key: k,
            version,
            value: Some(value)
        }]
    );
    let (logged,): (i64,) = sqlx::query_as("SELECT count(*) FROM mjolnir.commit_log")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(logged, 1, "the change set went through the log");
}
