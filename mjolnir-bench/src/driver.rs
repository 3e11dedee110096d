//! The closed-loop load generator shared by the systems that the benchmark drives itself.
//!
//! Each simulated client runs one transfer at a time, back to back, for the warm-up and then
//! the measured window. A transfer counts when it *completes* inside the window, the same rule
//! that `systems::pgbench` applies to pgbench's log, so all systems are counted alike.

use crate::stats::Recorder;
use crate::workload::Workload;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::future::Future;
use std::time::{Duration, Instant};

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (or found too little money and changed nothing) after this many attempts.
    Done { attempts: u64 },
    /// Gave up after this many conflicting attempts.
    GaveUp { attempts: u64 },
}

impl Outcome {
    pub fn attempts(self) -> u64 {
        match self {
            Outcome::Done { attempts } | Outcome::GaveUp { attempts } => attempts,
        }
    }
}

/// One simulated client of a system.
pub trait Worker: Send + 'static {
    /// Moves one unit from `from` to `to` if `from` has it, as one transaction.
    fn transfer(
        &mut self,
        from: i32,
        to: i32,
    ) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

/// The warm-up, then the measured window.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
}

/// Runs every worker concurrently for `window` and merges what they measured. The first
/// error of any worker ends the run: a benchmark that half failed measures nothing.
pub async fn drive<W: Worker>(
    workers: Vec<W>,
    workload: Workload,
    window: Window,
) -> anyhow::Result<Recorder> {
    let start = Instant::now();
    let from = start + window.warmup;
    let until = from + window.measure;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|worker| tokio::spawn(client_loop(worker, workload, from, until)))
        .collect();
    let mut total = Recorder::default();
    for task in tasks {
        total.merge(&task.await??);
    }
    Ok(total)
}

async fn client_loop<W: Worker>(
    mut worker: W,
    workload: Workload,
    from: Instant,
    until: Instant,
) -> anyhow::Result<Recorder> {
    let mut rng = StdRng::from_os_rng();
    let mut rec = Recorder::default();
    loop {
        let began = Instant::now();
        if began >= until {
            return Ok(rec);
        }
        let (a, b) = workload.pick(&mut rng);
        let outcome = worker.transfer(a, b).await?;
        let ended = Instant::now();
        if ended > until {
            // Begun in the window (the loop stops at its end) but finished after it: not
            // counted, but its attempts
            // still count for the starvation check, which would otherwise miss exactly the
            // transfers that retried longest.
            rec.straggler(outcome.attempts());
        }
        if ended < from || ended > until {
            continue;
        }
        match outcome {
            Outcome::Done { attempts } => rec.committed(ended - began, attempts),
            Outcome::GaveUp { attempts } => rec.failed(attempts),
        }
    }
}
