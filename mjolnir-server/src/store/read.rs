//! Reading keys: values with the versions they were committed at.

use super::lanes::{self, Lanes, Runner};
use super::{Resolved, Store};
use crate::catalog::quote_ident;
use crate::error::{Result, ServerError};
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use mjolnir_core::protocol::Entry;
use mjolnir_core::{ErrorKind, Version};
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

impl Store {
    /// Reads `keys` as `user` sees them, from one snapshot.
    ///
    /// A row the app's policies hide from `user` reads as absent, at its real version.
    /// Reads that arrive while the database is busy are batched (`lanes.rs`): one call
    /// per user for all of them.
    pub async fn read(&self, user: Option<&str>, keys: &[mjolnir_core::Key]) -> Result<Vec<Entry>> {
        let keys = self.resolve(keys).await?;
        if self.knobs.group_commit <= 1 {
            return read_as(&self.pool, user, &keys).await;
        }
        let (reply, entries) = oneshot::channel();
        lanes::push(
            &self.reader,
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
}

/// Runs batches of reads. One per instance.
#[derive(Debug)]
pub(super) struct Reader {
    pool: PgPool,
    lanes: Lanes<ReadJob>,
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
            pool,
            lanes: Lanes::new(
                knobs.group_commit_lanes,
                knobs.group_commit,
                metrics.read_batch_size.clone(),
                metrics.read_lane_busy.clone(),
            ),
        }
    }
}

impl Runner for Reader {
    type Job = ReadJob;

    fn lanes(&self) -> &Lanes<ReadJob> {
        &self.lanes
    }

    /// One `read_as` call per user in the batch, concurrently; each job gets its slice.
    async fn run(self: Arc<Self>, batch: Vec<ReadJob>) {
        let mut by_user: HashMap<Option<String>, Vec<ReadJob>> = HashMap::new();
        for job in batch {
            by_user.entry(job.user.clone()).or_default().push(job);
        }
        let calls: Vec<_> = by_user
            .into_iter()
            .map(|(user, jobs)| {
                let pool = self.pool.clone();
                tokio::spawn(async move {
                    let keys: Vec<Resolved> =
                        jobs.iter().flat_map(|j| j.keys.iter().cloned()).collect();
                    match read_as(&pool, user.as_deref(), &keys).await {
                        Ok(entries) => {
                            let mut entries = entries.into_iter();
                            for job in jobs {
                                let mine = entries.by_ref().take(job.keys.len()).collect();
                                let _ = job.reply.send(Ok(mine));
                            }
                        }
                        // Each on its own, so that each gets its own error.
                        Err(_) => {
                            for job in jobs {
                                let _ = job
                                    .reply
                                    .send(read_as(&pool, user.as_deref(), &job.keys).await);
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

/// Reads the current version and value of each key, in the order given, in one statement
/// (one round trip and one snapshot), as `user` may see them: as `mjolnir_app` with
/// `user` (`mjolnir.read_as`), so the app's row-level-security policies and privileges
/// apply, unless every table read is open to every user.
pub(super) async fn read_as(
    pool: &PgPool,
    user: Option<&str>,
    keys: &[Resolved],
) -> Result<Vec<Entry>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    // Keys grouped by space, each group a slice of the parameter arrays, with one SELECT
    // per group. The statement is built only from names the catalog read from PostgreSQL,
    // quoted with `quote_ident`, and the slice bounds; every value is a parameter.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| keys[a].space.cmp(&keys[b].space));
    let pks: Vec<&str> = order.iter().map(|&i| keys[i].pk.as_str()).collect();
    let spaces: Vec<&str> = order.iter().map(|&i| keys[i].space.as_str()).collect();
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
            Some(t) => format!(
                "(SELECT {json} FROM {table} r WHERE r.{pk} = k.pk::{ty})",
                json = t.row_json,
                table = t.qualified,
                pk = quote_ident(&t.pk_column().name),
                ty = t.pk_column().sql_type,
            ),
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
    let query = selects.join(" UNION ALL ");
    // Tables every user may read in full (and the kv store) need no role: the query runs
    // as a prepared statement, planned once per connection. Otherwise `mjolnir.read_as`
    // runs it as the app's role and `user`, planning it on every call.
    let open = keys.iter().all(Resolved::open_read);
    let rows: Vec<(i32, i64, Option<Value>)> = if open {
        sqlx::query_as(AssertSqlSafe(query))
            .bind(&pks)
            .bind(&spaces)
            .fetch_all(pool)
            .await?
    } else {
        sqlx::query_as("SELECT * FROM mjolnir.read_as($1, $2, $3, $4)")
            .bind(user.unwrap_or(""))
            .bind(query)
            .bind(&pks)
            .bind(&spaces)
            .fetch_all(pool)
            .await?
    };
    let mut found: Vec<Option<(Version, Option<Value>)>> = vec![None; keys.len()];
    for (pos, version, value) in rows {
        // `pos` is 1-based in `order`.
        if let Some(&i) = order.get((pos as usize).wrapping_sub(1)) {
            found[i] = Some((Version(version as u64), value));
        }
    }
    Ok(keys
        .iter()
        .zip(found)
        .map(|(r, f)| {
            let (version, value) = f.unwrap_or((Version::ABSENT, None));
            Entry {
                key: r.key.clone(),
                version,
                value,
            }
        })
        .collect())
}
