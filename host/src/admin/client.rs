//! The CLI's side of the admin API: finds the running router from the
//! configuration's state directory (address and token files).

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

use super::auth;

/// A client of one running router.
pub struct AdminClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// Finds the router whose state directory is `state_dir`.
    pub fn for_state_dir(state_dir: &Path) -> anyhow::Result<Self> {
        Self::find(state_dir, true)
    }

    /// Finds the router whose state directory is `state_dir`, to call it
    /// with `token` (the admin token file is not read).
    pub fn with_token_for(state_dir: &Path, token: String) -> anyhow::Result<Self> {
        Ok(Self::find(state_dir, false)?.with_token(token))
    }

    /// Finds the router; reads the admin token only if `admin`.
    fn find(state_dir: &Path, admin: bool) -> anyhow::Result<Self> {
        let addr_file = state_dir.join(auth::ADDR_FILE);
        let addr = std::fs::read_to_string(&addr_file).with_context(|| {
            format!(
                "no running router found: {} does not exist (start one with `eventflow run`)",
                addr_file.display()
            )
        })?;
        Ok(Self {
            base: format!("http://{}", addr.trim()),
            token: if admin {
                auth::read_token(state_dir)?
            } else {
                String::new()
            },
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("cannot build an HTTP client")?,
        })
    }

    /// Uses `token` instead of the admin token.
    pub fn with_token(self, token: String) -> Self {
        Self { token, ..self }
    }

    /// The admin API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs a path under the API and returns its JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.http.get(self.url(path)?)).await
    }

    /// GETs an unauthenticated path (`/readyz`) and returns its JSON whatever
    /// the status.
    pub async fn get_open(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the router at {} ({e})", self.base))?;
        Ok(response.json().await?)
    }

    /// POSTs JSON to a path under the API and returns its JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(self.http.post(self.url(path)?).json(body)).await
    }

    /// DELETEs a path under the API and returns its JSON.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(self.http.delete(self.url(path)?)).await
    }

    /// PATCHes JSON to a path under the API and returns its JSON.
    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(self.http.patch(self.url(path)?).json(body)).await
    }

    /// PUTs JSON to a path under the API and returns its JSON.
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(self.http.put(self.url(path)?).json(body)).await
    }

    /// The URL of `path`, refused when a name in it is not a valid name.
    /// Names come from the command line: `secrets set ezra/../../test/x`
    /// would otherwise be resolved by URL parsing into another algorithm's
    /// path, and `a?b` or `a#b` would cut the path short.
    fn url(&self, path: &str) -> anyhow::Result<reqwest::Url> {
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        if let Some(bad) = route
            .split('/')
            .skip(1)
            .find(|segment| !crate::config::is_valid_name(segment))
        {
            anyhow::bail!(
                "{}",
                crate::config::check_name(bad)
                    .err()
                    .unwrap_or_else(|| format!("{path:?} is not a valid path"))
            );
        }
        if !query
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'&' | b'_' | b'-' | b'.'))
        {
            anyhow::bail!(
                "{} holds a name that is not a valid name: use letters, digits, '_', '-' and '.'",
                crate::config::quote_name(path)
            );
        }
        let url = reqwest::Url::parse(&format!("{}{path}", self.base))
            .with_context(|| format!("{path:?} is not a valid path"))?;
        anyhow::ensure!(
            url.path() == route,
            "{} is not a valid path",
            crate::config::quote_name(path)
        );
        Ok(url)
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach the router at {} ({e}); is `eventflow run` running with this configuration?",
                    self.base
                )
            })?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("the router answered {status} without JSON"))?;
        if !status.is_success() {
            let message = body
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("no detail");
            anyhow::bail!("{message} ({status})");
        }
        Ok(body)
    }
}
