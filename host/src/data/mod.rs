//! Hosted data collections: `data://owner/collection/path`, stored as files
//! under the data directory ([`local`]) or as objects in a bucket
//! ([`object`]), as `[data] backend` says ([`config`]).
//!
//! URIs are checked before any backend sees them ([`uri`]): nothing that
//! could leave its collection parses. The local backend checks again on
//! the way down (no symlink leads out); a bucket has no links. Which owner
//! may use a URI is decided by the caller (the sandbox's host functions
//! give an algorithm its owner's collections only), the same for both.

use std::path::Path;

pub mod config;
pub mod local;
pub mod object;
mod uri;

pub use config::DataConfig;
pub use uri::DataUri;

/// Why a data operation failed. Mirrors the WIT `data-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// The URI is malformed or tries to leave its collection.
    #[error("invalid data URI: {0}")]
    InvalidUri(String),
    /// The collection belongs to another owner.
    #[error("access denied: the collection belongs to another owner")]
    AccessDenied,
    /// Nothing is stored there.
    #[error("not found")]
    NotFound,
    /// The invocation's write quota is used up.
    #[error("data write quota exceeded")]
    QuotaExceeded,
    /// The file system or the object store failed; trying again later may
    /// succeed.
    #[error("i/o error: {0}")]
    Io(String),
}

/// Where collections are kept. Every method takes a checked URI; the caller
/// has already decided the owner may use it.
///
/// Errors tell the caller what to do: `NotFound` and `InvalidUri` will not
/// change on a retry; `Io` may (a full disk, an unreachable bucket).
#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Reads a whole file.
    async fn get(&self, uri: &DataUri) -> Result<Vec<u8>, DataError>;
    /// Replaces a whole file. When it returns `Ok` the contents are durable
    /// (synced to disk, or the PUT completed); a reader never sees part of
    /// them.
    async fn put(&self, uri: &DataUri, contents: Vec<u8>) -> Result<(), DataError>;
    /// Lists one level of a collection, sorted; directories end with `/`.
    /// A collection that does not exist yet is empty.
    async fn list(&self, uri: &DataUri) -> Result<Vec<String>, DataError>;
    /// Deletes a file; `NotFound` when there is none.
    async fn delete(&self, uri: &DataUri) -> Result<(), DataError>;
}

/// The data collections of a router, on whichever backend it uses.
pub struct Collections {
    store: Box<dyn Store>,
    location: String,
}

impl Collections {
    /// The local backend: opens the data directory, creating it if needed.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let dir = local::LocalDir::open(root)?;
        Ok(Self::new(
            std::sync::Arc::new(dir),
            root.display().to_string(),
        ))
    }

    /// Collections kept in `store`; `location` names it in messages.
    pub fn new(store: impl Store + 'static, location: String) -> Self {
        Self {
            store: Box::new(store),
            location,
        }
    }

    /// Where the collections are: a directory or an object-store URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Reads a whole file.
    pub async fn get(&self, uri: &DataUri) -> Result<Vec<u8>, DataError> {
        self.store.get(uri).await
    }

    /// Replaces a whole file; durable when it returns.
    pub async fn put(&self, uri: &DataUri, contents: Vec<u8>) -> Result<(), DataError> {
        self.store.put(uri, contents).await
    }

    /// Lists one level of a collection.
    pub async fn list(&self, uri: &DataUri) -> Result<Vec<String>, DataError> {
        self.store.list(uri).await
    }

    /// Deletes a file.
    pub async fn delete(&self, uri: &DataUri) -> Result<(), DataError> {
        self.store.delete(uri).await
    }
}
