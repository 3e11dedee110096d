//! What a re-run of a handler reads from the page's form controls: the values they had
//! when its event fired, not what they hold now.
//!
//! A handler's attempt can run again long after its event (a conflict found a round trip
//! later, a cascade, a cache miss), and meanwhile the user may have typed into the box the
//! handler reads. Figure 4's `send()` must still send the amount that was typed when the
//! button was clicked, so the first attempt records every form control property it reads
//! (`value`, `checked`, …) and later attempts of the same call read those recordings. A
//! call whose first attempt does not settle it (it waits for a commit, a fetch, a retry)
//! also records, before the event ends, every control of the document, so that a re-run
//! that reads a box the first attempt never reached (it stopped at a cache miss) still
//! sees it as it was at the click. A property the handler itself sets during an attempt
//! reads back as set.
//!
//! Done by wrapping the getters of those properties on the form elements' prototypes,
//! once per page; outside an attempt the wrapper only forwards.

use js_sys::Object;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
let log = null;
let written = null;
const PROPS = ['value', 'checked', 'valueAsNumber', 'valueAsDate', 'selectedIndex'];
// What `snapshot` records of every control: enough to answer any of PROPS but the two
// derived ones, which a handler rarely reads (those read live unless read in the event).
const WHOLE = { INPUT: ['value', 'checked'], TEXTAREA: ['value'], SELECT: ['value', 'selectedIndex'] };
const getters = new Map();
export function install() {
  if (globalThis.__mjolnirForms) return;
  globalThis.__mjolnirForms = true;
  for (const C of [globalThis.HTMLInputElement, globalThis.HTMLTextAreaElement, globalThis.HTMLSelectElement]) {
    if (typeof C !== 'function') continue;
    for (const prop of PROPS) {
      const d = Object.getOwnPropertyDescriptor(C.prototype, prop);
      if (!d || !d.get || !d.configurable) continue;
      getters.set(C.prototype, Object.assign(getters.get(C.prototype) ?? {}, { [prop]: d.get }));
      Object.defineProperty(C.prototype, prop, {
        configurable: true,
        enumerable: d.enumerable,
        get() {
          const now = d.get.call(this);
          if (log === null || (written.get(this)?.has(prop))) return now;
          let seen = log.get(this);
          if (!seen) log.set(this, (seen = new Map()));
          if (!seen.has(prop)) seen.set(prop, now);
          return seen.get(prop);
        },
        set: d.set && function (v) {
          if (log !== null) {
            let mine = written.get(this);
            if (!mine) written.set(this, (mine = new Set()));
            mine.add(prop);
          }
          d.set.call(this, v);
        },
      });
    }
  }
}
export function begin(saved) { log = saved ?? new Map(); written = new Map(); }
export function end() { const l = log; log = null; written = null; return l; }
export function snapshot(saved) {
  for (const el of document.querySelectorAll('input, textarea, select')) {
    const own = getters.get(Object.getPrototypeOf(el));
    let seen = saved.get(el);
    for (const prop of WHOLE[el.tagName] ?? []) {
      if (!own?.[prop] || seen?.has(prop)) continue;
      if (!seen) saved.set(el, (seen = new Map()));
      seen.set(prop, own[prop].call(el));
    }
  }
}
"#)]
extern "C" {
    /// Wraps the form controls' getters (once per page).
    pub fn install();
    /// An attempt starts: form reads answer from `saved` (what earlier attempts of the
    /// same call read), and record what they read first.
    fn begin(saved: &JsValue);
    /// The attempt ended: what it (and earlier attempts) read, for the next attempt.
    fn end() -> Object;
    /// Adds every form control of the document, as it is now, to `saved`.
    fn snapshot(saved: &Object);
}

/// What the attempts of one call have read from form controls so far.
#[derive(Debug, Default)]
pub struct FormReads(Option<Object>);

impl FormReads {
    /// Brackets one attempt: form reads inside `run` see what earlier attempts read.
    pub fn around<T>(&mut self, run: impl FnOnce() -> T) -> T {
        begin(self.0.as_ref().map_or(&JsValue::UNDEFINED, |o| o.as_ref()));
        let out = run();
        self.0 = Some(end());
        out
    }

    /// The call's first attempt has ended without settling it, still inside the event
    /// that made the call: a later attempt may read a control the first one did not reach
    /// (it stopped at a cache miss, say), so every control is recorded as it is now.
    pub fn keep_the_moment(&self) {
        if let Some(saved) = &self.0 {
            snapshot(saved);
        }
    }
}
