//! Field selectors (apimachinery's `fields.ParseSelector`, escapes included), checked against
//! the field labels of the kind's strategy.

use serde_json::Value;

use super::SelectorError;

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
    /// Parses a field selector as kube-apiserver does (`fields.ParseSelector`, then the kind's
    /// field label conversion): a malformed selector is apimachinery's parse error, a field
    /// neither common nor among the kind's `field_labels` (its strategy's) is `field label not
    /// supported: <field>`. Either is a 400 from the handlers.
    pub fn parse(s: &str, field_labels: &[&str]) -> Result<FieldSelector, SelectorError> {
        let terms = parse_field_terms(s).map_err(SelectorError)?;
        for term in &terms {
            let field = term.field.as_str();
            if !COMMON_FIELDS.contains(&field) && !field_labels.contains(&field) {
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

/// The value a field selector requires `field` to equal (`field=value` or `field==value`), as
/// apimachinery's `Selector.RequiresExactMatch`; None when it does not, or does not parse.
pub fn required_field_value(selector: &str, field: &str) -> Option<String> {
    parse_field_terms(selector)
        .ok()?
        .into_iter()
        .find(|t| t.equal && t.field == field)
        .map(|t| t.value)
}

#[cfg(test)]
mod tests;
