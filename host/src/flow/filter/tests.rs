use super::*;

/// The filter written in TOML, as a flow's `filter` table.
fn filter(toml_text: &str) -> Filter {
    Filter::compile(&spec(toml_text)).unwrap()
}

fn spec(toml_text: &str) -> FilterSpec {
    toml::from_str(toml_text).unwrap()
}

fn error(toml_text: &str) -> FilterError {
    Filter::compile(&spec(toml_text)).unwrap_err()
}

fn passes(f: &Filter, payload: &str) -> bool {
    f.matches(payload.as_bytes(), &[])
}

fn header(name: &str, value: &str) -> Header {
    (name.to_string(), value.to_string())
}

#[test]
fn equality_matches_strings_numbers_and_booleans_of_the_same_type() {
    let f = filter(r#"payload = { kind = ["order", 7, true] }"#);
    assert!(passes(&f, r#"{"kind": "order"}"#));
    assert!(passes(&f, r#"{"kind": 7.0}"#));
    assert!(passes(&f, r#"{"kind": true}"#));
    assert!(!passes(&f, r#"{"kind": "7"}"#));
    assert!(!passes(&f, r#"{"kind": "refund"}"#));
    assert!(!passes(&f, r#"{"kind": false}"#));
    assert!(!passes(&f, r#"{"other": "order"}"#));
}

#[test]
fn prefix_matches_the_start_of_strings_only() {
    let f = filter(r#"payload = { sku = [{ prefix = "shop-" }] }"#);
    assert!(passes(&f, r#"{"sku": "shop-42"}"#));
    assert!(!passes(&f, r#"{"sku": "my-shop-42"}"#));
    assert!(!passes(&f, r#"{"sku": 5}"#));
    assert!(!passes(&f, r#"{}"#));
}

#[test]
fn exists_tells_present_fields_from_missing_ones() {
    let present = filter(r#"payload = { id = [{ exists = true }] }"#);
    let missing = filter(r#"payload = { id = [{ exists = false }] }"#);
    for (doc, there) in [
        (r#"{"id": 1}"#, true),
        (r#"{"id": null}"#, true),
        (r#"{"id": {"a": 1}}"#, true),
        (r#"{"other": 1}"#, false),
        (r#"[1, 2]"#, false),
    ] {
        assert_eq!(passes(&present, doc), there, "{doc}");
        assert_eq!(passes(&missing, doc), !there, "{doc}");
    }
}

#[test]
fn numeric_ranges_hold_every_comparison() {
    let f = filter(r#"payload = { amount = [{ numeric = [">", 100, "<=", 200.5] }] }"#);
    assert!(passes(&f, r#"{"amount": 101}"#));
    assert!(passes(&f, r#"{"amount": 200.5}"#));
    assert!(!passes(&f, r#"{"amount": 100}"#));
    assert!(!passes(&f, r#"{"amount": 201}"#));
    assert!(!passes(&f, r#"{"amount": "150"}"#));
    let eq = filter(r#"payload = { n = [{ numeric = ["=", 3] }] }"#);
    assert!(passes(&eq, r#"{"n": 3.0}"#) && !passes(&eq, r#"{"n": 3.5}"#));
    let lt = filter(r#"payload = { n = [{ numeric = ["<", 0] }, { numeric = [">=", 10] }] }"#);
    assert!(passes(&lt, r#"{"n": -1}"#) && passes(&lt, r#"{"n": 10}"#));
    assert!(!passes(&lt, r#"{"n": 5}"#));
}

#[test]
fn anything_but_matches_present_values_other_than_these() {
    let list = filter(r#"payload = { state = [{ anything-but = ["test", 0] }] }"#);
    assert!(passes(&list, r#"{"state": "live"}"#));
    assert!(passes(&list, r#"{"state": 1}"#));
    assert!(!passes(&list, r#"{"state": "test"}"#));
    assert!(!passes(&list, r#"{"state": 0}"#));
    assert!(!passes(&list, r#"{}"#), "a missing field is not anything");
    assert!(!passes(&list, r#"{"state": {"a": 1}}"#));
    let one = filter(r#"payload = { state = [{ anything-but = "test" }] }"#);
    assert!(passes(&one, r#"{"state": "live"}"#) && !passes(&one, r#"{"state": "test"}"#));
    let prefix = filter(r#"payload = { sku = [{ anything-but = { prefix = "tmp-" } }] }"#);
    assert!(passes(&prefix, r#"{"sku": "shop-1"}"#));
    assert!(!passes(&prefix, r#"{"sku": "tmp-1"}"#));
    assert!(!passes(&prefix, r#"{"sku": 1}"#));
}

#[test]
fn headers_match_their_text_and_read_numbers_for_numeric() {
    let f = filter(
        r#"headers = { source = [{ prefix = "shop-" }], priority = [{ numeric = [">=", 5] }] }"#,
    );
    let ok = [header("source", "shop-eu"), header("priority", " 7 ")];
    assert!(f.matches(b"not json at all", &ok));
    assert!(!f.matches(b"", &[header("source", "shop-eu")]));
    assert!(!f.matches(b"", &[header("source", "web"), header("priority", "7")]));
    assert!(!f.matches(
        b"",
        &[header("source", "shop-eu"), header("priority", "high")]
    ));
    // A header given twice matches when either value does.
    let twice = [
        header("source", "web"),
        header("source", "shop-us"),
        header("priority", "5"),
    ];
    assert!(f.matches(b"", &twice));
    let absent = filter(r#"headers = { debug = [{ exists = false }] }"#);
    assert!(absent.matches(b"", &[]));
    assert!(!absent.matches(b"", &[header("debug", "")]));
}

#[test]
fn every_field_must_match_and_any_condition_of_a_field() {
    let f = filter(
        r#"
payload = { kind = ["order"], amount = [{ numeric = [">", 100] }] }
headers = { source = [{ prefix = "shop-" }] }
"#,
    );
    let shop = [header("source", "shop-1")];
    assert!(f.matches(br#"{"kind": "order", "amount": 150}"#, &shop));
    assert!(!f.matches(br#"{"kind": "order", "amount": 50}"#, &shop));
    assert!(!f.matches(br#"{"kind": "refund", "amount": 150}"#, &shop));
    assert!(!f.matches(br#"{"kind": "order", "amount": 150}"#, &[]));
}

#[test]
fn nested_fields_and_arrays_are_looked_into() {
    let f = filter(
        r#"
[payload.customer]
tier = ["gold"]
[payload.customer.address]
country = ["NL", "BE"]
"#,
    );
    assert!(passes(
        &f,
        r#"{"customer": {"tier": "gold", "address": {"country": "NL"}}}"#
    ));
    assert!(!passes(
        &f,
        r#"{"customer": {"tier": "gold", "address": {"country": "DE"}}}"#
    ));
    assert!(!passes(&f, r#"{"customer": "gold"}"#));
    let tags = filter(r#"payload = { tags = ["urgent"] }"#);
    assert!(passes(&tags, r#"{"tags": ["low", "urgent"]}"#));
    assert!(!passes(&tags, r#"{"tags": []}"#));
    let items = filter(r#"payload = { items = { sku = [{ prefix = "a" }] } }"#);
    assert!(passes(
        &items,
        r#"{"items": [{"sku": "b1"}, {"sku": "a1"}]}"#
    ));
    assert!(!passes(&items, r#"{"items": [{"sku": "b1"}]}"#));
}

#[test]
fn a_payload_that_is_not_json_passes_no_payload_pattern() {
    let present = filter(r#"payload = { id = [{ exists = true }] }"#);
    let missing = filter(r#"payload = { id = [{ exists = false }] }"#);
    for bad in [&b"{not json"[..], b"", b"\xff\xfe", b"{\"id\": 1"] {
        assert!(!present.matches(bad, &[]));
        assert!(!missing.matches(bad, &[]));
    }
}

/// Each `(filter, path, message)` fails to compile with an error at
/// `path` whose message contains `message` and that shows the pattern.
fn assert_errors(cases: &[(&str, &str, &str)]) {
    for &(text, path, message) in cases {
        let e = error(text);
        assert_eq!(e.path, path, "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
        assert!(e.to_string().contains(&e.pattern), "{e}");
    }
}

#[test]
fn bad_patterns_are_errors_that_name_the_pattern() {
    assert_errors(&[
        ("", "filter", "is empty"),
        (
            r#"payload = { kind = "order" }"#,
            "payload.kind",
            "expected a list",
        ),
        (r#"payload = { kind = [] }"#, "payload.kind", "empty list"),
        (
            r#"payload = { a = { b = {} } }"#,
            "payload.a.b",
            "expected a list",
        ),
        (
            r#"payload = { amount = ["x", { numeric = [">"] }] }"#,
            "payload.amount[1]",
            "pairs of an operator",
        ),
        (
            r#"payload = { amount = [{ numeric = ["~", 1] }] }"#,
            "payload.amount[0]",
            "\"~\" is not an operator",
        ),
        (
            r#"payload = { amount = [{ numeric = [1, ">"] }] }"#,
            "payload.amount[0]",
            "pairs of an operator",
        ),
    ]);
}

#[test]
fn bad_conditions_are_errors_that_name_the_pattern() {
    assert_errors(&[
        (
            r#"payload = { a = [{ prefix = 1 }] }"#,
            "payload.a[0]",
            "prefix takes a string",
        ),
        (
            r#"payload = { a = [{ exists = "yes" }] }"#,
            "payload.a[0]",
            "true or false",
        ),
        (
            r#"payload = { a = [{ suffix = "x" }] }"#,
            "payload.a[0]",
            "unknown condition \"suffix\"",
        ),
        (
            r#"payload = { a = [{ prefix = "x", exists = true }] }"#,
            "payload.a[0]",
            "exactly one",
        ),
        (
            r#"payload = { a = [[1]] }"#,
            "payload.a[0]",
            "a condition is",
        ),
        (
            r#"payload = { a = [{ anything-but = [] }] }"#,
            "payload.a[0]",
            "anything-but takes",
        ),
        (
            r#"payload = { a = [{ anything-but = { suffix = "x" } }] }"#,
            "payload.a[0]",
            "anything-but takes",
        ),
        (
            r#"headers = { h = { x = ["a"] } }"#,
            "headers.h",
            "list of conditions",
        ),
        (
            r#"headers = { h = [{ exists = 1 }] }"#,
            "headers.h[0]",
            "true or false",
        ),
    ]);
    // JSON null (possible through the API, not in TOML) is no condition.
    let null = Filter::compile(&FilterSpec {
        payload: [("a".to_string(), serde_json::json!([null]))].into(),
        ..FilterSpec::default()
    })
    .unwrap_err();
    assert!(null.message.contains("exists = false"), "{null}");
}

#[test]
fn a_filter_round_trips_through_json_and_toml() {
    let text = r#"
payload = { kind = ["order"], amount = [{ numeric = [">", 100] }], customer = { tier = [{ anything-but = "free" }] } }
headers = { source = [{ prefix = "shop-" }] }
"#;
    let s = spec(text);
    let json: FilterSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    let toml_again: FilterSpec = toml::from_str(&toml::to_string(&s).unwrap()).unwrap();
    assert_eq!((&json, &toml_again), (&s, &s));
    assert!(serde_json::from_str::<FilterSpec>(r#"{"body": {}}"#).is_err());
}
