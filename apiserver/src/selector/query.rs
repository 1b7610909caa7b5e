//! The query string: form decoding, apimachinery's booleans, and the handlers' extractor (a
//! selector that is not UTF-8 is a 400).

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::LabelSelector;
use crate::status::ApiError;

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

/// The first value of parameter `name` in a raw query string, decoded (None when absent or
/// not UTF-8).
pub fn raw_query_value(query: Option<&str>, name: &str) -> Option<String> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(n, _)| form_decode(n) == name.as_bytes())
        .and_then(|(_, v)| String::from_utf8(form_decode(v)).ok())
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
        assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
        assert!(
            err.message.starts_with(
                "unable to parse requirement: values[0][app]: Invalid value: \"\\xff\""
            ),
            "{}",
            err.message
        );
        let err = parse_query("fieldSelector=metadata.name%3D%C3").unwrap_err();
        assert_eq!((err.code, err.reason.as_str()), (400, "BadRequest"));
        assert_eq!(
            err.message,
            "invalid selector: 'metadata.name=\u{fffd}'; the selector is not UTF-8"
        );
    }
}
