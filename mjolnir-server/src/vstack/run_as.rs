//! Who runs initdb and pg_ctl: PostgreSQL refuses to run as root, so root delegates to the
//! `postgres` user.

use std::path::Path;

use nix::unistd::{Gid, Uid, User, geteuid};

use super::ClusterError;

#[derive(Debug, Clone, Copy)]
pub(super) enum RunAs {
    CurrentUser,
    Postgres { uid: Uid, gid: Gid },
}

impl RunAs {
    pub(super) fn detect() -> Result<Self, ClusterError> {
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
    pub(super) fn command(self, program: &Path, dir: &Path) -> std::process::Command {
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
