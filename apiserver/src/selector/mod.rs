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
//!
//! - `labels`: label selectors (and label key/value validation).
//! - `fields`: field selectors (the labels each kind supports come from its strategy).
//! - `query`: the query string and the handlers' extractor.

mod fields;
mod labels;
mod query;

pub use fields::*;
pub use labels::*;
pub use query::*;

/// A selector that does not parse; the message is apimachinery's, word for word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(String);

impl From<SelectorError> for String {
    fn from(err: SelectorError) -> String {
        err.0
    }
}

/// The field labels of a served kind (its strategy's), for the tests.
#[cfg(test)]
fn labels_of_kind(kind: &str) -> &'static [&'static str] {
    crate::registry::resources::registry()
        .iter()
        .find(|r| r.kind == kind)
        .map(|r| r.strategy.field_labels())
        .expect("a served kind")
}

/// A label map of `pairs`, for the tests.
#[cfg(test)]
fn label_map(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
                    let _ = sel.matches(&label_map(&[("x", "1"), ("a/b", "")]));
                }
                let _ = FieldSelector::parse(s, labels_of_kind("Pod"));
                let _ = parse_query(s);
            }
            let _ = parse_query(&String::from_utf8_lossy(&bytes));
        }
    }
}
