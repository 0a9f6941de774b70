//! MCP at `/mcp` (Streamable HTTP, served by rmcp): the built-in operations of
//! the catalogue (`http::catalog`) and every endpoint of the served registry as
//! tools, each with a JSON Schema for its input.
//!
//! A tool call is forwarded in-process to the HTTP route it describes, with the
//! caller's own `Authorization` header, so scopes, limits, errors and writes are
//! exactly those of the HTTP API; the route's JSON answer becomes the result's
//! `structuredContent` (and its text), an error status makes it `isError`.
//!
//! The prompts of `prompts/*.md` (the registry's `Prompt`s) are MCP prompts:
//! `prompts/list` and `prompts/get` (which fills the template) for tokens with
//! the `read` scope.
//!
//! Tool and prompt lists follow the registry: when a sync changes the endpoints
//! or the prompts, sessions of the 2025-06-18 revision (and the others with
//! `initialize`) get `notifications/tools/list_changed` or
//! `notifications/prompts/list_changed` on their stream, and 2026-07-28 clients
//! get them on their `subscriptions/listen` request (the ones they asked for).
//!
//! The project's files are resources (`http::resources`): listed, read, and as
//! of a commit. A commit that changes a subscribed file, whoever made it, sends
//! `notifications/resources/updated` (to a session that did
//! `resources/subscribe`, or on a `subscriptions/listen` that named the URI);
//! one that adds or removes files sends `resources/list_changed`.

// Logging (`logging/setLevel`, deprecated by SEP-2577) and `resources/subscribe`
// (replaced by `subscriptions/listen` in 2026-07-28) are served for the clients
// that still use them.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    CompletionInfo, ContentBlock, GetPromptRequestParams, GetPromptResponse, GetPromptResult,
    Implementation, JsonObject, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, LoggingLevel, PaginatedRequestParams, Prompt,
    PromptArgument, PromptMessage, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, Reference, ResourceUpdatedNotificationParam, Role, ServerCapabilities,
    ServerConfig, SetLevelRequestParams, SubscribeRequestParams, SubscriptionFilter, Tool,
    ToolAnnotations, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, Peer, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::{header, Method as HttpMethod, Request};

use super::progress;
use super::resources::{self, Changes, ResourceError, Target};
use super::ApiError;
use crate::auth::{Caller, Scope};
use crate::openapi::Operation;
use crate::registry::{Endpoint, Method, Registry};
use crate::App;

pub type McpService = StreamableHttpService<Mcp, LocalSessionManager>;

/// Catalogue operations that are not tools: meta routes, and raw bytes.
pub const NOT_TOOLS: &[&str] = &[
    "root",
    "healthz",
    "readyz",
    "openapi",
    "downloadFile",
    "metrics",
];

/// What a client is told at `initialize`.
const INSTRUCTIONS: &str = "Tools to work on a software project kept in git. Read before you write: readFile gives an etag; pass it as if_match when you write or edit that file. Prefer editFile (exact text) to writeFile for existing files. Every write is a commit: say what and why in message. The project's own endpoints are tools too (listEndpoints describes them); addEndpoint adds one. A long run answers a job_id: read it with getJob. When an answer says truncated, ask again with offset = next_offset.";

/// The MCP server's state, shared by every session.
pub struct Shared {
    app: Arc<App>,
    routes: BoxedFilter<(warp::reply::Response,)>,
    builtins: Vec<Builtin>,
    /// Sessions that did `initialize`, to tell of changed tools, and whether
    /// their token reads (only a reader is told of prompts and files).
    peers: Mutex<Vec<(Peer<RoleServer>, bool)>>,
    /// Bumped whenever the endpoint tools change.
    tools_version: watch::Sender<u64>,
    /// Bumped whenever the prompts change.
    prompts_version: watch::Sender<u64>,
    /// What each new head of the branch changed, for `subscriptions/listen`.
    files_changed: broadcast::Sender<Arc<Changes>>,
    /// `resources/subscribe` of sessions: the session, its id, and the URI.
    subscribed: Mutex<Vec<Subscribed>>,
    /// `logging/setLevel` of sessions, by session id.
    log_levels: Mutex<HashMap<String, (Peer<RoleServer>, LoggingLevel)>>,
}

impl Shared {
    /// The sessions still open that did `initialize`, and whether each reads.
    fn sessions(&self) -> Vec<(Peer<RoleServer>, bool)> {
        let mut peers = lock(&self.peers);
        peers.retain(|(p, _)| !p.is_transport_closed());
        peers.clone()
    }
}

/// What `completion/complete` completes.
enum Completing {
    Path,
    Commit,
}

/// One `resources/subscribe`.
#[derive(Clone)]
struct Subscribed {
    peer: Peer<RoleServer>,
    /// The `Mcp-Session-Id` it came with, to find it again at `unsubscribe`.
    session: Option<String>,
    uri: String,
}

/// The handler rmcp runs for each session (or, statelessly, each request).
#[derive(Clone)]
pub struct Mcp(Arc<Shared>);

/// A built-in operation as a tool, and how its arguments become a request.
struct Builtin {
    tool: Tool,
    scope: Option<Scope>,
    method: Method,
    path: &'static str,
    path_params: Vec<&'static str>,
    query: Vec<String>,
    body: BodyArgs,
}

enum BodyArgs {
    None,
    /// These arguments make up the JSON body.
    Fields(Vec<String>),
    /// This one argument (an object) is the whole body.
    Whole(&'static str),
}

impl Mcp {
    pub fn new(
        app: Arc<App>,
        routes: BoxedFilter<(warp::reply::Response,)>,
        operations: &[Operation],
    ) -> Mcp {
        let builtins = operations
            .iter()
            .filter(|op| !NOT_TOOLS.contains(&op.id))
            .map(builtin)
            .collect();
        Mcp(Arc::new(Shared {
            app,
            routes,
            builtins,
            peers: Mutex::default(),
            tools_version: watch::channel(0).0,
            prompts_version: watch::channel(0).0,
            files_changed: broadcast::channel(16).0,
            subscribed: Mutex::default(),
            log_levels: Mutex::default(),
        }))
    }

    /// rmcp's Streamable HTTP service over this handler, keeping its sessions
    /// in `sessions`. `allowed`: the `Host` values it answers (DNS-rebinding
    /// protection).
    pub fn service(
        &self,
        allowed: Vec<String>,
        sessions: Arc<LocalSessionManager>,
        max_body: usize,
        stop: CancellationToken,
    ) -> McpService {
        // No event store and no session store: every way into a session then
        // names it in `Mcp-Session-Id`, where `owners.rs` checks its holder.
        let config = StreamableHttpServerConfig::default()
            .with_allowed_hosts(allowed)
            .with_max_request_body_bytes(max_body)
            // A stateless (2026-07-28) call that sends nothing before its
            // result is answered as plain JSON, not an event stream of one
            // event; one that tells progress streams as before.
            .with_json_response(true)
            .with_cancellation_token(stop);
        let handler = self.clone();
        StreamableHttpService::new(move || Ok(handler.clone()), sessions, config)
    }

    /// Tells clients whenever a sync changes the endpoint tools or the
    /// prompts, until `stop`.
    pub async fn announce_changes(self, stop: CancellationToken) {
        let shared = &self.0;
        let mut generation = shared.app.syncer.subscribe();
        // Who may see a tool counts too: the lists are per caller.
        let lists = || -> (Vec<(Tool, Scope)>, Vec<Prompt>) {
            let registry = shared.app.syncer.registry();
            let tools = endpoint_tools(&registry, &shared.builtins)
                .into_iter()
                .map(|(tool, e)| (tool, e.scope))
                .collect();
            (tools, listed_prompts(&registry))
        };
        let (mut tools, mut prompts) = lists();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = generation.changed() => if changed.is_err() { return },
            }
            let (now_tools, now_prompts) = lists();
            let tools_changed = now_tools != tools;
            let prompts_changed = now_prompts != prompts;
            (tools, prompts) = (now_tools, now_prompts);
            if tools_changed {
                shared.tools_version.send_modify(|v| *v += 1);
            }
            if prompts_changed {
                shared.prompts_version.send_modify(|v| *v += 1);
            }
            if !tools_changed && !prompts_changed {
                continue;
            }
            for (peer, reads) in shared.sessions() {
                if tools_changed {
                    if let Err(e) = peer.notify_tool_list_changed().await {
                        tracing::debug!(error = %e, "a session did not take tools/list_changed");
                    }
                }
                if prompts_changed && reads {
                    if let Err(e) = peer.notify_prompt_list_changed().await {
                        tracing::debug!(error = %e, "a session did not take prompts/list_changed");
                    }
                }
            }
        }
    }

    /// Tells clients which files each new head of the branch changed, until
    /// `stop`: `resources/updated` for the URIs they subscribed to,
    /// `resources/list_changed` when files came or went.
    pub async fn announce_file_changes(self, stop: CancellationToken) {
        let shared = &self.0;
        let mut heads = shared.app.syncer.heads();
        let mut last = heads.borrow_and_update().clone();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = heads.changed() => if changed.is_err() { return },
            }
            let Some(new) = heads.borrow_and_update().clone() else {
                continue;
            };
            // The first head seen is where the daemon starts: nothing changed yet.
            let Some(old) = last.replace(new.clone()).filter(|old| *old != new) else {
                continue;
            };
            // Comparing two trees costs a walk of each: only when someone
            // would be told (a reading session, a subscription, a listener).
            let listened = shared.files_changed.receiver_count() > 0
                || !lock(&shared.subscribed).is_empty()
                || shared.sessions().iter().any(|(_, reads)| *reads);
            if !listened {
                continue;
            }
            let repo = shared.app.repo.clone();
            let found = tokio::task::spawn_blocking(move || {
                let id = |s: &str| gix::ObjectId::from_hex(s.as_bytes()).ok();
                match (id(&old), id(&new)) {
                    (Some(old), Some(new)) => resources::changes(&repo, Some(old), new).ok(),
                    _ => None,
                }
            })
            .await
            .ok()
            .flatten();
            let Some(changes) = found else { continue };
            if changes.files.is_empty() {
                continue;
            }
            let changes = Arc::new(changes);
            let _ = shared.files_changed.send(changes.clone());
            let subscribed: Vec<Subscribed> = {
                let mut subscribed = lock(&shared.subscribed);
                subscribed.retain(|s| !s.peer.is_transport_closed());
                subscribed.clone()
            };
            for Subscribed { peer, uri, .. } in subscribed {
                if matches!(resources::parse(&uri), Ok(Target::File(p)) if changes.files.contains(&p))
                {
                    let param = ResourceUpdatedNotificationParam::new(uri);
                    if let Err(e) = peer.notify_resource_updated(param).await {
                        tracing::debug!(error = %e, "a session did not take resources/updated");
                    }
                }
            }
            if changes.listed {
                // Files are told of only to a reader, as on `listen`.
                for (peer, _) in shared.sessions().into_iter().filter(|(_, reads)| *reads) {
                    if let Err(e) = peer.notify_resource_list_changed().await {
                        tracing::debug!(error = %e, "a session did not take resources/list_changed");
                    }
                }
            }
        }
    }

    fn tools_for(&self, caller: &Caller) -> Vec<Tool> {
        let shared = &self.0;
        let allowed = |scope: Option<Scope>| scope.is_none_or(|s| caller.scopes.contains(s));
        let mut tools: Vec<Tool> = shared
            .builtins
            .iter()
            .filter(|b| allowed(b.scope))
            .map(|b| b.tool.clone())
            .collect();
        let registry = shared.app.syncer.registry();
        tools.extend(
            endpoint_tools(&registry, &shared.builtins)
                .into_iter()
                .filter(|(_, e)| caller.scopes.covers(e.needs()))
                .map(|(tool, _)| tool),
        );
        tools
    }

    fn builtin_named(&self, name: &str) -> Option<&Builtin> {
        self.0.builtins.iter().find(|b| b.tool.name == name)
    }

    /// Whether `name` is a built-in tool that only reads (its annotations say
    /// `readOnlyHint`): quick, with nothing to cancel or report progress on.
    pub(crate) fn reads_only(&self, name: &str) -> bool {
        self.builtin_named(name).is_some_and(|b| {
            b.tool
                .annotations
                .as_ref()
                .and_then(|a| a.read_only_hint)
                .unwrap_or(false)
        })
    }

    /// Calls `name` with `args` as `caller` if it is a built-in tool that only
    /// reads (`reads_only`); `None` otherwise. A route's success answered as
    /// a JSON object comes back as its own bytes (`Read::Object`), for the
    /// lane to write without parsing and writing it again.
    pub(crate) async fn call_reader(
        &self,
        name: &str,
        args: JsonObject,
        caller: &Caller,
    ) -> Option<Result<Read, McpError>> {
        if !self.reads_only(name) {
            return None;
        }
        let b = self.builtin_named(name)?;
        let (uri, body) = match request_of(b, args) {
            Ok(request) => request,
            Err(message) => return Some(Ok(Read::Result(bad_arguments(message)))),
        };
        Some(
            self.send_raw(b.method, uri, body, caller)
                .await
                .map(|(status, body)| {
                    let object = body.trim_ascii_start().first() == Some(&b'{')
                        && serde_json::from_slice::<&serde_json::value::RawValue>(&body).is_ok();
                    if status.is_success() && object {
                        Read::Object(body)
                    } else {
                        Read::Result(result_of(status.is_success(), answer_of(&body)))
                    }
                }),
        )
    }

    /// Calls the built-in tool `b` with `args` as `caller`, through its route.
    async fn call_builtin(
        &self,
        b: &Builtin,
        args: JsonObject,
        caller: &Caller,
    ) -> Result<CallToolResult, McpError> {
        match request_of(b, args) {
            Ok((uri, body)) => self
                .send(b.method, uri, body, caller)
                .await
                .map(|(status, answer)| result_of(status.is_success(), answer)),
            Err(message) => Ok(bad_arguments(message)),
        }
    }

    /// Sends `method uri` with `body` to the warp routes as `caller`: the
    /// answer's status and JSON (a text answer as a JSON string).
    async fn send(
        &self,
        method: Method,
        uri: String,
        body: Option<Value>,
        caller: &Caller,
    ) -> Result<(warp::http::StatusCode, Value), McpError> {
        let (status, body) = self.send_raw(method, uri, body, caller).await?;
        Ok((status, answer_of(&body)))
    }

    /// Sends `method uri` with `body` to the warp routes as `caller`: the
    /// answer's status and bytes.
    async fn send_raw(
        &self,
        method: Method,
        uri: String,
        body: Option<Value>,
        caller: &Caller,
    ) -> Result<(warp::http::StatusCode, Bytes), McpError> {
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(HttpMethod::from_bytes(method.as_str().as_bytes()).unwrap_or(HttpMethod::GET))
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, bytes.len())
            // The token was checked at /mcp; the route takes its caller.
            .extension(super::FromMcp(caller.clone()));
        let request = request.body(Full::new(Bytes::from(bytes))).map_err(|e| {
            McpError::invalid_params(format!("cannot build the request: {e}"), None)
        })?;
        let mut routes = warp::service(self.0.routes.clone());
        let response = match routes.call(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Calls endpoint `name` with `args` as the caller whose `authorization`
    /// this is: started through `POST /call/{name}?async=true` (so the route
    /// checks scopes, parameters and limits as for any call), then followed
    /// here: `notifications/progress` every second to a client that sent a
    /// `progressToken` (the lines printed since the last one), the script's
    /// stderr lines as `notifications/message` to one that asked for `info`
    /// or more, the process group killed when the client cancels the call.
    /// A run still going after `--job-after` is answered as the job it goes on
    /// as, with its `job_id` for getJob.
    async fn call_endpoint(
        &self,
        name: &str,
        args: JsonObject,
        caller: &Caller,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let uri = format!("/call/{name}?async=true");
        let (status, answer) = self
            .send(Method::Post, uri, Some(Value::Object(args)), caller)
            .await?;
        let job = answer["job_id"]
            .as_str()
            .and_then(|id| self.0.app.jobs.get(id));
        let (Some(job), warp::http::StatusCode::ACCEPTED) = (job, status) else {
            return Ok(result_of(status.is_success(), answer));
        };
        let app = &self.0.app;
        let schema = app
            .syncer
            .registry()
            .get(name)
            .and_then(|e| e.output_schema.clone());
        let mut watch = progress::Watch::new(
            context.meta.get_progress_token(),
            self.log_level(context),
            &job,
        );
        let deadline = tokio::time::Instant::now() + app.config.job_after;
        loop {
            let end = tokio::select! {
                end = job.wait(progress::EVERY) => end,
                () = context.ct.cancelled() => {
                    job.live().cancel();
                    job.wait(progress::CANCEL_WAIT).await;
                    app.jobs.remove(&job.id);
                    return Ok(CallToolResult::structured_error(json!({"error": {
                        "code": "cancelled",
                        "message": format!("the call was cancelled; `{name}`'s processes were stopped"),
                    }})));
                }
            };
            if let Some(end) = end {
                watch.send(&context.peer, &job).await;
                // Answered here: no getJob will ask for it.
                app.jobs.remove(&job.id);
                return Ok(match super::run::answer(&job, &end.result) {
                    Ok(answer) => match &schema {
                        Some(schema) => structured_output(name, answer, schema),
                        None => CallToolResult::structured(answer),
                    },
                    Err(e) => CallToolResult::structured_error(e.body()),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(CallToolResult::structured(json!({
                    "job_id": job.id,
                    "state": "running",
                    "message": format!(
                        "`{name}` is still running after {}; it goes on as a job: call getJob with this job_id to read its state and output, cancelJob to stop it",
                        humantime::format_duration(app.config.job_after)
                    ),
                })));
            }
            watch.send(&context.peer, &job).await;
        }
    }

    /// The logging level this request asked for (2026-07-28 sends it with
    /// each request), else the one its session set.
    fn log_level(&self, context: &RequestContext<RoleServer>) -> Option<LoggingLevel> {
        context.meta.log_level().or_else(|| {
            let session = session_of(context)?;
            lock(&self.0.log_levels)
                .get(&session)
                .map(|(_, level)| *level)
        })
    }
}

/// A finished run of an endpoint with an `output_schema`: its JSON output is
/// the structured content (MCP's `outputSchema` describes it), when the run
/// succeeded and the output is an object with the schema's `required`
/// properties; otherwise an error result that says what is wrong, with the
/// run's whole answer.
fn structured_output(name: &str, answer: Value, schema: &Value) -> CallToolResult {
    let output = &answer["output"];
    let missing: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|key| output.get(key).is_none())
        .collect();
    let problem = match (answer["ok"].as_bool(), output.is_object()) {
        (Some(true), true) if missing.is_empty() => None,
        (Some(true), true) => Some(format!(
            "`{name}` printed JSON without {} that its output_schema requires",
            missing.join(", ")
        )),
        (Some(true), false) => Some(format!(
            "`{name}` printed JSON that is not an object, as its output_schema says it is"
        )),
        _ => Some(format!("`{name}` failed")),
    };
    match problem {
        None => CallToolResult::structured(output.clone()),
        Some(message) => CallToolResult::error(vec![ContentBlock::text(
            json!({"error": {"code": "bad_output", "message": message}, "answer": answer})
                .to_string(),
        )]),
    }
}

/// What a read-only built-in tool call gave: a success answered as a JSON
/// object, as the route's bytes; anything else as its tool result.
pub(crate) enum Read {
    Object(Bytes),
    Result(CallToolResult),
}

/// Arguments a built-in tool's route cannot be given, as a tool error.
fn bad_arguments(message: String) -> CallToolResult {
    CallToolResult::structured_error(json!({"error": {"code": "bad_request", "message": message}}))
}

/// A route's answer as JSON (a text answer as a JSON string).
fn answer_of(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// A route's answer as a tool result: its JSON as structured content, an
/// error status as `isError`.
fn result_of(success: bool, answer: Value) -> CallToolResult {
    match (success, answer) {
        (true, answer @ Value::Object(_)) => CallToolResult::structured(answer),
        (true, Value::String(text)) => CallToolResult::success(vec![ContentBlock::text(text)]),
        (true, other) => CallToolResult::success(vec![ContentBlock::text(other.to_string())]),
        (false, answer @ Value::Object(_)) => CallToolResult::structured_error(answer),
        (false, other) => CallToolResult::error(vec![ContentBlock::text(other.to_string())]),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A built-in operation's tool: path placeholders, query parameters and body
/// fields all become top-level arguments (the catalogue's test checks no name
/// is used twice); a body without named fields is one `params` argument.
fn builtin(op: &Operation) -> Builtin {
    let mut properties = Map::new();
    let mut required: Vec<String> = Vec::new();
    for (name, description) in op.path_params {
        properties.insert(
            name.to_string(),
            json!({"type": "string", "description": description}),
        );
        required.push(name.to_string());
    }
    let mut merge = |schema: &Value| -> Vec<String> {
        let names: Vec<String> = schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for (name, s) in schema["properties"].as_object().into_iter().flatten() {
            properties.insert(name.clone(), s.clone());
        }
        required.extend(
            schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(String::from)),
        );
        names
    };
    let query = op.query.as_ref().map(&mut merge).unwrap_or_default();
    let body = match &op.body {
        None => BodyArgs::None,
        Some(b) if b["properties"].as_object().is_none_or(|p| p.is_empty()) => {
            properties.insert("params".into(), b.clone());
            BodyArgs::Whole("params")
        }
        Some(b) => BodyArgs::Fields(merge(b)),
    };
    let mut description = op.summary.to_string();
    if !op.description.is_empty() {
        description = format!("{description}. {}", op.description);
    }
    let schema = json!({"type": "object", "properties": properties, "required": required});
    let tool = Tool::new(op.id, description, object(schema)).with_annotations(annotations(
        op.method,
        op.consequential,
        op.method == Method::Delete || op.id == "writeFile" || op.id == "revert",
    ));
    Builtin {
        tool,
        scope: op.scope,
        method: op.method,
        path: op.path,
        path_params: op.path_params.iter().map(|(n, _)| *n).collect(),
        query,
        body,
    }
}

fn annotations(method: Method, consequential: bool, destructive: bool) -> ToolAnnotations {
    let read_only = method == Method::Get && !consequential;
    ToolAnnotations::from_raw(
        None,
        Some(read_only),
        Some(destructive),
        Some(matches!(method, Method::Get | Method::Put | Method::Delete)),
        Some(false),
    )
}

fn object(schema: Value) -> JsonObject {
    match schema {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    }
}

/// The endpoints' tools, in registry order, with the endpoint each calls. An
/// endpoint is its own name, or `endpoint_<name>` if a built-in tool has it.
fn endpoint_tools<'r>(registry: &'r Registry, builtins: &[Builtin]) -> Vec<(Tool, &'r Endpoint)> {
    registry
        .endpoints()
        .iter()
        .map(|e| {
            let name = if builtins.iter().any(|b| b.tool.name == e.name) {
                format!("endpoint_{}", e.name)
            } else {
                e.name.clone()
            };
            let description = match &e.source {
                None => format!("{} ({} {})", e.description, e.method.as_str(), e.path),
                Some(l) => format!(
                    "{} ({} {}; from the library {} at {})",
                    e.description,
                    e.method.as_str(),
                    e.path,
                    l.repository,
                    l.commit
                ),
            };
            // Where the tool comes from (project or library), in `_meta`
            // under the daemon's own key.
            let mut meta = JsonObject::new();
            meta.insert("dynapi/source".to_string(), e.source_json());
            let mut tool = Tool::new(name, description, object(e.params_schema()))
                .with_annotations(annotations(e.method, e.consequential, false))
                .with_meta(rmcp::model::MetaObject(meta));
            if let Some(schema) = &e.output_schema {
                tool = tool.with_raw_output_schema(Arc::new(object(schema.clone())));
            }
            (tool, e.as_ref())
        })
        .collect()
}

/// The registry's prompts as `prompts/list` shows them.
fn listed_prompts(registry: &Registry) -> Vec<Prompt> {
    registry
        .prompts()
        .iter()
        .map(|p| {
            let arguments = p
                .arguments
                .iter()
                .map(|a| {
                    let argument = PromptArgument::new(&a.name).with_required(a.required);
                    match &a.description {
                        Some(d) => argument.with_description(d),
                        None => argument,
                    }
                })
                .collect();
            Prompt::new(&p.name, Some(&p.description), Some(arguments))
        })
        .collect()
}

/// An argument as query-string values.
fn query_values(value: &Value) -> Vec<String> {
    match value {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(query_values).collect(),
        other => vec![other.to_string()],
    }
}

const PATH_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The request a built-in tool's arguments make: the URI and the body.
fn request_of(b: &Builtin, mut args: JsonObject) -> Result<(String, Option<Value>), String> {
    let mut path = b.path.to_string();
    for name in &b.path_params {
        let value = match args.remove(*name) {
            Some(Value::String(s)) => s,
            Some(Value::Null) | None => return Err(format!("`{name}` is required")),
            Some(other) => other.to_string(),
        };
        let encoded = percent_encoding::utf8_percent_encode(&value, PATH_VALUE).to_string();
        path = path.replace(&format!("{{{name}}}"), &encoded);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for name in &b.query {
        if let Some(value) = args.remove(name) {
            pairs.extend(query_values(&value).into_iter().map(|v| (name.clone(), v)));
        }
    }
    let body = match &b.body {
        BodyArgs::None => None,
        BodyArgs::Whole(name) => Some(args.remove(*name).unwrap_or_else(|| json!({}))),
        BodyArgs::Fields(fields) => Some(Value::Object(
            fields
                .iter()
                .filter_map(|f| args.remove(f).map(|v| (f.clone(), v)))
                .collect(),
        )),
    };
    // Arguments no part takes go to the query, where the route names them as unknown.
    for (name, value) in args {
        pairs.extend(query_values(&value).into_iter().map(|v| (name.clone(), v)));
    }
    if !pairs.is_empty() {
        let query = serde_urlencoded::to_string(&pairs).map_err(|e| e.to_string())?;
        path = format!("{path}?{query}");
    }
    Ok((path, body))
}

impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_prompts()
                .enable_prompts_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .enable_logging()
                .enable_completions()
                .build(),
        )
        .with_server_info(Implementation::new("dynapi", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let reads = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Caller>())
            .is_some_and(|c| c.scopes.contains(Scope::Read));
        let mut peers = lock(&self.0.peers);
        peers.retain(|(p, _)| !p.is_transport_closed());
        peers.push((context.peer, reads));
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let caller = caller_of(&context)?;
        Ok(ListToolsResult::with_all_items(self.tools_for(&caller)))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = caller_of(&context)?;
        let args = request.arguments.unwrap_or_default();
        let name = request.name.as_ref();
        if let Some(b) = self.builtin_named(name) {
            return self.call_builtin(b, args, &caller).await.map(Into::into);
        }
        let registry = self.0.app.syncer.registry();
        let endpoint = endpoint_tools(&registry, &self.0.builtins)
            .into_iter()
            .find(|(tool, _)| tool.name == name)
            .map(|(_, e)| e.name.clone());
        match endpoint {
            Some(endpoint) => self
                .call_endpoint(&endpoint, args, &caller, &context)
                .await
                .map(Into::into),
            None => Err(McpError::invalid_params(
                format!("no tool named `{name}`; tools/list names them"),
                None,
            )),
        }
    }

    /// Completes a resource template's `path` (paths that exist, by prefix)
    /// and `commit` (the branch's commits), and a prompt's path argument
    /// (`path`, `file`, or a name ending in `_path`). MCP completes only
    /// prompt and resource-template arguments, not a tool's: an endpoint
    /// parameter's `enum` is in its tool's input schema.
    async fn complete(
        &self,
        request: CompleteRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        reader_of(&context)?;
        let name = request.argument.name.as_str();
        let is_path = name == "path" || name == "file" || name.ends_with("_path");
        let kind = match &request.r#ref {
            Reference::Resource(r)
                if is_path
                    && [resources::FILE_TEMPLATE, resources::COMMIT_TEMPLATE]
                        .contains(&r.uri.as_str()) =>
            {
                Completing::Path
            }
            Reference::Resource(r) if name == "commit" && r.uri == resources::COMMIT_TEMPLATE => {
                Completing::Commit
            }
            Reference::Prompt(p)
                if is_path
                    && self
                        .0
                        .app
                        .syncer
                        .registry()
                        .prompt(&p.name)
                        .is_some_and(|prompt| prompt.arguments.iter().any(|a| a.name == name)) =>
            {
                Completing::Path
            }
            _ => return Ok(CompleteResult::default()),
        };
        let value = request.argument.value;
        let app = self.0.app.clone();
        let (values, more) = in_blocking(move || match kind {
            Completing::Path => resources::complete_path(&app.workspace, &app.repo, &value),
            Completing::Commit => {
                resources::complete_commit(&app.repo, &value, app.config.files.history_walk)
            }
        })
        .await?;
        let info = CompletionInfo::with_pagination(values, None, more)
            .map_err(|e| McpError::internal_error(e, None))?;
        Ok(CompleteResult::new(info))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let Some(session) = session_of(&context) else {
            // Stateless: each request says its level.
            return Ok(());
        };
        let mut levels = lock(&self.0.log_levels);
        // Sessions that closed give their place up; only open ones count.
        levels.retain(|_, (peer, _)| !peer.is_transport_closed());
        if levels.len() >= MAX_SUBSCRIPTIONS && !levels.contains_key(&session) {
            return Err(McpError::invalid_request(
                format!("at most {MAX_SUBSCRIPTIONS} sessions may set a log level at once"),
                None,
            ));
        }
        levels.insert(session, (context.peer, request.level));
        Ok(())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        reader_of(&context)?;
        let after = request.and_then(|r| r.cursor);
        let ws = self.0.app.workspace.clone();
        let (items, next) = in_blocking(move || resources::list(&ws, after.as_deref())).await?;
        let mut result = ListResourcesResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        reader_of(&context)?;
        Ok(ListResourceTemplatesResult::with_all_items(
            resources::templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        reader_of(&context)?;
        let uri = request.uri;
        let target = resources::parse(&uri).map_err(resource_error)?;
        let app = self.0.app.clone();
        let contents = in_blocking(move || match target {
            Target::File(path) => resources::read_file(&app.workspace, &app.repo, &uri, &path),
            Target::AtCommit { commit, path } => resources::read_at(
                &app.repo,
                &uri,
                &commit,
                &path,
                app.config.files.history_walk,
            ),
        })
        .await?;
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        reader_of(&context)?;
        let Target::File(_) = resources::parse(&request.uri).map_err(resource_error)? else {
            return Err(McpError::invalid_params(
                "a file as of a commit never changes: subscribe to dynapi://files/<path>",
                None,
            ));
        };
        let session = session_of(&context);
        let mut subscribed = lock(&self.0.subscribed);
        subscribed.retain(|s| !s.peer.is_transport_closed());
        // The same URI twice in one session is one subscription (one
        // notification per change), not two of the shared slots.
        if session.is_some()
            && subscribed
                .iter()
                .any(|s| s.session == session && s.uri == request.uri)
        {
            return Ok(());
        }
        let mine = subscribed.iter().filter(|s| s.session == session).count();
        if mine >= MAX_SESSION_SUBSCRIPTIONS || subscribed.len() >= MAX_SUBSCRIPTIONS {
            return Err(McpError::invalid_request(
                format!(
                    "at most {MAX_SESSION_SUBSCRIPTIONS} resource subscriptions a session, \
                     {MAX_SUBSCRIPTIONS} in all"
                ),
                None,
            ));
        }
        subscribed.push(Subscribed {
            peer: context.peer,
            session,
            uri: request.uri,
        });
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let session = session_of(&context);
        let mut subscribed = lock(&self.0.subscribed);
        subscribed.retain(|s| {
            let asked = s.uri == request.uri && s.session == session;
            !(s.peer.is_transport_closed() || asked)
        });
        Ok(())
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        let files: Vec<String> = requested
            .resource_subscriptions
            .iter()
            .flatten()
            .filter(|uri| matches!(resources::parse(uri), Ok(Target::File(_))))
            .take(MAX_SUBSCRIPTIONS)
            .cloned()
            .collect();
        let mut accepted = SubscriptionFilter::builder()
            .tools_list_changed()
            .prompts_list_changed()
            .resources_list_changed();
        if !files.is_empty() {
            accepted = accepted.resource_subscriptions(files);
        }
        Some(accepted.build())
    }

    async fn listen(&self, context: SubscriptionContext) -> Result<(), McpError> {
        let accepted = context.accepted().clone();
        let wants_tools = accepted.tools_list_changed == Some(true);
        let wants_prompts = accepted.prompts_list_changed == Some(true);
        let wants_list = accepted.resources_list_changed == Some(true);
        let mut tools = self.0.tools_version.subscribe();
        let mut prompts = self.0.prompts_version.subscribe();
        let mut files = self.0.files_changed.subscribe();
        // Files are told of only to a reader.
        let reads =
            caller_of(context.request_context()).is_ok_and(|c| c.scopes.contains(Scope::Read));
        let wanted: Vec<(String, String)> = accepted
            .resource_subscriptions
            .iter()
            .flatten()
            .filter_map(|uri| match resources::parse(uri) {
                Ok(Target::File(path)) => Some((uri.clone(), path)),
                _ => None,
            })
            .collect();
        loop {
            // Only what the subscription accepted is sent: the sink refuses the rest.
            let sent = tokio::select! {
                () = context.cancelled() => return Ok(()),
                changed = tools.changed() => match changed {
                    Err(_) => return Ok(()),
                    Ok(()) if wants_tools => context.sink().notify_tool_list_changed().await.is_ok(),
                    Ok(()) => true,
                },
                changed = prompts.changed() => match changed {
                    Err(_) => return Ok(()),
                    Ok(()) if wants_prompts && reads => context.sink().notify_prompt_list_changed().await.is_ok(),
                    Ok(()) => true,
                },
                changes = files.recv() => match changes {
                    Ok(changes) if reads => {
                        let mut ok = true;
                        for (uri, path) in &wanted {
                            if changes.files.contains(path) {
                                ok &= context.sink().notify_resource_updated(uri.clone()).await.is_ok();
                            }
                        }
                        if changes.listed && wants_list {
                            ok &= context.sink().notify_resource_list_changed().await.is_ok();
                        }
                        ok
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            };
            if !sent {
                return Ok(());
            }
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let caller = caller_of(&context)?;
        // Prompts are read: a token without `read` sees none, as it sees no readFile.
        let prompts = if caller.scopes.contains(Scope::Read) {
            listed_prompts(&self.0.app.syncer.registry())
        } else {
            Vec::new()
        };
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        reader_of(&context)?;
        let registry = self.0.app.syncer.registry();
        let Some(prompt) = registry.prompt(&request.name) else {
            return Err(McpError::invalid_params(
                format!(
                    "no prompt named `{}`; prompts/list names them",
                    request.name
                ),
                None,
            ));
        };
        let text = prompt
            .fill(&request.arguments.unwrap_or_default())
            .map_err(|e| {
                McpError::invalid_params(format!("prompt `{}`: {e}", prompt.name), None)
            })?;
        Ok(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                .with_description(&prompt.description)
                .into(),
        )
    }
}

/// Resource subscriptions one daemon keeps for all sessions (and sessions
/// with a log level), and one `subscriptions/listen` may name.
const MAX_SUBSCRIPTIONS: usize = 1_000;
/// Resource subscriptions one session may hold, so that one cannot take
/// every place.
const MAX_SESSION_SUBSCRIPTIONS: usize = 100;

/// The request's `Mcp-Session-Id`.
fn session_of(context: &RequestContext<RoleServer>) -> Option<String> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.headers.get("mcp-session-id"))
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

/// The caller, if their token may read the project (resources need `read`, as
/// `GET /files` does).
fn reader_of(context: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
    let caller = caller_of(context)?;
    super::require(&caller, Scope::Read).map_err(|e| McpError::invalid_request(e.message, None))?;
    Ok(caller)
}

/// Runs resource work (file and git reads) on the blocking pool; its
/// refusal as the JSON-RPC error MCP names for it.
async fn in_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ResourceError> + Send + 'static,
) -> Result<T, McpError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| McpError::internal_error(e.to_string(), None))?
        .map_err(resource_error)
}

/// A resource that cannot be given, as the JSON-RPC error MCP names for it.
fn resource_error(e: ResourceError) -> McpError {
    match e {
        ResourceError::NotFound(_) | ResourceError::Ignored(_) | ResourceError::NoCommit(_) => {
            McpError::resource_not_found(e.to_string(), None)
        }
        ResourceError::Fs(fs) => {
            let answer = ApiError::from(fs);
            if answer.status.is_server_error() {
                McpError::internal_error(answer.message, None)
            } else if answer.status == warp::http::StatusCode::NOT_FOUND {
                McpError::resource_not_found(answer.message, None)
            } else {
                McpError::invalid_params(answer.message, None)
            }
        }
        ResourceError::Repo(_) => McpError::internal_error(e.to_string(), None),
        ResourceError::BadUri(_) | ResourceError::TooLarge(..) | ResourceError::Ambiguous(_) => {
            McpError::invalid_params(e.to_string(), None)
        }
    }
}

/// The caller the front checked (`http::front` puts it in the request).
fn caller_of(context: &RequestContext<RoleServer>) -> Result<Caller, McpError> {
    context
        .extensions
        .get::<http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| McpError::internal_error("the request carries no checked caller", None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_argument_has_one_place() {
        for op in crate::http::catalog::operations() {
            let b = builtin(&op);
            let mut names: Vec<String> = b.path_params.iter().map(|n| n.to_string()).collect();
            names.extend(b.query.iter().cloned());
            if let BodyArgs::Fields(fields) = &b.body {
                names.extend(fields.iter().cloned());
            }
            let count = names.len();
            names.sort();
            names.dedup();
            assert_eq!(
                names.len(),
                count,
                "{}: an argument name is used twice",
                op.id
            );
        }
    }

    #[test]
    fn arguments_become_path_query_and_body() {
        let ops = crate::http::catalog::operations();
        let find = |id: &str| builtin(ops.iter().find(|o| o.id == id).unwrap());
        let args = |v: Value| object(v);
        let (uri, body) = request_of(
            &find("writeFile"),
            args(json!({"path": "src/a b.rs", "content": "x", "message": "m"})),
        )
        .unwrap();
        assert_eq!(uri, "/files/src%2Fa%20b.rs");
        assert_eq!(body, Some(json!({"content": "x", "message": "m"})));
        let (uri, body) = request_of(
            &find("readFile"),
            args(json!({"path": "a.md", "offset": 10})),
        )
        .unwrap();
        assert_eq!((uri.as_str(), body), ("/files/a.md?offset=10", None));
        let (uri, body) = request_of(
            &find("callEndpoint"),
            args(json!({"name": "hello", "async": true, "params": {"name": "Ada"}})),
        )
        .unwrap();
        assert_eq!(uri, "/call/hello?async=true");
        assert_eq!(body, Some(json!({"name": "Ada"})));
        assert!(request_of(&find("readFile"), args(json!({}))).is_err());
    }
}
