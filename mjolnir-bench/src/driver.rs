//! The closed-loop load generator shared by the systems that the benchmark drives itself.
//!
//! Each simulated client runs one transfer at a time, back to back, for the warm-up and then
//! the measured window. A transfer counts when it *completes* inside the window, the same rule
//! that `systems::pgbench` applies to pgbench's log, so all systems are counted alike. The
//! queries benchmark (`queries.rs`) runs its reads and transactions through the same loop.

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

/// One simulated client of a benchmark other than the transfers: each step is one
/// operation (a read, a transaction), drawn from `rng`.
pub trait Job: Send + 'static {
    fn step(&mut self, rng: &mut StdRng) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

/// A [`Worker`] as a [`Job`]: each step a transfer between the accounts `workload` picks.
struct Transfers<W> {
    worker: W,
    workload: Workload,
}

impl<W: Worker> Job for Transfers<W> {
    async fn step(&mut self, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        let (a, b) = self.workload.pick(rng);
        self.worker.transfer(a, b).await
    }
}

/// Runs every worker concurrently for `window` and merges what they measured. The first
/// error of any worker ends the run: a benchmark that half failed measures nothing.
pub async fn drive<W: Worker>(
    workers: Vec<W>,
    workload: Workload,
    window: Window,
) -> anyhow::Result<Recorder> {
    let jobs = workers
        .into_iter()
        .map(|worker| Transfers { worker, workload })
        .collect();
    drive_jobs(jobs, window).await
}

/// Runs every job concurrently for `window`, one step at a time each, as [`drive`] runs
/// transfers, and merges what they measured.
pub async fn drive_jobs<J: Job>(jobs: Vec<J>, window: Window) -> anyhow::Result<Recorder> {
    let start = Instant::now();
    let from = start + window.warmup;
    let until = from + window.measure;
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|job| tokio::spawn(client_loop(job, from, until)))
        .collect();
    let mut total = Recorder::default();
    for task in tasks {
        total.merge(&task.await??);
    }
    Ok(total)
}

async fn client_loop<J: Job>(
    mut job: J,
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
        let outcome = job.step(&mut rng).await?;
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
