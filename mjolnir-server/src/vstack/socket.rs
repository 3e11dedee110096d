//! Where the private cluster's only socket lives, and why no other OS user can reach it.
//!
//! The server listens on no TCP port, only on a unix socket whose directory is owned by the
//! cluster's OS user with mode 0700. Connecting to a unix socket needs search permission on
//! its directory, so only that user and root get in; both can read the data directory anyway,
//! which is why trust authentication on this socket gives away nothing a password would keep.

use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::Uid;

use super::run_as::RunAs;
use super::{ClusterError, SocketDirProblem};

/// Without TCP the port only names the socket file (`.s.PGSQL.5432`); each cluster has a
/// directory of its own, so one fixed port never collides.
pub(crate) const PORT: u16 = 5432;
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Short enough for any socket name, and reachable by `postgres` when root runs mjolnir
/// (`$XDG_RUNTIME_DIR` is not). Its sticky bit keeps others from renaming or replacing a
/// directory once it is checked to be the owner's.
const FALLBACK_PARENT: &str = "/tmp";
/// The only mode a socket directory may have: the owner alone may enter it.
const PRIVATE: u32 = 0o700;

/// A server's unix socket: the file `dir/.s.PGSQL.<port>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Socket {
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
}

impl Socket {
    /// `run/` in the cluster directory, or, when the socket's path there would be too long
    /// for `sun_path` (a deep app directory), a directory under `/tmp` named by a hash of
    /// the cluster directory, so that every start finds the same one.
    pub(crate) fn for_cluster(cluster_dir: &Path) -> Socket {
        let in_tree = Socket {
            dir: cluster_dir.join("run"),
            port: PORT,
        };
        if in_tree.path().as_os_str().len() <= MAX_SOCKET_PATH {
            in_tree
        } else {
            Socket {
                dir: fallback_dir(cluster_dir),
                port: PORT,
            }
        }
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(format!(".s.PGSQL.{}", self.port))
    }

    /// A URL sqlx and libpq (psql) both read as this socket: a `host` that starts with `/`
    /// is a socket directory, and the URL's own host is then ignored.
    pub(crate) fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@localhost/{}?host={}&port={}",
            percent_encode(db),
            percent_encode(&self.dir.display().to_string()),
            self.port
        )
    }

    /// Makes the socket directory one only the cluster's owner may enter, or refuses.
    /// Inside the cluster directory, which is the caller's own, a `run/` an older mjolnir
    /// made with mode 755 is repaired; elsewhere another user may have made the directory
    /// first, to reach the server through it, so only one the owner made with mode 0700 is
    /// used.
    pub(crate) fn make_private(
        &self,
        cluster_dir: &Path,
        run_as: RunAs,
    ) -> Result<(), ClusterError> {
        let created = create_private(&self.dir)?;
        let ours = created || self.dir.starts_with(cluster_dir);
        if ours && is_real_dir(&self.dir)? {
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(PRIVATE))
                .map_err(ClusterError::io_at("could not chmod 700", &self.dir))?;
            run_as.hand_over(&self.dir)?;
        }
        check_private(&self.dir, run_as.owner())
    }
}

/// `/tmp/mjolnir-pg-<hash>`: well under `sun_path`'s limit whatever the cluster's path.
pub(crate) fn fallback_dir(cluster_dir: &Path) -> PathBuf {
    let hash = fnv1a(cluster_dir.as_os_str().as_encoded_bytes());
    Path::new(FALLBACK_PARENT).join(format!("mjolnir-pg-{hash:016x}"))
}

/// FNV-1a, because it is stable across Rust releases (std's hasher is not promised to be):
/// every build of mjolnir finds the same directory for a cluster.
pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `mkdir` with mode 0700, never following a symlink; false if something already has the name.
fn create_private(dir: &Path) -> Result<bool, ClusterError> {
    match DirBuilder::new().mode(PRIVATE).create(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(ClusterError::io_at("could not create", dir)(err)),
    }
}

fn is_real_dir(path: &Path) -> Result<bool, ClusterError> {
    fs::symlink_metadata(path)
        .map(|meta| meta.is_dir())
        .map_err(ClusterError::io_at("could not inspect", path))
}

/// Checks the directory itself (lstat), not what a symlink of that name points to.
fn check_private(dir: &Path, owner: Uid) -> Result<(), ClusterError> {
    let meta = fs::symlink_metadata(dir).map_err(ClusterError::io_at("could not inspect", dir))?;
    let problem = if meta.file_type().is_symlink() {
        SocketDirProblem::Symlink
    } else if !meta.is_dir() {
        SocketDirProblem::NotADirectory
    } else if meta.uid() != owner.as_raw() {
        SocketDirProblem::WrongOwner {
            found: meta.uid(),
            expected: owner.as_raw(),
        }
    } else if meta.mode() & 0o777 != PRIVATE {
        SocketDirProblem::WrongMode {
            found: meta.mode() & 0o777,
        }
    } else {
        return Ok(());
    };
    Err(ClusterError::UnsafeSocketDir {
        path: dir.to_path_buf(),
        problem,
    })
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use nix::unistd::geteuid;
    use sqlx::postgres::PgConnectOptions;

    use super::*;

    #[test]
    fn urls_encode_the_database_name() {
        assert_eq!(percent_encode("my app/ü"), "my%20app%2F%C3%BC");
    }

    #[test]
    fn sqlx_reads_the_url_as_the_socket() {
        let socket = Socket {
            dir: PathBuf::from("/a b/c+d%e&f=g/run"),
            port: PORT,
        };
        let url = socket.url("my app");
        assert_eq!(
            url,
            "postgres://postgres@localhost/my%20app?host=%2Fa%20b%2Fc%2Bd%25e%26f%3Dg%2Frun&port=5432"
        );
        let options = PgConnectOptions::from_str(&url).unwrap();
        assert_eq!(options.get_socket(), Some(&socket.dir));
        assert_eq!(options.get_port(), PORT);
        assert_eq!(options.get_database(), Some("my app"));
        assert_eq!(options.get_username(), "postgres");
    }

    #[test]
    fn a_socket_path_too_long_for_sun_path_moves_to_tmp() {
        let short = Path::new("/home/dev/app/.mjolnir/pg");
        assert_eq!(Socket::for_cluster(short).dir, short.join("run"));

        // 107 bytes is the longest that fits: `/run/.s.PGSQL.5432` adds 18.
        let fits = PathBuf::from(format!("/{}", "a".repeat(88)));
        assert_eq!(Socket::for_cluster(&fits).path().as_os_str().len(), 107);
        assert_eq!(Socket::for_cluster(&fits).dir, fits.join("run"));
        let deep = PathBuf::from(format!("/{}", "a".repeat(89)));
        let moved = Socket::for_cluster(&deep);
        assert_eq!(moved.dir, fallback_dir(&deep));
        assert!(moved.dir.starts_with("/tmp"), "{}", moved.dir.display());
        assert!(moved.path().as_os_str().len() <= MAX_SOCKET_PATH);
        assert_ne!(fallback_dir(&deep), fallback_dir(&fits), "one per cluster");
    }

    #[test]
    fn the_fallback_name_is_stable() {
        // FNV-1a's published test vector: other builds must derive the same directory.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fallback_dir(Path::new("/x")), fallback_dir(Path::new("/x")));
    }

    /// The owner check needs a directory owned by someone else, which only root can make.
    #[test]
    fn a_socket_dir_of_another_user_is_refused() {
        if !geteuid().is_root() {
            return;
        }
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("run");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::os::unix::fs::chown(&dir, Some(nobody.uid.as_raw()), None).unwrap();
        match check_private(&dir, geteuid()) {
            Err(ClusterError::UnsafeSocketDir {
                path,
                problem: SocketDirProblem::WrongOwner { found, expected },
            }) => {
                assert_eq!(path, dir);
                assert_eq!((found, expected), (nobody.uid.as_raw(), 0));
            }
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn only_a_real_owner_only_directory_passes() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("run");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        check_private(&dir, geteuid()).unwrap();

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_private(&dir, geteuid()).unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::UnsafeSocketDir {
                    problem: SocketDirProblem::WrongMode { found: 0o755 },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("mode 755"), "{err}");

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = check_private(&link, geteuid()).unwrap_err();
        assert!(
            matches!(
                err,
                ClusterError::UnsafeSocketDir {
                    problem: SocketDirProblem::Symlink,
                    ..
                }
            ),
            "{err:?}"
        );
        let file = parent.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(matches!(
            check_private(&file, geteuid()),
            Err(ClusterError::UnsafeSocketDir {
                problem: SocketDirProblem::NotADirectory,
                ..
            })
        ));
    }
}
