//! The expression language of `{{ … }}` templates (the paper's Figure 3).
//!
//! Pages must work under `Content-Security-Policy: script-src 'self' 'wasm-unsafe-eval'`,
//! so template expressions are parsed and evaluated here, never handed to `eval`. The
//! language is the small, JavaScript-looking subset templates need: literals, `user`,
//! `state.x`, member and index access, `table(name).find(key)`, queries
//! (`table(name).where(…).orderBy(…).limit(n)`, `.search(column, text)`, `.count()`),
//! `kv(key)`, arithmetic, comparison, `&&`/`||`/`!`, the ternary operator and string
//! concatenation with `+`; and, in a list template, the name its rows take
//! ([`Each`]).
//!
//! Evaluation reads shared state through a [`Scope`], which answers "still loading" for a
//! key the client does not hold yet: the template then shows a placeholder and the caller
//! re-renders once the key arrives.

mod parse;

use crate::number;
use crate::query::{Op, Query};
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
    /// `table(name)` followed by query steps: its rows, or with `count`, their number.
    Query {
        table: Box<Expr>,
        steps: Vec<Step>,
        count: bool,
    },
    /// A name a list template gives each of its rows (`todo` in `todo in …`).
    Local(String),
    /// `[a, b, …]`.
    Array(Vec<Expr>),
    /// `object.name` and `object[expr]`.
    Member(Box<Expr>, Box<Expr>),
    Unary(UnaryOp, Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `test ? then : otherwise`.
    Conditional(Box<Expr>, Box<Expr>, Box<Expr>),
}

/// One step of a query in a template, as in the JavaScript builder.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `.where(column, op, value)`; `op` is `None` for the object form's `{column: value}`.
    Where {
        column: Expr,
        op: Option<Expr>,
        value: Expr,
    },
    /// `.orderBy(column)` or `.orderBy(column, 'asc' | 'desc')`.
    OrderBy(Expr, Option<Expr>),
    /// `.limit(n)`.
    Limit(Expr),
    /// `.search(column, text)`.
    Search(Expr, Expr),
}

/// A list template: `name in expr`, one copy of its element per row `expr` gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Each {
    pub name: String,
    pub expr: Expr,
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
    /// A query: its rows (an array of row objects), or its count; errors as for
    /// [`Scope::find`].
    fn query(&mut self, query: &Query) -> Result<Value, EvalError> {
        let _ = query;
        Err(EvalError::Invalid("queries are not available here".into()))
    }
    /// The value of a name a list template gave its row.
    fn local(&mut self, name: &str) -> Result<Value, EvalError> {
        Err(EvalError::Invalid(format!(
            "unknown name {}",
            crate::key::quoted(name)
        )))
    }
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
            Expr::Query {
                table,
                steps,
                count,
            } => {
                let query = build_query(table, steps, *count, scope)?;
                scope.query(&query)?
            }
            Expr::Local(name) => scope.local(name)?,
            Expr::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|e| e.eval(scope))
                    .collect::<Result<_, _>>()?,
            ),
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

impl Expr {
    /// The query this expression names, if it is one: what a list template subscribes to.
    pub fn query(&self, scope: &mut dyn Scope) -> Result<Option<Query>, EvalError> {
        match self {
            Expr::Query {
                table,
                steps,
                count,
            } => build_query(table, steps, *count, scope).map(Some),
            _ => Ok(None),
        }
    }
}

/// Evaluates a query's parts into a [`Query`], refusing what the JavaScript builder
/// refuses.
fn build_query(
    table: &Expr,
    steps: &[Step],
    count: bool,
    scope: &mut dyn Scope,
) -> Result<Query, EvalError> {
    let name = |v: Value, what: &str| match v {
        Value::String(s) => Ok(s),
        other => Err(EvalError::Invalid(format!(
            "{what} takes a name, not {other}"
        ))),
    };
    let mut query = Query::table(name(table.eval(scope)?, "table()")?);
    for step in steps {
        query = match step {
            Step::Where { column, op, value } => {
                let column = name(column.eval(scope)?, "where()")?;
                let value = value.eval(scope)?;
                let op = match op {
                    None => "==".to_owned(),
                    Some(op) => name(op.eval(scope)?, "where()'s operator")?,
                };
                let (op, value) = Op::from_js(&op, value).ok_or_else(|| {
                    EvalError::Invalid(format!(
                        "where() has no operator {}",
                        crate::key::quoted(&op)
                    ))
                })?;
                query.filter(column, op, value)
            }
            Step::OrderBy(column, dir) => {
                let column = name(column.eval(scope)?, "orderBy()")?;
                let desc = match dir {
                    None => false,
                    Some(dir) => match dir.eval(scope)? {
                        Value::String(d) if d == "asc" => false,
                        Value::String(d) if d == "desc" => true,
                        other => {
                            return Err(EvalError::Invalid(format!(
                                "orderBy() takes 'asc' or 'desc', not {other}"
                            )));
                        }
                    },
                };
                query.order_by(column, desc)
            }
            Step::Limit(n) => match n.eval(scope)? {
                Value::Number(n) if n.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)) => {
                    query.limit(n.as_u64().unwrap_or_default() as u32)
                }
                other => {
                    return Err(EvalError::Invalid(format!(
                        "limit() takes a whole number, not {other}"
                    )));
                }
            },
            Step::Search(column, text) => {
                let column = name(column.eval(scope)?, "search()")?;
                match text.eval(scope)? {
                    Value::String(t) => query.search(column, t),
                    other => {
                        return Err(EvalError::Invalid(format!(
                            "search() takes a text, not {other}"
                        )));
                    }
                }
            }
        };
    }
    if count {
        // As the JavaScript builder: a limit before count() is refused, an order ignored.
        if query.limit.is_some() {
            return Err(EvalError::Invalid(
                "count() counts every row: no limit".into(),
            ));
        }
        query = query.counted();
    }
    if let Some(problem) = query.misshapen() {
        return Err(EvalError::Invalid(problem));
    }
    Ok(query)
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

    fn eval_err(text: &str) -> EvalError {
        Expr::parse(text).unwrap().eval(&mut Data).unwrap_err()
    }

    /// A scope that answers queries with the query it was asked, and gives `todo`.
    struct Lists;

    impl Scope for Lists {
        fn user(&self) -> Value {
            json!("alice")
        }
        fn state(&self, name: &str) -> Value {
            match name {
                "q" => json!("fox"),
                "n" => json!(5),
                _ => Value::Null,
            }
        }
        fn find(&mut self, _: &str, _: &Value) -> Result<Value, EvalError> {
            Ok(Value::Null)
        }
        fn kv(&mut self, _: &str) -> Result<Value, EvalError> {
            Ok(Value::Null)
        }
        fn query(&mut self, query: &Query) -> Result<Value, EvalError> {
            Ok(json!(query.to_string()))
        }
        fn local(&mut self, name: &str) -> Result<Value, EvalError> {
            match name {
                "todo" => Ok(json!({"title": "milk"})),
                _ => Err(EvalError::Invalid(format!("unknown name {name}"))),
            }
        }
    }

    fn query_of(text: &str) -> Result<Value, EvalError> {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(&mut Lists)
    }

    #[test]
    fn queries_read_as_the_javascript_builder_does() {
        let cases = [
            ("table('todos')", r#"table("todos")"#),
            (
                "table('todos').where({done: false, owner: null}).orderBy('created', 'desc').limit(state.n)",
                r#"table("todos").where("done", "==", false).where("owner", "==", null).orderBy("created", "desc").limit(5)"#,
            ),
            (
                "table('t').where('n', '>=', 2).where('tag', 'in', ['a', 'b']).where('x', '!=', null)",
                r#"table("t").where("n", ">=", 2).where("tag", "in", ["a","b"]).where("x", "!=", null)"#,
            ),
            (
                "table('notes').search('body', state.q).count()",
                r#"table("notes").search("body", "fox").count()"#,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(query_of(text), Ok(json!(want)), "{text}");
        }
        assert_eq!(query_of("todo.title"), Ok(json!("milk")));
        // `count` and `find` are members of anything else.
        assert_eq!(eval("state.count"), Ok(json!(3)));
        let refused = [
            ("table('t').where('n', 'like', 1)", "no operator \"like\""),
            ("table('t').limit(5000)", "limit is 1 to 1000"),
            ("table('t').orderBy('n', 'up')", "'asc' or 'desc'"),
            ("table(1)", "table() takes a name"),
            ("table('t').limit(2).count()", "no limit"),
        ];
        for (text, want) in refused {
            let Err(EvalError::Invalid(msg)) = query_of(text) else {
                panic!("{text}")
            };
            assert!(msg.contains(want), "{text}: {msg}");
        }
        for bad in [
            "table('t').count().limit(1)",
            "table('t').where('a')",
            "table('t').where({a 1})",
            "table('t').limit(1).find(2)",
            "state.where(1)",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn list_templates_name_their_row() {
        let each = Each::parse("todo in table('todos').orderBy('n')").unwrap();
        assert_eq!(each.name, "todo");
        assert!(matches!(each.expr, Expr::Query { .. }));
        for bad in [
            "in table('t')",
            "table in table('t')",
            "x table('t')",
            "x inside y",
            "1x in y",
        ] {
            assert!(Each::parse(bad).is_err(), "{bad}");
        }
        let err = Each::parse("t in table(").unwrap_err();
        assert_eq!(err.at, 11);
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
        // A name is a list template's row, known only where it is evaluated.
        assert_eq!(
            eval_err("window.location"),
            EvalError::Invalid("unknown name \"window\"".into())
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
