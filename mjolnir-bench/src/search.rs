//! The search benchmark (issue 15): the 20 most relevant of 1,000,000 short notes for a
//! search of one or two words, read through Mjölnir, against pgbench running the same
//! `SELECT` with `websearch_to_tsquery` directly. A kind of the queries benchmark
//! (`queries.rs`, `Bench::Search`), run and reported through it.
//!
//! The data is `search-app/migrations/0001_notes.sql`: 1,000,000 notes of 3 to 6 made-up
//! words out of 4,000, drawn with a skewed frequency, an expression GIN index on
//! `to_tsvector('english', body)`, a version for every note in `mjolnir.versions`, and the
//! list of searches the clients draw from (`searches`), 16 of one word and 16 of two,
//! matching from none to about 2,100 notes. `scripts/bench.sh` serves it with its own
//! `mjolnir dev`, on a database of its own in the same cluster.
//!
//! Both sides draw a search uniformly from that list. pgbench cannot hold a string in a
//! variable, so it runs one script per search, the search's text a literal of it, drawn
//! uniformly too: each is prepared once per connection and planned for its own words, where
//! Mjölnir's statement is prepared once per connection with a generic plan, the search's
//! text a parameter.

use crate::driver::{Job, Outcome};
use anyhow::Context as _;
use mjolnir_client::Client;
use mjolnir_core::{ClientMessage, Key, Query};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use std::sync::Arc;

/// The most relevant notes a search reads.
pub const LIMIT: u32 = 20;
/// The text search configuration of the server (its default `--search-config`) and of the
/// notes' index.
pub const CONFIG: &str = "english";

/// `notes.search(body, text).limit(20)`: in relevance order, the default.
pub fn search_query(text: &str) -> Query {
    Query::table("notes").search("body", text).limit(LIMIT)
}

/// The searches of the list, in order (the migration's `searches` table).
pub async fn load(pool: &PgPool) -> anyhow::Result<Arc<[String]>> {
    let texts: Vec<String> = sqlx::query_scalar("SELECT text FROM searches ORDER BY id")
        .fetch_all(pool)
        .await
        .context("reading the searches (is the database search-app's?)")?;
    anyhow::ensure!(!texts.is_empty(), "the searches table is empty");
    Ok(texts.into())
}

/// A pool of one connection, for the list and the check.
pub async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .with_context(|| format!("connecting to {database_url}"))
}

/// The search as pgbench runs it, for `text`: the same rows in the same order (relevance,
/// then the primary key, as the server's statement breaks ties), each with its version
/// looked up as Mjölnir does, as columns rather than JSON.
pub fn pgbench_statement(text: &str) -> String {
    let text = text.replace('\'', "''");
    format!(
        "SELECT n.id, n.body,\n\
         \x20      coalesce((SELECT v.version FROM mjolnir.versions v\n\
         \x20                 WHERE v.space = 'notes' AND v.pk = n.id::text), 0) AS version\n\
         FROM notes n\n\
         WHERE to_tsvector('{CONFIG}', n.body) @@ websearch_to_tsquery('{CONFIG}', '{text}')\n\
         ORDER BY ts_rank(to_tsvector('{CONFIG}', n.body), websearch_to_tsquery('{CONFIG}', '{text}')) DESC, n.id\n\
         LIMIT {LIMIT};\n"
    )
}

/// One pgbench script per search.
pub fn pgbench_scripts(searches: &[String]) -> Vec<String> {
    searches.iter().map(|s| pgbench_statement(s)).collect()
}

/// Reads every search of the list through Mjölnir and runs pgbench's statement for it
/// directly: both must give the same notes, in the same order, at the same versions.
/// Returns how many notes the searches gave in all.
pub async fn check(url: &str, pool: &PgPool, searches: &[String]) -> anyhow::Result<usize> {
    let client = Client::connect(url, None)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut notes = 0;
    for text in searches {
        let entries = client.read(vec![Key::query(search_query(text))]).await?;
        let pks = entries
            .first()
            .and_then(|e| e.value.as_ref())
            .and_then(Value::as_array)
            .with_context(|| format!("the search {text:?} gave no result"))?;
        let through_mjolnir: Vec<(i64, u64)> = pks
            .iter()
            .zip(entries.iter().skip(1))
            .map(|(pk, row)| (pk.as_i64().unwrap_or(-1), row.version.0))
            .collect();
        anyhow::ensure!(
            pks.len() + 1 == entries.len(),
            "the search {text:?} gave {} notes and {} rows",
            pks.len(),
            entries.len() - 1
        );
        let direct: Vec<(i32, String, i64)> =
            sqlx::query_as(AssertSqlSafe(pgbench_statement(text)))
                .fetch_all(pool)
                .await?;
        let direct: Vec<(i64, u64)> = direct
            .into_iter()
            .map(|(id, _, version)| (i64::from(id), version.unsigned_abs()))
            .collect();
        anyhow::ensure!(
            through_mjolnir == direct,
            "the search {text:?} gave {through_mjolnir:?} through Mjölnir, {direct:?} directly"
        );
        notes += direct.len();
        let msg = ClientMessage::Unsubscribe {
            keys: entries.into_iter().map(|e| e.key).collect(),
        };
        client.send_raw(msg.to_json()).await?;
    }
    Ok(notes)
}

/// One simulated client of Mjölnir: one connection, reading a search of the list at each
/// step and then unsubscribing from what it read, as the query reads do.
#[derive(Debug)]
pub struct SearchWorker {
    client: Client,
    searches: Arc<[String]>,
}

impl SearchWorker {
    pub async fn connect_all(
        url: &str,
        clients: u32,
        searches: &Arc<[String]>,
    ) -> anyhow::Result<Vec<SearchWorker>> {
        let mut workers = Vec::new();
        for _ in 0..clients {
            let client = Client::connect(url, None)
                .await
                .with_context(|| format!("connecting to {url}"))?;
            workers.push(SearchWorker {
                client,
                searches: searches.clone(),
            });
        }
        Ok(workers)
    }
}

impl Job for SearchWorker {
    async fn step(&mut self, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        let text = &self.searches[rng.random_range(0..self.searches.len())];
        let entries = self
            .client
            .read(vec![Key::query(search_query(text))])
            .await?;
        anyhow::ensure!(
            (1..=1 + LIMIT as usize).contains(&entries.len()),
            "the search {text:?} gave {} entries",
            entries.len()
        );
        let msg = ClientMessage::Unsubscribe {
            keys: entries.into_iter().map(|e| e.key).collect(),
        };
        self.client.send_raw(msg.to_json()).await?;
        Ok(Outcome::Done { attempts: 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pgbench_statement_ranks_like_the_server_and_quotes_its_text() {
        let sql = pgbench_statement("it's here");
        assert!(
            sql.contains("websearch_to_tsquery('english', 'it''s here')"),
            "{sql}"
        );
        assert!(sql.contains("DESC, n.id\nLIMIT 20;"), "{sql}");
        assert_eq!(pgbench_scripts(&["a".into(), "b c".into()]).len(), 2);
    }

    #[test]
    fn the_search_reads_twenty_notes_by_relevance() {
        let q = search_query("quick fox");
        assert_eq!(q.limit, Some(20));
        assert!(q.order.is_empty(), "relevance is the default order");
        assert_eq!(q.search.map(|s| s.column), Some("body".to_owned()));
    }
}
