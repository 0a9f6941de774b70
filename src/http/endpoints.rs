//! Endpoints: `GET /endpoints`, `POST /endpoints`, `DELETE /endpoints/{name}`,
//! `POST /call/{name}`, and every endpoint at its own method and path (the last
//! route tried, matched against the registry the request started with).
//!
//! An endpoint's answer (documented in README.md, "Calling an endpoint"):
//! - the script exited 0: 200 `{"ok": true, "exit_code": 0, "output", "stderr",
//!   "truncated", "duration_ms"}`; `output` is stdout as text, or parsed when the
//!   manifest says `output: json` (502 `bad_output` if it is not JSON);
//! - it exited non-zero or was killed by a signal: 200 with `"ok": false`, the
//!   exit code (or `signal`), and `output` as text: the run happened, and its
//!   failure is part of the result;
//! - it ran past its timeout: 504 `timeout`, its process group killed, with the
//!   output so far in the error;
//! - it is still running after `job_after` (default 40 s), or the call asked for
//!   it (`?async=true`, or `async: true` in the manifest): 202 `{"job_id", "state",
//!   "url", "message"}` with `Location: /jobs/{id}`; the run goes on (`http/jobs.rs`).

use std::sync::Arc;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use warp::http::StatusCode;
use warp::path::FullPath;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::run::{answer, policy};
use super::{
    auth, json_request, parse_json, parse_query, query_request, raw_query, respond, with_app,
    with_body, ApiError, Auth, Opened,
};
use crate::auth::Caller;
use crate::exec::{Job, Tag};
use crate::jobs;
use crate::manifest;
use crate::registry::{
    self, Endpoint, FileKind, Method, Registry, Snapshot, MANIFEST_DIR, RESERVED_SEGMENTS,
};
use crate::source::change::{Applied, Op, Validation};
use crate::source::library::Libraries;
use crate::source::writes::{message_or, Policy};
use crate::App;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    list(app.clone())
        .or(add(app.clone()))
        .unify()
        .or(delete(app.clone()))
        .unify()
        .or(call(app.clone()))
        .unify()
        .or(dynamic(app))
        .unify()
}

/// What `GET /endpoints` says of one endpoint.
fn describe(e: &Endpoint) -> Value {
    serde_json::to_value(Description(e)).unwrap_or(Value::Null)
}

/// One endpoint as `GET /endpoints` shows it, serialized straight from the
/// registry: with 1,000 endpoints, no tree of JSON values is built first.
struct Description<'a>(&'a Endpoint);

impl serde::Serialize for Description<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = self.0;
        let mut map = s.serialize_map(Some(13))?;
        map.serialize_entry("name", &e.name)?;
        map.serialize_entry("description", &e.description)?;
        map.serialize_entry("method", &e.method)?;
        map.serialize_entry("path", &e.path)?;
        map.serialize_entry("scope", e.scope.as_str())?;
        map.serialize_entry("consequential", &e.consequential)?;
        map.serialize_entry("async", &e.is_async)?;
        map.serialize_entry("output", &e.output)?;
        map.serialize_entry("timeout_ms", &(e.timeout.as_millis() as u64))?;
        map.serialize_entry("file", &e.file)?;
        map.serialize_entry("script", &e.script)?;
        map.serialize_entry("params", &e.params_schema())?;
        map.serialize_entry("source", &e.source_json())?;
        map.end()
    }
}

/// The answer of `GET /endpoints`: the commit and each endpoint.
struct Listing<'a>(&'a crate::registry::Registry);

impl serde::Serialize for Listing<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("commit", &self.0.commit)?;
        map.serialize_entry(
            "endpoints",
            &Each(self.0.endpoints().iter().map(|e| Description(e))),
        )?;
        map.end()
    }
}

/// A sequence serialized from an iterator, one element at a time.
struct Each<I>(I);

impl<I, T> serde::Serialize for Each<I>
where
    I: Iterator<Item = T> + Clone,
    T: serde::Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

/// GET /endpoints — every endpoint of the served commit, with its parameter schema.
fn list(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("endpoints")
        .and(warp::get())
        .and(auth(app.clone()))
        .and(with_app(app))
        .map(|auth: Auth, app: Arc<App>| {
            respond(auth.check().map(|_| {
                let registry = app.syncer.registry();
                warp::reply::json(&Listing(&registry))
            }))
        })
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AddEndpoint {
    /// The manifest, as YAML text (see the README's manifest format): name, description, method, path, script, args, params.
    #[schemars(with = "Option<String>")]
    manifest: Option<Value>,
    /// The script the manifest runs, written in the same commit (made executable).
    script: Option<ScriptFile>,
    /// The commit message (default `Add endpoint <name>`).
    message: Option<String>,
    /// `commit` (default) or `pull_request` (GitHub mode).
    mode: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ScriptFile {
    /// Where the script goes, the manifest's `script` (for example `scripts/hello.sh`).
    path: String,
    /// The script's text, starting with a `#!` line.
    content: String,
}

/// POST /endpoints — validate, commit manifest (and script, mode 100755) as ONE
/// commit, and answer once the route is live. 422 with every problem, nothing
/// committed, when the result would not be servable.
fn add(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("endpoints")
        .and(warp::post())
        .and(json_request(app))
        .then(|app: Arc<App>, opened: Opened<AddEndpoint>| async move {
            respond(add_endpoint(app, opened).await)
        })
}

async fn add_endpoint(app: Arc<App>, opened: Opened<AddEndpoint>) -> Result<Response, ApiError> {
    let (caller, req) = opened?;
    let delivery = app
        .writes
        .delivery(req.mode.as_deref(), Policy::Endpoints)?;
    let text = match req.manifest {
        Some(Value::String(s)) => s,
        Some(v @ Value::Object(_)) => serde_norway::to_string(&v).map_err(|e| {
            ApiError::bad_request(format!("the manifest cannot be written as YAML: {e}"))
        })?,
        _ => {
            return Err(ApiError::bad_request(
                "`manifest` is required: the manifest as a YAML string or a JSON object",
            ))
        }
    };
    // Read the manifest on its own first: it names the file it will be written to.
    // What cannot be read is reported by the build below, with every other problem.
    let raw = manifest::parse_manifest(&format!("{MANIFEST_DIR}/new-endpoint.yaml"), &text);
    let draft_file = match raw.value.name.as_deref() {
        Some(n) if registry::is_name(n) => format!("{MANIFEST_DIR}/{n}.yaml"),
        _ => format!("{MANIFEST_DIR}/new-endpoint.yaml"),
    };
    let draft = Snapshot {
        manifests: vec![(draft_file.clone(), text.clone())],
        ..Snapshot::default()
    };
    // The script sent along will be there; any other is looked up in the working
    // tree (the served branch's files; a stat each), so a missing script is named
    // with the manifest's other problems. The writer's check on the commit's own
    // tree stays the one that decides.
    let sent = req.script.as_ref().map(|s| s.path.as_str());
    let kind = |path: &str| {
        use std::os::unix::fs::PermissionsExt;
        if sent == Some(path) {
            return FileKind::Executable;
        }
        match app
            .workspace
            .resolve(path)
            .map(|p| app.workspace.metadata(&p))
        {
            Ok(Ok(m)) if !m.is_file() => FileKind::NotAFile,
            Ok(Ok(m)) if m.permissions().mode() & 0o111 != 0 => FileKind::Executable,
            Ok(Ok(_)) => FileKind::NotExecutable,
            _ => FileKind::Missing,
        }
    };
    if let Err(problems) = Registry::build("", &draft, &kind) {
        return Err(ApiError::invalid_manifests(&problems));
    }
    let name = raw.value.name.unwrap_or_default();
    let served = app.syncer.registry();
    if let Some(library) = served.get(&name).and_then(|e| e.source.as_ref()) {
        return Err(from_library(&name, library));
    }
    let existing = served.get(&name).map(|e| e.file.clone());
    let file = existing
        .clone()
        .unwrap_or_else(|| format!("{MANIFEST_DIR}/{name}.yaml"));

    let mut ops = vec![Op::Write {
        path: file.clone(),
        contents: text.into_bytes(),
        executable: Some(false),
        if_match: None,
    }];
    if let Some(script) = req.script {
        let declared = raw.value.script.unwrap_or_default();
        if script.path != declared {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_manifest",
                format!("the manifest runs `{declared}` but the script sent is `{}`; make them the same path", script.path),
            ));
        }
        if !registry::is_plain_relative_path(&script.path) {
            return Err(ApiError::bad_request(format!(
                "`{}` is not a path inside the repository",
                script.path
            )));
        }
        ops.push(Op::Write {
            path: script.path,
            contents: script.content.into_bytes(),
            executable: Some(true),
            if_match: None,
        });
    }
    let verb = if existing.is_some() { "Update" } else { "Add" };
    let message = message_or(req.message, || format!("{verb} endpoint {name}"));
    let served = app
        .writes
        .serve::<ApiError>(&caller, message, ops, Validation::Strict, delivery)
        .await?;
    let (committed, report) = match served {
        (applied, Some(report)) => (applied, report),
        (applied, None) => return Ok(proposed(&applied)),
    };
    let registry = app.syncer.registry();
    let endpoint = registry.get(&name).filter(|e| e.file == file);
    let status = if existing.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(warp::reply::with_status(
        warp::reply::json(&json!({
            "endpoint": endpoint.map(|e| describe(e)),
            "commit": committed.commit,
            "served": report.served,
            "live": endpoint.is_some(),
        })),
        status,
    )
    .into_response())
}

/// The refusal to change or remove an endpoint a library serves: it is
/// changed in the library, or dropped from `include:`.
fn from_library(name: &str, library: &crate::registry::Library) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "library_endpoint",
        format!(
            "`{name}` comes from the library {} at {} (commit {}); change it there, or leave it out of `include:` in dynapi.yaml",
            library.repository, library.git_ref, library.commit
        ),
    )
}

/// DELETE /endpoints/{name} — one commit removing the manifest, and its script when
/// no other endpoint uses it.
fn delete(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("endpoints" / String)
        .and(warp::delete())
        .and(query_request(app))
        .then(
            |name: String, app: Arc<App>, opened: Opened<RemoveQuery>| async move {
                respond(
                    async {
                        let (caller, q) = opened?;
                        let delivery = app.writes.delivery(q.mode.as_deref(), Policy::Endpoints)?;
                        let registry = app.syncer.registry();
                        let endpoint = registry.get(&name).ok_or_else(|| {
                            ApiError::not_found(format!(
                                "no endpoint named `{name}`; GET /endpoints lists them"
                            ))
                        })?;
                        if let Some(library) = &endpoint.source {
                            return Err(from_library(&name, library));
                        }
                        let mut ops = vec![Op::Delete {
                            path: endpoint.file.clone(),
                            if_match: None,
                        }];
                        let shared = registry.endpoints().iter().any(|e| {
                            e.name != name && e.source.is_none() && e.script == endpoint.script
                        });
                        if !shared {
                            ops.push(Op::Delete {
                                path: endpoint.script.clone(),
                                if_match: None,
                            });
                        }
                        let message = message_or(q.message, || format!("Remove endpoint {name}"));
                        let served = app
                            .writes
                            .serve::<ApiError>(
                                &caller,
                                message,
                                ops,
                                Validation::NoNewProblems,
                                delivery,
                            )
                            .await?;
                        let (committed, report) = match served {
                            (applied, Some(report)) => (applied, report),
                            (applied, None) => return Ok(proposed(&applied)),
                        };
                        Ok(warp::reply::json(&json!({
                            "deleted": name,
                            "script_deleted": !shared,
                            "commit": committed.commit,
                            "served": report.served,
                        }))
                        .into_response())
                    }
                    .await,
                )
            },
        )
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RemoveQuery {
    /// The commit message (default `Remove endpoint <name>`).
    message: Option<String>,
    /// `commit` (default) or `pull_request` (GitHub mode).
    mode: Option<String>,
}

/// The 202 answer to an endpoint change that went to a pull request: where
/// it waits.
fn proposed(applied: &Applied) -> Response {
    warp::reply::with_status(
        warp::reply::json(&json!({
            "pull_request": applied.pull_request,
            "commit": applied.commit,
            "live": false,
            "message": "the change waits in a pull request; it is served once merged",
        })),
        StatusCode::ACCEPTED,
    )
    .into_response()
}

/// POST /call/{name} — call any endpoint by name with a JSON object of parameters,
/// so an assistant reaches endpoints added after it imported its schema.
fn call(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("call" / String)
        .and(warp::post())
        .and(raw_query())
        .and(with_body(app))
        .then(
            |name: String, query: String, auth: Auth, app: Arc<App>, body| async move {
                respond(
                    async {
                        let registry = app.syncer.registry();
                        let endpoint = registry.get(&name).cloned().ok_or_else(|| {
                            ApiError::not_found(format!(
                                "no endpoint named `{name}`; GET /endpoints lists them"
                            ))
                        })?;
                        let caller = auth.require_all(endpoint.needs())?;
                        let run_async = parse_query::<CallQuery>(&query)?.is_async;
                        let params: Map<String, Value> = match parse_json::<Option<Value>>(body)? {
                            None => Map::new(),
                            Some(Value::Object(m)) => m,
                            Some(_) => {
                                return Err(ApiError::bad_request(
                                    "the body must be a JSON object of parameters",
                                ))
                            }
                        };
                        invoke(&app, &registry, &endpoint, params, &caller, run_async).await
                    }
                    .await,
                )
            },
        )
}

/// The query of `POST /call/{name}`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CallQuery {
    /// `true`: answer 202 with a job id at once instead of waiting for the script
    /// (`GET /jobs/{id}` reads its output). A run still going after 40 seconds
    /// becomes a job anyway.
    #[serde(default, rename = "async")]
    is_async: bool,
}

/// Every endpoint at its own method and path: the last route, tried after all
/// built-in routes.
fn dynamic(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(raw_query())
        .and(with_body(app))
        .then(
            |method: warp::http::Method,
             path: FullPath,
             query: String,
             auth: Auth,
             app: Arc<App>,
             body| async move {
                respond(dispatch(method, path, query, auth, app, body).await)
            },
        )
}

async fn dispatch(
    method: warp::http::Method,
    path: FullPath,
    query: String,
    auth: Auth,
    app: Arc<App>,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    // A built-in route's first segment never reaches an endpoint, not even
    // one whose path starts with a `{placeholder}`: `GET /jobs` is the API's
    // (405 here, as the method did not match it), never `/{slug}`'s.
    let first = path
        .as_str()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if RESERVED_SEGMENTS.contains(&first) {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not a method of {}", path.as_str()),
        ));
    }
    let registry = app.syncer.registry();
    let matched = Method::parse(method.as_str()).and_then(|m| registry.route(m, path.as_str()));
    let Some(matched) = matched else {
        return Err(ApiError::not_found(format!(
            "no endpoint at {method} {}; GET /endpoints lists them",
            path.as_str()
        )));
    };
    let endpoint = matched.endpoint;
    let caller = auth.require_all(endpoint.needs())?;

    let mut params = Map::new();
    let mut put = |key: String, value: Value| -> Result<(), ApiError> {
        if params.contains_key(&key) {
            return Err(ApiError::bad_request(format!(
                "parameter `{key}` is given twice (path, query or body)"
            ))
            .with("param", json!(key)));
        }
        params.insert(key, value);
        Ok(())
    };
    for (key, raw) in matched.path_params {
        let value = percent_encoding::percent_decode_str(&raw)
            .decode_utf8()
            .map_err(|_| {
                ApiError::bad_request(format!("the path value of `{key}` is not UTF-8"))
            })?;
        put(key, Value::String(value.into_owned()))?;
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?;
    let mut from_query: Map<String, Value> = Map::new();
    for (key, value) in pairs {
        match from_query.get_mut(&key) {
            Some(Value::Array(items)) => items.push(Value::String(value)),
            Some(single) => *single = Value::Array(vec![single.take(), Value::String(value)]),
            None => {
                from_query.insert(key, Value::String(value));
            }
        }
    }
    // `?async=` is the daemon's, unless the endpoint has a parameter of that name.
    let mut run_async = false;
    if !endpoint.params.iter().any(|p| p.name == ASYNC) {
        if let Some(value) = from_query.remove(ASYNC) {
            run_async = match value.as_str() {
                Some("true" | "1") => true,
                Some("false" | "0") => false,
                _ => return Err(ApiError::bad_request("`async` is `true` or `false`, once")),
            };
        }
    }
    for (key, value) in from_query {
        put(key, value)?;
    }
    match parse_json::<Option<Value>>(body)? {
        None => {}
        Some(Value::Object(m)) => {
            for (key, value) in m {
                put(key, value)?;
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "the body must be a JSON object of parameters",
            ))
        }
    }
    invoke(&app, &registry, &endpoint, params, &caller, run_async).await
}

/// Cancels a synchronous run whose caller went away (see `invoke`).
struct CancelOnDrop(Option<Arc<jobs::Job>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(job) = self.0.take() {
            tracing::info!(job = %job.id, endpoint = %job.endpoint, "the caller went away; stopping its run");
            job.live().cancel();
        }
    }
}

/// The query parameter that makes a call a job.
const ASYNC: &str = "async";

/// Binds parameters and starts the script. Unless the call is asynchronous (the
/// manifest's `async: true` or `?async=true`), waits for its end and answers it
/// (see the module doc); a run still going after `job_after`, or an asynchronous
/// one, answers 202 with its job.
async fn invoke(
    app: &App,
    registry: &Registry,
    endpoint: &Endpoint,
    params: Map<String, Value>,
    caller: &Caller,
    run_async: bool,
) -> Result<Response, ApiError> {
    let invocation = endpoint.bind(params).map_err(|e| {
        let mut err = if e.too_large {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.message)
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_param", e.message)
        };
        if let Some(p) = e.param {
            err = err.with("param", json!(p));
        }
        err
    })?;
    // A library's script runs from its read-only checkout (the sync made it
    // before serving the registry); the project's from the workspace.
    let program = match &endpoint.source {
        None => app.workspace.resolve(&endpoint.script)?,
        Some(library) => {
            Libraries::checkout_dir(app.repo.git_dir(), library).join(&endpoint.script)
        }
    };
    let mut env = invocation.env;
    env.extend(endpoint.env.iter().cloned());
    let running = app
        .exec
        .start(Job {
            tag: Tag {
                token: caller.token_name.clone(),
                name: endpoint.name.clone(),
                commit: registry.commit.clone(),
                library: endpoint
                    .source
                    .as_ref()
                    .map(|l| format!("{}@{}", l.repository, l.commit)),
            },
            program,
            args: invocation.args,
            env,
            stdin: invocation.stdin,
            cwd: app.workspace.root().to_path_buf(),
            timeout: endpoint.timeout,
            sandbox: policy(app, registry.settings.sandbox, &endpoint.sandbox)?,
            concurrency: Some((endpoint.name.clone(), endpoint.concurrency)),
        })
        .await?;
    let job = jobs::Job::follow(endpoint, &caller.holder.key(), running);
    let run_async = run_async || endpoint.is_async;
    if !run_async {
        // A caller that hangs up before the answer drops this future: the run
        // is stopped then, rather than holding its slots to its time limit
        // for an answer nobody reads.
        let abandoned = CancelOnDrop(Some(job.clone()));
        let end = job.wait(app.config.job_after).await;
        abandoned.disarm();
        if let Some(end) = end {
            return answer(&job, &end.result).map(|a| warp::reply::json(&a).into_response());
        }
    }
    app.jobs.insert(job.clone(), super::jobs::describe).await;
    let message = if run_async {
        format!(
            "`{}` runs as a job; GET /jobs/{} reads its state and output, DELETE /jobs/{} stops it",
            job.endpoint, job.id, job.id
        )
    } else {
        format!(
            "`{}` is still running after {}; it goes on as a job: GET /jobs/{} reads its state and output, DELETE /jobs/{} stops it",
            job.endpoint,
            humantime::format_duration(app.config.job_after),
            job.id,
            job.id
        )
    };
    let location = format!("/jobs/{}", job.id);
    let body = json!({
        "job_id": job.id,
        "state": "running",
        "url": location,
        "message": message,
    });
    Ok(warp::reply::with_header(
        warp::reply::with_status(warp::reply::json(&body), StatusCode::ACCEPTED),
        "location",
        location,
    )
    .into_response())
}
