//! Queries against the real server and PostgreSQL: what a read of a query gives, and that
//! a commit whose read set holds a query conflicts exactly when the query's result changed
//! (docs/architecture.md, "Queries"), including Hermitage's predicate anomalies.

mod support;

use futures_util::future::join_all;
use mjolnir_client::{Client, ClientError, CommitOutcome};
use mjolnir_core::protocol::Entry;
use mjolnir_core::{ErrorKind, Key, Op, Query, QueryRead, ReadSet, WriteOp, WriteSet};
use serde_json::{Value, json};
use support::{TestDb, app_with_schema, blind, metric, obj, writes};

const SCHEMA: &str = "
CREATE TABLE items (id integer PRIMARY KEY, room text NOT NULL, n integer NOT NULL,
                    done boolean NOT NULL DEFAULT false, note text);
CREATE INDEX items_room_n ON items (room, n);
INSERT INTO items (id, room, n) VALUES (1, 'a', 10), (2, 'a', 30), (3, 'a', 20), (4, 'b', 5);
CREATE TABLE notes (id text PRIMARY KEY, owner text NOT NULL, body text NOT NULL);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes USING (owner = mjolnir.user_id());
INSERT INTO notes VALUES ('a1', 'alice', 'hers'), ('b1', 'bob', 'his'), ('b2', 'bob', 'also his');
CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL);
INSERT INTO counters SELECT g, 0 FROM generate_series(1, 16) AS g;
CREATE TABLE big (id bigint PRIMARY KEY, v integer NOT NULL);
INSERT INTO big VALUES (1, 1), (9007199254740991, 1);
CREATE TABLE tags (id uuid PRIMARY KEY, v integer NOT NULL);
INSERT INTO tags VALUES ('00000000-0000-0000-0000-000000000002', 1),
                        ('00000000-0000-0000-0000-000000000001', 1);
";

fn room(name: &str) -> Query {
    Query::table("items").filter("room", Op::Eq, json!(name))
}

/// A query read as a commit carries it, and the row reads that came with it.
struct Seen {
    query: QueryRead,
    rows: ReadSet,
    entries: Vec<Entry>,
}

async fn read_query(client: &Client, query: &Query) -> Seen {
    let entries = client.read(vec![Key::query(query.clone())]).await.unwrap();
    let seen = entries[0].value.clone().unwrap();
    Seen {
        query: QueryRead {
            query: query.clone(),
            seen,
        },
        rows: entries[1..]
            .iter()
            .map(|e| (e.key.clone(), e.version))
            .collect(),
        entries,
    }
}

fn insert(id: i64, room: &str, n: i64) -> WriteSet {
    writes(vec![(
        Key::row("items", id),
        WriteOp::Insert {
            row: obj(json!({"room": room, "n": n})),
        },
    )])
}

fn update(id: i64, set: Value) -> WriteSet {
    writes(vec![(
        Key::row("items", id),
        WriteOp::Update { set: obj(set) },
    )])
}

/// Commits `writes` having read `seen` (the query and its rows).
async fn commit_after(client: &Client, seen: &Seen, writes: WriteSet) -> CommitOutcome {
    client
        .commit_queries(seen.rows.clone(), writes, vec![seen.query.clone()])
        .await
        .unwrap()
        .1
}

#[tokio::test]
async fn a_query_reads_its_rows_in_order_up_to_its_limit_and_counts() {
    let db = TestDb::new("q_read").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();

    let q = room("a").order_by("n", true).limit(2);
    let seen = read_query(&c, &q).await;
    assert_eq!(seen.query.seen, json!([2, 3]));
    let rows: Vec<(Key, Value)> = seen.entries[1..]
        .iter()
        .map(|e| (e.key.clone(), e.value.clone().unwrap()["n"].clone()))
        .collect();
    assert_eq!(
        rows,
        vec![
            (Key::row("items", 2), json!(30)),
            (Key::row("items", 3), json!(20))
        ]
    );

    // Ties are broken by the primary key; every operator works.
    let cases = [
        (room("a"), json!([1, 2, 3])),
        (
            Query::table("items").order_by("room", true),
            json!([4, 1, 2, 3]),
        ),
        (room("a").filter("n", Op::Gt, json!(10)), json!([2, 3])),
        (room("a").filter("n", Op::Lte, json!(20)), json!([1, 3])),
        (
            Query::table("items").filter("n", Op::In, json!([5, 30])),
            json!([2, 4]),
        ),
        (
            Query::table("items").filter("room", Op::Ne, json!("a")),
            json!([4]),
        ),
        (
            Query::table("items").filter("note", Op::NotNull, Value::Null),
            json!([]),
        ),
        (
            Query::table("items")
                .filter("note", Op::IsNull, Value::Null)
                .limit(1),
            json!([1]),
        ),
        (room("a").counted(), json!(3)),
        (
            Query::table("items")
                .filter("done", Op::Eq, json!(true))
                .counted(),
            json!(0),
        ),
    ];
    for (q, want) in cases {
        let seen = read_query(&c, &q).await;
        assert_eq!(seen.query.seen, want, "{q}");
    }
    server.stop().await.unwrap();
}

/// Hermitage's PMP (predicate-many-preceders): a transaction reads a predicate, another
/// inserts a row matching it and commits; the first must not commit as if it had not.
#[tokio::test]
async fn a_concurrent_insert_into_the_range_makes_the_reader_conflict() {
    let db = TestDb::new("q_pmp").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let t1 = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let t2 = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();

    let q = room("a").counted();
    let seen = read_query(&t1, &q).await;
    assert_eq!(seen.query.seen, json!(3));
    blind(&t2, insert(10, "a", 1)).await;
    // t1 writes what it computed from the count: stale.
    let outcome = commit_after(&t1, &seen, update(4, json!({"n": 3}))).await;
    let CommitOutcome::Conflict(stale) = outcome else {
        panic!("a read of a range someone inserted into must conflict: {outcome:?}")
    };
    // The conflict carries the query's new result, so the client can retry at once.
    let fresh = stale
        .iter()
        .find(|e| e.key == Key::query(q.clone()))
        .unwrap();
    assert_eq!(fresh.value, Some(json!(4)));
    assert!(fresh.version > mjolnir_core::Version::ABSENT);

    // A rows query, read-only: a conflict too.
    let q = room("a");
    let seen = read_query(&t1, &q).await;
    blind(&t2, insert(11, "a", 2)).await;
    let outcome = commit_after(&t1, &seen, WriteSet::new()).await;
    assert!(matches!(outcome, CommitOutcome::Conflict(_)), "{outcome:?}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_row_moved_out_of_the_range_or_deleted_makes_the_reader_conflict() {
    let db = TestDb::new("q_move").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let t1 = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let t2 = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();

    // A count reads no row: only the query can see the row leave.
    let seen = read_query(&t1, &room("a").counted()).await;
    blind(&t2, update(1, json!({"room": "b"}))).await;
    let outcome = commit_after(&t1, &seen, insert(20, "c", 0)).await;
    assert!(
        matches!(outcome, CommitOutcome::Conflict(_)),
        "moved out: {outcome:?}"
    );

    let seen = read_query(&t1, &room("a").counted()).await;
    blind(&t2, writes(vec![(Key::row("items", 2), WriteOp::Delete)])).await;
    let outcome = commit_after(&t1, &seen, insert(21, "c", 0)).await;
    assert!(
        matches!(outcome, CommitOutcome::Conflict(_)),
        "deleted: {outcome:?}"
    );

    // A change within the range that moves a row past the limit: room b holds 4 (n 5)
    // and 1 (n 10, moved there above).
    let top = room("b").order_by("n", true).limit(1);
    let seen = read_query(&t1, &top).await;
    assert_eq!(seen.query.seen, json!([1]));
    blind(&t2, update(4, json!({"n": 99}))).await;
    let outcome = commit_after(&t1, &seen, WriteSet::new()).await;
    assert!(
        matches!(outcome, CommitOutcome::Conflict(_)),
        "re-ranked: {outcome:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn writes_outside_the_range_do_not_conflict() {
    let db = TestDb::new("q_unrelated").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let t1 = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let t2 = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();

    let seen = read_query(&t1, &room("a").order_by("n", false).limit(2)).await;
    // Another room, a row ranked past the limit, and a column the result does not show.
    blind(&t2, insert(30, "b", 1)).await;
    blind(&t2, insert(31, "a", 1000)).await;
    blind(&t2, update(4, json!({"n": 6}))).await;
    let outcome = commit_after(&t1, &seen, insert(32, "c", 0)).await;
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );
    server.stop().await.unwrap();
}

/// G2 with predicates: two transactions each read a predicate and insert into the
/// other's. Whatever the timing, at most one may commit. Both commits are sent at once,
/// again and again, from two instances or one (in one batch, or in two), with group
/// commit on and off.
async fn predicate_write_skew_commits_at_most_one(instances: usize, group_commit: usize) {
    let db = TestDb::new(&format!("q_g2_{instances}_{group_commit}")).await;
    let app = app_with_schema(SCHEMA);
    let a = db
        .start_with(app.path(), |c| c.knobs.group_commit = group_commit)
        .await;
    let b = if instances == 2 {
        Some(
            db.start_with(app.path(), |c| c.knobs.group_commit = group_commit)
                .await,
        )
    } else {
        None
    };
    let t1 = Client::connect(&a.ws_url(), Some("alice")).await.unwrap();
    let t2 = Client::connect(&b.as_ref().unwrap_or(&a).ws_url(), Some("bob"))
        .await
        .unwrap();
    let mut both = 0;
    let mut one = 0;
    for round in 0..20 {
        let (x, y) = (format!("x{round}"), format!("y{round}"));
        let qx = room(&x).counted();
        let qy = room(&y).counted();
        let seen1 = read_query(&t1, &qx).await;
        let seen2 = read_query(&t2, &qy).await;
        assert_eq!(
            (&seen1.query.seen, &seen2.query.seen),
            (&json!(0), &json!(0))
        );
        // Each saw its room empty and puts a row in the other's.
        let (r1, r2) = tokio::join!(
            commit_after(&t1, &seen1, insert(1000 + 2 * round, &y, 1)),
            commit_after(&t2, &seen2, insert(1001 + 2 * round, &x, 1)),
        );
        match (&r1, &r2) {
            (CommitOutcome::Committed(_), CommitOutcome::Committed(_)) => both += 1,
            (CommitOutcome::Committed(_), _) | (_, CommitOutcome::Committed(_)) => one += 1,
            _ => {}
        }
    }
    assert_eq!(both, 0, "predicate write skew committed both {both} times");
    assert!(one > 0, "no round committed either transaction");
    a.stop().await.unwrap();
    if let Some(b) = b {
        b.stop().await.unwrap();
    }
}

#[tokio::test]
async fn predicate_write_skew_one_instance_with_group_commit() {
    predicate_write_skew_commits_at_most_one(1, 64).await;
}

#[tokio::test]
async fn predicate_write_skew_one_instance_without_group_commit() {
    predicate_write_skew_commits_at_most_one(1, 1).await;
}

#[tokio::test]
async fn predicate_write_skew_two_instances() {
    predicate_write_skew_commits_at_most_one(2, 64).await;
}

#[tokio::test]
async fn predicate_write_skew_two_instances_without_group_commit() {
    predicate_write_skew_commits_at_most_one(2, 1).await;
}

/// Reads of queries of one shape that arrive together share a statement
/// (`store/query_reads.rs`): each still gets its own rows, counts and limits.
#[tokio::test]
async fn concurrent_reads_of_one_shape_each_get_their_own_result() {
    let db = TestDb::new("q_shapes").await;
    let app = app_with_schema(SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.knobs.group_commit = 64)
        .await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(
            Client::connect(&server.ws_url(), Some("alice"))
                .await
                .unwrap(),
        );
    }
    let asked: Vec<(Query, Value)> = ["a", "b", "c"]
        .into_iter()
        .flat_map(|r| {
            let q = room(r).order_by("n", false);
            let (all, first, count) = match r {
                "a" => (json!([1, 3, 2]), json!([1]), json!(3)),
                "b" => (json!([4]), json!([4]), json!(1)),
                _ => (json!([]), json!([]), json!(0)),
            };
            [
                (q.clone(), all),
                (q.clone().limit(1), first),
                (q.counted(), count),
            ]
        })
        .collect();
    for _ in 0..5 {
        let results = join_all(
            clients
                .iter()
                .cycle()
                .zip(&asked)
                .map(|(c, (q, _))| read_query(c, q)),
        )
        .await;
        for (seen, (q, expected)) in results.iter().zip(&asked) {
            assert_eq!(&seen.query.seen, expected, "{q}");
            let rows = expected.as_array().map_or(0, Vec::len);
            assert_eq!(seen.entries.len(), 1 + rows, "{q}: {:?}", seen.entries);
        }
    }
    server.stop().await.unwrap();
}

/// Every query shape is a statement the server prepares on a database connection, and
/// clients choose shapes: a connection holding more than `max_prepared_statements` is
/// closed (its backend goes, and its statements with it) and the server goes on.
#[tokio::test]
async fn new_query_shapes_cannot_grow_a_connection_without_bound() {
    let db = TestDb::new("q_prepared").await;
    let app = app_with_schema(SCHEMA);
    let server = db
        .start_with(app.path(), |c| {
            c.knobs.pool_size = 2;
            c.knobs.max_prepared_statements = 40;
        })
        .await;
    let c = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let pool = db.pool().await;
    let backends = || async {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pids
    };
    // Each commit claims a result the query does not give, of a new shape (its limit):
    // the server prepares its check, then reads it for the conflict's reply.
    let claim = |limit: u32| QueryRead {
        query: room("a").limit(limit),
        seen: json!(["none"]),
    };
    for limit in 1..=5 {
        let outcome = c
            .commit_queries(ReadSet::new(), WriteSet::new(), vec![claim(limit)])
            .await
            .unwrap()
            .1;
        assert!(matches!(outcome, CommitOutcome::Conflict(_)), "{outcome:?}");
    }
    let early = backends().await;
    for limit in 6..=400 {
        c.commit_queries(ReadSet::new(), WriteSet::new(), vec![claim(limit)])
            .await
            .unwrap();
    }
    let late = backends().await;
    assert!(
        early.iter().any(|pid| !late.contains(pid)),
        "no connection was closed: {early:?} then {late:?}"
    );
    // The server goes on.
    let seen = read_query(&c, &room("a").limit(2)).await;
    let outcome = commit_after(&c, &seen, update(1, json!({"n": 11}))).await;
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );
    server.stop().await.unwrap();
}

/// Sets counter `id` to `n`.
fn count_to(id: i64, n: i64) -> WriteSet {
    writes(vec![(
        Key::row("counters", id),
        WriteOp::Update {
            set: obj(json!({ "n": n })),
        },
    )])
}

/// Commits reading a query of a table that no commit of their batch writes are decided
/// together, on the set-based path of group commit (migration 0009), and a stale query
/// read among them still conflicts.
#[tokio::test]
async fn query_reads_of_a_table_the_batch_does_not_write_are_decided_together() {
    let db = TestDb::new("q_set").await;
    let app = app_with_schema(SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.knobs.group_commit = 64)
        .await;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(
            Client::connect(&server.ws_url(), Some("alice"))
                .await
                .unwrap(),
        );
    }
    let q = room("a").order_by("n", false);
    let set_based = || metric(&server, "mjolnir_set_based_commits_total ");
    for round in 1..=5 {
        let mut seen = Vec::new();
        for c in &clients {
            seen.push(read_query(c, &q).await);
        }
        let outcomes = join_all(
            clients
                .iter()
                .zip(&seen)
                .enumerate()
                .map(|(i, (c, s))| commit_after(c, s, count_to(i as i64 + 1, round))),
        )
        .await;
        for o in &outcomes {
            assert!(matches!(o, CommitOutcome::Committed(_)), "{o:?}");
        }
    }
    assert!(set_based() > 0.0, "no commit was decided set-based");

    // The first client's read of the query goes stale: an item joins room a.
    let stale = read_query(&clients[0], &q).await;
    blind(&clients[1], insert(100, "a", 15)).await;
    let mut seen = vec![stale];
    for c in &clients[1..] {
        seen.push(read_query(c, &q).await);
    }
    let before = set_based();
    let outcomes = join_all(
        clients
            .iter()
            .zip(&seen)
            .enumerate()
            .map(|(i, (c, s))| commit_after(c, s, count_to(i as i64 + 1, 100))),
    )
    .await;
    let CommitOutcome::Conflict(fresh) = &outcomes[0] else {
        panic!("the stale query read committed: {:?}", outcomes[0])
    };
    assert_eq!(fresh[0].key, Key::query(q.clone()));
    assert_eq!(fresh[0].value, Some(json!([1, 100, 3, 2])));
    for o in &outcomes[1..] {
        assert!(matches!(o, CommitOutcome::Committed(_)), "{o:?}");
    }
    assert!(set_based() > before, "no commit was decided set-based");
    let counters: Vec<i32> = sqlx::query_scalar("SELECT n FROM counters ORDER BY id")
        .fetch_all(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(counters[0], 5);
    assert!(counters[1..].iter().all(|&n| n == 100), "{counters:?}");
    server.stop().await.unwrap();
}

/// An earlier member of the same batch inserts into the range a later member read: the
/// later one, decided after it, conflicts.
#[tokio::test]
async fn an_insert_earlier_in_the_batch_is_seen_by_a_later_query_read() {
    let db = TestDb::new("q_batch").await;
    let app = app_with_schema(SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.knobs.group_commit = 64)
        .await;
    let t1 = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let t2 = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();
    let mut conflicts = 0;
    for round in 0..10 {
        let r = format!("r{round}");
        let seen = read_query(&t1, &room(&r).counted()).await;
        // t2's insert and t1's commit are sent together; whichever goes first, the result
        // must be serializable: if both commit, t1 was first.
        let (ins, reader) = tokio::join!(
            t2.commit_new(ReadSet::new(), insert(2000 + round, &r, 1)),
            commit_after(&t1, &seen, insert(3000 + round, "elsewhere", 1)),
        );
        let ins = ins.unwrap().1;
        let (CommitOutcome::Committed(vi), CommitOutcome::Committed(vr)) = (&ins, &reader) else {
            conflicts += 1;
            continue;
        };
        assert!(
            vr < vi,
            "t1 read the room empty, so it must be ordered before the insert"
        );
    }
    eprintln!("{conflicts} of 10 rounds conflicted");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_query_never_shows_what_the_policies_hide() {
    let db = TestDb::new("q_rls").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let bob = Client::connect(&server.ws_url(), Some("bob"))
        .await
        .unwrap();

    let all = Query::table("notes");
    let seen = read_query(&alice, &all).await;
    assert_eq!(seen.query.seen, json!(["a1"]));
    assert_eq!(seen.entries.len(), 2);
    let count = read_query(&alice, &all.clone().counted()).await;
    assert_eq!(count.query.seen, json!(1));
    let theirs = read_query(&bob, &all).await;
    assert_eq!(theirs.query.seen, json!(["b1", "b2"]));

    // Bob adds a note: alice's query of all notes is unchanged for her, so her commit
    // holds (nothing of bob's leaks through a conflict either).
    blind(
        &bob,
        writes(vec![(
            Key::row("notes", "b3"),
            WriteOp::Insert {
                row: obj(json!({"owner": "bob", "body": "new"})),
            },
        )]),
    )
    .await;
    let outcome = alice
        .commit_queries(seen.rows.clone(), WriteSet::new(), vec![seen.query.clone()])
        .await
        .unwrap()
        .1;
    assert!(
        matches!(outcome, CommitOutcome::Committed(_)),
        "{outcome:?}"
    );

    // A claim to have seen bob's notes is a conflict whose reply shows only alice's.
    let forged = QueryRead {
        query: all.clone(),
        seen: json!(["a1", "b1"]),
    };
    let outcome = alice
        .commit_queries(ReadSet::new(), WriteSet::new(), vec![forged])
        .await
        .unwrap()
        .1;
    let CommitOutcome::Conflict(stale) = outcome else {
        panic!("{outcome:?}")
    };
    let text = serde_json::to_string(&stale).unwrap();
    assert!(!text.contains("his") && !text.contains("b1"), "{text}");
    server.stop().await.unwrap();
}

/// The commit's check spells each primary key as a read does, so an unchanged result of a
/// table keyed by a bigint or a uuid holds.
#[tokio::test]
async fn unchanged_results_with_bigint_and_uuid_keys_hold() {
    let db = TestDb::new("q_pk_kinds").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    for (table, expected) in [
        ("big", json!([1, 9007199254740991_i64])),
        (
            "tags",
            json!([
                "00000000-0000-0000-0000-000000000001",
                "00000000-0000-0000-0000-000000000002"
            ]),
        ),
    ] {
        let q = Query::table(table).filter("v", Op::Eq, json!(1));
        let seen = read_query(&c, &q).await;
        assert_eq!(seen.query.seen, expected);
        let outcome = commit_after(&c, &seen, WriteSet::new()).await;
        assert!(
            matches!(outcome, CommitOutcome::Committed(_)),
            "{table}: {outcome:?}"
        );
    }
    server.stop().await.unwrap();
}

/// A table open to every user is queried without switching roles (`store/read.rs`); the
/// app may close it while the server runs, and the next query must then follow its
/// policies, or be refused once its users may not read the table at all.
#[tokio::test]
async fn a_table_closed_while_the_server_runs_is_queried_as_the_user() {
    let db = TestDb::new("q_closed").await;
    let app = app_with_schema(SCHEMA);
    let server = db.start(app.path()).await;
    let alice = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let all = Query::table("items").order_by("id", false);
    assert_eq!(
        read_query(&alice, &all).await.query.seen,
        json!([1, 2, 3, 4])
    );

    let pool = db.pool().await;
    sqlx::raw_sql(
        "ALTER TABLE items ENABLE ROW LEVEL SECURITY;
         CREATE POLICY only_b ON items USING (room = 'b');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let seen = read_query(&alice, &all).await;
    assert_eq!(seen.query.seen, json!([4]));
    assert_eq!(seen.entries.len(), 2, "{:?}", seen.entries);
    assert_eq!(read_query(&alice, &room("a")).await.query.seen, json!([]));
    assert_eq!(
        read_query(&alice, &all.clone().counted()).await.query.seen,
        json!(1)
    );

    sqlx::query("REVOKE SELECT ON items FROM mjolnir_app")
        .execute(&pool)
        .await
        .unwrap();
    let refused = alice.read(vec![Key::query(all.clone())]).await;
    let Err(ClientError::Server(e)) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(e.code, ErrorKind::Forbidden, "{e:?}");
    // The connection still works.
    let notes = read_query(&alice, &Query::table("notes")).await;
    assert_eq!(notes.query.seen, json!(["a1"]));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_queries_get_typed_errors_and_the_connection_stays_usable() {
    let db = TestDb::new("q_bad").await;
    let app = app_with_schema(
        &(SCHEMA.to_owned()
            + "CREATE TABLE many (id integer PRIMARY KEY);
               INSERT INTO many SELECT generate_series(1, 1001);"),
    );
    let server = db.start(app.path()).await;
    let c = Client::connect(&server.ws_url(), Some("alice"))
        .await
        .unwrap();
    let refused = |q: Query| {
        let c = &c;
        async move {
            match c.read(vec![Key::query(q.clone())]).await {
                Err(ClientError::Server(e)) => (e.code, e.message),
                other => panic!("{q}: {other:?}"),
            }
        }
    };
    let cases = [
        (
            Query::table("items").filter("colour", Op::Eq, json!("red")),
            ErrorKind::UnknownColumn,
            "items has no column \"colour\"",
        ),
        (
            Query::table("items").order_by("colour", false),
            ErrorKind::UnknownColumn,
            "colour",
        ),
        (
            Query::table("items").filter("n", Op::Eq, json!("ten")),
            ErrorKind::WrongType,
            "items.n is integer: cannot compare it with \"ten\"",
        ),
        (
            Query::table("items").filter("n", Op::In, json!([1, "x"])),
            ErrorKind::WrongType,
            "cannot compare it with \"x\"",
        ),
        (
            Query::table("items").limit(5000),
            ErrorKind::InvalidQuery,
            "limit is 1 to 1000",
        ),
        (
            Query::table("items").filter("n", Op::Eq, Value::Null),
            ErrorKind::InvalidQuery,
            "use is_null",
        ),
        (Query::table("nope"), ErrorKind::UnknownTable, "nope"),
        (
            Query::table("many"),
            ErrorKind::InvalidQuery,
            "matches more than 1000 rows: give it a limit",
        ),
    ];
    for (q, kind, message) in cases {
        let (code, got) = refused(q.clone()).await;
        assert_eq!(code, kind, "{q}: {got}");
        assert!(got.contains(message), "{q}: {got:?} lacks {message:?}");
    }
    // An operator that does not exist is a malformed request, named.
    let raw = r#"{"type":"read","id":77,"keys":[{"kind":"query","table":"items","where":[{"column":"n","op":"like","value":"1%"}]}]}"#;
    c.send_raw(raw.to_owned()).await.unwrap();
    // A query is never written, and a commit's query read is checked like a read.
    let (_, outcome) = c
        .commit_new(
            ReadSet::new(),
            writes(vec![(Key::query(room("a")), WriteOp::Delete)]),
        )
        .await
        .unwrap();
    let CommitOutcome::Rejected(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.code, ErrorKind::InvalidWrite, "{}", e.message);
    let bad = QueryRead {
        query: Query::table("items").filter("colour", Op::Eq, json!(1)),
        seen: json!([]),
    };
    let (_, outcome) = c
        .commit_queries(ReadSet::new(), insert(50, "a", 1), vec![bad])
        .await
        .unwrap();
    let CommitOutcome::Rejected(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.code, ErrorKind::UnknownColumn);
    // At most 32 queries in a read or a commit: each may bring 1000 rows.
    let many: Vec<Key> = (0..33)
        .map(|i| Key::query(Query::table("items").filter("n", Op::Eq, json!(i))))
        .collect();
    match c.read(many).await {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.code, ErrorKind::TooLarge, "{}", e.message);
            assert!(e.message.contains("at most 32 queries"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let many_reads: Vec<QueryRead> = (0..33)
        .map(|i| QueryRead {
            query: Query::table("items").filter("n", Op::Eq, json!(i)),
            seen: json!([]),
        })
        .collect();
    let (_, outcome) = c
        .commit_queries(ReadSet::new(), insert(51, "a", 1), many_reads)
        .await
        .unwrap();
    let CommitOutcome::Rejected(e) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(e.code, ErrorKind::TooLarge, "{}", e.message);
    // Nothing was applied, and the connection still reads.
    let seen = read_query(&c, &room("a")).await;
    assert_eq!(seen.query.seen, json!([1, 2, 3]));
    server.stop().await.unwrap();
}
