//! The JavaScript face of the runtime: the object pages know as `mjolnir`.

use crate::error::error_classes;
use crate::rows::{Kv, Table};
use crate::runtime::{Runtime, kind_of};
use js_sys::{Array, Function, Promise};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(
    inline_js = "export function wrap(run) { return function (...args) { return run(this, args); }; }"
)]
extern "C" {
    /// A plain function that passes its `this` and arguments to `run`: what
    /// `mjolnir.atomic` returns, so a wrapped handler can be used wherever a function can.
    fn wrap(run: &JsValue) -> Function;
}

/// The runtime as pages see it.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Mjolnir {
    rt: Rc<Runtime>,
    state: JsValue,
}

/// Connects to the Mjölnir server at `url` (default: `/ws` on the page's own origin) as
/// `user` (default: the page's `?user=` parameter, which only `mjolnir dev` believes).
#[wasm_bindgen]
pub fn connect(url: Option<String>, user: Option<String>) -> Result<Mjolnir, JsValue> {
    let location = web_sys::window().map(|w| w.location());
    let url = match url {
        Some(u) => u,
        None => {
            let loc = location
                .as_ref()
                .ok_or_else(|| JsValue::from_str("no page to connect from: pass a URL"))?;
            let scheme = if loc.protocol()? == "https:" {
                "wss"
            } else {
                "ws"
            };
            format!("{scheme}://{}/ws", loc.host()?)
        }
    };
    let user = user.or_else(|| {
        let search = location.as_ref()?.search().ok()?;
        web_sys::UrlSearchParams::new_with_str(&search)
            .ok()?
            .get("user")
    });
    let rt = Runtime::new(url, user);
    rt.open()?;
    let state = rt.state.proxy();
    Ok(Mjolnir { rt, state })
}

#[wasm_bindgen]
impl Mjolnir {
    /// The user the server confirmed (`null` until connected, or when anonymous).
    #[wasm_bindgen(getter)]
    pub fn user(&self) -> Option<String> {
        self.rt.user.borrow().clone()
    }

    /// `"connecting"`, `"open"` or `"disconnected"`; the `connection` event tells changes.
    #[wasm_bindgen(getter)]
    pub fn connection(&self) -> String {
        self.rt.connection_state().as_str().to_owned()
    }

    /// Transactions started and not yet finished (committed, aborted or failed).
    #[wasm_bindgen(getter)]
    pub fn pending(&self) -> u32 {
        self.rt.pending() as u32
    }

    /// The page's own state, part of every transaction (see `state.rs`).
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> JsValue {
        self.state.clone()
    }

    #[wasm_bindgen(getter)]
    pub fn kv(&self) -> Kv {
        Kv::new(self.rt.clone())
    }

    pub fn table(&self, name: String) -> Table {
        Table::new(self.rt.clone(), None, name)
    }

    /// `fn` as a transaction: returns a function that runs it atomically and returns a
    /// promise of its result.
    pub fn atomic(&self, f: Function) -> Function {
        let rt = self.rt.clone();
        let kind = kind_of(&f);
        let run =
            Closure::<dyn Fn(JsValue, Array) -> Promise>::new(move |this: JsValue, args: Array| {
                rt.call(f.clone(), this, args, kind)
            });
        wrap(&run.into_js_value())
    }

    /// `mjolnir.afterCommit(fn)`: runs `fn` once, after the running transaction commits
    /// (an `alert`, a `fetch`, a log line: effects outside the page that a re-run must not
    /// repeat). Dropped if the attempt is re-run or the transaction fails; at once outside
    /// a transaction.
    #[wasm_bindgen(js_name = afterCommit)]
    pub fn after_commit(&self, f: Function) -> Result<(), JsValue> {
        self.rt.after_commit(None, f)
    }

    /// Automatic mode: every event handler and timer callback of the page becomes a
    /// transaction (see `auto.rs`). Idempotent.
    pub fn auto(&self) {
        if !self.rt.auto_enabled.replace(true) {
            crate::auto::enable(&self.rt);
        }
    }

    /// Renders the `{{ … }}` templates under `root` (default: the document's body) and
    /// keeps them live: they re-render when what they read changes, on any client.
    pub fn templates(&self, root: Option<web_sys::Node>) -> Result<(), JsValue> {
        let root = match root {
            Some(r) => r,
            None => web_sys::window()
                .and_then(|w| w.document())
                .and_then(|d| d.body())
                .map(Into::into)
                .ok_or_else(|| JsValue::from_str("no document to render templates in"))?,
        };
        crate::templates::bind(&self.rt, &root);
        Ok(())
    }

    /// Listens to `connection`, `commit`, `abort` and `change` events.
    pub fn on(&self, event: String, listener: Function) {
        self.rt.on(event, listener);
    }

    /// The error classes, for `instanceof`: `mjolnir.errors.ConflictError`, …
    #[wasm_bindgen(getter)]
    pub fn errors(&self) -> js_sys::Object {
        error_classes()
    }

    /// Sets how conflicts are retried: `maxAttempts`, then delays from `baseDelayMs`
    /// doubling up to `maxDelayMs`, with jitter; the first retry is immediate.
    #[wasm_bindgen(js_name = setRetryPolicy)]
    pub fn set_retry_policy(&self, max_attempts: u32, base_delay_ms: u32, max_delay_ms: u32) {
        self.rt.set_policy(mjolnir_core::RetryPolicy {
            max_attempts,
            base_delay_ms: base_delay_ms.into(),
            max_delay_ms: max_delay_ms.into(),
        });
    }
}
