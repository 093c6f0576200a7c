//! The OpenAPI 3.0 document of the admin API, served at `/v1/openapi.json`.
//! Kept next to the routes in `mod.rs`; a test checks that every route is
//! documented.

use axum::Json;
use serde_json::{Value, json};

fn error_responses(extra: &[&str]) -> Value {
    let mut r = serde_json::Map::new();
    r.insert("200".into(), json!({"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}));
    r.insert(
        "401".into(),
        json!({"$ref": "#/components/responses/Error"}),
    );
    for code in extra {
        r.insert(
            (*code).into(),
            json!({"$ref": "#/components/responses/Error"}),
        );
    }
    Value::Object(r)
}

/// An operation. Parameters can be refused (400: a name that is not a valid
/// name, a limit above its maximum) and bodies can be too large (413), so
/// those codes are added where they apply.
fn op(summary: &str, params: &[&str], body: Option<Value>, errors: &[&str]) -> Value {
    let mut codes: Vec<&str> = errors.to_vec();
    if !params.is_empty() {
        codes.push("400");
    }
    if body.is_some() {
        codes.extend(["400", "413"]);
    }
    let mut o = json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": error_responses(&codes),
    });
    if !params.is_empty() {
        o["parameters"] = Value::Array(
            params
                .iter()
                .map(|p| json!({"$ref": format!("#/components/parameters/{p}")}))
                .collect(),
        );
    }
    if let Some(schema) = body {
        o["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    o
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// The document.
pub fn spec() -> Value {
    // The server also refuses "." and ".." (400), as
    // `crate::config::is_valid_name` does; the pattern leaves that out to
    // stay a plain regular expression.
    let name_pattern = "^[A-Za-z0-9_.-]{1,128}$";
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Eventflow admin API",
            "version": "1.0.0",
            "description": "Broker connections, topics and access lists, flows, secrets, tokens and messages of one Eventflow router. Authenticate with `Authorization: Bearer <token>`."
        },
        "paths": {
            "/v1/state": {
                "get": op("The desired state (brokers redacted)", &[], None, &["403"]),
                "put": op("Converge the desired state to these declarations (eventflow apply)", &[], Some(schema("Declarations")), &["400", "403"]),
            },
            "/v1/brokers": {
                "get": op("List broker connections (credentials redacted)", &[], None, &["403"]),
                "post": op("Create a broker connection; inline credentials {\"value\": ...} are stored as secrets", &[], Some(schema("BrokerSpec")), &["400", "403", "409"]),
            },
            "/v1/brokers/{broker}": {
                "get": op("Show a broker connection", &["broker"], None, &["403", "404"]),
                "delete": op("Delete a broker connection (refused while flows use it, unless force)", &["broker", "force"], None, &["403", "404", "409"]),
            },
            "/v1/brokers/{broker}/topics": {
                "get": op("Topics of a broker: declared ones and those the broker lists; listing_error says why the broker's own list is missing when it refused", &["broker"], None, &["403", "404"]),
            },
            "/v1/brokers/{broker}/topics/{topic}": {
                "put": op("Declare a topic, or change the given fields of a declared one (omitted fields keep their values)", &["broker", "topic"], Some(schema("DeclareTopic")), &["400", "403", "404"]),
                "delete": op("Delete a topic declaration (refused while flows use it, unless force)", &["broker", "topic", "force"], None, &["403", "404", "409"]),
            },
            "/v1/brokers/{broker}/topics/{topic}/grants": {
                "post": op("Grant an algorithm consume and/or publish access", &["broker", "topic"], Some(schema("Grant")), &["400", "403", "404"]),
            },
            "/v1/brokers/{broker}/topics/{topic}/grants/revoke": {
                "post": op("Revoke an algorithm's access", &["broker", "topic"], Some(schema("Grant")), &["400", "403", "404"]),
            },
            "/v1/brokers/{broker}/topics/{topic}/messages": {
                "get": op("Peek at a topic's messages without consuming them: at most `limit` (default 10, at most 1000) from `offset` (default 0, at most 100000) and 16 MiB of payload; `truncated` says the byte limit cut the answer short", &["broker", "topic", "peek_limit", "peek_offset"], None, &["403", "404", "503"]),
            },
            "/v1/algorithms/{owner}/{name}/topics": {
                "get": op("The topics an algorithm may use, each enabled or disabled (its queues tab)", &["owner", "name"], None, &["403"]),
            },
            "/v1/algorithms/{owner}/{name}/secrets": {
                "get": op("Names of an algorithm's secrets (never values)", &["owner", "name"], None, &["403"]),
            },
            "/v1/algorithms/{owner}/{name}/secrets/{key}": {
                "put": op("Set a secret; the algorithm sees it as an environment variable", &["owner", "name", "key"], Some(schema("SecretValue")), &["400", "403"]),
                "delete": op("Delete a secret", &["owner", "name", "key"], None, &["403", "404"]),
            },
            "/v1/flows": {
                "get": op("Flows with their status", &[], None, &[]),
                "post": op("Enable a topic for an algorithm version (creates or re-enables a flow)", &[], Some(schema("EnableFlow")), &["400", "403", "409"]),
            },
            "/v1/flows/{flow}": {
                "get": op("A flow", &["flow"], None, &["403", "404"]),
                "patch": op("Edit a flow's version, dead-letter topic, limits or state", &["flow"], Some(schema("EditFlow")), &["400", "403", "404"]),
                "delete": op("Delete a flow (its messages stay in the broker)", &["flow"], None, &["403", "404"]),
            },
            "/v1/flows/{flow}/dead-letters": {
                "get": op("A flow's dead letters (only this flow's; each verified or unverified)", &["flow", "limit"], None, &["400", "403", "404", "503"]),
            },
            "/v1/flows/{flow}/dead-letters/replay": {
                "post": op("Publish dead letters back to the flow's topic and remove them", &["flow"], Some(schema("Replay")), &["400", "403", "404", "409", "503"]),
            },
            "/v1/messages": {
                "post": op("Publish messages to a topic: at most 1000 per request, each within its broker's payload limit (413 above it); the whole body at most 24 MiB (413 above it)", &[], Some(schema("SendMessages")), &["400", "403", "404", "503"]),
            },
            "/v1/plugins": {
                "get": op("Loaded algorithm versions (an owner-scoped token sees its owner's)", &[], None, &[]),
            },
            "/v1/tokens": {
                "get": op("Owner-scoped tokens (without the tokens)", &[], None, &["403"]),
                "post": op("Create an owner-scoped token (shown once)", &[], Some(schema("NewToken")), &["400", "403"]),
            },
            "/v1/tokens/{id}": {
                "delete": op("Revoke a token", &["id"], None, &["403", "404"]),
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Error": {
                    "description": "An error, with a message that says what to change",
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["error"],
                        "properties": {"error": {"type": "string"}}
                    }}}
                }
            },
            "parameters": {
                "broker": {"name": "broker", "in": "path", "required": true, "schema": {"type": "string", "pattern": name_pattern}},
                "topic": {"name": "topic", "in": "path", "required": true, "schema": {"type": "string", "pattern": name_pattern}},
                "owner": {"name": "owner", "in": "path", "required": true, "schema": {"type": "string", "pattern": name_pattern}},
                "name": {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": name_pattern}},
                "key": {"name": "key", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,127}$"}},
                "flow": {"name": "flow", "in": "path", "required": true, "schema": {"type": "string", "pattern": name_pattern}},
                "id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": name_pattern}},
                "force": {"name": "force", "in": "query", "required": false, "schema": {"type": "boolean"}},
                "limit": {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": 100000}},
                "peek_offset": {"name": "offset", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": super::messages::MAX_PEEK_OFFSET, "default": 0}},
                "peek_limit": {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": super::messages::MAX_PEEK_MESSAGES, "default": 10}},
            },
            "schemas": {
                "SecretRef": {
                    "type": "object",
                    "description": "Where a credential comes from: {\"env\": VAR}, {\"file\": PATH}, {\"secret\": NAME}, or (API only) {\"value\": VALUE}, stored as a secret",
                    "minProperties": 1, "maxProperties": 1,
                    "properties": {
                        "env": {"type": "string"}, "file": {"type": "string"},
                        "secret": {"type": "string"}, "value": {"type": "string"}
                    }
                },
                "BrokerSpec": {
                    "type": "object",
                    "required": ["name", "kind"],
                    "description": "A broker connection; the other fields depend on kind (see the README's configuration reference)",
                    "properties": {
                        "name": {"type": "string", "pattern": name_pattern},
                        "kind": {"type": "string", "enum": ["embedded", "kafka", "eventhubs", "sqs", "servicebus"]}
                    },
                    "additionalProperties": true
                },
                "TopicSpec": {
                    "type": "object", "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": name_pattern}, "broker": {"type": "string"},
                        "address": {"type": "string"},
                        "consumers": {"type": "array", "items": {"type": "string"}},
                        "publishers": {"type": "array", "items": {"type": "string"}}
                    },
                    "additionalProperties": false
                },
                "FlowSpec": {
                    "type": "object", "required": ["name", "topic", "algorithm"],
                    "description": "A flow as in the configuration file ([[flows]])",
                    "properties": {
                        "name": {"type": "string", "pattern": name_pattern}, "broker": {"type": "string"}, "topic": {"type": "string", "pattern": name_pattern},
                        "algorithm": {"type": "string", "description": "owner/name or owner/name/version"},
                        "enabled": {"type": "boolean"}, "concurrency": {"type": "integer", "minimum": 1},
                        "output_topic": {"type": "string"}, "dead_letter_topic": {"type": "string"},
                        "max_receives": {"type": "integer", "minimum": 1}, "timeout_secs": {"type": "number"},
                        "retry": {"type": "object"}, "limits": {"type": "object"}, "consumer": {"type": "object"}
                    }
                },
                "Declarations": {
                    "type": "object",
                    "properties": {
                        "brokers": {"type": "array", "items": schema("BrokerSpec")},
                        "topics": {"type": "array", "items": schema("TopicSpec")},
                        "flows": {"type": "array", "items": schema("FlowSpec")},
                        "algorithm_limits": {"type": "array", "items": {"type": "object"}}
                    },
                    "additionalProperties": false
                },
                "DeclareTopic": {
                    "type": "object",
                    "description": "For a declared topic, omitted fields keep their values; null removes the address, [] empties a list",
                    "properties": {
                        "address": {"type": "string", "nullable": true},
                        "consumers": {"type": "array", "items": {"type": "string"}},
                        "publishers": {"type": "array", "items": {"type": "string"}},
                        "dead_letter_publishers": {"type": "array", "items": {"type": "string"}}
                    },
                    "additionalProperties": false
                },
                "Grant": {
                    "type": "object", "required": ["algorithm"],
                    "properties": {
                        "algorithm": {"type": "string", "description": "owner/name or owner/*"},
                        "consume": {"type": "boolean"}, "publish": {"type": "boolean"},
                        "dead_letter_publish": {"type": "boolean"}
                    },
                    "additionalProperties": false
                },
                "SecretValue": {
                    "type": "object", "required": ["value"],
                    "properties": {"value": {"type": "string"}},
                    "additionalProperties": false
                },
                "EnableFlow": {
                    "type": "object", "required": ["topic", "algorithm"],
                    "properties": {
                        "name": {"type": "string", "pattern": name_pattern}, "broker": {"type": "string", "pattern": name_pattern},
                        "topic": {"type": "string", "pattern": name_pattern},
                        "algorithm": {"type": "string", "description": "owner/name"},
                        "version": {"type": "string", "description": "a semver version, or latest; absent keeps an existing flow's version"},
                        "dead_letter_topic": {"type": "string"}, "output_topic": {"type": "string"},
                        "timeout_secs": {"type": "number"}, "max_receives": {"type": "integer", "minimum": 0},
                        "concurrency": {"type": "integer", "minimum": 0}
                    },
                    "additionalProperties": false
                },
                "EditFlow": {
                    "type": "object",
                    "properties": {
                        "version": {"type": "string"},
                        "dead_letter_topic": {"type": "string", "nullable": true},
                        "output_topic": {"type": "string", "nullable": true},
                        "enabled": {"type": "boolean"},
                        "timeout_secs": {"type": "number"}, "max_receives": {"type": "integer", "minimum": 0},
                        "concurrency": {"type": "integer", "minimum": 0}
                    },
                    "additionalProperties": false
                },
                "Replay": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "nullable": true},
                        "include_unverified": {"type": "boolean", "description": "admin token only"}
                    },
                    "additionalProperties": false
                },
                "SendMessages": {
                    "type": "object", "required": ["topic"],
                    "properties": {
                        "topic": {"type": "string", "pattern": name_pattern}, "broker": {"type": "string", "pattern": name_pattern},
                        "payload": {"type": "string"}, "payload_base64": {"type": "string"},
                        "headers": {"type": "array", "items": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}},
                        "messages": {"type": "array", "items": {"type": "object"}, "maxItems": super::messages::MAX_SEND_MESSAGES}
                    },
                    "additionalProperties": false
                },
                "NewToken": {
                    "type": "object", "required": ["owner"],
                    "properties": {"owner": {"type": "string", "pattern": name_pattern}},
                    "additionalProperties": false
                }
            }
        }
    })
}

pub(super) async fn document() -> Json<Value> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    /// Every `.route("/v1/...")` in mod.rs appears in the document.
    #[test]
    fn every_route_is_documented() {
        let source = include_str!("mod.rs");
        let spec = super::spec();
        let paths = spec["paths"].as_object().unwrap();
        let mut checked = 0;
        for chunk in source.split(".route(").skip(1) {
            let path = chunk.trim_start().trim_start_matches('"');
            let path = &path[..path.find('"').unwrap()];
            if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                assert!(
                    paths.contains_key(path),
                    "{path} is not in the OpenAPI document"
                );
                checked += 1;
            }
        }
        assert!(checked >= 19, "only {checked} routes found");
    }
}
