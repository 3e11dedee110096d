//! The expression language of `{{ … }}` templates (the paper's Figure 3).
//!
//! Pages must work under `Content-Security-Policy: script-src 'self' 'wasm-unsafe-eval'`,
//! so template expressions are parsed and evaluated here, never handed to `eval`. The
//! language is the small, JavaScript-looking subset templates need: literals, `user`,
//! `state.x`, member and index access, `table(name).find(key)`, `kv(key)`, arithmetic,
//! comparison, `&&`/`||`/`!`, the ternary operator and string concatenation with `+`.
//!
//! Evaluation reads shared state through a [`Scope`], which answers "still loading" for a
//! key the client does not hold yet: the template then shows a placeholder and the caller
//! re-renders once the key arrives.

mod parse;

use crate::number;
use serde_json::{Number, Value};

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Literal(Value),
    /// `user`: the connection's confirmed user.
    User,
    /// `state`: the page's state object.
    State,
    /// `table(name).find(key)`.
    Find(Box<Expr>, Box<Expr>),
    /// `kv(key)`.
    Kv(Box<Expr>),
    /// `object.name` and `object[expr]`.
    Member(Box<Expr>, Box<Expr>),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `test ? then : otherwise`.
    Conditional(Box<Expr>, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

/// Why an expression could not be parsed. `at` is a byte offset into the expression.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} at {at}")]
pub struct ParseError {
    pub message: String,
    pub at: usize,
}

/// What a template needs from the runtime.
pub trait Scope {
    fn user(&self) -> Value;
    /// `state.name`.
    fn state(&self, name: &str) -> Value;
    /// `table(table).find(pk)`: the row, `Value::Null` if absent; [`EvalError::Loading`]
    /// while loading, [`EvalError::Invalid`] if the server refused to read it (an unknown
    /// table, say).
    fn find(&mut self, table: &str, pk: &Value) -> Result<Value, EvalError>;
    /// `kv(key)`: the value, `Value::Null` if absent; errors as for [`Scope::find`].
    fn kv(&mut self, key: &str) -> Result<Value, EvalError>;
}

/// How an evaluation ended without a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// Some data is still loading: show a placeholder, render again later.
    #[error("loading")]
    Loading,
    /// The expression is wrong for the data it met (for example `table(1)`).
    #[error("{0}")]
    Invalid(String),
}

impl Expr {
    pub fn eval(&self, scope: &mut dyn Scope) -> Result<Value, EvalError> {
        Ok(match self {
            Expr::Literal(v) => v.clone(),
            Expr::User => scope.user(),
            Expr::State => Value::Null,
            Expr::Find(table, pk) => {
                let table = table.eval(scope)?;
                let Value::String(table) = table else {
                    return Err(EvalError::Invalid(format!(
                        "table() takes a table name, not {table}"
                    )));
                };
                let pk = pk.eval(scope)?;
                scope.find(&table, &pk)?
            }
            Expr::Kv(key) => match key.eval(scope)? {
                Value::String(k) => scope.kv(&k)?,
                other => {
                    return Err(EvalError::Invalid(format!(
                        "kv() takes a string key, not {other}"
                    )));
                }
            },
            Expr::Member(object, name) => {
                let name = name.eval(scope)?;
                if **object == Expr::State {
                    return Ok(scope.state(&display(&name)));
                }
                member(&object.eval(scope)?, &name)
            }
            Expr::Unary(UnaryOp::Not, e) => Value::Bool(!truthy(&e.eval(scope)?)),
            Expr::Unary(UnaryOp::Neg, e) => number(-to_number(&e.eval(scope)?)),
            Expr::Binary(BinaryOp::And, a, b) => {
                let a = a.eval(scope)?;
                if truthy(&a) { b.eval(scope)? } else { a }
            }
            Expr::Binary(BinaryOp::Or, a, b) => {
                let a = a.eval(scope)?;
                if truthy(&a) { a } else { b.eval(scope)? }
            }
            Expr::Binary(op, a, b) => binary(*op, &a.eval(scope)?, &b.eval(scope)?),
            Expr::Conditional(test, then, otherwise) => {
                if truthy(&test.eval(scope)?) {
                    then.eval(scope)?
                } else {
                    otherwise.eval(scope)?
                }
            }
        })
    }
}

/// How a value is written into the page, as JavaScript's `String(value)` would
/// (`null` renders as an empty string, which suits templates better).
pub fn display(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => i.to_string(),
            (None, f) => number::to_js_string(f.unwrap_or(f64::NAN)),
        },
        other => other.to_string(),
    }
}

fn member(object: &Value, name: &Value) -> Value {
    match (object, name) {
        (Value::Object(m), key) => m.get(&display(key)).cloned().unwrap_or(Value::Null),
        (Value::Array(a), Value::Number(n)) => n
            .as_u64()
            .and_then(|i| a.get(i as usize))
            .cloned()
            .unwrap_or(Value::Null),
        (Value::Array(a), Value::String(s)) if s == "length" => Value::from(a.len()),
        (Value::String(s), Value::String(n)) if n == "length" => Value::from(s.chars().count()),
        _ => Value::Null,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn to_number(v: &Value) -> f64 {
    match v {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::String(s) if s.trim().is_empty() => 0.0,
        Value::String(s) => number::from_js_string(s),
        _ => f64::NAN,
    }
}

/// A number as JSON; NaN and infinities (which JSON cannot hold) become `null`.
fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_991.0 {
        return Value::from(f as i64);
    }
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn binary(op: BinaryOp, a: &Value, b: &Value) -> Value {
    use BinaryOp::*;
    match op {
        Add if a.is_string() || b.is_string() => Value::String(display(a) + &display(b)),
        Add => number(to_number(a) + to_number(b)),
        Sub => number(to_number(a) - to_number(b)),
        Mul => number(to_number(a) * to_number(b)),
        Div => number(to_number(a) / to_number(b)),
        Rem => number(to_number(a) % to_number(b)),
        Eq => Value::Bool(loose_eq(a, b)),
        Ne => Value::Bool(!loose_eq(a, b)),
        Lt | Le | Gt | Ge => {
            let ordering = match (a, b) {
                (Value::String(x), Value::String(y)) => x.partial_cmp(y),
                _ => to_number(a).partial_cmp(&to_number(b)),
            };
            Value::Bool(ordering.is_some_and(|o| match op {
                Lt => o.is_lt(),
                Le => o.is_le(),
                Gt => o.is_gt(),
                _ => o.is_ge(),
            }))
        }
        And | Or => unreachable!("short-circuited in eval"),
    }
}

/// `==` in templates compares values, with numbers compared as numbers (so `1 == 1.0`).
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => to_number(a) == to_number(b),
        _ => a == b,
    }
}

// ---- lexing -------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A scope over fixed data; `carol` is still loading.
    struct Data;

    impl Scope for Data {
        fn user(&self) -> Value {
            json!("alice")
        }
        fn state(&self, name: &str) -> Value {
            match name {
                "count" => json!(3),
                "title" => json!("Bank"),
                _ => Value::Null,
            }
        }
        fn find(&mut self, table: &str, pk: &Value) -> Result<Value, EvalError> {
            match (table, pk.as_str()) {
                ("users", Some("alice")) => Ok(json!({"name": "alice", "balance": 100})),
                ("users", Some("bob")) => Ok(json!({"name": "bob", "balance": 7})),
                ("users", Some("carol")) => Err(EvalError::Loading),
                ("userz", _) => Err(EvalError::Invalid("no table \"userz\"".into())),
                _ => Ok(Value::Null),
            }
        }
        fn kv(&mut self, key: &str) -> Result<Value, EvalError> {
            if key == "motd" {
                Ok(json!("hello"))
            } else {
                Err(EvalError::Loading)
            }
        }
    }

    fn eval(text: &str) -> Result<Value, EvalError> {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(&mut Data)
    }

    #[test]
    fn figure_3_balance() {
        assert_eq!(eval("table('users').find(user).balance"), Ok(json!(100)));
    }

    #[test]
    fn operators_follow_javascript() {
        assert_eq!(eval("1 + 2 * 3"), Ok(json!(7)));
        assert_eq!(eval("(1 + 2) * 3"), Ok(json!(9)));
        assert_eq!(eval("7 % 4 - -1"), Ok(json!(4)));
        assert_eq!(
            eval("'Balance: ' + table(\"users\").find('bob').balance"),
            Ok(json!("Balance: 7"))
        );
        assert_eq!(
            eval("state.count >= 3 && state.title == 'Bank'"),
            Ok(json!(true))
        );
        assert_eq!(eval("state.missing || 'none'"), Ok(json!("none")));
        assert_eq!(
            eval("!state.missing ? 'empty' : 'full'"),
            Ok(json!("empty"))
        );
        assert_eq!(eval("1 / 4"), Ok(json!(0.25)));
        assert_eq!(eval("'2.5' * 2"), Ok(json!(5)));
        assert_eq!(eval("' .5 ' * '4'"), Ok(json!(2)));
        assert_eq!(eval("'1e-7' * 1 + ''"), Ok(json!("1e-7")));
        assert_eq!(eval("kv('motd') + ', ' + user"), Ok(json!("hello, alice")));
        assert_eq!(eval("state['count'] === 3"), Ok(json!(true)));
    }

    #[test]
    fn absent_rows_and_members_are_null_and_loading_is_said() {
        assert_eq!(eval("table('users').find('zed')"), Ok(Value::Null));
        // A read the server refused shows why, however deep in the expression.
        assert_eq!(
            eval("'n: ' + table('userz').find('a').n"),
            Err(EvalError::Invalid("no table \"userz\"".into()))
        );
        assert_eq!(eval("table('users').find('zed').balance"), Ok(Value::Null));
        assert_eq!(
            eval("table('users').find('carol').balance"),
            Err(EvalError::Loading)
        );
        assert_eq!(eval("kv('other')"), Err(EvalError::Loading));
    }

    #[test]
    fn bad_expressions_are_parse_errors_with_a_position() {
        let err = Expr::parse("table('users').find(").unwrap_err();
        assert_eq!(err.at, 20);
        assert!(
            Expr::parse("window.location")
                .unwrap_err()
                .message
                .contains("unknown name")
        );
        assert!(Expr::parse("1 +").is_err());
        assert!(Expr::parse("1.2.3").is_err());
        assert!(Expr::parse("'open").is_err());
        assert!(Expr::parse("a = 1").is_err());
        assert!(Expr::parse("state.x.find(1)").is_err());
    }

    proptest::proptest! {
        /// Any text either parses or is a parse error, and a parsed expression evaluates to
        /// a value or a typed error: a page's template can never crash the runtime.
        #[test]
        fn arbitrary_text_never_panics(text in "[ -~]{0,40}") {
            if let Ok(e) = Expr::parse(&text) {
                let _ = e.eval(&mut Data);
            }
        }
    }

    #[test]
    fn values_render_like_javascript_strings() {
        assert_eq!(display(&json!(100)), "100");
        assert_eq!(display(&json!(0.5)), "0.5");
        assert_eq!(display(&json!(1e21)), "1e+21");
        assert_eq!(display(&json!(1e20)), "100000000000000000000");
        assert_eq!(display(&json!(1e-7)), "1e-7");
        assert_eq!(display(&eval("1 / 3").unwrap()), "0.3333333333333333");
        assert_eq!(display(&json!(-9007199254740993_i64)), "-9007199254740993");
        assert_eq!(display(&Value::Null), "");
        assert_eq!(display(&json!(true)), "true");
    }
}
