//! A query's result as the page sees it: the committed result with the page's own
//! writes of the query's table applied (its in-flight transactions', and the running
//! attempt's), so that a row the page inserts shows in its lists at once.
//!
//! The filter and the order are evaluated here, in the client, where JSON shows the
//! answer exactly ([`Query::matches`], [`compare_rows`]). Where it does not (an order by a
//! string column, which PostgreSQL sorts by its collation; a search; a string that equals
//! another only under `citext`), a written row keeps its committed place if it had one and
//! is otherwise added at the end, and the result says it is not exact: the server's
//! answer, pushed once the writes commit, puts it right.

use crate::Pk;
use crate::query::Query;
use serde_json::Value;
use std::cmp::Ordering;

/// One row of a result: its key and its value as the page sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub pk: Pk,
    pub value: Value,
    /// Written by a transaction of the page that has not committed yet.
    pub pending: bool,
}

/// A result with the page's writes applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Overlaid {
    pub rows: Vec<Row>,
    /// Whether the client could place every written row as PostgreSQL would: if not, a
    /// row may be in the wrong place, or shown though it does not match, until the server's
    /// result arrives.
    pub exact: bool,
}

/// Applies `writes` (each row's key and its new value, `None` if deleted) to `rows`, the
/// query's result in order.
///
/// A limited query's committed result holds only its first rows: a write that moves one
/// of them out leaves a gap that only the server can fill, so the result is then not
/// exact either (it has fewer rows than the limit allows).
pub fn overlay(
    query: &Query,
    mut rows: Vec<Row>,
    writes: &[(Pk, Option<Value>, bool)],
) -> Overlaid {
    let mut exact = true;
    // A full page of a limited query: rows past its end exist, unseen.
    let full = query.limit.is_some_and(|l| rows.len() >= l as usize);
    let orderable = |rows: &[Row], extra: Option<&Value>| {
        rows.iter()
            .map(|r| &r.value)
            .chain(extra)
            .all(|v| query.order.iter().all(|o| orderable(v.get(&o.column))))
    };
    for (pk, value, pending) in writes {
        let had = rows.iter().position(|r| r.pk == *pk);
        if let Some(i) = had {
            rows.remove(i);
        }
        let Some(value) = value else {
            // An unseen row may move up into the gap.
            exact &= !(had.is_some() && full);
            continue;
        };
        let matches = query.matches(Some(value));
        if matches == Some(false) {
            exact &= !(had.is_some() && full);
            continue;
        }
        if matches.is_none() {
            exact = false;
        }
        let row = Row {
            pk: pk.clone(),
            value: value.clone(),
            pending: *pending,
        };
        if query.search.is_none() && orderable(&rows, Some(value)) {
            let at = rows
                .iter()
                .position(|r| compare_rows(query, &row, r) == Ordering::Less)
                .unwrap_or(rows.len());
            // Rows equal in every order column are ordered by their keys, which only
            // integer and uuid keys do here as in PostgreSQL.
            let tied = |r: &Row| compare_columns(query, &row, r) == Ordering::Equal;
            let keyed = |r: &Row| pk_orderable(&row.pk) && pk_orderable(&r.pk);
            exact &= !rows.iter().any(|r| tied(r) && !keyed(r));
            // A row of a full page moved past its last row may have unseen rows before it.
            exact &= !(had.is_some() && full && at == rows.len());
            rows.insert(at, row);
        } else {
            exact = false;
            match had {
                Some(i) => rows.insert(i.min(rows.len()), row),
                None => rows.push(row),
            }
        }
    }
    if let Some(limit) = query.limit {
        rows.truncate(limit as usize);
    }
    Overlaid { rows, exact }
}

/// The order of two rows under the query's order, the primary key breaking ties, for
/// values [`orderable`] says compare as in PostgreSQL. NULLs sort last ascending and first
/// descending, as PostgreSQL's default.
pub fn compare_rows(query: &Query, a: &Row, b: &Row) -> Ordering {
    compare_columns(query, a, b).then_with(|| compare_pks(&a.pk, &b.pk))
}

fn compare_columns(query: &Query, a: &Row, b: &Row) -> Ordering {
    for o in &query.order {
        let x = a.value.get(&o.column).unwrap_or(&Value::Null);
        let y = b.value.get(&o.column).unwrap_or(&Value::Null);
        let ord = compare_values(x, y);
        let ord = if o.desc { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn compare_pks(a: &Pk, b: &Pk) -> Ordering {
    match (a, b) {
        (Pk::Int(x), Pk::Int(y)) => x.cmp(y),
        (Pk::Text(x), Pk::Text(y)) => x.cmp(y),
        (Pk::Int(_), Pk::Text(_)) => Ordering::Less,
        (Pk::Text(_), Pk::Int(_)) => Ordering::Greater,
    }
}

fn compare_values(x: &Value, y: &Value) -> Ordering {
    match (x, y) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        (Value::Number(a), Value::Number(b)) => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
        _ => Ordering::Equal,
    }
}

/// Whether a column's value orders here as in PostgreSQL: numbers, booleans and NULL do;
/// strings follow the column's collation, which the client does not know.
fn orderable(v: Option<&Value>) -> bool {
    matches!(
        v,
        None | Some(Value::Null | Value::Number(_) | Value::Bool(_))
    )
}

/// Integer keys order as numbers; uuids as their lowercase text, byte by byte, which is
/// how PostgreSQL orders them too. A text key follows its collation: unknown here, so a
/// text key that is not a uuid is not orderable.
fn pk_orderable(pk: &Pk) -> bool {
    match pk {
        Pk::Int(_) => true,
        Pk::Text(s) => s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::Op;
    use serde_json::json;

    fn row(id: i64, n: i64) -> Row {
        Row {
            pk: Pk::Int(id),
            value: json!({"id": id, "room": "a", "n": n}),
            pending: false,
        }
    }

    fn ids(o: &Overlaid) -> Vec<i64> {
        o.rows
            .iter()
            .map(|r| match r.pk {
                Pk::Int(n) => n,
                Pk::Text(_) => unreachable!(),
            })
            .collect()
    }

    fn room_a() -> Query {
        Query::table("t")
            .filter("room", Op::Eq, json!("a"))
            .order_by("n", false)
    }

    #[test]
    fn an_insert_lands_in_its_place_and_a_move_out_leaves() {
        let committed = vec![row(1, 10), row(2, 20), row(3, 30)];
        let writes = [
            (
                Pk::Int(9),
                Some(json!({"id": 9, "room": "a", "n": 25})),
                true,
            ),
            (
                Pk::Int(1),
                Some(json!({"id": 1, "room": "b", "n": 10})),
                true,
            ),
            (Pk::Int(3), None, true),
            (
                Pk::Int(2),
                Some(json!({"id": 2, "room": "a", "n": 40})),
                true,
            ),
        ];
        let o = overlay(&room_a(), committed, &writes);
        assert_eq!(ids(&o), [9, 2]);
        assert!(o.exact);
        assert!(o.rows[0].pending);
    }

    #[test]
    fn ties_are_broken_by_the_key_and_nulls_sort_last() {
        let committed = vec![row(1, 10), row(5, 10)];
        let writes = [
            (Pk::Int(3), Some(json!({"room": "a", "n": 10})), true),
            (Pk::Int(0), Some(json!({"room": "a", "n": null})), true),
        ];
        let o = overlay(&room_a(), committed, &writes);
        assert_eq!(ids(&o), [1, 3, 5, 0]);
    }

    #[test]
    fn what_the_client_cannot_decide_is_placed_as_it_can_and_said() {
        // Ordered by a string: the collation decides, so the new row goes last.
        let by_title = Query::table("t").order_by("title", false);
        let committed = vec![Row {
            pk: Pk::Int(1),
            value: json!({"title": "b"}),
            pending: false,
        }];
        let o = overlay(
            &by_title,
            committed,
            &[(Pk::Int(2), Some(json!({"title": "a"})), true)],
        );
        assert_eq!(ids(&o), [1, 2]);
        assert!(!o.exact);
        // A search: the row may not match; shown, marked pending, not exact.
        let search = Query::table("t").search("body", "fox");
        let o = overlay(
            &search,
            vec![],
            &[(Pk::Int(7), Some(json!({"body": "a fox"})), true)],
        );
        assert_eq!(ids(&o), [7]);
        assert!(!o.exact && o.rows[0].pending);
    }

    #[test]
    fn a_limited_result_knows_when_it_lost_a_row_it_cannot_replace() {
        let top2 = room_a().limit(2);
        let o = overlay(
            &top2,
            vec![row(1, 10), row(2, 20)],
            &[(Pk::Int(1), None, true)],
        );
        assert_eq!(ids(&o), [2]);
        assert!(!o.exact);
        // An insert past the end of a full page is cut.
        let o = overlay(
            &top2,
            vec![row(1, 10), row(2, 20)],
            &[(Pk::Int(8), Some(json!({"room": "a", "n": 99})), true)],
        );
        assert_eq!(ids(&o), [1, 2]);
        assert!(o.exact);
        // A row of the page moved past its end: unseen rows may come first.
        let o = overlay(
            &top2,
            vec![row(1, 10), row(2, 20)],
            &[(Pk::Int(1), Some(json!({"room": "a", "n": 99})), true)],
        );
        assert_eq!(ids(&o), [2, 1]);
        assert!(!o.exact);
    }

    mod against_postgres_order {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        /// The query's result over a whole table, as PostgreSQL gives it.
        fn brute(query: &Query, table: &BTreeMap<i64, Value>) -> Vec<i64> {
            let mut rows: Vec<Row> = table
                .iter()
                .filter(|(_, v)| query.matches(Some(v)) == Some(true))
                .map(|(id, v)| Row {
                    pk: Pk::Int(*id),
                    value: v.clone(),
                    pending: false,
                })
                .collect();
            rows.sort_by(|a, b| compare_rows(query, a, b));
            rows.truncate(query.limit.unwrap_or(u32::MAX) as usize);
            rows.iter()
                .map(|r| match r.pk {
                    Pk::Int(n) => n,
                    Pk::Text(_) => unreachable!(),
                })
                .collect()
        }

        fn value() -> impl Strategy<Value = Value> {
            (prop::bool::ANY, prop::option::of(0i64..4))
                .prop_map(|(a, n)| json!({"room": if a { "a" } else { "b" }, "n": n}))
        }

        proptest! {
            /// Whenever the overlay says it is exact, it is the result PostgreSQL would
            /// give once the writes commit.
            #[test]
            fn an_exact_overlay_is_the_committed_result_to_come(
                table in prop::collection::btree_map(0i64..8, value(), 0..8),
                writes in prop::collection::vec((0i64..10, prop::option::of(value())), 0..4),
                desc in prop::bool::ANY,
                limit in prop::option::of(1u32..4),
            ) {
                let mut query = Query::table("t").filter("room", Op::Eq, json!("a")).order_by("n", desc);
                query.limit = limit;
                let page: Vec<Row> = brute(&query, &table)
                    .into_iter()
                    .map(|id| Row { pk: Pk::Int(id), value: table[&id].clone(), pending: false })
                    .collect();
                let ws: Vec<(Pk, Option<Value>, bool)> =
                    writes.iter().map(|(id, v)| (Pk::Int(*id), v.clone(), true)).collect();
                let o = overlay(&query, page, &ws);
                let mut after = table.clone();
                for (id, v) in &writes {
                    match v {
                        Some(v) => { after.insert(*id, v.clone()); }
                        None => { after.remove(id); }
                    }
                }
                if o.exact {
                    prop_assert_eq!(ids(&o), brute(&query, &after));
                }
            }
        }
    }
}
