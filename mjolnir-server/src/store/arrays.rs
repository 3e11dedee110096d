//! Packing a batch into the parameters of `mjolnir.commit_batch`: one array per field of
//! its reads and writes (see the migration for what each means), so that the whole batch is
//! one statement whatever its size.

use super::plan::{Plan, dep_query, statement};
use super::{Resolved, locks};
use mjolnir_core::TxnId;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// One transaction of a call of `mjolnir.commit_batch`.
pub(super) struct Member<'a> {
    pub(super) user: Option<&'a str>,
    pub(super) txn: &'a TxnId,
    pub(super) plan: &'a Plan,
}

/// The parameter arrays of `mjolnir.commit_batch` (see its migration for their meaning).
#[derive(Default)]
pub(super) struct Arrays<'a> {
    pub(super) txn_ids: Vec<&'a str>,
    pub(super) users: Vec<&'a str>,
    pub(super) read_ends: Vec<i32>,
    pub(super) write_ends: Vec<i32>,
    pub(super) read_owners: Vec<i32>,
    pub(super) write_owners: Vec<i32>,
    pub(super) read_spaces: Vec<&'a str>,
    pub(super) read_pks: Vec<&'a str>,
    pub(super) read_versions: Vec<i64>,
    /// Per read: the transaction a dependency is on; `None` for a plain read.
    pub(super) read_afters: Vec<Option<&'a str>>,
    pub(super) read_values: Vec<Option<Value>>,
    /// Per read: the query reading a dependency's value as the user.
    pub(super) read_sqls: Vec<Option<i32>>,
    pub(super) write_spaces: Vec<&'a str>,
    pub(super) write_pks: Vec<&'a str>,
    pub(super) write_keys: Vec<String>,
    pub(super) write_args: Vec<Value>,
    /// Each statement text once; the writes refer to them by (1-based) index.
    pub(super) statements: Vec<String>,
    statement_index: HashMap<String, i32>,
    pub(super) write_sqls: Vec<i32>,
    pub(super) write_sets: Vec<Option<i32>>,
    pub(super) write_checks: Vec<Option<i32>>,
    pub(super) query_owners: Vec<i32>,
    pub(super) query_sqls: Vec<i32>,
    pub(super) query_args: Vec<Value>,
    pub(super) query_seen: Vec<Value>,
    /// The table locks, in the order to take them (by qualified name), and their modes.
    pub(super) lock_tables: Vec<&'a str>,
    pub(super) lock_modes: Vec<&'static str>,
}

impl Arrays<'_> {
    /// The index of `sql` in `statements`, adding it if new.
    fn statement(&mut self, sql: String) -> i32 {
        if let Some(&i) = self.statement_index.get(&sql) {
            return i;
        }
        self.statements.push(sql.clone());
        let i = self.statements.len() as i32;
        self.statement_index.insert(sql, i);
        i
    }
}

impl<'a> Arrays<'a> {
    /// The locks `batch` takes (their hashes, in the order to take them, and whether each
    /// is exclusive) and its parameter arrays.
    pub(super) fn pack(batch: &[Member<'a>]) -> (Vec<i32>, Vec<bool>, Arrays<'a>) {
        let reads: Vec<&Resolved> = batch
            .iter()
            .flat_map(|m| {
                let reads = m.plan.reads.iter().map(|(r, _)| r);
                reads.chain(m.plan.deps.iter().map(|d| &d.key))
            })
            .collect();
        let writes: Vec<&Resolved> = batch
            .iter()
            .flat_map(|m| &m.plan.writes)
            .map(|(r, _)| r)
            .collect();
        let (hashes, exclusive) = locks::plan(reads, writes);
        let mut a = Arrays::default();
        for m in batch {
            a.txn_ids.push(&m.txn.0);
            a.users.push(m.user.unwrap_or(""));
            let owner = a.txn_ids.len() as i32;
            for (r, version) in &m.plan.reads {
                a.read_owners.push(owner);
                a.read_spaces.push(&r.space);
                a.read_pks.push(&r.pk);
                a.read_versions.push(version.0 as i64);
                a.read_afters.push(None);
                a.read_values.push(None);
                a.read_sqls.push(None);
            }
            // A dependency is one more read, after the plain ones.
            for d in &m.plan.deps {
                a.read_owners.push(owner);
                a.read_spaces.push(&d.key.space);
                a.read_pks.push(&d.key.pk);
                a.read_versions.push(0);
                a.read_afters.push(Some(&d.after.0));
                a.read_values.push(d.value.clone());
                let sql = a.statement(dep_query(&d.key));
                a.read_sqls.push(Some(sql));
            }
            for (r, op) in &m.plan.writes {
                let s = statement(r, op);
                a.write_owners.push(owner);
                a.write_spaces.push(&r.space);
                a.write_pks.push(&r.pk);
                a.write_keys
                    .push(serde_json::to_string(&r.key).expect("keys serialize"));
                a.write_args.push(s.arg);
                let sql = a.statement(s.sql);
                a.write_sqls.push(sql);
                let set = s.set.map(|q| a.statement(q));
                a.write_sets.push(set);
                let check = s.check.map(|q| a.statement(q));
                a.write_checks.push(check);
            }
            for (r, seen) in &m.plan.queries {
                let q = r.query.as_ref().expect("a query read is a query");
                a.query_owners.push(owner);
                let sql = a.statement(q.check_sql());
                a.query_sqls.push(sql);
                a.query_args.push(q.args.clone());
                a.query_seen.push(seen.clone());
            }
            a.read_ends.push(a.read_pks.len() as i32);
            a.write_ends.push(a.write_pks.len() as i32);
        }
        (a.lock_tables, a.lock_modes) = table_locks(batch);
        (hashes, exclusive, a)
    }
}

/// The table locks a batch takes (see migration 0008): SHARE on each table its queries
/// read, ROW EXCLUSIVE on each it writes, SHARE ROW EXCLUSIVE on one it does both to, in
/// the order of their qualified names, which every instance shares. None for a batch
/// without queries that writes at most one table: it waits for one table lock at most,
/// holding none, so it closes no cycle, and it is spared a statement.
fn table_locks<'a>(batch: &[Member<'a>]) -> (Vec<&'a str>, Vec<&'static str>) {
    // (read by a query, written), by qualified name.
    let mut tables: BTreeMap<&'a str, (bool, bool)> = BTreeMap::new();
    for m in batch {
        for (r, _) in &m.plan.queries {
            if let Some(t) = &r.table {
                tables.entry(t.qualified.as_str()).or_default().0 = true;
            }
        }
        for (r, _) in &m.plan.writes {
            if let Some(t) = &r.table {
                tables.entry(t.qualified.as_str()).or_default().1 = true;
            }
        }
    }
    let queried = tables.values().any(|(read, _)| *read);
    if !queried && tables.len() <= 1 {
        return (Vec::new(), Vec::new());
    }
    tables
        .into_iter()
        .map(|(name, mode)| {
            let mode = match mode {
                (true, true) => "SHARE ROW EXCLUSIVE",
                (true, false) => "SHARE",
                _ => "ROW EXCLUSIVE",
            };
            (name, mode)
        })
        .unzip()
}
