//! The order of one connection's commits.
//!
//! A page pipelines its transactions: it sends a commit while its earlier ones are in
//! flight, and a later one may depend on an earlier one's writes (`Dependency`). So the
//! commits of one connection are decided in the order they were sent, and answered in
//! that order. Each commit takes a [`Turn`] from its connection's [`Sequence`], and
//! follows the stages its predecessor reached:
//! - a commit that goes to the lanes enters the queue once its predecessor is there
//!   ([`Stage::Queued`]): the lanes take the queue in order and never run two batches of
//!   one connection side by side (`lanes.rs`), so the predecessor is decided in an earlier
//!   batch or earlier in the same one;
//! - a commit that does not (read-only, or group commit off) runs once its predecessor is
//!   decided ([`Stage::Decided`]);
//! - a reply is sent once the predecessor's was ([`Stage::Answered`]).
//!
//! A turn dropped before reaching a stage (its commit was refused, or its task ended)
//! lets its successor go on: a receiver whose sender is gone stops waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

/// Numbers sequences, so that a batch can tell which of its transactions share one.
static SEQUENCES: AtomicU64 = AtomicU64::new(0);

/// How far a commit has got, in the order its successor waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Not yet in the lanes' queue, nor decided.
    Waiting,
    /// In the lanes' queue, behind its predecessors.
    Queued,
    /// Decided: its outcome is known (and applied, if it committed).
    Decided,
    /// Its reply is in the connection's outgoing queue.
    Answered,
}

/// The commits of one connection, in the order they arrived.
#[derive(Debug)]
pub struct Sequence {
    id: u64,
    last: Option<watch::Receiver<Stage>>,
}

impl Default for Sequence {
    fn default() -> Sequence {
        Sequence {
            id: SEQUENCES.fetch_add(1, Ordering::Relaxed),
            last: None,
        }
    }
}

impl Sequence {
    pub fn new() -> Sequence {
        Sequence::default()
    }

    /// The turn of the next commit: after every commit handed out before it.
    pub fn take(&mut self) -> Turn {
        let (mine, rx) = watch::channel(Stage::Waiting);
        Turn {
            chain: self.id,
            before: self.last.replace(rx),
            mine,
        }
    }
}

/// One commit's place in its connection's order.
#[derive(Debug)]
pub struct Turn {
    /// Which sequence this turn is of.
    chain: u64,
    /// The stage of the commit sent just before, if any.
    before: Option<watch::Receiver<Stage>>,
    mine: watch::Sender<Stage>,
}

impl Turn {
    /// The sequence this turn is of: the same for every commit of one connection.
    pub fn chain(&self) -> u64 {
        self.chain
    }

    /// Waits until the commit sent before this one has reached `stage` (or ended).
    pub async fn after(&self, stage: Stage) {
        if let Some(before) = &self.before {
            let mut before = before.clone();
            let _ = before.wait_for(|s| *s >= stage).await;
        }
    }

    /// Records that this commit has reached `stage`, for the one sent after it, once the
    /// one before it has too: a stage reached says the same of every commit before, so a
    /// commit answered ahead of its turn (a known conflict, a refusal) holds up its
    /// successors as its predecessor would.
    pub async fn reach(&self, stage: Stage) {
        self.after(stage).await;
        self.mine.send_if_modified(|s| {
            let later = stage > *s;
            if later {
                *s = stage;
            }
            later
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn waits(turn: &Turn, stage: Stage) -> bool {
        tokio::time::timeout(Duration::from_millis(20), turn.after(stage))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn a_turn_follows_its_predecessor_stage_by_stage() {
        let mut seq = Sequence::new();
        let first = seq.take();
        let second = seq.take();
        let third = seq.take();
        assert!(
            !waits(&first, Stage::Answered).await,
            "the first follows nothing"
        );
        assert!(waits(&second, Stage::Queued).await);
        first.reach(Stage::Queued).await;
        assert!(!waits(&second, Stage::Queued).await);
        assert!(waits(&second, Stage::Decided).await);
        // Stages only move forward.
        first.reach(Stage::Decided).await;
        first.reach(Stage::Queued).await;
        assert!(!waits(&second, Stage::Decided).await);
        assert!(waits(&second, Stage::Answered).await);
        // A stage is reached only once the one before has reached it.
        let early = tokio::spawn(async move {
            second.reach(Stage::Answered).await;
            second
        });
        assert!(waits(&third, Stage::Queued).await);
        first.reach(Stage::Answered).await;
        let second = early.await.unwrap();
        assert!(!waits(&third, Stage::Answered).await);
        // A turn that ends early lets the next go on.
        let fourth = seq.take();
        drop((first, second, third));
        assert!(!waits(&fourth, Stage::Answered).await);
    }
}
