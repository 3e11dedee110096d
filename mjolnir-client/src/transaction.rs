//! [`Tx`] and [`Client::run`]: a closure run as a transaction of the client engine.
//!
//! The engine ([`mjolnir_core::engine::Engine`]) decides; this module runs the closure when
//! the engine says so and reports how each attempt ended. The closure is an async job
//! (the browser's `mjolnir.atomic(async tx => …)`): a read the cache cannot answer waits
//! for a fetch instead of stopping the closure.

use crate::connection::Client;
use crate::driver::{Driver, JobEvent};
use crate::error::ClientError;
use mjolnir_core::attempt::Read;
use mjolnir_core::engine::{Ended, Failure, JobId, MAX_MISS_ROUNDS};
use mjolnir_core::{Attempt, Key, ReadSet, RetryPolicy, Version, WriteOp, WriteSet};
use serde_json::{Map, Value};

/// One attempt of a transaction: it reads the connection's cache (with the writes of its
/// commits still in flight on top), fetching what the cache lacks, and buffers its writes
/// until the commit.
///
/// The attempt sees one state of each key: a key keeps the version it was first read at,
/// even if a push or a fetch brings a newer one meanwhile (the commit then conflicts and
/// the engine runs the closure again). Reads of the cache may come from different moments,
/// which is why even a read-only attempt is validated by the server.
#[derive(Debug)]
pub struct Tx {
    client: Client,
    attempt: Attempt,
}

impl Tx {
    /// What this attempt sees at `key`: the committed value, with its own writes applied.
    pub async fn get(&mut self, key: Key) -> Result<Option<Value>, ClientError> {
        let mut values = self.get_many(vec![key]).await?;
        Ok(values.pop().flatten())
    }

    /// What this attempt sees at each of `keys`, in order: what the cache lacks is fetched
    /// in one round trip.
    pub async fn get_many(&mut self, keys: Vec<Key>) -> Result<Vec<Option<Value>>, ClientError> {
        let mut fetched = false;
        loop {
            let mut values = Vec::with_capacity(keys.len());
            let mut missed: Vec<Key> = Vec::new();
            for key in &keys {
                match self.attempt.read(key.clone()) {
                    Read::Value(v) => values.push(v),
                    Read::Miss if !missed.contains(key) => missed.push(key.clone()),
                    Read::Miss => {}
                }
            }
            if missed.is_empty() {
                return Ok(values);
            }
            if fetched {
                self.forget_misses();
                return Err(ClientError::Protocol(format!(
                    "the server's reply to a read lacked {} of its keys",
                    missed.len()
                )));
            }
            let reply = self.client.inner.driver.fetch(missed)?.await;
            match reply {
                // The snapshot taken as the reply landed holds what was fetched; the keys
                // already read keep the versions they were read at.
                Ok(Ok(snapshot)) => self.attempt.resnapshot(snapshot),
                Ok(Err(error)) => {
                    self.forget_misses();
                    return Err(ClientError::Server(error));
                }
                Err(_) => return Err(ClientError::Disconnected),
            }
            fetched = true;
        }
    }

    /// Forgets the keys this attempt could not read, so that a closure that fails because
    /// of them ends the run with its error, instead of the engine fetching them again.
    fn forget_misses(&mut self) {
        let same = self.attempt.snapshot().clone();
        self.attempt.resnapshot(same);
    }

    pub fn insert(&mut self, key: Key, row: Map<String, Value>) {
        self.attempt.insert(key, row);
    }

    pub fn update(&mut self, key: Key, set: Map<String, Value>) {
        self.attempt.update(key, set);
    }

    pub fn put(&mut self, key: Key, value: Value) {
        self.attempt.put(key, value);
    }

    pub fn delete(&mut self, key: Key) {
        self.attempt.delete(key);
    }

    /// What this attempt has read from the server so far, at the versions it saw.
    pub fn reads(&self) -> &ReadSet {
        self.attempt.reads()
    }

    /// The writes this attempt has buffered.
    pub fn writes(&self) -> &WriteSet {
        self.attempt.writes()
    }

    /// Buffers `op`, merged with this attempt's earlier writes of `key`.
    pub fn write(&mut self, key: Key, op: WriteOp) {
        self.attempt.write(key, op);
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
    /// The commit version; `None` for a transaction that read and wrote nothing of the
    /// server's, which is never sent.
    pub version: Option<Version>,
    /// Attempts made, the committed one included.
    pub attempts: u32,
}

/// Ends the job if its `run` future is dropped in the middle of an attempt.
struct OpenAttempt<'a> {
    driver: &'a Driver,
    job: JobId,
    open: bool,
}

impl Drop for OpenAttempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.driver.abandon(self.job);
        }
    }
}

impl Client {
    /// Runs `f` as a transaction of the connection's client engine, retried as `policy`
    /// says. The engine decides, exactly as for a page's `mjolnir.atomic(async tx => …)`:
    ///
    /// - Each attempt gets a fresh [`Tx`] on the engine's cache: keys it holds are read
    ///   without a round trip, the others are fetched (and then held, and kept current by
    ///   pushes, until evicted; see [`crate::ClientOptions::cache_capacity`]).
    /// - When `f` returns, the attempt's writes are committed with the versions it read. A
    ///   read-only attempt is validated the same way (a commit with no writes); one that
    ///   read and wrote nothing is not sent, and its `version` is `None`.
    /// - A conflict refreshes the cache with the reply's values and runs `f` again, at once
    ///   the first time, then after `policy`'s back-off; past `policy.max_attempts` the run
    ///   fails with [`ClientError::TooManyConflicts`]. If `f` fails while what it read is
    ///   already stale, that is a conflict too, not its error.
    /// - Anything else ends the run: [`ClientError::Rejected`], the closure's own error
    ///   ([`TxAbort::User`] as [`ClientError::Aborted`]), or [`ClientError::Disconnected`]
    ///   when the connection ends (this client does not reconnect).
    ///
    /// **Concurrent runs on one `Client` are pipelined.** A run starts at once, even while
    /// earlier runs' commits are in flight, and sees their writes as if committed; its
    /// commit names the connection's previous one in flight (`follows`), and the server
    /// decides them in order. So if one fails (a conflict, a rejection), every later one in
    /// flight fails with it and runs again: `f` may run more often than its own conflicts
    /// explain (and `attempts` counts those runs too). Which of the runs that run again
    /// goes first is up to the tasks' scheduling; each sees the writes of those whose
    /// attempt ended before its own began. Runs one after another on a connection (or on
    /// connections of their own) are not chained.
    ///
    /// `f` may run several times, so it should have no effect beyond the `Tx`.
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
        let driver = &*self.inner.driver;
        let (job, mut events) = driver.call(*policy)?;
        let mut open = OpenAttempt {
            driver,
            job,
            open: false,
        };
        let mut attempts = 0;
        let mut last = None;
        loop {
            let Some(event) = events.recv().await else {
                return Err(ClientError::Disconnected);
            };
            match event {
                JobEvent::Run => {
                    attempts += 1;
                    let attempt = driver.begin(job)?;
                    open.open = true;
                    let mut tx = Tx {
                        client: self.clone(),
                        attempt,
                    };
                    let outcome = f(&mut tx).await;
                    let ended = match outcome {
                        Ok(_) => Ended::Returned,
                        Err(_) => Ended::Threw,
                    };
                    open.open = false;
                    driver.finish(job, tx.attempt, ended);
                    last = Some(outcome);
                }
                JobEvent::Settle(result) => return settled(result, last, attempts),
            }
        }
    }
}

/// The result of a run the engine settled with `result`; `last` is what the closure gave
/// in the last attempt.
fn settled<T>(
    result: Result<Option<Version>, Failure>,
    last: Option<Result<T, TxAbort>>,
    attempts: u32,
) -> Result<Committed<T>, ClientError> {
    let last = last
        .ok_or_else(|| ClientError::Protocol("the engine settled a run that never ran".to_owned()));
    match result {
        Ok(version) => match last? {
            Ok(value) => Ok(Committed {
                value,
                version,
                attempts,
            }),
            Err(_) => Err(ClientError::Protocol(
                "the engine committed an attempt that failed".to_owned(),
            )),
        },
        Err(Failure::Threw) => match last? {
            Err(TxAbort::User(why)) => Err(ClientError::Aborted(why)),
            Err(TxAbort::Client(err)) => Err(err),
            Ok(_) => Err(ClientError::Protocol(
                "the engine failed an attempt that returned".to_owned(),
            )),
        },
        Err(Failure::Rejected(error)) => Err(ClientError::Rejected(error)),
        Err(Failure::FetchRefused(error)) => Err(ClientError::Server(error)),
        Err(Failure::Conflicts { key, attempts }) => {
            Err(ClientError::TooManyConflicts { attempts, key })
        }
        Err(Failure::TooManyMisses) => Err(ClientError::Protocol(format!(
            "the transaction kept reading keys that were not loaded ({MAX_MISS_ROUNDS} rounds)"
        ))),
    }
}
