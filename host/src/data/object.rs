//! The object-store backend: `data://owner/collection/path` is the object
//! `<prefix>/owner/collection/path` of a bucket (S3, Azure Blob, Google
//! Cloud Storage), through the `object_store` crate.
//!
//! A bucket has no links and no `..`: the key is the checked URI's
//! segments under the prefix, so the URI checks are the whole story. A put
//! is one PUT, atomic and durable when it returns. Unlike a directory, a
//! bucket lets `c/a` and `c/a/b` both exist; a listing then shows `a` and
//! `a/`.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{DataError, DataUri, Store};

/// Collections in a bucket under a prefix.
pub struct ObjectCollections {
    store: Box<dyn ObjectStore>,
    /// The prefix's segments (none for the bucket's root).
    prefix: Vec<String>,
    /// The backend URL, for messages.
    url: String,
}

impl ObjectCollections {
    /// Collections in `store` under `prefix` (`/`-separated, may be empty);
    /// `url` names the backend in messages.
    pub fn new(store: Box<dyn ObjectStore>, prefix: &str, url: &str) -> Self {
        Self {
            store,
            prefix: prefix
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            url: url.to_string(),
        }
    }

    /// The object key of `uri`.
    fn key(&self, uri: &DataUri) -> Result<Path, DataError> {
        let segments: Vec<&str> = self
            .prefix
            .iter()
            .map(String::as_str)
            .chain(uri.segments())
            .collect();
        // The URI checks already refuse what Path::parse does (empty
        // segments, `.`, `..`, control bytes); this is a second lock.
        Path::parse(segments.join("/")).map_err(|e| DataError::InvalidUri(format!("{uri}: {e}")))
    }

    fn error(&self, uri: &DataUri, e: object_store::Error) -> DataError {
        match e {
            object_store::Error::NotFound { .. } => DataError::NotFound,
            object_store::Error::InvalidPath { source } => {
                DataError::InvalidUri(format!("{uri}: {source}"))
            }
            e => DataError::Io(format!("{}: {uri}: {e}", self.url)),
        }
    }
}

#[async_trait::async_trait]
impl Store for ObjectCollections {
    async fn get(&self, uri: &DataUri) -> Result<Vec<u8>, DataError> {
        uri.names_a_file()?;
        let key = self.key(uri)?;
        let result = self.store.get(&key).await.map_err(|e| self.error(uri, e))?;
        let bytes = result.bytes().await.map_err(|e| self.error(uri, e))?;
        Ok(bytes.to_vec())
    }

    async fn put(&self, uri: &DataUri, contents: Vec<u8>) -> Result<(), DataError> {
        uri.names_a_file()?;
        let key = self.key(uri)?;
        self.store
            .put(&key, PutPayload::from(contents))
            .await
            .map_err(|e| self.error(uri, e))?;
        Ok(())
    }

    async fn list(&self, uri: &DataUri) -> Result<Vec<String>, DataError> {
        let dir = self.key(uri)?;
        let listing = self
            .store
            .list_with_delimiter(Some(&dir))
            .await
            .map_err(|e| self.error(uri, e))?;
        let dirs = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(|name| format!("{name}/")));
        let files = listing
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(String::from));
        let mut names: Vec<String> = dirs.chain(files).collect();
        names.sort();
        Ok(names)
    }

    async fn delete(&self, uri: &DataUri) -> Result<(), DataError> {
        uri.names_a_file()?;
        let key = self.key(uri)?;
        // A bucket's DELETE succeeds on nothing; a directory's does not.
        self.store
            .head(&key)
            .await
            .map_err(|e| self.error(uri, e))?;
        self.store
            .delete(&key)
            .await
            .map_err(|e| self.error(uri, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn uri(s: &str) -> DataUri {
        DataUri::parse(s).unwrap()
    }

    #[tokio::test]
    async fn keys_are_the_uri_under_the_prefix_and_listings_one_level() {
        let c = ObjectCollections::new(Box::new(InMemory::new()), "/team/data/", "mem://");
        assert_eq!(
            c.key(&uri("data://ezra/c/a/b%20c.txt")).unwrap().as_ref(),
            "team/data/ezra/c/a/b%20c.txt"
        );
        c.put(&uri("data://ezra/c/sub/f.txt"), b"hello".to_vec())
            .await
            .unwrap();
        c.put(&uri("data://ezra/c/top"), b"t".to_vec())
            .await
            .unwrap();
        c.put(&uri("data://ezra/other/x"), b"x".to_vec())
            .await
            .unwrap();
        assert_eq!(
            c.get(&uri("data://ezra/c/sub/f.txt")).await.unwrap(),
            b"hello"
        );
        assert_eq!(
            c.list(&uri("data://ezra/c")).await.unwrap(),
            ["sub/", "top"]
        );
        assert_eq!(c.list(&uri("data://ezra/c/sub/")).await.unwrap(), ["f.txt"]);
        assert!(c.list(&uri("data://nobody/c")).await.unwrap().is_empty());
        c.delete(&uri("data://ezra/c/top")).await.unwrap();
        assert_eq!(
            c.delete(&uri("data://ezra/c/top")).await,
            Err(DataError::NotFound)
        );
        assert_eq!(
            c.get(&uri("data://ezra/c/top")).await,
            Err(DataError::NotFound)
        );
        assert!(matches!(
            c.put(&uri("data://ezra/c"), b"x".to_vec()).await,
            Err(DataError::InvalidUri(_))
        ));
    }
}
