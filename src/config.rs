//! The command line and the environment, parsed into `Config` once at start-up.
//!
//! Every flag can also be set as `DYNAPI_<FLAG>`. Secrets (`DYNAPI_TOKEN`) are read
//! from the environment only, never from a flag, so they do not show in `ps`.
//! Repository settings (`dynapi.yaml`) are not here: they belong to a commit and are
//! loaded with its registry (`registry.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exec::Limits;

#[derive(Debug, Parser)]
#[command(
    name = "dynapi",
    version,
    about = "Serve a git repository's manifests as an HTTP API for AI assistants; every write becomes a commit."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the workspace's endpoints (creates the workspace from the template if missing).
    Serve(Box<ServeArgs>),
    /// Validate the manifests of a checkout; prints file:line:column errors and exits 1 on any.
    Check {
        /// `text` (file:line:column: message) or `github` (workflow commands that
        /// annotate the pull request's diff).
        #[arg(long, value_enum, default_value = "text")]
        format: CheckFormat,
        /// Fetch no library `include:` names: check them from the cache of an
        /// earlier check, and say so.
        #[arg(long)]
        offline: bool,
        /// The checkout to check.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Write a new repository from the template, with a GitHub workflow that runs `dynapi check`.
    Init {
        /// Make a library: a repository of endpoints other projects include
        /// from their `dynapi.yaml` (`include:`), pinned by tag.
        #[arg(long)]
        library: bool,
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Print the OpenAPI 3.1 document for a checkout, as `GET /openapi.json` serves it.
    Openapi {
        /// `full`, or `gpt` for a custom GPT's Actions.
        #[arg(long, default_value = "full")]
        profile: String,
        /// The URL the document's `servers` entry names.
        #[arg(
            long,
            env = "DYNAPI_PUBLIC_URL",
            default_value = "http://127.0.0.1:8000"
        )]
        public_url: String,
        /// The checkout.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Manage tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// OAuth sign-in for MCP connectors and GPT Actions: clients and grants.
    #[command(subcommand)]
    Oauth(OauthCommand),
}

#[derive(Debug, Subcommand)]
pub enum OauthCommand {
    /// Make or change the clients the owner creates (GPT Actions' OAuth settings).
    #[command(subcommand)]
    Client(OauthClientCommand),
    /// List clients and grants.
    List {
        #[command(flatten)]
        store: StoreAt,
    },
    /// Revoke a grant (`g_...`), or remove a client with all its grants.
    Revoke {
        /// A grant id or a client id, as `dynapi oauth list` shows them.
        id: String,
        #[command(flatten)]
        store: StoreAt,
    },
}

/// Where `dynapi oauth` finds the OAuth store: the workspace's, or the shared
/// state's when the daemon runs with `--state`.
#[derive(Debug, clap::Args)]
pub struct StoreAt {
    #[arg(long, env = "DYNAPI_WORKSPACE", default_value = "workspace")]
    pub workspace: PathBuf,
    /// The shared state's PostgreSQL URL, as `dynapi serve --state` has it.
    #[arg(long, env = "DYNAPI_STATE", hide_env_values = true)]
    pub state: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OauthClientCommand {
    /// A confidential client: prints its id and secret (once) and the URLs to paste.
    New {
        /// The name the owner sees on the consent page.
        #[arg(long, default_value = "Custom GPT")]
        name: String,
        /// An exact redirect URI (repeat for more); GPT Actions show theirs after saving.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// The scopes it asks for: comma-separated (read, write, run, sql-write, admin) or `all`.
        #[arg(long, default_value = "read,write,run")]
        scopes: String,
        /// The URL the daemon is reached at, for the URLs printed.
        #[arg(
            long,
            env = "DYNAPI_PUBLIC_URL",
            default_value = "http://127.0.0.1:8000"
        )]
        public_url: String,
        #[command(flatten)]
        store: StoreAt,
    },
    /// Add a redirect URI to a client made with `client new`.
    AllowRedirect {
        id: String,
        uri: String,
        #[command(flatten)]
        store: StoreAt,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new token and the line that grants it in dynapi.yaml.
    New {
        /// Comma-separated scopes (read, write, run, sql-write, admin) or `all`.
        #[arg(long, default_value = "read")]
        scopes: String,
        /// The name the token shows under in logs and commits.
        #[arg(long, default_value = "assistant")]
        name: String,
    },
}

/// How `dynapi check` prints its problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    /// `file:line:column: message`, one a line.
    Text,
    /// `::error file=F,line=L,col=C::message`, GitHub Actions' workflow commands.
    Github,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The daemon's checkout; created from the template if it does not exist.
    #[arg(long, env = "DYNAPI_WORKSPACE", default_value = "workspace")]
    pub workspace: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "DYNAPI_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// The URL clients reach the daemon at (for documents and links).
    #[arg(long, env = "DYNAPI_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The branch served and committed to.
    #[arg(long, env = "DYNAPI_BRANCH", default_value = "main")]
    pub branch: String,
    /// Log format.
    #[arg(long, env = "DYNAPI_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Scripts running at once; more callers wait briefly, then get 429.
    #[arg(long, env = "DYNAPI_MAX_SCRIPTS", default_value_t = 16)]
    pub max_scripts: usize,
    /// Memory (data) each script process may use, e.g. 512MiB, 2GiB.
    #[arg(long, env = "DYNAPI_SCRIPT_MEMORY", default_value = "1GiB", value_parser = parse_size)]
    pub script_memory: u64,
    /// Largest file a script may write.
    #[arg(long, env = "DYNAPI_SCRIPT_FILE_SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub script_file_size: u64,
    /// Processes and threads one script run may start (the kernel counts them per user and exempts root).
    #[arg(long, env = "DYNAPI_SCRIPT_PROCESSES", default_value_t = 256)]
    pub script_processes: u64,
    /// Who scripts run as when the daemon is root: a user name, uid or uid:gid, never root (default: nobody).
    #[arg(long, env = "DYNAPI_SCRIPT_USER", value_parser = crate::sandbox::RunAs::parse)]
    pub script_user: Option<String>,
    /// On SIGTERM or Ctrl-C, how long running requests may finish before scripts are killed.
    #[arg(long, env = "DYNAPI_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// A call still running after this answers 202 with a job id and goes on as a job (GPT Actions give up at 45s).
    #[arg(long, env = "DYNAPI_JOB_AFTER", default_value = "40s", value_parser = parse_duration)]
    pub job_after: Duration,
    /// How long a finished job's output is kept for GET /jobs/{id}.
    #[arg(long, env = "DYNAPI_JOB_KEEP", default_value = "1h", value_parser = parse_duration)]
    pub job_keep: Duration,
    /// An MCP session with no request for this long is ended (its client starts a new one).
    #[arg(long, env = "DYNAPI_MCP_SESSION_IDLE", default_value = "5m", value_parser = parse_duration)]
    pub mcp_session_idle: Duration,
    /// GitHub mode: the repository to serve, https://github.com/OWNER/REPO (needs GITHUB_TOKEN for private ones).
    #[arg(long, env = "DYNAPI_REMOTE")]
    pub remote: Option<String>,
    /// GitHub's REST API: https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise.
    #[arg(
        long,
        env = "DYNAPI_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,
    /// GitHub mode: how often to fetch, in case a webhook was lost.
    #[arg(long, env = "DYNAPI_POLL", default_value = "60s", value_parser = parse_duration)]
    pub poll: Duration,
    /// GitHub mode: least time between two content-creating API requests (GitHub asks for 1s).
    #[arg(long, env = "DYNAPI_GITHUB_WRITE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub github_write_interval: Duration,
    /// Replicas: the PostgreSQL URL of the state they share (OAuth, jobs, webhook deliveries, GitHub pacing); each keeps its own without it.
    #[arg(long, env = "DYNAPI_STATE", hide_env_values = true)]
    pub state: Option<String>,
    /// Replicas: how long a replica's running jobs stay `running` after it stops renewing them (it died); then they read `lost`.
    #[arg(long, env = "DYNAPI_JOB_LEASE", default_value = "10s", value_parser = parse_duration)]
    pub job_lease: Duration,
    /// How long an OAuth access token lives; clients refresh it with their refresh token.
    #[arg(long, env = "DYNAPI_OAUTH_ACCESS_LIFETIME", default_value = "1h", value_parser = parse_duration)]
    pub oauth_access_lifetime: Duration,
    /// How long a client may take to send a request's headers (a new connection: to start its first request); then it is closed.
    #[arg(long, env = "DYNAPI_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Connections open at once, from everyone; more are answered 503 and closed.
    #[arg(long, env = "DYNAPI_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,
    /// Connections open at once from one address (an IPv6 /64); more are answered 429 and closed.
    #[arg(long, env = "DYNAPI_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64)]
    pub max_connections_per_address: usize,
}

/// Durations are written `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 500ms, 30s, 5m, 1h: {e}"))
}

/// Sizes are written in bytes or with a unit: `512KiB`, `64MiB`, `1GiB` (or
/// `K`, `M`, `G`, the same powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let shift = match unit {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return Err(format!("`{s}`: write a size like 512MiB or 1GiB")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{s}`: write a size like 512MiB or 1GiB"))
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub workspace: PathBuf,
    /// The address `serve` listens on (what decides, with `public_url`,
    /// whether the daemon is reachable from other machines).
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub branch: String,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    /// A call still running after this becomes a job.
    pub job_after: Duration,
    /// How long finished jobs are kept.
    pub job_keep: Duration,
    /// How long an MCP session may go without a request.
    pub mcp_session_idle: Duration,
    /// The all-scopes token from `DYNAPI_TOKEN`, if set.
    pub token: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    pub files: FileLimits,
    /// `DYNAPI_WEBHOOK_SECRET`: enables `POST /webhooks/github`.
    pub webhook_secret: Option<String>,
    /// Whether to watch the local branch for commits made outside the daemon
    /// (on by default; tests turn it off to see other triggers alone).
    pub watch_local: bool,
    /// How often the local watcher reads the branch ref besides inotify's
    /// events, and without them.
    pub watch_poll: crate::source::sync::WatchPoll,
    /// GitHub mode, when set.
    pub remote: Option<Remote>,
    /// How long an OAuth access token lives (its refresh token gets another).
    pub oauth_access_lifetime: Duration,
    /// The shared state's PostgreSQL URL (`--state`), when replicas share one.
    pub state: Option<String>,
    /// How long a replica's jobs stay running in the shared state without it.
    pub job_lease: Duration,
    pub connections: ConnectionLimits,
}

/// Bounds on the connections the HTTP server holds (`http/front.rs`), so
/// that slow or many clients cannot use up the daemon's file descriptors.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request's headers; on a new
    /// connection, to start its first request (either HTTP version).
    pub header_timeout: Duration,
    /// Connections open at once, from everyone.
    pub max: usize,
    /// Connections open at once from one address (IPv6: one /64).
    pub per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            max: 512,
            per_address: 64,
        }
    }
}

/// Where GitHub mode's repository is.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `https://github.com/OWNER/REPO`.
    pub url: String,
    pub api_url: String,
    /// `GITHUB_TOKEN`.
    pub token: Option<String>,
    pub poll: Duration,
    /// Least time between two content-creating API requests (GitHub asks for a second).
    pub write_interval: Duration,
}

/// Bounds on what one project request can make big. Answers an assistant reads
/// stay under 100,000 characters (GPT Actions' limit): they end early with
/// `truncated` and a `next_offset` instead.
#[derive(Debug, Clone)]
pub struct FileLimits {
    /// Bytes of file content in one read.
    pub read_bytes: usize,
    /// Characters of matches, listings, history or combined text in one answer.
    pub answer_chars: usize,
    /// Entries in one listing page.
    pub list_entries: usize,
    /// Matches in one search answer.
    pub search_matches: usize,
    /// How long a search may take before it answers what it found.
    pub search_time: Duration,
    /// Bytes of text `combine` may build.
    pub combine_bytes: usize,
    /// Files `combine` may take.
    pub combine_files: usize,
    /// Bytes of files an archive may hold.
    pub archive_bytes: u64,
    /// Commits a history or revert looks through.
    pub history_walk: usize,
}

impl Default for FileLimits {
    fn default() -> FileLimits {
        FileLimits {
            read_bytes: 60_000,
            answer_chars: 80_000,
            list_entries: 1_000,
            search_matches: 500,
            search_time: Duration::from_secs(20),
            combine_bytes: 16 << 20,
            combine_files: 5_000,
            archive_bytes: 256 << 20,
            history_walk: 100_000,
        }
    }
}

impl Config {
    /// A configuration with the defaults, for `workspace`.
    pub fn new(workspace: PathBuf) -> Config {
        Config {
            workspace,
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            public_url: None,
            branch: "main".into(),
            limits: Limits::default(),
            shutdown_grace: Duration::from_secs(10),
            job_after: Duration::from_secs(40),
            job_keep: Duration::from_secs(3600),
            mcp_session_idle: Duration::from_secs(300),
            token: None,
            max_body: 4 << 20,
            files: FileLimits::default(),
            webhook_secret: None,
            watch_local: true,
            watch_poll: Default::default(),
            remote: None,
            oauth_access_lifetime: Duration::from_secs(3600),
            state: None,
            job_lease: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
        }
    }

    pub fn from_args(args: &ServeArgs) -> Config {
        let mut config = Config::new(args.workspace.clone());
        config.listen = args.listen;
        config.public_url = args.public_url.clone().filter(|u| !u.is_empty());
        config.branch = args.branch.clone();
        config.limits.max_running = args.max_scripts.max(1);
        config.limits.sandbox = crate::sandbox::Limits {
            memory: args.script_memory,
            file_size: args.script_file_size,
            processes: args.script_processes.max(1),
            user: args.script_user.clone().filter(|u| !u.is_empty()),
        };
        config.shutdown_grace = args.shutdown_grace;
        config.job_after = args.job_after;
        config.job_keep = args.job_keep;
        config.mcp_session_idle = args.mcp_session_idle.max(Duration::from_secs(1));
        config.state = args.state.clone().filter(|s| !s.is_empty());
        config.job_lease = args.job_lease.max(Duration::from_secs(2));
        config.oauth_access_lifetime = args.oauth_access_lifetime.max(Duration::from_secs(1));
        config.connections = ConnectionLimits {
            header_timeout: args.header_timeout.max(Duration::from_millis(100)),
            max: args.max_connections.max(1),
            per_address: args.max_connections_per_address.max(1),
        };
        config.token = std::env::var("DYNAPI_TOKEN").ok().filter(|t| !t.is_empty());
        // An empty variable (as compose files pass an unset one) means unset.
        config.remote = args
            .remote
            .clone()
            .filter(|r| !r.is_empty())
            .map(|url| Remote {
                url,
                api_url: args.github_api_url.clone(),
                token: std::env::var("GITHUB_TOKEN").ok().filter(|t| !t.is_empty()),
                poll: args.poll,
                write_interval: args.github_write_interval,
            });
        config.webhook_secret = std::env::var("DYNAPI_WEBHOOK_SECRET")
            .ok()
            .filter(|t| !t.is_empty());
        config
    }
}
