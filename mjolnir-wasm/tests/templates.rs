//! Live templates in a real browser: a balance shown with `{{ }}` follows a commit made by
//! another client, without reload; templates added after `templates()` render too, and
//! removed ones are let go. List templates (`data-each`) follow inserts, deletes, reorders
//! and changes of their rows made elsewhere, keyed by primary key, and show the page's own
//! writes at once, marked pending.

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
export function add_rows(m, rows) {
  return m.atomic(function () {
    rows.forEach(function (row) { m.table('tasks').insert(row); });
  })();
}
export function set_field(m, id, field, value) {
  return m.atomic(function () { m.table('tasks').find(id)[field] = value; })();
}
export function delete_row(m, id) {
  return m.atomic(function () { m.table('tasks').delete(id); })();
}
// What a list shows: each copy (an element with data-row) as its text, the mark a test
// gave its element (to tell a kept element from a new one) and whether it is pending.
export function shown(root) {
  return JSON.stringify(Array.from(root.querySelectorAll('[data-row]')).map(function (el) {
    return [el.textContent.trim(), el.mark || '', el.hasAttribute('data-mjolnir-pending')];
  }));
}
export function mark(root) {
  root.querySelectorAll('[data-row]').forEach(function (el) { el.mark = el.textContent.trim(); });
}
// Inserts `row` and, before the commit can be answered, binds the templates of `root`,
// which renders it at once: the list there shows the insert pending.
export function insert_and_bind(m, row, root) {
  var commit = m.atomic(function () { m.table('tasks').insert(row); })();
  m.templates(root);
  return [commit, shown(root)];
}
"#)]
extern "C" {
    fn give_alice(m: &JsValue, amount: u32) -> Promise;
    fn add_then_throw(m: &JsValue, parent: &web_sys::Element, text: &str) -> Promise;
    fn set_kv(m: &JsValue, key: &str, value: &str) -> Promise;
    #[wasm_bindgen(js_name = set_kv)]
    fn set_kv_value(m: &JsValue, key: &str, value: &JsValue) -> Promise;
    fn add_rows(m: &JsValue, rows: &JsValue) -> Promise;
    fn set_field(m: &JsValue, id: u32, field: &str, value: &JsValue) -> Promise;
    fn delete_row(m: &JsValue, id: u32) -> Promise;
    fn shown(root: &web_sys::Element) -> String;
    fn mark(root: &web_sys::Element);
    fn insert_and_bind(m: &JsValue, row: &JsValue, root: &web_sys::Element) -> js_sys::Array;
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

/// A list name and ids of the `tasks` table no other test (or earlier run) uses.
fn fresh_list() -> (String, u32) {
    let base = (js_sys::Math::random() * 1e6) as u32 * 100 + 100_000_000;
    (format!("tpl-{base}"), base)
}

fn rows(list: &str, rows: &[(u32, &str, i32)]) -> JsValue {
    let array = js_sys::Array::new();
    for (id, title, rank) in rows {
        let row = js_sys::Object::new();
        for (k, v) in [
            ("id", JsValue::from(*id)),
            ("list", JsValue::from(list)),
            ("title", JsValue::from(*title)),
            ("rank", JsValue::from(*rank)),
        ] {
            js_sys::Reflect::set(&row, &k.into(), &v).unwrap();
        }
        array.push(&row);
    }
    array.into()
}

/// Waits until what `root`'s lists show (see `shown`) is `want`.
async fn wait_shown(root: &web_sys::Element, what: &str, want: &str) {
    for _ in 0..400 {
        if shown(root) == want {
            return;
        }
        pause(25).await;
    }
    panic!(
        "timed out waiting for {what}: shows {}, not {want}",
        shown(root)
    );
}

async fn commit(p: Promise, what: &str) {
    JsFuture::from(p)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
}

#[wasm_bindgen_test]
async fn a_list_follows_inserts_deletes_reorders_and_changes_made_elsewhere_keeping_its_elements() {
    let alice = connected("alice").await;
    let bob = connected("bob").await;
    let (list, id) = fresh_list();
    let initial = rows(
        &list,
        &[(id + 1, "a", 10), (id + 2, "b", 20), (id + 3, "c", 30)],
    );
    commit(add_rows(&bob, &initial), "bob's inserts").await;
    let query = format!("table('tasks').where({{list: '{list}'}})");
    let page = fixture(&format!(
        r#"<p class="n">{{{{ {query}.count() }}}} tasks</p>
           <ul><li data-each="t in {query}.orderBy('rank')" data-row data-id="{{{{ t.id }}}}">{{{{ t.title }}}}</li></ul>"#
    ));
    templates_of(&alice, &page);
    let count = page.first_element_child().unwrap();
    wait_shown(
        &page,
        "the three rows",
        r#"[["a","",false],["b","",false],["c","",false]]"#,
    )
    .await;
    assert_eq!(count.text_content().as_deref(), Some("3 tasks"));
    let first = page.query_selector("[data-row]").unwrap().unwrap();
    assert_eq!(first.get_attribute("data-id"), Some((id + 1).to_string()));
    // The template itself left the document: its place is a comment.
    assert_eq!(page.query_selector_all("[data-each]").unwrap().length(), 0);
    mark(&page);

    // An insert in the middle: a new element there, the others kept.
    commit(
        add_rows(&bob, &rows(&list, &[(id + 4, "d", 15)])),
        "the insert",
    )
    .await;
    wait_shown(
        &page,
        "the inserted row",
        r#"[["a","a",false],["d","",false],["b","b",false],["c","c",false]]"#,
    )
    .await;
    wait_for(&count, "the count", |t| t == "4 tasks").await;
    mark(&page);

    // A delete: only its element goes.
    commit(delete_row(&bob, id + 2), "the delete").await;
    wait_shown(
        &page,
        "the deleted row gone",
        r#"[["a","a",false],["d","d",false],["c","c",false]]"#,
    )
    .await;
    wait_for(&count, "the count", |t| t == "3 tasks").await;

    // A reorder: c's element moves first, not rebuilt.
    commit(set_field(&bob, id + 3, "rank", &5.into()), "the reorder").await;
    wait_shown(
        &page,
        "c moved first",
        r#"[["c","c",false],["a","a",false],["d","d",false]]"#,
    )
    .await;

    // A row's field: its copy shows the new title, in the same element.
    commit(set_field(&bob, id + 1, "title", &"A".into()), "the rename").await;
    wait_shown(
        &page,
        "the new title",
        r#"[["c","c",false],["A","a",false],["d","d",false]]"#,
    )
    .await;

    // A template the page adds to a copy later reads that copy's row too.
    let doc = web_sys::window().unwrap().document().unwrap();
    let extra = doc.create_element("i").unwrap();
    extra.set_text_content(Some("({{ t.rank }})"));
    let second = page
        .query_selector_all("[data-row]")
        .unwrap()
        .item(1)
        .unwrap();
    second.append_child(&extra).unwrap();
    wait_for(&extra, "the row's rank", |t| t == "(10)").await;
}

#[wasm_bindgen_test]
async fn the_pages_own_insert_shows_in_its_place_at_once_marked_pending_until_committed() {
    let alice = connected("alice").await;
    let bob = connected("bob").await;
    let (list, id) = fresh_list();
    commit(
        add_rows(&bob, &rows(&list, &[(id + 1, "a", 10), (id + 3, "c", 30)])),
        "bob's inserts",
    )
    .await;
    let html = format!(
        r#"<ul><li data-each="t in table('tasks').where({{list: '{list}'}}).orderBy('rank')" data-row>{{{{ t.title }}}}</li></ul>"#
    );
    // A first page loads the query (and subscribes to it) for the runtime's cache.
    let first = fixture(&html);
    templates_of(&alice, &first);
    wait_shown(&first, "the rows", r#"[["a","",false],["c","",false]]"#).await;

    // Rendered in the same task as the insert: its commit cannot have been answered.
    let second = fixture(&html);
    let row = js_sys::Array::from(&rows(&list, &[(id + 2, "b", 20)])).get(0);
    let got = insert_and_bind(&alice, &row, &second);
    let got = js_sys::Array::from(&got);
    assert_eq!(
        got.get(1).as_string().unwrap(),
        r#"[["a","",false],["b","",true],["c","",false]]"#,
        "the insert shows at once, in its place, pending"
    );
    commit(got.get(0).unchecked_into(), "alice's insert").await;
    for page in [&first, &second] {
        wait_shown(
            page,
            "the insert confirmed",
            r#"[["a","",false],["b","",false],["c","",false]]"#,
        )
        .await;
    }

    // An insert the database refuses (rank is NOT NULL) shows pending, then goes.
    let third = fixture(&html);
    let refused = js_sys::Object::new();
    for (k, v) in [
        ("id", JsValue::from(id + 4)),
        ("list", JsValue::from(list.as_str())),
        ("title", JsValue::from("x")),
    ] {
        js_sys::Reflect::set(&refused, &k.into(), &v).unwrap();
    }
    let got = js_sys::Array::from(&insert_and_bind(&alice, &refused, &third));
    assert_eq!(
        got.get(1).as_string().unwrap(),
        r#"[["a","",false],["b","",false],["c","",false],["x","",true]]"#,
        "a row without a rank goes last, as PostgreSQL sorts NULL"
    );
    JsFuture::from(got.get(0).unchecked_into::<Promise>())
        .await
        .expect_err("the database refuses it");
    for page in [&first, &second, &third] {
        wait_shown(
            page,
            "the refused row gone",
            r#"[["a","",false],["b","",false],["c","",false]]"#,
        )
        .await;
    }
}

#[wasm_bindgen_test]
async fn lists_of_kv_arrays_lists_in_lists_and_errors_in_place() {
    let rt = runtime_as("alice").await;
    let alice = connected("alice").await;
    let (list, id) = fresh_list();
    commit(
        add_rows(&alice, &rows(&list, &[(id + 1, "a", 1), (id + 2, "b", 2)])),
        "the rows",
    )
    .await;
    let words = format!("{list}-words");
    let array = |items: &[&str]| -> JsValue {
        items
            .iter()
            .map(|s| JsValue::from(*s))
            .collect::<js_sys::Array>()
            .into()
    };
    commit(set_kv_value(&alice, &words, &array(&["x", "y"])), "the kv").await;
    let page = fixture(&format!(
        r#"<ol class="words"><li data-each="w in kv('{words}')" data-row>{{{{ w }}}}</li></ol>
           <ul class="nested">
             <li data-each="t in table('tasks').where({{list: '{list}'}}).orderBy('rank')">
               <b data-each="w in kv('{words}')" data-row title="{{{{ t.id }}}}">{{{{ t.title + w }}}}</b>
             </li>
           </ul>
           <ul class="table"><li data-each="t in table('taskz')">{{{{ t }}}}</li></ul>
           <ul class="parse"><li data-each="t in table(">x</li></ul>
           <ul class="scalar"><li data-each="t in 5">x</li></ul>"#
    ));
    let templates = bind(&rt, &page);
    let words_list = page.query_selector(".words").unwrap().unwrap();
    let nested = page.query_selector(".nested").unwrap().unwrap();
    wait_shown(
        &words_list,
        "the words",
        r#"[["x","",false],["y","",false]]"#,
    )
    .await;
    wait_shown(
        &nested,
        "a copy per word per row",
        r#"[["ax","",false],["ay","",false],["bx","",false],["by","",false]]"#,
    )
    .await;
    let b = nested.query_selector("b").unwrap().unwrap();
    assert_eq!(b.get_attribute("title"), Some((id + 1).to_string()));
    mark(&page);

    // Items keyed by value: y's and x's elements are kept, in the new order.
    commit(
        set_kv_value(&alice, &words, &array(&["y", "z", "x"])),
        "the new kv",
    )
    .await;
    wait_shown(
        &words_list,
        "the new words",
        r#"[["y","y",false],["z","",false],["x","x",false]]"#,
    )
    .await;
    wait_shown(
        &nested,
        "the inner lists",
        r#"[["ay","ay",false],["az","",false],["ax","ax",false],["by","by",false],["bz","",false],["bx","bx",false]]"#,
    )
    .await;

    // A row deleted: its copy goes, with the list inside it and their templates.
    let before = templates.binding_count();
    commit(delete_row(&alice, id + 2), "the delete").await;
    wait_shown(
        &nested,
        "b's copy gone",
        r#"[["ay","ay",false],["az","",false],["ax","ax",false]]"#,
    )
    .await;
    wait_for_count(&templates, "b's templates to be let go", before - 6).await;

    // A list taken out of the page is let go; put back, it is rendered afresh.
    let before = templates.binding_count();
    page.remove_child(&words_list).unwrap();
    wait_for_count(&templates, "the words' templates to be let go", before - 3).await;
    assert_eq!(
        words_list
            .query_selector_all("[data-row]")
            .unwrap()
            .length(),
        0
    );
    page.append_child(&words_list).unwrap();
    wait_shown(
        &words_list,
        "the words again",
        r#"[["y","",false],["z","",false],["x","",false]]"#,
    )
    .await;
    assert_eq!(templates.binding_count(), before);

    // Errors show in place of the copies, as {{ }} shows them.
    let text = |class: &str| {
        page.query_selector(class)
            .unwrap()
            .unwrap()
            .text_content()
            .unwrap()
    };
    let table = page.query_selector(".table").unwrap().unwrap();
    let shown_error = wait_for(&table, "the refusal", |t| t.contains("error")).await;
    assert!(
        shown_error.contains("{{ error:") && shown_error.contains("taskz"),
        "{shown_error}"
    );
    let parse = text(".parse");
    assert!(parse.contains("{{ t in table( }}: "), "{parse}");
    let scalar = text(".scalar");
    assert!(
        scalar.contains("{{ error: data-each takes a list, not 5 }}"),
        "{scalar}"
    );
    // The errors stay errors: the observer does not take them for templates.
    frames(2).await;
    assert_eq!(text(".parse"), parse);
    assert_eq!(text(".scalar"), scalar);
}
