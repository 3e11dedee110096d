//! Queries resolved against the catalog: checked (columns, types, operators) and turned
//! into the two statements the server runs for them, one reading the rows with their
//! versions for a client, one giving the result a commit's query read is compared with.
//!
//! Both are built from names the catalog read from PostgreSQL, quoted, and the query's
//! shape; every value a client sent is a parameter (a jsonb array, one element per
//! condition), so no client text reaches the SQL. Both order by the query's columns and
//! then the primary key, so one state has one result, and both cut at the same limit: a
//! read and the check at commit time agree on an unchanged table.

use crate::catalog::{ColumnType, Table, quote_ident};
use crate::error::{Result, ServerError};
use mjolnir_core::protocol::ErrorReply;
use mjolnir_core::query::MAX_ROWS;
use mjolnir_core::{ErrorKind, Key, Op, Query};
use serde_json::Value;
use std::sync::Arc;

/// A query checked against its table.
#[derive(Debug)]
pub struct QueryPlan {
    pub query: Query,
    pub table: Arc<Table>,
    /// The operands, one per condition (`null` for `is_null`/`not_null`): the jsonb
    /// parameter of both statements.
    pub args: Value,
    /// `FROM … WHERE …`, over the arguments as `{args}`.
    from_where: String,
    /// `ORDER BY …`, the primary key last, over the arguments as `{args}` (a search's
    /// rank).
    order_by: String,
    /// The rows the statement fetches: the query's limit, or one more than a query may
    /// return when it has none, so that too many rows are seen and refused.
    fetch: u32,
}

impl QueryPlan {
    /// Checks `query` against `table`: its shape, its columns, and each operand against
    /// its column's type.
    pub fn new(
        key: &Key,
        query: &Query,
        table: Arc<Table>,
        search_config: &str,
    ) -> Result<QueryPlan> {
        let refuse = |kind: ErrorKind, message: String| {
            ServerError::from(ErrorReply::new(kind, message).with_key(key.clone()))
        };
        if let Some(message) = query.misshapen() {
            return Err(refuse(ErrorKind::InvalidQuery, message));
        }
        let column = |name: &str| {
            table.column(name).ok_or_else(|| {
                refuse(
                    ErrorKind::UnknownColumn,
                    format!("{} has no column {name:?}", table.name),
                )
            })
        };
        let mut conditions = Vec::with_capacity(query.filter.len());
        let mut args = Vec::with_capacity(query.filter.len());
        for (i, c) in query.filter.iter().enumerate() {
            let col = column(&c.column)?;
            let name = format!("r.{}", quote_ident(&col.name));
            let value = &c.value.0;
            let operands: Vec<&Value> = match c.op {
                Op::In => value
                    .as_array()
                    .map(|a| a.iter().collect())
                    .unwrap_or_default(),
                Op::IsNull | Op::NotNull => Vec::new(),
                _ => vec![value],
            };
            if !c.op.is_unary() && !comparable(col.ty) {
                return Err(refuse(
                    ErrorKind::WrongType,
                    format!(
                        "{}.{} is {}: a query can only test it with is_null or not_null",
                        table.name, col.name, col.sql_type
                    ),
                ));
            }
            if let Some(bad) = operands.iter().find(|v| !col.ty.accepts(v)) {
                return Err(refuse(
                    ErrorKind::WrongType,
                    format!(
                        "{}.{} is {}: cannot compare it with {bad}",
                        table.name, col.name, col.sql_type
                    ),
                ));
            }
            let ty = &col.sql_type;
            let operand = format!("(({{args}})->>{i})::{ty}");
            conditions.push(match c.op {
                Op::Eq => format!("{name} = {operand}"),
                Op::Ne => format!("{name} <> {operand}"),
                Op::Lt => format!("{name} < {operand}"),
                Op::Lte => format!("{name} <= {operand}"),
                Op::Gt => format!("{name} > {operand}"),
                Op::Gte => format!("{name} >= {operand}"),
                Op::In => format!(
                    "{name} = ANY (ARRAY(SELECT x::{ty} FROM jsonb_array_elements_text(({{args}})->{i}) AS x))"
                ),
                Op::IsNull => format!("{name} IS NULL"),
                Op::NotNull => format!("{name} IS NOT NULL"),
            });
            args.push(value.clone());
        }
        // A search: its column's words (a tsvector column as it is, a text column through
        // `to_tsvector`, spelled as an index on it would be, so the index serves) match
        // the text read as `websearch_to_tsquery` does; relevance orders unless the query
        // orders otherwise. The text is the last argument.
        let mut rank = None;
        if let Some(search) = &query.search {
            let col = column(&search.column)?;
            let name = format!("r.{}", quote_ident(&col.name));
            let config = format!("'{search_config}'::regconfig");
            let words = match (col.ty, col.sql_type.as_str()) {
                (_, "tsvector") => name,
                (ColumnType::Text, _) => format!("to_tsvector({config}, {name})"),
                _ => {
                    return Err(refuse(
                        ErrorKind::WrongType,
                        format!(
                            "{}.{} is {}: a search needs a text or tsvector column",
                            table.name, col.name, col.sql_type
                        ),
                    ));
                }
            };
            // In a subquery of its own, PostgreSQL reads the text once per statement (an
            // InitPlan): in the generic plan of a prepared statement the call, over a
            // parameter, would otherwise be evaluated again for each row it ranks.
            let text = format!(
                "(SELECT websearch_to_tsquery({config}, ({{args}})->>{}))",
                args.len()
            );
            conditions.push(format!("{words} @@ {text}"));
            rank = Some(format!("ts_rank({words}, {text}) DESC"));
            args.push(Value::String(search.text.clone()));
        }
        let mut order = Vec::with_capacity(query.order.len() + 2);
        if query.order.is_empty()
            && let Some(rank) = rank
        {
            order.push(rank);
        }
        for o in &query.order {
            let col = column(&o.column)?;
            if !comparable(col.ty) {
                return Err(refuse(
                    ErrorKind::WrongType,
                    format!(
                        "{}.{} is {}: a query cannot order by it",
                        table.name, col.name, col.sql_type
                    ),
                ));
            }
            let dir = if o.desc { "DESC" } else { "ASC" };
            order.push(format!("r.{} {dir}", quote_ident(&col.name)));
        }
        order.push(format!("r.{} ASC", quote_ident(&table.pk_column().name)));
        let filter = if conditions.is_empty() {
            "true".to_owned()
        } else {
            conditions.join(" AND ")
        };
        Ok(QueryPlan {
            query: query.clone(),
            args: Value::Array(args),
            from_where: format!("FROM {} AS r WHERE {filter}", table.qualified),
            order_by: format!("ORDER BY {}", order.join(", ")),
            fetch: query.limit.unwrap_or(MAX_ROWS + 1),
            table,
        })
    }

    /// The statement reading the query for a client, over `args`: rows `(ord, version,
    /// value)` as `mjolnir.read_as` returns them, the rows in order with their versions.
    /// A count is one row, its value the number.
    pub fn read_sql(&self, args: &str) -> String {
        let from_where = self.from_where.replace("{args}", args);
        let order_by = self.order_by.replace("{args}", args);
        if self.query.count {
            return format!("SELECT 1, 0::bigint, to_jsonb(count(*)) {from_where}");
        }
        let space = self.table.name.replace('\'', "''");
        // The rows are chosen (filtered, ordered, cut at the limit) in a subquery that
        // keeps whole rows, and numbered, looked up in `mjolnir.versions` and turned into
        // JSON outside it, for those rows only. Numbered inside, the window function would
        // make PostgreSQL sort every matching row rather than keep the first `fetch` (a
        // top-N sort), and the JSON would be built before the cut; the outer order is the
        // same and, for a plain column order, read from the subquery's without sorting
        // again (docs/benchmarks.md, "Measurements behind the code").
        format!(
            "SELECT (row_number() OVER ({order}))::int,
                    coalesce((SELECT v.version FROM mjolnir.versions v
                               WHERE v.space = '{space}' AND v.pk = r.{pk}::text), 0),
                    {json}
             FROM (SELECT r.* {from_where} {order} LIMIT {fetch}) AS r {order}",
            order = order_by,
            pk = quote_ident(&self.table.pk_column().name),
            json = self.table.row_json,
            fetch = self.fetch,
        )
    }

    /// [`QueryPlan::read_sql`] after a row numbered 0 whose version is the newest commit
    /// version drawn: the rows of a query read, whichever way it runs.
    pub fn read_sql_with_version(&self, args: &str) -> String {
        format!(
            "SELECT 0, (SELECT last_value FROM mjolnir.commit_version), NULL::jsonb
             UNION ALL ({})",
            self.read_sql(args)
        )
    }

    /// The statement giving the query's result as a commit's query read holds it, over
    /// `$1` (the arguments, jsonb): the JSON array of the primary keys in order, or the
    /// count.
    pub fn check_sql(&self) -> String {
        let from_where = self.from_where.replace("{args}", "$1");
        let order_by = self.order_by.replace("{args}", "$1");
        if self.query.count {
            return format!("SELECT to_jsonb(count(*)) {from_where}");
        }
        // The primary key as the rows a read gives spell it, of the rows chosen in a
        // subquery, as in `read_sql`.
        format!(
            "SELECT coalesce(jsonb_agg({pk} {order}), '[]'::jsonb)
               FROM (SELECT r.* {from_where} {order} LIMIT {fetch}) AS r",
            pk = self.table.pk_json(),
            order = order_by,
            fetch = self.fetch,
        )
    }

    /// The most rows the query may give a client.
    pub fn max_rows(&self) -> usize {
        self.query.max_rows() as usize
    }
}

/// Whether a query may compare or order values of this type. `json` has no equality in
/// PostgreSQL; arrays would need a literal syntax of their own.
fn comparable(ty: ColumnType) -> bool {
    !matches!(ty, ColumnType::Json | ColumnType::Array)
}
