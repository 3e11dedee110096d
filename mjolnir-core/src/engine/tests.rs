//! The engine against a simulated server and network, under random interleavings.
//!
//! The server here is a model, not Mjölnir's: it validates read versions, applies writes,
//! remembers committed txn ids (so a re-sent commit is answered, not applied twice),
//! subscribes the connection to what it reads and pushes changes. The network delivers
//! each direction in order, drops what is in flight when the connection breaks (a message
//! to the server may or may not have been processed), and the test plays the adapter:
//! it runs handlers, keeps and reverts their effects, settles their promises and fires
//! timers.

use super::*;
use crate::protocol::{Entry, ServerMessage};
use crate::{ClientMessage, Key, Pk, Query, TxnId, Version};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const KEYS: u64 = 5;

fn key(i: u64) -> Key {
    Key::kv(format!("k{i}"))
}

/// A handler of the test page.
#[derive(Clone, Debug)]
enum Handler {
    /// Adds one to a counter.
    Increment(u64),
    /// Moves one from a counter to another (reads both).
    Move(u64, u64),
    /// Reads a counter and throws: the app's own error.
    Throw(u64),
    /// Reads a counter, writes nothing: a read-only transaction (of a pending value, if
    /// one is in flight).
    Peek(u64),
    /// Touches nothing of the server's: done at once.
    Local,
}

#[derive(Clone, Debug)]
enum Step {
    Call(Handler),
    /// Calls a handler whose every attempt also changes one of the page's few effects (a
    /// DOM node, a state entry): where undo order matters.
    CallTouching(Handler, u64),
    /// Delivers the oldest message to the server.
    ToServer,
    /// Delivers the oldest message to the client.
    ToClient,
    /// Another client adds one to a counter.
    Other(u64),
    /// The connection breaks; `processed` says whether each message in flight to the
    /// server got there anyway.
    Disconnect(Vec<bool>),
    Reconnect,
    FireTimer,
}

#[derive(Debug, Default)]
struct Server {
    db: BTreeMap<Key, (Version, Value)>,
    version: u64,
    committed: BTreeMap<TxnId, Version>,
    subscribed: BTreeSet<Key>,
    applied: Vec<TxnId>,
}

impl Server {
    fn entry(&self, k: &Key) -> Entry {
        match self.db.get(k) {
            Some((v, value)) => Entry {
                key: k.clone(),
                version: *v,
                value: Some(value.clone()),
            },
            None => Entry {
                key: k.clone(),
                version: Version::ABSENT,
                value: None,
            },
        }
    }

    fn current(&self, k: &Key) -> Version {
        self.db.get(k).map_or(Version::ABSENT, |(v, _)| *v)
    }

    /// Applies `writes` at a new version; returns the push for the connection, if any.
    fn apply(&mut self, writes: &crate::WriteSet) -> (Version, Option<ServerMessage>) {
        self.version += 1;
        let version = Version(self.version);
        let mut changes = Vec::new();
        for (k, op) in writes.iter() {
            let before = self.db.get(k).map(|(_, v)| v.clone());
            match op.apply(before.as_ref()) {
                Some(v) => {
                    self.db.insert(k.clone(), (version, v));
                }
                None => {
                    self.db.remove(k);
                }
            }
            if self.subscribed.contains(k) {
                changes.push(self.entry(k));
            }
        }
        let push = (!changes.is_empty()).then_some(ServerMessage::Push { version, changes });
        (version, push)
    }

    fn handle(&mut self, msg: ClientMessage) -> Vec<ServerMessage> {
        match msg {
            ClientMessage::Read { id, keys } => {
                self.subscribed.extend(keys.iter().cloned());
                let entries = keys.iter().map(|k| self.entry(k)).collect();
                vec![ServerMessage::Values { id, entries }]
            }
            ClientMessage::Unsubscribe { keys } => {
                for k in &keys {
                    self.subscribed.remove(k);
                }
                vec![]
            }
            ClientMessage::Commit {
                txn,
                reads,
                writes,
                deps,
                follows,
                ..
            } => {
                if txn.0.is_empty() {
                    let error =
                        crate::protocol::ErrorReply::new(crate::ErrorKind::Malformed, "no txn id");
                    return vec![ServerMessage::Rejected { txn, error }];
                }
                if let Some(version) = self.committed.get(&txn) {
                    return vec![ServerMessage::Committed {
                        txn,
                        version: *version,
                    }];
                }
                // Decided only if the commit it follows committed.
                if follows.is_some_and(|t| !self.committed.contains_key(&t)) {
                    return vec![ServerMessage::Conflict { txn, stale: vec![] }];
                }
                let mut stale: Vec<Entry> = reads
                    .iter()
                    .filter(|(k, v)| self.current(k) != *v)
                    .map(|(k, _)| self.entry(k))
                    .collect();
                // A dependency holds if its transaction committed, nothing wrote the key
                // since, and the key holds the value read.
                for d in &deps {
                    let holds = self.committed.get(&d.after).is_some_and(|v| {
                        *v == self.current(&d.key) && self.entry(&d.key).value == d.value
                    });
                    if !holds {
                        stale.push(self.entry(&d.key));
                    }
                }
                if !stale.is_empty() {
                    return vec![ServerMessage::Conflict { txn, stale }];
                }
                let (version, push) = self.apply(&writes);
                self.committed.insert(txn.clone(), version);
                self.applied.push(txn.clone());
                let mut out = vec![ServerMessage::Committed { txn, version }];
                out.extend(push);
                out
            }
            ClientMessage::Hello { .. } => vec![],
        }
    }
}

/// The test as the engine's adapter.
struct Page {
    engine: Engine,
    server: Server,
    up: VecDeque<ClientMessage>,
    down: VecDeque<ServerMessage>,
    open: bool,
    handlers: BTreeMap<JobId, Handler>,
    /// The page effect each job's attempts change, if any.
    touches: BTreeMap<JobId, u64>,
    /// Per page effect, the jobs whose attempts changed it and are still on the page,
    /// oldest first: an undo must always take the top one.
    stacks: BTreeMap<u64, Vec<JobId>>,
    released: BTreeSet<JobId>,
    /// Jobs whose last attempt's effects are on the page.
    effects: BTreeSet<JobId>,
    /// Every attempt's effects in the order they were made, for checking that undo goes
    /// latest first.
    applied: Vec<JobId>,
    settled: BTreeMap<JobId, Result<Option<Version>, Failure>>,
    timers: VecDeque<JobId>,
    committed_events: Vec<TxnId>,
    /// Adds by other clients, per counter.
    others: BTreeMap<Key, i64>,
}

impl Page {
    fn new(capacity: usize) -> Page {
        let mut page = Page {
            engine: Engine::new("p".into(), capacity, 7),
            server: Server::default(),
            up: VecDeque::new(),
            down: VecDeque::new(),
            open: true,
            handlers: BTreeMap::new(),
            touches: BTreeMap::new(),
            stacks: BTreeMap::new(),
            released: BTreeSet::new(),
            effects: BTreeSet::new(),
            applied: Vec::new(),
            settled: BTreeMap::new(),
            timers: VecDeque::new(),
            committed_events: Vec::new(),
            others: BTreeMap::new(),
        };
        page.engine.welcome();
        page.drain();
        page
    }

    fn drain(&mut self) {
        while let Some(action) = self.engine.poll() {
            match action {
                Action::Send(msg) => {
                    if self.open {
                        self.up.push_back(msg);
                    }
                }
                Action::Run(job) => self.run(job),
                Action::Keep(job) => assert!(self.effects.contains(&job)),
                Action::Revert(job) => {
                    assert!(self.effects.remove(&job), "{job:?} reverted twice");
                    // Undo goes latest first: whatever was applied after this job's
                    // effects and is still on the page is kept for good (settled).
                    let at = self.applied.iter().rposition(|j| *j == job).unwrap();
                    for later in &self.applied[at + 1..] {
                        assert!(
                            !self.effects.contains(later) || self.settled.contains_key(later),
                            "{job:?} undone before {later:?}, applied after it"
                        );
                    }
                    self.applied.remove(at);
                    if let Some(effect) = self.touches.get(&job) {
                        let stack = self.stacks.get_mut(effect).unwrap();
                        assert_eq!(
                            stack.pop(),
                            Some(job),
                            "{job:?} undone under a later change of effect {effect}"
                        );
                    }
                }
                Action::Release(job) => {
                    assert!(self.released.insert(job), "{job:?} released twice");
                    assert!(
                        self.settled.contains_key(&job),
                        "{job:?} released unsettled"
                    );
                }
                Action::Wake(job, _) => self.timers.push_back(job),
                Action::Settle(job, result) => {
                    let again = self.settled.insert(job, result.clone());
                    assert!(again.is_none(), "{job:?} settled twice");
                    if result.is_err() {
                        assert!(!self.effects.contains(&job), "{job:?} failed but kept");
                    }
                }
                Action::Committed { txn, .. } => self.committed_events.push(txn),
                Action::Changed(_) | Action::Conflicted { .. } | Action::Fetched(..) => {}
                Action::Warn(w) => panic!("warning: {w}; server applied {:?}", self.server.applied),
            }
        }
    }

    /// Runs an attempt of `job`, as a handler would, and reports its end.
    fn run(&mut self, job: JobId) {
        // A re-run replaces the last attempt's effects, which the engine reverted.
        assert!(
            !self.effects.contains(&job),
            "{job:?} re-run over its effects"
        );
        assert!(
            !self.released.contains(&job),
            "{job:?} run after its release"
        );
        let handler = self.handlers[&job].clone();
        let mut a = self.engine.begin(job);
        // Every attempt changes the page (its DOM, its state) as it runs.
        self.effects.insert(job);
        self.applied.push(job);
        if let Some(effect) = self.touches.get(&job) {
            a.touch([*effect]);
            self.stacks.entry(*effect).or_default().push(job);
        }
        let count = |r: crate::Read| match r {
            crate::Read::Value(v) => Some(v.and_then(|v| v.as_i64()).unwrap_or(0)),
            crate::Read::Miss => None,
        };
        let ended = match handler {
            Handler::Increment(k) => {
                if let Some(n) = count(a.read(key(k))) {
                    a.put(key(k), json!(n + 1));
                }
                Ended::Returned
            }
            Handler::Move(from, to) => {
                if let (Some(f), Some(t)) = (count(a.read(key(from))), count(a.read(key(to)))) {
                    a.put(key(from), json!(f - 1));
                    a.put(key(to), json!(t + 1));
                }
                Ended::Returned
            }
            Handler::Peek(k) => {
                let _ = a.read(key(k));
                Ended::Returned
            }
            Handler::Throw(k) => {
                let _ = a.read(key(k));
                Ended::Threw
            }
            Handler::Local => Ended::Returned,
        };
        self.engine.finish(job, a, ended);
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Call(h) => self.call(h, None),
            Step::CallTouching(h, effect) => self.call(h, Some(effect)),
            Step::ToServer => {
                if let Some(msg) = self.up.pop_front() {
                    if std::env::var("TRACE").is_ok() {
                        eprintln!("-> {}", msg.to_json());
                    }
                    let replies = self.server.handle(msg);
                    self.down.extend(replies);
                }
            }
            Step::ToClient => {
                if let Some(msg) = self.down.pop_front() {
                    self.engine.receive(&msg.to_json());
                }
            }
            Step::Other(k) => {
                let mut writes = crate::WriteSet::default();
                let n = self
                    .server
                    .db
                    .get(&key(k))
                    .and_then(|(_, v)| v.as_i64())
                    .unwrap_or(0);
                writes.push(
                    key(k),
                    crate::WriteOp::Put {
                        value: json!(n + 1),
                    },
                );
                let (_, push) = self.server.apply(&writes);
                if self.open {
                    self.down.extend(push);
                }
                *self.others.entry(key(k)).or_default() += 1;
            }
            Step::Disconnect(processed) => {
                if self.open {
                    self.open = false;
                    for (msg, got_there) in self
                        .up
                        .drain(..)
                        .zip(processed.into_iter().chain(std::iter::repeat(false)))
                    {
                        if got_there {
                            let _ = self.server.handle(msg);
                        }
                    }
                    self.down.clear();
                    self.server.subscribed.clear();
                }
            }
            Step::Reconnect => {
                if !self.open {
                    self.open = true;
                    self.engine.welcome();
                }
            }
            Step::FireTimer => {
                if let Some(job) = self.timers.pop_front() {
                    self.engine.wake(job);
                }
            }
        }
        self.drain();
    }

    fn call(&mut self, h: Handler, effect: Option<u64>) {
        // The handler is known before `call` returns, as in the browser.
        let next = JobId(self.handlers.len() as u64 + 1);
        self.handlers.insert(next, h);
        if let Some(effect) = effect {
            self.touches.insert(next, effect);
        }
        let job = self.engine.call(Kind::Sync);
        assert_eq!(job, next);
    }

    /// Delivers everything and fires every timer until nothing moves.
    fn quiesce(&mut self) {
        self.step(Step::Reconnect);
        for _ in 0..100_000 {
            if self.up.is_empty() && self.down.is_empty() && self.timers.is_empty() {
                return;
            }
            self.step(Step::ToServer);
            self.step(Step::ToClient);
            if self.up.is_empty() && self.down.is_empty() {
                self.step(Step::FireTimer);
            }
        }
        panic!("the page never settled");
    }
}

fn handler() -> impl Strategy<Value = Handler> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Handler::Increment),
        2 => (0..KEYS, 0..KEYS).prop_filter("two keys", |(a, b)| a != b).prop_map(|(a, b)| Handler::Move(a, b)),
        1 => (0..KEYS).prop_map(Handler::Throw),
        1 => (0..KEYS).prop_map(Handler::Peek),
        1 => Just(Handler::Local),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => handler().prop_map(Step::Call),
        2 => (handler(), 0..3u64).prop_map(|(h, e)| Step::CallTouching(h, e)),
        6 => Just(Step::ToServer),
        6 => Just(Step::ToClient),
        1 => (0..KEYS).prop_map(Step::Other),
        1 => prop::collection::vec(any::<bool>(), 0..4).prop_map(Step::Disconnect),
        1 => Just(Step::Reconnect),
        1 => Just(Step::FireTimer),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_interleaving_settles_to_the_database(
        steps in prop::collection::vec(step(), 0..120),
        capacity in prop_oneof![Just(2usize), Just(100)],
    ) {
        let mut page = Page::new(capacity);
        page.engine.set_policy(crate::RetryPolicy { max_attempts: 1000, ..Default::default() });
        for s in steps {
            page.step(s);
        }
        page.quiesce();

        // Every call settled exactly once (asserted as they settle), and nothing waits.
        prop_assert_eq!(page.settled.len(), page.handlers.len());
        prop_assert_eq!(page.engine.pending(), 0);
        // And every job was released once nothing could run it again.
        prop_assert_eq!(page.released.len(), page.handlers.len());
        // No transaction was applied twice.
        let applied: BTreeSet<_> = page.server.applied.iter().collect();
        prop_assert_eq!(applied.len(), page.server.applied.len());
        // What the page kept is exactly what committed or was done: a failed job's
        // effects are gone.
        let kept: BTreeSet<JobId> = page.settled.iter().filter(|(_, r)| r.is_ok()).map(|(j, _)| *j).collect();
        prop_assert_eq!(&page.effects, &kept);
        // Only the app's own errors fail (the policy allows enough retries).
        for (job, result) in &page.settled {
            match (&page.handlers[job], result) {
                (Handler::Throw(_), Err(Failure::Threw)) => {}
                (Handler::Throw(_), other) => prop_assert!(false, "a throwing handler ended {:?}", other),
                (Handler::Local, Ok(None)) => {}
                (_, Ok(Some(_))) => {}
                (h, other) => prop_assert!(false, "{:?} ended {:?}", h, other),
            }
        }
        prop_assert_eq!(page.committed_events.len(), page.server.applied.len());
        // The committed effects equal a serial run: every counter is what the page's
        // committed handlers and the other clients added up to.
        let mut expected: BTreeMap<Key, i64> = page.others.clone();
        for (job, result) in &page.settled {
            if let Ok(Some(_)) = result {
                match page.handlers[job] {
                    Handler::Increment(k) => *expected.entry(key(k)).or_default() += 1,
                    Handler::Move(a, b) => {
                        *expected.entry(key(a)).or_default() -= 1;
                        *expected.entry(key(b)).or_default() += 1;
                    }
                    _ => {}
                }
            }
        }
        for i in 0..KEYS {
            let db = page.server.db.get(&key(i)).and_then(|(_, v)| v.as_i64()).unwrap_or(0);
            prop_assert_eq!(db, expected.get(&key(i)).copied().unwrap_or(0), "counter {}", i);
        }
        // The page's cache equals the database for every key it holds.
        for k in page.engine.cache().keys() {
            let cached = page.engine.cache().get(&k).cloned().unwrap();
            let entry = page.server.entry(&k);
            prop_assert_eq!(cached.version, entry.version, "{:?}", k);
            prop_assert_eq!(cached.value, entry.value, "{:?}", k);
        }
    }
}

#[test]
fn a_read_outside_a_transaction_loads_once_and_then_hits() {
    let mut page = Page::new(100);
    assert_eq!(page.engine.peek(&key(1)), None);
    assert_eq!(page.engine.peek(&key(1)), None);
    page.drain();
    assert_eq!(page.up.len(), 1, "asked for once");
    page.quiesce();
    assert_eq!(page.engine.peek(&key(1)), Some(None));
}

#[test]
fn pipelined_handlers_show_at_once_and_a_refusal_cascades_in_reverse() {
    let mut page = Page::new(100);
    page.step(Step::Call(Handler::Increment(0)));
    page.quiesce(); // the miss is fetched, the commit sent and answered
    assert_eq!(page.engine.peek(&key(0)), Some(Some(json!(1))));

    // Five clicks with nothing delivered: each runs at once on the one before.
    for _ in 0..5 {
        page.step(Step::Call(Handler::Increment(0)));
    }
    assert_eq!(page.engine.peek(&key(0)), Some(Some(json!(6))));
    assert!(page.engine.is_pending(&key(0)));
    let sent: Vec<ClientMessage> = page.up.iter().cloned().collect();
    assert_eq!(sent.len(), 5, "five commits in flight: {sent:?}");
    for (n, msg) in sent.iter().enumerate() {
        let ClientMessage::Commit {
            txn,
            reads,
            deps,
            follows,
            ..
        } = msg
        else {
            panic!("a commit")
        };
        assert_eq!(txn.0, format!("p:{}", n + 2));
        if n == 0 {
            assert_eq!(reads.len(), 1, "the first reads the committed version");
            assert!(deps.is_empty() && follows.is_none());
        } else {
            assert!(reads.is_empty());
            let before = TxnId(format!("p:{}", n + 1));
            assert_eq!(deps[0].after, before, "reads the one before");
            assert_eq!(deps[0].value, Some(json!(n + 1)));
            assert_eq!(follows.as_ref(), Some(&before));
        }
    }

    // The first commits; the second is refused (as if for a permission it lacks).
    page.step(Step::ToServer);
    page.step(Step::ToClient);
    page.step(Step::ToClient); // its push
    let Some(ClientMessage::Commit { txn, .. }) = page.up.pop_front() else {
        panic!("the second commit")
    };
    let refusal = ServerMessage::Rejected {
        txn,
        error: crate::protocol::ErrorReply::new(crate::ErrorKind::Forbidden, "no"),
    };
    page.engine.receive(&refusal.to_json());
    page.drain(); // the harness checks that undo went latest first
    assert!(matches!(page.settled[&JobId(3)], Err(Failure::Rejected(_))));
    // The later three ran again on top of the first: 2 + 3 = 5 on the page.
    assert_eq!(page.engine.peek(&key(0)), Some(Some(json!(5))));

    page.quiesce(); // their first sends are refused by the server (they follow the refused)
    assert_eq!(page.server.db[&key(0)].1, json!(5));
    assert_eq!(page.engine.pending(), 0);
    assert!(!page.engine.is_pending(&key(0)));
    for job in [2, 4, 5, 6] {
        assert!(
            matches!(page.settled[&JobId(job)], Ok(Some(_))),
            "job {job}"
        );
    }
}

/// A read-only handler that reads only what an in-flight transaction of the page wrote is
/// still a transaction: validated by a commit with a dependency, under a txn id of its own.
#[test]
fn a_read_of_a_pending_write_alone_is_committed_under_its_own_id() {
    let mut page = Page::new(100);
    page.step(Step::Call(Handler::Increment(0)));
    page.quiesce();
    page.step(Step::Call(Handler::Increment(0))); // in flight
    page.step(Step::Call(Handler::Peek(0)));
    let Some(ClientMessage::Commit { txn, deps, .. }) = page.up.back().cloned() else {
        panic!("the peek is sent")
    };
    assert!(!txn.0.is_empty());
    assert_eq!(deps.len(), 1);
    page.quiesce();
    assert!(
        matches!(page.settled[&JobId(3)], Ok(Some(_))),
        "{:?}",
        page.settled
    );
}

/// A page-only handler that changed what a failed commit also changed is undone before it
/// and run again after; one that changed something else is left alone, and neither's
/// promise settles twice.
#[test]
fn a_page_only_handler_joins_a_cascade_only_where_its_effects_overlap() {
    let mut page = Page::new(100);
    page.step(Step::Call(Handler::Increment(0)));
    page.quiesce();

    page.step(Step::CallTouching(Handler::Increment(0), 0)); // job 2: in flight, effect 0
    page.step(Step::CallTouching(Handler::Local, 0)); // job 3: over job 2's effect
    page.step(Step::CallTouching(Handler::Local, 1)); // job 4: elsewhere
    assert!(matches!(page.settled[&JobId(3)], Ok(None)), "done at once");
    assert!(matches!(page.settled[&JobId(4)], Ok(None)));
    assert!(
        !page.released.contains(&JobId(3)),
        "held while job 2 is in flight"
    );
    assert!(!page.released.contains(&JobId(4)));

    // Another client moves the counter: job 2 conflicts.
    page.step(Step::Other(0));
    let before = page.applied.clone();
    page.quiesce(); // the harness checks each undo takes the top of its effect's stack
    assert_eq!(page.engine.pending(), 0);
    assert!(matches!(page.settled[&JobId(2)], Ok(Some(_))));
    // Job 3 ran again (after job 2's retry), job 4 did not.
    let reruns = |job| page.applied.iter().filter(|j| **j == job).count();
    assert_eq!(before.iter().filter(|j| **j == JobId(3)).count(), 1);
    assert_eq!(reruns(JobId(3)), 1, "kept once on the page");
    let at = |job| page.applied.iter().position(|j| *j == job).unwrap();
    assert!(
        at(JobId(2)) < at(JobId(3)),
        "re-run on top of job 2's retry"
    );
    assert!(at(JobId(4)) < at(JobId(2)), "job 4 was never undone");
    assert_eq!(page.stacks[&0], vec![JobId(2), JobId(3)]);
    assert!(page.released.contains(&JobId(3)) && page.released.contains(&JobId(4)));
    assert_eq!(page.server.db[&key(0)].1, json!(3));
}

/// A read outside a transaction that the server refuses (an unknown table) is reported
/// once, re-renders what shows it, and is not asked for again until a reconnect.
#[test]
fn a_refused_read_outside_a_transaction_is_told_once_and_not_repeated() {
    let mut page = Page::new(100);
    let key = Key::row("counterz", "clicks");
    assert_eq!(page.engine.peek(&key), None);
    let Some(ClientMessage::Read { id, .. }) = page.engine.take_sends().pop() else {
        panic!("a read is sent")
    };
    let refusal = ServerMessage::Error {
        id: Some(id),
        error: crate::protocol::ErrorReply::new(crate::ErrorKind::UnknownTable, "no table"),
    };
    page.engine.receive(&refusal.to_json());
    let actions: Vec<Action> = std::iter::from_fn(|| page.engine.poll()).collect();
    assert!(
        matches!(&actions[..], [Action::Warn(w), Action::Changed(keys)] if w.contains("no table") && keys == &vec![key.clone()]),
        "{actions:?}"
    );
    assert_eq!(
        page.engine.refusal(&key).map(|e| e.message.as_str()),
        Some("no table")
    );
    // Every render reads it again: nothing more is sent.
    assert_eq!(page.engine.peek(&key), None);
    assert!(page.engine.take_sends().is_empty());
    // After a reconnect (the app may have been migrated), it is asked for again.
    page.engine.welcome();
    assert!(page.engine.refusal(&key).is_none());
    assert_eq!(page.engine.peek(&key), None);
    assert_eq!(page.engine.take_sends().len(), 1);
}

fn drained(engine: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| engine.poll()).collect()
}

/// Runs one attempt of `job` that writes `k0` blindly, and answers its commit with a
/// conflict; returns what the engine asks for then.
fn commit_and_conflict(engine: &mut Engine, job: JobId) -> Vec<Action> {
    assert!(drained(engine).contains(&Action::Run(job)));
    let mut a = engine.begin(job);
    a.put(key(0), json!(1));
    engine.finish(job, a, Ended::Returned);
    let txn = drained(engine)
        .into_iter()
        .find_map(|a| match a {
            Action::Send(ClientMessage::Commit { txn, .. }) => Some(txn),
            _ => None,
        })
        .expect("the commit is sent");
    engine.message(ServerMessage::Conflict {
        txn,
        stale: Vec::new(),
    });
    drained(engine)
}

#[test]
fn a_job_called_with_its_own_policy_retries_by_it() {
    let mut engine = Engine::new("p".into(), 100, 7);
    let job = engine.call(Kind::Async);
    let after = commit_and_conflict(&mut engine, job);
    assert!(
        after.contains(&Action::Run(job)),
        "the engine's policy retries"
    );

    let once = crate::RetryPolicy {
        max_attempts: 1,
        ..crate::RetryPolicy::default()
    };
    let job = engine.call_with(Kind::Async, once);
    let after = commit_and_conflict(&mut engine, job);
    assert!(
        after.iter().any(|a| matches!(
            a,
            Action::Settle(j, Err(Failure::Conflicts { attempts: 1, .. })) if *j == job
        )),
        "its own policy allows one attempt: {after:?}"
    );
    assert_eq!(engine.policy(), crate::RetryPolicy::default());
}

#[test]
fn evict_drops_what_no_job_pins_and_unsubscribes_it() {
    let mut engine = Engine::new("p".into(), 0, 7);
    let fetch = engine.fetch(vec![key(1)]);
    let Some(Action::Send(ClientMessage::Read { id, .. })) = engine.poll() else {
        panic!("the fetch is sent")
    };
    let entries = vec![Entry {
        key: key(1),
        version: Version(3),
        value: Some(json!(3)),
    }];
    engine.message(ServerMessage::Values { id, entries });
    let answered = drained(&mut engine);
    assert!(answered.contains(&Action::Fetched(fetch, Ok(()))));
    assert!(
        !answered.iter().any(|a| matches!(a, Action::Send(_))),
        "the fetched key was pinned while its reply landed"
    );
    assert!(engine.cache().contains_key(&key(1)));
    engine.evict();
    assert_eq!(
        drained(&mut engine),
        vec![Action::Send(ClientMessage::Unsubscribe {
            keys: vec![key(1)]
        })]
    );
    assert!(!engine.cache().contains_key(&key(1)));
    engine.evict();
    assert!(drained(&mut engine).is_empty());
}

/// What templates show of a query: loaded once with its rows, then the cached result with
/// the page's in-flight insert in its place, marked pending until it commits.
#[test]
fn a_query_outside_a_transaction_loads_once_and_shows_the_pages_pending_insert() {
    let mut engine = Engine::new("p".into(), 100, 7);
    let query = Query::table("todos").order_by("n", false);
    let row = |n: i64| Key::row("todos", n);
    assert_eq!(engine.peek_query(&query), None);
    assert_eq!(engine.peek_query(&query), None);
    let sends = engine.take_sends();
    let [ClientMessage::Read { id, keys }] = &sends[..] else {
        panic!("one read: {sends:?}")
    };
    assert_eq!(keys, &vec![Key::query(query.clone())]);
    let entry = |key: Key, value: Value| Entry {
        key,
        version: Version(4),
        value: Some(value),
    };
    let entries = vec![
        entry(Key::query(query.clone()), json!([1, 3])),
        entry(row(1), json!({"id": 1, "n": 10})),
        entry(row(3), json!({"id": 3, "n": 30})),
    ];
    engine.message(ServerMessage::Values { id: *id, entries });
    drained(&mut engine);
    let view = engine.peek_query(&query).expect("cached");
    let shown: Vec<(Pk, bool)> = view
        .rows
        .iter()
        .map(|r| (r.pk.clone(), r.pending))
        .collect();
    assert_eq!(shown, vec![(Pk::Int(1), false), (Pk::Int(3), false)]);

    // A handler inserts a row between the two: it shows at once, pending.
    let job = engine.call(Kind::Sync);
    assert!(drained(&mut engine).contains(&Action::Run(job)));
    let mut a = engine.begin(job);
    let Value::Object(new) = json!({"id": 2, "n": 20}) else {
        unreachable!()
    };
    a.insert(row(2), new.clone());
    engine.finish(job, a, Ended::Returned);
    let txn = drained(&mut engine)
        .into_iter()
        .find_map(|a| match a {
            Action::Send(ClientMessage::Commit { txn, .. }) => Some(txn),
            _ => None,
        })
        .expect("the commit is sent");
    let shown = |engine: &mut Engine| -> Vec<(Pk, bool)> {
        let view = engine.peek_query(&query).expect("cached");
        assert!(view.exact);
        view.rows
            .iter()
            .map(|r| (r.pk.clone(), r.pending))
            .collect()
    };
    let count = Query::table("todos").counted();
    let counted = |engine: &mut Engine| engine.peek_query(&count).map(|v| v.count);
    engine.fetch(vec![Key::query(count.clone())]);
    let Some(Action::Send(ClientMessage::Read { id, .. })) = engine.poll() else {
        panic!("the fetch is sent")
    };
    let entries = vec![entry(Key::query(count.clone()), json!(2))];
    engine.message(ServerMessage::Values { id, entries });
    drained(&mut engine);
    let with_two = vec![(Pk::Int(1), false), (Pk::Int(2), true), (Pk::Int(3), false)];
    assert_eq!(shown(&mut engine), with_two);
    assert_eq!(counted(&mut engine), Some(3));

    // Committed: the reply comes before the push of the query's new result, and the row
    // stays in the meantime, confirmed.
    engine.message(ServerMessage::Committed {
        txn,
        version: Version(6),
    });
    drained(&mut engine);
    let confirmed = vec![
        (Pk::Int(1), false),
        (Pk::Int(2), false),
        (Pk::Int(3), false),
    ];
    assert_eq!(shown(&mut engine), confirmed);
    assert_eq!(counted(&mut engine), Some(3));
    let at = |key: Key, value: Value| Entry {
        key,
        version: Version(6),
        value: Some(value),
    };
    engine.message(ServerMessage::Push {
        version: Version(6),
        changes: vec![
            at(Key::query(query.clone()), json!([1, 2, 3])),
            at(Key::query(count.clone()), json!(3)),
            at(row(2), Value::Object(new)),
        ],
    });
    drained(&mut engine);
    assert_eq!(shown(&mut engine), confirmed);
    assert_eq!(counted(&mut engine), Some(3));
    // Another client deletes it: the push says so, and nothing of the page's keeps it.
    let at = |key: Key, value: Option<Value>| Entry {
        key,
        version: Version(7),
        value,
    };
    engine.message(ServerMessage::Push {
        version: Version(7),
        changes: vec![
            at(Key::query(query.clone()), Some(json!([1, 3]))),
            at(Key::query(count.clone()), Some(json!(2))),
            at(row(2), None),
        ],
    });
    drained(&mut engine);
    assert_eq!(
        shown(&mut engine),
        vec![(Pk::Int(1), false), (Pk::Int(3), false)]
    );
    assert_eq!(counted(&mut engine), Some(2));

    // A result whose row the cache lacks: the row alone is asked for.
    let other = Query::table("todos").order_by("n", true);
    engine.fetch(vec![Key::query(other.clone())]);
    let Some(Action::Send(ClientMessage::Read { id, .. })) = engine.poll() else {
        panic!("the fetch is sent")
    };
    let entries = vec![entry(Key::query(other.clone()), json!([9]))];
    engine.message(ServerMessage::Values { id, entries });
    drained(&mut engine);
    assert_eq!(engine.peek_query(&other), None);
    let sends = engine.take_sends();
    assert!(
        matches!(&sends[..], [ClientMessage::Read { keys, .. }] if keys == &vec![row(9)]),
        "{sends:?}"
    );
}
