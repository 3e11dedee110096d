use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
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
use super::socket::Socket;

/// How long to wait for a fresh or attached server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for another process that is starting the same cluster.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// Starts that failed for a transient reason (see [`launch`]) are retried this often.
const START_ATTEMPTS: usize = 3;

/// A private PostgreSQL server whose data, socket and log live in one directory:
/// `data/` (PGDATA), `run/` (the unix socket, unless its path would be too long: see
/// [`Socket::for_cluster`]), `log` and `lock`.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    db_name: String,
    socket: Socket,
    binaries: Binaries,
    run_as: RunAs,
    /// Only a cluster this value started is stopped by it; an attached one belongs to someone else.
    owned: bool,
    stopped: bool,
}

impl LocalCluster {
    /// initdb if `dir` has no cluster yet, start it on its private unix socket (and no TCP
    /// port) and create `db_name` if missing. If a server already runs on `dir`, attach to it
    /// without owning it: then [`stop`](Self::stop) and `Drop` leave it running. Either way,
    /// a server that listens on TCP (started by an older mjolnir) is refused.
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

        let (socket, owned) = match running_server(&data)? {
            Some(server) => (server.socket()?, false),
            None => {
                let socket = Socket::for_cluster(&dir);
                prepare_dirs(&dir, &socket, run_as)?;
                initdb_if_needed(&dir, &binaries, run_as).await?;
                launch(&dir, &socket, &binaries, run_as).await?;
                (socket, true)
            }
        };
        // From here on, Drop stops an owned server if readiness or database creation fails.
        let cluster = LocalCluster {
            dir,
            db_name: db_name.to_owned(),
            socket,
            binaries,
            run_as,
            owned,
            stopped: false,
        };
        let mut conn = cluster.connect_when_ready().await?;
        cluster.refuse_tcp(&mut conn).await?;
        cluster.create_database(&mut conn).await?;
        let _ = conn.close().await;
        Ok(cluster)
    }

    /// A socket URL, `postgres://postgres@localhost/DB?host=SOCKET_DIR&port=5432`, which sqlx
    /// and psql both understand.
    pub fn database_url(&self) -> String {
        self.socket.url(&self.db_name)
    }

    pub fn admin_url(&self) -> String {
        self.socket.url("postgres")
    }

    /// The directory holding the server's only socket, `.s.PGSQL.<port>`.
    pub fn socket_dir(&self) -> &Path {
        &self.socket.dir
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
            Err(_) if running_server(&self.dir.join("data"))?.is_none() => Ok(()),
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
    async fn connect_when_ready(&self) -> Result<PgConnection, ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match PgConnection::connect(&self.admin_url()).await {
                Ok(conn) => return Ok(conn),
                Err(source) if Instant::now() >= deadline => {
                    return Err(ClusterError::NotReady {
                        socket: self.socket.path(),
                        secs: READY_TIMEOUT.as_secs(),
                        source,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A server this value started cannot listen on TCP (see [`launch`]); an attached one
    /// may have been started by an older mjolnir, on 127.0.0.1 with trust authentication.
    async fn refuse_tcp(&self, conn: &mut PgConnection) -> Result<(), ClusterError> {
        let listen_addresses: String = sqlx::query_scalar("SHOW listen_addresses")
            .fetch_one(conn)
            .await
            .map_err(|source| ClusterError::Query {
                query: "SHOW listen_addresses",
                source,
            })?;
        if listen_addresses.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::ListensOnTcp {
                data: self.dir.join("data"),
                listen_addresses,
            })
        }
    }

    async fn create_database(&self, conn: &mut PgConnection) -> Result<(), ClusterError> {
        let db = self.db_name.as_str();
        let failed = |source| ClusterError::CreateDatabase {
            db: db.to_owned(),
            source,
        };
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(db)
                .fetch_one(&mut *conn)
                .await
                .map_err(failed)?;
        if !exists {
            let create = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
            if let Err(err) = sqlx::raw_sql(AssertSqlSafe(create)).execute(conn).await {
                // Another client creating it concurrently is as good as creating it.
                let code = err
                    .as_database_error()
                    .and_then(|e| e.code().map(|c| c.into_owned()));
                if !matches!(code.as_deref(), Some("42P04" | "23505")) {
                    return Err(failed(err));
                }
            }
        }
        Ok(())
    }
}

impl Drop for LocalCluster {
    /// Best effort and synchronous: Drop cannot await, and a leaked postmaster would keep the
    /// socket and the data directory busy after the process exits.
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
pub(super) enum RunAs {
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

    /// The OS user the server runs as: the only one allowed into its socket directory.
    pub(super) fn owner(self) -> Uid {
        match self {
            Self::CurrentUser => geteuid(),
            Self::Postgres { uid, .. } => uid,
        }
    }

    /// Gives `path` itself (not what a symlink there points to) to the server's user.
    pub(super) fn hand_over(self, path: &Path) -> Result<(), ClusterError> {
        match self {
            Self::CurrentUser => Ok(()),
            Self::Postgres { uid, gid } => {
                std::os::unix::fs::lchown(path, Some(uid.as_raw()), Some(gid.as_raw())).map_err(
                    ClusterError::io(format!("could not chown {} to postgres", path.display())),
                )
            }
        }
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

/// What `postmaster.pid` says about a live server: PostgreSQL writes the port on line 4,
/// the first socket directory on line 5 (empty without one) and the first TCP address on
/// line 6 (empty without one).
#[derive(Debug)]
struct RunningServer {
    data: PathBuf,
    port: u16,
    socket_dir: Option<PathBuf>,
    listen_address: String,
}

impl RunningServer {
    /// Where to attach; a server with no unix socket can only be listening on TCP.
    fn socket(self) -> Result<Socket, ClusterError> {
        match self.socket_dir {
            Some(dir) => Ok(Socket {
                dir,
                port: self.port,
            }),
            None => Err(ClusterError::ListensOnTcp {
                data: self.data,
                listen_addresses: self.listen_address,
            }),
        }
    }
}

/// The server running on `data`, if any. A `postmaster.pid` left by a crash is stale when its
/// process is gone, or when its pid now belongs to something else (common after a reboot);
/// postgres itself would refuse to start over the latter.
fn running_server(data: &Path) -> Result<Option<RunningServer>, ClusterError> {
    let pid_file = data.join("postmaster.pid");
    let text = match fs::read_to_string(&pid_file) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(ClusterError::io_at("could not read", &pid_file)(err));
        }
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let line = |n: usize| lines.get(n - 1).copied().unwrap_or_default();
    let pid = line(1).parse::<i32>().ok().filter(|&pid| pid > 0);
    let port = line(4).parse::<u16>().ok();
    Ok(match (pid, port) {
        (Some(pid), Some(port)) if is_postmaster_of(pid, data) => Some(RunningServer {
            data: data.to_path_buf(),
            port,
            socket_dir: Some(line(5))
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            listen_address: line(6).to_owned(),
        }),
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

/// Makes the socket directory private, clears lock files a dead server left behind, and (as
/// root) hands the whole cluster directory to `postgres` after checking it can reach it.
fn prepare_dirs(dir: &Path, socket: &Socket, run_as: RunAs) -> Result<(), ClusterError> {
    if let RunAs::Postgres { uid, gid } = run_as {
        check_traversable(dir, uid, gid)?;
    }
    socket.make_private(dir, run_as)?;
    // Only called when no server runs here, so every lock file is stale.
    let stale_pid = dir.join("data/postmaster.pid");
    let stale_sockets = fs::read_dir(&socket.dir)
        .map_err(ClusterError::io_at("could not list", &socket.dir))?
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
    // Trust only on the socket, which only the server's user can reach; host lines would
    // never match anyway (no TCP, see `launch`), but reject says so in pg_hba.conf.
    initdb.arg("-D").arg(&data).args([
        "--auth-local=trust",
        "--auth-host=reject",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--no-locale",
    ]);
    run(initdb.into()).await.map(drop)
}

/// Starts the server on `socket` alone. Options on postgres's command line outrank
/// postgresql.conf and postgresql.auto.conf, so neither a cluster an older mjolnir made (it
/// listened on 127.0.0.1 with trust host lines) nor an `ALTER SYSTEM` can reopen TCP.
async fn launch(
    dir: &Path,
    socket: &Socket,
    binaries: &Binaries,
    run_as: RunAs,
) -> Result<(), ClusterError> {
    let log = dir.join("log");
    let options = format!(
        "-c listen_addresses='' -c port={} -c unix_socket_directories={} \
         -c unix_socket_permissions=0700 -c fsync=on -c max_connections=200",
        socket.port,
        shell_quote(&socket.dir)
    );
    let mut failure = None;
    for _ in 0..START_ATTEMPTS {
        let mut pg_ctl = run_as.command(&binaries.pg_ctl(), dir);
        pg_ctl.arg("-D").arg(dir.join("data")).arg("-l").arg(&log);
        pg_ctl.args(["-w", "-t", "60", "-s", "-o", &options, "start"]);
        match run(pg_ctl.into()).await {
            Ok(_) => return Ok(()),
            Err(ClusterError::CommandFailed {
                command,
                status,
                output,
            }) => {
                let tail = log_tail(&log);
                // Worth another try: children of a killed server still hold its shared
                // memory for a moment.
                let transient = tail.contains("pre-existing shared memory block");
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

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// pg_ctl hands `-o` to `/bin/sh`, so a path with spaces must be quoted for the shell.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
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
    use std::collections::HashSet;
    use std::os::unix::fs::PermissionsExt;
    use std::str::FromStr;

    use sqlx::postgres::PgConnectOptions;

    use super::super::SocketDirProblem;
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

    /// A parent `postgres` can enter when root runs the tests (tempdir makes it 0700).
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
        LocalCluster::start(dir.path(), "app")
            .await
            .unwrap()
            .stop()
            .await
            .unwrap();
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
            owned: true,
            stopped: false,
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

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
