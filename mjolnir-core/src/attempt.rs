//! One run of a handler against a snapshot of the cache.
//!
//! A handler runs synchronously against what the client already holds. When it reads a key
//! the cache does not hold, the attempt records a miss instead of waiting: the caller
//! stops (or lets the handler carry on, to collect more misses in one batch), fetches the
//! missed keys, and runs the handler again on a fresh snapshot. Re-running is already how
//! optimistic transactions retry, so this costs no new mechanism and keeps handlers free of
//! `await`.

use crate::cache::{Cache, Snapshot};
use crate::overlay::{Overlaid, Row, overlay};
use crate::speculation::Speculation;
use crate::{
    ClientMessage, Dependency, Key, Pk, Query, QueryRead, ReadSet, Transaction, TxnId, Version,
    WriteOp, WriteSet,
};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// What a read gives the handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read {
    /// The key's value as this attempt sees it: `None` when absent.
    Value(Option<Value>),
    /// The snapshot does not hold the key: fetch it and run again.
    Miss,
}

/// A query as an attempt sees it ([`Attempt::query_view`]).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryView {
    /// The rows in order (empty for a count).
    pub rows: Vec<Row>,
    /// The number of rows, or the count.
    pub count: u64,
    /// Whether every write of the page was placed as PostgreSQL will place it.
    pub exact: bool,
}

/// What to do with an attempt whose handler returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Fetch these keys (one batched read), then run the handler again. Whatever the
    /// attempt wrote is discarded: it was computed without those keys.
    Missed(Vec<Key>),
    /// The attempt read nothing from the server and wrote nothing: done, nothing to send.
    Nothing,
    /// Send this [`ClientMessage::Commit`] and wait for the verdict.
    ///
    /// Read-only attempts that read server keys are sent too, with no writes. The cache is
    /// fed by replies and pushes that arrive at different moments, so its snapshot is not
    /// guaranteed to be one consistent state of the server: a handler can see key `a` after
    /// some commit and key `b` before it. Only the server can tell whether what the attempt
    /// saw was one real state, and showing a torn view would break the guarantee that every
    /// handler appears to run alone.
    Commit(ClientMessage),
}

/// One run of a handler: the snapshot it reads, the page's in-flight writes on top of it,
/// its reads, dependencies and buffered writes, its misses.
#[derive(Clone, Debug)]
pub struct Attempt {
    snapshot: Snapshot,
    speculation: Speculation,
    txn: Transaction,
    /// Reads of keys an in-flight transaction of the page wrote, by key.
    /// (Lists, not ordered sets: an attempt reads a few pending keys and touches a few
    /// effects, and each ordered collection costs the browser module its own B-tree code.)
    deps: Vec<Dependency>,
    misses: BTreeSet<Key>,
    /// The queries it read: each with its key, the version of the result it saw, and what
    /// the commit sends of it.
    queries: Vec<(Key, Version, QueryRead)>,
    /// What it changed on the page (DOM nodes, state entries), as ids its adapter gives
    /// them: a page-only handler whose effects overlap a failed transaction's is undone
    /// with it (see [`crate::engine::Engine`]).
    touched: Vec<u64>,
}

impl Attempt {
    /// An attempt on the committed cache alone.
    pub fn new(snapshot: Snapshot) -> Self {
        Self::speculating(snapshot, Speculation::new())
    }

    /// An attempt that sees the page's in-flight writes on top of the cache, as if they
    /// had committed; a read of one is recorded as a dependency on its transaction.
    pub fn speculating(snapshot: Snapshot, speculation: Speculation) -> Self {
        Attempt {
            snapshot,
            speculation,
            txn: Transaction::new(),
            deps: Vec::new(),
            misses: BTreeSet::new(),
            queries: Vec::new(),
            touched: Vec::new(),
        }
    }

    /// Records that the attempt changed these effects of the page. An adapter must give
    /// one id to one DOM node or state entry for the page's life, and never the same id
    /// to two.
    pub fn touch(&mut self, effects: impl IntoIterator<Item = u64>) {
        self.touched.extend(effects);
    }

    /// The page effects recorded with [`Attempt::touch`].
    pub fn touched(&self) -> &[u64] {
        &self.touched
    }

    /// Reads `key`: the snapshot's value with this attempt's own writes applied.
    ///
    /// A key this attempt has inserted, put or deleted reads back as that write without
    /// consulting the snapshot, and records no read: what the handler sees there does not
    /// depend on the server, so there is nothing to validate, and a freshly inserted key
    /// must not be a miss. An update is different: it changes some columns of a row the
    /// attempt must still read, so it needs the row.
    pub fn read(&mut self, key: Key) -> Read {
        if let Some(op) = self.txn.writes.get(&key)
            && matches!(
                op,
                WriteOp::Insert { .. } | WriteOp::Put { .. } | WriteOp::Delete
            )
        {
            return Read::Value(op.apply(None));
        }
        if self.txn.reads.get(&key).is_none()
            && let Some(pending) = self.speculation.get(&key)
        {
            let seen = self.txn.view(&key, pending.value.as_ref());
            let dep = pending.dependency(key.clone());
            if !self.deps.iter().any(|d| d.key == key) {
                self.deps.push(dep);
            }
            return Read::Value(seen);
        }
        match self.snapshot.get(&key) {
            Some(cached) => Read::Value(self.txn.read(key, cached.version, cached.value.as_ref())),
            None => {
                self.misses.insert(key);
                Read::Miss
            }
        }
    }

    /// Reads a query: for a rows query, the rows it returns as this attempt sees them (a
    /// JSON array), for a count, the number.
    ///
    /// The result is the server's with the page's writes applied ([`Attempt::query_view`]):
    /// a row this attempt or an in-flight transaction of the page inserts shows in it, in
    /// its place, where the client can evaluate the filter and the order. Each row is read
    /// like any key, so it shows those writes too.
    ///
    /// The commit carries the result the server gave ([`Attempt::query_result`]); the
    /// server refuses it if the query gives another at the commit point. A query whose
    /// result or any of whose rows the snapshot lacks is a miss, like a key.
    pub fn query(&mut self, query: &Query) -> Read {
        let Some(view) = self.query_view(query) else {
            return Read::Miss;
        };
        if query.count {
            return Read::Value(Some(Value::from(view.count)));
        }
        Read::Value(Some(view.rows.into_iter().map(|r| r.value).collect()))
    }

    /// The keys of the rows a rows query returns, in order, as [`Attempt::query`] reads
    /// them: for adapters that hand out live row objects, which need the key of each.
    /// `None` on a miss (of the result or of any row).
    pub fn query_keys(&mut self, query: &Query) -> Option<Vec<Key>> {
        let view = self.query_view(query)?;
        Some(
            view.rows
                .into_iter()
                .map(|r| Key::row(query.table.clone(), r.pk))
                .collect(),
        )
    }

    /// A query as this attempt sees it: the result the server gave, with the writes of
    /// the page's in-flight transactions and of this attempt applied to it where the
    /// client can evaluate the filter and the order ([`crate::overlay`]); rows so written
    /// are marked pending. The rows of the page's transactions that have committed since
    /// the result was read are applied too (not pending): the query's new result follows
    /// the commit's reply in a push, and until it arrives they would vanish from the view.
    /// Each row is read like a key. `None` on a miss.
    pub fn query_view(&mut self, query: &Query) -> Option<QueryView> {
        let seen = self.query_result(query)?;
        let cached = self.snapshot.get(&Key::query(query.clone()))?;
        let committed = cached.value.clone().unwrap_or(Value::Null);
        let settling = self.speculation.settling_of(&query.table, cached.version);
        // The page's writes of the table: committed and waiting for their push, in
        // flight, then this attempt's own.
        let mut written: Vec<Key> = settling.iter().map(|s| s.key.clone()).collect();
        let in_flight = self.speculation.rows_of(&query.table).into_iter();
        let own = self.txn.writes.iter().map(|(k, _)| k.clone());
        for key in in_flight.map(|(k, _)| k).chain(own) {
            if matches!(&key, Key::Row { table, .. } if *table == query.table)
                && !written.contains(&key)
            {
                written.push(key);
            }
        }
        // What the result shows of a key: the row before the first commit not in it.
        let shown = |me: &Self, key: &Key| match settling.iter().find(|s| s.key == *key) {
            Some(s) => s.before.clone(),
            None => me.snapshot.get(key).and_then(|c| c.value.clone()),
        };
        if query.count {
            let mut count = seen.as_i64().unwrap_or_default();
            // A count predicted from the writes in flight has them already; the
            // committed ones are counted from their values before to what the cache
            // holds now.
            let predicted = seen != committed;
            for key in &written {
                let settled = settling.iter().any(|s| s.key == *key);
                if predicted && !settled {
                    continue;
                }
                let after = if predicted {
                    self.snapshot.get(key).and_then(|c| c.value.clone())
                } else {
                    self.peek(key)
                };
                let was = query.matches(shown(self, key).as_ref()) == Some(true);
                let is = query.matches(after.as_ref()) == Some(true);
                count += i64::from(is) - i64::from(was);
            }
            return Some(QueryView {
                rows: Vec::new(),
                count: count.max(0) as u64,
                exact: true,
            });
        }
        let mut rows = Vec::new();
        let mut missed = false;
        for key in query.row_keys(&committed) {
            match self.read(key.clone()) {
                Read::Value(_) => {
                    let value = self.snapshot.get(&key).and_then(|c| c.value.clone());
                    if let (Key::Row { pk, .. }, Some(value)) = (key, value) {
                        rows.push(Row {
                            pk,
                            value,
                            pending: false,
                        });
                    }
                }
                // Read on: every row missed is fetched in the same round.
                Read::Miss => missed = true,
            }
        }
        if missed {
            return None;
        }
        let mut writes = Vec::with_capacity(written.len());
        for key in written {
            let pending =
                self.speculation.get(&key).is_some() || self.txn.writes.get(&key).is_some();
            let value = match self.read(key.clone()) {
                Read::Value(v) => v,
                Read::Miss => match self.speculation.get(&key) {
                    Some(p) => p.value.clone(),
                    None => settling
                        .iter()
                        .find(|s| s.key == key)
                        .and_then(|s| s.after.clone()),
                },
            };
            if let Key::Row { pk, .. } = key {
                writes.push((pk, value, pending));
            }
        }
        let Overlaid { rows, exact } = overlay(query, rows, &writes);
        let count = rows.len() as u64;
        Some(QueryView { rows, count, exact })
    }

    /// What this attempt sees at `key` without recording a read: for counting a write.
    fn peek(&self, key: &Key) -> Option<Value> {
        let before = match self.speculation.get(key) {
            Some(p) => p.value.clone(),
            None => self.snapshot.get(key).and_then(|c| c.value.clone()),
        };
        self.txn.view(key, before.as_ref())
    }

    /// The query's result as this attempt saw it first, recording the read: the count of
    /// a count query, the array of primary keys of a rows query (their rows not read).
    /// `None` on a miss.
    ///
    /// What a commit sends is this result. It is the cache's, the committed one, unless
    /// transactions of the page in flight write the query's table and the client can tell
    /// exactly what they do to it: then it is the result they will leave, so that this
    /// commit, decided after them, does not conflict for their sake.
    pub fn query_result(&mut self, query: &Query) -> Option<Value> {
        let key = Key::query(query.clone());
        if let Some((_, _, read)) = self.queries.iter().find(|(k, _, _)| *k == key) {
            return Some(read.seen.clone());
        }
        let Some(cached) = self.snapshot.get(&key) else {
            self.misses.insert(key);
            return None;
        };
        let committed = cached.value.clone().unwrap_or(Value::Null);
        let version = cached.version;
        let seen = self.predicted(query, &committed).unwrap_or(committed);
        let read = QueryRead {
            query: query.clone(),
            seen: seen.clone(),
        };
        self.queries.push((key, version, read));
        Some(seen)
    }

    /// The result the page's in-flight writes will leave, if the client can tell it
    /// exactly from what it holds; `None` if they write nothing of the table or it cannot.
    fn predicted(&self, query: &Query, committed: &Value) -> Option<Value> {
        let writes = self.speculation.rows_of(&query.table);
        if writes.is_empty() {
            return None;
        }
        if query.count {
            let mut count = committed.as_i64()?;
            for (key, after) in &writes {
                let before = self.snapshot.get(key)?.value.clone();
                let was = query.matches(before.as_ref())?;
                let is = query.matches(after.as_ref())?;
                count += i64::from(is) - i64::from(was);
            }
            return Some(Value::from(count));
        }
        let mut rows = Vec::new();
        for key in query.row_keys(committed) {
            let value = self.snapshot.get(&key)?.value.clone()?;
            let Key::Row { pk, .. } = key else { continue };
            rows.push(Row {
                pk,
                value,
                pending: false,
            });
        }
        let writes: Vec<(Pk, Option<Value>, bool)> = writes
            .into_iter()
            .filter_map(|(key, value)| match key {
                Key::Row { pk, .. } => Some((pk, value, true)),
                _ => None,
            })
            .collect();
        let o = overlay(query, rows, &writes);
        o.exact.then(|| {
            Value::Array(
                o.rows
                    .iter()
                    .map(|r| serde_json::to_value(&r.pk).unwrap_or(Value::Null))
                    .collect(),
            )
        })
    }

    pub fn insert(&mut self, key: Key, row: Map<String, Value>) {
        self.write(key, WriteOp::Insert { row });
    }

    pub fn update(&mut self, key: Key, set: Map<String, Value>) {
        self.write(key, WriteOp::Update { set });
    }

    pub fn put(&mut self, key: Key, value: Value) {
        self.write(key, WriteOp::Put { value });
    }

    pub fn delete(&mut self, key: Key) {
        self.write(key, WriteOp::Delete);
    }

    /// Buffers `op`, merged with this attempt's earlier writes of `key`.
    pub fn write(&mut self, key: Key, op: WriteOp) {
        self.txn.write(key, op);
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The value this attempt gives each key it writes (`None`: deleted), as the cache
    /// should hold them once the commit is confirmed: its ops applied to what it saw.
    pub fn written(&self) -> Vec<(Key, Option<Value>)> {
        self.txn
            .writes
            .iter()
            .map(|(k, op)| {
                let before = match self.speculation.get(k) {
                    Some(pending) if self.txn.reads.get(k).is_none() => pending.value.as_ref(),
                    _ => self.snapshot.get(k).and_then(|c| c.value.as_ref()),
                };
                (k.clone(), op.apply(before))
            })
            .collect()
    }

    /// The reads of in-flight writes so far.
    pub fn deps(&self) -> impl Iterator<Item = &Dependency> {
        self.deps.iter()
    }

    /// Moves an attempt that waited for a fetch onto a newer snapshot (the async form,
    /// which waits instead of re-running). Keys already read keep the version and value
    /// they were read at, so the attempt never sees two versions of one key, and a key that
    /// changed meanwhile makes the commit conflict. The misses are resolved.
    pub fn resnapshot(&mut self, mut snapshot: Snapshot) {
        let queries = self.queries.iter().map(|(k, _, _)| k);
        snapshot.keep_from(&self.snapshot, self.txn.reads.keys().chain(queries));
        self.snapshot = snapshot;
        self.misses.clear();
    }

    pub fn reads(&self) -> &ReadSet {
        &self.txn.reads
    }

    pub fn writes(&self) -> &WriteSet {
        &self.txn.writes
    }

    /// Whether the attempt read and wrote nothing of the server's (not even a pending
    /// write of the page): it needs no commit, and no txn id.
    pub fn is_local(&self) -> bool {
        self.txn.reads.is_empty()
            && self.txn.writes.is_empty()
            && self.deps.is_empty()
            && self.queries.is_empty()
    }

    pub fn has_misses(&self) -> bool {
        !self.misses.is_empty()
    }

    /// The keys to fetch before running again, in key order.
    pub fn missed_keys(&self) -> Vec<Key> {
        self.misses.iter().cloned().collect()
    }

    /// Every key this attempt read or missed: what to [`Cache::pin`] while it (or its
    /// re-run) is in progress.
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.txn
            .reads
            .keys()
            .chain(self.deps.iter().map(|d| &d.key))
            .chain(self.queries.iter().map(|(k, _, _)| k))
            .chain(&self.misses)
    }

    /// Whether the cache now holds a newer version of something this attempt read.
    ///
    /// Asked when a handler throws: an exception on a stale view may be caused by the
    /// tear itself (a row that "cannot" be missing, an invariant that held in every real
    /// state), so it is a conflict to retry, not the application's error. A key the cache
    /// has evicted since counts as stale: its current version is unknown, and a needless
    /// retry is cheap while blaming the app for a torn view is wrong. Misses do not count:
    /// the caller fetches them and runs again anyway.
    pub fn is_stale(&self, cache: &Cache) -> bool {
        let queries = self.queries.iter().map(|(k, v, _)| (k, *v));
        self.txn.reads.iter().chain(queries).any(|(key, read)| {
            cache
                .version(key)
                .is_none_or(|now| crate::conflict::is_stale(read, now))
        })
    }

    /// Ends the attempt; `txn` names its commit if it needs one. Retries after a conflict
    /// are new attempts and must use new ids; a re-send of the same commit keeps its id.
    pub fn finish(self, txn: TxnId) -> Finish {
        if !self.misses.is_empty() {
            return Finish::Missed(self.misses.into_iter().collect());
        }
        if self.is_local() {
            return Finish::Nothing;
        }
        let Transaction { reads, writes } = self.txn;
        Finish::Commit(ClientMessage::Commit {
            txn,
            reads,
            writes,
            first: true,
            deps: self.deps,
            follows: None,
            queries: self.queries.into_iter().map(|(_, _, q)| q).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Version;
    use crate::protocol::Entry;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn alice() -> Key {
        Key::row("users", "alice")
    }

    fn bob() -> Key {
        Key::row("users", "bob")
    }

    fn bank() -> Cache {
        let mut cache = Cache::new();
        cache.apply(&[
            Entry {
                key: alice(),
                version: Version(4),
                value: Some(json!({"name": "alice", "balance": 100})),
            },
            Entry {
                key: bob(),
                version: Version(6),
                value: Some(json!({"name": "bob", "balance": 5})),
            },
        ]);
        cache
    }

    fn txn() -> TxnId {
        TxnId("c1:1".to_owned())
    }

    /// The paper's `send()`: move `amount` from alice to bob if she has it.
    fn send(a: &mut Attempt, amount: i64) -> Option<()> {
        let Read::Value(Some(from)) = a.read(alice()) else {
            return None;
        };
        let Read::Value(Some(to)) = a.read(bob()) else {
            return None;
        };
        let (from, to) = (from["balance"].as_i64()?, to["balance"].as_i64()?);
        if from >= amount {
            a.update(alice(), obj(json!({"balance": from - amount})));
            a.update(bob(), obj(json!({"balance": to + amount})));
        }
        Some(())
    }

    #[test]
    fn reads_see_own_writes() {
        let mut a = Attempt::new(bank().snapshot());
        send(&mut a, 30).unwrap();
        assert_eq!(
            a.read(alice()),
            Read::Value(Some(json!({"name": "alice", "balance": 70})))
        );
        assert_eq!(a.reads().get(&alice()), Some(Version(4)));
        let Finish::Commit(ClientMessage::Commit { reads, writes, .. }) = a.finish(txn()) else {
            panic!("a transfer commits")
        };
        assert_eq!(reads.len(), 2);
        assert_eq!(
            writes.get(&bob()),
            Some(&WriteOp::Update {
                set: obj(json!({"balance": 35}))
            })
        );
    }

    #[test]
    fn a_written_key_is_not_a_miss() {
        let mut a = Attempt::new(Cache::new().snapshot());
        let todo = Key::row("todos", 1);
        a.insert(todo.clone(), obj(json!({"title": "x"})));
        a.update(todo.clone(), obj(json!({"done": true})));
        assert_eq!(
            a.read(todo.clone()),
            Read::Value(Some(json!({"title": "x", "done": true})))
        );
        a.put(Key::kv("motd"), json!("hi"));
        assert_eq!(a.read(Key::kv("motd")), Read::Value(Some(json!("hi"))));
        a.delete(Key::kv("gone"));
        assert_eq!(a.read(Key::kv("gone")), Read::Value(None));
        assert!(!a.has_misses());
        assert!(a.reads().is_empty(), "nothing read from the server");
        assert!(matches!(a.finish(txn()), Finish::Commit(_)));
    }

    #[test]
    fn an_update_of_an_uncached_row_still_needs_the_row() {
        let mut a = Attempt::new(Cache::new().snapshot());
        a.update(alice(), obj(json!({"balance": 1})));
        assert_eq!(a.read(alice()), Read::Miss);
    }

    #[test]
    fn a_miss_is_fetched_and_the_rerun_hits() {
        let mut cache = Cache::new();
        let mut a = Attempt::new(cache.snapshot());
        assert_eq!(send(&mut a, 30), None);
        // The handler may catch the miss and go on: it is recorded all the same.
        assert_eq!(a.read(bob()), Read::Miss);
        a.update(bob(), obj(json!({"balance": 0})));
        assert!(a.has_misses());
        assert_eq!(a.missed_keys(), [alice(), bob()]);
        cache.pin(a.keys());
        assert_eq!(a.finish(txn()), Finish::Missed(vec![alice(), bob()]));

        // The batched read's reply.
        cache.apply(&[
            Entry {
                key: alice(),
                version: Version(4),
                value: Some(json!({"name": "alice", "balance": 100})),
            },
            Entry {
                key: bob(),
                version: Version::ABSENT,
                value: None,
            },
        ]);
        let mut again = Attempt::new(cache.snapshot());
        assert_eq!(send(&mut again, 30), None, "bob does not exist");
        assert!(!again.has_misses());
        cache.unpin([&alice(), &bob()]);
        // Reading a missing row is a read at ABSENT, so an insert race is caught.
        let Finish::Commit(ClientMessage::Commit { reads, writes, .. }) = again.finish(txn())
        else {
            panic!("reads go to the server")
        };
        assert_eq!(reads.get(&bob()), Some(Version::ABSENT));
        assert!(writes.is_empty());
    }

    #[test]
    fn a_query_reads_its_cached_result_then_each_row_as_the_attempt_sees_it() {
        let richest = Query::table("users").order_by("balance", true);
        let counted = Query::table("users").counted();
        let unknown = Query::table("users").filter("balance", crate::Op::Gt, json!(1000));
        let with_carol = Query::table("users").filter("name", crate::Op::Ne, json!("bob"));
        let mut cache = bank();
        cache.apply(&[
            Entry {
                key: Key::query(richest.clone()),
                version: Version(7),
                value: Some(json!(["alice", "bob"])),
            },
            Entry {
                key: Key::query(counted.clone()),
                version: Version(7),
                value: Some(json!(2)),
            },
            // carol's row itself is not cached.
            Entry {
                key: Key::query(with_carol.clone()),
                version: Version(7),
                value: Some(json!(["alice", "carol"])),
            },
        ]);

        // A hit: the rows in the result's order, each read like a key.
        let mut a = Attempt::new(cache.snapshot());
        assert_eq!(a.query_keys(&richest), Some(vec![alice(), bob()]));
        assert_eq!(a.reads().get(&bob()), Some(Version(6)));

        // The attempt's own update shows; its own delete leaves the row out.
        a.update(bob(), obj(json!({"balance": 50})));
        a.delete(alice());
        assert_eq!(
            a.query(&richest),
            Read::Value(Some(json!([{"name": "bob", "balance": 50}])))
        );
        // The count shows the attempt's writes too.
        assert_eq!(a.query(&counted), Read::Value(Some(json!(1))));
        // So does its insert, in its place by the query's order.
        a.insert(
            Key::row("users", "dave"),
            obj(json!({"name": "dave", "balance": 70})),
        );
        assert_eq!(
            a.query_keys(&richest),
            Some(vec![Key::row("users", "dave"), bob()])
        );
        assert_eq!(a.query(&counted), Read::Value(Some(json!(2))));
        assert!(!a.has_misses());

        // The commit carries what each query read saw, as the server last gave it.
        let Finish::Commit(ClientMessage::Commit { reads, queries, .. }) = a.finish(txn()) else {
            panic!("a query is a read of the server's")
        };
        assert_eq!(
            queries,
            [
                QueryRead {
                    query: richest,
                    seen: json!(["alice", "bob"])
                },
                QueryRead {
                    query: counted,
                    seen: json!(2)
                },
            ]
        );
        assert_eq!(reads.get(&alice()), Some(Version(4)), "read before deleted");

        // A result not cached is a miss of the query's key, like a key's.
        let mut b = Attempt::new(cache.snapshot());
        assert_eq!(b.query(&unknown), Read::Miss);
        assert_eq!(b.missed_keys(), [Key::query(unknown)]);

        // A row of a cached result not cached is a miss of that row: all are fetched in
        // one round, and the result is not fetched again.
        let mut c = Attempt::new(cache.snapshot());
        assert_eq!(c.query_keys(&with_carol), None);
        assert_eq!(c.missed_keys(), [Key::row("users", "carol")]);
        assert!(matches!(c.finish(txn()), Finish::Missed(_)));
    }

    #[test]
    fn a_query_read_while_the_page_inserts_expects_the_insert() {
        let richest = Query::table("users").order_by("balance", true);
        let by_name = Query::table("users").order_by("name", false);
        let mut cache = bank();
        cache.apply(&[
            Entry {
                key: Key::query(richest.clone()),
                version: Version(7),
                value: Some(json!(["alice", "bob"])),
            },
            Entry {
                key: Key::query(by_name.clone()),
                version: Version(7),
                value: Some(json!(["alice", "bob"])),
            },
        ]);
        let mut pending = Speculation::new();
        let dave = Key::row("users", "dave");
        pending.push(
            &TxnId("c1:0".into()),
            &[(dave.clone(), Some(json!({"name": "dave", "balance": 70})))],
        );
        let mut a = Attempt::speculating(cache.snapshot(), pending);
        // Balances are numbers: the client places dave as the server will, so the commit
        // expects the result dave's commit leaves, and depends on dave's row.
        assert_eq!(
            a.query_keys(&richest),
            Some(vec![alice(), dave.clone(), bob()])
        );
        let view = a.query_view(&richest).unwrap();
        assert!(view.exact && view.rows[1].pending && !view.rows[0].pending);
        // Names are text, ordered by a collation the client does not know: dave shows
        // last, and the commit sends the committed result.
        let view = a.query_view(&by_name).unwrap();
        assert_eq!(view.rows.last().unwrap().pk, Pk::from("dave"));
        assert!(!view.exact);
        let Finish::Commit(ClientMessage::Commit { queries, deps, .. }) = a.finish(txn()) else {
            panic!()
        };
        assert_eq!(queries[0].seen, json!(["alice", "dave", "bob"]));
        assert_eq!(queries[1].seen, json!(["alice", "bob"]));
        assert!(deps.iter().any(|d| d.key == dave));
    }

    #[test]
    fn an_async_attempt_waits_for_a_miss_and_keeps_what_it_read() {
        let mut cache = bank();
        let mut a = Attempt::new(cache.snapshot());
        let seen = a.read(alice());
        assert!(matches!(seen, Read::Value(Some(_))));
        let carol = Key::row("users", "carol");
        assert_eq!(a.read(carol.clone()), Read::Miss);
        // The fetch brings carol, and alice moved on meanwhile.
        cache.apply(&[
            Entry {
                key: carol.clone(),
                version: Version(2),
                value: Some(json!({"name": "carol", "balance": 5})),
            },
            Entry {
                key: alice(),
                version: Version(99),
                value: Some(json!({"name": "alice", "balance": 0})),
            },
        ]);
        a.resnapshot(cache.snapshot());
        assert!(!a.has_misses(), "the miss was waited for");
        assert!(matches!(a.read(carol.clone()), Read::Value(Some(_))));
        assert_eq!(
            a.read(alice()),
            seen,
            "a key keeps the version it was first read at"
        );
        let Finish::Commit(ClientMessage::Commit { reads, .. }) = a.finish(txn()) else {
            panic!()
        };
        assert_ne!(
            reads.get(&alice()),
            Some(Version(99)),
            "so the commit will conflict on alice"
        );
        assert_eq!(reads.get(&carol), Some(Version(2)));
    }

    #[test]
    fn an_attempt_keeps_its_snapshot() {
        let mut cache = bank();
        let mut a = Attempt::new(cache.snapshot());
        cache.apply(&[Entry {
            key: alice(),
            version: Version(9),
            value: Some(json!({"name": "alice", "balance": 0})),
        }]);
        send(&mut a, 30).unwrap();
        assert_eq!(a.reads().get(&alice()), Some(Version(4)));
        assert!(a.is_stale(&cache));
    }

    #[test]
    fn finish_variants() {
        let cache = bank();
        assert_eq!(
            Attempt::new(cache.snapshot()).finish(txn()),
            Finish::Nothing
        );

        // Inserting and deleting a new row leaves nothing to do.
        let mut a = Attempt::new(cache.snapshot());
        a.insert(Key::row("todos", 1), Map::new());
        a.delete(Key::row("todos", 1));
        assert_eq!(a.finish(txn()), Finish::Nothing);

        // Read-only is still validated.
        let mut a = Attempt::new(cache.snapshot());
        a.read(alice());
        let Finish::Commit(msg) = a.finish(txn()) else {
            panic!("a read-only attempt is validated")
        };
        let mut reads = ReadSet::new();
        reads.record(alice(), Version(4));
        assert_eq!(
            msg,
            ClientMessage::Commit {
                txn: txn(),
                reads,
                writes: WriteSet::new(),
                first: true,
                deps: Vec::new(),
                queries: Vec::new(),
                follows: None,
            }
        );

        // A miss wins over writes.
        let mut a = Attempt::new(cache.snapshot());
        a.put(Key::kv("x"), json!(1));
        a.read(Key::kv("y"));
        assert_eq!(a.finish(txn()), Finish::Missed(vec![Key::kv("y")]));
    }

    #[test]
    fn is_stale_compares_reads_with_the_cache() {
        let mut cache = bank();
        let mut a = Attempt::new(cache.snapshot());
        a.read(alice());
        a.read(Key::kv("missing"));
        assert!(!a.is_stale(&cache), "misses are not stale");
        // A newer version of a key not read does not matter.
        cache.apply(&[Entry {
            key: bob(),
            version: Version(7),
            value: None,
        }]);
        assert!(!a.is_stale(&cache));
        cache.apply(&[Entry {
            key: alice(),
            version: Version(5),
            value: None,
        }]);
        assert!(a.is_stale(&cache));

        // An evicted key's version is unknown: stale.
        let mut small = Cache::with_capacity(1);
        small.apply(&[Entry {
            key: alice(),
            version: Version(4),
            value: None,
        }]);
        let mut a = Attempt::new(small.snapshot());
        a.read(alice());
        assert!(!a.is_stale(&small));
        small.apply(&[
            Entry {
                key: Key::kv("b"),
                version: Version(1),
                value: None,
            },
            Entry {
                key: Key::kv("c"),
                version: Version(1),
                value: None,
            },
        ]);
        assert!(small.evict().contains(&alice()));
        assert!(a.is_stale(&small));
    }
}
