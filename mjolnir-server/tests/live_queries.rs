//! Live queries: a connection that read a query is pushed its new result, with the new
//! rows, when a commit on any instance changes it, filtered by row-level security as that
//! connection's user; a commit that cannot change a subscribed query re-runs none.

mod support;

use mjolnir_client::Client;
use mjolnir_core::protocol::Entry;
use mjolnir_core::{Key, Op, Query, Version, WriteOp, WriteSet};
use serde_json::{Value, json};
use std::time::Duration;
use support::{TestDb, app_with_schema, blind, metric, obj, writes};

const SCHEMA: &str = "
CREATE TABLE items (id integer PRIMARY KEY, room text NOT NULL, n integer NOT NULL);
INSERT INTO items VALUES (1, 'a', 10), (2, 'a', 30), (3, 'b', 5);
CREATE TABLE notes (id text PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes USING (owner = mjolnir.user_id());
";

type Pushes = tokio::sync::broadcast::Receiver<(Version, Vec<Entry>)>;

/// The next push that carries a result of `query`: the result and the push's entries.
async fn next_result(rx: &mut Pushes, query: &Query) -> (Value, Vec<Entry>) {
    let key = Key::query(query.clone());
    loop {
        let (_, entries) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a push in time")
            .expect("push stream open");
        if let Some(e) = entries.iter().find(|e| e.key == key) {
            return (e.value.clone().unwrap(), entries);
        }
    }
}

fn insert(table: &str, id: impl Into<mjolnir_core::Pk>, row: Value) -> WriteSet {
    writes(vec![(
        Key::row(table, id),
        WriteOp::Insert { row: obj(row) },
    )])
}

fn update(id: i64, set: Value) -> WriteSet {
    writes(vec![(
        Key::row("items", id),
        WriteOp::Update { set: obj(set) },
    )])
}

#[tokio::test]
async fn a_query_follows_inserts_moves_and_deletes_on_either_instance() {
    let db = TestDb::new("live_q").await;
    let app = app_with_schema(SCHEMA);
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let reader = Client::connect(&a.ws_url(), Some("alice")).await.unwrap();
    let writer = Client::connect(&b.ws_url(), Some("bob")).await.unwrap();
    let mut pushes = reader.pushes();

    let q = Query::table("items")
        .filter("room", Op::Eq, json!("a"))
        .order_by("n", false);
    let count = Query::table("items")
        .filter("room", Op::Eq, json!("a"))
        .counted();
    let read = reader
        .read(vec![Key::query(q.clone()), Key::query(count.clone())])
        .await
        .unwrap();
    assert_eq!(read[0].value, Some(json!([1, 2])));
    assert_eq!(read[1].value, Some(json!(2)));

    // An insert into the range, on the other instance: the new result and the new row.
    blind(&writer, insert("items", 4, json!({"room": "a", "n": 20}))).await;
    let (result, entries) = next_result(&mut pushes, &q).await;
    assert_eq!(result, json!([1, 4, 2]));
    let row = entries
        .iter()
        .find(|e| e.key == Key::row("items", 4))
        .unwrap();
    assert_eq!(row.value.as_ref().unwrap()["n"], 20);
    // The count, in the same push.
    let counted = entries.iter().find(|e| e.key == Key::query(count.clone()));
    assert_eq!(counted.unwrap().value, Some(json!(3)));

    // A move out of the range, then a delete, then a re-order.
    blind(&writer, update(1, json!({"room": "b"}))).await;
    assert_eq!(next_result(&mut pushes, &q).await.0, json!([4, 2]));
    blind(
        &writer,
        writes(vec![(Key::row("items", 2), WriteOp::Delete)]),
    )
    .await;
    assert_eq!(next_result(&mut pushes, &q).await.0, json!([4]));
    blind(&writer, insert("items", 5, json!({"room": "a", "n": 1}))).await;
    assert_eq!(next_result(&mut pushes, &q).await.0, json!([5, 4]));
    blind(&writer, update(5, json!({"n": 99}))).await;
    assert_eq!(next_result(&mut pushes, &q).await.0, json!([4, 5]));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_commit_that_cannot_change_a_query_re_runs_none() {
    let db = TestDb::new("live_q_skip").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let reader = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let writer = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();
    let mut pushes = reader.pushes();
    let q = Query::table("items").filter("room", Op::Eq, json!("a"));
    let marker = Key::kv("marker");
    reader
        .read(vec![Key::query(q.clone()), marker.clone()])
        .await
        .unwrap();

    let reruns = || metric(&server, "mjolnir_query_reruns_total");
    let before = reruns();
    // Another room, a row that was never in the result: nothing to re-run.
    blind(&writer, insert("items", 10, json!({"room": "c", "n": 1}))).await;
    blind(&writer, update(3, json!({"n": 6}))).await;
    // A change of a row in the result, that keeps it there, re-runs it; the result is
    // the same keys, so only the row's own push goes out.
    blind(&writer, update(1, json!({"n": 11}))).await;
    // And an insert into the range, which is pushed: by then the two before are done.
    blind(&writer, insert("items", 11, json!({"room": "a", "n": 0}))).await;
    let (result, _) = next_result(&mut pushes, &q).await;
    assert_eq!(result, json!([1, 2, 11]));
    // A re-run reads the latest state, so that result may come from the re-run for the
    // update, before the insert's is done: a last commit's push says every earlier commit
    // has been published (the feed publishes one commit after another).
    blind(
        &writer,
        writes(vec![(marker.clone(), WriteOp::Put { value: json!(1) })]),
    )
    .await;
    loop {
        let (_, entries) = tokio::time::timeout(Duration::from_secs(10), pushes.recv())
            .await
            .expect("a push in time")
            .expect("push stream open");
        if entries.iter().any(|e| e.key == marker) {
            break;
        }
    }
    assert_eq!(
        reruns() - before,
        2.0,
        "only the two commits that touch room a re-run it"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn each_subscriber_gets_the_result_its_policies_allow() {
    let db = TestDb::new("live_q_rls").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let bob = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();
    let mut alice_pushes = alice.pushes();
    let mut bob_pushes = bob.pushes();
    let all = Query::table("notes");
    alice.read(vec![Key::query(all.clone())]).await.unwrap();
    bob.read(vec![Key::query(all.clone())]).await.unwrap();

    blind(
        &bob,
        insert("notes", "b1", json!({"owner": "bob", "body": "his"})),
    )
    .await;
    let (result, entries) = next_result(&mut bob_pushes, &all).await;
    assert_eq!(result, json!(["b1"]));
    assert!(entries.iter().any(|e| e.key == Key::row("notes", "b1")));
    blind(
        &alice,
        insert("notes", "a1", json!({"owner": "alice", "body": "hers"})),
    )
    .await;
    // Alice's first push is her own note: bob's never reached her.
    let (result, entries) = next_result(&mut alice_pushes, &all).await;
    assert_eq!(result, json!(["a1"]));
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("his") && !text.contains("b1"), "{text}");
    server.stop().await.unwrap();
}
