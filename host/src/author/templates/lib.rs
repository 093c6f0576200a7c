//! {{owner}}/{{name}}: stores {"filename", "data"} in
//! data://{{owner}}/{{name}}/<filename> and returns where it went.

use eventflow_sdk::{Failure, Guest, Message, data, info, reject, retry};

struct Algorithm;

impl Guest for Algorithm {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        let (Some(filename), Some(contents)) = (doc["filename"].as_str(), doc["data"].as_str())
        else {
            return Err(reject(r#"payload needs string fields "filename" and "data""#));
        };
        let uri = format!("data://{{owner}}/{{name}}/{filename}");
        data::put(&uri, contents.as_bytes()).map_err(|e| match e {
            // May succeed later (a full disk, the write quota): retry.
            data::DataError::Io(why) => retry(5_000, format!("cannot write {uri}: {why}")),
            data::DataError::QuotaExceeded => retry(10_000, format!("{uri}: quota exceeded")),
            // Never will (a bad name, another owner's collection): reject.
            e => reject(format!("cannot write {uri}: {e:?}")),
        })?;
        info(&format!("stored {} bytes in {uri}", contents.len()));
        Ok(Some(serde_json::json!({ "stored": uri }).to_string().into_bytes()))
    }
}

eventflow_sdk::export_algorithm!(Algorithm);
