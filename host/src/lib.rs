//! Eventflow: an event router for WebAssembly algorithms.
//!
//! A message's path through the crate, module by module:
//!
//! - [`config`]: the TOML configuration, strict and inert, one file per
//!   part (settings, flows, limits, names); [`config::validate`] checks its
//!   cross-references; errors name the file and field.
//! - [`connector`]: broker connections, one folder per broker with the same
//!   files; a `Source` delivers messages with settle handles, a `Connection`
//!   publishes. [`connector::topic`] holds the topics and their grants;
//!   [`connector::embedded`] is the durable default broker.
//! - [`flow`]: one loop per event flow (connect, receive, drain), pulling
//!   as many messages as it has free slots; [`flow::worker`] invokes,
//!   publishes effects (`flow::effects`), then acks, retries with backoff
//!   ([`flow::retry`]) or dead-letters in an envelope ([`flow::envelope`],
//!   `flow::dead_letter`); what happens to each message is logged, counted
//!   and put in the flow's status in one call of `flow::events`.
//! - [`sandbox`]: the wasmtime engine and instance pool (`engine`), loading
//!   and the compiled-code cache (`load`), a fresh instance per message
//!   (`invoke`), limits and failure reasons (`failure`).
//! - [`registry`] and [`watcher`]: the algorithm versions in the plugin
//!   directory, reloaded as files change; [`mirror`] keeps that directory
//!   in step with a plugin bucket (`[plugins]`).
//! - [`data`]: `data://owner/collection/path` storage, confined to its
//!   collection: the URI checks (`data::uri`), then a directory
//!   ([`data::local`]) or a bucket ([`data::object`]), as `[data]`
//!   ([`data::config`]) says.
//! - [`state`]: the router's own durable state, one file per table (failure
//!   journal, secrets sealed with [`state::key`], desired state, API tokens
//!   minted and stored by [`state::token`]) plus how its redb files are
//!   opened.
//! - [`router`]: wires the above together and converges to a configuration.
//! - [`control`]: the control plane, one file a resource (brokers, topics
//!   and grants, flows, dead letters, messages, secrets, tokens), validated
//!   and persisted; the one place that decides what a caller may do.
//! - [`api`]: the admin API's contract, the request and response types of
//!   every resource; the OpenAPI document is generated from them.
//! - [`admin`]: the authenticated HTTP API the CLI talks to, plus metrics
//!   and health endpoints; [`metrics`] defines what is counted.
//! - [`cli`], [`run`], [`telemetry`]: the `eventflow` command.
//! - [`author`]: the algorithm author's loop behind `eventflow new`,
//!   `build`, `invoke` (one message through the sandbox, no router) and
//!   `deploy`.
//! - [`secret`]: credentials by reference, redacted when shown.
//! - [`message`], [`util`]: shared types and helpers.

pub mod admin;
pub mod api;
pub mod author;
pub mod cli;
pub mod config;
pub mod connector;
pub mod control;
pub mod data;
pub mod flow;
pub mod message;
pub mod metrics;
pub mod mirror;
pub mod registry;
pub mod router;
pub mod run;
pub mod sandbox;
pub mod secret;
pub mod state;
pub mod telemetry;
pub mod util;
pub mod watcher;
