//! The OpenAPI document of the admin API, served at [`PATH`]. Generated: the
//! schemas from the API's types ([`crate::api`]), the operations from each
//! handler's `#[utoipa::path]`. [`routes`] is the one list of the API's
//! routes: the router serves exactly the operations the document lists.

use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{
    AppState, brokers, dead_letters, flows, keys, messages, outbound, secrets, state, tokens,
    topics,
};

/// Where the document is served (open, like `/healthz`).
pub const PATH: &str = "/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Eventflow admin API",
        version = "1.0.0",
        description = "Broker connections, topics and access lists, flows, secrets, tokens and messages of one Eventflow router. Authenticate with `Authorization: Bearer <token>`. Errors are `{\"error\": \"...\"}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The `bearer` security scheme every operation names.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// Every route of the API with its handler and its entry in the document.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(state::get_state, state::put_state))
        .routes(routes!(brokers::list_brokers, brokers::create_broker))
        .routes(routes!(brokers::show_broker, brokers::delete_broker))
        .routes(routes!(topics::list_topics))
        .routes(routes!(topics::declare_topic, topics::delete_topic))
        .routes(routes!(topics::add_grant))
        .routes(routes!(topics::revoke_grant))
        .routes(routes!(messages::peek_topic))
        .routes(routes!(flows::algorithm_topics))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(secrets::set_secret, secrets::delete_secret))
        .routes(routes!(flows::list_flows, flows::enable_flow))
        .routes(routes!(
            flows::show_flow,
            flows::edit_flow,
            flows::delete_flow
        ))
        .routes(routes!(flows::promote_flow))
        .routes(routes!(flows::rollback_flow))
        .routes(routes!(keys::list_keys))
        .routes(routes!(keys::release_keys))
        .routes(routes!(keys::drop_keys))
        .routes(routes!(dead_letters::list_dead_letters))
        .routes(routes!(dead_letters::replay_dead_letters))
        .routes(routes!(messages::send_message))
        .routes(routes!(flows::list_plugins))
        .routes(routes!(tokens::list_tokens, tokens::create_token))
        .routes(routes!(tokens::delete_token))
        .routes(routes!(tokens::whoami))
        .routes(routes!(outbound::list_outbound))
        .routes(routes!(outbound::allow_outbound))
        .routes(routes!(outbound::deny_outbound))
}

/// The document, as served.
#[cfg(test)]
fn spec() -> serde_json::Value {
    serde_json::to_value(routes().split_for_parts().1).expect("the document is JSON")
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    /// The API's operations, as the README and the CLI know them.
    const OPERATIONS: &[(&str, &str)] = &[
        ("get", "/v1/state"),
        ("put", "/v1/state"),
        ("get", "/v1/brokers"),
        ("post", "/v1/brokers"),
        ("get", "/v1/brokers/{broker}"),
        ("delete", "/v1/brokers/{broker}"),
        ("get", "/v1/brokers/{broker}/topics"),
        ("put", "/v1/brokers/{broker}/topics/{topic}"),
        ("delete", "/v1/brokers/{broker}/topics/{topic}"),
        ("post", "/v1/brokers/{broker}/topics/{topic}/grants"),
        ("post", "/v1/brokers/{broker}/topics/{topic}/grants/revoke"),
        ("get", "/v1/brokers/{broker}/topics/{topic}/messages"),
        ("get", "/v1/algorithms/{owner}/{name}/topics"),
        ("get", "/v1/algorithms/{owner}/{name}/secrets"),
        ("put", "/v1/algorithms/{owner}/{name}/secrets/{key}"),
        ("delete", "/v1/algorithms/{owner}/{name}/secrets/{key}"),
        ("get", "/v1/flows"),
        ("post", "/v1/flows"),
        ("get", "/v1/flows/{flow}"),
        ("patch", "/v1/flows/{flow}"),
        ("delete", "/v1/flows/{flow}"),
        ("post", "/v1/flows/{flow}/promote"),
        ("post", "/v1/flows/{flow}/rollback"),
        ("get", "/v1/flows/{flow}/dead-letters"),
        ("post", "/v1/flows/{flow}/dead-letters/replay"),
        ("get", "/v1/flows/{flow}/keys"),
        ("post", "/v1/flows/{flow}/keys/release"),
        ("post", "/v1/flows/{flow}/keys/drop"),
        ("post", "/v1/messages"),
        ("get", "/v1/outbound"),
        ("post", "/v1/algorithms/{owner}/{name}/outbound"),
        ("post", "/v1/algorithms/{owner}/{name}/outbound/revoke"),
        ("get", "/v1/plugins"),
        ("get", "/v1/tokens"),
        ("post", "/v1/tokens"),
        ("delete", "/v1/tokens/{id}"),
        ("get", "/v1/whoami"),
    ];

    fn operations(spec: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.push((method.clone(), path.clone()));
            }
        }
        out.sort();
        out
    }

    /// The router serves what `routes` lists, and the document is made from
    /// the same list: every operation is there, and no other.
    #[test]
    fn every_route_is_in_the_document() {
        let spec = super::spec();
        let mut expected: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        expected.sort();
        assert_eq!(operations(&spec), expected);
        for (method, path) in OPERATIONS {
            let op = &spec["paths"][path][method];
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"]["200"].is_object() && op["responses"]["401"].is_object(),
                "{method} {path} lacks 200 or 401"
            );
            if path.contains('{') {
                assert!(
                    op["responses"]["400"].is_object(),
                    "{method} {path}: a bad name in the path is a 400"
                );
            }
        }
        assert_eq!(
            spec["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }

    /// No route of the API is added beside `routes` (where the document
    /// would not see it): the only other routes are the open ones.
    #[test]
    fn no_route_bypasses_the_document() {
        let source = include_str!("mod.rs");
        for chunk in source.split(".route(").skip(1) {
            let path = chunk.trim_start().trim_start_matches('"');
            let path = &path[..path.find(['"', ',']).unwrap()];
            assert!(
                ["openapi::PATH", "/metrics", "/healthz", "/readyz"].contains(&path),
                "{path} is routed outside openapi::routes, so it is not in the document"
            );
        }
    }

    /// The schemas carry the bounds the server enforces.
    #[test]
    fn the_bounds_are_the_servers() {
        let spec = super::spec();
        let schemas = &spec["components"]["schemas"];
        for schema in ["EnableFlow", "EditFlow", "FlowDeclaration"] {
            for field in ["max_receives", "concurrency"] {
                assert_eq!(
                    schemas[schema]["properties"][field]["minimum"], 1,
                    "{schema}.{field}: config.rs refuses 0"
                );
            }
            assert_eq!(
                schemas[schema]["properties"]["timeout_secs"]["exclusiveMinimum"],
                0
            );
            assert_eq!(
                schemas[schema]["properties"]["timeout_secs"]["maximum"],
                43200
            );
        }
        assert_eq!(
            schemas["SendMessages"]["properties"]["messages"]["maxItems"],
            crate::control::MAX_SEND_MESSAGES
        );
        let param = |path: &str, name: &str| -> Value {
            spec["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{path} has no {name}"))
                .clone()
        };
        let peek = "/v1/brokers/{broker}/topics/{topic}/messages";
        assert_eq!(
            param(peek, "limit")["schema"]["maximum"],
            crate::control::MAX_PEEK_MESSAGES
        );
        assert_eq!(
            param(peek, "offset")["schema"]["maximum"],
            crate::control::MAX_PEEK_OFFSET
        );
        assert_eq!(
            param("/v1/flows/{flow}/dead-letters", "limit")["schema"]["maximum"],
            crate::control::MAX_DEAD_LETTER_SCAN
        );
        assert_eq!(
            param(peek, "broker")["schema"]["pattern"],
            crate::api::NAME_PATTERN
        );
        assert_eq!(
            spec["paths"]["/v1/algorithms/{owner}/{name}/secrets/{key}"]["put"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "key")
                .unwrap()["schema"]["pattern"],
            crate::api::SECRET_PATTERN
        );
    }
}
