//! The text form of segment rules: [`parse()`] turns DSL text into a [`Rule`] and
//! [`print()`] turns a [`Rule`] back into canonical text, such that
//! `parse(&print(&rule)) == Ok(rule)` for every valid rule.
//!
//! ```
//! use xeno_engine::rule::dsl;
//!
//! let text = r#"total_spend > 5000 and (visits < 3 or city in ["Pune", "Delhi"])"#;
//! let rule = dsl::parse(text).unwrap();
//! assert_eq!(dsl::print(&rule), text);
//! ```
//!
//! Grammar (keywords are case-insensitive; the printer writes them in lower case):
//!
//! ```text
//! rule       := or
//! or         := and ("or" and)*
//! and        := unary ("and" unary)*
//! unary      := "not" unary | "(" or ")" | performed | condition
//! condition  := field test
//! test       := ("=" | "!=" | "<" | "<=" | ">" | ">=") scalar ["ignore_case"]
//!             | "between" scalar "and" scalar
//!             | ("in" | "not_in") list ["ignore_case"]
//!             | ("contains" | "not_contains" | "starts_with" | "ends_with") string ["ignore_case"]
//!             | "exists" | "not_exists"
//!             | ("before" | "after") string                      (an RFC 3339 time)
//!             | ("within_last" | "not_within_last" | "within_next") duration
//! performed  := "performed" string ["where" unary] [quantifier] ["within" duration]
//! quantifier := ("at_least" | "at_most" | "exactly") integer ("times" | "time")
//! field      := ident ("." [A-Za-z0-9_]+)* | "`" name with \` and \\ escapes "`"
//! ident      := [A-Za-z_][A-Za-z0-9_]*
//! scalar     := number | string | "true" | "false"
//! list       := "[" [scalar ("," scalar)* [","]] "]"
//! duration   := a whole number immediately followed by s, m, h, d or w (30d)
//! ```
//!
//! Numbers and strings follow JSON (strings may not hold raw control characters).
//! A field that is a keyword, or that is not a plain dotted path, must be written in
//! backticks. `performed` without a quantifier means `at_least 1 time`, and its
//! `where` filter (on the event's properties) may not itself contain `performed`.
//!
//! The parser builds exactly what the text says: `a and b and c` is one `And` with
//! three children while `(a and b) and c` is an `And` inside an `And`; parentheses
//! never create nodes, and an `And`/`Or` always has at least two children. The
//! printer mirrors that, parenthesising only where the text would otherwise mean
//! something else. A one-child or empty `And`/`Or`, a non-finite number, an empty
//! field name, a duration that is not a whole positive number of seconds up to 100
//! years, a time outside years 0..=9999, or `performed` inside `where` cannot be
//! written in the DSL: [`print()`] still writes something for them, but it does not
//! parse back to the same rule.
//!
//! Limits are enforced while reading, so that no text can exhaust the stack or the
//! memory: the text's length ([`MAX_RULE_TEXT_BYTES`]), the nesting depth
//! ([`MAX_RULE_DEPTH`]: every `and`/`or` level, `not`, `where` and redundant pair of
//! parentheses counts one; parentheses around an `and`/`or` share its level, so a
//! printed rule has the same depth as its AST), the number of [`Rule`] nodes
//! ([`MAX_RULE_NODES`]), the length of strings, field and event names
//! ([`MAX_STRING_BYTES`]) and of lists ([`MAX_LIST_ITEMS`]).
//!
//! The parser is written by hand rather than with a parser generator because the
//! grammar is small and both the error messages (what was expected, what was found,
//! where) and the limits above need control over every step.

use std::fmt::{self, Write as _};

use super::ast::{CompareOp, Condition, Performed, Quantifier, Rule, Scalar, Test, TextOp};
use super::{
    MAX_LIST_ITEMS, MAX_RULE_DEPTH, MAX_RULE_NODES, MAX_RULE_TEXT_BYTES, MAX_STRING_BYTES,
};
use crate::time::{Duration, Timestamp};

/// Every word with a meaning in the grammar. A field named like one of these (in any
/// case) must be written in backticks, so that a misplaced keyword is reported as
/// such rather than read as a field.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "performed",
    "where",
    "within",
    "at_least",
    "at_most",
    "exactly",
    "times",
    "time",
    "between",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "exists",
    "not_exists",
    "before",
    "after",
    "within_last",
    "not_within_last",
    "within_next",
    "ignore_case",
    "true",
    "false",
];

const OPERATORS: &str = "= != < <= > >= between in not_in contains not_contains starts_with \
                         ends_with exists not_exists before after within_last not_within_last \
                         within_next";

/// Why a rule text was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// Byte offset into the text where the problem starts.
    pub offset: usize,
    /// 1-based line of `offset`.
    pub line: usize,
    /// 1-based column of `offset`, counted in characters.
    pub column: usize,
    pub message: String,
}

impl ParseError {
    fn at(text: &str, offset: usize, message: String) -> ParseError {
        let offset = floor_char_boundary(text, offset);
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        ParseError {
            offset,
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message,
        }
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Parses DSL text into a [`Rule`].
pub fn parse(text: &str) -> Result<Rule, ParseError> {
    if text.len() > MAX_RULE_TEXT_BYTES {
        return Err(ParseError::at(
            text,
            MAX_RULE_TEXT_BYTES,
            format!(
                "the rule is {} bytes long; the limit is {MAX_RULE_TEXT_BYTES} bytes",
                text.len()
            ),
        ));
    }
    let mut parser = Parser {
        text,
        pos: 0,
        peeked: None,
        nodes: 0,
    };
    let first = parser.peek()?;
    if matches!(first.kind, Kind::End) {
        return Err(parser.error(
            first.start,
            "the rule is empty; expected a condition such as `age >= 18`".to_string(),
        ));
    }
    let parsed = parser.parse_or(0, false, None)?;
    let rest = parser.peek()?;
    if !matches!(rest.kind, Kind::End) {
        return Err(parser.error(
            rest.start,
            format!(
                "expected `and`, `or` or end of input, found {}",
                parser.describe(&rest)
            ),
        ));
    }
    debug_assert!(parsed.height <= MAX_RULE_DEPTH && parser.nodes <= MAX_RULE_NODES);
    Ok(parsed.rule)
}

#[derive(Debug, Clone)]
enum Kind {
    /// An identifier or dotted path (`total_spend`, `items.0.price`); also keywords.
    Word,
    /// A backtick-quoted field name, unescaped.
    QuotedField(String),
    /// A double-quoted string, unescaped.
    Str(String),
    /// Anything starting with a digit or `-`: a number, a duration or a count. Kept
    /// raw because which of them it must be depends on where it stands.
    Numeric,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Compare(CompareOp),
    /// A character that starts no token; reported in context ("unknown operator").
    Other(char),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// A parsed piece of syntax and what it adds to the nesting depth.
struct Parsed {
    rule: Rule,
    /// Nesting levels from this piece down to its deepest condition.
    height: usize,
    /// An `and`/`or` node formed at this level (not inside parentheses), whose level
    /// the parentheses around it share.
    is_chain: bool,
}

impl Parsed {
    fn leaf(rule: Rule, height: usize) -> Parsed {
        Parsed {
            rule,
            height,
            is_chain: false,
        }
    }
}

#[derive(Clone, Copy)]
enum Connective {
    And,
    Or,
}

impl Connective {
    fn keyword(self) -> &'static str {
        match self {
            Connective::And => "and",
            Connective::Or => "or",
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    /// Byte offset just after the last consumed token.
    pos: usize,
    peeked: Option<Token>,
    /// `Rule` values built so far.
    nodes: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, offset: usize, message: String) -> ParseError {
        ParseError::at(self.text, offset, message)
    }

    fn peek(&mut self) -> Result<Token, ParseError> {
        if let Some(token) = &self.peeked {
            return Ok(token.clone());
        }
        let token = self.lex(self.pos)?;
        self.peeked = Some(token.clone());
        Ok(token)
    }

    /// Consumes the token last returned by [`Parser::peek`].
    fn bump(&mut self) {
        if let Some(token) = self.peeked.take() {
            self.pos = token.end;
        }
    }

    fn slice(&self, token: &Token) -> &'a str {
        &self.text[token.start..token.end]
    }

    fn is_keyword(&self, token: &Token, keyword: &str) -> bool {
        matches!(token.kind, Kind::Word) && self.slice(token).eq_ignore_ascii_case(keyword)
    }

    fn peek_keyword(&mut self, keyword: &str) -> Result<bool, ParseError> {
        let token = self.peek()?;
        Ok(self.is_keyword(&token, keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> Result<bool, ParseError> {
        let found = self.peek_keyword(keyword)?;
        if found {
            self.bump();
        }
        Ok(found)
    }

    /// How a token is named in error messages: as the user wrote it.
    fn describe(&self, token: &Token) -> String {
        match token.kind {
            Kind::End => "end of input".to_string(),
            Kind::Other(c) if c.is_control() => format!("character U+{:04X}", c as u32),
            _ => quote_code(&truncate(self.slice(token), 40)),
        }
    }

    fn location(&self, offset: usize) -> String {
        let at = ParseError::at(self.text, offset, String::new());
        format!("line {}, column {}", at.line, at.column)
    }

    fn count_node(&mut self, offset: usize) -> Result<(), ParseError> {
        self.nodes += 1;
        if self.nodes > MAX_RULE_NODES {
            return Err(self.error(
                offset,
                format!(
                    "the rule has more than {MAX_RULE_NODES} conditions and operators \
                     (the limit)"
                ),
            ));
        }
        Ok(())
    }

    /// Steps one syntactic level down (`not`, `(`, `where`). Checked before recursing
    /// so that the recursion itself is bounded, whatever the text.
    fn enter(&self, depth: usize, offset: usize) -> Result<usize, ParseError> {
        let inner = depth + 1;
        if inner > MAX_RULE_DEPTH {
            return Err(self.depth_error(offset));
        }
        Ok(inner)
    }

    /// Checks a finished piece's height; catches the `and`/`or` levels, which are
    /// only known once their first child has been read.
    fn check_height(&self, height: usize, offset: usize) -> Result<(), ParseError> {
        if height > MAX_RULE_DEPTH {
            return Err(self.depth_error(offset));
        }
        Ok(())
    }

    fn depth_error(&self, offset: usize) -> ParseError {
        self.error(
            offset,
            format!(
                "the rule is nested more than {MAX_RULE_DEPTH} levels deep (the limit; every \
                 `and`/`or` level, `not`, parenthesis and `where` counts one)"
            ),
        )
    }

    // ----- lexer -----

    fn lex(&self, from: usize) -> Result<Token, ParseError> {
        let text = self.text;
        let Some((skipped, first)) = text[from..]
            .char_indices()
            .find(|(_, c)| !c.is_whitespace())
        else {
            return Ok(Token {
                kind: Kind::End,
                start: text.len(),
                end: text.len(),
            });
        };
        let start = from + skipped;
        let bytes = text.as_bytes();
        let token = |kind, len| {
            Ok(Token {
                kind,
                start,
                end: start + len,
            })
        };
        let followed_by_equals = bytes.get(start + 1) == Some(&b'=');
        match first {
            '(' => token(Kind::LParen, 1),
            ')' => token(Kind::RParen, 1),
            '[' => token(Kind::LBracket, 1),
            ']' => token(Kind::RBracket, 1),
            ',' => token(Kind::Comma, 1),
            '=' => token(Kind::Compare(CompareOp::Eq), 1),
            '!' if followed_by_equals => token(Kind::Compare(CompareOp::Ne), 2),
            '<' if followed_by_equals => token(Kind::Compare(CompareOp::Le), 2),
            '<' => token(Kind::Compare(CompareOp::Lt), 1),
            '>' if followed_by_equals => token(Kind::Compare(CompareOp::Ge), 2),
            '>' => token(Kind::Compare(CompareOp::Gt), 1),
            '"' => self.lex_string(start),
            '`' => self.lex_quoted_field(start),
            '-' | '0'..='9' => {
                // Greedy over everything a number, duration or count can contain, so
                // that `30x` or `1.2.3` is reported whole rather than split.
                let mut end = start + 1;
                while let Some(&b) = bytes.get(end) {
                    let exponent_sign =
                        (b == b'+' || b == b'-') && matches!(bytes[end - 1], b'e' | b'E');
                    if is_ident_byte(b) || b == b'.' || exponent_sign {
                        end += 1;
                    } else {
                        break;
                    }
                }
                token(Kind::Numeric, end - start)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = start + 1;
                loop {
                    while bytes.get(end).copied().is_some_and(is_ident_byte) {
                        end += 1;
                    }
                    let dotted = bytes.get(end) == Some(&b'.')
                        && bytes.get(end + 1).copied().is_some_and(is_ident_byte);
                    if !dotted {
                        break;
                    }
                    end += 2;
                }
                token(Kind::Word, end - start)
            }
            other => token(Kind::Other(other), other.len_utf8()),
        }
    }

    fn lex_string(&self, start: usize) -> Result<Token, ParseError> {
        let text = self.text;
        let unterminated = || self.error(start, "unterminated string: missing closing `\"`".into());
        let mut value = String::new();
        let mut at = start + 1;
        loop {
            let Some(c) = text[at..].chars().next() else {
                return Err(unterminated());
            };
            match c {
                '"' => {
                    return Ok(Token {
                        kind: Kind::Str(value),
                        start,
                        end: at + 1,
                    });
                }
                '\\' => {
                    let Some(escaped) = text[at + 1..].chars().next() else {
                        return Err(unterminated());
                    };
                    let simple = match escaped {
                        '"' => Some('"'),
                        '\\' => Some('\\'),
                        '/' => Some('/'),
                        'b' => Some('\u{8}'),
                        'f' => Some('\u{c}'),
                        'n' => Some('\n'),
                        'r' => Some('\r'),
                        't' => Some('\t'),
                        _ => None,
                    };
                    if let Some(unescaped) = simple {
                        value.push(unescaped);
                        at += 2;
                    } else if escaped == 'u' {
                        let (unescaped, len) = self.unicode_escape(at)?;
                        value.push(unescaped);
                        at += len;
                    } else {
                        return Err(self.error(
                            at,
                            format!(
                                "invalid escape `\\{}` in a string; use one of \\\" \\\\ \\/ \\b \
                                 \\f \\n \\r \\t \\uXXXX",
                                escaped.escape_debug()
                            ),
                        ));
                    }
                }
                '\n' | '\r' => {
                    return Err(self.error(
                        start,
                        "unterminated string: a line break comes before the closing `\"` \
                         (write \\n for a line break inside a string)"
                            .into(),
                    ));
                }
                c if c < ' ' => {
                    return Err(self.error(
                        at,
                        format!(
                            "control character U+{0:04X} must be escaped in a string, as \
                             \\u{0:04x}",
                            c as u32
                        ),
                    ));
                }
                c => {
                    value.push(c);
                    at += c.len_utf8();
                }
            }
            if value.len() > MAX_STRING_BYTES {
                return Err(self.error(
                    start,
                    format!("string is longer than {MAX_STRING_BYTES} bytes (the limit)"),
                ));
            }
        }
    }

    /// Decodes `\uXXXX` (or a `\uXXXX\uXXXX` surrogate pair) at `at`; returns the
    /// character and how many bytes it took.
    fn unicode_escape(&self, at: usize) -> Result<(char, usize), ParseError> {
        let first = self.hex4(at)?;
        if (0xDC00..0xE000).contains(&first) {
            return Err(self.error(
                at,
                format!("unpaired surrogate `\\u{first:04x}` in a string"),
            ));
        }
        if !(0xD800..0xDC00).contains(&first) {
            // Not a surrogate, so always a valid scalar value.
            let c = char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER);
            return Ok((c, 6));
        }
        let low_at = at + 6;
        let low = if self.text[low_at..].starts_with("\\u") {
            Some(self.hex4(low_at)?)
        } else {
            None
        };
        match low {
            Some(low) if (0xDC00..0xE000).contains(&low) => {
                let code = 0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00);
                let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                Ok((c, 12))
            }
            _ => Err(self.error(
                at,
                format!(
                    "unpaired surrogate `\\u{first:04x}` in a string: a high surrogate must be \
                     followed by a `\\uDC00`..`\\uDFFF` low surrogate"
                ),
            )),
        }
    }

    /// The four hex digits after the `\u` at `at`.
    fn hex4(&self, at: usize) -> Result<u32, ParseError> {
        let digits = self.text.get(at + 2..at + 6).unwrap_or("");
        if digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            // All hex digits, so from_str_radix cannot see a sign or overflow.
            if let Ok(code) = u32::from_str_radix(digits, 16) {
                return Ok(code);
            }
        }
        Err(self.error(
            at,
            "invalid unicode escape: `\\u` must be followed by four hex digits".into(),
        ))
    }

    fn lex_quoted_field(&self, start: usize) -> Result<Token, ParseError> {
        let text = self.text;
        let mut name = String::new();
        let mut at = start + 1;
        loop {
            let Some(c) = text[at..].chars().next() else {
                return Err(self.error(
                    start,
                    "unterminated field name: missing closing backtick".into(),
                ));
            };
            match c {
                '`' => {
                    if name.is_empty() {
                        return Err(self.error(start, "empty field name ``".into()));
                    }
                    return Ok(Token {
                        kind: Kind::QuotedField(name),
                        start,
                        end: at + 1,
                    });
                }
                '\\' => match text[at + 1..].chars().next() {
                    Some(escaped @ ('`' | '\\')) => {
                        name.push(escaped);
                        at += 2;
                    }
                    _ => {
                        return Err(self.error(
                            at,
                            "invalid escape in a quoted field name; only \\` and \\\\ are allowed"
                                .into(),
                        ));
                    }
                },
                c => {
                    name.push(c);
                    at += c.len_utf8();
                }
            }
            if name.len() > MAX_STRING_BYTES {
                return Err(self.error(
                    start,
                    format!("field name is longer than {MAX_STRING_BYTES} bytes (the limit)"),
                ));
            }
        }
    }

    // ----- grammar -----

    fn parse_or(
        &mut self,
        depth: usize,
        in_where: bool,
        after: Option<&str>,
    ) -> Result<Parsed, ParseError> {
        self.parse_chain(Connective::Or, depth, in_where, after)
    }

    /// `or` over `and` chains, or `and` over unary terms. Children are collected as
    /// written, never merged with a same-kind child in parentheses.
    fn parse_chain(
        &mut self,
        connective: Connective,
        depth: usize,
        in_where: bool,
        after: Option<&str>,
    ) -> Result<Parsed, ParseError> {
        let start = self.peek()?.start;
        let operand = |parser: &mut Self, after: Option<&str>| match connective {
            Connective::Or => parser.parse_chain(Connective::And, depth, in_where, after),
            Connective::And => parser.parse_unary(depth, in_where, after),
        };
        let first = operand(self, after)?;
        if !self.peek_keyword(connective.keyword())? {
            return Ok(first);
        }
        let mut height = first.height;
        let mut children = vec![first.rule];
        while self.eat_keyword(connective.keyword())? {
            let next = operand(self, Some(connective.keyword()))?;
            height = height.max(next.height);
            children.push(next.rule);
        }
        let height = height + 1;
        self.check_height(height, start)?;
        self.count_node(start)?;
        let rule = match connective {
            Connective::And => Rule::And(children),
            Connective::Or => Rule::Or(children),
        };
        Ok(Parsed {
            rule,
            height,
            is_chain: true,
        })
    }

    fn parse_unary(
        &mut self,
        depth: usize,
        in_where: bool,
        after: Option<&str>,
    ) -> Result<Parsed, ParseError> {
        let token = self.peek()?;
        match &token.kind {
            Kind::Word if self.is_keyword(&token, "not") => {
                self.bump();
                let inner_depth = self.enter(depth, token.start)?;
                let operand = self.parse_unary(inner_depth, in_where, Some("not"))?;
                let height = operand.height + 1;
                self.check_height(height, token.start)?;
                self.count_node(token.start)?;
                Ok(Parsed::leaf(Rule::Not(Box::new(operand.rule)), height))
            }
            Kind::Word if self.is_keyword(&token, "performed") => {
                if in_where {
                    return Err(self.error(
                        token.start,
                        "`performed` cannot be used inside a `where` filter, which tests the \
                         properties of a single event"
                            .into(),
                    ));
                }
                self.parse_performed(depth, &token)
            }
            Kind::Word if is_keyword(self.slice(&token)) => {
                let word = self.slice(&token);
                Err(self.error(
                    token.start,
                    format!(
                        "expected a condition{}, found keyword `{word}` (a field with this \
                         name must be written in backticks: `` `{word}` ``)",
                        after_phrase(after)
                    ),
                ))
            }
            Kind::Word => {
                self.bump();
                self.parse_condition(self.slice(&token).to_string(), &token)
            }
            Kind::QuotedField(name) => {
                self.bump();
                self.parse_condition(name.clone(), &token)
            }
            Kind::LParen => {
                self.bump();
                let inner_depth = self.enter(depth, token.start)?;
                let inner = self.parse_or(inner_depth, in_where, Some("("))?;
                let close = self.peek()?;
                if !matches!(close.kind, Kind::RParen) {
                    return Err(self.error(
                        close.start,
                        format!(
                            "expected `and`, `or` or `)` to close the `(` at {}, found {}",
                            self.location(token.start),
                            self.describe(&close)
                        ),
                    ));
                }
                self.bump();
                // Parentheses around an and/or are that node's own level; any other
                // pair is redundant but still nests, so it counts.
                let height = if inner.is_chain {
                    inner.height
                } else {
                    inner.height + 1
                };
                self.check_height(height, token.start)?;
                Ok(Parsed::leaf(inner.rule, height))
            }
            _ => {
                let expected = match after {
                    None => "expected a condition, `not`, `performed` or `(`".to_string(),
                    Some(after) => format!("expected a condition after `{after}`"),
                };
                Err(self.error(
                    token.start,
                    format!("{expected}, found {}", self.describe(&token)),
                ))
            }
        }
    }

    fn parse_condition(
        &mut self,
        field: String,
        field_token: &Token,
    ) -> Result<Parsed, ParseError> {
        if field.len() > MAX_STRING_BYTES {
            return Err(self.error(
                field_token.start,
                format!("field name is longer than {MAX_STRING_BYTES} bytes (the limit)"),
            ));
        }
        let op_token = self.peek()?;
        if let Some(error) = self.unquoted_name_error(field_token, &op_token) {
            return Err(error);
        }
        let test = match &op_token.kind {
            Kind::Compare(op) => {
                self.bump();
                Test::Compare {
                    op: *op,
                    value: self.parse_scalar(op.symbol())?,
                    ignore_case: self.eat_keyword("ignore_case")?,
                }
            }
            Kind::Word => {
                let word = self.slice(&op_token).to_ascii_lowercase();
                match word.as_str() {
                    "between" => {
                        self.bump();
                        let low = self.parse_scalar("between")?;
                        if !self.eat_keyword("and")? {
                            let found = self.peek()?;
                            return Err(self.error(
                                found.start,
                                format!(
                                    "expected `and` between the two values of `between`, found {}",
                                    self.describe(&found)
                                ),
                            ));
                        }
                        let high = self.parse_scalar("and")?;
                        Test::Between { low, high }
                    }
                    "in" | "not_in" => {
                        self.bump();
                        Test::In {
                            values: self.parse_list(&word)?,
                            negated: word == "not_in",
                            ignore_case: self.eat_keyword("ignore_case")?,
                        }
                    }
                    "contains" => self.parse_text_test(TextOp::Contains)?,
                    "not_contains" => self.parse_text_test(TextOp::NotContains)?,
                    "starts_with" => self.parse_text_test(TextOp::StartsWith)?,
                    "ends_with" => self.parse_text_test(TextOp::EndsWith)?,
                    "exists" | "not_exists" => {
                        self.bump();
                        Test::Exists {
                            negated: word == "not_exists",
                        }
                    }
                    "before" | "after" => {
                        self.bump();
                        let (value, string_token) = self.parse_string(&word)?;
                        let time = Timestamp::parse_rfc3339(&value)
                            .map_err(|e| self.error(string_token.start, e.to_string()))?;
                        if word == "before" {
                            Test::Before(time)
                        } else {
                            Test::After(time)
                        }
                    }
                    "within_last" => {
                        self.bump();
                        Test::WithinLast(self.parse_duration(&word)?)
                    }
                    "not_within_last" => {
                        self.bump();
                        Test::NotWithinLast(self.parse_duration(&word)?)
                    }
                    "within_next" => {
                        self.bump();
                        Test::WithinNext(self.parse_duration(&word)?)
                    }
                    _ => return Err(self.unknown_operator(&op_token, &field)),
                }
            }
            Kind::Other(_) => return Err(self.unknown_operator(&op_token, &field)),
            _ => {
                return Err(self.error(
                    op_token.start,
                    format!(
                        "expected an operator after field {}, found {}; expected one of \
                         {OPERATORS}",
                        quote_code(&truncate(&field, 40)),
                        self.describe(&op_token)
                    ),
                ));
            }
        };
        let takes_ignore_case = matches!(
            test,
            Test::Compare { .. } | Test::In { .. } | Test::Text { .. }
        );
        if !takes_ignore_case {
            let next = self.peek()?;
            if self.is_keyword(&next, "ignore_case") {
                return Err(self.error(
                    next.start,
                    format!(
                        "`ignore_case` does not apply to `{}`; it only follows = != < <= > >= in \
                         not_in contains not_contains starts_with ends_with",
                        self.slice(&op_token).to_ascii_lowercase()
                    ),
                ));
            }
        }
        self.count_node(field_token.start)?;
        Ok(Parsed::leaf(Rule::Condition(Condition { field, test }), 0))
    }

    /// `first-name`, `città` or `a.b.` read as a field followed by a stray character;
    /// says how to write such a name instead of calling the rest an unknown operator.
    fn unquoted_name_error(&self, field_token: &Token, next: &Token) -> Option<ParseError> {
        let glued = matches!(field_token.kind, Kind::Word) && next.start == field_token.end;
        let stray = match next.kind {
            Kind::Other(c) => c.is_alphanumeric() || c == '.',
            Kind::Numeric => self.slice(next).starts_with('-'),
            _ => false,
        };
        if !(glued && stray) {
            return None;
        }
        let name_end = self.text[field_token.start..]
            .find(|c: char| c.is_whitespace() || "=!<>()[],\"`".contains(c))
            .map_or(self.text.len(), |length| field_token.start + length);
        let name = truncate(&self.text[field_token.start..name_end], 40);
        let mut quoted = String::new();
        write_quoted_field(&mut quoted, &name);
        Some(self.error(
            field_token.start,
            format!(
                "`{name}` is not a plain field name (ASCII letters, digits and `_`, in parts \
                 separated by dots); write it in backticks: `` {quoted} ``"
            ),
        ))
    }

    fn parse_text_test(&mut self, op: TextOp) -> Result<Test, ParseError> {
        self.bump();
        Ok(Test::Text {
            op,
            value: self.parse_string(op.keyword())?.0,
            ignore_case: self.eat_keyword("ignore_case")?,
        })
    }

    fn unknown_operator(&self, token: &Token, field: &str) -> ParseError {
        self.error(
            token.start,
            format!(
                "unknown operator {} after field {}; expected one of {OPERATORS}",
                self.describe(token),
                quote_code(&truncate(field, 40))
            ),
        )
    }

    fn parse_scalar(&mut self, after: &str) -> Result<Scalar, ParseError> {
        let token = self.peek()?;
        let value = match &token.kind {
            Kind::Numeric => Scalar::Number(self.number(&token)?),
            Kind::Str(value) => Scalar::String(value.clone()),
            Kind::Word if self.is_keyword(&token, "true") => Scalar::Bool(true),
            Kind::Word if self.is_keyword(&token, "false") => Scalar::Bool(false),
            Kind::Word if !is_keyword(self.slice(&token)) => {
                return Err(self.error(
                    token.start,
                    format!(
                        "expected a value after `{after}`, found {}; write text in double \
                         quotes, as \"{}\"",
                        self.describe(&token),
                        truncate(self.slice(&token), 40)
                    ),
                ));
            }
            Kind::Compare(CompareOp::Eq) if after == "=" => {
                return Err(self.error(
                    token.start,
                    "expected a value after `=`, found `=`; equality is a single `=`".into(),
                ));
            }
            _ => {
                return Err(self.error(
                    token.start,
                    format!(
                        "expected a value after `{after}`, found {}",
                        self.describe(&token)
                    ),
                ));
            }
        };
        self.bump();
        Ok(value)
    }

    fn number(&self, token: &Token) -> Result<f64, ParseError> {
        let raw = self.slice(token);
        if !is_json_number(raw) {
            return Err(self.error(
                token.start,
                format!(
                    "`{}` is not a valid number (write numbers like 42, -3.5 or 1e6)",
                    truncate(raw, 40)
                ),
            ));
        }
        match raw.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(value),
            _ => Err(self.error(
                token.start,
                format!("number `{}` is out of range", truncate(raw, 40)),
            )),
        }
    }

    fn parse_string(&mut self, after: &str) -> Result<(String, Token), ParseError> {
        let token = self.peek()?;
        match &token.kind {
            Kind::Str(value) => {
                self.bump();
                Ok((value.clone(), token))
            }
            _ => Err(self.error(
                token.start,
                format!(
                    "expected a string in double quotes after `{after}`, found {}",
                    self.describe(&token)
                ),
            )),
        }
    }

    fn parse_list(&mut self, after: &str) -> Result<Vec<Scalar>, ParseError> {
        let open = self.peek()?;
        if !matches!(open.kind, Kind::LBracket) {
            return Err(self.error(
                open.start,
                format!(
                    "expected a list such as [\"a\", \"b\"] after `{after}`, found {}",
                    self.describe(&open)
                ),
            ));
        }
        self.bump();
        let mut values = Vec::new();
        loop {
            let item = self.peek()?;
            if matches!(item.kind, Kind::RBracket) {
                self.bump();
                return Ok(values);
            }
            if values.len() == MAX_LIST_ITEMS {
                return Err(self.error(
                    item.start,
                    format!("the list has more than {MAX_LIST_ITEMS} items (the limit)"),
                ));
            }
            values.push(self.parse_scalar(if values.is_empty() { "[" } else { "," })?);
            let separator = self.peek()?;
            match separator.kind {
                Kind::Comma => self.bump(),
                Kind::RBracket => {
                    self.bump();
                    return Ok(values);
                }
                _ => {
                    return Err(self.error(
                        separator.start,
                        format!(
                            "expected `,` or `]` in the list opened at {}, found {}",
                            self.location(open.start),
                            self.describe(&separator)
                        ),
                    ));
                }
            }
        }
    }

    fn parse_duration(&mut self, after: &str) -> Result<Duration, ParseError> {
        let token = self.peek()?;
        if !matches!(token.kind, Kind::Numeric) {
            return Err(self.error(
                token.start,
                format!(
                    "expected a duration such as 30d after `{after}`, found {}",
                    self.describe(&token)
                ),
            ));
        }
        let duration = Duration::parse(self.slice(&token))
            .map_err(|e| self.error(token.start, e.to_string()))?;
        self.bump();
        Ok(duration)
    }

    fn parse_performed(&mut self, depth: usize, keyword: &Token) -> Result<Parsed, ParseError> {
        self.bump();
        let event_token = self.peek()?;
        let Kind::Str(event) = event_token.kind.clone() else {
            return Err(self.error(
                event_token.start,
                format!(
                    "expected the event name in double quotes after `performed`, such as \
                     \"Order Completed\", found {}",
                    self.describe(&event_token)
                ),
            ));
        };
        self.bump();

        let mut height = 0;
        let where_token = self.peek()?;
        let filter = if self.eat_keyword("where")? {
            let inner_depth = self.enter(depth, where_token.start)?;
            let filter = self.parse_unary(inner_depth, true, Some("where"))?;
            height = filter.height + 1;
            self.check_height(height, where_token.start)?;
            Some(Box::new(filter.rule))
        } else {
            None
        };

        let count_token = self.peek()?;
        let quantifier = if let Some(make) = self.quantifier_keyword(&count_token) {
            self.bump();
            let keyword = self.slice(&count_token).to_ascii_lowercase();
            let count = self.parse_count(&keyword)?;
            if !(self.eat_keyword("times")? || self.eat_keyword("time")?) {
                let found = self.peek()?;
                return Err(self.error(
                    found.start,
                    format!(
                        "expected `times` after `{keyword} {count}`, found {}",
                        self.describe(&found)
                    ),
                ));
            }
            make(count)
        } else {
            Quantifier::AtLeast(1)
        };

        let within = if self.eat_keyword("within")? {
            Some(self.parse_duration("within")?)
        } else {
            None
        };

        // Catch the likely slips here, where the message can say what was meant,
        // rather than as trailing input.
        let next = self.peek()?;
        if ["within_last", "not_within_last", "within_next"]
            .iter()
            .any(|keyword| self.is_keyword(&next, keyword))
        {
            return Err(self.error(
                next.start,
                format!(
                    "`performed` takes its time window as `within 30d`, not {}",
                    self.describe(&next)
                ),
            ));
        }
        if within.is_some() && self.quantifier_keyword(&next).is_some() {
            return Err(self.error(
                next.start,
                format!(
                    "the count ({}) must come before `within`",
                    self.describe(&next)
                ),
            ));
        }

        self.count_node(keyword.start)?;
        Ok(Parsed::leaf(
            Rule::Performed(Performed {
                event,
                filter,
                quantifier,
                within,
            }),
            height,
        ))
    }

    fn quantifier_keyword(&self, token: &Token) -> Option<fn(u32) -> Quantifier> {
        if self.is_keyword(token, "at_least") {
            Some(Quantifier::AtLeast)
        } else if self.is_keyword(token, "at_most") {
            Some(Quantifier::AtMost)
        } else if self.is_keyword(token, "exactly") {
            Some(Quantifier::Exactly)
        } else {
            None
        }
    }

    fn parse_count(&mut self, after: &str) -> Result<u32, ParseError> {
        let token = self.peek()?;
        let raw = self.slice(&token);
        if !matches!(token.kind, Kind::Numeric) || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(
                token.start,
                format!(
                    "expected a whole number after `{after}`, found {}",
                    self.describe(&token)
                ),
            ));
        }
        let count = raw.parse::<u32>().map_err(|_| {
            self.error(
                token.start,
                format!(
                    "count `{}` is too large (at most {})",
                    truncate(raw, 40),
                    u32::MAX
                ),
            )
        })?;
        self.bump();
        Ok(count)
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn is_keyword(word: &str) -> bool {
    KEYWORDS
        .iter()
        .any(|keyword| keyword.eq_ignore_ascii_case(word))
}

fn after_phrase(after: Option<&str>) -> String {
    after.map_or_else(String::new, |after| format!(" after `{after}`"))
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, JSON's number syntax.
fn is_json_number(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut at = 0;
    let digits = |at: &mut usize| {
        let start = *at;
        while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
            *at += 1;
        }
        *at - start
    };
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    let integer_start = at;
    let integer_digits = digits(&mut at);
    if integer_digits == 0 || (integer_digits > 1 && bytes[integer_start] == b'0') {
        return false;
    }
    if bytes.get(at) == Some(&b'.') {
        at += 1;
        if digits(&mut at) == 0 {
            return false;
        }
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        if digits(&mut at) == 0 {
            return false;
        }
    }
    at == bytes.len()
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Quotes source text in backticks for a message, Markdown-style when the text itself
/// holds a backtick.
fn quote_code(text: &str) -> String {
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

// ----- printer -----

/// Prints a rule as canonical DSL text: lower-case keywords, single spaces, and
/// parentheses only where the text would otherwise parse differently.
pub fn print(rule: &Rule) -> String {
    let mut out = String::new();
    write_rule(&mut out, rule);
    out
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print(self))
    }
}

fn write_rule(out: &mut String, rule: &Rule) {
    match rule {
        // `and` binds tighter than `or`, so only an `or` inside an `or` needs them,
        // and only to keep the nesting the AST has.
        Rule::Or(children) => {
            write_chain(out, children, " or ", |child| matches!(child, Rule::Or(_)))
        }
        Rule::And(children) => write_chain(out, children, " and ", |child| {
            matches!(child, Rule::And(_) | Rule::Or(_))
        }),
        Rule::Not(operand) => {
            out.push_str("not ");
            write_operand(out, operand);
        }
        Rule::Condition(condition) => write_condition(out, condition),
        Rule::Performed(performed) => write_performed(out, performed),
    }
}

fn write_chain(
    out: &mut String,
    children: &[Rule],
    separator: &str,
    needs_parentheses: impl Fn(&Rule) -> bool,
) {
    if children.is_empty() {
        // Not valid DSL; printed so that the mistake shows rather than vanishes.
        out.push_str("()");
        return;
    }
    for (index, child) in children.iter().enumerate() {
        if index > 0 {
            out.push_str(separator);
        }
        if needs_parentheses(child) {
            out.push('(');
            write_rule(out, child);
            out.push(')');
        } else {
            write_rule(out, child);
        }
    }
}

/// The operand of `not` or `where`, which is a single unary term.
fn write_operand(out: &mut String, rule: &Rule) {
    if matches!(rule, Rule::And(_) | Rule::Or(_)) {
        out.push('(');
        write_rule(out, rule);
        out.push(')');
    } else {
        write_rule(out, rule);
    }
}

fn write_condition(out: &mut String, condition: &Condition) {
    write_field(out, &condition.field);
    out.push(' ');
    match &condition.test {
        Test::Compare {
            op,
            value,
            ignore_case,
        } => {
            out.push_str(op.symbol());
            out.push(' ');
            write_scalar(out, value);
            write_ignore_case(out, *ignore_case);
        }
        Test::Between { low, high } => {
            out.push_str("between ");
            write_scalar(out, low);
            out.push_str(" and ");
            write_scalar(out, high);
        }
        Test::In {
            values,
            negated,
            ignore_case,
        } => {
            out.push_str(if *negated { "not_in [" } else { "in [" });
            for (index, value) in values.iter().enumerate() {
                if index > 0 {
                    out.push_str(", ");
                }
                write_scalar(out, value);
            }
            out.push(']');
            write_ignore_case(out, *ignore_case);
        }
        Test::Text {
            op,
            value,
            ignore_case,
        } => {
            out.push_str(op.keyword());
            out.push(' ');
            write_string(out, value);
            write_ignore_case(out, *ignore_case);
        }
        Test::Exists { negated } => out.push_str(if *negated { "not_exists" } else { "exists" }),
        Test::Before(time) => {
            out.push_str("before ");
            write_string(out, &time.to_rfc3339());
        }
        Test::After(time) => {
            out.push_str("after ");
            write_string(out, &time.to_rfc3339());
        }
        Test::WithinLast(duration) => {
            let _ = write!(out, "within_last {duration}");
        }
        Test::NotWithinLast(duration) => {
            let _ = write!(out, "not_within_last {duration}");
        }
        Test::WithinNext(duration) => {
            let _ = write!(out, "within_next {duration}");
        }
    }
}

fn write_ignore_case(out: &mut String, ignore_case: bool) {
    if ignore_case {
        out.push_str(" ignore_case");
    }
}

fn write_performed(out: &mut String, performed: &Performed) {
    out.push_str("performed ");
    write_string(out, &performed.event);
    if let Some(filter) = &performed.filter {
        out.push_str(" where ");
        write_operand(out, filter);
    }
    let (keyword, count) = match performed.quantifier {
        // The default, so left out.
        Quantifier::AtLeast(1) => ("", 0),
        Quantifier::AtLeast(count) => ("at_least", count),
        Quantifier::AtMost(count) => ("at_most", count),
        Quantifier::Exactly(count) => ("exactly", count),
    };
    if !keyword.is_empty() {
        let unit = if count == 1 { "time" } else { "times" };
        let _ = write!(out, " {keyword} {count} {unit}");
    }
    if let Some(within) = performed.within {
        let _ = write!(out, " within {within}");
    }
}

/// Bare when the parser would read the same name back as a field; in backticks
/// otherwise.
fn write_field(out: &mut String, field: &str) {
    let plain = {
        let mut segments = field.split('.');
        let first = segments.next().unwrap_or("");
        first
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && first.bytes().all(is_ident_byte)
            && segments.all(|segment| !segment.is_empty() && segment.bytes().all(is_ident_byte))
    };
    if plain && !is_keyword(field) {
        out.push_str(field);
        return;
    }
    write_quoted_field(out, field);
}

fn write_quoted_field(out: &mut String, field: &str) {
    out.push('`');
    for c in field.chars() {
        if c == '`' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('`');
}

fn write_scalar(out: &mut String, value: &Scalar) {
    match value {
        Scalar::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Scalar::Number(n) => write_number(out, *n),
        Scalar::String(s) => write_string(out, s),
    }
}

/// Shortest text that parses back to the same `f64`: whole numbers as integers
/// (`5000`, not `5000.0`), everything else with Rust's shortest round-trip form,
/// which switches to an exponent for very large or small magnitudes (`1e300`).
fn write_number(out: &mut String, n: f64) {
    if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e16 {
        let _ = write!(out, "{n}");
    } else {
        // Non-finite numbers come out as `NaN`/`inf`, which do not parse: the DSL,
        // like JSON, has no way to write them.
        let _ = write!(out, "{n:?}");
    }
}

/// JSON string syntax; control characters (C0, DEL and C1) escaped so that the
/// text stays printable.
fn write_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::{DAY, HOUR, MAX_DURATION, MINUTE, SECOND, WEEK};
    use proptest::prelude::*;

    fn condition(field: &str, test: Test) -> Rule {
        Rule::Condition(Condition {
            field: field.to_string(),
            test,
        })
    }

    fn number(n: f64) -> Scalar {
        Scalar::Number(n)
    }

    fn string(s: &str) -> Scalar {
        Scalar::String(s.to_string())
    }

    fn exists(field: &str) -> Rule {
        condition(field, Test::Exists { negated: false })
    }

    #[track_caller]
    fn parses_to(text: &str, expected: Rule) {
        assert_eq!(parse(text), Ok(expected), "{text}");
    }

    #[track_caller]
    fn fails(text: &str, line: usize, column: usize, phrase: &str) -> ParseError {
        let error = parse(text).expect_err(text);
        assert_eq!(
            (error.line, error.column),
            (line, column),
            "{text:?}: {error}"
        );
        assert!(
            error.message.contains(phrase),
            "{text:?}: `{error}` does not contain `{phrase}`"
        );
        error
    }

    #[test]
    fn spec_examples_parse_to_the_expected_rules() {
        parses_to(
            r#"total_spend > 5000 and (visits < 3 or city in ["Pune", "Delhi"]) and last_order_at within_last 30d"#,
            Rule::And(vec![
                Rule::compare("total_spend", CompareOp::Gt, number(5000.0)),
                Rule::Or(vec![
                    Rule::compare("visits", CompareOp::Lt, number(3.0)),
                    condition(
                        "city",
                        Test::In {
                            values: vec![string("Pune"), string("Delhi")],
                            negated: false,
                            ignore_case: false,
                        },
                    ),
                ]),
                condition("last_order_at", Test::WithinLast(Duration(30 * DAY))),
            ]),
        );
        parses_to(
            r#"performed "Order Completed" where revenue > 100 at_least 3 times within 90d"#,
            Rule::Performed(Performed {
                event: "Order Completed".into(),
                filter: Some(Box::new(Rule::compare(
                    "revenue",
                    CompareOp::Gt,
                    number(100.0),
                ))),
                quantifier: Quantifier::AtLeast(3),
                within: Some(Duration(90 * DAY)),
            }),
        );
        parses_to(
            r#"not performed "Login" within 30d"#,
            Rule::Not(Box::new(Rule::Performed(Performed {
                event: "Login".into(),
                filter: None,
                quantifier: Quantifier::AtLeast(1),
                within: Some(Duration(30 * DAY)),
            }))),
        );
        parses_to(
            r#"city = "pune" ignore_case"#,
            condition(
                "city",
                Test::Compare {
                    op: CompareOp::Eq,
                    value: string("pune"),
                    ignore_case: true,
                },
            ),
        );
        parses_to(
            "age between 18 and 30 and country exists",
            Rule::And(vec![
                condition(
                    "age",
                    Test::Between {
                        low: number(18.0),
                        high: number(30.0),
                    },
                ),
                exists("country"),
            ]),
        );
        parses_to(
            r#"signup_at before "2026-01-01T00:00:00Z""#,
            condition("signup_at", Test::Before(Timestamp(1_767_225_600_000))),
        );
        parses_to(
            r#"performed "Order Completed" where (revenue > 100 and currency = "USD") exactly 2 times"#,
            Rule::Performed(Performed {
                event: "Order Completed".into(),
                filter: Some(Box::new(Rule::And(vec![
                    Rule::compare("revenue", CompareOp::Gt, number(100.0)),
                    Rule::compare("currency", CompareOp::Eq, string("USD")),
                ]))),
                quantifier: Quantifier::Exactly(2),
                within: None,
            }),
        );
    }

    #[test]
    fn canonical_text_prints_back_unchanged() {
        for text in [
            r#"total_spend > 5000 and (visits < 3 or city in ["Pune", "Delhi"]) and last_order_at within_last 30d"#,
            r#"performed "Order Completed" where revenue > 100 at_least 3 times within 90d"#,
            r#"not performed "Login" within 30d"#,
            r#"city = "pune" ignore_case"#,
            "age between 18 and 30 and country exists",
            r#"signup_at before "2026-01-01T00:00:00Z""#,
            r#"performed "Order Completed" where (revenue > 100 and currency = "USD") exactly 2 times"#,
            "a exists and b exists or c exists",
            "(a exists and b exists) and c exists",
            "a exists or (b exists or c exists)",
            "not (a exists or b exists) and not not c exists",
            r#"`first name` starts_with "A" ignore_case and `and` not_exists and items.0.price >= -2.5"#,
            r#"tags not_in [] and x in [1, "two", true, false] ignore_case and y != 1e300"#,
            r#"performed "A" where not x exists at_most 1 time"#,
        ] {
            let rule = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(print(&rule), text);
            assert_eq!(rule.to_string(), text);
        }
    }

    #[test]
    fn chains_are_kept_as_written() {
        parses_to(
            "a exists and b exists and c exists",
            Rule::And(vec![exists("a"), exists("b"), exists("c")]),
        );
        parses_to(
            "(a exists and b exists) and c exists",
            Rule::And(vec![Rule::And(vec![exists("a"), exists("b")]), exists("c")]),
        );
        parses_to(
            "a exists or b exists and c exists",
            Rule::Or(vec![exists("a"), Rule::And(vec![exists("b"), exists("c")])]),
        );
        // Redundant parentheses create no node.
        parses_to("((a exists))", exists("a"));
        // `where` takes one term; the `and` after it belongs to the outer rule.
        parses_to(
            r#"performed "A" where x exists and y exists"#,
            Rule::And(vec![
                Rule::Performed(Performed {
                    event: "A".into(),
                    filter: Some(Box::new(exists("x"))),
                    quantifier: Quantifier::AtLeast(1),
                    within: None,
                }),
                exists("y"),
            ]),
        );
    }

    #[test]
    fn keywords_are_case_insensitive_and_fields_can_be_quoted() {
        parses_to(
            r#"NOT Performed "x" WHERE a Exists AT_LEAST 2 TIMES Within 2w Or `Or` = TRUE"#,
            Rule::Or(vec![
                Rule::Not(Box::new(Rule::Performed(Performed {
                    event: "x".into(),
                    filter: Some(Box::new(exists("a"))),
                    quantifier: Quantifier::AtLeast(2),
                    within: Some(Duration(2 * WEEK)),
                }))),
                Rule::compare("Or", CompareOp::Eq, Scalar::Bool(true)),
            ]),
        );
        parses_to(
            r#"`first name` = "A" and `a\`b\\c` exists and not.x exists"#,
            Rule::And(vec![
                Rule::compare("first name", CompareOp::Eq, string("A")),
                exists("a`b\\c"),
                exists("not.x"),
            ]),
        );
        parses_to(
            r#"s = "q\"b\\s\/\b\f\n\r\t\u00e9\ud83d\ude00""#,
            Rule::compare("s", CompareOp::Eq, string("q\"b\\s/\u{8}\u{c}\n\r\té😀")),
        );
    }

    #[test]
    fn printer_parenthesises_minimally_and_quotes_what_it_must() {
        let a = || exists("a");
        let b = || exists("b");
        let cases = [
            (
                Rule::Or(vec![Rule::And(vec![a(), b()]), a()]),
                "a exists and b exists or a exists",
            ),
            (
                Rule::And(vec![Rule::Or(vec![a(), b()]), a()]),
                "(a exists or b exists) and a exists",
            ),
            (
                Rule::Not(Box::new(Rule::And(vec![a(), b()]))),
                "not (a exists and b exists)",
            ),
            (
                Rule::compare("first name", CompareOp::Le, number(5000.0)),
                "`first name` <= 5000",
            ),
            (
                Rule::compare("TIMES", CompareOp::Eq, number(0.1)),
                "`TIMES` = 0.1",
            ),
            (
                Rule::compare("x", CompareOp::Eq, number(-1.5e-300)),
                "x = -1.5e-300",
            ),
            (
                Rule::compare("x", CompareOp::Eq, string("a\u{7}\"\\\u{9f}é")),
                r#"x = "a\u0007\"\\\u009fé""#,
            ),
            (
                condition("t", Test::After(Timestamp(1_767_225_600_123))),
                r#"t after "2026-01-01T00:00:00.123Z""#,
            ),
        ];
        for (rule, text) in cases {
            assert_eq!(print(&rule), text);
            assert_eq!(parse(text), Ok(rule));
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        let error = fails("total_spend >", 1, 14, "expected a value after `>`");
        assert_eq!(
            error.to_string(),
            "line 1, column 14: expected a value after `>`, found end of input"
        );
        assert_eq!(error.offset, 13);
        fails(r#"city in "Pune""#, 1, 9, "expected a list");
        let error = fails("x ~ 3", 1, 3, "unknown operator `~` after field `x`");
        assert!(error.message.contains("between") && error.message.contains("within_next"));
        fails("x equals 3", 1, 3, "unknown operator `equals`");
        fails(r#"city = "Pune"#, 1, 8, "unterminated string");
        fails(
            r#"performed "A" where performed "B""#,
            1,
            21,
            "`performed` cannot be used inside a `where`",
        );
        fails("visits within_last 30x", 1, 20, "`30x` is not a duration");
        fails("a exists and\n  b ~ 2", 2, 5, "unknown operator `~`");
        // Columns count characters, not bytes.
        let error = fails("`名前` ~ 1", 1, 6, "unknown operator");
        assert_eq!(error.offset, 9);
        fails(
            "x exists y",
            1,
            10,
            "expected `and`, `or` or end of input, found `y`",
        );
        fails("(a exists", 1, 10, "to close the `(` at line 1, column 1");
        fails(
            "a exists and",
            1,
            13,
            "expected a condition after `and`, found end of input",
        );
        fails("exists exists", 1, 1, "found keyword `exists`");
        fails(
            "first-name = 1",
            1,
            1,
            "write it in backticks: `` `first-name` ``",
        );
        fails("città = 1", 1, 1, "`città` is not a plain field name");
        fails("", 1, 1, "the rule is empty");
        fails(" \n ", 2, 2, "the rule is empty");
        fails("x = Pune", 1, 5, "write text in double quotes");
        fails("x = 1e999", 1, 5, "out of range");
        fails("x = 007", 1, 5, "not a valid number");
        fails("x in [1 2]", 1, 9, "expected `,` or `]`");
        fails(r#"x = "a\qb""#, 1, 7, "invalid escape");
        fails(r#"x = "\ud800x""#, 1, 6, "unpaired surrogate");
        fails(r#"performed "A" at_least 3"#, 1, 25, "expected `times`");
        fails(r#"performed "A" within_last 3d"#, 1, 15, "within 30d");
        fails(
            r#"performed "A" within 3d at_least 2 times"#,
            1,
            25,
            "must come before",
        );
        fails(
            r#"performed "A" exactly 99999999999 times"#,
            1,
            23,
            "too large",
        );
        fails("x exists ignore_case", 1, 10, "does not apply to `exists`");
        fails(r#"t before "yesterday""#, 1, 10, "not an RFC 3339 time");
        fails("x between 1 2", 1, 13, "expected `and` between");
    }

    #[test]
    fn limits_are_enforced_while_parsing() {
        let nested = format!("{}x exists{}", "(".repeat(40), ")".repeat(40));
        fails(&nested, 1, 33, "nested more than 32 levels");
        let nots = format!("{}x exists", "not ".repeat(40));
        fails(&nots, 1, 129, "nested more than 32 levels");
        // 32 levels are fine, however they are made up.
        parses_to(
            &format!("{}x exists{}", "(".repeat(32), ")".repeat(32)),
            exists("x"),
        );
        // An and/or chain 32 levels deep, parenthesised as the printer does it.
        let mut deep = "a exists and c exists".to_string();
        for level in 0..31 {
            let connective = if level % 2 == 0 { "and" } else { "or" };
            deep = format!("b exists {connective} ({deep})");
        }
        let rule = parse(&deep).unwrap();
        assert_eq!(parse(&print(&rule)), Ok(rule));
        // One more level: reported at the innermost `(`, where reading goes too deep.
        let deeper = format!("not ({deep})");
        let innermost = deeper.rfind('(').unwrap();
        fails(&deeper, 1, innermost + 1, "nested more than 32 levels");
        // Also when the extra level is an `and`/`or`, which is known only afterwards.
        fails(
            &format!("({deep}) or b exists"),
            1,
            1,
            "nested more than 32 levels",
        );

        let items = vec!["1"; 2_000].join(", ");
        let list = format!("x in [{items}]");
        fails(&list, 1, 7 + 3 * 1_000, "more than 1000 items");
        assert!(parse(&format!("x in [{}]", vec!["1"; 1_000].join(","))).is_ok());

        let long = "é".repeat(600);
        fails(&format!(r#"x = "{long}""#), 1, 5, "longer than 1024 bytes");
        fails(&format!("`{long}` exists"), 1, 1, "longer than 1024 bytes");
        fails(
            &format!("{} exists", "a".repeat(1_025)),
            1,
            1,
            "longer than 1024 bytes",
        );

        let many = vec!["a exists"; 2_001].join(" or ");
        fails(&many, 1, 1 + 2_000 * 12, "more than 2000 conditions");
        let huge = "a".repeat(MAX_RULE_TEXT_BYTES + 1);
        fails(&huge, 1, MAX_RULE_TEXT_BYTES + 1, "bytes long; the limit");
    }

    // ----- property tests -----

    /// Total depth stays at or under 5: three levels of and/or/not outside, `where`,
    /// and one level inside the filter.
    fn arb_rule() -> impl Strategy<Value = Rule> {
        let leaf = prop_oneof![
            3 => arb_condition().prop_map(Rule::Condition),
            1 => arb_performed().prop_map(Rule::Performed),
        ];
        leaf.prop_recursive(3, 40, 4, nest)
    }

    fn arb_filter() -> impl Strategy<Value = Rule> {
        arb_condition()
            .prop_map(Rule::Condition)
            .prop_recursive(1, 6, 3, nest)
    }

    fn nest(inner: BoxedStrategy<Rule>) -> impl Strategy<Value = Rule> {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..5).prop_map(Rule::And),
            prop::collection::vec(inner.clone(), 2..5).prop_map(Rule::Or),
            inner.prop_map(|rule| Rule::Not(Box::new(rule))),
        ]
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
            "[ -~]{0,12}",
            prop::sample::select(vec![
                "",
                "\"",
                "\\",
                "\\\"",
                "\u{0}\u{1f}\u{7f}\n\r\t",
                "😀"
            ])
            .prop_map(String::from),
        ]
    }

    fn arb_field() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-z_][A-Za-z0-9_]{0,8}(\\.[A-Za-z0-9_]{1,4}){0,2}",
            (prop::sample::select(KEYWORDS), any::<u32>()).prop_map(|(keyword, case)| {
                keyword
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if (case >> (i % 32)) & 1 == 1 {
                            c.to_ascii_uppercase()
                        } else {
                            c
                        }
                    })
                    .collect()
            }),
            "[ -~]{1,12}",
            prop::collection::vec(any::<char>(), 1..10).prop_map(String::from_iter),
        ]
    }

    fn arb_number() -> impl Strategy<Value = f64> {
        use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
        prop_oneof![
            any::<i32>().prop_map(f64::from),
            -1e6..1e6f64,
            POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO,
            prop::sample::select(vec![1e16, 1e300, -5e-324, f64::MAX, f64::MIN_POSITIVE, 0.1]),
        ]
    }

    fn arb_scalar() -> impl Strategy<Value = Scalar> {
        prop_oneof![
            any::<bool>().prop_map(Scalar::Bool),
            arb_number().prop_map(Scalar::Number),
            arb_string().prop_map(Scalar::String),
        ]
    }

    /// Whole seconds up to the 100-year limit, in every unit.
    fn arb_duration() -> impl Strategy<Value = Duration> {
        prop::sample::select(vec![SECOND, MINUTE, HOUR, DAY, WEEK])
            .prop_flat_map(|unit| (1..=MAX_DURATION / unit).prop_map(move |n| Duration(n * unit)))
    }

    /// Whole milliseconds from 1970 up to 2200-01-01.
    fn arb_timestamp() -> impl Strategy<Value = Timestamp> {
        prop_oneof![
            (0..7_258_118_400_000i64).prop_map(Timestamp),
            (0..7_258_118_400i64).prop_map(|s| Timestamp(s * 1_000)),
        ]
    }

    fn arb_compare_op() -> impl Strategy<Value = CompareOp> {
        prop::sample::select(CompareOp::ALL.to_vec())
    }

    fn arb_test() -> impl Strategy<Value = Test> {
        let text_op = prop::sample::select(vec![
            TextOp::Contains,
            TextOp::NotContains,
            TextOp::StartsWith,
            TextOp::EndsWith,
        ]);
        prop_oneof![
            (arb_compare_op(), arb_scalar(), any::<bool>()).prop_map(|(op, value, ignore_case)| {
                Test::Compare {
                    op,
                    value,
                    ignore_case,
                }
            }),
            (arb_scalar(), arb_scalar()).prop_map(|(low, high)| Test::Between { low, high }),
            (
                prop::collection::vec(arb_scalar(), 0..5),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(values, negated, ignore_case)| Test::In {
                    values,
                    negated,
                    ignore_case,
                }),
            (text_op, arb_string(), any::<bool>()).prop_map(|(op, value, ignore_case)| {
                Test::Text {
                    op,
                    value,
                    ignore_case,
                }
            }),
            any::<bool>().prop_map(|negated| Test::Exists { negated }),
            arb_timestamp().prop_map(Test::Before),
            arb_timestamp().prop_map(Test::After),
            arb_duration().prop_map(Test::WithinLast),
            arb_duration().prop_map(Test::NotWithinLast),
            arb_duration().prop_map(Test::WithinNext),
        ]
    }

    fn arb_condition() -> impl Strategy<Value = Condition> {
        (arb_field(), arb_test()).prop_map(|(field, test)| Condition { field, test })
    }

    fn arb_quantifier() -> impl Strategy<Value = Quantifier> {
        prop_oneof![
            Just(Quantifier::AtLeast(1)),
            any::<u32>().prop_map(Quantifier::AtLeast),
            any::<u32>().prop_map(Quantifier::AtMost),
            any::<u32>().prop_map(Quantifier::Exactly),
            (0..3u32).prop_map(Quantifier::Exactly),
        ]
    }

    fn arb_performed() -> impl Strategy<Value = Performed> {
        (
            arb_string(),
            prop::option::of(arb_filter()),
            arb_quantifier(),
            prop::option::of(arb_duration()),
        )
            .prop_map(|(event, filter, quantifier, within)| Performed {
                event,
                filter: filter.map(Box::new),
                quantifier,
                within,
            })
    }

    /// One piece of rule text: a keyword, a punctuation mark, a literal, a whole
    /// condition or a stray character.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(KEYWORDS).prop_map(String::from),
            prop::sample::select(vec![
                "(",
                ")",
                "[",
                "]",
                ",",
                "=",
                "!=",
                "<",
                "<=",
                ">",
                ">=",
                "!",
                "-",
                ".",
                "`",
                "\"",
                "\\",
                "30d",
                "0s",
                "1e999",
                "-2.5e-3",
                "007",
                "3",
                "x",
                "a.b",
                "a.",
                "`f g`",
                "\"s\"",
                "\"\\ud800\"",
                "\"2026-01-01T00:00:00Z\"",
                "é",
                "\u{0}",
                "x exists",
                "a > 3",
                "b in [1, \"2\"]",
                "performed \"E\"",
                "at_least 2 times",
                "within 3d",
                "where",
            ])
            .prop_map(String::from),
            "[ -~]{1,3}",
            any::<char>().prop_map(String::from),
        ]
    }

    /// Text made of the grammar's own pieces, so that the parser gets past the first
    /// token far more often than with random strings.
    fn token_soup() -> impl Strategy<Value = String> {
        let separator = prop::sample::select(vec![" ", " ", " ", "", "\n", "\t"]);
        prop::collection::vec((piece(), separator), 0..40).prop_map(|pieces| {
            pieces
                .into_iter()
                .flat_map(|(piece, separator)| [piece, separator.to_string()])
                .collect()
        })
    }

    /// A printed valid rule, cut short, with a span deleted or with a piece inserted:
    /// text that goes wrong deep inside rather than at the first token.
    fn mutated_rule_text() -> impl Strategy<Value = String> {
        (
            arb_rule(),
            0..3u8,
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            piece(),
        )
            .prop_map(|(rule, mutation, first, second, piece)| {
                let text = print(&rule);
                let boundaries: Vec<usize> = text
                    .char_indices()
                    .map(|(at, _)| at)
                    .chain([text.len()])
                    .collect();
                let (a, b) = (*first.get(&boundaries), *second.get(&boundaries));
                let (low, high) = (a.min(b), a.max(b));
                match mutation {
                    0 => text[..low].to_string(),
                    1 => format!("{}{}", &text[..low], &text[high..]),
                    _ => format!("{}{piece}{}", &text[..low], &text[low..]),
                }
            })
    }

    proptest! {
        #[test]
        fn dsl_round_trip(rule in arb_rule()) {
            let text = print(&rule);
            prop_assert_eq!(parse(&text), Ok(rule), "text: {}", text);
        }

        #[test]
        fn json_round_trip(rule in arb_rule()) {
            let json = serde_json::to_value(&rule).expect("a rule serializes");
            let back: Rule = serde_json::from_value(json.clone())
                .map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
            prop_assert_eq!(back, rule);
        }

        #[test]
        fn parser_never_panics(
            text in prop_oneof![any::<String>(), token_soup(), mutated_rule_text()]
        ) {
            match parse(&text) {
                // Whatever parses must print to text that parses back to it.
                Ok(rule) => prop_assert_eq!(parse(&print(&rule)), Ok(rule)),
                Err(error) => {
                    prop_assert!(text.is_char_boundary(error.offset));
                    prop_assert!(error.line >= 1 && error.column >= 1);
                    prop_assert!(!error.message.is_empty());
                }
            }
        }
    }
}
