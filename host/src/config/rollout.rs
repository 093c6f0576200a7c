//! A flow's gradual rollout of another version of its algorithm: a canary
//! share of the messages, the gate that rolls it back, and when it is
//! promoted. Checked by [`check_canary`]; run by `crate::flow::rollout`.

use serde::{Deserialize, Serialize};

use super::AlgorithmRef;

/// A canary: `percent` of the flow's messages go to `version`, the others
/// to the flow's own version. The choice is a stable hash of the message's
/// key (the `message-key` header) or, without one, of its id, so a
/// redelivered message goes to the version it went to before.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The version that gets the canary share, e.g. `"0.3.0"`.
    #[schema(value_type = String)]
    pub version: semver::Version,
    /// The share of the messages it gets, in percent (0 to 100).
    #[schema(minimum = 0, maximum = 100)]
    pub percent: f64,
    /// The gate on failures: the canary's failure rate may exceed the
    /// serving version's by at most this much (0 to 1; 0.05 allows five
    /// percentage points more). Absent: failures do not roll it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub max_failure_rate: Option<f64>,
    /// The gate on time: the canary's 99th-percentile invocation time may be
    /// at most this many times the serving version's. Absent: time does not
    /// roll it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub max_p99_ratio: Option<f64>,
    /// How many messages the canary handles before its gate is judged; the
    /// rates and percentiles are taken over the last this many messages of
    /// each version.
    #[serde(default = "default_window_messages")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub window_messages: u64,
    /// Promote the canary (the flow pins its version) once it has handled
    /// this many messages with its gate passing: `5000` or `"5000
    /// messages"`. Absent: only `eventflow flows promote` does.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "message_count"
    )]
    pub promote_after: Option<u64>,
}

/// A number of messages: `5000`, or `"5000 messages"` as the README
/// writes it.
fn message_count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Count {
        Number(u64),
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    let text = match Option::<Count>::deserialize(d)? {
        None => return Ok(None),
        Some(Count::Number(n)) => return Ok(Some(n)),
        Some(Count::Text(text)) => text,
        Some(Count::Other(_)) => {
            return Err(serde::de::Error::custom(
                "not a number of messages (write 5000 or \"5000 messages\")",
            ));
        }
    };
    let trimmed = text.trim();
    let number = ["messages", "message"]
        .iter()
        .find_map(|unit| trimmed.strip_suffix(unit))
        .unwrap_or(trimmed)
        .trim();
    number.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not a number of messages (write 5000 or \"5000 messages\")"
        ))
    })
}

const fn default_window_messages() -> u64 {
    100
}

/// A shadow: every message the flow's own version handles is run again by
/// `version`, in a fresh instance, with its effects (output, publishes,
/// data writes) captured and discarded and no outgoing HTTP. Its verdicts,
/// times and agreement with the serving output are counted; the shadow
/// stops when its gate fails.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// The version run in the shadow, e.g. `"0.3.0"`.
    #[schema(value_type = String)]
    pub version: semver::Version,
    /// The gate on agreement: the share of the serving version's successful
    /// outputs the shadow must reproduce byte for byte (0 to 1), over the
    /// window. Absent: agreement does not stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub min_output_agreement: Option<f64>,
    /// The gate on failures: the shadow's failure rate may exceed the
    /// serving version's by at most this much (0 to 1). Absent: failures do
    /// not stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub max_failure_rate: Option<f64>,
    /// The gate on time: the shadow's 99th-percentile invocation time may
    /// be at most this many times the serving version's (on the same
    /// messages). Absent: time does not stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0)]
    pub max_p99_ratio: Option<f64>,
    /// How many messages the shadow runs before its gate is judged; rates
    /// and percentiles are taken over the last this many.
    #[serde(default = "default_window_messages")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub window_messages: u64,
    /// Shadow invocations that may run at once (its own budget, apart from
    /// the flow's `concurrency`); a message that finds them all busy is not
    /// shadowed and counts as `shadow_skipped`.
    #[serde(default = "default_shadow_concurrency")]
    #[schema(minimum = 1, maximum = 64)]
    pub concurrency: u32,
}

const fn default_shadow_concurrency() -> u32 {
    2
}

/// Checks a flow's shadow against its algorithm reference; `Err((field,
/// message))` names the field under `shadow`.
pub fn check_shadow(shadow: &ShadowSpec, algorithm: &AlgorithmRef) -> Result<(), (String, String)> {
    let err = |field: &str, message: String| Err((format!("shadow.{field}"), message));
    if algorithm.version.as_ref() == Some(&shadow.version) {
        return err(
            "version",
            format!(
                "the shadow version {} is the flow's own version; name another",
                shadow.version
            ),
        );
    }
    for (field, rate) in [
        ("min_output_agreement", shadow.min_output_agreement),
        ("max_failure_rate", shadow.max_failure_rate),
    ] {
        if let Some(rate) = rate
            && !(0.0..=1.0).contains(&rate)
        {
            return err(field, format!("{rate} is not a rate from 0 to 1"));
        }
    }
    if let Some(ratio) = shadow.max_p99_ratio
        && !(ratio.is_finite() && ratio > 0.0)
    {
        return err("max_p99_ratio", format!("{ratio} is not a positive ratio"));
    }
    if !(1..=1_000_000).contains(&shadow.window_messages) {
        return err(
            "window_messages",
            format!("{} is not from 1 to 1000000", shadow.window_messages),
        );
    }
    if !(1..=64).contains(&shadow.concurrency) {
        return err(
            "concurrency",
            format!("{} is not from 1 to 64", shadow.concurrency),
        );
    }
    Ok(())
}

/// `rollout = "canary 10% then promote after 1000"`, for a flow that
/// follows the latest version: a newly loaded version becomes a canary at
/// `percent` instead of taking every message, and is promoted after
/// `promote_after` of its messages with its gate passing, or rolled back.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct RolloutPolicy {
    /// The new version's share of the messages, in percent (above 0, at
    /// most 100).
    pub percent: f64,
    /// Its messages before it is promoted (at least 1).
    pub promote_after: u64,
}

impl TryFrom<String> for RolloutPolicy {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not a rollout: {why}; write \"canary N% then promote after M\", e.g. \"canary 10% then promote after 1000\""
            )
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (share, count) = match words.as_slice() {
            ["canary", share, "then", "promote", "after", count] => (*share, *count),
            _ => return Err(bad("the words do not match")),
        };
        let percent: f64 = share
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(&format!("{share:?} is not a percentage like 10%")))?;
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(bad(&format!("{percent}% is not above 0 and at most 100")));
        }
        let promote_after: u64 = count.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            bad(&format!(
                "{count:?} is not a number of messages (1 or more)"
            ))
        })?;
        Ok(Self {
            percent,
            promote_after,
        })
    }
}

impl From<RolloutPolicy> for String {
    fn from(p: RolloutPolicy) -> String {
        format!(
            "canary {}% then promote after {}",
            p.percent, p.promote_after
        )
    }
}

/// Checks a flow's canary against its algorithm reference; `Err((field,
/// message))` names the field under `canary`.
pub fn check_canary(canary: &CanarySpec, algorithm: &AlgorithmRef) -> Result<(), (String, String)> {
    let err = |field: &str, message: String| Err((format!("canary.{field}"), message));
    if algorithm.version.as_ref() == Some(&canary.version) {
        return err(
            "version",
            format!(
                "the canary version {} is the flow's own version; name another",
                canary.version
            ),
        );
    }
    if !(0.0..=100.0).contains(&canary.percent) {
        return err(
            "percent",
            format!("{} is not a percentage from 0 to 100", canary.percent),
        );
    }
    if let Some(rate) = canary.max_failure_rate
        && !(0.0..=1.0).contains(&rate)
    {
        return err(
            "max_failure_rate",
            format!("{rate} is not a rate from 0 to 1"),
        );
    }
    if let Some(ratio) = canary.max_p99_ratio
        && !(ratio.is_finite() && ratio > 0.0)
    {
        return err("max_p99_ratio", format!("{ratio} is not a positive ratio"));
    }
    if !(1..=1_000_000).contains(&canary.window_messages) {
        return err(
            "window_messages",
            format!("{} is not from 1 to 1000000", canary.window_messages),
        );
    }
    if let Some(n) = canary.promote_after
        && n < canary.window_messages
    {
        return err(
            "promote_after",
            format!(
                "{n} is fewer messages than window_messages ({}): the gate could not be judged before promoting",
                canary.window_messages
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(toml_text: &str) -> CanarySpec {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_canary_is_checked_field_by_field() {
        let alg: AlgorithmRef = "o/n/0.1.0".parse().unwrap();
        let ok = canary(
            "version = \"0.2.0\"\npercent = 10\nmax_failure_rate = 0.1\npromote_after = 500",
        );
        assert_eq!(ok.window_messages, 100);
        assert_eq!(check_canary(&ok, &alg), Ok(()));
        let cases = [
            ("version = \"0.1.0\"\npercent = 10", "canary.version"),
            ("version = \"0.2.0\"\npercent = 101", "canary.percent"),
            (
                "version = \"0.2.0\"\npercent = 5\nmax_failure_rate = 2",
                "canary.max_failure_rate",
            ),
            (
                "version = \"0.2.0\"\npercent = 5\nmax_p99_ratio = 0",
                "canary.max_p99_ratio",
            ),
            (
                "version = \"0.2.0\"\npercent = 5\nwindow_messages = 0",
                "canary.window_messages",
            ),
            (
                "version = \"0.2.0\"\npercent = 5\npromote_after = 10",
                "canary.promote_after",
            ),
        ];
        for (text, field) in cases {
            let (got, _) = check_canary(&canary(text), &alg).unwrap_err();
            assert_eq!(got, field, "{text}");
        }
        assert!(
            toml::from_str::<CanarySpec>("version = \"0.2.0\"\npercent = 5\nshare = 1").is_err()
        );
    }

    #[test]
    fn promote_after_is_a_number_or_a_number_of_messages() {
        for text in [
            "5000",
            "\"5000 messages\"",
            "\" 5000 message \"",
            "\"5000\"",
        ] {
            let c = canary(&format!(
                "version = \"0.2.0\"\npercent = 5\npromote_after = {text}"
            ));
            assert_eq!(c.promote_after, Some(5000), "{text}");
        }
        let json: CanarySpec = serde_json::from_str(
            r#"{"version": "0.2.0", "percent": 5, "promote_after": "300 messages"}"#,
        )
        .unwrap();
        assert_eq!(json.promote_after, Some(300));
        assert_eq!(serde_json::to_value(&json).unwrap()["promote_after"], 300);
        let e = toml::from_str::<CanarySpec>(
            "version = \"0.2.0\"\npercent = 5\npromote_after = \"soon\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"soon\" is not a number of messages"), "{e}");
        let e =
            toml::from_str::<CanarySpec>("version = \"0.2.0\"\npercent = 5\npromote_after = 2.5")
                .unwrap_err()
                .to_string();
        assert!(e.contains("not a number of messages"), "{e}");
        assert_eq!(
            canary("version = \"0.2.0\"\npercent = 5").promote_after,
            None
        );
    }

    #[test]
    fn a_rollout_policy_parses_from_its_sentence_or_says_how_to_write_it() {
        let p = RolloutPolicy::try_from("canary 10% then  promote after 1000".to_string()).unwrap();
        assert_eq!((p.percent, p.promote_after), (10.0, 1000));
        assert_eq!(
            String::from(p),
            "canary 10% then promote after 1000".to_string()
        );
        for bad in [
            "canary 10 then promote after 1000",
            "canary 0% then promote after 1000",
            "canary 10% then promote after none",
            "canary 10% then promote",
        ] {
            let e = RolloutPolicy::try_from(bad.to_string()).unwrap_err();
            assert!(e.contains("canary N% then promote after M"), "{e}");
        }
    }

    #[test]
    fn a_shadow_is_checked_field_by_field() {
        let alg: AlgorithmRef = "o/n/0.1.0".parse().unwrap();
        let shadow = |t: &str| toml::from_str::<ShadowSpec>(t).unwrap();
        let ok = shadow("version = \"0.2.0\"\nmin_output_agreement = 0.9");
        assert_eq!((ok.window_messages, ok.concurrency), (100, 2));
        assert_eq!(check_shadow(&ok, &alg), Ok(()));
        let cases = [
            ("version = \"0.1.0\"", "shadow.version"),
            (
                "version = \"0.2.0\"\nmin_output_agreement = 1.5",
                "shadow.min_output_agreement",
            ),
            (
                "version = \"0.2.0\"\nmax_failure_rate = -1",
                "shadow.max_failure_rate",
            ),
            ("version = \"0.2.0\"\nconcurrency = 0", "shadow.concurrency"),
        ];
        for (text, field) in cases {
            let (got, _) = check_shadow(&shadow(text), &alg).unwrap_err();
            assert_eq!(got, field, "{text}");
        }
        assert!(toml::from_str::<ShadowSpec>("version = \"0.2.0\"\npercent = 5").is_err());
    }
}
