//! The transaction object of the async form: `mjolnir.atomic(async tx => …)`.
//!
//! Handlers that must `await` other things cannot run synchronously against the cache,
//! so they read through `tx`, whose reads return promises that wait for a missing key
//! instead of stopping the handler. Rows found through `tx` read and write like those of
//! the synchronous form.

use crate::convert::{from_js, row_key, to_js};
use crate::error::RuntimeError;
use crate::query::QueryBuilder;
use crate::rows::row_proxy;
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

    /// Reads `key` in this attempt, fetching it first if the cache lacks it.
    async fn read(rt: Rc<Runtime>, id: u64, key: Key) -> Result<Option<Value>, JsValue> {
        loop {
            match rt.read_for(Some(id), &key) {
                Ok(v) => return Ok(v),
                Err(_) if rt.cache_lacks(&key) => {
                    rt.fetch(vec![key.clone()])
                        .await
                        .map_err(|e| JsValue::from(RuntimeError::Rejected(e)))?;
                    rt.resnapshot(id);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[wasm_bindgen]
impl Tx {
    /// `tx.table(name)`: `find(pk)` returns a promise of the row (or `null`).
    pub fn table(&self, name: String) -> TxTable {
        TxTable {
            rt: self.rt.clone(),
            id: self.id,
            name,
        }
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
pub struct TxTable {
    rt: Rc<Runtime>,
    id: u64,
    name: String,
}

#[wasm_bindgen]
impl TxTable {
    pub fn find(&self, pk: JsValue) -> Result<Promise, JsValue> {
        let key = row_key(&self.name, &pk)?;
        let (rt, id) = (self.rt.clone(), self.id);
        Ok(future_to_promise(async move {
            Ok(match Tx::read(rt.clone(), id, key.clone()).await? {
                None => JsValue::NULL,
                Some(_) => row_proxy(&rt, key, Some(id)),
            })
        }))
    }

    pub fn insert(&self, row: JsValue) -> Result<JsValue, JsValue> {
        crate::rows::Table::new(self.rt.clone(), self.name.clone()).insert_in(Some(self.id), row)
    }

    pub fn delete(&self, pk: JsValue) -> Result<(), JsValue> {
        self.rt
            .write(Some(self.id), row_key(&self.name, &pk)?, WriteOp::Delete)
    }
}

/// Queries of the table in this transaction (`query.rs`): their `all` and `count` return
/// promises.
#[wasm_bindgen]
impl TxTable {
    #[wasm_bindgen(js_name = "where", skip_typescript)]
    pub fn where_(
        &self,
        column: JsValue,
        op: JsValue,
        value: JsValue,
    ) -> Result<QueryBuilder, JsValue> {
        self.query().where_(column, op, value)
    }

    #[wasm_bindgen(js_name = orderBy, skip_typescript)]
    pub fn order_by(&self, column: JsValue, dir: JsValue) -> Result<QueryBuilder, JsValue> {
        self.query().order_by(column, dir)
    }

    #[wasm_bindgen(skip_typescript)]
    pub fn limit(&self, n: JsValue) -> Result<QueryBuilder, JsValue> {
        self.query().limit(n)
    }

    #[wasm_bindgen(skip_typescript)]
    pub fn all(&self) -> Result<JsValue, JsValue> {
        self.query().all()
    }

    #[wasm_bindgen(skip_typescript)]
    pub fn count(&self) -> Result<JsValue, JsValue> {
        self.query().count()
    }
}

impl TxTable {
    fn query(&self) -> QueryBuilder {
        QueryBuilder::new(self.rt.clone(), Some(self.id), self.name.clone())
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
        let (rt, id) = (self.rt.clone(), self.id);
        future_to_promise(async move {
            Ok(Tx::read(rt, id, Key::kv(key))
                .await?
                .map_or(JsValue::UNDEFINED, |v| to_js(&v)))
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
