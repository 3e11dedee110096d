//! What a signed-in but hostile user cannot do through the commit path, and what the app's
//! own privileges and policies decide, even when they change while the server runs
//! (docs/architecture.md, "Security model"):
//! - an app's `REVOKE` on a table stands across restarts;
//! - row-level security turned on while instances run applies, on every instance, to the
//!   next read, the next push and the next conflict answered from memory;
//! - a transaction id is its user's own: another user's commit under the same id is
//!   applied, not answered as a duplicate;
//! - a write that changes nothing draws no new version, so it makes nobody conflict.
//!
//! Each runs with group commit (batches through the set-based path) and without.

mod support;

use mjolnir_client::{Client, CommitOutcome};
use mjolnir_core::protocol::Entry;
use mjolnir_core::{ErrorKind, Key, ReadSet, TxnId, Version, WriteOp, WriteSet};
use mjolnir_server::server::Running;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use support::{TestDb, app_with_schema, metric, obj, writes};

async fn start(db: &TestDb, app: &Path, group_commit: usize) -> Running {
    db.start_with(app, |c| c.knobs.group_commit = group_commit)
        .await
}

async fn connect(server: &Running, user: &str) -> Client {
    Client::connect(&server.ws_url(), Some(user)).await.unwrap()
}

async fn read_one(client: &Client, key: &Key) -> (ReadSet, Entry) {
    let entry = client.read(vec![key.clone()]).await.unwrap().remove(0);
    ([(key.clone(), entry.version)].into_iter().collect(), entry)
}

fn update(key: &Key, set: Value) -> WriteSet {
    writes(vec![(key.clone(), WriteOp::Update { set: obj(set) })])
}

fn committed(outcome: &CommitOutcome) -> Version {
    match outcome {
        CommitOutcome::Committed(v) => *v,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Conflicts the instance answered from its recent commits.
fn known_stale(server: &Running) -> u64 {
    metric(server, "mjolnir_known_stale_commits_total ") as u64
}

// --- An app's REVOKE stands ----------------------------------------------------------------

const READ_ONLY_SCHEMA: &str = "
CREATE TABLE rates (id integer PRIMARY KEY, pct integer NOT NULL);
INSERT INTO rates VALUES (1, 5);
REVOKE INSERT, UPDATE, DELETE ON rates FROM mjolnir_app;
";

/// The server used to grant the app's role every right on every table at each start, so a
/// table could not be made read-only. Now the grants come once, with the table.
#[tokio::test]
async fn a_revoke_in_a_migration_stands_across_restarts() {
    let db = TestDb::new("auth_revoke").await;
    let app = app_with_schema(READ_ONLY_SCHEMA);
    let rate = Key::row("rates", 1);
    for round in 0..2 {
        // Each start migrates again: the second is a restart of the first.
        let server = start(&db, app.path(), 16).await;
        let client = connect(&server, "mallory").await;
        let (reads, entry) = read_one(&client, &rate).await;
        assert_eq!(entry.value.unwrap()["pct"], 5, "reading stays allowed");
        let (_, outcome) = client
            .commit_new(reads, update(&rate, json!({"pct": 50})))
            .await
            .unwrap();
        match outcome {
            CommitOutcome::Rejected(e) => {
                assert_eq!(e.code, ErrorKind::Forbidden, "round {round}: {e:?}")
            }
            other => panic!("round {round}: the update must be refused, got {other:?}"),
        }
        server.stop().await.unwrap();
    }

    // A table a later migration creates gets the grants, once.
    std::fs::write(
        app.path().join("migrations/0002_notes.sql"),
        "CREATE TABLE notes (id text PRIMARY KEY, body text NOT NULL);",
    )
    .unwrap();
    let server = start(&db, app.path(), 16).await;
    let client = connect(&server, "alice").await;
    let note = Key::row("notes", "n1");
    let insert = writes(vec![(
        note.clone(),
        WriteOp::Insert {
            row: obj(json!({"body": "hi"})),
        },
    )]);
    let (_, outcome) = client.commit_new(ReadSet::new(), insert).await.unwrap();
    committed(&outcome);
}

// --- Row-level security turned on while the server runs --------------------------------------

const NOTES_SCHEMA: &str = "
CREATE TABLE notes (id text PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
INSERT INTO notes VALUES ('a1', 'alice', 'secret');
";

const PRIVATE_NOTES: &str = "
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes USING (owner = mjolnir.user_id());
";

/// Two instances have loaded the catalog while `notes` was open to everyone; then the app
/// turns row-level security on. Neither restarts, and neither may show bob alice's note
/// again: not in a read, not in a push, not in a conflict answered from memory.
async fn row_level_security_turned_on_applies_at_once(group_commit: usize) {
    let db = TestDb::new(&format!("auth_rls{group_commit}")).await;
    let app = app_with_schema(NOTES_SCHEMA);
    let a = start(&db, app.path(), group_commit).await;
    let b = start(&db, app.path(), group_commit).await;
    let note = Key::row("notes", "a1");
    let alice = connect(&a, "alice").await;
    let bob = connect(&b, "bob").await;
    let bob_on_a = connect(&a, "bob").await;
    let (bob_read, seen) = read_one(&bob, &note).await;
    assert_eq!(
        seen.value.unwrap()["body"],
        "secret",
        "open to all, for now"
    );
    read_one(&bob_on_a, &note).await;
    let mut bob_pushes = bob.pushes();

    sqlx::raw_sql(PRIVATE_NOTES)
        .execute(&db.pool().await)
        .await
        .unwrap();

    // The next read, on either instance.
    for (client, instance) in [(&bob, "b"), (&bob_on_a, "a")] {
        let (_, entry) = read_one(client, &note).await;
        assert_eq!(
            entry.value, None,
            "a read on {instance} shows bob alice's note"
        );
        assert_eq!(entry.version, seen.version, "at its real version");
    }

    // The next push: alice's change reaches bob on b as he may read it.
    let (alice_read, mine) = read_one(&alice, &note).await;
    assert_eq!(mine.value.unwrap()["body"], "secret");
    let (_, outcome) = alice
        .commit_new(alice_read, update(&note, json!({"body": "new secret"})))
        .await
        .unwrap();
    let v1 = committed(&outcome);
    let (pushed, changes) = tokio::time::timeout(Duration::from_secs(10), bob_pushes.recv())
        .await
        .expect("a push within 10 s")
        .unwrap();
    assert_eq!(pushed, v1);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].key, note);
    assert_eq!(changes[0].value, None, "the push shows bob alice's note");

    // The next conflict answered from memory, on either instance: b heard of alice's commit
    // from the feed (its push came after), a made it.
    for (client, server, instance) in [(&bob, &b, "b"), (&bob_on_a, &a, "a")] {
        let before = known_stale(server);
        let touch = writes(vec![(
            Key::kv("bob"),
            WriteOp::Put {
                value: json!(instance),
            },
        )]);
        let (_, outcome) = client.commit_new(bob_read.clone(), touch).await.unwrap();
        let CommitOutcome::Conflict(stale) = outcome else {
            panic!("on {instance}: {outcome:?}")
        };
        assert_eq!(
            known_stale(server),
            before + 1,
            "on {instance}: from memory"
        );
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].version, v1);
        assert_eq!(
            stale[0].value, None,
            "a conflict on {instance} shows bob alice's note"
        );
    }
}

#[tokio::test]
async fn row_level_security_turned_on_applies_at_once_with_group_commit() {
    row_level_security_turned_on_applies_at_once(16).await;
}

#[tokio::test]
async fn row_level_security_turned_on_applies_at_once_without_group_commit() {
    row_level_security_turned_on_applies_at_once(1).await;
}

// --- Transaction ids belong to their user ----------------------------------------------------

const COUNTERS_SCHEMA: &str = "
CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL);
INSERT INTO counters VALUES (1, 0), (2, 0);
";

/// Mallory commits first under the id alice's next commit will use. Alice's commit is
/// applied, not answered `committed` from mallory's record; each re-send is still answered
/// from its own user's record, applied once.
async fn a_txn_id_is_its_users_own(group_commit: usize) {
    let db = TestDb::new(&format!("auth_txn{group_commit}")).await;
    let app = app_with_schema(COUNTERS_SCHEMA);
    let server = start(&db, app.path(), group_commit).await;
    let mallory = connect(&server, "mallory").await;
    let alice = connect(&server, "alice").await;
    let id = TxnId("shared-id".to_owned());
    let (m, c) = (Key::row("counters", 1), Key::row("counters", 2));

    let (reads, _) = read_one(&mallory, &m).await;
    let first = mallory
        .commit(id.clone(), reads.clone(), update(&m, json!({"n": 1})))
        .await
        .unwrap();
    let mallory_version = committed(&first);

    let (alice_reads, _) = read_one(&alice, &c).await;
    let outcome = alice
        .commit(id.clone(), alice_reads.clone(), update(&c, json!({"n": 7})))
        .await
        .unwrap();
    let alice_version = committed(&outcome);
    assert!(
        alice_version > mallory_version,
        "applied, at a version of its own"
    );
    let (_, entry) = read_one(&alice, &c).await;
    assert_eq!(entry.value.unwrap()["n"], 7, "alice's write was applied");

    // Re-sends: each answered from its own user's record, nothing applied again.
    let again = alice
        .commit(id.clone(), alice_reads, update(&c, json!({"n": 7})))
        .await
        .unwrap();
    assert_eq!(committed(&again), alice_version);
    let again = mallory
        .commit(id, reads, update(&m, json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(committed(&again), mallory_version);
    let (_, entry) = read_one(&alice, &m).await;
    assert_eq!(entry.version, mallory_version, "mallory's applied once");
}

#[tokio::test]
async fn a_txn_id_is_its_users_own_with_group_commit() {
    a_txn_id_is_its_users_own(16).await;
}

#[tokio::test]
async fn a_txn_id_is_its_users_own_without_group_commit() {
    a_txn_id_is_its_users_own(1).await;
}

// --- Writes that change nothing ------------------------------------------------------------

/// As in the paper's bank: every signed-in user may update every account (a transfer
/// credits someone else's), and a trigger guards what an update may do to the values.
/// Some kv entries exist (s0..s3), others not (a0..a3).
const BANK_SCHEMA: &str = "
CREATE TABLE accounts (id integer PRIMARY KEY, owner text NOT NULL, balance integer NOT NULL);
INSERT INTO accounts SELECT i, 'victim', 10 FROM generate_series(0, 7) AS i;
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
CREATE POLICY read_all ON accounts FOR SELECT USING (true);
CREATE POLICY update_all ON accounts FOR UPDATE USING (mjolnir.user_id() IS NOT NULL);
CREATE FUNCTION no_free_money() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.balance < OLD.balance AND OLD.owner <> mjolnir.user_id() THEN
        RAISE EXCEPTION 'only the owner may debit an account';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER no_free_money BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION no_free_money();
INSERT INTO mjolnir.kv SELECT 's' || i, '{\"theme\": \"dark\"}' FROM generate_series(0, 3) AS i;
";

/// An attacker whom the policies let update a victim's rows touches them with updates that
/// change nothing (an empty update, the same balance), and puts the value already stored
/// and deletes absent kv entries. The victim's transactions that read those keys before
/// still commit (the review saw 0 of 10 transfers commit). Nobody is pushed the no-ops,
/// and the attacker's own client, which holds the keys at its commits' versions, is not
/// stuck in conflicts either.
async fn writes_that_change_nothing_make_nobody_conflict(group_commit: usize) {
    let db = TestDb::new(&format!("auth_noop{group_commit}")).await;
    let app = app_with_schema(BANK_SCHEMA);
    let server = start(&db, app.path(), group_commit).await;
    let victim = connect(&server, "victim").await;
    let mallory = connect(&server, "mallory").await;
    let account = |i: usize| Key::row("accounts", i as i64);
    let put = |key: Key, value: Value| writes(vec![(key, WriteOp::Put { value })]);
    // The i-th no-op, each of the 16 on a key of its own (so that a batch of them can take
    // the set-based path, which applies a key's writes once per batch).
    let noop = |i: usize| -> (Key, WriteSet) {
        let (kind, n) = (i % 4, i / 4);
        match kind {
            0 => (account(n), update(&account(n), json!({}))),
            1 => (
                account(4 + n),
                update(&account(4 + n), json!({"balance": 10})),
            ),
            2 => {
                let key = Key::kv(format!("s{n}"));
                (key.clone(), put(key, json!({"theme": "dark"})))
            }
            _ => {
                let key = Key::kv(format!("a{n}"));
                (key.clone(), writes(vec![(key, WriteOp::Delete)]))
            }
        }
    };
    let keys: Vec<Key> = (0..16).map(|i| noop(i).0).collect();
    let seen = victim.read(keys.clone()).await.unwrap();
    let mut victim_pushes = victim.pushes();

    // Sent at once so that, with group commit, they share batches; then one of each kind
    // again, alone.
    let sent = (0..16).map(|i| mallory.commit_new(ReadSet::new(), noop(i).1));
    for result in futures_util::future::join_all(sent).await {
        committed(&result.unwrap().1);
    }
    let mut alone = Vec::new();
    for i in 0..4 {
        let (_, outcome) = mallory.commit_new(ReadSet::new(), noop(i).1).await.unwrap();
        alone.push(committed(&outcome));
    }
    // A change the policies let mallory make still is one: a credit to account 7.
    let (_, outcome) = mallory
        .commit_new(ReadSet::new(), update(&account(7), json!({"balance": 11})))
        .await
        .unwrap();
    let credit = committed(&outcome);

    // The victim's transactions that read the touched keys before: all commit but the one
    // that read account 7.
    for (i, entry) in seen.iter().enumerate() {
        let reads: ReadSet = [(entry.key.clone(), entry.version)].into_iter().collect();
        let write = match &entry.key {
            Key::Row { .. } => update(&entry.key, json!({"balance": 9})),
            _ => put(Key::kv("log"), json!(i)),
        };
        let (_, outcome) = victim.commit_new(reads, write).await.unwrap();
        if entry.key == account(7) {
            assert!(
                matches!(outcome, CommitOutcome::Conflict(_)),
                "a real change still makes a conflict: {outcome:?}"
            );
        } else {
            assert!(
                matches!(outcome, CommitOutcome::Committed(_)),
                "the victim's transaction on {} (read at {}) must commit: {outcome:?}",
                entry.key,
                entry.version
            );
        }
    }

    // Pushes come in commit order: the first the victim gets is the credit, not a no-op.
    let (first_push, changes) = tokio::time::timeout(Duration::from_secs(10), victim_pushes.recv())
        .await
        .expect("a push within 10 s")
        .unwrap();
    assert_eq!(
        first_push, credit,
        "no push for a write that changed nothing"
    );
    assert_eq!(changes[0].key, account(7));

    // Mallory's client holds s0 at the version of its put: a read at it is current.
    let reads: ReadSet = [(Key::kv("s0"), alone[2])].into_iter().collect();
    let (_, outcome) = mallory
        .commit_new(reads, put(Key::kv("mallory"), json!(1)))
        .await
        .unwrap();
    committed(&outcome);
    let (_, entry) = read_one(&victim, &Key::kv("s0")).await;
    assert_eq!(entry.value.unwrap(), json!({"theme": "dark"}));
}

#[tokio::test]
async fn writes_that_change_nothing_make_nobody_conflict_with_group_commit() {
    writes_that_change_nothing_make_nobody_conflict(16).await;
}

#[tokio::test]
async fn writes_that_change_nothing_make_nobody_conflict_without_group_commit() {
    writes_that_change_nothing_make_nobody_conflict(1).await;
}
