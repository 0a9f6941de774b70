//! Libraries: fetching the repositories `include:` names (gix only), resolving
//! each ref to a commit, reading its manifests for the registry, and checking
//! it out read-only for its scripts.
//!
//! - A local library (an absolute path or `file://`) is opened where it is; no
//!   copy, no git process.
//! - An HTTP(S) library is fetched (all branches and tags) into a bare cache
//!   in `.git/dynapi/libraries/` (out of scripts' reach), at most every
//!   `FRESH` per URL unless the ref is a commit the cache has. The URL never
//!   holds credentials; the GitHub token is sent, as a header in memory, only
//!   to the host of the daemon's own GitHub remote (`Origin`), never written.
//!   When a fetch fails the cache answers, and the snapshot says so (`offline`).
//! - A served library is checked out at its commit under
//!   `.git/dynapi-libraries/<commit>/`: regular files only (no symlink, no
//!   submodule, no name with `..` or `.git`), read-only modes, written in a
//!   temporary folder and renamed into place whole. Scripts may read it (the
//!   sandbox grants `.git`'s entries but `dynapi` read-only) and never write it.
//!
//! Never decides what a library may do: the registry checks it under the
//! project's include.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gix::bstr::ByteSlice;
use gix::object::tree::EntryKind;
use gix::ObjectId;

use super::repo::{kind_of_mode, read_snapshot, redact, Deadline, Origin, Resolve, Watcher};
use crate::layout::{LIBRARIES, LIBRARY_CACHE, PRIVATE};
use crate::registry::{Include, Library, LibraryError, LibrarySnapshot, MANIFEST_DIR};

/// How long a fetched library is taken as current before the next build
/// fetches it again (a commit id the cache holds is never fetched again).
pub const FRESH: Duration = Duration::from_secs(10);
/// Most bytes one library's cache may hold: a fetch that passes it (a pull
/// request including some huge repository) is stopped and the cache removed.
pub const MAX_CACHE_BYTES: u64 = 1 << 30;
/// How many library caches are kept before those no served registry
/// includes are removed.
pub const MAX_CACHES: usize = 2 * crate::registry::MAX_INCLUDES;
/// How long a checkout that no served registry uses is kept: past the
/// longest run a registry swap may leave going (`MAX_TIMEOUT`), with room.
pub const RETIRE_AFTER: Duration =
    Duration::from_secs(crate::registry::MAX_TIMEOUT.as_secs() + 300);
/// Most bytes of one library's checkout.
pub use crate::registry::MAX_CHECKOUT_BYTES;
/// Most files in one library's tree.
pub use crate::registry::MAX_LIBRARY_FILES as MAX_FILES;

/// gix's many error types, as a `LibraryError::Git`.
fn git(e: impl std::fmt::Display) -> LibraryError {
    LibraryError::Git(e.to_string())
}

/// An I/O error at `path`.
fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> LibraryError + '_ {
    move |source| LibraryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The library reader of one workspace (or of `dynapi check`'s checkout).
pub struct Libraries {
    /// Where bare caches of HTTP(S) libraries live.
    cache: PathBuf,
    /// Where read-only checkouts go; `None` where nothing runs (`dynapi check`).
    checkouts: Option<PathBuf>,
    /// The daemon's GitHub remote (`scheme://host[:port]`) and its token: sent
    /// to libraries on that host only.
    credentials: Option<(String, String)>,
    /// When each URL was last fetched, and why that fetch failed if it did.
    fetched: Mutex<HashMap<String, (Instant, Option<String>)>>,
    /// One fetch or checkout at a time (they share the caches).
    busy: Mutex<()>,
    /// Never fetch (`dynapi check --offline`): the cache answers.
    offline: bool,
    /// Checkouts no served registry uses, and since when.
    retired: Mutex<HashMap<String, Instant>>,
    /// The cache folders of the libraries the served registry includes.
    served_caches: Mutex<std::collections::HashSet<String>>,
    /// How long a retired checkout is kept (`RETIRE_AFTER`).
    retire_after: Duration,
    /// Refuse libraries on this machine's disk: a GitHub-mode daemon checks
    /// pull requests from anyone, whose includes must not read its disk.
    urls_only: bool,
}

impl Libraries {
    /// The reader of the workspace whose git folder is `git_dir`.
    pub fn for_workspace(git_dir: &Path) -> Libraries {
        Libraries {
            cache: git_dir.join(PRIVATE).join(LIBRARY_CACHE),
            checkouts: Some(git_dir.join(LIBRARIES)),
            credentials: None,
            fetched: Mutex::default(),
            busy: Mutex::default(),
            offline: false,
            urls_only: false,
            retired: Mutex::default(),
            served_caches: Mutex::default(),
            retire_after: RETIRE_AFTER,
        }
    }

    /// A reader that checks out nothing, caching in `cache` (`dynapi check`).
    pub fn for_check(cache: PathBuf, offline: bool) -> Libraries {
        Libraries {
            cache,
            checkouts: None,
            credentials: None,
            fetched: Mutex::default(),
            busy: Mutex::default(),
            offline,
            urls_only: false,
            retired: Mutex::default(),
            served_caches: Mutex::default(),
            retire_after: RETIRE_AFTER,
        }
    }

    /// Sends `token` to libraries on the host of `remote` (the daemon's
    /// GitHub repository URL), as the GitHub mode's fetches do.
    pub fn with_token(mut self, remote: &str, token: Option<&str>) -> Libraries {
        self.credentials = match (origin_of(remote), token) {
            (Some(origin), Some(token)) => Some((origin, token.to_string())),
            _ => None,
        };
        self
    }

    /// Reads libraries by URL only, never from this machine's disk (GitHub
    /// mode: anyone's pull request is checked with its includes).
    pub fn urls_only(mut self) -> Libraries {
        self.urls_only = true;
        self
    }

    /// Where the scripts of `library` are checked out, for the workspace
    /// whose git folder is `git_dir`.
    pub fn checkout_dir(git_dir: &Path, library: &Library) -> PathBuf {
        git_dir.join(LIBRARIES).join(&library.commit)
    }

    /// The repository a library is read from: where it is, or its cache
    /// (fetched first unless fresh), and why the fetch failed if it did.
    fn open(&self, include: &Include) -> Result<(gix::Repository, Option<String>), LibraryError> {
        if let Some(path) = local_path(&include.repository) {
            if self.urls_only {
                return Err(LibraryError::LocalRefused);
            }
            let repo =
                gix::open(path).map_err(|e| git(format!("cannot open {}: {e}", path.display())))?;
            return Ok((bounded(repo)?, None));
        }
        let dir = self.cache.join(cache_name(&include.repository));
        let repo = if dir.join("HEAD").exists() {
            gix::open(&dir).map_err(|e| git(format!("the cache at {}: {e}", dir.display())))?
        } else {
            if self.offline {
                return Err(LibraryError::NotCached);
            }
            self.prune_caches();
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            gix::init_bare(&dir).map_err(git)?
        };
        let repo = bounded(repo)?;
        if self.offline {
            return Ok((repo, Some("offline: read from the cache".to_string())));
        }
        let pinned = ObjectId::from_hex(include.git_ref.as_bytes())
            .ok()
            .is_some_and(|id| repo.find_commit(id).is_ok());
        let fresh = self
            .fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&include.repository)
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, failed)| failed.clone());
        if pinned {
            return Ok((repo, None));
        }
        if let Some(failed) = fresh {
            return Ok((repo, failed));
        }
        // A failed fetch waits `FRESH` too: a remote that hangs must not
        // hold every build (the writer's check among them) for its timeout.
        let fetched = self.fetch(&repo, &include.repository);
        if let Err(LibraryError::TooLarge) = fetched {
            // Nothing of it is kept, and it is not read from a cache.
            drop(repo);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(LibraryError::TooLarge);
        }
        let failed = fetched.err().map(|e| {
            tracing::warn!(library = %include.repository, "could not fetch the library; reading the cache: {e}");
            format!("could not fetch ({e}); read from the cache")
        });
        self.fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(include.repository.clone(), (Instant::now(), failed.clone()));
        Ok((repo, failed))
    }

    /// Before a new cache is made: when there are `MAX_CACHES` already, the
    /// caches of libraries the served registry does not include go (those a
    /// pull request named, say), so no one fills the disk one library at a time.
    fn prune_caches(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        let entries: Vec<_> = entries.flatten().collect();
        if entries.len() < MAX_CACHES {
            return;
        }
        let served = self
            .served_caches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !served.contains(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Fetches every branch and tag of `url` into the bare cache `repo`.
    fn fetch(&self, repo: &gix::Repository, url: &str) -> Result<(), LibraryError> {
        let token = self
            .credentials
            .as_ref()
            .filter(|(origin, _)| origin_of(url).as_deref() == Some(origin.as_str()))
            .map(|(_, token)| token.as_str());
        let from = Origin::new(url, token);
        let deadline = Deadline::start();
        let size = SizeWatch::start(
            repo.path().to_path_buf(),
            MAX_CACHE_BYTES,
            deadline.interrupter(),
        );
        let fetched = (|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let remote = repo.remote_at(url)?.with_refspecs(
                ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                gix::remote::Direction::Fetch,
            )?;
            let mut connection = remote.connect(gix::remote::Direction::Fetch)?;
            if let Some(options) = from.transport_options(repo)? {
                connection.set_transport_options(options);
            }
            connection
                .prepare_fetch(gix::progress::Discard, Default::default())?
                .receive(gix::progress::Discard, deadline.flag())?;
            Ok(())
        })();
        if size.passed() {
            return Err(LibraryError::TooLarge);
        }
        fetched.map_err(|e| LibraryError::Git(redact(&crate::error_chain(e.as_ref()))))
    }
}

/// Watches a folder's size while a fetch writes into it, and stops the
/// fetch (its interrupt flag) once the size passes a limit; gone when dropped.
struct SizeWatch {
    passed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _watcher: Watcher,
}

impl SizeWatch {
    /// How often the folder is measured.
    const EVERY: Duration = Duration::from_millis(100);

    fn start(
        dir: PathBuf,
        limit: u64,
        interrupt: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> SizeWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let passed = std::sync::Arc::new(AtomicBool::new(false));
        let over = passed.clone();
        let watcher = Watcher::spawn("library-size", move |finished| {
            while !finished.load(Ordering::SeqCst) {
                if size_of(&dir) > limit {
                    over.store(true, Ordering::SeqCst);
                    interrupt.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::park_timeout(Self::EVERY);
            }
        });
        SizeWatch {
            passed,
            _watcher: watcher,
        }
    }

    /// Whether the folder passed the limit (and the fetch was stopped).
    fn passed(&self) -> bool {
        self.passed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The bytes of the files under `dir` (not through symlinks).
fn size_of(dir: &Path) -> u64 {
    walk(dir)
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

impl Resolve for Libraries {
    fn resolve(&self, include: &Include) -> Result<LibrarySnapshot, LibraryError> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let (repo, offline) = self.open(include)?;
        let commit = resolve_ref(&repo, &include.git_ref).map_err(|e| match &offline {
            Some(why) => LibraryError::Stale(Box::new(e), why.clone()),
            None => e,
        })?;
        let tree = tree_of(&repo, commit)?;
        let read = read_snapshot(&repo, tree).map_err(git)?;
        let mut kinds = HashMap::new();
        for (path, mode, _) in tree_entries(&repo, tree)? {
            kinds.insert(path, kind_of_mode(mode));
        }
        let prefix = format!("{MANIFEST_DIR}/");
        Ok(LibrarySnapshot {
            commit: commit.to_string(),
            manifests: read.manifests,
            too_large: read
                .too_large
                .into_iter()
                .filter(|(path, _)| path.starts_with(&prefix))
                .collect(),
            kinds,
            offline,
        })
    }

    fn check_out(&self, library: &Library) -> Result<(), LibraryError> {
        let Some(checkouts) = &self.checkouts else {
            return Ok(());
        };
        let id = ObjectId::from_hex(library.commit.as_bytes()).map_err(git)?;
        let done = checkouts.join(id.to_string());
        if done.is_dir() {
            return Ok(());
        }
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if done.is_dir() {
            return Ok(());
        }
        let include = Include {
            repository: library.repository.clone(),
            git_ref: library.git_ref.clone(),
            endpoints: None,
            prefix: None,
            grant: Default::default(),
            line: 0,
            column: 0,
        };
        // The commit was resolved by this reader moments ago: no fetch.
        let repo = bounded(match local_path(&include.repository) {
            Some(path) => gix::open(path).map_err(git)?,
            None => gix::open(self.cache.join(cache_name(&include.repository))).map_err(git)?,
        })?;
        let tree = tree_of(&repo, id)?;
        std::fs::create_dir_all(checkouts).map_err(io_at(checkouts))?;
        let tmp = checkouts.join(format!(".new-{id}-{}", std::process::id()));
        let _ = remove_tree(&tmp);
        let written = write_checkout(&repo, tree, &tmp);
        let renamed = written.and_then(|()| std::fs::rename(&tmp, &done).map_err(io_at(&done)));
        if renamed.is_err() {
            let _ = remove_tree(&tmp);
        }
        renamed
    }

    fn retire_others(&self, libraries: &[std::sync::Arc<Library>]) {
        *self.served_caches.lock().unwrap_or_else(|e| e.into_inner()) = libraries
            .iter()
            .map(|l| cache_name(&l.repository))
            .collect();
        let served: Vec<String> = libraries.iter().map(|l| l.commit.clone()).collect();
        let Some(checkouts) = &self.checkouts else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(checkouts) else {
            return;
        };
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|commit, _| !served.contains(commit));
        let ours = format!("-{}", std::process::id());
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if served.contains(&name) {
                continue;
            }
            // A checkout a stopped daemon left half written.
            if name.starts_with(".new-") {
                if !name.ends_with(&ours) {
                    let _ = remove_tree(&entry.path());
                }
                continue;
            }
            let since = *retired.entry(name.clone()).or_insert_with(Instant::now);
            if since.elapsed() >= self.retire_after && remove_tree(&entry.path()).is_ok() {
                retired.remove(&name);
            }
        }
    }
}

/// `repo`, where no object is inflated past `MAX_CHECKOUT_BYTES` (a fetch
/// indexing its pack, a blob read): a blob of zeros packs a thousand times
/// smaller than it is.
fn bounded(mut repo: gix::Repository) -> Result<gix::Repository, LibraryError> {
    let mut config = repo.config_snapshot_mut();
    config
        .set_value(
            &gix::config::tree::gitoxide::Objects::ALLOC_LIMIT,
            MAX_CHECKOUT_BYTES.to_string().as_str(),
        )
        .map_err(git)?;
    config.commit().map_err(git)?;
    Ok(repo)
}

/// Walks a tree as `Recorder` does, but stops once it has seen `MAX_FILES`
/// entries past the limit (folders counted too) or a path longer than
/// `MAX_PATH`: a tree whose entries are one tree again and again names
/// exponentially many paths from a few small objects.
struct Bounded {
    inner: gix::traverse::tree::Recorder,
    seen: usize,
    over: bool,
}

/// Longest path of a library's tree that is walked.
const MAX_PATH: usize = 4096;

impl Bounded {
    fn step(&mut self) -> gix::traverse::tree::visit::Action {
        self.seen += 1;
        if self.seen > 2 * MAX_FILES || self.inner.path().len() > MAX_PATH {
            self.over = true;
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(true)
    }
}

impl gix::traverse::tree::Visit for Bounded {
    fn pop_back_tracked_path_and_set_current(&mut self) {
        self.inner.pop_back_tracked_path_and_set_current()
    }
    fn pop_front_tracked_path_and_set_current(&mut self) {
        self.inner.pop_front_tracked_path_and_set_current()
    }
    fn push_back_tracked_path_component(&mut self, c: &gix::bstr::BStr) {
        self.inner.push_back_tracked_path_component(c)
    }
    fn push_path_component(&mut self, c: &gix::bstr::BStr) {
        self.inner.push_path_component(c)
    }
    fn pop_path_component(&mut self) {
        self.inner.pop_path_component()
    }
    fn visit_tree(
        &mut self,
        e: &gix::objs::tree::EntryRef<'_>,
    ) -> gix::traverse::tree::visit::Action {
        self.step()?;
        self.inner.visit_tree(e)
    }
    fn visit_nontree(
        &mut self,
        e: &gix::objs::tree::EntryRef<'_>,
    ) -> gix::traverse::tree::visit::Action {
        self.step()?;
        self.inner.visit_nontree(e)
    }
}

/// The tree of `commit`.
fn tree_of(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId, LibraryError> {
    let commit = repo.find_commit(commit).map_err(git)?;
    Ok(commit.tree_id().map_err(git)?.detach())
}

/// `scheme://host[:port]` of an http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    Some(parsed.origin().ascii_serialization())
}

/// The path of a local library (`/srv/lib.git` or `file:///srv/lib.git`).
fn local_path(repository: &str) -> Option<&Path> {
    let path = repository.strip_prefix("file://").unwrap_or(repository);
    path.starts_with('/').then(|| Path::new(path))
}

/// The cache folder of a URL: a digest, so no URL spells a path.
fn cache_name(url: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(url.as_bytes())[..16])
}

/// The commit `name` is: a full commit id the repository holds, else the tag,
/// else the branch of that name.
fn resolve_ref(repo: &gix::Repository, name: &str) -> Result<ObjectId, LibraryError> {
    if let Ok(id) = ObjectId::from_hex(name.as_bytes()) {
        return repo
            .find_commit(id)
            .map(|c| c.id)
            .map_err(|_| LibraryError::NoCommit(name.to_string()));
    }
    for full in [format!("refs/tags/{name}"), format!("refs/heads/{name}")] {
        if let Ok(Some(mut found)) = repo.try_find_reference(full.as_str()) {
            let id = found.peel_to_id().map_err(git)?.detach();
            return repo
                .find_commit(id)
                .map(|c| c.id)
                .map_err(|_| LibraryError::NotACommit(name.to_string()));
        }
    }
    Err(LibraryError::NoRef(name.to_string()))
}

/// Every entry of `tree` below the root that is not a folder: path and mode,
/// at most `MAX_FILES`.
fn tree_entries(
    repo: &gix::Repository,
    tree: ObjectId,
) -> Result<Vec<(String, gix::objs::tree::EntryMode, ObjectId)>, LibraryError> {
    let mut bounded = Bounded {
        inner: gix::traverse::tree::Recorder::default(),
        seen: 0,
        over: false,
    };
    let walked = repo
        .find_tree(tree)
        .map_err(git)?
        .traverse()
        .breadthfirst(&mut bounded);
    if bounded.over {
        return Err(LibraryError::TooManyFiles);
    }
    walked.map_err(git)?;
    let mut entries = Vec::new();
    for entry in bounded.inner.records {
        if EntryKind::from(entry.mode) == EntryKind::Tree {
            continue;
        }
        if entries.len() >= MAX_FILES {
            return Err(LibraryError::TooManyFiles);
        }
        let Ok(path) = entry.filepath.to_str() else {
            continue;
        };
        entries.push((path.to_string(), entry.mode, entry.oid));
    }
    Ok(entries)
}

/// Whether `path` (from a tree) may be written in a checkout: plain segments,
/// none `..`, `.` or `.git`.
fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains(['\\', '\0'])
        && path.split('/').all(|seg| {
            !seg.is_empty() && seg != "." && seg != ".." && !seg.eq_ignore_ascii_case(".git")
        })
}

/// Writes the regular files of `tree` under `dir` (new), read-only.
fn write_checkout(repo: &gix::Repository, tree: ObjectId, dir: &Path) -> Result<(), LibraryError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dir).map_err(io_at(dir))?;
    let mut total = 0u64;
    for (path, mode, id) in tree_entries(repo, tree)? {
        let executable = match EntryKind::from(mode) {
            EntryKind::Blob => false,
            EntryKind::BlobExecutable => true,
            // Symlinks could point anywhere; submodules are other repositories.
            _ => continue,
        };
        if !safe_path(&path) {
            tracing::warn!(%path, "a library path that cannot be checked out safely is left out");
            continue;
        }
        // The size from the object's header: a blob past the limit is never
        // inflated.
        total += repo.find_header(id).map_err(git)?.size();
        if total > MAX_CHECKOUT_BYTES {
            return Err(LibraryError::TooLarge);
        }
        let data = repo.find_blob(id).map_err(git)?.take_data();
        let target = dir.join(&path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        // `create_new`: a path written twice, or anything already there
        // (a folder a symlink made), is an error, never followed.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(io_at(&target))?;
        std::io::Write::write_all(&mut file, &data).map_err(io_at(&target))?;
        let mode = if executable { 0o555 } else { 0o444 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_at(&target))?;
    }
    // Deepest first, so a folder is closed after what is in it.
    let mut folders = walk(dir);
    folders.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for folder in folders {
        std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555))
            .map_err(io_at(&folder))?;
    }
    Ok(())
}

/// Removes a checkout folder its read-only modes would otherwise protect.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(dir) {
        let _ = std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755));
    }
    std::fs::remove_dir_all(dir)
}

/// The folders under `dir` (itself included), not through symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if !std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            todo.extend(entries.flatten().map(|e| e.path()));
        }
        found.push(d);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A library served at `commit`, as the registry names it.
    fn library(repository: &str, commit: &str) -> std::sync::Arc<Library> {
        std::sync::Arc::new(Library {
            repository: repository.into(),
            git_ref: "v1".into(),
            commit: commit.into(),
            prefix: None,
            offline: None,
            line: 2,
            column: 5,
        })
    }

    #[test]
    fn checkouts_no_registry_serves_are_removed_once_retired_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let git = tempfile::tempdir().unwrap();
        let mut libraries = Libraries::for_workspace(git.path());
        libraries.retire_after = Duration::from_millis(50);
        let checkouts = git.path().join(LIBRARIES);
        let (served, old) = ("a".repeat(40), "b".repeat(40));
        let leftover = format!(".new-{old}-0");
        for name in [&served, &old, &leftover] {
            let dir = checkouts.join(name).join("scripts");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("x.sh"), "#!/bin/sh\n").unwrap();
            for d in [dir.clone(), checkouts.join(name)] {
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
            }
        }
        let library = library("/srv/lib.git", &served);
        let served_now = std::slice::from_ref(&library);
        libraries.retire_others(served_now);
        assert!(checkouts.join(&old).is_dir(), "kept while runs may use it");
        assert!(
            !checkouts.join(&leftover).exists(),
            "a dead daemon's half-written one goes"
        );
        std::thread::sleep(Duration::from_millis(60));
        libraries.retire_others(served_now);
        assert!(!checkouts.join(&old).exists());
        assert!(checkouts.join(&served).join("scripts/x.sh").is_file());
    }

    #[test]
    fn a_fetch_is_stopped_once_the_cache_passes_its_limit() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("objects/pack")).unwrap();
        let interrupt = std::sync::Arc::new(AtomicBool::new(false));
        let watch = SizeWatch::start(dir.path().to_path_buf(), 1000, interrupt.clone());
        std::fs::write(dir.path().join("objects/pack/tmp_pack_1"), vec![0u8; 600]).unwrap();
        std::thread::sleep(SizeWatch::EVERY * 3);
        assert!(!interrupt.load(Ordering::SeqCst) && !watch.passed());
        std::fs::write(dir.path().join("objects/pack/tmp_pack_2"), vec![0u8; 600]).unwrap();
        for _ in 0..50 {
            if watch.passed() {
                break;
            }
            std::thread::sleep(SizeWatch::EVERY);
        }
        assert!(watch.passed() && interrupt.load(Ordering::SeqCst));
    }

    #[test]
    fn caches_no_served_registry_includes_go_before_one_too_many_is_made() {
        let git = tempfile::tempdir().unwrap();
        let libraries = Libraries::for_workspace(git.path());
        let served = library("https://example.com/served.git", &"a".repeat(40));
        libraries.retire_others(std::slice::from_ref(&served));
        let cache = git.path().join(PRIVATE).join(LIBRARY_CACHE);
        let names: Vec<String> = (0..MAX_CACHES - 1)
            .map(|i| cache_name(&format!("https://example.com/{i}.git")))
            .chain([cache_name(&served.repository)])
            .collect();
        for name in &names[1..] {
            std::fs::create_dir_all(cache.join(name)).unwrap();
        }
        libraries.prune_caches();
        assert!(cache.join(&names[1]).is_dir(), "below the count, all stay");
        std::fs::create_dir_all(cache.join(&names[0])).unwrap();
        libraries.prune_caches();
        let left: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
        assert_eq!(left.len(), 1);
        assert!(cache.join(cache_name(&served.repository)).is_dir());
    }

    #[test]
    fn only_plain_paths_are_checked_out() {
        assert!(safe_path("scripts/lint.sh"));
        for bad in [
            "",
            "/etc/x",
            "../x",
            "a/../b",
            "a/./b",
            ".git/config",
            "a/.GIT/x",
            "a\\b",
        ] {
            assert!(!safe_path(bad), "{bad}");
        }
    }

    #[test]
    fn credentials_go_to_the_remote_s_host_only() {
        assert_eq!(
            origin_of("https://github.com/acme/lib").as_deref(),
            Some("https://github.com")
        );
        assert_ne!(
            origin_of("https://github.com.evil.example/acme/lib"),
            origin_of("https://github.com/acme/lib")
        );
        assert_ne!(
            origin_of("http://127.0.0.1:1/a"),
            origin_of("http://127.0.0.1:2/a")
        );
        assert_eq!(origin_of("/srv/lib.git"), None);
    }
}
