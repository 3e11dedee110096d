//! Reads of queries of tables open to every user, batched while the database is busy
//! (`lanes.rs`): the queries of one shape in a batch (one statement text, different
//! operands) share one statement, which runs the query once per operand array.
//!
//! A query's statement is prepared per shape, so each shape is planned once per connection;
//! run one by one, every client's query read cost a round trip and a statement of its own,
//! where reads of keys share them (`read.rs`). Queries of other tables run as their user,
//! one by one (`Reader::query_rows`).

use super::lanes::{self, Lanes, Runner};
use super::query::QueryPlan;
use super::read::{QueryRow, still_open};
use crate::error::{Result, ServerError};
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use mjolnir_core::ErrorKind;
use serde_json::Value;
use sqlx::{AssertSqlSafe, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Runs the batched query reads of one instance.
#[derive(Debug)]
pub(super) struct QueryReads {
    pool: PgPool,
    batched: bool,
    lanes: Lanes<QueryJob>,
}

#[derive(Debug)]
pub(super) struct QueryJob {
    plan: Arc<QueryPlan>,
    reply: oneshot::Sender<Result<Option<Vec<QueryRow>>>>,
}

impl QueryReads {
    pub(super) fn new(pool: PgPool, knobs: &Knobs, metrics: &Metrics) -> QueryReads {
        QueryReads {
            pool,
            batched: knobs.group_commit > 1,
            lanes: Lanes::new(
                knobs.query_lanes,
                knobs.group_commit,
                metrics.read_batch_size.clone(),
                metrics.read_lane_busy.clone(),
                metrics.reads_queued.clone(),
            ),
        }
    }

    /// The rows of `plan`'s query, as `Reader::query_rows` gives them, or `None` if its
    /// table is no longer open to every user (then nothing was read).
    pub(super) async fn read(
        self: &Arc<Self>,
        plan: Arc<QueryPlan>,
    ) -> Result<Option<Vec<QueryRow>>> {
        if !self.batched {
            let sql = batch_sql(&plan);
            return self
                .read_now(&sql, &[&plan])
                .await
                .map(|mut r| r.pop().flatten());
        }
        let (reply, rows) = oneshot::channel();
        lanes::push(self, QueryJob { plan, reply });
        rows.await.unwrap_or_else(|_| {
            Err(ServerError::reply(
                ErrorKind::Internal,
                "the reader stopped before answering this query",
            ))
        })
    }

    /// Runs queries of one shape in one statement, `sql` (their [`batch_sql`]): for each,
    /// its rows, or `None` for all if the table is no longer open.
    async fn read_now(
        &self,
        sql: &str,
        plans: &[&Arc<QueryPlan>],
    ) -> Result<Vec<Option<Vec<QueryRow>>>> {
        let args: Vec<&Value> = plans.iter().map(|p| &p.args).collect();
        let found: Vec<(i32, i32, i64, Option<Value>, bool)> =
            sqlx::query_as(AssertSqlSafe(sql.to_owned()))
                .bind(&args)
                .bind(&[plans[0].table.oid][..])
                .fetch_all(&self.pool)
                .await?;
        if !found.iter().all(|row| row.4) {
            return Ok(plans.iter().map(|_| None).collect());
        }
        let mut rows: Vec<Vec<QueryRow>> = plans.iter().map(|_| Vec::new()).collect();
        for (i, ord, version, value, _) in found {
            if let Some(mine) = rows.get_mut((i as usize).wrapping_sub(1)) {
                mine.push((ord, version, value));
            }
        }
        Ok(rows.into_iter().map(Some).collect())
    }
}

impl Runner for QueryReads {
    type Job = QueryJob;

    fn lanes(&self) -> &Lanes<QueryJob> {
        &self.lanes
    }

    /// One statement per shape among the batch's queries, concurrently.
    async fn run(self: Arc<Self>, batch: Vec<QueryJob>) {
        // Queries of one shape have one statement text.
        let mut shapes: HashMap<String, Vec<QueryJob>> = HashMap::new();
        for job in batch {
            shapes.entry(batch_sql(&job.plan)).or_default().push(job);
        }
        let calls: Vec<_> = shapes
            .into_iter()
            .map(|(sql, jobs)| {
                let this = self.clone();
                tokio::spawn(async move {
                    let plans: Vec<&Arc<QueryPlan>> = jobs.iter().map(|j| &j.plan).collect();
                    match this.read_now(&sql, &plans).await {
                        Ok(rows) => {
                            for (job, rows) in jobs.into_iter().zip(rows) {
                                let _ = job.reply.send(Ok(rows));
                            }
                        }
                        // Each on its own, so that each gets its own error.
                        Err(_) => {
                            for job in jobs {
                                let read = this.read_now(&sql, &[&job.plan]).await;
                                let _ = job.reply.send(read.map(|mut r| r.pop().flatten()));
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

/// The statement reading queries of `plan`'s shape: `$1` their operands (`jsonb[]`), `$2`
/// the table's oid (`oid[]`, checked still open); rows `(i, ord, version, value, open)`,
/// `i` the query's place in `$1` (1-based), then its rows as `Reader::query_rows` gives them.
fn batch_sql(plan: &QueryPlan) -> String {
    format!(
        "SELECT a.i::int, q.ord, q.version, q.value, g.open
           FROM unnest($1::jsonb[]) WITH ORDINALITY AS a(args, i)
           CROSS JOIN LATERAL ({rows}) AS q(ord, version, value),
           {open}",
        rows = plan.read_sql_with_version("a.args"),
        open = still_open("$2"),
    )
}
