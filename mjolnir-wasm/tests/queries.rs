//! Queries from JavaScript (`mjolnir.table(name).where(…)…all()`, `docs/client.md`,
//! "Queries"): the builder's typed errors, and queries read in handlers against the test
//! server (`tests/app/migrations/0002_tasks.sql`).

#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Promise};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

mod support;

use support::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
// Each builder that must be refused, with a part of the message it must give. Returns
// [what, name, code, message, key] per case, for the ones that threw.
export function refusals(m) {
  var tasks = m.table('tasks');
  var base = tasks.where({ list: 'read' });
  var cases = {
    'unknown operator': [function () { return tasks.where('done', 'like', 'x'); }, '"like"'],
    'no such operator': [function () { return tasks.where('done', '<>', true); }, '"<>"'],
    'an empty search': [function () { return tasks.search('title', '  '); }, 'at least one word'],
    'no operator': [function () { return tasks.where('done'); }, 'the operators are'],
    'no value': [function () { return tasks.where('done', '=='); }, 'a value is needed'],
    '< null': [function () { return tasks.where('rank', '<', null); }, '== null or != null'],
    'in without an array': [function () { return tasks.where('rank', 'in', 3); }, 'in takes an array'],
    '101 values': [function () { return tasks.where('rank', 'in', new Array(101).fill(1)); }, 'at most 100'],
    'an object operand': [function () { return tasks.where('rank', '==', { n: 1 }); }, 'a string, number or boolean'],
    'a function operand': [function () { return tasks.where('rank', '==', function () {}); }, 'a string, number or boolean'],
    'undefined in fields': [function () { return tasks.where({ owner: undefined }); }, 'or null for NULL'],
    'an array of fields': [function () { return tasks.where(['list', 'read']); }, 'it takes {column: value'],
    'limit 0': [function () { return base.limit(0); }, 'limit is 1 to 1000'],
    'limit 1001': [function () { return tasks.limit(1001); }, 'limit is 1 to 1000'],
    'limit 1.5': [function () { return base.limit(1.5); }, 'an integer from 1 to 1000'],
    'limit "10"': [function () { return base.limit('10'); }, 'an integer from 1 to 1000'],
    'direction': [function () { return base.orderBy('rank', 'up'); }, "'asc' or 'desc'"],
    'order column': [function () { return base.orderBy(3); }, 'a column name'],
    '17 conditions': [function () {
      var q = tasks;
      for (var i = 0; i < 17; i++) q = q.where('rank', '!=', i);
      return q;
    }, 'at most 16 conditions'],
    '5 order columns': [function () {
      return tasks.orderBy('a').orderBy('b').orderBy('c').orderBy('d').orderBy('e');
    }, 'at most 4 columns'],
    'count with a limit': [function () { return base.limit(5).count(); }, 'with limit(5)'],
  };
  var out = [];
  for (var what in cases) {
    try {
      cases[what][0]();
      out.push([what, 'did not throw']);
    } catch (e) {
      var ok = e instanceof m.errors.SchemaError && e.code === 'invalid_query' &&
        e.message.indexOf(cases[what][1]) >= 0 && e.key && e.key.kind === 'query' && e.key.table === 'tasks';
      out.push([what, ok ? 'ok' : e.name + ' ' + e.code + ': ' + e.message]);
    }
  }
  return out;
}

// A builder is never changed by a step: `limit` on `base` leaves `base` without one (the key
// of a refusal at the next step is the query it was refused on).
export function steps_leave_their_query_alone(m) {
  var base = m.table('tasks').where({ list: 'read', owner: null });
  base.limit(5);
  base.orderBy('rank', 'desc');
  try { base.where('rank', 'like', 1); } catch (e) { return JSON.stringify(e.key); }
  return 'did not throw';
}

// find, insert and delete are a table's: a query refuses them.
export function table_methods_on_a_query(m) {
  var query = m.table('tasks').where({ list: 'read' });
  return ['find', 'insert', 'delete'].map(function (name) {
    try { query[name](name === 'insert' ? { id: 9 } : 1); return 'did not throw'; } catch (e) { return e.name; }
  });
}

// A refusal inside a handler rejects the transaction with it; nothing is sent.
export function refused_in_a_handler(m) {
  return m.atomic(function () { return m.table('tasks').where('rank', '~', 1).all(); })();
}

export function read_and_write(m, runs) {
  return m.atomic(function () {
    runs.n += 1;
    var rows = m.table('tasks').where({ list: 'write' }).where('rank', '<=', 2).orderBy('rank').all();
    rows.forEach(function (row) { row.title = row.title + '!'; });
    return rows.map(function (row) { return row.id; });
  })();
}

export function titles(m, list) {
  return m.atomic(function () {
    return m.table('tasks').where('list', '==', list).orderBy('rank').orderBy('id')
      .all().map(function (row) { return row.title + (row.done ? ' (done)' : ''); });
  })();
}

export function counts(m) {
  return m.atomic(function () {
    var tasks = m.table('tasks');
    return [
      tasks.where({ list: 'count' }).count(),
      tasks.where({ list: 'count', done: false }).count(),
      tasks.where({ list: 'count' }).where('id', 'in', [21, 22, 99]).count(),
      tasks.where({ list: 'count', owner: null }).orderBy('rank').count(),
      // 'read' has one row owned by alice and two whose owner is NULL.
      tasks.where({ list: 'read' }).where('owner', '!=', 'bob').count(),
      tasks.where({ list: 'read' }).where('owner', '!=', null).count(),
      // === is ==: SQL has one equality.
      tasks.where('list', '===', 'count').count(),
      tasks.where({ list: 'search' }).search('title', 'brown').count(),
    ];
  })();
}

// Own writes: an update shows, a delete is left out, an insert shows in its place.
export function own_writes(m) {
  return m.atomic(function () {
    var tasks = m.table('tasks');
    var read = tasks.where({ list: 'read' }).orderBy('rank');
    var before = read.all().map(function (row) { return row.id; });
    tasks.find(3).title = 'changed';
    tasks.delete(2);
    tasks.insert({ id: 4, list: 'read', title: 'new', done: false, rank: 0 });
    var after = read.all().map(function (row) { return row.id + ':' + row.title; });
    throw JSON.stringify([before, after]);  // and roll it all back
  })();
}

export function async_read(m) {
  return m.atomic(async function (tx) {
    var rows = await tx.table('tasks').where('list', '==', 'async').orderBy('rank', 'desc').all();
    await new Promise(function (r) { setTimeout(r, 1); });
    rows[0].title = 'first';
    var n = await tx.table('tasks').where({ list: 'async' }).count();
    return [rows.map(function (row) { return row.id; }), n];
  })();
}

// Counts `list`, then (on its first run only) waits for the test to open the gate, then
// adds a row numbered after the count: a commit that must fail if the count changed.
export function count_then_add(m, list, base, gate, runs) {
  return m.atomic(async function (tx) {
    runs.n += 1;
    var n = await tx.table('tasks').where({ list: list }).count();
    if (runs.n === 1) { runs.waiting = true; await gate; }
    tx.table('tasks').insert({ id: base + 10 + n, list: list, title: 'after ' + n, rank: n + 1 });
    return n;
  })();
}

export function add(m, row) {
  return m.atomic(function () { m.table('tasks').insert(row); })();
}

export function gate() {
  var open;
  var promise = new Promise(function (resolve) { open = resolve; });
  return [promise, open];
}

export function search(m) {
  return m.atomic(function () {
    return m.table('tasks').where({ list: 'search' }).search('title', 'brown -bread').all()
      .map(function (row) { return row.title; });
  })();
}

export function outside(m) {
  var rows = m.table('tasks').where({ list: 'outside' }).all();
  return [rows.length, m.table('tasks').where({ list: 'outside' }).count(),
    rows.length ? rows[0].title : null];
}
"#)]
extern "C" {
    fn refusals(m: &JsValue) -> Array;
    fn steps_leave_their_query_alone(m: &JsValue) -> String;
    fn table_methods_on_a_query(m: &JsValue) -> Array;
    fn refused_in_a_handler(m: &JsValue) -> Promise;
    fn read_and_write(m: &JsValue, runs: &JsValue) -> Promise;
    fn titles(m: &JsValue, list: &str) -> Promise;
    fn counts(m: &JsValue) -> Promise;
    fn own_writes(m: &JsValue) -> Promise;
    fn async_read(m: &JsValue) -> Promise;
    fn count_then_add(
        m: &JsValue,
        list: &str,
        base: u32,
        gate: &Promise,
        runs: &JsValue,
    ) -> Promise;
    fn add(m: &JsValue, row: &JsValue) -> Promise;
    fn gate() -> Array;
    fn search(m: &JsValue) -> Promise;
    fn outside(m: &JsValue) -> Array;
}

fn json(value: &JsValue) -> String {
    js_sys::JSON::stringify(value).unwrap().into()
}

#[wasm_bindgen_test]
async fn a_bad_operator_operand_or_limit_throws_an_invalid_query_schema_error() {
    let m = connected("alice").await;
    let cases = refusals(&m);
    assert_eq!(cases.length(), 21);
    for case in cases.iter() {
        let case: Array = case.unchecked_into();
        let (what, verdict) = (case.get(0).as_string(), case.get(1).as_string());
        assert_eq!(verdict.as_deref(), Some("ok"), "{what:?}");
    }
}

#[wasm_bindgen_test]
async fn a_step_returns_a_new_query_and_leaves_its_own_alone() {
    let m = connected("alice").await;
    assert_eq!(
        steps_leave_their_query_alone(&m),
        r#"{"kind":"query","table":"tasks","where":[{"column":"list","op":"eq","value":"read"},{"column":"owner","op":"is_null"}]}"#
    );
}

#[wasm_bindgen_test]
async fn find_insert_and_delete_are_a_tables_not_a_querys() {
    let m = connected("alice").await;
    assert_eq!(
        json(&table_methods_on_a_query(&m)),
        r#"["TypeError","TypeError","TypeError"]"#
    );
}

#[wasm_bindgen_test]
async fn a_query_refused_in_a_handler_rejects_its_transaction() {
    let m = connected("alice").await;
    let err = JsFuture::from(refused_in_a_handler(&m))
        .await
        .expect_err("refused");
    assert_eq!(
        get(&err, "name").as_string().as_deref(),
        Some("SchemaError")
    );
    assert_eq!(
        get(&err, "code").as_string().as_deref(),
        Some("invalid_query")
    );
    assert_eq!(get(&m, "pending").as_f64(), Some(0.0));
}

// The tests below need the server's query reads and validation (`docs/architecture.md`,
// "Queries").

#[wasm_bindgen_test]
async fn a_handler_reads_a_query_and_writes_through_its_rows() {
    let m = connected("alice").await;
    let runs = js_sys::Object::new();
    js_sys::Reflect::set(&runs, &"n".into(), &0.into()).unwrap();
    let before = JsFuture::from(titles(&m, "write")).await.expect("reads");
    let before: Vec<String> = Array::from(&before)
        .iter()
        .filter_map(|t| t.as_string())
        .collect();
    let ids = JsFuture::from(read_and_write(&m, &runs))
        .await
        .expect("commits");
    assert_eq!(json(&ids), "[11,12]", "ranks 1 and 2, in order");
    assert_eq!(
        get(&runs, "n").as_f64(),
        Some(2.0),
        "the first run misses the query, the second has it and its rows"
    );
    let after = JsFuture::from(titles(&m, "write")).await.expect("reads");
    let wanted = [
        format!("{}!", before[0]),
        format!("{}!", before[1]),
        before[2].clone(),
    ];
    assert_eq!(json(&after), serde_json::to_string(&wanted).unwrap());
    // Another client sees the commit.
    let other = connected("bob").await;
    let seen = JsFuture::from(titles(&other, "write"))
        .await
        .expect("reads");
    assert_eq!(json(&seen), json(&after));
}

#[wasm_bindgen_test]
async fn count_counts_the_matching_rows_and_sql_nulls_match_no_comparison() {
    let m = connected("alice").await;
    let n = JsFuture::from(counts(&m)).await.expect("reads");
    assert_eq!(json(&n), "[3,2,2,3,1,1,3,2]");
}

#[wasm_bindgen_test]
async fn search_keeps_the_rows_whose_text_matches() {
    let m = connected("alice").await;
    let titles = JsFuture::from(search(&m)).await.expect("reads");
    assert_eq!(json(&titles), r#"["quick brown fox"]"#);
}

#[wasm_bindgen_test]
async fn own_updates_show_own_deletes_are_left_out_own_inserts_take_their_place() {
    let m = connected("carol").await;
    let err = JsFuture::from(own_writes(&m))
        .await
        .expect_err("rolled back");
    assert_eq!(
        err.as_string().as_deref(),
        Some(r#"[[2,3,1],["4:new","3:changed","1:a"]]"#)
    );
}

#[wasm_bindgen_test]
async fn the_async_form_awaits_a_query_and_its_count() {
    let m = connected("alice").await;
    let out = JsFuture::from(async_read(&m)).await.expect("commits");
    assert_eq!(json(&out), "[[32,31],2]");
    let after = JsFuture::from(titles(&m, "async")).await.expect("reads");
    assert_eq!(json(&after), r#"["x","first"]"#);
}

#[wasm_bindgen_test]
async fn a_commit_whose_query_result_changed_conflicts_and_reruns_on_the_fresh_result() {
    let (a, b) = (connected("alice").await, connected("bob").await);
    let runs = js_sys::Object::new();
    js_sys::Reflect::set(&runs, &"n".into(), &0.into()).unwrap();
    // A list of this run's own, so the test runs again on the same database.
    let base = (js_sys::Math::random() * 1e6) as u32 * 100 + 1000;
    let list = format!("conflict {base}");
    let gate = gate();
    let (wait, open): (Promise, js_sys::Function) = (gate.get(0).into(), gate.get(1).into());
    // The handler runs meanwhile: the future only waits for its promise.
    let counted = JsFuture::from(count_then_add(&a, &list, base, &wait, &runs));
    for _ in 0..400 {
        if get(&runs, "waiting").is_truthy() {
            break;
        }
        pause(10).await;
    }
    assert!(get(&runs, "waiting").is_truthy(), "the first run counted");
    // Another client adds a row to the list between the count and the commit.
    let row = serde_json::json!({"id": base + 1, "list": list, "title": "bob's", "rank": 0});
    let row = js_sys::JSON::parse(&row.to_string()).unwrap();
    JsFuture::from(add(&b, &row))
        .await
        .expect("bob's insert commits");
    open.call0(&JsValue::NULL).unwrap();
    let n = counted.await.expect("commits on its second run");
    assert_eq!(n.as_f64(), Some(1.0), "the re-run counted bob's row");
    assert_eq!(get(&runs, "n").as_f64(), Some(2.0));
    let seen = JsFuture::from(titles(&b, &list)).await.expect("reads");
    assert_eq!(json(&seen), r#"["bob's","after 1"]"#);
}

#[wasm_bindgen_test]
async fn outside_a_transaction_a_query_reads_the_cache_and_starts_loading() {
    let m = connected("alice").await;
    assert_eq!(json(&outside(&m)), "[0,0,null]", "not cached yet");
    for _ in 0..400 {
        if json(&outside(&m)) == r#"[1,1,"x"]"# {
            return;
        }
        pause(10).await;
    }
    panic!("the query never loaded: {}", json(&outside(&m)));
}
