//! The TraceQL that Grafana's Tempo search builder writes, compiled to a SQL condition on one
//! span of `spans`: one `{ ... }` of conditions joined by `&&`, alternatives with `||` (in
//! parentheses or not), on `resource.*`, `span.*`, `.attr` and the intrinsics. Anything else
//! is refused with the part that is not supported.
//!
//! A trace matches when one of its spans meets the condition (Tempo's spanset semantics).
//! `traceDuration`, `rootName` and `rootServiceName` are properties of the whole trace: they
//! read columns of a per-trace summary joined to the span (see [`Compiled::needs_trace`]).

use super::literal;
use crate::error::{Error, Result};

/// A compiled query.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Compiled {
    /// The SQL condition on a row of `spans` (joined with the trace summary when
    /// `needs_trace`).
    pub(super) condition: String,
    /// Whether the condition reads `trace_duration_ns`, `root_name` or `root_service`.
    pub(super) needs_trace: bool,
}

/// Compiles `query`.
pub(super) fn compile(query: &str) -> Result<Compiled> {
    let tokens = tokenize(query)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        query,
        needs_trace: false,
    };
    parser.expect(&Token::Open, "a TraceQL query starts with `{`")?;
    let condition = if parser.peek() == Some(&Token::Close) {
        "TRUE".to_owned()
    } else {
        parser.or()?
    };
    parser.expect(&Token::Close, "expected `}` or `&&` / `||`")?;
    if parser.at < parser.tokens.len() {
        return Err(parser.unsupported(
            "only one { ... } is supported: no pipelines (`|`), spanset operators or aggregates",
        ));
    }
    Ok(Compiled {
        condition,
        needs_trace: parser.needs_trace,
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    LParen,
    RParen,
    And,
    Or,
    Op(&'static str),
    Str(String),
    Word(String),
    /// Anything else, as written.
    Other(String),
}

/// Tokens with the byte offset each starts at.
fn tokenize(query: &str) -> Result<Vec<(usize, Token)>> {
    let bytes = query.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let two = query.get(i..i + 2).unwrap_or("");
        if let Some(op) = TWO_CHARACTER_OPS.iter().find(|op| **op == two) {
            tokens.push((start, Token::Op(op)));
            i += 2;
            continue;
        }
        let token = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'{' => Token::Open,
            b'}' => Token::Close,
            b'(' => Token::LParen,
            b')' => Token::RParen,
            _ if two == "&&" => Token::And,
            _ if two == "||" => Token::Or,
            b'=' => Token::Op("="),
            b'>' => Token::Op(">"),
            b'<' => Token::Op("<"),
            b'"' | b'`' => {
                let (text, end) = string(query, i)?;
                i = end;
                tokens.push((start, Token::Str(text)));
                continue;
            }
            _ if is_word(c) => {
                let end = query[i..]
                    .find(|ch: char| !(ch.is_ascii() && is_word(ch as u8)) && ch != 'µ')
                    .map_or(query.len(), |n| i + n);
                tokens.push((start, Token::Word(query[i..end].to_owned())));
                i = end;
                continue;
            }
            _ => {
                let end = query[i..]
                    .char_indices()
                    .nth(1)
                    .map_or(query.len(), |(n, _)| i + n);
                let other = query[i..end].to_owned();
                i = end;
                tokens.push((start, Token::Other(other)));
                continue;
            }
        };
        i += match token {
            Token::And | Token::Or => 2,
            Token::Op(op) => op.len(),
            _ => 1,
        };
        tokens.push((start, token));
    }
    Ok(tokens)
}

const TWO_CHARACTER_OPS: [&str; 5] = ["!=", ">=", "<=", "=~", "!~"];

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'/' | b':' | b'+')
}

/// A quoted string starting at `start`; its text and the offset past its closing quote.
fn string(query: &str, start: usize) -> Result<(String, usize)> {
    let quote = query.as_bytes()[start] as char;
    let mut text = String::new();
    let mut chars = query[start + 1..].char_indices();
    while let Some((n, c)) = chars.next() {
        match c {
            _ if c == quote => return Ok((text, start + 1 + n + 1)),
            '\\' if quote == '"' => match chars.next() {
                Some((_, 'n')) => text.push('\n'),
                Some((_, 't')) => text.push('\t'),
                Some((_, other)) => text.push(other),
                None => break,
            },
            _ => text.push(c),
        }
    }
    Err(Error::BadRequest(format!(
        "TraceQL: the string starting at offset {start} is not closed"
    )))
}

struct Parser<'a> {
    tokens: Vec<(usize, Token)>,
    at: usize,
    query: &'a str,
    needs_trace: bool,
}

/// What a condition's left side reads.
enum Field {
    /// Text: a column, or an attribute (`None` for the `COALESCE` of both maps).
    Text(String),
    /// A duration in ns.
    Duration(String),
    /// `status` or `kind`: text with a fixed set of values.
    Enum(String, &'static [&'static str]),
}

const STATUSES: &[&str] = &["ok", "error", "unset"];
const KINDS: &[&str] = &[
    "server",
    "client",
    "producer",
    "consumer",
    "internal",
    "unspecified",
];

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(_, t)| t)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).map(|(_, t)| t.clone());
        self.at += 1;
        token
    }

    /// A 400 naming the query from the current token on.
    fn unsupported(&self, why: &str) -> Error {
        let offset = self
            .tokens
            .get(self.at)
            .map_or(self.query.len(), |(offset, _)| *offset);
        let rest = &self.query[offset..];
        let part = if rest.is_empty() {
            "the end of the query".to_owned()
        } else {
            format!("`{}`", rest.chars().take(40).collect::<String>())
        };
        Error::BadRequest(format!("unsupported TraceQL at {part}: {why}"))
    }

    fn expect(&mut self, token: &Token, why: &str) -> Result<()> {
        if self.peek() == Some(token) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.unsupported(why))
        }
    }

    fn or(&mut self) -> Result<String> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            format!("({})", parts.join(" OR "))
        })
    }

    fn and(&mut self) -> Result<String> {
        let mut parts = vec![self.primary()?];
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            parts.push(self.primary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            format!("({})", parts.join(" AND "))
        })
    }

    fn primary(&mut self) -> Result<String> {
        if self.peek() == Some(&Token::LParen) {
            self.at += 1;
            let inner = self.or()?;
            self.expect(&Token::RParen, "expected `)`")?;
            return Ok(inner);
        }
        self.condition()
    }

    fn condition(&mut self) -> Result<String> {
        let Some(Token::Word(name)) = self.peek().cloned() else {
            return Err(self.unsupported(
                "expected a condition like `span.http.method = \"GET\"` or `duration > 100ms`",
            ));
        };
        let field = self.field(&name)?;
        self.at += 1;
        let Some(Token::Op(op)) = self.peek().cloned() else {
            return Err(self.unsupported("expected one of = != > < >= <= =~ !~"));
        };
        self.at += 1;
        let value_at = self.at;
        let value = self.next();
        let bad_value = |parser: &mut Parser, why: &str| {
            parser.at = value_at;
            Err(parser.unsupported(why))
        };
        match (&field, value) {
            (_, Some(Token::Word(word))) if word == "nil" => match op {
                "=" => Ok(format!("{} IS NULL", field.sql())),
                "!=" => Ok(format!("{} IS NOT NULL", field.sql())),
                _ => bad_value(self, "nil compares only with = and !="),
            },
            (Field::Duration(column), Some(Token::Word(word))) => match duration_ns(&word) {
                Some(ns) if !op.contains('~') => Ok(format!("{column} {} {ns}", sql_op(op))),
                _ => bad_value(
                    self,
                    "a duration like 100ms or 1.5s, compared with = != > < >= <=",
                ),
            },
            (Field::Duration(_), _) => bad_value(
                self,
                "a duration like 100ms or 1.5s, compared with = != > < >= <=",
            ),
            (Field::Enum(column, allowed), Some(Token::Word(word) | Token::Str(word))) => {
                if !allowed.contains(&word.as_str()) || !matches!(op, "=" | "!=") {
                    return bad_value(
                        self,
                        &format!("compare with = or != to one of {}", allowed.join(", ")),
                    );
                }
                Ok(format!("{column} {} {}", sql_op(op), literal(&word)))
            }
            (Field::Text(column), Some(Token::Str(text))) => match op {
                "=~" | "!~" => {
                    if let Err(error) = regex::Regex::new(&text) {
                        return bad_value(self, &format!("not a regular expression: {error}"));
                    }
                    let matched = format!(
                        "regexp_like({column}, {})",
                        literal(&format!("^(?:{text})$"))
                    );
                    Ok(if op == "=~" {
                        matched
                    } else {
                        format!("NOT {matched}")
                    })
                }
                _ => Ok(format!("{column} {} {}", sql_op(op), literal(&text))),
            },
            (Field::Text(column), Some(Token::Word(word))) => {
                if word == "true" || word == "false" {
                    return match op {
                        "=" | "!=" => Ok(format!("{column} {} {}", sql_op(op), literal(&word))),
                        _ => bad_value(self, "true and false compare only with = and !="),
                    };
                }
                match word.parse::<f64>() {
                    Ok(number) if number.is_finite() && !op.contains('~') => Ok(format!(
                        "TRY_CAST({column} AS DOUBLE) {} {number:?}",
                        sql_op(op)
                    )),
                    _ => bad_value(
                        self,
                        "expected a quoted string, a number, true, false or nil",
                    ),
                }
            }
            _ => bad_value(
                self,
                "expected a value: a quoted string, a number, a duration, an enum",
            ),
        }
    }

    /// The field a name reads.
    fn field(&mut self, name: &str) -> Result<Field> {
        match field_of(name) {
            Some((field, needs_trace)) => {
                self.needs_trace |= needs_trace;
                Ok(field)
            }
            None => Err(self.unsupported(
                "expected resource.NAME, span.NAME, .NAME or an intrinsic (name, status, kind, duration, traceDuration, rootName, rootServiceName)",
            )),
        }
    }
}

/// The intrinsics, as Tempo's tag discovery lists them.
pub(super) const INTRINSICS: &[&str] = &[
    "duration",
    "kind",
    "name",
    "rootName",
    "rootServiceName",
    "status",
    "statusMessage",
    "traceDuration",
];

/// What a tag name reads: its field, and whether that needs the trace summary.
fn field_of(name: &str) -> Option<(Field, bool)> {
    let text = |sql: &str| Some((Field::Text(sql.to_owned()), false));
    match name {
        "name" | "span:name" => text("span_name"),
        "statusMessage" | "span:statusMessage" => text("status_message"),
        "status" | "span:status" => Some((Field::Enum("status_code".into(), STATUSES), false)),
        "kind" | "span:kind" => Some((Field::Enum("span_kind".into(), KINDS), false)),
        "duration" | "span:duration" => Some((Field::Duration("duration_ns".into()), false)),
        "traceDuration" | "trace:duration" => {
            Some((Field::Duration("trace_duration_ns".into()), true))
        }
        "rootName" | "trace:rootName" => Some((Field::Text("root_name".into()), true)),
        "rootServiceName" | "trace:rootService" => Some((Field::Text("root_service".into()), true)),
        "resource.service.name" | ".service.name" => text("service_name"),
        _ => {
            if let Some(key) = name.strip_prefix("resource.").filter(|k| !k.is_empty()) {
                text(&format!("resource_attributes[{}]", literal(key)))
            } else if let Some(key) = name.strip_prefix("span.").filter(|k| !k.is_empty()) {
                text(&format!("attributes[{}]", literal(key)))
            } else if let Some(key) = name.strip_prefix('.').filter(|k| !k.is_empty()) {
                text(&format!(
                    "COALESCE(attributes[{key}], resource_attributes[{key}])",
                    key = literal(key)
                ))
            } else {
                None
            }
        }
    }
}

/// What a tag's values are, for tag discovery.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TagValues {
    /// Read with this SQL expression (over the trace summary too when `needs_trace`).
    Column { sql: String, needs_trace: bool },
    /// One of these.
    Fixed(&'static [&'static str]),
    /// A duration: no list of values.
    Duration,
}

/// How to list the values of tag `name`; `None` for a name TraceQL does not have.
pub(super) fn tag_values(name: &str) -> Option<TagValues> {
    let (field, needs_trace) = field_of(name)?;
    Some(match field {
        Field::Text(sql) => TagValues::Column { sql, needs_trace },
        Field::Enum(_, values) => TagValues::Fixed(values),
        Field::Duration(_) => TagValues::Duration,
    })
}

impl Field {
    fn sql(&self) -> &str {
        match self {
            Field::Text(sql) | Field::Duration(sql) | Field::Enum(sql, _) => sql,
        }
    }
}

fn sql_op(op: &str) -> &str {
    if op == "!=" { "<>" } else { op }
}

/// A TraceQL duration (`100ms`, `1.5s`, `2m`) in ns.
fn duration_ns(word: &str) -> Option<i64> {
    super::go_duration(word).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(query: &str) -> String {
        compile(query).unwrap().condition
    }

    #[test]
    fn every_form_of_the_search_builder_compiles() {
        assert_eq!(sql("{}"), "TRUE");
        assert_eq!(
            sql(r#"{resource.service.name="checkout" && name="GET /cart"}"#),
            "(service_name = 'checkout' AND span_name = 'GET /cart')"
        );
        assert_eq!(
            sql("{ duration > 100ms && status = error && kind = server }"),
            "(duration_ns > 100000000 AND status_code = 'error' AND span_kind = 'server')"
        );
        assert_eq!(
            sql(r#"{span.http.status_code >= 500}"#),
            "TRY_CAST(attributes['http.status_code'] AS DOUBLE) >= 500.0"
        );
        assert_eq!(
            sql(r#"{.region =~ "eu-.*" || .region != "us"}"#),
            "(regexp_like(COALESCE(attributes['region'], resource_attributes['region']), '^(?:eu-.*)$') OR COALESCE(attributes['region'], resource_attributes['region']) <> 'us')"
        );
        assert_eq!(
            sql(r#"{(span.a = "x" || span.b = "y") && resource.k8s.pod !~ "w.*"}"#),
            "((attributes['a'] = 'x' OR attributes['b'] = 'y') AND NOT regexp_like(resource_attributes['k8s.pod'], '^(?:w.*)$'))"
        );
        assert_eq!(
            sql("{span.db.statement != nil}"),
            "attributes['db.statement'] IS NOT NULL"
        );
        assert_eq!(sql("{span.cached = true}"), "attributes['cached'] = 'true'");
        let trace =
            compile(r#"{traceDuration > 1s && rootServiceName = "web" && rootName = "GET /"}"#)
                .unwrap();
        assert!(trace.needs_trace);
        assert_eq!(
            trace.condition,
            "(trace_duration_ns > 1000000000 AND root_service = 'web' AND root_name = 'GET /')"
        );
        assert!(!compile("{name = \"x\"}").unwrap().needs_trace);
    }

    #[test]
    fn quotes_in_values_stay_inside_their_literal() {
        assert_eq!(
            sql(r#"{span.q = "it's \"quoted\""}"#),
            r#"attributes['q'] = 'it''s "quoted"'"#
        );
    }

    #[test]
    fn what_is_outside_the_subset_is_refused_by_name() {
        for (query, part) in [
            ("{} | count() > 2", "`| count() > 2`"),
            ("{name = \"a\"} && {name = \"b\"}", "`&& {name"),
            ("{status = broken}", "`broken}`"),
            ("{duration > 5}", "`5}`"),
            ("{span.a > \"x\" ", "the end of the query"),
            ("name = \"x\"", "`name = \"x\"`"),
            ("{foo = 1}", "`foo = 1}`"),
            ("{.a =~ \"(\"}", "`\"(\"}`"),
            ("{.a = \"open}", "not closed"),
        ] {
            let error = compile(query).unwrap_err().to_string();
            assert!(error.contains(part), "{query}: {error}");
        }
    }
}
