//! The PostgreSQL programs a cluster runs: initdb once, then pg_ctl to start and stop it.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::ClusterError;
use super::binaries::Binaries;
use super::run_as::RunAs;
use super::socket::Socket;

/// Starts that failed for a transient reason (see [`launch`]) are retried this often.
const START_ATTEMPTS: usize = 3;
/// Connections the server accepts: the test suite runs many instances at once, each with its
/// own pool, and the benchmark adds 64 pgbench clients to two servers' pools.
const MAX_CONNECTIONS: u32 = 300;

/// A `data/` without `PG_VERSION` is what an interrupted initdb leaves; initdb refuses to
/// reuse a non-empty directory, so it is removed and created afresh.
pub(super) async fn initdb_if_needed(
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
pub(super) async fn launch(
    dir: &Path,
    socket: &Socket,
    binaries: &Binaries,
    run_as: RunAs,
) -> Result<(), ClusterError> {
    let log = dir.join("log");
    let options = format!(
        "-c listen_addresses='' -c port={} -c unix_socket_directories={} \
         -c unix_socket_permissions=0700 -c fsync=on -c max_connections={MAX_CONNECTIONS}",
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
pub(super) fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

pub(super) async fn run(mut cmd: tokio::process::Command) -> Result<String, ClusterError> {
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

/// `pg_ctl stop -m fast`, waiting for the server to be gone: a plain command, so that `Drop`,
/// which cannot await, runs it too.
pub(super) fn stop_command(
    binaries: &Binaries,
    run_as: RunAs,
    dir: &Path,
) -> std::process::Command {
    let mut cmd = run_as.command(&binaries.pg_ctl(), dir);
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-m", "fast", "-w", "-s", "stop"]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
