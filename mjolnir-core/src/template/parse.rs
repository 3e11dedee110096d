//! Parsing a template expression: the lexer and a precedence-climbing parser.

use super::{BinaryOp, Each, Expr, ParseError, Step, UnaryOp};
use crate::key::quoted;
use crate::number::{from_js_string, to_js_string};
use serde_json::Value;
use std::fmt;

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
}

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
            Token::Number(n) => f.write_str(&to_js_string(*n)),
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
            let n = from_js_string(&text[start..i]);
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
        } else if let Some(p) = ["[", "]", "{", "}"]
            .into_iter()
            .find(|p| p.as_bytes()[0] == bytes[i])
        {
            out.push((Token::Punct(p), i));
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
                    Some((Token::Ident(name), at))
                        if is_query_method(&name) && matches!(e, Expr::Query { .. }) =>
                    {
                        self.pos += 1;
                        e = self.query_step(e, &name, at)?;
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

    /// A call of a query method on `e`, which must be `table(name)`, maybe with steps.
    fn query_step(&mut self, e: Expr, method: &str, at: usize) -> Result<Expr, ParseError> {
        let Expr::Query {
            table,
            mut steps,
            count: false,
        } = e
        else {
            return Err(ParseError {
                message: format!("{method}() follows table(name) or a query step"),
                at,
            });
        };
        self.expect("(")?;
        let mut args = Vec::new();
        // `where({column: value, …})`: one equality per field.
        if method == "where" && self.eat("{") {
            while !self.eat("}") {
                let column = match self.peek() {
                    Some((Token::Ident(n) | Token::Str(n), _)) => n,
                    _ => {
                        return Err(ParseError {
                            message: "expected a column name".into(),
                            at: self.here(),
                        });
                    }
                };
                self.pos += 1;
                self.expect(":")?;
                let value = self.conditional()?;
                steps.push(Step::Where {
                    column: Expr::Literal(Value::String(column)),
                    op: None,
                    value,
                });
                if !self.eat(",") {
                    self.expect("}")?;
                    break;
                }
            }
            self.expect(")")?;
            return Ok(Expr::Query {
                table,
                steps,
                count: false,
            });
        }
        if !self.eat(")") {
            loop {
                args.push(self.conditional()?);
                if !self.eat(",") {
                    break;
                }
            }
            self.expect(")")?;
        }
        let wrong = |wanted: &str| ParseError {
            message: format!("{method}() takes {wanted}"),
            at,
        };
        let mut args = args.into_iter();
        let (a, b, c) = (args.next(), args.next(), args.next());
        if args.next().is_some() {
            return Err(wrong("fewer arguments"));
        }
        let count = match (method, a, b, c) {
            ("find", Some(pk), None, None) if steps.is_empty() => {
                return Ok(Expr::Find(table, Box::new(pk)));
            }
            ("find", ..) => return Err(wrong("one key, right after table(name)")),
            ("where", Some(column), Some(op), Some(value)) => {
                steps.push(Step::Where {
                    column,
                    op: Some(op),
                    value,
                });
                false
            }
            ("where", ..) => return Err(wrong("(column, op, value) or ({column: value})")),
            ("orderBy", Some(column), dir, None) => {
                steps.push(Step::OrderBy(column, dir));
                false
            }
            ("orderBy", ..) => return Err(wrong("(column) or (column, 'asc' | 'desc')")),
            ("limit", Some(n), None, None) => {
                steps.push(Step::Limit(n));
                false
            }
            ("limit", ..) => return Err(wrong("one number")),
            ("search", Some(column), Some(text), None) => {
                steps.push(Step::Search(column, text));
                false
            }
            ("search", ..) => return Err(wrong("(column, text)")),
            ("count", None, None, None) => true,
            _ => return Err(wrong("no arguments")),
        };
        Ok(Expr::Query {
            table,
            steps,
            count,
        })
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
            Token::Number(n) => Expr::Literal(super::number(n)),
            Token::Str(s) => Expr::Literal(Value::String(s)),
            Token::Punct("(") => {
                let e = self.conditional()?;
                self.expect(")")?;
                e
            }
            // An array literal, for `where(column, 'in', […])`.
            Token::Punct("[") => {
                let mut items = Vec::new();
                while !self.eat("]") {
                    items.push(self.conditional()?);
                    if !self.eat(",") {
                        self.expect("]")?;
                        break;
                    }
                }
                Expr::Array(items)
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
                        // Every row, until a query step or `find` says otherwise.
                        Expr::Query {
                            table: Box::new(arg),
                            steps: Vec::new(),
                            count: false,
                        }
                    }
                }
                // A list template's name for its row: known only where it is evaluated.
                _ => Expr::Local(name),
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

fn is_query_method(name: &str) -> bool {
    matches!(
        name,
        "find" | "where" | "orderBy" | "limit" | "search" | "count"
    )
}

impl Each {
    /// Parses a list template, `name in expr`.
    pub fn parse(text: &str) -> Result<Each, ParseError> {
        let trimmed = text.trim_start();
        let start = text.len() - trimmed.len();
        let name_len = trimmed
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(trimmed.len());
        let name = &trimmed[..name_len];
        let rest = &trimmed[name_len..];
        let after = rest.trim_start();
        let reserved = [
            "user",
            "state",
            "table",
            "kv",
            "true",
            "false",
            "null",
            "undefined",
        ];
        if name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || reserved.contains(&name)
            || !after.starts_with("in")
            || after[2..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            return Err(ParseError {
                message: "a list template reads `name in expression`".into(),
                at: start,
            });
        }
        let expr_at = text.len() - after.len() + 2;
        let expr = Expr::parse(&after[2..]).map_err(|e| ParseError {
            message: e.message,
            at: e.at + expr_at,
        })?;
        Ok(Each {
            name: name.to_owned(),
            expr,
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
