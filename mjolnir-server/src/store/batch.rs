//! Group commit: the client transactions that arrive while a batch is being committed are
//! validated and applied together, in order, in one PostgreSQL transaction, so they share
//! its round trips and its fsync.
//!
//! The batch is one PostgreSQL transaction:
//! 1. `mjolnir.begin_batch`: lock the union of the batch's keys (one ascending sweep),
//!    look every txn id up, read the current versions of every key read, draw one commit
//!    version per transaction;
//! 2. for each transaction, in batch order: validate its reads against those versions and
//!    the writes of the batch's earlier transactions; on a conflict, read the stale keys'
//!    values (which include the earlier transactions' writes) in a savepoint rolled back;
//!    else, in a savepoint, as `mjolnir_app` with its user: its writes,
//!    `mjolnir.finish_commit`, `SET CONSTRAINTS ALL IMMEDIATE` (its deferred constraints
//!    are checked now, not at the batch's COMMIT), then deferred again. A refused write
//!    rolls back to the savepoint: that transaction alone is rejected;
//! 3. `COMMIT`: **the commit point of every transaction of the batch**. Outcomes are
//!    answered only after it.
//!
//! If anything fails outside one transaction's savepoint (the batch's COMMIT included),
//! each transaction of the batch is committed again on its own with
//! [`Committer::commit_alone`]: that is always safe, because a transaction that did commit
//! is found by its txn id and answered from the dedup record.

use super::commit::{
    ALREADY_COMMITTED, Outcome, Plan, classify, space_pk_arrays, sqlstate, write_and_finish,
};
use super::read::{act_as, read_entries};
use super::{Resolved, locks};
use crate::error::{Result, ServerError};
use crate::knobs::Knobs;
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::{ErrorKind, Key, ReadSet, TxnId, Version, find_stale};
use prometheus_client::metrics::histogram::Histogram;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Commits transactions, alone or in batches. One per instance.
#[derive(Debug)]
pub(crate) struct Committer {
    pub(super) pool: PgPool,
    pub(super) knobs: Knobs,
    queue: Mutex<Queue>,
    batch_sizes: Histogram,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// Lanes running: each takes batches from `waiting` until it is empty.
    lanes: usize,
}

#[derive(Debug)]
struct Pending {
    user: Option<String>,
    txn: TxnId,
    plan: Plan,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// What a transaction of a batch came to, before the batch's COMMIT.
enum Decided {
    Outcome(Outcome),
    /// Failed in a way the batch does not classify (a deadlock, a concurrent commit of its
    /// txn id, …): nothing of it was applied; it is committed again on its own afterwards.
    Alone,
}

const SAVEPOINT: &str = "SAVEPOINT mjolnir_txn";
const UNDO: &str = "ROLLBACK TO SAVEPOINT mjolnir_txn; RELEASE SAVEPOINT mjolnir_txn";

impl Committer {
    pub(super) fn new(pool: PgPool, knobs: Knobs, batch_sizes: Histogram) -> Committer {
        Committer {
            pool,
            knobs,
            queue: Mutex::default(),
            batch_sizes,
        }
    }

    /// Queues a transaction for the next batch and waits for its outcome. Starts a lane if
    /// fewer than `group_commit_lanes` run.
    pub(super) async fn submit(
        self: &Arc<Self>,
        user: Option<String>,
        txn: TxnId,
        plan: Plan,
    ) -> Result<Outcome> {
        let (reply, outcome) = oneshot::channel();
        let start_lane = {
            let mut q = self.queue.lock().expect("commit queue");
            q.waiting.push_back(Pending {
                user,
                txn,
                plan,
                reply,
            });
            let start = q.lanes < self.knobs.group_commit_lanes.max(1);
            if start {
                q.lanes += 1;
            }
            start
        };
        if start_lane {
            tokio::spawn(self.clone().lane());
        }
        outcome.await.unwrap_or_else(|_| {
            Err(ServerError::Reply(ErrorReply::new(
                ErrorKind::Internal,
                "the committer stopped before deciding this commit",
            )))
        })
    }

    /// Takes batches (whatever is queued, up to `group_commit`) until the queue is empty.
    async fn lane(self: Arc<Self>) {
        let _guard = LaneGuard(&self);
        loop {
            let batch: Vec<Pending> = {
                let mut q = self.queue.lock().expect("commit queue");
                if q.waiting.is_empty() {
                    q.lanes -= 1;
                    return;
                }
                let n = q.waiting.len().min(self.knobs.group_commit.max(1));
                q.waiting.drain(..n).collect()
            };
            self.batch_sizes.observe(batch.len() as f64);
            if batch.len() == 1 {
                let p = batch.into_iter().next().expect("one");
                let outcome = self.commit_alone(p.user.as_deref(), &p.txn, &p.plan).await;
                let _ = p.reply.send(outcome);
                continue;
            }
            self.run_batch(batch).await;
        }
    }

    async fn run_batch(self: &Arc<Self>, batch: Vec<Pending>) {
        let decided = match self.try_batch(&batch).await {
            Ok(decided) => decided,
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "batch failed, committing its transactions one by one");
                batch.iter().map(|_| Decided::Alone).collect()
            }
        };
        let mut alone = Vec::new();
        for (p, d) in batch.into_iter().zip(decided) {
            match d {
                Decided::Outcome(o) => {
                    let _ = p.reply.send(Ok(o));
                }
                Decided::Alone => alone.push(p),
            }
        }
        // Concurrently, so one slow transaction does not hold the others' replies.
        let runs = alone.into_iter().map(|p| {
            let this = self.clone();
            tokio::spawn(async move {
                let outcome = this.commit_alone(p.user.as_deref(), &p.txn, &p.plan).await;
                let _ = p.reply.send(outcome);
            })
        });
        for run in runs.collect::<Vec<_>>() {
            let _ = run.await;
        }
    }

    /// Validates and applies the batch in one PostgreSQL transaction. `Err` means nothing
    /// of the batch is known to be committed.
    async fn try_batch(&self, batch: &[Pending]) -> Result<Vec<Decided>> {
        let mut tx = self.pool.begin().await?;
        let all_reads: Vec<Resolved> = batch
            .iter()
            .flat_map(|p| p.plan.reads.iter().map(|(r, _)| r.clone()))
            .collect();
        let all_writes: Vec<Resolved> = batch
            .iter()
            .flat_map(|p| p.plan.writes.iter().map(|(r, _)| r.clone()))
            .collect();
        let (hashes, exclusive) = locks::plan(&all_reads, &all_writes);
        // Each read key once.
        let mut read_keys: Vec<Resolved> = Vec::new();
        let mut seen: HashMap<&Key, ()> = HashMap::new();
        for r in &all_reads {
            if seen.insert(&r.key, ()).is_none() {
                read_keys.push(r.clone());
            }
        }
        let (spaces, pks) = space_pk_arrays(&read_keys);
        let txn_ids: Vec<&str> = batch.iter().map(|p| p.txn.0.as_str()).collect();
        let (done, current, fresh, deferred): (
            Vec<Option<i64>>,
            Vec<i64>,
            Vec<i64>,
            Option<String>,
        ) = sqlx::query_as("SELECT * FROM mjolnir.begin_batch($1, $2, $3, $4, $5, $6)")
            .bind(&hashes)
            .bind(&exclusive)
            .bind(&txn_ids)
            .bind(&spaces)
            .bind(&pks)
            .bind(batch.len() as i32)
            .fetch_one(&mut *tx)
            .await?;
        // The versions as the batch's next transaction sees them: the database's, then
        // each earlier transaction's writes.
        let mut versions: HashMap<Key, Version> = read_keys
            .iter()
            .zip(&current)
            .map(|(r, v)| (r.key.clone(), Version(*v as u64)))
            .collect();
        let mut committed: HashMap<&str, Version> = HashMap::new();
        // After its writes, a transaction checks its deferred constraints, then defers them
        // again for the next one.
        let check_constraints = match &deferred {
            Some(list) => format!(
                "SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS {list} DEFERRED; RELEASE SAVEPOINT mjolnir_txn"
            ),
            None => "SET CONSTRAINTS ALL IMMEDIATE; RELEASE SAVEPOINT mjolnir_txn".to_owned(),
        };

        let mut decided = Vec::with_capacity(batch.len());
        for (i, p) in batch.iter().enumerate() {
            if let Some(v) = done[i] {
                decided.push(Decided::Outcome(Outcome::Duplicate {
                    version: Version(v as u64),
                }));
                continue;
            }
            if let Some(&version) = committed.get(p.txn.0.as_str()) {
                decided.push(Decided::Outcome(Outcome::Duplicate { version }));
                continue;
            }
            let version = Version(fresh[i] as u64);
            let read_set: ReadSet = p
                .plan
                .reads
                .iter()
                .map(|(r, v)| (r.key.clone(), *v))
                .collect();
            let stale = find_stale(&read_set, |k| versions[k]);
            sqlx::raw_sql(SAVEPOINT).execute(&mut *tx).await?;
            let result = if stale.is_empty() {
                apply_one(&mut tx, p, version, &check_constraints).await
            } else {
                conflict(&mut tx, p, &stale).await
            };
            match result {
                Ok(Ok(Outcome::Committed { version, changes })) => {
                    for (r, _) in &p.plan.writes {
                        versions.insert(r.key.clone(), version);
                    }
                    committed.insert(&p.txn.0, version);
                    decided.push(Decided::Outcome(Outcome::Committed { version, changes }));
                }
                Ok(Ok(outcome)) => decided.push(Decided::Outcome(outcome)),
                Ok(Err(reply)) => {
                    sqlx::raw_sql(UNDO).execute(&mut *tx).await?;
                    decided.push(Decided::Outcome(Outcome::Rejected(reply)));
                }
                Err(ServerError::Db(e)) => {
                    // The savepoint undoes this transaction alone; if even that fails,
                    // the connection is gone and the whole batch with it.
                    sqlx::raw_sql(UNDO).execute(&mut *tx).await?;
                    match classify(&e) {
                        Some(reply) if sqlstate(&e).as_deref() != Some(ALREADY_COMMITTED) => {
                            decided.push(Decided::Outcome(Outcome::Rejected(reply)))
                        }
                        _ => {
                            tracing::debug!(txn = %p.txn, error = %e, "committing alone after a database error in its batch");
                            decided.push(Decided::Alone);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        tx.commit().await?; // The commit point of the whole batch.
        Ok(decided)
    }
}

/// Applies one transaction of a batch inside the open savepoint, and releases it.
/// `Ok(Err(reply))`: a refusal; the caller rolls back to the savepoint.
async fn apply_one(
    conn: &mut PgConnection,
    p: &Pending,
    version: Version,
    check_constraints: &str,
) -> Result<std::result::Result<Outcome, ErrorReply>> {
    let changes =
        match write_and_finish(conn, p.user.as_deref(), &p.txn, &p.plan.writes, version).await? {
            Ok(changes) => changes,
            Err(reply) => return Ok(Err(reply)),
        };
    // Built from constraint names PostgreSQL quoted (format('%I.%I')).
    sqlx::raw_sql(AssertSqlSafe(check_constraints.to_owned()))
        .execute(&mut *conn)
        .await?;
    Ok(Ok(Outcome::Committed { version, changes }))
}

/// A stale transaction of a batch: the stale keys' current values as its user sees them,
/// including the writes of the batch's earlier transactions, then the savepoint undone.
async fn conflict(
    conn: &mut PgConnection,
    p: &Pending,
    stale: &[mjolnir_core::Stale],
) -> Result<std::result::Result<Outcome, ErrorReply>> {
    let stale_keys: Vec<Resolved> = p
        .plan
        .reads
        .iter()
        .filter(|(r, _)| stale.iter().any(|s| s.key == r.key))
        .map(|(r, _)| r.clone())
        .collect();
    act_as(conn, p.user.as_deref()).await?;
    let stale = read_entries(conn, &stale_keys).await?;
    sqlx::raw_sql(UNDO).execute(&mut *conn).await?;
    Ok(Ok(Outcome::Conflict { stale }))
}

/// Keeps the lane count right if a lane panics: the next submission starts a new lane.
struct LaneGuard<'a>(&'a Arc<Committer>);

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(mut q) = self.0.queue.lock()
        {
            q.lanes = q.lanes.saturating_sub(1);
        }
    }
}
