//! Shared state in PostgreSQL: reading keys with their versions, and committing.
//!
//! Every instance talks to the database only through [`Store`], and keeps nothing in
//! memory that another instance would need: versions, deduplication records and the
//! change feed all live in the `mjolnir` schema.

mod arrays;
mod call;
mod commit;
mod committer;
mod decode;
mod lanes;
mod locks;
mod outcome;
mod plan;
mod query;
mod query_reads;
mod read;
mod recent;
mod sqlstate;
mod turn;

pub use commit::Request;
pub use outcome::Outcome;
pub use turn::{Sequence, Stage, Turn};

use crate::catalog::{Catalog, KV_SPACE, Table};
use crate::error::Result;
use crate::knobs::Knobs;
use crate::metrics::Metrics;
use mjolnir_core::{Key, Version};
use sqlx::PgPool;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// A key resolved against the catalog: where its version and value live.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub key: Key,
    /// `mjolnir.versions.space`: the table name, or [`KV_SPACE`].
    pub space: String,
    /// `mjolnir.versions.pk`: the canonical text of the primary key (or the kv key).
    pub pk: String,
    /// The table, for rows and queries; `None` for kv entries.
    pub table: Option<Arc<Table>>,
    /// For a query, the query checked against its table (its `pk` is then empty).
    pub query: Option<Arc<query::QueryPlan>>,
}

impl Resolved {
    /// Whether every user reads this key alike, as far as the catalog knows: a kv entry, or
    /// a row of a table every user may read in full ([`Table::open_read`]). A read checks
    /// it again in the database (`Reader::read_now`).
    pub fn open_read(&self) -> bool {
        self.query.is_none() && self.table.as_ref().is_none_or(|t| t.open_read)
    }
}

/// How long after a catalog reload an unknown table name does not trigger another one.
const CATALOG_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Store {
    pool: PgPool,
    schema: String,
    knobs: Knobs,
    catalog: RwLock<(Arc<Catalog>, Instant)>,
    committer: Arc<committer::Committer>,
    reader: Arc<read::Reader>,
    /// What was committed lately, here and (through the change feed) elsewhere.
    recent: Arc<recent::Recent>,
}

impl Store {
    /// Opens the store over an already-migrated database (see [`crate::db::migrate`]).
    /// Batch sizes and paths go to `metrics`.
    pub async fn open(
        pool: PgPool,
        schema: &str,
        knobs: Knobs,
        metrics: &Metrics,
    ) -> Result<Store> {
        let catalog = Catalog::load(&pool, schema).await?;
        let reader = Arc::new(read::Reader::new(pool.clone(), &knobs, metrics));
        let recent = Arc::new(recent::Recent::new(metrics.known_stale_commits.clone()));
        Ok(Store {
            committer: Arc::new(committer::Committer::new(
                pool.clone(),
                schema,
                &knobs,
                metrics,
                reader.clone(),
                recent.clone(),
            )),
            reader,
            recent,
            pool,
            schema: schema.to_owned(),
            knobs,
            catalog: RwLock::new((Arc::new(catalog), Instant::now())),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn knobs(&self) -> &Knobs {
        &self.knobs
    }

    pub fn table_infos(
        &self,
    ) -> std::collections::BTreeMap<String, mjolnir_core::protocol::TableInfo> {
        self.catalog().infos()
    }

    /// Remembers committed changes from the change feed, other instances' included, so
    /// that a commit here that read an older version is known stale (`recent.rs`). Keys of
    /// tables this instance does not know yet are skipped.
    pub fn remember(&self, changes: &[mjolnir_core::protocol::Entry]) {
        let catalog = self.catalog();
        let known: Vec<(Resolved, Version)> = changes
            .iter()
            .filter_map(|e| Some((resolve_one(&catalog, &e.key, "").ok()?, e.version)))
            .collect();
        self.recent.record(known.iter().map(|(r, v)| (r, *v)));
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().expect("catalog lock").0.clone()
    }

    /// Resolves keys, reloading the catalog once if a table is unknown (another instance
    /// may have migrated since this one started) or a read found it outdated.
    pub async fn resolve(&self, keys: impl IntoIterator<Item = &Key>) -> Result<Vec<Resolved>> {
        let keys: Vec<&Key> = keys.into_iter().collect();
        if self.reader.take_catalog_outdated() {
            let fresh = Arc::new(Catalog::load(&self.pool, &self.schema).await?);
            *self.catalog.write().expect("catalog lock") = (fresh, Instant::now());
        }
        let mut catalog = self.catalog();
        let unknown = keys
            .iter()
            .any(|k| k.table().is_some_and(|table| !catalog.knows(table)));
        if unknown {
            let stale =
                self.catalog.read().expect("catalog lock").1.elapsed() > CATALOG_RELOAD_INTERVAL;
            if stale {
                let fresh = Arc::new(Catalog::load(&self.pool, &self.schema).await?);
                *self.catalog.write().expect("catalog lock") = (fresh.clone(), Instant::now());
                catalog = fresh;
            }
        }
        let config = &self.knobs.search_config;
        keys.into_iter()
            .map(|k| resolve_one(&catalog, k, config))
            .collect()
    }
}

/// Resolves one key; `search_config` is the text search configuration of searches.
fn resolve_one(catalog: &Catalog, key: &Key, search_config: &str) -> Result<Resolved> {
    match key {
        Key::Row { table, pk } => {
            let table = catalog.table(key, table)?;
            let pk = table.pk_text(key, pk)?;
            Ok(Resolved {
                key: key.clone(),
                space: table.name.clone(),
                pk,
                table: Some(table),
                query: None,
            })
        }
        Key::Kv { key: name } => Ok(Resolved {
            key: key.clone(),
            space: KV_SPACE.to_owned(),
            pk: name.clone(),
            table: None,
            query: None,
        }),
        Key::Query(q) => {
            let table = catalog.table(key, &q.table)?;
            let plan = query::QueryPlan::new(key, q, table.clone(), search_config)?;
            Ok(Resolved {
                key: key.clone(),
                space: table.name.clone(),
                pk: String::new(),
                table: Some(table),
                query: Some(Arc::new(plan)),
            })
        }
    }
}
