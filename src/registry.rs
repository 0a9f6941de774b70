//! The registry: every endpoint of ONE commit, checked and compiled, plus that
//! commit's settings. Built once by `Registry::build`, never changed afterwards;
//! `source/sync.rs` swaps whole registries atomically.
//!
//! Everything a manifest can get wrong is caught here, so handlers never re-check:
//! an `Endpoint` is valid by construction, and `Endpoint::bind` is the only place
//! request parameters are validated and turned into argv, environment and stdin.
//! No I/O: the caller hands in the files of the commit and a way to ask about paths.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::{Scope, Scopes, TokenEntry};
use crate::manifest::{
    self, Locator, Problem, RawManifest, RawParam, MAX_ARGS, MAX_ENUM, MAX_ENV, MAX_MANIFESTS,
    MAX_PARAMS, MAX_PATH_PARAMS, MAX_TOTAL_BYTES, MAX_WRITABLE,
};

/// The folder manifests live in, and the settings file, at the repository root.
pub const MANIFEST_DIR: &str = "manifests";
pub const SETTINGS_FILE: &str = "dynapi.yaml";
/// Longest a script may be allowed to run (DESIGN.md section 3).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// First path segments that belong to built-in routes; an endpoint may not use them,
/// so a manifest can never shadow the API that manages manifests.
pub const RESERVED_SEGMENTS: &[&str] = &[
    "list-scripts",
    "run-script",
    "git-sync",
    "files",
    "search",
    "combine",
    "archive",
    "download",
    "sql",
    "history",
    "revert",
    "endpoints",
    "call",
    "jobs",
    "sync",
    "status",
    "webhooks",
    "openapi.json",
    "mcp",
    "healthz",
    "readyz",
    "metrics",
    "oauth",
    ".well-known",
];

/// What the source says about a path of the commit the registry is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    Executable,
    NotExecutable,
    NotAFile,
}

/// The files of one commit that the registry reads: `(path, text)` pairs.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub settings: Option<String>,
    pub manifests: Vec<(String, String)>,
    /// Files (manifests or the settings) the reader left unread because they are
    /// over `manifest::MAX_FILE_BYTES`: path and size. Each is a problem.
    pub too_large: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    String,
    Integer,
    Number,
    Boolean,
    Array,
}

impl ParamKind {
    fn parse(s: &str) -> Option<ParamKind> {
        Some(match s {
            "string" => ParamKind::String,
            "integer" => ParamKind::Integer,
            "number" => ParamKind::Number,
            "boolean" => ParamKind::Boolean,
            "array" => ParamKind::Array,
            _ => return None,
        })
    }
}

/// A checked parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub description: Option<String>,
    pub default: Option<Value>,
    pub choices: Option<Vec<Value>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<regex::Regex>,
    pub items: Option<Box<Param>>,
    pub required: bool,
    pub allow_leading_dash: bool,
}

/// One piece of an argv template: literal text or a parameter's value.
#[derive(Debug, Clone, PartialEq)]
enum ArgPart {
    Text(String),
    Param(String),
}

/// What a manifest's `sandbox:` allows.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub network: bool,
    pub writable: Vec<String>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            network: false,
            writable: vec![".".to_string()],
        }
    }
}

/// A checked endpoint: valid by construction.
#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    pub description: String,
    pub method: Method,
    pub path: String,
    pub script: String,
    args: Vec<Vec<ArgPart>>,
    pub params: Vec<Param>,
    pub output: Output,
    pub timeout: Duration,
    pub is_async: bool,
    pub consequential: bool,
    pub scope: Scope,
    /// Runs of this endpoint at once; more callers get 429.
    pub concurrency: usize,
    pub sandbox: Sandbox,
    pub env: Vec<(String, String)>,
    /// The manifest file this endpoint came from, relative to the repository root.
    pub file: String,
}

impl Endpoint {
    /// The parameters that a plain list of arguments fills in order, when
    /// every argument of the manifest is one whole `{param}` (as `hello`'s
    /// `["{name}"]`); `None` when the manifest fixes text of its own.
    pub fn positional(&self) -> Option<Vec<&str>> {
        self.args
            .iter()
            .map(|template| match template.as_slice() {
                [ArgPart::Param(name)] => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The scopes a token needs to run this endpoint: `run`, always, and the
    /// manifest's `scope:` on top of it (a manifest can only ask for more).
    pub fn needs(&self) -> Scopes {
        [Scope::Run, self.scope].into_iter().collect()
    }
}

/// Repository settings from `dynapi.yaml`, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub default_timeout: Duration,
    pub tokens: Vec<TokenEntry>,
    /// The databases `POST /sql` may query, by name; `default` is always there.
    pub databases: BTreeMap<String, Database>,
    /// GitHub mode: endpoint changes go through a pull request.
    pub endpoints_by_pull_request: bool,
    /// GitHub mode: file changes go through a pull request.
    pub files_by_pull_request: bool,
    /// How strictly scripts are sandboxed.
    pub sandbox: crate::sandbox::Mode,
}

/// Runs of one endpoint at once unless its manifest says `concurrency:`.
pub const DEFAULT_CONCURRENCY: usize = 8;
const MAX_CONCURRENCY: u64 = 256;

/// The name of the database a request gets when it names none.
pub const DEFAULT_DATABASE: &str = "default";
/// Where the default database lives: the file the template's `run_sql.sh` uses.
pub const DEFAULT_SQLITE: &str = "data/app.db";

/// A database as `dynapi.yaml` names it: `sqlite:<path in the workspace>` or a
/// `postgres://` URL. `${ENV}` in it is substituted when it is used, so secrets
/// stay out of git (the whole URL may come from the environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_timeout: DEFAULT_TIMEOUT,
            tokens: Vec::new(),
            endpoints_by_pull_request: false,
            files_by_pull_request: false,
            sandbox: crate::sandbox::Mode::default(),
            databases: BTreeMap::from([(
                DEFAULT_DATABASE.to_string(),
                Database {
                    url: format!("sqlite:{DEFAULT_SQLITE}"),
                },
            )]),
        }
    }
}

/// All endpoints of one commit. Immutable.
#[derive(Debug)]
pub struct Registry {
    pub commit: String,
    pub settings: Settings,
    endpoints: Vec<Arc<Endpoint>>,
    routes: HashMap<Method, matchit::Router<usize>>,
}

/// What a route lookup found: the endpoint and the placeholders' values (still
/// percent-encoded, as they stood in the path).
pub struct Matched {
    pub endpoint: Arc<Endpoint>,
    pub path_params: Vec<(String, String)>,
}

impl Registry {
    /// A registry with no endpoints, for the moment before the first sync.
    pub fn empty() -> Registry {
        Registry {
            commit: String::new(),
            settings: Settings::default(),
            endpoints: Vec::new(),
            routes: HashMap::new(),
        }
    }

    /// Checks every manifest and the settings of one commit. `file_kind` answers
    /// for paths of that same commit (scripts must exist there and be executable).
    /// Returns every problem found, not just the first.
    pub fn build(
        commit: &str,
        snapshot: &Snapshot,
        file_kind: &dyn Fn(&str) -> FileKind,
    ) -> Result<Registry, Vec<Problem>> {
        let mut problems = Vec::new();
        let settings = match &snapshot.settings {
            Some(text) => check_settings(text, &mut problems),
            None => Settings::default(),
        };
        for (file, bytes) in &snapshot.too_large {
            problems.push(manifest::too_large(file, *bytes));
        }
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        let mut total = 0;
        for (i, (file, text)) in snapshot.manifests.iter().enumerate() {
            // Past a limit on the whole folder the rest is not even parsed: the
            // commit is refused anyway, and parsing is the work being bounded.
            if i >= MAX_MANIFESTS {
                problems.push(problem_at_top(
                    file,
                    format!("`{MANIFEST_DIR}/` holds more than the limit of {MAX_MANIFESTS} manifests; remove some"),
                ));
                break;
            }
            // A file over its own limit is that problem, not the folder's.
            if text.len() > manifest::MAX_FILE_BYTES {
                problems.push(manifest::too_large(file, text.len() as u64));
                continue;
            }
            total += text.len();
            if total > MAX_TOTAL_BYTES {
                problems.push(problem_at_top(
                    file,
                    format!("the manifests together are over the limit of {MAX_TOTAL_BYTES} bytes (4 MiB); make some smaller or remove some"),
                ));
                break;
            }
            // What could not be read is reported and left out; the checks still
            // run on the rest, so one wrong key does not hide the file's other problems.
            let parsed = manifest::parse_manifest(file, text);
            let readable = parsed.problems.is_empty();
            problems.extend(parsed.problems);
            let mut check = Check {
                locator: &parsed.locator,
                problems: &mut problems,
            };
            if let Some(e) = check.endpoint(file, parsed.value, &settings, file_kind) {
                if readable {
                    endpoints.push(Arc::new(e));
                }
            }
        }
        route_table(&endpoints, &mut problems);
        if !problems.is_empty() {
            problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            return Err(problems);
        }
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        // Route values index into the sorted list, so build them again in that order.
        let routes = route_table(&endpoints, &mut problems);
        debug_assert!(problems.is_empty());
        Ok(Registry {
            commit: commit.to_string(),
            settings,
            endpoints,
            routes,
        })
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints
            .binary_search_by(|e| e.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.endpoints[i])
    }

    /// The endpoint serving `method` and `path` (the raw request path).
    pub fn route(&self, method: Method, path: &str) -> Option<Matched> {
        let found = self.routes.get(&method)?.at(path).ok()?;
        Some(Matched {
            endpoint: self.endpoints[*found.value].clone(),
            path_params: found
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }
}

/// Builds the per-method route tables, reporting duplicate and conflicting routes.
fn route_table(
    endpoints: &[Arc<Endpoint>],
    problems: &mut Vec<Problem>,
) -> HashMap<Method, matchit::Router<usize>> {
    let mut routes: HashMap<Method, matchit::Router<usize>> = HashMap::new();
    let mut names: HashMap<&str, &str> = HashMap::new();
    for (i, e) in endpoints.iter().enumerate() {
        if let Some(other) = names.insert(&e.name, &e.file) {
            problems.push(problem_at_top(
                &e.file,
                format!(
                    "the name `{}` is already used by {other}; names must be unique",
                    e.name
                ),
            ));
        }
        if let Err(err) = routes
            .entry(e.method)
            .or_default()
            .insert(e.path.clone(), i)
        {
            let other = match &err {
                matchit::InsertError::Conflict { with } => endpoints
                    .iter()
                    .find(|o| o.method == e.method && &o.path == with)
                    .map(|o| o.file.as_str())
                    .unwrap_or("another manifest"),
                _ => "another manifest",
            };
            problems.push(problem_at_top(
                &e.file,
                format!(
                    "the route {} {} conflicts with the route of {other}; change one of the paths",
                    e.method.as_str(),
                    e.path
                ),
            ));
        }
    }
    routes
}

fn problem_at_top(file: &str, message: String) -> Problem {
    Problem {
        file: file.to_string(),
        line: 1,
        column: 1,
        message,
    }
}

fn check_settings(text: &str, problems: &mut Vec<Problem>) -> Settings {
    let parsed = manifest::parse_settings(SETTINGS_FILE, text);
    problems.extend(parsed.problems);
    let mut check = Check {
        locator: &parsed.locator,
        problems,
    };
    let raw = parsed.value;
    let mut settings = Settings::default();
    if let Some(mode) = raw.sandbox {
        match mode.parse() {
            Ok(mode) => settings.sandbox = mode,
            Err(e) => check.at("sandbox", e),
        }
    }
    if let Some(t) = raw.defaults.and_then(|d| d.timeout) {
        if let Some(t) = check.duration("defaults.timeout", &t) {
            settings.default_timeout = t;
        }
    }
    for (i, token) in raw.tokens.into_iter().enumerate() {
        let at = format!("tokens.{i}");
        let name = token.name.unwrap_or_default();
        if !is_name(&name) {
            check.at(
                &format!("{at}.name"),
                "each token needs a `name` of lowercase letters, digits and dashes (it shows in logs and commits)",
            );
        }
        let hash = token.sha256.unwrap_or_default();
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(&hash, &mut bytes).is_err() {
            check.at(
                &format!("{at}.sha256"),
                "`sha256` must be the 64 hex digits `dynapi token new` prints, never the token itself",
            );
        }
        let scopes: Result<Scopes, String> =
            token.scopes.iter().map(|s| s.parse::<Scope>()).collect();
        match scopes {
            Ok(s) if !token.scopes.is_empty() => settings.tokens.push(TokenEntry {
                name,
                hash: bytes,
                scopes: s,
            }),
            Ok(_) => check.at(
                &format!("{at}.scopes"),
                "list at least one scope, e.g. `scopes: [read]`",
            ),
            Err(e) => check.at(&format!("{at}.scopes"), e),
        }
    }
    if let Some(policy) = raw.policy {
        for (key, value, slot) in [
            (
                "policy.endpoints",
                policy.endpoints,
                &mut settings.endpoints_by_pull_request,
            ),
            (
                "policy.files",
                policy.files,
                &mut settings.files_by_pull_request,
            ),
        ] {
            match value.as_deref() {
                None | Some("commit") => {}
                Some("pull_request") => *slot = true,
                Some(other) => check.at(
                    key,
                    format!("`{other}` is not a policy: write `commit` or `pull_request`"),
                ),
            }
        }
    }
    for (name, db) in raw.databases {
        let at = format!("databases.{name}");
        if !is_name(&name) {
            check.at_key(
                &at,
                "a database name is lowercase letters, digits and dashes",
            );
            continue;
        }
        let url = db.url.unwrap_or_default();
        let checked = match url.strip_prefix("sqlite:") {
            Some(path) => path.contains("${") || is_plain_relative_path(path),
            None => {
                url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.starts_with("${")
            }
        };
        if checked {
            settings.databases.insert(name, Database { url });
        } else {
            check.at(
                &format!("{at}.url"),
                "`url` is `sqlite:<path in the workspace>` (like `sqlite:data/app.db`) or `postgres://user:${PASSWORD}@host/db`",
            );
        }
    }
    settings
}

/// `[a-z0-9-]{1,64}`: endpoint and token names.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `[a-z_][a-z0-9_]{0,63}`: parameter names, which also become environment names.
fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
        && s.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A plain relative path: no absolute paths, no `..`, no empty or `.` segments,
/// nothing under `.git`.
pub fn is_plain_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && p.split('/').next() != Some(".git")
}

/// Suggests a valid name for an invalid one.
fn suggest_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(64);
    out.trim_matches('-').to_string()
}

/// Collects problems for one file, each at the value it rejects.
struct Check<'a> {
    locator: &'a Locator,
    problems: &'a mut Vec<Problem>,
}

impl Check<'_> {
    /// A problem at the value of `key` (dotted). A value reading already refused
    /// (of the wrong type) is not reported twice.
    fn at(&mut self, key: &str, message: impl Into<String>) {
        if !self.locator.reported(key) {
            self.problems.push(self.locator.problem(key, message));
        }
    }

    /// A problem with the name a key gives (a parameter, a variable), at the key.
    fn at_key(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(self.locator.key_problem(key, message));
    }

    fn duration(&mut self, key: &str, text: &str) -> Option<Duration> {
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.at(key, "a timeout must be longer than zero");
                None
            }
            Ok(d) if d > MAX_TIMEOUT => {
                self.at(
                    key,
                    format!("`{text}` is longer than the limit of 10m; write `10m` or less"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                self.at(
                    key,
                    format!(
                        "`{text}` is not a duration; write it like `500ms`, `30s`, `5m` or `1h`"
                    ),
                );
                None
            }
        }
    }

    fn endpoint(
        &mut self,
        file: &str,
        raw: RawManifest,
        settings: &Settings,
        file_kind: &dyn Fn(&str) -> FileKind,
    ) -> Option<Endpoint> {
        let before = self.problems.len();
        // Counts first: a manifest over one is refused without checking its
        // entries one by one, so what follows runs on bounded lists only.
        let writable = raw.sandbox.as_ref().and_then(|s| s.writable.as_ref());
        for (key, count, limit, what) in [
            ("params", raw.params.len(), MAX_PARAMS, "parameters"),
            ("args", raw.args.len(), MAX_ARGS, "arguments"),
            ("env", raw.env.len(), MAX_ENV, "variables"),
            (
                "sandbox.writable",
                writable.map_or(0, Vec::len),
                MAX_WRITABLE,
                "paths",
            ),
        ] {
            if count > limit {
                self.at(
                    key,
                    format!("`{key}` has {count} {what}, over the limit of {limit}"),
                );
            }
        }
        if self.problems.len() > before {
            return None;
        }
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            self.at(
                "name",
                "add `name:`, lowercase letters, digits and dashes, e.g. `name: count-lines`",
            );
        } else if !is_name(&name) {
            self.at(
                "name",
                format!("`{name}` is not a valid name (lowercase letters, digits and dashes, at most 64); write `{}`", suggest_name(&name)),
            );
        }
        let description = raw.description.unwrap_or_default().trim().to_string();
        if description.is_empty() {
            self.at("description", "add `description:`, one sentence saying what the endpoint does; the assistant reads it to decide when to call it");
        }
        let method = match raw.method.as_deref() {
            None => Method::Post,
            Some(m) => Method::parse(&m.to_ascii_uppercase()).unwrap_or_else(|| {
                self.at(
                    "method",
                    format!("`{m}` is not a method; write one of GET, POST, PUT, PATCH, DELETE"),
                );
                Method::Post
            }),
        };

        let mut params = Vec::new();
        for (pname, rp) in &raw.params {
            if let Some(p) = self.param(&format!("params.{pname}"), pname, rp, true) {
                params.push(p);
            }
        }
        // Looked up once per placeholder and per argument part: by name, not by
        // scanning, so the check stays linear in the manifest.
        let by_name: HashMap<&str, &Param> = params.iter().map(|p| (p.name.as_str(), p)).collect();
        let param_named = |n: &str| by_name.get(n).copied();

        let path = raw.path.unwrap_or_else(|| format!("/{name}"));
        let placeholders = self.route_path(&path);
        let in_path: std::collections::HashSet<&str> =
            placeholders.iter().map(String::as_str).collect();
        for ph in &placeholders {
            match param_named(ph) {
                None => self.at("path", format!("the path uses `{{{ph}}}` but no parameter `{ph}` is declared under `params:`")),
                Some(p) if p.kind == ParamKind::Array => {
                    self.at(&format!("params.{ph}.type"), format!("`{ph}` is a path placeholder, so it must be a single value, not an array"))
                }
                _ => {}
            }
        }

        let script = raw.script.unwrap_or_default();
        if script.is_empty() {
            self.at("script", "add `script:`, the path of the script to run relative to the repository root, e.g. `script: scripts/count_lines.sh`");
        } else if !is_plain_relative_path(&script) {
            self.at("script", format!("`{script}` must be a path inside the repository, relative to its root, without `..`"));
        } else {
            match file_kind(&script) {
                FileKind::Executable => {}
                FileKind::Missing => self.at("script", format!("`{script}` does not exist in this commit; add it in the same commit")),
                FileKind::NotExecutable => self.at(
                    "script",
                    format!("`{script}` is not executable in this commit; run `git update-index --chmod=+x {script}` and commit"),
                ),
                FileKind::NotAFile => self.at("script", format!("`{script}` is not a regular file")),
            }
        }

        let mut args = Vec::new();
        for (i, arg) in raw.args.iter().enumerate() {
            let parts = parse_template(arg);
            for part in &parts {
                if let ArgPart::Param(p) = part {
                    match param_named(p) {
                        None => self.at(&format!("args.{i}"), format!("`{{{p}}}` names no parameter; declare `{p}` under `params:` or remove it")),
                        Some(param) if !param.required && param.default.is_none() && !in_path.contains(p.as_str()) => self.at(
                            &format!("params.{p}"),
                            format!("`{p}` is used in `args`, so give it a `default:` or mark it `required: true`"),
                        ),
                        _ => {}
                    }
                }
            }
            args.push(parts);
        }
        let output = match raw.output.as_deref() {
            None | Some("text") => Output::Text,
            Some("json") => Output::Json,
            Some(o) => {
                self.at(
                    "output",
                    format!("`{o}` is not an output kind; write `text` or `json`"),
                );
                Output::Text
            }
        };
        let timeout = match &raw.timeout {
            None => settings.default_timeout,
            Some(t) => self
                .duration("timeout", t)
                .unwrap_or(settings.default_timeout),
        };
        let scope = match raw.scope.as_deref() {
            None => Scope::Run,
            Some(s) => s.parse::<Scope>().unwrap_or_else(|e| {
                self.at("scope", e);
                Scope::Run
            }),
        };
        let concurrency = match raw.concurrency {
            None => DEFAULT_CONCURRENCY,
            Some(n @ 1..=MAX_CONCURRENCY) => n as usize,
            Some(n) => {
                self.at(
                    "concurrency",
                    format!("`{n}` runs at once is out of range; write 1 to {MAX_CONCURRENCY}"),
                );
                DEFAULT_CONCURRENCY
            }
        };
        let raw_sandbox = raw.sandbox.unwrap_or_default();
        let writable = raw_sandbox
            .writable
            .unwrap_or_else(|| vec![".".to_string()]);
        for (i, w) in writable.iter().enumerate() {
            if w != "." && !is_plain_relative_path(w) {
                self.at(
                    &format!("sandbox.writable.{i}"),
                    format!(
                        "`{w}` must be a path inside the workspace (relative, no `..`), or `.`"
                    ),
                );
            } else if w == SETTINGS_FILE {
                self.at(
                    &format!("sandbox.writable.{i}"),
                    format!(
                        "scripts may not write `{SETTINGS_FILE}`; only an admin token changes it"
                    ),
                );
            }
        }
        let mut env = Vec::new();
        for (k, v) in raw.env {
            let valid = k
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.at_key(
                    &format!("env.{k}"),
                    format!("`{k}` is not an environment variable name (letters, digits, `_`)"),
                );
            } else if k.starts_with("DYNAPI_") {
                self.at_key(
                    &format!("env.{k}"),
                    "names starting with `DYNAPI_` are set by the daemon; choose another name",
                );
            } else if v.contains('\0') {
                self.at(&format!("env.{k}"), "environment values cannot contain NUL");
            } else {
                env.push((k, v));
            }
        }

        if self.problems.len() > before {
            return None;
        }
        Some(Endpoint {
            name,
            description,
            method,
            consequential: raw.consequential.unwrap_or(method != Method::Get),
            path,
            script,
            args,
            params,
            output,
            timeout,
            is_async: raw.is_async,
            scope,
            concurrency,
            sandbox: Sandbox {
                network: raw_sandbox.network.unwrap_or(false),
                writable,
            },
            env,
            file: file.to_string(),
        })
    }

    /// Checks a route path; returns its placeholders.
    fn route_path(&mut self, path: &str) -> Vec<String> {
        let mut placeholders = Vec::new();
        if !path.starts_with('/') || path == "/" || path.ends_with('/') {
            self.at("path", format!("`{path}` must start with `/`, not end with `/`, and not be `/` alone; e.g. `/count-lines`"));
            return placeholders;
        }
        // A set, not a scan of the list: a 64 KiB path has thousands of segments.
        let mut seen = std::collections::HashSet::new();
        for (i, seg) in path[1..].split('/').enumerate() {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if is_param_name(inner) {
                    if !seen.insert(inner) {
                        self.at(
                            "path",
                            format!("`{{{inner}}}` is in the path twice; a placeholder names one segment"),
                        );
                    }
                    placeholders.push(inner.to_string());
                    continue;
                }
            }
            let plain = !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if !plain {
                self.at("path", format!("the path segment `{seg}` must be letters, digits, `-._~`, or a whole `{{param}}`"));
            } else if i == 0 && RESERVED_SEGMENTS.contains(&seg) {
                self.at(
                    "path",
                    format!(
                        "`/{seg}` is a built-in route of the daemon; choose another first segment"
                    ),
                );
            }
        }
        // The router panics past 26 placeholders; refuse long before.
        if placeholders.len() > MAX_PATH_PARAMS {
            self.at(
                "path",
                format!(
                    "the path has {} placeholders, over the limit of {MAX_PATH_PARAMS}",
                    placeholders.len()
                ),
            );
        }
        placeholders
    }

    fn param(&mut self, key: &str, name: &str, raw: &RawParam, top: bool) -> Option<Param> {
        let before = self.problems.len();
        if top && !is_param_name(name) {
            self.at_key(key, format!("`{name}` is not a valid parameter name (lowercase letters, digits, `_`, starting with a letter)"));
        }
        let kind = match raw.kind.as_deref() {
            None => ParamKind::String,
            Some(k) => ParamKind::parse(k).unwrap_or_else(|| {
                self.at(&format!("{key}.type"), format!("`{k}` is not a parameter type; write string, integer, number, boolean or array"));
                ParamKind::String
            }),
        };
        let pattern = raw
            .pattern
            .as_ref()
            .and_then(|p| match regex::Regex::new(p) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.at(
                        &format!("{key}.pattern"),
                        format!("`pattern` is not a valid regular expression: {e}"),
                    );
                    None
                }
            });
        let items = match (&raw.items, kind) {
            (Some(item), ParamKind::Array) => {
                let item = self.param(&format!("{key}.items"), name, item, false);
                if item.as_ref().is_some_and(|i| i.kind == ParamKind::Array) {
                    self.at(
                        &format!("{key}.items"),
                        "arrays of arrays are not supported; use `items: {type: string}`",
                    );
                }
                item.map(Box::new)
            }
            (Some(_), _) => {
                self.at(
                    &format!("{key}.items"),
                    "`items` only applies to `type: array`",
                );
                None
            }
            (None, ParamKind::Array) => {
                self.at(
                    key,
                    "an array parameter needs `items:`, e.g. `items: {type: string}`",
                );
                None
            }
            (None, _) => None,
        };
        if let (Some(min), Some(max)) = (raw.minimum, raw.maximum) {
            if min > max {
                self.at(
                    &format!("{key}.minimum"),
                    format!("`minimum` ({min}) is larger than `maximum` ({max})"),
                );
            }
        }
        if let (Some(min), Some(max)) = (raw.min_length, raw.max_length) {
            if min > max {
                self.at(
                    &format!("{key}.minLength"),
                    format!("`minLength` ({min}) is larger than `maxLength` ({max})"),
                );
            }
        }
        if (raw.minimum.is_some() || raw.maximum.is_some())
            && !matches!(kind, ParamKind::Integer | ParamKind::Number)
        {
            let bound = if raw.minimum.is_some() {
                "minimum"
            } else {
                "maximum"
            };
            self.at(
                &format!("{key}.{bound}"),
                "`minimum` and `maximum` apply to integer and number parameters only",
            );
        }
        if (raw.min_length.is_some() || raw.max_length.is_some() || raw.pattern.is_some())
            && kind != ParamKind::String
        {
            let which = match (&raw.min_length, &raw.max_length) {
                (Some(_), _) => "minLength",
                (_, Some(_)) => "maxLength",
                _ => "pattern",
            };
            self.at(
                &format!("{key}.{which}"),
                "`minLength`, `maxLength` and `pattern` apply to string parameters only",
            );
        }
        if self.problems.len() > before {
            return None;
        }
        let mut param = Param {
            name: name.to_string(),
            kind,
            description: raw.description.clone(),
            default: None,
            choices: None,
            minimum: raw.minimum,
            maximum: raw.maximum,
            min_length: raw.min_length,
            max_length: raw.max_length,
            pattern,
            items,
            required: raw.required.unwrap_or(false),
            allow_leading_dash: raw.allow_leading_dash.unwrap_or(false),
        };
        // Enum values and the default must themselves be valid values.
        if let Some(choices) = raw.choices.as_ref().filter(|c| c.len() > MAX_ENUM) {
            self.at(
                &format!("{key}.enum"),
                format!(
                    "`enum` has {} values, over the limit of {MAX_ENUM}",
                    choices.len()
                ),
            );
            return None;
        }
        if let Some(choices) = &raw.choices {
            let mut checked = Vec::new();
            for (i, c) in choices.iter().enumerate() {
                match param.check_value(c.clone()) {
                    Ok(v) => checked.push(v),
                    Err(e) => self.at(
                        &format!("{key}.enum.{i}"),
                        format!("this `enum` value is not a valid {:?}: {e}", kind).to_lowercase(),
                    ),
                }
            }
            param.choices = Some(checked);
        }
        if let Some(d) = &raw.default {
            match param.check_value(d.clone()) {
                Ok(v) => param.default = Some(v),
                Err(e) => self.at(
                    &format!("{key}.default"),
                    format!("the default is not valid: {e}"),
                ),
            }
        }
        (self.problems.len() == before).then_some(param)
    }
}

/// Splits `--max={limit}` into text and parameter parts. A `{` that does not open a
/// valid `{name}` is literal text.
fn parse_template(arg: &str) -> Vec<ArgPart> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_param_name(&after[..close]) => {
                text.push_str(&rest[..open]);
                if !text.is_empty() {
                    parts.push(ArgPart::Text(std::mem::take(&mut text)));
                }
                parts.push(ArgPart::Param(after[..close].to_string()));
                rest = &after[close + 1..];
            }
            _ => {
                text.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(ArgPart::Text(text));
    }
    parts
}

/// A parameter the caller got wrong; answered as 400 with the parameter named.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub param: Option<String>,
    pub message: String,
    /// The value is valid but too large to pass to a process (413).
    pub too_large: bool,
}

/// The largest value that also goes into the environment as
/// `DYNAPI_PARAM_<NAME>`; larger ones are on stdin only. Linux refuses any
/// single argv or environment string over 128 KiB (`MAX_ARG_STRLEN`), and all
/// of them together over a quarter of the stack limit.
pub const MAX_ENV_VALUE: usize = 32 << 10;
/// The largest single argv entry (`MAX_ARG_STRLEN`, less its NUL).
pub const MAX_ARG: usize = (128 << 10) - 1;
/// The most argv may hold in all, well under `ARG_MAX` (2 MiB with the usual
/// 8 MiB stack), leaving room for the environment.
pub const MAX_ARGV: usize = 1 << 20;

/// What running an endpoint needs, built from validated parameters.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// All parameters (defaults applied) as one JSON object, for the script's stdin.
    pub stdin: Vec<u8>,
}

impl Param {
    /// Validates (and, for text from a URL, converts) one value against this parameter.
    fn check_value(&self, value: Value) -> Result<Value, String> {
        let value = coerce(self.kind, value)?;
        match (&value, self.kind) {
            (Value::String(s), ParamKind::String) => {
                let len = s.chars().count() as u64;
                if let Some(min) = self.min_length.filter(|m| len < *m) {
                    return Err(format!("must be at least {min} characters long"));
                }
                if let Some(max) = self.max_length.filter(|m| len > *m) {
                    return Err(format!("must be at most {max} characters long"));
                }
                if let Some(re) = self.pattern.as_ref().filter(|re| !re.is_match(s)) {
                    return Err(format!("must match the pattern `{}`", re.as_str()));
                }
                if s.contains('\0') {
                    return Err("must not contain NUL characters".into());
                }
            }
            (Value::Number(n), ParamKind::Integer | ParamKind::Number) => {
                let x = n.as_f64().unwrap_or(0.0);
                if let Some(min) = self.minimum.filter(|m| x < *m) {
                    return Err(format!("must be at least {min}"));
                }
                if let Some(max) = self.maximum.filter(|m| x > *m) {
                    return Err(format!("must be at most {max}"));
                }
            }
            (Value::Array(items), ParamKind::Array) => {
                let item = self.items.as_ref().ok_or("has no item type")?;
                let checked: Result<Vec<Value>, String> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        item.check_value(v.clone())
                            .map_err(|e| format!("item {i} {e}"))
                    })
                    .collect();
                return Ok(Value::Array(checked?)).and_then(|v| self.check_choice(v));
            }
            _ => {}
        }
        self.check_choice(value)
    }

    fn schema(&self) -> Value {
        let mut s = Map::new();
        let kind = match self.kind {
            ParamKind::String => "string",
            ParamKind::Integer => "integer",
            ParamKind::Number => "number",
            ParamKind::Boolean => "boolean",
            ParamKind::Array => "array",
        };
        s.insert("type".into(), Value::from(kind));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                s.insert(k.into(), v);
            }
        };
        put("description", self.description.clone().map(Value::from));
        put("default", self.default.clone());
        put("enum", self.choices.clone().map(Value::Array));
        let bound = |b: Option<f64>| match (b, self.kind) {
            (Some(x), ParamKind::Integer) if x.fract() == 0.0 => Some(Value::from(x as i64)),
            (b, _) => b.and_then(serde_json::Number::from_f64).map(Value::Number),
        };
        put("minimum", bound(self.minimum));
        put("maximum", bound(self.maximum));
        put("minLength", self.min_length.map(Value::from));
        put("maxLength", self.max_length.map(Value::from));
        put(
            "pattern",
            self.pattern.as_ref().map(|r| Value::from(r.as_str())),
        );
        put("items", self.items.as_ref().map(|i| i.schema()));
        Value::Object(s)
    }

    fn check_choice(&self, value: Value) -> Result<Value, String> {
        match &self.choices {
            Some(choices) if !choices.contains(&value) => {
                let list: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
                Err(format!("must be one of {}", list.join(", ")))
            }
            _ => Ok(value),
        }
    }
}

/// Converts a value to `kind` where that is unambiguous: numbers and booleans may
/// arrive as text (query strings and path segments always do, and assistants often
/// quote numbers), a single value may stand for a one-item array.
fn coerce(kind: ParamKind, value: Value) -> Result<Value, String> {
    let type_error = |v: &Value| format!("must be {}, not {}", kind_name(kind), value_kind(v));
    match (kind, value) {
        (ParamKind::String, Value::String(s)) => Ok(Value::String(s)),
        (ParamKind::String, v @ (Value::Number(_) | Value::Bool(_))) => {
            Ok(Value::String(v.to_string()))
        }
        (ParamKind::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Value::Number(n)),
        (ParamKind::Integer, Value::Number(n))
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9e15) =>
        {
            Ok(Value::from(n.as_f64().unwrap_or(0.0) as i64))
        }
        (ParamKind::Integer, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("must be an integer, not `{s}`")),
        (ParamKind::Number, Value::Number(n)) => Ok(Value::Number(n)),
        (ParamKind::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("must be a number, not `{s}`")),
        (ParamKind::Boolean, Value::Bool(b)) => Ok(Value::Bool(b)),
        (ParamKind::Boolean, Value::String(s)) => match s.as_str() {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("must be true or false, not `{s}`")),
        },
        (ParamKind::Array, Value::Array(a)) => Ok(Value::Array(a)),
        (ParamKind::Array, v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
            Ok(Value::Array(vec![v]))
        }
        (_, v) => Err(type_error(&v)),
    }
}

fn kind_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::String => "a string",
        ParamKind::Integer => "an integer",
        ParamKind::Number => "a number",
        ParamKind::Boolean => "true or false",
        ParamKind::Array => "an array",
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text a value takes in argv and the environment.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Endpoint {
    /// Validates the caller's parameters (unknown names, types, bounds, required,
    /// leading dashes) and builds argv, environment and stdin. Nothing else may
    /// turn request data into process input.
    pub fn bind(&self, mut input: Map<String, Value>) -> Result<Invocation, ParamError> {
        if let Some(unknown) = input
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
            return Err(ParamError {
                param: Some(unknown.clone()),
                message: if known.is_empty() {
                    format!(
                        "unknown parameter `{unknown}`: endpoint `{}` takes no parameters",
                        self.name
                    )
                } else {
                    format!(
                        "unknown parameter `{unknown}`: endpoint `{}` takes {}",
                        self.name,
                        known.join(", ")
                    )
                },
                too_large: false,
            });
        }
        let mut values = Map::new();
        for p in &self.params {
            let value = match input.remove(&p.name) {
                Some(Value::Null) | None => match &p.default {
                    Some(d) => d.clone(),
                    None if p.required || self.path_has(&p.name) => {
                        return Err(ParamError {
                            param: Some(p.name.clone()),
                            message: format!("parameter `{}` is required", p.name),
                            too_large: false,
                        })
                    }
                    None => continue,
                },
                Some(v) => p.check_value(v).map_err(|m| ParamError {
                    param: Some(p.name.clone()),
                    message: format!("parameter `{}` {m}", p.name),
                    too_large: false,
                })?,
            };
            values.insert(p.name.clone(), value);
        }

        let mut args = Vec::new();
        for template in &self.args {
            // A template that is exactly one array parameter becomes one argv entry per item.
            if let [ArgPart::Param(name)] = template.as_slice() {
                if let Some(Value::Array(items)) = values.get(name) {
                    for item in items {
                        args.push(self.checked_arg(name, as_text(item))?);
                    }
                    continue;
                }
            }
            let mut arg = String::new();
            for part in template {
                match part {
                    ArgPart::Text(t) => arg.push_str(t),
                    ArgPart::Param(name) => {
                        let text = match values.get(name) {
                            Some(Value::Array(items)) => {
                                items.iter().map(as_text).collect::<Vec<_>>().join(",")
                            }
                            Some(v) => as_text(v),
                            None => String::new(),
                        };
                        let text = self.checked_arg(name, text)?;
                        arg.push_str(&text);
                    }
                }
            }
            args.push(arg);
        }

        if let Some(long) = args.iter().find(|a| a.len() > MAX_ARG) {
            return Err(ParamError {
                param: None,
                message: format!(
                    "an argument would be {} bytes; a process takes at most {MAX_ARG} in one argument (the script can read large values from stdin)",
                    long.len()
                ),
                too_large: true,
            });
        }
        let total: usize = args.iter().map(|a| a.len() + 1).sum();
        if total > MAX_ARGV {
            return Err(ParamError {
                param: None,
                message: format!(
                    "the arguments would be {total} bytes; a run takes at most {MAX_ARGV} (the script can read large values from stdin)"
                ),
                too_large: true,
            });
        }
        // Large values stay on stdin only: one over 128 KiB in the environment
        // would make the process fail to start at all.
        let env = values
            .iter()
            .map(|(k, v)| (k, as_text(v)))
            .filter(|(_, v)| v.len() <= MAX_ENV_VALUE)
            .map(|(k, v)| (format!("DYNAPI_PARAM_{}", k.to_ascii_uppercase()), v))
            .collect();
        let stdin = serde_json::to_vec(&Value::Object(values)).unwrap_or_default();
        Ok(Invocation { args, env, stdin })
    }

    /// The parameters as a JSON Schema object (what `GET /endpoints` shows and the
    /// OpenAPI and MCP descriptions are built from).
    pub fn params_schema(&self) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for p in &self.params {
            properties.insert(p.name.clone(), p.schema());
            if p.required || self.path_has(&p.name) {
                required.push(Value::String(p.name.clone()));
            }
        }
        serde_json::json!({"type": "object", "properties": properties, "required": required})
    }

    fn path_has(&self, name: &str) -> bool {
        self.path.contains(&format!("{{{name}}}"))
    }

    /// Refuses a value that would start with `-` in argv unless its parameter allows
    /// it: such a value could be read as an option by the tools a script calls.
    fn checked_arg(&self, name: &str, text: String) -> Result<String, ParamError> {
        let allowed = self
            .params
            .iter()
            .find(|p| p.name == name)
            .is_some_and(|p| p.allow_leading_dash);
        if text.starts_with('-') && !allowed {
            return Err(ParamError {
                param: Some(name.to_string()),
                message: format!(
                    "parameter `{name}` may not start with `-` (it would reach the script as an option); the manifest can allow it with `allow_leading_dash: true`"
                ),
                too_large: false,
            });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MAX_FILE_BYTES;
    use serde_json::json;

    fn build(files: &[(&str, &str)]) -> Result<Registry, Vec<Problem>> {
        let snapshot = Snapshot {
            manifests: files
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect(),
            ..Snapshot::default()
        };
        Registry::build("c0ffee", &snapshot, &|p: &str| match p {
            "scripts/ok.sh" => FileKind::Executable,
            "scripts/plain.sh" => FileKind::NotExecutable,
            _ => FileKind::Missing,
        })
    }

    const COUNT: &str = "name: count-lines\ndescription: Count lines.\nmethod: GET\npath: /count-lines/{dir}\nscript: scripts/ok.sh\nargs: [\"{dir}\", \"--max={limit}\", \"{tags}\"]\nparams:\n  dir: {type: string}\n  limit: {type: integer, minimum: 1, maximum: 100, default: 10}\n  tags: {type: array, items: {type: string}, default: []}\n";

    #[test]
    fn a_valid_manifest_routes_and_binds() {
        let reg = build(&[("manifests/count-lines.yaml", COUNT)]).unwrap();
        let m = reg.route(Method::Get, "/count-lines/src").unwrap();
        assert_eq!(m.endpoint.name, "count-lines");
        assert_eq!(m.path_params, vec![("dir".into(), "src".into())]);
        let inv = m
            .endpoint
            .bind(
                json!({"dir": "src", "limit": "5", "tags": ["a", "b"]})
                    .as_object()
                    .unwrap()
                    .clone(),
            )
            .unwrap();
        assert_eq!(inv.args, vec!["src", "--max=5", "a", "b"]);
        assert!(inv.env.contains(&("DYNAPI_PARAM_LIMIT".into(), "5".into())));
        let stdin: Value = serde_json::from_slice(&inv.stdin).unwrap();
        assert_eq!(stdin["limit"], json!(5));
        assert!(reg.route(Method::Post, "/count-lines/src").is_none());
    }

    #[test]
    fn bad_parameters_are_named() {
        let reg = build(&[("manifests/count-lines.yaml", COUNT)]).unwrap();
        let e = reg.get("count-lines").unwrap();
        let bind = |v: Value| e.bind(v.as_object().unwrap().clone()).unwrap_err();
        assert_eq!(
            bind(json!({"dir": "a", "limit": 1000})).param.as_deref(),
            Some("limit")
        );
        assert_eq!(
            bind(json!({"dir": "a", "limit": "ten"})).param.as_deref(),
            Some("limit")
        );
        assert_eq!(
            bind(json!({"dir": "a", "nope": 1})).param.as_deref(),
            Some("nope")
        );
        assert_eq!(bind(json!({})).param.as_deref(), Some("dir"));
        let dash = bind(json!({"dir": "--output=/etc/passwd"}));
        assert!(
            dash.message.contains("allow_leading_dash"),
            "{}",
            dash.message
        );
    }

    #[test]
    fn every_problem_is_reported_at_its_value() {
        let bad = "name: Bad_Name\ndescription: x\nmethod: FETCH\npath: /files/x\nscript: scripts/plain.sh\nargs: [\"{nope}\"]\ntimeout: 11m\n";
        let problems = build(&[("manifests/bad.yaml", bad)]).unwrap_err();
        let at: Vec<(usize, usize)> = problems.iter().map(|p| (p.line, p.column)).collect();
        assert_eq!(
            at,
            vec![(1, 7), (3, 9), (4, 7), (5, 9), (6, 8), (7, 10)],
            "{problems:#?}"
        );
        assert!(problems[0].message.contains("write `bad-name`"));
        assert!(problems[3].message.contains("--chmod=+x"));
    }

    #[test]
    fn duplicate_names_and_routes_are_refused() {
        let a = "name: a\ndescription: x\npath: /same\nscript: scripts/ok.sh\n";
        let b = "name: a\ndescription: x\npath: /same\nscript: scripts/ok.sh\n";
        let problems = build(&[("manifests/a.yaml", a), ("manifests/b.yaml", b)]).unwrap_err();
        assert!(problems
            .iter()
            .any(|p| p.message.contains("already used by manifests/a.yaml")));
        assert!(problems.iter().any(|p| p.message.contains("conflicts")));
    }

    /// A manifest of `params` parameters, each with an `enum` of `choices`
    /// values, used `uses` times each in `args` (the shapes a big manifest takes).
    fn wide(params: usize, choices: usize, args: usize) -> String {
        let mut text = String::from(
            "name: wide\ndescription: Many parameters.\nscript: scripts/ok.sh\nargs: [",
        );
        for a in 0..args {
            text.push_str(&format!("\"--p={{p{}}}\", ", a % params.max(1)));
        }
        text.push_str("]\nparams:\n");
        for p in 0..params {
            let values: Vec<String> = (0..choices).map(|c| c.to_string()).collect();
            text.push_str(&format!(
                "  p{p}: {{type: integer, default: 0, enum: [{}]}}\n",
                values.join(", ")
            ));
        }
        text
    }

    /// Builds one manifest; its problems' `file:line:column: message`.
    fn problems_of(text: &str) -> Vec<String> {
        build(&[("manifests/wide.yaml", text)])
            .err()
            .unwrap_or_default()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn each_limit_is_refused_at_its_value_and_named() {
        assert_eq!(
            problems_of(&wide(MAX_PARAMS, 8, MAX_ARGS)),
            Vec::<String>::new()
        );
        // `args:` is line 4 and `params:` line 5 in `wide`; a problem points at
        // the value: `args`' `[`, the first parameter of `params` on line 6.
        assert_eq!(
            problems_of(&wide(MAX_PARAMS + 1, 1, 1)),
            vec!["manifests/wide.yaml:6:3: `params` has 65 parameters, over the limit of 64"]
        );
        assert_eq!(
            problems_of(&wide(1, 1, MAX_ARGS + 1)),
            vec!["manifests/wide.yaml:4:7: `args` has 65 arguments, over the limit of 64"]
        );
        let problems = problems_of(&wide(1, MAX_ENUM + 1, 0));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("manifests/wide.yaml:6:")
                && problems[0].ends_with("`enum` has 257 values, over the limit of 256"),
            "{problems:?}"
        );
        let env: String = (0..=MAX_ENV).map(|i| format!("  V{i}: x\n")).collect();
        let problems = problems_of(&format!("{}env:\n{env}", wide(1, 1, 1)));
        assert_eq!(
            problems,
            vec!["manifests/wide.yaml:8:3: `env` has 65 variables, over the limit of 64"]
        );
        // 27 placeholders once made the router panic; now the path is refused.
        let path: String = (0..27).map(|i| format!("/{{p{i}}}")).collect();
        let problems =
            problems_of(&wide(27, 1, 0).replace("args: [", &format!("path: {path}\nargs: [")));
        assert_eq!(
            problems,
            vec!["manifests/wide.yaml:4:7: the path has 27 placeholders, over the limit of 16"]
        );
        let problems = problems_of(&wide(1, 1, 0).replace("args: [", "path: /{p0}/{p0}\nargs: ["));
        assert_eq!(
            problems,
            vec!["manifests/wide.yaml:4:7: `{p0}` is in the path twice; a placeholder names one segment"]
        );
        let writable: String = (0..=MAX_WRITABLE)
            .map(|i| format!("    - out/{i}\n"))
            .collect();
        let problems = problems_of(&format!(
            "{}sandbox:\n  writable:\n{writable}",
            wide(1, 1, 1)
        ));
        assert_eq!(
            problems,
            vec!["manifests/wide.yaml:9:5: `sandbox.writable` has 65 paths, over the limit of 64"]
        );
    }

    #[test]
    fn oversized_files_and_folders_are_refused_before_parsing() {
        // 110,000 parameters: what once took seconds of checking is now refused
        // by its size alone, before the YAML is parsed.
        let huge = wide(110_000, 1, 1);
        let problems = problems_of(&huge);
        assert_eq!(
            problems,
            vec![format!(
                "manifests/wide.yaml:1:1: the file is {} bytes, over the limit of 65536 bytes (64 KiB); make descriptions shorter or split it",
                huge.len()
            )]
        );
        // What the git reader leaves unread is reported the same way.
        let snapshot = Snapshot {
            too_large: vec![("dynapi.yaml".into(), 70_000)],
            ..Snapshot::default()
        };
        let problems = Registry::build("", &snapshot, &|_| FileKind::Executable).unwrap_err();
        assert_eq!(problems[0].file, "dynapi.yaml");
        assert!(problems[0]
            .message
            .contains("70000 bytes, over the limit of 65536"));

        let one = "description: x\nscript: scripts/ok.sh\n";
        let files: Vec<(String, String)> = (0..=MAX_MANIFESTS)
            .map(|i| {
                (
                    format!("manifests/e{i:04}.yaml"),
                    format!("name: e{i}\n{one}"),
                )
            })
            .collect();
        let problems = Registry::build(
            "",
            &Snapshot {
                manifests: files,
                ..Snapshot::default()
            },
            &|_| FileKind::Executable,
        )
        .unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            vec!["manifests/e1000.yaml:1:1: `manifests/` holds more than the limit of 1000 manifests; remove some"]
        );
        // Many files each under the limit still meet the total.
        let big = format!(
            "name: big\n{one}description2: {}\n",
            "x".repeat(MAX_FILE_BYTES - 100)
        );
        let files: Vec<(String, String)> = (0..(MAX_TOTAL_BYTES / big.len() + 1))
            .map(|i| (format!("manifests/b{i:03}.yaml"), big.clone()))
            .collect();
        let last = files.last().unwrap().0.clone();
        let problems = Registry::build(
            "",
            &Snapshot {
                manifests: files,
                ..Snapshot::default()
            },
            &|_| FileKind::Executable,
        )
        .unwrap_err();
        let total = problems
            .iter()
            .find(|p| p.message.contains("together"))
            .expect("the total is named");
        assert_eq!(total.file, last);
        assert!(total.message.contains("4194304 bytes (4 MiB)"), "{total}");
    }

    #[test]
    fn the_largest_manifest_the_limits_allow_builds_in_linear_work() {
        // The widest manifest within the limits: every list at its bound and the
        // file near 64 KiB.
        let full = wide(MAX_PARAMS, 100, MAX_ARGS);
        assert!(full.len() <= MAX_FILE_BYTES, "{}", full.len());
        let half = wide(MAX_PARAMS / 2, 100, MAX_ARGS / 2);
        let time = |text: &str| {
            let start = std::time::Instant::now();
            for _ in 0..5 {
                assert_eq!(problems_of(text), Vec::<String>::new());
            }
            start.elapsed()
        };
        let (t_half, t_full) = (time(&half), time(&full));
        // Printed, not asserted: timings are not a test. Linear work gives about 2.
        println!(
            "{} bytes: {:?}; {} bytes: {:?}; ratio {:.2}",
            half.len(),
            t_half / 5,
            full.len(),
            t_full / 5,
            t_full.as_secs_f64() / t_half.as_secs_f64()
        );
    }

    #[test]
    fn templates_split_text_and_params() {
        assert_eq!(
            parse_template("--x={a}{b}-{ not }"),
            vec![
                ArgPart::Text("--x=".into()),
                ArgPart::Param("a".into()),
                ArgPart::Param("b".into()),
                ArgPart::Text("-{ not }".into())
            ]
        );
    }
}
