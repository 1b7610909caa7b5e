use super::*;
use crate::selector::label_map;

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
            "unable to parse requirement: found '(', expected: in, notin, =, ==, !=, gt, lt".into(),
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
        format!("unable to parse requirement: <nil>: Invalid value: \"é\": name part {name_part}")
    );
}

/// apimachinery's TestSelectorMatches and TestRequirementSelectorMatching.
#[test]
fn label_selector_matches() {
    let yes = |s: &str, l: &[(&str, &str)]| {
        assert!(
            LabelSelector::parse(s).unwrap().matches(&label_map(l)),
            "{s}"
        );
    };
    let no = |s: &str, l: &[(&str, &str)]| {
        assert!(
            !LabelSelector::parse(s).unwrap().matches(&label_map(l)),
            "{s}"
        );
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
    let l = label_map(&[("app", "web"), ("tier", "front")]);
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
    assert!(sel.matches(&label_map(&[
        ("app", "web"),
        ("tier", "front"),
        ("env", "dev")
    ])));
    assert!(!sel.matches(&label_map(&[("app", "web"), ("tier", "front")])));
    assert_eq!(
        LabelSelector::from_object(&serde_json::json!({})).to_string(),
        ""
    );
}
