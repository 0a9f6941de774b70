//! `dynapi.yaml`'s settings, resolved: the default timeout, the tokens granted
//! by hash, the databases, the pull-request policy and the sandbox mode. They
//! belong to a commit like its manifests, so the registry carries them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::auth::{Scope, Scopes, TokenEntry};
use crate::manifest::{self, Problem};

use super::check::{is_name, is_plain_relative_path, Check};
use super::library::{check_includes, Include};
use super::SETTINGS_FILE;

/// How long a script may run when neither its manifest nor `defaults.timeout`
/// says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The libraries whose endpoints are served beside the project's.
    pub includes: Vec<Include>,
}

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
            includes: Vec::new(),
            databases: BTreeMap::from([(
                DEFAULT_DATABASE.to_string(),
                Database {
                    url: format!("sqlite:{DEFAULT_SQLITE}"),
                },
            )]),
        }
    }
}

pub(super) fn check_settings(text: &str, problems: &mut Vec<Problem>) -> Settings {
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
    settings.includes = check_includes(raw.include, &mut check);
    settings
}
