//! Automatic mode in a real browser: inline handlers, listeners and timers become
//! transactions without `mjolnir.atomic`. A page of its own, since automatic mode patches
//! the page's `addEventListener` and timers.

#![cfg(target_arch = "wasm32")]

use js_sys::Promise;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

mod support;

use support::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
export function setup(m) {
  globalThis.mjolnir = m;
  globalThis.outcomes = [];
  m.on('commit', function (e) { globalThis.outcomes.push('commit'); });
  m.on('abort', function (e) { globalThis.outcomes.push('abort:' + e.reason); });
  // A plain page function, as an inline onclick attribute calls it.
  globalThis.bump = function () {
    var row = mjolnir.table('counters').find('c');
    row.n = row.n + 1;
  };
}
export function counter_value(m) {
  return m.atomic(function () { return m.table('counters').find('c').n; })();
}
export function listen_and_throw(el) {
  el.addEventListener('click', function () {
    mjolnir.state.clicked = true;
    el.textContent = 'clicked';
    throw new Error('listener failed');
  });
}
export function listen_outside(el) {
  el.addEventListener('click', function () {
    try {
      mjolnir.kv.set('k', 1);
      el.textContent = 'inside';
    } catch (e) {
      el.textContent = 'outside: ' + e.name;
    }
  });
}
export function listen_async(el) {
  el.addEventListener('click', async function (event) {
    try {
      mjolnir.kv.set('k', 1);
      el.textContent = 'inside';
    } catch (e) {
      el.textContent = 'outside: ' + e.name + ' ' + (event instanceof Event);
    }
  });
}
export function timer_bump() { setTimeout(function () { bump(); }, 0); }
export function get_outcomes() { return globalThis.outcomes.slice(); }
"#)]
extern "C" {
    fn setup(m: &JsValue);
    fn counter_value(m: &JsValue) -> Promise;
    fn listen_and_throw(el: &web_sys::Element);
    fn listen_outside(el: &web_sys::Element);
    fn listen_async(el: &web_sys::Element);
    fn timer_bump();
    #[wasm_bindgen(js_name = get_outcomes)]
    fn outcomes() -> js_sys::Array;
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..400 {
        if ok() {
            return;
        }
        pause(25).await;
    }
    let seen: Vec<String> = outcomes().iter().filter_map(|o| o.as_string()).collect();
    panic!("timed out waiting for {what}; outcomes so far: {seen:?}");
}

/// A runtime in automatic mode.
async fn auto_runtime() -> JsValue {
    let m = connected("alice").await;
    setup(&m);
    let auto: js_sys::Function = get(&m, "auto").dyn_into().unwrap();
    auto.call0(&m).unwrap();
    m
}

fn element(html: &str) -> web_sys::HtmlElement {
    let doc = web_sys::window().unwrap().document().unwrap();
    let holder = doc.create_element("div").unwrap();
    holder.set_inner_html(html);
    doc.body().unwrap().append_child(&holder).unwrap();
    holder.first_element_child().unwrap().dyn_into().unwrap()
}

async fn counter(m: &JsValue) -> f64 {
    JsFuture::from(counter_value(m))
        .await
        .unwrap()
        .as_f64()
        .unwrap()
}

fn commits() -> usize {
    outcomes()
        .iter()
        .filter(|o| o.as_string().as_deref() == Some("commit"))
        .count()
}

/// One test: automatic mode patches the page once, and tests of one file share a page.
#[wasm_bindgen_test]
async fn handlers_listeners_and_timers_are_transactions_unless_opted_out() {
    let m = auto_runtime().await;
    let before = counter(&m).await;

    // An inline onclick attribute added after auto() is wrapped too.
    let button = element(r#"<button onclick="bump()">bump</button>"#);
    pause(0).await; // the page settles before anyone clicks
    let handler = js_sys::JSON::stringify(
        &get(&button, "onclick")
            .unchecked_into::<js_sys::Function>()
            .to_string(),
    )
    .unwrap();
    assert!(
        String::from(handler.clone()).contains("run(f, this, args)"),
        "the inline handler is wrapped: {handler:?}"
    );
    let seen = commits();
    button.click();
    wait_until("the click's commit", || commits() > seen).await;
    assert_eq!(counter(&m).await, before + 1.0);

    // A timer callback.
    let seen = commits();
    timer_bump();
    wait_until("the timer's commit", || commits() > seen).await;
    assert_eq!(counter(&m).await, before + 2.0);

    // A listener that throws is rolled back like any aborted transaction.
    let p = element("<p>idle</p>");
    listen_and_throw(&p);
    p.click();
    wait_until("the listener's abort", || {
        outcomes()
            .iter()
            .any(|o| o.as_string().as_deref() == Some("abort:error"))
    })
    .await;
    assert_eq!(p.text_content().as_deref(), Some("idle"));
    assert!(get(&get(&m, "state"), "clicked").is_undefined());

    // Inside data-mjolnir="off" a listener is a plain listener: no transaction.
    let inner = element(r#"<div data-mjolnir="off"><span>x</span></div>"#)
        .first_element_child()
        .unwrap();
    listen_outside(&inner);
    inner.dyn_ref::<web_sys::HtmlElement>().unwrap().click();
    assert_eq!(
        inner.text_content().as_deref(),
        Some("outside: TypeError"),
        "no transaction: writes refuse"
    );

    // An async listener is left alone too: it gets its event, and no transaction.
    let q = element("<p>idle</p>");
    listen_async(&q);
    q.click();
    assert_eq!(q.text_content().as_deref(), Some("outside: TypeError true"));
}
