//! Hosted data collections: `data://owner/collection/path`, stored as files
//! under the data directory.
//!
//! URIs are checked twice. [`DataUri::parse`] refuses anything that could
//! name a file outside its collection (`..`, absolute paths, empty segments,
//! NUL and control bytes, backslashes, percent-encoded dots, slashes and NUL).
//! Then the owner's directory, the collection and every directory below are
//! opened one segment at a time without following symlinks, so a link can
//! never lead an algorithm into another owner's tree or another collection,
//! even one inside the data directory; the last segment is resolved by a
//! `cap-std` handle rooted at its directory, which refuses symlinks that lead
//! out of it. Writes are durable when they return: a temporary file, fsync,
//! rename, fsync of the directory.

use std::io::{self, Write};
use std::path::Path;

use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::Dir;

use crate::config::is_valid_name;

const SCHEME: &str = "data://";
const MAX_PATH_BYTES: usize = 1024;
const MAX_SEGMENT_BYTES: usize = 255;
/// Temporary files of unfinished writes start with this; they are hidden
/// from listings and cannot be named by algorithms.
const TMP_PREFIX: &str = ".eventflow-tmp-";

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
    /// The file system failed.
    #[error("i/o error: {0}")]
    Io(String),
}

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

fn io_error(uri: &DataUri, e: io::Error) -> DataError {
    match e.kind() {
        io::ErrorKind::NotFound => DataError::NotFound,
        // cap-std reports a path (a symlink, say) that leads outside its
        // root as PermissionDenied.
        io::ErrorKind::PermissionDenied => outside(uri),
        io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => {
            DataError::InvalidUri(format!("{uri}: {e}"))
        }
        // Creating a directory where a file or a symlink is.
        io::ErrorKind::AlreadyExists => DataError::InvalidUri(format!(
            "{uri}: a segment of the path is not a directory of the collection"
        )),
        _ if e.raw_os_error() == Some(libc::ELOOP) => outside(uri),
        _ => DataError::Io(e.to_string()),
    }
}

fn outside(uri: &DataUri) -> DataError {
    DataError::InvalidUri(format!("{uri}: the path leads outside its collection"))
}

/// Opens the directory `name` (one segment) of `dir` without following a
/// symlink, creating it first when `create`. A symlink there is refused
/// whatever it points to: the owner's directory, its collections and the
/// directories in them must be real directories, so no link can lead an
/// algorithm into another owner's tree (or another collection), even one
/// that stays inside the data directory.
fn open_segment(dir: &Dir, name: &str, create: bool, uri: &DataUri) -> Result<Dir, DataError> {
    if create {
        match dir.create_dir(name) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(uri, e)),
        }
    }
    dir.open_dir_nofollow(name).map_err(|e| {
        let is_link = dir
            .symlink_metadata(name)
            .is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            DataError::InvalidUri(format!(
                "{uri}: {name:?} is a symbolic link; data paths do not follow links to directories"
            ))
        } else {
            io_error(uri, e)
        }
    })
}

/// Refuses a last segment that is a symlink leading out of `dir` (so that
/// `put` and `delete` give the same answer as `get`, instead of replacing or
/// removing the link). A link to a file beside it is allowed.
fn check_last_segment(dir: &Dir, name: &str, uri: &DataUri) -> Result<(), DataError> {
    match dir.symlink_metadata(name) {
        Ok(m) if m.file_type().is_symlink() => match dir.metadata(name) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(_) => Err(outside(uri)),
        },
        _ => Ok(()),
    }
}

/// The data directory.
pub struct Collections {
    root: Dir,
}

impl Collections {
    /// Opens the data directory, creating it if needed.
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: Dir::open_ambient_dir(root, ambient_authority())?,
        })
    }

    /// The collection's directory, reached from the data directory one
    /// segment at a time without following symlinks (owner, then
    /// collection), created when `create`.
    fn collection(&self, uri: &DataUri, create: bool) -> Result<Dir, DataError> {
        let owner = open_segment(&self.root, &uri.owner, create, uri)?;
        open_segment(&owner, &uri.collection, create, uri)
    }

    /// The directory holding the last segment of `uri.path`, and that
    /// segment. Every directory on the way is opened without following
    /// symlinks (and created when `create`).
    fn parent<'u>(&self, uri: &'u DataUri, create: bool) -> Result<(Dir, &'u str), DataError> {
        let mut dir = self.collection(uri, create)?;
        let mut segments: Vec<&str> = uri.path.split('/').collect();
        let last = segments.pop().unwrap_or_default();
        for segment in segments {
            dir = open_segment(&dir, segment, create, uri)?;
        }
        Ok((dir, last))
    }

    fn names_a_file(uri: &DataUri) -> Result<(), DataError> {
        if uri.path.is_empty() {
            return Err(DataError::InvalidUri(format!(
                "{uri}: names a collection, not a file"
            )));
        }
        Ok(())
    }

    /// Reads a whole file. Blocking.
    pub fn get(&self, uri: &DataUri) -> Result<Vec<u8>, DataError> {
        Self::names_a_file(uri)?;
        let (dir, name) = self.parent(uri, false)?;
        dir.read(name).map_err(|e| io_error(uri, e))
    }

    /// Replaces a whole file; durable when it returns. Blocking.
    pub fn put(&self, uri: &DataUri, contents: &[u8]) -> Result<(), DataError> {
        Self::names_a_file(uri)?;
        let (parent_dir, name) = self.parent(uri, true)?;
        check_last_segment(&parent_dir, name, uri)?;
        let tmp = format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4());
        let written = (|| {
            let mut f = parent_dir.create(&tmp)?;
            f.write_all(contents)?;
            f.sync_all()?;
            parent_dir.rename(&tmp, &parent_dir, name)?;
            // The rename is durable once the directory is synced. cap-std's
            // directory handles cannot be synced, so open it for reading.
            parent_dir
                .open_with(".", cap_std::fs::OpenOptions::new().read(true))?
                .sync_all()
        })();
        if let Err(e) = written {
            let _ = parent_dir.remove_file(&tmp);
            return Err(io_error(uri, e));
        }
        Ok(())
    }

    /// Lists a directory of a collection; directories end with `/`. A
    /// collection that does not exist yet is empty. Blocking.
    pub fn list(&self, uri: &DataUri) -> Result<Vec<String>, DataError> {
        let mut dir = match self.collection(uri, false) {
            Err(DataError::NotFound) => return Ok(Vec::new()),
            other => other?,
        };
        if !uri.path.is_empty() {
            for segment in uri.path.split('/') {
                dir = open_segment(&dir, segment, false, uri)?;
            }
        }
        let entries = dir.entries().map_err(|e| io_error(uri, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error(uri, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            names.push(if is_dir { format!("{name}/") } else { name });
        }
        names.sort();
        Ok(names)
    }

    /// Deletes a file. Blocking.
    pub fn delete(&self, uri: &DataUri) -> Result<(), DataError> {
        Self::names_a_file(uri)?;
        let (dir, name) = self.parent(uri, false)?;
        check_last_segment(&dir, name, uri)?;
        dir.remove_file(name).map_err(|e| io_error(uri, e))
    }
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

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let c = Collections::open(dir.path()).unwrap();
        let u = DataUri::parse("data://ezra/c/sub/f.txt").unwrap();
        c.put(&u, b"hello").unwrap();
        assert_eq!(c.get(&u).unwrap(), b"hello");
        let root = DataUri::parse("data://ezra/c").unwrap();
        assert_eq!(c.list(&root).unwrap(), vec!["sub/".to_string()]);
        let sub = DataUri::parse("data://ezra/c/sub/").unwrap();
        assert_eq!(c.list(&sub).unwrap(), vec!["f.txt".to_string()]);
        c.delete(&u).unwrap();
        assert_eq!(c.get(&u), Err(DataError::NotFound));
        let none = DataUri::parse("data://nobody/empty").unwrap();
        assert!(c.list(&none).unwrap().is_empty());
    }

    #[test]
    fn a_symlink_out_of_the_collection_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let c = Collections::open(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("ezra/c")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("ezra/c/link")).unwrap();
        // Also a link to a sibling collection of another owner.
        std::fs::create_dir_all(dir.path().join("bob/private")).unwrap();
        std::fs::write(dir.path().join("bob/private/f"), b"b").unwrap();
        std::os::unix::fs::symlink("../../bob/private", dir.path().join("ezra/c/bob")).unwrap();
        for uri in ["data://ezra/c/link/secret", "data://ezra/c/bob/f"] {
            let u = DataUri::parse(uri).unwrap();
            assert!(
                matches!(c.get(&u), Err(DataError::InvalidUri(_))),
                "{uri}: read"
            );
            assert!(
                matches!(c.put(&u, b"x"), Err(DataError::InvalidUri(_))),
                "{uri}: write"
            );
        }
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"s");
    }

    /// A data directory where mallory owns `c/f` and `c/sub/g`, and ezra a
    /// collection `own` with `f`.
    fn two_owners() -> (tempfile::TempDir, Collections) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("mallory/c/sub")).unwrap();
        std::fs::write(root.join("mallory/c/f"), b"mallory's").unwrap();
        std::fs::write(root.join("mallory/c/sub/g"), b"mallory's too").unwrap();
        std::fs::create_dir_all(root.join("ezra/own")).unwrap();
        std::fs::write(root.join("ezra/own/f"), b"ezra's").unwrap();
        let c = Collections::open(root).unwrap();
        (dir, c)
    }

    fn link(root: &Path, target: impl AsRef<Path>, at: &str) {
        std::os::unix::fs::symlink(target, root.join(at)).unwrap();
    }

    fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, DataError>) {
        assert!(
            matches!(
                result,
                Err(DataError::InvalidUri(_) | DataError::AccessDenied)
            ),
            "{what}: {result:?}"
        );
    }

    /// Tries get, put, list and delete on each URI, expecting refusals, then checks mallory's tree is as it
    /// was.
    fn all_refused(root: &Path, c: &Collections, uris: &[&str]) {
        for uri in uris {
            let u = DataUri::parse(uri).unwrap();
            refused(&format!("get {uri}"), c.get(&u));
            refused(&format!("put {uri}"), c.put(&u, b"ezra was here"));
            refused(&format!("delete {uri}"), c.delete(&u));
            refused(&format!("list {uri}"), c.list(&u));
        }
        assert_eq!(
            std::fs::read(root.join("mallory/c/f")).unwrap(),
            b"mallory's"
        );
        assert_eq!(
            std::fs::read(root.join("mallory/c/sub/g")).unwrap(),
            b"mallory's too"
        );
        let mut names: Vec<String> = std::fs::read_dir(root.join("mallory/c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["f", "sub"],
            "something was written to mallory's collection"
        );
    }

    #[test]
    fn an_owner_directory_that_links_to_another_owner_is_refused() {
        let (dir, c) = two_owners();
        let root = dir.path();
        link(root, "mallory", "bob");
        link(root, root.join("mallory"), "eve");
        all_refused(
            root,
            &c,
            &["data://bob/c/f", "data://bob/c/sub/g", "data://eve/c/f"],
        );
        refused("list", c.list(&DataUri::parse("data://bob/c").unwrap()));
    }

    #[test]
    fn a_collection_that_links_to_another_owners_collection_is_refused() {
        // The example: data/ezra/somecoll -> ../mallory/c.
        let (dir, c) = two_owners();
        let root = dir.path();
        link(root, "../mallory/c", "ezra/somecoll");
        link(root, root.join("mallory/c"), "ezra/abscoll");
        link(root, "../mallory", "ezra/up");
        all_refused(
            root,
            &c,
            &[
                "data://ezra/somecoll/f",
                "data://ezra/somecoll/sub/g",
                "data://ezra/abscoll/f",
                "data://ezra/up/c",
            ],
        );
        refused(
            "list",
            c.list(&DataUri::parse("data://ezra/somecoll").unwrap()),
        );
    }

    #[test]
    fn an_intermediate_directory_that_links_elsewhere_is_refused() {
        let (dir, c) = two_owners();
        let root = dir.path();
        std::fs::create_dir_all(root.join("ezra/c/real")).unwrap();
        // To another owner's collection, and to a sibling collection of
        // the same owner: either way it leaves the collection.
        link(root, "../../mallory/c", "ezra/c/sub");
        link(root, "../../own", "ezra/c/real/own");
        all_refused(
            root,
            &c,
            &[
                "data://ezra/c/sub/f",
                "data://ezra/c/sub/sub/g",
                "data://ezra/c/real/own/f",
            ],
        );
        refused(
            "list",
            c.list(&DataUri::parse("data://ezra/c/sub/").unwrap()),
        );
        assert_eq!(std::fs::read(root.join("ezra/own/f")).unwrap(), b"ezra's");
    }

    #[test]
    fn a_file_link_into_another_owners_tree_is_refused() {
        let (dir, c) = two_owners();
        let root = dir.path();
        std::fs::create_dir_all(root.join("ezra/c/d")).unwrap();
        link(root, "../../mallory/c/f", "ezra/c/f");
        link(root, root.join("mallory/c/sub/g"), "ezra/c/d/g");
        all_refused(root, &c, &["data://ezra/c/f", "data://ezra/c/d/g"]);
        // The links are still there: delete refused to act on them.
        assert!(root.join("ezra/c/f").is_symlink());
    }

    #[test]
    fn a_file_link_beside_its_target_still_works() {
        let (dir, c) = two_owners();
        let root = dir.path();
        link(root, "f", "ezra/own/alias");
        let alias = DataUri::parse("data://ezra/own/alias").unwrap();
        assert_eq!(c.get(&alias).unwrap(), b"ezra's");
    }
}
