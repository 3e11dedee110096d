use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::ClusterError;
use super::binaries::Binaries;
use super::locks::{self, Holder};
use super::pg_ctl::{initdb_if_needed, launch, run, stop_command};
use super::place::prepare_dirs;
use super::postmaster::running_server;
use super::run_as::RunAs;
use super::socket::Socket;

/// How long to wait for a fresh or attached server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A private PostgreSQL server whose data, socket and log live in one directory:
/// `data/` (PGDATA), `run/` (the unix socket, unless its path would be too long: see
/// [`Socket::for_cluster`]), `log`, and the locks `lock` and `holder` (see `locks.rs`).
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    db_name: String,
    socket: Socket,
    binaries: Binaries,
    run_as: RunAs,
    claim: Claim,
}

/// What [`LocalCluster::remove_data`] does with the server's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    /// Keep it, to read what happened after the data is gone.
    Keep,
    Remove,
}

/// What a [`LocalCluster`] does with the server once it is done with it.
#[derive(Debug)]
enum Claim {
    /// It attached to a server someone else started, and leaves it running.
    Guest,
    /// It started the server, and stops it.
    Starter,
    /// It holds the cluster (`mjolnir dev`): it stops the server, whoever started it, and
    /// releases the holder lock (dropped with this variant) only once the server is down.
    Holder { _lock: Holder },
}

impl Claim {
    fn stops_server(&self) -> bool {
        !matches!(self, Claim::Guest)
    }
}

impl LocalCluster {
    /// initdb if `dir` has no cluster yet, start it on its private unix socket (and no TCP
    /// port) and create `db_name` if missing. If a server already runs on `dir`, attach to it
    /// without owning it: then [`stop`](Self::stop) and `Drop` leave it running. Either way,
    /// a server that listens on TCP (started by an older mjolnir) is refused.
    pub async fn start(dir: &Path, db_name: &str) -> Result<LocalCluster, ClusterError> {
        Self::open(&make_dir(dir)?, db_name, None).await
    }

    /// Like [`start`](Self::start), for the one process that stops the server when it exits
    /// (`mjolnir dev`). It holds the cluster's holder lock for as long as it lives, adopts a
    /// server that is already running (one a killed holder left behind, or a `mjolnir pg
    /// start`), and stops it on [`stop`](Self::stop) or drop. While another live process
    /// holds the cluster it fails at once with [`ClusterError::Held`], touching nothing.
    pub async fn hold(dir: &Path, db_name: &str) -> Result<LocalCluster, ClusterError> {
        let dir = make_dir(dir)?;
        let holder = Holder::take(&dir)?;
        Self::open(&dir, db_name, Some(holder)).await
    }

    async fn open(
        dir: &Path,
        db_name: &str,
        holder: Option<Holder>,
    ) -> Result<LocalCluster, ClusterError> {
        let binaries = Binaries::locate().await?;
        let run_as = RunAs::detect()?;
        // Held until the server is up, so two processes never initdb or start one directory at once.
        let _starting = locks::starting(dir).await?;
        let (socket, started) = match running_server(&dir.join("data"))? {
            Some(server) => (server.socket()?, false),
            None => {
                let socket = Socket::for_cluster(dir);
                prepare_dirs(dir, &socket, run_as)?;
                initdb_if_needed(dir, &binaries, run_as).await?;
                launch(dir, &socket, &binaries, run_as).await?;
                (socket, true)
            }
        };
        let claim = match (holder, started) {
            (Some(holder), _) => Claim::Holder { _lock: holder },
            (None, true) => Claim::Starter,
            (None, false) => Claim::Guest,
        };
        // From here on, Drop stops the server if readiness or database creation fails and
        // this value was to stop it anyway.
        let cluster = LocalCluster {
            dir: dir.to_path_buf(),
            db_name: db_name.to_owned(),
            socket,
            binaries,
            run_as,
            claim,
        };
        let mut conn = cluster.connect_when_ready().await?;
        cluster.refuse_tcp(&mut conn).await?;
        cluster.create_database(&mut conn).await?;
        let _ = conn.close().await;
        Ok(cluster)
    }

    /// Stops the server running on `dir`, if any, unless a live process holds the cluster
    /// ([`ClusterError::Held`]); true if there was one to stop.
    pub async fn stop_in(dir: &Path) -> Result<bool, ClusterError> {
        let Ok(dir) = dir.canonicalize() else {
            return Ok(false); // no cluster directory, so no server
        };
        let _holder = Holder::take(&dir)?;
        if running_server(&dir.join("data"))?.is_none() {
            return Ok(false);
        }
        stop_server(&Binaries::locate().await?, RunAs::detect()?, &dir).await?;
        Ok(true)
    }

    /// Stops the server of `dir` as [`stop_in`](Self::stop_in) does, then deletes its data
    /// (and its log, if `log` says so), so that the next start initialises an empty cluster.
    pub async fn remove_data(dir: &Path, log: Log) -> Result<(), ClusterError> {
        Self::stop_in(dir).await?;
        let Ok(dir) = dir.canonicalize() else {
            return Ok(());
        };
        // Held so that no holder starts the server on half-deleted data.
        let _holder = Holder::take(&dir)?;
        let data = dir.join("data");
        let removed = match fs::remove_dir_all(&data) {
            Err(err) if err.kind() != ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        };
        removed.map_err(ClusterError::io_at("could not remove", &data))?;
        let log_file = dir.join("log");
        match log {
            Log::Keep => Ok(()),
            Log::Remove => match fs::remove_file(&log_file) {
                Err(err) if err.kind() != ErrorKind::NotFound => {
                    Err(ClusterError::io_at("could not remove", &log_file)(err))
                }
                _ => Ok(()),
            },
        }
    }

    /// The cluster directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Whether this value will stop the server: it started it, or holds the cluster.
    pub fn stops_server(&self) -> bool {
        self.claim.stops_server()
    }

    /// Lets go of the server without stopping it (`mjolnir pg start`), and of the holder
    /// lock if this value held it.
    pub fn leave_running(mut self) {
        self.claim = Claim::Guest;
    }

    /// Stops the server with `pg_ctl stop -m fast` if this value started it or holds the
    /// cluster; a holder lets go of its lock once the server is down.
    pub async fn stop(mut self) -> Result<(), ClusterError> {
        let claim = std::mem::replace(&mut self.claim, Claim::Guest);
        if !claim.stops_server() {
            return Ok(());
        }
        let result = stop_server(&self.binaries, self.run_as, &self.dir).await;
        drop(claim);
        result
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
        if self.claim.stops_server() {
            let _ = stop_command(&self.binaries, self.run_as, &self.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Creates `dir` if needed and resolves it, so every process names a cluster alike.
fn make_dir(dir: &Path) -> Result<PathBuf, ClusterError> {
    fs::create_dir_all(dir).map_err(ClusterError::io_at("could not create", dir))?;
    dir.canonicalize()
        .map_err(ClusterError::io_at("could not resolve", dir))
}

async fn stop_server(binaries: &Binaries, run_as: RunAs, dir: &Path) -> Result<(), ClusterError> {
    let result = run(stop_command(binaries, run_as, dir).into()).await;
    // Someone else stopping it first is not a failure.
    match result {
        Err(_) if running_server(&dir.join("data"))?.is_none() => Ok(()),
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests;
