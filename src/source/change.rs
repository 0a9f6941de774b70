//! The change writer: the only code that creates commits. Its entry points
//! are visible in `source` only: the API reaches it through `writes::Writes`,
//! which decides who may change what.
//!
//! Writes are serialized through one lock. A change is first planned against the
//! working tree (what the caller sees: `If-Match` is checked against the file on
//! disk, edits apply to its text), then applied to the branch head's tree, checked
//! (manifests, when it touches them), committed with a compare-and-swap on the
//! branch ref, and only then written to the working tree. When the branch moved (a
//! human's `git commit` in the workspace), the plan is committed again on the new
//! head, so nothing acknowledged is lost.
//!
//! Paths the repository ignores (`.gitignore`) and does not track are written to
//! the working tree only; the answer lists them as uncommitted.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use gix::ObjectId;
use tokio::sync::Mutex;

use std::sync::Arc;

use super::github::{GitHub, GitHubError, RefError, TreeEntry};
use super::repo::{Author, Edit, Repo, RepoError};
use crate::manifest::Problem;
use crate::registry::{MANIFEST_DIR, PROMPTS_DIR, SETTINGS_FILE};
use crate::workspace::files::{self, EditError, TextEdit};
use crate::workspace::{self, PathError, Workspace};

/// How many times a change is re-applied when the branch keeps moving under it.
const MAX_ATTEMPTS: usize = 8;

/// The largest file an edit or a move reads into memory.
pub const MAX_EDIT_BYTES: u64 = 64 << 20;

/// One operation of a change.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create or replace. `executable: None` keeps the file's current mode.
    Write {
        path: String,
        contents: Vec<u8>,
        executable: Option<bool>,
        if_match: Option<String>,
    },
    /// Exact-text edits of a text file, applied in order; all or none.
    Edit {
        path: String,
        edits: Vec<TextEdit>,
        if_match: Option<String>,
    },
    /// Rename a file, keeping its mode. `to` must not exist unless `overwrite`.
    Move {
        from: String,
        to: String,
        overwrite: bool,
        if_match: Option<String>,
    },
    /// Remove a file that must exist.
    Delete {
        path: String,
        if_match: Option<String>,
    },
}

impl Op {
    /// The paths this operation writes, as the request named them.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Op::Write { path, .. } | Op::Edit { path, .. } | Op::Delete { path, .. } => {
                vec![path]
            }
            Op::Move { from, to, .. } => vec![from, to],
        }
    }

    /// The same operation with its paths confined and normalized (`./a//b` is `a/b`).
    fn normalized(&self, ws: &Workspace) -> Result<Op, PathError> {
        let mut op = self.clone();
        match &mut op {
            Op::Write { path, .. } | Op::Edit { path, .. } | Op::Delete { path, .. } => {
                *path = ws.normalize(path)?;
            }
            Op::Move { from, to, .. } => {
                *from = ws.normalize(from)?;
                *to = ws.normalize(to)?;
            }
        }
        Ok(op)
    }
}

/// How strictly manifests are checked after the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// The resulting commit must be servable (endpoint changes: they answer when live).
    Strict,
    /// The change may not add manifest problems; ones already there do not block it.
    NoNewProblems,
}

/// A set of writes that becomes ONE commit.
#[derive(Debug, Clone)]
pub struct Change {
    pub message: String,
    pub author: Author,
    pub ops: Vec<Op>,
    pub validation: Validation,
    /// Whether the change may touch `dynapi.yaml`, which grants tokens and sets
    /// the sandbox: only for a caller with the `admin` scope. The writer checks
    /// it on every change, whichever route made it, so no route can forget.
    pub may_change_settings: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("`{0}` does not exist")]
    NotFound(String),
    #[error("`{path}` changed: its current version is {current}, not {expected}")]
    Precondition {
        path: String,
        expected: String,
        current: String,
    },
    #[error("`{path}`: {error}")]
    Edit { path: String, error: EditError },
    #[error("`{0}` is not UTF-8 text; replace it whole with PUT")]
    NotText(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "{SETTINGS_FILE} grants tokens and sets the sandbox: changing it needs the `admin` scope"
    )]
    Settings,
    #[error("{0}")]
    TooLarge(String),
    #[error("the manifests would be invalid")]
    Invalid(Vec<Problem>),
    #[error("nothing to commit")]
    Empty,
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    GitHub(#[from] GitHubError),
}

/// What a change did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The branch head afterwards: the new commit, or the old head when only
    /// ignored files changed.
    pub commit: String,
    /// Whether a commit was made.
    pub new_commit: bool,
    /// Paths written or removed in the working tree only (ignored by `.gitignore`).
    pub uncommitted: Vec<String>,
    /// Every path the change touched, with its blob id afterwards (None: removed).
    pub files: BTreeMap<String, Option<String>>,
    /// Paths that did not exist before the change.
    pub created: Vec<String>,
    /// False when every file already was as the change would leave it: nothing
    /// was committed or written.
    pub changed: bool,
    /// GitHub mode, `Delivery::PullRequest`: the pull request's URL (the branch
    /// did not move).
    pub pull_request: Option<String>,
}

/// Cheap to clone: every clone is the same writer (one lock).
#[derive(Clone)]
pub struct Writer {
    repo: Repo,
    workspace: Workspace,
    lock: Arc<Mutex<()>>,
    /// Whether a `repair_later` task runs (one at a time).
    repairing: Arc<std::sync::atomic::AtomicBool>,
    /// GitHub mode: commits are made on GitHub, then fetched.
    github: Option<GitHub>,
}

/// How a change reaches the branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A commit on the branch.
    Commit,
    /// GitHub mode: a commit on a new branch, and a pull request for a human.
    PullRequest,
}

/// Runs a write as its own task: the caller's future may be dropped (a client
/// hanging up), the write and the lock it holds go on to the end together, so
/// the next write never plans against a half-written tree.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, ChangeError>> + Send + 'static,
) -> Result<T, ChangeError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ChangeError::Repo(RepoError::Git(e.to_string())))?
}

/// Runs blocking git work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ChangeError> + Send + 'static,
) -> Result<T, ChangeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ChangeError::Repo(RepoError::Git(e.to_string())))?
}

impl Writer {
    pub(super) fn new(repo: Repo, workspace: Workspace, github: Option<GitHub>) -> Writer {
        Writer {
            repo,
            workspace,
            lock: Arc::new(Mutex::new(())),
            repairing: Default::default(),
            github,
        }
    }

    /// Applies `change` as one commit, delivered as `delivery`.
    pub(super) async fn apply_as(
        &self,
        change: Change,
        delivery: Delivery,
    ) -> Result<Applied, ChangeError> {
        let writer = self.clone();
        let applied = detached(async move {
            let _serial = writer.lock.lock().await;
            writer.apply_locked(change, delivery).await
        })
        .await;
        self.repair_later();
        applied
    }

    /// Local mode: when a committed write is still owed to the working tree
    /// or index (`repair_pending`), tries `repair` again every second, under
    /// the writer's lock, until it is done (for an hour at most): a human's
    /// next `git commit` must find the index holding it. One such task at a
    /// time. Called after each write and at start-up.
    pub(super) fn repair_later(&self) {
        use std::sync::atomic::Ordering;
        if self.github.is_some()
            || !repair_pending(&self.workspace)
            || self.repairing.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let writer = self.clone();
        tokio::spawn(async move {
            for _ in 0..3600 {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let _serial = writer.lock.lock().await;
                let (repo, ws) = (writer.repo.clone(), writer.workspace.clone());
                let done = blocking(move || {
                    repair(&repo, &ws)?;
                    Ok(!repair_pending(&ws))
                })
                .await;
                match done {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::debug!("repair tried again later: {e}"),
                }
            }
            writer.repairing.store(false, Ordering::SeqCst);
        });
    }

    /// `apply_as` once the writer's lock is held: every change, from any route,
    /// passes here, so the rule for `dynapi.yaml` is checked here.
    async fn apply_locked(
        &self,
        change: Change,
        delivery: Delivery,
    ) -> Result<Applied, ChangeError> {
        // A human who checked out another branch has the working tree: a
        // commit to the served branch would write its files into that checkout.
        let repo = self.repo.clone();
        if let Some(other) = blocking(move || Ok(repo.other_checkout()?)).await? {
            return Err(ChangeError::Conflict(format!(
                "the workspace has `{other}` checked out, not `{}`: writes wait until `git checkout {}` there",
                self.repo.branch(),
                self.repo.branch()
            )));
        }
        if !change.may_change_settings {
            for path in change.ops.iter().flat_map(Op::paths) {
                if self
                    .workspace
                    .normalize(path)
                    .is_ok_and(|p| p == SETTINGS_FILE)
                {
                    return Err(ChangeError::Settings);
                }
            }
        }
        if let Some(github) = &self.github {
            return self.apply_remote(github, change, delivery).await;
        }
        if delivery == Delivery::PullRequest {
            return Err(ChangeError::Conflict(
                "pull requests need a GitHub repository (`dynapi serve --remote`); the local workspace takes commits".into(),
            ));
        }
        let (repo, workspace) = (self.repo.clone(), self.workspace.clone());
        blocking(move || apply_blocking(&repo, &workspace, change)).await
    }

    /// GitHub mode: the commit is made on GitHub with the Git Data API on the
    /// branch's head there, the branch moved without force (a lost race stages
    /// again on the new head), then fetched and checked out here.
    async fn apply_remote(
        &self,
        github: &GitHub,
        change: Change,
        delivery: Delivery,
    ) -> Result<Applied, ChangeError> {
        let (repo, ws) = (self.repo.clone(), self.workspace.clone());
        let prepared = Arc::new(blocking(move || prepare(&repo, &ws, change)).await?);
        for _ in 0..MAX_ATTEMPTS {
            let (repo, p, origin) = (self.repo.clone(), prepared.clone(), github.origin.clone());
            let staged = blocking(move || {
                let head = repo
                    .fetch(&origin)
                    .map_err(|e| GitHubError::Unreachable(e.to_string()))?;
                // The files as the caller saw them: the commit checked out
                // here when the plan was made (a sync may have moved it since).
                check_unchanged(&repo, &p, p.planned_on, head)?;
                stage(&repo, &p, Some(head))
            })
            .await?;
            let finish = |staged: Staged, commit: Option<String>| {
                let (repo, ws, p) = (self.repo.clone(), self.workspace.clone(), prepared.clone());
                let origin = github.origin.clone();
                blocking(move || {
                    if let Some(commit) = &commit {
                        // The commit was made on GitHub and GitHub's branch
                        // moved: the write stands, whatever happens here. It
                        // is brought into the working tree only if it builds
                        // (it may sit on a bad push) and the branch is
                        // checked out; anything that fails (GitHub slow to
                        // serve git, git's index lock held) is left to the
                        // next sync, never answered as a failed write.
                        if let Err(e) = bring_here(&repo, &ws, &origin, commit) {
                            tracing::warn!(%commit, "the write is on GitHub; the next sync brings it here: {e}");
                        }
                    }
                    // Paths git does not track are written here only.
                    let disk: Vec<String> = changed_on_disk(&p.plan)?
                        .into_iter()
                        .filter(|path| staged.uncommitted.contains(path) || commit.is_none())
                        .collect();
                    let changed = staged.new_commit || !disk.is_empty();
                    let written = write_worktree(&ws, &p.plan, &disk);
                    let at = match &commit {
                        Some(c) => ObjectId::from_hex(c.as_bytes())
                            .map_err(|e| RepoError::Git(e.to_string()))?,
                        None => staged
                            .parent
                            .unwrap_or_else(|| ObjectId::null(gix::hash::Kind::Sha1)),
                    };
                    match written {
                        Ok(()) => {}
                        Err(e) if commit.is_none() => return Err(e),
                        Err(e) => tracing::warn!(
                            "the write is on GitHub; untracked files not written here: {e}"
                        ),
                    }
                    applied(&p, staged, at, changed)
                })
            };
            if !staged.new_commit {
                return finish(staged, None).await;
            }
            let (Some(parent), Some(base_tree)) = (staged.parent, staged.base_tree) else {
                return Err(ChangeError::Repo(RepoError::Git(
                    "the branch has no commit".into(),
                )));
            };
            let entries: Vec<TreeEntry> = staged
                .edits
                .iter()
                .map(|e| match e {
                    Edit::Write {
                        path,
                        contents,
                        executable,
                    } => Ok(TreeEntry {
                        path: path.clone(),
                        executable: *executable,
                        contents: Some(contents.clone()),
                    }),
                    Edit::Blob {
                        path,
                        id,
                        executable,
                    } => Ok(TreeEntry {
                        path: path.clone(),
                        executable: *executable,
                        contents: Some(self.repo.blob(*id)?),
                    }),
                    Edit::Delete { path } => Ok(TreeEntry {
                        path: path.clone(),
                        executable: false,
                        contents: None,
                    }),
                })
                .collect::<Result<_, RepoError>>()?;
            let author = &prepared.author;
            let commit = github
                .create_commit(
                    &parent.to_string(),
                    &base_tree.to_string(),
                    &entries,
                    &prepared.message,
                    (&author.name, &author.email),
                )
                .await?;
            if delivery == Delivery::PullRequest {
                let branch = format!("dynapi/{}", &commit[..12.min(commit.len())]);
                github.create_branch(&branch, &commit).await?;
                let title = prepared
                    .message
                    .lines()
                    .next()
                    .unwrap_or("A change from dynapi");
                let body = format!(
                    "{}\n\nProposed through dynapi by {}.",
                    prepared.message, author.name
                );
                let url = github
                    .open_pull_request(&branch, self.repo.branch(), title, &body)
                    .await?;
                let uncommitted_only = Staged {
                    new_commit: true,
                    ..staged
                };
                let (p, ws) = (prepared.clone(), self.workspace.clone());
                let mut answer = blocking(move || {
                    let disk: Vec<String> = changed_on_disk(&p.plan)?
                        .into_iter()
                        .filter(|path| uncommitted_only.uncommitted.contains(path))
                        .collect();
                    write_worktree(&ws, &p.plan, &disk)?;
                    let id = ObjectId::from_hex(commit.as_bytes())
                        .map_err(|e| RepoError::Git(e.to_string()))?;
                    applied(&p, uncommitted_only, id, true)
                })
                .await?;
                answer.new_commit = false;
                answer.pull_request = Some(url);
                return Ok(answer);
            }
            match github.update_branch(self.repo.branch(), &commit).await {
                Ok(()) => return finish(staged, Some(commit)).await,
                Err(RefError::NotFastForward) => continue,
                Err(RefError::GitHub(e)) => return Err(e.into()),
            }
        }
        Err(ChangeError::Repo(RepoError::Moved))
    }

    /// Commits whatever differs between the working tree and the branch head (files
    /// scripts wrote, files a human edited), honouring `.gitignore`. `POST /git-sync`.
    pub(super) async fn commit_worktree(
        &self,
        message: String,
        author: Author,
        may_change_settings: bool,
    ) -> Result<Applied, ChangeError> {
        let writer = self.clone();
        detached(async move {
            let _serial = writer.lock.lock().await;
            let (repo, workspace) = (writer.repo.clone(), writer.workspace.clone());
            let ops = blocking(move || worktree_changes(&repo, &workspace)).await?;
            if ops.is_empty() {
                return Err(ChangeError::Empty);
            }
            let change = Change {
                message,
                author,
                ops,
                validation: Validation::NoNewProblems,
                may_change_settings,
            };
            writer.apply_locked(change, Delivery::Commit).await
        })
        .await
    }
}

/// A file's contents and executable bit.
type Contents = (Vec<u8>, bool);

/// What a change will leave at each path, planned against the working tree.
#[derive(Default)]
struct Plan {
    /// Paths in the order the change first touched them.
    order: Vec<String>,
    targets: HashMap<String, PathBuf>,
    /// The working tree before the change: blob id and executable bit.
    before: HashMap<String, Option<(ObjectId, bool)>>,
    /// The working tree after it (None: removed).
    after: HashMap<String, Option<Contents>>,
    /// Paths that are folders on disk.
    folders: Vec<String>,
    /// The head's files, when the repository says `core.fileMode = false`:
    /// their modes stand for the ones on disk.
    tree_modes: Option<BTreeMap<String, super::repo::TreeFile>>,
}

impl Plan {
    fn touch(&mut self, ws: &Workspace, path: &str) -> Result<(), ChangeError> {
        if self.targets.contains_key(path) {
            return Ok(());
        }
        let target = ws.resolve(path)?;
        if path.trim_matches('/').is_empty() {
            return Err(ChangeError::Conflict("a path to a file is needed".into()));
        }
        let state = match std::fs::symlink_metadata(&target) {
            // A folder may become a file only when the change removes all
            // that is in it (a revert of "`docs` became `docs/index.md`"):
            // `plan` checks that once every operation is planned.
            Ok(m) if m.is_dir() => {
                self.folders.push(path.to_string());
                None
            }
            // Writing through a link would change its target under another
            // name, and replacing it would drop the link: neither is what the
            // caller named. The file it points at is written by its own path.
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ChangeError::Conflict(format!(
                    "`{path}` is a symbolic link; write the file it points at by its own path"
                )))
            }
            _ => files::file_state(ws, &target).map_err(fs_error(path))?,
        };
        // `core.fileMode = false`: the executable bit on disk means nothing
        // (a filesystem that shows every file executable); the tree's counts.
        let state = match &self.tree_modes {
            Some(modes) => state.map(|(id, _)| (id, modes.get(path).is_some_and(|f| f.executable))),
            None => state,
        };
        self.order.push(path.to_string());
        self.before.insert(path.to_string(), state);
        self.targets.insert(path.to_string(), target);
        Ok(())
    }

    /// The blob id and mode at `path` as the change has left it so far.
    fn state(
        &mut self,
        ws: &Workspace,
        path: &str,
    ) -> Result<Option<(ObjectId, bool)>, ChangeError> {
        self.touch(ws, path)?;
        match self.after.get(path) {
            Some(Some((bytes, exec))) => Ok(Some((
                files::blob_id(bytes).map_err(RepoError::from)?,
                *exec,
            ))),
            Some(None) => Ok(None),
            None => Ok(self.before[path]),
        }
    }

    /// The contents at `path` as the change has left it so far.
    fn contents(&mut self, ws: &Workspace, path: &str) -> Result<Option<Contents>, ChangeError> {
        self.touch(ws, path)?;
        if let Some(after) = self.after.get(path) {
            return Ok(after.clone());
        }
        let Some((_, exec)) = self.before[path] else {
            if self.folders.iter().any(|f| f == path) {
                return Err(ChangeError::Conflict(format!("`{path}` is a folder")));
            }
            return Ok(None);
        };
        let target = &self.targets[path];
        let file = ws.open_file(target).map_err(fs_error(path))?;
        let size = file.metadata().map_err(RepoError::from)?.len();
        if size > MAX_EDIT_BYTES {
            return Err(ChangeError::TooLarge(format!(
                "`{path}` is larger than {MAX_EDIT_BYTES} bytes, the most an edit or a move reads"
            )));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_EDIT_BYTES + 1),
            &mut bytes,
        )
        .map_err(RepoError::from)?;
        Ok(Some((bytes, exec)))
    }

    /// Refuses a write whose parent folders include a file (`a` when writing `a/b`).
    fn check_parents(&self, ws: &Workspace, path: &str) -> Result<(), ChangeError> {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            let still_there = !matches!(self.after.get(prefix.as_str()), Some(None));
            let on_disk = ws.resolve(&prefix)?;
            let is_file = std::fs::symlink_metadata(&on_disk).is_ok_and(|m| !m.is_dir());
            if (is_file && still_there) || matches!(self.after.get(prefix.as_str()), Some(Some(_)))
            {
                return Err(ChangeError::Conflict(format!(
                    "`{prefix}` is a file, so `{path}` cannot be written below it"
                )));
            }
        }
        Ok(())
    }
}

fn check_match(
    path: &str,
    if_match: &Option<String>,
    found: Option<(ObjectId, bool)>,
) -> Result<(), ChangeError> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    let expected = expected.trim().trim_start_matches("W/").trim_matches('"');
    if expected == "*" && found.is_some() {
        return Ok(());
    }
    let current = found.map(|(id, _)| id.to_string());
    if current.as_deref() == Some(expected) {
        return Ok(());
    }
    Err(ChangeError::Precondition {
        path: path.to_string(),
        expected: expected.to_string(),
        current: current.unwrap_or_else(|| "absent".into()),
    })
}

/// Works out what each operation leaves in the working tree.
fn plan(
    ws: &Workspace,
    ops: &[Op],
    tree_modes: Option<BTreeMap<String, super::repo::TreeFile>>,
) -> Result<Plan, ChangeError> {
    let mut plan = Plan {
        tree_modes,
        ..Plan::default()
    };
    for op in ops {
        match op {
            Op::Write {
                path,
                contents,
                executable,
                if_match,
            } => {
                let current = plan.state(ws, path)?;
                check_match(path, if_match, current)?;
                plan.check_parents(ws, path)?;
                let exec = executable.unwrap_or(current.is_some_and(|(_, x)| x));
                plan.after
                    .insert(path.clone(), Some((contents.clone(), exec)));
            }
            Op::Edit {
                path,
                edits,
                if_match,
            } => {
                let current = plan.state(ws, path)?;
                check_match(path, if_match, current)?;
                let (bytes, exec) = plan
                    .contents(ws, path)?
                    .ok_or_else(|| ChangeError::NotFound(path.clone()))?;
                let text =
                    String::from_utf8(bytes).map_err(|_| ChangeError::NotText(path.clone()))?;
                let edited =
                    files::apply_edits(&text, edits).map_err(|error| ChangeError::Edit {
                        path: path.clone(),
                        error,
                    })?;
                plan.after
                    .insert(path.clone(), Some((edited.into_bytes(), exec)));
            }
            Op::Move {
                from,
                to,
                overwrite,
                if_match,
            } => {
                if from == to {
                    return Err(ChangeError::Conflict(format!(
                        "`{from}` would be moved onto itself"
                    )));
                }
                let current = plan.state(ws, from)?;
                check_match(from, if_match, current)?;
                let contents = plan
                    .contents(ws, from)?
                    .ok_or_else(|| ChangeError::NotFound(from.clone()))?;
                if plan.state(ws, to)?.is_some() && !overwrite {
                    return Err(ChangeError::Conflict(format!(
                        "`{to}` exists; send `\"overwrite\": true` to replace it"
                    )));
                }
                plan.check_parents(ws, to)?;
                plan.after.insert(from.clone(), None);
                plan.after.insert(to.clone(), Some(contents));
            }
            Op::Delete { path, if_match } => {
                let current = plan.state(ws, path)?;
                check_match(path, if_match, current)?;
                plan.after.insert(path.clone(), None);
            }
        }
    }
    for folder in &plan.folders {
        let written = matches!(plan.after.get(folder), Some(Some(_)));
        let emptied = written
            && ws
                .walker(&plan.targets[folder], false)
                .build()
                .flatten()
                .filter(|e| e.path() != plan.targets[folder])
                .all(|e| {
                    e.file_type().is_some_and(|t| t.is_dir())
                        || matches!(plan.after.get(&ws.relative(e.path())), Some(None))
                });
        if !emptied {
            return Err(ChangeError::Conflict(format!("`{folder}` is a folder")));
        }
    }
    Ok(plan)
}

/// A change planned against the working tree, with its paths classified.
struct Prepared {
    /// The branch head when the plan was made.
    planned_on: Option<ObjectId>,
    plan: Plan,
    /// Per path of `plan.order`: ignored by `.gitignore`.
    ignored: Vec<bool>,
    message: String,
    author: Author,
    validation: Validation,
}

fn prepare(repo: &Repo, workspace: &Workspace, change: Change) -> Result<Prepared, ChangeError> {
    // Every path is confined, and written the one way git spells it, before
    // anything is read or written.
    let ops = change
        .ops
        .iter()
        .map(|op| op.normalized(workspace))
        .collect::<Result<Vec<Op>, PathError>>()?;
    let planned_on = repo.head()?;
    let tree_modes = match (repo.trusts_file_mode(), planned_on) {
        (false, Some(head)) => Some(repo.files_of(repo.tree_of(head)?)?),
        (false, None) => Some(BTreeMap::new()),
        (true, _) => None,
    };
    let plan = plan(workspace, &ops, tree_modes)?;
    let paths: Vec<&str> = plan.order.iter().map(String::as_str).collect();
    let ignored = repo.ignored(&paths)?;
    Ok(Prepared {
        planned_on,
        plan,
        ignored,
        message: change.message,
        author: change.author,
        validation: change.validation,
    })
}

/// GitHub mode: refuses a change to a file that changed on GitHub since the
/// commit checked out here (`seen`), which is what the caller read.
fn check_unchanged(
    repo: &Repo,
    prepared: &Prepared,
    seen: Option<ObjectId>,
    head: ObjectId,
) -> Result<(), ChangeError> {
    let Some(seen) = seen.filter(|s| *s != head) else {
        return Ok(());
    };
    let (before, now) = (repo.tree_of(seen)?, repo.tree_of(head)?);
    for path in &prepared.plan.order {
        let (was, is) = (repo.file(before, path)?, repo.file(now, path)?);
        if was != is {
            return Err(ChangeError::Precondition {
                path: path.clone(),
                expected: was.map_or("absent".into(), |f| f.id.to_string()),
                current: is.map_or("absent".into(), |f| f.id.to_string()),
            });
        }
    }
    Ok(())
}

/// What a prepared change does to the tree of `parent`.
struct Staged {
    parent: Option<ObjectId>,
    base_tree: Option<ObjectId>,
    tree: ObjectId,
    edits: Vec<Edit>,
    uncommitted: Vec<String>,
    new_commit: bool,
}

fn stage(
    repo: &Repo,
    prepared: &Prepared,
    parent: Option<ObjectId>,
) -> Result<Staged, ChangeError> {
    let plan = &prepared.plan;
    let base_tree = parent.map(|c| repo.tree_of(c)).transpose()?;
    let mut edits = Vec::new();
    let mut uncommitted = Vec::new();
    for (path, ignored) in plan.order.iter().zip(&prepared.ignored) {
        let tracked = match base_tree {
            Some(tree) => repo.file(tree, path)?.is_some(),
            None => false,
        };
        let after = &plan.after[path];
        if after.is_none() && !tracked && plan.before[path].is_none() {
            return Err(ChangeError::NotFound(path.to_string()));
        }
        if *ignored && !tracked {
            uncommitted.push(path.to_string());
            continue;
        }
        match after {
            Some((contents, executable)) => edits.push(Edit::Write {
                path: path.to_string(),
                contents: contents.clone(),
                executable: *executable,
            }),
            None if tracked => edits.push(Edit::Delete {
                path: path.to_string(),
            }),
            None => {}
        }
    }
    let tree = repo.tree_with(base_tree, &edits)?;
    let new_commit = Some(tree) != base_tree;
    let touches_manifests = edits.iter().any(|e| {
        let p = e.path();
        p == SETTINGS_FILE
            || p.starts_with(&format!("{MANIFEST_DIR}/"))
            || p.starts_with(&format!("{PROMPTS_DIR}/"))
            || p.starts_with("scripts/")
    });
    if new_commit && (touches_manifests || prepared.validation == Validation::Strict) {
        check_manifests(repo, base_tree, tree, prepared.validation)?;
    }
    Ok(Staged {
        parent,
        base_tree,
        tree,
        edits,
        uncommitted,
        new_commit,
    })
}

/// What to answer once the commit (if any) is `commit`.
fn applied(
    prepared: &Prepared,
    staged: Staged,
    commit: ObjectId,
    changed: bool,
) -> Result<Applied, ChangeError> {
    let plan = &prepared.plan;
    let mut files = BTreeMap::new();
    for path in &plan.order {
        let etag = match &plan.after.get(path).cloned().flatten() {
            Some((bytes, _)) => Some(files::blob_id(bytes).map_err(RepoError::from)?.to_string()),
            None if plan.after.contains_key(path) => None,
            None => plan.before[path].map(|(id, _)| id.to_string()),
        };
        files.insert(path.clone(), etag);
    }
    let created = plan
        .order
        .iter()
        .filter(|p| plan.before[*p].is_none() && matches!(plan.after.get(*p), Some(Some(_))))
        .cloned()
        .collect();
    Ok(Applied {
        commit: commit.to_string(),
        new_commit: staged.new_commit,
        uncommitted: staged.uncommitted,
        files,
        created,
        changed,
        pull_request: None,
    })
}

fn apply_blocking(
    repo: &Repo,
    workspace: &Workspace,
    change: Change,
) -> Result<Applied, ChangeError> {
    // A write the working tree or index still owes (a failure after its
    // branch moved) is finished before the next one plans on that tree.
    if let Err(e) = repair(repo, workspace) {
        tracing::warn!("an earlier write is still not in the working tree or index: {e}");
    }
    let prepared = prepare(repo, workspace, change)?;
    commit_prepared(repo, workspace, &prepared)
}

/// Commits a planned change on the branch head, again on a new head when the
/// branch moved (up to `MAX_ATTEMPTS`), then writes the working tree and the
/// index. Git's index lock is held from before the branch moves until the
/// index holds the commit, as git itself does; a lock a human's git keeps past
/// `INDEX_LOCK_WAIT` is an error before anything was written. Under the lock
/// the planned files are read again: one that changed on disk since the plan
/// (a human's edit, `git pull`, `reset`) is a 412, never overwritten. Once the
/// branch moved the write is acknowledged: a working tree or index that could
/// not be written is left to `repair` (the write intent stays), not reported
/// as a failed commit.
fn commit_prepared(
    repo: &Repo,
    workspace: &Workspace,
    prepared: &Prepared,
) -> Result<Applied, ChangeError> {
    for _ in 0..MAX_ATTEMPTS {
        let lock = repo.lock_index()?;
        // Under the lock: a human's `git checkout` cannot slip in after this.
        if let Some(other) = repo.other_checkout()? {
            return Err(ChangeError::Conflict(format!(
                "the workspace has `{other}` checked out, not `{}`",
                repo.branch()
            )));
        }
        check_disk_unchanged(workspace, &prepared.plan)?;
        let head = repo.head()?;
        let staged = stage(repo, prepared, head)?;
        let disk_changes = changed_on_disk(&prepared.plan)?;
        if !staged.new_commit {
            // Nothing to commit: files git does not track, on disk only.
            drop(lock);
            write_worktree(workspace, &prepared.plan, &disk_changes)?;
            let at = staged
                .parent
                .unwrap_or_else(|| ObjectId::null(gix::hash::Kind::Sha1));
            return applied(prepared, staged, at, !disk_changes.is_empty());
        }
        // Should the daemon die between moving the branch and writing the
        // working tree and index, start-up finishes the job (`repair`).
        Intent::of(prepared, &staged).write(workspace)?;
        let commit = match repo.commit_tree(
            staged.parent,
            staged.tree,
            &prepared.message,
            &prepared.author,
        ) {
            Ok(commit) => commit,
            Err(RepoError::Moved) => {
                // Not ours: a human's commit on the same parent must never
                // be taken for this one.
                Intent::clear(workspace);
                continue;
            }
            Err(e) => {
                Intent::clear(workspace);
                return Err(e.into());
            }
        };
        failpoint("after-ref-update");
        // The branch moved: the write is acknowledged whatever happens now.
        let worktree = write_worktree(workspace, &prepared.plan, &disk_changes);
        // The index gets the commit even when the working tree could not be
        // written, so that a human's next `git commit` keeps the write.
        let index = repo.write_index(lock, &staged.edits);
        match (&worktree, &index) {
            (Ok(()), Ok(())) => Intent::clear(workspace),
            _ => {
                let worktree = worktree.err().map(|e| e.to_string());
                let index = index.err().map(|e| e.to_string());
                tracing::warn!(
                    %commit,
                    ?worktree,
                    ?index,
                    "committed; the working tree or index is finished later (write intent kept)"
                );
            }
        }
        return applied(prepared, staged, commit, true);
    }
    Err(ChangeError::Repo(RepoError::Moved))
}

/// GitHub mode, after GitHub's branch moved to `commit`: fetches it and
/// checks it out here when it builds and the served branch is checked out.
fn bring_here(
    repo: &Repo,
    ws: &Workspace,
    origin: &super::repo::Origin,
    commit: &str,
) -> Result<(), ChangeError> {
    let id = ObjectId::from_hex(commit.as_bytes()).map_err(|e| RepoError::Git(e.to_string()))?;
    repo.fetch(origin)?;
    if repo.registry_of(commit, repo.tree_of(id)?)?.is_err() || repo.other_checkout()?.is_some() {
        return Ok(());
    }
    let local = repo.head()?;
    repo.checkout(ws, local, id)?;
    Ok(())
}

/// What the writer is about to commit, kept in `.git/dynapi/write-intent`
/// from just before the branch moves until the working tree and the index
/// hold the commit: a daemon killed in between, or a working tree or index
/// that could not be written, is finished by `repair`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Intent {
    parent: Option<String>,
    /// The tree of the commit about to be made: the commit on the branch is
    /// the writer's only if its tree is this one.
    tree: String,
    paths: Vec<String>,
    /// Each path as the plan found it on disk (blob id, executable), `None`
    /// for nothing: a file still so was not written yet.
    before: BTreeMap<String, Option<(String, bool)>>,
}

impl Intent {
    fn of(prepared: &Prepared, staged: &Staged) -> Intent {
        Intent {
            parent: staged.parent.map(|p| p.to_string()),
            tree: staged.tree.to_string(),
            paths: prepared.plan.order.clone(),
            before: prepared
                .plan
                .order
                .iter()
                .map(|p| {
                    let state = prepared.plan.before[p].map(|(id, x)| (id.to_string(), x));
                    (p.clone(), state)
                })
                .collect(),
        }
    }
}

const INTENT_FILE: &str = "write-intent";

impl Intent {
    fn write(&self, ws: &Workspace) -> Result<(), ChangeError> {
        let dir = ws.state_dir();
        let json = serde_json::to_vec(self).map_err(|e| RepoError::Git(e.to_string()))?;
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(INTENT_FILE), json))
            .map_err(|e| ChangeError::Repo(RepoError::from(e)))
    }

    fn clear(ws: &Workspace) {
        let _ = std::fs::remove_file(ws.state_dir().join(INTENT_FILE));
    }
}

/// Whether a committed write is still owed to the working tree or index
/// (`repair` has work to do).
pub fn repair_pending(ws: &Workspace) -> bool {
    ws.state_dir().join(INTENT_FILE).exists()
}

/// Finishes a write whose branch moved but whose working tree or index was
/// not written (the daemon killed in between, a disk error, a folder in the
/// way), in local mode: at start-up, before each write and every second
/// after a write that left one (`Writer::repair_later`). When the branch head
/// is the commit the intent names (its parent and tree), each path the
/// commit changed gets the commit's version in the index, and on disk where
/// the file is still as the plan found it (or is a folder holding only
/// folders). A path a human changed since keeps the human's file (the index
/// still gets the commit's version). Answers the paths written on disk; the
/// intent stays while the index or a disk write could not be done.
pub fn repair(repo: &Repo, ws: &Workspace) -> Result<Vec<String>, ChangeError> {
    let Ok(text) = std::fs::read(ws.state_dir().join(INTENT_FILE)) else {
        return Ok(Vec::new());
    };
    let intent: Option<Intent> = serde_json::from_slice(&text).ok();
    let (Some(intent), Some(head)) = (intent, repo.head()?) else {
        Intent::clear(ws);
        return Ok(Vec::new());
    };
    let parent = repo.first_parent(head)?;
    let tree = repo.tree_of(head)?;
    if parent.map(|p| p.to_string()) != intent.parent
        || ObjectId::from_hex(intent.tree.as_bytes()).ok() != Some(tree)
    {
        // The branch never moved (stopped before), or moved on since: either
        // way git and the working tree say what the branch holds.
        Intent::clear(ws);
        return Ok(Vec::new());
    }
    let lock = repo.lock_index()?;
    let now = repo.files_of(tree)?;
    let before = match parent {
        Some(p) => repo.files_of(repo.tree_of(p)?)?,
        None => Default::default(),
    };
    let trust_mode = repo.trusts_file_mode();
    let same = |a: Option<(ObjectId, bool)>, b: Option<(ObjectId, bool)>| {
        if trust_mode {
            a == b
        } else {
            a.map(|(id, _)| id) == b.map(|(id, _)| id)
        }
    };
    let mut edits = Vec::new();
    let mut repaired = Vec::new();
    let mut unfinished = false;
    // Removals first, then writes (a folder that becomes a file).
    let mut paths: Vec<&String> = intent
        .paths
        .iter()
        .filter(|p| !now.contains_key(*p))
        .collect();
    paths.extend(intent.paths.iter().filter(|p| now.contains_key(*p)));
    for path in paths {
        let is = now.get(path);
        if is == before.get(path) {
            // Not in the commit (a file git ignores): on disk only.
            continue;
        }
        edits.push(match is {
            Some(file) => Edit::Blob {
                path: path.clone(),
                id: file.id,
                executable: file.executable,
            },
            None => Edit::Delete { path: path.clone() },
        });
        let target = match ws.resolve(path) {
            Ok(target) => target,
            Err(e) => {
                tracing::warn!(path = %path, "not repaired on disk: {e}");
                continue;
            }
        };
        let planned = intent
            .before
            .get(path)
            .cloned()
            .flatten()
            .and_then(|(id, x)| Some((ObjectId::from_hex(id.as_bytes()).ok()?, x)));
        let target_state = is.map(|f| (f.id, f.executable));
        let on_disk = match files::file_state(ws, &target) {
            Ok(found) => found,
            // A folder where the file goes: taken only when it holds no file.
            Err(_)
                if is.is_some() && planned.is_none() && ws.remove_empty_tree(&target).is_ok() =>
            {
                None
            }
            Err(e) => {
                tracing::warn!(path = %path, "not repaired on disk: {e}");
                continue;
            }
        };
        if same(on_disk, target_state) {
            continue;
        }
        if !same(on_disk, planned) {
            tracing::warn!(path = %path, "changed since the write was planned: left as it is");
            continue;
        }
        let done = match is {
            Some(file) => repo
                .blob(file.id)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|contents| ws.write_atomic(&target, &contents, file.executable)),
            None => match ws.remove_file(&target) {
                Ok(()) => {
                    ws.remove_empty_parents(&target);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        };
        match done {
            Ok(()) => repaired.push(path.clone()),
            Err(e) => {
                tracing::warn!(path = %path, "not repaired on disk yet: {e}");
                unfinished = true;
            }
        }
    }
    repo.write_index(lock, &edits)?;
    if !unfinished {
        Intent::clear(ws);
    }
    Ok(repaired)
}

/// Dies on the spot (as `kill -9` would) when `DYNAPI_FAILPOINT` names
/// `name`: how the tests stop the writer between two of its steps. Without
/// the variable it costs one read of a cached value.
fn failpoint(name: &str) {
    static SET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let set = SET.get_or_init(|| std::env::var("DYNAPI_FAILPOINT").ok());
    if set.as_deref() == Some(name) {
        std::process::abort();
    }
}

/// Refuses a plan whose files changed on disk since it was made (412).
fn check_disk_unchanged(ws: &Workspace, plan: &Plan) -> Result<(), ChangeError> {
    for path in &plan.order {
        let target = &plan.targets[path];
        let now = match files::file_state(ws, target) {
            Ok(now) => now,
            // Still the folder the plan saw.
            Err(_)
                if plan.folders.contains(path)
                    && ws
                        .metadata_as_spelled(target)
                        .ok()
                        .flatten()
                        .is_some_and(|m| m.is_dir()) =>
            {
                continue
            }
            // A folder now where the plan saw none.
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => {
                return Err(ChangeError::Precondition {
                    path: path.clone(),
                    expected: plan.before[path]
                        .map_or_else(|| "none".to_string(), |(id, _)| id.to_string()),
                    current: "a folder".to_string(),
                })
            }
            Err(e) => return Err(fs_error(path)(e)),
        };
        let then = plan.before[path];
        // With `core.fileMode = false` the plan took the tree's bit, not the disk's.
        let same = match plan.tree_modes {
            Some(_) => now.map(|(id, _)| id) == then.map(|(id, _)| id),
            None => now == then,
        };
        if !same {
            let name = |s: Option<(ObjectId, bool)>| {
                s.map_or_else(|| "none".to_string(), |(id, _)| id.to_string())
            };
            return Err(ChangeError::Precondition {
                path: path.clone(),
                expected: name(then),
                current: name(now),
            });
        }
    }
    Ok(())
}

/// The paths whose working-tree file the plan changes.
fn changed_on_disk(plan: &Plan) -> Result<Vec<String>, ChangeError> {
    let mut changed = Vec::new();
    for path in &plan.order {
        let Some(after) = plan.after.get(path) else {
            continue;
        };
        let after = match after {
            Some((bytes, exec)) => Some((files::blob_id(bytes).map_err(RepoError::from)?, *exec)),
            None => None,
        };
        if after != plan.before[path] {
            changed.push(path.clone());
        }
    }
    Ok(changed)
}

fn check_manifests(
    repo: &Repo,
    base: Option<ObjectId>,
    tree: ObjectId,
    validation: Validation,
) -> Result<(), ChangeError> {
    let problems = match repo.registry_of("", tree)? {
        Ok(_) => return Ok(()),
        Err(p) => p,
    };
    if validation == Validation::NoNewProblems {
        if let Some(base) = base {
            let before: HashSet<Problem> = repo
                .registry_of("", base)?
                .err()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let new: Vec<Problem> = problems
                .iter()
                .filter(|p| !before.contains(p))
                .cloned()
                .collect();
            if new.is_empty() {
                return Ok(());
            }
        }
    }
    Err(ChangeError::Invalid(problems))
}

/// Writes the planned files: removals first (and the folders they leave
/// empty), then writes, so a file that becomes a folder (`docs` to
/// `docs/index.md`) or the other way round finds its place free. A move's
/// contents are in the plan, so removing its source first loses nothing.
fn write_worktree(ws: &Workspace, plan: &Plan, changed: &[String]) -> Result<(), ChangeError> {
    for path in changed {
        if let Some(None) = plan.after.get(path) {
            let target = &plan.targets[path];
            match ws.remove_file(target) {
                Ok(()) => ws.remove_empty_parents(target),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fs_error(path)(e)),
            }
        }
    }
    for path in changed {
        if let Some(Some((contents, executable))) = plan.after.get(path) {
            let target = &plan.targets[path];
            ws.remove_empty_tree(target).map_err(fs_error(path))?;
            ws.write_atomic(target, contents, *executable)
                .map_err(fs_error(path))?;
        }
    }
    Ok(())
}

/// An I/O error on the working-tree file `path`: one that met a symlink or left
/// the workspace (`workspace::beneath`) is the path's fault, not the commit's.
fn fs_error(path: &str) -> impl FnOnce(std::io::Error) -> ChangeError + '_ {
    move |e| {
        if workspace::beneath::is_escape(&e) {
            ChangeError::Path(PathError::Escapes(path.to_string()))
        } else {
            ChangeError::Repo(RepoError::from(e))
        }
    }
}

/// The operations that undo `commit` (against its first parent) on the branch
/// head: each file it changed goes back to its version before the commit. A file
/// changed again since is a conflict (nothing is merged); one already back is left
/// alone. Each operation carries `If-Match` = the version the commit left, so a
/// file changed in the workspace meanwhile fails the change rather than being lost.
pub fn revert_ops(repo: &Repo, commit: ObjectId) -> Result<Vec<Op>, ChangeError> {
    let empty = BTreeMap::new();
    let after = repo.files_of(repo.tree_of(commit)?)?;
    let before = match repo.first_parent(commit)? {
        Some(parent) => repo.files_of(repo.tree_of(parent)?)?,
        None => empty.clone(),
    };
    let now = match repo.head()? {
        Some(head) => repo.files_of(repo.tree_of(head)?)?,
        None => empty,
    };
    let mut ops = Vec::new();
    let mut conflicts = Vec::new();
    let paths: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for path in paths {
        let (was, became, is) = (before.get(path), after.get(path), now.get(path));
        if was == became || is == was {
            continue;
        }
        if is != became {
            conflicts.push(path.clone());
            continue;
        }
        let if_match = became.map(|f| f.id.to_string());
        ops.push(match was {
            Some(file) => Op::Write {
                path: path.clone(),
                contents: repo.blob(file.id)?,
                executable: Some(file.executable),
                if_match,
            },
            None => Op::Delete {
                path: path.clone(),
                if_match,
            },
        });
    }
    if !conflicts.is_empty() {
        return Err(ChangeError::Conflict(format!(
            "changed again since that commit, so it cannot be undone alone: {}",
            conflicts.join(", ")
        )));
    }
    if ops.is_empty() {
        return Err(ChangeError::Empty);
    }
    Ok(ops)
}

/// The operations that would make the branch head's tree equal the working tree,
/// for files git would track (`.gitignore` honoured). Symlinks are left out.
fn worktree_changes(repo: &Repo, workspace: &Workspace) -> Result<Vec<Op>, ChangeError> {
    let root = workspace.root();
    let head_files: BTreeMap<String, super::repo::TreeFile> = match repo.head()? {
        Some(commit) => repo.files_of(repo.tree_of(commit)?)?,
        None => BTreeMap::new(),
    };
    let mut seen = HashSet::new();
    let mut ops = Vec::new();
    let trust_mode = repo.trusts_file_mode();
    let walker = workspace.walker(root, true).build();
    for entry in walker {
        let entry = entry.map_err(|e| RepoError::Git(e.to_string()))?;
        let Some(kind) = entry.file_type() else {
            continue;
        };
        if !kind.is_file() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        // A name that is not UTF-8 cannot be committed as it is spelled.
        let Some(rel) = rel.to_str().map(str::to_string) else {
            tracing::warn!(path = %rel.display(), "a file name that is not UTF-8 is left out of the commit");
            continue;
        };
        let mut file = match workspace.open_file(entry.path()) {
            Ok(file) => file,
            // Gone since the walk saw it, or now behind a symlink: not ours.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if workspace::beneath::is_escape(&e) => continue,
            Err(e) => return Err(RepoError::from(e).into()),
        };
        let (id, executable) = files::state_of(&mut file).map_err(RepoError::from)?;
        let executable = if trust_mode {
            executable
        } else {
            head_files.get(&rel).is_some_and(|f| f.executable)
        };
        seen.insert(rel.clone());
        let unchanged = head_files
            .get(&rel)
            .is_some_and(|f| f.id == id && f.executable == executable);
        if !unchanged {
            let mut contents = Vec::new();
            std::io::Seek::rewind(&mut file).map_err(RepoError::from)?;
            std::io::Read::read_to_end(&mut file, &mut contents).map_err(RepoError::from)?;
            ops.push(Op::Write {
                path: rel,
                contents,
                executable: Some(executable),
                if_match: None,
            });
        }
    }
    for path in head_files.keys().filter(|p| !seen.contains(*p)) {
        // A tracked file that is gone from disk, unless it is a symlink we skipped.
        if std::fs::symlink_metadata(root.join(path)).is_err() {
            ops.push(Op::Delete {
                path: path.clone(),
                if_match: None,
            });
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::TemplateFile;
    use std::path::Path;

    fn git(dir: &Path, args: &[&str]) {
        let done = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "Human")
            .env("GIT_AUTHOR_EMAIL", "human@example.com")
            .env("GIT_COMMITTER_NAME", "Human")
            .env("GIT_COMMITTER_EMAIL", "human@example.com")
            .status()
            .unwrap();
        assert!(done.success(), "git {args:?}");
    }

    fn edit(old: &str, new: &str) -> Change {
        Change {
            message: "Edit the notes".into(),
            author: Author {
                name: "t via dynapi".into(),
                email: "dynapi@localhost".into(),
            },
            ops: vec![Op::Edit {
                path: "notes.txt".into(),
                edits: vec![TextEdit {
                    old: old.into(),
                    new: new.into(),
                }],
                if_match: None,
            }],
            validation: Validation::NoNewProblems,
            may_change_settings: false,
        }
    }

    /// A new repository in a temporary folder, its one commit holding `path`.
    fn one_file_repo(path: &str, contents: &[u8]) -> (tempfile::TempDir, PathBuf, Repo, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let files = [TemplateFile {
            path: path.into(),
            contents: contents.to_vec(),
            executable: false,
        }];
        let repo = Repo::init(&root, "main", &files, &edit("", "").author).unwrap();
        let ws = Workspace::open(&root).unwrap();
        (dir, root, repo, ws)
    }

    #[test]
    fn a_plan_is_not_committed_over_a_file_a_pull_changed_since() {
        let (_dir, root, repo, ws) = one_file_repo("notes.txt", b"one\n");
        let prepared = prepare(&repo, &ws, edit("one", "two")).unwrap();
        // A human's `git pull` lands between the plan and the commit: the file
        // changes on disk and the branch moves.
        std::fs::write(root.join("notes.txt"), "one, pulled\n").unwrap();
        git(&root, &["commit", "-q", "-am", "Pulled"]);
        let pulled = repo.head().unwrap();
        let refused = commit_prepared(&repo, &ws, &prepared);
        assert!(
            matches!(refused, Err(ChangeError::Precondition { ref path, .. }) if path == "notes.txt"),
            "{:?}",
            refused.map(|a| a.commit)
        );
        assert_eq!(repo.head().unwrap(), pulled);
        assert_eq!(
            std::fs::read_to_string(root.join("notes.txt")).unwrap(),
            "one, pulled\n"
        );
        // A human commit of other files moves the branch too, and the plan
        // still lands on top of it.
        let prepared = prepare(&repo, &ws, edit("pulled", "edited")).unwrap();
        std::fs::write(root.join("other.txt"), "x\n").unwrap();
        git(&root, &["add", "other.txt"]);
        git(&root, &["commit", "-q", "-m", "Other"]);
        let applied = commit_prepared(&repo, &ws, &prepared).unwrap();
        assert!(applied.new_commit);
        assert_eq!(
            std::fs::read_to_string(root.join("notes.txt")).unwrap(),
            "one, edited\n"
        );
    }

    fn git_out(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// commit_prepared's steps up to the branch moving (the `after-ref-update`
    /// failpoint): the intent written, the commit made.
    fn commit_then_die(repo: &Repo, ws: &Workspace, prepared: &Prepared) -> Staged {
        let staged = stage(repo, prepared, repo.head().unwrap()).unwrap();
        Intent::of(prepared, &staged).write(ws).unwrap();
        repo.commit_tree(
            staged.parent,
            staged.tree,
            &prepared.message,
            &prepared.author,
        )
        .unwrap();
        staged
    }

    #[test]
    fn a_crash_after_the_working_tree_and_before_the_index_is_repaired() {
        let (_dir, root, repo, ws) = one_file_repo("notes.txt", b"one\n");
        let prepared = prepare(&repo, &ws, edit("one", "two")).unwrap();
        commit_then_die(&repo, &ws, &prepared);
        // Killed while waiting up to INDEX_LOCK_WAIT for git's index lock:
        // the working tree holds the commit, the index does not.
        let disk = changed_on_disk(&prepared.plan).unwrap();
        write_worktree(&ws, &prepared.plan, &disk).unwrap();
        // Start-up.
        repair(&repo, &ws).unwrap();
        assert_eq!(
            git_out(&root, &["status", "--porcelain"]),
            "",
            "the index still holds the old notes.txt: a human's next `git commit` undoes the write"
        );
    }

    #[test]
    fn a_crash_in_a_write_that_turns_a_folder_into_a_file_does_not_stop_start_up() {
        let (_dir, root, repo, ws) = one_file_repo("docs/index.md", b"# Docs\n");
        // What `POST /revert` of "docs became a folder" sends (BTreeSet order).
        let change = Change {
            message: "docs as a file".into(),
            author: edit("", "").author,
            ops: vec![
                Op::Write {
                    path: "docs".into(),
                    contents: b"a file\n".to_vec(),
                    executable: Some(false),
                    if_match: None,
                },
                Op::Delete {
                    path: "docs/index.md".into(),
                    if_match: None,
                },
            ],
            validation: Validation::NoNewProblems,
            may_change_settings: false,
        };
        let prepared = prepare(&repo, &ws, change).unwrap();
        commit_then_die(&repo, &ws, &prepared);
        let repaired = repair(&repo, &ws);
        assert!(
            repaired.is_ok(),
            "start-up refuses to run: {:?}",
            repaired.err().map(|e| e.to_string())
        );
        assert_eq!(
            std::fs::read_to_string(root.join("docs")).unwrap(),
            "a file\n"
        );
    }

    #[test]
    fn repair_writes_an_edit_planned_on_a_file_with_uncommitted_changes() {
        let (_dir, root, repo, ws) = one_file_repo("notes.txt", b"one\n");
        // The plan starts from the disk, which the parent commit does not hold.
        std::fs::write(root.join("notes.txt"), "one\nlocal\n").unwrap();
        let prepared = prepare(&repo, &ws, edit("one", "two")).unwrap();
        commit_then_die(&repo, &ws, &prepared);
        repair(&repo, &ws).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("notes.txt")).unwrap(),
            "two\nlocal\n"
        );
        assert!(!repair_pending(&ws));
    }

    #[test]
    fn a_human_commit_on_the_same_parent_is_never_taken_for_the_writer_s() {
        let (_dir, root, repo, ws) = one_file_repo("notes.txt", b"one\n");
        let prepared = prepare(&repo, &ws, edit("one", "two")).unwrap();
        let staged = stage(&repo, &prepared, repo.head().unwrap()).unwrap();
        // Stopped after the intent, before the branch moved; a human commits.
        Intent::of(&prepared, &staged).write(&ws).unwrap();
        std::fs::write(root.join("notes.txt"), "one, the human's\n").unwrap();
        git(&root, &["commit", "-q", "-am", "Human"]);
        assert_eq!(repair(&repo, &ws).unwrap(), Vec::<String>::new());
        assert_eq!(
            std::fs::read_to_string(root.join("notes.txt")).unwrap(),
            "one, the human's\n"
        );
        assert!(!repair_pending(&ws));
    }

    #[test]
    fn only_an_index_lock_the_daemon_left_is_removed_at_start() {
        let (_dir, root, repo, _ws) = one_file_repo("notes.txt", b"one\n");
        // A human's git holds the lock: never the daemon's to remove.
        std::fs::write(root.join(".git/index.lock"), b"").unwrap();
        assert!(!repo.clear_own_index_lock());
        assert!(root.join(".git/index.lock").exists());
        std::fs::remove_file(root.join(".git/index.lock")).unwrap();
        // The daemon killed while it held the lock (as abort() leaves it).
        std::mem::forget(repo.lock_index().unwrap());
        assert!(root.join(".git/index.lock").exists());
        assert!(repo.clear_own_index_lock());
        assert!(!root.join(".git/index.lock").exists());
        repo.lock_index().unwrap();
    }
}
