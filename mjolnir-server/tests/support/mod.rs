//! What every end-to-end test needs: a fresh database and running instances.
//!
//! The database server comes from `MJOLNIR_TEST_DATABASE_URL` (an admin URL; `scripts/test.sh`
//! starts a private PostgreSQL with `mjolnir pg start --fresh` and sets it to the URL that
//! prints). Each test creates its own database there, so tests run in parallel without
//! seeing each other.

#![allow(dead_code, unreachable_pub)]

use mjolnir_core::{Key, WriteOp, WriteSet};
use mjolnir_server::server::{self, Config, Running};
use serde_json::{Map, Value};
use sqlx::{Connection, PgConnection, PgPool};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub async fn new(label: &str) -> TestDb {
        let admin = std::env::var("MJOLNIR_TEST_DATABASE_URL").expect(
            "MJOLNIR_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh, which starts PostgreSQL, \
             or set it to what `mjolnir pg start DIR` prints",
        );
        let name = format!(
            "t_{label}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to the test PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = with_database(&admin, &name);
        TestDb { url, name }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.unwrap()
    }

    /// Starts an instance on 127.0.0.1 with the app directory `app_dir` (its migrations
    /// are applied) and a unique instance name.
    pub async fn start(&self, app_dir: &Path) -> Running {
        self.start_with(app_dir, |_| {}).await
    }

    /// Like [`TestDb::start`], after `tweak` changed the configuration. Group commit is on
    /// (the default knobs) unless `MJOLNIR_TEST_GROUP_COMMIT=off`; `tweak` may override it.
    pub async fn start_with(&self, app_dir: &Path, tweak: impl FnOnce(&mut Config)) -> Running {
        let mut config = Config::new(&self.url);
        config.app_dir = Some(app_dir.to_owned());
        if !group_commit_from_env() {
            config.knobs.group_commit = 1;
        }
        tweak(&mut config);
        server::start(config, std::future::pending())
            .await
            .expect("start a server instance")
    }
}

/// Whether the tests run with group commit: on unless `MJOLNIR_TEST_GROUP_COMMIT` is
/// `off` (or `0`, `false`).
pub fn group_commit_from_env() -> bool {
    !matches!(
        std::env::var("MJOLNIR_TEST_GROUP_COMMIT").as_deref(),
        Ok("off" | "0" | "false")
    )
}

/// The value of `server`'s metric line starting with `prefix` (a name and, if any, its
/// labels, then a space), 0 if it has none.
pub fn metric(server: &Running, prefix: &str) -> f64 {
    server
        .state
        .metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A temporary app directory holding one migration.
pub fn app_with_schema(sql: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("migrations")).unwrap();
    std::fs::write(dir.path().join("migrations/0001_schema.sql"), sql).unwrap();
    dir
}

/// The bank of the paper: `users(name, balance)` with a ledger of transfers.
pub const BANK_SCHEMA: &str = "
CREATE TABLE accounts (
    id integer PRIMARY KEY,
    balance integer NOT NULL CHECK (balance >= 0)
);
CREATE TABLE transfers (
    id text PRIMARY KEY,
    from_account integer NOT NULL,
    to_account integer NOT NULL,
    amount integer NOT NULL
);
";

/// A table of counters with one row, `(1, 0)`.
pub const COUNTER_SCHEMA: &str = "CREATE TABLE counters (id integer PRIMARY KEY, n integer NOT NULL); INSERT INTO counters VALUES (1, 0);";

/// A JSON object literal as the map a write takes.
pub fn obj(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// Commits `writes` having read nothing, and asserts it committed: another client's
/// change, in tests of what a reader sees of it.
pub async fn blind(client: &mjolnir_client::Client, writes: WriteSet) {
    let (_, outcome) = client
        .commit_new(mjolnir_core::ReadSet::new(), writes)
        .await
        .unwrap();
    assert!(
        matches!(outcome, mjolnir_client::CommitOutcome::Committed(_)),
        "{outcome:?}"
    );
}

/// A write set of these ops.
pub fn writes(ops: Vec<(Key, WriteOp)>) -> WriteSet {
    let mut w = WriteSet::new();
    for (k, op) in ops {
        w.push(k, op);
    }
    w
}
