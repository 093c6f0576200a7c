//! The CLI's typed client of the admin API: one method per operation, taking
//! and returning the API's types ([`crate::api`]). It finds the router from
//! the configuration's state directory (address and token files), or at
//! `--url` (another machine) with `--token`.

use std::path::Path;

use anyhow::Context;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::admin::auth;
use crate::api::{self, Deleted, DeletedWithFlows};

/// A client of one running router.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the router at `url` (`http://host:port`) with `token`.
    pub fn new(url: &str, token: String) -> anyhow::Result<Self> {
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .context("cannot build an HTTP client")?,
        })
    }

    /// The address of the router whose state directory is `state_dir`.
    pub fn address_in(state_dir: &Path) -> anyhow::Result<String> {
        let addr_file = state_dir.join(auth::ADDR_FILE);
        let addr = std::fs::read_to_string(&addr_file).with_context(|| {
            format!(
                "no running router found: {} does not exist (start one with `eventflow run`, or pass --url)",
                addr_file.display()
            )
        })?;
        Ok(format!("http://{}", addr.trim()))
    }

    /// The admin token in `state_dir`.
    pub fn admin_token_in(state_dir: &Path) -> anyhow::Result<String> {
        auth::read_token(state_dir)
    }

    /// The admin API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    // ----- state -----

    /// `GET /v1/state`.
    pub async fn state(&self) -> anyhow::Result<api::StateView> {
        self.call(Method::GET, "/v1/state", None::<&()>).await
    }

    /// `PUT /v1/state`.
    pub async fn apply(
        &self,
        declarations: &crate::config::Declarations,
    ) -> anyhow::Result<api::Applied> {
        self.call(Method::PUT, "/v1/state", Some(declarations))
            .await
    }

    // ----- brokers -----

    /// `GET /v1/brokers`.
    pub async fn brokers(&self) -> anyhow::Result<Vec<api::Broker>> {
        let list: api::BrokerList = self.call(Method::GET, "/v1/brokers", None::<&()>).await?;
        Ok(list.brokers)
    }

    /// `GET /v1/brokers/{broker}`.
    pub async fn broker(&self, name: &str) -> anyhow::Result<api::Broker> {
        self.call(Method::GET, &format!("/v1/brokers/{name}"), None::<&()>)
            .await
    }

    /// `POST /v1/brokers`.
    pub async fn create_broker(&self, spec: &api::NewBroker) -> anyhow::Result<api::Broker> {
        self.call(Method::POST, "/v1/brokers", Some(spec)).await
    }

    /// `DELETE /v1/brokers/{broker}`.
    pub async fn delete_broker(&self, name: &str, force: bool) -> anyhow::Result<DeletedWithFlows> {
        self.call(
            Method::DELETE,
            &format!("/v1/brokers/{name}?force={force}"),
            None::<&()>,
        )
        .await
    }

    // ----- topics -----

    /// `GET /v1/brokers/{broker}/topics`.
    pub async fn topics(&self, broker: &str) -> anyhow::Result<api::TopicListing> {
        self.call(
            Method::GET,
            &format!("/v1/brokers/{broker}/topics"),
            None::<&()>,
        )
        .await
    }

    /// `PUT /v1/brokers/{broker}/topics/{topic}`.
    pub async fn declare_topic(
        &self,
        broker: &str,
        topic: &str,
        spec: &api::DeclareTopic,
    ) -> anyhow::Result<api::Topic> {
        self.call(
            Method::PUT,
            &format!("/v1/brokers/{broker}/topics/{topic}"),
            Some(spec),
        )
        .await
    }

    /// `POST .../grants` (`add`) or `.../grants/revoke`.
    pub async fn grant(
        &self,
        broker: &str,
        topic: &str,
        grant: &api::Grant,
        add: bool,
    ) -> anyhow::Result<api::Topic> {
        let action = if add { "grants" } else { "grants/revoke" };
        self.call(
            Method::POST,
            &format!("/v1/brokers/{broker}/topics/{topic}/{action}"),
            Some(grant),
        )
        .await
    }

    /// `DELETE /v1/brokers/{broker}/topics/{topic}`.
    pub async fn delete_topic(
        &self,
        broker: &str,
        topic: &str,
        force: bool,
    ) -> anyhow::Result<DeletedWithFlows> {
        self.call(
            Method::DELETE,
            &format!("/v1/brokers/{broker}/topics/{topic}?force={force}"),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/brokers/{broker}/topics/{topic}/messages`.
    pub async fn peek(
        &self,
        broker: &str,
        topic: &str,
        limit: usize,
    ) -> anyhow::Result<api::Peeked> {
        self.call(
            Method::GET,
            &format!("/v1/brokers/{broker}/topics/{topic}/messages?limit={limit}"),
            None::<&()>,
        )
        .await
    }

    // ----- flows -----

    /// `GET /v1/flows`.
    pub async fn flows(&self) -> anyhow::Result<Vec<api::FlowEntry>> {
        let list: api::FlowList = self.call(Method::GET, "/v1/flows", None::<&()>).await?;
        Ok(list.flows)
    }

    /// `GET /v1/flows/{flow}`.
    pub async fn flow(&self, name: &str) -> anyhow::Result<api::FlowDetail> {
        self.call(Method::GET, &format!("/v1/flows/{name}"), None::<&()>)
            .await
    }

    /// `GET /v1/algorithms/{owner}/{name}/topics`.
    pub async fn algorithm_topics(&self, algorithm: &str) -> anyhow::Result<api::AlgorithmTopics> {
        self.call(
            Method::GET,
            &format!("/v1/algorithms/{algorithm}/topics"),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/flows`.
    pub async fn enable_flow(&self, req: &api::EnableFlow) -> anyhow::Result<api::FlowChanged> {
        self.call(Method::POST, "/v1/flows", Some(req)).await
    }

    /// `PATCH /v1/flows/{flow}`.
    pub async fn edit_flow(
        &self,
        name: &str,
        edit: &api::EditFlow,
    ) -> anyhow::Result<api::FlowChanged> {
        self.call(Method::PATCH, &format!("/v1/flows/{name}"), Some(edit))
            .await
    }

    /// `DELETE /v1/flows/{flow}`.
    pub async fn delete_flow(&self, name: &str) -> anyhow::Result<Deleted> {
        self.call(Method::DELETE, &format!("/v1/flows/{name}"), None::<&()>)
            .await
    }

    /// `POST /v1/flows/{flow}/promote` or `/rollback` (`action`).
    pub async fn end_canary(
        &self,
        name: &str,
        action: &str,
    ) -> anyhow::Result<api::RolloutChanged> {
        self.call(
            Method::POST,
            &format!("/v1/flows/{name}/{action}"),
            None::<&()>,
        )
        .await
    }

    // ----- dead letters and messages -----

    /// `GET /v1/flows/{flow}/dead-letters`.
    pub async fn dead_letters(
        &self,
        flow: &str,
        limit: usize,
    ) -> anyhow::Result<api::DeadLetterList> {
        self.call(
            Method::GET,
            &format!("/v1/flows/{flow}/dead-letters?limit={limit}"),
            None::<&()>,
        )
        .await
    }

    /// `POST /v1/flows/{flow}/dead-letters/replay`.
    pub async fn replay(
        &self,
        flow: &str,
        req: &api::ReplayDeadLetters,
    ) -> anyhow::Result<api::ReplayReport> {
        self.call(
            Method::POST,
            &format!("/v1/flows/{flow}/dead-letters/replay"),
            Some(req),
        )
        .await
    }

    /// `GET /v1/flows/{flow}/keys`.
    pub async fn parked_keys(&self, flow: &str) -> anyhow::Result<api::ParkedKeyList> {
        let path = format!("/v1/flows/{flow}/keys");
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `POST /v1/flows/{flow}/keys/release`.
    pub async fn release_keys(
        &self,
        flow: &str,
        which: &api::KeySelection,
    ) -> anyhow::Result<api::KeysChanged> {
        self.change_keys(flow, "release", which).await
    }

    /// `POST /v1/flows/{flow}/keys/drop`.
    pub async fn drop_keys(
        &self,
        flow: &str,
        which: &api::KeySelection,
    ) -> anyhow::Result<api::KeysChanged> {
        self.change_keys(flow, "drop", which).await
    }

    /// `POST /v1/flows/{flow}/keys/{change}` (`release` or `drop`).
    async fn change_keys(
        &self,
        flow: &str,
        change: &str,
        which: &api::KeySelection,
    ) -> anyhow::Result<api::KeysChanged> {
        let path = format!("/v1/flows/{flow}/keys/{change}");
        self.call(Method::POST, &path, Some(which)).await
    }

    /// `POST /v1/messages`.
    pub async fn send(&self, req: &api::SendMessages) -> anyhow::Result<api::Published> {
        self.call(Method::POST, "/v1/messages", Some(req)).await
    }

    // ----- secrets, tokens, plugins, readiness -----

    /// `GET /v1/algorithms/{owner}/{name}/secrets`.
    pub async fn secrets(&self, algorithm: &str) -> anyhow::Result<api::SecretNames> {
        self.call(
            Method::GET,
            &format!("/v1/algorithms/{algorithm}/secrets"),
            None::<&()>,
        )
        .await
    }

    /// `PUT /v1/algorithms/{owner}/{name}/secrets/{key}`.
    pub async fn set_secret(
        &self,
        algorithm: &str,
        key: &str,
        value: String,
    ) -> anyhow::Result<api::SecretSet> {
        self.call(
            Method::PUT,
            &format!("/v1/algorithms/{algorithm}/secrets/{key}"),
            Some(&api::SecretValue { value }),
        )
        .await
    }

    /// `DELETE /v1/algorithms/{owner}/{name}/secrets/{key}`.
    pub async fn delete_secret(&self, algorithm: &str, key: &str) -> anyhow::Result<Deleted> {
        self.call(
            Method::DELETE,
            &format!("/v1/algorithms/{algorithm}/secrets/{key}"),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/outbound`.
    pub async fn outbound(&self) -> anyhow::Result<Vec<api::OutboundGrant>> {
        let list: api::OutboundList = self.call(Method::GET, "/v1/outbound", None::<&()>).await?;
        Ok(list.grants)
    }

    /// `POST /v1/algorithms/{owner}/{name}/outbound` (`add`) or
    /// `.../outbound/revoke`.
    pub async fn change_outbound(
        &self,
        algorithm: &str,
        origin: &str,
        add: bool,
    ) -> anyhow::Result<api::OutboundGrant> {
        let action = if add { "outbound" } else { "outbound/revoke" };
        let body = api::OutboundOrigin {
            origin: origin.to_string(),
        };
        self.call(
            Method::POST,
            &format!("/v1/algorithms/{algorithm}/{action}"),
            Some(&body),
        )
        .await
    }

    /// `GET /v1/tokens`.
    pub async fn tokens(&self) -> anyhow::Result<Vec<api::Token>> {
        let list: api::TokenList = self.call(Method::GET, "/v1/tokens", None::<&()>).await?;
        Ok(list.tokens)
    }

    /// `POST /v1/tokens`.
    pub async fn create_token(&self, owner: &str) -> anyhow::Result<api::TokenCreated> {
        let req = api::NewToken {
            owner: owner.to_string(),
        };
        self.call(Method::POST, "/v1/tokens", Some(&req)).await
    }

    /// `DELETE /v1/tokens/{id}`.
    pub async fn delete_token(&self, id: &str) -> anyhow::Result<Deleted> {
        self.call(Method::DELETE, &format!("/v1/tokens/{id}"), None::<&()>)
            .await
    }

    /// `GET /v1/plugins`.
    pub async fn plugins(&self) -> anyhow::Result<Vec<api::Plugin>> {
        let list: api::PluginList = self.call(Method::GET, "/v1/plugins", None::<&()>).await?;
        Ok(list.plugins)
    }

    /// `GET /readyz` (open), whatever its status.
    pub async fn readiness(&self) -> anyhow::Result<api::status::Readiness> {
        let response = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the router at {} ({e})", self.base))?;
        Ok(response.json().await?)
    }

    // ----- transport -----

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
            url.path().ends_with(route),
            "{} is not a valid path",
            crate::config::quote_name(path)
        );
        Ok(url)
    }

    /// Calls the API and reads its answer; an error answer becomes its
    /// message and status.
    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let mut request = self.http.request(method, self.url(path)?);
        if let Some(body) = body {
            request = request.json(body);
        }
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
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("cannot read the router's answer ({status})"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<api::ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| "no detail".into());
            anyhow::bail!("{message} ({status})");
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the router answered {status} with an unexpected body"))
    }
}
