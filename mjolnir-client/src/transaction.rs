//! [`Tx`] and [`Client::run`]: a closure run as an optimistic transaction, retried on
//! conflict.

use crate::connection::{Client, CommitOutcome};
use crate::error::ClientError;
use mjolnir_core::{Key, RetryPolicy, Transaction, Version, WriteOp};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// One attempt of a transaction: reads go to the server, writes are buffered until the
/// commit.
///
/// The attempt remembers what it read: asking for a key again answers from that first
/// read (plus the attempt's own writes) without a round trip, because the commit is
/// validated against the first version read anyway. That also keeps each attempt's view
/// of a key stable.
///
/// A retry that goes at once after a conflict starts from what the conflicted attempt
/// knew: the stale keys at the values the conflict reply carried, the others as that
/// attempt read them (the server validated them and found them current). It reads from
/// the server only keys that no earlier attempt read, as the browser runtime does with
/// its cache; whatever changed since is caught by the commit's validation like any other
/// stale read. A retry that first waits out a back-off reads everything again: this client
/// keeps no pushed cache, so what it knew would be as old as the wait.
#[derive(Debug)]
pub struct Tx {
    client: Client,
    txn: Transaction,
    /// The committed value of each key read so far.
    seen: HashMap<Key, Option<Value>>,
    /// What earlier attempts of this run learned: each key's version and value.
    known: HashMap<Key, (Version, Option<Value>)>,
}

impl Tx {
    fn new(client: Client, known: HashMap<Key, (Version, Option<Value>)>) -> Tx {
        Tx {
            client,
            txn: Transaction::new(),
            seen: HashMap::new(),
            known,
        }
    }

    /// What this attempt sees at `key`: the committed value, with its own writes applied.
    pub async fn get(&mut self, key: Key) -> Result<Option<Value>, ClientError> {
        let mut values = self.get_many(vec![key]).await?;
        Ok(values.pop().flatten())
    }

    /// What this attempt sees at each of `keys`, in order, in at most one round trip.
    pub async fn get_many(&mut self, keys: Vec<Key>) -> Result<Vec<Option<Value>>, ClientError> {
        for k in &keys {
            if !self.seen.contains_key(k)
                && let Some((version, value)) = self.known.remove(k)
            {
                self.txn.reads.record(k.clone(), version);
                self.seen.insert(k.clone(), value);
            }
        }
        let mut asked = HashSet::new();
        let missing: Vec<Key> = keys
            .iter()
            .filter(|k| !self.seen.contains_key(*k) && asked.insert(*k))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let entries = self.client.read(missing.clone()).await?;
            if entries.len() != missing.len()
                || entries.iter().zip(&missing).any(|(e, k)| e.key != *k)
            {
                return Err(ClientError::Protocol(format!(
                    "asked for {} keys, got {} entries or others in another order",
                    missing.len(),
                    entries.len()
                )));
            }
            for entry in entries {
                self.txn.reads.record(entry.key.clone(), entry.version);
                self.seen.insert(entry.key, entry.value);
            }
        }
        Ok(keys
            .iter()
            .map(|k| self.txn.view(k, self.seen.get(k).and_then(Option::as_ref)))
            .collect())
    }

    pub fn insert(&mut self, key: Key, row: Map<String, Value>) {
        self.txn.write(key, WriteOp::Insert { row });
    }

    pub fn update(&mut self, key: Key, set: Map<String, Value>) {
        self.txn.write(key, WriteOp::Update { set });
    }

    pub fn put(&mut self, key: Key, value: Value) {
        self.txn.write(key, WriteOp::Put { value });
    }

    pub fn delete(&mut self, key: Key) {
        self.txn.write(key, WriteOp::Delete);
    }

    /// The reads and writes so far.
    pub fn transaction(&self) -> &Transaction {
        &self.txn
    }
}

/// How a transaction's closure stops early.
#[derive(Debug, thiserror::Error)]
pub enum TxAbort {
    /// The closure decided not to go on; not retried, returned as
    /// [`ClientError::Aborted`].
    #[error("aborted: {0}")]
    User(String),
    /// A [`Tx`] call failed; `?` inside the closure makes this.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A transaction that finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed<T> {
    /// What the closure returned in the attempt that committed.
    pub value: T,
    /// The commit version; `None` for a read-only transaction, which is never sent.
    pub version: Option<Version>,
    /// Attempts made, the committed one included.
    pub attempts: u32,
}

impl Client {
    /// Runs `f` as a transaction: each attempt gets a fresh [`Tx`], and its writes are
    /// committed with the versions it read. A conflict starts a new attempt after the
    /// delay `policy` says; one that goes at once sees the stale keys as the conflict reply
    /// gave them and reads from the server only keys no earlier attempt read (see [`Tx`]).
    /// Anything else ends the run.
    ///
    /// `f` may run several times, so it should have no effect beyond the `Tx`. A read-only
    /// attempt is validated like any other (sent as a commit with no writes), as the
    /// browser runtime's are: if it read in several round trips, only the server can tell
    /// whether what it saw was one state. One that read nothing is not sent.
    ///
    /// In a spawned task, make `f` an `async move` closure that owns what it captures (clone
    /// inside it what it hands on). An async closure that borrows the task's locals makes
    /// the task's future fail the `Send` check ("implementation of `Send` is not general
    /// enough", a known rustc limitation with async closures), and no signature of `run`
    /// can avoid that.
    pub async fn run<T>(
        &self,
        policy: &RetryPolicy,
        mut f: impl AsyncFnMut(&mut Tx) -> Result<T, TxAbort>,
    ) -> Result<Committed<T>, ClientError> {
        let mut attempt = 1;
        let mut known = HashMap::new();
        loop {
            let mut tx = Tx::new(self.clone(), std::mem::take(&mut known));
            let value = match f(&mut tx).await {
                Ok(value) => value,
                Err(TxAbort::User(why)) => return Err(ClientError::Aborted(why)),
                Err(TxAbort::Client(err)) => return Err(err),
            };
            if tx.txn.reads.is_empty() && tx.txn.writes.is_empty() {
                return Ok(Committed {
                    value,
                    version: None,
                    attempts: attempt,
                });
            }
            let Tx {
                txn: Transaction { reads, writes },
                mut seen,
                ..
            } = tx;
            // What this attempt read, for the next one if this one conflicts.
            let mut learned: HashMap<Key, (Version, Option<Value>)> = reads
                .iter()
                .map(|(k, v)| (k.clone(), (v, seen.remove(k).flatten())))
                .collect();
            match self.commit_new(reads, writes).await?.1 {
                CommitOutcome::Committed(version) => {
                    return Ok(Committed {
                        value,
                        version: Some(version),
                        attempts: attempt,
                    });
                }
                CommitOutcome::Rejected(error) => return Err(ClientError::Rejected(error)),
                CommitOutcome::Conflict(stale) => {
                    let Some(first) = stale.first().map(|e| e.key.clone()) else {
                        return Err(ClientError::Protocol(
                            "a conflict that names no stale key".to_owned(),
                        ));
                    };
                    // The same decision as the browser runtime's: the core's policy.
                    let Some(delay) = policy.delay(attempt, rand::random()) else {
                        return Err(ClientError::TooManyConflicts {
                            attempts: attempt,
                            key: first,
                        });
                    };
                    if delay.is_zero() {
                        for e in stale {
                            learned.insert(e.key, (e.version, e.value));
                        }
                        known = learned;
                    } else {
                        tokio::time::sleep(delay).await;
                    }
                    attempt += 1;
                }
            }
        }
    }
}
