//! What a re-run of a handler reads from the page's form controls: the values they had
//! when its event fired, not what they hold now.
//!
//! A handler's attempt can run again long after its event (a conflict found a round trip
//! later, a cascade, a cache miss), and meanwhile the user may have typed into the box the
//! handler reads. Figure 4's `send()` must still send the amount that was typed when the
//! button was clicked, so the first attempt records every form control property it reads
//! (`value`, `checked`, …) and later attempts of the same call read those recordings. A
//! property the handler itself sets during an attempt reads back as set.
//!
//! Done by wrapping the getters of those properties on the form elements' prototypes,
//! once per page; outside an attempt the wrapper only forwards.

use js_sys::Object;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
let log = null;
let written = null;
const PROPS = ['value', 'checked', 'valueAsNumber', 'valueAsDate', 'selectedIndex'];
export function install() {
  if (globalThis.__mjolnirForms) return;
  globalThis.__mjolnirForms = true;
  for (const C of [globalThis.HTMLInputElement, globalThis.HTMLTextAreaElement, globalThis.HTMLSelectElement]) {
    if (typeof C !== 'function') continue;
    for (const prop of PROPS) {
      const d = Object.getOwnPropertyDescriptor(C.prototype, prop);
      if (!d || !d.get || !d.configurable) continue;
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
"#)]
extern "C" {
    /// Wraps the form controls' getters (once per page).
    pub fn install();
    /// An attempt starts: form reads answer from `saved` (what earlier attempts of the
    /// same call read), and record what they read first.
    fn begin(saved: &JsValue);
    /// The attempt ended: what it (and earlier attempts) read, for the next attempt.
    fn end() -> Object;
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
}
