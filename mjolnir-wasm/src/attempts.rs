//! Running one attempt of a handler, and the reads and writes it makes.
//!
//! A synchronous handler's attempt runs inside [`Runtime::run_sync`]: it is the
//! [`Current`] attempt while it runs, and row proxies and `mjolnir.kv` read and write
//! through it. An async handler's attempt stays open across its awaits, so it is kept by
//! id and reached only through its `tx` object (`tx.rs`).

use crate::dom::DomJournal;
use crate::job::{Effects, Job};
use crate::runtime::Runtime;
use js_sys::{Array, Function, Promise};
use mjolnir_core::attempt::{Attempt, Read};
use mjolnir_core::engine::{Ended, JobId};
use mjolnir_core::{Key, WriteOp};
use serde_json::Value;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// Thrown inside an attempt when it reads a key the cache does not hold. Handlers should
/// not catch it; if one does, the runtime still knows and re-runs the handler.
#[wasm_bindgen]
#[derive(Debug)]
pub struct CacheMiss;

/// The attempt running right now, if any. Row proxies check `id` so a row that escaped its
/// transaction cannot write into a later one.
#[derive(Debug)]
pub struct Current {
    pub id: u64,
    pub job: JobId,
    pub attempt: Attempt,
}

impl Runtime {
    fn next_attempt_id(&self) -> u64 {
        let id = self.next_attempt.get();
        self.next_attempt.set(id + 1);
        id
    }

    /// Runs one attempt of a synchronous handler, journaling what it does to the page, and
    /// tells the engine how it ended.
    pub(crate) fn run_sync(&self, id: JobId, job: &Job) {
        let attempt = self.engine.borrow_mut().begin(id);
        self.state.begin();
        let journal = DomJournal::start_page().ok();
        job.after_commit.borrow_mut().clear();
        *self.current.borrow_mut() = Some(Current {
            id: self.next_attempt_id(),
            job: id,
            attempt,
        });

        // A re-run reads the form controls as the first attempt did (`forms.rs`).
        let result = job
            .forms
            .borrow_mut()
            .around(|| job.f.apply(&job.this, &job.args));

        let Current { mut attempt, .. } = self.current.borrow_mut().take().expect("set above");
        let effects = Effects {
            state: self.state.finish(),
            dom: journal.and_then(|j| j.finish().ok()),
        };
        attempt.touch(self.state.footprint(&effects.state));
        if let Some(dom) = &effects.dom {
            attempt.touch(dom.footprint());
        }
        *job.effects.borrow_mut() = Some(effects);
        let ended = if result.is_ok() {
            Ended::Returned
        } else {
            Ended::Threw
        };
        *job.outcome.borrow_mut() = result;
        self.engine.borrow_mut().finish(id, attempt, ended);
    }

    /// Runs one attempt of an async handler (`mjolnir.atomic(async tx => …)`) to its end:
    /// it gets a transaction object whose reads wait for missing keys instead of re-running
    /// the handler. Its `mjolnir.state` changes are rolled back on abort; its DOM changes
    /// are not (other code may change the page during its awaits).
    pub(crate) async fn run_async(&self, id: JobId, job: Rc<Job>) {
        let attempt = self.engine.borrow_mut().begin(id);
        let attempt_id = self.next_attempt_id();
        job.after_commit.borrow_mut().clear();
        self.async_attempts
            .borrow_mut()
            .insert(attempt_id, (id, attempt));
        self.state.begin();
        let tx: JsValue = crate::tx::Tx::new(self.rc(), attempt_id).into();
        let result = match job.f.apply(&job.this, &Array::of1(&tx)) {
            Ok(p) => wasm_bindgen_futures::JsFuture::from(Promise::resolve(&p)).await,
            Err(e) => Err(e),
        };
        let (_, mut attempt) = self
            .async_attempts
            .borrow_mut()
            .remove(&attempt_id)
            .expect("inserted above");
        let state = self.state.finish();
        attempt.touch(self.state.footprint(&state));
        *job.effects.borrow_mut() = Some(Effects { state, dom: None });
        let ended = if result.is_ok() {
            Ended::Returned
        } else {
            Ended::Threw
        };
        *job.outcome.borrow_mut() = result;
        self.engine.borrow_mut().finish(id, attempt, ended);
        self.drive();
    }

    /// `mjolnir.afterCommit(f)` (or `tx.afterCommit(f)` for the attempt `attempt`): runs
    /// `f` once the running transaction has committed (or finished with nothing to
    /// commit), never if it fails, and only for the attempt that did; outside any
    /// transaction, at once.
    pub fn after_commit(&self, attempt: Option<u64>, f: Function) -> Result<(), JsValue> {
        let job = match attempt {
            Some(id) => self
                .async_attempts
                .borrow()
                .get(&id)
                .map(|(job, _)| *job)
                .or_else(|| {
                    self.current
                        .borrow()
                        .as_ref()
                        .filter(|c| c.id == id)
                        .map(|c| c.job)
                }),
            None => self.current.borrow().as_ref().map(|c| c.job),
        };
        match job.and_then(|j| self.job(j)) {
            Some(job) => job.after_commit.borrow_mut().push(f),
            None => {
                f.call0(&JsValue::NULL)?;
            }
        }
        Ok(())
    }

    pub fn in_attempt(&self) -> bool {
        self.current.borrow().is_some()
    }

    pub fn current_attempt_id(&self) -> Option<u64> {
        self.current.borrow().as_ref().map(|c| c.id)
    }

    /// Writes buffered by the current attempt; errors if there is none or `attempt_id`
    /// is not it.
    pub fn write(&self, attempt_id: Option<u64>, key: Key, op: WriteOp) -> Result<(), JsValue> {
        if let Some(id) = attempt_id
            && let Some((_, attempt)) = self.async_attempts.borrow_mut().get_mut(&id)
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
        if let Some((_, a)) = self.async_attempts.borrow_mut().get_mut(&id) {
            return from(a.read(key.clone()));
        }
        Ok(self
            .engine
            .borrow()
            .cache()
            .get(key)
            .and_then(|c| c.value.clone()))
    }

    /// Runs `f` on the attempt `attempt` while it runs (sync or async; for `None`, the
    /// synchronous one running now, if any), with that attempt's id: `None` when there is
    /// no such attempt. `f` must not call JavaScript (the attempt is borrowed).
    pub(crate) fn with_attempt<T>(
        &self,
        attempt: Option<u64>,
        f: impl FnOnce(&mut Attempt) -> T,
    ) -> Option<(u64, T)> {
        if let Some(c) = self
            .current
            .borrow_mut()
            .as_mut()
            .filter(|c| attempt.is_none_or(|id| id == c.id))
        {
            return Some((c.id, f(&mut c.attempt)));
        }
        let id = attempt?;
        let mut attempts = self.async_attempts.borrow_mut();
        let (_, a) = attempts.get_mut(&id)?;
        Some((id, f(a)))
    }

    pub fn cache_lacks(&self, key: &Key) -> bool {
        self.engine.borrow().cache().version(key).is_none()
    }

    /// After a fetch, moves an async attempt onto the refreshed cache.
    pub fn resnapshot(&self, id: u64) {
        let snapshot = self.engine.borrow().snapshot();
        if let Some((_, a)) = self.async_attempts.borrow_mut().get_mut(&id) {
            a.resnapshot(snapshot);
        }
    }

    /// Reads `key` in the current attempt (recording it), or from the cache outside one.
    /// `Err(CacheMiss)` when the attempt's snapshot does not hold it. Outside an attempt
    /// nothing waits: a key not cached reads as absent and is loaded for next time, once
    /// (templates read the same missing key on every render).
    pub fn read(&self, key: &Key) -> Result<Option<Value>, JsValue> {
        let mut current = self.current.borrow_mut();
        if let Some(c) = current.as_mut() {
            return match c.attempt.read(key.clone()) {
                Read::Value(v) => Ok(v),
                Read::Miss => Err(CacheMiss.into()),
            };
        }
        drop(current);
        Ok(self.peek(key).flatten())
    }

    /// Reads `key` from the cache, outside any attempt: `None` when it is not cached,
    /// after asking the server for it (once).
    pub fn peek(&self, key: &Key) -> Option<Option<Value>> {
        let peeked = self.engine.borrow_mut().peek(key);
        if peeked.is_none() {
            self.flush_sends();
        }
        peeked
    }
}
