use super::*;
use mjolnir_core::protocol::Entry;
use mjolnir_core::{Cache, ClientMessage, Finish, Op, TxnId, Version};

/// The bank's transfer as an app declares it: the same source the page loads.
const BANK: &str = r#"
mjolnir.transaction('transfer', function (from, to, amount) {
  if (!(amount > 0)) throw new Error('the amount must be positive');
  var a = mjolnir.table('accounts').find(from);
  var b = mjolnir.table('accounts').find(to);
  if (!a || !b) throw new Error('no such account');
  if (a.balance < amount) throw new Error('not enough money');
  a.balance -= amount;
  b.balance += amount;
  return { from: a.balance, to: b.balance };
}, { allow: function (user, from) { return user === 'alice' && from === 1; } });

mjolnir.transaction('mine', function () {
  return mjolnir.table('accounts').where({ owner: mjolnir.user }).orderBy('id').all()
    .map(function (a) { return a.id; });
});

mjolnir.transaction('open', function (owner) {
  var row = mjolnir.table('notes').insert({ owner: owner, body: 'hi' });
  return row.id;
});

mjolnir.transaction('spin', function () { for (;;) {} });
mjolnir.transaction('hog', function () {
  var a = [];
  for (;;) a.push(new Array(1 << 20).fill(7));
});
mjolnir.transaction('fails', function () { return helper(); });
function helper() { throw new Error('deep down'); }
mjolnir.transaction('weird', function () { return function () {}; });
mjolnir.transaction('clock', function () {
  return [Math.random(), Math.random(), Date.now(), new Date().getTime(),
          typeof document, typeof window, typeof setTimeout];
});
"#;

fn tables() -> BTreeMap<String, TableInfo> {
    let mut t = BTreeMap::new();
    t.insert(
        "accounts".to_owned(),
        TableInfo {
            pk: "id".into(),
            pk_kind: PkKind::Integer,
        },
    );
    t.insert(
        "notes".to_owned(),
        TableInfo {
            pk: "id".into(),
            pk_kind: PkKind::Uuid,
        },
    );
    t
}

fn account(id: i64, owner: &str, balance: i64) -> Entry {
    Entry {
        key: Key::row("accounts", id),
        version: Version(id as u64),
        value: Some(json!({"id": id, "owner": owner, "balance": balance})),
    }
}

fn bank() -> Cache {
    let mut cache = Cache::new();
    cache.apply(&[account(1, "alice", 100), account(2, "bob", 5)]);
    cache
}

fn sandbox(limits: Limits) -> Sandbox {
    Sandbox::new(BANK, tables(), limits).unwrap()
}

fn call<'a>(name: &'a str, args: &'a Value, user: Option<&'a str>) -> Call<'a> {
    Call {
        name,
        args,
        user,
        seed: 42,
        now: 1_700_000_000_000.0,
    }
}

#[test]
fn a_transfer_runs_over_an_attempt_and_yields_its_reads_and_writes() {
    let mut s = sandbox(Limits::default());
    let args = json!([1, 2, 30]);
    let (ran, attempt) = s.run(
        &call("transfer", &args, Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    assert_eq!(ran, Ok(Ran::Returned(json!({"from": 70, "to": 35}))));
    let Finish::Commit(ClientMessage::Commit { reads, writes, .. }) =
        attempt.finish(TxnId("t".into()))
    else {
        panic!("a transfer commits")
    };
    assert_eq!(reads.get(&Key::row("accounts", 1)), Some(Version(1)));
    let ops: Vec<_> = writes
        .iter()
        .map(|(k, op)| (k.to_string(), op.clone()))
        .collect();
    assert_eq!(
        ops,
        [
            (
                "accounts[1]".to_owned(),
                WriteOp::Update {
                    set: json!({"balance": 70}).as_object().unwrap().clone()
                }
            ),
            (
                "accounts[2]".to_owned(),
                WriteOp::Update {
                    set: json!({"balance": 35}).as_object().unwrap().clone()
                }
            ),
        ]
    );
}

#[test]
fn the_javascript_checks_refuse_with_their_message() {
    let mut s = sandbox(Limits::default());
    for (args, user, want) in [
        (json!([1, 2, -5]), "alice", "the amount must be positive"),
        (json!([1, 2, 1000]), "alice", "not enough money"),
    ] {
        let (ran, _) = s.run(
            &call("transfer", &args, Some(user)),
            Attempt::new(bank().snapshot()),
        );
        let Err(SandboxError::Threw { name, message, .. }) = ran else {
            panic!("{ran:?}")
        };
        assert_eq!((name.as_str(), message.as_str()), ("transfer", want));
    }
    // allow(): bob may not move alice's money, nor alice another account's.
    let args = json!([1, 2, 5]);
    let (ran, _) = s.run(
        &call("transfer", &args, Some("bob")),
        Attempt::new(bank().snapshot()),
    );
    assert_eq!(
        ran,
        Err(SandboxError::Denied {
            name: "transfer".into()
        })
    );
    let args = json!([2, 1, 5]);
    let (ran, _) = s.run(
        &call("transfer", &args, Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    assert_eq!(
        ran,
        Err(SandboxError::Denied {
            name: "transfer".into()
        })
    );
    let (ran, _) = s.run(
        &call("nope", &json!([]), Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    assert_eq!(
        ran,
        Err(SandboxError::UnknownTransaction {
            name: "nope".into()
        })
    );
}

#[test]
fn a_read_the_attempt_lacks_stops_the_run_for_a_fetch() {
    let mut s = sandbox(Limits::default());
    let args = json!([1, 3, 5]);
    let (ran, attempt) = s.run(
        &call("transfer", &args, Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    assert_eq!(ran, Ok(Ran::Missed));
    assert_eq!(attempt.missed_keys(), [Key::row("accounts", 3)]);
}

#[test]
fn queries_and_inserts_work_as_in_the_page() {
    let mut s = sandbox(Limits::default());
    let mut cache = bank();
    let mine = Query::table("accounts")
        .filter("owner", Op::Eq, json!("alice"))
        .order_by("id", false);
    cache.apply(&[
        account(3, "alice", 1),
        Entry {
            key: Key::query(mine.clone()),
            version: Version(9),
            value: Some(json!([1, 3])),
        },
    ]);
    let (ran, _) = s.run(
        &call("mine", &json!([]), Some("alice")),
        Attempt::new(cache.snapshot()),
    );
    assert_eq!(ran, Ok(Ran::Returned(json!([1, 3]))));

    // A missing uuid key is made from the seed: a re-run inserts the same row.
    let (first, a) = s.run(
        &call("open", &json!(["alice"]), Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    let (again, _) = s.run(
        &call("open", &json!(["alice"]), Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    assert_eq!(first, again);
    let Ok(Ran::Returned(Value::String(id))) = first else {
        panic!("{first:?}")
    };
    assert!(uuid_shaped(&id), "{id}");
    assert_eq!(a.writes().len(), 1);
}

fn uuid_shaped(s: &str) -> bool {
    s.len() == 36
        && s.as_bytes()[14] == b'4'
        && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

#[test]
fn a_throw_names_the_transaction_with_a_javascript_stack() {
    let mut s = sandbox(Limits::default());
    let (ran, _) = s.run(
        &call("fails", &json!([]), None),
        Attempt::new(bank().snapshot()),
    );
    let Err(SandboxError::Threw {
        name,
        message,
        stack,
    }) = ran
    else {
        panic!("{ran:?}")
    };
    assert_eq!((name.as_str(), message.as_str()), ("fails", "deep down"));
    assert!(stack.contains("helper"), "{stack}");
    let (ran, _) = s.run(
        &call("weird", &json!([]), None),
        Attempt::new(bank().snapshot()),
    );
    let Err(SandboxError::Threw { message, .. }) = ran else {
        panic!("{ran:?}")
    };
    assert!(message.contains("JSON cannot hold"), "{message}");
}

#[test]
fn a_loop_forever_is_stopped_at_the_time_limit_and_the_next_run_works() {
    let limits = Limits {
        time: Duration::from_millis(50),
        ..Limits::default()
    };
    let mut s = sandbox(limits);
    let started = Instant::now();
    let (ran, _) = s.run(
        &call("spin", &json!([]), None),
        Attempt::new(bank().snapshot()),
    );
    assert!(
        matches!(ran, Err(SandboxError::TimeLimit { ref name, .. }) if name == "spin"),
        "{ran:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let args = json!([1, 2, 1]);
    let (ran, _) = s.run(
        &call("transfer", &args, Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    assert!(matches!(ran, Ok(Ran::Returned(_))), "{ran:?}");
}

#[test]
fn a_huge_allocation_is_refused_and_the_next_run_works() {
    let mut s = sandbox(Limits {
        memory: 16 << 20,
        time: Duration::from_secs(5),
    });
    let (ran, _) = s.run(
        &call("hog", &json!([]), None),
        Attempt::new(bank().snapshot()),
    );
    assert!(
        matches!(ran, Err(SandboxError::MemoryLimit { ref name, .. }) if name == "hog"),
        "{ran:?}"
    );
    let args = json!([1, 2, 1]);
    let (ran, _) = s.run(
        &call("transfer", &args, Some("alice")),
        Attempt::new(bank().snapshot()),
    );
    assert!(matches!(ran, Ok(Ran::Returned(_))), "{ran:?}");
}

#[test]
fn randomness_and_time_are_the_transactions_and_the_page_is_absent() {
    let mut s = sandbox(Limits::default());
    let (a, _) = s.run(
        &call("clock", &json!([]), None),
        Attempt::new(bank().snapshot()),
    );
    let (b, _) = s.run(
        &call("clock", &json!([]), None),
        Attempt::new(bank().snapshot()),
    );
    assert_eq!(a, b, "one seed, one sequence");
    let Ok(Ran::Returned(v)) = a else {
        panic!("{a:?}")
    };
    assert_ne!(v[0], v[1]);
    assert_eq!(v[2], json!(1_700_000_000_000i64));
    assert_eq!(v[3], json!(1_700_000_000_000i64));
    assert_eq!(
        &v.as_array().unwrap()[4..],
        [json!("undefined"), json!("undefined"), json!("undefined")]
    );
}
