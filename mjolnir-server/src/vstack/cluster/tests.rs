use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::str::FromStr;

use nix::sys::signal::kill;
use nix::unistd::{Pid, User, geteuid};
use sqlx::postgres::PgConnectOptions;

use super::super::SocketDirProblem;
use super::super::pg_ctl::shell_quote;
use super::super::socket::{PORT, fallback_dir};
use super::*;

async fn select_one(url: &str) -> i32 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn show(url: &str, setting: &str) -> String {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let value = sqlx::query_scalar(AssertSqlSafe(format!("SHOW {setting}")))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    value
}

fn postmaster_pid(dir: &Path) -> i32 {
    let text = fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
    text.lines().next().unwrap().parse().unwrap()
}

/// The inodes of the listening TCP sockets (IPv4 or IPv6) that process `pid` holds open.
fn tcp_listeners_of(pid: i32) -> Vec<u64> {
    let held: HashSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|entry| {
            let target = fs::read_link(entry.ok()?.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            inode.parse().ok()
        })
        .collect();
    let listening = |table: &str| -> Vec<u64> {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // Field 4 is the state (0A: LISTEN), field 10 the inode.
                (fields.get(3) == Some(&"0A")).then(|| fields.get(9)?.parse().ok())?
            })
            .collect()
    };
    let mut found = listening("tcp");
    found.extend(listening("tcp6"));
    found.retain(|inode| held.contains(inode));
    found
}

/// A cluster initialised in `dir`, its server stopped.
async fn initialise(dir: &Path) {
    LocalCluster::start(dir, "app")
        .await
        .unwrap()
        .stop()
        .await
        .unwrap();
}

/// A parent `postgres` can enter when root runs the tests, whatever the umask.
fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A cluster directory whose `run/.s.PGSQL.5432` would not fit in `sun_path`.
fn deep_cluster_dir(outer: &Path) -> PathBuf {
    let dir = outer.join("d".repeat(100)).join("pg");
    fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// Psql as `user` (via runuser, so only as root) on the socket in `dir`.
fn psql_as(user: &str, binaries: &Binaries, socket_dir: &Path) -> std::process::Output {
    std::process::Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(binaries.psql())
        .arg("-h")
        .arg(socket_dir)
        .args([
            "-U", "postgres", "-d", "postgres", "-X", "-At", "-c", "SELECT 1",
        ])
        .current_dir("/")
        .output()
        .unwrap()
}

#[tokio::test]
async fn data_persists_across_stop_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalCluster::start(dir.path(), "app").await.unwrap();
    let url = first.database_url();
    assert!(
        url.starts_with("postgres://postgres@localhost/app?host=%2F")
            && url.ends_with("&port=5432"),
        "{url}"
    );
    let options = PgConnectOptions::from_str(&url).unwrap();
    assert_eq!(
        options.get_socket().map(PathBuf::as_path),
        Some(first.socket_dir())
    );
    assert_eq!(
        first.socket_dir(),
        dir.path().canonicalize().unwrap().join("run")
    );
    assert_eq!(select_one(&first.database_url()).await, 1);
    let mut conn = PgConnection::connect(&first.database_url()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    first.stop().await.unwrap();
    assert!(running_server(&dir.path().join("data")).unwrap().is_none());

    let second = LocalCluster::start(dir.path(), "app").await.unwrap();
    assert_eq!(second.database_url(), url, "the URL stays the same");
    let mut conn = PgConnection::connect(&second.database_url()).await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT id FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 42);
    conn.close().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test]
async fn the_server_listens_on_no_tcp_port() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
    assert_eq!(show(&cluster.admin_url(), "listen_addresses").await, "");
    let pid = postmaster_pid(dir.path());
    assert_eq!(tcp_listeners_of(pid), Vec::<u64>::new());
    let pg_hba = fs::read_to_string(dir.path().join("data/pg_hba.conf")).unwrap();
    let host_lines: Vec<&str> = pg_hba
        .lines()
        .filter(|line| line.starts_with("host"))
        .collect();
    assert!(!host_lines.is_empty());
    assert!(
        host_lines
            .iter()
            .all(|line| line.trim_end().ends_with("reject")),
        "{host_lines:?}"
    );
    cluster.stop().await.unwrap();
}

/// The socket directory is the only gate: trust authentication lets in whoever gets
/// through it.
#[tokio::test]
async fn only_the_servers_user_can_reach_the_socket() {
    let dir = open_tempdir();
    let cluster = LocalCluster::start(&dir.path().join("pg"), "app")
        .await
        .unwrap();
    let owner = RunAs::detect().unwrap().owner();
    let meta = fs::symlink_metadata(cluster.socket_dir()).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), owner.as_raw());
    let socket = fs::symlink_metadata(cluster.socket.path()).unwrap();
    assert_eq!(socket.mode() & 0o777, 0o700, "unix_socket_permissions");
    assert_eq!(
        show(&cluster.admin_url(), "unix_socket_permissions").await,
        "0700"
    );

    // libpq reads the URL too, as the developer's psql would.
    let own = std::process::Command::new(cluster.binaries.psql())
        .arg(cluster.admin_url())
        .args(["-X", "-At", "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&own.stdout).trim(), "1", "{own:?}");

    if geteuid().is_root() {
        let postgres = psql_as("postgres", &cluster.binaries, cluster.socket_dir());
        assert_eq!(
            String::from_utf8_lossy(&postgres.stdout).trim(),
            "1",
            "{postgres:?}"
        );
        let nobody = psql_as("nobody", &cluster.binaries, cluster.socket_dir());
        let stderr = String::from_utf8_lossy(&nobody.stderr);
        assert!(!nobody.status.success(), "nobody got in: {nobody:?}");
        assert!(stderr.contains("Permission denied"), "{stderr}");
    }
    cluster.stop().await.unwrap();
}

#[tokio::test]
async fn a_deep_cluster_dir_puts_its_socket_under_tmp() {
    let outer = open_tempdir();
    let dir = deep_cluster_dir(outer.path());
    let fallback = fallback_dir(&dir);
    let cluster = LocalCluster::start(&dir, "app").await.unwrap();
    assert_eq!(cluster.socket_dir(), fallback);
    let meta = fs::symlink_metadata(&fallback).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), RunAs::detect().unwrap().owner().as_raw());
    assert_eq!(select_one(&cluster.database_url()).await, 1);
    // Attaching finds the socket where postmaster.pid says it is.
    let guest = LocalCluster::start(&dir, "other").await.unwrap();
    assert_eq!(guest.socket_dir(), fallback);
    assert_eq!(select_one(&guest.database_url()).await, 1);
    drop(guest);
    cluster.stop().await.unwrap();
    // And starting again reuses the directory it made.
    let again = LocalCluster::start(&dir, "app").await.unwrap();
    assert_eq!(select_one(&again.database_url()).await, 1);
    again.stop().await.unwrap();
    fs::remove_dir(&fallback).unwrap();
}

/// In /tmp another user may make the directory first; postgres would then put its
/// socket where they can reach it.
#[tokio::test]
async fn a_fallback_dir_made_by_someone_else_is_refused() {
    let outer = open_tempdir();
    let dir = deep_cluster_dir(outer.path());
    let fallback = fallback_dir(&dir);
    let run_as = RunAs::detect().unwrap();
    let refused = |err: ClusterError| match err {
        ClusterError::UnsafeSocketDir { path, problem } => {
            assert_eq!(path, fallback);
            problem
        }
        other => panic!("unexpected: {other}"),
    };

    let elsewhere = tempfile::tempdir().unwrap();
    run_as.hand_over(elsewhere.path()).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &fallback).unwrap();
    let err = LocalCluster::start(&dir, "app").await.unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(matches!(refused(err), SocketDirProblem::Symlink));
    fs::remove_file(&fallback).unwrap();

    fs::create_dir(&fallback).unwrap();
    fs::set_permissions(&fallback, fs::Permissions::from_mode(0o755)).unwrap();
    run_as.hand_over(&fallback).unwrap();
    let err = LocalCluster::start(&dir, "app").await.unwrap_err();
    assert!(matches!(
        refused(err),
        SocketDirProblem::WrongMode { found: 0o755 }
    ));

    if geteuid().is_root() {
        fs::set_permissions(&fallback, fs::Permissions::from_mode(0o700)).unwrap();
        let nobody = User::from_name("nobody").unwrap().unwrap();
        std::os::unix::fs::chown(&fallback, Some(nobody.uid.as_raw()), None).unwrap();
        let err = LocalCluster::start(&dir, "app").await.unwrap_err();
        assert!(matches!(
            refused(err),
            SocketDirProblem::WrongOwner { found, .. } if found == nobody.uid.as_raw()
        ));
    }
    assert!(!dir.join("data/postmaster.pid").exists(), "nothing started");
    fs::remove_dir(&fallback).unwrap();
}

/// An older mjolnir initialised clusters with trust on host lines and started them on
/// 127.0.0.1 with a world-enterable `run/`.
#[tokio::test]
async fn an_older_clusters_tcp_settings_do_not_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path()).await;
    let data = dir.path().join("data");
    let append = |file: &str, text: &str| {
        let mut content = fs::read_to_string(data.join(file)).unwrap();
        content.push_str(text);
        fs::write(data.join(file), content).unwrap();
    };
    append("pg_hba.conf", "host all all 127.0.0.1/32 trust\n");
    append("postgresql.conf", "listen_addresses = '127.0.0.1'\n");
    append("postgresql.auto.conf", "listen_addresses = '*'\n");
    let run = dir.path().join("run");
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();

    let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
    assert_eq!(show(&cluster.admin_url(), "listen_addresses").await, "");
    assert_eq!(
        tcp_listeners_of(postmaster_pid(dir.path())),
        Vec::<u64>::new()
    );
    assert_eq!(fs::metadata(&run).unwrap().mode() & 0o777, 0o700);
    cluster.stop().await.unwrap();
}

/// Attaching to a server an older mjolnir left running on 127.0.0.1 would keep it open
/// to every local user for as long as it runs.
#[tokio::test]
async fn a_running_server_that_listens_on_tcp_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = LocalCluster::start(dir.path(), "app").await.unwrap();
    let dir_path = fresh.dir.clone();
    let (binaries, run_as) = (fresh.binaries.clone(), fresh.run_as);
    fresh.stop().await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socket = Socket {
        dir: dir_path.join("run"),
        port,
    };
    let options = format!(
        "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={}",
        shell_quote(&socket.dir)
    );
    let mut pg_ctl = run_as.command(&binaries.pg_ctl(), &dir_path);
    pg_ctl
        .arg("-D")
        .arg(dir_path.join("data"))
        .arg("-l")
        .arg(dir_path.join("log"));
    pg_ctl.args(["-w", "-s", "-o", &options, "start"]);
    run(pg_ctl.into()).await.unwrap();
    // Stops the old server however the test ends.
    let _old = LocalCluster {
        dir: dir_path.clone(),
        db_name: "postgres".to_owned(),
        socket,
        binaries,
        run_as,
        claim: Claim::Starter,
    };
    assert_eq!(
        tcp_listeners_of(postmaster_pid(&dir_path)).len(),
        1,
        "the check sees TCP"
    );

    match LocalCluster::start(&dir_path, "app").await.unwrap_err() {
        ClusterError::ListensOnTcp {
            data,
            listen_addresses,
        } => {
            assert_eq!(data, dir_path.join("data"));
            assert_eq!(listen_addresses, "127.0.0.1");
        }
        other => panic!("unexpected: {other}"),
    }
    assert!(
        running_server(&dir_path.join("data")).unwrap().is_some(),
        "left running"
    );
}

#[tokio::test]
async fn attaching_to_a_running_cluster_leaves_it_running() {
    let dir = tempfile::tempdir().unwrap();
    let owner = LocalCluster::start(dir.path(), "app").await.unwrap();
    let guest = LocalCluster::start(dir.path(), "other").await.unwrap();
    assert_eq!(guest.socket, owner.socket);
    assert_eq!(select_one(&guest.database_url()).await, 1);
    guest.stop().await.unwrap();
    assert_eq!(select_one(&owner.database_url()).await, 1);
    drop(LocalCluster::start(dir.path(), "app").await.unwrap());
    assert_eq!(select_one(&owner.admin_url()).await, 1);
    owner.stop().await.unwrap();
}

#[tokio::test]
async fn drop_stops_an_owned_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
    assert!(running_server(&dir.path().join("data")).unwrap().is_some());
    drop(cluster);
    assert!(running_server(&dir.path().join("data")).unwrap().is_none());
}

#[tokio::test]
async fn a_stale_postmaster_pid_does_not_prevent_start() {
    let dir = tempfile::tempdir().unwrap();
    initialise(dir.path()).await;
    let pid_file = dir.path().join("data/postmaster.pid");
    let data = dir.path().join("data");
    // A dead pid, then a live pid that is not a postmaster (a reboot reusing the number).
    for pid in [i32::MAX, std::process::id() as i32] {
        let fake = format!(
            "{pid}\n{}\n1700000000\n{PORT}\n{}\n\n  1 2\nready\n",
            data.display(),
            dir.path().join("run").display()
        );
        fs::write(&pid_file, fake).unwrap();
        assert!(running_server(&data).unwrap().is_none());
        let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
        assert_eq!(select_one(&cluster.database_url()).await, 1);
        cluster.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_killed_server_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
    let pid = postmaster_pid(dir.path());
    kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(cluster);
    let again = LocalCluster::start(dir.path(), "app").await.unwrap();
    assert_eq!(select_one(&again.database_url()).await, 1);
    again.stop().await.unwrap();
}

#[tokio::test]
async fn root_refuses_a_parent_postgres_cannot_enter() {
    if !geteuid().is_root() {
        return;
    }
    let outer = tempfile::tempdir().unwrap();
    let closed = outer.path().join("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
    let err = LocalCluster::start(&closed.join("pg"), "app")
        .await
        .unwrap_err();
    match err {
        ClusterError::ParentNotTraversable { ref path } => {
            assert_eq!(path, &closed.canonicalize().unwrap())
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("chmod o+x"), "{err}");
}

#[tokio::test]
async fn a_holder_adopts_a_running_server_and_refuses_a_second_holder() {
    let dir = tempfile::tempdir().unwrap();
    let canonical = dir.path().canonicalize().unwrap();
    let starter = LocalCluster::start(dir.path(), "app").await.unwrap();
    assert!(starter.stops_server());
    starter.leave_running();
    let data = dir.path().join("data");
    assert!(running_server(&data).unwrap().is_some(), "left running");

    let holder = LocalCluster::hold(dir.path(), "app").await.unwrap();
    assert!(holder.stops_server(), "a holder stops what it adopted");
    match LocalCluster::hold(dir.path(), "app").await.unwrap_err() {
        ClusterError::Held { dir, pid } => {
            assert_eq!(dir, canonical);
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!("unexpected: {other}"),
    }
    let err = LocalCluster::stop_in(dir.path()).await.unwrap_err();
    assert!(matches!(err, ClusterError::Held { .. }), "{err}");
    assert!(err.to_string().contains("another `mjolnir dev`"), "{err}");
    assert!(matches!(
        LocalCluster::remove_data(dir.path(), Log::Remove).await,
        Err(ClusterError::Held { .. })
    ));
    // A guest may still attach, and leaves the server to the holder.
    let guest = LocalCluster::start(dir.path(), "other").await.unwrap();
    assert!(!guest.stops_server());
    guest.stop().await.unwrap();
    assert_eq!(select_one(&holder.database_url()).await, 1);

    holder.stop().await.unwrap();
    assert!(running_server(&data).unwrap().is_none());
    // The lock went with it.
    let again = LocalCluster::hold(dir.path(), "app").await.unwrap();
    drop(again);
    assert!(running_server(&data).unwrap().is_none(), "drop stops it");
}

#[tokio::test]
async fn stop_in_stops_a_server_left_running_and_remove_data_empties_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
    let mut conn = PgConnection::connect(&cluster.database_url())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE kept (id int)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    cluster.leave_running();
    assert!(LocalCluster::stop_in(dir.path()).await.unwrap());
    assert!(running_server(&data).unwrap().is_none());
    assert!(
        !LocalCluster::stop_in(dir.path()).await.unwrap(),
        "nothing left"
    );
    let missing = dir.path().join("missing");
    assert!(!LocalCluster::stop_in(&missing).await.unwrap());
    assert!(!missing.exists(), "stopping creates nothing");

    LocalCluster::start(dir.path(), "app")
        .await
        .unwrap()
        .leave_running();
    LocalCluster::remove_data(dir.path(), Log::Keep)
        .await
        .unwrap();
    assert!(!data.exists());
    assert!(dir.path().join("log").is_file(), "the log stays");
    let fresh = LocalCluster::start(dir.path(), "app").await.unwrap();
    let mut conn = PgConnection::connect(&fresh.database_url()).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'kept'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tables, 0);
    conn.close().await.unwrap();
    fresh.stop().await.unwrap();
}
