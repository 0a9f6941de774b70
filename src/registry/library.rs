//! Libraries in the registry: the `include:` entries of `dynapi.yaml`, checked
//! (`Include`), and a library's manifests built into endpoints under the
//! including project's rules (`library_endpoints`). No I/O: the caller
//! fetches each library and hands in what it found at the resolved commit
//! (`LibrarySnapshot`, one per include, in the same order).
//!
//! What the project decides, never the library: the prefix, which endpoints,
//! the default timeout, and what a library script may do (`sandbox:` of the
//! include: no network and nothing writable unless granted there). A library
//! manifest that asks for more than its include grants is a problem located
//! at the include. A library's own `dynapi.yaml` (tokens, policy, includes)
//! is never read.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::manifest::{self, Problem, RawInclude, MAX_MANIFESTS};

use super::check::{is_name, Check, RESERVED_SEGMENTS};
use super::{within_limits, Endpoint, FileKind, Limits, Sandbox, Settings, MANIFEST_DIR};
use super::{MAX_TOTAL_BYTES, SETTINGS_FILE};

/// Most `include:` entries in one `dynapi.yaml`.
pub const MAX_INCLUDES: usize = 16;
/// Longest `ref`.
const MAX_REF: usize = 200;
/// Longest `repository`.
const MAX_REPOSITORY: usize = 1000;

/// Most files in one library's tree.
pub const MAX_LIBRARY_FILES: usize = 20_000;
/// Most bytes of one library's checkout.
pub const MAX_CHECKOUT_BYTES: u64 = 256 << 20;

/// Why a library could not be read or checked out (by `source::library`,
/// which does the I/O); a problem at the include when the registry gets it.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("this daemon serves a GitHub repository: include libraries by their https URL, not by a path on its machine")]
    LocalRefused,
    #[error("offline, and not in the cache")]
    NotCached,
    #[error("the library has no tag or branch `{0}`")]
    NoRef(String),
    #[error("no commit {0} in the library")]
    NoCommit(String),
    #[error("`{0}` is not a commit")]
    NotACommit(String),
    #[error("the library holds more than {MAX_LIBRARY_FILES} files")]
    TooManyFiles,
    #[error("the library is too large (its files over {} MiB, or its history over the cache's limit)", MAX_CHECKOUT_BYTES >> 20)]
    TooLarge,
    /// A failure of git (opening, reading objects, fetching), in gix's words.
    #[error("{0}")]
    Git(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No reader of libraries where the registry was built.
    #[error("libraries are not read here")]
    Unavailable,
    /// Read from the cache after a fetch failed, and still not resolved.
    #[error("{0} ({1})")]
    Stale(Box<LibraryError>, String),
}

/// One checked `include:` entry.
#[derive(Debug, Clone)]
pub struct Include {
    /// An `https://` or `http://` git URL without credentials, or an absolute
    /// path (or `file://` URL) of a repository on the daemon's machine.
    pub repository: String,
    /// A tag, branch or commit id.
    pub git_ref: String,
    /// The library endpoints served; all of them when `None`.
    pub endpoints: Option<Vec<String>>,
    /// Names become `<prefix>-<name>`, paths `/<prefix><path>`.
    pub prefix: Option<String>,
    /// What the project lets this library's scripts do.
    pub grant: Sandbox,
    /// Where the entry stands in `dynapi.yaml`.
    pub line: usize,
    pub column: usize,
}

impl Include {
    /// A problem at this entry of `dynapi.yaml`.
    fn problem(&self, message: String) -> Problem {
        Problem {
            file: SETTINGS_FILE.to_string(),
            line: self.line,
            column: self.column,
            message,
        }
    }
}

/// What the caller found for one include: the library's files at the
/// resolved commit.
#[derive(Debug, Default, Clone)]
pub struct LibrarySnapshot {
    /// The commit `ref` resolved to (40 hex digits).
    pub commit: String,
    /// `manifests/*.yaml` of the library, in path order.
    pub manifests: Vec<(String, String)>,
    /// Manifests left unread for their size.
    pub too_large: Vec<(String, u64)>,
    /// What each path of the library's tree is (scripts must be executable files).
    pub kinds: HashMap<String, FileKind>,
    /// Set when the library could not be fetched and this is the cached copy: why.
    pub offline: Option<String>,
}

/// Where a library endpoint comes from, as `/endpoints`, `/status`, the
/// OpenAPI document and MCP say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Library {
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Set when the library was read from the cache because it could not be
    /// fetched: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline: Option<String>,
    #[serde(skip)]
    pub line: usize,
    #[serde(skip)]
    pub column: usize,
}

impl Library {
    /// `repository@ref`, how problems and logs name the library.
    pub fn label(&self) -> String {
        format!("{}@{}", self.repository, self.git_ref)
    }
}

/// Whether `url` names a repository the daemon may fetch: http(s) without
/// credentials, or an absolute local path.
fn repository_problem(url: &str) -> Option<String> {
    if url.len() > MAX_REPOSITORY || url.chars().any(|c| c.is_control() || c == ' ') {
        return Some(format!(
            "`repository` is a git URL or an absolute path of at most {MAX_REPOSITORY} characters, without spaces"
        ));
    }
    let local = url.strip_prefix("file://").unwrap_or(url);
    if local.starts_with('/') {
        if local.split('/').any(|seg| seg == "..") {
            return Some("write the library's path without `..`".to_string());
        }
        return None;
    }
    let rest = match url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        Some(rest) => rest,
        None => {
            return Some(format!(
                "`{url}` is not a repository the daemon fetches; write an `https://` URL (like `https://github.com/acme/dynapi-library`) or an absolute path"
            ))
        }
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // The host as the fetch will parse it: `127.0.0.1.nip.io` is a name
    // anyone's DNS may point anywhere, not this machine.
    let loopback = url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.host().map(|h| match h {
                url::Host::Domain(d) => d == "localhost",
                url::Host::Ipv4(ip) => ip.is_loopback(),
                url::Host::Ipv6(ip) => ip.is_loopback(),
            })
        })
        .unwrap_or(false);
    if url.starts_with("http://") && !loopback {
        return Some(
            "write `https://`: plain http reaches only this machine (as in GitHub mode)"
                .to_string(),
        );
    }
    if authority.contains('@') {
        return Some(
            "put no credentials in `repository` (dynapi.yaml is in git); the daemon sends GITHUB_TOKEN to its own remote's host by itself"
                .to_string(),
        );
    }
    if authority.is_empty() {
        return Some(format!("`{url}` names no host"));
    }
    None
}

/// Whether `r` may be a tag, branch or commit: git's ref rules, narrowed.
fn is_ref(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= MAX_REF
        && !r.starts_with(['-', '/', '.'])
        && !r.ends_with(['/', '.'])
        && !r.contains("..")
        && !r.contains("//")
        && !r.ends_with(".lock")
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Checks `include:` (called from the settings check).
pub(super) fn check_includes(raw: Vec<RawInclude>, check: &mut Check) -> Vec<Include> {
    if raw.len() > MAX_INCLUDES {
        check.at(
            "include",
            format!(
                "`include` has {} libraries, over the limit of {MAX_INCLUDES}",
                raw.len()
            ),
        );
        return Vec::new();
    }
    let mut includes = Vec::new();
    for (i, inc) in raw.into_iter().enumerate() {
        let at = format!("include.{i}");
        let before = check.problems.len();
        let repository = inc.repository.unwrap_or_default();
        if repository.is_empty() {
            check.at(&at, "add `repository:`, the library's git URL or path");
        } else if let Some(message) = repository_problem(&repository) {
            check.at(&format!("{at}.repository"), message);
        }
        let git_ref = inc.git_ref.unwrap_or_default();
        if git_ref.is_empty() {
            check.at(
                &at,
                "add `ref:`, the tag, branch or commit to serve (a tag like `v1.4.0` pins it)",
            );
        } else if !is_ref(&git_ref) {
            check.at(
                &format!("{at}.ref"),
                format!("`{git_ref}` is not a tag, branch or commit name"),
            );
        }
        if let Some(names) = &inc.endpoints {
            if names.len() > MAX_MANIFESTS {
                check.at(
                    &format!("{at}.endpoints"),
                    format!("`endpoints` lists more than {MAX_MANIFESTS} names"),
                );
            } else {
                for (j, name) in names.iter().enumerate() {
                    if !is_name(name) {
                        check.at(
                            &format!("{at}.endpoints.{j}"),
                            format!("`{name}` is not an endpoint name (lowercase letters, digits and dashes)"),
                        );
                    }
                }
            }
        }
        if let Some(prefix) = &inc.prefix {
            if !is_name(prefix) || prefix.len() > 32 {
                check.at(
                    &format!("{at}.prefix"),
                    format!("`{prefix}` is not a prefix: lowercase letters, digits and dashes, at most 32"),
                );
            } else if RESERVED_SEGMENTS.contains(&prefix.as_str()) {
                check.at(
                    &format!("{at}.prefix"),
                    format!(
                        "`/{prefix}` belongs to the daemon's own routes; choose another prefix"
                    ),
                );
            }
        }
        let raw_grant = inc.sandbox.unwrap_or_default();
        let writable = raw_grant.writable.unwrap_or_default();
        if writable.len() > manifest::MAX_WRITABLE {
            check.at(
                &format!("{at}.sandbox.writable"),
                format!("`writable` has more than {} paths", manifest::MAX_WRITABLE),
            );
        }
        check.writable_paths(&format!("{at}.sandbox.writable"), &writable);
        if check.problems.len() > before {
            continue;
        }
        let spot = check.locator.problem(&at, "");
        includes.push(Include {
            repository,
            git_ref,
            endpoints: inc.endpoints,
            prefix: inc.prefix,
            grant: Sandbox {
                network: raw_grant.network.unwrap_or(false),
                writable,
            },
            line: spot.line,
            column: spot.column,
        });
    }
    includes
}

/// Whether the project's `grant` covers writing `path`.
fn covers(grant: &[String], path: &str) -> bool {
    grant.iter().any(|g| {
        g == "."
            || g == path
            || path
                .strip_prefix(g.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The endpoints one include adds, each checked like a project manifest,
/// then named, routed and confined as the include says. Problems of the
/// library's own files are located in them (`repository@ref:manifests/x.yaml`);
/// what the include refuses is located at the include in `dynapi.yaml`.
pub(super) fn library_endpoints(
    include: &Include,
    found: &LibrarySnapshot,
    settings: &Settings,
    problems: &mut Vec<Problem>,
) -> (Arc<Library>, Vec<Endpoint>) {
    let library = Arc::new(Library {
        repository: include.repository.clone(),
        git_ref: include.git_ref.clone(),
        commit: found.commit.clone(),
        prefix: include.prefix.clone(),
        offline: found.offline.clone(),
        line: include.line,
        column: include.column,
    });
    let label = library.label();
    for (file, bytes) in &found.too_large {
        problems.push(manifest::too_large(&format!("{label}:{file}"), *bytes));
    }
    let files: Vec<(String, String)> = found
        .manifests
        .iter()
        .map(|(file, text)| (format!("{label}:{file}"), text.clone()))
        .collect();
    let limits = Limits {
        folder: MANIFEST_DIR,
        what: "manifests",
        count: MAX_MANIFESTS,
        bytes: MAX_TOTAL_BYTES,
    };
    let kind = |path: &str| found.kinds.get(path).copied().unwrap_or(FileKind::Missing);
    let wanted: Option<HashSet<&str>> = include
        .endpoints
        .as_ref()
        .map(|names| names.iter().map(String::as_str).collect());
    let mut seen = HashSet::new();
    let mut endpoints = Vec::new();
    for (file, text) in within_limits(&files, &limits, problems) {
        let parsed = manifest::parse_manifest(file, text);
        let readable = parsed.problems.is_empty();
        problems.extend(parsed.problems);
        let mut check = Check {
            locator: &parsed.locator,
            problems: &mut *problems,
        };
        let Some(mut e) = check.endpoint(file, parsed.value, settings, &kind) else {
            continue;
        };
        if !readable {
            continue;
        }
        // The checkout leaves out any path with a `.git` segment, in any case
        // (`source::library::safe_path`): such a script would be served and
        // never found.
        if e.script
            .split('/')
            .any(|seg| seg.eq_ignore_ascii_case(".git"))
        {
            problems.push(include.problem(format!(
                "`{}` of {label} ({file}) runs `{}`, a path libraries are not checked out with (a `.git` folder)",
                e.name, e.script
            )));
            continue;
        }
        seen.insert(e.name.clone());
        if wanted
            .as_ref()
            .is_some_and(|w| !w.contains(e.name.as_str()))
        {
            continue;
        }
        let from = format!("`{}` of {label} ({file})", e.name);
        if e.sandbox.network && !include.grant.network {
            problems.push(include.problem(format!(
                "{from} asks for the network; this include does not grant it (add `sandbox: {{network: true}}` to the include to allow it)"
            )));
        }
        for w in &e.sandbox.writable {
            if !covers(&include.grant.writable, w) {
                problems.push(include.problem(format!(
                    "{from} asks to write `{w}`; this include grants {} (add the path to the include's `sandbox.writable` to allow it)",
                    if include.grant.writable.is_empty() {
                        "no writable path".to_string()
                    } else {
                        format!("only `{}`", include.grant.writable.join("`, `"))
                    }
                )));
            }
        }
        if let Some(prefix) = &include.prefix {
            let name = format!("{prefix}-{}", e.name);
            if !is_name(&name) {
                problems.push(include.problem(format!(
                    "{from} becomes `{name}` with the prefix, longer than 64 characters; choose a shorter prefix"
                )));
            }
            e.name = name;
            e.path = format!("/{prefix}{}", e.path);
        }
        e.source = Some(library.clone());
        endpoints.push(e);
    }
    if let Some(names) = &include.endpoints {
        for name in names {
            if !seen.contains(name) {
                problems.push(include.problem(format!(
                    "{label} has no endpoint `{name}` at commit {}",
                    found.commit
                )));
            }
        }
    }
    (library, endpoints)
}

#[cfg(test)]
mod tests {
    use super::super::{Registry, Snapshot};
    use super::*;

    /// Builds a project of no manifests including one library of `manifests`
    /// (every script executable) with `include` as the entry's extra lines.
    fn build(include: &str, manifests: &[(&str, &str)]) -> Result<Registry, Vec<String>> {
        let library = LibrarySnapshot {
            commit: "c".repeat(40),
            manifests: manifests
                .iter()
                .map(|(f, t)| (f.to_string(), t.to_string()))
                .collect(),
            kinds: HashMap::from([("scripts/x.sh".to_string(), FileKind::Executable)]),
            ..LibrarySnapshot::default()
        };
        let snapshot = Snapshot {
            settings: Some(format!(
                "include:\n  - repository: /srv/lib.git\n    ref: v1\n{include}"
            )),
            libraries: vec![Ok(library)],
            ..Snapshot::default()
        };
        Registry::build("p", &snapshot, &|_| FileKind::Missing)
            .map_err(|problems| problems.iter().map(|p| p.to_string()).collect())
    }

    const WRITER: &str = "name: writer\ndescription: Writes.\nscript: scripts/x.sh\nsandbox:\n  writable: [out/sub]\n";

    #[test]
    fn an_include_names_routes_and_confines_what_it_serves() {
        let registry = build(
            "    prefix: lib\n    sandbox: {writable: [out]}\n",
            &[("manifests/writer.yaml", WRITER)],
        )
        .unwrap();
        let e = registry.get("lib-writer").unwrap();
        assert_eq!(e.path, "/lib/writer");
        assert_eq!(e.file, "/srv/lib.git@v1:manifests/writer.yaml");
        assert_eq!(e.source.as_ref().unwrap().commit, "c".repeat(40));
        assert_eq!(registry.libraries().len(), 1);

        // No grant, no writing; a name past 64 with the prefix is refused.
        let long = "x".repeat(40);
        assert_eq!(
            build(
                &format!("    prefix: {}\n", "p".repeat(30)),
                &[("manifests/w.yaml", &WRITER.replace("writer", &long))],
            )
            .unwrap_err(),
            vec![
                format!("dynapi.yaml:2:5: `{long}` of /srv/lib.git@v1 (/srv/lib.git@v1:manifests/w.yaml) asks to write `out/sub`; this include grants no writable path (add the path to the include's `sandbox.writable` to allow it)"),
                format!("dynapi.yaml:2:5: `{long}` of /srv/lib.git@v1 (/srv/lib.git@v1:manifests/w.yaml) becomes `{}-{long}` with the prefix, longer than 64 characters; choose a shorter prefix", "p".repeat(30)),
            ]
        );
        // The library's own mistakes are located in its file.
        assert_eq!(
            build("", &[("manifests/bad.yaml", "name: bad\ndescription: x\nscript: scripts/missing.sh\nsandbox:\n  writable: []\n")]).unwrap_err(),
            vec!["/srv/lib.git@v1:manifests/bad.yaml:3:9: `scripts/missing.sh` does not exist in this commit; add it in the same commit"]
        );
    }

    #[test]
    fn repositories_and_refs_are_judged() {
        for ok in [
            "https://github.com/acme/dynapi-library",
            "http://127.0.0.1:9/acme/lib.git",
            "http://localhost/lib.git",
            "/srv/git/library.git",
            "file:///srv/git/library.git",
        ] {
            assert_eq!(repository_problem(ok), None, "{ok}");
        }
        for bad in [
            "https://user:secret@github.com/acme/lib",
            "https://token@github.com/acme/lib",
            "ssh://git@github.com/acme/lib",
            "git@github.com:acme/lib.git",
            "relative/path",
            "/srv/../etc",
            "https:///nohost",
            "https://github.com/a b",
            "http://github.com/acme/lib",
            "http://10.0.0.1/lib.git",
            "http://127.0.0.1.nip.io/lib.git",
            "http://127.evil.example/lib.git",
        ] {
            assert!(repository_problem(bad).is_some(), "{bad}");
        }
        for ok in ["v1.4.0", "main", "release/2026", "0123456789abcdef"] {
            assert!(is_ref(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a..b",
            "/abs",
            "a b",
            "x.lock",
            "a//b",
            "--upload-pack=x",
        ] {
            assert!(!is_ref(bad), "{bad}");
        }
    }

    #[test]
    fn a_grant_covers_its_paths_and_below_only() {
        let grant = vec!["out".to_string(), "data/tmp".to_string()];
        assert!(covers(&grant, "out"));
        assert!(covers(&grant, "out/x"));
        assert!(covers(&grant, "data/tmp/y"));
        assert!(!covers(&grant, "outside"));
        assert!(!covers(&grant, "data"));
        assert!(!covers(&grant, "."));
        assert!(covers(&[".".to_string()], "."));
        assert!(!covers(&[], "out"));
    }
}
