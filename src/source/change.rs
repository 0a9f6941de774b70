//! The change writer: the only code that creates commits.
//!
//! Writes are serialized through one lock. A change is applied to the branch head's
//! tree, checked (preconditions, and manifests when it touches them), committed with
//! a compare-and-swap on the branch ref, and only then written to the working tree.
//! When the branch moved (a human's `git commit` in the workspace), the change is
//! re-applied on the new head, so nothing acknowledged is lost and nothing
//! committed by someone else is overwritten silently: `If-Match` turns a stale
//! write into `ChangeError::Precondition`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use gix::ObjectId;
use tokio::sync::Mutex;

use super::repo::{Author, Edit, Repo, RepoError};
use crate::manifest::Problem;
use crate::registry::{MANIFEST_DIR, SETTINGS_FILE};
use crate::workspace::{self, PathError, Workspace};

/// How many times a change is re-applied when the branch keeps moving under it.
const MAX_ATTEMPTS: usize = 8;

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
    /// Remove a file that must exist.
    Delete {
        path: String,
        if_match: Option<String>,
    },
}

impl Op {
    fn path(&self) -> &str {
        match self {
            Op::Write { path, .. } | Op::Delete { path, .. } => path,
        }
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
    #[error("the manifests would be invalid")]
    Invalid(Vec<Problem>),
    #[error("nothing to commit")]
    Empty,
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

#[derive(Debug, Clone)]
pub struct Committed {
    pub commit: String,
}

pub struct Writer {
    repo: Repo,
    workspace: Workspace,
    lock: Mutex<()>,
}

impl Writer {
    pub fn new(repo: Repo, workspace: Workspace) -> Writer {
        Writer {
            repo,
            workspace,
            lock: Mutex::new(()),
        }
    }

    /// Applies `change` as one commit on the branch and writes it to the working tree.
    pub async fn apply(&self, change: Change) -> Result<Committed, ChangeError> {
        let _serial = self.lock.lock().await;
        let repo = self.repo.clone();
        let workspace = self.workspace.clone();
        tokio::task::spawn_blocking(move || apply_blocking(&repo, &workspace, change))
            .await
            .map_err(|e| ChangeError::Repo(RepoError::Git(e.to_string())))?
    }

    /// Commits whatever differs between the working tree and the branch head (files
    /// scripts wrote, files a human edited), honouring `.gitignore`. `POST /git-sync`.
    pub async fn commit_worktree(
        &self,
        message: String,
        author: Author,
    ) -> Result<Committed, ChangeError> {
        let _serial = self.lock.lock().await;
        let repo = self.repo.clone();
        let workspace = self.workspace.clone();
        tokio::task::spawn_blocking(move || {
            let ops = worktree_changes(&repo, workspace.root())?;
            if ops.is_empty() {
                return Err(ChangeError::Empty);
            }
            let change = Change {
                message,
                author,
                ops,
                validation: Validation::NoNewProblems,
            };
            apply_blocking(&repo, &workspace, change)
        })
        .await
        .map_err(|e| ChangeError::Repo(RepoError::Git(e.to_string())))?
    }
}

fn apply_blocking(
    repo: &Repo,
    workspace: &Workspace,
    change: Change,
) -> Result<Committed, ChangeError> {
    // Every path is confined before anything is read or written.
    let mut targets = Vec::new();
    for op in &change.ops {
        targets.push(workspace.resolve(op.path())?);
    }
    let touches_manifests = change.ops.iter().any(|op| {
        let p = op.path();
        p == SETTINGS_FILE
            || p.starts_with(&format!("{MANIFEST_DIR}/"))
            || p.starts_with("scripts/")
    });
    for _ in 0..MAX_ATTEMPTS {
        let parent = repo.head()?;
        let base_tree = parent.map(|c| repo.tree_of(c)).transpose()?;
        let edits = resolve_ops(repo, base_tree, &change.ops)?;
        let tree = repo.tree_with(base_tree, &edits)?;
        if Some(tree) == base_tree {
            return Err(ChangeError::Empty);
        }
        if touches_manifests || change.validation == Validation::Strict {
            check_manifests(repo, base_tree, tree, change.validation)?;
        }
        match repo.commit_tree(parent, tree, &change.message, &change.author) {
            Ok(commit) => {
                write_worktree(&edits, &targets)?;
                repo.update_index(workspace.root(), &edits)?;
                return Ok(Committed {
                    commit: commit.to_string(),
                });
            }
            Err(RepoError::Moved) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ChangeError::Repo(RepoError::Moved))
}

/// Turns operations into tree edits against `base`, checking `If-Match` and existence.
fn resolve_ops(repo: &Repo, base: Option<ObjectId>, ops: &[Op]) -> Result<Vec<Edit>, ChangeError> {
    let current = |path: &str| match base {
        Some(tree) => repo.file(tree, path),
        None => Ok(None),
    };
    let check_match =
        |path: &str, if_match: &Option<String>, found: Option<ObjectId>| match if_match {
            Some(expected)
                if found.map(|id| id.to_string()).as_deref() != Some(expected.as_str()) =>
            {
                Err(ChangeError::Precondition {
                    path: path.to_string(),
                    expected: expected.clone(),
                    current: found
                        .map(|id| id.to_string())
                        .unwrap_or_else(|| "absent".into()),
                })
            }
            _ => Ok(()),
        };
    let mut edits = Vec::new();
    for op in ops {
        match op {
            Op::Write {
                path,
                contents,
                executable,
                if_match,
            } => {
                let existing = current(path)?;
                check_match(path, if_match, existing.map(|f| f.id))?;
                edits.push(Edit::Write {
                    path: path.clone(),
                    contents: contents.clone(),
                    executable: executable.unwrap_or(existing.is_some_and(|f| f.executable)),
                });
            }
            Op::Delete { path, if_match } => {
                let existing = current(path)?.ok_or_else(|| ChangeError::NotFound(path.clone()))?;
                check_match(path, if_match, Some(existing.id))?;
                edits.push(Edit::Delete { path: path.clone() });
            }
        }
    }
    Ok(edits)
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

fn write_worktree(edits: &[Edit], targets: &[std::path::PathBuf]) -> Result<(), ChangeError> {
    for (edit, target) in edits.iter().zip(targets) {
        match edit {
            Edit::Write {
                contents,
                executable,
                ..
            } => {
                workspace::write_atomic(target, contents, *executable).map_err(RepoError::from)?;
            }
            Edit::Delete { .. } => match std::fs::remove_file(target) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RepoError::from(e).into()),
            },
        }
    }
    Ok(())
}

/// The operations that would make the branch head's tree equal the working tree,
/// for files git would track (`.gitignore` honoured). Symlinks are left out.
fn worktree_changes(repo: &Repo, root: &Path) -> Result<Vec<Op>, ChangeError> {
    let head_files: BTreeMap<String, super::repo::TreeFile> = match repo.head()? {
        Some(commit) => repo.files_of(repo.tree_of(commit)?)?,
        None => BTreeMap::new(),
    };
    let mut seen = HashSet::new();
    let mut ops = Vec::new();
    let walker = ignore::WalkBuilder::new(root)
        .hidden(false)
        .parents(false)
        .git_global(false)
        .require_git(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
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
        let rel = rel.to_string_lossy().into_owned();
        if rel.contains(".dynapi-tmp-") {
            continue;
        }
        let contents = std::fs::read(entry.path()).map_err(RepoError::from)?;
        let executable = entry
            .metadata()
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
            .unwrap_or(false);
        let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, &contents)
            .map_err(|e| RepoError::Git(e.to_string()))?;
        seen.insert(rel.clone());
        let unchanged = head_files
            .get(&rel)
            .is_some_and(|f| f.id == id && f.executable == executable);
        if !unchanged {
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
