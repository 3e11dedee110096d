//! The change feed: which connection holds which keys, and pushing committed changes to them.
//!
//! Every commit, on any instance, ends with a `NOTIFY mjolnir_commits` in its own
//! transaction. Each instance `LISTEN`s on one dedicated connection; PostgreSQL delivers
//! notifications in commit order, so each connection here receives its pushes in commit
//! order too. Subscriptions are per connection and per instance: nothing here is needed by
//! another instance.

mod index;

use crate::knobs::Knobs;
use crate::metrics::Metrics;
use crate::store::Store;
use futures_util::{StreamExt, stream};
use index::QueryIndex;
use mjolnir_core::protocol::{Entry, ServerMessage, close_code};
use mjolnir_core::{Key, Version};
use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// The channel PostgreSQL notifications travel on.
pub const CHANNEL: &str = "mjolnir_commits";

/// What goes out on one connection.
#[derive(Debug)]
pub enum Outgoing {
    Message(ServerMessage),
    /// Close the socket with this code and reason.
    Close(u16, String),
}

pub type ConnId = u64;

/// The way into one connection's outgoing queue.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub queue: mpsc::Sender<Outgoing>,
    /// Signalled when the connection must close at once because its queue is full (a close
    /// frame could not be queued behind it).
    pub kill: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: ConnId,
    conns: HashMap<ConnId, Conn>,
    holders: HashMap<Key, HashSet<ConnId>>,
    /// The subscribed queries, indexed by the rows of their results and by an equality
    /// condition, so that a change looks only at those it may change (`index.rs`).
    queries: QueryIndex,
    /// The result each subscriber of a query last got (the primary keys, or the count):
    /// a change of a row in it may change the query, and a result equal to it need not be
    /// pushed again.
    results: HashMap<Key, HashMap<ConnId, Value>>,
}

#[derive(Debug)]
struct Conn {
    outbox: Outbox,
    user: Option<String>,
    held: HashSet<Key>,
}

#[derive(Debug)]
pub struct Feed {
    registry: Mutex<Registry>,
    /// Reads run at once for one commit (`Knobs::feed_reads`).
    reads_at_once: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new(Knobs::default().feed_reads)
    }
}

impl Feed {
    pub fn new(reads_at_once: usize) -> Feed {
        Feed {
            registry: Mutex::default(),
            reads_at_once: reads_at_once.max(1),
        }
    }

    pub fn register(&self, outbox: Outbox, user: Option<String>) -> ConnId {
        let mut r = self.registry.lock().expect("feed lock");
        r.next_id += 1;
        let id = r.next_id;
        r.conns.insert(
            id,
            Conn {
                outbox,
                user,
                held: HashSet::new(),
            },
        );
        id
    }

    pub fn unregister(&self, id: ConnId) {
        let mut r = self.registry.lock().expect("feed lock");
        let Some(conn) = r.conns.remove(&id) else {
            return;
        };
        for key in conn.held {
            r.drop_holder(&key, id);
        }
    }

    /// Subscribes before the read runs: a commit after the read's snapshot is then always
    /// pushed, so the client can never miss a change to a key it holds.
    pub fn subscribe(&self, id: ConnId, keys: &[Key]) {
        let mut r = self.registry.lock().expect("feed lock");
        let Some(conn) = r.conns.get_mut(&id) else {
            return;
        };
        conn.held.extend(keys.iter().cloned());
        for key in keys {
            r.holders.entry(key.clone()).or_default().insert(id);
            r.queries.add(key);
        }
    }

    /// Records the result a connection was given of a query it holds (by a read or a
    /// push), which a later change is compared with.
    pub fn remember_result(&self, id: ConnId, key: &Key, result: &Value) {
        let mut guard = self.registry.lock().expect("feed lock");
        let r = &mut *guard;
        if r.holders.get(key).is_some_and(|h| h.contains(&id)) {
            let old = r
                .results
                .entry(key.clone())
                .or_default()
                .insert(id, result.clone());
            r.queries.replace_result(key, old.as_ref(), Some(result));
        }
    }

    pub fn unsubscribe(&self, id: ConnId, keys: &[Key]) {
        let mut r = self.registry.lock().expect("feed lock");
        for key in keys {
            r.drop_holder(key, id);
            if let Some(conn) = r.conns.get_mut(&id) {
                conn.held.remove(key);
            }
        }
    }

    /// Number of (connection, key) subscriptions, for metrics and tests.
    pub fn subscriptions(&self) -> usize {
        self.registry
            .lock()
            .expect("feed lock")
            .conns
            .values()
            .map(|c| c.held.len())
            .sum()
    }

    /// Sends each connection the changes of one commit that touch keys it holds, as one
    /// push. Changes that every user may read (`open[i]`: the commit found the table
    /// without row-level security and readable by the app's role, see migration 0006) go
    /// out as committed; the others are read again as each subscriber's user, so nobody is
    /// pushed what the app's policies would not let them read. Never waits on a client: a
    /// connection whose queue is full is too slow to follow and is closed.
    pub async fn publish(
        &self,
        store: &Store,
        version: Version,
        changes: &[Entry],
        open: &[bool],
        metrics: &Metrics,
    ) {
        let mut pushes: HashMap<ConnId, Vec<Entry>> = HashMap::new();
        let mut guarded: HashMap<Option<String>, Vec<(ConnId, Key)>> = HashMap::new();
        let mut affected = HashSet::new();
        // The tables every change of which in this commit is open to every user.
        let mut open_tables: HashSet<&str> = HashSet::new();
        let mut closed_tables: HashSet<&str> = HashSet::new();
        {
            let r = self.registry.lock().expect("feed lock");
            for (i, change) in changes.iter().enumerate() {
                r.affected(&change.key, change.value.as_ref(), &mut affected);
                let needs_reread = !open.get(i).copied().unwrap_or(false);
                if let Key::Row { table, .. } = &change.key {
                    match needs_reread {
                        true => closed_tables.insert(table),
                        false => open_tables.insert(table),
                    };
                }
                for id in r.holders.get(&change.key).into_iter().flatten() {
                    if needs_reread {
                        let user = r.conns.get(id).and_then(|c| c.user.clone());
                        guarded
                            .entry(user)
                            .or_default()
                            .push((*id, change.key.clone()));
                    } else {
                        pushes.entry(*id).or_default().push(change.clone());
                    }
                }
            }
        }
        open_tables.retain(|t| !closed_tables.contains(t));
        // Each user's re-read at once, a few at a time: one after another, hundreds of
        // users took seconds.
        let rereads: Vec<_> = stream::iter(guarded)
            .map(|(user, wanted)| async move {
                let mut keys: Vec<Key> = wanted.iter().map(|(_, k)| k.clone()).collect();
                keys.sort();
                keys.dedup();
                (wanted, store.read(user.as_deref(), &keys).await)
            })
            .buffer_unordered(self.reads_at_once)
            .collect()
            .await;
        for (wanted, read) in rereads {
            match read {
                Ok(entries) => {
                    let by_key: HashMap<&Key, &Entry> =
                        entries.iter().map(|e| (&e.key, e)).collect();
                    for (id, key) in wanted {
                        pushes.entry(id).or_default().push(by_key[&key].clone());
                    }
                }
                Err(e) => {
                    // The subscribers cannot be told the new value, so they must not keep
                    // the old one as if it were current.
                    tracing::error!(error = %e, "re-reading a change for its subscribers failed");
                    for (id, _) in wanted {
                        self.close(
                            id,
                            close_code::FEED_LOST,
                            "change feed interrupted, reconnect",
                        );
                    }
                }
            }
        }
        self.rerun(store, affected, &open_tables, &mut pushes, metrics)
            .await;
        let r = self.registry.lock().expect("feed lock");
        for (id, changes) in pushes {
            let Some(conn) = r.conns.get(&id) else {
                continue;
            };
            match conn
                .outbox
                .queue
                .try_send(Outgoing::Message(ServerMessage::Push { version, changes }))
            {
                Ok(()) => {
                    metrics.pushes.inc();
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        conn = id,
                        "outgoing queue full: closing a connection too slow to follow its pushes"
                    );
                    metrics.slow_consumers.inc();
                    conn.outbox.kill.notify_one();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Runs each affected query again, once per user among its subscribers (each sees what
    /// the app's policies let them), and adds the new result, with its rows, to the push
    /// of every subscriber whose last result differs. The rows are subscribed too.
    ///
    /// A query of a table in `open_tables` (every change of it in this commit was open to
    /// every user, see `publish`) runs once, as one of its subscribers: without row-level
    /// security, and read by one role, it gives every user the same rows. The runs go a few
    /// at a time (`Knobs::feed_reads`).
    async fn rerun(
        &self,
        store: &Store,
        affected: HashSet<Key>,
        open_tables: &HashSet<&str>,
        pushes: &mut HashMap<ConnId, Vec<Entry>>,
        metrics: &Metrics,
    ) {
        let mut runs: Vec<(Key, Option<String>, Vec<ConnId>)> = Vec::new();
        {
            let r = self.registry.lock().expect("feed lock");
            for qk in affected {
                let shared = matches!(&qk, Key::Query(q) if open_tables.contains(q.table.as_str()));
                let mut by_user: HashMap<Option<String>, Vec<ConnId>> = HashMap::new();
                for id in r.holders.get(&qk).into_iter().flatten() {
                    let user = r.conns.get(id).and_then(|c| c.user.clone());
                    by_user.entry(user).or_default().push(*id);
                }
                if shared && by_user.len() > 1 {
                    let user = by_user.keys().min().cloned().flatten();
                    let conns = by_user.into_values().flatten().collect();
                    runs.push((qk, user, conns));
                } else {
                    runs.extend(by_user.into_iter().map(|(u, conns)| (qk.clone(), u, conns)));
                }
            }
        }
        let done: Vec<_> = stream::iter(runs)
            .map(|(qk, user, conns)| async move {
                metrics.query_reruns.inc();
                let read = store.read(user.as_deref(), std::slice::from_ref(&qk)).await;
                (qk, conns, read)
            })
            .buffer_unordered(self.reads_at_once)
            .collect()
            .await;
        for (qk, conns, read) in done {
            let entries = match read {
                Ok(entries) => entries,
                Err(e) => {
                    // The subscribers cannot be told the new result (the query may no
                    // longer be allowed them), so they must not keep the old one.
                    tracing::warn!(error = %e, query = %qk, "re-running a subscribed query failed");
                    for id in conns {
                        self.close(
                            id,
                            close_code::FEED_LOST,
                            "a live query could not be re-run, reconnect",
                        );
                    }
                    continue;
                }
            };
            let result = entries[0].value.clone().unwrap_or(Value::Null);
            let rows: Vec<Key> = entries[1..].iter().map(|e| e.key.clone()).collect();
            for id in conns {
                let same = {
                    let r = self.registry.lock().expect("feed lock");
                    r.results.get(&qk).and_then(|m| m.get(&id)) == Some(&result)
                };
                if same {
                    continue;
                }
                self.subscribe(id, &rows);
                self.remember_result(id, &qk, &result);
                pushes
                    .entry(id)
                    .or_default()
                    .extend(entries.iter().cloned());
            }
        }
    }

    fn close(&self, id: ConnId, code: u16, reason: &str) {
        let r = self.registry.lock().expect("feed lock");
        if let Some(conn) = r.conns.get(&id) {
            conn.outbox.close(code, reason);
        }
    }

    /// Closes every connection: used at shutdown, and when notifications may have been
    /// lost, so clients reconnect and re-read instead of keeping a cache that no longer
    /// follows the feed.
    pub fn close_all(&self, code: u16, reason: &str) {
        let r = self.registry.lock().expect("feed lock");
        for conn in r.conns.values() {
            conn.outbox.close(code, reason);
        }
    }
}

impl Registry {
    fn drop_holder(&mut self, key: &Key, id: ConnId) {
        if let Some(results) = self.results.get_mut(key)
            && let Some(old) = results.remove(&id)
        {
            self.queries.replace_result(key, Some(&old), None);
        }
        if let Some(h) = self.holders.get_mut(key) {
            h.remove(&id);
            if h.is_empty() {
                self.holders.remove(key);
                // Results are only kept for holders: none is left.
                self.results.remove(key);
                self.queries.remove(key);
            }
        }
    }

    /// The subscribed queries a change of `key` to `value` may change: those whose last
    /// result holds the row (its old value matched), and those its new value may match.
    /// A count's result holds no keys and the change set lacks the row's old value, so
    /// every change of its table re-runs a count. Found through the index, without
    /// looking at the table's other queries.
    fn affected(&self, key: &Key, value: Option<&Value>, out: &mut HashSet<Key>) {
        self.queries.affected(key, value, out);
    }
}

impl Outbox {
    /// Queues a close frame; if the queue is full, closes at once instead.
    pub fn close(&self, code: u16, reason: &str) {
        if self
            .queue
            .try_send(Outgoing::Close(code, reason.to_owned()))
            .is_err()
        {
            self.kill.notify_one();
        }
    }
}

/// A notification payload: the change set inline, or a pointer into `mjolnir.commit_log`.
#[derive(Deserialize)]
struct Notification {
    version: Version,
    #[serde(default)]
    changes: Option<Vec<Entry>>,
    /// The 1-based positions in `changes` of the entries every user may read; without it
    /// (a change set of an older server) every entry is re-read as each subscriber.
    #[serde(default)]
    open: Vec<usize>,
}

/// One commit as the feed publishes it.
struct Commit {
    version: Version,
    changes: Vec<Entry>,
    /// Per change: whether every user may read it.
    open: Vec<bool>,
}

impl Notification {
    fn into_commit(self) -> Commit {
        let changes = self.changes.unwrap_or_default();
        let mut open = vec![false; changes.len()];
        for i in self.open {
            if let Some(slot) = i.checked_sub(1).and_then(|i| open.get_mut(i)) {
                *slot = true;
            }
        }
        Commit {
            version: self.version,
            changes,
            open,
        }
    }
}

/// Subscribes to the commit notifications of every instance. Done before the instance
/// accepts connections, so no commit after its first read can be missed.
pub async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// How long to wait before listening again after the notification connection failed.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// Publishes every commit notification to this instance's connections, until the task is
/// aborted. Whenever notifications may have been lost (the listening connection dropped),
/// every client is asked to reconnect (close code 4003), since none of their caches can be
/// trusted to follow the feed any more.
pub async fn follow(
    mut listener: PgListener,
    store: Arc<Store>,
    feed: Arc<Feed>,
    metrics: Arc<Metrics>,
) {
    loop {
        match next_commit(&mut listener, store.pool()).await {
            Ok(Some(commit)) => {
                // Before any push: a client told of a change must not then find this
                // instance unaware of it.
                store.remember(&commit.changes);
                feed.publish(
                    &store,
                    commit.version,
                    &commit.changes,
                    &commit.open,
                    &metrics,
                )
                .await;
            }
            Ok(None) => {
                tracing::warn!(
                    "lost the commit notification stream; asking every client to reconnect"
                );
                feed.close_all(close_code::FEED_LOST, "change feed interrupted, reconnect");
            }
            Err(e) => {
                tracing::error!(error = %e, "commit notifications failed; asking every client to reconnect");
                feed.close_all(close_code::FEED_LOST, "change feed interrupted, reconnect");
                tokio::time::sleep(RELISTEN_DELAY).await;
                match listen(store.pool()).await {
                    Ok(l) => listener = l,
                    Err(e) => tracing::error!(error = %e, "cannot listen for commits yet"),
                }
            }
        }
    }
}

/// The next commit announced, or `None` if the stream was interrupted (and resumed).
async fn next_commit(
    listener: &mut PgListener,
    pool: &PgPool,
) -> Result<Option<Commit>, sqlx::Error> {
    let Some(n) = listener.try_recv().await? else {
        return Ok(None);
    };
    let note: Notification =
        serde_json::from_str(n.payload()).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    if note.changes.is_some() {
        return Ok(Some(note.into_commit()));
    }
    let (logged,): (sqlx::types::Json<Notification>,) =
        sqlx::query_as("SELECT changes FROM mjolnir.commit_log WHERE version = $1")
            .bind(note.version.0 as i64)
            .fetch_one(pool)
            .await?;
    Ok(Some(logged.0.into_commit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mjolnir_core::{Op, Query};
    use proptest::prelude::*;
    use serde_json::json;

    /// A feed with `n` connections, and their ids.
    fn feed(n: usize) -> (Feed, Vec<ConnId>) {
        let feed = Feed::default();
        let ids = (0..n)
            .map(|i| {
                let (queue, _) = mpsc::channel(1);
                let outbox = Outbox {
                    queue,
                    kill: Arc::new(Notify::new()),
                };
                feed.register(outbox, Some(format!("user{i}")))
            })
            .collect();
        (feed, ids)
    }

    fn affected(feed: &Feed, key: &Key, value: Option<&Value>) -> HashSet<Key> {
        let mut out = HashSet::new();
        feed.registry.lock().unwrap().affected(key, value, &mut out);
        out
    }

    /// The rule as it was decided before the index: every subscribed query of the table,
    /// and every subscriber's last result of each.
    fn scanned(feed: &Feed, key: &Key, value: Option<&Value>) -> HashSet<Key> {
        let Key::Row { table, pk } = key else {
            return HashSet::new();
        };
        let pk = serde_json::to_value(pk).unwrap();
        let r = feed.registry.lock().unwrap();
        let mut out = HashSet::new();
        for qk in r.holders.keys() {
            let Key::Query(q) = qk else { continue };
            if &q.table != table {
                continue;
            }
            let held = r.results.get(qk).is_some_and(|by_conn| {
                by_conn
                    .values()
                    .any(|r| r.as_array().is_some_and(|pks| pks.contains(&pk)))
            });
            if q.count || held || q.matches(value) != Some(false) {
                out.insert(qk.clone());
            }
        }
        out
    }

    fn room(room: i64) -> Query {
        Query::table("items")
            .filter("room", Op::Eq, json!(room))
            .order_by("n", false)
            .limit(2)
    }

    fn keys(queries: &[&Query]) -> HashSet<Key> {
        queries.iter().map(|q| Key::query((*q).clone())).collect()
    }

    #[test]
    fn a_row_leaving_a_result_reruns_its_query() {
        let (feed, ids) = feed(2);
        let (seven, eight) = (room(7), room(8));
        feed.subscribe(ids[0], &[Key::query(seven.clone())]);
        feed.subscribe(ids[1], &[Key::query(eight.clone())]);
        feed.remember_result(ids[0], &Key::query(seven.clone()), &json!([1, 2]));
        // Row 1 moves from room 7 to room 9: its new value matches neither query, but
        // room 7's result held it.
        let moved = json!({"id": 1, "room": 9, "n": 1});
        let row1 = Key::row("items", 1);
        assert_eq!(affected(&feed, &row1, Some(&moved)), keys(&[&seven]));
        assert_eq!(affected(&feed, &row1, None), keys(&[&seven]), "a delete");
        // Row 3, in no result, moving to room 9: nothing.
        assert!(affected(&feed, &Key::row("items", 3), Some(&moved)).is_empty());
        // Once the result no longer holds row 1, its changes re-run nothing.
        feed.remember_result(ids[0], &Key::query(seven.clone()), &json!([2, 4]));
        assert!(affected(&feed, &row1, Some(&moved)).is_empty());
        assert_eq!(
            affected(&feed, &Key::row("items", 4), None),
            keys(&[&seven])
        );
    }

    #[test]
    fn a_row_entering_reruns_only_the_queries_of_its_value() {
        let (feed, ids) = feed(10);
        let queries: Vec<Query> = (0..1000).map(room).collect();
        for (i, q) in queries.iter().enumerate() {
            feed.subscribe(ids[i % ids.len()], &[Key::query(q.clone())]);
        }
        let row = Key::row("items", 5000);
        let into = |r: Value| affected(&feed, &row, Some(&json!({"id": 5000, "room": r, "n": 1})));
        assert_eq!(into(json!(7)), keys(&[&queries[7]]));
        assert_eq!(into(json!(7.0)), keys(&[&queries[7]]), "7.0 == 7");
        assert!(into(json!(1000)).is_empty());
        assert!(into(Value::Null).is_empty());
        // A room spelled as a string compares with no number exactly: every query re-runs.
        assert_eq!(into(json!("7")).len(), 1000);
        // A row of another table changes none.
        let other = Key::row("rooms", 7);
        assert!(affected(&feed, &other, Some(&json!({"room": 7}))).is_empty());
    }

    #[test]
    fn a_count_reruns_on_every_change_of_its_table() {
        let (feed, ids) = feed(1);
        let count = Query::table("items")
            .filter("room", Op::Eq, json!(7))
            .counted();
        feed.subscribe(ids[0], &[Key::query(count.clone())]);
        feed.remember_result(ids[0], &Key::query(count.clone()), &json!(3));
        let row = Key::row("items", 1);
        for value in [Some(json!({"room": 8})), Some(json!({"room": 7})), None] {
            assert_eq!(
                affected(&feed, &row, value.as_ref()),
                keys(&[&count]),
                "{value:?}"
            );
        }
        assert!(affected(&feed, &Key::row("other", 1), None).is_empty());
    }

    #[test]
    fn a_query_without_equality_is_decided_by_matches() {
        let (feed, ids) = feed(1);
        let big = Query::table("items")
            .filter("n", Op::Gt, json!(10))
            .limit(5);
        let search = Query::table("items").search("body", "fox");
        let either = Query::table("items").filter("room", Op::In, json!([1, 2]));
        for q in [&big, &search, &either] {
            feed.subscribe(ids[0], &[Key::query(q.clone())]);
        }
        let row = Key::row("items", 1);
        let change = |v: Value| affected(&feed, &row, Some(&v));
        assert_eq!(
            change(json!({"n": 5, "room": 3})),
            keys(&[&search]),
            "only PostgreSQL can tell whether a search matches"
        );
        assert_eq!(change(json!({"n": 20, "room": 3})), keys(&[&big, &search]));
        assert_eq!(
            change(json!({"n": 5, "room": 2})),
            keys(&[&search, &either])
        );
        assert!(affected(&feed, &row, None).is_empty());
    }

    #[test]
    fn unsubscribing_and_leaving_empty_the_index() {
        let (feed, ids) = feed(3);
        let queries = [room(1), room(2), room(1).counted()];
        for (n, id) in ids.iter().enumerate() {
            let mine: Vec<Key> = queries.iter().map(|q| Key::query(q.clone())).collect();
            feed.subscribe(*id, &mine);
            for k in &mine[..2] {
                feed.remember_result(*id, k, &json!([n, 10 + n]));
            }
        }
        let row = Key::row("items", 10);
        assert_eq!(
            affected(&feed, &row, None),
            keys(&[&queries[0], &queries[1], &queries[2]])
        );
        // Connection 0 leaves; the others still hold row 11, not row 10.
        feed.unregister(ids[0]);
        assert_eq!(affected(&feed, &row, None), keys(&[&queries[2]]));
        assert_eq!(
            affected(&feed, &Key::row("items", 11), None),
            keys(&[&queries[0], &queries[1], &queries[2]])
        );
        feed.unsubscribe(ids[1], &[Key::query(queries[0].clone())]);
        feed.unregister(ids[2]);
        assert_eq!(
            affected(&feed, &Key::row("items", 11), None),
            keys(&[&queries[1], &queries[2]])
        );
        let all: Vec<Key> = queries.iter().map(|q| Key::query(q.clone())).collect();
        feed.unsubscribe(ids[1], &all);
        let r = feed.registry.lock().unwrap();
        assert!(r.queries.is_empty(), "{:?}", r.queries);
        assert!(r.results.is_empty() && r.holders.is_empty());
    }

    /// Values that compare in every way `Query::matches` knows: equal numbers spelled two
    /// ways, strings equal but for case, beyond ASCII, numbers as strings, nulls.
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            Just(json!(1)),
            Just(json!(1.0)),
            Just(json!(2)),
            Just(json!(-0.0)),
            Just(json!(0)),
            Just(json!(true)),
            Just(json!(false)),
            Just(json!("a")),
            Just(json!("A")),
            Just(json!("b")),
            Just(json!("é")),
            Just(json!("É")),
            Just(json!("1")),
            Just(json!([1])),
        ]
    }

    fn condition() -> impl Strategy<Value = (String, Op, Value)> {
        let column = prop_oneof![Just("c"), Just("d")].prop_map(str::to_owned);
        let op = prop_oneof![
            4 => Just(Op::Eq),
            2 => Just(Op::In),
            1 => Just(Op::Ne),
            1 => Just(Op::Gt),
            1 => Just(Op::IsNull),
        ];
        (column, op, value(), prop::collection::vec(value(), 0..3)).prop_map(
            |(column, op, v, options)| match op {
                Op::In => (column, op, Value::Array(options)),
                Op::IsNull => (column, op, Value::Null),
                _ => (column, op, v),
            },
        )
    }

    fn query() -> impl Strategy<Value = Query> {
        let table = prop_oneof![3 => Just("t"), 1 => Just("u")];
        (
            table,
            prop::collection::vec(condition(), 0..3),
            any::<bool>(),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(table, conditions, count, search)| {
                let mut q = conditions
                    .into_iter()
                    .fold(Query::table(table), |q, (c, op, v)| q.filter(c, op, v));
                if search {
                    q = q.search("body", "fox");
                }
                if count { q.counted() } else { q.limit(3) }
            })
    }

    #[derive(Debug, Clone)]
    enum Step {
        Subscribe(usize, usize),
        Result(usize, usize, Vec<i64>),
        Unsubscribe(usize, usize),
        Leave(usize),
        Change(bool, i64, Option<(Value, Value)>),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..4usize, 0..12usize).prop_map(|(c, q)| Step::Subscribe(c, q)),
            3 => (0..4usize, 0..12usize, prop::collection::vec(0..6i64, 0..4))
                .prop_map(|(c, q, pks)| Step::Result(c, q, pks)),
            1 => (0..4usize, 0..12usize).prop_map(|(c, q)| Step::Unsubscribe(c, q)),
            1 => (0..4usize).prop_map(Step::Leave),
            4 => (any::<bool>(), 0..6i64, prop::option::weighted(0.8, (value(), value())))
                .prop_map(|(t, pk, v)| Step::Change(t, pk, v)),
        ]
    }

    proptest! {
        /// Whatever is subscribed, remembered and dropped, the index finds exactly the
        /// queries the scan of every query and every result found.
        #[test]
        fn the_index_decides_as_the_scan_of_every_query(
            queries in prop::collection::vec(query(), 12),
            steps in prop::collection::vec(step(), 1..60),
        ) {
            let (feed, mut ids) = feed(4);
            let key = |q: usize| Key::query(queries[q].clone());
            for step in steps {
                match step {
                    Step::Subscribe(c, q) => feed.subscribe(ids[c], &[key(q)]),
                    Step::Result(c, q, pks) => {
                        let result = match queries[q].count {
                            true => json!(pks.len()),
                            false => json!(pks),
                        };
                        feed.remember_result(ids[c], &key(q), &result);
                    }
                    Step::Unsubscribe(c, q) => feed.unsubscribe(ids[c], &[key(q)]),
                    Step::Leave(c) => {
                        feed.unregister(ids[c]);
                        let (queue, _) = mpsc::channel(1);
                        let outbox = Outbox { queue, kill: Arc::new(Notify::new()) };
                        ids[c] = feed.register(outbox, None);
                    }
                    Step::Change(in_t, pk, value) => {
                        let row = Key::row(if in_t { "t" } else { "u" }, pk);
                        let value = value.map(|(c, d)| json!({"c": c, "d": d, "body": "x"}));
                        prop_assert_eq!(
                            affected(&feed, &row, value.as_ref()),
                            scanned(&feed, &row, value.as_ref())
                        );
                    }
                }
            }
            for id in ids {
                feed.unregister(id);
            }
            prop_assert!(feed.registry.lock().unwrap().queries.is_empty());
        }
    }

    fn commit(payload: &str) -> Commit {
        serde_json::from_str::<Notification>(payload)
            .unwrap()
            .into_commit()
    }

    #[test]
    fn only_the_entries_a_change_set_names_open_skip_the_reread() {
        let entries = r#"[{"key":{"kind":"kv","key":"a"},"version":"7","value":1},
                          {"key":{"kind":"row","table":"t","pk":1},"version":"7","value":null},
                          {"key":{"kind":"kv","key":"b"},"version":"7","value":2}]"#;
        let named = commit(&format!(
            r#"{{"version":"7","changes":{entries},"open":[1,3,9,0]}}"#
        ));
        assert_eq!(
            named.open,
            [true, false, true],
            "positions out of range are ignored"
        );
        // A change set written before the `open` list existed: every entry is re-read.
        let old = commit(&format!(r#"{{"version":"7","changes":{entries}}}"#));
        assert_eq!(old.open, [false, false, false]);
        assert_eq!(old.changes.len(), 3);
    }
}
