//! The quickstart algorithm. Takes `{"filename": "...", "data": "..."}` and
//! writes `data` to `data://ezra/TestingEventFlow/<filename>`.

use eventflow_sdk::{Failure, Guest, Message, data, reject};

struct StoreFile;

const COLLECTION: &str = "data://ezra/TestingEventFlow";

impl Guest for StoreFile {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        let filename = doc
            .get("filename")
            .and_then(|v| v.as_str())
            .ok_or_else(|| reject("payload has no string field \"filename\""))?;
        let contents = doc
            .get("data")
            .and_then(|v| v.as_str())
            .ok_or_else(|| reject("payload has no string field \"data\""))?;
        let uri = format!("{COLLECTION}/{filename}");
        data::put(&uri, contents.as_bytes())
            .map_err(|e| reject(format!("cannot write {uri}: {e:?}")))?;
        eventflow_sdk::info(&format!("stored {} bytes in {uri}", contents.len()));
        Ok(None)
    }
}

eventflow_sdk::export_algorithm!(StoreFile);
