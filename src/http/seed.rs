//! The seed-compatible routes, kept exactly as the original design had them:
//! `GET /list-scripts`, `POST /run-script`, `POST /git-sync`.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::{auth, json_request, respond, run, with_app, ApiError, Auth, Opened};
use crate::auth::{Scope, Scopes};
use crate::exec::{Exit, Job, Tag};
use crate::registry::{self, Endpoint, Registry};
use crate::source::writes::message_or;
use crate::App;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    list_scripts(app.clone())
        .or(run_script(app.clone()))
        .unify()
        .or(git_sync(app))
        .unify()
}

/// GET /list-scripts — `{"scripts": [...]}`: the files in the workspace's `scripts/`.
fn list_scripts(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("list-scripts")
        .and(warp::get())
        .and(auth(app.clone()))
        .and(with_app(app))
        .map(|auth: Auth, app: Arc<App>| {
            respond(auth.check().and_then(|_| {
                let dir = app.workspace.resolve("scripts")?;
                let scripts = app.workspace.file_names(&dir).unwrap_or_default();
                Ok(warp::reply::json(&json!({ "scripts": scripts })))
            }))
        })
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RunScript {
    /// A file name in `scripts/` (see GET /list-scripts).
    script_name: String,
    /// Arguments passed to the script, as they are (no shell).
    #[serde(default)]
    args: Vec<String>,
}

/// POST /run-script — `{"script_name", "args"}` to
/// `{"success", "stdout", "stderr", "return_code"}` (plus `truncated`, `timed_out`).
/// A non-zero exit is a 200 with `success: false`, as in the seed.
fn run_script(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("run-script")
        .and(warp::post())
        .and(json_request(app))
        .then(|app: Arc<App>, opened: Opened<RunScript>| async move {
            respond(
                async {
                    let (caller, req) = opened?;
                    if req.script_name.is_empty() {
                        return Err(ApiError::bad_request(
                            "`script_name` is required; GET /list-scripts lists them",
                        ));
                    }
                    if req.args.iter().any(|a| a.contains('\0')) {
                        return Err(ApiError::bad_request(
                            "arguments cannot contain NUL characters",
                        ));
                    }
                    let program = app
                        .workspace
                        .resolve(&format!("scripts/{}", req.script_name))?;
                    if !program.is_file() {
                        return Err(ApiError::not_found(format!(
                            "no script `{}` in scripts/; GET /list-scripts lists them",
                            req.script_name
                        )));
                    }
                    let registry = app.syncer.registry();
                    let rules = rules_for(&app, &registry, &program, &req.script_name)?;
                    super::require_all(&caller, rules.needs)?;
                    let (args, env, stdin) = match &rules.endpoint {
                        Some(endpoint) => bind_positional(endpoint, &req.script_name, req.args)?,
                        None => {
                            if let Some(dashed) = req.args.iter().find(|a| a.starts_with('-')) {
                                return Err(ApiError::bad_request(format!(
                                    "the argument `{dashed}` begins with `-`, which a script would take for an option; give the script an endpoint whose parameter says `allow_leading_dash: true`"
                                )));
                            }
                            (req.args, Vec::new(), Vec::new())
                        }
                    };
                    let finished = app
                        .exec
                        .run(Job {
                            tag: Tag {
                                token: caller.token_name.clone(),
                                name: rules.name,
                                commit: registry.commit.clone(),
                                library: None,
                            },
                            program,
                            args,
                            env,
                            stdin,
                            cwd: app.workspace.root().to_path_buf(),
                            timeout: rules.timeout,
                            sandbox: run::policy(
                                &app,
                                registry.settings.sandbox,
                                &rules.sandbox,
                            )?,
                            concurrency: rules.concurrency,
                        })
                        .await?;
                    let return_code = match finished.exit {
                        Exit::Code(c) => c,
                        Exit::Signal(s) => 128 + s,
                        Exit::TimedOut => 124,
                    };
                    Ok(warp::reply::json(&json!({
                        "success": finished.exit == Exit::Code(0),
                        "stdout": String::from_utf8_lossy(&finished.stdout),
                        "stderr": String::from_utf8_lossy(&finished.stderr),
                        "return_code": return_code,
                        "truncated": finished.stdout_truncated || finished.stderr_truncated,
                        "timed_out": finished.exit == Exit::TimedOut,
                    })))
                }
                .await,
            )
        })
}

/// The rules a script runs under through `POST /run-script`.
struct Rules {
    /// What the run is called in the audit log, metrics and jobs.
    name: String,
    needs: Scopes,
    sandbox: registry::Sandbox,
    timeout: std::time::Duration,
    concurrency: Option<(String, usize)>,
    /// The endpoint that serves the script, whose parameters the arguments fill.
    endpoint: Option<Arc<Endpoint>>,
}

/// Argv, environment and stdin for a served script run through
/// `/run-script`: the arguments fill the endpoint's parameters in the order its
/// manifest's `args` names them, and are checked as a call would check them
/// (types, patterns, a leading `-`). A manifest that fixes text of its own in
/// `args` cannot be filled this way: it is called with `POST /call/{name}`.
type Bound = (Vec<String>, Vec<(String, String)>, Vec<u8>);

fn bind_positional(
    endpoint: &Endpoint,
    script: &str,
    given: Vec<String>,
) -> Result<Bound, ApiError> {
    let call = || format!("POST /call/{}", endpoint.name);
    let Some(names) = endpoint.positional() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "`{script}` is served by the endpoint `{}`, whose manifest sets its arguments; call it with {} and its parameters",
                endpoint.name,
                call()
            ),
        ));
    };
    if given.len() > names.len() {
        return Err(ApiError::bad_request(format!(
            "`{script}` takes at most {} argument(s) ({}), as the endpoint `{}` serves it; or call {}",
            names.len(),
            names.join(", "),
            endpoint.name,
            call()
        )));
    }
    let params: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(given)
        .map(|(name, value)| (name.to_string(), serde_json::Value::String(value)))
        .collect();
    let invocation = endpoint.bind(params).map_err(|e| {
        let err = ApiError::bad_request(e.message);
        match e.param {
            Some(p) => err.with("param", json!(p)),
            None => err,
        }
    })?;
    let mut env = invocation.env;
    env.extend(endpoint.env.iter().cloned());
    Ok((invocation.args, env, invocation.stdin))
}

/// A script an endpoint serves runs under that endpoint's rules, whichever
/// route runs it: its scopes (`run` and the manifest's `scope:`), sandbox,
/// timeout, environment and concurrency. A script no manifest serves runs as if
/// a manifest with nothing but defaults served it: `run`, the workspace
/// writable but `dynapi.yaml` and `.git` (so the seed's "run a script, then
/// `/git-sync` what it wrote" keeps working), no network, the default timeout.
/// A script several endpoints serve is refused: their rules differ, so the
/// caller names one with `POST /call/{name}`.
fn rules_for(
    app: &App,
    registry: &Registry,
    program: &std::path::Path,
    script_name: &str,
) -> Result<Rules, ApiError> {
    // Compared on disk, so `./x.sh` or a link to a served script is the script.
    let real = |p: &std::path::Path| p.canonicalize().ok();
    let program = real(program);
    let serving: Vec<&Arc<Endpoint>> = registry
        .endpoints()
        .iter()
        // A library's script lives in its checkout, not in the workspace: a
        // project script of the same path is not it.
        .filter(|e| e.source.is_none())
        .filter(|e| {
            app.workspace
                .resolve(&e.script)
                .ok()
                .is_some_and(|p| real(&p) == program)
        })
        .collect();
    match serving.as_slice() {
        [] => Ok(Rules {
            name: format!("scripts/{script_name}"),
            needs: [Scope::Run].into_iter().collect(),
            sandbox: registry::Sandbox::default(),
            timeout: registry.settings.default_timeout,
            concurrency: None,
            endpoint: None,
        }),
        [endpoint] => Ok(Rules {
            name: endpoint.name.clone(),
            needs: endpoint.needs(),
            sandbox: endpoint.sandbox.clone(),
            timeout: endpoint.timeout,
            concurrency: Some((endpoint.name.clone(), endpoint.concurrency)),
            endpoint: Some(Arc::clone(endpoint)),
        }),
        several => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "`{script_name}` is served by the endpoints {}, each with its own rules; call one with POST /call/{{name}}",
                several
                    .iter()
                    .map(|e| format!("`{}`", e.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GitSync {
    /// The commit message (default `Sync the workspace`).
    message: Option<String>,
}

/// POST /git-sync — commits what changed in the working tree (files scripts wrote,
/// `.gitignore` honoured) as one commit, reloads, and answers
/// `{"message": "Git synchronization complete.", "commit": "<sha>"}`.
fn git_sync(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("git-sync")
        .and(warp::post())
        .and(json_request(app))
        .then(|app: Arc<App>, opened: Opened<GitSync>| async move {
            respond(
                async {
                    let (caller, req) = opened?;
                    let message = message_or(req.message, || "Sync the workspace".into());
                    let (committed, report) = app
                        .writes
                        .commit_worktree::<ApiError>(&caller, message)
                        .await?;
                    Ok(warp::reply::json(&json!({
                        "message": "Git synchronization complete.",
                        "commit": report.commit,
                        "served": report.served,
                        "committed": committed,
                        "problems": report.problems,
                    })))
                }
                .await,
            )
        })
}
