//! What a template shows: its source split into text and expressions, and the value of
//! each expression over the page's cache and state.

use crate::convert::from_js;
use crate::runtime::Runtime;
use mjolnir_core::template::{EvalError, Expr, Scope, display};
use mjolnir_core::{Key, Pk};
use serde_json::Value;

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

/// The output of `parts` now, read outside any transaction, and whether any of it shows
/// a write of the page's that the server has not confirmed yet.
pub(super) fn render(rt: &Runtime, parts: &[Part]) -> (String, bool) {
    let mut scope = PageScope { rt, pending: false };
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
            Err(EvalError::Invalid(message)) => format!("{{{{ error: {message} }}}}"),
        },
    }
}

/// Templates read what the page sees, outside any transaction: the cache with the page's
/// in-flight writes on top.
struct PageScope<'a> {
    rt: &'a Runtime,
    /// Whether a key read so far is an in-flight write.
    pending: bool,
}

impl PageScope<'_> {
    fn lookup(&mut self, key: Key) -> Result<Value, EvalError> {
        if let Some(error) = self.rt.engine.borrow().refusal(&key) {
            return Err(EvalError::Invalid(error.message.clone()));
        }
        self.pending |= self.rt.engine.borrow().is_pending(&key);
        // Not cached: shown as loading, and the read starts loading it.
        self.rt
            .peek(&key)
            .map(|v| v.unwrap_or(Value::Null))
            .ok_or(EvalError::Loading)
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
}
