//! The runtime: one per page. Runs handlers as transactions, one at a time, in the order
//! they were called, each against a snapshot of the cache.
//!
//! A handler's attempt runs synchronously, so inside it the page is exactly as JavaScript
//! promises: nothing else runs. Its effects (page state, DOM, buffered writes) stay
//! visible while its commit is in flight; a later handler waits for that commit, so no
//! handler ever builds on effects that might still be rolled back. On a conflict the
//! effects are rolled back, the cache is refreshed from the reply, and the handler runs
//! again.
//!
//! Borrow discipline: no `RefCell` of the runtime is borrowed while user JavaScript runs
//! (handlers, listeners), since that JavaScript may call back into the runtime.

use crate::connection::{self, ConnState, Connection, Events};
use crate::convert::key_to_js;
use crate::dom::{DomChanges, DomJournal};
use crate::error::RuntimeError;
use crate::state::{PageState, UndoLog};
use futures_channel::oneshot;
use js_sys::{Array, Function, Promise};
use mjolnir_core::attempt::{Attempt, Finish, Read};
use mjolnir_core::cache::Cache;
use mjolnir_core::protocol::{Entry, ErrorReply, TableInfo};
use mjolnir_core::retry::RetryPolicy;
use mjolnir_core::{ClientMessage, Key, ServerMessage, TxnId, WriteOp};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::rc::{Rc, Weak};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;

/// Keys the client cache holds before it evicts (and unsubscribes) the least recently used.
pub const CACHE_CAPACITY: usize = 10_000;
/// How many times one handler may stop on cache misses before it is given up: a handler
/// that reads different keys on every run would otherwise never finish.
const MAX_MISS_ROUNDS: u32 = 100;

/// Thrown inside an attempt when it reads a key the cache does not hold. Handlers should
/// not catch it; if one does, the runtime still knows and re-runs the handler.
#[wasm_bindgen]
#[derive(Debug)]
pub struct CacheMiss;

/// Whether a handler is an `async function`: those get a transaction object and may
/// await. Decided once, when the handler is wrapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerKind {
    Sync,
    Async,
}

impl HandlerKind {
    pub fn of(f: &Function) -> HandlerKind {
        if is_async(f) {
            HandlerKind::Async
        } else {
            HandlerKind::Sync
        }
    }
}

/// How a call started: finished in its first attempt, or queued with a promise.
enum Started {
    Done(JsValue),
    Threw(JsValue),
    Queued(Promise, Option<Rc<Job>>),
}

/// One call of a wrapped handler, waiting to run or running.
#[derive(Debug)]
struct Job {
    f: Function,
    kind: HandlerKind,
    this: JsValue,
    args: Array,
    resolve: Function,
    reject: Function,
    conflicts: Cell<u32>,
    misses: Cell<u32>,
    /// What the first attempt returned, if it ran to its end at once: an event handler's
    /// return value (`return false` in an inline handler) must reach the browser
    /// synchronously, before the commit is known.
    first_value: RefCell<Option<JsValue>>,
}

/// What a finished attempt left on the page, so it can be undone.
#[derive(Debug)]
struct Effects {
    state: UndoLog,
    dom: Option<DomChanges>,
}

enum Outcome {
    /// Done: nothing to commit. Its effects stay.
    Done(JsValue, Effects),
    /// The handler threw on a consistent view: its own error.
    Threw(JsValue),
    /// The handler threw on a stale view: a conflict.
    Stale(Option<Key>),
    /// Keys to fetch before running again.
    Missed(Vec<Key>),
    /// Waiting for the server's verdict. The written keys with the values the attempt
    /// gave them, for the cache once the commit is confirmed.
    Commit(
        ClientMessage,
        TxnId,
        JsValue,
        Effects,
        Vec<(Key, Option<Value>)>,
    ),
}

/// The attempt running right now, if any. Row proxies check `id` so a row that escaped its
/// transaction cannot write into a later one.
#[derive(Debug)]
pub struct Current {
    pub id: u64,
    pub attempt: Attempt,
}

/// A read in flight: its keys (to send again after a reconnect) and who waits for it.
type ReadWaiter = (Vec<Key>, oneshot::Sender<Result<(), ErrorReply>>);
/// A commit in flight: the message (to send again, same txn id) and who waits for it.
type CommitWaiter = (ClientMessage, oneshot::Sender<ServerMessage>);

#[derive(Debug)]
pub struct Runtime {
    me: Weak<Runtime>,
    conn: Rc<RefCell<Connection>>,
    pub(crate) cache: RefCell<Cache>,
    pub(crate) state: PageState,
    pub(crate) current: RefCell<Option<Current>>,
    /// Attempts of async handlers, by id: they stay open across awaits, while other code runs.
    async_attempts: RefCell<HashMap<u64, Attempt>>,
    pub(crate) tables: RefCell<BTreeMap<String, TableInfo>>,
    pub(crate) user: RefCell<Option<String>>,
    jobs: RefCell<VecDeque<Rc<Job>>>,
    /// Keys being fetched for reads outside a transaction.
    loading: RefCell<HashSet<Key>>,
    reads: RefCell<HashMap<u32, ReadWaiter>>,
    commits: RefCell<HashMap<TxnId, CommitWaiter>>,
    listeners: RefCell<Vec<(String, Function)>>,
    next_read: Cell<u32>,
    next_txn: Cell<u64>,
    next_attempt: Cell<u64>,
    welcomed_before: Cell<bool>,
    pub(crate) auto_enabled: Cell<bool>,
    pub(crate) policy: RefCell<RetryPolicy>,
}

impl Runtime {
    pub fn new(url: String, user: Option<String>) -> Rc<Runtime> {
        let client_id = format!("{:016x}", (js_sys::Math::random() * 2f64.powi(53)) as u64);
        Rc::new_cyclic(|me: &Weak<Runtime>| Runtime {
            me: me.clone(),
            state: PageState::new(&{
                let me = me.clone();
                Closure::<dyn Fn()>::new(move || {
                    if let Some(rt) = me.upgrade() {
                        rt.state_changed();
                    }
                })
                .into_js_value()
            }),
            conn: Rc::new(RefCell::new(Connection::new(url, user.clone(), client_id))),
            cache: RefCell::new(Cache::with_capacity(CACHE_CAPACITY)),
            current: RefCell::new(None),
            async_attempts: RefCell::new(HashMap::new()),
            tables: RefCell::new(BTreeMap::new()),
            user: RefCell::new(user),
            jobs: RefCell::new(VecDeque::new()),
            loading: RefCell::new(HashSet::new()),
            reads: RefCell::new(HashMap::new()),
            commits: RefCell::new(HashMap::new()),
            listeners: RefCell::new(Vec::new()),
            next_read: Cell::new(1),
            next_txn: Cell::new(1),
            next_attempt: Cell::new(1),
            welcomed_before: Cell::new(false),
            auto_enabled: Cell::new(false),
            policy: RefCell::new(RetryPolicy::default()),
        })
    }

    fn rc(&self) -> Rc<Runtime> {
        self.me
            .upgrade()
            .expect("the runtime is alive while its methods run")
    }

    pub fn open(&self) -> Result<(), JsValue> {
        connection::open(&self.conn, self.me.clone(), Rc::downgrade(&self.conn))
    }

    pub fn connection_state(&self) -> ConnState {
        self.conn.borrow().state
    }

    pub fn pending(&self) -> usize {
        self.jobs.borrow().len()
    }

    pub fn in_attempt(&self) -> bool {
        self.current.borrow().is_some()
    }

    pub fn on(&self, event: String, f: Function) {
        self.listeners.borrow_mut().push((event, f));
    }

    /// `mjolnir.state` was assigned to: a `state` event, so templates that show it
    /// re-render (a handler that touches only page state sends nothing and brings no
    /// `commit` or `change`). A rollback of the state is reported by `abort`.
    pub fn state_changed(&self) {
        self.emit("state", &JsValue::UNDEFINED);
    }

    fn listens_to(&self, event: &str) -> bool {
        self.listeners.borrow().iter().any(|(e, _)| e == event)
    }

    /// Calls the listeners of `event` with `detail`. Never while a borrow is held.
    fn emit(&self, event: &str, detail: &JsValue) {
        let fs: Vec<Function> = self
            .listeners
            .borrow()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, f)| f.clone())
            .collect();
        for f in fs {
            if let Err(e) = f.call1(&JsValue::NULL, detail) {
                web_sys::console::error_2(
                    &format!("mjolnir: a '{event}' listener threw").into(),
                    &e,
                );
            }
        }
    }

    // ---- running handlers ---------------------------------------------------------------

    /// Runs `f` as a transaction. Inside another transaction it simply joins it: a handler
    /// that calls another wrapped function is still one transaction.
    pub fn call(&self, f: Function, this: JsValue, args: Array, kind: HandlerKind) -> Promise {
        match self.start(f, this, args, kind) {
            Started::Done(value) => Promise::resolve(&value),
            Started::Threw(err) => Promise::reject(&err),
            Started::Queued(promise, _) => promise,
        }
    }

    /// Runs an event handler or timer callback as a transaction (automatic mode) and
    /// returns what its first attempt returned, synchronously. Its outcome is reported by
    /// the `commit` and `abort` events; a failure is also an unhandled rejection, as an
    /// uncaught exception in a plain handler would be. Automatic mode never wraps `async`
    /// functions, so the handler is synchronous.
    pub fn call_handler(&self, f: Function, this: JsValue, args: Array) -> JsValue {
        match self.start(f, this, args, HandlerKind::Sync) {
            Started::Done(value) => value,
            Started::Threw(err) => {
                // Rejected and dropped: the browser reports it as an unhandled rejection.
                let _ = Promise::reject(&err);
                JsValue::UNDEFINED
            }
            Started::Queued(_, job) => job
                .and_then(|j| j.first_value.borrow().clone())
                .unwrap_or(JsValue::UNDEFINED),
        }
    }

    /// Starts a call of `f`. With nothing queued, a synchronous handler runs at once and
    /// only one that must wait (for a commit, a fetch or a retry) gets a promise and a place
    /// in the queue: most handlers finish in their first attempt, and then cost no job.
    fn start(&self, f: Function, this: JsValue, args: Array, kind: HandlerKind) -> Started {
        if self.in_attempt() {
            return match f.apply(&this, &args) {
                Ok(v) => Started::Done(v),
                // Let the outer attempt see the error (a cache miss must stop it too).
                Err(e) => wasm_bindgen::throw_val(e),
            };
        }
        if kind == HandlerKind::Sync && self.jobs.borrow().is_empty() {
            match self.attempt(&f, &this, &args) {
                Outcome::Done(value, effects) => {
                    self.announce(&effects);
                    return Started::Done(value);
                }
                Outcome::Threw(err) => {
                    self.emit_abort("error", None, Some(&err));
                    return Started::Threw(err);
                }
                outcome => {
                    let (promise, job) = Self::new_job(f, this, args, kind);
                    self.jobs.borrow_mut().push_back(job.clone());
                    if self.proceed(&job, outcome) {
                        self.drive();
                    }
                    return Started::Queued(promise, Some(job));
                }
            }
        }
        let (promise, job) = Self::new_job(f, this, args, kind);
        let first = {
            let mut jobs = self.jobs.borrow_mut();
            jobs.push_back(job.clone());
            jobs.len() == 1
        };
        if first {
            self.drive();
        }
        Started::Queued(promise, Some(job))
    }

    /// A job for a call that waits in the queue, and the promise it settles.
    fn new_job(f: Function, this: JsValue, args: Array, kind: HandlerKind) -> (Promise, Rc<Job>) {
        let mut job = None;
        let promise = Promise::new(&mut |resolve, reject| {
            job = Some(Rc::new(Job {
                f: f.clone(),
                kind,
                this: this.clone(),
                args: args.clone(),
                resolve,
                reject,
                conflicts: Cell::new(0),
                misses: Cell::new(0),
                first_value: RefCell::new(None),
            }));
        });
        (promise, job.expect("the promise executor runs at once"))
    }

    /// Runs queued jobs until one has to wait for the server.
    fn drive(&self) {
        loop {
            let Some(job) = self.jobs.borrow().front().cloned() else {
                return;
            };
            if job.kind == HandlerKind::Async {
                let rt = self.rc();
                spawn_local(async move { rt.run_async(job).await });
                return;
            }
            let outcome = self.attempt(&job.f, &job.this, &job.args);
            if !self.proceed(&job, outcome) {
                return;
            }
        }
    }

    /// Acts on the outcome of an attempt of `job`, the queue's first: true when the job is
    /// finished and the queue may go on, false when it waits (for the server or a retry).
    /// Events are emitted before the job leaves the queue, so a listener's transactions
    /// queue behind it.
    fn proceed(&self, job: &Rc<Job>, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Done(value, effects) => {
                job.first_value
                    .borrow_mut()
                    .get_or_insert_with(|| value.clone());
                self.announce(&effects);
                self.finish_job(job, Ok(value));
                true
            }
            Outcome::Threw(err) => {
                self.emit_abort("error", None, Some(&err));
                self.finish_job(job, Err(err));
                true
            }
            Outcome::Stale(key) => {
                self.retry_after_conflict(job.clone(), key);
                false
            }
            Outcome::Missed(keys) => {
                job.misses.set(job.misses.get() + 1);
                if job.misses.get() > MAX_MISS_ROUNDS {
                    let err = RuntimeError::Protocol(format!(
                        "the handler kept reading keys that were not loaded ({} rounds)",
                        MAX_MISS_ROUNDS
                    ));
                    self.finish_job(job, Err(err.into()));
                    return true;
                }
                let rt = self.rc();
                let job = job.clone();
                spawn_local(async move {
                    match rt.fetch(keys).await {
                        Ok(()) => rt.drive(),
                        Err(reply) => {
                            rt.finish_job(&job, Err(RuntimeError::Rejected(reply).into()));
                            rt.drive();
                        }
                    }
                });
                false
            }
            Outcome::Commit(msg, txn, value, effects, written) => {
                job.first_value
                    .borrow_mut()
                    .get_or_insert_with(|| value.clone());
                self.announce(&effects);
                let rt = self.rc();
                let job = job.clone();
                spawn_local(async move {
                    let reply = rt.send_commit(txn.clone(), msg).await;
                    rt.settle(job, txn, reply, value, effects, written);
                });
                false
            }
        }
    }

    /// Runs the handler once, synchronously, and says what must happen next.
    fn attempt(&self, f: &Function, this: &JsValue, args: &Array) -> Outcome {
        let snapshot = self.cache.borrow().snapshot();
        self.state.begin();
        let journal = DomJournal::start_page().ok();
        let id = self.next_attempt.get();
        self.next_attempt.set(id + 1);
        *self.current.borrow_mut() = Some(Current {
            id,
            attempt: Attempt::new(snapshot),
        });

        let result = f.apply(this, args);

        let Current { attempt, .. } = self.current.borrow_mut().take().expect("set above");
        let effects = Effects {
            state: self.state.finish(),
            dom: journal.and_then(|j| j.finish().ok()),
        };
        match result {
            Err(err) => {
                let stale = attempt.is_stale(&self.cache.borrow());
                // Name a key that moved, for the abort event and a final ConflictError.
                let moved = {
                    let cache = self.cache.borrow();
                    attempt
                        .reads()
                        .iter()
                        .find(|(k, v)| cache.version(k) != Some(*v))
                        .map(|(k, _)| k.clone())
                };
                // A miss is recorded in the attempt even if the handler caught the signal.
                let missed = attempt.has_misses();
                self.revert(effects);
                if missed {
                    Outcome::Missed(attempt.missed_keys())
                } else if stale {
                    Outcome::Stale(moved)
                } else {
                    Outcome::Threw(err)
                }
            }
            Ok(value) => {
                // An attempt that read and wrote no shared key finishes with Nothing (or
                // Missed), which needs no transaction id: none is made for it.
                let txn = if attempt.reads().is_empty() && attempt.writes().is_empty() {
                    TxnId(String::new())
                } else {
                    self.txn_id()
                };
                let written = attempt.written();
                match attempt.finish(txn.clone()) {
                    Finish::Missed(keys) => {
                        self.revert(effects);
                        Outcome::Missed(keys)
                    }
                    Finish::Nothing => Outcome::Done(value, effects),
                    Finish::Commit(msg) => {
                        self.next_txn.set(self.next_txn.get() + 1);
                        Outcome::Commit(msg, txn, value, effects, written)
                    }
                }
            }
        }
    }

    /// Runs an async handler (`mjolnir.atomic(async tx => …)`) to its end: it gets a
    /// transaction object whose reads wait for missing keys instead of re-running the
    /// handler, and it is re-run from the start only on a conflict. Other transactions of
    /// the page wait meanwhile. Its `mjolnir.state` changes are rolled back on abort; its DOM
    /// changes are not (other code may change the page during its awaits).
    async fn run_async(&self, job: Rc<Job>) {
        loop {
            let id = self.next_attempt.get();
            self.next_attempt.set(id + 1);
            let attempt = Attempt::new(self.cache.borrow().snapshot());
            self.async_attempts.borrow_mut().insert(id, attempt);
            self.state.begin();
            let tx: JsValue = crate::tx::Tx::new(self.rc(), id).into();
            let args = Array::of1(&tx);
            let result = match job.f.apply(&job.this, &args) {
                Ok(p) => wasm_bindgen_futures::JsFuture::from(Promise::resolve(&p)).await,
                Err(e) => Err(e),
            };
            let attempt = self
                .async_attempts
                .borrow_mut()
                .remove(&id)
                .expect("inserted above");
            let effects = Effects {
                state: self.state.finish(),
                dom: None,
            };
            let txn = self.txn_id();
            let value = match result {
                Ok(v) => v,
                Err(err) => {
                    let stale = attempt.is_stale(&self.cache.borrow());
                    self.revert(effects);
                    if stale {
                        if self.wait_before_retry(&job, None).await {
                            continue;
                        }
                        return self.drive();
                    }
                    self.emit_abort("error", None, Some(&err));
                    self.finish_job(&job, Err(err));
                    return self.drive();
                }
            };
            let written = attempt.written();
            match attempt.finish(txn.clone()) {
                // Misses were waited for inside the handler; none can be left.
                Finish::Nothing | Finish::Missed(_) => {
                    self.announce(&effects);
                    self.finish_job(&job, Ok(value));
                    return self.drive();
                }
                Finish::Commit(msg) => {
                    self.next_txn.set(self.next_txn.get() + 1);
                    self.announce(&effects);
                    match self.send_commit(txn.clone(), msg).await {
                        ServerMessage::Conflict { stale, .. } => {
                            self.refresh_entries(&stale);
                            self.revert(effects);
                            let key = stale.first().map(|e| e.key.clone());
                            if self.wait_before_retry(&job, key).await {
                                continue;
                            }
                            return self.drive();
                        }
                        reply => return self.settle(job, txn, reply, value, effects, written),
                    }
                }
            }
        }
    }

    /// Counts a conflict and waits the policy's delay; false (after rejecting the job with a
    /// ConflictError) when the policy is exhausted.
    async fn wait_before_retry(&self, job: &Rc<Job>, key: Option<Key>) -> bool {
        let conflicts = job.conflicts.get() + 1;
        job.conflicts.set(conflicts);
        self.emit_abort("conflict", key.as_ref(), None);
        let delay = self
            .policy
            .borrow()
            .delay(conflicts, js_sys::Math::random());
        let Some(delay) = delay else {
            // Only when the stale key was evicted from the cache meanwhile is it unknown.
            let key = key.unwrap_or_else(|| Key::kv(""));
            self.finish_job(
                job,
                Err(RuntimeError::Conflict {
                    key,
                    attempts: conflicts,
                }
                .into()),
            );
            return false;
        };
        let ms = delay.as_millis() as i32;
        let sleep = Promise::new(&mut |resolve, _| crate::auto::set_timeout(&resolve, ms));
        let _ = wasm_bindgen_futures::JsFuture::from(sleep).await;
        true
    }

    /// The id of the next transaction sent: the client's id and a counter.
    fn txn_id(&self) -> TxnId {
        TxnId(format!(
            "{}:{}",
            self.conn.borrow().client_id,
            self.next_txn.get()
        ))
    }

    /// An attempt ended with its effects kept (for now): if it wrote page state, one
    /// `state` event says so.
    fn announce(&self, effects: &Effects) {
        if !effects.state.is_empty() {
            self.state_changed();
        }
    }

    fn revert(&self, effects: Effects) {
        self.state.revert(effects.state);
        if let Some(dom) = effects.dom {
            dom.revert();
        }
    }

    /// The server's verdict on a commit.
    fn settle(
        &self,
        job: Rc<Job>,
        txn: TxnId,
        reply: ServerMessage,
        value: JsValue,
        effects: Effects,
        written: Vec<(Key, Option<Value>)>,
    ) {
        match reply {
            ServerMessage::Committed { version, .. } => {
                // The next handler should see this commit without waiting for its push
                // (which carries the same version and, if the database changed the row,
                // the final values).
                let entries: Vec<Entry> = written
                    .into_iter()
                    .map(|(key, value)| Entry {
                        key,
                        version,
                        value,
                    })
                    .collect();
                self.refresh_entries(&entries);
                let detail = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&detail, &"txn".into(), &txn.0.clone().into());
                let _ =
                    js_sys::Reflect::set(&detail, &"version".into(), &version.to_string().into());
                self.finish_job(&job, Ok(value));
                self.emit("commit", &detail);
                self.drive();
            }
            ServerMessage::Conflict { stale, .. } => {
                self.refresh_entries(&stale);
                self.revert(effects);
                let key = stale.first().map(|e| e.key.clone());
                self.retry_after_conflict(job, key);
            }
            ServerMessage::Rejected { error, .. } => {
                self.revert(effects);
                let reason = crate::error::code_of(error.code);
                let key = error.key.clone();
                let err: JsValue = RuntimeError::Rejected(error).into();
                self.emit_abort(&reason, key.as_ref(), Some(&err));
                self.finish_job(&job, Err(err));
                self.drive();
            }
            // Replies are routed to a commit by its txn id, so only a server that breaks
            // the protocol gets here. Not described further: serializing or `Debug`-printing
            // the reply would bring code into the wasm for this alone.
            _ => {
                self.revert(effects);
                self.finish_job(
                    &job,
                    Err(RuntimeError::Protocol("unexpected reply to a commit".to_owned()).into()),
                );
                self.drive();
            }
        }
    }

    /// Re-runs a conflicting job after the policy's delay, or gives up with a ConflictError.
    fn retry_after_conflict(&self, job: Rc<Job>, key: Option<Key>) {
        let rt = self.rc();
        spawn_local(async move {
            // Either way the queue moves on: to this job again, or past it.
            rt.wait_before_retry(&job, key).await;
            rt.drive();
        });
    }

    /// `reason` is `conflict` (retried), `error` (the handler threw) or the server's error
    /// code; `error` is the error the handler's promise is rejected with, when it is final,
    /// so a page can show its message.
    fn emit_abort(&self, reason: &str, key: Option<&Key>, error: Option<&JsValue>) {
        if !self.listens_to("abort") {
            return; // no detail object to build
        }
        let detail = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&detail, &"reason".into(), &reason.into());
        if let Some(k) = key {
            let _ = js_sys::Reflect::set(&detail, &"key".into(), &key_to_js(k));
        }
        if let Some(e) = error {
            let _ = js_sys::Reflect::set(&detail, &"error".into(), e);
        }
        self.emit("abort", &detail);
    }

    fn finish_job(&self, job: &Rc<Job>, result: Result<JsValue, JsValue>) {
        {
            let mut jobs = self.jobs.borrow_mut();
            if jobs.front().is_some_and(|j| Rc::ptr_eq(j, job)) {
                jobs.pop_front();
            }
        }
        let _ = match result {
            Ok(v) => job.resolve.call1(&JsValue::NULL, &v),
            Err(e) => job.reject.call1(&JsValue::NULL, &e),
        };
    }

    // ---- talking to the server ----------------------------------------------------------

    /// Fetches keys into the cache (and subscribes to them).
    pub async fn fetch(&self, keys: Vec<Key>) -> Result<(), ErrorReply> {
        let id = self.next_read.get();
        self.next_read.set(id.wrapping_add(1).max(1));
        let (tx, rx) = oneshot::channel();
        self.reads.borrow_mut().insert(id, (keys.clone(), tx));
        self.conn.borrow().send(&ClientMessage::Read { id, keys });
        rx.await.unwrap_or_else(|_| {
            Err(ErrorReply::new(
                mjolnir_core::ErrorKind::Internal,
                "the runtime stopped",
            ))
        })
    }

    async fn send_commit(&self, txn: TxnId, msg: ClientMessage) -> ServerMessage {
        let (tx, rx) = oneshot::channel();
        self.commits
            .borrow_mut()
            .insert(txn.clone(), (msg.clone(), tx));
        self.conn.borrow().send(&msg);
        rx.await.unwrap_or(ServerMessage::Rejected {
            txn,
            error: ErrorReply::new(mjolnir_core::ErrorKind::Internal, "the runtime stopped"),
        })
    }

    /// Stores fetched entries (their keys are now subscribed) and evicts past the cache's
    /// bound, unsubscribing what it drops.
    fn apply_entries(&self, entries: &[Entry]) {
        let (changed, evicted) = {
            let mut cache = self.cache.borrow_mut();
            let changed = cache.apply(entries);
            (changed, cache.evict())
        };
        if !evicted.is_empty() {
            self.conn
                .borrow()
                .send(&ClientMessage::Unsubscribe { keys: evicted });
        }
        self.changed(changed);
    }

    /// Updates keys the cache holds (pushes, conflict replies, own commits) and ignores
    /// the rest: a key not held is not subscribed, so caching it would freeze it.
    fn refresh_entries(&self, entries: &[Entry]) {
        let changed = self.cache.borrow_mut().refresh(entries);
        self.changed(changed);
    }

    fn changed(&self, keys: Vec<Key>) {
        if !keys.is_empty() {
            self.emit("change", &keys.iter().map(key_to_js).collect::<Array>());
        }
    }

    /// Writes buffered by the current attempt; errors if there is none or `attempt_id`
    /// is not it.
    pub fn write(&self, attempt_id: Option<u64>, key: Key, op: WriteOp) -> Result<(), JsValue> {
        if let Some(id) = attempt_id
            && let Some(attempt) = self.async_attempts.borrow_mut().get_mut(&id)
        {
            attempt.write(key, op);
            return Ok(());
        }
        let mut current = self.current.borrow_mut();
        match current.as_mut() {
            Some(c) if attempt_id.is_none_or(|id| id == c.id) => {
                c.attempt.write(key, op);
                Ok(())
            }
            _ => Err(js_sys::TypeError::new("shared state can only be changed inside a transaction (mjolnir.atomic), by the transaction that read it").into()),
        }
    }

    /// Reads `key` for a row object or a transaction object bound to `attempt`: in that
    /// attempt while it runs (sync or async), from the cache once it has ended (a row that
    /// escaped its transaction records nothing in a later one).
    pub fn read_for(&self, attempt: Option<u64>, key: &Key) -> Result<Option<Value>, JsValue> {
        let Some(id) = attempt else {
            return self.read(key);
        };
        let from = |read: Read| match read {
            Read::Value(v) => Ok(v),
            Read::Miss => Err(JsValue::from(CacheMiss)),
        };
        if let Some(c) = self.current.borrow_mut().as_mut().filter(|c| c.id == id) {
            return from(c.attempt.read(key.clone()));
        }
        if let Some(a) = self.async_attempts.borrow_mut().get_mut(&id) {
            return from(a.read(key.clone()));
        }
        Ok(self.cache.borrow().get(key).and_then(|c| c.value.clone()))
    }

    pub fn cache_lacks(&self, key: &Key) -> bool {
        self.cache.borrow().version(key).is_none()
    }

    /// After a fetch, moves an async attempt onto the refreshed cache.
    pub fn resnapshot(&self, id: u64) {
        let snapshot = self.cache.borrow().snapshot();
        if let Some(a) = self.async_attempts.borrow_mut().get_mut(&id) {
            a.resnapshot(snapshot);
        }
    }

    /// Reads `key` in the current attempt (recording it), or from the cache outside one.
    /// `Err(CacheMiss)` when the cache does not hold it.
    pub fn read(&self, key: &Key) -> Result<Option<Value>, JsValue> {
        let mut current = self.current.borrow_mut();
        match current.as_mut() {
            Some(c) => match c.attempt.read(key.clone()) {
                Read::Value(v) => Ok(v),
                Read::Miss => Err(CacheMiss.into()),
            },
            None => {
                drop(current);
                let cached = self.cache.borrow().get(key).map(|c| c.value.clone());
                match cached {
                    Some(v) => Ok(v),
                    None => {
                        // Outside a transaction nothing waits: load it for next time, once
                        // (templates read the same missing key on every render).
                        if self.loading.borrow_mut().insert(key.clone()) {
                            let rt = self.rc();
                            let key = key.clone();
                            spawn_local(async move {
                                let _ = rt.fetch(vec![key.clone()]).await;
                                rt.loading.borrow_mut().remove(&key);
                            });
                        }
                        Ok(None)
                    }
                }
            }
        }
    }

    pub fn current_attempt_id(&self) -> Option<u64> {
        self.current.borrow().as_ref().map(|c| c.id)
    }
}

impl Events for Runtime {
    fn on_welcome(&self, user: Option<String>, tables: BTreeMap<String, TableInfo>) {
        *self.user.borrow_mut() = user;
        *self.tables.borrow_mut() = tables;
        // Everything in flight when the socket dropped is sent again: reads are harmless
        // to repeat, and commits keep their txn ids, so the server answers a commit that
        // already landed instead of applying it twice. Re-sent commits lose their `first`
        // mark, which would let the server answer them as conflicts from memory.
        let reads: Vec<ClientMessage> = self
            .reads
            .borrow()
            .iter()
            .map(|(id, (keys, _))| ClientMessage::Read {
                id: *id,
                keys: keys.clone(),
            })
            .collect();
        let commits: Vec<ClientMessage> = self
            .commits
            .borrow()
            .values()
            .map(|(m, _)| m.clone().resent())
            .collect();
        let conn = self.conn.borrow();
        for m in reads.iter().chain(&commits) {
            conn.send(m);
        }
        if self.welcomed_before.replace(true) {
            // Pushes sent while we were away are lost: re-read what the cache holds.
            let keys = self.cache.borrow().keys();
            for chunk in keys.chunks(500) {
                let id = self.next_read.get();
                self.next_read.set(id.wrapping_add(1).max(1));
                conn.send(&ClientMessage::Read {
                    id,
                    keys: chunk.to_vec(),
                });
            }
        }
    }

    fn on_message(&self, text: String) {
        let msg = match ServerMessage::parse(&text) {
            Ok(m) => m,
            Err(e) => {
                web_sys::console::warn_1(
                    &format!("mjolnir: unreadable message from the server: {e}").into(),
                );
                return;
            }
        };
        match msg {
            ServerMessage::Values { id, entries } => {
                self.apply_entries(&entries);
                if let Some((_, tx)) = self.reads.borrow_mut().remove(&id) {
                    let _ = tx.send(Ok(()));
                }
            }
            ServerMessage::Error {
                id: Some(id),
                error,
            } => {
                if let Some((_, tx)) = self.reads.borrow_mut().remove(&id) {
                    let _ = tx.send(Err(error));
                }
            }
            ServerMessage::Error { id: None, error } => {
                web_sys::console::warn_1(
                    &format!("mjolnir: the server refused a message: {}", error.message).into(),
                );
            }
            ServerMessage::Push { changes, .. } => self.refresh_entries(&changes),
            ServerMessage::Committed { ref txn, .. }
            | ServerMessage::Conflict { ref txn, .. }
            | ServerMessage::Rejected { ref txn, .. } => {
                let waiter = self.commits.borrow_mut().remove(txn);
                if let Some((_, tx)) = waiter {
                    let _ = tx.send(msg);
                }
            }
            ServerMessage::Welcome { .. } => {}
        }
    }

    fn on_state(&self, state: ConnState, reason: Option<String>) {
        let detail = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&detail, &"state".into(), &state.as_str().into());
        if let Some(r) = reason {
            let _ = js_sys::Reflect::set(&detail, &"reason".into(), &r.into());
        }
        self.emit("connection", &detail);
    }
}

/// Whether `f` is an `async function`: those get a transaction object and may await.
fn is_async(f: &Function) -> bool {
    js_sys::Reflect::get(f, &"constructor".into())
        .ok()
        .and_then(|c| js_sys::Reflect::get(&c, &"name".into()).ok())
        .and_then(|n| n.as_string())
        .is_some_and(|n| n == "AsyncFunction")
}
