//! The manifest check: `Check` reads one parsed manifest (or `dynapi.yaml`)
//! and reports every problem at the value it rejects, `file:line:column`; what
//! it returns is valid by construction. The rules for names, paths and routes
//! (`is_name`, `is_plain_relative_path`, `RESERVED_SEGMENTS`) live here too.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::auth::Scope;
use crate::manifest::{
    Locator, Problem, RawManifest, RawParam, MAX_ARGS, MAX_ENUM, MAX_ENV, MAX_PARAMS,
    MAX_PATH_PARAMS, MAX_WRITABLE,
};

use super::bind::{is_param_name, parse_template, ArgPart, Param, ParamKind};
use super::{Endpoint, FileKind, Method, Output, Sandbox, Settings, SETTINGS_FILE};

/// The largest `output_schema`, as JSON (it is sent with every tools/list).
const MAX_OUTPUT_SCHEMA: usize = 16 * 1024;

/// Longest a script may be allowed to run (DESIGN.md section 3).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

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

/// Runs of one endpoint at once unless its manifest says `concurrency:`.
pub const DEFAULT_CONCURRENCY: usize = 8;
const MAX_CONCURRENCY: u64 = 256;

/// `[a-z0-9-]{1,64}`: endpoint and token names.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
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
pub(super) fn suggest_name(s: &str) -> String {
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
pub(super) struct Check<'a> {
    pub(super) locator: &'a Locator,
    pub(super) problems: &'a mut Vec<Problem>,
}

impl Check<'_> {
    /// A problem at the value of `key` (dotted). A value reading already refused
    /// (of the wrong type) is not reported twice.
    pub(super) fn at(&mut self, key: &str, message: impl Into<String>) {
        if !self.locator.reported(key) {
            self.problems.push(self.locator.problem(key, message));
        }
    }

    /// A problem with the name a key gives (a parameter, a variable), at the key.
    pub(super) fn at_key(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(self.locator.key_problem(key, message));
    }

    pub(super) fn duration(&mut self, key: &str, text: &str) -> Option<Duration> {
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

    /// `writable` paths (of a manifest's `sandbox:`, or an include's grant at
    /// `key`): inside the workspace, or `.`, and never `dynapi.yaml`.
    pub(super) fn writable_paths(&mut self, key: &str, paths: &[String]) {
        for (i, w) in paths.iter().enumerate() {
            if w != "." && !is_plain_relative_path(w) {
                self.at(
                    &format!("{key}.{i}"),
                    format!(
                        "`{w}` must be a path inside the workspace (relative, no `..`), or `.`"
                    ),
                );
            } else if w == SETTINGS_FILE {
                self.at(
                    &format!("{key}.{i}"),
                    format!(
                        "scripts may not write `{SETTINGS_FILE}`; only an admin token changes it"
                    ),
                );
            }
        }
    }

    pub(super) fn endpoint(
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
        let output_schema = raw
            .output_schema
            .as_ref()
            .and_then(|schema| self.output_schema(schema, output));
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
        self.writable_paths("sandbox.writable", &writable);
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
            output_schema,
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
            source: None,
        })
    }

    /// `output_schema`: a JSON Schema object of `type: object` (MCP's
    /// `outputSchema`: a tool's structured result is an object), only with
    /// `output: json`, at most `MAX_OUTPUT_SCHEMA` bytes as JSON; its
    /// `properties` a mapping and its `required` names among them.
    fn output_schema(&mut self, schema: &Value, output: Output) -> Option<Value> {
        let key = "output_schema";
        let before = self.problems.len();
        if output != Output::Json {
            self.at(
                key,
                "`output_schema` describes JSON output: add `output: json`",
            );
        }
        let Some(object) = schema.as_object() else {
            self.at(key, "`output_schema` is a JSON Schema: a mapping");
            return None;
        };
        if object.get("type") != Some(&Value::from("object")) {
            self.at(
                key,
                "`output_schema` needs `type: object`: a tool's structured result is an object",
            );
        }
        let properties = match object.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => {
                self.at(
                    key,
                    "`output_schema.properties` is a mapping of names to schemas",
                );
                None
            }
        };
        match object.get("required") {
            None => {}
            Some(Value::Array(names)) => {
                for name in names {
                    let known = name
                        .as_str()
                        .is_some_and(|n| properties.is_some_and(|p| p.contains_key(n)));
                    if !known {
                        self.at(
                            key,
                            format!("`output_schema.required` names {name}, which `properties` does not have"),
                        );
                    }
                }
            }
            Some(_) => self.at(key, "`output_schema.required` is a list of property names"),
        }
        if serde_json::to_vec(schema).map_or(0, |b| b.len()) > MAX_OUTPUT_SCHEMA {
            self.at(
                key,
                format!("`output_schema` is larger than {MAX_OUTPUT_SCHEMA} bytes as JSON"),
            );
        }
        (self.problems.len() == before).then(|| schema.clone())
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
