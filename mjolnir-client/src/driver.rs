//! [`Driver`]: the connection's client engine ([`mjolnir_core::engine::Engine`]) and the
//! adapter that carries out what it decides.
//!
//! The engine decides everything of the protocol for [`crate::Client::run`]: when an
//! attempt runs, what it sees (the cache, with the writes of this connection's commits in
//! flight on top), what is sent, what a verdict means, when to retry, what to evict. This
//! module only carries its [`Action`]s out, with tokio: messages go to the writer task, an
//! attempt to run or a settled result goes to the task awaiting `run` (through a channel
//! per job), a fetched snapshot to the read waiting for it, a back-off to a timer.
//!
//! Locking: the engine sits behind a `std::sync::Mutex` that is never held across an
//! `.await`. Whoever changes the engine (a task calling `run`, the reader task with a
//! message, a timer) drains its actions before letting go of the lock, and carrying one
//! out never blocks: the writer's queue is unbounded for the engine's messages (the engine
//! sends a bounded number per job, so its callers bound them), and the other channels are
//! unbounded or oneshots. Draining under the lock is also what keeps the engine's messages
//! in the order it produced them, which the server relies on (a commit names the one it
//! follows). The lock order is engine, then routes: the reader never holds the routes
//! while it waits for the engine.
//!
//! The native client does not reconnect: when the connection ends, every job and fetch
//! still waiting fails with [`ClientError::Disconnected`], and so does every later one.

use crate::error::ClientError;
use crate::routes::Routes;
use crate::socket::Outgoing;
use mjolnir_core::engine::{Action, Ended, Engine, Failure, FetchId, JobId, Kind};
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::{Attempt, ClientMessage, Key, RetryPolicy, ServerMessage, Snapshot, Version};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tokio::sync::{mpsc, oneshot};

/// What the engine tells the task that awaits one job.
#[derive(Debug)]
pub(crate) enum JobEvent {
    /// Run an attempt now: [`Driver::begin`], the closure, [`Driver::finish`].
    Run,
    /// The job is over: committed at a version, done with nothing to commit, or failed.
    Settle(Result<Option<Version>, Failure>),
}

/// What a fetch waits for: the cache's snapshot taken as its reply landed (so it surely
/// holds the fetched keys, whatever is evicted afterwards), or why the server refused.
pub(crate) type FetchReply = Result<Snapshot, ErrorReply>;

#[derive(Debug)]
struct State {
    engine: Engine,
    jobs: HashMap<JobId, mpsc::UnboundedSender<JobEvent>>,
    fetches: HashMap<FetchId, oneshot::Sender<FetchReply>>,
    /// The connection has ended: nothing is fed to the engine any more, and nothing new
    /// may wait on it.
    ended: bool,
}

/// One connection's engine, shared by the client handles, the reader task and timers.
#[derive(Debug)]
pub(crate) struct Driver {
    me: Weak<Driver>,
    state: Mutex<State>,
    routes: Arc<Routes>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

impl Driver {
    /// A driver for a connection that has just been welcomed.
    pub(crate) fn new(
        mut engine: Engine,
        routes: Arc<Routes>,
        outgoing: mpsc::UnboundedSender<Outgoing>,
    ) -> Arc<Driver> {
        // Nothing waits yet; this tells the engine that the connection is up.
        engine.welcome();
        Arc::new_cyclic(|me| Driver {
            me: me.clone(),
            state: Mutex::new(State {
                engine,
                jobs: HashMap::new(),
                fetches: HashMap::new(),
                ended: false,
            }),
            routes,
            outgoing,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock but a bug in the engine, after which the
        // state is as consistent as it will ever be.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live state, or `Disconnected` once the connection has ended.
    fn live(&self) -> Result<MutexGuard<'_, State>, ClientError> {
        let state = self.lock();
        if state.ended {
            return Err(ClientError::Disconnected);
        }
        Ok(state)
    }

    /// A new job, which retries by `policy`; its events come through the receiver, the
    /// first ([`JobEvent::Run`]) at once unless earlier jobs of the connection are ahead.
    pub(crate) fn call(
        &self,
        policy: RetryPolicy,
    ) -> Result<(JobId, mpsc::UnboundedReceiver<JobEvent>), ClientError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.live()?;
        // Async: the closure awaits its reads instead of being run again after a miss.
        let job = state.engine.call_with(Kind::Async, policy);
        // Registered before the drive carries out the job's first `Run`.
        state.jobs.insert(job, tx);
        self.drive(&mut state);
        Ok((job, rx))
    }

    /// Starts the attempt that [`JobEvent::Run`] asked for.
    pub(crate) fn begin(&self, job: JobId) -> Result<Attempt, ClientError> {
        Ok(self.live()?.engine.begin(job))
    }

    /// The attempt ended; the engine decides what comes next.
    pub(crate) fn finish(&self, job: JobId, attempt: Attempt, ended: Ended) {
        let Ok(mut state) = self.live() else { return };
        state.engine.finish(job, attempt, ended);
        self.drive(&mut state);
    }

    /// The task awaiting `job` went away in the middle of an attempt (its `run` future was
    /// dropped): the job ends as if its closure had failed, so that it does not stay in
    /// the engine for ever.
    pub(crate) fn abandon(&self, job: JobId) {
        let Ok(mut state) = self.live() else { return };
        state.jobs.remove(&job);
        abandon(&mut state.engine, job);
        self.drive(&mut state);
    }

    /// Fetches `keys` into the cache (and subscribes to them), in one read.
    pub(crate) fn fetch(
        &self,
        keys: Vec<Key>,
    ) -> Result<oneshot::Receiver<FetchReply>, ClientError> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.live()?;
        let id = state.engine.fetch(keys);
        state.fetches.insert(id, tx);
        self.drive(&mut state);
        Ok(rx)
    }

    /// A server message for the engine: a push, or the reply to one of its requests under
    /// the id the engine gave it. Frames that answer nothing (an `error` naming no request,
    /// a stray reply, an unparsable frame) are not given to it but kept for
    /// `Client::next_unsolicited`: the engine would only warn of them, and the raw API's
    /// tests of the server are what provoke them.
    pub(crate) fn deliver(&self, msg: ServerMessage) {
        let Ok(mut state) = self.live() else { return };
        state.engine.message(msg);
        self.drive(&mut state);
    }

    /// The connection has ended: every job and fetch waiting fails with
    /// [`ClientError::Disconnected`] (their senders are dropped), and so does every later
    /// call.
    pub(crate) fn end(&self) {
        let (jobs, fetches) = {
            let mut state = self.lock();
            state.ended = true;
            (
                std::mem::take(&mut state.jobs),
                std::mem::take(&mut state.fetches),
            )
        };
        // Dropped outside the lock: the tasks they wake need not wait for it.
        drop((jobs, fetches));
    }

    fn wake(&self, job: JobId) {
        let Ok(mut state) = self.live() else { return };
        state.engine.wake(job);
        self.drive(&mut state);
    }

    /// Carries out the engine's actions until it has none, without blocking.
    fn drive(&self, state: &mut State) {
        while let Some(action) = state.engine.poll() {
            match action {
                Action::Send(msg) => self.send(msg),
                Action::Run(job) => {
                    let told = state
                        .jobs
                        .get(&job)
                        .is_some_and(|tx| tx.send(JobEvent::Run).is_ok());
                    if !told {
                        // Nobody awaits it any more (its `run` was dropped).
                        state.jobs.remove(&job);
                        abandon(&mut state.engine, job);
                    }
                }
                Action::Settle(job, result) => {
                    if let Some(tx) = state.jobs.remove(&job) {
                        let _ = tx.send(JobEvent::Settle(result));
                    }
                    // What the job pinned is free now: a cache smaller than what one job
                    // reads (the load generator's) drops it, and unsubscribes, at once.
                    state.engine.evict();
                }
                Action::Fetched(id, result) => {
                    if let Some(tx) = state.fetches.remove(&id) {
                        let _ = tx.send(result.map(|()| state.engine.snapshot()));
                    }
                }
                Action::Wake(job, delay) => {
                    let me = self.me.clone();
                    // Without a runtime (one shutting down, dropping a `run`), nobody is
                    // left to await the job either.
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(async move {
                            tokio::time::sleep(delay).await;
                            if let Some(driver) = me.upgrade() {
                                driver.wake(job);
                            }
                        });
                    }
                }
                Action::Warn(message) => tracing::warn!("{message}"),
                // Nothing on a native client shows a page: keeping or undoing an attempt's
                // effects, re-rendering and the commit events are the browser's.
                // A native run touches no page effects, so a cascade never runs one again
                // once settled: its release changes nothing here.
                Action::Keep(_)
                | Action::Release(_)
                | Action::Revert(_)
                | Action::Changed(_)
                | Action::Conflicted { .. }
                | Action::Committed { .. } => {}
            }
        }
    }

    /// Queues one of the engine's messages for the writer, registered with the routes so
    /// its reply comes back to the engine (see [`Routes::for_engine`]). Dropped once the
    /// connection has ended: whoever waits for it fails with the end.
    fn send(&self, msg: ClientMessage) {
        if let Some(msg) = self.routes.for_engine(msg) {
            let _ = self.outgoing.send(Outgoing::text(msg.to_json()));
        }
    }
}

/// Ends `job` as a failure of its closure: an attempt that read nothing, so not stale.
fn abandon(engine: &mut Engine, job: JobId) {
    let attempt = engine.begin(job);
    engine.finish(job, attempt, Ended::Threw);
}
