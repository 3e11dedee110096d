//! The app's public files: which request paths are served from the app directory, and
//! which file each one opens.
//!
//! The app directory also holds what is not for browsers: the app's SQL migrations
//! (`migrations/`) and, under `mjolnir dev`, its private PostgreSQL (`.mjolnir/pg/`: raw
//! table files and the server's log). A filter on the request path as sent is not enough:
//! the path is percent-decoded before it reaches the filesystem (`/%2emjolnir/pg/log` is
//! `/.mjolnir/pg/log`), and a symbolic link inside the directory can lead anywhere.
//!
//! So [`PublicFiles::resolve`] decides twice, on the decoded path and on the canonical path
//! it resolves to (symbolic links followed), and returns that canonical path: what was
//! checked is what [`PublicFiles::serve`] opens. A file is public if its canonical path
//! lies inside the canonical app directory and no component of it below the app directory
//! starts with a dot or is `migrations`. Everything else answers 404, the same as a file
//! that does not exist, so a browser learns nothing of what is there.
//!
//! What is left: the canonical path is computed, then opened. Someone who can replace a
//! file by a symbolic link in between can already write to the app directory.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use std::ffi::OsStr;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt;
use tower_http::services::ServeFile;

/// What a directory serves.
const INDEX: &str = "index.html";

/// The files of one app directory that browsers may fetch.
#[derive(Clone, Debug)]
pub struct PublicFiles {
    /// The app directory, canonical: every public file's canonical path starts with it.
    root: PathBuf,
}

/// A request path that names a public file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Public {
    /// Serve this file: a regular file, its path canonical.
    File(PathBuf),
    /// A directory with a public `index.html`, asked for without the trailing slash:
    /// redirect to `path/`, so that the page's relative links resolve inside the directory.
    Directory,
}

/// Why a request path is not served. Every refusal answers 404; the reason is for logs and
/// tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the path is not percent-encoded UTF-8")]
    Undecodable,
    #[error("the path holds `..`, a backslash or a NUL byte")]
    Unsafe,
    #[error("the path names a private file (a dot file, or the migrations)")]
    Private,
    #[error("the path resolves outside the app directory")]
    Outside,
    #[error("no such file")]
    NotFound,
}

impl PublicFiles {
    /// The public files of `app_dir`, which must exist.
    pub fn new(app_dir: &Path) -> io::Result<PublicFiles> {
        Ok(PublicFiles {
            root: app_dir.canonicalize()?,
        })
    }

    /// Decides what the request path `raw_path` (as sent: percent-encoded, without the
    /// query) serves. Blocks on the filesystem.
    pub fn resolve(&self, raw_path: &str) -> Result<Public, Refusal> {
        let decoded = percent_decode_str(raw_path)
            .decode_utf8()
            .map_err(|_| Refusal::Undecodable)?;
        // First the path as asked: a private name is refused even where a symbolic link
        // would make it lead to a public file.
        let mut asked = self.root.clone();
        for segment in decoded.split('/') {
            match segment {
                "" | "." => {}
                ".." => return Err(Refusal::Unsafe),
                s if s.contains(['\\', '\0']) => return Err(Refusal::Unsafe),
                s if is_private(OsStr::new(s)) => return Err(Refusal::Private),
                s => asked.push(s),
            }
        }
        // Then where it leads.
        let found = self.public_canonical(&asked)?;
        if found.is_file() {
            return Ok(Public::File(found));
        }
        if !found.is_dir() {
            return Err(Refusal::NotFound);
        }
        let index = self.public_canonical(&found.join(INDEX))?;
        if !index.is_file() {
            return Err(Refusal::NotFound);
        }
        if decoded.ends_with('/') {
            Ok(Public::File(index))
        } else {
            Ok(Public::Directory)
        }
    }

    /// The canonical path of `path` if it is public.
    fn public_canonical(&self, path: &Path) -> Result<PathBuf, Refusal> {
        let canonical = path.canonicalize().map_err(|_| Refusal::NotFound)?;
        let below = canonical
            .strip_prefix(&self.root)
            .map_err(|_| Refusal::Outside)?;
        for component in below.components() {
            match component {
                Component::Normal(name) if !is_private(name) => {}
                Component::Normal(_) => return Err(Refusal::Private),
                // A canonical path has no other components below its root.
                _ => return Err(Refusal::Outside),
            }
        }
        Ok(canonical)
    }

    /// Answers a request the other routes did not take: the public file it names (with
    /// tower-http's content types, ranges and conditional requests), a redirect to a
    /// directory's slash, or 404.
    pub async fn serve(self: Arc<Self>, req: Request) -> Response {
        let raw_path = req.uri().path().to_owned();
        let decided = {
            let raw_path = raw_path.clone();
            tokio::task::spawn_blocking(move || self.resolve(&raw_path)).await
        };
        match decided {
            Ok(Ok(Public::File(path))) => match ServeFile::new(path).oneshot(req).await {
                Ok(response) => response.into_response(),
                Err(never) => match never {},
            },
            Ok(Ok(Public::Directory)) => {
                // One leading slash: `//host/dir` would be a protocol-relative URL, a
                // redirect to another site.
                let path = raw_path.trim_start_matches('/');
                let location = match req.uri().query() {
                    Some(query) => format!("/{path}/?{query}"),
                    None => format!("/{path}/"),
                };
                match HeaderValue::try_from(location) {
                    Ok(location) => (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::LOCATION, location)],
                    )
                        .into_response(),
                    Err(_) => StatusCode::NOT_FOUND.into_response(),
                }
            }
            Ok(Err(refusal)) => {
                tracing::debug!(path = raw_path, %refusal, "not served");
                StatusCode::NOT_FOUND.into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "resolving a static file failed");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// Dot files (`.mjolnir/`, `.git/`, `.env`) and the migrations are the app's own. The
/// comparison ignores case, for filesystems that do.
fn is_private(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b".") || name.eq_ignore_ascii_case(b"migrations")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// `base/app` with public and private files, and `base/outside` beside it.
    fn app() -> (tempfile::TempDir, PublicFiles) {
        let base = tempfile::tempdir().unwrap();
        let app = base.path().join("app");
        let outside = base.path().join("outside");
        for dir in ["sub", "bare", "private-index", ".mjolnir/pg", "migrations"] {
            fs::create_dir_all(app.join(dir)).unwrap();
        }
        fs::create_dir(&outside).unwrap();
        for file in [
            "index.html",
            "sub/index.html",
            "sub/page.html",
            "bare/notes.txt",
            ".mjolnir/pg/log",
            ".env",
            "migrations/0001_x.sql",
        ] {
            fs::write(app.join(file), file).unwrap();
        }
        fs::write(outside.join("secret.txt"), "outside").unwrap();
        symlink(outside.join("secret.txt"), app.join("link-out")).unwrap();
        symlink(&outside, app.join("linkdir-out")).unwrap();
        symlink(".mjolnir/pg/log", app.join("link-dot")).unwrap();
        symlink(".mjolnir", app.join("linkdir-dot")).unwrap();
        symlink("migrations/0001_x.sql", app.join("link-mig")).unwrap();
        symlink("../.mjolnir/pg/log", app.join("private-index/index.html")).unwrap();
        symlink("index.html", app.join("link-public")).unwrap();
        symlink("sub", app.join("linkdir-public")).unwrap();
        symlink("index.html", app.join(".hidden-link")).unwrap();
        let files = PublicFiles::new(&app).unwrap();
        (base, files)
    }

    fn file(files: &PublicFiles, below: &str) -> Result<Public, Refusal> {
        Ok(Public::File(files.root.join(below).canonicalize().unwrap()))
    }

    #[test]
    fn public_files_resolve_to_their_canonical_path() {
        let (_base, files) = app();
        assert_eq!(files.resolve("/"), file(&files, "index.html"));
        assert_eq!(files.resolve("/index.html"), file(&files, "index.html"));
        assert_eq!(
            files.resolve("/sub/page.html"),
            file(&files, "sub/page.html")
        );
        assert_eq!(
            files.resolve("/%73ub/page%2ehtml"),
            file(&files, "sub/page.html")
        );
        assert_eq!(
            files.resolve("/sub%2fpage.html"),
            file(&files, "sub/page.html")
        );
        assert_eq!(
            files.resolve("//sub/./page.html"),
            file(&files, "sub/page.html")
        );
        assert_eq!(files.resolve("/sub/"), file(&files, "sub/index.html"));
        assert_eq!(files.resolve("/sub"), Ok(Public::Directory));
        assert_eq!(files.resolve("/link-public"), file(&files, "index.html"));
        assert_eq!(
            files.resolve("/linkdir-public/page.html"),
            file(&files, "sub/page.html")
        );
    }

    #[test]
    fn private_names_are_refused_however_encoded() {
        let (_base, files) = app();
        for path in [
            "/.mjolnir/pg/log",
            "/%2emjolnir/pg/log",
            "/%2Emjolnir%2Fpg%2Flog",
            "/sub/%2e%2e/.mjolnir/pg/log",
            "/.env",
            "/.hidden-link",
            "/migrations/0001_x.sql",
            "/%6digrations/0001_x.sql",
            "/MIGRATIONS/0001_x.sql",
            "/.mjolnir/",
            "/migrations",
        ] {
            let refusal = files.resolve(path).unwrap_err();
            assert!(
                matches!(refusal, Refusal::Private | Refusal::Unsafe),
                "{path}: {refusal:?}"
            );
        }
    }

    #[test]
    fn dot_dot_backslash_nul_and_bad_utf8_are_refused() {
        let (_base, files) = app();
        for path in [
            "/../outside/secret.txt",
            "/%2e%2e/outside/secret.txt",
            "/sub/..%2f..%2foutside/secret.txt",
            "/sub%5c..%5c.env",
            "/sub\\..\\index.html",
            "/index.html%00",
            "/index.html%00.png",
        ] {
            assert_eq!(files.resolve(path), Err(Refusal::Unsafe), "{path}");
        }
        assert_eq!(files.resolve("/%ff.html"), Err(Refusal::Undecodable));
    }

    #[test]
    fn symbolic_links_are_judged_by_where_they_lead() {
        let (_base, files) = app();
        assert_eq!(files.resolve("/link-out"), Err(Refusal::Outside));
        assert_eq!(
            files.resolve("/linkdir-out/secret.txt"),
            Err(Refusal::Outside)
        );
        assert_eq!(files.resolve("/link-dot"), Err(Refusal::Private));
        assert_eq!(files.resolve("/linkdir-dot/pg/log"), Err(Refusal::Private));
        assert_eq!(files.resolve("/link-mig"), Err(Refusal::Private));
        assert_eq!(
            files.resolve("/private-index/"),
            Err(Refusal::Private),
            "a directory's index.html is checked where it leads too"
        );
        assert_eq!(files.resolve("/private-index"), Err(Refusal::Private));
    }

    #[test]
    fn missing_files_and_directories_without_an_index_are_not_found() {
        let (_base, files) = app();
        assert_eq!(files.resolve("/nothing.html"), Err(Refusal::NotFound));
        assert_eq!(files.resolve("/bare/"), Err(Refusal::NotFound));
        assert_eq!(files.resolve("/bare"), Err(Refusal::NotFound));
        assert_eq!(
            files.resolve("/bare/notes.txt"),
            file(&files, "bare/notes.txt")
        );
    }
}
