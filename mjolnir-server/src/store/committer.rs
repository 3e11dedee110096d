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
//! own ([`Caller::commit_alone`], `call.rs`): that is always safe, because a transaction
//! that did commit is found by its txn id and answered from the dedup record.
//!
//! This module is the lane runner: what a lane does with the batch it takes. The call
//! itself (the connection, packing the batch, decoding its rows) is `call.rs`.

use super::arrays::Member;
use super::call::{Caller, Via};
use super::lanes::{self, Lanes, Runner};
use super::outcome::{Decided, Decision, Outcome};
use super::plan::Plan;
use super::read::Reader;
use super::recent::Recent;
use super::turn::{Stage, Turn};
use crate::error::{Result, ServerError};
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::{ErrorKind, TxnId};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Commits transactions, alone or in batches. One per instance.
#[derive(Debug)]
pub(crate) struct Committer {
    /// Reads the values a conflict carries.
    reader: Arc<Reader>,
    lanes: Lanes<Pending>,
    /// Runs the batches and lone commits.
    pub(super) caller: Caller,
    /// What was committed lately: a transaction queued before a batch that made it stale
    /// is answered when its lane takes it, without the database.
    recent: Arc<Recent>,
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
                .caller
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
        knobs: &Knobs,
        metrics: &Metrics,
        reader: Arc<Reader>,
        recent: Arc<Recent>,
    ) -> Committer {
        Committer {
            reader,
            lanes: Lanes::new(
                knobs.group_commit_lanes,
                knobs.group_commit,
                metrics.commit_batch_size.clone(),
                metrics.commit_lane_busy.clone(),
                metrics.commits_queued.clone(),
            ),
            caller: Caller::new(
                pool,
                schema,
                knobs.commit_db_retries,
                knobs.max_prepared_statements,
                metrics.set_based_commits.clone(),
                recent.clone(),
            ),
            recent,
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
            .filter_map(|p| match self.recent.known_stale(p.first, &p.plan.reads) {
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
        let decided = match self.caller.call(&members, Via::Lane).await {
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
                        .caller
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
}
