//! [`Engine`]: one page's transactions, its cache and its requests.

use super::action::{Action, Ended, Failure, FetchId, JobId, Kind};
use super::requests::{Requests, Routed};
use crate::attempt::{Attempt, Finish};
use crate::cache::{Cache, Snapshot};
use crate::protocol::{Entry, ServerMessage};
use crate::retry::RetryPolicy;
use crate::speculation::Speculation;
use crate::{ClientMessage, Key, TxnId};
use serde_json::Value;
use std::collections::VecDeque;

mod outside;
mod pipeline;

use pipeline::Kept;

/// How many times one handler may stop on cache misses before it is given up: a handler
/// that reads different keys on every run would otherwise never finish.
pub const MAX_MISS_ROUNDS: u32 = 100;

/// Reads sent again after a reconnect go in chunks of this many keys, below the server's
/// per-request limit.
const REFRESH_CHUNK: usize = 500;

/// Who waits for a request.
#[derive(Debug)]
enum Waiter {
    /// A job's missed keys; it runs again once they are in.
    Fetch(JobId),
    /// A key read outside any transaction (a template's); nothing waits.
    Load(Key),
    /// Keys read again after a reconnect (their pushes were lost meanwhile).
    Refresh,
    /// A fetch of the adapter's (the async form's reads).
    /// With the keys it pinned, unpinned when the reply comes, whatever it says.
    Fetched(FetchId, Vec<Key>),
    /// A job's commit.
    Commit(JobId),
}

/// Where a job is.
#[derive(Debug)]
enum Phase {
    /// [`Action::Run`] was given: the adapter runs (or is about to run) an attempt.
    Running,
    /// Waiting for its missed keys.
    Fetching,
    /// Waiting out a retry's back-off.
    BackingOff,
    /// Its commit is in flight. The values its writes give each key, for the cache once
    /// the commit is confirmed.
    Committing {
        txn: TxnId,
        written: Vec<(Key, Option<Value>)>,
    },
}

#[derive(Debug)]
struct Job {
    id: JobId,
    phase: Phase,
    conflicts: u32,
    misses: u32,
    /// Keys kept from eviction while the job waits: what its last attempt read or missed.
    pinned: Vec<Key>,
    /// Its promise has settled: a page-only job that a cascade runs again (its result
    /// goes nowhere, and it settles no second time).
    settled: bool,
    /// Its own retry policy ([`Engine::call_with`]); `None`: the engine's.
    policy: Option<RetryPolicy>,
}

/// One page's client engine.
///
/// **Pipelined.** A handler runs as soon as it is called, even while earlier commits of
/// the page are in flight, and its commit is sent at once. It sees the committed cache
/// with the writes of the page's in-flight transactions on top (the [`Speculation`]), so
/// its effect shows in the next frame; a read of a key an in-flight transaction wrote is
/// sent as a dependency on that transaction. Each commit also names the page's previous
/// commit still in flight (`follows`): the server decides a page's commits in the order
/// they were sent, and refuses one whose predecessor did not commit.
///
/// **Cascade.** So when an in-flight transaction conflicts or is refused, every later one
/// is known to fail too. Their effects are undone, latest first, then the failed one's;
/// the failed one is retried (or fails), and the later ones run again, in their order, on
/// top of the result. A job that waits (for missed keys, or a retry's back-off) steps out
/// of the order: later handlers run and commit before it, and it runs on top of them.
///
/// **Page-only handlers.** A handler that reads and writes nothing of the server's is
/// done at once, whatever is in flight, and its promise settles then. The cascade leaves
/// it alone unless it changed a DOM node or state entry that an undone job also changed:
/// then it is undone too, in its place (latest first on every effect), and run again after
/// (its promise stays as it settled). So the engine keeps each job's page effects
/// ([`Attempt::touch`]) while an earlier commit of the page is in flight.
#[derive(Debug)]
pub struct Engine {
    cache: Cache,
    requests: Requests<Waiter>,
    jobs: Vec<Job>,
    /// Jobs whose commit is in flight, in send order.
    inflight: Vec<JobId>,
    /// The effects on the page since the oldest commit in flight, in the order they were
    /// made: every commit in flight, and the page-only jobs after the first of them.
    kept: Vec<Kept>,
    /// Their writes, layered in that order: what attempts and templates see on top of
    /// the cache.
    speculation: Speculation,
    actions: VecDeque<Action>,
    policy: RetryPolicy,
    client_id: String,
    next_txn: u64,
    next_job: u64,
    next_fetch: u64,
    /// Keys being loaded for reads outside a transaction, so each is asked for once.
    /// (A list: a few keys at a time, and an ordered set with removal would cost the
    /// browser module its own copy of the B-tree's removal code.)
    loading: Vec<Key>,
    /// Keys read outside a transaction that the server refused to read (an unknown
    /// table), with its reason: asked for no more until the next reconnect, and shown as
    /// an error where a template reads them.
    refused: Vec<(Key, crate::protocol::ErrorReply)>,
    welcomed_before: bool,
    /// The state of a xorshift generator, for retry jitter: the core has no random source
    /// of its own, so the adapter seeds it (`Math.random()` in the browser).
    rng: u64,
}

impl Engine {
    /// An engine for the client `client_id` (which prefixes its txn ids), with a cache of
    /// `capacity` keys; `seed` seeds the retry jitter.
    pub fn new(client_id: String, capacity: usize, seed: u64) -> Engine {
        Engine {
            cache: Cache::with_capacity(capacity),
            requests: Requests::new(),
            jobs: Vec::new(),
            inflight: Vec::new(),
            kept: Vec::new(),
            speculation: Speculation::new(),
            actions: VecDeque::new(),
            policy: RetryPolicy::default(),
            client_id,
            next_txn: 1,
            next_job: 1,
            next_fetch: 1,
            loading: Vec::new(),
            refused: Vec::new(),
            welcomed_before: false,
            rng: seed | 1,
        }
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    pub fn set_policy(&mut self, policy: RetryPolicy) {
        self.policy = policy;
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// A snapshot of the committed cache: what an async attempt moves onto after a fetch.
    pub fn snapshot(&self) -> Snapshot {
        self.cache.snapshot()
    }

    /// Jobs called and not yet settled.
    pub fn pending(&self) -> usize {
        self.jobs.iter().filter(|j| !j.settled).count()
    }

    /// The next thing the adapter must do, if any.
    pub fn poll(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes the messages waiting to be sent out of the actions, leaving the others in
    /// order: for a caller that may send now but must not run handlers (a template reading
    /// a key it has not loaded, in the middle of a render). Messages only go to the
    /// socket, so sending them before the actions queued ahead of them changes nothing.
    pub fn take_sends(&mut self) -> Vec<ClientMessage> {
        let mut sends = Vec::new();
        self.actions.retain(|a| match a {
            Action::Send(msg) => {
                sends.push(msg.clone());
                false
            }
            _ => true,
        });
        sends
    }

    /// A handler was called: a new job, which runs at once.
    pub fn call(&mut self, _kind: Kind) -> JobId {
        let id = JobId(self.next_job);
        self.next_job += 1;
        self.jobs.push(Job {
            id,
            phase: Phase::Running,
            conflicts: 0,
            misses: 0,
            pinned: Vec::new(),
            settled: false,
            policy: None,
        });
        self.run(id);
        id
    }

    /// Starts an attempt of `job`, which [`Action::Run`] named: the attempt reads a
    /// snapshot of the cache with the page's in-flight writes on top.
    pub fn begin(&mut self, job: JobId) -> Attempt {
        if let Some(j) = self.job_mut(job) {
            j.phase = Phase::Running;
        }
        Attempt::speculating(self.cache.snapshot(), self.speculation.clone())
    }

    /// The attempt `attempt` of `job` ended. Decides what comes next: keep its effects
    /// and send its commit, fetch what it missed, retry a conflict, or settle.
    pub fn finish(&mut self, job: JobId, attempt: Attempt, ended: Ended) {
        if self.job_mut(job).is_none() {
            return;
        }
        let pinned: Vec<Key> = attempt.keys().cloned().collect();
        let touched = attempt.touched().to_vec();
        if ended == Ended::Threw {
            // A miss is recorded in the attempt even if the handler caught the signal.
            let missed = attempt.missed_keys();
            // An exception on a stale view may be caused by the tear itself: a conflict.
            let stale = attempt.is_stale(&self.cache);
            let moved = attempt
                .reads()
                .iter()
                .find(|(k, v)| self.cache.version(k) != Some(*v))
                .map(|(k, _)| k.clone());
            self.actions.push_back(Action::Revert(job));
            if !missed.is_empty() {
                self.missed(job, missed, pinned);
            } else if stale {
                self.conflicted(job, moved);
            } else {
                self.settle(job, Err(Failure::Threw));
            }
            return;
        }
        // An attempt that read and wrote nothing of the server's needs no txn id.
        let needs_id = !attempt.has_misses() && !attempt.is_local();
        let txn = if needs_id {
            self.next_txn += 1;
            TxnId(format!("{}:{}", self.client_id, self.next_txn - 1))
        } else {
            TxnId(String::new())
        };
        let written = attempt.written();
        match attempt.finish(txn.clone()) {
            Finish::Missed(keys) => {
                self.actions.push_back(Action::Revert(job));
                self.missed(job, keys, pinned);
            }
            Finish::Nothing => {
                self.actions.push_back(Action::Keep(job));
                if !self.inflight.is_empty() {
                    self.kept.push(Kept {
                        job,
                        touched,
                        local: true,
                    });
                }
                self.settle(job, Ok(None));
            }
            Finish::Commit(mut msg) => {
                self.actions.push_back(Action::Keep(job));
                self.kept.push(Kept {
                    job,
                    touched,
                    local: false,
                });
                let mut pinned = pinned;
                pinned.extend(written.iter().map(|(k, _)| k.clone()));
                self.repin(job, pinned);
                if let ClientMessage::Commit { follows, .. } = &mut msg {
                    *follows = self.last_inflight_txn();
                }
                self.subscribe_to_new(&written);
                self.speculation.push(&txn, &written);
                self.changed(written.iter().map(|(k, _)| k.clone()).collect());
                if let Some(j) = self.job_mut(job) {
                    j.phase = Phase::Committing { txn, written };
                }
                self.inflight.push(job);
                if let Some(msg) = self.requests.commit(msg, Waiter::Commit(job)) {
                    self.actions.push_back(Action::Send(msg));
                }
            }
        }
    }

    /// A back-off that [`Action::Wake`] asked for is over.
    pub fn wake(&mut self, job: JobId) {
        if self
            .jobs
            .iter()
            .any(|j| j.id == job && matches!(j.phase, Phase::BackingOff))
        {
            self.run(job);
        }
    }

    /// Fetches `keys` into the cache (and subscribes to them) for the adapter; answered
    /// by [`Action::Fetched`].
    pub fn fetch(&mut self, keys: Vec<Key>) -> FetchId {
        let id = FetchId(self.next_fetch);
        self.next_fetch += 1;
        self.cache.pin(&keys);
        let msg = self.requests.read(keys.clone(), Waiter::Fetched(id, keys));
        self.actions.push_back(Action::Send(msg));
        id
    }

    /// The connection was (re)established and the server said welcome: everything still
    /// waiting is sent again, and after a reconnect what the cache holds is read again,
    /// since the pushes sent while the page was away are lost.
    pub fn welcome(&mut self) {
        for msg in self.requests.resend() {
            self.actions.push_back(Action::Send(msg));
        }
        if std::mem::replace(&mut self.welcomed_before, true) {
            // The app may have been migrated meanwhile: ask again.
            self.refused.clear();
            for chunk in self.cache.keys().chunks(REFRESH_CHUNK) {
                let msg = self.requests.read(chunk.to_vec(), Waiter::Refresh);
                self.actions.push_back(Action::Send(msg));
            }
        }
    }

    /// A text frame from the server.
    pub fn receive(&mut self, text: &str) {
        match ServerMessage::parse(text) {
            Ok(msg) => self.message(msg),
            Err(e) => self.actions.push_back(Action::Warn(format!(
                "unreadable message from the server: {e}"
            ))),
        }
    }

    /// A message from the server.
    pub fn message(&mut self, msg: ServerMessage) {
        match self.requests.deliver(msg) {
            Routed::Read(waiter, reply) => self.answered(waiter, reply),
            Routed::Commit(Waiter::Commit(job), txn, verdict) => self.verdict(job, txn, verdict),
            Routed::Commit(..) => {}
            Routed::Other(ServerMessage::Push { version, changes }) => {
                self.refresh(&changes);
                self.speculation.pushed(version);
            }
            Routed::Other(ServerMessage::Error { id: None, error }) => self.actions.push_back(
                Action::Warn(format!("the server refused a message: {}", error.message)),
            ),
            Routed::Other(_) => {}
        }
    }

    fn answered(&mut self, waiter: Waiter, reply: Result<Vec<Entry>, crate::protocol::ErrorReply>) {
        if let Ok(entries) = &reply {
            self.apply(entries);
        }
        match waiter {
            Waiter::Fetch(job) => {
                self.unpin_job(job);
                match reply {
                    Ok(_) => {
                        if self
                            .jobs
                            .iter()
                            .any(|j| j.id == job && matches!(j.phase, Phase::Fetching))
                        {
                            self.run(job);
                        }
                    }
                    Err(e) => self.settle(job, Err(Failure::FetchRefused(e))),
                }
            }
            Waiter::Load(key) => {
                self.cache.unpin([&key]);
                self.loading.retain(|k| *k != key);
                if let Err(error) = reply {
                    // Said once: the key is not asked for again, and what shows it
                    // renders again, now with the error.
                    self.actions.push_back(Action::Warn(format!(
                        "cannot read {key}: {}",
                        error.message
                    )));
                    self.refused.push((key.clone(), error));
                    self.changed(vec![key]);
                }
            }
            Waiter::Fetched(id, keys) => {
                self.cache.unpin(&keys);
                self.actions
                    .push_back(Action::Fetched(id, reply.map(|_| ())));
            }
            Waiter::Refresh | Waiter::Commit(_) => {}
        }
    }

    /// The job's attempt missed `keys`: fetch them, then run it again. `pinned` (what the
    /// attempt read, and missed) stays in the cache meanwhile: a key it read and did not
    /// miss, evicted while the others are fetched, would be missed by the next run, and
    /// two jobs could go on evicting each other's keys for ever.
    fn missed(&mut self, job: JobId, keys: Vec<Key>, pinned: Vec<Key>) {
        let Some(j) = self.job_mut(job) else { return };
        j.misses += 1;
        if j.misses > MAX_MISS_ROUNDS {
            return self.settle(job, Err(Failure::TooManyMisses));
        }
        j.phase = Phase::Fetching;
        self.repin(job, pinned);
        let msg = self.requests.read(keys, Waiter::Fetch(job));
        self.actions.push_back(Action::Send(msg));
    }

    fn run(&mut self, job: JobId) {
        if let Some(j) = self.job_mut(job) {
            j.phase = Phase::Running;
            self.actions.push_back(Action::Run(job));
        }
    }

    /// Stores fetched entries (their keys are now subscribed) and evicts past the cache's
    /// bound, unsubscribing what it drops.
    fn apply(&mut self, entries: &[Entry]) {
        let changed = self.cache.apply(entries);
        let evicted = self.cache.evict();
        if !evicted.is_empty() {
            self.actions
                .push_back(Action::Send(ClientMessage::Unsubscribe { keys: evicted }));
        }
        self.changed(changed);
    }

    /// Updates keys the cache holds (pushes, conflict replies, own commits) and ignores
    /// the rest: a key not held is not subscribed, so caching it would freeze it.
    fn refresh(&mut self, entries: &[Entry]) {
        let changed = self.cache.refresh(entries);
        self.changed(changed);
    }

    fn changed(&mut self, keys: Vec<Key>) {
        if !keys.is_empty() {
            self.actions.push_back(Action::Changed(keys));
        }
    }

    fn job_mut(&mut self, job: JobId) -> Option<&mut Job> {
        self.jobs.iter_mut().find(|j| j.id == job)
    }

    /// Pins `keys` for the job in place of what it pinned before.
    fn repin(&mut self, job: JobId, keys: Vec<Key>) {
        self.cache.pin(&keys);
        if let Some(j) = self.job_mut(job) {
            let old = std::mem::replace(&mut j.pinned, keys);
            self.cache.unpin(&old);
        }
    }

    fn unpin_job(&mut self, job: JobId) {
        self.repin(job, Vec::new());
    }

    /// [`Engine::call`], with a retry policy of the job's own instead of the engine's: for
    /// an adapter whose callers each say how often to retry (the native client's
    /// `Client::run`).
    pub fn call_with(&mut self, kind: Kind, policy: RetryPolicy) -> JobId {
        let id = self.call(kind);
        if let Some(j) = self.job_mut(id) {
            j.policy = Some(policy);
        }
        id
    }

    /// Evicts past the cache's bound now, unsubscribing what it drops, instead of at the
    /// next reply that brings keys: for an adapter with a cache too small to keep keys
    /// between transactions (the load generator's), whose keys must stop being pushed as
    /// soon as the transaction that read them is over.
    pub fn evict(&mut self) {
        let evicted = self.cache.evict();
        if !evicted.is_empty() {
            self.actions
                .push_back(Action::Send(ClientMessage::Unsubscribe { keys: evicted }));
        }
    }
}
