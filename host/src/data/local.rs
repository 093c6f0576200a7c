//! The local backend: collections as files under the data directory.
//!
//! After [`DataUri::parse`], the owner's directory, the collection and
//! every directory below are opened one segment at a time without following
//! symlinks, so a link can never lead an algorithm into another owner's
//! tree or another collection, even one inside the data directory; the last
//! segment is resolved by a `cap-std` handle rooted at its directory, which
//! refuses symlinks that lead out of it. Writes are durable when they
//! return: a temporary file, fsync, rename, fsync of the directory.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::Dir;

use super::uri::TMP_PREFIX;
use super::{DataError, DataUri, Store};

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

/// The data directory. Its methods block; [`Store`] runs them on tokio's
/// blocking threads.
pub struct LocalDir {
    root: Dir,
}

impl LocalDir {
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

    /// Reads a whole file. Blocking.
    pub fn get(&self, uri: &DataUri) -> Result<Vec<u8>, DataError> {
        uri.names_a_file()?;
        let (dir, name) = self.parent(uri, false)?;
        dir.read(name).map_err(|e| io_error(uri, e))
    }

    /// Replaces a whole file; durable when it returns. Blocking.
    pub fn put(&self, uri: &DataUri, contents: &[u8]) -> Result<(), DataError> {
        uri.names_a_file()?;
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
        uri.names_a_file()?;
        let (dir, name) = self.parent(uri, false)?;
        check_last_segment(&dir, name, uri)?;
        dir.remove_file(name).map_err(|e| io_error(uri, e))
    }
}

/// Runs a blocking operation of the data directory on a blocking thread.
async fn blocking<T: Send + 'static>(
    dir: &Arc<LocalDir>,
    uri: &DataUri,
    op: impl FnOnce(&LocalDir, &DataUri) -> Result<T, DataError> + Send + 'static,
) -> Result<T, DataError> {
    let (dir, uri) = (dir.clone(), uri.clone());
    tokio::task::spawn_blocking(move || op(&dir, &uri))
        .await
        .unwrap_or_else(|join| Err(DataError::Io(format!("host task failed: {join}"))))
}

#[async_trait::async_trait]
impl Store for Arc<LocalDir> {
    async fn get(&self, uri: &DataUri) -> Result<Vec<u8>, DataError> {
        blocking(self, uri, |d, u| d.get(u)).await
    }

    async fn put(&self, uri: &DataUri, contents: Vec<u8>) -> Result<(), DataError> {
        blocking(self, uri, move |d, u| d.put(u, &contents)).await
    }

    async fn list(&self, uri: &DataUri) -> Result<Vec<String>, DataError> {
        blocking(self, uri, |d, u| d.list(u)).await
    }

    async fn delete(&self, uri: &DataUri) -> Result<(), DataError> {
        blocking(self, uri, |d, u| d.delete(u)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let c = LocalDir::open(dir.path()).unwrap();
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
        let c = LocalDir::open(dir.path()).unwrap();
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
    fn two_owners() -> (tempfile::TempDir, LocalDir) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("mallory/c/sub")).unwrap();
        std::fs::write(root.join("mallory/c/f"), b"mallory's").unwrap();
        std::fs::write(root.join("mallory/c/sub/g"), b"mallory's too").unwrap();
        std::fs::create_dir_all(root.join("ezra/own")).unwrap();
        std::fs::write(root.join("ezra/own/f"), b"ezra's").unwrap();
        let c = LocalDir::open(root).unwrap();
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
    fn all_refused(root: &Path, c: &LocalDir, uris: &[&str]) {
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
