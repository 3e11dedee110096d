//! `mjolnir dev` and its private PostgreSQL, as a developer runs them from a terminal.
//!
//! Ctrl-C signals the whole foreground process group, and an impatient developer presses it
//! more than once: the private PostgreSQL must still be stopped, and the command must still
//! exit cleanly. A `mjolnir dev` killed with SIGKILL leaves its PostgreSQL running: the next
//! one adopts it and stops it on exit, while a second one next to a live one is refused. As
//! root, an app in a directory the `postgres` user cannot enter gets its cluster elsewhere.
//! Every wait is bounded, and every server listens on 127.0.0.1 only.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long any one step may take: a cold initdb on a busy machine takes a few seconds.
const STEP: Duration = Duration::from_secs(60);

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

/// A copy of examples/bank in a new directory of mode `mode`: 0o755 lets the `postgres`
/// user in when root runs the tests, 0o700 (as `mktemp -d` makes) does not.
fn bank_app(mode: u32) -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(mode)).unwrap();
    let app = parent.path().join("bank");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bank");
    copy_dir(&examples.join("migrations"), &app.join("migrations"));
    fs::copy(examples.join("index.html"), app.join("index.html")).unwrap();
    (parent, app)
}

#[test]
fn ctrl_c_pressed_again_and_again_still_stops_the_private_postgres() {
    let (_parent, app) = bank_app(0o755);
    let mut dev = Dev::spawn(&app);
    // Printed once its own Ctrl-C handler is in place, before PostgreSQL starts.
    dev.wait_for("Starting PostgreSQL");
    let data = app.join(".mjolnir/pg/data");

    // Ctrl-C every 20 ms until the command exits: while PostgreSQL starts, while the server
    // starts and serves, and while PostgreSQL is being stopped.
    let mut postmaster = None;
    let (status, rest) = dev.exit_while(|group| {
        postmaster = postmaster.or_else(|| live_postmaster(&data));
        let _ = killpg(group, Signal::SIGINT);
    });
    assert!(status.success(), "{status}; it printed {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("Stopping PostgreSQL")),
        "{rest:?}"
    );
    assert!(postmaster.is_none_or(gone), "PostgreSQL was left running");
    assert_eq!(live_postmaster(&data), None, "PostgreSQL was left running");
}

/// A `mjolnir dev` on 127.0.0.1, any free port, in a process group of its own (as a shell
/// runs a foreground job), whose output lines arrive on a channel.
struct Dev {
    child: Child,
    lines: Receiver<String>,
    printed: Vec<String>,
    /// Where it serves, once it said so.
    addr: Option<String>,
}

impl Dev {
    fn spawn(app: &Path) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mjolnir"))
            .args(["dev", "--listen", "127.0.0.1", "--port", "0"])
            .arg(app)
            .env("RUST_LOG", "warn")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A foreground job of its own, as a shell runs it: Ctrl-C goes to this group.
            .process_group(0)
            .spawn()
            .unwrap();
        let (send, lines) = channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let send = send.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = send.send(line);
                }
            });
        }
        Dev {
            child,
            lines,
            printed: Vec::new(),
            addr: None,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The first line (stdout or stderr) from now on that contains `needle`.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.printed.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {needle:?} within {STEP:?}; printed {:?}", self.printed)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "exited before printing {needle:?}; printed {:?}",
                        self.printed
                    )
                }
            }
        }
    }

    /// The cluster directory it names in "Starting PostgreSQL in DIR".
    fn cluster_dir(&mut self) -> PathBuf {
        let line = self.wait_for("Starting PostgreSQL in ");
        PathBuf::from(line.split_once(" in ").unwrap().1)
    }

    /// Waits until it says where it serves, and checks that it does.
    fn serving(&mut self) {
        let line = self.wait_for("open http://");
        let addr = line.split("http://").nth(1).unwrap().trim_end_matches('/');
        self.addr = Some(addr.to_owned());
        self.healthy();
    }

    /// Its `/healthz` answers 200.
    fn healthy(&self) {
        let addr = self.addr.as_deref().expect("serving() first");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    }

    /// Its exit status, and everything it printed after what was read.
    fn exit(&mut self) -> (ExitStatus, Vec<String>) {
        self.exit_while(|_| {})
    }

    /// Like [`exit`](Self::exit), calling `meanwhile` with its process group every 20 ms
    /// until it exits (within two [`STEP`]s).
    fn exit_while(&mut self, mut meanwhile: impl FnMut(Pid)) -> (ExitStatus, Vec<String>) {
        let deadline = Instant::now() + 2 * STEP;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "mjolnir dev did not exit");
            meanwhile(self.pid());
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest: Vec<String> = self.lines.iter().collect();
        self.printed.extend(rest.iter().cloned());
        (status, rest)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mjolnir dev` on `app` and waits until it serves: the process, its cluster
/// directory, the postmaster's pid, and a guard that stops the cluster however the test ends.
fn dev_serving(app: &Path) -> (Dev, PathBuf, i32, StopCluster) {
    let mut cleanup = StopCluster {
        wanted: app.canonicalize().unwrap().join(".mjolnir/pg"),
        dir: None,
    };
    let mut dev = Dev::spawn(app);
    let dir = dev.cluster_dir();
    cleanup.dir = Some(dir.clone());
    dev.serving();
    let postmaster = live_postmaster(&dir.join("data")).expect("PostgreSQL runs");
    (dev, dir, postmaster, cleanup)
}

/// Stops a cluster however the test ends, and removes it if it was kept outside the app.
struct StopCluster {
    wanted: PathBuf,
    dir: Option<PathBuf>,
}

impl Drop for StopCluster {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_mjolnir"))
            .args(["pg", "stop"])
            .arg(&self.wanted)
            .stderr(Stdio::null())
            .status();
        if let Some(dir) = &self.dir
            && !dir.starts_with(&self.wanted)
        {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Polls for at most ten seconds until `pid` is gone: pg_ctl -w returns when the server
/// says it stopped, a moment before its process ends.
fn gone(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while kill(Pid::from_raw(pid), None).is_ok() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// The app is in a directory only its owner may enter, as `cd $(mktemp -d)` gives: as root,
/// PostgreSQL (run as `postgres`) cannot reach it there.
#[test]
fn a_dev_killed_with_sigkill_leaves_postgres_to_the_next_one_which_stops_it_on_ctrl_c() {
    let (_parent, app) = bank_app(0o700);
    let (mut first, dir, postmaster, _cleanup) = dev_serving(&app);
    if nix::unistd::geteuid().is_root() {
        assert!(dir.starts_with("/var/lib/mjolnir"), "{}", dir.display());
        assert!(
            first
                .printed
                .iter()
                .any(|l| l.starts_with("(not in ") && l.contains("cannot enter")),
            "{:?}",
            first.printed
        );
    } else {
        assert_eq!(dir, app.canonicalize().unwrap().join(".mjolnir/pg"));
    }

    kill(first.pid(), Signal::SIGKILL).unwrap();
    let (status, _) = first.exit();
    assert_eq!(status.code(), None, "killed");
    assert_eq!(
        live_postmaster(&dir.join("data")),
        Some(postmaster),
        "PostgreSQL outlives a killed mjolnir dev"
    );

    let mut next = Dev::spawn(&app);
    assert_eq!(next.cluster_dir(), dir, "the same cluster");
    next.serving();
    assert_eq!(
        live_postmaster(&dir.join("data")),
        Some(postmaster),
        "adopted, not restarted"
    );
    kill(next.pid(), Signal::SIGINT).unwrap();
    let (status, rest) = next.exit();
    assert!(status.success(), "{status}; it printed {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("Stopping PostgreSQL")),
        "{rest:?}"
    );
    assert!(gone(postmaster), "the adopted PostgreSQL was left running");
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "the data is kept for the next start"
    );
}

#[test]
fn a_second_dev_on_the_same_app_is_refused_while_the_first_runs_on() {
    let (_parent, app) = bank_app(0o755);
    let (mut first, dir, postmaster, _cleanup) = dev_serving(&app);

    let mut second = Dev::spawn(&app);
    let (status, rest) = second.exit();
    assert!(!status.success(), "{rest:?}");
    let refusal = format!(
        "another `mjolnir dev` (pid {}) is running with the PostgreSQL in {}",
        first.pid(),
        dir.display()
    );
    assert!(
        second.printed.iter().any(|l| l.contains(&refusal)),
        "{:?}",
        second.printed
    );

    assert_eq!(live_postmaster(&dir.join("data")), Some(postmaster));
    first.healthy();
    killpg(first.pid(), Signal::SIGINT).unwrap();
    let (status, rest) = first.exit();
    assert!(status.success(), "{status}; it printed {rest:?}");
    assert!(gone(postmaster), "PostgreSQL was left running");
}
