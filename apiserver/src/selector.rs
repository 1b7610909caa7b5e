//! Label selectors and field selectors, parsed from query strings exactly as kube-apiserver
//! parses them (k8s.io/apimachinery `labels.Parse` and `fields.ParseSelector`), with the same
//! accepted inputs and the same error messages; and the query-string extractor of the REST
//! handlers, which refuses a selector that is not valid UTF-8.
//!
//! Label selector grammar (apimachinery's):
//!
//! ```text
//! <selector>     ::= "" | <requirement> | <requirement> "," <selector>
//! <requirement>  ::= "!" KEY | KEY [ <set-based> | <exact-match> | <numeric> ]
//! <set-based>    ::= ( "in" | "notin" ) "(" <values> ")"
//! <exact-match>  ::= ( "=" | "==" | "!=" ) [ VALUE ]
//! <numeric>      ::= ( ">" | "<" ) INTEGER
//! ```
//!
//! The lexer works on bytes: whitespace is space, tab, CR and LF; `= ! ( ) , > <` are operator
//! characters (an operator is the longest run that is a token: `!=`, `==`); anything else runs
//! into an identifier, and `in`/`notin` are keywords except where a value is expected. Every key
//! must be a qualified name (`[prefix/]name`, the prefix a DNS subdomain) and every value a label
//! value; a malformed selector is an error, never "everything".
//!
//! One deliberate difference: apimachinery's lexer stops at a NUL byte (its end-of-input
//! marker), so `%00` followed by anything parses as the empty selector and matches every
//! object. Here NUL is an ordinary identifier byte, and so is rejected by key/value validation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde_json::Value;

use crate::status::ApiError;

/// A selector that does not parse; the message is apimachinery's, word for word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

impl From<SelectorError> for String {
    fn from(err: SelectorError) -> String {
        err.0
    }
}

// ---- validation (apimachinery's `content.IsLabelKey`, `content.IsLabelValue`) ----

const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must \
                             start and end with an alphanumeric character";
const LABEL_NAME_MAX: usize = 63;
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric \
                               characters, '-', '_' or '.', and must start and end with an \
                               alphanumeric character";
const LABEL_VALUE_MAX: usize = 63;
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case \
                                     alphanumeric characters, '-' or '.', and must start and end \
                                     with an alphanumeric character";
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// apimachinery's `RegexError`: the message, the examples, the regex.
fn regex_error(msg: &str, re: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            out.push_str(" or ");
        }
        out.push_str(&format!("'{example}', "));
    }
    out.push_str(&format!("regex used for validation is '{re}')"));
    out
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} bytes")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_name(s: &[u8]) -> bool {
    match (s.first(), s.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && s.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain(s: &[u8]) -> bool {
    let lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    s.split(|b| *b == b'.')
        .all(|label| match (label.first(), label.last()) {
            (Some(first), Some(last)) => {
                lower_alnum(first)
                    && lower_alnum(last)
                    && label.iter().all(|b| lower_alnum(b) || *b == b'-')
            }
            _ => false,
        })
}

/// `content.IsLabelKey` (a.k.a. `IsQualifiedName`): the reasons `key` is not a label key.
fn label_key_errors(key: &[u8]) -> Vec<String> {
    let name_regex = || {
        regex_error(
            LABEL_KEY_ERR,
            LABEL_KEY_FMT,
            &["MyName", "my.name", "123-abc"],
        )
    };
    let parts: Vec<&[u8]> = key.split(|b| *b == b'/').collect();
    let mut errs = Vec::new();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > DNS1123_SUBDOMAIN_MAX {
                    errs.push(format!(
                        "prefix part {}",
                        max_len_error(DNS1123_SUBDOMAIN_MAX)
                    ));
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!(
                        "prefix part {}",
                        regex_error(
                            DNS1123_SUBDOMAIN_ERR,
                            DNS1123_SUBDOMAIN_FMT,
                            &["example.com"]
                        )
                    ));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. \
                 'example.com/MyName')",
                name_regex()
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > LABEL_NAME_MAX {
        errs.push(format!("name part {}", max_len_error(LABEL_NAME_MAX)));
    }
    if !is_label_name(name) {
        errs.push(format!("name part {}", name_regex()));
    }
    errs
}

/// `content.IsLabelValue`: the reasons `value` is not a label value.
fn label_value_errors(value: &[u8]) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errs.push(max_len_error(LABEL_VALUE_MAX));
    }
    if !value.is_empty() && !is_label_name(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

/// Go's `%q` (`strconv.Quote`) of a byte string: printable characters as they are, the usual
/// backslash escapes, `\xNN` for bytes that are not UTF-8.
fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                ' ' => out.push(' '),
                c if (c as u32) < 0x80 && !c.is_ascii_graphic() => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c if c.is_control() || c.is_whitespace() => {
                    if (c as u32) < 0x10000 {
                        out.push_str(&format!("\\u{:04x}", c as u32));
                    } else {
                        out.push_str(&format!("\\U{:08x}", c as u32));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// A `field.Invalid` error as `field.Error.Error()` prints it; `path` None is Go's nil path.
fn invalid(path: Option<&str>, value: &[u8], detail: &str) -> String {
    format!(
        "{}: Invalid value: {}: {detail}",
        path.unwrap_or("<nil>"),
        go_quote(value)
    )
}

/// `ErrorList.ToAggregate().Error()`: duplicates dropped, one error as itself, several as
/// `[a, b]`.
fn aggregate(errs: Vec<String>) -> Option<String> {
    let mut seen = Vec::new();
    for err in errs {
        if !seen.contains(&err) {
            seen.push(err);
        }
    }
    match seen.len() {
        0 => None,
        1 => seen.pop(),
        _ => Some(format!("[{}]", seen.join(", "))),
    }
}

// ---- label selectors ----

/// A label selector operator (`selection.Operator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One requirement of a label selector: a key, an operator and its values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
    /// One value for `=`, `==`, `!=`, `>` and `<`; at least one for `in`/`notin` (sorted and
    /// deduplicated when parsed); none for exists/does-not-exist.
    values: Vec<String>,
}

impl Requirement {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.op
    }

    pub fn values(&self) -> &[String] {
        &self.values
    }

    fn has_value(&self, v: &str) -> bool {
        self.values.iter().any(|x| x == v)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let label = labels.get(&self.key);
        match self.op {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                label.is_some_and(|l| self.has_value(l))
            }
            Operator::NotIn | Operator::NotEquals => label.is_none_or(|l| !self.has_value(l)),
            Operator::Exists => label.is_some(),
            Operator::DoesNotExist => label.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), [want]) = (label, self.values.as_slice()) else {
                    return false;
                };
                match (have.parse::<i64>(), want.parse::<i64>()) {
                    (Ok(have), Ok(want)) if self.op == Operator::GreaterThan => have > want,
                    (Ok(have), Ok(want)) => have < want,
                    _ => false,
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    /// apimachinery's `Requirement.String()`: `!k`, `k`, `k=v`, `k==v`, `k!=v`, `k>v`, `k<v`,
    /// `k in (a,b)`, `k notin (a,b)` (values sorted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::Exists => return write!(f, "{}", self.key),
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        };
        let mut values: Vec<&str> = self.values.iter().map(String::as_str).collect();
        values.sort_unstable();
        let values = values.join(",");
        match self.op {
            Operator::In | Operator::NotIn => write!(f, "{}{op}({values})", self.key),
            _ => write!(f, "{}{op}{values}", self.key),
        }
    }
}

/// A parsed label selector: requirements ANDed, sorted by key; the empty selector matches
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

/// A lexer token (apimachinery's `Token`; its `ErrorToken` cannot occur: every operator
/// character is a token on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    EndOfString,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

/// The token a literal spells, if any (`string2token`).
fn keyword(lit: &[u8]) -> Option<Token> {
    Some(match lit {
        b")" => Token::ClosedPar,
        b"," => Token::Comma,
        b"!" => Token::DoesNotExist,
        b"==" => Token::DoubleEquals,
        b"=" => Token::Equals,
        b">" => Token::GreaterThan,
        b"in" => Token::In,
        b"<" => Token::LessThan,
        b"!=" => Token::NotEquals,
        b"notin" => Token::NotIn,
        b"(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// The next token and its literal (empty at the end).
    fn lex(&mut self) -> (Token, &'a [u8]) {
        while self.pos < self.s.len() && is_whitespace(self.s[self.pos]) {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&first) = self.s.get(start) else {
            return (Token::EndOfString, b"");
        };
        if is_special(first) {
            // The longest run of operator characters, extended while it still spells a token.
            let mut end = start + 1;
            while end < self.s.len()
                && is_special(self.s[end])
                && keyword(&self.s[start..=end]).is_some()
            {
                end += 1;
            }
            self.pos = end;
            let lit = &self.s[start..end];
            return (keyword(lit).unwrap_or(Token::Identifier), lit);
        }
        let mut end = start;
        while end < self.s.len() && !is_special(self.s[end]) && !is_whitespace(self.s[end]) {
            end += 1;
        }
        self.pos = end;
        let lit = &self.s[start..end];
        match keyword(lit) {
            Some(tok @ (Token::In | Token::NotIn)) => (tok, lit),
            _ => (Token::Identifier, lit),
        }
    }
}

/// Where the parser is: in a value position `in`/`notin` are identifiers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    items: Vec<(Token, &'a [u8])>,
    pos: usize,
}

fn text(lit: &[u8]) -> String {
    String::from_utf8_lossy(lit).into_owned()
}

fn err<T>(message: String) -> Result<T, String> {
    Err(message)
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Parser<'a> {
        let mut lexer = Lexer { s, pos: 0 };
        let mut items = Vec::new();
        loop {
            let item = lexer.lex();
            items.push(item);
            if item.0 == Token::EndOfString {
                return Parser { items, pos: 0 };
            }
        }
    }

    fn lookahead(&self, ctx: Context) -> (Token, &'a [u8]) {
        let (tok, lit) = self
            .items
            .get(self.pos)
            .copied()
            .unwrap_or((Token::EndOfString, b""));
        match tok {
            Token::In | Token::NotIn if ctx == Context::Values => (Token::Identifier, lit),
            _ => (tok, lit),
        }
    }

    fn consume(&mut self, ctx: Context) -> (Token, &'a [u8]) {
        let item = self.lookahead(ctx);
        self.pos += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut reqs = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Context::Values);
            match tok {
                Token::Identifier | Token::DoesNotExist => {
                    let req = self
                        .parse_requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    reqs.push(req);
                    let (tok, lit) = self.consume(Context::Values);
                    match tok {
                        Token::EndOfString => return Ok(reqs),
                        Token::Comma => {
                            let (next, lit) = self.lookahead(Context::Values);
                            if next != Token::Identifier && next != Token::DoesNotExist {
                                return err(format!(
                                    "found '{}', expected: identifier after ','",
                                    text(lit)
                                ));
                            }
                        }
                        _ => {
                            return err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                text(lit)
                            ));
                        }
                    }
                }
                Token::EndOfString => return Ok(reqs),
                _ => {
                    return err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        text(lit)
                    ));
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, String> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = op {
            return new_requirement(key, op, Vec::new());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        new_requirement(key, op, values)
    }

    /// The key, and the operator when the requirement is `!key` or a bare `key`.
    fn parse_key_and_infer_operator(&mut self) -> Result<(&'a [u8], Option<Operator>), String> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(Context::Values);
        if tok == Token::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(Context::Values);
        }
        if tok != Token::Identifier {
            return err(format!("found '{}', expected: identifier", text(lit)));
        }
        let errs = label_key_errors(lit);
        if !errs.is_empty() {
            return err(invalid(None, lit, &errs.join("; ")));
        }
        let (next, _) = self.lookahead(Context::Values);
        if matches!(next, Token::EndOfString | Token::Comma) && op.is_none() {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, String> {
        let (tok, lit) = self.consume(Context::KeyAndOperator);
        Ok(match tok {
            Token::In => Operator::In,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            Token::NotIn => Operator::NotIn,
            Token::NotEquals => Operator::NotEquals,
            _ => {
                return err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    text(lit)
                ));
            }
        })
    }

    /// `( a, b, … )`: the set of values (sorted, deduplicated; empty entries are "").
    fn parse_values(&mut self) -> Result<Vec<&'a [u8]>, String> {
        let (tok, lit) = self.consume(Context::Values);
        if tok != Token::OpenPar {
            return err(format!("found '{}' expected: '('", text(lit)));
        }
        let (tok, lit) = self.lookahead(Context::Values);
        match tok {
            Token::Identifier | Token::Comma => {
                let values = self.parse_identifiers_list()?;
                if self.consume(Context::Values).0 != Token::ClosedPar {
                    return err(format!("found '{}', expected: ')'", text(lit)));
                }
                Ok(values.into_iter().collect())
            }
            Token::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![b""])
            }
            _ => err(format!(
                "found '{}', expected: ',', ')' or identifier",
                text(lit)
            )),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<&'a [u8]>, String> {
        let mut set = BTreeSet::new();
        loop {
            let (tok, lit) = self.consume(Context::Values);
            match tok {
                Token::Identifier => {
                    set.insert(lit);
                    let (next, lit) = self.lookahead(Context::Values);
                    match next {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(set),
                        _ => return err(format!("found '{}', expected: ',' or ')'", text(lit))),
                    }
                }
                Token::Comma => {
                    // `(,`, `,,` and `,)` each stand for the empty value.
                    if set.is_empty() {
                        set.insert(b"");
                    }
                    match self.lookahead(Context::Values).0 {
                        Token::ClosedPar => {
                            set.insert(b"");
                            return Ok(set);
                        }
                        Token::Comma => {
                            set.insert(b"");
                        }
                        _ => {}
                    }
                }
                _ => {
                    return err(format!(
                        "found '{}', expected: ',', or identifier",
                        text(lit)
                    ));
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<Vec<&'a [u8]>, String> {
        let (tok, _) = self.lookahead(Context::Values);
        if matches!(tok, Token::EndOfString | Token::Comma) {
            return Ok(vec![b""]);
        }
        let (tok, lit) = self.consume(Context::Values);
        if tok == Token::Identifier {
            return Ok(vec![lit]);
        }
        err(format!("found '{}', expected: identifier", text(lit)))
    }
}

/// apimachinery's `NewRequirement` checks on what the parser found (the key is already valid).
fn new_requirement(key: &[u8], op: Operator, values: Vec<&[u8]>) -> Result<Requirement, String> {
    let mut errs = Vec::new();
    let key_errs = label_key_errors(key);
    if !key_errs.is_empty() {
        errs.push(invalid(Some("key"), key, &key_errs.join("; ")));
    }
    if matches!(op, Operator::GreaterThan | Operator::LessThan) {
        for (i, v) in values.iter().enumerate() {
            let integer = std::str::from_utf8(v).is_ok_and(|v| v.parse::<i64>().is_ok());
            if !integer {
                errs.push(invalid(
                    Some(&format!("values[{i}]")),
                    v,
                    "for 'Gt', 'Lt' operators, the value must be an integer",
                ));
            }
        }
    }
    for (i, v) in values.iter().enumerate() {
        let value_errs = label_value_errors(v);
        if !value_errs.is_empty() {
            let path = format!("values[{i}][{}]", text(key));
            errs.push(invalid(Some(&path), v, &value_errs.join("; ")));
        }
    }
    if let Some(e) = aggregate(errs) {
        return Err(e);
    }
    Ok(Requirement {
        key: text(key),
        op,
        values: values.into_iter().map(text).collect(),
    })
}

impl LabelSelector {
    /// Parses a `labelSelector` as kube-apiserver does; a malformed one is an error with
    /// apimachinery's message (a 400 BadRequest from the handlers).
    pub fn parse(s: &str) -> Result<LabelSelector, SelectorError> {
        LabelSelector::parse_bytes(s.as_bytes())
    }

    /// [`LabelSelector::parse`] of raw bytes (a percent-decoded query value that need not be
    /// UTF-8; any byte that is not ASCII fails key or value validation).
    pub fn parse_bytes(s: &[u8]) -> Result<LabelSelector, SelectorError> {
        let mut reqs = Parser::new(s).parse().map_err(SelectorError)?;
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector(reqs))
    }

    /// The selector of a `metav1.LabelSelector` object (`matchLabels` + `matchExpressions`),
    /// as `metav1.LabelSelectorAsSelector` builds it (requirements sorted by key).
    pub fn from_object(selector: &Value) -> LabelSelector {
        let mut reqs = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                reqs.push(Requirement {
                    key: k.clone(),
                    op: Operator::Equals,
                    values: vec![v.as_str().unwrap_or("").into()],
                });
            }
        }
        for expr in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr["key"].as_str().unwrap_or("").to_string();
            let values: Vec<String> = expr["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            let (op, values) = match expr["operator"].as_str().unwrap_or("") {
                "In" => (Operator::In, values),
                "NotIn" => (Operator::NotIn, values),
                "Exists" => (Operator::Exists, Vec::new()),
                _ => (Operator::DoesNotExist, Vec::new()),
            };
            reqs.push(Requirement { key, op, values });
        }
        reqs.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector(reqs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.0
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| req.matches(labels))
    }

    /// The selector as kube-apiserver prints it (`app=web,tier in (a,b)`).
    pub fn to_string_form(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, req) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{req}")?;
        }
        Ok(())
    }
}

/// The labels of an object.
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

// ---- field selectors ----

/// One term of a field selector: `field=value`/`field==value` (`equal`) or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    equal: bool,
    value: String,
}

/// A field selector: terms ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldTerm>);

/// Fields every kind supports (kube-apiserver's `DefaultClusterScopedAttr`/`NamespaceScoped`).
const COMMON_FIELDS: [&str; 2] = ["metadata.name", "metadata.namespace"];

/// The fields a kind supports besides [`COMMON_FIELDS`], as kube-apiserver registers them in
/// each kind's `GetAttrs`/`AddFieldLabelConversionFunc`.
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Node" => &["spec.unschedulable"],
        "ReplicaSet" => &["status.replicas"],
        _ => &[],
    }
}

/// `fields.splitTerms`: splits on commas that are not backslash-escaped.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            terms.push(&s[start..i]);
            start = i + 1;
        }
    }
    terms.push(&s[start..]);
    terms
}

/// `fields.splitTerm`: the first `!=`, `==` or `=` splits the field from the (escaped) value.
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if let Some(value) = rest.strip_prefix(op) {
                return Some((&term[..i], op, value));
            }
        }
    }
    None
}

/// `fields.UnescapeValue`: `\\`, `\,` and `\=` are the escapes; a bare `,` or `=` is an error.
fn unescape_value(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            if !matches!(c, '\\' | ',' | '=') {
                return Err(format!(
                    "invalid field selector: invalid escape sequence: \\{c}"
                ));
            }
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            // Go prints the rune with %v: its code point.
            ',' | '=' => {
                return Err(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                ));
            }
            c => out.push(c),
        }
    }
    if escaped {
        return Err("invalid field selector: invalid escape sequence: \\".into());
    }
    Ok(out)
}

/// `fields.EscapeValue`: a literal value as a field selector value.
pub fn escape_field_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `fields.ParseSelector`: terms sorted, empty terms skipped, values unescaped; nothing is
/// trimmed.
fn parse_field_terms(s: &str) -> Result<Vec<FieldTerm>, String> {
    let mut parts = split_terms(s);
    parts.sort_unstable();
    let mut terms = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let (field, op, value) = split_term(part)
            .ok_or_else(|| format!("invalid selector: '{s}'; can't understand '{part}'"))?;
        terms.push(FieldTerm {
            field: field.to_string(),
            equal: op != "!=",
            value: unescape_value(value)?,
        });
    }
    Ok(terms)
}

impl FieldSelector {
    /// Parses a field selector for `kind` as kube-apiserver does (`fields.ParseSelector`, then
    /// the kind's field label conversion): a malformed selector is apimachinery's parse error,
    /// a field the kind does not support is `field label not supported: <field>`. Either is a
    /// 400 from the handlers.
    pub fn parse(s: &str, kind: &str) -> Result<FieldSelector, SelectorError> {
        let terms = parse_field_terms(s).map_err(SelectorError)?;
        for term in &terms {
            let field = term.field.as_str();
            if !COMMON_FIELDS.contains(&field) && !kind_fields(kind).contains(&field) {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|term| {
            // An Event's `source` selects on `source.component`.
            let path = if term.field == "source" {
                "source.component"
            } else {
                term.field.as_str()
            };
            let mut v = obj;
            for part in path.split('.') {
                v = &v[part];
            }
            let actual = match v {
                Value::String(s) => s.clone(),
                Value::Null => match term.field.as_str() {
                    "spec.unschedulable" | "spec.hostNetwork" => "false".into(),
                    "status.replicas" => "0".into(),
                    _ => String::new(),
                },
                other => other.to_string(),
            };
            (actual == term.value) == term.equal
        })
    }
}

// ---- the query string ----

/// `%XX`-decodes a form component (`+` is a space; a `%` not followed by two hex digits stays
/// as it is), as `application/x-www-form-urlencoded` parsers do.
fn form_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// A boolean query parameter as apimachinery's `Convert_Slice_string_To_bool` reads one: `0`
/// and `false` in any case are false, everything else (`1`, `t`, `True`, `yes`, even the empty
/// value of a bare `?watch`) is true. Not an error in any case, as in kube-apiserver.
pub fn parse_bool(value: &str) -> bool {
    !(value == "0" || value.eq_ignore_ascii_case("false"))
}

/// Whether boolean parameter `name` is set true in parsed `query` (absent: false).
pub fn query_flag(query: &HashMap<String, String>, name: &str) -> bool {
    query.get(name).is_some_and(|v| parse_bool(v))
}

/// [`query_flag`] on a raw query string (for the filters that run before the handlers parse
/// it): the first `name` decides, as `url.Values` gives apimachinery its first value.
pub fn raw_query_flag(query: Option<&str>, name: &str) -> bool {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(n, _)| form_decode(n) == name.as_bytes())
        .is_some_and(|(_, v)| parse_bool(&String::from_utf8_lossy(&form_decode(v))))
}

/// The query parameters of a request (the first of repeated names wins, as apimachinery reads
/// `url.Values`). A `labelSelector` or
/// `fieldSelector` that is not UTF-8 once decoded is a 400: a label selector with the error
/// apimachinery's parser gives its bytes, a field selector with a plain message.
pub fn parse_query(query: &str) -> Result<HashMap<String, String>, ApiError> {
    let mut params = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = String::from_utf8_lossy(&form_decode(name)).into_owned();
        let value = form_decode(value);
        let value = match String::from_utf8(value) {
            Ok(value) => value,
            Err(e) if name == "labelSelector" => {
                let message = match LabelSelector::parse_bytes(e.as_bytes()) {
                    Err(parse) => parse.0,
                    Ok(_) => "unable to parse requirement: the selector is not UTF-8".into(),
                };
                return Err(ApiError::bad_request(message));
            }
            Err(e) if name == "fieldSelector" => {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{}'; the selector is not UTF-8",
                    String::from_utf8_lossy(e.as_bytes())
                )));
            }
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        params.entry(name).or_insert(value);
    }
    Ok(params)
}

/// The query-string extractor of the REST handlers: [`parse_query`] of the request's query.
pub struct QueryParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or("")).map(QueryParams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse_err(s: &str) -> String {
        match LabelSelector::parse(s) {
            Ok(sel) => panic!("{s:?} parsed as {sel:?}"),
            Err(e) => e.into(),
        }
    }

    /// A requirement as the parser would build it (`in` values sorted and deduplicated).
    fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
        let mut values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        values.sort();
        values.dedup();
        Requirement {
            key: key.into(),
            op,
            values,
        }
    }

    fn tokens(s: &str) -> Vec<Token> {
        let mut lexer = Lexer {
            s: s.as_bytes(),
            pos: 0,
        };
        let mut out = Vec::new();
        loop {
            let (tok, _) = lexer.lex();
            if tok == Token::EndOfString {
                return out;
            }
            out.push(tok);
        }
    }

    /// apimachinery's TestLexer: one token and its literal.
    #[test]
    fn lexer_single_tokens() {
        use Token::*;
        for (s, want) in [
            ("", EndOfString),
            (",", Comma),
            ("notin", NotIn),
            ("in", In),
            ("=", Equals),
            ("==", DoubleEquals),
            (">", GreaterThan),
            ("<", LessThan),
            // The longest valid token.
            ("!", DoesNotExist),
            ("!=", NotEquals),
            ("(", OpenPar),
            (")", ClosedPar),
            // Characters that are not operators are part of an identifier.
            ("~", Identifier),
            ("||", Identifier),
        ] {
            let mut lexer = Lexer {
                s: s.as_bytes(),
                pos: 0,
            };
            let (tok, lit) = lexer.lex();
            assert_eq!((tok, lit), (want, s.as_bytes()), "{s:?}");
        }
    }

    /// apimachinery's TestLexerSequence and TestParserLookahead.
    #[test]
    fn lexer_sequences_and_lookahead() {
        use Token::*;
        let cases: [(&str, &[Token]); 11] = [
            (
                "key in ( value )",
                &[Identifier, In, OpenPar, Identifier, ClosedPar],
            ),
            (
                "key notin ( value )",
                &[Identifier, NotIn, OpenPar, Identifier, ClosedPar],
            ),
            (
                "key in ( value1, value2 )",
                &[
                    Identifier, In, OpenPar, Identifier, Comma, Identifier, ClosedPar,
                ],
            ),
            ("key", &[Identifier]),
            ("!key", &[DoesNotExist, Identifier]),
            ("()", &[OpenPar, ClosedPar]),
            ("", &[]),
            (
                "x in (),y",
                &[Identifier, In, OpenPar, ClosedPar, Comma, Identifier],
            ),
            (
                "== != (), = notin",
                &[
                    DoubleEquals,
                    NotEquals,
                    OpenPar,
                    ClosedPar,
                    Comma,
                    Equals,
                    NotIn,
                ],
            ),
            ("key>2", &[Identifier, GreaterThan, Identifier]),
            ("key<1", &[Identifier, LessThan, Identifier]),
        ];
        for (s, want) in cases {
            assert_eq!(tokens(s), want, "{s:?}");
            // The parser sees the same tokens, then the end, and never runs past it.
            let mut p = Parser::new(s.as_bytes());
            assert_eq!(p.items.len(), want.len() + 1, "{s:?}");
            for &tok in want {
                let ahead = p.lookahead(Context::KeyAndOperator);
                assert_eq!(ahead, p.consume(Context::KeyAndOperator));
                assert_eq!(ahead.0, tok);
            }
            assert_eq!(p.consume(Context::KeyAndOperator).0, EndOfString);
            assert_eq!(p.consume(Context::Values).0, EndOfString);
        }
        // Operator characters: the longest run that is still a token.
        assert_eq!(tokens("!!"), [DoesNotExist, DoesNotExist]);
        assert_eq!(tokens("!=="), [NotEquals, Equals]);
        assert_eq!(tokens("((("), [OpenPar, OpenPar, OpenPar]);
        assert_eq!(tokens("x\t\r\n=\ny"), [Identifier, Equals, Identifier]);
    }

    /// apimachinery's TestParseOperator.
    #[test]
    fn parse_operator() {
        for op in ["in", "=", "==", ">", "<", "notin", "!="] {
            assert!(Parser::new(op.as_bytes()).parse_operator().is_ok(), "{op}");
        }
        for (s, found) in [("!", "!"), ("exists", "exists"), ("(", "(")] {
            assert_eq!(
                Parser::new(s.as_bytes()).parse_operator(),
                Err(format!(
                    "found '{found}', expected: in, notin, =, ==, !=, gt, lt"
                ))
            );
        }
    }

    /// apimachinery's TestSelectorParse: good strings print back without their spaces.
    #[test]
    fn good_selectors_print_back() {
        for s in [
            "x=a,y=b,z=c",
            "",
            "x!=a,y=b",
            "x=",
            "x= ",
            "x=,z= ",
            "x= ,z= ",
            "!x",
            "x>1",
            "x>1,z<5",
        ] {
            let sel = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(sel.to_string(), s.replace(' ', ""), "{s:?}");
        }
        for s in ["x=a||y=b", "x==a==b", "!x=a", "x<a"] {
            parse_err(s);
        }
        // Deterministic: requirements are sorted by key.
        assert_eq!(
            LabelSelector::parse("x=a,a=x").unwrap(),
            LabelSelector::parse("a=x,x=a").unwrap()
        );
        assert_eq!(
            LabelSelector::parse("x=a,a=x").unwrap().to_string(),
            "a=x,x=a"
        );
    }

    /// apimachinery's TestSetSelectorParser: what parses, into which requirements.
    #[test]
    fn set_selector_parser_table() {
        use Operator::*;
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("\rx", vec![req("x", Exists, &[])]),
            (
                "this-is-a-dns.domain.com/key-with-dash",
                vec![req("this-is-a-dns.domain.com/key-with-dash", Exists, &[])],
            ),
            (
                "this-is-another-dns.domain.com/key-with-dash in (so,what)",
                vec![req(
                    "this-is-another-dns.domain.com/key-with-dash",
                    In,
                    &["so", "what"],
                )],
            ),
            (
                "0.1.2.domain/99 notin (10.10.100.1, tick.tack.clock)",
                vec![req(
                    "0.1.2.domain/99",
                    NotIn,
                    &["10.10.100.1", "tick.tack.clock"],
                )],
            ),
            ("foo  in\t (abc)", vec![req("foo", In, &["abc"])]),
            ("x notin\n (abc)", vec![req("x", NotIn, &["abc"])]),
            (
                "x  notin\t\t\t(abc,def)",
                vec![req("x", NotIn, &["abc", "def"])],
            ),
            ("x in (abc,def)", vec![req("x", In, &["abc", "def"])]),
            ("x in (abc,)", vec![req("x", In, &["abc", ""])]),
            ("x in (abc,abc)", vec![req("x", In, &["abc"])]),
            ("x in ()", vec![req("x", In, &[""])]),
            ("x in (a,,)", vec![req("x", In, &["a", ""])]),
            ("x in (a,,,)", vec![req("x", In, &["a", ""])]),
            ("x in (a,,,,,,)", vec![req("x", In, &["a", ""])]),
            ("x in (a,,a,,a,,a,,)", vec![req("x", In, &["a", ""])]),
            (
                "x notin (abc,,def),bar,z in (),w",
                vec![
                    req("bar", Exists, &[]),
                    req("w", Exists, &[]),
                    req("x", NotIn, &["abc", "", "def"]),
                    req("z", In, &[""]),
                ],
            ),
            (
                "x,y in (a)",
                vec![req("x", Exists, &[]), req("y", In, &["a"])],
            ),
            ("x=a", vec![req("x", Equals, &["a"])]),
            ("x>1", vec![req("x", GreaterThan, &["1"])]),
            ("x<7", vec![req("x", LessThan, &["7"])]),
            (
                "x=a,y!=b",
                vec![req("x", Equals, &["a"]), req("y", NotEquals, &["b"])],
            ),
            (
                "x=a,y!=b,z in (h,i,j)",
                vec![
                    req("x", Equals, &["a"]),
                    req("y", NotEquals, &["b"]),
                    req("z", In, &["h", "i", "j"]),
                ],
            ),
            ("x notin ( )", vec![req("x", NotIn, &[""])]),
            ("x notin (, a)", vec![req("x", NotIn, &["", "a"])]),
            ("a ", vec![req("a", Exists, &[])]),
            // `in` and `notin` are values inside a list, and keys and values elsewhere.
            (
                "a in (x,y,notin, z,in)",
                vec![req("a", In, &["in", "notin", "x", "y", "z"])],
            ),
            ("in in (in)", vec![req("in", In, &["in"])]),
            ("notin=in", vec![req("notin", Equals, &["in"])]),
            ("x==y", vec![req("x", DoubleEquals, &["y"])]),
        ];
        for (s, want) in cases {
            let got = LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert_eq!(got.0, want, "{s:?}");
        }
        for s in [
            "x=a||y=b",
            "x,,y",
            ",x,y",
            "x nott in (y)",
            "a in (xyz),",
            "a in (xyz)b notin ()",
            "a in (xyz abc)",
            "a notin(",
            "a (",
            "(",
        ] {
            parse_err(s);
        }
    }

    /// The inputs of issue 11 and upstream's rejected examples, with apimachinery's messages.
    #[test]
    fn malformed_selectors_get_apimachinerys_errors() {
        let regex = |msg: &str, examples: &str, re: &str| {
            format!("{msg} (e.g. {examples}, regex used for validation is '{re}')")
        };
        let name_part = regex(
            LABEL_KEY_ERR,
            "'MyName',  or 'my.name',  or '123-abc'",
            LABEL_KEY_FMT,
        );
        let value_err = regex(
            LABEL_VALUE_ERR,
            "'MyValue',  or 'my_value',  or '12345'",
            LABEL_VALUE_FMT,
        );
        let cases: Vec<(&str, String)> = vec![
            (
                "!!app",
                "unable to parse requirement: found '!', expected: identifier".into(),
            ),
            (
                "!",
                "unable to parse requirement: found '', expected: identifier".into(),
            ),
            (
                ",,,",
                "found ',', expected: !, identifier, or 'end of string'".into(),
            ),
            (
                "(((!!!==,,in",
                "found '(', expected: !, identifier, or 'end of string'".into(),
            ),
            ("x,,y", "found ',', expected: identifier after ','".into()),
            (
                "a in (xyz),",
                "found '', expected: identifier after ','".into(),
            ),
            (
                "app=web,",
                "found '', expected: identifier after ','".into(),
            ),
            (
                "a in (xyz)b notin ()",
                "found 'b', expected: ',' or 'end of string'".into(),
            ),
            ("!x=a", "found '=', expected: ',' or 'end of string'".into()),
            (
                "x==a==b",
                "found '==', expected: ',' or 'end of string'".into(),
            ),
            (
                "x nott in (y)",
                "unable to parse requirement: found 'nott', expected: in, notin, =, ==, !=, gt, lt"
                    .into(),
            ),
            (
                "a (",
                "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt"
                    .into(),
            ),
            (
                "a in (xyz abc)",
                "unable to parse requirement: found 'abc', expected: ',' or ')'".into(),
            ),
            (
                "a notin(",
                "unable to parse requirement: found '', expected: ',', ')' or identifier".into(),
            ),
            (
                "a in b",
                "unable to parse requirement: found 'b' expected: '('".into(),
            ),
            (
                "a in (b,=)",
                "unable to parse requirement: found '=', expected: ',', or identifier".into(),
            ),
            (
                "x<a",
                "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' \
                 operators, the value must be an integer"
                    .into(),
            ),
            (
                "x>",
                "unable to parse requirement: values[0]: Invalid value: \"\": for 'Gt', 'Lt' \
                 operators, the value must be an integer"
                    .into(),
            ),
            (
                "x>-1",
                format!(
                    "unable to parse requirement: values[0][x]: Invalid value: \"-1\": {value_err}"
                ),
            ),
            (
                "x=a||y=b",
                format!(
                    "unable to parse requirement: values[0][x]: Invalid value: \"a||y\": {value_err}"
                ),
            ),
            (
                "x in (-a,b_)",
                format!(
                    "unable to parse requirement: [values[0][x]: Invalid value: \"-a\": \
                     {value_err}, values[1][x]: Invalid value: \"b_\": {value_err}]"
                ),
            ),
            (
                "x=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "unable to parse requirement: values[0][x]: Invalid value: \
                 \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\": must be no \
                 more than 63 bytes"
                    .into(),
            ),
            (
                "component+kube-apiserver",
                format!(
                    "unable to parse requirement: <nil>: Invalid value: \
                     \"component+kube-apiserver\": name part {name_part}"
                ),
            ),
            (
                "a/b/c",
                format!(
                    "unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a valid label \
                     key {name_part} with an optional DNS subdomain prefix and '/' (e.g. \
                     'example.com/MyName')"
                ),
            ),
            (
                "/a",
                "unable to parse requirement: <nil>: Invalid value: \"/a\": prefix part must be \
                 non-empty"
                    .into(),
            ),
            (
                "a/",
                format!(
                    "unable to parse requirement: <nil>: Invalid value: \"a/\": name part must be \
                     non-empty; name part {name_part}"
                ),
            ),
            (
                "Example.com/a",
                format!(
                    "unable to parse requirement: <nil>: Invalid value: \"Example.com/a\": prefix \
                     part {}",
                    regex(
                        DNS1123_SUBDOMAIN_ERR,
                        "'example.com'",
                        DNS1123_SUBDOMAIN_FMT
                    )
                ),
            ),
            (
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "unable to parse requirement: <nil>: Invalid value: \
                 \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\": name part \
                 must be no more than 63 bytes"
                    .into(),
            ),
            (
                "a\"b",
                format!(
                    "unable to parse requirement: <nil>: Invalid value: \"a\\\"b\": name part \
                     {name_part}"
                ),
            ),
            // A NUL byte is not the end of the selector here (see the module docs).
            (
                "\0!!",
                format!(
                    "unable to parse requirement: <nil>: Invalid value: \"\\x00\": name part \
                     {name_part}"
                ),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(parse_err(s), want, "{s:?}");
        }
        // Bytes that are not UTF-8 (a percent-encoded query value) fail key validation.
        assert_eq!(
            String::from(LabelSelector::parse_bytes(b"app=\xffx").unwrap_err()),
            format!(
                "unable to parse requirement: values[0][app]: Invalid value: \"\\xffx\": {value_err}"
            )
        );
        assert_eq!(
            String::from(LabelSelector::parse_bytes(b"\xc3\xa9").unwrap_err()),
            format!(
                "unable to parse requirement: <nil>: Invalid value: \"é\": name part {name_part}"
            )
        );
    }

    /// apimachinery's TestSelectorMatches and TestRequirementSelectorMatching.
    #[test]
    fn label_selector_matches() {
        let yes = |s: &str, l: &[(&str, &str)]| {
            assert!(LabelSelector::parse(s).unwrap().matches(&labels(l)), "{s}");
        };
        let no = |s: &str, l: &[(&str, &str)]| {
            assert!(!LabelSelector::parse(s).unwrap().matches(&labels(l)), "{s}");
        };
        yes("", &[("x", "y")]);
        yes("x=y", &[("x", "y")]);
        yes("x=y,z=w", &[("x", "y"), ("z", "w")]);
        yes("x!=y,z!=w", &[("x", "z"), ("z", "a")]);
        yes("notin=in", &[("notin", "in")]);
        yes("x", &[("x", "z")]);
        yes("!x", &[("y", "z")]);
        yes("x>1", &[("x", "2")]);
        yes("x<1", &[("x", "0")]);
        no("x=z", &[]);
        no("x=y", &[("x", "z")]);
        no("x=y,z=w", &[("x", "w"), ("z", "w")]);
        no("x!=y,z!=w", &[("x", "z"), ("z", "w")]);
        no("x", &[("y", "z")]);
        no("!x", &[("x", "z")]);
        no("x>1", &[("x", "0")]);
        no("x<1", &[("x", "2")]);
        no("z>1", &[("z", "v2")]);
        no("x>1", &[]);
        yes("x in (foo),y notin (alpha)", &[("x", "foo"), ("y", "baz")]);
        no("x in (foo),y in (alpha)", &[("x", "foo"), ("y", "baz")]);
        yes("x notin (),y", &[("y", "")]);
        yes("!x,y", &[("y", "")]);
        no("x notin (),!y", &[("y", "")]);
        no("x in ()", &[("y", "baz")]);
        yes("x in ()", &[("x", "")]);
        yes("x=", &[("x", "")]);
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(
            LabelSelector::parse("tier in (front, back)")
                .unwrap()
                .matches(&l)
        );
        assert!(
            !LabelSelector::parse("tier notin (front)")
                .unwrap()
                .matches(&l)
        );
        assert!(
            LabelSelector::parse("missing notin (x)")
                .unwrap()
                .matches(&l)
        );
    }

    #[test]
    fn selector_objects_print_sorted_by_key() {
        let obj = serde_json::json!({
            "matchLabels": {"tier": "front", "app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]},
                                 {"key": "gone", "operator": "DoesNotExist"}],
        });
        let sel = LabelSelector::from_object(&obj);
        assert_eq!(
            sel.to_string_form(),
            "app=web,env in (dev,prod),!gone,tier=front"
        );
        assert!(sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("env", "dev")
        ])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert_eq!(
            LabelSelector::from_object(&serde_json::json!({})).to_string(),
            ""
        );
    }

    // ---- field selectors ----

    fn field_terms(s: &str) -> Result<String, String> {
        // `fields.Selector.String()`: `field=escaped` or `field!=escaped`, in sorted order.
        Ok(parse_field_terms(s)?
            .iter()
            .map(|t| {
                let op = if t.equal { "=" } else { "!=" };
                format!("{}{op}{}", t.field, escape_field_value(&t.value))
            })
            .collect::<Vec<_>>()
            .join(","))
    }

    /// apimachinery's fields TestSplitTerms, TestSplitTerm and TestEscapeValue.
    #[test]
    fn field_selector_terms_and_escapes() {
        let split: [(&str, &[&str]); 12] = [
            ("a", &["a"]),
            ("a=avalue", &["a=avalue"]),
            ("a=avalue,b=bvalue", &["a=avalue", "b=bvalue"]),
            (
                "a=avalue,b==bvalue,c!=cvalue",
                &["a=avalue", "b==bvalue", "c!=cvalue"],
            ),
            ("", &[]),
            ("a=a,", &["a=a", ""]),
            (",a=a", &["", "a=a"]),
            (r"k=\,,k2=v2", &[r"k=\,", "k2=v2"]),
            (r"k=\\,k2=v2", &[r"k=\\", "k2=v2"]),
            (r"k=\\\,,k2=v2", &[r"k=\\\,", "k2=v2"]),
            (r"k=\a\b\", &[r"k=\a\b\"]),
            ("함=수,목=록", &["함=수", "목=록"]),
        ];
        for (s, want) in split {
            assert_eq!(split_terms(s), want, "{s:?}");
        }
        assert_eq!(split_terms(r"k=\"), [r"k=\"]);
        for (term, want) in [
            ("a=value", Some(("a", "=", "value"))),
            ("b==value", Some(("b", "==", "value"))),
            ("c!=value", Some(("c", "!=", "value"))),
            ("", None),
            ("a", None),
            (r"k=\,", Some(("k", "=", r"\,"))),
            (r"k=\=", Some(("k", "=", r"\="))),
            (r"k=\\\a\b\=\,\", Some(("k", "=", r"\\\a\b\=\,\"))),
            ("함=수", Some(("함", "=", "수"))),
        ] {
            assert_eq!(split_term(term), want, "{term:?}");
        }
        for (raw, escaped) in [
            ("", ""),
            ("a", "a"),
            ("=", r"\="),
            (",", r"\,"),
            (r"\", r"\\"),
            (r"\=\,\", r"\\\=\\\,\\"),
        ] {
            assert_eq!(escape_field_value(raw), escaped);
            assert_eq!(unescape_value(escaped).as_deref(), Ok(raw));
        }
        for (bad, want) in [
            (r"\", r"invalid field selector: invalid escape sequence: \"),
            (
                r"\\\",
                r"invalid field selector: invalid escape sequence: \",
            ),
            (
                r"\a",
                r"invalid field selector: invalid escape sequence: \a",
            ),
            (
                "a=b",
                "invalid field selector: unescaped character in value: 61",
            ),
            (
                "a,b",
                "invalid field selector: unescaped character in value: 44",
            ),
        ] {
            assert_eq!(unescape_value(bad), Err(want.to_string()), "{bad:?}");
        }
    }

    /// apimachinery's fields TestSelectorParse and TestDeterministicParse.
    #[test]
    fn field_selector_parse_table() {
        for s in ["x=a,y=b,z=c", "", "x!=a,y=b", r"x=a||y\=b", r"x=a\=\=b"] {
            assert_eq!(field_terms(s).as_deref(), Ok(s), "{s:?}");
        }
        for (s, want) in [
            (
                "x=a||y=b",
                "invalid field selector: unescaped character in value: 61",
            ),
            (
                "x==a==b",
                "invalid field selector: unescaped character in value: 61",
            ),
            ("x=a,b", "invalid selector: 'x=a,b'; can't understand 'b'"),
            (
                "x in (a)",
                "invalid selector: 'x in (a)'; can't understand 'x in (a)'",
            ),
            (
                "x in (a,b,c)",
                "invalid selector: 'x in (a,b,c)'; can't understand 'b'",
            ),
            ("x", "invalid selector: 'x'; can't understand 'x'"),
            (
                "!!app",
                "invalid selector: '!!app'; can't understand '!!app'",
            ),
        ] {
            assert_eq!(field_terms(s), Err(want.to_string()), "{s:?}");
        }
        assert_eq!(field_terms("x=a,a=x"), field_terms("a=x,x=a"));
        // Empty terms are skipped, as upstream does.
        assert_eq!(field_terms(",,,").as_deref(), Ok(""));
        assert_eq!(field_terms("x==a,").as_deref(), Ok("x=a"));
    }

    #[test]
    fn field_selector_supports_common_fields_on_every_kind() {
        let obj = serde_json::json!({"metadata": {"name": "a", "namespace": "ns"}});
        assert!(
            FieldSelector::parse("metadata.name=a", "ConfigMap")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace!=ns", "ConfigMap")
                .unwrap()
                .matches(&obj)
        );
        assert_eq!(
            String::from(FieldSelector::parse("spec.foo=x", "Pod").unwrap_err()),
            "field label not supported: spec.foo"
        );
        // Nothing is trimmed: a space is part of the field (or value).
        assert_eq!(
            String::from(FieldSelector::parse("metadata.name =a", "Pod").unwrap_err()),
            "field label not supported: metadata.name "
        );
        // A parse error comes before a field label error.
        assert_eq!(
            String::from(FieldSelector::parse("spec.foo=x,bad", "Pod").unwrap_err()),
            "invalid selector: 'spec.foo=x,bad'; can't understand 'bad'"
        );
        let named = serde_json::json!({"metadata": {"name": "a,b"}});
        assert!(
            FieldSelector::parse(r"metadata.name=a\,b", "ConfigMap")
                .unwrap()
                .matches(&named)
        );
    }

    #[test]
    fn field_selector_on_nested_fields() {
        let ev = serde_json::json!({"metadata": {"name": "e"},
            "involvedObject": {"kind": "Pod", "name": "p"}, "type": "Normal"});
        assert!(
            FieldSelector::parse(
                "involvedObject.kind=Pod,involvedObject.name=p,type=Normal",
                "Event"
            )
            .unwrap()
            .matches(&ev)
        );
        assert!(
            !FieldSelector::parse("involvedObject.name=q", "Event")
                .unwrap()
                .matches(&ev)
        );
        let pod = serde_json::json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(
            FieldSelector::parse("spec.nodeName=", "Pod")
                .unwrap()
                .matches(&pod)
        );
        let node = serde_json::json!({"metadata": {"name": "n"}});
        assert!(
            FieldSelector::parse("spec.unschedulable=false", "Node")
                .unwrap()
                .matches(&node)
        );
    }

    #[test]
    fn field_selector_labels_are_per_kind() {
        for (selector, kind) in [
            ("status.phase=Running", "ConfigMap"),
            ("spec.nodeName=n", "Event"),
            ("involvedObject.name=x", "Pod"),
            ("type=Opaque", "ConfigMap"),
        ] {
            let field = selector.split('=').next().unwrap();
            assert_eq!(
                String::from(FieldSelector::parse(selector, kind).unwrap_err()),
                format!("field label not supported: {field}"),
                "{kind}"
            );
        }
        assert!(FieldSelector::parse("type=Opaque", "Secret").is_ok());
        assert!(FieldSelector::parse("status.phase=Active", "Namespace").is_ok());
        let ev = serde_json::json!({"source": {"component": "kubelet"}});
        assert!(
            FieldSelector::parse("source=kubelet", "Event")
                .unwrap()
                .matches(&ev)
        );
    }

    // ---- the query string ----

    #[test]
    fn query_strings_decode_like_forms() {
        let q = parse_query("labelSelector=app%3Dweb%2Ctier+in+(a)&limit=5&limit=7&&flag&x=%zz%4")
            .unwrap();
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        // url.Values' first value, as apimachinery's conversions take it.
        assert_eq!(q["limit"], "5");
        assert_eq!(q["flag"], "");
        assert_eq!(q["x"], "%zz%4");
        // Other parameters that are not UTF-8 are decoded lossily, as before.
        assert_eq!(parse_query("name=%FF").unwrap()["name"], "\u{fffd}");
    }

    /// apimachinery's `Convert_Slice_string_To_bool` (k8s.io/apimachinery/pkg/runtime/
    /// conversion.go): only `0` and a case-insensitive `false` are false; no value is an error.
    #[test]
    fn booleans_parse_as_apimachinery() {
        for (value, want) in [
            ("true", true),
            ("True", true),
            ("TRUE", true),
            ("1", true),
            ("t", true),
            ("T", true),
            ("", true),
            ("yes", true),
            ("f", true),
            ("2", true),
            ("false", false),
            ("False", false),
            ("FALSE", false),
            ("fAlSe", false),
            ("0", false),
        ] {
            assert_eq!(parse_bool(value), want, "{value:?}");
            let query = parse_query(&format!("watch={value}")).unwrap();
            assert_eq!(query_flag(&query, "watch"), want, "{value:?}");
            assert_eq!(
                raw_query_flag(Some(&format!("limit=1&watch={value}")), "watch"),
                want,
                "{value:?}"
            );
        }
        assert!(!query_flag(&HashMap::new(), "watch"));
        assert!(raw_query_flag(Some("watch"), "watch"));
        assert!(!raw_query_flag(Some("watchx=1"), "watch"));
        assert!(!raw_query_flag(None, "watch"));
        assert!(raw_query_flag(Some("watch=1&watch=0"), "watch"));
        assert!(raw_query_flag(Some("%77atch=True"), "watch"));
    }

    #[test]
    fn selectors_that_are_not_utf8_are_bad_requests() {
        let err = parse_query("limit=1&labelSelector=app%3D%FF").unwrap_err();
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        assert!(
            err.message.starts_with(
                "unable to parse requirement: values[0][app]: Invalid value: \"\\xff\""
            ),
            "{}",
            err.message
        );
        let err = parse_query("fieldSelector=metadata.name%3D%C3").unwrap_err();
        assert_eq!((err.code, err.reason), (400, "BadRequest"));
        assert_eq!(
            err.message,
            "invalid selector: 'metadata.name=\u{fffd}'; the selector is not UTF-8"
        );
    }

    // ---- properties ----

    /// A qualified name: an optional DNS subdomain prefix and a label name.
    fn key() -> impl Strategy<Value = String> {
        let name = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?";
        let prefix = "[a-z0-9]([-a-z0-9]{0,5}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,5}[a-z0-9])?){0,2}";
        (proptest::option::of(prefix), name).prop_map(|(prefix, name)| match prefix {
            Some(p) => format!("{p}/{name}"),
            None => name,
        })
    }

    fn value() -> impl Strategy<Value = String> {
        "([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?"
    }

    /// Optional whitespace (apimachinery's: space, tab, CR, LF).
    fn ws() -> impl Strategy<Value = String> {
        "[ \t\r\n]{0,2}"
    }

    /// One requirement as text, with whitespace wherever the grammar allows it.
    fn requirement() -> impl Strategy<Value = String> {
        let exact = (
            key(),
            ws(),
            prop::sample::select(vec!["=", "==", "!="]),
            ws(),
            value(),
        )
            .prop_map(|(k, w1, op, w2, v)| format!("{k}{w1}{op}{w2}{v}"));
        let set = (
            key(),
            prop::sample::select(vec!["in", "notin"]),
            ws(),
            prop::collection::vec((value(), ws()), 0..4),
        )
            .prop_map(|(k, op, w, vs)| {
                let list: Vec<String> = vs.into_iter().map(|(v, w)| format!("{v}{w}")).collect();
                format!("{k} {op} {w}({})", list.join(","))
            });
        let exists = (any::<bool>(), ws(), key())
            .prop_map(|(not, w, k)| if not { format!("!{w}{k}") } else { k });
        let numeric = (key(), prop::sample::select(vec![">", "<"]), 0u32..100_000)
            .prop_map(|(k, op, n)| format!("{k}{op}{n}"));
        prop_oneof![exact, set, exists, numeric]
    }

    /// Text made of the selector grammar's pieces, to reach deep into the parser.
    fn selector_soup() -> impl Strategy<Value = String> {
        let pieces = vec![
            "x", "a/b", "in", "notin", "(", ")", ",", "!", "=", "==", "!=", ">", "<", " ", "\t",
            "1", "-", "é", "\0", "/", ".",
        ];
        prop::collection::vec(prop::sample::select(pieces), 0..24).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Generated valid selectors parse, print back to an equal selector, and the printed
        /// form is a fixed point.
        #[test]
        fn valid_selectors_parse_and_round_trip(
            reqs in prop::collection::vec((ws(), requirement(), ws()), 0..5),
        ) {
            let text: Vec<String> = reqs.iter().map(|(a, r, b)| format!("{a}{r}{b}")).collect();
            let text = text.join(",");
            let sel = LabelSelector::parse(&text)
                .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
            prop_assert_eq!(sel.requirements().len(), reqs.len());
            let printed = sel.to_string();
            let again = LabelSelector::parse(&printed)
                .map_err(|e| TestCaseError::fail(format!("{printed:?}: {e}")))?;
            prop_assert_eq!(&again, &sel);
            prop_assert_eq!(again.to_string(), printed);
        }

        /// Arbitrary input never panics; whatever parses round-trips.
        #[test]
        fn arbitrary_input_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            text in any::<String>(),
            soup in selector_soup(),
        ) {
            let _ = LabelSelector::parse_bytes(&bytes);
            for s in [&text, &soup] {
                if let Ok(sel) = LabelSelector::parse(s) {
                    prop_assert_eq!(LabelSelector::parse(&sel.to_string()), Ok(sel.clone()));
                    let _ = sel.matches(&labels(&[("x", "1"), ("a/b", "")]));
                }
                let _ = FieldSelector::parse(s, "Pod");
                let _ = parse_query(s);
            }
            let _ = parse_query(&String::from_utf8_lossy(&bytes));
        }
    }
}
