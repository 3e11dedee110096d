//! Live templates in a real browser: a balance shown with `{{ }}` follows a commit made by
//! another client, without reload.

#![cfg(target_arch = "wasm32")]

use js_sys::{Function, Promise};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

mod support;

use support::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
export function give_alice(m, amount) {
  return m.atomic(function () { m.table('users').find('alice').balance += amount; })();
}
"#)]
extern "C" {
    fn give_alice(m: &JsValue, amount: u32) -> Promise;
}

async fn wait_for(el: &web_sys::Element, what: &str, ok: impl Fn(&str) -> bool) -> String {
    for _ in 0..400 {
        let text = el.text_content().unwrap_or_default();
        if ok(&text) {
            return text;
        }
        pause(25).await;
    }
    panic!(
        "timed out waiting for {what}; shows {:?}",
        el.text_content()
    );
}

#[wasm_bindgen_test]
async fn a_template_follows_a_commit_from_another_client() {
    let alice = connected("alice").await;
    let bob = connected("bob").await;
    let doc = web_sys::window().unwrap().document().unwrap();
    let page = doc.create_element("div").unwrap();
    page.set_inner_html(
        r#"<p id="balance">Balance: {{ table('users').find(user).balance }}</p>
           <p id="who" title="{{ user + '!' }}">{{ user == 'alice' ? 'hi alice' : 'who?' }}</p>
           <p id="bad">{{ table('users'). }}</p>"#,
    );
    doc.body().unwrap().append_child(&page).unwrap();
    let templates: Function = get(&alice, "templates").dyn_into().unwrap();
    templates.call1(&alice, &page).unwrap();

    let balance = doc.get_element_by_id("balance").unwrap();
    let shown = wait_for(&balance, "the balance to load", |t| {
        t.starts_with("Balance: ") && !t.contains('…')
    })
    .await;
    let before: i64 = shown["Balance: ".len()..].trim().parse().expect("a number");
    let who = doc.get_element_by_id("who").unwrap();
    assert_eq!(who.text_content().as_deref(), Some("hi alice"));
    assert_eq!(who.get_attribute("title").as_deref(), Some("alice!"));
    let bad = doc
        .get_element_by_id("bad")
        .unwrap()
        .text_content()
        .unwrap();
    assert!(
        bad.contains("expected a name"),
        "a bad expression is shown as an error: {bad}"
    );

    JsFuture::from(give_alice(&bob, 5))
        .await
        .expect("bob's commit");
    let expected = format!("Balance: {}", before + 5);
    wait_for(&balance, "the pushed balance", |t| t == expected).await;
}
