//! One call of a wrapped handler as the browser sees it: the function and its arguments,
//! what its last attempt left on the page, and the promise it settles. The engine
//! (`mjolnir_core::engine`) decides when it runs and how it ends; this only carries out.

use crate::dom::DomChanges;
use crate::state::UndoLog;
use js_sys::{Array, Function, Promise};
use mjolnir_core::engine::Kind;
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

/// What an attempt left on the page, so it can be undone.
#[derive(Debug)]
pub struct Effects {
    pub state: UndoLog,
    pub dom: Option<DomChanges>,
}

/// A promise not made until someone needs it: most handlers finish in their first
/// attempt, inside the call, and then cost none.
#[derive(Debug)]
enum Settling {
    /// Not settled, and nobody holds a promise yet.
    Open,
    /// A promise was handed out: settle it through these.
    Promised { resolve: Function, reject: Function },
    /// Settled before anyone asked for a promise.
    Settled(Result<JsValue, JsValue>),
}

#[derive(Debug)]
pub struct Job {
    pub f: Function,
    pub kind: Kind,
    pub this: JsValue,
    pub args: Array,
    /// What the last attempt returned, or the error it threw.
    pub outcome: RefCell<Result<JsValue, JsValue>>,
    /// The effects of the last attempt, until they are kept for good or undone.
    pub effects: RefCell<Option<Effects>>,
    /// What the first attempt whose effects stayed returned: an event handler's return
    /// value (`return false` in an inline handler) must reach the browser synchronously,
    /// before the commit is known.
    pub first_value: RefCell<Option<JsValue>>,
    /// What the last attempt asked to run once it commits (`mjolnir.afterCommit`).
    pub after_commit: RefCell<Vec<Function>>,
    /// What its attempts read from form controls (the first one's reads win).
    pub forms: RefCell<crate::forms::FormReads>,
    settling: RefCell<Settling>,
}

impl Job {
    pub fn new(f: Function, kind: Kind, this: JsValue, args: Array) -> Job {
        Job {
            f,
            kind,
            this,
            args,
            outcome: RefCell::new(Ok(JsValue::UNDEFINED)),
            effects: RefCell::new(None),
            first_value: RefCell::new(None),
            after_commit: RefCell::new(Vec::new()),
            forms: RefCell::new(Default::default()),
            settling: RefCell::new(Settling::Open),
        }
    }

    /// The job's promise: settled already if the job is.
    pub fn promise(&self) -> Promise {
        let settled = match &*self.settling.borrow() {
            Settling::Settled(result) => Some(result.clone()),
            _ => None,
        };
        match settled {
            Some(Ok(v)) => Promise::resolve(&v),
            Some(Err(e)) => Promise::reject(&e),
            None => Promise::new(&mut |resolve, reject| {
                *self.settling.borrow_mut() = Settling::Promised { resolve, reject };
            }),
        }
    }

    /// How the job ended, if it has and no promise was handed out.
    pub fn settled(&self) -> Option<Result<JsValue, JsValue>> {
        match &*self.settling.borrow() {
            Settling::Settled(result) => Some(result.clone()),
            _ => None,
        }
    }

    pub fn settle(&self, result: Result<JsValue, JsValue>) {
        let before = self.settling.replace(Settling::Settled(result.clone()));
        if let Settling::Promised { resolve, reject } = before {
            let _ = match result {
                Ok(v) => resolve.call1(&JsValue::NULL, &v),
                Err(e) => reject.call1(&JsValue::NULL, &e),
            };
        }
    }

    /// Undoes the last attempt's effects, if any are left.
    pub fn revert(&self, state: &crate::state::PageState) {
        if let Some(effects) = self.effects.borrow_mut().take() {
            state.revert(effects.state);
            if let Some(dom) = effects.dom {
                dom.revert();
            }
        }
    }
}
