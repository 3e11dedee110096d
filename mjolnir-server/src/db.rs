//! Connecting to PostgreSQL and bringing its schema up to date.

use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A connection counts its prepared statements at one use in this many: counting costs a
/// round trip, and a connection can only overshoot the bound by what it prepares meanwhile.
pub const COUNT_EVERY: u64 = 64;

/// Whether `conn` holds more than `max` prepared statements: sqlx's own (at most 100), and
/// the server's (`mjolnir.prepared`, one per statement text, never deallocated, since a
/// name its session setting lists must exist).
pub async fn holds_too_many(conn: &mut PgConnection, max: usize) -> Result<bool, sqlx::Error> {
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements")
        .fetch_one(conn)
        .await?;
    Ok(held as usize > max)
}

/// Mjölnir's own schema (`mjolnir.*`), compiled into the binary.
static MJOLNIR_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// A pool whose transactions are READ COMMITTED whatever the database's default: the
/// commit path relies on each statement seeing what committed before it (after the key
/// locks are taken), which REPEATABLE READ or SERIALIZABLE would not give.
///
/// Its prepared statements keep one generic plan. Under the default `plan_cache_mode`
/// PostgreSQL planned a read afresh at every call (its custom plans looked cheaper, the
/// arrays of keys being of unknown length), which cost more than running it (measured in
/// docs/benchmarks.md, "Measurements behind the code"). Every statement the server prepares is written to be
/// index lookups under a generic plan (docs/architecture.md, "Plans"); the functions of the
/// commit path already run with generic plans (migration 0005).
///
/// Nor do they start parallel workers or compile to machine code (JIT): a generic plan
/// cannot see how few rows a search matches, and its estimate chose both for a search of
/// 2,000 rows, at several times the search's own cost (docs/benchmarks.md, "Search").
/// Nothing the server reads is large enough to gain from them (a query returns at most
/// 1000 rows).
///
/// A connection given back to the pool is closed, rather than kept, once it holds more than
/// `max_prepared` prepared statements ([`holds_too_many`], checked at every
/// [`COUNT_EVERY`]th release, not the first): a new one starts with none.
pub async fn connect(url: &str, size: u32, max_prepared: usize) -> Result<PgPool, sqlx::Error> {
    let releases = Arc::new(AtomicU64::new(0));
    let options = PgConnectOptions::from_str(url)?.options([
        ("default_transaction_isolation", "read committed"),
        ("plan_cache_mode", "force_generic_plan"),
        ("max_parallel_workers_per_gather", "0"),
        ("jit", "off"),
    ]);
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .after_release(move |conn, _| {
            let due = (releases.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(COUNT_EVERY);
            Box::pin(async move { Ok(!(due && holds_too_many(conn, max_prepared).await?)) })
        })
        .connect_with(options)
        .await
}

/// Applies Mjölnir's migrations, then the app's own (`APP_DIR/migrations/*.sql`, in
/// sqlx's `<version>_<name>.sql` naming).
///
/// Each set keeps its own bookkeeping table in the `mjolnir` schema, so neither can
/// mistake the other's migrations for its own. sqlx takes an advisory lock while migrating,
/// so several instances starting at once apply each migration once.
///
/// Before the app's migrations run, the default privileges of the app's schema give
/// `mjolnir_app` (the role every user's reads and writes run as) the rights of reading and
/// writing rows of every table created from then on, and of using its sequences. A table
/// gets them once, when it is created; what the app then takes away (`REVOKE UPDATE ON
/// accounts FROM mjolnir_app`, to make a table read-only) stands, since nothing grants
/// privileges on existing tables again. Setting the default privileges again at each start
/// changes no existing table.
pub async fn migrate(
    pool: &PgPool,
    app_migrations: Option<&Path>,
    app_schema: &str,
) -> anyhow::Result<()> {
    let mut own = Migrator {
        migrations: MJOLNIR_MIGRATIONS.migrations.clone(),
        ..Migrator::DEFAULT
    };
    own.create_schema("mjolnir");
    own.dangerous_set_table_name("mjolnir._migrations");
    own.run(pool).await?;

    let schema = crate::catalog::quote_ident(app_schema);
    for grant in [
        format!("GRANT USAGE ON SCHEMA {schema} TO mjolnir_app"),
        format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO mjolnir_app"
        ),
        format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT USAGE ON SEQUENCES TO mjolnir_app"
        ),
    ] {
        sqlx::query(AssertSqlSafe(grant)).execute(pool).await?;
    }

    if let Some(dir) = app_migrations.filter(|d| d.is_dir()) {
        let mut app = Migrator::new(dir).await?;
        app.create_schema("mjolnir");
        app.dangerous_set_table_name("mjolnir._app_migrations");
        app.run(pool).await?;
    }
    Ok(())
}
