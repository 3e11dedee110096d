//! The change feed: which connection holds which keys, and pushing committed changes to them.
//!
//! Every commit, on any instance, ends with a `NOTIFY mjolnir_commits` in its own
//! transaction. Each instance `LISTEN`s on one dedicated connection; PostgreSQL delivers
//! notifications in commit order, so each connection here receives its pushes in commit
//! order too. Subscriptions are per connection and per instance: nothing here is needed by
//! another instance.

use crate::metrics::Metrics;
use crate::store::Store;
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
    /// The subscribed queries, by table.
    queries: HashMap<String, HashSet<Key>>,
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

#[derive(Debug, Default)]
pub struct Feed {
    registry: Mutex<Registry>,
}

impl Feed {
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
            if let Key::Query(q) = key {
                r.queries
                    .entry(q.table.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
    }

    /// Records the result a connection was given of a query it holds (by a read or a
    /// push), which a later change is compared with.
    pub fn remember_result(&self, id: ConnId, key: &Key, result: &Value) {
        let mut r = self.registry.lock().expect("feed lock");
        if r.holders.get(key).is_some_and(|h| h.contains(&id)) {
            r.results
                .entry(key.clone())
                .or_default()
                .insert(id, result.clone());
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
        {
            let r = self.registry.lock().expect("feed lock");
            for (i, change) in changes.iter().enumerate() {
                r.affected(&change.key, change.value.as_ref(), &mut affected);
                let needs_reread = !open.get(i).copied().unwrap_or(false);
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
        for (user, wanted) in guarded {
            let mut keys: Vec<Key> = wanted.iter().map(|(_, k)| k.clone()).collect();
            keys.sort();
            keys.dedup();
            match store.read(user.as_deref(), &keys).await {
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
        self.rerun(store, affected, &mut pushes, metrics).await;
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
    async fn rerun(
        &self,
        store: &Store,
        affected: HashSet<Key>,
        pushes: &mut HashMap<ConnId, Vec<Entry>>,
        metrics: &Metrics,
    ) {
        for qk in affected {
            let mut by_user: HashMap<Option<String>, Vec<ConnId>> = HashMap::new();
            {
                let r = self.registry.lock().expect("feed lock");
                for id in r.holders.get(&qk).into_iter().flatten() {
                    let user = r.conns.get(id).and_then(|c| c.user.clone());
                    by_user.entry(user).or_default().push(*id);
                }
            }
            for (user, conns) in by_user {
                metrics.query_reruns.inc();
                let entries = match store.read(user.as_deref(), std::slice::from_ref(&qk)).await {
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
        if let Some(results) = self.results.get_mut(key) {
            results.remove(&id);
        }
        if let Some(h) = self.holders.get_mut(key) {
            h.remove(&id);
            if h.is_empty() {
                self.holders.remove(key);
                self.results.remove(key);
                if let Key::Query(q) = key
                    && let Some(qs) = self.queries.get_mut(&q.table)
                {
                    qs.remove(key);
                    if qs.is_empty() {
                        self.queries.remove(&q.table);
                    }
                }
            }
        }
    }

    /// The subscribed queries a change of `key` to `value` may change: those whose last
    /// result holds the row (its old value matched), and those its new value may match.
    /// A count's result holds no keys and the change set lacks the row's old value, so
    /// every change of its table re-runs a count.
    fn affected(&self, key: &Key, value: Option<&Value>, out: &mut HashSet<Key>) {
        let Key::Row { table, pk } = key else {
            return;
        };
        let Some(queries) = self.queries.get(table) else {
            return;
        };
        let pk = serde_json::to_value(pk).unwrap_or(Value::Null);
        for qk in queries {
            let Key::Query(q) = qk else { continue };
            let held = || {
                self.results.get(qk).is_some_and(|by_conn| {
                    by_conn
                        .values()
                        .any(|r| r.as_array().is_some_and(|pks| pks.contains(&pk)))
                })
            };
            if q.count || held() || q.matches(value) != Some(false) {
                out.insert(qk.clone());
            }
        }
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
