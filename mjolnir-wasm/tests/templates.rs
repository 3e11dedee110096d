//! Live templates in a real browser: a balance shown with `{{ }}` follows a commit made by
//! another client, without reload; templates added after `templates()` render too, and
//! removed ones are let go.

#![cfg(target_arch = "wasm32")]

use js_sys::{Function, Promise};
use mjolnir_wasm::runtime::Runtime;
use mjolnir_wasm::templates::{Templates, bind};
use std::rc::Rc;
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
export function add_then_throw(m, parent, text) {
  return m.atomic(function () {
    var li = document.createElement('li');
    li.textContent = text;
    parent.appendChild(li);
    parent.firstElementChild.setAttribute('title', text);
    parent.firstElementChild.setAttribute('data-new', text);
    throw new Error('rolled back');
  })();
}
export function set_kv(m, key, value) {
  return m.atomic(function () { m.kv.set(key, value); })();
}
"#)]
extern "C" {
    fn give_alice(m: &JsValue, amount: u32) -> Promise;
    fn add_then_throw(m: &JsValue, parent: &web_sys::Element, text: &str) -> Promise;
    fn set_kv(m: &JsValue, key: &str, value: &str) -> Promise;
}

/// A fixture under the body holding `html`; the body itself is left alone.
fn fixture(html: &str) -> web_sys::Element {
    let doc = web_sys::window().unwrap().document().unwrap();
    let page = doc.create_element("div").unwrap();
    page.set_inner_html(html);
    doc.body().unwrap().append_child(&page).unwrap();
    page
}

/// A runtime connected as `user`, as Rust sees it: for the bindings' count, which pages do
/// not see.
async fn runtime_as(user: &str) -> Rc<Runtime> {
    let url = WS_URL
        .expect("MJOLNIR_TEST_WS_URL: run these tests with scripts/test.sh")
        .to_owned();
    let rt = Runtime::new(url, Some(user.to_owned()));
    rt.open().expect("open");
    for _ in 0..400 {
        if rt.connection_state().as_str() == "open" {
            return rt;
        }
        pause(25).await;
    }
    panic!("no connection to the test server");
}

fn templates_of(m: &JsValue, root: &web_sys::Element) {
    let templates: Function = get(m, "templates").dyn_into().unwrap();
    templates.call1(m, root).unwrap();
}

async fn wait_for_count(t: &Templates, what: &str, n: usize) {
    for _ in 0..400 {
        if t.binding_count() == n {
            return;
        }
        pause(25).await;
    }
    panic!(
        "timed out waiting for {what}: {} bindings, not {n}",
        t.binding_count()
    );
}

async fn wait_for_attr(el: &web_sys::Element, name: &str, what: &str, want: &str) {
    for _ in 0..400 {
        if el.get_attribute(name).as_deref() == Some(want) {
            return;
        }
        pause(25).await;
    }
    panic!(
        "timed out waiting for {what}; {name} is {:?}",
        el.get_attribute(name)
    );
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.trim().parse::<i64>().is_ok()
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

#[wasm_bindgen_test]
async fn a_template_appended_later_renders() {
    let alice = connected("alice").await;
    let page = fixture("<p>nothing to see yet</p>");
    templates_of(&alice, &page);

    let doc = web_sys::window().unwrap().document().unwrap();
    let span = doc.create_element("span").unwrap();
    span.set_text_content(Some("{{ table('users').find('alice').balance }}"));
    page.append_child(&span).unwrap();
    wait_for(&span, "alice's balance", is_number).await;

    // Markup parsed into a later element, not only nodes built one by one.
    let more = doc.create_element("ul").unwrap();
    page.append_child(&more).unwrap();
    more.set_inner_html("<li>hi {{ user }}</li>");
    let li = more.first_element_child().unwrap();
    wait_for(&li, "the user's name", |t| t == "hi alice").await;
}

#[wasm_bindgen_test]
async fn an_attribute_set_later_renders() {
    let alice = connected("alice").await;
    let page = fixture(r#"<p title="plain">text</p>"#);
    templates_of(&alice, &page);
    let p = page.first_element_child().unwrap();

    p.set_attribute("data-who", "{{ user + '!' }}").unwrap();
    wait_for_attr(&p, "data-who", "a new attribute", "alice!").await;
    // An attribute that was plain text before.
    p.set_attribute(
        "title",
        "balance {{ table('users').find('alice').balance }}",
    )
    .unwrap();
    for _ in 0..400 {
        let title = p.get_attribute("title").unwrap_or_default();
        if title.strip_prefix("balance ").is_some_and(is_number) {
            break;
        }
        pause(25).await;
    }
    let title = p.get_attribute("title").unwrap_or_default();
    assert!(
        title.strip_prefix("balance ").is_some_and(is_number),
        "the title shows the balance: {title:?}"
    );
    // A bound attribute given a new template follows the new one.
    p.set_attribute("data-who", "{{ user + '?' }}").unwrap();
    wait_for_attr(&p, "data-who", "the replaced template", "alice?").await;
}

#[wasm_bindgen_test]
async fn a_removed_element_is_let_go_and_bound_again_when_it_returns() {
    let rt = runtime_as("alice").await;
    let bob = connected("bob").await;
    let page = fixture("<p>{{ 1 + 1 }}</p>");
    let templates = bind(&rt, &page);
    assert_eq!(templates.binding_count(), 1);

    let doc = web_sys::window().unwrap().document().unwrap();
    let b = doc.create_element("b").unwrap();
    b.set_attribute("title", "{{ user }}").unwrap();
    b.set_text_content(Some("{{ table('users').find('alice').balance }}"));
    page.append_child(&b).unwrap();
    wait_for_count(&templates, "the new element's text and title", 3).await;
    let before: i64 = wait_for(&b, "alice's balance", is_number)
        .await
        .parse()
        .unwrap();
    assert_eq!(b.get_attribute("title").as_deref(), Some("alice"));

    page.remove_child(&b).unwrap();
    wait_for_count(&templates, "the removed element to be let go", 1).await;

    // While it is out, its data changes; back in, it follows the template again rather
    // than keeping the text it had when it left.
    JsFuture::from(give_alice(&bob, 1))
        .await
        .expect("bob's commit");
    page.append_child(&b).unwrap();
    wait_for_count(&templates, "the element back in", 3).await;
    let expected = (before + 1).to_string();
    wait_for(&b, "the balance after the commit", |t| t == expected).await;
    assert_eq!(b.get_attribute("title").as_deref(), Some("alice"));

    // A whole subtree removed at once, from deeper down.
    let page_text = page.first_element_child().unwrap();
    page.remove_child(&page_text).unwrap();
    page.remove_child(&b).unwrap();
    wait_for_count(&templates, "everything removed", 0).await;
}

#[wasm_bindgen_test]
async fn a_rendered_value_with_braces_is_not_a_template() {
    let rt = runtime_as("alice").await;
    let alice = connected("alice").await;
    JsFuture::from(set_kv(&alice, "tpl-braces", "{{ 1+1 }}"))
        .await
        .expect("the kv write");
    let page = fixture(r#"<span title="{{ kv('tpl-braces') }}">{{ kv('tpl-braces') }}</span>"#);
    let templates = bind(&rt, &page);
    let span = page.first_element_child().unwrap();
    wait_for(&span, "the kv value", |t| t == "{{ 1+1 }}").await;
    wait_for_attr(&span, "title", "the kv value", "{{ 1+1 }}").await;

    // Templates render in the next frame: a re-bound output would show "2" after two.
    frames(2).await;
    assert_eq!(span.text_content().as_deref(), Some("{{ 1+1 }}"));
    assert_eq!(span.get_attribute("title").as_deref(), Some("{{ 1+1 }}"));
    assert_eq!(templates.binding_count(), 2);

    // Still the kv template after its output changes to other braces.
    JsFuture::from(set_kv(&alice, "tpl-braces", "{{ 2+2 }}"))
        .await
        .expect("the kv write");
    wait_for(&span, "the new kv value", |t| t == "{{ 2+2 }}").await;
    JsFuture::from(set_kv(&alice, "tpl-braces", "plain"))
        .await
        .expect("the kv write");
    wait_for(&span, "the plain kv value", |t| t == "plain").await;
    wait_for_attr(&span, "title", "the plain kv value", "plain").await;
    assert_eq!(templates.binding_count(), 2);
}

#[wasm_bindgen_test]
async fn a_rolled_back_handler_leaves_the_templates_as_they_were() {
    let rt = runtime_as("alice").await;
    let alice = connected("alice").await;
    let page = fixture(r#"<p title="{{ user }}">{{ 1 + 1 }}</p>"#);
    let templates = bind(&rt, &page);
    let p = page.first_element_child().unwrap();
    assert_eq!(p.get_attribute("title").as_deref(), Some("alice"));

    // The handler adds a template and replaces one; its rollback undoes both before
    // any of it is bound.
    JsFuture::from(add_then_throw(&alice, &page, "{{ 40 + 2 }}"))
        .await
        .expect_err("the handler throws");
    // A wrongly bound template would have rendered by the second frame.
    frames(2).await;
    assert_eq!(page.child_element_count(), 1, "the added item is gone");
    assert_eq!(p.get_attribute("title").as_deref(), Some("alice"));
    assert_eq!(p.get_attribute("data-new"), None);
    assert_eq!(p.text_content().as_deref(), Some("2"));
    assert_eq!(templates.binding_count(), 2);
}

/// A template reading a table the app does not have shows the server's reason in its
/// place (as a template that does not parse does), instead of the loading placeholder.
#[wasm_bindgen_test]
async fn a_template_of_an_unknown_table_shows_the_error() {
    let rt = runtime_as("alice").await;
    let page = fixture(r#"<p>Clicked {{ table('counterz').find('clicks').n }} times</p>"#);
    let _templates = bind(&rt, &page);
    let p = page.first_element_child().unwrap();
    let shown = wait_for(&p, "the error", |t| t.contains("error")).await;
    assert!(shown.contains("counterz"), "{shown}");
    assert!(!shown.contains('…'), "{shown}");
}
