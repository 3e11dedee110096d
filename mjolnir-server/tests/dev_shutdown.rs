//! `mjolnir dev` stopped from a terminal: Ctrl-C signals the whole foreground process group,
//! and an impatient developer presses it more than once. The private PostgreSQL must still
//! be stopped, and the command must still exit cleanly.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The pid in `postmaster.pid` if that process is alive.
fn live_postmaster(data: &Path) -> Option<i32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    kill(Pid::from_raw(pid), None).ok().map(|()| pid)
}

#[test]
fn ctrl_c_pressed_again_and_again_still_stops_the_private_postgres() {
    let root = tempfile::tempdir().unwrap();
    // As root, the cluster belongs to `postgres`, which must be able to enter the directory.
    fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let app = root.path().join("bank");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bank");
    copy_dir(&examples.join("migrations"), &app.join("migrations"));
    fs::copy(examples.join("index.html"), app.join("index.html")).unwrap();

    let mut dev = Command::new(env!("CARGO_BIN_EXE_mjolnir"))
        .args(["dev", "--listen", "127.0.0.1", "--port", "0"])
        .arg(&app)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // A foreground job of its own, as a shell runs it: Ctrl-C goes to this group.
        .process_group(0)
        .spawn()
        .unwrap();
    let group = Pid::from_raw(dev.id() as i32);
    let mut stdout = BufReader::new(dev.stdout.take().unwrap());
    let mut line = String::new();
    // Printed once its own Ctrl-C handler is in place, before PostgreSQL starts.
    while !line.contains("Starting PostgreSQL") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "mjolnir dev exited before starting PostgreSQL"
        );
    }
    let data = app.join(".mjolnir/pg/data");

    // Ctrl-C every 20 ms until the command exits: while PostgreSQL starts, while the server
    // starts and serves, and while PostgreSQL is being stopped.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut postmaster = None;
    let status = loop {
        if let Some(status) = dev.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "mjolnir dev did not exit");
        postmaster = postmaster.or_else(|| live_postmaster(&data));
        let _ = killpg(group, Signal::SIGINT);
        std::thread::sleep(Duration::from_millis(20));
    };
    let rest: Vec<String> = stdout.lines().map_while(Result::ok).collect();
    assert!(status.success(), "{status}; it printed {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("Stopping PostgreSQL")),
        "{rest:?}"
    );
    // A fast shutdown has finished once pg_ctl -w returns; allow the process a moment to go.
    let gone = Instant::now() + Duration::from_secs(10);
    while postmaster.is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
        && Instant::now() < gone
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(live_postmaster(&data), None, "PostgreSQL was left running");
}
