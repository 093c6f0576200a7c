use super::*;

const GOOD: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "incoming"
consumers = ["ezra/store_file"]

[[topics]]
name = "dlq"
publishers = ["ezra/*"]

[[flows]]
name = "store"
topic = "incoming"
algorithm = "ezra/store_file/0.1.0"
dead_letter_topic = "dlq"
"#;

#[test]
fn a_good_file_fills_in_the_only_broker() {
    let c = parse("good.toml", GOOD).unwrap();
    assert_eq!(c.flows[0].broker, "local");
    assert_eq!(c.topics[1].broker, "local");
    assert_eq!(
        c.flows[0].algorithm.version,
        Some(semver::Version::new(0, 1, 0))
    );
}

#[test]
fn an_unknown_field_names_the_file_and_field() {
    let text = GOOD.replace("dead_letter_topic", "dead_leter_topic");
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.starts_with("bad.toml: flows[0]"), "{e}");
    assert!(e.contains("dead_leter_topic"), "{e}");
}

#[test]
fn a_bad_algorithm_reference_is_refused() {
    let text = GOOD.replace("ezra/store_file/0.1.0", "ezra/store_file/one");
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.contains("flows[0].algorithm"), "{e}");
    assert!(e.contains("semver"), "{e}");
}

#[test]
fn an_unknown_broker_is_refused() {
    let text = GOOD.replace(
        "topic = \"incoming\"",
        "topic = \"incoming\"\nbroker = \"nope\"",
    );
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert_eq!(
        e,
        "bad.toml: flows[0].broker: no broker connection named \"nope\""
    );
}

#[test]
fn partition_depth_out_of_range_is_named() {
    let text = format!("{GOOD}[flows.consumer]\nin_flight_per_partition = 0\n");
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert_eq!(
        e,
        "bad.toml: flows[0].consumer.in_flight_per_partition: 0 must be between 1 and 64"
    );
}

#[test]
fn a_missing_grant_is_named() {
    let text = GOOD.replace("consumers = [\"ezra/store_file\"]", "consumers = []");
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.contains("no grant to consume"), "{e}");
}

/// Names that would be a path, a dot segment, a control character or a
/// very long string, wherever a name goes in a file.
#[test]
fn names_are_validated_everywhere_a_file_gives_one() {
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    for bad in [
        "..",
        ".",
        "a/b",
        "",
        "a\\u0000b",
        "a\\nb",
        "%2e%2e",
        "a b",
        &long,
    ] {
        for (from, to, field) in [
            ("name = \"incoming\"", "name = \"BAD\"", "topics[0].name"),
            ("name = \"local\"", "name = \"BAD\"", "brokers[0].name"),
            ("name = \"store\"", "name = \"BAD\"", "flows[0].name"),
            (
                "dead_letter_topic = \"dlq\"",
                "dead_letter_topic = \"BAD\"",
                "flows[0].dead_letter_topic",
            ),
            ("topic = \"incoming\"", "topic = \"BAD\"", "flows[0].topic"),
        ] {
            let text = GOOD.replacen(from, &to.replace("BAD", bad), 1);
            let e = parse("bad.toml", &text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("bad.toml: {field}: ")) && e.contains("not a valid name"),
                "{bad:?} as {field}: {e}"
            );
        }
    }
    // A disabled flow is checked too, and so is another broker's topic.
    let text = GOOD.replace(
        "dead_letter_topic = \"dlq\"",
        "dead_letter_topic = \"local:..\"\nenabled = false",
    );
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.contains("flows[0].dead_letter_topic"), "{e}");
    let text = GOOD.replace(
        "kind = \"embedded\"",
        "kind = \"embedded\"\npath = \"x.redb\"",
    );
    assert!(parse("good.toml", &text).is_ok());
}

#[test]
fn a_router_secret_reference_must_be_a_name() {
    let mut c = parse("good.toml", GOOD).unwrap();
    c.brokers.push(
        serde_json::from_value(serde_json::json!({
            "name": "sb", "kind": "servicebus",
            "connection_string": {"secret": "../other"},
        }))
        .unwrap(),
    );
    let (field, m) = validate(&mut c).unwrap_err();
    assert_eq!(field, "brokers[1].connection_string.secret");
    assert!(m.contains("not a valid name"), "{m}");
}

#[test]
fn refused_names_are_shown_escaped_and_short() {
    let e = check_name(&format!("a\0{}", "y".repeat(500))).unwrap_err();
    assert!(e.starts_with("\"a\\0yyy"), "{e}");
    assert!(e.contains("(502 bytes)") && e.len() < 300, "{e}");
}

#[test]
fn a_dead_letter_topic_needs_no_publish_grant() {
    let text = GOOD.replace("publishers = [\"ezra/*\"]", "publishers = []");
    parse("good.toml", &text).unwrap();
}

#[test]
fn outputs_to_a_dead_letter_topic_need_a_dead_letter_grant() {
    let text = format!(
        "{GOOD}\n[[flows]]\nname = \"out\"\ntopic = \"incoming\"\nalgorithm = \"ezra/store_file\"\noutput_topic = \"dlq\"\n"
    );
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(
        e.contains("flows[1].output_topic") && e.contains("dead_letter_publishers"),
        "{e}"
    );
    let granted = text.replace(
        "publishers = [\"ezra/*\"]",
        "publishers = []\ndead_letter_publishers = [\"ezra/store_file\"]",
    );
    parse("good.toml", &granted).unwrap();
}

#[test]
fn a_bad_filter_names_the_file_the_flow_and_the_pattern() {
    let text =
        format!("{GOOD}filter = {{ headers = {{ source = [{{ numeric = [\">\", \"x\"] }}] }} }}\n");
    let e = parse("f.toml", &text).unwrap_err().to_string();
    assert!(
        e.starts_with("f.toml: flows[0].filter.headers.source[0]: flow \"store\": filter pattern {\"numeric\":[\">\",\"x\"]}: numeric takes pairs"),
        "{e}"
    );
    let good = format!("{GOOD}filter = {{ payload = {{ kind = [\"order\"] }} }}\n");
    assert!(parse("f.toml", &good).unwrap().flows[0].filter.is_some());
}

#[test]
fn ordering_by_key_is_refused_on_service_bus_and_sqs_standard_queues_and_park_needs_it() {
    let keyed = format!("{GOOD}ordering = \"key\"\n");
    assert_eq!(
        parse("k.toml", &keyed).unwrap().flows[0].ordering,
        Some(FlowOrdering::Key)
    );
    #[cfg(feature = "servicebus")]
    {
        let text = keyed.replace(
            "kind = \"embedded\"",
            "kind = \"servicebus\"\nconnection_string = { env = \"SB\" }",
        );
        let e = parse("k.toml", &text).unwrap_err().to_string();
        assert!(
            e.contains("flows[0].ordering") && e.contains("servicebus"),
            "{e}"
        );
    }
    #[cfg(feature = "sqs")]
    {
        // SQS keys by a FIFO queue's message group: a standard queue has none.
        let sqs = keyed.replace(
            "kind = \"embedded\"",
            "kind = \"sqs\"\nregion = \"us-east-1\"",
        );
        let standard = sqs.replace(
            "name = \"incoming\"\n",
            "name = \"incoming\"\naddress = \"https://sqs.us-east-1.amazonaws.com/1/incoming\"\n",
        );
        let e = parse("k.toml", &standard).unwrap_err().to_string();
        assert!(
            e.contains("k.toml") && e.contains("flows[0].ordering") && e.contains("standard queue"),
            "{e}"
        );
        let fifo = standard.replace("/1/incoming", "/1/incoming.fifo");
        assert_eq!(
            parse("k.toml", &fifo).unwrap().flows[0].ordering,
            Some(FlowOrdering::Key)
        );
    }
    let park = format!("{GOOD}on_key_failure = \"park\"\n");
    let e = parse("k.toml", &park).unwrap_err().to_string();
    assert!(e.contains("needs ordering = \"key\""), "{e}");
    let parked = parse("k.toml", &format!("{keyed}on_key_failure = \"park\"\n")).unwrap();
    assert_eq!(parked.flows[0].on_key_failure, KeyFailure::Park);
}

#[test]
fn ordering_by_partition_is_kafkas_default_and_refused_without_partitions() {
    let unset = parse("o.toml", GOOD).unwrap();
    assert_eq!(unset.flows[0].ordering, None);
    assert_eq!(unset.flows[0].ordering_on("embedded"), FlowOrdering::None);
    assert_eq!(unset.flows[0].ordering_on("kafka"), FlowOrdering::Partition);
    assert_eq!(
        unset.flows[0].ordering_on("eventhubs"),
        FlowOrdering::Partition
    );
    let partition = format!("{GOOD}ordering = \"partition\"\n");
    let e = parse("o.toml", &partition).unwrap_err().to_string();
    assert!(
        e.contains("o.toml")
            && e.contains("flows[0].ordering")
            && e.contains("needs a broker with partitions")
            && e.contains("embedded"),
        "{e}"
    );
    let none = parse("o.toml", &format!("{GOOD}ordering = \"none\"\n")).unwrap();
    assert_eq!(none.flows[0].ordering_on("kafka"), FlowOrdering::None);
    #[cfg(feature = "kafka")]
    {
        let kafka = partition.replace(
            "kind = \"embedded\"",
            "kind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"",
        );
        let c = parse("o.toml", &kafka).unwrap();
        assert_eq!(c.flows[0].ordering, Some(FlowOrdering::Partition));
    }
    // An unset ordering is not written out: it stays the broker's default.
    let json = serde_json::to_value(&unset.flows[0]).unwrap();
    assert!(json.get("ordering").is_none(), "{json}");
}

#[test]
fn a_rollout_and_a_shadow_are_checked_and_errors_name_the_file_and_field() {
    let latest = GOOD.replace("ezra/store_file/0.1.0", "ezra/store_file");
    let text = format!("{latest}rollout = \"canary 10% then promote after 1000\"\n");
    let c = parse("good.toml", &text).unwrap();
    let policy = c.flows[0].rollout.as_ref().unwrap();
    assert_eq!((policy.percent, policy.promote_after), (10.0, 1000));

    let text = format!("{latest}rollout = \"canary ten percent\"\n");
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.starts_with("bad.toml: flows[0].rollout"), "{e}");
    assert!(e.contains("canary N% then promote after M"), "{e}");

    let text = format!("{GOOD}rollout = \"canary 10% then promote after 1000\"\n");
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.starts_with("bad.toml: flows[0].rollout"), "{e}");
    assert!(e.contains("follows the latest version"), "{e}");

    let text = format!("{GOOD}shadow = {{ version = \"0.1.0\" }}\n");
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.starts_with("bad.toml: flows[0].shadow.version"), "{e}");

    let skip = "skip_versions = [\"0.2.0\"]\n";
    let text = format!("{latest}rollout = \"canary 10% then promote after 1000\"\n{skip}");
    let c = parse("good.toml", &text).unwrap();
    assert_eq!(c.flows[0].skip_versions, vec!["0.2.0".parse().unwrap()]);
    let e = parse("bad.toml", &format!("{latest}{skip}"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad.toml: flows[0].skip_versions"), "{e}");
    assert!(e.contains("a flow with a rollout"), "{e}");
    let text = format!(
        "{latest}rollout = \"canary 10% then promote after 1000\"\nskip_versions = [\"two\"]\n"
    );
    let e = parse("bad.toml", &text).unwrap_err().to_string();
    assert!(e.contains("bad.toml") && e.contains("skip_versions"), "{e}");
}
