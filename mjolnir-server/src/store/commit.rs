//! Where a client's commit enters the store ([`Store::commit`]): refused if malformed,
//! resolved into a [`Plan`] (`plan.rs`), answered at once if it is known to be stale
//! (`recent.rs`), then decided alone or queued for a lane (`committer.rs`), in its
//! connection's order (`turn.rs`). The walk goes one way, from here down to the call of
//! `mjolnir.commit_batch` (`call.rs`).
//!
//! A commit is one call of `mjolnir.commit_batch` (migration 0004), outside any explicit
//! transaction, so PostgreSQL commits it the moment the call returns:
//! 1. lock every key (advisory locks in hash order) and check the transaction id was not
//!    already committed;
//! 2. a read is stale if its key's value changed since the version read (migration 0006:
//!    `changed <= read <= version`); a dependency (migration 0007) unless the transaction
//!    it names committed as this user, the same rule holds at that transaction's version,
//!    and the key holds the value read, as the user reads it. If any is stale, nothing is
//!    applied (a conflict), and the server then reads the stale keys' current values for
//!    the client, as its user;
//! 3. as `mjolnir_app` with the connection's user: the [`Statement`](super::plan::Statement) of each write, so the
//!    app's row-level security, CHECK constraints and triggers apply. A write that changes
//!    nothing draws no new value version;
//! 4. the new versions, the transaction id (the user's own), the NOTIFY (`mjolnir.announce`);
//! 5. the end of the statement is **the commit point**. Before it nothing is visible and
//!    nothing is decided; after it the writes, the versions, the dedup record and the
//!    notification are all durable together.
//!
//! Under load, commits are batched (`committer.rs`): the same steps for each transaction,
//! several transactions in one call. A lone commit is a batch of one.

use super::Store;
use super::call::Via;
use super::outcome::{Decision, Outcome};
use super::plan::{Dep, Plan, check_write};
use super::turn::{Stage, Turn};
use crate::error::{Result, ServerError};
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::{Dependency, ErrorKind, Key, QueryRead, ReadSet, TxnId, WriteSet};

/// One commit as its client sent it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub txn: &'a TxnId,
    pub reads: &'a ReadSet,
    pub writes: &'a WriteSet,
    /// Reads of keys earlier transactions of this user wrote (see `mjolnir_core::deps`).
    pub deps: &'a [Dependency],
    /// The page's previous commit, unanswered when this one was sent: this one is decided
    /// only if that one committed (see `ClientMessage::Commit`).
    pub follows: Option<&'a TxnId>,
    /// The first send of `txn` (see `recent.rs`).
    pub first: bool,
    /// The queries the transaction read, with the results it saw.
    pub queries: &'a [QueryRead],
}

impl Store {
    /// Decides a commit, after the commits its connection sent before it (`turn`).
    pub async fn commit(
        &self,
        user: Option<&str>,
        request: Request<'_>,
        turn: &Turn,
    ) -> Result<Outcome> {
        let outcome = self.decide(user, request, turn).await;
        // Stage by stage: a commit answered before it reached the queue (a known conflict,
        // a refusal) lets its successor queue as soon as its predecessor has.
        turn.reach(Stage::Queued).await;
        turn.reach(Stage::Decided).await;
        outcome
    }

    async fn decide(
        &self,
        user: Option<&str>,
        request: Request<'_>,
        turn: &Turn,
    ) -> Result<Outcome> {
        let Request {
            txn,
            reads,
            writes,
            deps,
            follows,
            first,
            queries,
        } = request;
        let bad_id = |t: &TxnId| t.0.is_empty() || t.0.len() > TxnId::MAX_LEN;
        if bad_id(txn) || follows.is_some_and(bad_id) {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::Malformed,
                format!("transaction ids are 1 to {} bytes", TxnId::MAX_LEN),
            )));
        }
        if let Some(message) = mjolnir_core::deps::misnamed(reads, deps) {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::Malformed,
                message,
            )));
        }
        if reads.len() + writes.len() + deps.len() + queries.len() > self.knobs.max_keys_per_request
        {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::TooLarge,
                format!(
                    "a commit may touch at most {} keys",
                    self.knobs.max_keys_per_request
                ),
            )));
        }
        if queries.len() > mjolnir_core::query::MAX_PER_REQUEST {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::TooLarge,
                format!(
                    "a commit may read at most {} queries",
                    mjolnir_core::query::MAX_PER_REQUEST
                ),
            )));
        }
        let plan = match self.plan(reads, writes, deps, queries).await {
            Ok(plan) => plan,
            Err(ServerError::Reply(r)) => return Ok(Outcome::Rejected(r)),
            Err(e) => return Err(e),
        };
        // Checked again when a lane takes it: the batches before it may make it stale. A
        // read stale by its version is stale whatever the commits before it come to (a read
        // of what they write is a dependency, which this does not judge), so it is answered
        // at once, ahead of its turn.
        if let Some(stale) = self.recent.known_stale(first, &plan.reads) {
            return self.committer.finish(user, Decision::Stale(stale)).await;
        }
        // A commit that follows another is decided only if that one committed. The one it
        // follows came before it on this connection (or on an earlier one, answered
        // there), so once the commits before it are decided, the record of committed ids
        // says. Pipelined commits of one page thus go one decision at a time.
        if let Some(before) = follows {
            turn.after(Stage::Decided).await;
            if !self.committed_as(user, before).await? {
                return Ok(Outcome::Conflict { stale: Vec::new() });
            }
        }
        // Read-only commits write nothing and need no fsync: batching would only delay them.
        if plan.writes.is_empty() || self.knobs.group_commit <= 1 {
            turn.after(Stage::Decided).await;
            let decision = self
                .committer
                .caller
                .commit_alone(user, txn, &plan, Via::Pool)
                .await?;
            return self.committer.finish(user, decision).await;
        }
        // The lanes take the queue in order, and never run two batches of one connection's
        // commits side by side (`lanes.rs`): queued after its predecessor, it is decided
        // after it, in a later batch or later in the same one.
        turn.after(Stage::Queued).await;
        self.committer
            .submit(user.map(str::to_owned), txn.clone(), first, plan, turn)
            .await
    }

    /// Whether `txn` committed as `user`.
    async fn committed_as(&self, user: Option<&str>, txn: &TxnId) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT version FROM mjolnir.txns WHERE app_user = $1 AND txn = $2")
                .bind(user.unwrap_or(""))
                .bind(&txn.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Resolves and checks everything that can be checked without the database, so a bad
    /// commit is refused before it takes a lock.
    async fn plan(
        &self,
        reads: &ReadSet,
        writes: &WriteSet,
        deps: &[Dependency],
        queries: &[QueryRead],
    ) -> Result<Plan> {
        let read_keys = self.resolve(reads.keys()).await?;
        let write_keys = self.resolve(writes.keys()).await?;
        let dep_keys = self.resolve(deps.iter().map(|d| &d.key)).await?;
        let query_keys: Vec<Key> = queries
            .iter()
            .map(|q| Key::query(q.query.clone()))
            .collect();
        let query_keys = self.resolve(&query_keys).await?;
        for r in read_keys.iter().chain(&write_keys).chain(&dep_keys) {
            if r.query.is_some() {
                return Err(ErrorReply::new(
                    ErrorKind::InvalidWrite,
                    format!("{} is a query: a commit names it in `queries` only", r.key),
                )
                .with_key(r.key.clone())
                .into());
            }
        }
        for (r, (_, op)) in write_keys.iter().zip(writes.iter()) {
            check_write(r, op)?;
        }
        Ok(Plan {
            reads: read_keys
                .into_iter()
                .zip(reads.iter().map(|(_, v)| v))
                .collect(),
            writes: write_keys
                .into_iter()
                .zip(writes.iter().map(|(_, op)| op.clone()))
                .collect(),
            deps: dep_keys
                .into_iter()
                .zip(deps)
                .map(|(r, d)| Dep {
                    key: r,
                    after: d.after.clone(),
                    value: d.value.clone(),
                })
                .collect(),
            queries: query_keys
                .into_iter()
                .zip(queries.iter().map(|q| q.seen.clone()))
                .collect(),
        })
    }
}
