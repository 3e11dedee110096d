//! One call of `mjolnir.commit_batch`: a batch (or one transaction) packed into its
//! parameters (`arrays.rs`), run on a connection, its rows decoded (`decode.rs`); and a
//! transaction committed on its own, re-run after a transient error or on another
//! connection after the lane's broke.
//!
//! A lane keeps its connection from one batch to the next ([`Via::Lane`]). Taking one
//! from the pool for every batch made the lane wait for the pool's health check and land
//! on whichever backend was free, and the lane is what sets the commit rate. A held
//! connection that fails is dropped, and what it was committing is committed again on a
//! pooled, tested one: that is always safe, because a transaction that did commit is found
//! by its txn id and answered from the dedup record.

use super::arrays::{Arrays, Member};
use super::decode::{Row, decode};
use super::outcome::{Decided, Decision, Outcome};
use super::plan::Plan;
use super::recent::Recent;
use super::sqlstate::{ALREADY_COMMITTED, classify, connection_lost, is_transient_code, sqlstate};
use crate::db;
use crate::error::{Result, ServerError};
use mjolnir_core::{TxnId, Version};
use prometheus_client::metrics::counter::Counter;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Which connection a call of `mjolnir.commit_batch` runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// One the lanes keep between batches (or a fresh one from the pool, then kept).
    Lane,
    /// Any from the pool: for calls outside the lanes, which may run concurrently.
    Pool,
}

/// Makes the calls of `mjolnir.commit_batch`. One per instance.
#[derive(Debug)]
pub(super) struct Caller {
    pool: PgPool,
    /// The schema of the app's tables (`mjolnir.commit_batch` asks which are open).
    schema: String,
    /// How often a transaction is re-run after a deadlock or serialization failure.
    retries: u32,
    /// Transactions decided by the set-based path of `mjolnir.commit_batch`.
    set_based: Counter,
    /// Told of every change committed here (`recent.rs`).
    recent: Arc<Recent>,
    /// The connections lanes commit on between batches, at most one per lane.
    held: Mutex<Vec<PoolConnection<Postgres>>>,
    /// The most prepared statements a held connection may keep (`db::holds_too_many`).
    max_prepared: usize,
    /// Calls on held connections, which count their prepared statements at one call in
    /// `db::COUNT_EVERY`: they are not given back to the pool, which counts the others'.
    held_calls: AtomicU64,
}

impl Caller {
    pub(super) fn new(
        pool: PgPool,
        schema: &str,
        retries: u32,
        max_prepared: usize,
        set_based: Counter,
        recent: Arc<Recent>,
    ) -> Caller {
        Caller {
            pool,
            schema: schema.to_owned(),
            retries,
            set_based,
            recent,
            held: Mutex::new(Vec::new()),
            max_prepared,
            held_calls: AtomicU64::new(0),
        }
    }

    /// Commits one transaction as a batch of its own, re-running it after a deadlock or
    /// serialization failure, or on a pooled connection after the lane's failed.
    pub(super) async fn commit_alone(
        &self,
        user: Option<&str>,
        txn: &TxnId,
        plan: &Plan,
        mut via: Via,
    ) -> Result<Decision> {
        let member = [Member { user, txn, plan }];
        let mut attempt = 0;
        loop {
            let (code, message) = match self.call(&member, via).await {
                Ok(mut decided) => match decided.pop().expect("one outcome per member") {
                    Decided::Outcome(o) => return Ok(o),
                    Decided::Alone(Some(error)) => error,
                    Decided::Alone(None) => unreachable!("only a failed batch leaves no error"),
                },
                // The held connection broke: the commit may or may not have landed, and a
                // pooled connection finds out.
                Err(ServerError::Db(e)) if via == Via::Lane && connection_lost(&e) => {
                    tracing::warn!(%txn, error = %e, "the lane's connection failed, committing on another");
                    via = Via::Pool;
                    continue;
                }
                Err(ServerError::Db(e)) => match sqlstate(&e) {
                    Some(code) if is_transient_code(&code) => (code, e.to_string()),
                    // An error at the statement's end is its COMMIT refusing: a deferred
                    // constraint of the app.
                    _ => match classify(&e) {
                        Some(reply) => return Ok(Decision::Final(Outcome::Rejected(reply))),
                        None => return Err(ServerError::Db(e)),
                    },
                },
                Err(e) => return Err(e),
            };
            if is_transient_code(&code) && attempt < self.retries {
                attempt += 1;
                tracing::debug!(%txn, attempt, %code, %message, "transient database error, re-running commit");
                continue;
            }
            if code == ALREADY_COMMITTED
                && let Some(version) = self.committed_version(user, txn).await?
            {
                return Ok(Decision::Final(Outcome::Duplicate { version }));
            }
            return Err(ServerError::Database { code, message });
        }
    }

    /// The version `user`'s transaction `txn` committed at, if it did. A transaction id is
    /// `user`'s own: another user's record of the same id says nothing of it.
    async fn committed_version(&self, user: Option<&str>, txn: &TxnId) -> Result<Option<Version>> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM mjolnir.txns WHERE app_user = $1 AND txn = $2")
                .bind(user.unwrap_or(""))
                .bind(&txn.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(v,)| Version(v as u64)))
    }

    /// Validates and applies `batch` in one call of `mjolnir.commit_batch`, one statement
    /// and so one PostgreSQL transaction, on a connection `via`. `Err` means nothing of the
    /// batch is known to be committed.
    pub(super) async fn call(&self, batch: &[Member<'_>], via: Via) -> Result<Vec<Decided>> {
        let (hashes, exclusive, a) = Arrays::pack(batch);
        let query = sqlx::query_as(
            "SELECT * FROM mjolnir.commit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)",
        )
        .bind(&self.schema)
        .bind(&hashes)
        .bind(&exclusive)
        .bind(&a.txn_ids)
        .bind(&a.users)
        .bind(&a.read_ends)
        .bind(&a.write_ends)
        .bind(&a.read_owners)
        .bind(&a.write_owners)
        .bind(&a.read_spaces)
        .bind(&a.read_pks)
        .bind(&a.read_versions)
        .bind(&a.read_afters)
        .bind(&a.read_values)
        .bind(&a.read_sqls)
        .bind(&a.write_spaces)
        .bind(&a.write_pks)
        .bind(&a.write_keys)
        .bind(&a.write_args)
        .bind(&a.statements)
        .bind(&a.write_sqls)
        .bind(&a.write_sets)
        .bind(&a.write_checks)
        .bind(&a.query_owners)
        .bind(&a.query_sqls)
        .bind(&a.query_args)
        .bind(&a.query_seen)
        .bind(&a.lock_tables)
        .bind(&a.lock_modes);
        let rows: Vec<Row> = match via {
            Via::Pool => query.fetch_all(&self.pool).await?,
            Via::Lane => {
                let held = self.held.lock().expect("held connections").pop();
                let mut conn = match held {
                    Some(conn) => conn,
                    None => self.pool.acquire().await?,
                };
                let rows = query.fetch_all(&mut *conn).await?;
                // Not at the first call: a lane that commits once never pays for counting.
                let calls = self.held_calls.fetch_add(1, Ordering::Relaxed) + 1;
                let due = calls.is_multiple_of(db::COUNT_EVERY);
                if due && db::holds_too_many(&mut conn, self.max_prepared).await? {
                    // Closed: its prepared statements go with its backend.
                    drop(conn.detach());
                } else {
                    // Kept only after a call that worked: one that failed may be broken.
                    self.held.lock().expect("held connections").push(conn);
                }
                rows
            }
        };
        let decoded = decode(batch, rows);
        if decoded.set_based {
            self.set_based.inc_by(decoded.decided.len() as u64);
        }
        self.recent.record(decoded.changes);
        Ok(decoded.decided)
    }
}
