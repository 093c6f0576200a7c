//! Sets `"status": "transformed"` on a JSON object, upper-cases its `text`
//! field when it has one, and publishes the result to the topic named by the
//! `TRANSFORM_TOPIC` environment variable (a secret), `transformed` by default.

use eventflow_sdk::{Failure, Guest, Message, publish, reject, retry};

struct Transform;

impl Guest for Transform {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let mut doc: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        let obj = doc
            .as_object_mut()
            .ok_or_else(|| reject("payload is not a JSON object"))?;
        obj.insert("status".into(), "transformed".into());
        if let Some(text) = obj.get("text").and_then(|t| t.as_str()) {
            let upper = text.to_uppercase();
            obj.insert("text".into(), upper.into());
        }
        let topic = std::env::var("TRANSFORM_TOPIC").unwrap_or_else(|_| "transformed".into());
        let body = serde_json::to_vec(&doc).map_err(|e| reject(e.to_string()))?;
        let headers = vec![("content-type".to_string(), "application/json".to_string())];
        match publish::send(&topic, &body, &headers) {
            Ok(()) => Ok(None),
            Err(publish::PublishError::LimitExceeded) => Err(retry(1000, "publish quota used up")),
            Err(e) => Err(reject(format!("cannot publish to {topic}: {e:?}"))),
        }
    }
}

eventflow_sdk::export_algorithm!(Transform);
