//! Where a run spends the machine's cores: the CPU time of PostgreSQL, of the server under
//! test and of the load generator during the measured window, from `/proc`, per committed
//! transfer.
//!
//! On this benchmark's machines every process shares the same few cores, so a system that
//! needs more CPU per transfer in total commits fewer transfers per second, whatever its
//! design. The split shows which part of the stack the difference comes from.
//!
//! For Mjölnir it also reads how busy the server's commit lanes were (its
//! `mjolnir_commit_lane_busy_seconds_total`): near 100 %, the lane, not the cores, sets the rate.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`): 100 on every Linux ABI this
/// runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time per committed transfer, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerTransfer {
    /// Every PostgreSQL process: backends, the WAL writer and the rest.
    pub postgres: f64,
    /// The server under test (Mjölnir or the endpoint); 0 for pgbench, which has none.
    pub server: f64,
    /// The load generator: this process and its children (pgbench runs as one).
    pub client: f64,
}

/// The processes to account for.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// The postmaster: it and its children are PostgreSQL.
    pub postgres: Option<u32>,
    pub server: Option<u32>,
}

/// A Mjölnir server's Prometheus endpoint, for its lanes' busy time.
#[derive(Clone, Debug)]
pub struct Lanes {
    pub metrics_url: String,
}

impl Lanes {
    /// Seconds the commit lanes have been busy so far; `None` if the server did not say.
    async fn busy_seconds(&self) -> Option<f64> {
        let text = reqwest::get(&self.metrics_url)
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("mjolnir_commit_lane_busy_seconds_total "))?
            .trim()
            .parse()
            .ok()
    }
}

/// Clock ticks used so far, by part.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    postgres: u64,
    server: u64,
    client: u64,
}

impl Probe {
    /// Samples at the start and at the end of the measured window, which begins `warmup`
    /// from now and lasts `measure`. `None` if `/proc` could not be read.
    /// With `lanes`, the share of the window the commit lanes were busy too.
    pub fn spawn(
        self,
        lanes: Option<Lanes>,
        warmup: Duration,
        measure: Duration,
    ) -> tokio::task::JoinHandle<Option<Used>> {
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let start = self.sample()?;
            let busy_start = match &lanes {
                Some(l) => l.busy_seconds().await,
                None => None,
            };
            let began = tokio::time::Instant::now();
            tokio::time::sleep(measure).await;
            let end = self.sample()?;
            let busy_end = match &lanes {
                Some(l) => l.busy_seconds().await,
                None => None,
            };
            let elapsed = began.elapsed().as_secs_f64();
            Some(Used {
                postgres: end.postgres.saturating_sub(start.postgres),
                server: end.server.saturating_sub(start.server),
                client: end.client.saturating_sub(start.client),
                lane_busy: busy_start
                    .zip(busy_end)
                    .map(|(a, b)| (b - a).max(0.0) / elapsed),
            })
        })
    }

    fn sample(&self) -> Option<Sample> {
        let me = std::process::id();
        let stats = all_stats();
        let tree = |root: u32| -> u64 {
            // A process's own time, the time of children it has reaped, and its live
            // children's own time: a backend that exits in the window moves from the last
            // to the second, and counts once either way.
            let Some(own) = stats.iter().find(|s| s.pid == root) else {
                return 0;
            };
            own.ticks
                + own.reaped
                + stats
                    .iter()
                    .filter(|s| s.ppid == root)
                    .map(|s| s.ticks)
                    .sum::<u64>()
        };
        if !stats.iter().any(|s| s.pid == me) {
            return None;
        }
        Some(Sample {
            postgres: self.postgres.map_or(0, tree),
            server: self
                .server
                .and_then(|pid| stats.iter().find(|s| s.pid == pid))
                .map_or(0, |s| s.ticks),
            client: tree(me),
        })
    }
}

/// The CPU time the probed processes have used so far: two of them measure a stretch of
/// work that is not a fixed window (the live queries benchmark's commits, `live.rs`).
#[derive(Clone, Copy, Debug)]
pub struct Mark(Sample);

impl Probe {
    /// `None` if `/proc` could not be read.
    pub fn mark(&self) -> Option<Mark> {
        self.sample().map(Mark)
    }
}

impl Mark {
    /// What was used between `earlier` and this mark.
    pub fn since(&self, earlier: &Mark) -> Used {
        Used {
            postgres: self.0.postgres.saturating_sub(earlier.0.postgres),
            server: self.0.server.saturating_sub(earlier.0.server),
            client: self.0.client.saturating_sub(earlier.0.client),
            lane_busy: None,
        }
    }
}

/// Clock ticks used in the window, by part.
#[derive(Clone, Copy, Debug)]
pub struct Used {
    postgres: u64,
    server: u64,
    client: u64,
    /// Lane-seconds of commit batches per second of the window.
    pub lane_busy: Option<f64>,
}

impl Used {
    /// Per committed transfer; `None` if none committed.
    pub fn per_transfer(&self, committed: u64) -> Option<PerTransfer> {
        if committed == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)] // tick and transfer counts far below 2^52
        let us = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / committed as f64;
        Some(PerTransfer {
            postgres: us(self.postgres),
            server: us(self.server),
            client: us(self.client),
        })
    }
}

/// What `/proc/PID/stat` says of one process.
#[derive(Debug, PartialEq)]
struct Stat {
    pid: u32,
    ppid: u32,
    /// utime + stime, all threads.
    ticks: u64,
    /// cutime + cstime: children it has waited for.
    reaped: u64,
}

fn all_stats() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        e.file_name().to_str()?.parse::<u32>().ok()?;
        parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?)
    })
    .collect()
}

/// Parses one `/proc/PID/stat` line. The command name (field 2) is in parentheses and may
/// hold spaces and parentheses itself, so the fields are counted from its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let pid = line.split_once(' ')?.0.parse().ok()?;
    let rest = &line[line.rfind(')')? + 2..];
    // rest starts at field 3 (state): field n is rest[n - 3].
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        pid,
        ppid: u32::try_from(num(4)?).ok()?,
        ticks: num(14)? + num(15)?,
        reaped: num(16)? + num(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name() {
        let line = "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 31 7 3 20 0 1 0 123 4096 100 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                pid: 4242,
                ppid: 17,
                ticks: 281,
                reaped: 10,
            })
        );
    }

    #[test]
    fn this_process_uses_cpu_and_is_its_own_client() {
        let probe = Probe {
            postgres: None,
            server: Some(std::process::id()),
        };
        let before = probe.sample().expect("/proc is readable");
        // Spin until a clock tick (10 ms of CPU) shows, however busy the machine: a fixed
        // spell of wall time may get less CPU than one tick.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after.client == before.client && t.elapsed() < Duration::from_secs(10) {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(31).wrapping_add(1);
            }
            after = probe.sample().unwrap();
        }
        std::hint::black_box(x);
        assert!(after.client > before.client, "{before:?} → {after:?}");
        assert!(after.server > before.server);
        assert_eq!(after.postgres, 0);
        let used = Used {
            postgres: 0,
            server: 0,
            client: 10,
            lane_busy: None,
        };
        let per = used.per_transfer(1000).unwrap();
        assert!(
            (per.client - 100.0).abs() < 1e-9,
            "10 ticks over 1,000 transfers: 100 µs each"
        );
        assert!(used.per_transfer(0).is_none());
    }
}
