//! `[data]`: where the data collections are kept. Parsing is inert;
//! [`DataConfig::open`] resolves the credentials and builds the backend.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;

use super::Collections;
use super::object::ObjectCollections;
use crate::secret::SecretRef;
use crate::state::StateStore;

/// Where data collections are stored, and the credentials of a bucket.
/// Credentials are references (`{ env = .. }`, `{ file = .. }`,
/// `{ secret = .. }`); without them the default chain of the cloud is used.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `"local"` (the default): files under `[router] data_dir`. Or an
    /// object-store URL, `s3://bucket/prefix`, `az://container/prefix` or
    /// `gs://bucket/prefix`: `data://owner/collection/path` is then the
    /// object `<prefix>/owner/collection/path`.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// S3: the region. By default `AWS_REGION`, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// S3 or Azure: another endpoint than the cloud's (an S3-compatible
    /// server, Azurite). `http://` is allowed for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// S3: the access key id; with `secret_access_key`. Without both, the
    /// default chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, web
    /// identity, the container's or the instance's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<SecretRef>,
    /// S3: the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretRef>,
    /// S3: a session token, for temporary credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<SecretRef>,
    /// Azure: the storage account. By default `AZURE_STORAGE_ACCOUNT_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Azure: the account's access key. Without it, the default chain
    /// (`AZURE_STORAGE_*` variables, workload or managed identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key: Option<SecretRef>,
    /// How long one request to the bucket may take, in seconds; a data call
    /// of an algorithm is also bounded by its host-call timeout.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

fn default_backend() -> String {
    "local".into()
}
const fn default_request_timeout_secs() -> u64 {
    30
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            region: None,
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            account: None,
            access_key: None,
            request_timeout_secs: default_request_timeout_secs(),
        }
    }
}

/// A parsed `backend`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The data directory.
    Local,
    /// A bucket: the URL's scheme (`s3`, `az`, `gs`), its bucket or
    /// container, and the prefix (`/`-separated, may be empty).
    Object {
        /// `s3`, `az` or `gs`.
        scheme: String,
        /// The bucket (or Azure container).
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
}

impl DataConfig {
    /// `backend = "local"`: the directory of `[router]`, no bucket.
    pub fn is_local(&self) -> bool {
        self.backend == "local"
    }

    /// The backend `backend` names, or the field and what is wrong.
    pub fn parsed(&self) -> Result<Backend, (String, String)> {
        let bad = |m: String| Err(("backend".to_string(), m));
        if self.is_local() {
            return Ok(Backend::Local);
        }
        let Some((scheme, rest)) = self.backend.split_once("://") else {
            return bad(format!(
                "{:?} is neither \"local\" nor an s3://, az:// or gs:// URL",
                self.backend
            ));
        };
        if !matches!(scheme, "s3" | "az" | "gs") {
            return bad(format!(
                "unsupported scheme {scheme:?}: use s3://, az:// or gs://"
            ));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad(format!("{bucket:?} is not a bucket name"));
        }
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if !prefix.is_empty() {
            if let Some(s) = prefix
                .split('/')
                .find(|s| s.is_empty() || *s == "." || *s == "..")
            {
                return bad(format!("the prefix has a {s:?} segment"));
            }
            object_store::path::Path::parse(prefix)
                .map_err(|e| ("backend".into(), e.to_string()))?;
        }
        Ok(Backend::Object {
            scheme: scheme.into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    /// Checks what serde cannot; the field is relative to `[data]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let scheme = match self.parsed()? {
            Backend::Local => "local".to_string(),
            Backend::Object { scheme, .. } => scheme,
        };
        let only = |field: &str, set: bool, schemes: &[&str]| {
            if set && !schemes.contains(&scheme.as_str()) {
                let list: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
                return Err((
                    field.to_string(),
                    format!("applies to {} backends only", list.join(" and ")),
                ));
            }
            Ok(())
        };
        only("region", self.region.is_some(), &["s3"])?;
        only("endpoint_url", self.endpoint_url.is_some(), &["s3", "az"])?;
        only("access_key_id", self.access_key_id.is_some(), &["s3"])?;
        only(
            "secret_access_key",
            self.secret_access_key.is_some(),
            &["s3"],
        )?;
        only("session_token", self.session_token.is_some(), &["s3"])?;
        only("account", self.account.is_some(), &["az"])?;
        only("access_key", self.access_key.is_some(), &["az"])?;
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err((
                "secret_access_key".into(),
                "access_key_id and secret_access_key go together".into(),
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(("request_timeout_secs".into(), "must be at least 1".into()));
        }
        Ok(())
    }

    /// Builds the collections: the data directory `data_dir` for the local
    /// backend, else a client of the bucket. Resolves credentials (router
    /// secrets need `state`); sends nothing to the bucket yet.
    pub fn open(&self, data_dir: &Path, state: Option<&StateStore>) -> anyhow::Result<Collections> {
        let Some((store, prefix)) = self.bucket("data", state)? else {
            return Collections::open(data_dir)
                .with_context(|| format!("cannot open the data directory {}", data_dir.display()));
        };
        let store = ObjectCollections::new(store, &prefix, &self.backend);
        Ok(Collections::new(store, self.backend.clone()))
    }

    /// A client of the bucket and the prefix, or `None` for `"local"`.
    /// `section` (`data`, `plugins`) names this table in errors. Resolves
    /// credentials (router secrets need `state`); sends nothing yet.
    pub fn bucket(
        &self,
        section: &str,
        state: Option<&StateStore>,
    ) -> anyhow::Result<Option<(Box<dyn object_store::ObjectStore>, String)>> {
        let parsed = self
            .parsed()
            .map_err(|(f, m)| anyhow::anyhow!("{section}.{f}: {m}"))?;
        let Backend::Object {
            scheme,
            bucket,
            prefix,
        } = parsed
        else {
            return Ok(None);
        };
        let options = object_store::ClientOptions::new()
            .with_timeout(Duration::from_secs(self.request_timeout_secs))
            .with_allow_http(
                self.endpoint_url
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            );
        let retry = object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(self.request_timeout_secs),
            ..Default::default()
        };
        let store: Box<dyn object_store::ObjectStore> = match scheme.as_str() {
            "s3" => Box::new(
                self.s3(section, &bucket, state)?
                    .with_client_options(options)
                    .with_retry(retry)
                    .build()?,
            ),
            "az" => Box::new(
                self.azure(section, &bucket, state)?
                    .with_client_options(options)
                    .with_retry(retry)
                    .build()?,
            ),
            _ => Box::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket)
                    .with_client_options(options)
                    .with_retry(retry)
                    .build()?,
            ),
        };
        Ok(Some((store, prefix)))
    }

    fn s3(
        &self,
        section: &str,
        bucket: &str,
        state: Option<&StateStore>,
    ) -> anyhow::Result<AmazonS3Builder> {
        let resolve = |field, r| resolve(section, field, r, state);
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(region) = &self.region {
            b = b.with_region(region);
        }
        if let Some(endpoint) = &self.endpoint_url {
            b = b.with_endpoint(endpoint);
        }
        if let (Some(id), Some(key)) = (
            resolve("access_key_id", &self.access_key_id)?,
            resolve("secret_access_key", &self.secret_access_key)?,
        ) {
            b = b.with_access_key_id(id).with_secret_access_key(key);
        }
        if let Some(token) = resolve("session_token", &self.session_token)? {
            b = b.with_token(token);
        }
        Ok(b)
    }

    fn azure(
        &self,
        section: &str,
        container: &str,
        state: Option<&StateStore>,
    ) -> anyhow::Result<MicrosoftAzureBuilder> {
        let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container);
        if let Some(account) = &self.account {
            b = b.with_account(account);
        }
        if let Some(endpoint) = &self.endpoint_url {
            b = b.with_endpoint(endpoint.clone());
        }
        if let Some(key) = resolve(section, "access_key", &self.access_key, state)? {
            b = b.with_access_key(key);
        }
        Ok(b)
    }
}

/// Reads the credential `[section] field` refers to, if it is set.
fn resolve(
    section: &str,
    field: &str,
    r: &Option<SecretRef>,
    state: Option<&StateStore>,
) -> anyhow::Result<Option<String>> {
    let Some(r) = r else { return Ok(None) };
    let secret = r.resolve(state).with_context(|| {
        if state.is_none() && matches!(r, SecretRef::Secret(_)) {
            format!("{section}.{field}: a {{ secret = .. }} is read by the router only; outside it use {{ env = .. }} or {{ file = .. }} credentials")
        } else {
            format!("{section}.{field}")
        }
    })?;
    Ok(Some(secret.expose().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(data: &str) -> String {
        crate::config::parse("eventflow.toml", &format!("[data]\n{data}\n"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn backends_parse() {
        let parsed = |backend: &str| {
            DataConfig {
                backend: backend.into(),
                ..DataConfig::default()
            }
            .parsed()
        };
        assert_eq!(parsed("local"), Ok(Backend::Local));
        assert_eq!(
            parsed("s3://b/fleet/data/"),
            Ok(Backend::Object {
                scheme: "s3".into(),
                bucket: "b".into(),
                prefix: "fleet/data".into()
            })
        );
        assert_eq!(
            parsed("az://c"),
            Ok(Backend::Object {
                scheme: "az".into(),
                bucket: "c".into(),
                prefix: String::new()
            })
        );
        let config = crate::config::parse("f.toml", "").unwrap();
        assert_eq!(config.data, DataConfig::default());
    }

    #[test]
    fn mistakes_name_the_file_and_field() {
        for (data, field, says) in [
            ("backend = \"/srv/data\"", "data.backend", "neither"),
            (
                "backend = \"ftp://x/y\"",
                "data.backend",
                "unsupported scheme",
            ),
            ("backend = \"s3://\"", "data.backend", "not a bucket name"),
            ("backend = \"s3://b/a/../c\"", "data.backend", "\"..\""),
            ("backend = \"s3://b//c\"", "data.backend", "\"\""),
            (
                "region = \"us-east-1\"",
                "data.region",
                "s3:// backends only",
            ),
            (
                "backend = \"s3://b\"\naccess_key_id = { env = \"K\" }",
                "data.secret_access_key",
                "go together",
            ),
            (
                "backend = \"s3://b\"\naccess_key_id = { value = \"AKIA\" }\nsecret_access_key = { env = \"S\" }",
                "data.access_key_id",
                "inline",
            ),
            (
                "backend = \"az://c\"\naccess_key = { secret = \"a/b\" }",
                "data.access_key.secret",
                "",
            ),
            ("buckets = \"x\"", "data", "unknown field"),
        ] {
            let e = error(data);
            assert!(
                e.starts_with(&format!("eventflow.toml: {field}")),
                "{data}: {e}"
            );
            assert!(e.contains(says), "{data}: {e}");
        }
    }

    /// `[plugins]` takes the fields of `[data]`, checked the same way, but
    /// no router secret: the bucket is read before the state store opens.
    #[test]
    fn a_plugin_bucket_is_checked_like_data_and_takes_no_router_secret() {
        let parse = |text: &str| crate::config::parse("eventflow.toml", text);
        let good = parse(
            "[plugins]\nbackend = \"s3://b/plugins\"\nregion = \"eu-west-1\"\naccess_key_id = { env = \"ID\" }\nsecret_access_key = { file = \"/k\" }\n",
        );
        assert_eq!(good.unwrap().plugins.backend, "s3://b/plugins");
        for (text, field, says) in [
            (
                "[plugins]\nbackend = \"ftp://b\"",
                "plugins.backend",
                "unsupported scheme",
            ),
            (
                "[plugins]\nbackend = \"local\"\nregion = \"x\"",
                "plugins.region",
                "s3:// backends only",
            ),
            (
                "[plugins]\nbackend = \"s3://b\"\naccess_key_id = { secret = \"id\" }\nsecret_access_key = { secret = \"k\" }",
                "plugins.access_key_id",
                "before the router's secrets are open",
            ),
            (
                "[router]\nplugins_poll_secs = -1",
                "router.plugins_poll_secs",
                "between 0.1 and 86400",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("eventflow.toml: {field}")),
                "{text}: {e}"
            );
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn a_router_secret_is_not_read_by_the_cli() {
        let config = DataConfig {
            backend: "s3://b".into(),
            access_key_id: Some(SecretRef::Secret("id".into())),
            secret_access_key: Some(SecretRef::Secret("key".into())),
            ..DataConfig::default()
        };
        let e = config.open(Path::new("unused"), None).err().unwrap();
        assert!(
            format!("{e:#}")
                .contains("data.access_key_id: a { secret = .. } is read by the router only"),
            "{e:#}"
        );
    }
}
