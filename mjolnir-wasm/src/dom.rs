//! DOM rollback: what one handler attempt changed in the page, and how to undo it.
//!
//! [`DomJournal::start`] begins recording before the attempt runs; [`DomJournal::finish`]
//! ends it once the handler returns, and [`DomChanges::revert`] undoes the attempt if it
//! aborts.
//!
//! # What is recorded
//!
//! A `MutationObserver` on the root, over its whole subtree, with old values: attribute
//! changes, text (character data) changes and child-list changes. Its records are taken
//! synchronously with `takeRecords()` at the end of the attempt; the observer's callback
//! does nothing and, since the queue is emptied before the observer is disconnected, is
//! never even called. Records are therefore complete and in order without waiting for a
//! microtask, and nothing else can run between the handler and the end of the journal.
//!
//! Changing the `value`, `checked` or `indeterminate` of an `<input>`, the `value` of a
//! `<textarea>` or the selection of a `<select>` changes no attribute and makes no record.
//! That is the common way handlers touch forms, so the journal also snapshots those
//! properties of every form control under the root when it starts, and restores, after the
//! records are undone, those that differ.
//!
//! The journal itself is JavaScript (`js/dom.js`): every step of it is a DOM call, and one
//! runs around every transaction, so doing it in wasm would pay a call across the boundary
//! per record field and per control property. One `MutationObserver` is reused by journals
//! that do not overlap, and a document's controls are found through its live (cached)
//! collections by tag name, so a journal over an unchanged page with no controls costs a
//! few calls. This module is its Rust face.
//!
//! # What is not reverted
//!
//! Other state that lives outside attributes and the tree: focus and text selection,
//! scroll positions, canvas contents, media playback, `<dialog>` top-layer state, the
//! dirty flag of a form control, file inputs' chosen files, custom elements' internal
//! state, shadow trees (a `MutationObserver` does not see into them), and anything outside
//! the document (timers, storage, requests).
//!
//! An attribute that the attempt removed comes back at the end of its element's attribute
//! list: `MutationRecord`s do not say where it was. Attribute order has no meaning in HTML,
//! but it shows in `outerHTML` and in `element.attributes`.
//!
//! # Borrows
//!
//! Reverting calls DOM methods, and those can run page JavaScript synchronously (custom
//! elements' `connectedCallback`, `disconnectedCallback` and `attributeChangedCallback`).
//! [`DomChanges`] is immutable plain data, so no Rust borrow is held while that happens;
//! callers must not hold their own `RefCell` borrows across [`DomChanges::revert`] either.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::Node;

#[wasm_bindgen(module = "/js/dom.js")]
extern "C" {
    #[derive(Debug)]
    type Journal;

    #[wasm_bindgen(constructor, catch)]
    fn new(root: Option<&Node>) -> Result<Journal, JsValue>;

    /// The changes (`null` when none); stops recording.
    #[wasm_bindgen(method, catch)]
    fn finish(this: &Journal) -> Result<JsValue, JsValue>;

    /// Stops recording; idempotent.
    #[wasm_bindgen(method)]
    fn stop(this: &Journal);

    #[derive(Debug)]
    type Changes;

    #[wasm_bindgen(method)]
    fn revert(this: &Changes);

    #[wasm_bindgen(method, js_name = footprint)]
    fn footprint_ids(this: &Changes) -> js_sys::Array;
}

/// Records the DOM changes of one handler attempt. Started before the attempt, finished
/// right after it, with no JavaScript turn in between.
#[derive(Debug)]
pub struct DomJournal(Option<Journal>);

/// What one attempt changed in the DOM, ready to be undone.
#[derive(Debug)]
pub struct DomChanges(Option<Changes>);

impl DomJournal {
    /// Starts recording changes to `root` and everything under it.
    pub fn start(root: &Node) -> Result<DomJournal, JsValue> {
        Journal::new(Some(root)).map(|j| DomJournal(Some(j)))
    }

    /// Starts recording changes to the whole page (its document element).
    pub fn start_page() -> Result<DomJournal, JsValue> {
        Journal::new(None).map(|j| DomJournal(Some(j)))
    }

    /// Stops recording and returns what changed. Call it synchronously after the attempt.
    pub fn finish(mut self) -> Result<DomChanges, JsValue> {
        let journal = self.0.take().expect("a journal is finished once");
        let changes = journal.finish()?;
        Ok(DomChanges(
            (!changes.is_null()).then(|| changes.unchecked_into()),
        ))
    }
}

impl Drop for DomJournal {
    /// A journal dropped without [`DomJournal::finish`] (an early return) stops observing,
    /// so it does not pile up records for the rest of the page's life.
    fn drop(&mut self) {
        if let Some(journal) = &self.0 {
            journal.stop();
        }
    }
}

impl DomChanges {
    /// Whether the attempt changed nothing this journal can see.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Ids of the nodes the attempt changed (even numbers, one per node for the page's
    /// life): what [`mjolnir_core::Attempt::touch`] records, so that the engine undoes
    /// overlapping attempts latest first.
    pub fn footprint(&self) -> Vec<u64> {
        match &self.0 {
            Some(changes) => ids(&changes.footprint_ids()),
            None => Vec::new(),
        }
    }

    /// Undoes the attempt's changes: the records in reverse order, then the form controls'
    /// properties, for each control that still shows what the attempt left. One that
    /// differs was changed since, by the user typing while the commit was in flight, say:
    /// putting back the value from before the attempt would throw that typing away.
    ///
    /// Best effort: a step that the DOM refuses (because something outside the attempt
    /// changed the same nodes since) is reported on the console and skipped, and the rest
    /// is still undone.
    pub fn revert(&self) {
        if let Some(changes) = &self.0 {
            changes.revert();
        }
    }
}

/// The numbers of a JavaScript array of effect ids.
pub(crate) fn ids(array: &js_sys::Array) -> Vec<u64> {
    array
        .iter()
        .filter_map(|v| v.as_f64())
        .map(|f| f as u64)
        .collect()
}
