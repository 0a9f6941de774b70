//! Every built-in operation as the documents (OpenAPI, MCP) describe it: id,
//! route, texts, scope, and the request schemas derived from the types the routes
//! parse, so a field added to a request shows in the documents too. The
//! integration test `openapi::every_documented_operation_answers` calls each one.

use serde_json::{json, Value};

use super::endpoints::{AddEndpoint, CallQuery, RemoveQuery};
use super::files::{DeleteQuery, MoveFiles, PageQuery, PatchFile, PutFile, ReadQuery};
use super::history::{HistoryQuery, RevertRequest};
use super::jobs::Page;
use super::project::{ArchiveRequest, CombineRequest, SearchQuery};
use super::seed::{GitSync, RunScript};
use super::sql::{SchemaQuery, SqlRequest};
use crate::auth::Scope;
use crate::openapi::{requiring, run_answer_schema, schema_of, Operation};
use crate::registry::Method;

const FILE_PATH: (&str, &str) = (
    "path",
    "A file's path relative to the workspace root, with `/` (for example `src/main.rs`).",
);

/// An object answer with these properties (name, type, description).
/// An answer's schema from `(name, type, description)`; a type ending in `?`
/// may also be `null` (OpenAPI 3.1's `type: [t, "null"]`; the GPT profile
/// shows the plain type, `openapi::plain`).
fn answer(props: &[(&str, &str, &str)]) -> Value {
    let mut properties = serde_json::Map::new();
    for (name, ty, description) in props {
        let mut s = json!({"description": description});
        match ty.strip_suffix('?') {
            Some(ty) => s["type"] = json!([ty, "null"]),
            None if !ty.is_empty() => s["type"] = json!(ty),
            None => {}
        }
        if *ty == "array" {
            s["items"] = json!({});
        }
        properties.insert(name.to_string(), s);
    }
    json!({"type": "object", "properties": properties})
}

fn written() -> Value {
    answer(&[
        ("path", "string", "The file written."),
        (
            "etag",
            "string?",
            "Its new git blob id: send it as `if_match` next time (null once deleted).",
        ),
        (
            "changed",
            "boolean",
            "False when the file already was like this.",
        ),
        (
            "committed",
            "boolean",
            "False for paths `.gitignore` ignores, or when the change went to a pull request.",
        ),
        ("commit", "string", "The commit made."),
        (
            "pull_request",
            "string",
            "GitHub mode: the pull request the change waits in.",
        ),
    ])
}

fn job_view() -> Value {
    answer(&[
        ("id", "string", ""),
        ("endpoint", "string", ""),
        (
            "state",
            "string",
            "running, succeeded, failed, timed_out, cancelled, or lost (replicas: the one running it died)",
        ),
        ("exit_code", "integer", ""),
        (
            "output",
            "",
            "stdout from `offset`: text, or parsed JSON when a json endpoint's whole output fits",
        ),
        ("next_offset", "integer", "Where to read on."),
        ("more", "boolean", "More output is there or may come."),
        ("stderr", "string", "Its last 8 KB."),
        ("duration_ms", "integer", ""),
        (
            "error",
            "object",
            "Why it failed, when the daemon knows (timeout, bad output).",
        ),
    ])
}

/// The scope each built-in route needs, by method and path, taken from
/// `operations()`: the documents and the check read the same line, so a route
/// cannot need one scope and be documented with another.
pub struct Scopes(ByMethod<Option<Scope>>);

impl Scopes {
    fn new() -> Scopes {
        Scopes(ByMethod::new(|op| op.scope))
    }

    /// The documented scope of `method path`: `None` when no built-in
    /// operation is documented there (an endpoint's route, or nothing),
    /// `Some(None)` for a route that needs no token.
    pub fn of(method: &str, path: &str) -> Option<Option<Scope>> {
        static TABLE: std::sync::LazyLock<Scopes> = std::sync::LazyLock::new(Scopes::new);
        TABLE.0.at(method, path).copied()
    }
}

/// The template of the built-in route `method path` matches (`/files/{path}`
/// for `/files/a/b`), to label a request without its raw path.
pub fn template(method: &str, path: &str) -> Option<&'static str> {
    static TABLE: std::sync::LazyLock<ByMethod<&'static str>> =
        std::sync::LazyLock::new(|| ByMethod::new(|op| op.path));
    TABLE.at(method, path).copied()
}

/// A value for each built-in operation, found by method and path: one route
/// table per method, so a lookup is the path alone (this runs on every
/// request).
struct ByMethod<T>([matchit::Router<T>; 5]);

impl<T> ByMethod<T> {
    fn new(mut value: impl FnMut(&Operation) -> T) -> ByMethod<T> {
        let mut routers: [matchit::Router<T>; 5] = Default::default();
        for op in operations() {
            // `{path}` holds slashes: a catch-all for the router.
            let pattern = op.path.replace("{path}", "{*path}");
            let _ = routers[op.method as usize].insert(pattern, value(&op));
        }
        ByMethod(routers)
    }

    /// The value of the operation `method path` matches, if one does.
    fn at(&self, method: &str, path: &str) -> Option<&T> {
        let method = Method::parse(method)?;
        self.0[method as usize]
            .at(path)
            .ok()
            .map(|found| found.value)
    }
}

/// The built-in operations, in the order the documents list them.
pub fn operations() -> Vec<Operation> {
    let op = |id, method, path, summary, scope| Operation {
        id,
        method,
        path,
        summary,
        description: "",
        scope,
        path_params: &[],
        query: None,
        body: None,
        status: 200,
        also: None,
        answer: json!({"type": "object"}),
        consequential: false,
        gpt: true,
    };
    vec![
        Operation {
            description: "Folders and files under `path`, `depth` levels deep, sorted, 1,000 a page (`offset`).",
            query: Some(schema_of::<ReadQuery>()),
            answer: answer(&[("entries", "array", "{path, kind: file/dir/symlink, size, mode}"), ("truncated", "boolean", ""), ("next_offset", "integer", "")]),
            ..op("listFiles", Method::Get, "/files", "List a folder of the project", Some(Scope::Read))
        },
        Operation {
            description: "A page of a text file's lines (at most 60,000 bytes) with its etag; `offset`/`limit` in lines; `next_offset` when there is more. Binary files answer `binary: true` and a download link.",
            path_params: &[FILE_PATH],
            query: Some(schema_of::<PageQuery>()),
            answer: answer(&[("content", "string", "The lines."), ("etag", "string", "The git blob id."), ("total_lines", "integer", ""), ("next_offset", "integer", "Where the next page starts."), ("truncated", "boolean", "")]),
            ..op("readFile", Method::Get, "/files/{path}", "Read a file (a page of lines)", Some(Scope::Read))
        },
        Operation {
            description: "Creates or replaces a whole file as one commit. Send `if_match` (the etag you read) to avoid overwriting someone else's change. 201 when created.",
            path_params: &[FILE_PATH],
            body: Some(requiring(schema_of::<PutFile>(), &["content"])),
            status: 201,
            also: Some(200),
            answer: written(),
            consequential: true,
            ..op("writeFile", Method::Put, "/files/{path}", "Create or replace a file (one commit)", Some(Scope::Write))
        },
        Operation {
            description: "Exact-text edits, applied in order, all or none, as one commit. Each `old` must occur exactly once (else 409 naming the edit). Prefer this to rewriting large files.",
            path_params: &[FILE_PATH],
            body: Some(requiring(schema_of::<PatchFile>(), &["edits"])),
            answer: written(),
            consequential: true,
            ..op("editFile", Method::Patch, "/files/{path}", "Edit a file by exact text replacement (one commit)", Some(Scope::Write))
        },
        Operation {
            path_params: &[FILE_PATH],
            query: Some(schema_of::<DeleteQuery>()),
            answer: written(),
            consequential: true,
            ..op("deleteFile", Method::Delete, "/files/{path}", "Delete a file (one commit)", Some(Scope::Write))
        },
        Operation {
            body: Some(requiring(schema_of::<MoveFiles>(), &["from", "to"])),
            answer: answer(&[("from", "string", ""), ("to", "string", ""), ("files", "integer", "Files moved."), ("commit", "string", "")]),
            consequential: true,
            ..op("moveFiles", Method::Post, "/files/move", "Move or rename a file or folder (one commit)", Some(Scope::Write))
        },
        Operation {
            description: "Matches with file, line number and line, in path order; `.gitignore` honoured, binary files skipped. Page with `offset` = `next_offset`.",
            query: Some(requiring(schema_of::<SearchQuery>(), &["q"])),
            answer: answer(&[("matches", "array", "{file, line_number, line}"), ("truncated", "boolean", ""), ("next_offset", "integer", "")]),
            ..op("search", Method::Get, "/search", "Search the project's files for text", Some(Scope::Read))
        },
        Operation {
            description: "One text with a `==> path <==` header per file, in pages of 80,000 characters (`offset`), or written to `output` as one commit (201, with the file's `path`, `etag` and `commit`).",
            body: Some(schema_of::<CombineRequest>()),
            also: Some(201),
            answer: answer(&[("text", "string", "The combined text (this page)."), ("files", "array", ""), ("next_offset", "integer", "")]),
            consequential: true,
            ..op("combineFiles", Method::Post, "/combine", "Combine files into one text", Some(Scope::Read))
        },
        Operation {
            body: Some(requiring(schema_of::<ArchiveRequest>(), &["path"])),
            status: 201,
            answer: answer(&[("path", "string", "The archive."), ("size", "integer", ""), ("sha256", "string", ""), ("download", "string", "Where to download it.")]),
            consequential: true,
            ..op("archive", Method::Post, "/archive", "Build a zip or tar.gz archive of a folder", Some(Scope::Write))
        },
        Operation {
            path_params: &[FILE_PATH],
            answer: json!({"type": "string", "description": "The file's bytes."}),
            gpt: false,
            ..op("downloadFile", Method::Get, "/download/{path}", "Download a file's raw bytes", Some(Scope::Read))
        },
        Operation {
            query: Some(schema_of::<HistoryQuery>()),
            answer: answer(&[("commits", "array", "{commit, summary, message, author, time}, newest first")]),
            ..op("history", Method::Get, "/history", "Commits, newest first (of the repository or a path)", Some(Scope::Read))
        },
        Operation {
            description: "One new commit that puts back every file the commit changed; 409 when one changed again since.",
            body: Some(requiring(schema_of::<RevertRequest>(), &["commit"])),
            status: 201,
            answer: answer(&[("reverted", "string", ""), ("commit", "string", "The new commit."), ("files", "array", "")]),
            consequential: true,
            ..op("revert", Method::Post, "/revert", "Undo a commit with a new commit", Some(Scope::Admin))
        },
        Operation {
            description: "Runs one statement on the embedded SQLite database (or a database named in dynapi.yaml). Read-only unless the token may write. Rows are arrays in `columns` order.",
            body: Some(requiring(schema_of::<SqlRequest>(), &["query"])),
            answer: answer(&[("columns", "array", "Column names."), ("rows", "array", "Rows, each an array of values."), ("row_count", "integer", ""), ("truncated", "boolean", "")]),
            consequential: true,
            ..op("runSql", Method::Post, "/sql", "Run a SQL statement", Some(Scope::Read))
        },
        Operation {
            query: Some(schema_of::<SchemaQuery>()),
            answer: answer(&[("tables", "array", "{name, columns: [{name, type}]}")]),
            ..op("sqlSchema", Method::Get, "/sql/schema", "Tables and columns of a database", Some(Scope::Read))
        },
        Operation {
            description: "Every endpoint: name, method, path, description and parameter schema. Call one with callEndpoint.",
            answer: answer(&[("commit", "string", "The commit served."), ("endpoints", "array", "{name, method, path, description, params}")]),
            ..op("listEndpoints", Method::Get, "/endpoints", "List the project's endpoints", Some(Scope::Read))
        },
        Operation {
            description: "Validates a manifest (422 with every problem), commits it with its script in one commit, and answers when the endpoint is live.",
            body: Some(requiring(schema_of::<AddEndpoint>(), &["manifest"])),
            status: 201,
            also: Some(200),
            answer: answer(&[("endpoint", "object", "The endpoint as listed."), ("commit", "string", ""), ("live", "boolean", ""), ("pull_request", "string", "GitHub mode.")]),
            consequential: true,
            ..op("addEndpoint", Method::Post, "/endpoints", "Add or replace an endpoint (manifest and script)", Some(Scope::Write))
        },
        Operation {
            path_params: &[("name", "The endpoint's name.")],
            query: Some(schema_of::<RemoveQuery>()),
            answer: answer(&[("deleted", "string", ""), ("commit", "string", "")]),
            consequential: true,
            ..op("removeEndpoint", Method::Delete, "/endpoints/{name}", "Remove an endpoint (one commit)", Some(Scope::Write))
        },
        Operation {
            description: "Runs the endpoint `name` with a JSON object of its parameters (see listEndpoints). Reaches endpoints added after this schema was imported. Long runs answer 202 with a job_id: read it with getJob.",
            path_params: &[("name", "The endpoint's name, from listEndpoints.")],
            query: Some(schema_of::<CallQuery>()),
            also: Some(202),
            body: Some(json!({"type": "object", "description": "The endpoint's parameters by name.", "properties": {}, "additionalProperties": true})),
            answer: run_answer_schema(),
            consequential: true,
            ..op("callEndpoint", Method::Post, "/call/{name}", "Call any endpoint by name", Some(Scope::Run))
        },
        Operation {
            description: "A long endpoint run (a 202 answer's job_id): its state, exit code, and output from `offset` on. Call again with `offset` = `next_offset` while `more` is true. A job belongs to the token that started it (the `run` scope it needed reads it); `admin` reads every job.",
            path_params: &[("id", "The job id from a 202 answer.")],
            query: Some(schema_of::<Page>()),
            answer: job_view(),
            ..op("getJob", Method::Get, "/jobs/{id}", "Read a long run's state and output", Some(Scope::Run))
        },
        Operation {
            description: "Stops a running job: its script and every process it started are killed.",
            path_params: &[("id", "The job id from a 202 answer.")],
            answer: job_view(),
            consequential: true,
            ..op("cancelJob", Method::Delete, "/jobs/{id}", "Stop a long run", Some(Scope::Run))
        },
        Operation {
            answer: answer(&[("scripts", "array", "File names in scripts/.")]),
            ..op("listScripts", Method::Get, "/list-scripts", "List the scripts", Some(Scope::Read))
        },
        Operation {
            body: Some(schema_of::<RunScript>()),
            answer: answer(&[("success", "boolean", ""), ("stdout", "string", ""), ("stderr", "string", ""), ("return_code", "integer", "")]),
            consequential: true,
            ..op("runScript", Method::Post, "/run-script", "Run a script from scripts/", Some(Scope::Run))
        },
        Operation {
            description: "Commits whatever changed in the working tree (files scripts wrote), `.gitignore` honoured.",
            body: Some(schema_of::<GitSync>()),
            answer: answer(&[("message", "string", ""), ("commit", "string", ""), ("committed", "boolean", "")]),
            consequential: true,
            ..op("gitSync", Method::Post, "/git-sync", "Commit files changed in the workspace", Some(Scope::Write))
        },
        Operation {
            answer: answer(&[("commit", "string", "The commit served."), ("last_sync", "object", ""), ("last_error", "object?", "With the problems of an invalid commit; null when the last sync served."), ("counts", "object", "")]),
            ..op("status", Method::Get, "/status", "What the daemon serves, and what went wrong", Some(Scope::Read))
        },
        Operation {
            answer: answer(&[("commit", "string", ""), ("served", "string", ""), ("problems", "array", "")]),
            consequential: true,
            ..op("sync", Method::Post, "/sync", "Fetch and reload now", Some(Scope::Admin))
        },
        Operation {
            answer: answer(&[("message", "string", ""), ("version", "string", ""), ("commit", "string", "")]),
            gpt: false,
            ..op("root", Method::Get, "/", "Who is answering", None)
        },
        Operation {
            description: "Prometheus metrics in the OpenMetrics text format: requests by route and status, latencies, script runs, syncs, the commit served.",
            answer: json!({"type": "string", "description": "OpenMetrics text."}),
            gpt: false,
            ..op("metrics", Method::Get, "/metrics", "Prometheus metrics", Some(Scope::Read))
        },
        Operation {
            answer: answer(&[("status", "string", "")]),
            gpt: false,
            ..op("healthz", Method::Get, "/healthz", "Liveness", None)
        },
        Operation {
            answer: answer(&[("ready", "boolean", ""), ("commit", "string", "")]),
            gpt: false,
            ..op("readyz", Method::Get, "/readyz", "Readiness: a registry is loaded", None)
        },
        Operation {
            query: Some(json!({"type": "object", "properties": {"profile": {"type": "string", "enum": ["full", "gpt"], "description": "`gpt` fits GPT Actions' limits."}}})),
            answer: json!({"type": "object", "description": "An OpenAPI 3.1 document."}),
            gpt: false,
            ..op("openapi", Method::Get, "/openapi.json", "This document", None)
        },
    ]
}
