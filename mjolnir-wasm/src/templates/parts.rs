//! What a template shows: its source split into text and expressions, and the value of
//! each expression over the page's cache and state.

use crate::convert::from_js;
use crate::runtime::Runtime;
use mjolnir_core::attempt::QueryView;
use mjolnir_core::key::quoted;
use mjolnir_core::template::{EvalError, Expr, Scope, display};
use mjolnir_core::{Key, Pk, Query};
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;

/// What a template shows while its data loads.
pub const PLACEHOLDER: &str = "…";

/// One piece of a template string.
#[derive(Debug)]
pub(super) enum Part {
    Text(String),
    Expr(Expr),
    /// An expression that does not parse: shown as an error, so a developer sees it.
    Broken(String),
}

pub(super) fn parse(text: &str) -> Vec<Part> {
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

/// The name a list template gives the row of one copy (`todo` in `todo in …`), and the
/// names of the lists around it: what a template inside that copy can read.
#[derive(Debug)]
pub(super) struct Locals {
    pub name: String,
    /// The row (or item) the copy shows now; a new value re-renders the copy's templates.
    pub value: RefCell<Value>,
    /// The copy of the enclosing list, for a list inside a list.
    pub outer: Option<Rc<Locals>>,
}

/// The output of `parts` now, read outside any transaction, and whether any of it shows
/// a write of the page's that the server has not confirmed yet.
pub(super) fn render(rt: &Runtime, parts: &[Part], locals: Option<&Locals>) -> (String, bool) {
    let mut scope = PageScope::new(rt, locals);
    let out = parts.iter().map(|p| render_part(p, &mut scope)).collect();
    (out, scope.pending)
}

fn render_part(part: &Part, scope: &mut PageScope<'_>) -> String {
    match part {
        Part::Text(t) => t.clone(),
        Part::Broken(message) => message.clone(),
        Part::Expr(e) => match e.eval(scope) {
            Ok(v) => display(&v),
            Err(EvalError::Loading) => PLACEHOLDER.to_owned(),
            Err(EvalError::Invalid(message)) => error(&message),
        },
    }
}

/// How a template shows an error in its place.
pub(super) fn error(message: &str) -> String {
    format!("{{{{ error: {message} }}}}")
}

/// Templates read what the page sees, outside any transaction: the cache with the page's
/// in-flight writes on top.
pub(super) struct PageScope<'a> {
    rt: &'a Runtime,
    /// Whether a key read so far is an in-flight write.
    pending: bool,
    locals: Option<&'a Locals>,
}

impl<'a> PageScope<'a> {
    pub(super) fn new(rt: &'a Runtime, locals: Option<&'a Locals>) -> PageScope<'a> {
        PageScope {
            rt,
            pending: false,
            locals,
        }
    }

    fn lookup(&mut self, key: Key) -> Result<Value, EvalError> {
        self.refused(&key)?;
        self.pending |= self.rt.engine.borrow().is_pending(&key);
        // Not cached: shown as loading, and the read starts loading it.
        self.rt
            .peek(&key)
            .map(|v| v.unwrap_or(Value::Null))
            .ok_or(EvalError::Loading)
    }

    /// The server's reason, if it refused to read `key`.
    fn refused(&self, key: &Key) -> Result<(), EvalError> {
        match self.rt.engine.borrow().refusal(key) {
            Some(error) => Err(EvalError::Invalid(error.message.clone())),
            None => Ok(()),
        }
    }

    /// A query as the page shows it: the cached result with the page's in-flight writes
    /// applied, its rows so written marked pending. Loading (and loaded, which subscribes
    /// to it) if the cache lacks the result or one of its rows.
    pub(super) fn view(&mut self, query: &Query) -> Result<QueryView, EvalError> {
        self.refused(&Key::query(query.clone()))?;
        let view = self.rt.engine.borrow_mut().peek_query(query);
        if view.is_none() {
            self.rt.flush_sends();
        }
        view.ok_or(EvalError::Loading)
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
        let value = self.rt.state.get(name);
        from_js(value).ok().unwrap_or(Value::Null)
    }

    fn find(&mut self, table: &str, pk: &Value) -> Result<Value, EvalError> {
        let pk = match pk {
            Value::String(s) => Pk::Text(s.clone()),
            Value::Number(n) if n.is_i64() => Pk::Int(n.as_i64().unwrap_or_default()),
            // No key (not signed in, say): nothing to show, and nothing to load.
            _ => return Ok(Value::Null),
        };
        self.lookup(Key::row(table, pk))
    }

    fn kv(&mut self, key: &str) -> Result<Value, EvalError> {
        self.lookup(Key::kv(key))
    }

    fn query(&mut self, query: &Query) -> Result<Value, EvalError> {
        let view = self.view(query)?;
        if query.count {
            // Pending when the page's writes make it differ from the server's count.
            let key = Key::query(query.clone());
            let committed = self
                .rt
                .engine
                .borrow()
                .cache()
                .get(&key)
                .map(|c| c.value.clone());
            self.pending |= committed != Some(Some(Value::from(view.count)));
            return Ok(Value::from(view.count));
        }
        self.pending |= view.rows.iter().any(|r| r.pending);
        Ok(Value::Array(
            view.rows.into_iter().map(|r| r.value).collect(),
        ))
    }

    fn local(&mut self, name: &str) -> Result<Value, EvalError> {
        let mut locals = self.locals;
        while let Some(l) = locals {
            if l.name == name {
                return Ok(l.value.borrow().clone());
            }
            locals = l.outer.as_deref();
        }
        Err(EvalError::Invalid(format!("unknown name {}", quoted(name))))
    }
}
