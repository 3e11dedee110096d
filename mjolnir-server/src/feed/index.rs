//! Which subscribed queries a change of one row may change, found without looking at the
//! others.
//!
//! The rule is the feed's (docs/architecture.md, "Live queries"): a query is re-run if it
//! is a count, if some subscriber's last result holds the row (its old value matched), or
//! if [`Query::matches`] does not rule the new value out. Looking every query of the table
//! up for every change costs queries × rows; two indexes find the same queries:
//!
//! - **The rows of the results**: from a row's key to the queries whose last result, any
//!   subscriber's, holds it, with how many subscribers' results do.
//! - **One equality condition of each query** (`eq`, or else `in`), by table, column and
//!   operand. A change whose new value has `room = 7` looks at the queries with `room = 7`
//!   (and at those whose operand `matches` cannot compare with 7 exactly: another type, a
//!   string beyond ASCII), not at those with `room = 8`: their condition is certainly false,
//!   so `matches` would say `Some(false)`. Queries without such a condition, and counts,
//!   are looked at on every change of their table, as before.
//!
//! Every query the indexes find is then decided by the same expression as before, so the
//! decisions are exactly the old scan's (the tests compare them on random queries).

use mjolnir_core::Key;
use mjolnir_core::query::{Op, Query};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// A subscribed query's number in the index: cheap to hash, unlike its key (whose literals
/// hash by their JSON text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct QueryId(u64);

#[derive(Debug, Default)]
pub(super) struct QueryIndex {
    next: u64,
    ids: HashMap<Key, QueryId>,
    keys: HashMap<QueryId, Key>,
    tables: HashMap<String, TableQueries>,
    /// Row key → the queries whose last result holds it → how many subscribers' results.
    held: HashMap<Key, HashMap<QueryId, u32>>,
}

/// The subscribed queries of one table.
#[derive(Debug, Default)]
struct TableQueries {
    /// Re-run on every change of the table: the change set lacks the row's old value.
    counts: HashSet<QueryId>,
    /// Without an equality condition to index them by: `matches` decides each.
    unindexed: HashSet<QueryId>,
    /// The others, by the column of the condition they are indexed by.
    columns: HashMap<String, ColumnQueries>,
}

impl TableQueries {
    fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.unindexed.is_empty() && self.columns.is_empty()
    }
}

/// The queries indexed by one column's equality condition.
#[derive(Debug, Default)]
struct ColumnQueries {
    /// By operand, as `compare` sees it equal to a value.
    exact: HashMap<Operand, HashSet<QueryId>>,
    /// Every query with an operand of each kind: a value of another kind compares with
    /// none of them exactly.
    numbers: HashSet<QueryId>,
    bools: HashSet<QueryId>,
    ascii: HashSet<QueryId>,
    /// Operands that compare exactly with no value (strings beyond ASCII, arrays, objects):
    /// looked at for every value but null.
    wide: HashSet<QueryId>,
}

impl ColumnQueries {
    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.numbers.is_empty()
            && self.bools.is_empty()
            && self.ascii.is_empty()
            && self.wide.is_empty()
    }

    /// The queries whose condition on this column a row's `value` in it may satisfy: every
    /// other query's condition is certainly false for it.
    fn candidates(&self, value: &Value, out: &mut Vec<QueryId>) {
        let exact = |operand: Operand, out: &mut Vec<QueryId>| {
            out.extend(self.exact.get(&operand).into_iter().flatten());
        };
        let all = |set: &HashSet<QueryId>, out: &mut Vec<QueryId>| out.extend(set);
        match class(value) {
            // A comparison with NULL is never true.
            Class::Never => return,
            Class::Exact(operand @ Operand::Number(_)) => {
                exact(operand, out);
                all(&self.bools, out);
                all(&self.ascii, out);
            }
            Class::Exact(operand @ Operand::Bool(_)) => {
                exact(operand, out);
                all(&self.numbers, out);
                all(&self.ascii, out);
            }
            Class::Exact(operand @ Operand::Ascii(_)) => {
                exact(operand, out);
                all(&self.numbers, out);
                all(&self.bools, out);
            }
            Class::Wide => {
                all(&self.numbers, out);
                all(&self.bools, out);
                all(&self.ascii, out);
            }
        }
        all(&self.wide, out);
    }

    fn insert(&mut self, class: &Class, id: QueryId) {
        match class {
            Class::Never => {}
            Class::Wide => {
                self.wide.insert(id);
            }
            Class::Exact(operand) => {
                self.exact.entry(operand.clone()).or_default().insert(id);
                self.kind(operand).insert(id);
            }
        }
    }

    fn remove(&mut self, class: &Class, id: QueryId) {
        match class {
            Class::Never => {}
            Class::Wide => {
                self.wide.remove(&id);
            }
            Class::Exact(operand) => {
                if let Some(set) = self.exact.get_mut(operand) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.exact.remove(operand);
                    }
                }
                self.kind(operand).remove(&id);
            }
        }
    }

    fn kind(&mut self, operand: &Operand) -> &mut HashSet<QueryId> {
        match operand {
            Operand::Number(_) => &mut self.numbers,
            Operand::Bool(_) => &mut self.bools,
            Operand::Ascii(_) => &mut self.ascii,
        }
    }
}

/// A value as `compare` decides its equality: two values of one `Operand` kind are equal
/// (`Some(true)`) if their operands are equal and certainly unequal (`Some(false)`)
/// otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Operand {
    /// Compared as `f64`: the bits, with -0 as 0.
    Number(u64),
    Bool(bool),
    /// An ASCII string, lowercased: ASCII strings that differ in more than case are
    /// unequal; those that differ only in case are undecided, which is found too.
    Ascii(String),
}

/// How a value (a row's, or a condition's operand) compares for equality.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Class {
    /// Equal to nothing: null (a comparison with NULL is never true).
    Never,
    Exact(Operand),
    /// Undecided against anything but null: strings beyond ASCII, arrays, objects, numbers
    /// without an `f64`.
    Wide,
}

fn class(v: &Value) -> Class {
    match v {
        Value::Null => Class::Never,
        Value::Number(n) => match n.as_f64() {
            // -0.0 == 0.0, and they are one bucket.
            Some(f) => Class::Exact(Operand::Number((f + 0.0).to_bits())),
            None => Class::Wide,
        },
        Value::Bool(b) => Class::Exact(Operand::Bool(*b)),
        Value::String(s) if s.is_ascii() => Class::Exact(Operand::Ascii(s.to_ascii_lowercase())),
        Value::String(_) | Value::Array(_) | Value::Object(_) => Class::Wide,
    }
}

/// Where a query is filed in its table.
#[derive(Debug, PartialEq)]
enum Place {
    Count,
    Unindexed,
    /// By this column's condition, under each of these classes (one for `eq`, one per
    /// option for `in`).
    Column(String, Vec<Class>),
}

/// Where `q` is filed: by its first `eq` condition, or else its first `in` whose operand
/// is an array. `matches` says `Some(false)` for a row whose value makes that condition
/// `Some(false)`, and the condition is that whenever no class of it is a candidate for the
/// value (see [`ColumnQueries::candidates`]).
fn place(q: &Query) -> Place {
    if q.count {
        return Place::Count;
    }
    if let Some(c) = q.filter.iter().find(|c| c.op == Op::Eq) {
        return Place::Column(c.column.clone(), vec![class(&c.value.0)]);
    }
    // `in` with an operand that is not an array is undecided for every row (`matches`).
    let options = q
        .filter
        .iter()
        .find_map(|c| match (c.op, c.value.0.as_array()) {
            (Op::In, Some(options)) => Some((c, options)),
            _ => None,
        });
    if let Some((c, options)) = options {
        return Place::Column(c.column.clone(), options.iter().map(class).collect());
    }
    Place::Unindexed
}

impl QueryIndex {
    /// Files a newly subscribed query (once; again changes nothing).
    pub(super) fn add(&mut self, key: &Key) {
        let Key::Query(q) = key else { return };
        if self.ids.contains_key(key) {
            return;
        }
        self.next += 1;
        let id = QueryId(self.next);
        self.ids.insert(key.clone(), id);
        self.keys.insert(id, key.clone());
        let table = self.tables.entry(q.table.clone()).or_default();
        match place(q) {
            Place::Count => {
                table.counts.insert(id);
            }
            Place::Unindexed => {
                table.unindexed.insert(id);
            }
            Place::Column(column, classes) => {
                let queries = table.columns.entry(column).or_default();
                for class in &classes {
                    queries.insert(class, id);
                }
            }
        }
    }

    /// Forgets a query nobody holds any more. Its results must have been forgotten first
    /// ([`QueryIndex::replace_result`] to `None`).
    pub(super) fn remove(&mut self, key: &Key) {
        let Key::Query(q) = key else { return };
        let Some(id) = self.ids.remove(key) else {
            return;
        };
        self.keys.remove(&id);
        let Some(table) = self.tables.get_mut(&q.table) else {
            return;
        };
        match place(q) {
            Place::Count => {
                table.counts.remove(&id);
            }
            Place::Unindexed => {
                table.unindexed.remove(&id);
            }
            Place::Column(column, classes) => {
                if let Some(queries) = table.columns.get_mut(&column) {
                    for class in &classes {
                        queries.remove(class, id);
                    }
                    if queries.is_empty() {
                        table.columns.remove(&column);
                    }
                }
            }
        }
        if table.is_empty() {
            self.tables.remove(&q.table);
        }
    }

    /// One subscriber's last result of `key` went from `old` to `new` (either `None`: it
    /// had none, or has none any more).
    pub(super) fn replace_result(&mut self, key: &Key, old: Option<&Value>, new: Option<&Value>) {
        if old == new {
            return;
        }
        let (Key::Query(q), Some(&id)) = (key, self.ids.get(key)) else {
            return;
        };
        for row in old.map(|r| q.row_keys(r)).unwrap_or_default() {
            if let Some(queries) = self.held.get_mut(&row) {
                if let Some(n) = queries.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        queries.remove(&id);
                    }
                }
                if queries.is_empty() {
                    self.held.remove(&row);
                }
            }
        }
        for row in new.map(|r| q.row_keys(r)).unwrap_or_default() {
            *self.held.entry(row).or_default().entry(id).or_default() += 1;
        }
    }

    /// Adds to `out` the subscribed queries a change of `key` to `value` may change: those
    /// whose last result (any subscriber's) holds the row, the counts of its table, and
    /// those the new value may match.
    pub(super) fn affected(&self, key: &Key, value: Option<&Value>, out: &mut HashSet<Key>) {
        let Key::Row { table, .. } = key else {
            return;
        };
        let Some(queries) = self.tables.get(table) else {
            return;
        };
        let held = self.held.get(key);
        let mut candidates: Vec<QueryId> = Vec::new();
        candidates.extend(held.into_iter().flat_map(HashMap::keys));
        candidates.extend(&queries.counts);
        // A deleted row matches nothing; only the results that held it change.
        if let Some(row) = value {
            candidates.extend(&queries.unindexed);
            for (column, by_column) in &queries.columns {
                by_column.candidates(row.get(column).unwrap_or(&Value::Null), &mut candidates);
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        for id in candidates {
            let Some(qk @ Key::Query(q)) = self.keys.get(&id) else {
                continue;
            };
            // The feed's rule, as it was decided by looking at every query of the table.
            let is_held = held.is_some_and(|h| h.contains_key(&id));
            if q.count || is_held || q.matches(value) != Some(false) {
                out.insert(qk.clone());
            }
        }
    }

    /// Whether nothing is filed: every query and every result forgotten.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
            && self.keys.is_empty()
            && self.tables.is_empty()
            && self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_value_finds_exactly_the_operands_it_may_equal() {
        let q = |v: Value| Query::table("t").filter("c", Op::Eq, v);
        let queries = [
            q(json!(7)),
            q(json!(7.0)),
            q(json!(8)),
            q(json!(true)),
            q(json!("Room")),
            q(json!("other")),
            q(json!("é")),
            q(json!("7")),
        ];
        let mut index = QueryIndex::default();
        for query in &queries {
            index.add(&Key::query(query.clone()));
        }
        let values = [
            json!(7),
            json!(-0.0),
            json!(0),
            json!(true),
            json!(false),
            json!("room"),
            json!("ROOM"),
            json!("é"),
            json!("7"),
            json!([1]),
            Value::Null,
        ];
        // Every query is either found or certainly unmatched by the value.
        for v in values {
            let mut found = HashSet::new();
            index.affected(&Key::row("t", 1), Some(&json!({"c": v})), &mut found);
            for query in &queries {
                let may = query.matches(Some(&json!({"c": v}))) != Some(false);
                assert_eq!(
                    found.contains(&Key::query(query.clone())),
                    may,
                    "{query} for {v}"
                );
            }
        }
    }
}
