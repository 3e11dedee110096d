//! Live `{{ … }}` templates (the paper's Figure 3): text and attribute values that show
//! shared and page state, re-rendered when what they read changes, on any client.
//!
//! Expressions are parsed and evaluated by `mjolnir_core::template`, never by `eval`, so
//! pages work under a strict Content-Security-Policy. Rendering reads the client cache
//! outside any transaction; a key not cached yet shows a placeholder and is fetched (which
//! subscribes to it), and its arrival re-renders. Renders are batched to one per animation
//! frame.

use crate::convert::from_js;
use crate::runtime::Runtime;
use mjolnir_core::template::{EvalError, Expr, Scope, display};
use mjolnir_core::{Key, Pk};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// What a template shows while its data loads.
pub const PLACEHOLDER: &str = "…";

/// One piece of a template string.
#[derive(Debug)]
enum Part {
    Text(String),
    Expr(Expr),
    /// An expression that does not parse: shown as an error, so a developer sees it.
    Broken(String),
}

/// Where a template's output goes.
#[derive(Debug)]
enum Target {
    Text(web_sys::Node),
    Attribute(web_sys::Element, String),
}

#[derive(Debug)]
struct Binding {
    target: Target,
    parts: Vec<Part>,
}

/// The templates of one page, and whether a render is already scheduled.
#[derive(Debug)]
pub struct Templates {
    rt: Rc<Runtime>,
    bindings: RefCell<Vec<Binding>>,
    scheduled: Cell<bool>,
}

fn parse(text: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        if start > 0 {
            parts.push(Part::Text(rest[..start].to_owned()));
        }
        let source = &rest[start + 2..start + len];
        parts.push(match Expr::parse(source) {
            Ok(e) => Part::Expr(e),
            Err(e) => Part::Broken(format!("{{{{ {} }}}}: {e}", source.trim())),
        });
        rest = &rest[start + len + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    parts
}

/// Finds the templates under `root` and renders them now and whenever data changes.
pub fn bind(rt: &Rc<Runtime>, root: &web_sys::Node) -> Rc<Templates> {
    let mut bindings = Vec::new();
    collect(root, &mut bindings);
    let templates = Rc::new(Templates {
        rt: rt.clone(),
        bindings: RefCell::new(bindings),
        scheduled: Cell::new(false),
    });
    // The runtime's listeners own the templates from here on: they live as long as the page.
    for event in ["change", "commit", "abort", "connection"] {
        let t = templates.clone();
        let listener = Closure::<dyn Fn(JsValue)>::new(move |_| t.schedule());
        rt.on(event.to_owned(), listener.into_js_value().unchecked_into());
    }
    templates.render();
    templates
}

fn collect(node: &web_sys::Node, out: &mut Vec<Binding>) {
    if node.node_type() == web_sys::Node::TEXT_NODE {
        if let Some(text) = node.text_content().filter(|t| t.contains("{{")) {
            out.push(Binding {
                target: Target::Text(node.clone()),
                parts: parse(&text),
            });
        }
        return;
    }
    if let Some(el) = node.dyn_ref::<web_sys::Element>() {
        if matches!(el.tag_name().as_str(), "SCRIPT" | "STYLE") {
            return;
        }
        let attrs = el.attributes();
        for i in 0..attrs.length() {
            if let Some(attr) = attrs.item(i).filter(|a| a.value().contains("{{")) {
                out.push(Binding {
                    target: Target::Attribute(el.clone(), attr.name()),
                    parts: parse(&attr.value()),
                });
            }
        }
    }
    let children = node.child_nodes();
    for i in 0..children.length() {
        if let Some(child) = children.item(i) {
            collect(&child, out);
        }
    }
}

impl Templates {
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
        let outputs: Vec<String> = {
            let bindings = self.bindings.borrow();
            let mut scope = PageScope { rt: &self.rt };
            bindings
                .iter()
                .map(|b| b.parts.iter().map(|p| render_part(p, &mut scope)).collect())
                .collect()
        };
        // Writing to the DOM may run page code (observers); no borrow is held for that
        // beyond the bindings list, which page code cannot reach.
        for (b, out) in self.bindings.borrow().iter().zip(outputs) {
            match &b.target {
                Target::Text(node) => {
                    if node.text_content().as_deref() != Some(out.as_str()) {
                        node.set_text_content(Some(&out));
                    }
                }
                Target::Attribute(el, name) => {
                    if el.get_attribute(name).as_deref() != Some(out.as_str()) {
                        let _ = el.set_attribute(name, &out);
                    }
                }
            }
        }
    }
}

fn render_part(part: &Part, scope: &mut PageScope<'_>) -> String {
    match part {
        Part::Text(t) => t.clone(),
        Part::Broken(message) => message.clone(),
        Part::Expr(e) => match e.eval(scope) {
            Ok(v) => display(&v),
            Err(EvalError::Loading) => PLACEHOLDER.to_owned(),
            Err(EvalError::Invalid(message)) => format!("{{{{ error: {message} }}}}"),
        },
    }
}

/// Templates read the cache as it is, outside any transaction.
struct PageScope<'a> {
    rt: &'a Runtime,
}

impl PageScope<'_> {
    fn lookup(&self, key: Key) -> Option<Value> {
        if let Some(cached) = self.rt.cache.borrow().get(&key) {
            return Some(cached.value.clone().unwrap_or(Value::Null));
        }
        // Not cached: a read outside a transaction starts loading it.
        let _ = self.rt.read(&key);
        None
    }
}

impl Scope for PageScope<'_> {
    fn user(&self) -> Value {
        self.rt
            .user
            .borrow()
            .clone()
            .map_or(Value::Null, Value::String)
    }

    fn state(&self, name: &str) -> Value {
        let value = self.rt.state.borrow().get(name).cloned();
        value.and_then(|v| from_js(v).ok()).unwrap_or(Value::Null)
    }

    fn find(&mut self, table: &str, pk: &Value) -> Option<Value> {
        let pk = match pk {
            Value::String(s) => Pk::Text(s.clone()),
            Value::Number(n) if n.is_i64() => Pk::Int(n.as_i64().unwrap_or_default()),
            // No key (not signed in, say): nothing to show, and nothing to load.
            _ => return Some(Value::Null),
        };
        self.lookup(Key::row(table, pk))
    }

    fn kv(&mut self, key: &str) -> Option<Value> {
        self.lookup(Key::kv(key))
    }
}
