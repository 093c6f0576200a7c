//! Credentials in configuration: never inline, always a reference to where
//! the value lives, resolved only when a connection is opened. A resolved
//! [`Secret`] prints as `***`.
//!
//! Secrets kept in the state store are sealed there, with
//! [`crate::state::key::SecretKey`].

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::state::StateStore;

/// Where a credential comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretRef {
    /// An environment variable of the router process: `{ env = "VAR" }`.
    Env(String),
    /// A file's contents, trailing newline removed: `{ file = "/run/secrets/x" }`.
    File(PathBuf),
    /// A router secret in the state store, set through the admin API:
    /// `{ secret = "name" }`.
    Secret(String),
    /// An inline value. Refused in configuration files; the admin API
    /// accepts it when a connection is created and stores it as a router
    /// secret, so it is never kept inline.
    Value(String),
}

/// The state-store namespace of router (not algorithm) secrets.
pub const ROUTER_SECRETS: &str = "_router";

impl SecretRef {
    /// Reads the value.
    pub fn resolve(&self, state: Option<&StateStore>) -> anyhow::Result<Secret> {
        let value = match self {
            SecretRef::Env(var) => std::env::var(var)
                .with_context(|| format!("environment variable {var} is not set"))?,
            SecretRef::File(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read secret file {}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            SecretRef::Value(v) => v.clone(),
            SecretRef::Secret(name) => {
                let state = state.context("router secrets need the state store")?;
                state
                    .all_secrets()?
                    .into_iter()
                    .find(|(scope, n, _)| scope == ROUTER_SECRETS && n == name)
                    .map(|(_, _, v)| v)
                    .with_context(|| format!("router secret {name:?} is not set"))?
            }
        };
        Ok(Secret(value))
    }
}

/// A credential's value. Shows as `***` in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// `Endpoint=...;SharedAccessKeyName=...;SharedAccessKey=...` with every
/// key's value shown as `***`: for showing Azure connection strings.
pub fn redact_connection_string(s: &str) -> String {
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|part| match part.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("SharedAccessKey") => format!("{k}=***"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn connection_strings_are_redacted() {
        let c = "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=abc=";
        assert_eq!(
            redact_connection_string(c),
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey=***"
        );
    }

    #[test]
    fn env_and_file_references_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "from-file\n").unwrap();
        assert_eq!(
            SecretRef::File(f).resolve(None).unwrap().expose(),
            "from-file"
        );
        assert!(
            SecretRef::Env("EVENTFLOW_SURELY_UNSET_VAR".into())
                .resolve(None)
                .is_err()
        );
    }
}
