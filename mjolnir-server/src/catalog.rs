//! What the server knows of the app's tables: read from PostgreSQL, never configured.
//!
//! Every instance builds its own copy from `pg_catalog` at start and again when a request
//! names a table it does not know (another instance may have run a migration), so no
//! instance holds schema state another one needs.

use crate::error::{Result, ServerError};
use mjolnir_core::protocol::{ErrorReply, PkKind, TableInfo};
use mjolnir_core::{ErrorKind, Key, Pk};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::types::Oid;
use std::collections::HashMap;
use std::sync::Arc;

/// The `space` of key/value entries in `mjolnir.versions`; no table can have an empty name.
pub const KV_SPACE: &str = "";

/// How a column's values travel as JSON (see docs/architecture.md, "Types").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// text, varchar, char, name: a JSON string.
    Text,
    /// smallint, integer: a JSON number.
    Int,
    /// bigint: a JSON number within ±2^53, else a decimal string (JavaScript numbers are
    /// exact only up to 2^53).
    BigInt,
    /// real, double precision: a JSON number.
    Float,
    /// numeric: a decimal string, so no digit is lost; numbers are accepted on write.
    Numeric,
    /// boolean: true or false.
    Bool,
    /// json, jsonb: any JSON value.
    Json,
    /// uuid: a lowercase hyphenated string.
    Uuid,
    /// date, time, timestamp(tz), interval: a string in PostgreSQL's ISO format.
    Temporal,
    /// arrays: a JSON array.
    Array,
    /// Anything else: passed to PostgreSQL as is, which decides.
    Other,
}

impl ColumnType {
    fn from_pg(typname: &str) -> ColumnType {
        match typname {
            "text" | "varchar" | "bpchar" | "name" | "citext" => ColumnType::Text,
            "int2" | "int4" => ColumnType::Int,
            "int8" => ColumnType::BigInt,
            "float4" | "float8" => ColumnType::Float,
            "numeric" => ColumnType::Numeric,
            "bool" => ColumnType::Bool,
            "json" | "jsonb" => ColumnType::Json,
            "uuid" => ColumnType::Uuid,
            "date" | "time" | "timetz" | "timestamp" | "timestamptz" | "interval" => {
                ColumnType::Temporal
            }
            t if t.starts_with('_') => ColumnType::Array,
            _ => ColumnType::Other,
        }
    }

    /// Whether `value` can be stored in a column of this type. NULL is left to the
    /// database: it knows NOT NULL and defaults.
    pub fn accepts(self, value: &Value) -> bool {
        let numeric_string =
            |v: &Value| v.as_str().is_some_and(|s| s.trim().parse::<f64>().is_ok());
        match (self, value) {
            (_, Value::Null) | (ColumnType::Json | ColumnType::Other, _) => true,
            (ColumnType::Text | ColumnType::Temporal, v) => v.is_string(),
            (ColumnType::Uuid, v) => v.as_str().is_some_and(is_canonical_uuid),
            (ColumnType::Int, v) => v.is_i64(),
            (ColumnType::BigInt, v) => {
                v.is_i64() || v.as_str().is_some_and(|s| s.parse::<i64>().is_ok())
            }
            (ColumnType::Float, v) => v.is_number(),
            (ColumnType::Numeric, v) => v.is_number() || numeric_string(v),
            (ColumnType::Bool, v) => v.is_boolean(),
            (ColumnType::Array, v) => v.is_array(),
        }
    }
}

/// A uuid in the one text form used for keys, so that two spellings of one uuid can never
/// be two keys with two versions.
fn is_canonical_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// As PostgreSQL spells it (`character varying(20)`), for casts and messages.
    pub sql_type: String,
}

/// One app table with a single-column primary key.
#[derive(Debug)]
pub struct Table {
    pub name: String,
    /// Its oid, which a read gives back to PostgreSQL to check the table is still open
    /// (see [`Table::open_read`]); a table dropped and created again has another.
    pub oid: Oid,
    pub columns: Vec<Column>,
    pub pk: usize,
    /// `"schema"."table"`, quoted once here so statements are built from checked names only.
    pub qualified: String,
    /// An expression giving the row `r` as JSON, with bigint and numeric columns converted
    /// per [`ColumnType`].
    pub row_json: String,
    /// The app put triggers of its own on the table. Their effects may depend on the order
    /// in which rows are written, so group commit writes such a table one transaction at a
    /// time, never set-based (migration 0004).
    pub app_triggers: bool,
    /// Every user may read every row: no row-level security, and `mjolnir_app` may SELECT
    /// the whole table. Reads of such a table need not switch to the app's role, which
    /// lets them run as plain prepared statements (see `store/read.rs`, which checks that
    /// it still holds: the app may change either while the server runs).
    pub open_read: bool,
}

impl Table {
    pub fn pk_column(&self) -> &Column {
        &self.columns[self.pk]
    }

    /// An expression giving the primary key of the row `r` as `row_json` spells it, without
    /// building the rest of the row's JSON.
    pub fn pk_json(&self) -> String {
        let c = self.pk_column();
        let col = format!("r.{}", quote_ident(&c.name));
        match c.ty {
            ColumnType::Numeric => format!("to_jsonb({col}::text)"),
            ColumnType::BigInt => format!(
                "CASE WHEN abs({col}) > {MAX_SAFE_INTEGER} THEN to_jsonb({col}::text) ELSE to_jsonb({col}) END"
            ),
            _ => format!("to_jsonb({col})"),
        }
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The canonical text form of a primary-key value, checked against the column's type.
    pub fn pk_text(&self, key: &Key, pk: &Pk) -> Result<String> {
        let col = self.pk_column();
        let wrong = |what: &str| {
            ServerError::from(
                ErrorReply::new(
                    ErrorKind::WrongType,
                    format!(
                        "primary key of {} is {} ({}): got {what}",
                        self.name, col.name, col.sql_type
                    ),
                )
                .with_key(key.clone()),
            )
        };
        match (col.ty, pk) {
            (ColumnType::Int, Pk::Int(n)) if !fits_int_column(&col.sql_type, *n) => {
                Err(wrong("an integer out of its range"))
            }
            (ColumnType::BigInt, Pk::Int(n)) if n.unsigned_abs() > MAX_SAFE_INTEGER => {
                Err(wrong("an integer beyond ±2^53"))
            }
            (ColumnType::Int | ColumnType::BigInt, Pk::Int(n)) => Ok(n.to_string()),
            (ColumnType::Text, Pk::Text(s)) => Ok(s.clone()),
            (ColumnType::Uuid, Pk::Text(s)) if is_canonical_uuid(s) => Ok(s.clone()),
            (ColumnType::Uuid, Pk::Text(_)) => {
                Err(wrong("a string that is not a lowercase hyphenated uuid"))
            }
            (_, Pk::Int(_)) => Err(wrong("a number")),
            (_, Pk::Text(_)) => Err(wrong("a string")),
        }
    }

    /// Checks that every field of `row` is a column of this table with a value of its type.
    pub fn check_row(&self, key: &Key, row: &serde_json::Map<String, Value>) -> Result<()> {
        for (name, value) in row {
            let Some(col) = self.column(name) else {
                return Err(ErrorReply::new(
                    ErrorKind::UnknownColumn,
                    format!("{} has no column {name:?}", self.name),
                )
                .with_key(key.clone())
                .into());
            };
            if !col.ty.accepts(value) {
                return Err(ErrorReply::new(
                    ErrorKind::WrongType,
                    format!(
                        "{}.{name} is {}: cannot store {value}",
                        self.name, col.sql_type
                    ),
                )
                .with_key(key.clone())
                .into());
            }
        }
        Ok(())
    }
}

/// Whether `n` fits a `smallint` or `integer` column.
fn fits_int_column(sql_type: &str, n: i64) -> bool {
    match sql_type {
        "smallint" => i16::try_from(n).is_ok(),
        _ => i32::try_from(n).is_ok(),
    }
}

/// JavaScript's `Number.MAX_SAFE_INTEGER`.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Every app table of one schema.
#[derive(Debug, Default)]
pub struct Catalog {
    tables: HashMap<String, Arc<Table>>,
    /// Tables the app has but Mjölnir cannot serve, with the reason (for the error message).
    unsupported: HashMap<String, String>,
}

impl Catalog {
    pub async fn load(pool: &PgPool, schema: &str) -> Result<Catalog> {
        /// table, its oid, column, its SQL type, its type name, part of the primary key,
        /// row-level security, SELECT granted to mjolnir_app, triggers of the app's own.
        type Row = (String, Oid, String, String, String, bool, bool, bool, bool);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT c.relname::text, c.oid, a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text,
                    coalesce(a.attnum = ANY(i.indkey), false), c.relrowsecurity,
                    has_table_privilege('mjolnir_app', c.oid, 'SELECT'),
                    EXISTS (SELECT 1 FROM pg_trigger tg WHERE tg.tgrelid = c.oid AND NOT tg.tgisinternal)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             JOIN pg_type t ON t.oid = a.atttypid
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
             ORDER BY c.relname, a.attnum",
        )
        .bind(schema)
        .fetch_all(pool)
        .await?;

        /// One table's rows of the query, with which column is its primary key.
        struct Raw {
            name: String,
            oid: Oid,
            row_security: bool,
            app_may_select: bool,
            app_triggers: bool,
            cols: Vec<(Column, bool)>,
        }
        let mut grouped: Vec<Raw> = Vec::new();
        for (
            table,
            oid,
            name,
            sql_type,
            typname,
            is_pk,
            row_security,
            app_may_select,
            app_triggers,
        ) in rows
        {
            if grouped.last().is_none_or(|t| t.name != table) {
                grouped.push(Raw {
                    name: table.clone(),
                    oid,
                    row_security,
                    app_may_select,
                    app_triggers,
                    cols: Vec::new(),
                });
            }
            let col = Column {
                name,
                ty: ColumnType::from_pg(&typname),
                sql_type,
            };
            grouped
                .last_mut()
                .expect("just pushed")
                .cols
                .push((col, is_pk));
        }

        let mut catalog = Catalog::default();
        for Raw {
            name,
            oid,
            row_security,
            app_may_select,
            app_triggers,
            cols,
        } in grouped
        {
            let pks: Vec<usize> = cols
                .iter()
                .enumerate()
                .filter(|(_, (_, pk))| *pk)
                .map(|(i, _)| i)
                .collect();
            let columns: Vec<Column> = cols.into_iter().map(|(c, _)| c).collect();
            let reason = match pks.as_slice() {
                [] => Some("has no primary key".to_owned()),
                [pk] if !is_key_type(&columns[*pk].sql_type) => Some(format!(
                    "has a primary key of type {}; text, integer or uuid is needed",
                    columns[*pk].sql_type
                )),
                [_] => None,
                _ => Some("has a primary key of several columns".to_owned()),
            };
            if let Some(reason) = reason {
                catalog.unsupported.insert(name, reason);
                continue;
            }
            let qualified = format!("{}.{}", quote_ident(schema), quote_ident(&name));
            let row_json = row_json_expr(&columns);
            let table = Table {
                name: name.clone(),
                oid,
                columns,
                pk: pks[0],
                qualified,
                row_json,
                open_read: !row_security && app_may_select,
                app_triggers,
            };
            catalog.tables.insert(name, Arc::new(table));
        }
        Ok(catalog)
    }

    /// The table a key names, or a typed error.
    pub fn table(&self, key: &Key, name: &str) -> Result<Arc<Table>> {
        if let Some(t) = self.tables.get(name) {
            return Ok(t.clone());
        }
        let message = match self.unsupported.get(name) {
            Some(reason) => format!("table {name:?} {reason}"),
            None => format!("no table {name:?}"),
        };
        Err(ErrorReply::new(ErrorKind::UnknownTable, message)
            .with_key(key.clone())
            .into())
    }

    /// What clients are told of each table in the welcome.
    pub fn infos(&self) -> std::collections::BTreeMap<String, TableInfo> {
        self.tables
            .iter()
            .map(|(name, t)| {
                let col = t.pk_column();
                let pk_kind = match col.ty {
                    ColumnType::Int | ColumnType::BigInt => PkKind::Integer,
                    ColumnType::Uuid => PkKind::Uuid,
                    _ => PkKind::Text,
                };
                (
                    name.clone(),
                    TableInfo {
                        pk: col.name.clone(),
                        pk_kind,
                    },
                )
            })
            .collect()
    }

    pub fn knows(&self, name: &str) -> bool {
        self.tables.contains_key(name) || self.unsupported.contains_key(name)
    }
}

/// Primary-key types whose text form is one-to-one with their values. `citext` and
/// `char(n)` are not: two spellings of one row would be two keys with two versions.
fn is_key_type(sql_type: &str) -> bool {
    matches!(
        sql_type,
        "text" | "integer" | "smallint" | "bigint" | "uuid"
    ) || sql_type.starts_with("character varying")
}

/// `to_jsonb(r)`, with bigint beyond ±2^53 and numeric columns replaced by strings.
fn row_json_expr(columns: &[Column]) -> String {
    let mut expr = "to_jsonb(r)".to_owned();
    for c in columns {
        let col = format!("r.{}", quote_ident(&c.name));
        let lit = format!("'{}'", c.name.replace('\'', "''"));
        match c.ty {
            ColumnType::Numeric => expr.push_str(&format!(" || jsonb_build_object({lit}, {col}::text)")),
            ColumnType::BigInt => expr.push_str(&format!(
                " || CASE WHEN abs({col}) > {MAX_SAFE_INTEGER} THEN jsonb_build_object({lit}, {col}::text) ELSE '{{}}'::jsonb END"
            )),
            _ => {}
        }
    }
    expr
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_kinds_match_column_types() {
        assert!(ColumnType::Int.accepts(&json!(5)));
        assert!(!ColumnType::Int.accepts(&json!("5")));
        assert!(!ColumnType::Int.accepts(&json!(5.5)));
        assert!(ColumnType::BigInt.accepts(&json!("9007199254740993")));
        assert!(ColumnType::Numeric.accepts(&json!("10.25")));
        assert!(!ColumnType::Text.accepts(&json!(1)));
        assert!(ColumnType::Text.accepts(&Value::Null));
        assert!(ColumnType::Uuid.accepts(&json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")));
        assert!(!ColumnType::Uuid.accepts(&json!("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")));
    }

    #[test]
    fn integer_keys_must_fit_their_column() {
        assert!(fits_int_column("smallint", 32_767));
        assert!(!fits_int_column("smallint", 32_768));
        assert!(fits_int_column("integer", 2_147_483_647));
        assert!(!fits_int_column("integer", 2_147_483_648));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
