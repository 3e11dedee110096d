//! The runtime: one per page, an adapter over the client engine
//! ([`mjolnir_core::engine::Engine`]).
//!
//! The engine decides everything of the protocol: which handler runs when, what is sent,
//! what a reply means, when to retry. The runtime carries its actions out in the browser:
//! it runs handlers (`attempts.rs`), undoes their effects on the page, settles their
//! promises (`job.rs`), tells listeners (`events.rs`), keeps the socket
//! (`connection.rs`) and sets timers.
//!
//! A handler runs as soon as it is called (the engine pipelines: see its docs). Its attempt
//! runs synchronously, so inside it the page is exactly as JavaScript promises: nothing
//! else runs. Its effects (page state, DOM, buffered writes) stay visible while its commit
//! is in flight, and later handlers build on them; when a commit fails, the engine asks
//! for its effects and those of every later one in flight to be undone, latest first, and
//! for the later ones to run again.
//!
//! Borrow discipline: no `RefCell` of the runtime is borrowed while user JavaScript runs
//! (handlers, listeners), since that JavaScript may call back into the runtime, even into
//! [`Runtime::drive`]: whoever drives takes the engine's next action, so a nested drive
//! only carries out, in order, what the outer one would have.

use crate::attempts::Current;
use crate::connection::{self, ConnState, Connection, Events};
use crate::error::RuntimeError;
use crate::events::Listeners;
use crate::job::Job;
use crate::state::PageState;
use futures_channel::oneshot;
use js_sys::{Array, Function, Promise};
use mjolnir_core::engine::{Action, Engine, Failure, FetchId, JobId, Kind, MAX_MISS_ROUNDS};
use mjolnir_core::protocol::{ErrorReply, TableInfo};
use mjolnir_core::{Attempt, RetryPolicy};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::{Rc, Weak};
use wasm_bindgen::prelude::*;

/// Keys the client cache holds before it evicts (and unsubscribes) the least recently used.
pub const CACHE_CAPACITY: usize = 10_000;

/// Whether a handler is an `async function`: those get a transaction object and may
/// await. Decided once, when the handler is wrapped.
pub fn kind_of(f: &Function) -> Kind {
    let is_async = js_sys::Reflect::get(f, &"constructor".into())
        .ok()
        .and_then(|c| js_sys::Reflect::get(&c, &"name".into()).ok())
        .and_then(|n| n.as_string())
        .is_some_and(|n| n == "AsyncFunction");
    if is_async { Kind::Async } else { Kind::Sync }
}

#[derive(Debug)]
pub struct Runtime {
    me: Weak<Runtime>,
    conn: Rc<RefCell<Connection>>,
    pub(crate) engine: RefCell<Engine>,
    pub(crate) state: PageState,
    /// The synchronous attempt running right now, if any.
    pub(crate) current: RefCell<Option<Current>>,
    /// Attempts of async handlers, by attempt id: they stay open across awaits, while
    /// other code runs.
    pub(crate) async_attempts: RefCell<HashMap<u64, (JobId, Attempt)>>,
    pub(crate) next_attempt: Cell<u64>,
    pub(crate) tables: RefCell<BTreeMap<String, TableInfo>>,
    pub(crate) user: RefCell<Option<String>>,
    jobs: RefCell<HashMap<JobId, Rc<Job>>>,
    fetches: RefCell<HashMap<FetchId, oneshot::Sender<Result<(), ErrorReply>>>>,
    pub(crate) listeners: Listeners,
    pub(crate) auto_enabled: Cell<bool>,
}

impl Runtime {
    pub fn new(url: String, user: Option<String>) -> Rc<Runtime> {
        let client_id = format!("{:016x}", (js_sys::Math::random() * 2f64.powi(53)) as u64);
        let seed = (js_sys::Math::random() * 2f64.powi(53)) as u64;
        crate::forms::install();
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
            engine: RefCell::new(Engine::new(client_id.clone(), CACHE_CAPACITY, seed)),
            conn: Rc::new(RefCell::new(Connection::new(url, user.clone(), client_id))),
            current: RefCell::new(None),
            async_attempts: RefCell::new(HashMap::new()),
            next_attempt: Cell::new(1),
            tables: RefCell::new(BTreeMap::new()),
            user: RefCell::new(user),
            jobs: RefCell::new(HashMap::new()),
            fetches: RefCell::new(HashMap::new()),
            listeners: Listeners::default(),
            auto_enabled: Cell::new(false),
        })
    }

    pub(crate) fn rc(&self) -> Rc<Runtime> {
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
        self.engine.borrow().pending()
    }

    pub fn set_policy(&self, policy: RetryPolicy) {
        self.engine.borrow_mut().set_policy(policy);
    }

    pub fn policy(&self) -> RetryPolicy {
        self.engine.borrow().policy()
    }

    pub fn on(&self, event: String, f: Function) {
        self.listeners.on(event, f);
    }

    /// `mjolnir.state` was assigned to: a `state` event, so templates that show it
    /// re-render (a handler that touches only page state sends nothing and brings no
    /// `commit` or `change`). A rollback of the state is reported by `abort`.
    pub fn state_changed(&self) {
        self.listeners.emit("state", &JsValue::UNDEFINED);
    }

    // ---- running handlers ---------------------------------------------------------------

    /// Runs `f` as a transaction and returns a promise of its result. Inside another
    /// transaction it simply joins it: a handler that calls another wrapped function is
    /// still one transaction.
    pub fn call(&self, f: Function, this: JsValue, args: Array, kind: Kind) -> Promise {
        if self.in_attempt() {
            return match f.apply(&this, &args) {
                Ok(v) => Promise::resolve(&v),
                // Let the outer attempt see the error (a cache miss must stop it too).
                Err(e) => wasm_bindgen::throw_val(e),
            };
        }
        self.start(f, this, args, kind).promise()
    }

    /// Runs an event handler or timer callback as a transaction (automatic mode) and
    /// returns what its first attempt returned, synchronously. Its outcome is reported by
    /// the `commit` and `abort` events; a failure is also an unhandled rejection, as an
    /// uncaught exception in a plain handler would be. Automatic mode never wraps `async`
    /// functions, so the handler is synchronous.
    pub fn call_handler(&self, f: Function, this: JsValue, args: Array) -> JsValue {
        if self.in_attempt() {
            return match f.apply(&this, &args) {
                Ok(v) => v,
                Err(e) => wasm_bindgen::throw_val(e),
            };
        }
        let job = self.start(f, this, args, Kind::Sync);
        match job.settled() {
            Some(Ok(value)) => value,
            Some(Err(err)) => {
                // Rejected and dropped: the browser reports it as an unhandled rejection.
                let _ = Promise::reject(&err);
                JsValue::UNDEFINED
            }
            None => {
                // Rejections of a job that waited go the same way.
                let _ = job.promise();
                job.first_value
                    .borrow()
                    .clone()
                    .unwrap_or(JsValue::UNDEFINED)
            }
        }
    }

    /// Hands a call to the engine and carries out what it says at once: a synchronous
    /// handler with nothing ahead of it runs (and often finishes) before this returns.
    fn start(&self, f: Function, this: JsValue, args: Array, kind: Kind) -> Rc<Job> {
        let job = Rc::new(Job::new(f, kind, this, args));
        let id = self.engine.borrow_mut().call(kind);
        self.jobs.borrow_mut().insert(id, job.clone());
        self.drive();
        if kind == Kind::Sync && job.settled().is_none() {
            job.forms.borrow().keep_the_moment();
        }
        job
    }

    /// Carries out the engine's actions until it has none.
    pub(crate) fn drive(&self) {
        loop {
            let Some(action) = self.engine.borrow_mut().poll() else {
                return;
            };
            self.carry_out(action);
        }
    }

    /// Sends what the engine has to send, and nothing else: for callers that must not run
    /// handlers (a template render).
    pub(crate) fn flush_sends(&self) {
        let sends = self.engine.borrow_mut().take_sends();
        let conn = self.conn.borrow();
        for msg in &sends {
            conn.send(msg);
        }
    }

    pub(crate) fn job(&self, id: JobId) -> Option<Rc<Job>> {
        self.jobs.borrow().get(&id).cloned()
    }

    fn carry_out(&self, action: Action) {
        match action {
            Action::Send(msg) => self.conn.borrow().send(&msg),
            Action::Run(id) => {
                let Some(job) = self.job(id) else { return };
                match job.kind {
                    Kind::Sync => self.run_sync(id, &job),
                    Kind::Async => {
                        let rt = self.rc();
                        wasm_bindgen_futures::spawn_local(async move {
                            rt.run_async(id, job).await;
                        });
                    }
                }
            }
            Action::Keep(id) => {
                let Some(job) = self.job(id) else { return };
                let value = job.outcome.borrow().clone().unwrap_or(JsValue::UNDEFINED);
                job.first_value.borrow_mut().get_or_insert(value);
                let wrote_state = job
                    .effects
                    .borrow()
                    .as_ref()
                    .is_some_and(|e| !e.state.is_empty());
                if wrote_state {
                    self.state_changed();
                }
            }
            Action::Revert(id) => {
                if let Some(job) = self.job(id) {
                    job.revert(&self.state);
                }
            }
            Action::Wake(id, delay) => {
                let me = self.me.clone();
                let wake = Closure::once_into_js(move || {
                    if let Some(rt) = me.upgrade() {
                        rt.engine.borrow_mut().wake(id);
                        rt.drive();
                    }
                });
                crate::auto::set_timeout(&wake, delay.as_millis() as i32);
            }
            Action::Changed(keys) => self.listeners.change(&keys),
            Action::Conflicted { key, .. } => self.listeners.abort("conflict", key.as_ref(), None),
            Action::Settle(id, result) => self.settle(id, result),
            Action::Release(id) => {
                self.jobs.borrow_mut().remove(&id);
            }
            Action::Committed { txn, version, .. } => self.listeners.commit(&txn, version),
            Action::Fetched(id, result) => {
                if let Some(tx) = self.fetches.borrow_mut().remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Action::Warn(message) => {
                web_sys::console::warn_1(&format!("mjolnir: {message}").into());
            }
        }
    }

    fn settle(&self, id: JobId, result: Result<Option<mjolnir_core::Version>, Failure>) {
        // Kept until its release: a cascade may still undo a page-only job's effects and
        // run it again.
        let Some(job) = self.job(id) else {
            return;
        };
        let after_commit = std::mem::take(&mut *job.after_commit.borrow_mut());
        let outcome = job.outcome.borrow().clone();
        let result = match result {
            Ok(_) => {
                for f in after_commit {
                    if let Err(e) = f.call0(&JsValue::NULL) {
                        web_sys::console::error_2(
                            &"mjolnir: an afterCommit callback threw".into(),
                            &e,
                        );
                    }
                }
                Ok(outcome.unwrap_or(JsValue::UNDEFINED))
            }
            Err(Failure::Threw) => {
                let err = outcome.err().unwrap_or(JsValue::UNDEFINED);
                self.listeners.abort("error", None, Some(&err));
                Err(err)
            }
            Err(Failure::Rejected(error)) => {
                let reason = crate::error::code_of(error.code);
                let key = error.key.clone();
                let err: JsValue = RuntimeError::Rejected(error).into();
                self.listeners.abort(&reason, key.as_ref(), Some(&err));
                Err(err)
            }
            Err(Failure::FetchRefused(error)) => Err(RuntimeError::Rejected(error).into()),
            Err(Failure::Conflicts { key, attempts }) => {
                Err(RuntimeError::Conflict { key, attempts }.into())
            }
            Err(Failure::TooManyMisses) => Err(RuntimeError::Protocol(format!(
                "the handler kept reading keys that were not loaded ({MAX_MISS_ROUNDS} rounds)"
            ))
            .into()),
        };
        job.settle(result);
    }

    // ---- talking to the server ----------------------------------------------------------

    /// Fetches keys into the cache (and subscribes to them).
    pub async fn fetch(&self, keys: Vec<mjolnir_core::Key>) -> Result<(), ErrorReply> {
        let (tx, rx) = oneshot::channel();
        let id = self.engine.borrow_mut().fetch(keys);
        self.fetches.borrow_mut().insert(id, tx);
        self.flush_sends();
        rx.await.unwrap_or_else(|_| {
            Err(ErrorReply::new(
                mjolnir_core::ErrorKind::Internal,
                "the runtime stopped",
            ))
        })
    }
}

impl Events for Runtime {
    fn on_welcome(&self, user: Option<String>, tables: BTreeMap<String, TableInfo>) {
        *self.user.borrow_mut() = user;
        *self.tables.borrow_mut() = tables;
        self.engine.borrow_mut().welcome();
        self.drive();
    }

    fn on_message(&self, text: String) {
        self.engine.borrow_mut().receive(&text);
        self.drive();
    }

    fn on_state(&self, state: ConnState, reason: Option<String>) {
        let detail = js_sys::Object::new();
        let _ = js_sys::Reflect::set(&detail, &"state".into(), &state.as_str().into());
        if let Some(r) = reason {
            let _ = js_sys::Reflect::set(&detail, &"reason".into(), &r.into());
        }
        self.listeners.emit("connection", &detail);
    }
}
