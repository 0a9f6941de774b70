//! The GitHub side of GitHub mode, through octocrab: where the repository is
//! (owner, name, clone URL), and the REST calls the daemon makes (commit
//! statuses, the Git Data API, refs, pull requests).
//!
//! octocrab's retry layer is left out on purpose: it would resend POST and PATCH
//! on 5xx and 429, and a status or a ref update must not be sent twice blindly.
//! This file retries what is safe itself, honouring `Retry-After` and
//! `X-RateLimit-Reset`, and reports the rest as errors.
//!
//! GitHub asks integrations to wait a second between content-creating requests
//! (its secondary rate limits), so those go one at a time, `write_interval`
//! apart, as octokit's throttling plugin does. When GitHub says the rate limit is
//! used up, nothing is sent until it resets. Replicas with shared state
//! (`--state`) pace together: one write at a time over all of them, and a
//! reset one of them was told of holds them all.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;

use crate::shared::{Shared, SharedError};
use crate::source::repo::Origin;

/// The context of the commit status the daemon posts.
pub const STATUS_CONTEXT: &str = "dynapi/manifests";

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("`{0}` is not a GitHub repository URL like https://github.com/OWNER/REPO")]
    BadRemote(String),
    #[error("GitHub answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("GitHub is rate limiting the daemon; retry after {0:?}")]
    RateLimited(Duration),
    #[error("could not reach GitHub: {0}")]
    Unreachable(String),
}

/// The repository behind GitHub mode.
#[derive(Clone)]
pub struct GitHub {
    client: octocrab::Octocrab,
    pub owner: String,
    pub repo: String,
    /// What gix clones and fetches: the URL (never with the token in it) and
    /// the token, kept in memory.
    pub origin: Origin,
    pace: Arc<Pace>,
}

/// When the next request may go.
struct Pace {
    /// Least time between two content-creating requests (POST, PATCH).
    write_interval: Duration,
    /// When the next content-creating request may go; held while one waits, so
    /// they go one at a time.
    next_write: tokio::sync::Mutex<Instant>,
    /// Set when GitHub says the rate limit is used up: its reset time.
    blocked_until: std::sync::Mutex<Option<Instant>>,
    /// Held across reading and posting a status, so two checks of one commit
    /// do not both find it missing and post it twice.
    statuses: tokio::sync::Mutex<()>,
    /// Replicas sharing one token pace together: the next write's time and
    /// the rate limit's reset live in the shared state's `dynapi_github` row.
    shared: Option<Arc<Shared>>,
}

impl Pace {
    fn new(write_interval: Duration, shared: Option<Arc<Shared>>) -> Pace {
        Pace {
            write_interval,
            next_write: tokio::sync::Mutex::new(Instant::now()),
            blocked_until: std::sync::Mutex::new(None),
            statuses: tokio::sync::Mutex::new(()),
            shared,
        }
    }

    /// Records that nothing may be sent for `wait`, for every replica.
    async fn block(&self, wait: Duration) {
        *self.blocked_until.lock().unwrap() = Some(Instant::now() + wait);
        if let Some(shared) = &self.shared {
            let blocked = async {
                shared
                    .client()
                    .await?
                    .execute(
                        "UPDATE dynapi_github SET blocked_until =
                             greatest(blocked_until, now() + $1::bigint * interval '1 millisecond') WHERE id = 1",
                        &[&(wait.as_millis() as i64)],
                    )
                    .await?;
                Ok::<_, SharedError>(())
            };
            if let Err(e) = blocked.await {
                tracing::warn!(
                    "GitHub's rate limit could not be shared with the other replicas: {e}"
                );
            }
        }
    }

    /// How long until GitHub's rate limit resets, as this replica or (shared
    /// state) any replica was told.
    async fn blocked_for(&self) -> Duration {
        let here = self
            .blocked_until
            .lock()
            .unwrap()
            .map(|until| until.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        let Some(shared) = &self.shared else {
            return here;
        };
        let there = async {
            let row = shared
                .client()
                .await?
                .query_one(
                    "SELECT coalesce(greatest(extract(epoch FROM blocked_until - now()) * 1000, 0), 0)::bigint
                     FROM dynapi_github WHERE id = 1",
                    &[],
                )
                .await?;
            Ok::<_, SharedError>(Duration::from_millis(row.get::<_, i64>(0).max(0) as u64))
        };
        match there.await {
            Ok(there) => here.max(there),
            Err(e) => {
                tracing::warn!("GitHub's shared rate limit could not be read: {e}");
                here
            }
        }
    }

    /// Sends one content-creating request `write_interval` after the last one
    /// of every replica: the shared row is locked while it waits and sends, so
    /// the replicas' writes go one at a time. Without the shared state (or
    /// when it does not answer) this replica paces alone.
    async fn write<T>(&self, send: impl std::future::Future<Output = T>) -> T {
        let mut next = self.next_write.lock().await;
        if let Some(shared) = &self.shared {
            match self.hold_shared(shared).await {
                Ok((mut db, wait)) => {
                    tokio::time::sleep(wait.max(next.saturating_duration_since(Instant::now())))
                        .await;
                    let sent = send.await;
                    *next = Instant::now() + self.write_interval;
                    if let Err(e) = release_shared(&mut db, self.write_interval).await {
                        tracing::warn!("GitHub's shared pacing: {e}");
                    }
                    return sent;
                }
                Err(e) => tracing::warn!("GitHub's shared pacing: {e}; this replica paces alone"),
            }
        }
        tokio::time::sleep_until(*next).await;
        let sent = send.await;
        *next = Instant::now() + self.write_interval;
        sent
    }

    /// Locks the shared pacing row in a transaction on a connection of its
    /// own; answers how long until the next write may go.
    async fn hold_shared(
        &self,
        shared: &Shared,
    ) -> Result<(deadpool_postgres::Object, Duration), SharedError> {
        let db = shared.client().await?;
        // The row stays locked while GitHub answers: a replica that hangs or
        // is cut off with it must not hold every replica's writes for good.
        db.batch_execute(
            "BEGIN; SET LOCAL lock_timeout = '60s'; SET LOCAL idle_in_transaction_session_timeout = '120s'",
        )
        .await?;
        let row = db
            .query_one(
                "SELECT greatest(extract(epoch FROM next_write - clock_timestamp()) * 1000, 0)::bigint
                 FROM dynapi_github WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await;
        match row {
            Ok(row) => Ok((
                db,
                Duration::from_millis(row.get::<_, i64>(0).max(0) as u64),
            )),
            Err(e) => {
                let _ = db.batch_execute("ROLLBACK").await;
                Err(e.into())
            }
        }
    }
}

/// Sets the next write's time `interval` after now and lets the row go.
async fn release_shared(
    db: &mut deadpool_postgres::Object,
    interval: Duration,
) -> Result<(), SharedError> {
    let set = db
        .execute(
            "UPDATE dynapi_github SET next_write = clock_timestamp() + $1::bigint * interval '1 millisecond' WHERE id = 1",
            &[&(interval.as_millis() as i64)],
        )
        .await;
    let end = if set.is_ok() { "COMMIT" } else { "ROLLBACK" };
    db.batch_execute(end).await?;
    set?;
    Ok(())
}

/// Whether `host` (`name` or `name:port`, IPv6 in brackets) is this machine.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Longest the daemon waits for GitHub's rate limit before answering the caller.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// GitHub's advice: a second between content-creating requests.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(1);

impl GitHub {
    /// `remote` is `https://github.com/OWNER/REPO` (or an Enterprise host);
    /// `api_url` is `https://api.github.com` or `https://HOST/api/v3`.
    pub fn new(remote: &str, api_url: &str, token: Option<&str>) -> Result<GitHub, GitHubError> {
        let bad = || GitHubError::BadRemote(remote.to_string());
        let trimmed = remote.trim_end_matches('/').trim_end_matches(".git");
        let (scheme, rest) = trimmed.split_once("://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let host = parts.next().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let owner = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let repo = parts.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        if parts.next().is_some() || !matches!(scheme, "https" | "http") {
            return Err(bad());
        }
        // The token goes to git over https, or over http to this machine only
        // (traffic that never leaves it; the tests' GitHub emulator listens
        // there). It is never put into the URL: gix would save that in
        // `.git/config`, which scripts can read.
        let git_token = token.filter(|_| scheme == "https" || is_loopback_host(host));
        let origin = Origin::new(format!("{scheme}://{host}/{owner}/{repo}.git"), git_token);
        // A request GitHub never answers must end: content-creating ones
        // hold the replicas' shared pacing row while they wait.
        let mut builder = octocrab::Octocrab::builder()
            .set_connect_timeout(Some(Duration::from_secs(30)))
            .set_read_timeout(Some(Duration::from_secs(60)))
            .set_write_timeout(Some(Duration::from_secs(60)))
            .base_uri(api_url)
            .map_err(|e| GitHubError::Unreachable(format!("the API URL `{api_url}`: {e}")))?;
        if let Some(token) = token {
            builder = builder.personal_token(token.to_string());
        }
        let client = builder
            .build()
            .map_err(|e| GitHubError::Unreachable(e.to_string()))?;
        Ok(GitHub {
            client,
            owner: owner.to_string(),
            repo: repo.to_string(),
            origin,
            pace: Arc::new(Pace::new(WRITE_INTERVAL, None)),
        })
    }

    /// Content-creating requests go at least `interval` apart (default: a
    /// second), counted over every replica of `shared` when given.
    pub fn paced(mut self, interval: Duration, shared: Option<Arc<Shared>>) -> GitHub {
        self.pace = Arc::new(Pace::new(interval, shared));
        self
    }

    /// Waits until GitHub's rate limit allows a request, or fails at once when
    /// that is more than `MAX_WAIT` away.
    async fn wait_for_rate_limit(&self) -> Result<(), GitHubError> {
        let wait = self.pace.blocked_for().await;
        if wait > MAX_WAIT {
            return Err(GitHubError::RateLimited(wait));
        }
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    fn route(&self, rest: &str) -> String {
        format!("/repos/{}/{}/{rest}", self.owner, self.repo)
    }

    /// One request; 5xx and rate limits are errors the caller may retry.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: &str,
        rest: &str,
        body: Option<&B>,
    ) -> Result<Value, GitHubError> {
        let route = self.route(rest);
        self.wait_for_rate_limit().await?;
        let response = if method == "GET" {
            self.client._get(route.as_str()).await
        } else {
            self.pace
                .write(async {
                    match method {
                        "POST" => self.client._post(route.as_str(), body).await,
                        _ => self.client._patch(route.as_str(), body).await,
                    }
                })
                .await
        }
        .map_err(|e| GitHubError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| GitHubError::Unreachable(e.to_string()))?
            .to_bytes();
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let until_reset = || {
            let reset = header("x-ratelimit-reset").unwrap_or(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Duration::from_secs(reset.saturating_sub(now).max(1))
        };
        let used_up = header("x-ratelimit-remaining") == Some(0);
        if (200..300).contains(&status) {
            if used_up {
                // This one went through; the next would not.
                self.pace.block(until_reset()).await;
            }
            return Ok(json);
        }
        let message = json["message"].as_str().unwrap_or("no message").to_string();
        // GitHub's documented order: `retry-after`, else the reset time when
        // none remain, else (a secondary limit) at least a minute.
        let limited_message = message.to_ascii_lowercase().contains("rate limit");
        if status == 429
            || (status == 403 && (used_up || header("retry-after").is_some() || limited_message))
        {
            let wait = match header("retry-after") {
                Some(secs) => Duration::from_secs(secs),
                None if used_up => until_reset(),
                None => Duration::from_secs(60),
            };
            self.pace.block(wait).await;
            return Err(GitHubError::RateLimited(wait));
        }
        Err(GitHubError::Api { status, message })
    }

    /// `send`, retried a few times on 5xx, rate limits and network errors, waiting
    /// as GitHub asks (at most `MAX_WAIT` a time). For idempotent calls only.
    async fn send_retrying<B: Serialize + ?Sized>(
        &self,
        method: &str,
        rest: &str,
        body: Option<&B>,
    ) -> Result<Value, GitHubError> {
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let wait = match self.send(method, rest, body).await {
                // `send` waits for the reset itself next time.
                Err(GitHubError::RateLimited(wait)) if wait <= MAX_WAIT => Duration::ZERO,
                Err(GitHubError::Api { status, .. }) if status >= 500 => backoff,
                Err(GitHubError::Unreachable(_)) => backoff,
                other => return other,
            };
            if attempt >= 4 {
                return self.send(method, rest, body).await;
            }
            tokio::time::sleep(wait).await;
            backoff *= 2;
        }
    }

    /// Posts the `dynapi/manifests` status on `sha`, unless the same one is there
    /// already (GitHub keeps at most 1,000 per commit and context).
    pub async fn post_status(
        &self,
        sha: &str,
        state: &str,
        description: &str,
    ) -> Result<bool, GitHubError> {
        // GitHub cuts descriptions at 140 characters.
        let description: String = description.chars().take(140).collect();
        let _one = self.pace.statuses.lock().await;
        let existing = self
            .send_retrying::<()>("GET", &format!("commits/{sha}/statuses"), None)
            .await?;
        let newest = existing.as_array().and_then(|list| {
            list.iter()
                .find(|s| s["context"].as_str() == Some(STATUS_CONTEXT))
        });
        if newest.is_some_and(|s| {
            s["state"].as_str() == Some(state) && s["description"].as_str() == Some(&description)
        }) {
            return Ok(false);
        }
        let body = serde_json::json!({
            "state": state,
            "context": STATUS_CONTEXT,
            "description": description,
        });
        // Posting the same status twice is harmless, so this may be retried.
        self.send_retrying("POST", &format!("statuses/{sha}"), Some(&body))
            .await?;
        Ok(true)
    }
}

/// One path of a tree to create: a blob, or `None` to remove the path.
#[derive(Debug, Clone)]
pub struct TreeEntry {
    pub path: String,
    pub executable: bool,
    pub contents: Option<Vec<u8>>,
}

/// Why a ref did not move.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error("the branch moved on GitHub")]
    NotFastForward,
    #[error(transparent)]
    GitHub(#[from] GitHubError),
}

impl GitHub {
    /// Creates a commit on GitHub with the Git Data API: a tree on `base_tree`
    /// (text inline, a blob first for other files), a commit with `parent`. Nothing moves yet, so
    /// each step may be retried: objects created twice are the same objects.
    pub async fn create_commit(
        &self,
        parent: &str,
        base_tree: &str,
        entries: &[TreeEntry],
        message: &str,
        author: (&str, &str),
    ) -> Result<String, GitHubError> {
        use base64::Engine;
        let mut tree = Vec::new();
        for entry in entries {
            let mode = if entry.executable { "100755" } else { "100644" };
            let mut item = serde_json::json!({"path": entry.path, "mode": mode, "type": "blob"});
            match &entry.contents {
                // Text goes in the tree request itself: one request fewer per file.
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => item["content"] = text.into(),
                    Err(_) => {
                        let body = serde_json::json!({
                            "content": base64::engine::general_purpose::STANDARD.encode(bytes),
                            "encoding": "base64",
                        });
                        let blob = self.send_retrying("POST", "git/blobs", Some(&body)).await?;
                        item["sha"] = blob["sha"].clone();
                    }
                },
                // A null sha removes the path.
                None => item["sha"] = Value::Null,
            }
            tree.push(item);
        }
        let body = serde_json::json!({"base_tree": base_tree, "tree": tree});
        let tree = self.send_retrying("POST", "git/trees", Some(&body)).await?;
        let body = serde_json::json!({
            "message": message,
            "tree": tree["sha"],
            "parents": [parent],
            "author": {"name": author.0, "email": author.1},
        });
        let commit = self
            .send_retrying("POST", "git/commits", Some(&body))
            .await?;
        commit["sha"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| GitHubError::Api {
                status: 200,
                message: "the commit answer had no sha".into(),
            })
    }

    /// The commit `branch` points at on GitHub.
    pub async fn branch_head(&self, branch: &str) -> Result<Option<String>, GitHubError> {
        match self
            .send_retrying::<()>("GET", &format!("git/ref/heads/{branch}"), None)
            .await
        {
            Ok(r) => Ok(r["object"]["sha"].as_str().map(String::from)),
            Err(GitHubError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Moves `branch` to `sha` without force. Not resent blindly: after an
    /// error that leaves it unknown whether the ref moved, the ref is read back.
    pub async fn update_branch(&self, branch: &str, sha: &str) -> Result<(), RefError> {
        let body = serde_json::json!({"sha": sha, "force": false});
        match self
            .send("PATCH", &format!("git/refs/heads/{branch}"), Some(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(GitHubError::Api { status: 422, .. }) => Err(RefError::NotFastForward),
            Err(e @ GitHubError::RateLimited(_)) => Err(e.into()),
            Err(e) => match self.branch_head(branch).await {
                Ok(Some(now)) if now == sha => Ok(()),
                _ => Err(e.into()),
            },
        }
    }

    /// Creates branch `name` at `sha`.
    pub async fn create_branch(&self, name: &str, sha: &str) -> Result<(), GitHubError> {
        let body = serde_json::json!({"ref": format!("refs/heads/{name}"), "sha": sha});
        self.send("POST", "git/refs", Some(&body)).await.map(|_| ())
    }

    /// Opens a pull request from `head` into `base`; its web URL.
    pub async fn open_pull_request(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<String, GitHubError> {
        let request = serde_json::json!({"title": title, "head": head, "base": base, "body": body});
        let pull = self.send("POST", "pulls", Some(&request)).await?;
        Ok(pull["html_url"].as_str().unwrap_or_default().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn remotes_name_owner_repo_and_the_clone_url() {
        let g = GitHub::new(
            "https://github.com/octo/app",
            "https://api.github.com",
            Some("t"),
        )
        .unwrap();
        assert_eq!((g.owner.as_str(), g.repo.as_str()), ("octo", "app"));
        // The token is never part of the URL gix records.
        assert_eq!(g.origin.url, "https://github.com/octo/app.git");
        assert!(g.origin.has_credentials());
        let g = GitHub::new(
            "https://ghe.example.com/a/b.git/",
            "https://ghe.example.com/api/v3",
            None,
        )
        .unwrap();
        assert_eq!(g.origin.url, "https://ghe.example.com/a/b.git");
        assert!(!g.origin.has_credentials());
        // Clear-text http gets the token only when it stays on this machine.
        for (remote, sent) in [
            ("http://ghe.example.com/a/b", false),
            ("http://127.0.0.1:8080/a/b", true),
            ("http://localhost/a/b", true),
            ("http://[::1]:9/a/b", true),
            ("http://127.0.0.1.example.com/a/b", false),
        ] {
            let g = GitHub::new(remote, "http://127.0.0.1/api/v3", Some("t")).unwrap();
            assert_eq!(g.origin.has_credentials(), sent, "{remote}");
        }
        for bad in [
            "github.com/a/b",
            "https://github.com/a",
            "https://github.com/a/b/c",
            "ftp://h/a/b",
        ] {
            assert!(
                GitHub::new(bad, "https://api.github.com", None).is_err(),
                "{bad}"
            );
        }
    }
}
