//! The page's commits in flight: their verdicts, the cascade when one fails, the
//! speculative view they make, and when a settled job can be released.

use super::{Engine, Job, Phase, Waiter};
use crate::engine::action::{Action, Failure, JobId};
use crate::engine::requests::Verdict;
use crate::protocol::Entry;
use crate::speculation::Settling;
use crate::{Key, TxnId, Version};
use serde_json::Value;

/// The effects of a job's last attempt, on the page while an earlier commit of the page
/// is in flight: a cascade may have to undo them.
#[derive(Debug)]
pub(super) struct Kept {
    pub(super) job: JobId,
    /// What the attempt changed on the page ([`crate::Attempt::touch`]).
    pub(super) touched: Vec<u64>,
    /// A page-only job (settled already), not a commit in flight.
    pub(super) local: bool,
}

impl Engine {
    pub(super) fn verdict(&mut self, job: JobId, txn: TxnId, verdict: Verdict) {
        let current = self
            .jobs
            .iter()
            .find(|j| j.id == job)
            .and_then(|j| match &j.phase {
                Phase::Committing { txn: t, .. } => Some(t == &txn),
                _ => None,
            });
        if current != Some(true) {
            // A commit the page gave up on when an earlier one failed: the server refuses
            // it too (it follows that one), and the job has run again since.
            if matches!(verdict, Verdict::Committed(_)) {
                self.actions.push_back(Action::Warn(format!(
                    "the server committed {txn}, which follows a commit that failed"
                )));
            }
            return;
        }
        match verdict {
            Verdict::Committed(version) => {
                let Some(Phase::Committing { txn, written }) = self.take_inflight(job) else {
                    return;
                };
                // The next handler should see this commit without waiting for its push
                // (which carries the same version and, if the database changed the row,
                // the final values). Its rows stay in the queries the page shows until
                // that push brings their new results.
                let settling: Vec<Settling> = written
                    .iter()
                    .filter(|(key, _)| matches!(key, Key::Row { .. }))
                    .map(|(key, after)| Settling {
                        key: key.clone(),
                        version,
                        before: self.cache.get(key).and_then(|c| c.value.clone()),
                        after: after.clone(),
                    })
                    .collect();
                self.speculation.settle(settling);
                let entries: Vec<Entry> = written
                    .into_iter()
                    .map(|(key, value)| Entry {
                        key,
                        version,
                        value,
                    })
                    .collect();
                self.refresh(&entries);
                self.changed(entries.into_iter().map(|e| e.key).collect());
                self.settle(job, Ok(Some(version)));
                self.actions
                    .push_back(Action::Committed { job, txn, version });
            }
            Verdict::Conflict(stale) => {
                self.refresh(&stale);
                let later = self.cascade(job);
                self.conflicted(job, stale.first().map(|e| e.key.clone()));
                self.rerun(later);
            }
            Verdict::Rejected(error) => {
                let later = self.cascade(job);
                self.settle(job, Err(Failure::Rejected(error)));
                self.rerun(later);
            }
        }
    }

    /// The in-flight `job` failed: it and every in-flight job sent after it (which the
    /// server refuses, since each follows the one before) leave the pipeline, with the
    /// page-only jobs whose effects overlap theirs; all their effects are undone, latest
    /// first. Returns the jobs after `job`, in order, to run again.
    pub(super) fn cascade(&mut self, job: JobId) -> Vec<JobId> {
        let Some(at) = self.inflight.iter().position(|j| *j == job) else {
            return Vec::new();
        };
        let failed: Vec<JobId> = self.inflight.drain(at..).collect();
        let start = self
            .kept
            .iter()
            .position(|k| k.job == job)
            .unwrap_or(self.kept.len());
        debug_assert!(
            start < self.kept.len(),
            "a commit in flight has its effects kept"
        );
        let undone = self.take_undone(start, &failed);
        let mut keys = Vec::new();
        for kept in undone.iter().rev() {
            self.actions.push_back(Action::Revert(kept.job));
            if kept.local {
                // Settled already; it runs again for its effects only.
                self.jobs.push(Job {
                    id: kept.job,
                    phase: Phase::Running,
                    conflicts: 0,
                    misses: 0,
                    pinned: Vec::new(),
                    settled: true,
                    policy: None,
                });
            } else if let Some(j) = self.job_mut(kept.job)
                && let Phase::Committing { written, .. } =
                    std::mem::replace(&mut j.phase, Phase::Running)
            {
                keys.extend(written.into_iter().map(|(k, _)| k));
            }
        }
        self.respeculate();
        self.changed(keys);
        undone.iter().skip(1).map(|k| k.job).collect()
    }

    /// Takes out of `kept`, from `start` on, what a cascade of the `failed` commits undoes:
    /// those commits, and every page-only job that changed something an undone job also
    /// changed (repeated until nothing more joins, so that on every DOM node and state
    /// entry undo goes latest first). In the order they were made; `failed[0]` first.
    pub(super) fn take_undone(&mut self, start: usize, failed: &[JobId]) -> Vec<Kept> {
        let tail = self.kept.split_off(start);
        let mut undo: Vec<bool> = tail.iter().map(|k| failed.contains(&k.job)).collect();
        let mut touched: Vec<u64> = Vec::new();
        for (k, _) in tail.iter().zip(&undo).filter(|(_, u)| **u) {
            touched.extend(&k.touched);
        }
        let mut grew = true;
        while grew {
            grew = false;
            for (k, u) in tail.iter().zip(undo.iter_mut()) {
                if !*u && k.touched.iter().any(|e| touched.contains(e)) {
                    *u = true;
                    grew = true;
                    touched.extend(&k.touched);
                }
            }
        }
        let mut undone = Vec::new();
        for (k, u) in tail.into_iter().zip(undo) {
            if u {
                undone.push(k);
            } else {
                self.kept.push(k);
            }
        }
        self.release_settled();
        undone
    }

    /// Drops the page-only jobs kept before the oldest commit in flight: no cascade can
    /// reach them any more.
    pub(super) fn release_settled(&mut self) {
        let first = self
            .kept
            .iter()
            .position(|k| !k.local)
            .unwrap_or(self.kept.len());
        for kept in self.kept.drain(..first) {
            self.actions.push_back(Action::Release(kept.job));
        }
    }

    /// Runs again, in their order, the jobs a cascade undid.
    pub(super) fn rerun(&mut self, jobs: Vec<JobId>) {
        for id in jobs {
            self.run(id);
        }
    }

    /// Takes `job` out of the pipeline, returning the phase it was in.
    pub(super) fn take_inflight(&mut self, job: JobId) -> Option<Phase> {
        self.inflight.retain(|j| *j != job);
        self.kept.retain(|k| k.job != job);
        let phase = self
            .job_mut(job)
            .map(|j| std::mem::replace(&mut j.phase, Phase::Running));
        self.respeculate();
        phase
    }

    /// Rebuilds the speculation from the jobs in flight, in send order.
    pub(super) fn respeculate(&mut self) {
        let mut speculation = self.speculation.settled_only();
        for id in &self.inflight {
            if let Some(Job {
                phase: Phase::Committing { txn, written },
                ..
            }) = self.jobs.iter().find(|j| j.id == *id)
            {
                speculation.push(txn, written);
            }
        }
        self.speculation = speculation;
    }

    /// The txn of the page's last commit in flight: what the next one follows.
    pub(super) fn last_inflight_txn(&self) -> Option<TxnId> {
        let last = self.inflight.last()?;
        self.jobs
            .iter()
            .find(|j| j.id == *last)
            .and_then(|j| match &j.phase {
                Phase::Committing { txn, .. } => Some(txn.clone()),
                _ => None,
            })
    }

    /// Reads the keys a commit writes that the cache does not hold (a row it inserts), so
    /// that they are cached and subscribed once it commits, instead of vanishing from the
    /// view until something reads them again.
    pub(super) fn subscribe_to_new(&mut self, written: &[(Key, Option<Value>)]) {
        let new: Vec<Key> = written
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !self.cache.contains_key(k) && !self.loading.contains(*k))
            .cloned()
            .collect();
        if !new.is_empty() {
            let msg = self.requests.read(new, Waiter::Refresh);
            self.actions.push_back(Action::Send(msg));
        }
    }

    /// Settles the job's promise and removes it; releases it unless a cascade may still
    /// undo it.
    pub(super) fn settle(&mut self, job: JobId, result: Result<Option<Version>, Failure>) {
        self.unpin_job(job);
        let settled = self.job_mut(job).is_some_and(|j| j.settled);
        self.jobs.retain(|j| j.id != job);
        if !settled {
            self.actions.push_back(Action::Settle(job, result));
        } else if result.is_err() {
            self.actions.push_back(Action::Warn(
                "a page-only handler failed when run again after a cascade".to_owned(),
            ));
        }
        if self.kept.iter().any(|k| k.job == job) {
            return;
        }
        self.release_settled();
        self.actions.push_back(Action::Release(job));
    }

    /// The job's attempt conflicted: run it again after the policy's delay, or give up.
    pub(super) fn conflicted(&mut self, job: JobId, key: Option<Key>) {
        let jitter = self.jitter();
        let Some(j) = self.job_mut(job) else { return };
        j.conflicts += 1;
        let attempts = j.conflicts;
        let own = j.policy;
        self.actions.push_back(Action::Conflicted {
            job,
            key: key.clone(),
        });
        let policy = own.unwrap_or(self.policy);
        match policy.delay(attempts, jitter) {
            // Only when the stale key was evicted from the cache meanwhile is it unknown.
            None => {
                let key = key.unwrap_or_else(|| Key::kv(""));
                self.settle(job, Err(Failure::Conflicts { key, attempts }));
            }
            Some(delay) if delay.is_zero() => self.run(job),
            Some(delay) => {
                if let Some(j) = self.job_mut(job) {
                    j.phase = Phase::BackingOff;
                }
                self.actions.push_back(Action::Wake(job, delay));
            }
        }
    }

    /// A uniform draw from [0, 1) (xorshift64*).
    pub(super) fn jitter(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let bits = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }
}
