//! An instance tells, without a lane's turn, a first send that read a key older than it
//! knows was committed since (`store/recent.rs`), and only that: re-sends and keys it has
//! not heard of go to the database as before; the stale keys' values are read as the user.

mod support;

use mjolnir_client::{Client, CommitOutcome, Unsolicited};
use mjolnir_core::protocol::{Entry, ServerMessage};
use mjolnir_core::{Key, ReadSet, WriteOp, WriteSet};
use mjolnir_server::server::Running;
use serde_json::json;
use support::{TestDb, app_with_schema, metric, obj, writes};

const SCHEMA: &str = "
CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL);
INSERT INTO counters VALUES (1, 0);
CREATE TABLE diaries (name text PRIMARY KEY, entry text NOT NULL);
INSERT INTO diaries VALUES ('alice', 'dear diary');
ALTER TABLE diaries ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_diary ON diaries USING (name = mjolnir.user_id());
";

fn counter() -> Key {
    Key::row("counters", 1)
}

fn set_n(n: i64) -> WriteSet {
    writes(vec![(
        counter(),
        WriteOp::Update {
            set: obj(json!({"n": n})),
        },
    )])
}

/// Conflicts the instance answered from its recent commits.
fn known_stale(server: &Running) -> u64 {
    metric(server, "mjolnir_known_stale_commits_total ") as u64
}

async fn read_one(client: &Client, key: &Key) -> (ReadSet, Entry) {
    let entry = client.read(vec![key.clone()]).await.unwrap().remove(0);
    ([(key.clone(), entry.version)].into_iter().collect(), entry)
}

/// With and without group commit: the shortcut does not depend on batching.
async fn start(db: &TestDb, app: &std::path::Path, group_commit: usize) -> Running {
    db.start_with(app, |c| c.knobs.group_commit = group_commit)
        .await
}

async fn a_stale_first_send_is_answered_from_memory(group_commit: usize) {
    let db = TestDb::new(&format!("recent{group_commit}")).await;
    let app = app_with_schema(SCHEMA);
    let server = start(&db, app.path(), group_commit).await;
    let client = Client::connect(&server.ws_url(), Some("u")).await.unwrap();
    let (old, _) = read_one(&client, &counter()).await;
    let (_, first) = client.commit_new(old.clone(), set_n(1)).await.unwrap();
    let CommitOutcome::Committed(v1) = first else {
        panic!("{first:?}")
    };
    assert_eq!(known_stale(&server), 0);

    // A new transaction that read the old version: the instance knows better.
    let (_, outcome) = client.commit_new(old.clone(), set_n(7)).await.unwrap();
    let CommitOutcome::Conflict(stale) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(known_stale(&server), 1);
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0].key, counter());
    assert_eq!(stale[0].version, v1);
    assert_eq!(
        stale[0].value.as_ref().unwrap()["n"],
        1,
        "the committed value"
    );

    // The same commit, not marked as a first send, is decided by the database: the same
    // answer, not counted.
    let outcome = client
        .commit(client.next_txn_id(), old, set_n(7))
        .await
        .unwrap();
    let CommitOutcome::Conflict(again) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(again, stale);
    assert_eq!(known_stale(&server), 1);

    // Nothing of the conflicts was applied; a fresh read commits.
    let (now, entry) = read_one(&client, &counter()).await;
    assert_eq!(entry.value.unwrap()["n"], 1);
    let (_, outcome) = client.commit_new(now, set_n(2)).await.unwrap();
    assert!(matches!(outcome, CommitOutcome::Committed(v) if v > v1));
}

#[tokio::test]
async fn a_stale_first_send_is_answered_from_memory_in_a_batch() {
    a_stale_first_send_is_answered_from_memory(16).await;
}

#[tokio::test]
async fn a_stale_first_send_is_answered_from_memory_without_group_commit() {
    a_stale_first_send_is_answered_from_memory(1).await;
}

/// A commit re-sent after a lost connection has made its own reads stale, if it landed.
/// Only the database's record of committed ids can tell, so the instance that committed it
/// must not answer from memory: the re-send is answered `committed`, applied once.
#[tokio::test]
async fn a_resent_commit_is_answered_committed_by_the_instance_that_committed_it() {
    let db = TestDb::new("recent_resend").await;
    let app = app_with_schema(SCHEMA);
    let server = start(&db, app.path(), 16).await;
    let client = Client::connect(&server.ws_url(), Some("u")).await.unwrap();
    let (reads, _) = read_one(&client, &counter()).await;
    let (txn, first) = client.commit_new(reads.clone(), set_n(1)).await.unwrap();
    let CommitOutcome::Committed(version) = first else {
        panic!("{first:?}")
    };

    let again = client
        .commit(txn.clone(), reads.clone(), set_n(1))
        .await
        .unwrap();
    assert!(
        matches!(again, CommitOutcome::Committed(v) if v == version),
        "{again:?}"
    );
    assert_eq!(known_stale(&server), 0);

    // Why the mark matters: a re-send wrongly marked as a first send gets a conflict, and
    // a client that then re-ran the transaction would apply it twice.
    let raw = mjolnir_core::ClientMessage::Commit {
        txn,
        reads,
        writes: set_n(1),
        first: true,
        deps: Vec::new(),
        follows: None,
        queries: Vec::new(),
    };
    client.send_raw(raw.to_json()).await.unwrap();
    let reply = client.next_unsolicited().await;
    assert!(
        matches!(
            reply,
            Some(Unsolicited::Message(ServerMessage::Conflict { .. }))
        ),
        "{reply:?}"
    );
    assert_eq!(known_stale(&server), 1);
}

/// The memory holds versions, never values: a conflict it answers carries the stale keys
/// as the committing user reads them now, so nobody is answered with another's hidden row.
#[tokio::test]
async fn a_conflict_from_memory_carries_the_stale_keys_as_the_user_reads_them() {
    let db = TestDb::new("recent_rls").await;
    let app = app_with_schema(SCHEMA);
    let server = start(&db, app.path(), 16).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let bob = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();
    let key = Key::row("diaries", "alice");
    let (alice_old, _) = read_one(&alice, &key).await;
    let (bob_old, hidden) = read_one(&bob, &key).await;
    assert_eq!(hidden.value, None, "bob cannot see alice's diary");
    let entry = |e: &str| {
        writes(vec![(
            key.clone(),
            WriteOp::Update {
                set: obj(json!({ "entry": e })),
            },
        )])
    };
    let (_, first) = alice
        .commit_new(alice_old.clone(), entry("hey"))
        .await
        .unwrap();
    let CommitOutcome::Committed(v1) = first else {
        panic!("{first:?}")
    };

    let (_, outcome) = alice.commit_new(alice_old, entry("ho")).await.unwrap();
    let CommitOutcome::Conflict(stale) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(known_stale(&server), 1, "answered from memory");
    assert_eq!(stale[0].version, v1);
    assert_eq!(stale[0].value.as_ref().unwrap()["entry"], "hey");

    let (_, outcome) = bob.commit_new(bob_old, set_n(1)).await.unwrap();
    let CommitOutcome::Conflict(stale) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(known_stale(&server), 2, "answered from memory");
    assert_eq!(stale[0].key, key);
    assert_eq!(stale[0].version, v1);
    assert_eq!(stale[0].value, None, "still hidden from bob");
}

/// Another instance's commits reach this one through the change feed, and are known too:
/// the shortcut does not depend on the client landing where the key was written.
#[tokio::test]
async fn a_commit_on_another_instance_is_known_from_the_change_feed() {
    let db = TestDb::new("recent_feed").await;
    let app = app_with_schema(SCHEMA);
    let a = start(&db, app.path(), 16).await;
    let b = start(&db, app.path(), 16).await;
    let on_a = Client::connect(&a.ws_url(), Some("u")).await.unwrap();
    let on_b = Client::connect(&b.ws_url(), Some("u")).await.unwrap();
    let mut pushes = on_b.pushes();
    let (old, _) = read_one(&on_b, &counter()).await;

    let (_, first) = on_a.commit_new(old.clone(), set_n(5)).await.unwrap();
    let CommitOutcome::Committed(v1) = first else {
        panic!("{first:?}")
    };
    // The push to b's client comes after b's feed has remembered the change.
    let (pushed, _) = tokio::time::timeout(std::time::Duration::from_secs(10), pushes.recv())
        .await
        .expect("a push within 10 s")
        .unwrap();
    assert_eq!(pushed, v1);

    let (_, outcome) = on_b.commit_new(old, set_n(9)).await.unwrap();
    let CommitOutcome::Conflict(stale) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(known_stale(&b), 1, "answered by b from the feed");
    assert_eq!(stale[0].version, v1);
    assert_eq!(stale[0].value.as_ref().unwrap()["n"], 5);
}
