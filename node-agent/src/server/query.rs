//! Query strings as Go's `url.ParseQuery` reads them (repeated keys kept in order, `+` is a
//! space, `%XX` escapes), and `strconv.ParseBool`'s words.

/// `(key, value)` pairs in order; bad escapes are kept literally.
pub(crate) fn parse(raw: &str) -> Vec<(String, String)> {
    raw.split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The last value of `key`.
pub(crate) fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every value of `key`, in order.
pub(crate) fn all(pairs: &[(String, String)], key: &str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .collect()
}

/// `strconv.ParseBool`; an absent key is false, an empty value too.
pub(crate) fn flag(pairs: &[(String, String)], key: &str) -> Result<bool, String> {
    match last(pairs, key) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(format!("invalid value for {key:?}: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_escapes() {
        let q = parse("command=sh&command=-c&command=read+x%3B%20echo%20got-%24x&tty=0&bad=%zz%4");
        assert_eq!(all(&q, "command"), vec!["sh", "-c", "read x; echo got-$x"]);
        assert_eq!(last(&q, "bad"), Some("%zz%4"));
        assert_eq!(flag(&q, "tty"), Ok(false));
        assert_eq!(flag(&q, "stdin"), Ok(false));
        assert!(flag(&parse("x=yes"), "x").is_err());
        assert_eq!(flag(&parse("x=true"), "x"), Ok(true));
        assert_eq!(flag(&parse("x=1"), "x"), Ok(true));
    }
}
