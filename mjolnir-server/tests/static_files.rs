//! The app directory's private files (`.mjolnir/`, the dev cluster's data and log;
//! `migrations/`; anything a symbolic link leads to outside the directory) are not served,
//! however the request path is encoded; its public files are.
//!
//! The requests are written by hand on a raw TCP socket, so no client library normalises
//! or re-encodes the path on the way.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use support::{TestDb, app_with_schema};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Words that are in the private files only: a response holding one leaked a file.
const SECRETS: [&str; 5] = [
    "DOT-SECRET",
    "PG-LOG-SECRET",
    "PG-DATA-SECRET",
    "OUTSIDE-SECRET",
    "secret_table",
];

/// `base/app` with public files, private ones and symbolic links; `base/outside` beside it.
fn app(base: &Path) -> std::path::PathBuf {
    let app = base.join("app");
    let outside = base.join("outside");
    let migration = "CREATE TABLE secret_table (id integer PRIMARY KEY);";
    std::fs::rename(app_with_schema(migration).keep(), &app).unwrap();
    std::fs::rename(
        app.join("migrations/0001_schema.sql"),
        app.join("migrations/0001_x.sql"),
    )
    .unwrap();
    for dir in ["sub", ".mjolnir/pg/data", "private-index"] {
        std::fs::create_dir_all(app.join(dir)).unwrap();
    }
    std::fs::create_dir(&outside).unwrap();
    let write = |path: &Path, text: &str| std::fs::write(path, text).unwrap();
    write(&app.join("index.html"), "<p>PUBLIC-INDEX</p>");
    write(&app.join("sub/index.html"), "<p>PUBLIC-SUB-INDEX</p>");
    write(&app.join("sub/page.html"), "<p>PUBLIC-SUB-PAGE</p>");
    write(&app.join(".mjolnir/secret"), "DOT-SECRET");
    write(&app.join(".mjolnir/pg/log"), "PG-LOG-SECRET");
    write(&app.join(".mjolnir/pg/data/16384"), "PG-DATA-SECRET");
    write(&outside.join("secret.txt"), "OUTSIDE-SECRET");
    symlink(outside.join("secret.txt"), app.join("link-out")).unwrap();
    symlink(&outside, app.join("linkdir-out")).unwrap();
    symlink(".mjolnir/secret", app.join("link-dot")).unwrap();
    symlink(".mjolnir", app.join("linkdir-dot")).unwrap();
    symlink("migrations/0001_x.sql", app.join("link-mig")).unwrap();
    symlink("migrations", app.join("linkdir-mig")).unwrap();
    symlink("../.mjolnir/secret", app.join("private-index/index.html")).unwrap();
    symlink("sub/page.html", app.join("link-public")).unwrap();
    symlink("sub", app.join("linkdir-public")).unwrap();
    app
}

/// Sends `GET <path>` as written and returns the status and the response as text.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut response),
    )
    .await
    .expect("a response in time")
    .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    (status, response)
}

#[tokio::test]
async fn private_files_are_not_served_however_the_path_is_written() {
    let db = TestDb::new("static_files_private").await;
    let base = tempfile::tempdir().unwrap();
    let server = db.start(&app(base.path())).await;
    let private = [
        // The dev cluster and other dot files, as sent and percent-encoded.
        "/.mjolnir/secret",
        "/%2emjolnir/secret",
        "/%2Emjolnir/secret",
        "/%2e%6d%6a%6f%6c%6e%69%72/secret",
        "/%2emjolnir%2fsecret",
        "/%2emjolnir/pg/log",
        "/%2emjolnir/pg/data/16384",
        "//.mjolnir/secret",
        "/./.mjolnir/secret",
        "/%2e/%2emjolnir/secret",
        "/sub/../.mjolnir/secret",
        "/sub/%2e%2e/%2emjolnir/secret",
        "/sub%2f%2e%2e%2f%2emjolnir%2fsecret",
        "/sub/..%2f.mjolnir/secret",
        "/sub%5c..%5c.mjolnir%5csecret",
        "/.mjolnir%00/secret",
        "/%2emjolnir/",
        "/%2emjolnir",
        // The migrations.
        "/migrations/0001_x.sql",
        "/%6digrations/0001_x.sql",
        "/%6Digrations%2f0001_x.sql",
        "/MIGRATIONS/0001_x.sql",
        "/sub/..%2fmigrations/0001_x.sql",
        "/migrations/",
        // Out of the app directory.
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2e%2e%2foutside%2fsecret.txt",
        "/sub/%2e%2e/%2e%2e/outside/secret.txt",
        "/%ff/../outside/secret.txt",
        // Symbolic links that lead out of the directory, or into its private parts.
        "/link-out",
        "/linkdir-out/secret.txt",
        "/link-dot",
        "/linkdir-dot/secret",
        "/linkdir-dot/pg/log",
        "/link-mig",
        "/linkdir-mig/0001_x.sql",
        "/private-index/",
        "/private-index",
        "/private-index/index.html",
        // Not there at all.
        "/nothing.html",
    ];
    // Every path is tried before the test fails, so a failure lists all that were served.
    let mut served = Vec::new();
    for path in private {
        let (status, response) = get(server.addr, path).await;
        let leaked = SECRETS.iter().any(|secret| response.contains(secret));
        if status != 404 || leaked {
            served.push(format!("GET {path} -> {status}\n{response}"));
        }
    }
    assert!(served.is_empty(), "served:\n{}", served.join("\n---\n"));
}

#[tokio::test]
async fn public_files_are_served() {
    let db = TestDb::new("static_files_public").await;
    let base = tempfile::tempdir().unwrap();
    let server = db.start(&app(base.path())).await;
    let public = [
        ("/", "PUBLIC-INDEX"),
        ("/index.html", "PUBLIC-INDEX"),
        ("/?user=alice", "PUBLIC-INDEX"),
        ("/sub/page.html", "PUBLIC-SUB-PAGE"),
        ("/%73ub/page%2Ehtml", "PUBLIC-SUB-PAGE"),
        ("/sub%2fpage.html", "PUBLIC-SUB-PAGE"),
        ("/sub/", "PUBLIC-SUB-INDEX"),
        ("/link-public", "PUBLIC-SUB-PAGE"),
        ("/linkdir-public/page.html", "PUBLIC-SUB-PAGE"),
    ];
    for (path, body) in public {
        let (status, response) = get(server.addr, path).await;
        assert_eq!(status, 200, "GET {path}:\n{response}");
        assert!(response.contains(body), "GET {path}:\n{response}");
    }
    let (_, page) = get(server.addr, "/sub/page.html").await;
    assert!(
        page.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{page}"
    );

    let (status, response) = get(server.addr, "/sub?x=1").await;
    assert_eq!(
        status, 307,
        "a directory redirects to its slash:\n{response}"
    );
    assert!(
        response
            .to_ascii_lowercase()
            .contains("location: /sub/?x=1"),
        "{response}"
    );
    // `//sub` must not redirect to `//sub/`, which a browser reads as the host `sub`.
    let (status, response) = get(server.addr, "//sub").await;
    assert_eq!(status, 307, "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("location: /sub/\r\n"),
        "{response}"
    );
}
