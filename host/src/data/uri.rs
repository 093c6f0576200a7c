//! `data://owner/collection/path`: parsing and the checks every backend
//! relies on. [`DataUri::parse`] refuses anything that could name a file
//! outside its collection (`..`, absolute paths, empty segments, NUL and
//! control bytes, backslashes, percent-encoded dots, slashes and NUL), so
//! the same URI means the same place on a directory and in a bucket.

use super::DataError;
use crate::config::is_valid_name;

const SCHEME: &str = "data://";
const MAX_PATH_BYTES: usize = 1024;
const MAX_SEGMENT_BYTES: usize = 255;
/// Temporary files of unfinished writes start with this; they are hidden
/// from listings and cannot be named by algorithms.
pub(super) const TMP_PREFIX: &str = ".eventflow-tmp-";

/// A checked `data://owner/collection/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataUri {
    /// The owner of the collection.
    pub owner: String,
    /// The collection.
    pub collection: String,
    /// The path inside the collection, `/`-separated; empty for the
    /// collection itself.
    pub path: String,
}

impl std::fmt::Display for DataUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.owner, self.collection)?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

impl DataUri {
    /// Parses and checks a URI. A trailing `/` is allowed (for listings).
    pub fn parse(uri: &str) -> Result<Self, DataError> {
        let bad = |why: &str| Err(DataError::InvalidUri(format!("{uri:?}: {why}")));
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            return bad("must start with data://");
        };
        if rest.len() > MAX_PATH_BYTES {
            return bad("longer than 1024 bytes");
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or_default();
        let collection = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        if !is_valid_name(owner) {
            return bad("the owner must be a name of letters, digits, '_', '-' and '.'");
        }
        if !is_valid_name(collection) {
            return bad("the collection must be a name of letters, digits, '_', '-' and '.'");
        }
        if !path.is_empty() {
            for segment in path.split('/') {
                if let Err(why) = check_segment(segment) {
                    return bad(&why);
                }
            }
        }
        Ok(Self {
            owner: owner.into(),
            collection: collection.into(),
            path: path.into(),
        })
    }

    /// Refuses a URI of a collection where a file is meant.
    pub fn names_a_file(&self) -> Result<(), DataError> {
        if self.path.is_empty() {
            return Err(DataError::InvalidUri(format!(
                "{self}: names a collection, not a file"
            )));
        }
        Ok(())
    }

    /// The URI's segments: owner, collection, then each of the path.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        [self.owner.as_str(), self.collection.as_str()]
            .into_iter()
            .chain(self.path.split('/').filter(|s| !s.is_empty()))
    }
}

fn check_segment(segment: &str) -> Result<(), String> {
    if segment.is_empty() {
        return Err("empty path segment (absolute paths and '//' are not allowed)".into());
    }
    if segment == "." || segment == ".." {
        return Err("'.' and '..' are not allowed".into());
    }
    if segment.len() > MAX_SEGMENT_BYTES {
        return Err("a path segment is longer than 255 bytes".into());
    }
    if segment.starts_with(TMP_PREFIX) {
        return Err(format!("names starting with {TMP_PREFIX} are reserved"));
    }
    if let Some(c) = segment.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!("the character {c:?} is not allowed"));
    }
    let bytes = segment.as_bytes();
    for (i, _) in segment.match_indices('%') {
        let decoded = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(b) = decoded
            && (b == b'.' || b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
        {
            return Err(format!(
                "percent-encoded {:?} is not allowed",
                &segment[i..i + 3]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_uris_parse() {
        let u = DataUri::parse("data://ezra/TestingEventFlow/some-new-file.txt").unwrap();
        assert_eq!(u.owner, "ezra");
        assert_eq!(u.collection, "TestingEventFlow");
        assert_eq!(u.path, "some-new-file.txt");
        assert_eq!(DataUri::parse("data://ezra/c/").unwrap().path, "");
        assert_eq!(
            DataUri::parse("data://ezra/c/a/b%20c.txt").unwrap().path,
            "a/b%20c.txt"
        );
    }

    #[test]
    fn traversal_attempts_are_refused() {
        for uri in [
            "data://ezra/c/../../etc/passwd",
            "data://ezra/c/a/../b",
            "data://ezra/../bob/c",
            "data://../x/y",
            "data://ezra/c//etc/passwd",
            "data:///etc/passwd",
            "data://ezra/c/a\0b",
            "data://ezra/c/%2e%2e/x",
            "data://ezra/c/%2E%2E%2Fx",
            "data://ezra/c/a%2fb",
            "data://ezra/c/a%00b",
            "data://ezra/c/a\\..\\b",
            "file:///etc/passwd",
            "data://ezra",
            "data://ezra/c/.eventflow-tmp-x",
        ] {
            assert!(
                matches!(DataUri::parse(uri), Err(DataError::InvalidUri(_))),
                "{uri} was accepted"
            );
        }
    }
}
