//! Where a cluster lives, and the directories it needs before its server starts.
//!
//! As root, the cluster belongs to the `postgres` user, which must be able to enter every
//! parent of the cluster directory. An app in a directory closed to other users (root's
//! home, a `mktemp -d` folder) gets its cluster elsewhere instead of asking the developer to
//! open their directories: see [`ClusterDir::for_dir`].

use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid};

use super::ClusterError;
use super::run_as::RunAs;
use super::socket::{Socket, fnv1a};

/// Where root keeps the clusters of directories `postgres` cannot enter: root alone can make
/// entries there, so no other user can prepare one in advance (unlike in `/tmp`), and its
/// data outlives a reboot.
const FALLBACK_ROOT: &str = "/var/lib/mjolnir";
/// The most characters of the label a fallback directory's name keeps.
const MAX_LABEL: usize = 40;

/// The directory a cluster lives in, and why it is not the one asked for, if it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDir {
    pub path: PathBuf,
    /// The parent of the directory asked for that the `postgres` user cannot enter, when
    /// that is why `path` is elsewhere.
    pub closed_parent: Option<PathBuf>,
}

impl ClusterDir {
    /// `wanted` itself, unless root runs mjolnir and `postgres` cannot enter one of its
    /// parents: then `/var/lib/mjolnir/<label>-<hash of wanted>`, the same directory on
    /// every start, so its data is kept. No permission of `wanted` or its parents changes.
    pub fn for_dir(wanted: &Path, label: &str) -> Result<ClusterDir, ClusterError> {
        Self::for_dir_in(wanted, label, Path::new(FALLBACK_ROOT))
    }

    fn for_dir_in(
        wanted: &Path,
        label: &str,
        fallback_root: &Path,
    ) -> Result<ClusterDir, ClusterError> {
        let wanted = absolute(wanted)?;
        let RunAs::Postgres { uid, gid } = RunAs::detect()? else {
            return Ok(ClusterDir {
                path: wanted,
                closed_parent: None,
            });
        };
        let Some(closed) = closed_parent(&wanted, uid, gid)? else {
            return Ok(ClusterDir {
                path: wanted,
                closed_parent: None,
            });
        };
        make_open_dir(fallback_root)?;
        let hash = fnv1a(wanted.as_os_str().as_encoded_bytes());
        Ok(ClusterDir {
            path: fallback_root.join(format!("{}-{hash:016x}", safe_label(label))),
            closed_parent: Some(closed),
        })
    }
}

/// `path` made absolute with its existing part resolved (symbolic links, `..`), so that the
/// same directory always gets the same fallback.
fn absolute(path: &Path) -> Result<PathBuf, ClusterError> {
    let path = std::path::absolute(path).map_err(ClusterError::io_at("could not resolve", path))?;
    let mut missing = Vec::new();
    let mut existing = path.as_path();
    loop {
        match existing.canonicalize() {
            Ok(real) => return Ok(missing.iter().rev().fold(real, |dir, name| dir.join(name))),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                match (existing.parent(), existing.file_name()) {
                    (Some(parent), Some(name)) => {
                        missing.push(name.to_owned());
                        existing = parent;
                    }
                    // A `..` below a missing directory: leave the path as it is.
                    _ => return Ok(path),
                }
            }
            Err(err) => return Err(ClusterError::io_at("could not resolve", existing)(err)),
        }
    }
}

/// Letters, digits, `-`, `_` and `.` (not leading), so the name is one plain path component.
fn safe_label(label: &str) -> String {
    let label: String = label
        .trim_start_matches('.')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(MAX_LABEL)
        .collect();
    if label.is_empty() {
        "cluster".to_owned()
    } else {
        label
    }
}

/// Creates `dir` with mode 755 (whatever the umask) if it is missing; one that exists is
/// left as it is, and [`check_traversable`] says so if `postgres` cannot enter it.
fn make_open_dir(dir: &Path) -> Result<(), ClusterError> {
    match DirBuilder::new().recursive(false).mode(0o755).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(ClusterError::io_at("could not chmod 755", dir)),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(ClusterError::io_at("could not create", dir)(err)),
    }
}

/// Makes the socket directory private, clears lock files a dead server left behind, and (as
/// root) hands the whole cluster directory to `postgres` after checking it can reach it.
pub(super) fn prepare_dirs(dir: &Path, socket: &Socket, run_as: RunAs) -> Result<(), ClusterError> {
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
    match closed_parent(dir, uid, gid)? {
        Some(path) => Err(ClusterError::ParentNotTraversable { path }),
        None => Ok(()),
    }
}

/// The first parent of `dir` that user `uid` (group `gid`) may not enter; parents that do
/// not exist yet are skipped, since whoever creates them can make them enterable.
fn closed_parent(dir: &Path, uid: Uid, gid: Gid) -> Result<Option<PathBuf>, ClusterError> {
    for parent in dir.ancestors().skip(1) {
        let meta = match fs::metadata(parent) {
            Ok(meta) => meta,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(ClusterError::io_at("could not inspect", parent)(err)),
        };
        let mode = meta.mode();
        let traversable = (meta.uid() == uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == gid.as_raw() && mode & 0o010 != 0)
            || mode & 0o001 != 0;
        if !traversable {
            return Ok(Some(parent.to_path_buf()));
        }
    }
    Ok(None)
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

#[cfg(test)]
mod tests {
    use nix::unistd::geteuid;

    use super::*;

    #[test]
    fn labels_are_one_plain_path_component() {
        assert_eq!(safe_label("bank"), "bank");
        assert_eq!(safe_label("../my app/ü"), "_my_app__");
        assert_eq!(safe_label(""), "cluster");
        assert_eq!(safe_label(&"x".repeat(100)).len(), MAX_LABEL);
    }

    #[test]
    fn a_path_is_made_absolute_with_its_existing_part_resolved() {
        let outer = tempfile::tempdir().unwrap();
        let real = outer.path().canonicalize().unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert_eq!(
            absolute(&real.join("link/missing/pg")).unwrap(),
            real.join("missing/pg")
        );
        let here = std::env::current_dir().unwrap().canonicalize().unwrap();
        assert_eq!(
            absolute(Path::new("no-such-dir")).unwrap(),
            here.join("no-such-dir")
        );
    }

    /// As root, a cluster in a directory `postgres` cannot enter goes elsewhere, always the
    /// same place for the same directory; as anyone else it stays where it was asked for.
    #[test]
    fn a_cluster_postgres_cannot_reach_is_kept_in_the_fallback_root() {
        let outer = tempfile::tempdir().unwrap();
        let outer = outer.path().canonicalize().unwrap();
        let open = outer.join("open");
        let closed = outer.join("closed");
        fs::create_dir(&open).unwrap();
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&outer, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let root = outer.join("fallback");

        let in_open = ClusterDir::for_dir_in(&open.join("app/.mjolnir/pg"), "app", &root).unwrap();
        assert_eq!(in_open.path, open.join("app/.mjolnir/pg"));
        assert_eq!(in_open.closed_parent, None);

        let wanted = closed.join("app/.mjolnir/pg");
        let in_closed = ClusterDir::for_dir_in(&wanted, "my app", &root).unwrap();
        if !geteuid().is_root() {
            assert_eq!(in_closed.path, wanted, "our own user can always enter");
            return;
        }
        assert_eq!(in_closed.closed_parent, Some(closed.clone()));
        assert_eq!(in_closed.path.parent(), Some(root.as_path()));
        let name = in_closed.path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("my_app-") && name.len() == "my_app-".len() + 16,
            "{name}"
        );
        assert_eq!(fs::metadata(&root).unwrap().mode() & 0o777, 0o755);
        assert!(
            !closed.join("app").exists(),
            "nothing is made in the closed directory"
        );
        let again = ClusterDir::for_dir_in(&wanted, "my app", &root).unwrap();
        assert_eq!(again, in_closed, "the same place on every start");
        let other = ClusterDir::for_dir_in(&closed.join("other/.mjolnir/pg"), "my app", &root);
        assert_ne!(other.unwrap().path, in_closed.path, "one per directory");
    }
}
