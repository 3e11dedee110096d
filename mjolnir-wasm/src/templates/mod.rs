//! Live `{{ … }}` templates (the paper's Figure 3): text and attribute values that show
//! shared and page state, re-rendered when what they read changes, on any client.
//!
//! Expressions are parsed and evaluated by `mjolnir_core::template`, never by `eval`, so
//! pages work under a strict Content-Security-Policy. Rendering reads the client cache
//! outside any transaction; a key not cached yet shows a placeholder and is fetched (which
//! subscribes to it), and its arrival re-renders. Renders are batched to one per animation
//! frame. Queries read the same way, through the page's speculative view, so the page's
//! own writes show in their results at once.
//!
//! An element with `data-each="todo in …"` is a list template, shown once per row
//! (`lists.rs`); the templates inside each copy read its row as `todo`. A render brings the
//! lists in line first, then renders every binding, those of the copies included.
//!
//! # Templates that appear later
//!
//! Pages add markup after [`bind`]: a list item appended by a handler, an attribute set by
//! a script. A `MutationObserver` on the root binds what it adds. Our own renders mutate
//! the same nodes, and a rendered value may itself contain `{{` (a kv value that is
//! literally `{{ 1+1 }}`), so a mutation is never read as a new template just because its
//! text looks like one: bindings are keyed by node (and attribute name), and a change to
//! a bound node that leaves the value we last rendered there is ours. The template source
//! lives in the binding, not in the DOM, which only ever holds its output.
//!
//! # Templates that go away, and come back
//!
//! A binding whose node is no longer under the root (the page removed it, or a rolled-back
//! transaction took out a node its handler added) is dropped, so the list does not grow
//! with the page's churn. "Under the root" rather than "in the document": a root that is
//! detached for a while (built off-document, moved) keeps its templates, since our observer
//! would not see it come back.
//!
//! A dropped node can come back (moved in two steps, or put back by a rollback), and by
//! then it shows its last output, not its template. So each dropped binding leaves its
//! source and its last output in a `WeakMap` keyed by node, which lets the garbage
//! collector take nodes that never return; a node that comes back still showing that
//! output is bound to the source again. The same memory undoes a page's change to a bound
//! value when a rollback restores the old output. A value that no longer matches (the page
//! wrote something else meanwhile) is taken as it is: a template if it has `{{`, plain
//! text otherwise.
//!
//! The page writing plain text over a bound value does not unbind it: the template keeps
//! the node and overwrites that text at its next render, so a value is either the page's
//! or a template's, never a mix that depends on timing. Writing a value with `{{`
//! replaces the template; removing a bound attribute unbinds it (rendering would put it
//! back, undoing a rollback of the handler that added it).

mod lists;
mod parts;

use crate::runtime::Runtime;
use js_sys::{Array, Map, Set, WeakMap};
pub use lists::EACH_ATTRIBUTE;
use parts::{Locals, Part, parse};
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Element, MutationObserver, MutationObserverInit, MutationRecord, Node};

/// Set (empty) on an element while a template it shows displays a write of this page that
/// the server has not confirmed yet, so CSS can mark it (`[data-mjolnir-pending]`).
pub const PENDING_ATTRIBUTE: &str = "data-mjolnir-pending";

/// Elements whose text is code, not content: never templates.
const RAW_TEXT: &str = "script, style";

/// Why templates could not be kept live. Templates already bound still render.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot watch for templates added later: {0}")]
    Observe(String),
}

/// Where a template's output goes.
#[derive(Clone, Debug)]
enum Target {
    Text(Node),
    Attribute(Element, String),
}

impl Target {
    fn node(&self) -> &Node {
        match self {
            Target::Text(node) => node,
            Target::Attribute(el, _) => el,
        }
    }

    /// Names the target among its node's: attribute names are never empty, so the empty
    /// string can stand for a text node's data.
    fn key(&self) -> &str {
        match self {
            Target::Text(_) => "",
            Target::Attribute(_, name) => name,
        }
    }

    /// The element the target shows in: an attribute's, or a text node's parent.
    fn element(&self) -> Option<Element> {
        match self {
            Target::Text(node) => node.parent_element(),
            Target::Attribute(el, _) => Some(el.clone()),
        }
    }

    fn same(&self, other: &Target) -> bool {
        self.key() == other.key() && self.node().is_same_node(Some(other.node()))
    }

    /// The value the DOM holds now; `None` for an attribute that is gone.
    fn current(&self) -> Option<String> {
        match self {
            Target::Text(node) => Some(node.text_content().unwrap_or_default()),
            Target::Attribute(el, name) => el.get_attribute(name),
        }
    }
}

#[derive(Debug)]
struct Binding {
    target: Target,
    /// The template as written, to bind the node again should it come back.
    source: String,
    parts: Vec<Part>,
    /// What the target held when we last rendered it (or its source, before the first
    /// render): a mutation that leaves this value is our own.
    shown: String,
    /// The names it can read, if it is in a copy of a list template.
    locals: Option<Rc<Locals>>,
}

impl Binding {
    fn new(target: Target, source: String, shown: String, locals: Option<Rc<Locals>>) -> Binding {
        Binding {
            target,
            parts: parse(&source),
            source,
            shown,
            locals,
        }
    }

    /// A target that shows `text` as it is: a list's error.
    fn fixed(target: Target, text: String) -> Binding {
        Binding {
            target,
            parts: vec![Part::Text(text.clone())],
            source: text,
            shown: String::new(),
            locals: None,
        }
    }
}

/// The templates of one page, and whether a render is already scheduled.
#[derive(Debug)]
pub struct Templates {
    rt: Rc<Runtime>,
    root: Node,
    bindings: RefCell<Vec<Binding>>,
    /// Node → `Set` of the keys ([`Target::key`]) bound on it: whether a mutated node is
    /// ours, without a scan of every binding per mutation record.
    live: Map,
    /// Node → `Map` of key → `[source, shown]`: the templates of targets no longer bound
    /// (see the module documentation); and list anchor → its template (`lists.rs`).
    remembered: WeakMap,
    lists: RefCell<Vec<lists::List>>,
    /// Copy of a list template → its slot in `scopes`.
    copies: Map,
    /// The names each copy's templates read, by slot (a free slot is `None`).
    scopes: RefCell<Vec<Option<Rc<Locals>>>>,
    scheduled: Cell<bool>,
}

/// Finds the templates under `root` and renders them now and whenever data changes,
/// including templates added under `root` later.
pub fn bind(rt: &Rc<Runtime>, root: &Node) -> Rc<Templates> {
    let templates = Rc::new(Templates {
        rt: rt.clone(),
        root: root.clone(),
        bindings: RefCell::new(Vec::new()),
        live: Map::new(),
        remembered: WeakMap::new(),
        lists: RefCell::new(Vec::new()),
        copies: Map::new(),
        scopes: RefCell::new(Vec::new()),
        scheduled: Cell::new(false),
    });
    templates.adopt_tree(&mut templates.bindings.borrow_mut(), root, None);
    // The runtime's listeners own the templates from here on: they live as long as the page.
    for event in ["change", "commit", "abort", "connection", "state"] {
        let t = templates.clone();
        let listener = Closure::<dyn Fn(JsValue)>::new(move |_| t.schedule());
        rt.on(event.to_owned(), listener.into_js_value().unchecked_into());
    }
    // Without the observer the templates present now still work; only later ones are
    // missed, which is worth a warning rather than failing the page.
    if let Err(err) = templates.observe() {
        web_sys::console::warn_1(&format!("mjolnir: {err}").into());
    }
    templates.render();
    templates
}

fn describe(err: &JsValue) -> String {
    err.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| err.as_string())
        .unwrap_or_else(|| format!("{err:?}"))
}

/// Whether `node` sits in a `<script>` or `<style>`, whose text is never a template.
fn in_raw_text(node: &Node) -> bool {
    let element = match node.dyn_ref::<Element>() {
        Some(el) => Some(el.clone()),
        None => node.parent_element(),
    };
    element.is_some_and(|el| matches!(el.closest(RAW_TEXT), Ok(Some(_))))
}

impl Templates {
    /// Watches the root for templates added, changed or removed after [`bind`].
    fn observe(self: &Rc<Self>) -> Result<(), TemplateError> {
        // Weak: the runtime's listeners already keep the templates alive, and the root
        // keeps its observer (and so this callback) alive; a strong reference would only
        // add a cycle.
        let me: Weak<Templates> = Rc::downgrade(self);
        let callback: js_sys::Function = Closure::<dyn Fn(Array)>::new(move |records: Array| {
            if let Some(me) = me.upgrade() {
                me.on_mutations(&records);
            }
        })
        .into_js_value()
        .unchecked_into();
        let observer =
            MutationObserver::new(&callback).map_err(|e| TemplateError::Observe(describe(&e)))?;
        let options = MutationObserverInit::new();
        options.set_child_list(true);
        options.set_subtree(true);
        options.set_attributes(true);
        options.set_character_data(true);
        observer
            .observe_with_options(&self.root, &options)
            .map_err(|e| TemplateError::Observe(describe(&e)))?;
        Ok(())
    }

    /// Binds what the mutations brought, unbinds what they took away, and renders if that
    /// changed anything. Runs as a microtask, never inside a render or a DOM write.
    fn on_mutations(self: &Rc<Self>, records: &Array) {
        let mut changed = false;
        let mut removed = false;
        {
            let mut bindings = self.bindings.borrow_mut();
            for record in records.iter() {
                let Ok(record) = record.dyn_into::<MutationRecord>() else {
                    continue;
                };
                let Some(target) = record.target() else {
                    continue;
                };
                match record.type_().as_str() {
                    "childList" => {
                        removed |= record.removed_nodes().length() > 0;
                        let added = record.added_nodes();
                        for node in (0..added.length()).filter_map(|i| added.item(i)) {
                            // Added and removed again before this batch: nothing to bind.
                            if self.root.contains(Some(&node)) && !in_raw_text(&node) {
                                changed |= self.adopt_tree(&mut bindings, &node, None);
                            }
                        }
                    }
                    // Our own pending mark is never a template.
                    "attributes"
                        if record.attribute_name().as_deref() == Some(PENDING_ATTRIBUTE) => {}
                    "attributes" => {
                        if let Some(el) = target.dyn_ref::<Element>()
                            && self.root.contains(Some(&target))
                        {
                            changed |= self.adopt_attributes(&mut bindings, el, None);
                        }
                    }
                    "characterData"
                        if target.node_type() == Node::TEXT_NODE
                            && self.root.contains(Some(&target))
                            && !in_raw_text(&target) =>
                    {
                        changed |= self.adopt(&mut bindings, Target::Text(target), None);
                    }
                    _ => {}
                }
            }
            if removed {
                self.prune(&mut bindings);
                self.prune_lists();
            }
        }
        if changed {
            self.schedule();
        }
    }

    /// Binds the templates in `node` and everything under it, and makes its elements with
    /// a `data-each` lists. `locals`: the names of the copy `node` is in, if the caller
    /// knows them (otherwise they are looked up, as needed). Returns whether any binding
    /// or list was added or changed.
    fn adopt_tree(
        &self,
        bindings: &mut Vec<Binding>,
        node: &Node,
        locals: Option<&Rc<Locals>>,
    ) -> bool {
        match node.node_type() {
            Node::TEXT_NODE => return self.adopt(bindings, Target::Text(node.clone()), locals),
            Node::COMMENT_NODE => return self.restore_list(node),
            _ => {}
        }
        let mut changed = false;
        if let Some(el) = node.dyn_ref::<Element>() {
            if matches!(el.tag_name().as_str(), "SCRIPT" | "STYLE") {
                return false;
            }
            if let Some(source) = el.get_attribute(EACH_ATTRIBUTE)
                && !self.root.is_same_node(Some(node))
            {
                self.make_list(el, &source, locals);
                return true;
            }
            changed |= self.adopt_attributes(bindings, el, locals);
        }
        let children = node.child_nodes();
        for child in (0..children.length()).filter_map(|i| children.item(i)) {
            changed |= self.adopt_tree(bindings, &child, locals);
        }
        changed
    }

    /// Takes every attribute of `el` as it is now, and lets go of bound ones that are gone.
    /// Mutation records name attributes by local name and namespace; re-reading the
    /// element keeps to the qualified names that rendering uses.
    fn adopt_attributes(
        &self,
        bindings: &mut Vec<Binding>,
        el: &Element,
        locals: Option<&Rc<Locals>>,
    ) -> bool {
        let mut changed = false;
        let attrs = el.attributes();
        for attr in (0..attrs.length()).filter_map(|i| attrs.item(i)) {
            let target = Target::Attribute(el.clone(), attr.name());
            changed |= self.adopt(bindings, target, locals);
        }
        if let Ok(keys) = self.live.get(el).dyn_into::<Set>() {
            let gone: Vec<String> = keys
                .values()
                .into_iter()
                .filter_map(|k| k.ok()?.as_string())
                .filter(|name| !el.has_attribute(name))
                .collect();
            for name in gone {
                changed |= self.adopt(bindings, Target::Attribute(el.clone(), name), locals);
            }
        }
        changed
    }

    /// Brings one target's binding in line with its current value (see the module
    /// documentation for the rules). Returns whether any binding was added or changed.
    fn adopt(
        &self,
        bindings: &mut Vec<Binding>,
        target: Target,
        locals: Option<&Rc<Locals>>,
    ) -> bool {
        let current = target.current();
        let bound = self.is_live(&target);
        let index = if bound {
            bindings.iter().position(|b| b.target.same(&target))
        } else {
            None
        };
        match (index, current) {
            // An attribute removed (by the page, or by a rollback of the handler that set
            // it): rendering would put it back.
            (Some(i), None) => {
                let b = bindings.swap_remove(i);
                self.unlive(&b.target);
                self.remember(&b);
                false
            }
            (Some(i), Some(current)) => {
                if current == bindings[i].shown {
                    return false;
                }
                let source = match self.recall(&target, &current) {
                    Some(source) => source,
                    None if current.contains("{{") => current.clone(),
                    None => return false,
                };
                let locals = bindings[i].locals.clone();
                let b = Binding::new(target, source, current, locals);
                let old = std::mem::replace(&mut bindings[i], b);
                self.remember(&old);
                true
            }
            (None, None) => false,
            (None, Some(current)) => {
                let source = match self.recall(&target, &current) {
                    Some(source) => source,
                    None if current.contains("{{") => current.clone(),
                    None => return false,
                };
                let locals = locals.cloned().or_else(|| self.scope_of(target.node()));
                self.set_live(&target);
                bindings.push(Binding::new(target, source, current, locals));
                true
            }
        }
    }

    /// Drops the bindings of nodes no longer under the root, remembering their templates.
    /// A scan of every binding, so only run when a batch removed nodes.
    fn prune(&self, bindings: &mut Vec<Binding>) {
        bindings.retain(|b| {
            let keep = self.root.contains(Some(b.target.node()));
            if !keep {
                self.unlive(&b.target);
                self.remember(b);
            }
            keep
        });
    }

    fn is_live(&self, target: &Target) -> bool {
        self.live
            .get(target.node())
            .dyn_into::<Set>()
            .is_ok_and(|keys| keys.has(&target.key().into()))
    }

    fn set_live(&self, target: &Target) {
        let keys = match self.live.get(target.node()).dyn_into::<Set>() {
            Ok(keys) => keys,
            Err(_) => {
                let keys = Set::new(&JsValue::UNDEFINED);
                self.live.set(target.node(), &keys);
                keys
            }
        };
        keys.add(&target.key().into());
    }

    fn unlive(&self, target: &Target) {
        if let Ok(keys) = self.live.get(target.node()).dyn_into::<Set>() {
            keys.delete(&target.key().into());
            if keys.size() == 0 {
                self.live.delete(target.node());
            }
        }
    }

    fn remember(&self, b: &Binding) {
        let node = b.target.node();
        let entries = match self.remembered.get(node).dyn_into::<Map>() {
            Ok(entries) => entries,
            Err(_) => {
                let entries = Map::new();
                self.remembered.set(node, &entries);
                entries
            }
        };
        let entry = Array::of2(&b.source.as_str().into(), &b.shown.as_str().into());
        entries.set(&b.target.key().into(), &entry);
    }

    /// The remembered template of `target` if it still shows that template's last
    /// output, forgetting it: from now on the binding carries it.
    fn recall(&self, target: &Target, current: &str) -> Option<String> {
        let entries = self.remembered.get(target.node()).dyn_into::<Map>().ok()?;
        let key = JsValue::from(target.key());
        let entry = entries.get(&key).dyn_into::<Array>().ok()?;
        if entry.get(1).as_string().as_deref() != Some(current) {
            return None;
        }
        entries.delete(&key);
        entry.get(0).as_string()
    }

    /// How many templates are bound now: for tests of dropping removed nodes.
    #[doc(hidden)]
    pub fn binding_count(&self) -> usize {
        self.bindings.borrow().len()
    }

    /// Renders at the next animation frame, once however many changes arrive before it.
    fn schedule(self: &Rc<Self>) {
        if self.scheduled.replace(true) {
            return;
        }
        let me = self.clone();
        let frame = Closure::once_into_js(move || {
            me.scheduled.set(false);
            me.render();
        });
        if let Some(w) = web_sys::window() {
            let _ = w.request_animation_frame(frame.unchecked_ref());
        }
    }

    /// Evaluates every template and writes the ones whose output changed.
    pub fn render(&self) {
        // Element → whether any template it shows is pending (see `PENDING_ATTRIBUTE`),
        // or, for a list's copy, the row it shows.
        let pending = Map::new();
        self.render_lists(&pending);
        let writes: Vec<(Target, String)> = {
            let mut bindings = self.bindings.borrow_mut();
            bindings
                .iter_mut()
                .filter_map(|b| {
                    let (out, is_pending) = parts::render(&self.rt, &b.parts, b.locals.as_deref());
                    if let Some(el) = b.target.element() {
                        let before = pending.get(&el).is_truthy();
                        pending.set(&el, &JsValue::from_bool(before || is_pending));
                    }
                    b.shown.clone_from(&out);
                    (b.target.current().as_deref() != Some(out.as_str()))
                        .then(|| (b.target.clone(), out))
                })
                .collect()
        };
        // Writing to the DOM may run page code synchronously (custom elements' callbacks),
        // so no borrow is held while it happens.
        for (target, out) in writes {
            match &target {
                Target::Text(node) => node.set_text_content(Some(&out)),
                Target::Attribute(el, name) => {
                    let _ = el.set_attribute(name, &out);
                }
            }
        }
        pending.for_each(&mut |is_pending, el| {
            let el: Element = el.unchecked_into();
            let shown = el.has_attribute(PENDING_ATTRIBUTE);
            if is_pending.is_truthy() && !shown {
                let _ = el.set_attribute(PENDING_ATTRIBUTE, "");
            } else if !is_pending.is_truthy() && shown {
                let _ = el.remove_attribute(PENDING_ATTRIBUTE);
            }
        });
    }
}
