//! `mjolnir pg`, as scripts/test.sh, scripts/bench.sh and js/bench/postgres.mjs run it: the
//! URL alone on stdout, the cluster left running, and a stop that can delete the data.

use sqlx::{Connection, PgConnection};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn mjolnir_pg(args: &[&str], dir: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_mjolnir"))
        .arg("pg")
        .args(args)
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

async fn current_database(url: &str) -> String {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let db = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    db
}

#[tokio::test]
async fn pg_start_prints_a_url_and_leaves_the_cluster_running_until_pg_stop() {
    let parent = tempfile::tempdir().unwrap();
    // As root, `postgres` must be able to enter it, or the cluster would go to /var/lib/mjolnir.
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.path().join("pg");

    let started = mjolnir_pg(&["start", "--database", "things"], &dir);
    let url = stdout(&started);
    assert_eq!(url.lines().count(), 1, "the URL alone: {url:?}");
    let url = url.trim();
    assert!(
        url.starts_with("postgres://postgres@localhost/things?host=%2F"),
        "{url}"
    );
    assert!(
        stderr(&started).contains("PostgreSQL runs in"),
        "{started:?}"
    );
    assert_eq!(current_database(url).await, "things", "left running");

    // Again: it attaches to the running cluster, and another database is one option away.
    let admin = stdout(&mjolnir_pg(&["start"], &dir));
    assert_eq!(admin.trim(), url.replace("/things?", "/postgres?"));
    assert_eq!(current_database(admin.trim()).await, "postgres");

    let stopped = mjolnir_pg(&["stop", "--remove-data"], &dir);
    assert!(
        stderr(&stopped).contains("Stopped the PostgreSQL"),
        "{stopped:?}"
    );
    assert!(PgConnection::connect(url).await.is_err(), "stopped");
    assert!(!dir.join("data").exists(), "its data deleted");
    assert!(dir.join("log").is_file(), "its log kept");
    let again = mjolnir_pg(&["stop"], &dir);
    assert!(stderr(&again).contains("No PostgreSQL runs"), "{again:?}");
}

#[tokio::test]
async fn pg_start_fresh_begins_with_an_empty_cluster() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.path().join("pg");
    let url = stdout(&mjolnir_pg(&["start", "--database", "kept"], &dir));
    let mut conn = PgConnection::connect(url.trim()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE t (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // While it runs: --fresh stops it first.
    let url = stdout(&mjolnir_pg(
        &["start", "--fresh", "--database", "kept"],
        &dir,
    ));
    let mut conn = PgConnection::connect(url.trim()).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 't'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tables, 0);
    conn.close().await.unwrap();
    mjolnir_pg(&["stop"], &dir);
}
