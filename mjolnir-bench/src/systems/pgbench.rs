//! pgbench running the transfer as a custom script: the database's own ceiling, with no
//! application server in the way. Its per-transaction log is read back into the same
//! [`Recorder`] as the other systems, over the same window (warm-up excluded).

use crate::driver::Window;
use crate::stats::Recorder;
use crate::workload::{ACCOUNTS, AMOUNT, HOT_ACCOUNT, Workload};
use anyhow::Context;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::process::Command;

/// Where pgbench is and which database it hits.
#[derive(Debug, Clone)]
pub struct Pgbench {
    pub bin: PathBuf,
    /// A `postgres://` URI; pgbench hands its last argument to libpq, which expands it.
    pub database_url: String,
    /// Scratch directory for the script and the logs.
    pub work_dir: PathBuf,
}

/// The transfer in pgbench's script language: pick the pair like [`Workload::pick`], lock
/// both rows in key order, move the money if there is enough.
pub fn script(workload: Workload) -> String {
    let pick = match workload {
        Workload::Uniform => format!(
            "\\set a random(1, {ACCOUNTS})\n\
             \\set b random(1, {ACCOUNTS} - 1)\n\
             \\set b case when :b >= :a then :b + 1 else :b end\n"
        ),
        Workload::Hot => format!(
            "\\set other random({}, {ACCOUNTS})\n\
             \\set dir random(0, 1)\n\
             \\set a case when :dir = 0 then {HOT_ACCOUNT} else :other end\n\
             \\set b case when :dir = 0 then :other else {HOT_ACCOUNT} end\n",
            HOT_ACCOUNT + 1
        ),
    };
    format!(
        "{pick}\
         \\set lo least(:a, :b)\n\
         \\set hi greatest(:a, :b)\n\
         BEGIN;\n\
         SELECT balance AS lo_balance FROM accounts WHERE id = :lo FOR UPDATE \\gset\n\
         SELECT balance AS hi_balance FROM accounts WHERE id = :hi FOR UPDATE \\gset\n\
         \\set from_balance case when :a = :lo then :lo_balance else :hi_balance end\n\
         \\if :from_balance >= {AMOUNT}\n\
         UPDATE accounts SET balance = balance - {AMOUNT} WHERE id = :a;\n\
         UPDATE accounts SET balance = balance + {AMOUNT} WHERE id = :b;\n\
         \\endif\n\
         COMMIT;\n"
    )
}

impl Pgbench {
    /// Runs `clients` pgbench clients for the window and measures the transactions that
    /// completed inside it.
    pub async fn run(
        &self,
        workload: Workload,
        clients: u32,
        window: Window,
    ) -> anyhow::Result<Recorder> {
        self.run_script(workload.name(), &script(workload), clients, window)
            .await
    }

    /// Runs `script` (pgbench's script language; `name` names its scratch directory) with
    /// `clients` clients, prepared statements, for the window, and measures the
    /// transactions that completed inside it.
    pub async fn run_script(
        &self,
        name: &str,
        script: &str,
        clients: u32,
        window: Window,
    ) -> anyhow::Result<Recorder> {
        self.run_scripts(name, &[script.to_owned()], clients, window)
            .await
    }

    /// [`Pgbench::run_script`] with several scripts, each transaction running one of them
    /// drawn uniformly (pgbench takes at most 128).
    pub async fn run_scripts(
        &self,
        name: &str,
        scripts: &[String],
        clients: u32,
        window: Window,
    ) -> anyhow::Result<Recorder> {
        let dir = self.work_dir.join(format!("pgbench-{name}-{clients}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut files = Vec::with_capacity(scripts.len());
        for (i, script) in scripts.iter().enumerate() {
            let path = dir.join(format!("script-{i}.sql"));
            std::fs::write(&path, script)?;
            files.push(path);
        }

        // pgbench counts whole seconds and starts its clock after connecting: run one
        // second more than the window, so that it is still running when the window ends.
        let total = window.warmup + window.measure + Duration::from_secs(1);
        let started = SystemTime::now();
        let output = Command::new(&self.bin)
            .arg("--no-vacuum")
            .args(["--protocol", "prepared"])
            .args(["--client", &clients.to_string()])
            .args(["--jobs", &clients.min(2).to_string()])
            .args(["--time", &total.as_secs_f64().ceil().to_string()])
            .args(
                files
                    .iter()
                    .flat_map(|f| [OsStr::new("--file"), f.as_os_str()]),
            )
            .arg("--log")
            .arg(format!("--log-prefix={}", dir.join("tx").display()))
            .arg(&self.database_url)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("running {}", self.bin.display()))?;
        anyhow::ensure!(
            output.status.success(),
            "pgbench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let from = started + window.warmup;
        let until = from + window.measure;
        read_logs(&dir, from, until)
    }
}

/// Reads every `tx.*` log of pgbench (one per thread). Each line is
/// `client transaction latency_us script epoch_s epoch_us`, the last two being when the
/// transaction completed.
fn read_logs(dir: &Path, from: SystemTime, until: SystemTime) -> anyhow::Result<Recorder> {
    let micros =
        |t: SystemTime| -> anyhow::Result<u128> { Ok(t.duration_since(UNIX_EPOCH)?.as_micros()) };
    let (from_us, until_us) = (micros(from)?, micros(until)?);
    let mut rec = Recorder::default();
    let mut files = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("tx."))
        {
            continue;
        }
        files += 1;
        for line in std::fs::read_to_string(&path)?.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, _, latency, _, epoch_s, epoch_us, ..] = fields.as_slice() else {
                anyhow::bail!("unexpected pgbench log line in {}: {line}", path.display());
            };
            let ended = epoch_s.parse::<u128>()? * 1_000_000 + epoch_us.parse::<u128>()?;
            if ended < from_us || ended > until_us {
                continue;
            }
            // pgbench writes "failed" or "skipped" instead of a latency for those.
            match latency.parse::<u64>() {
                Ok(us) => rec.committed(Duration::from_micros(us), 1),
                Err(_) => rec.failed(1),
            }
        }
    }
    anyhow::ensure!(files > 0, "pgbench left no log in {}", dir.display());
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_lock_in_key_order_and_name_the_hot_account() {
        let hot = script(Workload::Hot);
        assert!(hot.contains("then 1 else :other"));
        let uniform = script(Workload::Uniform);
        let lo = uniform.find("id = :lo FOR UPDATE").unwrap();
        let hi = uniform.find("id = :hi FOR UPDATE").unwrap();
        assert!(lo < hi);
    }
}
