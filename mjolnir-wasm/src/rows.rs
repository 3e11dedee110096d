//! Rows that read and write like plain objects, and the key/value store.
//!
//! `table('users').find('alice')` returns a proxy over the running attempt's view of that
//! row: reading `row.balance` records the read (with the version seen) and sees the
//! attempt's own writes; `row.balance -= 10` buffers an update of that column.

use crate::convert::{data_descriptor, from_js, row_key, to_js};
use crate::runtime::Runtime;
use crate::tx::Tx;
use js_sys::Reflect;
use mjolnir_core::key::quoted;
use mjolnir_core::protocol::PkKind;
use mjolnir_core::{Key, Pk, Query, WriteOp};
use serde_json::{Map, Value};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// `mjolnir.table(name)`, `tx.table(name)` (with `tx` set), and the queries built from
/// them with `where`, `orderBy` and `limit` (`query.rs`, which declares the TypeScript
/// types of all three): a table is the query of all its rows. One class rather than three,
/// since each method a class exports costs the module its own glue.
#[wasm_bindgen(skip_typescript)]
#[derive(Clone, Debug)]
pub struct Table {
    pub(crate) rt: Rc<Runtime>,
    /// The async attempt of a `tx.table(name)`: its reads return promises. `None` for
    /// `mjolnir.table(name)`, which reads and writes in the synchronous attempt running
    /// when it is used.
    pub(crate) tx: Option<u64>,
    /// The table's name, and what `where`, `orderBy`, `limit` and `search` added to it.
    pub(crate) query: Query,
}

impl Table {
    pub fn new(rt: Rc<Runtime>, tx: Option<u64>, name: String) -> Table {
        Table {
            rt,
            tx,
            query: Query::table(name),
        }
    }

    /// The table's name, for `find`, `insert` and `delete`, which a query does not have.
    fn name(&self) -> Result<&str, JsValue> {
        let q = &self.query;
        if q.filter.is_empty() && q.order.is_empty() && q.limit.is_none() && q.search.is_none() {
            return Ok(&q.table);
        }
        Err(js_sys::TypeError::new("find, insert and delete are a table's, not a query's").into())
    }

    /// The attempt this table's writes go to.
    fn attempt(&self) -> Option<u64> {
        self.tx.or_else(|| self.rt.current_attempt_id())
    }
}

#[wasm_bindgen]
impl Table {
    /// The row with primary key `pk` as an object (a live view inside a transaction), or
    /// `null` if there is none. Inside a transaction, a row not yet loaded stops the
    /// handler; it runs again once the row is here. `tx.table(name).find(pk)` returns a
    /// promise instead, which waits for the row.
    pub fn find(&self, pk: JsValue) -> Result<JsValue, JsValue> {
        let key = row_key(self.name()?, &pk)?;
        let Some(id) = self.tx else {
            return match self.rt.read(&key)? {
                None => Ok(JsValue::NULL),
                Some(_) => Ok(row_proxy(&self.rt, key, self.rt.current_attempt_id())),
            };
        };
        let promise = Tx::read(self.rt.clone(), id, key, |rt, id, key, row| match row {
            None => JsValue::NULL,
            Some(_) => row_proxy(rt, key, Some(id)),
        });
        Ok(promise.into())
    }

    /// Inserts a row. Its primary key comes from the row (a uuid key left out is
    /// generated). Returns the new row.
    pub fn insert(&self, row: JsValue) -> Result<JsValue, JsValue> {
        self.insert_in(self.attempt(), row)
    }

    /// Deletes the row with primary key `pk`.
    pub fn delete(&self, pk: JsValue) -> Result<(), JsValue> {
        let key = row_key(self.name()?, &pk)?;
        self.rt.write(self.attempt(), key, WriteOp::Delete)
    }
}

/// `mjolnir.kv`.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Kv {
    rt: Rc<Runtime>,
}

impl Kv {
    pub fn new(rt: Rc<Runtime>) -> Kv {
        Kv { rt }
    }
}

#[wasm_bindgen]
impl Kv {
    /// The value at `key`, or `undefined`.
    pub fn get(&self, key: String) -> Result<JsValue, JsValue> {
        Ok(self
            .rt
            .read(&Key::kv(key))?
            .map_or(JsValue::UNDEFINED, |v| to_js(&v)))
    }

    pub fn set(&self, key: String, value: JsValue) -> Result<(), JsValue> {
        let value = from_js(value)?;
        self.rt.write(
            self.rt.current_attempt_id(),
            Key::kv(key),
            WriteOp::Put { value },
        )
    }

    pub fn delete(&self, key: String) -> Result<(), JsValue> {
        self.rt
            .write(self.rt.current_attempt_id(), Key::kv(key), WriteOp::Delete)
    }
}

fn random_uuid() -> String {
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into()).ok();
    crypto
        .and_then(|c| {
            js_sys::Function::from(Reflect::get(&c, &"randomUUID".into()).ok()?)
                .call0(&c)
                .ok()
        })
        .and_then(|v| v.as_string())
        .unwrap_or_default()
}

#[wasm_bindgen(module = "/js/rows.js")]
extern "C" {
    #[wasm_bindgen(js_name = rowProxy)]
    fn row_proxy_of(row: Row) -> JsValue;
}

/// The row `key` as a proxy: every property read goes through the runtime (recorded, with
/// own writes applied), every assignment becomes a buffered update of that column. The
/// proxy and its handler are JavaScript (`js/rows.js`), one handler for all rows, so a
/// row costs one small object here rather than a set of new closures.
pub(crate) fn row_proxy(rt: &Rc<Runtime>, key: Key, attempt: Option<u64>) -> JsValue {
    row_proxy_of(Row {
        rt: rt.clone(),
        key,
        attempt,
    })
}

/// The wasm half of a row object: which row, read in which attempt.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Row {
    rt: Rc<Runtime>,
    key: Key,
    attempt: Option<u64>,
}

impl Row {
    /// The row as the attempt sees it (empty when it is gone).
    fn current(&self) -> Result<Map<String, Value>, JsValue> {
        match self.rt.read_for(self.attempt, &self.key)? {
            Some(Value::Object(m)) => Ok(m),
            _ => Ok(Map::new()),
        }
    }
}

#[wasm_bindgen]
impl Row {
    /// The column `name` (`undefined` if the row has none).
    pub fn get(&self, name: &str) -> Result<JsValue, JsValue> {
        Ok(self.current()?.get(name).map_or(JsValue::UNDEFINED, to_js))
    }

    /// Buffers an update of the column `name`.
    pub fn set(&self, name: String, value: JsValue) -> Result<(), JsValue> {
        let mut set = Map::new();
        set.insert(name, from_js(value)?);
        self.rt
            .write(self.attempt, self.key.clone(), WriteOp::Update { set })
    }

    /// The row's column names.
    pub fn keys(&self) -> Result<js_sys::Array, JsValue> {
        Ok(self
            .current()?
            .keys()
            .map(|k| JsValue::from_str(k))
            .collect())
    }

    /// The property descriptor of the column `name`, `undefined` if the row has none.
    pub fn descriptor(&self, name: &str) -> Result<JsValue, JsValue> {
        Ok(self
            .current()?
            .get(name)
            .map_or(JsValue::UNDEFINED, |v| data_descriptor(&to_js(v))))
    }
}

impl Table {
    /// Inserts `row` in `attempt` (the running one for `mjolnir.table`, a `tx`'s for the
    /// async form).
    fn insert_in(&self, attempt: Option<u64>, row: JsValue) -> Result<JsValue, JsValue> {
        let name = self.name()?;
        let Value::Object(mut row) = from_js(row)? else {
            return Err(js_sys::TypeError::new("insert takes an object").into());
        };
        let info = self.rt.tables.borrow().get(name).cloned().ok_or_else(|| {
            JsValue::from(js_sys::TypeError::new(&format!(
                "no table {} (or not connected yet)",
                quoted(name)
            )))
        })?;
        let pk = match (row.get(&info.pk), info.pk_kind) {
            (Some(Value::String(s)), PkKind::Text | PkKind::Uuid) => Pk::Text(s.clone()),
            (Some(Value::Number(n)), PkKind::Integer) if n.is_i64() => {
                Pk::Int(n.as_i64().unwrap_or_default())
            }
            (None, PkKind::Uuid) => {
                let id = random_uuid();
                row.insert(info.pk.clone(), Value::String(id.clone()));
                Pk::Text(id)
            }
            _ => {
                return Err(js_sys::TypeError::new(&format!(
                    "{}.insert needs {} for {}",
                    name,
                    match info.pk_kind {
                        PkKind::Text => "a string",
                        PkKind::Integer => "an integer",
                        PkKind::Uuid => "a uuid string (or none, to have one made)",
                    },
                    info.pk
                ))
                .into());
            }
        };
        let key = Key::row(name, pk);
        self.rt
            .write(attempt, key.clone(), WriteOp::Insert { row })?;
        Ok(row_proxy(&self.rt, key, attempt))
    }
}
