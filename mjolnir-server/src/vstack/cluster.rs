use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::kill;
use nix::unistd::{Gid, Pid, Uid, User, geteuid};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::ClusterError;
use super::binaries::Binaries;

/// How long to wait for a fresh or attached server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for another process that is starting the same cluster.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Starts that failed for a transient reason (see [`launch`]) are retried this often.
const START_ATTEMPTS: usize = 3;

/// A private PostgreSQL server whose data, socket and log live in one directory:
/// `data/` (PGDATA), `run/` (unix socket), `log`, `port` (the last port used) and `lock`.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    db_name: String,
    port: u16,
    binaries: Binaries,
    run_as: RunAs,
    /// Only a cluster this value started is stopped by it; an attached one belongs to someone else.
    owned: bool,
    stopped: bool,
}

impl LocalCluster {
    /// initdb if `dir` has no cluster yet, start it on 127.0.0.1 (reusing the last port when
    /// still free) and create `db_name` if missing. If a server already runs on `dir`, attach to
    /// it without owning it: then [`stop`](Self::stop) and `Drop` leave it running.
    pub async fn start(dir: &Path, db_name: &str) -> Result<LocalCluster, ClusterError> {
        let binaries = Binaries::locate().await?;
        let run_as = RunAs::detect()?;
        fs::create_dir_all(dir).map_err(ClusterError::io_at("could not create", dir))?;
        let dir = dir
            .canonicalize()
            .map_err(ClusterError::io_at("could not resolve", dir))?;
        // Held until the server is up, so two processes never initdb or start one directory at once.
        let _lock = lock(&dir).await?;
        let data = dir.join("data");

        let (port, owned) = match running_port(&data)? {
            Some(port) => (port, false),
            None => {
                prepare_dirs(&dir, run_as)?;
                initdb_if_needed(&dir, &binaries, run_as).await?;
                (launch(&dir, &binaries, run_as).await?, true)
            }
        };
        // From here on, Drop stops an owned server if readiness or database creation fails.
        let cluster = LocalCluster {
            dir,
            db_name: db_name.to_owned(),
            port,
            binaries,
            run_as,
            owned,
            stopped: false,
        };
        cluster.wait_until_ready().await?;
        cluster.create_database().await?;
        Ok(cluster)
    }

    pub fn database_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port,
            percent_encode(&self.db_name)
        )
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server with `pg_ctl stop -m fast` if this value started it.
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        if !self.owned {
            return Ok(());
        }
        self.stopped = true;
        let result = run(self.stop_command().into()).await;
        // Someone else stopping it first is not a failure.
        match result {
            Err(_) if running_port(&self.dir.join("data"))?.is_none() => Ok(()),
            other => other.map(drop),
        }
    }

    fn stop_command(&self) -> std::process::Command {
        let mut cmd = self.run_as.command(&self.binaries.pg_ctl(), &self.dir);
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "-s", "stop"]);
        cmd
    }

    /// Retries because `pg_ctl -w` returns once the postmaster is up, and an attached server
    /// may still be starting or recovering.
    async fn wait_until_ready(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match PgConnection::connect(&self.admin_url()).await {
                Ok(conn) => {
                    let _ = conn.close().await;
                    return Ok(());
                }
                Err(source) if Instant::now() >= deadline => {
                    return Err(ClusterError::NotReady {
                        port: self.port,
                        secs: READY_TIMEOUT.as_secs(),
                        source,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn create_database(&self) -> Result<(), ClusterError> {
        let db = self.db_name.as_str();
        let failed = |source| ClusterError::CreateDatabase {
            db: db.to_owned(),
            source,
        };
        let mut conn = PgConnection::connect(&self.admin_url())
            .await
            .map_err(failed)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(db)
                .fetch_one(&mut conn)
                .await
                .map_err(failed)?;
        if !exists {
            let create = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
            if let Err(err) = sqlx::raw_sql(AssertSqlSafe(create))
                .execute(&mut conn)
                .await
            {
                // Another client creating it concurrently is as good as creating it.
                let code = err
                    .as_database_error()
                    .and_then(|e| e.code().map(|c| c.into_owned()));
                if !matches!(code.as_deref(), Some("42P04" | "23505")) {
                    return Err(failed(err));
                }
            }
        }
        let _ = conn.close().await;
        Ok(())
    }
}

impl Drop for LocalCluster {
    /// Best effort and synchronous: Drop cannot await, and a leaked postmaster would keep the
    /// port and the data directory busy after the process exits.
    fn drop(&mut self) {
        if self.owned && !self.stopped {
            let _ = self
                .stop_command()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Who runs initdb and pg_ctl: PostgreSQL refuses to run as root, so root delegates to `postgres`.
#[derive(Debug, Clone, Copy)]
enum RunAs {
    CurrentUser,
    Postgres { uid: Uid, gid: Gid },
}

impl RunAs {
    fn detect() -> Result<Self, ClusterError> {
        if !geteuid().is_root() {
            return Ok(Self::CurrentUser);
        }
        let user = User::from_name("postgres")
            .map_err(|errno| {
                ClusterError::io("could not look up the `postgres` user")(errno.into())
            })?
            .ok_or(ClusterError::NoPostgresUser)?;
        Ok(Self::Postgres {
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// Runs from `dir` because the caller's working directory may be closed to `postgres`,
    /// and in a process group of its own: Ctrl-C in a terminal signals the whole foreground
    /// group, and initdb, the server and its stop must each finish or stop when `mjolnir
    /// dev` says so, not on their own. A second Ctrl-C while `mjolnir dev` stops the server
    /// would otherwise interrupt `pg_ctl stop`, which then gives up waiting (or, early
    /// enough, asking) and leaves the server running.
    fn command(self, program: &Path, dir: &Path) -> std::process::Command {
        let mut cmd = match self {
            Self::CurrentUser => std::process::Command::new(program),
            Self::Postgres { .. } => {
                let mut cmd = std::process::Command::new("runuser");
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
        };
        cmd.current_dir(dir);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }
}

async fn lock(dir: &Path) -> Result<Flock<File>, ClusterError> {
    let path = dir.join("lock");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(ClusterError::io_at("could not open", &path))?;
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, Errno::EWOULDBLOCK)) if Instant::now() >= deadline => {
                return Err(ClusterError::Locked {
                    path,
                    secs: LOCK_TIMEOUT.as_secs(),
                });
            }
            Err((unlocked, Errno::EWOULDBLOCK)) => {
                file = unlocked;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err((_, errno)) => {
                return Err(ClusterError::io_at("could not lock", &path)(errno.into()));
            }
        }
    }
}

/// The port of the server running on `data`, if any. A `postmaster.pid` left by a crash is
/// stale when its process is gone, or when its pid now belongs to something else (common after
/// a reboot); postgres itself would refuse to start over the latter.
fn running_port(data: &Path) -> Result<Option<u16>, ClusterError> {
    let pid_file = data.join("postmaster.pid");
    let text = match fs::read_to_string(&pid_file) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(ClusterError::io_at("could not read", &pid_file)(err));
        }
    };
    let mut lines = text.lines().map(str::trim);
    let pid = lines
        .next()
        .and_then(|line| line.parse::<i32>().ok())
        .filter(|&pid| pid > 0);
    let port = lines.nth(2).and_then(|line| line.parse::<u16>().ok());
    Ok(match (pid, port) {
        (Some(pid), Some(port)) if is_postmaster_of(pid, data) => Some(port),
        _ => None,
    })
}

/// The postmaster's working directory is its data directory; when that is unreadable (another
/// user's process), a live process whose command line names postgres is trusted.
fn is_postmaster_of(pid: i32, data: &Path) -> bool {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => {}
        Err(_) => return false,
    }
    if let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) {
        return data.canonicalize().is_ok_and(|data| data == cwd);
    }
    fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |cmdline| {
        String::from_utf8_lossy(&cmdline).contains("postgres")
    })
}

/// Creates `run/`, clears lock files a dead server left behind, and (as root) hands the whole
/// directory to `postgres` after checking it can reach it.
fn prepare_dirs(dir: &Path, run_as: RunAs) -> Result<(), ClusterError> {
    let run = dir.join("run");
    let socket = run.join(".s.PGSQL.65535");
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(ClusterError::SocketPathTooLong { path: socket });
    }
    fs::create_dir_all(&run).map_err(ClusterError::io_at("could not create", &run))?;
    // Only called when no server runs here, so every lock file is stale.
    let stale_pid = dir.join("data/postmaster.pid");
    let stale_sockets = fs::read_dir(&run)
        .map_err(ClusterError::io_at("could not list", &run))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".s.PGSQL.") && n.ends_with(".lock"))
        });
    for stale in stale_sockets.chain([stale_pid]) {
        match fs::remove_file(&stale) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                return Err(ClusterError::io_at("could not remove stale", &stale)(err));
            }
            _ => {}
        }
    }
    if let RunAs::Postgres { uid, gid } = run_as {
        check_traversable(dir, uid, gid)?;
        chown_tree(dir, uid, gid)?;
    }
    Ok(())
}

/// Group membership beyond the primary group is ignored: a false alarm here is cheap to fix,
/// while postgres failing deep inside pg_ctl is not.
fn check_traversable(dir: &Path, uid: Uid, gid: Gid) -> Result<(), ClusterError> {
    for parent in dir.ancestors().skip(1) {
        let meta =
            fs::metadata(parent).map_err(ClusterError::io_at("could not inspect", parent))?;
        let mode = meta.mode();
        let traversable = (meta.uid() == uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == gid.as_raw() && mode & 0o010 != 0)
            || mode & 0o001 != 0;
        if !traversable {
            return Err(ClusterError::ParentNotTraversable {
                path: parent.to_path_buf(),
            });
        }
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: Uid, gid: Gid) -> Result<(), ClusterError> {
    let meta =
        fs::symlink_metadata(path).map_err(ClusterError::io_at("could not inspect", path))?;
    if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
        std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw())).map_err(
            ClusterError::io(format!("could not chown {} to postgres", path.display())),
        )?;
    }
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(ClusterError::io_at("could not list", path))? {
            let entry = entry.map_err(ClusterError::io_at("could not list", path))?;
            chown_tree(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A `data/` without `PG_VERSION` is what an interrupted initdb leaves; initdb refuses to
/// reuse a non-empty directory, so it is removed and created afresh.
async fn initdb_if_needed(
    dir: &Path,
    binaries: &Binaries,
    run_as: RunAs,
) -> Result<(), ClusterError> {
    let data = dir.join("data");
    if data.join("PG_VERSION").is_file() {
        return Ok(());
    }
    if data.exists() {
        fs::remove_dir_all(&data).map_err(ClusterError::io_at(
            "could not remove half-initialised",
            &data,
        ))?;
    }
    let mut initdb = run_as.command(&binaries.initdb(), dir);
    initdb.arg("-D").arg(&data).args([
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--no-locale",
    ]);
    run(initdb.into()).await.map(drop)
}

/// Starts the server, preferring the port recorded by the last start so URLs stay stable.
async fn launch(dir: &Path, binaries: &Binaries, run_as: RunAs) -> Result<u16, ClusterError> {
    let port_file = dir.join("port");
    let recorded = fs::read_to_string(&port_file)
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok());
    let log = dir.join("log");
    let mut failure = None;
    for attempt in 0..START_ATTEMPTS {
        let port = match recorded.filter(|&port| attempt == 0 && port_is_free(port)) {
            Some(port) => port,
            None => free_port()?,
        };
        let run_dir = shell_quote(&dir.join("run"));
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={run_dir} \
             -c fsync=on -c max_connections=200"
        );
        let mut pg_ctl = run_as.command(&binaries.pg_ctl(), dir);
        pg_ctl.arg("-D").arg(dir.join("data")).arg("-l").arg(&log);
        pg_ctl.args(["-w", "-t", "60", "-s", "-o", &options, "start"]);
        match run(pg_ctl.into()).await {
            Ok(_) => {
                fs::write(&port_file, format!("{port}\n"))
                    .map_err(ClusterError::io_at("could not write", &port_file))?;
                return Ok(port);
            }
            Err(ClusterError::CommandFailed {
                command,
                status,
                output,
            }) => {
                let tail = log_tail(&log);
                // Worth another try: someone took the port, or children of a killed server
                // still hold its shared memory for a moment.
                let transient = tail.contains("Address already in use")
                    || tail.contains("pre-existing shared memory block");
                let output = format!("{output}\nlast lines of {}:\n{tail}", log.display());
                failure = Some(ClusterError::CommandFailed {
                    command,
                    status,
                    output,
                });
                if !transient {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(other) => return Err(other),
        }
    }
    Err(failure.expect("at least one start attempt"))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The kernel picks a port nobody listens on; postgres binds it a moment later.
fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(ClusterError::io("could not find a free port on 127.0.0.1"))
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// pg_ctl hands `-o` to `/bin/sh`, so a path with spaces must be quoted for the shell.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

async fn run(mut cmd: tokio::process::Command) -> Result<String, ClusterError> {
    let command = format!("{:?}", cmd.as_std());
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(ClusterError::io(format!("could not run {command}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let output_text = format!("{}{stdout}", stderr).trim().to_owned();
        Err(ClusterError::CommandFailed {
            command,
            status: output.status,
            output: output_text,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn select_one(url: &str) -> i32 {
        let mut conn = PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn data_persists_across_stop_and_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCluster::start(dir.path(), "app").await.unwrap();
        assert_eq!(
            first.database_url(),
            format!("postgres://postgres@127.0.0.1:{}/app", first.port())
        );
        assert_eq!(select_one(&first.database_url()).await, 1);
        let mut conn = PgConnection::connect(&first.database_url()).await.unwrap();
        sqlx::raw_sql("CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let port = first.port();
        first.stop().await.unwrap();
        assert_eq!(running_port(&dir.path().join("data")).unwrap(), None);

        let second = LocalCluster::start(dir.path(), "app").await.unwrap();
        assert_eq!(
            second.port(),
            port,
            "the recorded port is reused while free"
        );
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
    async fn a_taken_recorded_port_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCluster::start(dir.path(), "app").await.unwrap();
        let port = first.port();
        first.stop().await.unwrap();
        let _squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        let second = LocalCluster::start(dir.path(), "app").await.unwrap();
        assert_ne!(second.port(), port);
        assert_eq!(select_one(&second.database_url()).await, 1);
        second.stop().await.unwrap();
    }

    #[tokio::test]
    async fn attaching_to_a_running_cluster_leaves_it_running() {
        let dir = tempfile::tempdir().unwrap();
        let owner = LocalCluster::start(dir.path(), "app").await.unwrap();
        let guest = LocalCluster::start(dir.path(), "other").await.unwrap();
        assert_eq!(guest.port(), owner.port());
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
        assert!(running_port(&dir.path().join("data")).unwrap().is_some());
        drop(cluster);
        assert_eq!(running_port(&dir.path().join("data")).unwrap(), None);
    }

    #[tokio::test]
    async fn a_stale_postmaster_pid_does_not_prevent_start() {
        let dir = tempfile::tempdir().unwrap();
        LocalCluster::start(dir.path(), "app")
            .await
            .unwrap()
            .stop()
            .await
            .unwrap();
        let pid_file = dir.path().join("data/postmaster.pid");
        let data = dir.path().join("data");
        // A dead pid, then a live pid that is not a postmaster (a reboot reusing the number).
        for pid in [i32::MAX, std::process::id() as i32] {
            let fake = format!(
                "{pid}\n{}\n1700000000\n5432\n{}\nlocalhost\n  1 2\nready\n",
                data.display(),
                dir.path().join("run").display()
            );
            fs::write(&pid_file, fake).unwrap();
            assert_eq!(running_port(&data).unwrap(), None);
            let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
            assert_eq!(select_one(&cluster.database_url()).await, 1);
            cluster.stop().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_killed_server_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = LocalCluster::start(dir.path(), "app").await.unwrap();
        let pid_file = fs::read_to_string(dir.path().join("data/postmaster.pid")).unwrap();
        let pid: i32 = pid_file.lines().next().unwrap().parse().unwrap();
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
        fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
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

    #[test]
    fn urls_encode_the_database_name() {
        assert_eq!(percent_encode("my app/ü"), "my%20app%2F%C3%BC");
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
