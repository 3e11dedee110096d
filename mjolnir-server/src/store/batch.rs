//! Group commit: the client transactions that arrive while a batch is being committed are
//! validated and applied together, in order, in one call of `mjolnir.commit_batch` (one
//! statement, one PostgreSQL transaction), so they share its round trip and its fsync.
//!
//! Inside the call (migration 0004), for each transaction in batch order: validate its
//! reads against the database, which by then holds the versions of the batch's earlier
//! transactions; on a conflict, apply nothing; else, in a PL/pgSQL exception block (a
//! subtransaction), as `mjolnir_app` with its user: its writes, then its versions, txn id
//! and change set recorded, and its deferred constraints checked then and there. A refused write undoes that
//! transaction alone. The end of the call is **the commit point of every transaction of
//! the batch**; outcomes are answered only after it. A conflict's fresh values are read
//! after it too, as the committing user, by the reader (`read.rs`), outside the lane.
//!
//! Before a batch goes to the database, a first send that read a key at an older version
//! than this instance knows was committed since is answered as a conflict at once (`recent.rs`):
//! under contention that is most of what queues behind a batch.
//!
//! If the call fails as a whole, each transaction of the batch is committed again on its
//! own with [`Committer::commit_alone`]: that is always safe, because a transaction that
//! did commit is found by its txn id and answered from the dedup record.
//!
//! A lane keeps its connection from one batch to the next ([`Via::Lane`]). Taking one
//! from the pool for every batch made the lane wait for the pool's health check and land
//! on whichever backend was free, and the lane is what sets the commit rate. A held
//! connection that fails is dropped, and what it was committing is committed again on a
//! pooled, tested one, by the same rule.

use super::commit::{
    ALREADY_COMMITTED, HIDDEN_ROW, MISSING_ROW, Outcome, Plan, classify, classify_code, dep_query,
    is_transient_code, missing_row, sqlstate, statement,
};
use super::lanes::{self, Lanes, Runner};
use super::read::Reader;
use super::recent::Recent;
use super::turn::{Stage, Turn};
use super::{Resolved, locks};
use crate::error::{Result, ServerError};
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use mjolnir_core::protocol::{Entry, ErrorReply};
use mjolnir_core::{ErrorKind, TxnId, Version, WriteOp};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::oneshot;

/// Commits transactions, alone or in batches. One per instance.
#[derive(Debug)]
pub(crate) struct Committer {
    pool: PgPool,
    /// The schema of the app's tables (`mjolnir.commit_batch` asks which are open).
    schema: String,
    knobs: Knobs,
    /// Reads the values a conflict carries.
    reader: Arc<Reader>,
    lanes: Lanes<Pending>,
    /// Transactions decided by the set-based path of `mjolnir.commit_batch`.
    set_based: Counter,
    /// What was committed lately, to answer certain conflicts without the database.
    recent: Recent,
    /// Conflicts answered from `recent`.
    known_stale: Counter,
    /// The connections lanes commit on between batches, at most one per lane.
    held: std::sync::Mutex<Vec<PoolConnection<Postgres>>>,
}

/// Which connection a call of `mjolnir.commit_batch` runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Via {
    /// One the lanes keep between batches (or a fresh one from the pool, then kept).
    Lane,
    /// Any from the pool: for calls outside the lanes, which may run concurrently.
    Pool,
}

#[derive(Debug)]
pub(super) struct Pending {
    user: Option<String>,
    txn: TxnId,
    /// The connection whose order it keeps ([`Turn::chain`]).
    chain: u64,
    /// The first send of `txn` (see `recent.rs` for why it matters).
    first: bool,
    plan: Plan,
    reply: oneshot::Sender<Result<Outcome>>,
}

/// What the database decided for one transaction.
#[derive(Debug)]
pub(super) enum Decision {
    Final(Outcome),
    /// A conflict: these keys were read stale. Their current values, which the conflict
    /// carries, are still to be read as the committing user ([`Committer::finish`]).
    Stale(Vec<Resolved>),
}

/// What a transaction of a batch came to.
enum Decided {
    Outcome(Decision),
    /// Failed in a way the batch does not classify (a deadlock, a concurrent commit of its
    /// txn id, …), with the error's SQLSTATE and message, or with the whole batch (`None`):
    /// nothing of it was applied; it is committed again on its own.
    Alone(Option<(String, String)>),
}

impl Runner for Committer {
    type Job = Pending;

    fn lanes(&self) -> &Lanes<Pending> {
        &self.lanes
    }

    fn chain(job: &Pending) -> Option<u64> {
        Some(job.chain)
    }

    async fn run(self: Arc<Self>, batch: Vec<Pending>) {
        let batch = self.answer_known_conflicts(batch);
        if batch.is_empty() {
            return;
        }
        if let [_] = batch.as_slice() {
            let p = batch.into_iter().next().expect("one");
            let decision = self
                .commit_alone(p.user.as_deref(), &p.txn, &p.plan, Via::Lane)
                .await;
            self.answer(p, decision);
        } else {
            self.run_batch(batch).await;
        }
    }
}

impl Committer {
    pub(super) fn new(
        pool: PgPool,
        schema: &str,
        knobs: Knobs,
        metrics: &Metrics,
        reader: Arc<Reader>,
    ) -> Committer {
        Committer {
            schema: schema.to_owned(),
            reader,
            lanes: Lanes::new(
                knobs.group_commit_lanes,
                knobs.group_commit,
                metrics.commit_batch_size.clone(),
                metrics.commit_lane_busy.clone(),
            ),
            set_based: metrics.set_based_commits.clone(),
            recent: Recent::default(),
            known_stale: metrics.known_stale_commits.clone(),
            held: std::sync::Mutex::new(Vec::new()),
            pool,
            knobs,
        }
    }

    /// Queues a transaction for the next batch and waits for its outcome.
    pub(super) async fn submit(
        self: &Arc<Self>,
        user: Option<String>,
        txn: TxnId,
        first: bool,
        plan: Plan,
        turn: &Turn,
    ) -> Result<Outcome> {
        let (reply, outcome) = oneshot::channel();
        lanes::push(
            self,
            Pending {
                user,
                txn,
                chain: turn.chain(),
                first,
                plan,
                reply,
            },
        );
        turn.reach(Stage::Queued).await;
        outcome.await.unwrap_or_else(|_| {
            Err(ServerError::Reply(ErrorReply::new(
                ErrorKind::Internal,
                "the committer stopped before deciding this commit",
            )))
        })
    }

    /// The keys a first send read stale, by what this instance knows was committed since
    /// (see `recent.rs`), if any.
    pub(super) fn known_stale(&self, first: bool, plan: &Plan) -> Option<Vec<Resolved>> {
        if !first {
            return None;
        }
        let stale = self.recent.stale(&plan.reads);
        if stale.is_empty() {
            return None;
        }
        self.known_stale.inc();
        Some(stale)
    }

    /// Remembers changes committed elsewhere (see `Store::remember`).
    pub(super) fn remember<'a>(&self, changes: impl IntoIterator<Item = (&'a Resolved, Version)>) {
        self.recent.record(changes);
    }

    /// The outcome of a decision: a conflict gets its stale keys' current values, read as
    /// `user`, so that it carries nothing the app's policies hide from them now.
    pub(super) async fn finish(&self, user: Option<&str>, decision: Decision) -> Result<Outcome> {
        match decision {
            Decision::Final(outcome) => Ok(outcome),
            Decision::Stale(keys) => Ok(Outcome::Conflict {
                stale: self.reader.read(user, keys).await?,
            }),
        }
    }

    /// Answers a queued transaction. A conflict's values are read in a task of its own, so
    /// the lane goes on with the next batch meanwhile.
    fn answer(self: &Arc<Self>, p: Pending, decision: Result<Decision>) {
        match decision {
            Ok(Decision::Stale(keys)) => {
                let this = self.clone();
                tokio::spawn(async move {
                    let outcome = this.finish(p.user.as_deref(), Decision::Stale(keys)).await;
                    let _ = p.reply.send(outcome);
                });
            }
            Ok(Decision::Final(outcome)) => {
                let _ = p.reply.send(Ok(outcome));
            }
            Err(e) => {
                let _ = p.reply.send(Err(e));
            }
        }
    }

    /// Answers the known conflicts of a batch; returns the rest, in order.
    fn answer_known_conflicts(self: &Arc<Self>, batch: Vec<Pending>) -> Vec<Pending> {
        batch
            .into_iter()
            .filter_map(|p| match self.known_stale(p.first, &p.plan) {
                Some(keys) => {
                    self.answer(p, Ok(Decision::Stale(keys)));
                    None
                }
                None => Some(p),
            })
            .collect()
    }

    async fn run_batch(self: &Arc<Self>, batch: Vec<Pending>) {
        let members: Vec<Member<'_>> = batch
            .iter()
            .map(|p| Member {
                user: p.user.as_deref(),
                txn: &p.txn,
                plan: &p.plan,
            })
            .collect();
        let decided = match self.call(&members, Via::Lane).await {
            Ok(decided) => decided,
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "batch failed, committing its transactions one by one");
                batch.iter().map(|_| Decided::Alone(None)).collect()
            }
        };
        // Each connection's, in batch order: a transaction after one committed again alone
        // may depend on it, and one that did and came to a conflict (nothing applied) is
        // decided again after it.
        let mut alone: Vec<(u64, Vec<Pending>)> = Vec::new();
        let mut chains_alone = HashSet::new();
        for (p, d) in batch.into_iter().zip(decided) {
            let again = match &d {
                Decided::Alone(_) => true,
                Decided::Outcome(Decision::Stale(_)) => {
                    !p.plan.deps.is_empty() && chains_alone.contains(&p.chain)
                }
                Decided::Outcome(Decision::Final(_)) => false,
            };
            match d {
                Decided::Outcome(decision) if !again => self.answer(p, Ok(decision)),
                _ => {
                    chains_alone.insert(p.chain);
                    match alone.iter_mut().find(|(chain, _)| *chain == p.chain) {
                        Some((_, ps)) => ps.push(p),
                        None => alone.push((p.chain, vec![p])),
                    }
                }
            }
        }
        // Connections concurrently, so one slow transaction does not hold the others'
        // replies.
        let runs = alone.into_iter().map(|(_, ps)| {
            let this = self.clone();
            tokio::spawn(async move {
                for p in ps {
                    let decision = this
                        .commit_alone(p.user.as_deref(), &p.txn, &p.plan, Via::Pool)
                        .await;
                    this.answer(p, decision);
                }
            })
        });
        for run in runs.collect::<Vec<_>>() {
            let _ = run.await;
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
            if is_transient_code(&code) && attempt < self.knobs.commit_db_retries {
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
    async fn call(&self, batch: &[Member<'_>], via: Via) -> Result<Vec<Decided>> {
        let reads: Vec<&Resolved> = batch
            .iter()
            .flat_map(|m| {
                let reads = m.plan.reads.iter().map(|(r, _)| r);
                reads.chain(m.plan.deps.iter().map(|d| &d.key))
            })
            .collect();
        let writes: Vec<&Resolved> = batch
            .iter()
            .flat_map(|m| &m.plan.writes)
            .map(|(r, _)| r)
            .collect();
        let (hashes, exclusive) = locks::plan(reads, writes);
        let mut a = Arrays::default();
        for m in batch {
            a.txn_ids.push(&m.txn.0);
            a.users.push(m.user.unwrap_or(""));
            let owner = a.txn_ids.len() as i32;
            for (r, version) in &m.plan.reads {
                a.read_owners.push(owner);
                a.read_spaces.push(&r.space);
                a.read_pks.push(&r.pk);
                a.read_versions.push(version.0 as i64);
                a.read_afters.push(None);
                a.read_values.push(None);
                a.read_sqls.push(None);
            }
            // A dependency is one more read, after the plain ones.
            for d in &m.plan.deps {
                a.read_owners.push(owner);
                a.read_spaces.push(&d.key.space);
                a.read_pks.push(&d.key.pk);
                a.read_versions.push(0);
                a.read_afters.push(Some(&d.after.0));
                a.read_values.push(d.value.clone());
                let sql = a.statement(dep_query(&d.key));
                a.read_sqls.push(Some(sql));
            }
            for (r, op) in &m.plan.writes {
                let s = statement(r, op);
                a.write_owners.push(owner);
                a.write_spaces.push(&r.space);
                a.write_pks.push(&r.pk);
                a.write_keys
                    .push(serde_json::to_string(&r.key).expect("keys serialize"));
                a.write_args.push(s.arg);
                let sql = a.statement(s.sql);
                a.write_sqls.push(sql);
                let set = s.set.map(|q| a.statement(q));
                a.write_sets.push(set);
                let check = s.check.map(|q| a.statement(q));
                a.write_checks.push(check);
            }
            a.read_ends.push(a.read_pks.len() as i32);
            a.write_ends.push(a.write_pks.len() as i32);
        }
        type Row = (
            String,
            Option<i64>,
            Option<Vec<i32>>,
            Option<Value>,
            Option<Vec<bool>>,
            Option<String>,
            Option<String>,
            Option<i32>,
            bool,
        );
        let query = sqlx::query_as(
            "SELECT * FROM mjolnir.commit_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
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
        .bind(&a.write_checks);
        let rows: Vec<Row> = match via {
            Via::Pool => query.fetch_all(&self.pool).await?,
            Via::Lane => {
                let held = self.held.lock().expect("held connections").pop();
                let mut conn = match held {
                    Some(conn) => conn,
                    None => self.pool.acquire().await?,
                };
                let rows = query.fetch_all(&mut *conn).await?;
                // Kept only after a call that worked: one that failed may be broken.
                self.held.lock().expect("held connections").push(conn);
                rows
            }
        };
        // The batch has committed (or decided nothing at all): now the answers.
        let mut decided = Vec::with_capacity(batch.len());
        if let Some(row) = rows.first()
            && row.8
        {
            self.set_based.inc_by(rows.len() as u64);
        }
        for (m, (outcome, version, stale, values, changed, code, message, failed, _)) in
            batch.iter().zip(rows)
        {
            decided.push(match outcome.as_str() {
                "duplicate" => Decided::Outcome(Decision::Final(Outcome::Duplicate {
                    version: Version(version.unwrap_or(0) as u64),
                })),
                "conflict" => Decided::Outcome(Decision::Stale(
                    stale
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|i| m.plan.read_key((i as usize).wrapping_sub(1)))
                        .cloned()
                        .collect(),
                )),
                "committed" => {
                    let changed = changed.unwrap_or_default();
                    let outcome = committed(m.plan, version, values, &changed);
                    if let Outcome::Committed { version, .. } = &outcome {
                        self.recent.record(
                            changed_writes(m.plan, &changed).map(|((r, _), _)| (r, *version)),
                        );
                    }
                    Decided::Outcome(Decision::Final(outcome))
                }
                _ => {
                    let code = code.unwrap_or_default();
                    let message = message.unwrap_or_default();
                    let write = failed.and_then(|i| m.plan.writes.get((i as usize).wrapping_sub(1)));
                    match (code.as_str(), write) {
                        (HIDDEN_ROW | MISSING_ROW, Some((r, op))) => Decided::Outcome(
                            Decision::Final(Outcome::Rejected(missing_row(r, op, code == HIDDEN_ROW))),
                        ),
                        (ALREADY_COMMITTED, _) => Decided::Alone(Some((code, message))),
                        _ => match classify_code(&code, &message) {
                            Some(reply) => Decided::Outcome(Decision::Final(Outcome::Rejected(reply))),
                            None => {
                                tracing::debug!(txn = %m.txn, %code, %message, "committing alone after a database error in its batch");
                                Decided::Alone(Some((code, message)))
                            }
                        },
                    }
                }
            });
        }
        Ok(decided)
    }
}

/// Whether `e` says the connection is gone rather than that the statement failed: an I/O
/// or protocol error, or PostgreSQL's `08…` (connection exception) and `57P0…` (the backend
/// was terminated or the server is shutting down).
fn connection_lost(e: &sqlx::Error) -> bool {
    match sqlstate(e) {
        Some(code) => code.starts_with("08") || code.starts_with("57P0"),
        None => matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_)),
    }
}

/// One transaction of a call of `mjolnir.commit_batch`.
struct Member<'a> {
    user: Option<&'a str>,
    txn: &'a TxnId,
    plan: &'a Plan,
}

/// The parameter arrays of `mjolnir.commit_batch` (see its migration for their meaning).
#[derive(Default)]
struct Arrays<'a> {
    txn_ids: Vec<&'a str>,
    users: Vec<&'a str>,
    read_ends: Vec<i32>,
    write_ends: Vec<i32>,
    read_owners: Vec<i32>,
    write_owners: Vec<i32>,
    read_spaces: Vec<&'a str>,
    read_pks: Vec<&'a str>,
    read_versions: Vec<i64>,
    /// Per read: the transaction a dependency is on; `None` for a plain read.
    read_afters: Vec<Option<&'a str>>,
    read_values: Vec<Option<Value>>,
    /// Per read: the query reading a dependency's value as the user.
    read_sqls: Vec<Option<i32>>,
    write_spaces: Vec<&'a str>,
    write_pks: Vec<&'a str>,
    write_keys: Vec<String>,
    write_args: Vec<Value>,
    /// Each statement text once; the writes refer to them by (1-based) index.
    statements: Vec<String>,
    statement_index: HashMap<String, i32>,
    write_sqls: Vec<i32>,
    write_sets: Vec<Option<i32>>,
    write_checks: Vec<Option<i32>>,
}

impl Arrays<'_> {
    /// The index of `sql` in `statements`, adding it if new.
    fn statement(&mut self, sql: String) -> i32 {
        if let Some(&i) = self.statement_index.get(&sql) {
            return i;
        }
        self.statements.push(sql.clone());
        let i = self.statements.len() as i32;
        self.statement_index.insert(sql, i);
        i
    }
}

/// The writes of a committed transaction that changed something, with their positions
/// (`changed`, from `mjolnir.commit_batch`, says which; a write it does not cover counts as
/// changed, which can only make a conflict, never hide one).
fn changed_writes<'a>(
    plan: &'a Plan,
    changed: &'a [bool],
) -> impl Iterator<Item = (&'a (Resolved, WriteOp), usize)> {
    plan.writes
        .iter()
        .enumerate()
        .filter(|(i, _)| changed.get(*i).copied().unwrap_or(true))
        .map(|(i, write)| (write, i))
}

/// The outcome of a transaction `mjolnir.commit_batch` committed: the change set as the
/// feed carries it (the writes that changed something, `changed` saying which), or for a
/// read-only transaction, the newest version it read (`version`: the newest transaction
/// it depends on, if any).
fn committed(
    plan: &Plan,
    version: Option<i64>,
    values: Option<Value>,
    changed: &[bool],
) -> Outcome {
    if plan.writes.is_empty() {
        let newest = plan.reads.iter().map(|(_, v)| v.0).max().unwrap_or(0);
        return Outcome::Committed {
            version: Version(newest.max(version.unwrap_or(0) as u64)),
            changes: Vec::new(),
        };
    }
    let Some(version) = version else {
        return Outcome::Committed {
            version: Version::ABSENT,
            changes: Vec::new(),
        };
    };
    let version = Version(version as u64);
    let values = match values {
        Some(Value::Array(values)) => values,
        _ => Vec::new(),
    };
    let changes = changed_writes(plan, changed)
        .map(|(write, i)| (write, values.get(i).cloned().unwrap_or(Value::Null)))
        .map(|((r, op), value)| Entry {
            key: r.key.clone(),
            version,
            value: match op {
                WriteOp::Delete => None,
                // The kv value as the client sent it, not as jsonb re-spelled it.
                WriteOp::Put { value } => Some(value.clone()),
                _ => Some(value),
            },
        })
        .collect();
    Outcome::Committed { version, changes }
}
