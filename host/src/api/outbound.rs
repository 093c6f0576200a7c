//! Where algorithms may send HTTP requests: `/v1/outbound` and
//! `/v1/algorithms/{owner}/{name}/outbound`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The origins one algorithm (`owner/name`, or `owner/*`) may send HTTP
/// requests to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutboundGrant {
    /// `owner/name` or `owner/*`.
    pub algorithm: String,
    /// Allowed origins, e.g. `https://api.example.com`,
    /// `https://*.example.com`, `http://127.0.0.1:8080`.
    pub origins: Vec<String>,
}

/// `GET /v1/outbound`: every grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutboundList {
    /// The grants, by algorithm.
    pub grants: Vec<OutboundGrant>,
}

/// An origin to allow (`POST .../outbound`) or deny again
/// (`POST .../outbound/revoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutboundOrigin {
    /// `http(s)://host` or `http(s)://host:port`; `https://*.example.com`
    /// for the subdomains of a domain.
    pub origin: String,
}
