//! Every tunable of the server in one place, with the reason for its default.

use std::time::Duration;

/// Limits and sizes a deployment may want to change. Built from the command line
/// (`mjolnir serve --help`) or [`Knobs::default`] in tests.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Largest WebSocket message accepted. A commit carries whole rows, so this bounds the
    /// size of one transaction; 1 MiB is far above any handler's write set in the examples.
    pub max_message_bytes: usize,
    /// Requests one connection may have in progress. Past this the server stops reading
    /// the socket until one finishes, so a flooding client slows itself down and nobody else.
    pub max_in_flight_per_connection: usize,
    /// Replies and pushes queued for one connection. A client that lets this fill is too
    /// slow to keep a live cache and is disconnected (close code 4002); it reconnects and
    /// re-reads.
    pub outbound_queue: usize,
    /// Keys in one read request or one commit. Bounds the locks one commit takes.
    pub max_keys_per_request: usize,
    /// Database connections of this instance.
    pub pool_size: u32,
    /// How often a commit is re-run after PostgreSQL reports a deadlock or serialization
    /// failure (both transient: nothing was applied).
    pub commit_db_retries: u32,
    /// How long a new connection may take to say hello.
    pub hello_timeout: Duration,
    /// Group commit: the most client transactions validated and applied together in one
    /// PostgreSQL transaction, sharing its round trips and its fsync. Commits that arrive
    /// while a batch runs form the next one; nothing waits for a batch to fill. 1 (or 0)
    /// turns batching off: every commit is then its own PostgreSQL transaction.
    pub group_commit: usize,
    /// Batches of this instance that may run at once, each on its own connection. They
    /// take their key locks in one ascending sweep, so they cannot deadlock each other.
    /// One by default: on a busy database a second lane splits the queue into two smaller
    /// batches that compete for the same CPU (`scripts/bench.sh` measured 1 lane ahead of 2
    /// by about 20 % at 8 and 32 clients, with synchronous_commit on and off). The same
    /// number of lanes serves reads.
    pub group_commit_lanes: usize,
    /// The text search configuration searches use (`websearch_to_tsquery(config, text)`,
    /// and `to_tsvector(config, column)` for a text column). An app that keeps a
    /// `tsvector` column, or an index on `to_tsvector(…)`, builds it with the same one.
    /// Checked to be a plain name (`english`, `pg_catalog.simple`) when set.
    pub search_config: String,
    /// Reads the change feed runs at once for one commit: the re-reads of a change as each
    /// subscriber's user (tables under row-level security) and the re-runs of the queries
    /// it may change. One after another, 400 users subscribed to one query of a table under
    /// row-level security made a change of one row take 1.5 s to reach them
    /// (`scripts/bench.sh --only live`); at once over the pool, it is bounded below the
    /// pool's size so that commits still find a connection.
    pub feed_reads: usize,
    /// Reads of queries of tables open to every user that may run at once, each batch of
    /// them on its own connection (`store/query_reads.rs`). A query costs the database far
    /// more than a key, so they get more lanes than key reads: through one lane, searches
    /// of 1,000,000 notes from 8 clients ran one after another and kept one core of two
    /// busy (`scripts/bench.sh --only search`).
    pub query_lanes: usize,
    /// Prepared statements one database connection may hold before the server closes it
    /// (`db::holds_too_many`). The server prepares one per statement text, and a query's
    /// text follows its shape, which clients choose: without a bound, a client sending
    /// ever new shapes would grow every backend's memory without end.
    pub max_prepared_statements: usize,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            max_message_bytes: 1 << 20,
            max_in_flight_per_connection: 64,
            outbound_queue: 1024,
            max_keys_per_request: 1000,
            pool_size: 16,
            commit_db_retries: 5,
            hello_timeout: Duration::from_secs(10),
            group_commit: 64,
            group_commit_lanes: 1,
            search_config: "english".to_owned(),
            feed_reads: 8,
            query_lanes: 4,
            max_prepared_statements: 1000,
        }
    }
}

/// Whether `name` can be a text search configuration's name as the server writes it into
/// SQL: a name, optionally schema-qualified, of lowercase letters, digits and underscores.
pub fn is_config_name(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, config)) => part(schema) && part(config),
        None => part(name),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn search_configs_are_plain_names() {
        assert!(super::is_config_name("english"));
        assert!(super::is_config_name("pg_catalog.simple"));
        assert!(!super::is_config_name("english'); DROP TABLE x; --"));
        assert!(!super::is_config_name("a.b.c"));
        assert!(!super::is_config_name(""));
    }
}
