//! Reading keys: values with the versions they were committed at.

use super::lanes::{self, Lanes, Runner};
use super::query::QueryPlan;
use super::query_reads::QueryReads;
use super::sqlstate::sqlstate;
use super::{Resolved, Store};
use crate::catalog::quote_ident;
use crate::error::{Result, ServerError};
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use mjolnir_core::protocol::{Entry, ErrorReply};
use mjolnir_core::{ErrorKind, Key, Pk, Version};
use serde_json::Value;
use sqlx::postgres::types::Oid;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::oneshot;

impl Store {
    /// Reads `keys` as `user` sees them, from one snapshot.
    ///
    /// A row the app's policies hide from `user` reads as absent, at its real version.
    pub async fn read(&self, user: Option<&str>, keys: &[mjolnir_core::Key]) -> Result<Vec<Entry>> {
        let keys = self.resolve(keys).await?;
        self.reader.read(user, keys).await
    }
}

/// Runs reads, batched while the database is busy (`lanes.rs`): one statement for the
/// reads of tables open to every user, one per user for the others. One per instance.
#[derive(Debug)]
pub(super) struct Reader {
    pool: PgPool,
    batched: bool,
    lanes: Lanes<ReadJob>,
    /// Set when a read found a table the catalog says is open no longer open: the store
    /// then loads the catalog again (`Store::resolve`).
    catalog_outdated: AtomicBool,
    /// Reads of queries of tables open to every user.
    queries: Arc<QueryReads>,
}

#[derive(Debug)]
pub(super) struct ReadJob {
    user: Option<String>,
    keys: Vec<Resolved>,
    reply: oneshot::Sender<Result<Vec<Entry>>>,
}

impl Reader {
    pub(super) fn new(pool: PgPool, knobs: &Knobs, metrics: &Metrics) -> Reader {
        Reader {
            queries: Arc::new(QueryReads::new(pool.clone(), knobs, metrics)),
            pool,
            batched: knobs.group_commit > 1,
            lanes: Lanes::new(
                knobs.group_commit_lanes,
                knobs.group_commit,
                metrics.read_batch_size.clone(),
                metrics.read_lane_busy.clone(),
                metrics.reads_queued.clone(),
            ),
            catalog_outdated: AtomicBool::new(false),
        }
    }

    /// Reads `keys` as `user` sees them, in the next batch of reads: an entry per key, in
    /// the order given, then, for the queries among them, an entry per row they return.
    pub(super) async fn read(
        self: &Arc<Self>,
        user: Option<&str>,
        keys: Vec<Resolved>,
    ) -> Result<Vec<Entry>> {
        if keys.iter().any(|k| k.query.is_some()) {
            return self.read_with_queries(user, keys).await;
        }
        self.read_keys(user, keys).await
    }

    /// Reads keys among which are queries: the keys together, each query on its own.
    async fn read_with_queries(
        self: &Arc<Self>,
        user: Option<&str>,
        keys: Vec<Resolved>,
    ) -> Result<Vec<Entry>> {
        type Placed = Vec<(usize, Resolved)>;
        let (queries, plain): (Placed, Placed) = keys
            .into_iter()
            .enumerate()
            .partition(|(_, k)| k.query.is_some());
        let mut answers: Vec<Option<Entry>> = vec![None; queries.len() + plain.len()];
        let (at, plain): (Vec<usize>, Vec<Resolved>) = plain.into_iter().unzip();
        if !plain.is_empty() {
            for (i, entry) in at.into_iter().zip(self.read_keys(user, plain).await?) {
                answers[i] = Some(entry);
            }
        }
        let mut rows = Vec::new();
        for (i, key) in queries {
            let (entry, found) = self.read_query(user, &key).await?;
            answers[i] = Some(entry);
            rows.extend(found);
        }
        Ok(answers.into_iter().flatten().chain(rows).collect())
    }

    /// Reads one query as `user` sees it (`mjolnir.read_as`): its entry, whose value is the
    /// JSON array of its rows' primary keys (or the count) and whose version is the newest
    /// commit version drawn, so a later read of it is never older; and an entry per row.
    async fn read_query(&self, user: Option<&str>, key: &Resolved) -> Result<(Entry, Vec<Entry>)> {
        let (Some(q), Some(table)) = (&key.query, &key.table) else {
            unreachable!("read_query reads queries")
        };
        let mut found = self.query_rows(user, q).await?;
        found.sort_by_key(|(ord, _, _)| *ord);
        let version = found
            .first()
            .filter(|(ord, _, _)| *ord == 0)
            .map_or(0, |(_, v, _)| *v as u64);
        let rows = &found[1.min(found.len())..];
        if q.query.count {
            let count = rows.first().and_then(|(_, _, v)| v.clone());
            let entry = Entry {
                key: key.key.clone(),
                version: Version(version),
                value: Some(count.unwrap_or(Value::from(0))),
            };
            return Ok((entry, Vec::new()));
        }
        if rows.len() > q.max_rows() {
            return Err(ServerError::from(
                ErrorReply::new(
                    ErrorKind::InvalidQuery,
                    format!(
                        "{} matches more than {} rows: give it a limit",
                        q.query,
                        q.max_rows()
                    ),
                )
                .with_key(key.key.clone()),
            ));
        }
        let pk_column = &table.pk_column().name;
        let mut pks = Vec::with_capacity(rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        for (_, row_version, value) in rows {
            let Some(pk) = value.as_ref().and_then(|v| v.get(pk_column)) else {
                continue;
            };
            let pk_key = match pk {
                Value::String(s) => Pk::Text(s.clone()),
                Value::Number(n) if n.is_i64() => Pk::Int(n.as_i64().unwrap_or_default()),
                _ => continue,
            };
            pks.push(pk.clone());
            entries.push(Entry {
                key: Key::row(table.name.clone(), pk_key),
                version: Version(*row_version as u64),
                value: value.clone(),
            });
        }
        let entry = Entry {
            key: key.key.clone(),
            version: Version(version),
            value: Some(Value::Array(pks)),
        };
        Ok((entry, entries))
    }

    /// The rows of one query as `user` sees them, as `(ord, version, value)`: a row
    /// numbered 0 carrying the newest commit version drawn, then the query's rows.
    ///
    /// Each runs as a prepared statement (planned once per connection and shape; sqlx keeps
    /// a bounded cache of them per connection and deallocates the least used): through
    /// `mjolnir.read_as`, which plans on every call, a read of 50 rows cost PostgreSQL
    /// about twice as much (docs/benchmarks.md, "Measurements behind the code"). A table
    /// open to every user is read without a role, batched with other reads of queries of
    /// the same shape (`query_reads.rs`), checking in the same statement that it is still
    /// open (as `read_open` does); any other is read in a transaction of its own that
    /// first becomes `mjolnir_app` with `user`, as `mjolnir.read_as` would.
    async fn query_rows(&self, user: Option<&str>, q: &Arc<QueryPlan>) -> Result<Vec<QueryRow>> {
        if q.table.open_read {
            if let Some(found) = self.queries.read(q.clone()).await? {
                return Ok(found);
            }
            tracing::info!(table = %q.table.name, "a table is no longer open to every user: reading as the user, and loading the catalog again");
            self.catalog_outdated.store(true, Ordering::Relaxed);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "SELECT set_config('role', 'mjolnir_app', true), set_config('mjolnir.user', $1, true)",
        )
        .bind(user.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        let found = sqlx::query_as(AssertSqlSafe(q.read_sql_with_version("$1::jsonb")))
            .bind(&q.args)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| match sqlstate(&e).as_deref() {
                // The app took `SELECT` on the table away from its users.
                Some("42501") => ServerError::from(ErrorReply::new(
                    ErrorKind::Forbidden,
                    format!("reading {} is not allowed", q.table.name),
                )),
                _ => ServerError::from(e),
            })?;
        tx.commit().await?;
        Ok(found)
    }

    /// Reads keys (no queries), in the next batch of reads.
    async fn read_keys(
        self: &Arc<Self>,
        user: Option<&str>,
        keys: Vec<Resolved>,
    ) -> Result<Vec<Entry>> {
        if !self.batched {
            return self.read_now(user, &keys).await;
        }
        let (reply, entries) = oneshot::channel();
        lanes::push(
            self,
            ReadJob {
                user: user.map(str::to_owned),
                keys,
                reply,
            },
        );
        entries.await.unwrap_or_else(|_| {
            Err(ServerError::reply(
                ErrorKind::Internal,
                "the reader stopped before answering this read",
            ))
        })
    }

    /// Whether a read found the catalog outdated since this was last asked.
    pub(super) fn take_catalog_outdated(&self) -> bool {
        self.catalog_outdated.swap(false, Ordering::Relaxed)
    }
}

impl Runner for Reader {
    type Job = ReadJob;

    fn lanes(&self) -> &Lanes<ReadJob> {
        &self.lanes
    }

    /// One statement for the jobs that read only what every user reads alike, and one per
    /// user for the others, concurrently; each job gets its slice.
    async fn run(self: Arc<Self>, batch: Vec<ReadJob>) {
        // `None`: the jobs whose keys the catalog says are open to everyone.
        let mut groups: HashMap<Option<Option<String>>, Vec<ReadJob>> = HashMap::new();
        for job in batch {
            let group = if job.keys.iter().all(Resolved::open_read) {
                None
            } else {
                Some(job.user.clone())
            };
            groups.entry(group).or_default().push(job);
        }
        let calls: Vec<_> = groups
            .into_iter()
            .map(|(group, jobs)| {
                let this = self.clone();
                tokio::spawn(async move {
                    let keys: Vec<Resolved> =
                        jobs.iter().flat_map(|j| j.keys.iter().cloned()).collect();
                    let read = match &group {
                        None => this.read_open(&keys).await,
                        Some(user) => this.read_as(user.as_deref(), &keys).await.map(Some),
                    };
                    match read {
                        Ok(Some(entries)) => {
                            let mut entries = entries.into_iter();
                            for job in jobs {
                                let mine = entries.by_ref().take(job.keys.len()).collect();
                                let _ = job.reply.send(Ok(mine));
                            }
                        }
                        // Each on its own, as its user, so that each gets its own error, or
                        // what its user may read of a table no longer open to all.
                        Ok(None) | Err(_) => {
                            for job in jobs {
                                let read = this.read_now(job.user.as_deref(), &job.keys).await;
                                let _ = job.reply.send(read);
                            }
                        }
                    }
                })
            })
            .collect();
        for call in calls {
            let _ = call.await;
        }
    }
}

impl Reader {
    /// Reads the current version and value of each key, in the order given, in one
    /// statement (one round trip and one snapshot), as `user` may see them: as
    /// `mjolnir_app` with `user` (`mjolnir.read_as`), so the app's row-level-security
    /// policies and privileges apply, unless every table read is open to every user.
    pub(super) async fn read_now(
        &self,
        user: Option<&str>,
        keys: &[Resolved],
    ) -> Result<Vec<Entry>> {
        if keys.iter().all(Resolved::open_read)
            && let Some(entries) = self.read_open(keys).await?
        {
            return Ok(entries);
        }
        self.read_as(user, keys).await
    }

    /// Reads keys of tables the catalog says every user may read in full (and of the kv
    /// store) without switching to the app's role.
    ///
    /// The catalog was read at start, and the app may have turned row-level security on or
    /// revoked a privilege since: the statement checks, in its own snapshot, that every
    /// table it reads is still open, as `mjolnir.open_spaces` would. If one is not, its rows
    /// are thrown away (`None`: read them as the user) and the catalog is loaded again.
    async fn read_open(&self, keys: &[Resolved]) -> Result<Option<Vec<Entry>>> {
        if keys.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let statement = ReadStatement::new(keys);
        let rows: Vec<(i32, i64, Option<Value>, bool)> =
            sqlx::query_as(AssertSqlSafe(statement.open_query()))
                .bind(&statement.pks)
                .bind(&statement.spaces)
                .bind(&statement.tables)
                .fetch_all(&self.pool)
                .await?;
        if rows.iter().all(|(_, _, _, open)| *open) {
            let rows = rows
                .into_iter()
                .map(|(pos, version, value, _)| (pos, version, value));
            return Ok(Some(statement.entries(keys, rows)));
        }
        tracing::info!(tables = ?statement.tables, "a table is no longer open to every user: reading as the user, and loading the catalog again");
        self.catalog_outdated.store(true, Ordering::Relaxed);
        Ok(None)
    }

    /// Reads keys as `mjolnir_app` with `user`, through `mjolnir.read_as`, which plans the
    /// statement on every call.
    async fn read_as(&self, user: Option<&str>, keys: &[Resolved]) -> Result<Vec<Entry>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let statement = ReadStatement::new(keys);
        let rows: Vec<(i32, i64, Option<Value>)> =
            sqlx::query_as("SELECT * FROM mjolnir.read_as($1, $2, $3, $4)")
                .bind(user.unwrap_or(""))
                .bind(&statement.query)
                .bind(&statement.pks)
                .bind(&statement.spaces)
                .fetch_all(&self.pool)
                .await?;
        Ok(statement.entries(keys, rows))
    }
}

/// The statement reading some keys: keys grouped by space, each group a slice of the
/// parameter arrays, with one SELECT per group. Built only from names the catalog read
/// from PostgreSQL, quoted with `quote_ident`, and the slice bounds; every value is a
/// parameter.
struct ReadStatement<'a> {
    /// The keys' positions, sorted by space.
    order: Vec<usize>,
    pks: Vec<&'a str>,
    spaces: Vec<&'a str>,
    /// The tables read, each once, by oid.
    tables: Vec<Oid>,
    /// Over `$1` (the primary keys) and `$2` (the spaces), returning `(ord, version, value)`.
    query: String,
}

impl<'a> ReadStatement<'a> {
    fn new(keys: &'a [Resolved]) -> ReadStatement<'a> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by(|&a, &b| keys[a].space.cmp(&keys[b].space));
        let pks: Vec<&str> = order.iter().map(|&i| keys[i].pk.as_str()).collect();
        let spaces: Vec<&str> = order.iter().map(|&i| keys[i].space.as_str()).collect();
        let mut tables = Vec::new();
        let mut selects = Vec::new();
        let mut lo = 0;
        while lo < order.len() {
            let space = &keys[order[lo]].space;
            let hi = lo
                + order[lo..]
                    .iter()
                    .take_while(|&&i| &keys[i].space == space)
                    .count();
            let value = match &keys[order[lo]].table {
                Some(t) => {
                    tables.push(t.oid);
                    format!(
                        "(SELECT {json} FROM {table} r WHERE r.{pk} = k.pk::{ty})",
                        json = t.row_json,
                        table = t.qualified,
                        pk = quote_ident(&t.pk_column().name),
                        ty = t.pk_column().sql_type,
                    )
                }
                None => "(SELECT kv.value FROM mjolnir.kv kv WHERE kv.key = k.pk)".to_owned(),
            };
            // PostgreSQL arrays are 1-based and slices inclusive.
            selects.push(format!(
                "SELECT ({lo} + k.ord)::int,
                        coalesce((SELECT v.version FROM mjolnir.versions v
                                   WHERE v.space = k.space AND v.pk = k.pk), 0),
                        {value}
                 FROM unnest($1[{from}:{hi}], $2[{from}:{hi}]) WITH ORDINALITY AS k(pk, space, ord)",
                from = lo + 1,
            ));
            lo = hi;
        }
        ReadStatement {
            order,
            pks,
            spaces,
            tables,
            query: selects.join(" UNION ALL "),
        }
    }

    /// The query for tables every user may read in full (and the kv store), which needs
    /// no role: it runs as a prepared statement, planned once per connection, where
    /// `mjolnir.read_as` plans on every call. Each row also says whether every table read,
    /// `$3` (their oids), is still open: it exists, has no row-level security, and
    /// `mjolnir_app` may `SELECT` it ([`still_open`]).
    fn open_query(&self) -> String {
        format!(
            "SELECT q.*, g.open FROM ({query}) AS q, {open}",
            query = self.query,
            open = still_open("$3"),
        )
    }

    /// The entries read, in the order of `keys`, from the statement's rows.
    fn entries(
        &self,
        keys: &[Resolved],
        rows: impl IntoIterator<Item = (i32, i64, Option<Value>)>,
    ) -> Vec<Entry> {
        let order = &self.order;
        let mut found: Vec<Option<(Version, Option<Value>)>> = vec![None; keys.len()];
        for (pos, version, value) in rows {
            // `pos` is 1-based in `order`.
            if let Some(&i) = order.get((pos as usize).wrapping_sub(1)) {
                found[i] = Some((Version(version as u64), value));
            }
        }
        keys.iter()
            .zip(found)
            .map(|(r, f)| {
                let (version, value) = f.unwrap_or((Version::ABSENT, None));
                Entry {
                    key: r.key.clone(),
                    version,
                    value,
                }
            })
            .collect()
    }
}

/// A row of a query's read: `(ord, version, value)`.
pub(super) type QueryRow = (i32, i64, Option<Value>);

/// A one-row subquery `g` whose `open` says whether every table of `oids` (an `oid[]`
/// parameter) is still open: it exists, has no row-level security, and `mjolnir_app` may
/// `SELECT` it (the rule of `mjolnir.open_spaces`, written out so that it is planned with
/// the statement). Each table is looked up by a subquery on its oid, which stays an index
/// scan in the generic plan (`db::connect`); `oid = ANY(…)` became a scan of all of
/// `pg_class` there, and made a read seven times as slow.
pub(super) fn still_open(oids: &str) -> String {
    format!(
        "(SELECT coalesce(bool_and(coalesce(
                     (SELECT NOT c.relrowsecurity
                             AND has_table_privilege('mjolnir_app', c.oid, 'SELECT')
                        FROM pg_class c WHERE c.oid = t.oid),
                     false)), true) AS open
            FROM unnest({oids}::oid[]) AS t(oid)) AS g"
    )
}
