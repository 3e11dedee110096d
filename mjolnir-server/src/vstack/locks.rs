//! The two file locks of a cluster directory.
//!
//! `lock` is held while a process initialises or starts the server, so two never do it at
//! once; others wait for it. `holder` is held by a `mjolnir dev` for as long as it runs:
//! the one process that will stop the server when it exits. A second one is refused at
//! once rather than made to wait, and the kernel drops the lock of a process however it
//! dies, so a `mjolnir dev` killed with SIGKILL leaves a server that the next one adopts.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::ClusterError;

/// How long to wait for another process that is starting the same cluster.
const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// Held while this process initialises, starts or attaches to the server.
pub(super) async fn starting(dir: &Path) -> Result<Flock<File>, ClusterError> {
    let path = dir.join("lock");
    let mut file = open(&path)?;
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

/// The right to stop the server on exit, held for a process's lifetime. The file names the
/// holding process, for the message that refuses a second one.
#[derive(Debug)]
pub(super) struct Holder {
    _lock: Flock<File>,
}

impl Holder {
    /// Takes the holder lock of `dir`, or says which process has it.
    pub(super) fn take(dir: &Path) -> Result<Holder, ClusterError> {
        let path = dir.join("holder");
        let file = open(&path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let pid = std::process::id().to_string();
                lock.set_len(0)
                    .and_then(|()| (&*lock).write_all(pid.as_bytes()))
                    .map_err(ClusterError::io_at("could not write", &path))?;
                Ok(Holder { _lock: lock })
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                Err(ClusterError::Held {
                    dir: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                })
            }
            Err((_, errno)) => Err(ClusterError::io_at("could not lock", &path)(errno.into())),
        }
    }
}

/// Opened close-on-exec (std's default), so no server or pg_ctl started from here inherits
/// a lock and keeps it after this process is gone.
fn open(path: &Path) -> Result<File, ClusterError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(ClusterError::io_at("could not open", path))
}
