//! Lanes: requests that arrive while the database is busy with earlier ones wait in a
//! queue, and a free lane takes everything queued (up to a limit) as one batch, so many
//! clients' requests share one statement's round trip, planning and fsync.
//!
//! Nothing waits on purpose: a request that finds a lane free runs at once, as a batch of
//! one. Batches form only while every lane is busy, which is exactly when sharing pays.
//! Used by commits (`committer.rs`) and reads (`read.rs`).
//!
//! Jobs of one chain (a connection's commits, which must be decided in the order sent) are
//! taken in queue order and never run in two lanes at once: while a batch holding some of a
//! chain's jobs runs, the chain's later jobs stay queued, and the lane that ran it takes
//! them next.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// What runs the batches of one kind of request.
pub(super) trait Runner: Send + Sync + Sized + 'static {
    type Job: Send + 'static;
    fn lanes(&self) -> &Lanes<Self::Job>;
    /// The chain `job` keeps the order of, if any.
    fn chain(_job: &Self::Job) -> Option<u64> {
        None
    }
    /// Runs one batch, answering every job in it.
    fn run(self: Arc<Self>, batch: Vec<Self::Job>) -> impl Future<Output = ()> + Send;
}

#[derive(Debug)]
pub(super) struct Lanes<J> {
    queue: Mutex<Queue<J>>,
    max_lanes: usize,
    max_batch: usize,
    batch_sizes: Histogram,
    /// Seconds spent running batches, all lanes together: against the time elapsed, how
    /// near the lanes are to being the bottleneck.
    busy: Counter<f64, AtomicU64>,
    /// How many jobs wait in the queue.
    queued: Gauge,
}

#[derive(Debug)]
struct Queue<J> {
    waiting: VecDeque<J>,
    /// Lanes running: each takes batches from `waiting` until it is empty.
    running: usize,
    /// The chains with jobs in a running batch.
    busy: HashSet<u64>,
}

impl<J> Lanes<J> {
    /// At most `max_lanes` batches at once, each of at most `max_batch` jobs (both at least
    /// one); `batch_sizes` observes every batch, `busy` adds up the time they take and
    /// `queued` shows how many jobs wait.
    pub(super) fn new(
        max_lanes: usize,
        max_batch: usize,
        batch_sizes: Histogram,
        busy: Counter<f64, AtomicU64>,
        queued: Gauge,
    ) -> Lanes<J> {
        Lanes {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                running: 0,
                busy: HashSet::new(),
            }),
            max_lanes: max_lanes.max(1),
            max_batch: max_batch.max(1),
            batch_sizes,
            busy,
            queued,
        }
    }
}

/// Queues `job`, and starts a lane if fewer than the maximum run.
pub(super) fn push<R: Runner>(runner: &Arc<R>, job: R::Job) {
    let lanes = runner.lanes();
    let start = {
        let mut q = lanes.queue.lock().expect("lane queue");
        q.waiting.push_back(job);
        lanes.queued.set(q.waiting.len() as i64);
        let start = q.running < lanes.max_lanes;
        if start {
            q.running += 1;
        }
        start
    };
    if start {
        tokio::spawn(lane(runner.clone()));
    }
}

/// Takes batches until nothing it may take is queued.
async fn lane<R: Runner>(runner: Arc<R>) {
    let _guard = LaneGuard(runner.lanes());
    loop {
        let (batch, chains) = {
            let lanes = runner.lanes();
            let mut q = lanes.queue.lock().expect("lane queue");
            let (batch, chains) = take::<R>(&mut q, lanes.max_batch);
            lanes.queued.set(q.waiting.len() as i64);
            if batch.is_empty() {
                // Whatever is left belongs to chains another lane runs; that lane takes it.
                q.running -= 1;
                return;
            }
            (batch, chains)
        };
        runner.lanes().batch_sizes.observe(batch.len() as f64);
        let started = std::time::Instant::now();
        runner.clone().run(batch).await;
        runner.lanes().busy.inc_by(started.elapsed().as_secs_f64());
        let mut q = runner.lanes().queue.lock().expect("lane queue");
        for chain in chains {
            q.busy.remove(&chain);
        }
    }
}

/// The next batch: up to `max` queued jobs in order, skipping those of chains another lane
/// runs; their chains are marked busy and returned.
fn take<R: Runner>(q: &mut Queue<R::Job>, max: usize) -> (Vec<R::Job>, Vec<u64>) {
    let mut batch = Vec::new();
    let mut chains = Vec::new();
    let mut left = VecDeque::new();
    while let Some(job) = q.waiting.pop_front() {
        if batch.len() == max {
            left.push_back(job);
            left.append(&mut q.waiting);
            break;
        }
        match R::chain(&job) {
            Some(chain) if q.busy.contains(&chain) => {
                left.push_back(job);
            }
            chain => {
                if let Some(chain) = chain
                    && !chains.contains(&chain)
                {
                    chains.push(chain);
                }
                batch.push(job);
            }
        }
    }
    q.waiting = left;
    q.busy.extend(chains.iter().copied());
    (batch, chains)
}

/// Keeps the lane count right if a lane panics: the next request starts a new lane.
struct LaneGuard<'a, J>(&'a Lanes<J>);

impl<J> Drop for LaneGuard<'_, J> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(mut q) = self.0.queue.lock()
        {
            q.running = q.running.saturating_sub(1);
            // The panicking batch's chains are lost; the next request starts a lane.
            q.busy.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chained(Lanes<(Option<u64>, u32)>);

    impl Runner for Chained {
        type Job = (Option<u64>, u32);
        fn lanes(&self) -> &Lanes<Self::Job> {
            &self.0
        }
        fn chain(job: &Self::Job) -> Option<u64> {
            job.0
        }
        async fn run(self: Arc<Self>, _batch: Vec<Self::Job>) {}
    }

    fn queue(jobs: &[(Option<u64>, u32)]) -> Queue<(Option<u64>, u32)> {
        Queue {
            waiting: jobs.iter().copied().collect(),
            running: 0,
            busy: HashSet::new(),
        }
    }

    fn ids(jobs: &[(Option<u64>, u32)]) -> Vec<u32> {
        jobs.iter().map(|j| j.1).collect()
    }

    #[test]
    fn a_chain_runs_in_one_lane_at_a_time_in_queue_order() {
        let mut q = queue(&[(Some(1), 1), (None, 2), (Some(2), 3), (Some(1), 4)]);
        let (batch, chains) = take::<Chained>(&mut q, 2);
        assert_eq!((ids(&batch), chains), (vec![1, 2], vec![1]));
        // Chain 1 runs: its next job waits, others go on.
        let (batch, chains) = take::<Chained>(&mut q, 8);
        assert_eq!((ids(&batch), chains), (vec![3], vec![2]));
        let (batch, _) = take::<Chained>(&mut q, 8);
        assert!(batch.is_empty());
        assert_eq!(ids(&q.waiting.iter().copied().collect::<Vec<_>>()), vec![4]);
        // Chain 1's batch ends: its job is taken.
        q.busy.remove(&1);
        let (batch, chains) = take::<Chained>(&mut q, 8);
        assert_eq!((ids(&batch), chains), (vec![4], vec![1]));
    }
}
