//! The change feed: which connection holds which keys, and pushing committed changes to them.
//!
//! Every commit, on any instance, ends with a `NOTIFY mjolnir_commits` in its own
//! transaction. Each instance `LISTEN`s on one dedicated connection; PostgreSQL delivers
//! notifications in commit order, so each connection here receives its pushes in commit
//! order too. Subscriptions are per connection and per instance: nothing here is needed by
//! another instance.

use crate::metrics::Metrics;
use mjolnir_core::protocol::{Entry, ServerMessage, close_code};
use mjolnir_core::{Key, Version};
use serde::Deserialize;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
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
    outboxes: HashMap<ConnId, Outbox>,
    holders: HashMap<Key, HashSet<ConnId>>,
    held: HashMap<ConnId, HashSet<Key>>,
}

#[derive(Debug, Default)]
pub struct Feed {
    registry: Mutex<Registry>,
}

impl Feed {
    pub fn register(&self, outbox: Outbox) -> ConnId {
        let mut r = self.registry.lock().expect("feed lock");
        r.next_id += 1;
        let id = r.next_id;
        r.outboxes.insert(id, outbox);
        id
    }

    pub fn unregister(&self, id: ConnId) {
        let mut r = self.registry.lock().expect("feed lock");
        r.outboxes.remove(&id);
        for key in r.held.remove(&id).unwrap_or_default() {
            if let Some(h) = r.holders.get_mut(&key) {
                h.remove(&id);
                if h.is_empty() {
                    r.holders.remove(&key);
                }
            }
        }
    }

    /// Subscribes before the read runs: a commit after the read's snapshot is then always
    /// pushed, so the client can never miss a change to a key it holds.
    pub fn subscribe(&self, id: ConnId, keys: &[Key]) {
        let mut r = self.registry.lock().expect("feed lock");
        if !r.outboxes.contains_key(&id) {
            return;
        }
        for key in keys {
            r.holders.entry(key.clone()).or_default().insert(id);
            r.held.entry(id).or_default().insert(key.clone());
        }
    }

    pub fn unsubscribe(&self, id: ConnId, keys: &[Key]) {
        let mut r = self.registry.lock().expect("feed lock");
        for key in keys {
            if let Some(h) = r.holders.get_mut(key) {
                h.remove(&id);
                if h.is_empty() {
                    r.holders.remove(key);
                }
            }
            if let Some(h) = r.held.get_mut(&id) {
                h.remove(key);
            }
        }
    }

    /// Number of (connection, key) subscriptions, for metrics and tests.
    pub fn subscriptions(&self) -> usize {
        self.registry
            .lock()
            .expect("feed lock")
            .held
            .values()
            .map(HashSet::len)
            .sum()
    }

    /// Sends each connection the changes of one commit that touch keys it holds. Never
    /// waits: a connection whose queue is full is too slow to follow and is closed.
    pub fn publish(&self, version: Version, changes: &[Entry], metrics: &Metrics) {
        let mut per_conn: HashMap<ConnId, Vec<Entry>> = HashMap::new();
        let r = self.registry.lock().expect("feed lock");
        for change in changes {
            for id in r.holders.get(&change.key).into_iter().flatten() {
                per_conn.entry(*id).or_default().push(change.clone());
            }
        }
        for (id, changes) in per_conn {
            let Some(outbox) = r.outboxes.get(&id) else {
                continue;
            };
            match outbox
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
                    outbox.kill.notify_one();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Closes every connection: used when notifications may have been lost, so clients
    /// reconnect and re-read instead of keeping a cache that no longer follows the feed.
    pub fn close_all(&self, code: u16, reason: &str) {
        let r = self.registry.lock().expect("feed lock");
        for outbox in r.outboxes.values() {
            let _ = outbox
                .queue
                .try_send(Outgoing::Close(code, reason.to_owned()));
        }
    }
}

/// A notification payload: the change set inline, or a pointer into `mjolnir.commit_log`.
#[derive(Deserialize)]
struct Notification {
    version: Version,
    #[serde(default)]
    changes: Option<Vec<Entry>>,
}

/// Follows the commit notifications of every instance and publishes them to this
/// instance's connections, until the process ends.
pub async fn follow(
    pool: PgPool,
    feed: Arc<Feed>,
    metrics: Arc<Metrics>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(CHANNEL).await?;
    loop {
        match listener.try_recv().await? {
            Some(n) => {
                let note: Notification = match serde_json::from_str(n.payload()) {
                    Ok(note) => note,
                    Err(e) => {
                        tracing::error!(error = %e, "unreadable commit notification");
                        continue;
                    }
                };
                let changes = match note.changes {
                    Some(c) => c,
                    None => {
                        let (changes,): (sqlx::types::Json<Notification>,) = sqlx::query_as(
                            "SELECT changes FROM mjolnir.commit_log WHERE version = $1",
                        )
                        .bind(note.version.0 as i64)
                        .fetch_one(&pool)
                        .await?;
                        changes.0.changes.unwrap_or_default()
                    }
                };
                feed.publish(note.version, &changes, &metrics);
            }
            None => {
                // The listening connection was lost and re-established: notifications sent
                // in between are gone, so no connection's cache can be trusted to follow.
                tracing::warn!(
                    "lost the commit notification stream; asking every client to reconnect"
                );
                feed.close_all(close_code::FEED_LOST, "change feed interrupted, reconnect");
            }
        }
    }
}
