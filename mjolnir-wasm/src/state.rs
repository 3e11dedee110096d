//! `mjolnir.state`: the page's own globals, part of every transaction.
//!
//! The storage and the `mjolnir.state` proxy live in JavaScript (`js/state.js`): handlers
//! read page state far more often than they start transactions, and a read answered by a
//! `Map` in the proxy's trap costs no call into wasm. The runtime only brackets each
//! attempt: [`PageState::begin`] before it, [`PageState::end`] after it, which hands back
//! the attempt's undo log (its writes, with what each name held before), and
//! [`PageState::revert`] if the attempt aborts. Undoing costs what the attempt wrote,
//! whatever the state's size, so rollback stays flat.
//!
//! Values are frozen (`Object.freeze`) when stored: an object mutated in place
//! (`state.list.push(x)`) would change behind the log's back and not be rolled back, so
//! assign a new value instead (`state.list = [...state.list, x]`). Reading and writing
//! outside a transaction is allowed (nothing to roll back then); such a write is announced
//! at once by a `state` event, while an attempt's writes are announced once, when it ends
//! with its effects kept (so no listener runs in the middle of a handler).

use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/state.js")]
extern "C" {
    /// The page state of one runtime.
    #[derive(Debug, Clone)]
    pub type PageState;

    /// `on_change` is called after each write made outside an attempt.
    #[wasm_bindgen(constructor)]
    pub fn new(on_change: &JsValue) -> PageState;

    /// The `mjolnir.state` object.
    #[wasm_bindgen(method, getter)]
    pub fn proxy(this: &PageState) -> JsValue;

    /// The value stored under `name`, `undefined` if none.
    #[wasm_bindgen(method)]
    pub fn get(this: &PageState, name: &str) -> JsValue;

    /// An attempt starts: its writes are logged from now on.
    #[wasm_bindgen(method)]
    pub fn begin(this: &PageState);

    /// The attempt ended: its [`UndoLog`] (`null` when it wrote nothing).
    #[wasm_bindgen(method)]
    fn end(this: &PageState) -> JsValue;

    #[wasm_bindgen(method, js_name = revert)]
    fn revert_log(this: &PageState, log: &JsValue);

    #[wasm_bindgen(method, js_name = footprint)]
    fn footprint_ids(this: &PageState, log: &JsValue) -> js_sys::Array;
}

/// What one attempt wrote to the page state, with the values before: enough to undo it.
#[derive(Debug)]
pub struct UndoLog(JsValue);

impl UndoLog {
    /// Whether the attempt wrote nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_null()
    }
}

impl PageState {
    /// Ends the attempt's log.
    pub fn finish(&self) -> UndoLog {
        UndoLog(self.end())
    }

    /// Ids of the names an attempt wrote (odd numbers, one per name for the page's
    /// life), for [`mjolnir_core::Attempt::touch`].
    pub fn footprint(&self, log: &UndoLog) -> Vec<u64> {
        if log.is_empty() {
            return Vec::new();
        }
        crate::dom::ids(&self.footprint_ids(&log.0))
    }

    /// Undoes an attempt's writes.
    pub fn revert(&self, log: UndoLog) {
        if !log.is_empty() {
            self.revert_log(&log.0);
        }
    }
}
