//! Queries from JavaScript: `mjolnir.table('todos').where({done: false}).orderBy('created',
//! 'desc').limit(50).all()`.
//!
//! A query is a [`Table`] with a [`Query`] beyond its name (one class: see `rows.rs`). It
//! is immutable: each step returns a new one, so a page can keep one and reuse it. Its
//! shape is checked at every step with [`Query::misshapen`], so a bad operator, operand
//! or limit throws where it is written. `all()` and `count()` read through
//! [`Attempt::query_keys`] and [`Attempt::query_result`] in the attempt the table belongs
//! to, and `all()` hands out the same row objects as `find` (`rows::row_proxy`): a miss
//! stops a synchronous handler as `find`'s does, and a `tx`'s query (the async form)
//! returns promises that wait for the fetch instead. Outside a transaction they read the
//! cache as `find` does: a result not cached reads as empty and starts loading.

use crate::attempts::CacheMiss;
use crate::convert::{from_js, to_js};
use crate::error::RuntimeError;
use crate::rows::{Table, row_proxy};
use crate::runtime::Runtime;
use crate::tx::Tx;
use js_sys::{Array, Object};
use mjolnir_core::Attempt;
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::query::Op;
use mjolnir_core::{ErrorKind, Key, Query};
use serde_json::Value;
use std::rc::Rc;
use wasm_bindgen::prelude::*;

// The builders' types are written here rather than derived from the signatures below: `where`
// has two forms, and a `tx`'s builder returns promises where the other returns values.
#[wasm_bindgen(typescript_custom_section)]
const QUERY_TYPES: &str = r#"
/** A value a query compares a column with. */
export type QueryValue = string | number | boolean;
/** The comparisons of `where(column, op, value)`: SQL's, so `!=` does not match NULL. */
export type QueryOp = '==' | '!=' | '===' | '!==' | '<' | '<=' | '>' | '>=' | 'in';
/**
 * A row as `find` and queries return it. Inside a transaction it is a live view:
 * `row.balance -= 10` buffers an update of that column.
 */
export type RowObject = Record<string, any>;

/**
 * The steps of a query; each returns a new query (`Q`), leaving this one as it was. `===`
 * and `!==` are `==` and `!=` (SQL has one equality).
 */
export interface QuerySteps<Q> {
  /** Rows whose columns equal these values; `null` matches a NULL column. */
  where(fields: { [column: string]: QueryValue | null }): Q;
  /** `== null` matches a NULL column, `!= null` a column that is not NULL. */
  where(column: string, op: '==' | '!=' | '===' | '!==', value: QueryValue | null): Q;
  where(column: string, op: '<' | '<=' | '>' | '>=', value: QueryValue): Q;
  /** At most 100 values. */
  where(column: string, op: 'in', values: readonly QueryValue[]): Q;
  /** Orders by `column` (default `'asc'`); at most 4 columns, the primary key breaks ties. */
  orderBy(column: string, dir?: 'asc' | 'desc'): Q;
  /** At most `n` rows, 1 to 1000. */
  limit(n: number): Q;
  /**
   * Rows whose `column` matches `text` in PostgreSQL's web search syntax (words,
   * `"quoted phrases"`, `or`, `-excluded`), most relevant first unless ordered otherwise;
   * at most 16 words and 256 bytes.
   */
  search(column: string, text: string): Q;
}

/**
 * A query of `mjolnir.table(name)`. Inside a transaction `all()` and `count()` read the
 * server's result with the page's and the handler's own writes applied (a miss stops the
 * handler, which runs again once it is loaded); outside one, what the page shows: the
 * cached result with the page's pending writes (not loaded yet: empty, and it starts
 * loading).
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

/** `mjolnir.table(name)`: the table, and the query of all its rows. */
export interface Table extends QuerySteps<QueryBuilder> {
  /**
   * The row with primary key `pk` as an object (a live view inside a transaction), or
   * `null` if there is none.
   */
  find(pk: string | number): RowObject | null;
  /** Buffers an insert; the key comes from the row (a uuid key left out is generated). */
  insert(row: { [column: string]: unknown }): RowObject;
  /** Buffers a delete. */
  delete(pk: string | number): void;
  /** Every row of the table (at most 1000: more is `invalid_query`). */
  all(): RowObject[];
  count(): number;
}

/** `tx.table(name)` in the async form: its reads return promises. */
export interface TxTable extends QuerySteps<TxQueryBuilder> {
  find(pk: string | number): Promise<RowObject | null>;
  insert(row: { [column: string]: unknown }): RowObject;
  delete(pk: string | number): void;
  all(): Promise<RowObject[]>;
  count(): Promise<number>;
}
"#;

impl Table {
    /// This table's query changed to `query`, if its shape is sound.
    fn with(&self, query: Query) -> Result<Table, JsValue> {
        if let Some(message) = query.misshapen() {
            return Err(refusal(&query, message));
        }
        Ok(Table {
            rt: self.rt.clone(),
            tx: self.tx,
            query,
        })
    }

    /// A refusal of this query's next step: `what` says which, `problem` why.
    fn refuse(&self, what: std::fmt::Arguments<'_>, problem: &str) -> JsValue {
        refusal(&self.query, format!("{what}: {problem}"))
    }
}

#[wasm_bindgen]
impl Table {
    /// `where({column: value, …})` (equality; `null` is `is_null`) or
    /// `where(column, op, value)` with `op` one of `==`, `!=`, `<`, `<=`, `>`, `>=`, `in`
    /// (`== null` is `is_null`, `!= null` is `not_null`).
    #[wasm_bindgen(js_name = "where", skip_typescript)]
    pub fn where_(&self, column: JsValue, op: JsValue, value: JsValue) -> Result<Table, JsValue> {
        let Some(column) = column.as_string() else {
            return self.where_fields(&column, &op);
        };
        let name = op.as_string().unwrap_or_default();
        match condition(&name, value) {
            Ok((op, value)) => self.with(self.query.clone().filter(column, op, value)),
            Err(problem) => {
                Err(self.refuse(format_args!("where({column:?}, {name:?}, …)"), problem))
            }
        }
    }

    /// `orderBy(column, 'asc' | 'desc')`, ascending by default.
    #[wasm_bindgen(js_name = orderBy, skip_typescript)]
    pub fn order_by(&self, column: JsValue, dir: JsValue) -> Result<Table, JsValue> {
        let desc = match dir.as_string().as_deref() {
            _ if dir.is_undefined() => Some(false),
            Some("asc") => Some(false),
            Some("desc") => Some(true),
            _ => None,
        };
        match (column.as_string(), desc) {
            (Some(column), Some(desc)) => self.with(self.query.clone().order_by(column, desc)),
            _ => Err(self.refuse(
                format_args!("orderBy"),
                "it takes a column name and 'asc' or 'desc'",
            )),
        }
    }

    /// `limit(n)`: at most `n` rows, 1 to 1000.
    #[wasm_bindgen(skip_typescript)]
    pub fn limit(&self, n: JsValue) -> Result<Table, JsValue> {
        match n.as_f64() {
            Some(n) if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&n) => {
                self.with(self.query.clone().limit(n as u32))
            }
            // MAX_ROWS, spelt out: a `format!` for it costs more than the text.
            _ => Err(self.refuse(format_args!("limit"), "it takes an integer from 1 to 1000")),
        }
    }

    /// `search(column, text)`: the rows whose `column` matches `text`, in PostgreSQL's web
    /// search syntax, most relevant first unless the query orders them.
    #[wasm_bindgen(skip_typescript)]
    pub fn search(&self, column: JsValue, text: JsValue) -> Result<Table, JsValue> {
        match (column.as_string(), text.as_string()) {
            (Some(column), Some(text)) => self.with(self.query.clone().search(column, text)),
            _ => Err(self.refuse(format_args!("search"), "it takes a column name and a text")),
        }
    }

    /// The matching rows as row objects (live inside a transaction), in order; a promise of
    /// them for a `tx`'s query.
    #[wasm_bindgen(skip_typescript)]
    pub fn all(&self) -> Result<JsValue, JsValue> {
        self.run(self.query.clone())
    }

    /// How many rows match (a promise of it for a `tx`'s query). An `orderBy` is
    /// ignored; a `limit` is refused, since it would make the count ambiguous.
    #[wasm_bindgen(skip_typescript)]
    pub fn count(&self) -> Result<JsValue, JsValue> {
        if let Some(limit) = self.query.limit {
            let what = format_args!("count() of a query with limit({limit})");
            return Err(self.refuse(what, "a count counts every matching row: leave out limit"));
        }
        self.run(self.query.clone().counted())
    }
}

impl Table {
    /// `where({column: value, …})`: equality per field, in the object's order.
    fn where_fields(&self, fields: &JsValue, op: &JsValue) -> Result<Table, JsValue> {
        if !fields.is_object() || Array::is_array(fields) || !op.is_undefined() {
            let what = format_args!("where");
            return Err(self.refuse(what, "it takes {column: value, …} or (column, op, value)"));
        }
        let mut query = self.query.clone();
        for entry in Object::entries(fields.unchecked_ref()).iter() {
            let pair: &Array = entry.unchecked_ref();
            let column = pair.get(0).as_string().unwrap_or_default();
            let value = pair.get(1);
            let value = match from_js(value.clone()) {
                Ok(v) if !value.is_undefined() => v,
                _ => {
                    let what = format_args!("where({{{column}: …}})");
                    return Err(self.refuse(what, "a string, number, boolean, or null for NULL"));
                }
            };
            let op = if value.is_null() { Op::IsNull } else { Op::Eq };
            query = query.filter(column, op, value);
        }
        self.with(query)
    }

    /// Runs `query` (this one, or its count): in the running synchronous attempt, in
    /// the `tx`'s attempt (a promise), or on the cache outside any.
    fn run(&self, query: Query) -> Result<JsValue, JsValue> {
        let rt = self.rt.clone();
        let Some(id) = self.tx else {
            return match rt.with_attempt(None, |a| read(a, &query)) {
                Some((id, Some(got))) => Ok(got.into_js(&rt, Some(id))),
                Some((_, None)) => Err(CacheMiss.into()),
                None => Ok(cached(&rt, &query)),
            };
        };
        let read = move |rt: &Rc<Runtime>| {
            let got = rt.with_attempt(Some(id), |a| read(a, &query).ok_or_else(|| a.missed_keys()));
            Ok(match got {
                Some((_, got)) => got.map(|got| got.into_js(rt, Some(id))),
                // The handler has ended: what the cache holds, as a row would read.
                None => Ok(cached(rt, &query)),
            })
        };
        Ok(Tx::wait(rt, id, Box::new(read)).into())
    }
}

/// The condition `where(column, name, value)` adds, or what is wrong with it. The
/// operators are the core's, as templates spell them too ([`Op::from_js`]).
fn condition(name: &str, value: JsValue) -> Result<(Op, Value), &'static str> {
    let given = !value.is_undefined();
    let value = from_js(value).map_err(|_| "the value is a string, number or boolean")?;
    let Some((op, value)) = Op::from_js(name, value) else {
        return Err("the operators are ==, !=, <, <=, >, >= and in");
    };
    if !given {
        return Err("a value is needed (null to match NULL)");
    }
    if value.is_null() && !op.is_unary() {
        // SQL's comparisons with NULL are never true: say what to write instead.
        return Err("null matches nothing here: use == null or != null");
    }
    Ok((op, value))
}

/// What a query read gave an attempt.
enum Got {
    /// The keys of the rows, in order.
    Rows(Vec<Key>),
    Count(Value),
}

impl Got {
    fn into_js(self, rt: &Rc<Runtime>, attempt: Option<u64>) -> JsValue {
        match self {
            Got::Rows(keys) => {
                let rows = Array::new();
                for key in keys {
                    rows.push(&row_proxy(rt, key, attempt));
                }
                rows.into()
            }
            Got::Count(n) => to_js(&n),
        }
    }
}

/// Reads `query` in an attempt: `None` on a miss.
fn read(a: &mut Attempt, query: &Query) -> Option<Got> {
    if query.count {
        // The count as the attempt sees it: its own writes counted.
        a.query_view(query)
            .map(|v| Got::Count(Value::from(v.count)))
    } else {
        a.query_keys(query).map(Got::Rows)
    }
}

/// A query outside any transaction, as templates read it: the cached result with the
/// page's in-flight writes applied ([`mjolnir_core::engine::Engine::peek_query`]). A
/// result (or a row) not cached reads as empty (no rows, or 0) and starts loading.
fn cached(rt: &Rc<Runtime>, query: &Query) -> JsValue {
    let view = rt.engine.borrow_mut().peek_query(query);
    if view.is_none() {
        rt.flush_sends();
    }
    let got = match view {
        Some(v) if query.count => Got::Count(Value::from(v.count)),
        None if query.count => Got::Count(Value::from(0)),
        Some(v) => Got::Rows(
            v.rows
                .into_iter()
                .map(|r| Key::row(query.table.clone(), r.pk))
                .collect(),
        ),
        None => Got::Rows(Vec::new()),
    };
    got.into_js(rt, None)
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
