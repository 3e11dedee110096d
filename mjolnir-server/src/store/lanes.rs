//! Lanes: requests that arrive while the database is busy with earlier ones wait in a
//! queue, and a free lane takes everything queued (up to a limit) as one batch, so many
//! clients' requests share one statement's round trip, planning and fsync.
//!
//! Nothing waits on purpose: a request that finds a lane free runs at once, as a batch of
//! one. Batches form only while every lane is busy, which is exactly when sharing pays.
//! Used by commits (`batch.rs`) and reads (`read.rs`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// What runs the batches of one kind of request.
pub(super) trait Runner: Send + Sync + Sized + 'static {
    type Job: Send + 'static;
    fn lanes(&self) -> &Lanes<Self::Job>;
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
}

#[derive(Debug)]
struct Queue<J> {
    waiting: VecDeque<J>,
    /// Lanes running: each takes batches from `waiting` until it is empty.
    running: usize,
}

impl<J> Lanes<J> {
    /// At most `max_lanes` batches at once, each of at most `max_batch` jobs (both at least
    /// one); `batch_sizes` observes every batch and `busy` adds up the time they take.
    pub(super) fn new(
        max_lanes: usize,
        max_batch: usize,
        batch_sizes: Histogram,
        busy: Counter<f64, AtomicU64>,
    ) -> Lanes<J> {
        Lanes {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                running: 0,
            }),
            max_lanes: max_lanes.max(1),
            max_batch: max_batch.max(1),
            batch_sizes,
            busy,
        }
    }
}

/// Queues `job`, and starts a lane if fewer than the maximum run.
pub(super) fn push<R: Runner>(runner: &Arc<R>, job: R::Job) {
    let lanes = runner.lanes();
    let start = {
        let mut q = lanes.queue.lock().expect("lane queue");
        q.waiting.push_back(job);
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

/// Takes batches until the queue is empty.
async fn lane<R: Runner>(runner: Arc<R>) {
    let _guard = LaneGuard(runner.lanes());
    loop {
        let batch: Vec<R::Job> = {
            let lanes = runner.lanes();
            let mut q = lanes.queue.lock().expect("lane queue");
            if q.waiting.is_empty() {
                q.running -= 1;
                return;
            }
            let n = q.waiting.len().min(lanes.max_batch);
            q.waiting.drain(..n).collect()
        };
        runner.lanes().batch_sizes.observe(batch.len() as f64);
        let started = std::time::Instant::now();
        runner.clone().run(batch).await;
        runner.lanes().busy.inc_by(started.elapsed().as_secs_f64());
    }
}

/// Keeps the lane count right if a lane panics: the next request starts a new lane.
struct LaneGuard<'a, J>(&'a Lanes<J>);

impl<J> Drop for LaneGuard<'_, J> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(mut q) = self.0.queue.lock()
        {
            q.running = q.running.saturating_sub(1);
        }
    }
}
