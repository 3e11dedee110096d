//! The transaction object of the async form: `mjolnir.atomic(async tx => …)`.
//!
//! Handlers that must `await` other things cannot run synchronously against the cache,
//! so they read through `tx`, whose reads return promises that wait for a missing key
//! instead of stopping the handler. Rows found through `tx` read and write like those of
//! the synchronous form.

use crate::convert::{from_js, to_js};
use crate::error::RuntimeError;
use crate::rows::Table;
use crate::runtime::Runtime;
use js_sys::Promise;
use mjolnir_core::{Key, WriteOp};
use serde_json::Value;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

/// The `tx` an async handler receives. Valid until the handler's promise settles.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Tx {
    rt: Rc<Runtime>,
    id: u64,
}

impl Tx {
    pub fn new(rt: Rc<Runtime>, id: u64) -> Tx {
        Tx { rt, id }
    }

    /// A promise of `key` read in the async attempt `id` (fetched first if the cache lacks
    /// it), as `show` turns it into JavaScript.
    pub(crate) fn read(
        rt: Rc<Runtime>,
        id: u64,
        key: Key,
        show: fn(&Rc<Runtime>, u64, Key, Option<Value>) -> JsValue,
    ) -> Promise {
        let read = move |rt: &Rc<Runtime>| match rt.read_for(Some(id), &key) {
            Ok(v) => Ok(Ok(show(rt, id, key.clone(), v))),
            Err(_) if rt.cache_lacks(&key) => Ok(Err(vec![key.clone()])),
            Err(e) => Err(e),
        };
        Tx::wait(rt, id, Box::new(read))
    }

    /// A promise of what `read` gives in the async attempt `id`: `Ok(Err(keys))` says it
    /// missed those keys, which are fetched before it runs again on the refreshed cache.
    /// Every read of the async form goes through this one loop, since each `async` block
    /// costs the module its own copy of the promise machinery.
    pub(crate) fn wait(rt: Rc<Runtime>, id: u64, read: Box<Reader>) -> Promise {
        future_to_promise(async move {
            loop {
                match read(&rt)? {
                    Ok(value) => return Ok(value),
                    Err(missed) => {
                        rt.fetch(missed)
                            .await
                            .map_err(|e| JsValue::from(RuntimeError::Rejected(e)))?;
                        rt.resnapshot(id);
                    }
                }
            }
        })
    }
}

/// One try of a read in an async attempt: the value, or the keys it missed.
pub(crate) type Reader = dyn Fn(&Rc<Runtime>) -> Result<Result<JsValue, Vec<Key>>, JsValue>;

#[wasm_bindgen]
impl Tx {
    /// `tx.table(name)`: `find(pk)` and its queries' `all()` and `count()` return
    /// promises (see `rows.rs`).
    #[wasm_bindgen(unchecked_return_type = "TxTable")]
    pub fn table(&self, name: String) -> Table {
        Table::new(self.rt.clone(), Some(self.id), name)
    }

    /// `tx.afterCommit(fn)`: runs `fn` once this transaction has committed.
    #[wasm_bindgen(js_name = afterCommit)]
    pub fn after_commit(&self, f: js_sys::Function) -> Result<(), JsValue> {
        self.rt.after_commit(Some(self.id), f)
    }

    /// `tx.kv`: `get(key)` returns a promise of the value.
    #[wasm_bindgen(getter)]
    pub fn kv(&self) -> TxKv {
        TxKv {
            rt: self.rt.clone(),
            id: self.id,
        }
    }
}

#[wasm_bindgen]
#[derive(Debug)]
pub struct TxKv {
    rt: Rc<Runtime>,
    id: u64,
}

#[wasm_bindgen]
impl TxKv {
    pub fn get(&self, key: String) -> Promise {
        Tx::read(self.rt.clone(), self.id, Key::kv(key), |_, _, _, v| {
            v.map_or(JsValue::UNDEFINED, |v| to_js(&v))
        })
    }

    pub fn set(&self, key: String, value: JsValue) -> Result<(), JsValue> {
        self.rt.write(
            Some(self.id),
            Key::kv(key),
            WriteOp::Put {
                value: from_js(value)?,
            },
        )
    }

    pub fn delete(&self, key: String) -> Result<(), JsValue> {
        self.rt.write(Some(self.id), Key::kv(key), WriteOp::Delete)
    }
}
