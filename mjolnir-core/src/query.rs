//! Queries: a read of the rows of one table that match a filter, in an order, up to a
//! limit, or of how many there are.
//!
//! A query is read like a key (it is one, [`crate::Key::Query`]): the client caches its
//! result, a handler that misses it fetches it and runs again, and a commit carries what
//! each query read gave ([`QueryRead`]). The server validates that by running the query
//! again under locks that keep writers of its table out, and comparing: a query read is
//! stale if its result is not the one the attempt saw, so a row inserted, deleted, or
//! changed into or out of the filter by someone else makes the commit conflict
//! (docs/architecture.md, "Queries").
//!
//! A rows query's result is the JSON array of the primary keys of its rows, in order; the
//! rows themselves travel as entries of their own keys, and an attempt that reads the
//! query records a read of each row too, so a change of a row's value is a conflict like
//! any other read. A count query's result is a JSON number.

use crate::{Key, Pk};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// The most rows a query returns, and the largest `limit` it may ask for. A query without
/// a limit whose filter matches more rows is refused, rather than cut short silently.
pub const MAX_ROWS: u32 = 1000;
/// The most conditions in one filter.
pub const MAX_CONDITIONS: usize = 16;
/// The most values in one `in` list.
pub const MAX_IN: usize = 100;
/// The most columns a query may order by.
pub const MAX_ORDER: usize = 4;
/// The most queries one read or one commit may hold: each may return [`MAX_ROWS`] rows,
/// and each of a commit's is run again under its table's lock.
pub const MAX_PER_REQUEST: usize = 32;
/// The most words in a search, and its longest text in bytes.
pub const MAX_SEARCH_TERMS: usize = 16;
pub const MAX_SEARCH_BYTES: usize = 256;

/// One query of one table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Query {
    pub table: String,
    /// Conditions that must all hold.
    #[serde(rename = "where", default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Condition>,
    /// Columns to order by, most significant first. The primary key always breaks ties, so
    /// a result has one order and two runs of one query on one state agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub order: Vec<Order>,
    /// At most this many rows ([`MAX_ROWS`] at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Count the matching rows instead of returning them; `order` and `limit` must then be
    /// left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub count: bool,
    /// Full-text search: only rows whose column matches the text, most relevant first
    /// unless `order` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<Search>,
}

/// A full-text search of one column, in PostgreSQL's web search syntax (words, `"quoted
/// phrases"`, `or`, `-excluded`), as `websearch_to_tsquery` reads it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Search {
    /// A text column, or a `tsvector` column the app's migration declares.
    pub column: String,
    pub text: String,
}

/// `column op value`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Condition {
    pub column: String,
    pub op: Op,
    /// The operand: a scalar, an array for `in`, left out for `is_null` and `not_null`.
    #[serde(default, skip_serializing_if = "Literal::is_null")]
    pub value: Literal,
}

/// The comparisons a filter may use. They are SQL's: a comparison with a NULL column is
/// not true, so `ne` does not match rows whose column is NULL (use `is_null` for those).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    IsNull,
    NotNull,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::IsNull => "is_null",
            Op::NotNull => "not_null",
        }
    }

    /// The operator as the browser's `where(column, op, value)` spells it (`is_null` and
    /// `not_null` are `==` and `!=` with `null` there).
    pub fn js(self) -> &'static str {
        match self {
            Op::Eq | Op::IsNull => "==",
            Op::Ne | Op::NotNull => "!=",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Gt => ">",
            Op::Gte => ">=",
            Op::In => "in",
        }
    }

    /// The operator a JavaScript `where(column, op, value)` names (`==`, `!=`, `<`, `<=`,
    /// `>`, `>=`, `in`), with its operand: `==` and `!=` with `null` are `is_null` and
    /// `not_null`, as SQL would need them.
    pub fn from_js(op: &str, value: Value) -> Option<(Op, Value)> {
        let op = match (op, value.is_null()) {
            ("==" | "===", true) => return Some((Op::IsNull, Value::Null)),
            ("!=" | "!==", true) => return Some((Op::NotNull, Value::Null)),
            ("==" | "===", false) => Op::Eq,
            ("!=" | "!==", false) => Op::Ne,
            ("<", _) => Op::Lt,
            ("<=", _) => Op::Lte,
            (">", _) => Op::Gt,
            (">=", _) => Op::Gte,
            ("in", _) => Op::In,
            _ => return None,
        };
        Some((op, value))
    }

    /// Whether the condition takes no operand.
    pub fn is_unary(self) -> bool {
        matches!(self, Op::IsNull | Op::NotNull)
    }
}

/// One column to order by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct Order {
    pub column: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub desc: bool,
}

/// A JSON value that can be part of a key: ordered and hashed by its JSON text, so two
/// queries that differ only in a value are two keys, and equal queries one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(type = "unknown"))]
pub struct Literal(pub Value);

impl Literal {
    pub fn is_null(&self) -> bool {
        self.0.is_null()
    }
}

impl Ord for Literal {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.to_string().cmp(&other.0.to_string())
    }
}

impl PartialOrd for Literal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Literal {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.to_string().hash(state)
    }
}

/// What one query read of an attempt saw, sent with its commit: the query's result as the
/// client held it (the array of primary keys, or the count).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
pub struct QueryRead {
    pub query: Query,
    #[cfg_attr(feature = "ts", ts(type = "unknown"))]
    pub seen: Value,
}

impl Query {
    /// A query of every row of `table`.
    pub fn table(table: impl Into<String>) -> Query {
        Query {
            table: table.into(),
            filter: Vec::new(),
            order: Vec::new(),
            limit: None,
            count: false,
            search: None,
        }
    }

    /// Keeps only the rows whose `column` matches `text` (see [`Search`]).
    pub fn search(mut self, column: impl Into<String>, text: impl Into<String>) -> Query {
        self.search = Some(Search {
            column: column.into(),
            text: text.into(),
        });
        self
    }

    /// Adds `column op value`.
    pub fn filter(mut self, column: impl Into<String>, op: Op, value: Value) -> Query {
        self.filter.push(Condition {
            column: column.into(),
            op,
            value: Literal(value),
        });
        self
    }

    pub fn order_by(mut self, column: impl Into<String>, desc: bool) -> Query {
        self.order.push(Order {
            column: column.into(),
            desc,
        });
        self
    }

    pub fn limit(mut self, limit: u32) -> Query {
        self.limit = Some(limit);
        self
    }

    /// The count of the rows this query's filter matches.
    pub fn counted(mut self) -> Query {
        self.count = true;
        self.order.clear();
        self.limit = None;
        self
    }

    /// Why this query cannot be run, whatever the table: the message of an
    /// `invalid_query` refusal, or `None` if its shape is sound. Columns and the types of
    /// values are checked against the table by the server.
    pub fn misshapen(&self) -> Option<String> {
        if self.filter.len() > MAX_CONDITIONS {
            return Some(format!(
                "a query has at most {MAX_CONDITIONS} conditions, this one {}",
                self.filter.len()
            ));
        }
        if self.order.len() > MAX_ORDER {
            return Some(format!(
                "a query orders by at most {MAX_ORDER} columns, this one by {}",
                self.order.len()
            ));
        }
        if let Some(limit) = self.limit
            && !(1..=MAX_ROWS).contains(&limit)
        {
            return Some(format!(
                "a query's limit is 1 to {MAX_ROWS}, this one asks for {limit}"
            ));
        }
        if self.count && (self.limit.is_some() || !self.order.is_empty()) {
            return Some("a count has no order and no limit".to_owned());
        }
        if let Some(search) = &self.search {
            let terms = search.text.split_whitespace().count();
            if terms == 0 {
                return Some("a search needs at least one word".to_owned());
            }
            if terms > MAX_SEARCH_TERMS || search.text.len() > MAX_SEARCH_BYTES {
                return Some(format!(
                    "a search has at most {MAX_SEARCH_TERMS} words and {MAX_SEARCH_BYTES} bytes"
                ));
            }
        }
        for c in &self.filter {
            let value = &c.value.0;
            let fits = match c.op {
                Op::IsNull | Op::NotNull => value.is_null(),
                Op::In => value
                    .as_array()
                    .is_some_and(|vs| vs.len() <= MAX_IN && vs.iter().all(is_scalar)),
                _ => is_scalar(value) && !value.is_null(),
            };
            if !fits {
                let wanted = match c.op {
                    Op::IsNull | Op::NotNull => "no value".to_owned(),
                    Op::In => format!("an array of at most {MAX_IN} strings, numbers or booleans"),
                    _ => "a string, number or boolean (use is_null for null)".to_owned(),
                };
                return Some(format!(
                    "{} {} takes {wanted}, not {value}",
                    c.column,
                    c.op.as_str()
                ));
            }
        }
        None
    }

    /// The keys of the rows in `result`, a rows query's result (the array of their primary
    /// keys, in order). Anything else in it is skipped.
    pub fn row_keys(&self, result: &Value) -> Vec<Key> {
        let pks = result.as_array().map(Vec::as_slice).unwrap_or_default();
        let mut keys = Vec::with_capacity(pks.len());
        for pk in pks {
            let pk = match pk {
                Value::String(s) => Pk::Text(s.clone()),
                Value::Number(n) if n.is_i64() => Pk::Int(n.as_i64().unwrap_or_default()),
                _ => continue,
            };
            keys.push(Key::row(self.table.clone(), pk));
        }
        keys
    }

    /// The most rows this query may return.
    pub fn max_rows(&self) -> u32 {
        self.limit.unwrap_or(MAX_ROWS)
    }

    /// Whether a row with this value matches the filter: `Some(false)` only when it
    /// certainly does not, `None` when only PostgreSQL can tell. The server uses it to
    /// skip re-running a subscribed query for a change it cannot affect, so it must never
    /// say `false` where PostgreSQL would say true.
    ///
    /// Only what JSON shows exactly is decided here: numbers against numbers, booleans,
    /// the equality of strings (a `citext` column or a nondeterministic collation could
    /// differ, so strings that differ only in case, or otherwise compare equal under a
    /// collation, are undecided, and so are unequal strings beyond ASCII), nulls. Order between strings depends on the collation,
    /// and numbers spelled as strings (`numeric`, large `bigint`s) on the column's type:
    /// both are undecided.
    pub fn matches(&self, row: Option<&Value>) -> Option<bool> {
        let Some(row) = row else {
            return Some(false);
        };
        // Only PostgreSQL's text search can say whether a row matches a search.
        let mut known = self.search.is_none();
        for c in &self.filter {
            let v = row.get(&c.column).unwrap_or(&Value::Null);
            let holds = match c.op {
                Op::IsNull => Some(v.is_null()),
                Op::NotNull => Some(!v.is_null()),
                Op::In => c.value.0.as_array().and_then(|options| {
                    let each: Vec<Option<bool>> =
                        options.iter().map(|o| compare(v, o, Op::Eq)).collect();
                    if each.contains(&Some(true)) {
                        Some(true)
                    } else if each.iter().all(|e| *e == Some(false)) {
                        Some(false)
                    } else {
                        None
                    }
                }),
                op => compare(v, &c.value.0, op),
            };
            match holds {
                Some(false) => return Some(false),
                Some(true) => {}
                None => known = false,
            }
        }
        known.then_some(true)
    }
}

/// `v op operand` as PostgreSQL would decide it, where JSON shows it exactly.
fn compare(v: &Value, operand: &Value, op: Op) -> Option<bool> {
    use std::cmp::Ordering::*;
    let order = match (v, operand) {
        // A comparison with NULL is never true.
        (Value::Null, _) | (_, Value::Null) => return Some(false),
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?)?,
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        (Value::String(a), Value::String(b)) => {
            return match op {
                // Equal bytes are equal under every collation; unequal ones may not be
                // unequal (citext, nondeterministic collations) unless they differ in
                // more than case. Only ASCII's case is decided here: Unicode's case
                // tables (`str::to_lowercase`) would cost the browser module 14 KB
                // gzipped, so other strings are left to the server.
                Op::Eq | Op::Ne if a == b => Some(op == Op::Eq),
                Op::Eq | Op::Ne if a.is_ascii() && b.is_ascii() && !a.eq_ignore_ascii_case(b) => {
                    Some(op == Op::Ne)
                }
                _ => None,
            };
        }
        _ => return None,
    };
    Some(match op {
        Op::Eq => order == Equal,
        Op::Ne => order != Equal,
        Op::Lt => order == Less,
        Op::Lte => order != Greater,
        Op::Gt => order == Greater,
        Op::Gte => order != Less,
        _ => return None,
    })
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

impl fmt::Display for Query {
    /// The query as JavaScript would build it, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table({})", crate::key::quoted(&self.table))?;
        for c in &self.filter {
            // The browser's spelling: `is_null` is `== null`, `not_null` `!= null`.
            let (op, value) = match c.op {
                Op::IsNull => ("==", &Value::Null),
                Op::NotNull => ("!=", &Value::Null),
                op => (op.js(), &c.value.0),
            };
            write!(
                f,
                ".where({}, {op:?}, {value})",
                crate::key::quoted(&c.column)
            )?;
        }
        if let Some(s) = &self.search {
            write!(
                f,
                ".search({}, {})",
                crate::key::quoted(&s.column),
                crate::key::quoted(&s.text)
            )?;
        }
        for o in &self.order {
            let dir = if o.desc { "desc" } else { "asc" };
            write!(f, ".orderBy({}, {dir:?})", crate::key::quoted(&o.column))?;
        }
        if let Some(limit) = self.limit {
            write!(f, ".limit({limit})")?;
        }
        if self.count {
            f.write_str(".count()")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_form_is_small_and_reads_back() {
        let q = Query::table("todos")
            .filter("done", Op::Eq, json!(false))
            .filter("owner", Op::IsNull, Value::Null)
            .order_by("created", true)
            .limit(50);
        let wire = serde_json::to_value(&q).unwrap();
        assert_eq!(
            wire,
            json!({
                "table": "todos",
                "where": [{"column": "done", "op": "eq", "value": false},
                          {"column": "owner", "op": "is_null"}],
                "order": [{"column": "created", "desc": true}],
                "limit": 50
            })
        );
        assert_eq!(serde_json::from_value::<Query>(wire).unwrap(), q);
        assert_eq!(
            q.to_string(),
            r#"table("todos").where("done", "==", false).where("owner", "==", null).orderBy("created", "desc").limit(50)"#
        );
    }

    #[test]
    fn an_unknown_operator_is_named() {
        let err = serde_json::from_value::<Query>(json!({
            "table": "t", "where": [{"column": "a", "op": "like", "value": "x%"}]
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown variant `like`"), "{err}");
    }

    #[test]
    fn misshapen_queries_are_explained() {
        let ok = Query::table("t").filter("a", Op::In, json!([1, 2]));
        assert_eq!(ok.misshapen(), None);
        let cases = [
            (Query::table("t").limit(0), "limit is 1 to 1000"),
            (Query::table("t").limit(1001), "limit is 1 to 1000"),
            (
                Query::table("t").filter("a", Op::Eq, Value::Null),
                "use is_null",
            ),
            (
                Query::table("t").filter("a", Op::Eq, json!({"x": 1})),
                "a eq takes",
            ),
            (
                Query::table("t").filter("a", Op::In, json!(3)),
                "a in takes an array",
            ),
            (
                Query::table("t").filter("a", Op::In, json!(vec![1; 101])),
                "at most 100",
            ),
            (
                Query::table("t").filter("a", Op::IsNull, json!(1)),
                "takes no value",
            ),
            (
                Query {
                    count: true,
                    ..Query::table("t").limit(3)
                },
                "a count has no order",
            ),
        ];
        for (q, wanted) in cases {
            let got = q.misshapen().unwrap_or_default();
            assert!(got.contains(wanted), "{q}: {got:?} lacks {wanted:?}");
        }
        let many = (0..17).fold(Query::table("t"), |q, i| {
            q.filter(format!("c{i}"), Op::Eq, json!(i))
        });
        assert!(many.misshapen().unwrap().contains("at most 16 conditions"));
    }

    #[test]
    fn matching_decides_only_what_json_shows_exactly() {
        let row = json!({"room": "a", "n": 5, "done": false, "note": null, "big": "12.50"});
        let q = |f: &str, op: Op, v: Value| Query::table("t").filter(f, op, v);
        let cases = [
            (q("room", Op::Eq, json!("a")), Some(true)),
            (q("room", Op::Eq, json!("b")), Some(false)),
            // Only case differs: citext would say equal.
            (q("room", Op::Eq, json!("A")), None),
            // Beyond ASCII, case is not decided here.
            (q("room", Op::Eq, json!("é")), None),
            (q("room", Op::Ne, json!("b")), Some(true)),
            (q("room", Op::Lt, json!("b")), None),
            (q("n", Op::Gt, json!(4)), Some(true)),
            (q("n", Op::Gte, json!(6)), Some(false)),
            (q("n", Op::In, json!([1, 5])), Some(true)),
            (q("n", Op::In, json!([1, 2])), Some(false)),
            (q("done", Op::Eq, json!(false)), Some(true)),
            (q("note", Op::IsNull, Value::Null), Some(true)),
            (q("missing", Op::IsNull, Value::Null), Some(true)),
            (q("note", Op::Eq, json!("x")), Some(false)),
            (q("note", Op::Ne, json!("x")), Some(false)),
            (q("big", Op::Gt, json!(3)), None),
        ];
        for (query, want) in cases {
            assert_eq!(query.matches(Some(&row)), want, "{query}");
        }
        // One certain false decides, whatever else is unknown.
        let both = q("room", Op::Lt, json!("b")).filter("n", Op::Eq, json!(6));
        assert_eq!(both.matches(Some(&row)), Some(false));
        assert_eq!(q("n", Op::Eq, json!(5)).matches(None), Some(false));
    }

    #[test]
    fn searches_are_bounded_and_never_matched_here() {
        let q = Query::table("notes").search("body", "quick brown fox");
        assert_eq!(q.misshapen(), None);
        let row = json!({"body": "the quick brown fox"});
        assert_eq!(q.matches(Some(&row)), None);
        let q = q.filter("room", Op::Eq, json!(1));
        assert_eq!(q.matches(Some(&json!({"room": 2}))), Some(false));
        assert!(
            Query::table("n")
                .search("b", "  ")
                .misshapen()
                .unwrap()
                .contains("at least one word")
        );
        let long = vec!["w"; 17].join(" ");
        assert!(
            Query::table("n")
                .search("b", long)
                .misshapen()
                .unwrap()
                .contains("at most 16")
        );
        assert_eq!(
            Query::table("n").search("b", "a \"c\"").to_string(),
            r#"table("n").search("b", "a \"c\"")"#
        );
    }

    #[test]
    fn equal_queries_are_one_key() {
        let a = Query::table("t").filter("n", Op::Eq, json!(1));
        let b = Query::table("t").filter("n", Op::Eq, json!(1));
        let c = Query::table("t").filter("n", Op::Eq, json!("1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a.cmp(&c), Ordering::Equal);
    }
}
