//! The registry: every endpoint of ONE commit, checked and compiled, plus that
//! commit's settings. Built once by `Registry::build`, never changed afterwards;
//! `source/sync.rs` swaps whole registries atomically.
//!
//! Everything a manifest can get wrong is caught here, so handlers never re-check:
//! an `Endpoint` is valid by construction, and `Endpoint::bind` is the only place
//! request parameters are validated and turned into argv, environment and stdin.
//! No I/O: the caller hands in the files of the commit and a way to ask about paths.
//!
//! The parts: this file holds the registry and its route table; `check.rs` the
//! manifest check (`Check` and the problems it reports); `settings.rs`
//! `dynapi.yaml`'s settings; `bind.rs` the binding of request values to argv,
//! environment and stdin (`Param`, `Invocation`, `coerce`); `prompts.rs` the
//! prompts of `prompts/*.md` (`Prompt`, checked in the same pass as the
//! manifests, so they follow the same last-known-good rule).

mod bind;
mod check;
mod library;
mod prompts;
mod settings;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::auth::{Scope, Scopes};
use crate::manifest::{self, Problem, MAX_MANIFESTS, MAX_TOTAL_BYTES};

pub use crate::layout::{MANIFEST_DIR, PROMPTS_DIR, SETTINGS_FILE};
use bind::ArgPart;
pub use bind::{Invocation, Param, ParamError, ParamKind, MAX_ARG, MAX_ARGV, MAX_ENV_VALUE};
use check::Check;
pub use check::{
    is_name, is_plain_relative_path, DEFAULT_CONCURRENCY, MAX_TIMEOUT, RESERVED_SEGMENTS,
};
pub use library::{
    Include, Library, LibraryError, LibrarySnapshot, MAX_CHECKOUT_BYTES, MAX_INCLUDES,
    MAX_LIBRARY_FILES,
};
pub use prompts::{
    FillError, Prompt, PromptArgument, MAX_PROMPTS, MAX_PROMPTS_TOTAL_BYTES, MAX_PROMPT_ARGUMENTS,
};
use settings::check_settings;
pub use settings::{Database, Settings, DEFAULT_DATABASE, DEFAULT_SQLITE, DEFAULT_TIMEOUT};

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
    /// `prompts/*.md`, in path order.
    pub prompts: Vec<(String, String)>,
    /// Files (manifests, prompts or the settings) the reader left unread because they are
    /// over `manifest::MAX_FILE_BYTES`: path and size. Each is a problem.
    pub too_large: Vec<(String, u64)>,
    /// What the caller found for each `include:` of the settings, in the
    /// order `includes_of` gives them: the library's files, or why it could
    /// not be read (a problem at the include).
    pub libraries: Vec<Result<LibrarySnapshot, LibraryError>>,
}

/// The checked `include:` entries of a `dynapi.yaml` text (its problems are
/// the build's to report): what the caller fetches before `Registry::build`.
pub fn includes_of(settings: &str) -> Vec<Include> {
    check_settings(settings, &mut Vec::new()).includes
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
    /// The JSON Schema of the script's JSON output (`output_schema:`), checked:
    /// an object schema, only with `output: json`.
    pub output_schema: Option<serde_json::Value>,
    pub timeout: Duration,
    pub is_async: bool,
    pub consequential: bool,
    pub scope: Scope,
    /// Runs of this endpoint at once; more callers get 429.
    pub concurrency: usize,
    pub sandbox: Sandbox,
    pub env: Vec<(String, String)>,
    /// The manifest file this endpoint came from, relative to the repository
    /// root (for a library's, `repository@ref:manifests/x.yaml`).
    pub file: String,
    /// The library it comes from; `None` for the project's own. A library's
    /// `script` is a path of the library's tree at `Library::commit`.
    pub source: Option<Arc<Library>>,
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

    /// Where it comes from, as the API, the documents and MCP say it:
    /// `{"kind": "project"}`, or a library's repository, ref and commit.
    pub fn source_json(&self) -> serde_json::Value {
        match &self.source {
            None => serde_json::json!({"kind": "project"}),
            Some(l) => serde_json::json!({
                "kind": "library",
                "repository": l.repository,
                "ref": l.git_ref,
                "commit": l.commit,
            }),
        }
    }

    /// The scopes a token needs to run this endpoint: `run`, always, and the
    /// manifest's `scope:` on top of it (a manifest can only ask for more).
    pub fn needs(&self) -> Scopes {
        [Scope::Run, self.scope].into_iter().collect()
    }
}

/// All endpoints of one commit. Immutable.
#[derive(Debug)]
pub struct Registry {
    pub commit: String,
    pub settings: Settings,
    endpoints: Vec<Arc<Endpoint>>,
    routes: HashMap<Method, matchit::Router<usize>>,
    /// Sorted by name.
    prompts: Vec<Prompt>,
    /// The libraries included, in `include:` order, at their resolved commits.
    libraries: Vec<Arc<Library>>,
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
            prompts: Vec::new(),
            libraries: Vec::new(),
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
        let limits = Limits {
            folder: MANIFEST_DIR,
            what: "manifests",
            count: MAX_MANIFESTS,
            bytes: MAX_TOTAL_BYTES,
        };
        for (file, text) in within_limits(&snapshot.manifests, &limits, &mut problems) {
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
        let mut libraries = Vec::new();
        for (i, include) in settings.includes.iter().enumerate() {
            match snapshot.libraries.get(i) {
                Some(Ok(found)) => {
                    let (library, added) =
                        library::library_endpoints(include, found, &settings, &mut problems);
                    libraries.push(library);
                    endpoints.extend(added.into_iter().map(Arc::new));
                }
                Some(Err(why)) => problems.push(Problem {
                    file: SETTINGS_FILE.to_string(),
                    line: include.line,
                    column: include.column,
                    message: format!(
                        "cannot read the library {} at `{}`: {why}",
                        include.repository, include.git_ref
                    ),
                }),
                None => problems.push(Problem {
                    file: SETTINGS_FILE.to_string(),
                    line: include.line,
                    column: include.column,
                    message: format!(
                        "the library {} was not fetched here; libraries are read by the daemon and `dynapi check`",
                        include.repository
                    ),
                }),
            }
        }
        route_table(&endpoints, &mut problems);
        let prompts = prompts::check_prompts(&snapshot.prompts, &mut problems);
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
            prompts,
            libraries,
        })
    }

    /// The libraries included, at their resolved commits.
    pub fn libraries(&self) -> &[Arc<Library>] {
        &self.libraries
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

    /// The prompts of `prompts/`, by name.
    pub fn prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    pub fn prompt(&self, name: &str) -> Option<&Prompt> {
        self.prompts
            .binary_search_by(|p| p.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.prompts.get(i))
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

/// The limits of one folder of the registry's files.
struct Limits {
    folder: &'static str,
    /// What the files are, plural: "manifests".
    what: &'static str,
    /// Most files.
    count: usize,
    /// Most bytes of all files together.
    bytes: usize,
}

/// The files of a folder (`(path, text)`, in path order) that are to be read.
/// Past a limit on the whole folder the rest is not even parsed: the commit is
/// refused anyway, and parsing is the work being bounded. A file over its own
/// limit (`manifest::MAX_FILE_BYTES`) is that problem, not the folder's.
fn within_limits<'s>(
    files: &'s [(String, String)],
    limits: &Limits,
    problems: &mut Vec<Problem>,
) -> Vec<(&'s str, &'s str)> {
    let Limits {
        folder,
        what,
        count,
        bytes,
    } = limits;
    let mut read = Vec::new();
    let mut total = 0;
    for (i, (file, text)) in files.iter().enumerate() {
        if i >= *count {
            problems.push(problem_at_top(
                file,
                format!("`{folder}/` holds more than the limit of {count} {what}; remove some"),
            ));
            break;
        }
        if text.len() > manifest::MAX_FILE_BYTES {
            problems.push(manifest::too_large(file, text.len() as u64));
            continue;
        }
        total += text.len();
        if total > *bytes {
            problems.push(problem_at_top(
                file,
                format!(
                    "the {what} together are over the limit of {bytes} bytes ({} MiB); make some smaller or remove some",
                    bytes >> 20
                ),
            ));
            break;
        }
        read.push((file.as_str(), text.as_str()));
    }
    read
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
            problems.push(problem_of(
                e,
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
            problems.push(problem_of(
                e,
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

/// A problem with endpoint `e` as a whole: at the top of its manifest, or for
/// a library's, at its include in `dynapi.yaml` (the file the project can
/// change), naming the library's manifest.
fn problem_of(e: &Endpoint, message: String) -> Problem {
    match &e.source {
        None => problem_at_top(&e.file, message),
        Some(library) => Problem {
            file: SETTINGS_FILE.to_string(),
            line: library.line,
            column: library.column,
            message: format!("`{}` from {}: {message}", e.name, e.file),
        },
    }
}

fn problem_at_top(file: &str, message: String) -> Problem {
    Problem {
        file: file.to_string(),
        line: 1,
        column: 1,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MAX_ARGS, MAX_ENUM, MAX_ENV, MAX_FILE_BYTES, MAX_PARAMS, MAX_WRITABLE};
    use serde_json::{json, Value};

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

    /// What building a registry of `manifests` (scripts all executable) refuses.
    fn refusal_of(manifests: Vec<(String, String)>) -> Vec<Problem> {
        let snapshot = Snapshot {
            manifests,
            ..Snapshot::default()
        };
        Registry::build("", &snapshot, &|_| FileKind::Executable).unwrap_err()
    }

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
        let problems = refusal_of(files);
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
        let problems = refusal_of(files);
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
}
