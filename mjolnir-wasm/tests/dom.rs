//! DOM rollback in a real browser: whatever an attempt did to attributes, text, child
//! lists and form controls under the root is undone exactly (the root's `outerHTML`, and
//! the controls' properties, are as before), from records taken synchronously.

#![cfg(target_arch = "wasm32")]

use mjolnir_wasm::dom::{DomChanges, DomJournal};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use web_sys::Element;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen(inline_js = r#"
// A fresh container in the page holding `html`: each test's root.
export function fixture(html) {
  const root = document.createElement('div');
  root.className = 'fixture';
  root.innerHTML = html;
  document.body.appendChild(root);
  return root;
}

export function outer(node) { return node.outerHTML; }
export function discard(node) { node.remove(); }
export function timeout() { return new Promise(resolve => setTimeout(resolve, 0)); }

// What outerHTML does not show: the live properties of every form control.
export function form_state(root) {
  return JSON.stringify([...root.querySelectorAll('input, textarea, select')].map(c =>
    c instanceof HTMLSelectElement
      ? { selectedIndex: c.selectedIndex, selected: [...c.options].map(o => o.selected) }
      : { value: c.value, checked: c.checked, indeterminate: c.indeterminate ?? false }));
}

export function change_attributes(root) {
  const p = root.querySelector('p');
  p.setAttribute('title', 'changed');           // an existing attribute
  p.setAttribute('title', 'changed twice');
  p.setAttribute('data-new', 'added');          // a new one
  p.removeAttribute('data-last');               // the last one (keeps the order)
  p.classList.add('extra');
  p.classList.remove('first');
  p.style.color = 'red';                        // a style attribute that did not exist
  p.toggleAttribute('hidden');
  root.querySelector('span').id = 'renamed';
  const use = root.querySelector('use');        // a namespaced attribute
  use.setAttributeNS('http://www.w3.org/1999/xlink', 'xlink:href', '#elsewhere');
  root.querySelector('svg').setAttributeNS('http://www.w3.org/XML/1998/namespace', 'xml:lang', 'fr');
}

export function change_text(root) {
  const b = root.querySelector('b');
  b.firstChild.data = 'bold, changed';
  b.firstChild.appendData('!');
  root.querySelector('i').textContent = 'replaced';   // a child-list change
  const em = root.querySelector('em');
  em.firstChild.splitText(3);                          // text change plus an added node
  em.normalize();                                      // and merged back
  em.firstChild.data = 'again';
  root.querySelector('p').lastChild.data = ' tail changed';
}

export function change_children(root) {
  const ul = root.querySelector('ul');
  const [a, b, c] = ul.children;
  const d = document.createElement('li');
  d.textContent = 'd';
  ul.appendChild(d);                        // append
  ul.insertBefore(document.createElement('li'), b);
  ul.removeChild(a);                        // remove the first
  ul.replaceChild(document.createElement('hr'), c);
  root.querySelector('ol').appendChild(b);  // move into another list
  root.querySelector('section').innerHTML = '<h2>new</h2><p>content</p>';
  root.querySelector('ol').prepend('text first', document.createElement('br'));
  root.querySelector('header').replaceChildren();
  root.querySelector('footer').after(document.createElement('aside'));
}

// Adds a subtree, changes it, and removes it again: nothing of it may remain, and the
// nodes it moved in must return to where they were.
export function add_then_remove(root) {
  const div = document.createElement('div');
  root.appendChild(div);
  const span = document.createElement('span');
  div.appendChild(span);
  span.setAttribute('class', 'inner');
  span.textContent = 'inner text';
  span.firstChild.data = 'inner text, changed';
  const moved = root.querySelector('#moved');
  div.appendChild(moved);                   // an existing node moves into the new subtree
  moved.setAttribute('data-touched', 'yes');
  moved.firstChild.data = 'changed while moved';
  div.remove();                             // and leaves with it
  const gone = document.createElement('b');
  root.querySelector('#keep').appendChild(gone);
  gone.remove();
}

export function change_controls(root) {
  root.querySelector('#text').value = 'typed';
  root.querySelector('#check').checked = true;
  root.querySelector('#tri').indeterminate = true;
  root.querySelector('#r2').checked = true;          // unchecks #r1
  root.querySelector('#one').selectedIndex = 2;
  const many = root.querySelector('#many');
  many.options[0].selected = false;
  many.options[2].selected = true;
  root.querySelector('#area').value = 'a new text';
  root.querySelector('#attr').setAttribute('value', 'from the attribute'); // record and property
}

let log = [];
export function probe_log() { const l = log; log = []; return l.join(','); }
if (!customElements.get('mj-probe')) {
  customElements.define('mj-probe', class extends HTMLElement {
    connectedCallback() { log.push('connected'); }
    disconnectedCallback() { log.push('disconnected'); this.ownerDocument.body.dataset.probe = 'ran'; }
  });
}
export function add_probe(root) { root.appendChild(document.createElement('mj-probe')); }
export function body_probe() { const v = document.body.dataset.probe ?? ''; delete document.body.dataset.probe; return v; }
"#)]
extern "C" {
    fn fixture(html: &str) -> Element;
    fn outer(node: &Element) -> String;
    fn discard(node: &Element);
    fn timeout() -> js_sys::Promise;
    fn form_state(root: &Element) -> String;
    fn change_attributes(root: &Element);
    fn change_text(root: &Element);
    fn change_children(root: &Element);
    fn add_then_remove(root: &Element);
    fn change_controls(root: &Element);
    fn probe_log() -> String;
    fn add_probe(root: &Element);
    fn body_probe() -> String;
}

/// Runs `change` under a journal on a fixture of `html`, checks that it changed
/// something, reverts it, and checks that the fixture is exactly as before.
fn assert_reverted(html: &str, change: fn(&Element)) {
    let root = fixture(html);
    let before = outer(&root);
    let controls_before = form_state(&root);

    let changes = record(&root, change);
    assert!(!changes.is_empty());
    let after_change = (outer(&root), form_state(&root));
    assert_ne!(
        after_change,
        (before.clone(), controls_before.clone()),
        "the change changed nothing"
    );

    changes.revert();
    assert_eq!(outer(&root), before);
    assert_eq!(form_state(&root), controls_before);
    discard(&root);
}

fn record(root: &Element, change: fn(&Element)) -> DomChanges {
    let journal = DomJournal::start(root).expect("journal starts");
    change(root);
    journal.finish().expect("journal finishes")
}

#[wasm_bindgen_test]
fn attribute_changes_are_reverted() {
    assert_reverted(
        r##"<p class="first second" title="original" data-last="x">text</p><span id="s"></span>
            <svg><use xlink:href="#here"></use></svg>"##,
        change_attributes,
    );
}

#[wasm_bindgen_test]
fn text_changes_are_reverted() {
    assert_reverted(
        "<p><b>bold</b> <i>italic <u>under</u></i> <em>emphasis</em> tail</p>",
        change_text,
    );
}

#[wasm_bindgen_test]
fn child_list_changes_are_reverted() {
    assert_reverted(
        "<ul><li>a</li><li>b</li><li>c</li></ul><ol><li>1</li></ol>\
         <section><h2>old</h2><p>old <b>content</b></p></section>\
         <header><h1>title</h1> and text</header><footer>end</footer>",
        change_children,
    );
}

#[wasm_bindgen_test]
fn nested_add_then_remove_is_reverted() {
    assert_reverted(
        r#"<p id="keep">kept</p><p id="moved">to be moved</p><p>last</p>"#,
        add_then_remove,
    );
}

#[wasm_bindgen_test]
fn form_control_values_are_reverted() {
    assert_reverted(
        r#"<input id="text" value="default"><input id="check" type="checkbox">
           <input id="tri" type="checkbox" checked>
           <input id="r1" type="radio" name="r" checked><input id="r2" type="radio" name="r">
           <select id="one"><option>a</option><option selected>b</option><option>c</option></select>
           <select id="many" multiple><option selected>a</option><option selected>b</option><option>c</option></select>
           <textarea id="area">some text</textarea><input id="attr" value="attribute">"#,
        change_controls,
    );
}

#[wasm_bindgen_test]
fn typed_values_are_restored_too() {
    // A value the user typed (the control is dirty) before the attempt is what comes back,
    // not the value attribute.
    let root = fixture(r#"<input value="default"><textarea>default</textarea>"#);
    let input: web_sys::HtmlInputElement = root
        .query_selector("input")
        .unwrap()
        .unwrap()
        .unchecked_into();
    input.set_value("typed by the user");
    let changes = record(&root, |root| {
        let input: web_sys::HtmlInputElement = root
            .query_selector("input")
            .unwrap()
            .unwrap()
            .unchecked_into();
        input.set_value("set by the handler");
    });
    assert!(!changes.is_empty(), "a property change alone is a change");
    changes.revert();
    assert_eq!(input.value(), "typed by the user");
    discard(&root);
}

#[wasm_bindgen_test]
fn typing_after_the_attempt_survives_its_rollback() {
    // The handler cleared the box and its commit is in flight; the user types the next
    // item; then the commit conflicts and the attempt is rolled back. The new typing stays
    // (only a control that still shows what the attempt left is restored).
    let root = fixture(r#"<input value=""><textarea></textarea>"#);
    let input: web_sys::HtmlInputElement = root
        .query_selector("input")
        .unwrap()
        .unwrap()
        .unchecked_into();
    input.set_value("first item");
    let changes = record(&root, |root| {
        let input: web_sys::HtmlInputElement = root
            .query_selector("input")
            .unwrap()
            .unwrap()
            .unchecked_into();
        input.set_value("");
    });
    input.set_value("second item");
    changes.revert();
    assert_eq!(input.value(), "second item");
    discard(&root);
}

#[wasm_bindgen_test]
fn an_attempt_that_changes_nothing_is_empty() {
    let root = fixture(r#"<input value="same"><p title="t">text</p>"#);
    let before = outer(&root);
    let changes = record(&root, |root| {
        // Reads, and a property set to the value it already has, are no change.
        let input: web_sys::HtmlInputElement = root
            .query_selector("input")
            .unwrap()
            .unwrap()
            .unchecked_into();
        let value = input.value();
        input.set_value(&value);
        let _ = root
            .query_selector("p")
            .unwrap()
            .unwrap()
            .get_attribute("title");
    });
    assert!(changes.is_empty());
    changes.revert();
    assert_eq!(outer(&root), before);
    discard(&root);
}

#[wasm_bindgen_test]
async fn records_are_taken_synchronously() {
    let root = fixture("<p>text</p>");
    let before = outer(&root);
    // No microtask runs between the change and finish(): the records must already be there.
    let journal = DomJournal::start(&root).unwrap();
    root.set_attribute("data-a", "1").unwrap();
    root.set_attribute("data-a", "2").unwrap();
    root.remove_attribute("data-a").unwrap(); // no net change, but three records
    let p = root.query_selector("p").unwrap().unwrap();
    p.set_text_content(Some("new text"));
    let changes = journal.finish().unwrap();
    assert!(!changes.is_empty());

    // Changes after finish() are not the attempt's: they are neither recorded nor undone,
    // and the journal's observer, disconnected, never calls back (a call after its records
    // were taken would find nothing to do; a failing call would be an uncaught error).
    root.set_attribute("data-later", "kept").unwrap();
    JsFuture::from(timeout()).await.unwrap();
    changes.revert();
    assert_eq!(root.get_attribute("data-later").as_deref(), Some("kept"));
    root.remove_attribute("data-later").unwrap();
    assert_eq!(outer(&root), before);
    discard(&root);
}

#[wasm_bindgen_test]
fn changes_outside_the_root_are_not_recorded() {
    let root = fixture("<p>inside</p>");
    let other = fixture("<p>outside</p>");
    let other_before = outer(&other);
    let changes = record(&root, |_| {});
    assert!(changes.is_empty());
    let journal = DomJournal::start(&root).unwrap();
    other.set_attribute("data-x", "1").unwrap();
    let changes = journal.finish().unwrap();
    assert!(changes.is_empty());
    changes.revert();
    assert_ne!(
        outer(&other),
        other_before,
        "outside the root stays as the handler left it"
    );
    discard(&root);
    discard(&other);
}

#[wasm_bindgen_test]
fn a_removed_attribute_returns_at_the_end_of_the_list() {
    // MutationRecords do not say where a removed attribute was: it comes back last, with
    // its value. Attribute order has no meaning in HTML.
    let root = fixture(r#"<p id="p" title="t" lang="en">text</p>"#);
    let changes = record(&root, |root| {
        root.query_selector("p")
            .unwrap()
            .unwrap()
            .remove_attribute("id")
            .unwrap();
    });
    changes.revert();
    assert_eq!(
        outer(&root),
        r#"<div class="fixture"><p title="t" lang="en" id="p">text</p></div>"#
    );
    discard(&root);
}

#[wasm_bindgen_test]
fn revert_survives_page_changes_after_the_attempt() {
    // Something outside the attempt (another script) moves a node the attempt added out of
    // the root: that node is no longer the attempt's to remove, and the rest is still undone.
    let root = fixture(r#"<p id="a">a</p><p id="b">b</p>"#);
    let changes = record(&root, |root| {
        let doc = web_sys::window().unwrap().document().unwrap();
        let added = doc.create_element("i").unwrap();
        added.set_id("added");
        root.append_child(&added).unwrap();
        let b = root.query_selector("#b").unwrap().unwrap();
        b.set_attribute("title", "changed").unwrap();
        root.query_selector("#a")
            .unwrap()
            .unwrap()
            .set_attribute("title", "changed")
            .unwrap();
    });
    let added = root.query_selector("#added").unwrap().unwrap();
    let elsewhere = fixture("");
    elsewhere.append_child(&added).unwrap();
    changes.revert();
    assert_eq!(
        outer(&root),
        r#"<div class="fixture"><p id="a">a</p><p id="b">b</p></div>"#
    );
    discard(&root);
    discard(&elsewhere);
}

#[wasm_bindgen_test]
fn page_javascript_may_run_during_a_revert() {
    // Removing a custom element runs its disconnectedCallback synchronously, inside
    // revert(); it changes the DOM, and may even start another journal.
    let root = fixture("<p>text</p>");
    let before = outer(&root);
    let changes = record(&root, add_probe);
    assert_eq!(probe_log(), "connected");
    let nested = DomJournal::start(&root).unwrap();
    changes.revert();
    assert_eq!(probe_log(), "disconnected");
    assert_eq!(body_probe(), "ran");
    assert!(
        !nested.finish().unwrap().is_empty(),
        "the revert itself was seen"
    );
    assert_eq!(outer(&root), before);
    discard(&root);
}
