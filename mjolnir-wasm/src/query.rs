//! Queries from JavaScript: `mjolnir.table('todos').where({done: false}).orderBy('created',
//! 'desc').limit(50).all()`.
//!
//! A builder is immutable (each step returns a new one, so a page can keep one and reuse
//! it) and holds a core [`Query`]; its shape is checked at every step with
//! [`Query::misshapen`], so a bad operator, operand or limit throws where it is written.
//! The terminals read through [`Attempt::query_rows`](mjolnir_core::Attempt::query_rows)
//! in the attempt the builder belongs to, and hand out the same row objects as `find`
//! (`rows::row_proxy`): a miss stops a synchronous handler as `find`'s does, and a `tx`'s
//! builder (the async form) returns promises that wait for the fetch instead. Outside a
//! transaction they read the cache as `find` does: a result not cached reads as empty and
//! starts loading.

use crate::attempts::CacheMiss;
use crate::convert::{from_js, to_js};
use crate::error::RuntimeError;
use crate::rows::row_proxy;
use crate::runtime::Runtime;
use js_sys::{Array, Object};
use mjolnir_core::attempt::Read;
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::query::{MAX_ROWS, Op};
use mjolnir_core::{ErrorKind, Key, Query};
use serde_json::Value;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

// The builders' types are written here rather than derived from the signatures below: `where`
// has two forms, and a `tx`'s builder returns promises where the other returns values.
#[wasm_bindgen(typescript_custom_section)]
const QUERY_TYPES: &str = r#"
/** A value a query compares a column with. */
export type QueryValue = string | number | boolean;
/** The comparisons of `where(column, op, value)`: SQL's, so `!=` does not match NULL. */
export type QueryOp = '==' | '!=' | '<' | '<=' | '>' | '>=' | 'in';
/**
 * A row as `find` and queries return it. Inside a transaction it is a live view:
 * `row.balance -= 10` buffers an update of that column.
 */
export type RowObject = Record<string, any>;

/** The steps of a query; each returns a new query (`Q`), leaving this one as it was. */
export interface QuerySteps<Q> {
  /** Rows whose columns equal these values; `null` matches a NULL column. */
  where(fields: { [column: string]: QueryValue | null }): Q;
  /** `== null` matches a NULL column, `!= null` a column that is not NULL. */
  where(column: string, op: '==' | '!=', value: QueryValue | null): Q;
  where(column: string, op: '<' | '<=' | '>' | '>=', value: QueryValue): Q;
  /** At most 100 values. */
  where(column: string, op: 'in', values: readonly QueryValue[]): Q;
  /** Orders by `column` (default `'asc'`); at most 4 columns, the primary key breaks ties. */
  orderBy(column: string, dir?: 'asc' | 'desc'): Q;
  /** At most `n` rows, 1 to 1000. */
  limit(n: number): Q;
}

/**
 * A query of `mjolnir.table(name)`. Inside a transaction `all()` and `count()` read the
 * committed result (a miss stops the handler, which runs again once it is loaded); outside
 * one, the cache as it is (a result not loaded yet reads as empty, and starts loading).
 */
export interface QueryBuilder extends QuerySteps<QueryBuilder> {
  /** The matching rows, in order (at most 1000: more without a limit is `invalid_query`). */
  all(): RowObject[];
  /** How many rows match. A count takes no `limit`; an `orderBy` is ignored. */
  count(): number;
}

/** A query of `tx.table(name)` in the async form: its reads wait for what is not loaded. */
export interface TxQueryBuilder extends QuerySteps<TxQueryBuilder> {
  all(): Promise<RowObject[]>;
  count(): Promise<number>;
}

export interface Table extends QuerySteps<QueryBuilder> {
  /** Every row of the table (at most 1000: more is `invalid_query`). */
  all(): RowObject[];
  count(): number;
}

export interface TxTable extends QuerySteps<TxQueryBuilder> {
  all(): Promise<RowObject[]>;
  count(): Promise<number>;
}
"#;

/// A query being built: `mjolnir.table(name).where(…)` or, with `tx` set, the async form's
/// `tx.table(name).where(…)`.
#[wasm_bindgen(skip_typescript)]
#[derive(Clone, Debug)]
pub struct QueryBuilder {
    rt: Rc<Runtime>,
    /// The async attempt a `tx`'s builder reads in; `None` for `mjolnir.table`'s, which
    /// reads in whatever synchronous attempt is running when it is run.
    tx: Option<u64>,
    query: Query,
}

impl QueryBuilder {
    pub(crate) fn new(rt: Rc<Runtime>, tx: Option<u64>, table: String) -> QueryBuilder {
        QueryBuilder {
            rt,
            tx,
            query: Query::table(table),
        }
    }

    /// This builder with `query`, if its shape is sound.
    fn with(&self, query: Query) -> Result<QueryBuilder, JsValue> {
        if let Some(message) = query.misshapen() {
            return Err(refusal(&query, message));
        }
        Ok(QueryBuilder {
            rt: self.rt.clone(),
            tx: self.tx,
            query,
        })
    }

    fn add(&self, column: String, op: Op, value: Value) -> Result<QueryBuilder, JsValue> {
        self.with(self.query.clone().filter(column, op, value))
    }

    /// The count query of this one.
    fn counted(&self) -> Result<Query, JsValue> {
        if let Some(limit) = self.query.limit {
            let message = format!("count() counts every matching row: leave out limit({limit})");
            return Err(refusal(&self.query, message));
        }
        Ok(self.query.clone().counted())
    }
}

#[wasm_bindgen]
impl QueryBuilder {
    /// `where({column: value, …})` (equality; `null` is `is_null`) or
    /// `where(column, op, value)` with `op` one of `==`, `!=`, `<`, `<=`, `>`, `>=`, `in`
    /// (`== null` is `is_null`, `!= null` is `not_null`).
    #[wasm_bindgen(js_name = "where")]
    pub fn where_(
        &self,
        column: JsValue,
        op: JsValue,
        value: JsValue,
    ) -> Result<QueryBuilder, JsValue> {
        let Some(column) = column.as_string() else {
            return self.where_fields(&column, &op);
        };
        let Some(op) = op.as_string() else {
            let message = format!("where({column:?}, …) needs an operator: {OPS}");
            return Err(refusal(&self.query, message));
        };
        let (op, null_op) = match op.as_str() {
            "==" => (Op::Eq, Some(Op::IsNull)),
            "!=" => (Op::Ne, Some(Op::NotNull)),
            "<" => (Op::Lt, None),
            "<=" => (Op::Lte, None),
            ">" => (Op::Gt, None),
            ">=" => (Op::Gte, None),
            "in" => (Op::In, None),
            other => {
                let message = format!("where({column:?}, {other:?}, …): the operators are {OPS}");
                return Err(refusal(&self.query, message));
            }
        };
        if value.is_undefined() {
            let message = format!("where({column:?}, {:?}, …) needs a value", op.js());
            return Err(refusal(&self.query, message));
        }
        let value = self.operand(&column, value)?;
        let op = match null_op {
            Some(null_op) if value.is_null() => null_op,
            None if value.is_null() => {
                // SQL's comparisons with NULL are never true: say what to write instead.
                let message = format!(
                    "where({column:?}, {:?}, null) matches nothing: use == null or != null",
                    op.js()
                );
                return Err(refusal(&self.query, message));
            }
            _ => op,
        };
        self.add(column, op, value)
    }

    /// `orderBy(column, 'asc' | 'desc')`, ascending by default.
    #[wasm_bindgen(js_name = orderBy)]
    pub fn order_by(&self, column: JsValue, dir: JsValue) -> Result<QueryBuilder, JsValue> {
        let desc = match dir.as_string().as_deref() {
            _ if dir.is_undefined() => false,
            Some("asc") => false,
            Some("desc") => true,
            _ => {
                let message = "orderBy's direction is 'asc' or 'desc'".to_owned();
                return Err(refusal(&self.query, message));
            }
        };
        let Some(column) = column.as_string() else {
            let message = "orderBy takes a column name".to_owned();
            return Err(refusal(&self.query, message));
        };
        self.with(self.query.clone().order_by(column, desc))
    }

    /// `limit(n)`: at most `n` rows, 1 to 1000.
    pub fn limit(&self, n: JsValue) -> Result<QueryBuilder, JsValue> {
        match n.as_f64() {
            Some(n) if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) => {
                self.with(self.query.clone().limit(n as u32))
            }
            _ => {
                let message = format!("limit takes an integer from 1 to {MAX_ROWS}");
                Err(refusal(&self.query, message))
            }
        }
    }

    /// The matching rows as row objects (live inside a transaction), in order; a promise of
    /// them for a `tx`'s builder.
    pub fn all(&self) -> Result<JsValue, JsValue> {
        let (rt, query) = (self.rt.clone(), self.query.clone());
        let Some(id) = self.tx else {
            return Ok(match rt.with_attempt(None, |a| a.query_rows(&query)) {
                Some((id, Some(rows))) => proxies(&rt, rows.into_iter().map(|(k, _)| k), Some(id)),
                Some((_, None)) => return Err(CacheMiss.into()),
                None => cached_rows(&rt, &query),
            });
        };
        Ok(future_to_promise(async move {
            loop {
                let read = rt.with_attempt(Some(id), |a| {
                    a.query_rows(&query).ok_or_else(|| a.missed_keys())
                });
                match read {
                    Some((_, Ok(rows))) => {
                        return Ok(proxies(&rt, rows.into_iter().map(|(k, _)| k), Some(id)));
                    }
                    Some((_, Err(missed))) => fetch(&rt, id, missed).await?,
                    // The handler has ended: what the cache holds, as a row would read.
                    None => return Ok(cached_rows(&rt, &query)),
                }
            }
        })
        .into())
    }

    /// How many rows match (a promise of it for a `tx`'s builder). An `orderBy` is
    /// ignored; a `limit` is refused, since it would make the count ambiguous.
    pub fn count(&self) -> Result<JsValue, JsValue> {
        let (rt, query) = (self.rt.clone(), self.counted()?);
        let Some(id) = self.tx else {
            return match rt.with_attempt(None, |a| a.query(&query)) {
                Some((_, Read::Value(n))) => Ok(n.as_ref().map_or(JsValue::NULL, to_js)),
                Some((_, Read::Miss)) => Err(CacheMiss.into()),
                None => Ok(cached_count(&rt, &query)),
            };
        };
        Ok(future_to_promise(async move {
            loop {
                let read = rt.with_attempt(Some(id), |a| match a.query(&query) {
                    Read::Value(n) => Ok(n),
                    Read::Miss => Err(a.missed_keys()),
                });
                match read {
                    Some((_, Ok(n))) => return Ok(n.as_ref().map_or(JsValue::NULL, to_js)),
                    Some((_, Err(missed))) => fetch(&rt, id, missed).await?,
                    None => return Ok(cached_count(&rt, &query)),
                }
            }
        })
        .into())
    }
}

/// The operators of `where(column, op, value)`, for messages.
const OPS: &str = "==, !=, <, <=, >, >= and in";

impl QueryBuilder {
    /// `where({column: value, …})`: equality per field, in the object's order.
    fn where_fields(&self, fields: &JsValue, op: &JsValue) -> Result<QueryBuilder, JsValue> {
        if !fields.is_object() || Array::is_array(fields) || !op.is_undefined() {
            let message = "where takes {column: value, …} or (column, op, value)".to_owned();
            return Err(refusal(&self.query, message));
        }
        let mut query = self.query.clone();
        for entry in Object::entries(fields.unchecked_ref()).iter() {
            let pair: &Array = entry.unchecked_ref();
            let column = pair.get(0).as_string().unwrap_or_default();
            let value = pair.get(1);
            if value.is_undefined() {
                let message = format!("where({{{column}: undefined}}): null matches NULL");
                return Err(refusal(&query, message));
            }
            let value = self.operand(&column, value)?;
            query = if value.is_null() {
                query.filter(column, Op::IsNull, Value::Null)
            } else {
                query.filter(column, Op::Eq, value)
            };
        }
        self.with(query)
    }

    /// An operand as JSON; `misshapen` then checks that it fits its operator.
    fn operand(&self, column: &str, value: JsValue) -> Result<Value, JsValue> {
        from_js(value).map_err(|_| {
            let message = format!("{column} is compared with a string, number or boolean");
            refusal(&self.query, message)
        })
    }
}

/// The typed error a query that cannot be run throws: a `SchemaError` with code
/// `invalid_query` whose key is the query.
fn refusal(query: &Query, message: String) -> JsValue {
    let reply = ErrorReply {
        code: ErrorKind::InvalidQuery,
        message,
        key: Some(Key::query(query.clone())),
    };
    RuntimeError::Rejected(reply).into()
}

fn proxies(rt: &Rc<Runtime>, keys: impl Iterator<Item = Key>, attempt: Option<u64>) -> JsValue {
    keys.map(|key| row_proxy(rt, key, attempt))
        .collect::<Array>()
        .into()
}

/// Fetches what an async attempt missed and moves it onto the refreshed cache.
async fn fetch(rt: &Runtime, id: u64, missed: Vec<Key>) -> Result<(), JsValue> {
    rt.fetch(missed)
        .await
        .map_err(|e| JsValue::from(RuntimeError::Rejected(e)))?;
    rt.resnapshot(id);
    Ok(())
}

/// A rows query outside any transaction, as `find` reads there: the cache as it is. A
/// result not cached reads as no rows, a row not cached is left out, and either starts
/// loading.
fn cached_rows(rt: &Rc<Runtime>, query: &Query) -> JsValue {
    let Some(Some(result)) = rt.peek(&Key::query(query.clone())) else {
        return Array::new().into();
    };
    let keys = query.row_keys(&result);
    let cached = keys
        .into_iter()
        .filter(|key| matches!(rt.peek(key), Some(Some(_))));
    proxies(rt, cached, None)
}

fn cached_count(rt: &Runtime, query: &Query) -> JsValue {
    match rt.peek(&Key::query(query.clone())) {
        Some(Some(n)) => to_js(&n),
        _ => JsValue::from(0),
    }
}
