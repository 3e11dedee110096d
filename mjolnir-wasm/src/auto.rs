//! Automatic mode (the paper's §4): every event handler and timer callback of the page is a
//! transaction, with no `mjolnir.atomic` in sight.
//!
//! `mjolnir.auto()` wraps listeners added with `addEventListener`, inline `on…` attribute
//! handlers (present and future), and `setTimeout`/`setInterval` callbacks (`js/auto.js`
//! does the wrapping; the `<script>` drop-in installs it before the wasm has loaded). It
//! also keeps a form without an `action` from reloading the page on submit. A wrapped
//! handler that reads and writes no Mjölnir state finishes in its first attempt with
//! nothing sent, at the cost of a cache snapshot and a DOM journal. Elements inside
//! `data-mjolnir="off"` (and listeners on them) are left alone, and so are `async`
//! listeners, whose code after an `await` could not be part of the transaction: they use
//! `mjolnir.atomic(async tx => …)` explicitly.

use crate::runtime::Runtime;
use js_sys::{Array, Function};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(module = "/js/auto.js")]
extern "C" {
    fn install(run: &JsValue);
    #[wasm_bindgen(js_name = runtimeTimeout)]
    fn runtime_timeout(callback: &JsValue, ms: i32);
}

/// `setTimeout` for the runtime's own timers (retry delays, reconnects): never wrapped as
/// a transaction, which would queue it behind the handler that is waiting for it.
pub fn set_timeout(callback: &JsValue, ms: i32) {
    runtime_timeout(callback, ms);
}

/// Turns automatic mode on for the whole page. Call it once.
pub fn enable(rt: &Rc<Runtime>) {
    let rt = rt.clone();
    let run = Closure::<dyn Fn(Function, JsValue, Array) -> JsValue>::new(
        move |f: Function, this: JsValue, args: Array| rt.call_handler(f, this, args),
    );
    install(&run.into_js_value());
}
