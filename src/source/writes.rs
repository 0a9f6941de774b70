//! `Writes`, the write service: everything about a write the API takes except
//! its HTTP shape. Who may change what (`dynapi.yaml` only for an `admin`
//! token), commit or pull request (the request's `mode`, else the repository's
//! policy), the author line, the audit entry, and waiting until the change is
//! served. Routes build the ops; this file decides the rest.
//!
//! It owns the change writer: `Writer`'s commit entry points are visible in
//! `source` only, and `App` holds this service, not the writer, so no route can
//! reach a commit without passing the admin rule here (as `/git-sync` once
//! did, issue 9). It knows no HTTP: a refusal is a `WriteError`, turned into
//! the caller's error type (`Refusal`) inside the write's own task, so the
//! audit log names it with the code the answer carries.

use std::sync::Arc;
use std::time::Instant;

use super::change::{Applied, Change, ChangeError, Delivery, Op, Validation, Writer};
use super::github::GitHub;
use super::repo::{Author, Repo};
use super::sync::{SyncReport, Syncer, Trigger};
use crate::audit::{Audit, Entry};
use crate::auth::{Caller, Scope};
use crate::registry::{MANIFEST_DIR, PROMPTS_DIR, SETTINGS_FILE};
use crate::workspace::Workspace;

/// Cheap to clone: every clone shares the one writer.
#[derive(Clone)]
pub struct Writes {
    writer: Writer,
    syncer: Arc<Syncer>,
    audit: Arc<Audit>,
    /// GitHub mode: pull requests are possible, and a commit reaches the
    /// working tree only through a sync.
    github: bool,
}

/// Which of the repository's policies (`dynapi.yaml`'s `policy`) decides
/// whether a write with no `mode` becomes a pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `policy.files`: file routes, reverts, combine and archive outputs.
    Files,
    /// `policy.endpoints`: adding and removing endpoints.
    Endpoints,
}

/// Why a write was not taken.
#[derive(Debug)]
pub enum WriteError {
    /// The writer refused the change, or could not make it.
    Change(ChangeError),
    /// The request's `mode` cannot be honoured; the message says why.
    Mode(String),
    /// The write's task ended without an answer (a panic).
    Lost(String),
}

impl From<ChangeError> for WriteError {
    fn from(e: ChangeError) -> Self {
        WriteError::Change(e)
    }
}

/// A caller's error type for refused writes (`http::ApiError`): made from a
/// `WriteError`, and named in the audit log by `code`, the same code the
/// answer carries.
pub trait Refusal: From<WriteError> + Send + 'static {
    fn code(&self) -> &'static str;
}

/// A commit message: the caller's, or `default`.
pub fn message_or(given: Option<String>, default: impl FnOnce() -> String) -> String {
    given
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(default)
}

/// The author of a commit made for `caller`: it says it came through the API,
/// and with which token (never the token itself).
fn author_for(caller: &Caller) -> Author {
    Author {
        name: format!("{} via dynapi", caller.token_name),
        email: "dynapi@localhost".into(),
    }
}

impl Writes {
    /// The service and the one writer it owns, for the repository in
    /// `workspace` (on GitHub when `github` is given).
    pub(crate) fn new(
        repo: Repo,
        workspace: Workspace,
        github: Option<GitHub>,
        syncer: Arc<Syncer>,
        audit: Arc<Audit>,
    ) -> Writes {
        Writes {
            github: github.is_some(),
            writer: Writer::new(repo, workspace, github),
            syncer,
            audit,
        }
    }

    /// A write start-up could not finish (git's index lock held by a human):
    /// tried again every second (`Writer::repair_later`).
    pub fn repair_later(&self) {
        self.writer.repair_later();
    }

    /// How a write reaches the branch: the request's `mode` (`commit` or
    /// `pull_request`), else the repository's `policy`; pull requests need
    /// GitHub mode.
    pub fn delivery(&self, mode: Option<&str>, policy: Policy) -> Result<Delivery, WriteError> {
        let registry = self.syncer.registry();
        let by_policy = match policy {
            Policy::Files => registry.settings.files_by_pull_request,
            Policy::Endpoints => registry.settings.endpoints_by_pull_request,
        };
        match mode {
            Some("pull_request") if self.github => Ok(Delivery::PullRequest),
            Some("pull_request") => Err(WriteError::Mode(
                "`mode: pull_request` needs a GitHub repository (`dynapi serve --remote`); the local workspace takes commits only".into(),
            )),
            Some("commit") => Ok(Delivery::Commit),
            Some(other) => Err(WriteError::Mode(format!(
                "`mode` is `commit` or `pull_request`, not `{other}`"
            ))),
            None if self.github && by_policy => Ok(Delivery::PullRequest),
            None => Ok(Delivery::Commit),
        }
    }

    /// Applies `ops` as ONE commit for `caller` under `policy.files` (or the
    /// request's `mode`), then `settle`s: the answer to a write of files.
    pub async fn commit<E: Refusal>(
        &self,
        caller: &Caller,
        message: String,
        ops: Vec<Op>,
        mode: Option<&str>,
    ) -> Result<Applied, E> {
        let delivery = self.delivery(mode, Policy::Files)?;
        let applied = self
            .apply::<E>(caller, message, ops, Validation::NoNewProblems, delivery)
            .await?;
        self.settle(&applied).await;
        Ok(applied)
    }

    /// Applies an endpoint change (checked by `validation`) and, once it is on
    /// the branch, syncs so the answer comes when it is served: the sync's
    /// report, or `None` when the change went to a pull request.
    pub async fn serve<E: Refusal>(
        &self,
        caller: &Caller,
        message: String,
        ops: Vec<Op>,
        validation: Validation,
        delivery: Delivery,
    ) -> Result<(Applied, Option<SyncReport>), E> {
        let applied = self
            .apply::<E>(caller, message, ops, validation, delivery)
            .await?;
        if applied.pull_request.is_some() {
            return Ok((applied, None));
        }
        let report = self.syncer.sync(Trigger::Write).await;
        Ok((applied, Some(report)))
    }

    /// Commits what differs between the working tree and the branch (files
    /// scripts wrote, `.gitignore` honoured) for `caller`, then syncs:
    /// whether a commit was made (nothing to commit is no error here), and
    /// the sync's report. `POST /git-sync`.
    pub async fn commit_worktree<E: Refusal>(
        &self,
        caller: &Caller,
        message: String,
    ) -> Result<(bool, SyncReport), E> {
        let (writes, caller) = (self.clone(), caller.clone());
        let committed = detached(async move {
            let started = Instant::now();
            let result = match writes
                .writer
                .commit_worktree(
                    message,
                    author_for(&caller),
                    caller.scopes.contains(Scope::Admin),
                )
                .await
            {
                Ok(applied) => Ok(Some(applied)),
                // Nothing to commit is no error here.
                Err(ChangeError::Empty) => Ok(None),
                Err(e) => Err(E::from(WriteError::Change(e))),
            };
            let applied = result.as_ref().ok().and_then(Option::as_ref);
            let target = applied.map_or(String::new(), |a| {
                a.files.keys().cloned().collect::<Vec<_>>().join(", ")
            });
            // Refusals are recorded by the answer's code, as every write.
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.code(),
            };
            let commit = applied.map(|a| a.commit.as_str());
            writes.record(&caller, &target, commit, outcome, started);
            result.map(|applied| applied.is_some_and(|a| a.new_commit))
        })
        .await?;
        let report = self.syncer.sync(Trigger::Write).await;
        Ok((committed, report))
    }

    /// Applies `ops` through the writer and records the write in the audit
    /// log, whether it was taken or refused. Every write a route makes comes
    /// through here.
    async fn apply<E: Refusal>(
        &self,
        caller: &Caller,
        message: String,
        ops: Vec<Op>,
        validation: Validation,
        delivery: Delivery,
    ) -> Result<Applied, E> {
        let change = Change {
            message,
            author: author_for(caller),
            ops,
            validation,
            // The writer refuses `dynapi.yaml` unless the caller is an admin;
            // this is where the caller's token becomes that permission.
            may_change_settings: caller.scopes.contains(Scope::Admin),
        };
        let (writes, caller) = (self.clone(), caller.clone());
        detached(async move {
            let started = Instant::now();
            let target = change
                .ops
                .iter()
                .flat_map(Op::paths)
                .collect::<Vec<_>>()
                .join(", ");
            let result = writes
                .writer
                .apply_as(change, delivery)
                .await
                .map_err(|e| E::from(WriteError::Change(e)));
            let outcome = match &result {
                Ok(a) if a.pull_request.is_some() => "pull_request",
                Ok(_) => "ok",
                Err(e) => e.code(),
            };
            let commit = result.as_ref().ok().map(|a| a.commit.as_str());
            writes.record(&caller, &target, commit, outcome, started);
            result
        })
        .await
    }

    /// Reloads the registry after a change that touched what it is built
    /// from, so the answer comes when the change is served; other commits
    /// reload in the background.
    async fn settle(&self, applied: &Applied) {
        if !applied.new_commit {
            return;
        }
        let served_from = |p: &String| {
            p == SETTINGS_FILE
                || p.starts_with(&format!("{MANIFEST_DIR}/"))
                || p.starts_with(&format!("{PROMPTS_DIR}/"))
                || p.starts_with("scripts/")
        };
        // In GitHub mode the sync is also what brings the new commit's files here.
        if applied.files.keys().any(served_from) || self.github {
            self.syncer.sync(Trigger::Write).await;
        } else {
            self.syncer.trigger(Trigger::Write);
        }
    }

    /// One write in the audit log: what `caller` changed (`target`), the
    /// commit it made, and how it ended.
    fn record(
        &self,
        caller: &Caller,
        target: &str,
        commit: Option<&str>,
        outcome: &str,
        started: Instant,
    ) {
        self.audit.record(&Entry {
            token: &caller.token_name,
            operation: "write",
            target,
            commit,
            library: None,
            duration: started.elapsed(),
            outcome,
        });
    }
}

/// Runs a write in a task of its own: a caller that hangs up drops the future
/// awaiting it, not the write nor its line in the audit log.
async fn detached<T, E>(
    work: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Refusal,
{
    tokio::spawn(work)
        .await
        .map_err(|e| E::from(WriteError::Lost(e.to_string())))?
}
