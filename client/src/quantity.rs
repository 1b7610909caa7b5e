//! Kubernetes resource quantities (`100m`, `128Mi`, `1G`, `1e3`) as apimachinery reads and
//! writes them, kept in milli-units: one parser for every client-side component (the
//! controllers' quota counting, the node agent's cgroup limits).

/// Binary suffixes, largest first, with their power of 1024.
const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ei", 6),
    ("Pi", 5),
    ("Ti", 4),
    ("Gi", 3),
    ("Mi", 2),
    ("Ki", 1),
];
/// Decimal suffixes, largest first, with their power of 1000.
const DECIMAL_SUFFIXES: [(&str, u32); 6] =
    [("E", 6), ("P", 5), ("T", 4), ("G", 3), ("M", 2), ("k", 1)];

/// A quantity in thousandths of its unit (cores, bytes, objects), rounded up as
/// apimachinery rounds a value finer than a milli-unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Milli(pub i128);

/// The milli-value of `n` whole units.
pub const fn units(n: i128) -> Milli {
    Milli(n * 1000)
}

/// Whether a quantity was written with a binary suffix (`Mi`): sums keep that form.
pub fn is_binary(text: &str) -> bool {
    BINARY_SUFFIXES.iter().any(|(s, _)| text.ends_with(s))
}

/// Parses `1`, `0.5`, `100m`, `128Mi`, `1G`, `1e3`; `None` for anything else.
pub fn parse(text: &str) -> Option<Milli> {
    let text = text.trim();
    let (number, scale_num, scale_den): (&str, i128, i128) =
        if let Some((s, p)) = BINARY_SUFFIXES.iter().find(|(s, _)| text.ends_with(s)) {
            (&text[..text.len() - s.len()], 1024i128.pow(*p), 1)
        } else if let Some((s, p)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| text.ends_with(s)) {
            (&text[..text.len() - s.len()], 1000i128.pow(*p), 1)
        } else if let Some(n) = text.strip_suffix('m') {
            (n, 1, 1000)
        } else if let Some(n) = text.strip_suffix('u') {
            (n, 1, 1_000_000)
        } else if let Some(n) = text.strip_suffix('n') {
            (n, 1, 1_000_000_000)
        } else if let Some((n, e)) = text.split_once(['e', 'E']) {
            let e: u32 = e.parse().ok().filter(|e| *e <= 18)?;
            (n, 10i128.pow(e), 1)
        } else {
            (text, 1, 1)
        };
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        || fraction.len() > 18
        || whole.len() > 20
    {
        return None;
    }
    let digits: i128 = format!("{whole}{fraction}").parse().ok()?;
    let fraction_den = 10i128.pow(u32::try_from(fraction.len()).ok()?);
    // value = digits / fraction_den * scale_num / scale_den, in milli-units, rounded up.
    let numerator = digits.checked_mul(scale_num)?.checked_mul(1000)?;
    let denominator = fraction_den.checked_mul(scale_den)?;
    let milli = numerator.div_euclid(denominator) + i128::from(numerator % denominator != 0);
    Some(Milli(if negative { -milli } else { milli }))
}

/// The canonical form of `value`: milli-units when fractional, else the largest suffix that
/// divides it (binary ones when `binary`).
pub fn format(value: Milli, binary: bool) -> String {
    let Milli(milli) = value;
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let whole = milli / 1000;
    if whole == 0 {
        return "0".into();
    }
    let (suffixes, base): (&[(&str, u32)], i128) = if binary {
        (&BINARY_SUFFIXES, 1024)
    } else {
        (&DECIMAL_SUFFIXES, 1000)
    };
    for (suffix, power) in suffixes {
        let unit = base.pow(*power);
        if whole % unit == 0 {
            return format!("{}{suffix}", whole / unit);
        }
    }
    whole.to_string()
}

/// Whole units rounded up (bytes of a memory quantity), `None` if negative or unparsable.
pub fn whole_units(text: &str) -> Option<u64> {
    let Milli(milli) = parse(text)?;
    u64::try_from((milli + 999).div_euclid(1000)).ok()
}

/// Milli-units (millicores of a cpu quantity), `None` if negative or unparsable.
pub fn milli_units(text: &str) -> Option<u64> {
    u64::try_from(parse(text)?.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_as_apimachinery() {
        assert_eq!(parse("100m"), Some(Milli(100)));
        assert_eq!(parse("1.5"), Some(Milli(1500)));
        assert_eq!(parse("128Mi"), Some(Milli(128 * 1024 * 1024 * 1000)));
        assert_eq!(parse("1e3"), Some(Milli(1_000_000)));
        assert_eq!(parse("1x"), None);
        assert_eq!(format(Milli(1500), false), "1500m");
        assert_eq!(format(units(2 * 1024 * 1024), true), "2Mi");
        assert_eq!(whole_units("16Mi"), Some(16 * 1024 * 1024));
        assert_eq!(whole_units("1m"), Some(1));
        assert_eq!(milli_units("250m"), Some(250));
        assert_eq!(milli_units("-1"), None);
    }
}
