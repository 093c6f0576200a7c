//! A flow's filter: which messages invoke its algorithm. Compiled once from
//! the flow's [`FilterSpec`] when the flow starts (and when a configuration
//! is checked, so a bad pattern never reaches a running flow), then matched
//! against each message before anything else is done with it.
//!
//! The language is that of AWS EventBridge and Lambda filter patterns, in a
//! form TOML can write: every named field must match; a field matches when
//! any condition of its list does; a field holding a JSON array matches when
//! any of its elements does.

use std::sync::Arc;

use serde_json::Value;

use super::{FlowState, FlowStatus};
use crate::config::{FilterSpec, FlowSpec};
use crate::message::Header;

/// A pattern that cannot be compiled: where it is, as written, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pattern {path} = {pattern}: {message}")]
pub struct FilterError {
    /// Where the pattern is, e.g. `payload.amount[0]`.
    pub path: String,
    /// The pattern as written, in JSON.
    pub pattern: String,
    /// What is wrong with it.
    pub message: String,
}

impl FilterError {
    fn new(path: &str, pattern: &Value, message: impl Into<String>) -> Self {
        let mut pattern = pattern.to_string();
        if pattern.len() > 200 {
            let cut = (0..=200).rev().find(|&i| pattern.is_char_boundary(i));
            pattern.truncate(cut.unwrap_or(0));
            pattern.push('…');
        }
        Self {
            path: path.to_string(),
            pattern,
            message: message.into(),
        }
    }
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Rules on fields of the JSON payload; all must match.
    payload: Vec<Rule>,
    /// Rules on headers; all must match.
    headers: Vec<Rule>,
}

/// The conditions on one field, any of which must match.
#[derive(Debug, Clone)]
struct Rule {
    /// The field's path from the payload's root, or the header's name.
    path: Vec<String>,
    conditions: Vec<Condition>,
}

/// One condition on a field's values.
#[derive(Debug, Clone, PartialEq)]
enum Condition {
    /// A value equal to this one.
    Equals(Scalar),
    /// A string starting with this.
    Prefix(String),
    /// `true`: the field is there; `false`: it is not.
    Exists(bool),
    /// A number for which every comparison holds.
    Numeric(Vec<(Op, f64)>),
    /// A value (not an object) equal to none of these.
    AnythingBut(Vec<Scalar>),
    /// A string not starting with this.
    AnythingButPrefix(String),
}

/// A value a condition compares with.
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

/// A numeric comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

/// A value a field has: a part of the JSON payload, or a header's text.
#[derive(Debug, Clone, Copy)]
enum Seen<'a> {
    Json(&'a Value),
    Text(&'a str),
}

impl Filter {
    /// Checks and compiles `spec`; the error names the first bad pattern.
    pub fn compile(spec: &FilterSpec) -> Result<Filter, FilterError> {
        if spec.payload.is_empty() && spec.headers.is_empty() {
            return Err(FilterError::new(
                "filter",
                &Value::Object(Default::default()),
                "is empty: give patterns under `payload` or `headers`, or leave the filter out",
            ));
        }
        let mut payload = Vec::new();
        for (name, pattern) in &spec.payload {
            payload_rules(vec![name.clone()], pattern, &mut payload)?;
        }
        let mut headers = Vec::new();
        for (name, pattern) in &spec.headers {
            let at = format!("headers.{name}");
            let Value::Array(list) = pattern else {
                return Err(FilterError::new(
                    &at,
                    pattern,
                    "a header's pattern is a list of conditions, like [\"a\", { prefix = \"b\" }]",
                ));
            };
            headers.push(Rule {
                path: vec![name.clone()],
                conditions: conditions(list, &at)?,
            });
        }
        Ok(Filter { payload, headers })
    }

    /// Whether a message with `payload` and `headers` passes. A payload
    /// that is not JSON passes no payload pattern.
    pub fn matches(&self, payload: &[u8], headers: &[Header]) -> bool {
        let headers_match = self.headers.iter().all(|rule| {
            let values: Vec<Seen> = headers
                .iter()
                .filter(|(k, _)| *k == rule.path[0])
                .map(|(_, v)| Seen::Text(v))
                .collect();
            rule.matches(&values)
        });
        if !headers_match {
            return false;
        }
        if self.payload.is_empty() {
            return true;
        }
        let Ok(document) = serde_json::from_slice::<Value>(payload) else {
            return false;
        };
        self.payload.iter().all(|rule| {
            let mut found = Vec::new();
            collect(&document, &rule.path, &mut found);
            let values: Vec<Seen> = found.into_iter().map(Seen::Json).collect();
            rule.matches(&values)
        })
    }
}

/// The flow's filter, compiled once for the run. A configuration is
/// checked before it is applied, so an error here only stops the flow with
/// it in its status.
pub(super) fn for_flow(spec: &FlowSpec, status: &FlowStatus) -> Result<Option<Arc<Filter>>, ()> {
    let Some(f) = &spec.filter else {
        return Ok(None);
    };
    match Filter::compile(f) {
        Ok(f) => Ok(Some(Arc::new(f))),
        Err(e) => {
            tracing::error!(flow = %spec.name, error = %e, "The flow's filter is invalid; the flow does not start.");
            status.set_state(FlowState::Stopped);
            status.failed(&format!("filter: {e}"));
            Err(())
        }
    }
}

impl Rule {
    /// Any condition holds for the field's `values` (none: it is absent).
    fn matches(&self, values: &[Seen]) -> bool {
        self.conditions.iter().any(|c| match c {
            Condition::Exists(wanted) => values.is_empty() != *wanted,
            _ => values.iter().any(|v| c.holds(*v)),
        })
    }
}

impl Condition {
    /// Whether the condition holds for one value of a present field.
    fn holds(&self, value: Seen) -> bool {
        match self {
            Condition::Equals(s) => s.equals(value),
            Condition::Prefix(p) => value.as_str().is_some_and(|s| s.starts_with(p.as_str())),
            Condition::Exists(wanted) => *wanted,
            Condition::Numeric(comparisons) => value
                .as_number()
                .is_some_and(|x| comparisons.iter().all(|(op, n)| op.holds(x, *n))),
            Condition::AnythingBut(values) => {
                !value.is_object() && !values.iter().any(|s| s.equals(value))
            }
            Condition::AnythingButPrefix(p) => {
                value.as_str().is_some_and(|s| !s.starts_with(p.as_str()))
            }
        }
    }
}

impl Scalar {
    fn equals(&self, value: Seen) -> bool {
        match self {
            Scalar::Str(s) => value.as_str() == Some(s.as_str()),
            Scalar::Num(n) => value.as_number() == Some(*n),
            Scalar::Bool(b) => value.as_bool() == Some(*b),
        }
    }

    fn from_json(v: &Value) -> Option<Scalar> {
        match v {
            Value::String(s) => Some(Scalar::Str(s.clone())),
            Value::Number(n) => n.as_f64().map(Scalar::Num),
            Value::Bool(b) => Some(Scalar::Bool(*b)),
            _ => None,
        }
    }
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<" => Op::Lt,
            "<=" => Op::Le,
            "=" => Op::Eq,
            ">=" => Op::Ge,
            ">" => Op::Gt,
            _ => return None,
        })
    }

    fn holds(self, x: f64, n: f64) -> bool {
        match self {
            Op::Lt => x < n,
            Op::Le => x <= n,
            Op::Eq => x == n,
            Op::Ge => x >= n,
            Op::Gt => x > n,
        }
    }
}

impl Seen<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Seen::Json(v) => v.as_str(),
            Seen::Text(t) => Some(t),
        }
    }

    /// A JSON number, or a header that reads as a finite number.
    fn as_number(&self) -> Option<f64> {
        match self {
            Seen::Json(v) => v.as_f64(),
            Seen::Text(t) => t.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
        }
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Seen::Json(v) => v.as_bool(),
            Seen::Text(t) => t.parse().ok(),
        }
    }

    fn is_object(&self) -> bool {
        matches!(self, Seen::Json(Value::Object(_)))
    }
}

/// The values at `path` in `value`: every element of an array on the way,
/// or at the end, is looked into.
fn collect<'a>(value: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    match (value, path.split_first()) {
        (Value::Array(items), _) => items.iter().for_each(|v| collect(v, path, out)),
        (_, None) => out.push(value),
        (Value::Object(fields), Some((name, rest))) => {
            if let Some(v) = fields.get(name) {
                collect(v, rest, out);
            }
        }
        _ => {}
    }
}

/// The rules of the payload pattern `pattern` at field `path`: a list of
/// conditions, or a table of patterns on the fields inside.
fn payload_rules(
    path: Vec<String>,
    pattern: &Value,
    out: &mut Vec<Rule>,
) -> Result<(), FilterError> {
    let at = format!("payload.{}", path.join("."));
    match pattern {
        Value::Array(list) => {
            let conditions = conditions(list, &at)?;
            out.push(Rule { path, conditions });
        }
        Value::Object(fields) if !fields.is_empty() => {
            for (name, inner) in fields {
                let mut path = path.clone();
                path.push(name.clone());
                payload_rules(path, inner, out)?;
            }
        }
        _ => {
            return Err(FilterError::new(
                &at,
                pattern,
                "expected a list of conditions, like [\"a\", { prefix = \"b\" }], or a table of patterns on the fields inside",
            ));
        }
    }
    Ok(())
}

/// The conditions of the list at `at`, which may not be empty.
fn conditions(list: &[Value], at: &str) -> Result<Vec<Condition>, FilterError> {
    if list.is_empty() {
        return Err(FilterError::new(
            at,
            &Value::Array(Vec::new()),
            "an empty list matches nothing",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| condition(c).map_err(|m| FilterError::new(&format!("{at}[{i}]"), c, m)))
        .collect()
}

const KINDS: &str = "prefix, exists, numeric or anything-but";

/// One condition: a value, or a table with one of [`KINDS`].
fn condition(c: &Value) -> Result<Condition, String> {
    if let Some(s) = Scalar::from_json(c) {
        return Ok(Condition::Equals(s));
    }
    let Value::Object(table) = c else {
        return Err(format!(
            "a condition is a string, a number, a boolean or a table with one of {KINDS} ({{ exists = false }} matches a missing field)"
        ));
    };
    let mut entries = table.iter();
    let (Some((kind, arg)), None) = (entries.next(), entries.next()) else {
        return Err(format!("a condition table has exactly one of {KINDS}"));
    };
    match (kind.as_str(), arg) {
        ("prefix", Value::String(p)) => Ok(Condition::Prefix(p.clone())),
        ("prefix", _) => Err("prefix takes a string".into()),
        ("exists", Value::Bool(b)) => Ok(Condition::Exists(*b)),
        ("exists", _) => Err("exists takes true or false".into()),
        ("numeric", arg) => numeric(arg).map(Condition::Numeric),
        ("anything-but", arg) => anything_but(arg),
        (other, _) => Err(format!("unknown condition {other:?}: expected {KINDS}")),
    }
}

/// `[">", 0, "<=", 100]`: pairs of an operator and a number.
fn numeric(arg: &Value) -> Result<Vec<(Op, f64)>, String> {
    const SHAPE: &str = "numeric takes pairs of an operator (<, <=, =, >=, >) and a number, like [\">\", 0, \"<=\", 100]";
    let Value::Array(items) = arg else {
        return Err(SHAPE.into());
    };
    if items.is_empty() || items.len() % 2 != 0 {
        return Err(SHAPE.into());
    }
    items
        .chunks(2)
        .map(|pair| match (&pair[0], &pair[1]) {
            (Value::String(op), Value::Number(n)) => match (Op::parse(op), n.as_f64()) {
                (Some(op), Some(n)) => Ok((op, n)),
                (None, _) => Err(format!("{op:?} is not an operator: {SHAPE}")),
                (_, None) => Err(SHAPE.into()),
            },
            _ => Err(SHAPE.into()),
        })
        .collect()
}

/// `anything-but`: a value, a list of values, or `{ prefix = "s" }`.
fn anything_but(arg: &Value) -> Result<Condition, String> {
    const SHAPE: &str = "anything-but takes a value, a list of values or { prefix = \"s\" }";
    if let Some(s) = Scalar::from_json(arg) {
        return Ok(Condition::AnythingBut(vec![s]));
    }
    match arg {
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|v| Scalar::from_json(v).ok_or_else(|| SHAPE.to_string()))
            .collect::<Result<_, _>>()
            .map(Condition::AnythingBut),
        Value::Object(t) if t.len() == 1 => match t.get("prefix") {
            Some(Value::String(p)) => Ok(Condition::AnythingButPrefix(p.clone())),
            _ => Err(SHAPE.into()),
        },
        _ => Err(SHAPE.into()),
    }
}

#[cfg(test)]
mod tests;
