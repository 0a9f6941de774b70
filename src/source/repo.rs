//! The git repository behind the workspace, through gix: creating one from the
//! template, reading a commit's manifests (and, through the `Resolve` it is
//! given, the libraries its `dynapi.yaml` includes), and writing a commit
//! whose ref update is a compare-and-swap on the branch.
//!
//! Everything here is blocking; callers run it on tokio's blocking pool. Only
//! `change.rs` may call `commit_tree`: it is the single writer (the call is
//! visible in `source` only).

use std::path::{Path, PathBuf};

use gix::bstr::{BStr, ByteSlice};
use gix::object::tree::EntryKind;
use gix::ObjectId;

use crate::manifest::{Problem, MAX_FILE_BYTES, MAX_MANIFESTS};
use crate::registry::{
    self, FileKind, LibraryError, LibrarySnapshot, Registry, Snapshot, MANIFEST_DIR, MAX_PROMPTS,
    PROMPTS_DIR, SETTINGS_FILE,
};
use crate::workspace::TemplateFile;

/// How long a write waits for git's index lock (`.git/index.lock`) that a
/// human's git or an editor holds; past it the commit stands and the index is
/// brought in step by a later write.
pub const INDEX_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long one read of a fetch from GitHub may wait (reqwest's blocking
/// client applies it to each read, not to the whole request).
pub const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a whole fetch may take before it is interrupted (`Deadline`): a
/// server that trickles bytes, each read in time, still cannot hold the
/// writer, which fetches under its lock.
pub const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// A thread that watches something while a fetch runs: `body` runs until it
/// returns or the watcher is dropped (then its `done` flag, which `body`
/// checks, is set and the thread woken from `park_timeout`).
pub(super) struct Watcher {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    pub(super) fn spawn(
        name: &str,
        body: impl FnOnce(&std::sync::atomic::AtomicBool) + Send + 'static,
    ) -> Watcher {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let finished = done.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&finished))
            .ok();
        Watcher { done, thread }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Sets an interrupt flag gix checks while it receives a pack once
/// `FETCH_DEADLINE` has passed; a thread that sleeps until then, woken and
/// gone as soon as the fetch ends (dropped).
pub(super) struct Deadline {
    interrupt: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _watcher: Watcher,
}

impl Deadline {
    pub(super) fn start() -> Deadline {
        use std::sync::atomic::{AtomicBool, Ordering};
        let interrupt = std::sync::Arc::new(AtomicBool::new(false));
        let set = interrupt.clone();
        let end = std::time::Instant::now() + FETCH_DEADLINE;
        let watcher = Watcher::spawn("fetch-deadline", move |finished| loop {
            if finished.load(Ordering::SeqCst) {
                return;
            }
            let now = std::time::Instant::now();
            if now >= end {
                set.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::park_timeout(end - now);
        });
        Deadline {
            interrupt,
            _watcher: watcher,
        }
    }

    pub(super) fn flag(&self) -> &std::sync::atomic::AtomicBool {
        &self.interrupt
    }

    /// The flag itself, for another watcher that may stop the fetch sooner
    /// (a library's size, `source::library`).
    pub(super) fn interrupter(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.interrupt.clone()
    }
}

/// Git's index lock, held (`Repo::lock_index`); removed when dropped unwritten.
/// While it is held, `.git/dynapi/index-lock` says the daemon holds it: a
/// daemon killed meanwhile leaves both, and the next start removes them
/// (`Repo::clear_own_index_lock`), where git would ask a human to.
pub struct IndexLock {
    file: Option<gix::lock::File>,
    marker: PathBuf,
}

impl Drop for IndexLock {
    fn drop(&mut self) {
        drop(self.file.take());
        let _ = std::fs::remove_file(&self.marker);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("git: {0}")]
    Git(String),
    #[error("the branch moved while committing")]
    Moved,
    /// Git's index lock stayed held past `INDEX_LOCK_WAIT`.
    #[error("the index is locked by another git process: {0}")]
    IndexLocked(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<gix::Error> for RepoError {
    fn from(e: gix::Error) -> Self {
        RepoError::Git(e.to_string())
    }
}

/// Who a commit is by.
#[derive(Debug, Clone)]
pub struct Author {
    pub name: String,
    pub email: String,
}

impl Author {
    fn signature(&self) -> gix::actor::Signature {
        gix::actor::Signature {
            name: self.name.as_str().into(),
            email: self.email.as_str().into(),
            time: gix::date::Time::now_utc(),
        }
    }
}

/// The daemon's handle on the repository of the workspace and the branch it serves.
#[derive(Clone)]
pub struct Repo {
    repo: gix::ThreadSafeRepository,
    branch: String,
    /// Serializes checkouts (the sync and the GitHub-mode writer both make them).
    checkout_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// Fetches update the same remote-tracking refs; two at once would race on
    /// them (the sync's and the writer's), so they go one at a time.
    fetch_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// Reads the libraries `dynapi.yaml` includes (`with_libraries`); without
    /// it an include is a problem.
    libraries: Option<std::sync::Arc<dyn Resolve>>,
}

/// Where the daemon fetches from. The URL never holds credentials: gix writes it
/// into `.git/config`, and scripts may read `.git`. The token stays in memory and
/// reaches git as an `Authorization` header that gix adds to each request of a
/// connection (the `http.extraHeader` way, minus the file).
#[derive(Clone)]
pub struct Origin {
    pub url: String,
    /// The whole header line, `Authorization: Basic ...`.
    authorization: Option<String>,
}

impl Origin {
    /// `url` must not hold credentials; `token`, when given, is sent as GitHub
    /// expects a token over git's smart HTTP: Basic, user `x-access-token`.
    pub fn new(url: impl Into<String>, token: Option<&str>) -> Origin {
        use base64::Engine as _;
        Origin {
            url: url.into(),
            authorization: token.map(|t| {
                let pair = format!("x-access-token:{t}");
                format!(
                    "Authorization: Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }),
        }
    }

    /// Whether requests carry the token.
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }

    /// The transport options gix would use for this URL (proxies, timeouts from
    /// the git configuration), plus the header with the token.
    pub(super) fn transport_options(
        &self,
        repo: &gix::Repository,
    ) -> Result<Option<Box<dyn std::any::Any>>, gix::Error> {
        use gix::protocol::transport::client::blocking_io::http;
        let mut options = repo.transport_options(self.url.as_str(), None)?;
        if let Some(http) = options
            .as_mut()
            .and_then(|o| o.downcast_mut::<http::Options>())
        {
            if let Some(header) = &self.authorization {
                http.extra_headers.push(header.clone());
            }
            // No read of a fetch waits past `FETCH_TIMEOUT`, so a hung
            // connection cannot hold the writer (which fetches under its
            // lock); `Deadline` bounds the whole fetch.
            let backend = http::reqwest::Options {
                configure_client: Some(Box::new(|builder| Ok(builder.timeout(FETCH_TIMEOUT)))),
                configure_request: None,
            };
            http.backend = Some(std::sync::Arc::new(std::sync::Mutex::new(backend)));
        }
        Ok(options)
    }
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("url", &self.url)
            .field("credentials", &self.has_credentials())
            .finish()
    }
}

/// One file of a tree: its blob id and whether it is executable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeFile {
    pub id: ObjectId,
    pub executable: bool,
}

impl Repo {
    /// Creates a repository at `dir` whose first commit on `branch` holds `files`.
    pub fn init(
        dir: &Path,
        branch: &str,
        files: &[TemplateFile],
        author: &Author,
    ) -> Result<Repo, RepoError> {
        std::fs::create_dir_all(dir)?;
        let repo = gix::init(dir)?;
        let head = gix::refs::transaction::RefEdit {
            change: gix::refs::transaction::Change::Update {
                log: Default::default(),
                expected: gix::refs::transaction::PreviousValue::Any,
                new: gix::refs::Target::Symbolic(
                    format!("refs/heads/{branch}").try_into().map_err(git)?,
                ),
            },
            name: "HEAD".try_into().map_err(git)?,
            deref: false,
        };
        repo.edit_reference(head)?;
        let this = Repo {
            repo: repo.into_sync(),
            branch: branch.to_string(),
            checkout_lock: Default::default(),
            fetch_lock: Default::default(),
            libraries: None,
        };
        let edits: Vec<Edit> = files
            .iter()
            .map(|f| Edit::Write {
                path: f.path.clone(),
                contents: f.contents.clone(),
                executable: f.executable,
            })
            .collect();
        let ws = crate::workspace::Workspace::open(dir)?;
        for f in files {
            ws.write_atomic(&ws.root().join(&f.path), &f.contents, f.executable)?;
        }
        let tree = this.tree_with(None, &edits)?;
        this.commit_tree(None, tree, "Start from the dynapi template", author)?;
        this.update_index(&edits)?;
        Ok(this)
    }

    /// Clones `branch` of `from` into `dir` (new or empty) with gix, then writes
    /// its files into the working tree (confined by `ws_root`'s workspace).
    pub fn clone(from: &Origin, dir: &Path, branch: &str) -> Result<Repo, RepoError> {
        std::fs::create_dir_all(dir)?;
        // No deadline: a first clone of a large repository may take long.
        let interrupt = std::sync::atomic::AtomicBool::new(false);
        let origin = from.clone();
        let (repo, _) = gix::prepare_clone(from.url.as_str(), dir)
            .map_err(git)?
            .with_ref_name(Some(branch))
            .map_err(git)?
            // Each connection of the clone gets the token in memory; the remote
            // gix records in `.git/config` is the bare URL.
            .configure_connection(move |connection| {
                let options = origin.transport_options(connection.remote().repo())?;
                if let Some(options) = options {
                    connection.set_transport_options(options);
                }
                Ok(())
            })
            .fetch_only(gix::progress::Discard, &interrupt)
            .map_err(|e| RepoError::Git(redact(&crate::error_chain(&e))))?;
        let this = Repo {
            repo: repo.into_sync(),
            branch: branch.to_string(),
            checkout_lock: Default::default(),
            fetch_lock: Default::default(),
            libraries: None,
        };
        let head = this
            .head()?
            .ok_or_else(|| RepoError::Git(format!("the remote has no branch `{branch}`")))?;
        let workspace = crate::workspace::Workspace::open(dir)?;
        this.checkout(&workspace, None, head)?;
        Ok(this)
    }

    /// Fetches the branch from `from` into `refs/remotes/origin/<branch>` and
    /// answers the commit it points at there.
    pub fn fetch(&self, from: &Origin) -> Result<ObjectId, RepoError> {
        let branch = &self.branch;
        self.fetch_ref(
            from,
            &format!("refs/heads/{branch}"),
            &format!("refs/remotes/origin/{branch}"),
        )
    }

    /// Fetches pull request `number`'s head from `from` (GitHub keeps it at
    /// `refs/pull/N/head`, for forks too) into `refs/dynapi/pull/N`.
    pub fn fetch_pull(&self, from: &Origin, number: u64) -> Result<ObjectId, RepoError> {
        self.fetch_ref(
            from,
            &format!("refs/pull/{number}/head"),
            &format!("refs/dynapi/pull/{number}"),
        )
    }

    /// Fetches ref `name` from `from` into `local`; the commit it points at.
    fn fetch_ref(&self, from: &Origin, name: &str, local: &str) -> Result<ObjectId, RepoError> {
        let _one = self.fetch_lock.lock().unwrap_or_else(|e| e.into_inner());
        let repo = self.repo.to_thread_local();
        let deadline = Deadline::start();
        let spec = format!("+{name}:{local}");
        let fetched = (|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let remote = repo
                .remote_at(from.url.as_str())?
                .with_refspecs([spec.as_str()], gix::remote::Direction::Fetch)?;
            let mut connection = remote.connect(gix::remote::Direction::Fetch)?;
            if let Some(options) = from.transport_options(&repo)? {
                connection.set_transport_options(options);
            }
            connection
                .prepare_fetch(gix::progress::Discard, Default::default())?
                .receive(gix::progress::Discard, deadline.flag())?;
            Ok(())
        })();
        fetched.map_err(|e| RepoError::Git(redact(&crate::error_chain(e.as_ref()))))?;
        let mut found = repo.find_reference(local).map_err(git)?;
        Ok(found.peel_to_id().map_err(git)?.detach())
    }

    /// Makes the working tree, the index and the branch hold commit `to`: files
    /// that differ from commit `from` (or every file, without one) are written or
    /// removed, each path confined by `ws`. Ignored and untracked files stay.
    ///
    /// Checkouts are serialized, and never go back: moving to an ancestor of
    /// what is checked out does nothing (a sync that fetched before a write
    /// landed must not undo it).
    pub fn checkout(
        &self,
        ws: &crate::workspace::Workspace,
        from: Option<ObjectId>,
        to: ObjectId,
    ) -> Result<(), RepoError> {
        let _one = self.checkout_lock.lock().unwrap_or_else(|e| e.into_inner());
        let from = match from {
            // A fresh clone: everything is to be written.
            None => None,
            Some(_) => self.head()?,
        };
        if let Some(local) = from {
            if local == to || self.is_ancestor(to, local)? {
                return Ok(());
            }
        }
        let old = match from {
            Some(commit) => self.files_of(self.tree_of(commit)?)?,
            None => Default::default(),
        };
        let new = self.files_of(self.tree_of(to)?)?;
        let mut edits = Vec::new();
        for (path, file) in &new {
            if old.get(path) != Some(file) {
                edits.push(Edit::Blob {
                    path: path.clone(),
                    id: file.id,
                    executable: file.executable,
                });
            }
        }
        for path in old.keys().filter(|p| !new.contains_key(*p)) {
            edits.push(Edit::Delete { path: path.clone() });
        }
        // A path this workspace refuses (a name with a backslash, `.GIT/x`,
        // one through a symlink) is left out, never a checkout that fails
        // for good and wedges every sync after it.
        let mut targets = Vec::with_capacity(edits.len());
        edits.retain(|edit| match ws.resolve(edit.path()) {
            Ok(target) => {
                targets.push(target);
                true
            }
            Err(e) => {
                tracing::warn!(path = edit.path(), "left out of the checkout: {e}");
                false
            }
        });
        // Git's index lock from before the first file is written until the
        // index holds them (`lock_index`).
        let lock = self.lock_index()?;
        // Removals first, with the folders they leave empty, then writes: a
        // file that became a folder (`docs` to `docs/index.md`) or the other
        // way round finds its place free.
        for (edit, target) in edits.iter().zip(&targets) {
            if matches!(edit, Edit::Delete { .. }) {
                match ws.remove_file(target) {
                    Ok(()) => ws.remove_empty_parents(target),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // One file in memory at a time.
        for (edit, target) in edits.iter().zip(&targets) {
            if let Edit::Blob { id, executable, .. } = edit {
                ws.remove_empty_tree(target)?;
                ws.write_atomic(target, &self.blob(*id)?, *executable)?;
            }
        }
        self.write_index(lock, &edits)?;
        self.set_branch(to)
    }

    /// Whether `ancestor` is reachable from `commit` (looking at 10,000 commits).
    fn is_ancestor(&self, ancestor: ObjectId, commit: ObjectId) -> Result<bool, RepoError> {
        let repo = self.repo.to_thread_local();
        for info in repo.rev_walk([commit]).all().map_err(git)?.take(10_000) {
            if info.map_err(git)?.id == ancestor {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Points the branch at `commit`, whatever it pointed at (after a fetch).
    fn set_branch(&self, commit: ObjectId) -> Result<(), RepoError> {
        let repo = self.repo.to_thread_local();
        repo.reference(
            self.refname().as_str(),
            commit,
            gix::refs::transaction::PreviousValue::Any,
            "dynapi: serve the fetched commit",
        )
        .map_err(git)?;
        Ok(())
    }

    pub fn open(dir: &Path, branch: &str) -> Result<Repo, RepoError> {
        Ok(Repo {
            repo: gix::ThreadSafeRepository::open(dir).map_err(git)?,
            branch: branch.to_string(),
            checkout_lock: Default::default(),
            fetch_lock: Default::default(),
            libraries: None,
        })
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    fn refname(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// The commit the branch points at now, if it exists yet.
    pub fn head(&self) -> Result<Option<ObjectId>, RepoError> {
        let repo = self.repo.to_thread_local();
        let found = repo.try_find_reference(self.refname().as_str())?;
        Ok(match found {
            Some(mut r) => Some(r.peel_to_id()?.detach()),
            None => None,
        })
    }

    /// The branch a human has checked out in the workspace when it is not the
    /// served one (`git checkout other`, or a detached HEAD: `Some("HEAD")`);
    /// `None` when it is the served branch.
    pub fn other_checkout(&self) -> Result<Option<String>, RepoError> {
        let repo = self.repo.to_thread_local();
        let head = repo.head_name().map_err(git)?;
        Ok(match head {
            Some(name) if name.as_bstr() == self.refname().as_bytes().as_bstr() => None,
            Some(name) => Some(name.shorten().to_string()),
            None => Some("HEAD".to_string()),
        })
    }

    /// Whether the executable bit on disk means something: git's
    /// `core.fileMode` (true unless the repository says false).
    /// Read from `.git/config` each time: a human may set it while the
    /// daemon runs.
    pub fn trusts_file_mode(&self) -> bool {
        let path = self.git_dir().join("config");
        gix::config::File::from_path_no_includes(path, gix::config::Source::Local)
            .ok()
            .and_then(|config| config.boolean("core.fileMode").ok().flatten())
            .unwrap_or(true)
    }

    /// The tree of `commit`.
    pub fn tree_of(&self, commit: ObjectId) -> Result<ObjectId, RepoError> {
        let repo = self.repo.to_thread_local();
        let tree = repo.find_commit(commit)?.tree_id()?.detach();
        Ok(tree)
    }

    /// A file of `tree`, or None when the path is missing or not a file.
    pub fn file(&self, tree: ObjectId, path: &str) -> Result<Option<TreeFile>, RepoError> {
        let repo = self.repo.to_thread_local();
        let entry = repo.find_tree(tree)?.lookup_entry_by_path(path)?;
        Ok(entry.and_then(|e| match EntryKind::from(e.mode()) {
            EntryKind::Blob => Some(TreeFile {
                id: e.object_id(),
                executable: false,
            }),
            EntryKind::BlobExecutable => Some(TreeFile {
                id: e.object_id(),
                executable: true,
            }),
            _ => None,
        }))
    }

    pub fn blob(&self, id: ObjectId) -> Result<Vec<u8>, RepoError> {
        let repo = self.repo.to_thread_local();
        let data = repo.find_blob(id)?.take_data();
        Ok(data)
    }

    /// Every file of `tree`, by path (symlinks and submodules left out).
    pub fn files_of(
        &self,
        tree: ObjectId,
    ) -> Result<std::collections::BTreeMap<String, TreeFile>, RepoError> {
        let repo = self.repo.to_thread_local();
        let mut recorder = gix::traverse::tree::Recorder::default();
        repo.find_tree(tree)?
            .traverse()
            .breadthfirst(&mut recorder)
            .map_err(git)?;
        let mut files = std::collections::BTreeMap::new();
        for entry in recorder.records {
            let executable = match EntryKind::from(entry.mode) {
                EntryKind::Blob => false,
                EntryKind::BlobExecutable => true,
                _ => continue,
            };
            // A name that is not UTF-8 cannot be spelled in a request, and a
            // lossy spelling would write (and later commit) another file: left
            // out of everything the daemon does with trees.
            let Ok(path) = entry.filepath.to_str() else {
                tracing::warn!(path = %entry.filepath, "a file name that is not UTF-8 is left alone");
                continue;
            };
            files.insert(
                path.to_string(),
                TreeFile {
                    id: entry.oid,
                    executable,
                },
            );
        }
        Ok(files)
    }

    /// Builds the registry of `tree` (at `commit`): reads `dynapi.yaml`, every
    /// `manifests/*.yaml` and every `prompts/*.md` from the tree, never from the
    /// working directory, and the libraries `include:` names through `Resolve`
    /// (a library that cannot be read is a problem at its include).
    pub fn registry_of(
        &self,
        commit: &str,
        tree: ObjectId,
    ) -> Result<Result<Registry, Vec<Problem>>, RepoError> {
        let repo = self.repo.to_thread_local();
        let mut snapshot = read_snapshot(&repo, tree)?;
        // The libraries `include:` names are fetched first (I/O, here); the
        // registry checks what was found without any.
        if let Some(text) = &snapshot.settings {
            snapshot.libraries = registry::includes_of(text)
                .iter()
                .map(|include| match &self.libraries {
                    Some(libraries) => libraries.resolve(include),
                    None => Err(LibraryError::Unavailable),
                })
                .collect();
        }
        let root = repo.find_tree(tree)?;
        let kind_of = |path: &str| match root.lookup_entry_by_path(path) {
            Ok(Some(e)) => kind_of_mode(e.mode()),
            _ => FileKind::Missing,
        };
        Ok(Registry::build(commit, &snapshot, &kind_of))
    }

    /// Gives the registry's libraries their read-only checkouts, where their
    /// scripts run, and retires the others; a library that cannot be checked
    /// out is a problem at its include (the registry is then not served).
    /// Called for a registry about to be served.
    pub fn check_out_libraries(&self, registry: &Registry) -> Result<(), Vec<Problem>> {
        let Some(libraries) = &self.libraries else {
            return Ok(());
        };
        let problems: Vec<Problem> = registry
            .libraries()
            .iter()
            .filter_map(|library| {
                libraries.check_out(library).err().map(|why| Problem {
                    file: SETTINGS_FILE.to_string(),
                    line: library.line,
                    column: library.column,
                    message: format!("could not check out {}: {why}", library.label()),
                })
            })
            .collect();
        if problems.is_empty() {
            libraries.retire_others(registry.libraries());
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The same repository, reading the libraries its `dynapi.yaml` includes
    /// through `libraries`.
    pub fn with_libraries(mut self, libraries: std::sync::Arc<dyn Resolve>) -> Repo {
        self.libraries = Some(libraries);
        self
    }

    /// Writes the blobs of `edits` and a tree that is `base` (or empty) with them applied.
    pub fn tree_with(&self, base: Option<ObjectId>, edits: &[Edit]) -> Result<ObjectId, RepoError> {
        let repo = self.repo.to_thread_local();
        let base = base.unwrap_or_else(|| ObjectId::empty_tree(repo.object_hash()));
        let mut editor = repo.edit_tree(base)?;
        for edit in edits {
            match edit {
                Edit::Write {
                    path,
                    contents,
                    executable,
                } => {
                    let id = repo.write_blob(contents)?.detach();
                    let kind = if *executable {
                        EntryKind::BlobExecutable
                    } else {
                        EntryKind::Blob
                    };
                    editor.upsert(path.as_str(), kind, id)?;
                }
                Edit::Blob {
                    path,
                    id,
                    executable,
                } => {
                    let kind = if *executable {
                        EntryKind::BlobExecutable
                    } else {
                        EntryKind::Blob
                    };
                    editor.upsert(path.as_str(), kind, *id)?;
                }
                Edit::Delete { path } => {
                    editor.remove(path.as_str())?;
                }
            }
        }
        Ok(editor.write()?.detach())
    }

    /// Commits `tree` on the branch with `parent` as its parent. The ref moves only
    /// if it still points at `parent` (a compare-and-swap): `RepoError::Moved` says
    /// someone else committed first, and the caller re-applies on the new head.
    pub(super) fn commit_tree(
        &self,
        parent: Option<ObjectId>,
        tree: ObjectId,
        message: &str,
        author: &Author,
    ) -> Result<ObjectId, RepoError> {
        let repo = self.repo.to_thread_local();
        let committer = Author {
            name: "dynapi".into(),
            email: author.email.clone(),
        };
        let (mut b1, mut b2) = (
            gix::date::parse::TimeBuf::default(),
            gix::date::parse::TimeBuf::default(),
        );
        let (c, a) = (committer.signature(), author.signature());
        let result = repo.commit_as(
            c.to_ref(&mut b1),
            a.to_ref(&mut b2),
            self.refname().as_str(),
            message,
            tree,
            parent,
        );
        match result {
            Ok(id) => Ok(id.detach()),
            // The ref changed under us, or its lock is held by a concurrent `git commit`.
            Err(_) if self.head()? != parent => Err(RepoError::Moved),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes git's own index lock (`.git/index.lock`), waiting up to
    /// `INDEX_LOCK_WAIT` for a human's `git status` or `git add` to let go.
    /// Held from before the branch moves until the index is written, as git
    /// itself does: a human's `git commit` cannot start in between and find
    /// the branch moved but the index without the change.
    pub fn lock_index(&self) -> Result<IndexLock, RepoError> {
        let repo = self.repo.to_thread_local();
        let file = gix::lock::File::acquire_to_update_resource(
            repo.index_path(),
            gix::lock::acquire::Fail::AfterDurationWithBackoff(INDEX_LOCK_WAIT),
            None,
            0,
        )
        .map_err(|e| RepoError::IndexLocked(e.to_string()))?;
        let marker = self.index_lock_marker();
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let lock = IndexLock {
            file: Some(file),
            marker,
        };
        std::fs::write(&lock.marker, std::process::id().to_string())?;
        Ok(lock)
    }

    fn index_lock_marker(&self) -> PathBuf {
        self.git_dir()
            .join(crate::layout::PRIVATE)
            .join("index-lock")
    }

    /// At start-up: removes git's index lock when the daemon's marker says a
    /// daemon killed while holding it left it (no human's git can have taken
    /// it since: the file was there). Answers whether it did.
    pub fn clear_own_index_lock(&self) -> bool {
        let marker = self.index_lock_marker();
        if !marker.exists() {
            return false;
        }
        let removed = std::fs::remove_file(self.git_dir().join("index.lock")).is_ok();
        let _ = std::fs::remove_file(marker);
        removed
    }

    /// Takes the index lock and writes `edits` to the index (`write_index`).
    pub fn update_index(&self, edits: &[Edit]) -> Result<(), RepoError> {
        self.write_index(self.lock_index()?, edits)
    }

    /// Writes `edits` into the index under `lock`: read once the lock is
    /// held, so what a human staged meanwhile is kept. Entries get no stat
    /// of the file on disk (git hashes them again at the next `git status`):
    /// a stat taken now could be of a human's edit made since the write, and
    /// would hide it as clean.
    pub fn write_index(&self, lock: IndexLock, edits: &[Edit]) -> Result<(), RepoError> {
        let repo = self.repo.to_thread_local();
        let mut index = match repo.open_index() {
            Ok(i) => i,
            // No index yet: a new repository. Any other error (an index git
            // cannot read) is not replaced by one holding only these paths.
            Err(_) if !repo.index_path().exists() => {
                repo.index_from_tree(&ObjectId::empty_tree(repo.object_hash()))?
            }
            Err(e) => return Err(RepoError::Git(format!("could not read the index: {e}"))),
        };
        let touched: Vec<&str> = edits.iter().map(Edit::path).collect();
        index.remove_entries(|_, path, _| touched.iter().any(|t| path == t.as_bytes().as_bstr()));
        for edit in edits {
            let (path, id, executable) = match edit {
                Edit::Write {
                    path,
                    contents,
                    executable,
                } => (
                    path,
                    gix::objs::compute_hash(repo.object_hash(), gix::objs::Kind::Blob, contents)
                        .map_err(git)?,
                    executable,
                ),
                Edit::Blob {
                    path,
                    id,
                    executable,
                } => (path, *id, executable),
                Edit::Delete { .. } => continue,
            };
            let mode = if *executable {
                gix::index::entry::Mode::FILE_EXECUTABLE
            } else {
                gix::index::entry::Mode::FILE
            };
            index.dangerously_push_entry(
                gix::index::entry::Stat::default(),
                id,
                gix::index::entry::Flags::empty(),
                mode,
                BStr::new(path.as_bytes()),
            );
        }
        index.sort_entries();
        index.remove_tree();
        let mut lock = lock;
        let file = lock
            .file
            .take()
            .ok_or_else(|| RepoError::Git("the index lock was released".into()))?;
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
        index
            .write_to(&mut out, Default::default())
            .map_err(|e| RepoError::Git(format!("could not write the index: {e}")))?;
        let file = out
            .into_inner()
            .map_err(|e| RepoError::Git(format!("could not write the index: {e}")))?;
        file.commit()
            .map_err(|e| RepoError::Git(format!("could not write the index: {}", e.error)))?;
        // `lock` goes now, and with it the daemon's marker.
        Ok(())
    }

    /// For each of `paths`, whether the repository's ignore rules (`.gitignore`
    /// files of the working tree and `.git/info/exclude`) exclude it, as git would:
    /// a path inside an excluded folder is excluded.
    pub fn ignored(&self, paths: &[&str]) -> Result<Vec<bool>, RepoError> {
        let repo = self.repo.to_thread_local();
        let index = repo.index_or_empty()?;
        let mut stack = repo.excludes(
            &index,
            None,
            gix::worktree::stack::state::ignore::Source::WorktreeThenIdMappingIfNotSkipped,
        )?;
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let mut excluded = false;
            for end in 1..=parts.len() {
                let prefix = parts[..end].join("/");
                let mode = if end < parts.len() {
                    gix::index::entry::Mode::DIR
                } else {
                    gix::index::entry::Mode::FILE
                };
                if stack
                    .at_entry(BStr::new(prefix.as_bytes()), Some(mode))?
                    .is_excluded()
                {
                    excluded = true;
                    break;
                }
            }
            out.push(excluded);
        }
        Ok(out)
    }

    /// What `GET /history` says of one commit.
    pub fn commit_info(&self, id: ObjectId) -> Result<CommitInfo, RepoError> {
        let repo = self.repo.to_thread_local();
        let commit = repo.find_commit(id)?;
        let message = commit.message_raw()?.to_str_lossy().into_owned();
        let author = commit.author()?;
        let seconds = author.time().map(|t| t.seconds).unwrap_or(0);
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
        Ok(CommitInfo {
            commit: id.to_string(),
            parents: commit.parent_ids().map(|p| p.to_string()).collect(),
            summary: message.lines().next().unwrap_or("").to_string(),
            message: message.trim_end().to_string(),
            author: author.name.to_str_lossy().trim().to_string(),
            email: author.email.to_str_lossy().trim().to_string(),
            time: humantime::format_rfc3339_seconds(time).to_string(),
        })
    }

    /// The first parent of `commit`, if it has one.
    pub fn first_parent(&self, commit: ObjectId) -> Result<Option<ObjectId>, RepoError> {
        let repo = self.repo.to_thread_local();
        let parent = repo
            .find_commit(commit)?
            .parent_ids()
            .next()
            .map(|p| p.detach());
        Ok(parent)
    }

    /// Commits reachable from the branch head, newest first, looking at no more than
    /// `max_walk`. With `path`, only commits in which that file or folder differs
    /// from the first parent. Skips `skip`, answers at most `limit`, and says
    /// whether more would follow.
    pub fn log(
        &self,
        path: Option<&str>,
        skip: usize,
        limit: usize,
        max_walk: usize,
    ) -> Result<(Vec<CommitInfo>, bool), RepoError> {
        let Some(head) = self.head()? else {
            return Ok((Vec::new(), false));
        };
        let repo = self.repo.to_thread_local();
        let walk = repo
            .rev_walk([head])
            .sorting(gix::revision::walk::Sorting::ByCommitTime(
                Default::default(),
            ))
            .all()
            .map_err(git)?;
        let entry_at =
            |commit: ObjectId, path: &str| -> Result<Option<(ObjectId, u16)>, RepoError> {
                let tree = repo.find_commit(commit)?.tree()?;
                Ok(tree
                    .lookup_entry_by_path(path)?
                    .map(|e| (e.object_id(), e.mode().value())))
            };
        let mut out = Vec::new();
        let mut matched = 0usize;
        for info in walk.take(max_walk) {
            let info = info.map_err(git)?;
            if let Some(path) = path {
                let here = entry_at(info.id, path)?;
                let before = match info.parent_ids.first() {
                    Some(parent) => entry_at(*parent, path)?,
                    None => None,
                };
                if here == before {
                    continue;
                }
            }
            matched += 1;
            if matched <= skip {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(self.commit_info(info.id)?);
        }
        Ok((out, false))
    }

    /// The commit reachable from the branch head whose id starts with `prefix`
    /// (at least 4 hex digits), looking at no more than `max_walk` commits.
    pub fn find_in_history(&self, prefix: &str, max_walk: usize) -> Result<Lookup, RepoError> {
        let Some(head) = self.head()? else {
            return Ok(Lookup::NotFound);
        };
        let repo = self.repo.to_thread_local();
        let prefix = prefix.to_ascii_lowercase();
        let mut found = None;
        for info in repo.rev_walk([head]).all().map_err(git)?.take(max_walk) {
            let id = info.map_err(git)?.id;
            if id.to_string().starts_with(&prefix) {
                if found.is_some_and(|f| f != id) {
                    return Ok(Lookup::Ambiguous);
                }
                found = Some(id);
            }
        }
        Ok(found.map_or(Lookup::NotFound, Lookup::Found))
    }

    pub fn workdir(&self) -> Option<PathBuf> {
        self.repo.work_dir().map(Path::to_path_buf)
    }

    /// The `.git` folder.
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }
}

/// A commit as `GET /history` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitInfo {
    pub commit: String,
    pub parents: Vec<String>,
    pub summary: String,
    pub message: String,
    pub author: String,
    pub email: String,
    pub time: String,
}

/// The outcome of looking a commit up by a prefix of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(ObjectId),
    NotFound,
    Ambiguous,
}

/// One change to one path of a tree.
#[derive(Debug, Clone)]
pub enum Edit {
    Write {
        path: String,
        contents: Vec<u8>,
        executable: bool,
    },
    /// A blob the repository already has (a checkout's files: written one at
    /// a time, never all held in memory together).
    Blob {
        path: String,
        id: ObjectId,
        executable: bool,
    },
    Delete {
        path: String,
    },
}

impl Edit {
    pub fn path(&self) -> &str {
        match self {
            Edit::Write { path, .. } | Edit::Blob { path, .. } | Edit::Delete { path } => path,
        }
    }
}

/// An error message with any `user:password@` taken out of URLs in it.
pub(super) fn redact(message: &str) -> String {
    without_url_credentials(message).into_owned()
}

/// `text` with the user information (`user:password@`, or a lone token before
/// `@`) taken out of every `http://` and `https://` URL in it. Other schemes keep
/// theirs: `ssh://git@host` names an account, not a secret.
pub fn without_url_credentials(text: &str) -> std::borrow::Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let sep = from + found;
        let authority = sep + 3;
        from = authority;
        let scheme_start = text[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |i| i + 1);
        let scheme = &text[scheme_start..sep];
        if !(scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http")) {
            continue;
        }
        let end = text[authority..]
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"'<>".contains(c)
            })
            .map_or(text.len(), |i| authority + i);
        if let Some(at) = text[authority..end].rfind('@') {
            out.push_str(&text[copied..authority]);
            copied = authority + at + 1;
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Takes credentials out of the URLs git keeps in files under `git_dir`: the
/// remotes in `config` and the reflogs (`clone: from URL`). Earlier versions
/// cloned with the GitHub token in the URL, and scripts may read `.git`; this
/// runs at start-up so such a workspace stops holding the token. Answers
/// the files it rewrote. Symlinks are left alone, never followed.
pub fn forget_credentials(git_dir: &Path) -> Result<Vec<PathBuf>, RepoError> {
    let mut files = vec![git_dir.join("config"), git_dir.join("FETCH_HEAD")];
    let mut folders = vec![git_dir.join("logs")];
    while let Some(folder) = folders.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    let mut rewritten = Vec::new();
    for file in files {
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() => {}
            _ => continue,
        }
        let bytes = std::fs::read(&file)?;
        // Git's files are text; one that is not UTF-8 holds no URL we wrote.
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let std::borrow::Cow::Owned(clean) = without_url_credentials(text) {
            // Written beside it and renamed over it, so a crash leaves either file whole.
            let mut temp = file.clone().into_os_string();
            temp.push(".dynapi-clean");
            let temp = PathBuf::from(temp);
            std::fs::write(&temp, clean)?;
            std::fs::rename(&temp, &file)?;
            rewritten.push(file);
        }
    }
    Ok(rewritten)
}

/// How the library reader gets a library's files (`source::library`):
/// implemented there, held here, so `registry_of` reads includes wherever it
/// is called (the sync, the writer's check, pull requests) without this
/// module knowing how libraries are fetched.
pub trait Resolve: Send + Sync {
    /// The library's files at the commit `include.git_ref` names, or why
    /// they cannot be read.
    fn resolve(&self, include: &registry::Include) -> Result<LibrarySnapshot, LibraryError>;
    /// Makes the read-only checkout `library`'s scripts run from.
    fn check_out(&self, library: &registry::Library) -> Result<(), LibraryError>;
    /// `served` is what the registry about to be served includes: the
    /// checkouts of other commits go once no run can still use them.
    fn retire_others(&self, served: &[std::sync::Arc<registry::Library>]);
}

/// What a tree entry's mode says of it as a script.
pub(super) fn kind_of_mode(mode: gix::objs::tree::EntryMode) -> FileKind {
    match EntryKind::from(mode) {
        EntryKind::BlobExecutable => FileKind::Executable,
        EntryKind::Blob => FileKind::NotExecutable,
        _ => FileKind::NotAFile,
    }
}

/// Reads `dynapi.yaml`, every `manifests/*.yaml` and every `prompts/*.md` of
/// `tree`, never from a working directory. Sizes come from the objects'
/// headers, so an oversized blob is never inflated; the registry reports it.
pub(super) fn read_snapshot(repo: &gix::Repository, tree: ObjectId) -> Result<Snapshot, RepoError> {
    let root = repo.find_tree(tree)?;
    let text = |id: ObjectId, path: &str| -> Result<String, RepoError> {
        let data = repo.find_blob(id)?.take_data();
        String::from_utf8(data).map_err(|_| RepoError::Git(format!("{path} is not UTF-8 text")))
    };
    let mut snapshot = Snapshot::default();
    let size_of = |id: ObjectId| -> Result<u64, RepoError> { Ok(repo.find_header(id)?.size()) };
    if let Some(e) = root.lookup_entry_by_path(SETTINGS_FILE)? {
        let size = size_of(e.object_id())?;
        if size > MAX_FILE_BYTES as u64 {
            snapshot.too_large.push((SETTINGS_FILE.to_string(), size));
        } else {
            snapshot.settings = Some(text(e.object_id(), SETTINGS_FILE)?);
        }
    }
    // Each folder's files (blobs, not below), in path order. One past a
    // folder's limit is enough for the registry to refuse it; the rest is
    // never read.
    let mut folder = |dir: &str, suffixes: &[&str], limit: usize| {
        let mut read = Vec::new();
        let Some(entry) = root.lookup_entry_by_path(dir)? else {
            return Ok::<_, RepoError>(read);
        };
        if EntryKind::from(entry.mode()) != EntryKind::Tree {
            return Ok(read);
        }
        let mut unread = 0;
        for entry in repo.find_tree(entry.object_id())?.iter() {
            let entry = entry.map_err(git)?;
            let name = entry.filename().to_str_lossy().into_owned();
            let is_file = matches!(
                EntryKind::from(entry.mode()),
                EntryKind::Blob | EntryKind::BlobExecutable
            );
            if !is_file || !suffixes.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            if read.len() + unread > limit {
                break;
            }
            let path = format!("{dir}/{name}");
            let size = size_of(entry.object_id())?;
            if size > MAX_FILE_BYTES as u64 {
                snapshot.too_large.push((path, size));
                unread += 1;
                continue;
            }
            let body = text(entry.object_id(), &path)?;
            read.push((path, body));
        }
        Ok(read)
    };
    let manifests = folder(MANIFEST_DIR, &[".yaml", ".yml"], MAX_MANIFESTS)?;
    let prompts = folder(PROMPTS_DIR, &[".md"], MAX_PROMPTS)?;
    (snapshot.manifests, snapshot.prompts) = (manifests, prompts);
    Ok(snapshot)
}

pub(super) fn git(e: impl std::fmt::Display) -> RepoError {
    RepoError::Git(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_http_urls_and_nothing_else_changes() {
        for (text, clean) in [
            (
                "\turl = https://x-access-token:ghp_1@github.com/o/r.git\n",
                "\turl = https://github.com/o/r.git\n",
            ),
            (
                "a b 1 +0000\tclone: from https://ghp_1@github.com/o/r.git\n",
                "a b 1 +0000\tclone: from https://github.com/o/r.git\n",
            ),
            ("HTTP://u:p@127.0.0.1:9/x", "HTTP://127.0.0.1:9/x"),
            ("https://github.com/a@b", "https://github.com/a@b"),
            (
                "ssh://git@github.com/o/r.git",
                "ssh://git@github.com/o/r.git",
            ),
            ("<dynapi@localhost> 1 +0000", "<dynapi@localhost> 1 +0000"),
        ] {
            assert_eq!(without_url_credentials(text), clean, "{text}");
        }
        assert!(matches!(
            without_url_credentials("https://github.com/o/r"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn forgetting_credentials_rewrites_config_and_reflogs_only_where_needed() {
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path();
        std::fs::create_dir_all(git.join("logs/refs/heads")).unwrap();
        let token = "https://x-access-token:ghp_1@github.com/o/r.git";
        std::fs::write(
            git.join("config"),
            format!("[remote \"origin\"]\n\turl = {token}\n"),
        )
        .unwrap();
        std::fs::write(
            git.join("logs/refs/heads/main"),
            format!("0 1 d <d@l> 1 +0000\tclone: from {token}\n"),
        )
        .unwrap();
        std::fs::write(git.join("logs/HEAD"), "0 1 d <d@l> 1 +0000\tcommit: x\n").unwrap();
        let mut changed = forget_credentials(git).unwrap();
        changed.sort();
        assert_eq!(
            changed,
            vec![git.join("config"), git.join("logs/refs/heads/main")]
        );
        for file in ["config", "logs/refs/heads/main"] {
            let text = std::fs::read_to_string(git.join(file)).unwrap();
            assert!(
                !text.contains("ghp_1") && text.contains("https://github.com/o/r.git"),
                "{text}"
            );
        }
        assert_eq!(forget_credentials(git).unwrap(), Vec::<PathBuf>::new());
    }
}
