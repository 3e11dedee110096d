//! What a commit is made of: a transaction checked and resolved against the catalog
//! ([`Plan`]), and the statements its writes run as ([`Statement`]).

use super::Resolved;
use crate::catalog::{Table, quote_ident};
use crate::error::{Result, ServerError};
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::{ErrorKind, TxnId, Version, WriteOp};
use serde_json::{Map, Value};

/// A commit checked and resolved against the catalog.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) reads: Vec<(Resolved, Version)>,
    pub(super) writes: Vec<(Resolved, WriteOp)>,
    pub(super) deps: Vec<Dep>,
    /// The queries read, each with the result the transaction saw.
    pub(super) queries: Vec<(Resolved, Value)>,
}

impl Plan {
    /// The key of the `i`th read of the commit (0-based), counting its dependencies after
    /// its plain reads and its query reads after those, as `mjolnir.commit_batch` numbers
    /// its stale reads.
    pub(super) fn read_key(&self, i: usize) -> Option<&Resolved> {
        let i = match self.reads.get(i) {
            Some((r, _)) => return Some(r),
            None => i - self.reads.len(),
        };
        match self.deps.get(i) {
            Some(d) => Some(&d.key),
            None => self.queries.get(i - self.deps.len()).map(|(r, _)| r),
        }
    }
}

/// A dependency resolved against the catalog.
#[derive(Debug)]
pub(super) struct Dep {
    pub(super) key: Resolved,
    pub(super) after: TxnId,
    pub(super) value: Option<Value>,
}

/// The query reading a dependency's key as the user sees it, over `$2` (its primary key)
/// and an unused `$1`, so that it is prepared like a write statement: the row as reads and
/// pushes give it, or the kv entry's value; no row when absent or hidden.
pub(super) fn dep_query(r: &Resolved) -> String {
    match &r.table {
        Some(t) => format!(
            "SELECT {json} FROM {table} r WHERE r.{pk} = $2::{ty}",
            json = t.row_json,
            table = t.qualified,
            pk = quote_ident(&t.pk_column().name),
            ty = t.pk_column().sql_type,
        ),
        None => "SELECT kv.value FROM mjolnir.kv kv WHERE kv.key = $2".to_owned(),
    }
}

/// Checks that `op` fits its key: the op's kind, the columns and their types, and that an
/// update leaves the primary key alone.
pub(super) fn check_write(r: &Resolved, op: &WriteOp) -> Result<()> {
    let invalid = |msg: &str| {
        ServerError::from(ErrorReply::new(ErrorKind::InvalidWrite, msg).with_key(r.key.clone()))
    };
    match (&r.table, op) {
        (None, WriteOp::Put { .. } | WriteOp::Delete) | (Some(_), WriteOp::Delete) => Ok(()),
        (None, _) => Err(invalid("key/value entries take `put` or `delete`")),
        (Some(_), WriteOp::Put { .. }) => {
            Err(invalid("table rows take `insert`, `update` or `delete`"))
        }
        (Some(t), WriteOp::Insert { row }) => {
            t.check_row(&r.key, row)?;
            match row.get(&t.pk_column().name) {
                None => Ok(()),
                Some(v) if pk_matches(&r.pk, v) => Ok(()),
                Some(v) => Err(ErrorReply::new(
                    ErrorKind::PrimaryKeyChange,
                    format!("row for key {} has {} = {v}", r.key, t.pk_column().name),
                )
                .with_key(r.key.clone())
                .into()),
            }
        }
        (Some(t), WriteOp::Update { set }) => {
            t.check_row(&r.key, set)?;
            match set.get(&t.pk_column().name) {
                Some(v) if !pk_matches(&r.pk, v) => Err(ErrorReply::new(
                    ErrorKind::PrimaryKeyChange,
                    format!(
                        "an update may not change {}.{} (to {v})",
                        t.name,
                        t.pk_column().name
                    ),
                )
                .with_key(r.key.clone())
                .into()),
                _ => Ok(()),
            }
        }
    }
}

fn pk_matches(pk_text: &str, v: &Value) -> bool {
    match v {
        Value::String(s) => s == pk_text,
        Value::Number(n) => n.to_string() == pk_text,
        _ => false,
    }
}

/// The statements one write runs as. `sql` is the write alone, over `$1` (`arg`: the row,
/// the changed columns or the kv value, jsonb) and `$2` (the primary key as text),
/// returning `(value, changed)`: the new value as jsonb (`NULL` for a delete) and whether
/// the write changed anything. `set` is the same write for many keys of a batch at once,
/// over `$1` (all the batch's args), `$2` (all its primary keys) and `$3` (the indexes of
/// the writes to run), returning `(ord, value, changed)` for each index; `None` for a
/// table with triggers of the app's own.
///
/// A write of a row that returns no row matched none (see `check`). A kv write that
/// returns no row changed nothing: a put of the value already stored, the delete of an
/// absent entry. A write that changes nothing draws no new value version for its key
/// (migration 0006), so that nobody whom the app lets run it can make others conflict.
#[derive(Debug)]
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) set: Option<String>,
    pub(super) arg: Value,
    /// For an update or delete of a row: whether the row exists past the app's policies,
    /// run only when the write matched no row.
    pub(super) check: Option<String>,
}

pub(super) fn statement(r: &Resolved, op: &WriteOp) -> Statement {
    let Some(t) = &r.table else {
        return match op {
            WriteOp::Put { value } => Statement {
                sql: "INSERT INTO mjolnir.kv AS kv (key, value) VALUES ($2, $1)
                      ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                      WHERE kv.value IS DISTINCT FROM EXCLUDED.value
                      RETURNING value, true AS changed"
                    .to_owned(),
                set: Some(
                    "WITH u AS (SELECT j AS ord, $2[j] AS key, $1[j] AS value FROM unnest($3::int[]) AS j),
                      w AS (INSERT INTO mjolnir.kv AS kv (key, value) SELECT u.key, u.value FROM u
                            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                            WHERE kv.value IS DISTINCT FROM EXCLUDED.value
                            RETURNING key, value)
                      SELECT u.ord, w.value, true AS changed FROM w JOIN u ON u.key = w.key"
                        .to_owned(),
                ),
                arg: value.clone(),
                check: None,
            },
            _ => Statement {
                sql: "DELETE FROM mjolnir.kv WHERE key = $2 RETURNING NULL::jsonb, true AS changed"
                    .to_owned(),
                set: Some(
                    "DELETE FROM mjolnir.kv AS kv USING unnest($3::int[]) AS u(ord)
                      WHERE kv.key = $2[u.ord]
                      RETURNING u.ord AS ord, NULL::jsonb AS value, true AS changed"
                        .to_owned(),
                ),
                arg: Value::Null,
                check: None,
            },
        };
    };
    let pk_col = quote_ident(&t.pk_column().name);
    let pk_ty = &t.pk_column().sql_type;
    let table = &t.qualified;
    let json = &t.row_json;
    let check = || {
        Some(format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {pk_col} = $2::{pk_ty})"
        ))
    };
    let set_form = |sql: String| (!t.app_triggers).then_some(sql);
    match op {
        WriteOp::Insert { row } => {
            let mut row = row.clone();
            row.insert(t.pk_column().name.clone(), pk_value(t, &r.pk));
            let cols = column_list(&row, "");
            let p_cols = column_list(&row, "p.");
            Statement {
                sql: format!(
                    "INSERT INTO {table} AS r ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1)
                     RETURNING {json}, true AS changed"
                ),
                set: set_form(format!(
                    "WITH u AS (SELECT j AS ord FROM unnest($3::int[]) AS j),
                     w AS (INSERT INTO {table} AS r ({cols})
                           SELECT {p_cols} FROM u, jsonb_populate_record(NULL::{table}, $1[u.ord]) AS p
                           RETURNING r.{pk_col} AS pk, {json} AS value)
                     SELECT u.ord, w.value, true AS changed FROM w JOIN u ON w.pk = ($2[u.ord])::{pk_ty}"
                )),
                arg: Value::Object(row),
                check: None,
            }
        }
        // An empty update changes nothing, but still locks the row and checks the user may
        // see it.
        WriteOp::Update { set } if set.is_empty() => Statement {
            sql: format!(
                "SELECT {json}, false AS changed FROM {table} r WHERE r.{pk_col} = $2::{pk_ty} FOR UPDATE"
            ),
            set: set_form(format!(
                "SELECT u.ord AS ord, {json} AS value, false AS changed
                 FROM {table} r JOIN unnest($3::int[]) AS u(ord) ON r.{pk_col} = ($2[u.ord])::{pk_ty}
                 FOR UPDATE OF r"
            )),
            arg: Value::Null,
            check: check(),
        },
        // The row as it was (`o.old`, the same expression over the row before the update)
        // tells whether the update, with whatever the app's triggers did, changed anything.
        WriteOp::Update { set } => {
            let cols = column_list(set, "");
            let p_cols = column_list(set, "p.");
            Statement {
                sql: format!(
                    "UPDATE {table} AS r SET ({cols}) = (SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1))
                     FROM (SELECT r.{pk_col} AS pk, {json} AS old FROM {table} r WHERE r.{pk_col} = $2::{pk_ty}) AS o
                     WHERE r.{pk_col} = o.pk
                     RETURNING {json}, {json} IS DISTINCT FROM o.old AS changed"
                ),
                set: set_form(format!(
                    "UPDATE {table} AS r
                     SET ({cols}) = (SELECT {p_cols} FROM jsonb_populate_record(NULL::{table}, $1[o.ord]) AS p)
                     FROM (SELECT u.ord, r.{pk_col} AS pk, {json} AS old
                             FROM {table} r JOIN unnest($3::int[]) AS u(ord) ON r.{pk_col} = ($2[u.ord])::{pk_ty}) AS o
                     WHERE r.{pk_col} = o.pk
                     RETURNING o.ord AS ord, {json} AS value, {json} IS DISTINCT FROM o.old AS changed"
                )),
                arg: Value::Object(set.clone()),
                check: check(),
            }
        }
        WriteOp::Delete => Statement {
            sql: format!(
                "DELETE FROM {table} AS r WHERE r.{pk_col} = $2::{pk_ty} RETURNING NULL::jsonb, true AS changed"
            ),
            set: set_form(format!(
                "DELETE FROM {table} AS r USING unnest($3::int[]) AS u(ord)
                 WHERE r.{pk_col} = ($2[u.ord])::{pk_ty}
                 RETURNING u.ord AS ord, NULL::jsonb AS value, true AS changed"
            )),
            arg: Value::Null,
            check: check(),
        },
        WriteOp::Put { .. } => unreachable!("check_write refuses put on rows"),
    }
}

/// The refusal for an update or delete that matched no row (`MJ403`/`MJ404` from
/// `mjolnir.commit_batch`): a blind write of a missing row (a read would have made it a
/// conflict), or a row the app's policies hide from this user.
pub(super) fn missing_row(r: &Resolved, op: &WriteOp, hidden: bool) -> ErrorReply {
    let what = match op {
        WriteOp::Delete => "delete",
        _ => "update",
    };
    if hidden {
        let table = r.table.as_ref().map_or("", |t| t.name.as_str());
        ErrorReply::new(
            ErrorKind::Forbidden,
            format!(
                "the policies on {table} do not let this user {what} {}",
                r.key
            ),
        )
    } else {
        ErrorReply::new(
            ErrorKind::NotFound,
            format!("cannot {what} {}: no such row", r.key),
        )
    }
    .with_key(r.key.clone())
}
/// The primary key as a JSON value of its column's type, for inserts that leave it out.
fn pk_value(t: &Table, pk: &str) -> Value {
    match t.pk_column().ty {
        crate::catalog::ColumnType::Int | crate::catalog::ColumnType::BigInt => pk
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(pk.to_owned())),
        _ => Value::String(pk.to_owned()),
    }
}

/// The columns of `row`, quoted, each after `prefix` (a table alias and its dot, or "").
fn column_list(row: &Map<String, Value>, prefix: &str) -> String {
    row.keys()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ")
}
