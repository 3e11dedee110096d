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

use crate::key::quoted;
use crate::number;
use serde_json::{Number, Value};
use std::fmt;

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
    pub fn parse(text: &str) -> Result<Expr, ParseError> {
        let mut p = Parser {
            tokens: lex(text)?,
            pos: 0,
            len: text.len(),
        };
        let expr = p.conditional()?;
        match p.peek() {
            None => Ok(expr),
            Some((tok, at)) => Err(ParseError {
                message: format!("unexpected {tok}"),
                at,
            }),
        }
    }

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

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(f64),
    Str(String),
    Ident(String),
    Punct(&'static str),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Number(n) => f.write_str(&number::to_js_string(*n)),
            Token::Str(s) => f.write_str(&quoted(s)),
            Token::Ident(s) => write!(f, "{s}"),
            Token::Punct(p) => write!(f, "'{p}'"),
        }
    }
}

const PUNCTS: [&str; 22] = [
    "===", "!==", "==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%", "!", "?",
    ":", ".", "(", ")", ",",
];

fn lex(text: &str) -> Result<Vec<(Token, usize)>, ParseError> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                i += 1;
            }
            let n = number::from_js_string(&text[start..i]);
            if n.is_nan() {
                return Err(ParseError {
                    message: "bad number".into(),
                    at: start,
                });
            }
            out.push((Token::Number(n), start));
        } else if c == '\'' || c == '"' {
            let start = i;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(ch) = text[i..].chars().next() else {
                    return Err(ParseError {
                        message: "unterminated string".into(),
                        at: start,
                    });
                };
                i += ch.len_utf8();
                match ch {
                    _ if ch == c => break,
                    '\\' => {
                        let Some(esc) = text[i..].chars().next() else {
                            continue;
                        };
                        i += esc.len_utf8();
                        s.push(match esc {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                    }
                    _ => s.push(ch),
                }
            }
            out.push((Token::Str(s), start));
        } else if c.is_alphabetic() || c == '_' || c == '$' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$')
            {
                i += 1;
            }
            out.push((Token::Ident(text[start..i].to_owned()), start));
        } else if c == '[' || c == ']' {
            out.push((Token::Punct(if c == '[' { "[" } else { "]" }), i));
            i += 1;
        } else {
            let Some(p) = PUNCTS.iter().find(|p| text[i..].starts_with(**p)) else {
                return Err(ParseError {
                    message: format!(
                        "unexpected character {}",
                        quoted(c.encode_utf8(&mut [0; 4]))
                    ),
                    at: i,
                });
            };
            // `===` means `==` here: values have one type each.
            let p: &'static str = match *p {
                "===" => "==",
                "!==" => "!=",
                other => other,
            };
            out.push((Token::Punct(p), i));
            i += if text[i..].starts_with("===") || text[i..].starts_with("!==") {
                3
            } else {
                p.len()
            };
        }
    }
    Ok(out)
}

// ---- parsing (precedence climbing) --------------------------------------------------------

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<(Token, usize)> {
        self.tokens.get(self.pos).cloned()
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some((Token::Punct(p), _)) if p == punct) {
            self.pos += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, punct: &str) -> Result<(), ParseError> {
        if self.eat(punct) {
            return Ok(());
        }
        let (what, at) = match self.peek() {
            Some((t, at)) => (t.to_string(), at),
            None => ("the end".to_owned(), self.len),
        };
        Err(ParseError {
            message: format!("expected '{punct}', found {what}"),
            at,
        })
    }

    fn conditional(&mut self) -> Result<Expr, ParseError> {
        let test = self.binary(0)?;
        if !self.eat("?") {
            return Ok(test);
        }
        let then = self.conditional()?;
        self.expect(":")?;
        let otherwise = self.conditional()?;
        Ok(Expr::Conditional(
            Box::new(test),
            Box::new(then),
            Box::new(otherwise),
        ))
    }

    fn binary(&mut self, min: u8) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while let Some((Token::Punct(p), _)) = self.peek() {
            let Some((op, prec)) = binary_op(p).filter(|(_, prec)| *prec >= min) else {
                break;
            };
            self.pos += 1;
            let right = self.binary(prec + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("!") {
            return Ok(Expr::Unary(UnaryOp::Not, Box::new(self.unary()?)));
        }
        if self.eat("-") {
            return Ok(Expr::Unary(UnaryOp::Neg, Box::new(self.unary()?)));
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                match self.peek() {
                    Some((Token::Ident(name), _)) if name == "find" => {
                        self.pos += 1;
                        let Expr::Find(table, _) = &e else {
                            return Err(ParseError {
                                message: "find() follows table(name)".into(),
                                at: self.here(),
                            });
                        };
                        let table = table.clone();
                        self.expect("(")?;
                        let pk = self.conditional()?;
                        self.expect(")")?;
                        e = Expr::Find(table, Box::new(pk));
                    }
                    Some((Token::Ident(name), _)) => {
                        self.pos += 1;
                        e = Expr::Member(Box::new(e), Box::new(Expr::Literal(Value::String(name))));
                    }
                    _ => {
                        return Err(ParseError {
                            message: "expected a name after '.'".into(),
                            at: self.here(),
                        });
                    }
                }
            } else if self.eat("[") {
                let index = self.conditional()?;
                self.expect("]")?;
                e = Expr::Member(Box::new(e), Box::new(index));
            } else {
                return Ok(e);
            }
        }
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.len, |(_, at)| at)
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let Some((tok, at)) = self.peek() else {
            return Err(ParseError {
                message: "expected an expression".into(),
                at: self.len,
            });
        };
        self.pos += 1;
        Ok(match tok {
            Token::Number(n) => Expr::Literal(number(n)),
            Token::Str(s) => Expr::Literal(Value::String(s)),
            Token::Punct("(") => {
                let e = self.conditional()?;
                self.expect(")")?;
                e
            }
            Token::Ident(name) => match name.as_str() {
                "true" => Expr::Literal(Value::Bool(true)),
                "false" => Expr::Literal(Value::Bool(false)),
                "null" | "undefined" => Expr::Literal(Value::Null),
                "user" => Expr::User,
                "state" => Expr::State,
                "table" | "kv" => {
                    self.expect("(")?;
                    let arg = self.conditional()?;
                    self.expect(")")?;
                    if name == "kv" {
                        Expr::Kv(Box::new(arg))
                    } else {
                        // `find` must follow; until it does, the key is missing.
                        Expr::Find(Box::new(arg), Box::new(Expr::Literal(Value::Null)))
                    }
                }
                other => {
                    return Err(ParseError {
                        message: format!("unknown name {}", quoted(other)),
                        at,
                    });
                }
            },
            other @ Token::Punct(_) => {
                return Err(ParseError {
                    message: format!("unexpected {other}"),
                    at,
                });
            }
        })
    }
}

fn binary_op(p: &str) -> Option<(BinaryOp, u8)> {
    use BinaryOp::*;
    Some(match p {
        "||" => (Or, 1),
        "&&" => (And, 2),
        "==" => (Eq, 3),
        "!=" => (Ne, 3),
        "<" => (Lt, 4),
        "<=" => (Le, 4),
        ">" => (Gt, 4),
        ">=" => (Ge, 4),
        "+" => (Add, 5),
        "-" => (Sub, 5),
        "*" => (Mul, 6),
        "/" => (Div, 6),
        "%" => (Rem, 6),
        _ => return None,
    })
}

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
