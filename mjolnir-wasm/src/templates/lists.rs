//! List templates: an element with `data-each="todo in table('todos').orderBy('created')"`
//! is shown once per row of the query, and the templates inside each copy read that row
//! as `todo`.
//!
//! When it is bound, the element leaves the document: a comment (the list's *anchor*) takes
//! its place, and the element, kept aside, is the template every copy is cloned from. The
//! copies follow the anchor, in the result's order. Each render evaluates the expression
//! (a query through the page's speculative view, as `{{ }}` reads it) and brings the
//! copies in line, keyed by primary key: a row that stays keeps its element (moved if its
//! place changed, its templates re-rendered if its value did), a new row gets a new copy,
//! a row gone loses its copy. A copy showing a row the page wrote and the server has not
//! confirmed carries `data-mjolnir-pending`.
//!
//! An expression that is not a query (an array from `kv` or `state`, a `?:` whose branch
//! is not a query) is shown too: its strings, numbers and booleans are keyed by value, other
//! items by position. A list inside a copy is a list of its own, one per copy, which sees
//! the names of the lists around it. While a result loads, a list keeps what it shows;
//! an expression that does not parse, or a query that is refused, shows its error in place
//! of the copies, as `{{ }}` does.
//!
//! A list whose anchor leaves the root (the page removed its container) is let go, its
//! copies removed with it; its template stays with the anchor (see `remembered`), so the
//! list comes back, rendered afresh, if the anchor does.

use super::parts::{Locals, PageScope, error};
use super::{Binding, Target, Templates};
use js_sys::Map;
use mjolnir_core::Pk;
use mjolnir_core::template::{Each, EvalError};
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Element, Node};

/// The attribute that makes an element a list template.
pub const EACH_ATTRIBUTE: &str = "data-each";

#[derive(Debug)]
pub(super) struct List {
    /// The comment that holds the list's place: the copies follow it.
    anchor: Node,
    /// The element as written, out of the document: each copy is a deep clone of it.
    template: Element,
    each: Result<Each, String>,
    /// The copy this list is inside, for a list in a list: its names are visible here.
    outer: Option<Rc<Locals>>,
    copies: Vec<Copy>,
    /// The text node showing the list's error, if it has one.
    error: Option<Node>,
}

#[derive(Debug)]
struct Copy {
    key: ItemKey,
    element: Element,
    locals: Rc<Locals>,
    /// Its slot in [`Templates::scopes`].
    slot: usize,
    pending: bool,
}

/// What identifies an item across renders.
#[derive(Debug, PartialEq)]
enum ItemKey {
    Pk(Pk),
    /// A string, number or boolean, and which of its equals it is.
    Value(Value, usize),
    Index(usize),
}

struct Item {
    key: ItemKey,
    value: Value,
    pending: bool,
}

impl Templates {
    /// Makes `el`, which has a `data-each`, a list: the anchor takes its place. `outer` is
    /// the copy it is in, if known (`None`: looked up).
    pub(super) fn make_list(&self, el: &Element, source: &str, outer: Option<&Rc<Locals>>) {
        let Some(doc) = el.owner_document() else {
            return;
        };
        let anchor: Node = doc
            .create_comment(&format!(" {EACH_ATTRIBUTE}=\"{source}\" "))
            .into();
        if el.replace_with_with_node_1(&anchor).is_err() {
            return;
        }
        self.remembered.set(&anchor, el);
        self.add_list(anchor, el.clone(), outer);
    }

    /// A list again for a comment that was one's anchor (see the module documentation).
    pub(super) fn restore_list(&self, anchor: &Node) -> bool {
        let Ok(template) = self.remembered.get(anchor).dyn_into::<Element>() else {
            return false;
        };
        if self
            .lists
            .borrow()
            .iter()
            .any(|l| l.anchor.is_same_node(Some(anchor)))
        {
            return false;
        }
        self.add_list(anchor.clone(), template, None);
        true
    }

    fn add_list(&self, anchor: Node, template: Element, outer: Option<&Rc<Locals>>) {
        let source = template.get_attribute(EACH_ATTRIBUTE).unwrap_or_default();
        let each = Each::parse(&source).map_err(|e| format!("{{{{ {} }}}}: {e}", source.trim()));
        let outer = outer.cloned().or_else(|| self.scope_of(&anchor));
        self.lists.borrow_mut().push(List {
            anchor,
            template,
            each,
            outer,
            copies: Vec::new(),
            error: None,
        });
    }

    /// The names a node sees: those of the innermost copy it is in.
    pub(super) fn scope_of(&self, node: &Node) -> Option<Rc<Locals>> {
        if self.copies.size() == 0 {
            return None;
        }
        // An attribute's node is its element, which may be a copy itself.
        let mut at = match node.dyn_ref::<Element>() {
            Some(el) => Some(el.clone()),
            None => node.parent_element(),
        };
        while let Some(el) = at {
            if let Some(slot) = self.copies.get(&el).as_f64() {
                return self.scopes.borrow().get(slot as usize).cloned().flatten();
            }
            if self.root.is_same_node(Some(&el)) {
                return None;
            }
            at = el.parent_element();
        }
        None
    }

    /// Brings every list in line with its expression, outer lists before the lists in
    /// their copies; lets go of lists no longer under the root. Sets, in `pending`, each
    /// copy's element to whether it shows a pending row.
    pub(super) fn render_lists(&self, pending: &Map) {
        let mut kept = Vec::new();
        // Copies made in this pass may hold lists of their own: the next batch.
        loop {
            let batch = std::mem::take(&mut *self.lists.borrow_mut());
            if batch.is_empty() {
                break;
            }
            for mut list in batch {
                if self.root.contains(Some(&list.anchor)) {
                    self.render_list(&mut list);
                    for copy in &list.copies {
                        pending.set(&copy.element, &JsValue::from_bool(copy.pending));
                    }
                    kept.push(list);
                } else {
                    self.clear(&mut list);
                }
            }
        }
        *self.lists.borrow_mut() = kept;
    }

    fn render_list(&self, list: &mut List) {
        let items = match &list.each {
            Err(message) => Err(message.clone()),
            Ok(each) => match self.items(each, list.outer.as_deref()) {
                Ok(items) => Ok(items),
                // Keeps what it shows until the result is here.
                Err(EvalError::Loading) => return,
                Err(EvalError::Invalid(message)) => Err(error(&message)),
            },
        };
        match items {
            Ok(items) => {
                if let Some(node) = list.error.take() {
                    detach(&node);
                }
                self.reconcile(list, items);
            }
            Err(message) => {
                self.remove_copies(list);
                if list.error.is_none()
                    && let Some(doc) = list.anchor.owner_document()
                {
                    let node: Node = doc.create_text_node("").into();
                    if let Some(parent) = list.anchor.parent_node() {
                        let _ = parent.insert_before(&node, list.anchor.next_sibling().as_ref());
                    }
                    list.error = Some(node);
                }
                if let Some(node) = &list.error {
                    // A binding, so that the observer takes its text (which has `{{`) as
                    // ours, and the render writes it.
                    let mut bindings = self.bindings.borrow_mut();
                    let target = Target::Text(node.clone());
                    match bindings.iter_mut().find(|b| b.target.same(&target)) {
                        Some(b) => b.parts = vec![super::Part::Text(message)],
                        None => {
                            self.set_live(&target);
                            bindings.push(Binding::fixed(target, message));
                        }
                    }
                }
            }
        }
    }

    /// What the list's expression gives now, each item with its key.
    fn items(&self, each: &Each, outer: Option<&Locals>) -> Result<Vec<Item>, EvalError> {
        let mut scope = PageScope::new(&self.rt, outer);
        if let Some(query) = each.expr.query(&mut scope)?
            && !query.count
        {
            let view = scope.view(&query)?;
            return Ok(view
                .rows
                .into_iter()
                .map(|r| Item {
                    key: ItemKey::Pk(r.pk),
                    value: r.value,
                    pending: r.pending,
                })
                .collect());
        }
        let values = match each.expr.eval(&mut scope)? {
            Value::Array(values) => values,
            Value::Null => Vec::new(),
            other => {
                return Err(EvalError::Invalid(format!(
                    "{EACH_ATTRIBUTE} takes a list, not {other}"
                )));
            }
        };
        let mut items: Vec<Item> = Vec::with_capacity(values.len());
        for (i, value) in values.into_iter().enumerate() {
            let key = match &value {
                Value::Array(_) | Value::Object(_) | Value::Null => ItemKey::Index(i),
                scalar => {
                    let nth = items
                        .iter()
                        .filter(|it| matches!(&it.key, ItemKey::Value(v, _) if v == scalar))
                        .count();
                    ItemKey::Value(scalar.clone(), nth)
                }
            };
            items.push(Item {
                key,
                value,
                pending: false,
            });
        }
        Ok(items)
    }

    /// Makes the copies follow `items`: reuses the copy of every item that stays, moving
    /// it if its place changed, makes copies for new items, removes the others.
    fn reconcile(&self, list: &mut List, items: Vec<Item>) {
        let Some(parent) = list.anchor.parent_node() else {
            return;
        };
        let name = match &list.each {
            Ok(each) => each.name.clone(),
            Err(_) => return,
        };
        // Last first: mostly each item is where it was, so its copy is at the end.
        let mut old = std::mem::take(&mut list.copies);
        old.reverse();
        let mut fresh = Vec::new();
        for item in items {
            let found = match old.last() {
                Some(c) if c.key == item.key => Some(old.len() - 1),
                _ => old.iter().rposition(|c| c.key == item.key),
            };
            let copy = match found {
                Some(j) => {
                    let mut copy = old.remove(j);
                    if *copy.locals.value.borrow() != item.value {
                        *copy.locals.value.borrow_mut() = item.value;
                    }
                    copy.pending = item.pending;
                    copy
                }
                None => {
                    let Some(copy) = self.new_copy(list, &name, item) else {
                        continue;
                    };
                    fresh.push(list.copies.len());
                    copy
                }
            };
            list.copies.push(copy);
        }
        for copy in old {
            self.drop_copy(copy);
        }
        // In order after the anchor, moving only what is out of place.
        let mut prev = list.anchor.clone();
        for copy in &list.copies {
            let next = prev.next_sibling();
            if !next
                .as_ref()
                .is_some_and(|n| n.is_same_node(Some(&copy.element)))
            {
                let _ = parent.insert_before(&copy.element, next.as_ref());
            }
            prev = copy.element.clone().into();
        }
        // Bound once in the document, so that their templates render in this same pass.
        let mut bindings = self.bindings.borrow_mut();
        for &i in &fresh {
            let copy = &list.copies[i];
            self.adopt_tree(&mut bindings, &copy.element, Some(&copy.locals));
        }
    }

    fn new_copy(&self, list: &List, name: &str, item: Item) -> Option<Copy> {
        let element: Element = list
            .template
            .clone_node_with_deep(true)
            .ok()?
            .dyn_into()
            .ok()?;
        let _ = element.remove_attribute(EACH_ATTRIBUTE);
        let locals = Rc::new(Locals {
            name: name.to_owned(),
            value: RefCell::new(item.value),
            outer: list.outer.clone(),
        });
        let mut scopes = self.scopes.borrow_mut();
        let slot = match scopes.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                scopes.push(None);
                scopes.len() - 1
            }
        };
        scopes[slot] = Some(locals.clone());
        self.copies.set(&element, &JsValue::from(slot as u32));
        Some(Copy {
            key: item.key,
            element,
            locals,
            slot,
            pending: item.pending,
        })
    }

    fn drop_copy(&self, copy: Copy) {
        copy.element.remove();
        self.copies.delete(&copy.element);
        if let Some(slot) = self.scopes.borrow_mut().get_mut(copy.slot) {
            *slot = None;
        }
    }

    fn remove_copies(&self, list: &mut List) {
        for copy in std::mem::take(&mut list.copies) {
            self.drop_copy(copy);
        }
    }

    /// Lets go of the lists no longer under the root (see the module documentation).
    pub(super) fn prune_lists(&self) {
        let lists = std::mem::take(&mut *self.lists.borrow_mut());
        let mut kept = Vec::new();
        for mut list in lists {
            if self.root.contains(Some(&list.anchor)) {
                kept.push(list);
            } else {
                self.clear(&mut list);
            }
        }
        *self.lists.borrow_mut() = kept;
    }

    /// Lets go of a list no longer under the root: its copies and its error go (their
    /// bindings are pruned as removed nodes are).
    fn clear(&self, list: &mut List) {
        self.remove_copies(list);
        if let Some(node) = list.error.take() {
            detach(&node);
        }
    }
}

fn detach(node: &Node) {
    if let Some(parent) = node.parent_node() {
        let _ = parent.remove_child(node);
    }
}
