//! The runtime in a real browser against a real server (`scripts/test.sh` starts one and
//! passes its address as `MJOLNIR_TEST_WS_URL` at build time). The tests drive the
//! runtime the way pages do, from JavaScript.

#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Function, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

mod support;

use support::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
// The paper's Figure 4, as printed.
function send() {
  var fromName = mjolnir.user;
  var from =
    mjolnir.table('users').find(fromName);

  var toName = document.
    getElementById('to').value;
  var to =
    mjolnir.table('users').find(toName);

  var amount = parseInt(
    document.getElementById('amount').value);

  if (from.balance >= amount) {
    from.balance -= amount;
    to.balance += amount;
  }
}

export function run_send() { return mjolnir.atomic(send)(); }

export function balance_of(m, user) {
  return m.atomic(function () { return m.table('users').find(user).balance; })();
}

export function counter(m, runs) {
  return m.atomic(function () {
    runs.n += 1;
    var row = m.table('counters').find('c');
    row.n = row.n + 1;
    return row.n;
  });
}

export function touch_dave(m, runs) {
  return m.atomic(function () {
    runs.n += 1;
    var dave = m.table('users').find('dave');
    dave.balance = dave.balance + 1;
    return dave.balance;
  });
}

export function state_then_throw(m) {
  return m.atomic(function () {
    m.state.count = (m.state.count || 0) + 1;
    m.state.label = 'changed';
    document.getElementById('status').textContent = 'changed';
    document.getElementById('status').setAttribute('class', 'busy');
    throw new Error('nope');
  });
}

export function overdraw(m) {
  return m.atomic(function () { m.table('users').find('carol').balance = -1; });
}

export function unknown_table(m) {
  return m.atomic(function () { return m.table('weapons').find(1); });
}

export function fill_state(m, n) {
  for (var i = 0; i < n; i++) { m.state['k' + i] = i; }
}

// The `state` events a page sees: one per write outside a transaction, one when a
// transaction that wrote ends (never in the middle of its handler), none for one rolled
// back. Returns the log, filled as the calls below run.
export function watch_state(m) {
  var log = [];
  m.on('state', function () { log.push('event n=' + m.state.n); });
  m.state.n = 0;
  return log;
}

export function write_state_twice(m, log) {
  return m.atomic(function () {
    m.state.n = 1;
    log.push('handler');
    m.state.n = 2;
    m.state.gone = true;
    delete m.state.gone;
  });
}

export function write_state_then_throw(m) {
  return m.atomic(function () {
    m.state.a = 'changed';
    delete m.state.b;
    m.state.a = 'changed twice';
    m.state.c = 'new';
    m.state.b = 'back, changed';
    throw new Error('nope');
  });
}

// A row read like a plain object: its columns enumerate, spread and serialise, and
// nothing else shows.
export function row_as_object(m) {
  return m.atomic(function () {
    var row = m.table('users').find('bob');
    var copy = Object.assign({}, row);
    return JSON.stringify([Object.keys(row), 'name' in copy, copy.name, 'row' in row,
      Object.getOwnPropertySymbols(row).length, typeof row.missing]);
  });
}

export function async_transfer(m, amount) {
  return m.atomic(async function (tx) {
    var carol = await tx.table('users').find('carol');
    await new Promise(function (r) { setTimeout(r, 5); });  // something else to wait for
    var dave = await tx.table('users').find('dave');
    carol.balance -= amount;
    dave.balance += amount;
    m.state.lastTransfer = amount;
    return carol.balance;
  });
}

export function async_counter(m) {
  return m.atomic(async function (tx) {
    var row = await tx.table('counters').find('c');
    await new Promise(function (r) { setTimeout(r, 1); });
    row.n = row.n + 1;
    return row.n;
  });
}

"#)]
extern "C" {
    fn run_send() -> Promise;
    fn balance_of(m: &JsValue, user: &str) -> Promise;
    fn counter(m: &JsValue, runs: &JsValue) -> Function;
    fn touch_dave(m: &JsValue, runs: &JsValue) -> Function;
    fn state_then_throw(m: &JsValue) -> Function;
    fn overdraw(m: &JsValue) -> Function;
    fn unknown_table(m: &JsValue) -> Function;
    fn fill_state(m: &JsValue, n: u32);
    fn watch_state(m: &JsValue) -> Array;
    fn write_state_twice(m: &JsValue, log: &Array) -> Function;
    fn write_state_then_throw(m: &JsValue) -> Function;
    fn row_as_object(m: &JsValue) -> Function;
    fn async_transfer(m: &JsValue, amount: u32) -> Function;
    fn async_counter(m: &JsValue) -> Function;
}

fn document() -> web_sys::Document {
    web_sys::window().unwrap().document().unwrap()
}

/// A fresh element of the test's own in the page (the test runner keeps its report in the
/// body, so tests never replace the body itself).
fn fixture(html: &str) -> web_sys::Element {
    if let Some(old) = document().get_element_by_id("fixture") {
        old.remove();
    }
    let el = document().create_element("div").unwrap();
    el.set_id("fixture");
    el.set_inner_html(html);
    document().body().unwrap().append_child(&el).unwrap();
    el
}

async fn call(f: &Function) -> Result<JsValue, JsValue> {
    let promise: Promise = f.call0(&JsValue::NULL).unwrap().dyn_into().unwrap();
    JsFuture::from(promise).await
}

async fn balance(m: &JsValue, user: &str) -> f64 {
    JsFuture::from(balance_of(m, user))
        .await
        .expect("a read-only transaction")
        .as_f64()
        .unwrap()
}

#[wasm_bindgen_test]
async fn figure_4_send_runs_as_printed() {
    let m = connected("alice").await;
    Reflect::set(&js_sys::global(), &"mjolnir".into(), &m).unwrap();
    fixture(
        r#"To: <input id="to" type="text" value="bob"><br>Amount: <input id="amount" type="text" value="7">"#,
    );
    let (alice, bob) = (balance(&m, "alice").await, balance(&m, "bob").await);

    JsFuture::from(run_send()).await.expect("send commits");

    assert_eq!(balance(&m, "alice").await, alice - 7.0);
    assert_eq!(balance(&m, "bob").await, bob + 7.0);
}

#[wasm_bindgen_test]
async fn a_miss_fetches_and_reruns_the_handler() {
    let m = connected("dave").await;
    let runs = js_sys::Object::new();
    Reflect::set(&runs, &"n".into(), &0.into()).unwrap();
    let f = touch_dave(&m, &runs);
    let n = call(&f).await.expect("commits").as_f64().unwrap();
    assert_eq!(
        get(&runs, "n").as_f64(),
        Some(2.0),
        "the first run misses, the second commits"
    );
    let again = call(&f).await.unwrap().as_f64().unwrap();
    assert_eq!(again, n + 1.0);
    assert_eq!(
        get(&runs, "n").as_f64(),
        Some(3.0),
        "the row is cached now: one run"
    );
}

#[wasm_bindgen_test]
async fn a_throwing_handler_rolls_back_page_state_and_dom() {
    let m = connected("alice").await;
    let page = fixture(r#"<p id="status" class="idle">idle</p>"#);
    let before = page.inner_html();
    Reflect::set(&get(&m, "state"), &"label".into(), &"original".into()).unwrap();

    let err = call(&state_then_throw(&m))
        .await
        .expect_err("the handler throws");
    assert_eq!(
        get(&err, "message").as_string().as_deref(),
        Some("nope"),
        "the handler's own error"
    );
    let state = get(&m, "state");
    assert_eq!(
        get(&state, "label").as_string().as_deref(),
        Some("original")
    );
    assert!(get(&state, "count").is_undefined());
    assert_eq!(page.inner_html(), before);
    assert_eq!(get(&m, "pending").as_f64(), Some(0.0));
}

#[wasm_bindgen_test]
async fn a_row_enumerates_its_columns_and_nothing_else() {
    let m = connected("bob").await;
    let seen = call(&row_as_object(&m)).await.unwrap();
    assert_eq!(
        seen.as_string().as_deref(),
        Some(r#"[["balance","name"],true,"bob",false,0,"undefined"]"#)
    );
}

#[wasm_bindgen_test]
async fn state_events_come_once_per_transaction_after_its_handler() {
    let m = connected("alice").await;
    let log = watch_state(&m);
    call(&write_state_twice(&m, &log)).await.unwrap();
    let _ = call(&write_state_then_throw(&m)).await;
    let log: Vec<String> = log.iter().filter_map(|v| v.as_string()).collect();
    assert_eq!(log, ["event n=0", "handler", "event n=2"]);
}

#[wasm_bindgen_test]
async fn a_rollback_restores_each_written_name_as_it_was() {
    let m = connected("alice").await;
    let state = get(&m, "state");
    Reflect::set(&state, &"a".into(), &"original a".into()).unwrap();
    Reflect::set(&state, &"b".into(), &"original b".into()).unwrap();
    let _ = call(&write_state_then_throw(&m)).await;
    assert_eq!(get(&state, "a").as_string().as_deref(), Some("original a"));
    assert_eq!(get(&state, "b").as_string().as_deref(), Some("original b"));
    assert!(get(&state, "c").is_undefined());
    assert!(!Reflect::has(&state, &"c".into()).unwrap());
}

#[wasm_bindgen_test]
async fn rollback_of_a_large_page_state_restores_every_entry() {
    let m = connected("alice").await;
    fill_state(&m, 100_000);
    fixture(r#"<p id="status">idle</p>"#);
    let _ = call(&state_then_throw(&m)).await;
    let state = get(&m, "state");
    assert_eq!(get(&state, "k99999").as_f64(), Some(99_999.0));
    assert!(get(&state, "count").is_undefined());
    assert_eq!(
        js_sys::Object::keys(state.unchecked_ref::<js_sys::Object>()).length(),
        100_000
    );
}

#[wasm_bindgen_test]
async fn refusals_are_typed_errors() {
    let m = connected("carol").await;
    let classes = get(&m, "errors");
    let err = call(&overdraw(&m))
        .await
        .expect_err("a negative balance is refused");
    assert!(err.is_instance_of::<js_sys::Error>());
    let constraint: Function = get(&classes, "ConstraintError").dyn_into().unwrap();
    let proto = get(&constraint, "prototype");
    assert!(
        proto
            .unchecked_ref::<js_sys::Object>()
            .is_prototype_of(&err),
        "a ConstraintError"
    );
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("constraint_violation")
    );

    let err = call(&unknown_table(&m)).await.expect_err("no such table");
    assert_eq!(
        get(&err, "name").as_string().as_deref(),
        Some("SchemaError")
    );
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("unknown_table")
    );
}

#[wasm_bindgen_test]
async fn a_conflict_past_the_retry_limit_is_a_conflict_error_naming_the_key() {
    let a = connected("alice").await;
    let b = connected("bob").await;
    let runs = js_sys::Object::new();
    Reflect::set(&runs, &"n".into(), &0.into()).unwrap();
    let (fa, fb) = (counter(&a, &runs), counter(&b, &runs));
    // Load the row into both caches, then allow one attempt only.
    call(&fa).await.unwrap();
    call(&fb).await.unwrap();
    for m in [&a, &b] {
        let set: Function = get(m, "setRetryPolicy").dyn_into().unwrap();
        set.apply(m, &Array::of3(&1.into(), &1.into(), &1.into()))
            .unwrap();
    }
    // Both attempts run at once on the same version: one commits, the other conflicts.
    let (pa, pb): (Promise, Promise) = (
        fa.call0(&JsValue::NULL).unwrap().into(),
        fb.call0(&JsValue::NULL).unwrap().into(),
    );
    let results = JsFuture::from(Promise::all_settled(&Array::of2(&pa, &pb)))
        .await
        .unwrap();
    let results: Vec<JsValue> = results.dyn_into::<Array>().unwrap().iter().collect();
    let rejected: Vec<&JsValue> = results
        .iter()
        .filter(|r| get(r, "status").as_string().as_deref() == Some("rejected"))
        .collect();
    assert_eq!(
        rejected.len(),
        1,
        "exactly one of two same-version commits loses"
    );
    let err = get(rejected[0], "reason");
    assert_eq!(
        get(&err, "name").as_string().as_deref(),
        Some("ConflictError")
    );
    let key = get(&err, "key");
    assert_eq!(get(&key, "table").as_string().as_deref(), Some("counters"));
    assert_eq!(get(&key, "pk").as_string().as_deref(), Some("c"));
}

#[wasm_bindgen_test]
async fn two_clients_contending_for_one_row_both_commit_in_some_order() {
    let a = connected("alice").await;
    let b = connected("bob").await;
    let aborts = std::rc::Rc::new(std::cell::Cell::new(0u32));
    for m in [&a, &b] {
        let aborts = aborts.clone();
        let listener =
            Closure::<dyn Fn(JsValue)>::new(move |_| aborts.set(aborts.get() + 1)).into_js_value();
        let on: Function = get(m, "on").dyn_into().unwrap();
        on.call2(m, &"abort".into(), &listener).unwrap();
    }
    let (ra, rb) = (js_sys::Object::new(), js_sys::Object::new());
    Reflect::set(&ra, &"n".into(), &0.into()).unwrap();
    Reflect::set(&rb, &"n".into(), &0.into()).unwrap();
    let (fa, fb) = (counter(&a, &ra), counter(&b, &rb));
    call(&fb).await.unwrap();
    let start = call(&fa).await.unwrap().as_f64().unwrap();

    let all: Array = Array::new();
    for _ in 0..10 {
        all.push(&fa.call0(&JsValue::NULL).unwrap());
        all.push(&fb.call0(&JsValue::NULL).unwrap());
    }
    let results = JsFuture::from(Promise::all(&all))
        .await
        .expect("every increment commits");
    let mut seen: Vec<f64> = results
        .dyn_into::<Array>()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    seen.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (1..=20).map(|i| start + f64::from(i)).collect();
    assert_eq!(
        seen, expected,
        "each increment saw a distinct value: some serial order"
    );
    assert!(
        aborts.get() > 0,
        "two clients on one row conflict at least once"
    );
}

#[wasm_bindgen_test]
async fn the_async_form_awaits_reads_and_other_work_and_commits() {
    let m = connected("carol").await;
    let (carol, dave) = (balance(&m, "carol").await, balance(&m, "dave").await);
    let left = call(&async_transfer(&m, 3))
        .await
        .expect("commits")
        .as_f64()
        .unwrap();
    assert_eq!(left, carol - 3.0);
    assert_eq!(balance(&m, "carol").await, carol - 3.0);
    assert_eq!(balance(&m, "dave").await, dave + 3.0);
    assert_eq!(get(&get(&m, "state"), "lastTransfer").as_f64(), Some(3.0));
}

#[wasm_bindgen_test]
async fn async_handlers_contending_for_one_row_retry_until_both_commit() {
    let a = connected("alice").await;
    let b = connected("bob").await;
    let (fa, fb) = (async_counter(&a), async_counter(&b));
    let all = Array::new();
    for _ in 0..5 {
        all.push(&fa.call0(&JsValue::NULL).unwrap());
        all.push(&fb.call0(&JsValue::NULL).unwrap());
    }
    let results = JsFuture::from(Promise::all(&all))
        .await
        .expect("every increment commits");
    let mut seen: Vec<f64> = results
        .dyn_into::<Array>()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    seen.sort_by(f64::total_cmp);
    seen.dedup();
    assert_eq!(
        seen.len(),
        10,
        "ten increments, ten distinct values: a serial order"
    );
    assert_eq!(seen[9] - seen[0], 9.0);
}
