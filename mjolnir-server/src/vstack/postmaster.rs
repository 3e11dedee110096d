//! What `postmaster.pid` says about the server running on a data directory, if any.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::ClusterError;
use super::socket::Socket;

/// What `postmaster.pid` says about a live server: PostgreSQL writes the port on line 4,
/// the first socket directory on line 5 (empty without one) and the first TCP address on
/// line 6 (empty without one).
#[derive(Debug)]
pub(super) struct RunningServer {
    data: PathBuf,
    port: u16,
    socket_dir: Option<PathBuf>,
    listen_address: String,
}

impl RunningServer {
    /// Where to attach; a server with no unix socket can only be listening on TCP.
    pub(super) fn socket(self) -> Result<Socket, ClusterError> {
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
pub(super) fn running_server(data: &Path) -> Result<Option<RunningServer>, ClusterError> {
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
