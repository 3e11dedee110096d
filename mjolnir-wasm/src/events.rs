//! The page's listeners (`mjolnir.on`) and the events the runtime tells them.

use crate::convert::key_to_js;
use js_sys::{Array, Function, Object, Reflect};
use mjolnir_core::{Key, TxnId, Version};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

#[derive(Debug, Default)]
pub struct Listeners(RefCell<Vec<(String, Function)>>);

impl Listeners {
    pub fn on(&self, event: String, f: Function) {
        self.0.borrow_mut().push((event, f));
    }

    fn listens_to(&self, event: &str) -> bool {
        self.0.borrow().iter().any(|(e, _)| e == event)
    }

    /// Calls the listeners of `event` with `detail`. Never while a borrow is held: a
    /// listener may call back into the runtime.
    pub fn emit(&self, event: &str, detail: &JsValue) {
        let fs: Vec<Function> = self
            .0
            .borrow()
            .iter()
            .filter(|(e, _)| e == event)
            .map(|(_, f)| f.clone())
            .collect();
        for f in fs {
            if let Err(e) = f.call1(&JsValue::NULL, detail) {
                web_sys::console::error_2(
                    &format!("mjolnir: a '{event}' listener threw").into(),
                    &e,
                );
            }
        }
    }

    /// `reason` is `conflict` (retried), `error` (the handler threw) or the server's error
    /// code; `error` is the error the handler's promise is rejected with, when it is final,
    /// so a page can show its message.
    pub fn abort(&self, reason: &str, key: Option<&Key>, error: Option<&JsValue>) {
        if !self.listens_to("abort") {
            return; // no detail object to build
        }
        let detail = Object::new();
        let _ = Reflect::set(&detail, &"reason".into(), &reason.into());
        if let Some(k) = key {
            let _ = Reflect::set(&detail, &"key".into(), &key_to_js(k));
        }
        if let Some(e) = error {
            let _ = Reflect::set(&detail, &"error".into(), e);
        }
        self.emit("abort", &detail);
    }

    pub fn commit(&self, txn: &TxnId, version: Version) {
        let detail = Object::new();
        let _ = Reflect::set(&detail, &"txn".into(), &txn.0.clone().into());
        let _ = Reflect::set(&detail, &"version".into(), &version.to_string().into());
        self.emit("commit", &detail);
    }

    pub fn change(&self, keys: &[Key]) {
        self.emit("change", &keys.iter().map(key_to_js).collect::<Array>());
    }
}
