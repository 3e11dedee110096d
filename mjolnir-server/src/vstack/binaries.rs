use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::ClusterError;

/// Programs every cluster operation needs; a directory missing any of them is not a server install
/// (Debian's `libpq-dev` ships a `pg_config` whose bindir has no server).
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Where Debian installs each major version side by side.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";

/// The directory holding PostgreSQL's server programs.
#[derive(Debug, Clone)]
pub(crate) struct Binaries {
    bindir: PathBuf,
}

impl Binaries {
    /// Asks `pg_config` first (it knows non-Debian layouts), then falls back to the newest
    /// `/usr/lib/postgresql/*/bin`, because `pg_config` is often absent or client-only.
    pub(crate) async fn locate() -> Result<Self, ClusterError> {
        let candidates: Vec<PathBuf> = [
            pg_config_bindir().await,
            newest_versioned_bindir(Path::new(DEBIAN_ROOT)),
        ]
        .into_iter()
        .flatten()
        .collect();
        candidates
            .iter()
            .find_map(|dir| Self::in_dir(dir).ok())
            .ok_or_else(|| ClusterError::PostgresNotInstalled {
                searched: candidates
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| PathBuf::from(DEBIAN_ROOT)),
            })
    }

    /// Accepts `dir` only if it holds every required program.
    pub(crate) fn in_dir(dir: &Path) -> Result<Self, ClusterError> {
        if REQUIRED.iter().all(|name| dir.join(name).is_file()) {
            Ok(Self {
                bindir: dir.to_path_buf(),
            })
        } else {
            Err(ClusterError::PostgresNotInstalled {
                searched: dir.to_path_buf(),
            })
        }
    }

    pub(crate) fn initdb(&self) -> PathBuf {
        self.bindir.join("initdb")
    }

    pub(crate) fn pg_ctl(&self) -> PathBuf {
        self.bindir.join("pg_ctl")
    }

    /// Only the tests connect with psql; the cluster itself needs no client program.
    #[cfg(test)]
    pub(crate) fn psql(&self) -> PathBuf {
        self.bindir.join("psql")
    }
}

async fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .await
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

/// Compares versions numerically, so `15` beats `9.6`.
fn newest_versioned_bindir(root: &Path) -> Option<PathBuf> {
    let version = |name: &str| -> Option<Vec<u32>> {
        name.split('.').map(|part| part.parse().ok()).collect()
    };
    std::fs::read_dir(root)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            Some((
                version(entry.file_name().to_str()?)?,
                entry.path().join("bin"),
            ))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_without_the_server_programs_is_not_an_install() {
        let empty = tempfile::tempdir().unwrap();
        let err = Binaries::in_dir(empty.path()).unwrap_err();
        assert!(matches!(err, ClusterError::PostgresNotInstalled { .. }));
        let message = err.to_string();
        assert!(
            message.starts_with(
                "PostgreSQL server binaries not found: install them with `apt-get install postgresql` (Debian/Ubuntu)"
            ),
            "{message}"
        );
        assert!(
            message.contains(&empty.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn the_newest_major_version_wins() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "13", "not-a-version"] {
            std::fs::create_dir_all(root.path().join(version).join("bin")).unwrap();
        }
        assert_eq!(
            newest_versioned_bindir(root.path()),
            Some(root.path().join("15/bin"))
        );
        assert_eq!(newest_versioned_bindir(&root.path().join("missing")), None);
    }
}
