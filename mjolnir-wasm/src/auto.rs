//! Automatic mode (the paper's §4): every event handler and timer callback of the page is a
//! transaction, with no `mjolnir.atomic` in sight.
//!
//! `mjolnir.auto()` wraps listeners added with `addEventListener`, inline `on…` attribute
//! handlers (present and future), and `setTimeout`/`setInterval` callbacks. A wrapped
//! handler that reads and writes no Mjölnir state finishes in its first attempt with
//! nothing sent, at the cost of a cache snapshot and a DOM journal. Elements inside
//! `data-mjolnir="off"` (and listeners on them) are left alone, and so are `async`
//! listeners, whose code after an `await` could not be part of the transaction: they use
//! `mjolnir.atomic(async tx => …)` explicitly.

use crate::runtime::Runtime;
use js_sys::{Array, Function};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(inline_js = r#"
export function install(run) {
  const wrapped = new WeakMap();
  const ours = new WeakSet();
  function wrap(f) {
    // Async functions are left alone: their code after an await would run outside the
    // transaction. They become transactions with mjolnir.atomic(async tx => ...).
    if (typeof f !== 'function' || ours.has(f) || f.constructor.name === 'AsyncFunction') return f;
    let w = wrapped.get(f);
    if (!w) {
      w = function (...args) { return run(f, this, args); };
      wrapped.set(f, w);
      ours.add(w);
    }
    return w;
  }
  function optedOut(target) {
    return typeof target.closest === 'function' && target.closest('[data-mjolnir="off"]') !== null;
  }
  const add = EventTarget.prototype.addEventListener;
  const remove = EventTarget.prototype.removeEventListener;
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    const l = typeof listener === 'function' && !optedOut(this) ? wrap(listener) : listener;
    return add.call(this, type, l, options);
  };
  EventTarget.prototype.removeEventListener = function (type, listener, options) {
    return remove.call(this, type, (typeof listener === 'function' && wrapped.get(listener)) || listener, options);
  };
  for (const name of ['setTimeout', 'setInterval']) {
    const original = globalThis[name];
    globalThis[name] = function (callback, ...rest) {
      return original.call(this, typeof callback === 'function' ? wrap(callback) : callback, ...rest);
    };
  }
  function wrapInline(el) {
    if (!(el instanceof Element) || optedOut(el)) return;
    for (const attr of el.getAttributeNames()) {
      if (attr.startsWith('on') && typeof el[attr] === 'function' && !ours.has(el[attr])) {
        el[attr] = wrap(el[attr]);
      }
    }
  }
  function wrapTree(root) {
    wrapInline(root);
    if (root.querySelectorAll) root.querySelectorAll('*').forEach(wrapInline);
  }
  wrapTree(document.documentElement);
  new MutationObserver(function (records) {
    for (const r of records) {
      if (r.type === 'attributes') wrapInline(r.target);
      else r.addedNodes.forEach(wrapTree);
    }
  }).observe(document, { subtree: true, childList: true, attributes: true });
}
"#)]
extern "C" {
    fn install(run: &JsValue);
}

/// Turns automatic mode on for the whole page. Call it once.
pub fn enable(rt: &Rc<Runtime>) {
    let rt = rt.clone();
    let run = Closure::<dyn Fn(Function, JsValue, Array) -> JsValue>::new(
        move |f: Function, this: JsValue, args: Array| rt.call_handler(f, this, args),
    );
    install(&run.into_js_value());
}
