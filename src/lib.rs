//! dynapi: a git repository's manifests served as an HTTP API for AI assistants,
//! with every write sent back to the repository as a commit.
//!
//! The major components, in reading order:
//!
//! - `config`: flags and environment into `Config`.
//! - `manifest`: the YAML as written (raw types) and located `Problem`s.
//! - `layout`: where manifests, settings and scripts live in the repository, and
//!   the daemon's own folder in `.git`.
//! - `registry`: the checked endpoints of one commit; routing and parameter binding.
//! - `auth`: tokens, scopes, constant-time checks.
//! - `oauth`: the built-in OAuth 2.1 authorization server (clients, consent,
//!   codes with PKCE, rotating refresh tokens), its store outside git.
//! - `workspace`: path confinement, files, search, combine, archives, atomic
//!   writes, the bundled template.
//! - `exec`: running scripts (the only module that starts processes).
//! - `source`: the git repository (`repo`), the single writer (`change`), the
//!   write service every API write goes through (`writes`), the
//!   sync loop that swaps registries (`sync`) and the libraries a project
//!   includes, fetched and checked out read-only (`library`).
//! - `sql`: statements against SQLite (the default) and PostgreSQL, read-only
//!   unless allowed.
//! - `webhook`: GitHub webhook signatures, replays, and payloads.
//! - `shared`: the state replicas share in PostgreSQL (`--state`): the pool,
//!   the schema, the notifications between replicas.
//! - `http`: the warp routes, the only module that knows HTTP.
//! - `commands`: the one-shot commands `check`, `init`, `token new` and `oauth`.
//!
//! `serve` takes a bound listener and a shutdown token, so tests run the real
//! daemon on `127.0.0.1:0`.

// The route tree (`http::routes`) is one deep warp filter type; the optimized
// build's trait solving goes past the default depth of 128 on it.
#![recursion_limit = "256"]

pub mod audit;
pub mod auth;
pub mod commands;
pub mod config;
pub mod exec;
pub mod http;
pub mod jobs;
pub mod layout;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod registry;
pub mod sandbox;
pub mod shared;
pub mod source;
pub mod sql;
pub mod webhook;
pub mod workspace;

/// An error and its sources, `: `-separated: the outer messages of gix and
/// tokio-postgres ("error performing TLS handshake") rarely say why.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Makes ring the process's TLS crypto provider, the only one compiled in
/// (octocrab's; reqwest is built without one of its own and panics on a
/// client built before this). Called before any HTTPS client is made; later
/// calls do nothing.
pub fn install_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::auth::{Scopes, TokenEntry};
use crate::config::Config;
use crate::exec::Exec;
use crate::source::github::GitHub;
use crate::source::repo::{Author, Repo};
use crate::source::sync::{Syncer, Trigger};
use crate::source::writes::Writes;
use crate::workspace::Workspace;

/// Everything a request handler may use. Shared behind an `Arc`; no globals.
pub struct App {
    pub config: Config,
    pub workspace: Workspace,
    pub syncer: Arc<Syncer>,
    /// Every write the API takes: the only way to the change writer.
    pub writes: Writes,
    /// Read access to the repository (history); writes go through `writes`.
    pub repo: Repo,
    pub exec: Exec,
    /// Endpoint runs that outlived their request.
    pub jobs: jobs::Jobs,
    pub sql: sql::Sql,
    pub deliveries: webhook::Deliveries,
    /// The state replicas share (`--state`), if they do.
    pub shared: Option<Arc<shared::Shared>>,
    /// Tokens that do not come from the repository: `DYNAPI_TOKEN` or the generated one.
    pub tokens: Vec<TokenEntry>,
    /// The authorization server, and the access tokens it issued.
    pub oauth: oauth::OAuth,
    /// Every write, script run and SQL statement, one JSON line each.
    pub audit: Arc<audit::Audit>,
    pub metrics: Arc<metrics::Metrics>,
    pub started: Instant,
}

/// The audit log is rotated at this size, and this many old files are kept.
const AUDIT_FILE_BYTES: u64 = 16 << 20;
const AUDIT_FILES_KEPT: usize = 5;

/// Each script run's end, in the audit log and the metrics.
fn observe_runs(audit: Arc<audit::Audit>, metrics: Arc<metrics::Metrics>) -> exec::Observer {
    Arc::new(move |tag, result| {
        let (outcome, duration) = match result {
            Ok(f) => (
                match f.exit {
                    exec::Exit::Code(0) => "ok",
                    exec::Exit::Code(_) => "failed",
                    exec::Exit::Signal(_) => "killed",
                    exec::Exit::TimedOut => "timeout",
                },
                f.duration,
            ),
            Err(_) => ("error", std::time::Duration::ZERO),
        };
        metrics.script(&tag.name, outcome, duration.as_secs_f64());
        audit.record(&audit::Entry {
            token: &tag.token,
            operation: "run",
            target: &tag.name,
            commit: Some(&tag.commit)
                .filter(|c| !c.is_empty())
                .map(String::as_str),
            library: tag.library.as_deref(),
            duration,
            outcome,
        });
    })
}

/// Bytes of output the finished jobs keep together; past it the oldest go.
const JOB_OUTPUT_BUDGET: usize = 64 << 20;

/// What `App::start` did that the operator should be told.
pub struct Started {
    pub app: Arc<App>,
    /// Set when the daemon generated its token just now: print it, once.
    pub new_token: Option<String>,
    /// Where the generated token is kept.
    pub token_file: Option<std::path::PathBuf>,
    pub created_workspace: bool,
}

/// The author of commits the daemon makes on its own (not for a caller).
pub fn daemon_author() -> Author {
    Author {
        name: "dynapi".into(),
        email: "dynapi@localhost".into(),
    }
}

impl App {
    /// Opens the workspace (creating it from the template when missing), sets up
    /// tokens, and loads the branch head. Serving starts with `serve`.
    pub async fn start(config: Config) -> anyhow::Result<Started> {
        install_tls();
        let created = !config.workspace.join(".git").exists();
        if created
            && config.workspace.exists()
            && std::fs::read_dir(&config.workspace)?.next().is_some()
        {
            anyhow::bail!(
                "{} exists, is not empty and is not a git repository; point --workspace at a git repository or a new folder",
                config.workspace.display()
            );
        }
        let shared = match &config.state {
            Some(url) => Some(
                shared::Shared::connect(url)
                    .await
                    .context("the shared state (--state)")?,
            ),
            None => None,
        };
        let github = match &config.remote {
            Some(remote) => Some(
                GitHub::new(&remote.url, &remote.api_url, remote.token.as_deref())?
                    .paced(remote.write_interval, shared.clone()),
            ),
            None => None,
        };
        let repo = match (&github, created) {
            (Some(github), true) => {
                let (origin, dir, branch) = (
                    github.origin.clone(),
                    config.workspace.clone(),
                    config.branch.clone(),
                );
                tokio::task::spawn_blocking(move || Repo::clone(&origin, &dir, &branch))
                    .await?
                    .with_context(|| {
                        format!(
                            "cloning branch `{}` of {}",
                            config.branch,
                            config.remote.as_ref().map_or("", |r| r.url.as_str())
                        )
                    })?
            }
            (None, true) => {
                let files = workspace::template_files(false);
                Repo::init(&config.workspace, &config.branch, &files, &daemon_author())
                    .with_context(|| {
                        format!("creating the workspace at {}", config.workspace.display())
                    })?
            }
            (_, false) => Repo::open(&config.workspace, &config.branch).with_context(|| {
                format!("opening the workspace at {}", config.workspace.display())
            })?,
        };
        if github.is_some() {
            // A workspace cloned by an earlier version has the GitHub token in its
            // remote's URL and reflogs, where scripts can read it. The daemon never
            // reads that URL (it fetches from `GitHub::origin`), so it only goes.
            let cleaned = source::repo::forget_credentials(repo.git_dir())
                .context("removing credentials from the workspace's git files")?;
            for file in cleaned {
                tracing::warn!(file = %file.display(), "removed credentials from a URL in the workspace's git files");
            }
        }
        // The libraries `dynapi.yaml` includes are read wherever the repository
        // builds a registry; the GitHub token goes to the remote's host only,
        // and in GitHub mode (which checks anyone's pull requests) no
        // library is read from this machine's disk.
        let libraries = source::library::Libraries::for_workspace(repo.git_dir());
        let libraries = match &config.remote {
            Some(remote) => libraries
                .with_token(&remote.url, remote.token.as_deref())
                .urls_only(),
            None => libraries,
        };
        let repo = repo.with_libraries(Arc::new(libraries));
        let workspace = Workspace::open(&config.workspace)?;
        // Git's index lock a killed daemon left would stop every write and
        // every checkout (and a human's git) for good.
        if repo.clear_own_index_lock() {
            tracing::warn!("removed git's index lock a stopped daemon left");
        }
        if github.is_none() {
            // A write the daemon was killed in the middle of: the branch holds
            // it, the working tree and index may not.
            // Never a reason not to start: what cannot be finished now is
            // tried again before the next write.
            match source::change::repair(&repo, &workspace) {
                Ok(repaired) if !repaired.is_empty() => {
                    tracing::warn!(paths = ?repaired, "finished writing a commit the daemon was stopped in the middle of");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        "a write the daemon was stopped in the middle of is not finished yet: {e}"
                    );
                }
            }
        }
        let (tokens, new_token, token_file) = setup_tokens(&config, &workspace)?;
        seed_database(&workspace).await;
        let remote = github.clone().map(|github| source::sync::Remote {
            github,
            workspace: workspace.clone(),
        });
        let metrics = Arc::new(metrics::Metrics::new());
        let audit = Arc::new(audit::Audit::new(
            workspace.state_dir(),
            AUDIT_FILE_BYTES,
            AUDIT_FILES_KEPT,
        ));
        let syncer = Arc::new(Syncer::new(repo.clone(), remote, metrics.clone()));
        let report = syncer.sync(Trigger::Startup).await;
        if let Some(e) = report.error {
            if report.served.is_empty() {
                anyhow::bail!(
                    "could not read branch `{}` of the workspace: {e}",
                    config.branch
                );
            }
            // Serving the local checkout (GitHub did not answer): the loop
            // tries again as soon as it runs, then backs off.
            tracing::warn!("serving {} from the local checkout: {e}", report.served);
            syncer.trigger(Trigger::Startup);
        }
        let store = match &shared {
            Some(shared) => oauth::Store::shared(shared.clone()),
            None => oauth::Store::open(&workspace.state_dir())?,
        };
        let oauth = oauth::OAuth::new(
            store,
            shared.clone(),
            config.oauth_access_lifetime,
            oauth::documents_may_be_local(config.listen, config.public_url.as_deref()),
        );
        let writes = Writes::new(
            repo.clone(),
            workspace.clone(),
            github.clone(),
            syncer.clone(),
            audit.clone(),
        );
        let app = Arc::new(App {
            oauth,
            exec: Exec::new(config.limits.clone())
                .observed(observe_runs(audit.clone(), metrics.clone())),
            audit,
            metrics,
            jobs: jobs::Jobs::new(config.job_keep, JOB_OUTPUT_BUDGET)
                .shared(shared.clone(), config.job_lease),
            sql: sql::Sql::default(),
            deliveries: webhook::Deliveries::shared(shared.clone()),
            shared,
            writes,
            repo,
            syncer,
            tokens,
            workspace,
            config,
            started: Instant::now(),
        });
        // A write start-up could not finish (git's index lock held by a
        // human): tried again every second.
        app.writes.repair_later();
        tracing::info!(
            "sandbox: `{}` in dynapi.yaml; {}",
            app.syncer.registry().settings.sandbox,
            app.exec.sandbox().describe()
        );
        if let Some(closed) = app.exec.sandbox().closed_above(&app.config.workspace) {
            tracing::warn!("{closed}");
        }
        Ok(Started {
            app,
            new_token,
            token_file,
            created_workspace: created,
        })
    }
}

/// `DYNAPI_TOKEN` if set; otherwise the token kept in the state dir, generated
/// (and returned, to be printed once) the first time.
fn setup_tokens(
    config: &Config,
    workspace: &Workspace,
) -> anyhow::Result<(Vec<TokenEntry>, Option<String>, Option<std::path::PathBuf>)> {
    if let Some(token) = &config.token {
        return Ok((
            vec![TokenEntry::from_secret("env", token, Scopes::all())],
            None,
            None,
        ));
    }
    let dir = workspace.state_dir();
    let file = dir.join("token");
    let (secret, new) = match std::fs::read_to_string(&file) {
        Ok(s) if !s.trim().is_empty() => (s.trim().to_string(), false),
        _ => {
            std::fs::create_dir_all(&dir)?;
            let secret = auth::new_token();
            write_private(&file, &secret)?;
            (secret, true)
        }
    };
    let entry = TokenEntry::from_secret("local", &secret, Scopes::all());
    Ok((vec![entry], new.then_some(secret), Some(file)))
}

/// Creates the default SQLite database (`data/app.db`, ignored by git) with a
/// sample table when it is missing, so `POST /sql` and `run_sql.sh` have
/// something to show. A failure is logged, not fatal: SQL is one feature of many.
async fn seed_database(workspace: &Workspace) {
    let Ok(path) = workspace.resolve(registry::DEFAULT_SQLITE) else {
        return;
    };
    match tokio::task::spawn_blocking(move || sql::seed_default(&path)).await {
        Ok(Ok(true)) => tracing::info!("created the sample database {}", registry::DEFAULT_SQLITE),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!("could not create the sample database: {e}"),
        Err(e) => tracing::warn!("could not create the sample database: {e}"),
    }
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")
}

/// What other replicas say through the shared state: a push one of them
/// was told of (sync now), a job of this one to stop.
async fn hear_replicas(
    app: Arc<App>,
    mut events: tokio::sync::broadcast::Receiver<shared::Event>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = shutdown.cancelled() => return,
        };
        match event {
            Ok(shared::Event::Sync | shared::Event::Reconnected) | Err(RecvError::Lagged(_)) => {
                app.syncer.trigger(source::sync::Trigger::Replica);
            }
            Ok(shared::Event::Cancel(id)) => {
                // A job that ended keeps its process group's id, which the
                // kernel may have given to another process group since.
                if let Some(job) = app.jobs.get(&id).filter(|j| j.end().is_none()) {
                    job.live().cancel();
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled. Then: stop
/// accepting, let running requests and runs (jobs included) finish for
/// `shutdown_grace`, kill the scripts still running, wait until every run
/// is over (swept and recorded), and return.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(app.syncer.clone().run(shutdown.clone()));
    tasks.spawn(memory::trim_every(shutdown.clone()));
    match &app.config.remote {
        Some(remote) => {
            tasks.spawn(app.syncer.clone().poll(remote.poll, shutdown.clone()));
        }
        None if app.config.watch_local => {
            tasks.spawn(
                app.syncer
                    .clone()
                    .watch_local(app.config.watch_poll, shutdown.clone()),
            );
        }
        None => {}
    }
    let routes = http::routes(app.clone());
    let mcp = http::mcp::Mcp::new(app.clone(), routes.clone(), &http::catalog::operations());
    let hosts = app
        .config
        .public_url
        .as_deref()
        .map(public_hosts)
        .unwrap_or_default();
    let (service, lane, owners) = http::lane::Lane::beside(
        &mcp,
        hosts,
        app.config.max_body as usize,
        app.config.mcp_session_idle,
        shutdown.child_token(),
    );
    let front = http::front::Front {
        app: app.clone(),
        routes,
        mcp: service,
        lane,
        owners,
    };
    if let Some(shared) = &app.shared {
        tasks.spawn(hear_replicas(
            app.clone(),
            shared.subscribe(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(mcp.clone().announce_changes(shutdown.clone()));
    tasks.spawn(mcp.announce_file_changes(shutdown.clone()));
    tasks.close();
    let stop = shutdown.clone();
    let server = http::front::run(listener, front, async move { stop.cancelled().await });
    tokio::pin!(server);
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(app.config.shutdown_grace).await;
        tracing::warn!(
            running = app.exec.running(),
            "shutdown grace is over; killing running scripts"
        );
    };
    tokio::pin!(grace);
    let killed = tokio::select! {
        _ = &mut server => false,
        _ = &mut grace => {
            app.exec.close();
            kill_all(&app).await;
            // Requests whose scripts were killed answer now; give them a
            // moment: output a leftover process still holds is read for
            // `DRAIN_GRACE` before it is swept.
            let answer = exec::DRAIN_GRACE + std::time::Duration::from_secs(1);
            let _ = tokio::time::timeout(answer, &mut server).await;
            true
        }
    };
    app.exec.close();
    // Runs no request waits for any more (jobs, callers gone) get the rest
    // of the grace period, then are killed like the others; either way each
    // run ends here, swept and recorded, before the daemon exits.
    if !killed {
        tokio::select! {
            _ = app.exec.finished() => {}
            _ = &mut grace => {}
        }
    }
    while tokio::time::timeout(std::time::Duration::from_secs(1), app.exec.finished())
        .await
        .is_err()
    {
        kill_all(&app).await;
    }
    // With shared state, each job's end is written there before the replica
    // goes; a store that does not answer gets a bound (other replicas will
    // see the job's lease run out).
    let written = std::time::Duration::from_secs(10);
    if tokio::time::timeout(written, app.jobs.written())
        .await
        .is_err()
    {
        tracing::warn!("the shared state: not every job's end was written before shutdown");
    }
    tasks.wait().await;
    Ok(())
}

/// Kills every script still running, off the runtime's workers (it reads
/// /proc and waits for processes).
async fn kill_all(app: &Arc<App>) {
    let app = app.clone();
    let _ = tokio::task::spawn_blocking(move || app.exec.kill_all()).await;
}

/// The `Host` values a public URL is reached with: its host, and host:port.
fn public_hosts(url: &str) -> Vec<String> {
    let Ok(uri) = url.parse::<::http::Uri>() else {
        return Vec::new();
    };
    let mut hosts: Vec<String> = uri.host().into_iter().map(String::from).collect();
    if let Some(authority) = uri.authority().filter(|a| a.port().is_some()) {
        hosts.push(authority.as_str().to_string());
    }
    hosts
}
