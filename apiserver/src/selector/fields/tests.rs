use super::*;
use crate::selector::labels_of_kind;

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
        FieldSelector::parse("metadata.name=a", labels_of_kind("ConfigMap"))
            .unwrap()
            .matches(&obj)
    );
    assert!(
        !FieldSelector::parse("metadata.namespace!=ns", labels_of_kind("ConfigMap"))
            .unwrap()
            .matches(&obj)
    );
    assert_eq!(
        String::from(FieldSelector::parse("spec.foo=x", labels_of_kind("Pod")).unwrap_err()),
        "field label not supported: spec.foo"
    );
    // Nothing is trimmed: a space is part of the field (or value).
    assert_eq!(
        String::from(FieldSelector::parse("metadata.name =a", labels_of_kind("Pod")).unwrap_err()),
        "field label not supported: metadata.name "
    );
    // A parse error comes before a field label error.
    assert_eq!(
        String::from(FieldSelector::parse("spec.foo=x,bad", labels_of_kind("Pod")).unwrap_err()),
        "invalid selector: 'spec.foo=x,bad'; can't understand 'bad'"
    );
    let named = serde_json::json!({"metadata": {"name": "a,b"}});
    assert!(
        FieldSelector::parse(r"metadata.name=a\,b", labels_of_kind("ConfigMap"))
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
            labels_of_kind("Event")
        )
        .unwrap()
        .matches(&ev)
    );
    assert!(
        !FieldSelector::parse("involvedObject.name=q", labels_of_kind("Event"))
            .unwrap()
            .matches(&ev)
    );
    let pod = serde_json::json!({"metadata": {"name": "p"}, "spec": {}});
    assert!(
        FieldSelector::parse("spec.nodeName=", labels_of_kind("Pod"))
            .unwrap()
            .matches(&pod)
    );
    let node = serde_json::json!({"metadata": {"name": "n"}});
    assert!(
        FieldSelector::parse("spec.unschedulable=false", labels_of_kind("Node"))
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
            String::from(FieldSelector::parse(selector, labels_of_kind(kind)).unwrap_err()),
            format!("field label not supported: {field}"),
            "{kind}"
        );
    }
    assert!(FieldSelector::parse("type=Opaque", labels_of_kind("Secret")).is_ok());
    assert!(FieldSelector::parse("status.phase=Active", labels_of_kind("Namespace")).is_ok());
    let ev = serde_json::json!({"source": {"component": "kubelet"}});
    assert!(
        FieldSelector::parse("source=kubelet", labels_of_kind("Event"))
            .unwrap()
            .matches(&ev)
    );
}
