//! What one run of a named transaction costs, against the floor of QuickJS itself:
//! `cargo run --release -p mjolnir-sandbox --example run_cost`.
//!
//! A run builds a fresh context, evaluates the prelude and the app's declarations, and
//! calls the body over an attempt. The baseline evaluates `1 + 2` in a fresh context, the
//! least any run with no state carried over can cost.

use mjolnir_core::protocol::{Entry, PkKind, TableInfo};
use mjolnir_core::{Attempt, Cache, Key, Version};
use mjolnir_sandbox::{Call, Limits, Ran, Sandbox};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

const BANK: &str = r#"
mjolnir.transaction('transfer', function (from, to, amount) {
  if (!(amount > 0)) throw new Error('the amount must be positive');
  var a = mjolnir.table('accounts').find(from);
  var b = mjolnir.table('accounts').find(to);
  if (a.balance < amount) throw new Error('not enough money');
  a.balance -= amount;
  b.balance += amount;
});
"#;

fn main() {
    let mut tables = BTreeMap::new();
    tables.insert(
        "accounts".to_owned(),
        TableInfo {
            pk: "id".into(),
            pk_kind: PkKind::Integer,
        },
    );
    let mut cache = Cache::new();
    cache.apply(&[1, 2].map(|id| Entry {
        key: Key::row("accounts", id),
        version: Version(1),
        value: Some(json!({"id": id, "balance": 100})),
    }));
    let mut sandbox = Sandbox::new(BANK, tables, Limits::default()).expect("engine");
    let args = json!([1, 2, 1]);
    let call = Call {
        name: "transfer",
        args: &args,
        user: Some("alice"),
        seed: 1,
        now: 0.0,
    };
    let n = 2000;
    for _ in 0..100 {
        let _ = sandbox.run(&call, Attempt::new(cache.snapshot()));
    }
    let started = Instant::now();
    for _ in 0..n {
        let (ran, _) = sandbox.run(&call, Attempt::new(cache.snapshot()));
        assert_eq!(ran, Ok(Ran::Returned(serde_json::Value::Null)));
    }
    let run = started.elapsed() / n;

    let runtime = rquickjs::Runtime::new().expect("runtime");
    let started = Instant::now();
    for _ in 0..n {
        let context = rquickjs::Context::full(&runtime).expect("context");
        context.with(|ctx| assert_eq!(ctx.eval::<i32, _>("1 + 2").expect("eval"), 3));
    }
    let floor = started.elapsed() / n;
    println!("a transfer run (fresh context, prelude, declarations, body): {run:?}");
    println!("baseline (fresh context, `1 + 2`):                          {floor:?}");
    println!("ratio: {:.1}x", run.as_secs_f64() / floor.as_secs_f64());
}
