//! Label selectors (apimachinery's `labels.Parse`: the grammar in the module above, its lexer,
//! parser and error messages) and the label key/value validation they share.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use super::SelectorError;

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

#[cfg(test)]
mod tests;
