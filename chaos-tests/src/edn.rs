//! A small reader for the subset of EDN that Jepsen histories and logs print.
//!
//! Supported: `nil`, `true`, `false`, integers, strings (with `\"`, `\\`, `\n`, `\t`, `\r`
//! escapes), keywords (`:timed-out`, `:jepsen.util/x`), vectors `[..]`, lists `(..)` and maps
//! `{..}`. Commas are whitespace, as in EDN. Anything else (floats, symbols, tagged literals, sets)
//! is a syntax error with its byte offset: histories this suite reads never need them.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::Value;

/// An EDN value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edn {
    /// `nil`.
    Nil,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
    /// A keyword, without its leading colon.
    Keyword(String),
    /// A vector or a list.
    Vector(Vec<Edn>),
    /// A map, in the order written.
    Map(Vec<(Edn, Edn)>),
}

/// A syntax error at a byte offset of the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("EDN syntax error at byte {offset}: {message}")]
pub struct EdnError {
    /// Byte offset into the parsed text.
    pub offset: usize,
    /// What was expected or found.
    pub message: String,
}

impl Edn {
    /// Looks a keyword up in a map.
    pub fn get(&self, keyword: &str) -> Option<&Edn> {
        match self {
            Edn::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Edn::Keyword(name) if name == keyword))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts to a history [`Value`]. Keywords become strings (without the colon) and map keys
    /// must be strings or keywords; `None` otherwise.
    pub fn to_value(&self) -> Option<Value> {
        Some(match self {
            Edn::Nil => Value::Null,
            Edn::Bool(b) => Value::Bool(*b),
            Edn::Int(n) => Value::Int(*n),
            Edn::Str(s) | Edn::Keyword(s) => Value::Str(s.clone()),
            Edn::Vector(items) => {
                Value::List(items.iter().map(Edn::to_value).collect::<Option<_>>()?)
            }
            Edn::Map(entries) => {
                let mut map = BTreeMap::new();
                for (k, v) in entries {
                    let key = match k {
                        Edn::Str(s) | Edn::Keyword(s) => s.clone(),
                        _ => return None,
                    };
                    map.insert(key, v.to_value()?);
                }
                Value::Map(map)
            }
        })
    }
}

impl fmt::Display for Edn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Edn::Nil => f.write_str("nil"),
            Edn::Bool(b) => write!(f, "{b}"),
            Edn::Int(n) => write!(f, "{n}"),
            Edn::Str(s) => write!(f, "{s:?}"),
            Edn::Keyword(k) => write!(f, ":{k}"),
            Edn::Vector(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Edn::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// Parses exactly one EDN value (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Edn, EdnError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    let value = p.value()?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(p.error("trailing characters after the value"));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> EdnError {
        EdnError {
            offset: self.pos,
            message: message.into(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if b.is_ascii_whitespace() || b == b',' {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    fn value(&mut self) -> Result<Edn, EdnError> {
        self.skip_ws();
        let Some(&b) = self.bytes.get(self.pos) else {
            return Err(self.error("expected a value, found the end"));
        };
        match b {
            b'"' => self.string(),
            b':' => {
                self.pos += 1;
                let name = self.token();
                if name.is_empty() {
                    return Err(self.error("empty keyword"));
                }
                Ok(Edn::Keyword(name.to_owned()))
            }
            b'[' => Ok(Edn::Vector(self.seq(b']')?)),
            b'(' => Ok(Edn::Vector(self.seq(b')')?)),
            b'{' => {
                let items = self.seq(b'}')?;
                if items.len() % 2 != 0 {
                    return Err(self.error("map with an odd number of forms"));
                }
                let mut entries = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                Ok(Edn::Map(entries))
            }
            _ => {
                let start = self.pos;
                let token = self.token();
                match token {
                    "nil" => Ok(Edn::Nil),
                    "true" => Ok(Edn::Bool(true)),
                    "false" => Ok(Edn::Bool(false)),
                    "" => Err(self.error(format!("unexpected character {:?}", b as char))),
                    t => t.parse::<i64>().map(Edn::Int).map_err(|_| EdnError {
                        offset: start,
                        message: format!("unsupported token {t:?}"),
                    }),
                }
            }
        }
    }

    /// A run of symbol characters.
    fn token(&mut self) -> &str {
        let start = self.pos;
        while let Some(&b) = self.bytes.get(self.pos) {
            if b.is_ascii_whitespace()
                || matches!(b, b',' | b'[' | b']' | b'(' | b')' | b'{' | b'}' | b'"')
            {
                break;
            }
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn seq(&mut self, close: u8) -> Result<Vec<Edn>, EdnError> {
        self.pos += 1; // the opening bracket
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            match self.bytes.get(self.pos) {
                None => return Err(self.error(format!("missing {:?}", close as char))),
                Some(&b) if b == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(b']' | b')' | b'}') => return Err(self.error("mismatched closing bracket")),
                Some(_) => items.push(self.value()?),
            }
        }
    }

    fn string(&mut self) -> Result<Edn, EdnError> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        let mut run_start = self.pos;
        loop {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated string"));
            };
            match b {
                b'"' => {
                    out.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    return Ok(Edn::Str(out));
                }
                b'\\' => {
                    out.push_str(&self.text[run_start..self.pos]);
                    let escaped = match self.bytes.get(self.pos + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        _ => return Err(self.error("unsupported escape in string")),
                    };
                    out.push(escaped);
                    self.pos += 2;
                    run_start = self.pos;
                }
                _ => self.pos += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_jepsen_values() {
        assert_eq!(parse("nil").unwrap(), Edn::Nil);
        assert_eq!(parse(" -42 ").unwrap(), Edn::Int(-42));
        assert_eq!(
            parse("[3 0]").unwrap(),
            Edn::Vector(vec![Edn::Int(3), Edn::Int(0)])
        );
        assert_eq!(
            parse(":timed-out").unwrap(),
            Edn::Keyword("timed-out".into())
        );
        let m = parse(r#"{:process 0, :type :ok, :f :get, :key "5", :value "x \"q\" y"}"#).unwrap();
        assert_eq!(m.get("process"), Some(&Edn::Int(0)));
        assert_eq!(m.get("f"), Some(&Edn::Keyword("get".into())));
        assert_eq!(m.get("value"), Some(&Edn::Str("x \"q\" y".into())));
        assert_eq!(m.get("missing"), None);
    }

    #[test]
    fn reports_errors() {
        assert!(parse("").is_err());
        assert!(parse("[1 2").is_err());
        assert!(parse("\"abc").is_err());
        assert!(parse("1.5").is_err());
        assert!(parse("{:a}").is_err());
        assert!(parse("[1 2) ").is_err());
        assert!(parse("1 2").is_err());
        assert_eq!(parse("1 2").unwrap_err().offset, 2);
    }

    #[test]
    fn converts_to_values() {
        let v = parse(r#"{"n1" ["n2" "n3"], :k nil}"#)
            .unwrap()
            .to_value()
            .unwrap();
        assert_eq!(v.to_string(), r#"{"k":null,"n1":["n2","n3"]}"#);
        assert_eq!(parse("{[1] 2}").unwrap().to_value(), None);
    }
}
