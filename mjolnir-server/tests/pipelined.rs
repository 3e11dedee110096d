//! Pipelined commits: a page sends a commit while its earlier ones are in flight, and a read
//! of a key an earlier one wrote travels as a dependency (`deps`): valid only if that
//! transaction committed, as this user, nothing changed the key since, and the key holds
//! the value the page read. A connection's commits are decided and answered in the order
//! sent. Spoken frame by frame, as the browser runtime will speak it.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use support::{COUNTER_SCHEMA, TestDb, app_with_schema, metric};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection, spoken by hand. Replies that are not the one awaited wait in `held`.
struct Raw {
    ws: Ws,
    held: VecDeque<Value>,
    next_id: u32,
}

impl Raw {
    async fn connect(url: &str, user: &str) -> Raw {
        let (ws, _) = connect_async(url).await.unwrap();
        let mut raw = Raw {
            ws,
            held: VecDeque::new(),
            next_id: 1,
        };
        raw.send(json!({"type": "hello", "protocol": 1, "client_id": user, "user": user}))
            .await;
        let welcome = raw.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        raw
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next message that is not a push.
    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("a reply in time");
            match msg.unwrap().unwrap() {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] != "push" {
                        return v;
                    }
                }
                Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// The reply to commit `txn`.
    async fn reply(&mut self, txn: &str) -> Value {
        if let Some(i) = self.held.iter().position(|m| m["txn"] == txn) {
            return self.held.remove(i).unwrap();
        }
        loop {
            let m = self.recv().await;
            if m["txn"] == txn {
                return m;
            }
            self.held.push_back(m);
        }
    }

    /// The entries of one key read.
    async fn read(&mut self, key: &Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"type": "read", "id": id, "keys": [key]}))
            .await;
        let values = loop {
            let m = self.recv().await;
            if m["id"] == id {
                break m;
            }
            self.held.push_back(m);
        };
        assert_eq!(values["type"], "values", "{values}");
        values["entries"][0].clone()
    }

    /// Sends a first send of a commit.
    async fn commit(&mut self, txn: &str, reads: Value, writes: Value, deps: Value) {
        self.send(commit(txn, reads, writes, deps, true)).await;
    }

    /// Sends a first send of a commit that follows the commit `follows` (as the browser
    /// runtime sends every commit while an earlier one is in flight).
    async fn commit_following(
        &mut self,
        txn: &str,
        reads: Value,
        writes: Value,
        deps: Value,
        follows: &str,
    ) {
        let mut c = commit(txn, reads, writes, deps, true);
        c["follows"] = json!(follows);
        self.send(c).await;
    }
}

fn commit(txn: &str, reads: Value, writes: Value, deps: Value, first: bool) -> Value {
    let mut c = json!({"type": "commit", "txn": txn, "reads": reads, "writes": writes});
    if first {
        c["first"] = json!(true);
    }
    if deps.as_array().is_some_and(|d| !d.is_empty()) {
        c["deps"] = deps;
    }
    c
}

fn counter() -> Value {
    json!({"kind": "row", "table": "counters", "pk": 1})
}

fn set_n(n: i64) -> Value {
    json!([{"key": counter(), "op": "update", "set": {"n": n}}])
}

/// A dependency on `after` having left the counter at `n`.
fn on(after: &str, n: i64) -> Value {
    json!([{"key": counter(), "after": after, "value": {"id": 1, "n": n}}])
}

fn version(reply: &Value) -> u64 {
    reply["version"].as_str().unwrap().parse().unwrap()
}

async fn counter_n(pool: &PgPool) -> i32 {
    let (n,): (i32,) = sqlx::query_as("SELECT n FROM counters WHERE id = 1")
        .fetch_one(pool)
        .await
        .unwrap();
    n
}

async fn kv_present(pool: &PgPool, key: &str) -> bool {
    let (present,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM mjolnir.kv WHERE key = $1)")
            .bind(key)
            .fetch_one(pool)
            .await
            .unwrap();
    present
}

/// T and D sent back to back, D reading the counter as T leaves it: both commit, D after T.
#[tokio::test]
async fn a_dependent_commit_after_its_committed_predecessor_commits() {
    let db = TestDb::new("pipe_commit").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let server = db.start(app.path()).await;
    let pool = db.pool().await;
    let mut page = Raw::connect(&server.ws_url(), "alice").await;
    let seen = page.read(&counter()).await;

    page.commit(
        "p:1",
        json!([{"key": counter(), "version": seen["version"]}]),
        set_n(1),
        json!([]),
    )
    .await;
    page.commit("p:2", json!([]), set_n(2), on("p:1", 1)).await;
    let (t, d) = (page.reply("p:1").await, page.reply("p:2").await);
    assert_eq!(t["type"], "committed", "{t}");
    assert_eq!(d["type"], "committed", "{d}");
    assert!(version(&d) > version(&t));
    assert_eq!(counter_n(&pool).await, 2);

    // A read-only commit may depend too: it commits at its predecessor's version.
    page.commit("p:3", json!([]), set_n(3), on("p:2", 2)).await;
    page.commit("p:4", json!([]), json!([]), on("p:3", 3)).await;
    let (t, d) = (page.reply("p:3").await, page.reply("p:4").await);
    assert_eq!(t["type"], "committed", "{t}");
    assert_eq!(
        d,
        json!({"type": "committed", "txn": "p:4", "version": t["version"]})
    );

    // A kv entry the same; values compare as JSON, so 1.0 is 1.
    let kv = json!({"kind": "kv", "key": "k"});
    let put = |v: Value| json!([{"key": kv, "op": "put", "value": v}]);
    page.commit("p:5", json!([]), put(json!({"a": 1})), json!([]))
        .await;
    let dep = json!([{"key": kv, "after": "p:5", "value": {"a": 1.0}}]);
    page.commit("p:6", json!([]), put(json!({"a": 2})), dep)
        .await;
    assert_eq!(page.reply("p:5").await["type"], "committed");
    let d = page.reply("p:6").await;
    assert_eq!(d["type"], "committed", "{d}");
}

/// T conflicts: D, which read what T would have written, conflicts too, and nothing of it
/// is applied; its conflict carries the counter as it is.
#[tokio::test]
async fn a_dependent_commit_after_a_conflict_conflicts() {
    let db = TestDb::new("pipe_conflict").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let server = db.start(app.path()).await;
    let pool = db.pool().await;
    let mut page = Raw::connect(&server.ws_url(), "alice").await;
    let mut other = Raw::connect(&server.ws_url(), "bob").await;
    let seen = page.read(&counter()).await;
    other.commit("o:1", json!([]), set_n(10), json!([])).await;
    assert_eq!(other.reply("o:1").await["type"], "committed");

    page.commit(
        "p:1",
        json!([{"key": counter(), "version": seen["version"]}]),
        set_n(1),
        json!([]),
    )
    .await;
    let mut d_writes = set_n(2);
    d_writes
        .as_array_mut()
        .unwrap()
        .push(json!({"key": {"kind": "kv", "key": "d"}, "op": "put", "value": 1}));
    page.commit("p:2", json!([]), d_writes, on("p:1", 1)).await;
    let (t, d) = (page.reply("p:1").await, page.reply("p:2").await);
    assert_eq!(t["type"], "conflict", "{t}");
    assert_eq!(d["type"], "conflict", "{d}");
    assert_eq!(d["stale"][0]["key"], counter());
    assert_eq!(d["stale"][0]["value"], json!({"id": 1, "n": 10}));
    assert_eq!(d["stale"][0]["version"], t["stale"][0]["version"]);
    assert_eq!(counter_n(&pool).await, 10);
    assert!(!kv_present(&pool, "d").await, "nothing of D is applied");
}

/// T commits, but the counter does not hold what the page predicted: a trigger changed the
/// row, or the prediction was simply wrong. D conflicts, with the row as it is.
#[tokio::test]
async fn a_dependency_on_a_value_other_than_the_one_committed_conflicts() {
    let db = TestDb::new("pipe_value").await;
    let app = app_with_schema(&format!(
        "{COUNTER_SCHEMA}
         CREATE TABLE stamped (id integer PRIMARY KEY, n integer NOT NULL, touched integer NOT NULL DEFAULT 0);
         INSERT INTO stamped VALUES (1, 0, 0);
         CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN NEW.touched := OLD.touched + 1; RETURN NEW; END $$;
         CREATE TRIGGER touch BEFORE UPDATE ON stamped FOR EACH ROW EXECUTE FUNCTION touch();"
    ));
    let server = db.start(app.path()).await;
    let pool = db.pool().await;
    let mut page = Raw::connect(&server.ws_url(), "alice").await;

    // The prediction leaves the trigger out.
    let row = json!({"kind": "row", "table": "stamped", "pk": 1});
    page.commit(
        "p:1",
        json!([]),
        json!([{"key": row, "op": "update", "set": {"n": 1}}]),
        json!([]),
    )
    .await;
    page.commit(
        "p:2",
        json!([]),
        json!([{"key": row, "op": "update", "set": {"n": 2}}]),
        json!([{"key": row, "after": "p:1", "value": {"id": 1, "n": 1, "touched": 0}}]),
    )
    .await;
    let (t, d) = (page.reply("p:1").await, page.reply("p:2").await);
    assert_eq!(t["type"], "committed", "{t}");
    assert_eq!(d["type"], "conflict", "{d}");
    assert_eq!(
        d["stale"],
        json!([{"key": row, "version": t["version"], "value": {"id": 1, "n": 1, "touched": 1}}])
    );

    // A plain wrong guess, and an absent one, the same.
    page.commit("p:3", json!([]), set_n(1), json!([])).await;
    page.commit("p:4", json!([]), set_n(2), on("p:3", 5)).await;
    let absent = json!([{"key": counter(), "after": "p:3", "value": null}]);
    page.commit("p:5", json!([]), set_n(2), absent).await;
    assert_eq!(page.reply("p:3").await["type"], "committed");
    assert_eq!(page.reply("p:4").await["type"], "conflict");
    assert_eq!(page.reply("p:5").await["type"], "conflict");
    assert_eq!(counter_n(&pool).await, 1);
}

/// Someone else changes the key between T and D: D conflicts, even if the value came back
/// to what T left (A-B-A). A write that changed nothing leaves D valid.
#[tokio::test]
async fn a_change_by_someone_else_after_the_predecessor_breaks_the_dependency() {
    let db = TestDb::new("pipe_between").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let server = db.start(app.path()).await;
    let pool = db.pool().await;
    let mut page = Raw::connect(&server.ws_url(), "alice").await;
    let mut other = Raw::connect(&server.ws_url(), "bob").await;

    page.commit("p:1", json!([]), set_n(1), json!([])).await;
    assert_eq!(page.reply("p:1").await["type"], "committed");
    other.commit("o:1", json!([]), set_n(7), json!([])).await;
    assert_eq!(other.reply("o:1").await["type"], "committed");
    other.commit("o:2", json!([]), set_n(1), json!([])).await;
    let back = other.reply("o:2").await;
    assert_eq!(back["type"], "committed");
    page.commit("p:2", json!([]), set_n(2), on("p:1", 1)).await;
    let d = page.reply("p:2").await;
    assert_eq!(d["type"], "conflict", "{d}");
    assert_eq!(d["stale"][0]["version"], back["version"]);
    assert_eq!(counter_n(&pool).await, 1);

    // A write of what is there already is no change.
    page.commit("p:3", json!([]), set_n(3), json!([])).await;
    assert_eq!(page.reply("p:3").await["type"], "committed");
    other.commit("o:3", json!([]), set_n(3), json!([])).await;
    assert_eq!(other.reply("o:3").await["type"], "committed");
    page.commit("p:4", json!([]), set_n(4), on("p:3", 3)).await;
    let d = page.reply("p:4").await;
    assert_eq!(d["type"], "committed", "{d}");
    assert_eq!(counter_n(&pool).await, 4);
}

/// A txn id is its user's own: bob cannot depend on alice's transaction, even naming the
/// value it left.
#[tokio::test]
async fn a_dependency_on_another_users_transaction_conflicts() {
    let db = TestDb::new("pipe_user").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let server = db.start(app.path()).await;
    let pool = db.pool().await;
    let mut alice = Raw::connect(&server.ws_url(), "alice").await;
    let mut bob = Raw::connect(&server.ws_url(), "bob").await;
    alice
        .commit("shared:1", json!([]), set_n(1), json!([]))
        .await;
    assert_eq!(alice.reply("shared:1").await["type"], "committed");
    bob.commit("b:1", json!([]), set_n(2), on("shared:1", 1))
        .await;
    let d = bob.reply("b:1").await;
    assert_eq!(d["type"], "conflict", "{d}");
    assert_eq!(counter_n(&pool).await, 1);
    // Alice can.
    alice
        .commit("a:2", json!([]), set_n(2), on("shared:1", 1))
        .await;
    assert_eq!(alice.reply("a:2").await["type"], "committed");
}

/// Dependencies that cannot be taken as sent are refused by the commit's txn: a key twice
/// across `reads` and `deps`, or in `deps`; an impossible txn id in `after`.
#[tokio::test]
async fn malformed_dependencies_are_rejected_by_txn() {
    let db = TestDb::new("pipe_malformed").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let server = db.start(app.path()).await;
    let pool = db.pool().await;
    let mut page = Raw::connect(&server.ws_url(), "alice").await;
    let dep = |after: &str| json!({"key": counter(), "after": after, "value": {"id": 1, "n": 0}});
    let cases = [
        (
            json!([{"key": counter(), "version": "0"}]),
            json!([dep("x:1")]),
        ),
        (json!([]), json!([dep("x:1"), dep("x:2")])),
        (json!([]), json!([dep("")])),
        (json!([]), json!([dep(&"x".repeat(129))])),
    ];
    for (i, (reads, deps)) in cases.into_iter().enumerate() {
        let txn = format!("bad:{i}");
        page.commit(&txn, reads, set_n(9), deps).await;
        let reply = page.reply(&txn).await;
        assert_eq!(reply["type"], "rejected", "{reply}");
        assert_eq!(reply["error"]["code"], "malformed", "{reply}");
    }
    // An unknown field in a dependency is malformed too.
    let mut odd = commit("bad:x", json!([]), set_n(9), json!([dep("x:1")]), true);
    odd["deps"][0]["version"] = json!("3");
    page.send(odd).await;
    let reply = page.reply("bad:x").await;
    assert_eq!(reply["type"], "rejected", "{reply}");
    // So is a `follows` that is empty or longer than a txn id may be, answered by txn.
    for (i, follows) in ["", &"x".repeat(129)].into_iter().enumerate() {
        let txn = format!("bad:f{i}");
        let mut msg = commit(&txn, json!([]), set_n(9), json!([]), true);
        msg["follows"] = json!(follows);
        page.send(msg).await;
        let reply = page.reply(&txn).await;
        assert_eq!(reply["type"], "rejected", "{reply}");
        assert_eq!(reply["error"]["code"], "malformed", "{reply}");
    }
    assert_eq!(counter_n(&pool).await, 0);
}

/// One page bumps one counter `COUNT` times without waiting for any verdict, each commit
/// depending on the one before: all commit, answered in the order sent, with growing
/// versions, and the count is exact.
async fn pipelined_bumps(label: &str, lanes: usize) {
    const COUNT: i64 = 200;
    let db = TestDb::new(label).await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let server = db
        .start_with(app.path(), |c| c.knobs.group_commit_lanes = lanes)
        .await;
    let pool = db.pool().await;
    let mut page = Raw::connect(&server.ws_url(), "alice").await;
    let seen = page.read(&counter()).await;
    let started = Instant::now();
    for i in 1..=COUNT {
        if i == 1 {
            let reads = json!([{"key": counter(), "version": seen["version"]}]);
            page.commit("p:1", reads, set_n(i), json!([])).await;
        } else {
            // As the browser sends them: each follows, and reads, the one before.
            let before = format!("p:{}", i - 1);
            let deps = on(&before, i - 1);
            page.commit_following(&format!("p:{i}"), json!([]), set_n(i), deps, &before)
                .await;
        }
    }
    let mut last = 0;
    for i in 1..=COUNT {
        let reply = page.recv().await;
        assert_eq!(reply["txn"], format!("p:{i}"), "answered in the order sent");
        assert_eq!(reply["type"], "committed", "{reply}");
        assert!(version(&reply) > last);
        last = version(&reply);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{label}: {COUNT} pipelined dependent commits in {elapsed:?} ({:.0}/s), {} batches",
        COUNT as f64 / elapsed.as_secs_f64(),
        metric(&server, "mjolnir_commit_batch_size_count ")
    );
    assert_eq!(counter_n(&pool).await, COUNT as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commits_of_one_connection_are_decided_in_order() {
    pipelined_bumps("pipe_order", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commits_keep_their_order_across_several_lanes() {
    pipelined_bumps("pipe_order_lanes", 3).await;
}

/// A commit that follows another is decided only if that one committed, whatever it read:
/// after a conflict, a commit with no dependency at all (other keys) conflicts too, with
/// no stale keys, and nothing of it is applied; after a commit it commits; after a txn the
/// server never saw, or another user's, it conflicts. What lets a page undo and re-run
/// every later commit of its pipeline when one fails.
#[tokio::test]
async fn a_commit_that_follows_a_failed_one_conflicts_whatever_it_read() {
    let db = TestDb::new("pipe_follows").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let server = db.start(app.path()).await;
    let pool = db.pool().await;
    let mut page = Raw::connect(&server.ws_url(), "alice").await;
    let mut other = Raw::connect(&server.ws_url(), "bob").await;
    let seen = page.read(&counter()).await;
    other.commit("o:1", json!([]), set_n(10), json!([])).await;
    assert_eq!(other.reply("o:1").await["type"], "committed");

    let kv = |k: &str| json!([{"key": {"kind": "kv", "key": k}, "op": "put", "value": 1}]);
    let stale_read = json!([{"key": counter(), "version": seen["version"]}]);
    page.commit("p:1", stale_read, set_n(1), json!([])).await;
    page.commit_following("p:2", json!([]), kv("a"), json!([]), "p:1")
        .await;
    page.commit_following("p:3", json!([]), kv("b"), json!([]), "p:2")
        .await;
    assert_eq!(page.reply("p:1").await["type"], "conflict");
    for txn in ["p:2", "p:3"] {
        let reply = page.reply(txn).await;
        assert_eq!(
            reply,
            json!({"type": "conflict", "txn": txn, "stale": []}),
            "{txn} follows a failed commit"
        );
    }
    assert!(!kv_present(&pool, "a").await && !kv_present(&pool, "b").await);

    page.commit("p:4", json!([]), kv("c"), json!([])).await;
    page.commit_following("p:5", json!([]), kv("d"), json!([]), "p:4")
        .await;
    assert_eq!(page.reply("p:4").await["type"], "committed");
    assert_eq!(page.reply("p:5").await["type"], "committed");
    assert!(kv_present(&pool, "d").await);

    // Bob's o:1 committed, but not as alice; and p:99 was never sent.
    for (txn, follows) in [("p:6", "o:1"), ("p:7", "p:99")] {
        page.commit_following(txn, json!([]), kv(txn), json!([]), follows)
            .await;
        let reply = page.reply(txn).await;
        assert_eq!(
            reply["type"], "conflict",
            "{txn} follows {follows}: {reply}"
        );
        assert!(!kv_present(&pool, txn).await);
    }
    assert_eq!(counter_n(&pool).await, 10);
}

/// Dependencies inside one batch: T and D queue behind a blocked commit and are decided in
/// one batch, D after T; so are T2, which conflicts, and D2, which depends on it.
#[tokio::test]
async fn dependencies_within_one_batch() {
    let db = TestDb::new("pipe_batch").await;
    let app = app_with_schema(&format!(
        "{COUNTER_SCHEMA}
         CREATE TABLE gate (id integer PRIMARY KEY, n integer NOT NULL);
         INSERT INTO gate VALUES (1, 0);
         INSERT INTO counters VALUES (2, 0);"
    ));
    let server = db
        .start_with(app.path(), |c| {
            c.knobs.group_commit = 16;
            c.knobs.group_commit_lanes = 1;
        })
        .await;
    let pool = db.pool().await;
    let url = server.ws_url();
    let second = json!({"kind": "row", "table": "counters", "pk": 2});
    let mut page = Raw::connect(&url, "alice").await;
    let seen = page.read(&second).await;
    let mut other = Raw::connect(&url, "bob").await;
    other
        .commit(
            "o:1",
            json!([]),
            json!([{"key": second, "op": "update", "set": {"n": 5}}]),
            json!([]),
        )
        .await;
    assert_eq!(other.reply("o:1").await["type"], "committed");

    // The gate: a commit waiting for a row lock this test holds keeps the only lane busy.
    let mut hold = pool.begin().await.unwrap();
    sqlx::query("SELECT n FROM gate WHERE id = 1 FOR UPDATE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let mut keeper = Raw::connect(&url, "keeper").await;
    keeper
        .commit(
            "g:1",
            json!([]),
            json!([{"key": {"kind": "row", "table": "gate", "pk": 1}, "op": "update", "set": {"n": 1}}]),
            json!([]),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let batches = || {
        (
            metric(&server, "mjolnir_commit_batch_size_count "),
            metric(&server, "mjolnir_commit_batch_size_sum "),
        )
    };
    let before = batches();

    page.commit("p:1", json!([]), set_n(1), json!([])).await;
    page.commit("p:2", json!([]), set_n(2), on("p:1", 1)).await;
    // Read before bob's commit: stale. Not marked first, so that the instance's memory of
    // recent commits does not answer it before the batch.
    page.send(commit(
        "p:3",
        json!([{"key": second, "version": seen["version"]}]),
        json!([{"key": second, "op": "update", "set": {"n": 1}}]),
        json!([]),
        false,
    ))
    .await;
    page.commit(
        "p:4",
        json!([]),
        json!([{"key": second, "op": "update", "set": {"n": 2}}]),
        json!([{"key": second, "after": "p:3", "value": {"id": 2, "n": 1}}]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.rollback().await.unwrap();
    assert_eq!(keeper.reply("g:1").await["type"], "committed");

    let replies = [
        page.reply("p:1").await,
        page.reply("p:2").await,
        page.reply("p:3").await,
        page.reply("p:4").await,
    ];
    let kinds: Vec<&Value> = replies.iter().map(|r| &r["type"]).collect();
    assert_eq!(
        kinds,
        [
            &json!("committed"),
            &json!("committed"),
            &json!("conflict"),
            &json!("conflict")
        ],
        "{replies:?}"
    );
    assert_eq!(replies[3]["stale"][0]["value"], json!({"id": 2, "n": 5}));
    // After the gate's, one batch of the four.
    let after = batches();
    assert_eq!((after.0 - before.0, after.1 - before.1), (1.0, 4.0));
    assert_eq!(counter_n(&pool).await, 2);
    let (n2,): (i32,) = sqlx::query_as("SELECT n FROM counters WHERE id = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n2, 5);
}

/// A page loses its connection with commits in flight, reconnects to another instance and
/// re-sends them (without `first`): the dependencies are resolved from the database's
/// record, not from the first instance's memory, and nothing is applied twice.
#[tokio::test]
async fn a_resent_dependent_commit_on_another_instance_commits_once() {
    let db = TestDb::new("pipe_resend").await;
    let app = app_with_schema(COUNTER_SCHEMA);
    let a = db.start(app.path()).await;
    let b = db.start(app.path()).await;
    let pool = db.pool().await;

    // T is answered; D is cut off.
    let mut page = Raw::connect(&a.ws_url(), "alice").await;
    page.commit("p:1", json!([]), set_n(1), json!([])).await;
    let t = page.reply("p:1").await;
    assert_eq!(t["type"], "committed");
    page.commit("p:2", json!([]), set_n(2), on("p:1", 1)).await;
    drop(page);
    let mut page = Raw::connect(&b.ws_url(), "alice").await;
    page.send(commit("p:2", json!([]), set_n(2), on("p:1", 1), false))
        .await;
    let d = page.reply("p:2").await;
    assert_eq!(d["type"], "committed", "{d}");
    assert_eq!(counter_n(&pool).await, 2);

    // Both cut off, both re-sent.
    let mut page = Raw::connect(&a.ws_url(), "alice").await;
    page.commit("p:3", json!([]), set_n(3), on("p:2", 2)).await;
    page.commit("p:4", json!([]), set_n(4), on("p:3", 3)).await;
    drop(page);
    let mut page = Raw::connect(&b.ws_url(), "alice").await;
    page.send(commit("p:3", json!([]), set_n(3), on("p:2", 2), false))
        .await;
    page.send(commit("p:4", json!([]), set_n(4), on("p:3", 3), false))
        .await;
    let (t, d) = (page.reply("p:3").await, page.reply("p:4").await);
    assert_eq!(t["type"], "committed", "{t}");
    assert_eq!(d["type"], "committed", "{d}");
    assert!(version(&d) > version(&t));
    assert_eq!(counter_n(&pool).await, 4);

    // Only a dependent commit sent on a fresh instance, whose predecessor that instance
    // never saw: the database's record decides.
    let c = db.start(app.path()).await;
    let mut page = Raw::connect(&c.ws_url(), "alice").await;
    page.commit("p:5", json!([]), set_n(5), on("p:4", 4)).await;
    assert_eq!(page.reply("p:5").await["type"], "committed");
    assert_eq!(counter_n(&pool).await, 5);
}
