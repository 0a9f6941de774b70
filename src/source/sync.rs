//! Sync: read the branch head, build a candidate registry from that one commit,
//! and swap it in whole if it is valid. An invalid commit is never served: the
//! last-known-good registry stays, and the problems are kept for `/status`.
//!
//! Triggers (the local watcher, `POST /sync`, writes) coalesce: a trigger that
//! arrives while a sync runs causes exactly one more sync, never a queue. Requests
//! take an `Arc<Registry>` when they start and keep it to the end (invariant 1).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::github::GitHub;
use super::refwatch::RefEvents;
use super::repo::{Repo, RepoError};
use crate::manifest::Problem;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::workspace::Workspace;

/// GitHub mode: where sync fetches from, and where statuses go.
#[derive(Clone)]
pub struct Remote {
    pub github: GitHub,
    pub workspace: Workspace,
}

/// The first wait after a failed sync, doubled each failure up to the second.
const MIN_BACKOFF: Duration = Duration::from_millis(750);
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Startup,
    Watch,
    Api,
    Write,
    Poll,
    Webhook,
    /// Another replica was told of a push (shared state).
    Replica,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncRecord {
    pub time: String,
    pub trigger: Trigger,
    pub commit: Option<String>,
    /// `served`, `unchanged`, `invalid` or `failed`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncError {
    pub time: String,
    pub commit: Option<String>,
    pub message: String,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    pub last_sync: Option<SyncRecord>,
    pub last_error: Option<SyncError>,
    /// When the served registry was loaded.
    pub served_since: Option<String>,
    pub syncs: u64,
    pub failures: u64,
    /// After failures: how long the next sync waits (0 when healthy).
    pub retry_in_ms: u64,
}

/// What one sync did, for callers that wait on it (`POST /sync`, writes).
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub commit: Option<String>,
    pub served: String,
    pub outcome: &'static str,
    pub problems: Vec<Problem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct Syncer {
    repo: Repo,
    remote: Option<Remote>,
    metrics: Arc<Metrics>,
    registry: ArcSwap<Registry>,
    /// Shared with the tasks that post commit statuses after a sync.
    status: Arc<Mutex<SyncStatus>>,
    running: tokio::sync::Mutex<()>,
    wake: Notify,
    /// Why the background loop was woken (the first reason since its last sync).
    pending: Mutex<Option<Trigger>>,
    /// Bumped on every swap; whoever cares about registry changes (MCP
    /// `list_changed`) subscribes.
    generation: watch::Sender<u64>,
    /// The branch's head as last synced, served or not: files change with every
    /// commit, even one whose manifests are refused (MCP resource updates).
    head: watch::Sender<Option<String>>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Syncer {
    pub fn new(repo: Repo, remote: Option<Remote>, metrics: Arc<Metrics>) -> Syncer {
        Syncer {
            repo,
            remote,
            metrics,
            registry: ArcSwap::from_pointee(Registry::empty()),
            status: Arc::default(),
            running: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            pending: Mutex::new(None),
            generation: watch::channel(0).0,
            head: watch::channel(None).0,
        }
    }

    /// The registry serving now. Keep the `Arc` for the whole request.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    pub fn status(&self) -> SyncStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The branch's head each sync found, whether its manifests were served or
    /// refused.
    pub fn heads(&self) -> watch::Receiver<Option<String>> {
        self.head.subscribe()
    }

    /// Asks the background loop for a sync, saying why; coalesces with any
    /// already pending (one more sync, never a queue).
    pub fn trigger(&self, why: Trigger) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.wake.notify_one();
    }

    /// Syncs now and reports what happened. Concurrent calls run one after another;
    /// each reads the head when it starts, so a caller never sees a stale answer.
    /// Fetches (GitHub mode), builds and swaps: see the module doc. The sync
    /// runs as its own task, so a caller that goes away (a client hanging up)
    /// never cuts it between the checkout and the swap, nor frees its lock
    /// while its blocking work goes on.
    pub async fn sync(self: &Arc<Self>, trigger: Trigger) -> SyncReport {
        let this = self.clone();
        let report = tokio::spawn(async move { this.sync_whole(trigger).await }).await;
        // A registry built (and the one it replaced) freed a lot at once.
        tokio::task::spawn_blocking(crate::memory::trim);
        match report {
            Ok(report) => report,
            Err(e) => SyncReport {
                commit: None,
                served: self.registry().commit.clone(),
                outcome: "failed",
                problems: Vec::new(),
                error: Some(format!("the sync stopped: {e}")),
            },
        }
    }

    async fn sync_whole(&self, trigger: Trigger) -> SyncReport {
        let _one_at_a_time = self.running.lock().await;
        let repo = self.repo.clone();
        let served = self.registry().commit.clone();
        // The library commits served: a library's branch may move while the
        // project's does not. Syncs that come from outside (the API, a
        // webhook, the poll, start-up) read them again; the watcher and the
        // writer's syncs are about the project's branch only.
        let served_libraries = library_commits(&self.registry());
        let recheck =
            !served_libraries.is_empty() && !matches!(trigger, Trigger::Write | Trigger::Watch);
        let remote = self.remote.clone();
        let built = tokio::task::spawn_blocking(move || -> Result<Option<Built>, RepoError> {
            // GitHub mode: the branch on GitHub is the truth; fetch it first. After
            // a write the writer has just fetched and checked out GitHub's new head,
            // so the branch here is already it. At start-up an unreachable GitHub
            // is no reason not to serve: the local checkout (only ever a commit
            // that built) is served, the error reported, the fetch tried again.
            let mut fetch_error = None;
            let head = match &remote {
                Some(remote) if trigger != Trigger::Write => {
                    match repo.fetch(&remote.github.origin) {
                        Ok(head) => Some(head),
                        Err(e) if trigger == Trigger::Startup => {
                            fetch_error = Some(e.to_string());
                            repo.head()?
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => repo.head()?,
            };
            let Some(head) = head else {
                return Ok(None);
            };
            // GitHub mode: the working tree, where scripts run, gets `head`
            // unless it is there already or a human has another branch
            // checked out (its files stay until the served branch is back;
            // `/status` says so).
            let check_out = || -> Result<(), RepoError> {
                if let Some(remote) = &remote {
                    let local = repo.head()?;
                    if local != Some(head) && repo.other_checkout()?.is_none() {
                        repo.checkout(&remote.workspace, local, head)?;
                    }
                }
                Ok(())
            };
            let head_str = head.to_string();
            // Served already (and its libraries where they were): its
            // checkout may have waited for a human's other branch to be left.
            let rebuilt = if head_str == served && !recheck {
                None
            } else {
                Some(servable(&repo, head)?)
            };
            let registry = match rebuilt {
                Some(registry)
                    if head_str != served
                        || !registry
                            .as_ref()
                            .is_ok_and(|r| library_commits(r) == served_libraries) =>
                {
                    registry
                }
                _ => {
                    check_out()?;
                    return Ok(Some(Built {
                        head: head_str,
                        registry: None,
                        fallback: None,
                        fetch_error,
                    }));
                }
            };
            // Only a servable commit reaches the working tree.
            if registry.is_ok() {
                check_out()?;
            }
            // Nothing served yet (start-up) and the head does not build: serve
            // the newest commit before it that does, rather than nothing.
            let fallback = match (&registry, served.is_empty()) {
                (Err(_), true) => last_that_builds(&repo, head)?,
                _ => None,
            };
            Ok(Some(Built {
                head: head_str,
                registry: Some(registry),
                fallback,
                fetch_error,
            }))
        })
        .await
        .unwrap_or_else(|e| Err(RepoError::Git(e.to_string())));
        let verdict = match &built {
            Ok(Some(Built {
                head,
                registry: Some(Ok(_)),
                ..
            })) => Some((head.clone(), Ok(()))),
            Ok(Some(Built {
                head,
                registry: Some(Err(problems)),
                ..
            })) => Some((head.clone(), Err(problems.clone()))),
            _ => None,
        };
        let (built, fallback, fetch_error) = match built {
            Ok(Some(b)) => (Ok(Some((b.head, b.registry))), b.fallback, b.fetch_error),
            Ok(None) => (Ok(None), None, None),
            Err(e) => (Err(e), None, None),
        };

        let now = now_rfc3339();
        let (commit, outcome, problems, error) = {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            status.syncs += 1;
            let (commit, outcome, problems, error) = match built {
                Ok(None) => (None, "unchanged", Vec::new(), None),
                Ok(Some((head, None))) => (Some(head), "unchanged", Vec::new(), None),
                Ok(Some((head, Some(Ok(registry))))) => {
                    let (count, prompts) = (registry.endpoints().len(), registry.prompts().len());
                    self.registry.store(Arc::new(registry));
                    self.generation.send_modify(|g| *g += 1);
                    status.served_since = Some(now.clone());
                    tracing::info!(commit = %head, endpoints = count, prompts, ?trigger, "serving new commit");
                    (Some(head), "served", Vec::new(), None)
                }
                Ok(Some((head, Some(Err(problems))))) => {
                    for p in &problems {
                        tracing::warn!(commit = %head, "invalid manifest: {p}");
                    }
                    if let Some(registry) = fallback {
                        tracing::warn!(commit = %head, fallback = %registry.commit, "the head does not build; serving the newest commit before it that does");
                        self.registry.store(Arc::new(registry));
                        self.generation.send_modify(|g| *g += 1);
                        status.served_since = Some(now.clone());
                    }
                    status.failures += 1;
                    status.last_error = Some(SyncError {
                        time: now.clone(),
                        commit: Some(head.clone()),
                        message: format!(
                        "commit {head} has invalid manifests or prompts; still serving the last good commit"
                    ),
                        problems: problems.clone(),
                    });
                    (Some(head), "invalid", problems, None)
                }
                Err(e) => {
                    tracing::error!(?trigger, "sync failed: {e}");
                    status.failures += 1;
                    status.last_error = Some(SyncError {
                        time: now.clone(),
                        commit: None,
                        message: e.to_string(),
                        problems: Vec::new(),
                    });
                    (None, "failed", Vec::new(), Some(e.to_string()))
                }
            };
            // Served from the local checkout because GitHub did not answer: a
            // failure to report, and to try again (`run` retries failures).
            let (outcome, error) = match fetch_error {
                Some(e) => {
                    tracing::error!(
                        ?trigger,
                        "could not fetch from GitHub; serving the local checkout: {e}"
                    );
                    status.failures += 1;
                    status.last_error = Some(SyncError {
                        time: now.clone(),
                        commit: None,
                        message: format!(
                            "could not fetch from GitHub; serving the local checkout: {e}"
                        ),
                        problems: Vec::new(),
                    });
                    ("failed", Some(e))
                }
                None => (outcome, error),
            };
            status.last_sync = Some(SyncRecord {
                time: now,
                trigger,
                commit: commit.clone(),
                outcome,
            });
            (commit, outcome, problems, error)
        };
        if let Some(head) = &commit {
            self.head.send_if_modified(|seen| {
                let new = seen.as_ref() != Some(head);
                if new {
                    *seen = Some(head.clone());
                }
                new
            });
        }
        self.metrics.sync(match outcome {
            "invalid" | "failed" => outcome,
            _ => "ok",
        });
        let served = self.registry().commit.clone();
        if !served.is_empty() {
            self.metrics.serving(&served);
        }
        // The status goes out after the answer: GitHub's pacing of writes must
        // not hold up serving (or the write that is waiting for this sync).
        if let (Some(remote), Some((sha, verdict))) = (&self.remote, verdict) {
            let (github, status) = (remote.github.clone(), self.status.clone());
            tokio::spawn(async move { report_status(&github, &status, &sha, &verdict).await });
        }
        SyncReport {
            commit,
            served: self.registry().commit.clone(),
            outcome,
            problems,
            error,
        }
    }

    /// GitHub mode: the repository served, as `owner/name`.
    pub fn github_repository(&self) -> Option<String> {
        let remote = self.remote.as_ref()?;
        Some(format!("{}/{}", remote.github.owner, remote.github.repo))
    }

    /// Checks pull request `number`, whose head the event says is `sha`: fetches
    /// `refs/pull/N/head` (so pull requests from forks are checked too), builds
    /// its registry, and posts the status on the commit fetched. GitHub mode only.
    pub async fn check_pull_request(&self, number: u64, sha: String) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let repo = self.repo.clone();
        let origin = remote.github.origin.clone();
        let wanted = sha.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<_, RepoError> {
            let fetched = repo.fetch_pull(&origin, number)?;
            if fetched != wanted.as_str() {
                tracing::info!(%wanted, %fetched, "the pull request moved since the event; checking its new head");
            }
            let registry = repo.registry_of(&fetched.to_string(), repo.tree_of(fetched)?)?;
            Ok((fetched.to_string(), registry.map(|_| ())))
        })
        .await
        .unwrap_or_else(|e| Err(RepoError::Git(e.to_string())));
        match checked {
            Ok((fetched, verdict)) => {
                report_status(&remote.github, &self.status, &fetched, &verdict).await
            }
            Err(e) => tracing::warn!(%sha, "could not check the pull request: {e}"),
        }
    }

    /// GitHub mode's safety net: a sync every `every`, in case a webhook was lost.
    pub async fn poll(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.trigger(Trigger::Poll),
            }
        }
    }

    /// The background loop: runs a sync whenever triggered, until cancelled.
    ///
    /// After a failed sync (GitHub down, the network gone, a ref git was
    /// rewriting) another one follows, after a wait from 750 ms doubling to 15
    /// minutes, as Flux does, until one succeeds; a success resets it.
    /// Triggers that arrive meanwhile coalesce into the one sync after the wait.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Duration::ZERO;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            if !backoff.is_zero() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            let why = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or(Trigger::Watch);
            let report = self.sync(why).await;
            backoff = if report.outcome == "failed" {
                // Nothing else may come to trigger it (the watcher has seen
                // the new head already): this loop tries again itself.
                self.trigger(why);
                (backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF)
            } else {
                Duration::ZERO
            };
            self.status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retry_in_ms = backoff.as_millis() as u64;
        }
    }

    /// Watches the branch ref of the local repository and triggers a sync when it
    /// points somewhere new (a commit made outside the daemon). inotify says
    /// when to look (`refwatch`), so a human's commit is served as soon as git
    /// renames its ref into place; the poll (`every.events`) is a safety net
    /// beside it, and the only way (`every.alone`) when inotify cannot be set up.
    pub async fn watch_local(self: Arc<Self>, every: WatchPoll, shutdown: CancellationToken) {
        let mut last = self.registry().commit.clone();
        let mut events = match RefEvents::new(self.repo.git_dir(), self.repo.branch()) {
            Ok(events) => Some(events),
            Err(e) => {
                tracing::warn!(
                    "cannot watch the branch with inotify ({e}); looking every {:?} instead",
                    every.alone
                );
                None
            }
        };
        let mut ticker = poll_every(if events.is_some() {
            every.events
        } else {
            every.alone
        });
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
                changed = next_change(&mut events) => {
                    if let Err(e) = changed {
                        tracing::warn!(
                            "the inotify watch on the branch failed ({e}); looking every {:?} instead",
                            every.alone
                        );
                        events = None;
                        ticker = poll_every(every.alone);
                    }
                }
            }
            let repo = self.repo.clone();
            let head = tokio::task::spawn_blocking(move || repo.head()).await;
            if let Ok(Ok(Some(head))) = head {
                let head = head.to_string();
                if head != last {
                    last = head;
                    self.trigger(Trigger::Watch);
                }
            }
        }
    }
}

/// What a sync found, from the blocking part to the part that swaps.
struct Built {
    head: String,
    /// None: the head is what is served already.
    registry: Option<Result<Registry, Vec<Problem>>>,
    /// At start-up, when the head does not build: the newest commit before it
    /// that does.
    fallback: Option<Registry>,
    /// GitHub mode at start-up: why the fetch failed (the local checkout is
    /// what was read).
    fetch_error: Option<String>,
}

/// The registry of `commit`, its libraries checked out for their scripts; or
/// its problems.
fn servable(
    repo: &Repo,
    commit: gix::ObjectId,
) -> Result<Result<Registry, Vec<Problem>>, RepoError> {
    let registry = repo.registry_of(&commit.to_string(), repo.tree_of(commit)?)?;
    Ok(registry.and_then(|r| repo.check_out_libraries(&r).map(|()| r)))
}

/// The commits of a registry's libraries, in `include:` order.
fn library_commits(registry: &Registry) -> Vec<String> {
    registry
        .libraries()
        .iter()
        .map(|l| l.commit.clone())
        .collect()
}

/// How far back start-up looks for a commit that builds.
const FALLBACK_DEPTH: usize = 100;

/// The registry of the newest first-parent ancestor of `head` (itself
/// excluded) whose manifests build, looking `FALLBACK_DEPTH` commits back.
fn last_that_builds(repo: &Repo, head: gix::ObjectId) -> Result<Option<Registry>, RepoError> {
    let mut commit = head;
    for _ in 0..FALLBACK_DEPTH {
        let Some(parent) = repo.first_parent(commit)? else {
            return Ok(None);
        };
        if let Ok(registry) = servable(repo, parent)? {
            return Ok(Some(registry));
        }
        commit = parent;
    }
    Ok(None)
}

/// How often the local watcher reads the branch ref without being told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchPoll {
    /// Beside inotify: a safety net for events lost (a watched folder
    /// replaced, a branch packed away).
    pub events: Duration,
    /// When inotify cannot be set up: the only way commits are noticed.
    pub alone: Duration,
}

impl Default for WatchPoll {
    fn default() -> WatchPoll {
        WatchPoll {
            events: Duration::from_secs(5),
            alone: Duration::from_millis(200),
        }
    }
}

fn poll_every(every: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// The next event of `events`; never, when there are none to wait for.
async fn next_change(events: &mut Option<RefEvents>) -> std::io::Result<()> {
    match events {
        Some(events) => events.changed().await,
        None => std::future::pending().await,
    }
}

/// Posts the `dynapi/manifests` status for `sha`; a failure to post is logged
/// and kept for `/status`, never fatal.
async fn report_status(
    github: &GitHub,
    status: &Mutex<SyncStatus>,
    sha: &str,
    verdict: &Result<(), Vec<Problem>>,
) {
    let (state, description) = match verdict {
        Ok(()) => (
            "success",
            "The manifests and prompts are valid; dynapi serves this commit.".to_string(),
        ),
        Err(problems) => (
            "failure",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    if let Err(e) = github.post_status(sha, state, &description).await {
        tracing::warn!(%sha, "could not post the commit status: {e}");
        let mut status = status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_error = Some(SyncError {
            time: now_rfc3339(),
            commit: Some(sha.to_string()),
            message: format!("could not post the commit status: {e}"),
            problems: Vec::new(),
        });
    }
}
