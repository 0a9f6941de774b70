//! The HTTP API (DESIGN.md section 4): the only module that knows warp and status
//! codes. One file per group of routes; this file joins them and holds the shared
//! filters: state, the caller's token, bounded bodies, and request ids.
//!
//! Auth is checked after the path matched, and never by rejecting: a bad token is
//! an answer (401/403), so it can never fall through to another route.

pub mod catalog;
mod endpoints;
mod error;
mod files;
pub mod front;
mod history;
mod jobs;
pub mod lane;
pub mod mcp;
mod meta;
mod oauth;
pub mod owners;
mod progress;
mod project;
mod resources;
mod run;
mod seed;
mod sql;
mod status;
mod webhook;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::Filter;

pub use error::ApiError;

use crate::auth::{self, Caller, Scope, Scopes};
use crate::oauth::{Audience, Denied, ACCESS_PREFIX};
use crate::source::change::Applied;
use crate::App;

/// Every route, with errors in the JSON shape and an `X-Request-Id` on every answer.
pub fn routes(app: Arc<App>) -> BoxedFilter<(Response,)> {
    let api = status::routes(app.clone())
        .or(seed::routes(app.clone()))
        .unify()
        .or(files::routes(app.clone()))
        .unify()
        .or(project::routes(app.clone()))
        .unify()
        .or(history::routes(app.clone()))
        .unify()
        .or(sql::routes(app.clone()))
        .unify()
        .or(jobs::routes(app.clone()))
        .unify()
        .or(webhook::routes(app.clone()))
        .unify()
        .or(meta::routes(app.clone()))
        .unify()
        .or(oauth::routes(app.clone()))
        .unify()
        .or(endpoints::routes(app.clone()))
        .unify()
        .recover(error::handle_rejection)
        .unify();
    let observed = app.clone();
    request_id()
        .and(api)
        .map(|id: String, mut response: Response| {
            if let Ok(v) = warp::http::HeaderValue::from_str(&id) {
                response.headers_mut().insert("x-request-id", v);
            }
            response
        })
        .with(warp::log::custom(move |info| {
            let route = route_template(info.method().as_str(), info.path(), &observed);
            observed.metrics.request(
                route,
                info.method().as_str(),
                info.status().as_u16(),
                info.elapsed().as_secs_f64(),
            );
            // One line per request only when asked for (`RUST_LOG=dynapi::request=debug`):
            // at info it was a formatted write to stderr on every request, the
            // largest cost of a cheap route after the socket itself. The
            // metrics count every request either way.
            tracing::debug!(
                target: "dynapi::request",
                method = %info.method(),
                path = info.path(),
                status = info.status().as_u16(),
                ms = info.elapsed().as_millis() as u64,
            );
        }))
        .map(Reply::into_response)
        .boxed()
}

/// The route template a request matched, for its metrics: a built-in's, an
/// endpoint's, or `other`, so that the number of series stays bounded
/// whatever path clients send.
fn route_template(method: &str, path: &str, app: &App) -> String {
    if let Some(template) = catalog::template(method, path) {
        return template.to_string();
    }
    crate::registry::Method::parse(method)
        .and_then(|m| {
            app.syncer
                .registry()
                .route(m, path)
                .map(|found| found.endpoint.path.clone())
        })
        .unwrap_or_else(|| "other".to_string())
}

/// The caller's id for this request: theirs if it is sane, else a new one.
fn request_id() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("x-request-id")
        .map(|given: Option<String>| new_request_id(given.as_deref()))
}

/// `given` if it is a sane request id, else a new one.
pub(crate) fn new_request_id(given: Option<&str>) -> String {
    given
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(String::from)
        .unwrap_or_else(|| format!("{:016x}", next_request_number()))
}

/// A number for a request that brought no id: a counter through SipHash keyed
/// once per process at random, so ids neither repeat within a run nor say how
/// many requests came before, and no system call is made per request (as
/// drawing random bytes each time did).
fn next_request_number() -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: std::sync::LazyLock<std::hash::RandomState> =
        std::sync::LazyLock::new(std::hash::RandomState::new);
    static COUNT: AtomicU64 = AtomicU64::new(0);
    KEYS.hash_one(COUNT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn with_app(
    app: Arc<App>,
) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// The outcome of checking the `Authorization` header, with the scope the
/// catalogue documents for the route it came to.
pub(crate) struct Auth {
    caller: Result<Caller, ApiError>,
    /// `None`: no built-in operation is documented at this method and path.
    documented: Option<Option<Scope>>,
}

impl Auth {
    /// The caller, if their token has the scope `http/catalog.rs` documents for
    /// this route: the one place a built-in route's scope is written. A route
    /// documented nowhere is refused, so a new route cannot go unchecked.
    pub fn check(self) -> Result<Caller, ApiError> {
        let caller = self.caller?;
        match self.documented {
            Some(Some(scope)) => require(&caller, scope)?,
            Some(None) => {}
            None => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this route documents no scope, so no token may use it",
                ))
            }
        }
        Ok(caller)
    }

    /// The caller, if their token has every scope of `needs`: for an
    /// endpoint's own route, which the catalogue does not know
    /// (`Endpoint::needs`).
    pub fn require_all(self, needs: Scopes) -> Result<Caller, ApiError> {
        let caller = self.caller?;
        require_all(&caller, needs)?;
        Ok(caller)
    }
}

/// Whether `caller`'s token has `scope`; else the 403 answer naming what it has.
pub(crate) fn require(caller: &Caller, scope: Scope) -> Result<(), ApiError> {
    if caller.scopes.contains(scope) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "this needs the `{scope}` scope; the token `{}` has: {}",
            caller.token_name,
            caller.scopes.names().join(", ")
        ),
    ))
}

/// Whether `caller`'s token has every scope of `needs`; else the 403 answer
/// naming the first one missing.
pub(crate) fn require_all(caller: &Caller, needs: Scopes) -> Result<(), ApiError> {
    needs.iter().try_for_each(|scope| require(caller, scope))
}

/// Marks a request the MCP handler forwarded to a route in-process, with the
/// caller whose token `/mcp` checked (an extension, which no request from the
/// network can carry): the route takes that caller instead of checking the
/// token a second time.
#[derive(Debug, Clone)]
pub(crate) struct FromMcp(pub Caller);

/// Checks `Authorization: Bearer <token>` against the daemon's tokens, those the
/// served commit's `dynapi.yaml` grants, and the OAuth access tokens issued.
pub(crate) fn auth(
    app: Arc<App>,
) -> impl Filter<Extract = (Auth,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("host"))
        .and(warp::ext::optional::<FromMcp>())
        .then(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  header: Option<String>,
                  host: Option<String>,
                  mcp: Option<FromMcp>| {
                let app = app.clone();
                async move {
                    let caller = match mcp {
                        Some(FromMcp(caller)) => Ok(caller),
                        None => {
                            bearer(&app, header.as_deref(), host.as_deref(), Audience::Api).await
                        }
                    };
                    Auth {
                        caller,
                        documented: catalog::Scopes::of(method.as_str(), path.as_str()),
                    }
                }
            },
        )
}

/// The caller whose token the `Authorization` header carries, or the 401 answer
/// with the `WWW-Authenticate` challenge that points OAuth clients at the
/// resource's metadata (RFC 9728 5.1).
pub(crate) async fn bearer(
    app: &App,
    header: Option<&str>,
    host: Option<&str>,
    at: Audience,
) -> Result<Caller, ApiError> {
    let base = || base_url(app, host);
    let refuse = |message: &str, invalid: bool| {
        let metadata = match at {
            Audience::Api => format!("{}/.well-known/oauth-protected-resource", base()),
            Audience::Mcp => format!("{}/.well-known/oauth-protected-resource/mcp", base()),
        };
        let mut challenge = format!("Bearer resource_metadata=\"{metadata}\"");
        if invalid {
            challenge.push_str(&format!(
                ", error=\"invalid_token\", error_description=\"{message}\""
            ));
        }
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.challenge = Some(challenge);
        e
    };
    let Some(header) = header else {
        return Err(refuse("send `Authorization: Bearer <token>`", false));
    };
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .unwrap_or("")
        .trim();
    if token.is_empty() {
        return Err(refuse("send `Authorization: Bearer <token>`", false));
    }
    let registry = app.syncer.registry();
    if let Some(caller) = auth::verify(
        token,
        app.tokens.iter().chain(registry.settings.tokens.iter()),
    ) {
        return Ok(caller);
    }
    if token.starts_with(ACCESS_PREFIX) {
        return app
            .oauth
            .verify(token, at)
            .await
            .map_err(|denied| match denied {
                Denied::Expired => refuse("the access token expired; use the refresh token", true),
                Denied::ElseWhere(resource) => {
                    let resource = resource.unwrap_or_else(|| Audience::Mcp.resource(&base()));
                    refuse(
                        &format!("the access token was issued for {resource}, not this resource"),
                        true,
                    )
                }
                Denied::Unknown => refuse("the bearer token is not valid", true),
                Denied::Unavailable => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "state_unavailable",
                    "the OAuth store cannot be read now; try again",
                ),
            });
    }
    Err(refuse("the bearer token is not valid", true))
}

/// The URL this daemon is reached at, without a trailing slash: `--public-url`
/// when set, else `http://` and the request's `Host`.
pub(crate) fn base_url(app: &App, host: Option<&str>) -> String {
    let base = match &app.config.public_url {
        Some(url) => url.clone(),
        None => format!("http://{}", host.unwrap_or("127.0.0.1:8000")),
    };
    base.trim_end_matches('/').to_string()
}

/// What a route with a body needs: the caller's token, the app, and the body
/// (bounded by `Config::max_body`).
pub(crate) fn with_body(
    app: Arc<App>,
) -> impl Filter<Extract = (Auth, Arc<App>, Result<Bytes, ApiError>), Error = warp::Rejection> + Clone
{
    let limit = app.config.max_body;
    auth(app.clone()).and(with_app(app)).and(body(limit))
}

/// The opening of a route with a JSON body: the app, and the caller (if their
/// token has the scope the catalogue documents for this method and path) with
/// the body parsed into `T`, in that order: a refused token is answered before
/// the body is read as JSON. An `Err` is the answer (401, 403, 413, 400), never a
/// rejection, so it cannot fall through to another route.
pub(crate) fn json_request<T: DeserializeOwned + Default + Send>(
    app: Arc<App>,
) -> impl Filter<Extract = (Arc<App>, Opened<T>), Error = warp::Rejection> + Clone {
    with_body(app)
        .map(|auth: Auth, app: Arc<App>, body: Result<Bytes, ApiError>| {
            let opened = auth
                .check()
                .and_then(|caller| Ok((caller, parse_json(body)?)));
            (app, opened)
        })
        .untuple_one()
}

/// The opening of a route that takes a query string: as `json_request`, with
/// the query parsed into `T`.
pub(crate) fn query_request<T: DeserializeOwned + Send>(
    app: Arc<App>,
) -> impl Filter<Extract = (Arc<App>, Opened<T>), Error = warp::Rejection> + Clone {
    raw_query()
        .and(auth(app.clone()))
        .and(with_app(app))
        .map(|query: String, auth: Auth, app: Arc<App>| {
            let opened = auth
                .check()
                .and_then(|caller| Ok((caller, parse_query(&query)?)));
            (app, opened)
        })
        .untuple_one()
}

/// What `json_request` and `query_request` yield: the caller and the request,
/// or the answer refusing them. The writes to one file open with
/// `files::one_file` (the token, the path, then the request); two routes keep
/// their opening written out: `POST /call/{name}` (the endpoint's own scopes,
/// known only once the name is looked up) and `GET /files` (the query's type
/// depends on the path).
pub(crate) type Opened<T> = Result<(Caller, T), ApiError>;

/// The request body, read up to `limit` bytes whether or not a length was sent
/// (a chunked body is counted as it arrives).
pub(crate) fn body(
    limit: u64,
) -> impl Filter<Extract = (Result<Bytes, ApiError>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |length: Option<u64>, stream| collect_body(length, stream, limit))
}

async fn collect_body<S, B>(length: Option<u64>, stream: S, limit: u64) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    };
    if length.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut stream = std::pin::pin!(stream);
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if (collected.len() + chunk.remaining()) as u64 > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            collected.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(Bytes::from(collected))
}

/// Parses a JSON body into `T`; an empty body is `T::default()`.
pub(crate) fn parse_json<T: DeserializeOwned + Default>(
    body: Result<Bytes, ApiError>,
) -> Result<T, ApiError> {
    let body = body?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body is not the JSON this route takes: {e}"))
    })
}

/// The raw query string, `""` when there is none. Handlers parse it with
/// `parse_query`, so a bad query is a 400 answer rather than a rejection that
/// would fall through to other routes.
pub(crate) fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

pub(crate) fn parse_query<T: DeserializeOwned>(raw: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "the query string is not what this route takes: {e}"
        ))
    })
}

/// The rest of the URL path after a route's prefix, percent-decoded: a workspace
/// path, still to be confined by `Workspace::resolve`.
pub(crate) fn tail_path(
) -> impl Filter<Extract = (Result<String, ApiError>,), Error = Infallible> + Clone {
    warp::path::tail().map(|tail: warp::path::Tail| {
        percent_encoding::percent_decode_str(tail.as_str())
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| ApiError::bad_request("the path is not UTF-8 once percent-decoded"))
    })
}

/// `answer` with `status`, or 202 when the change went to a pull request.
pub(crate) fn with_write_status(applied: &Applied, answer: &Value, status: StatusCode) -> Response {
    let status = if applied.pull_request.is_some() {
        StatusCode::ACCEPTED
    } else {
        status
    };
    warp::reply::with_status(warp::reply::json(answer), status).into_response()
}

/// The answer to a write of `path`.
pub(crate) fn written(applied: &Applied, path: &str) -> Value {
    let mut answer = json!({
        "path": path,
        "etag": applied.files.get(path).cloned().flatten(),
        "changed": applied.changed,
    });
    if let Some(url) = &applied.pull_request {
        answer["committed"] = json!(false);
        answer["pull_request"] = json!(url);
        answer["note"] = json!("the change waits in a pull request; the branch has it once merged");
    } else if applied.uncommitted.iter().any(|p| p == path) {
        answer["committed"] = json!(false);
        answer["note"] = json!(format!(
            "`.gitignore` ignores `{path}`: it is in the workspace but not committed"
        ));
    } else {
        answer["committed"] = json!(true);
        answer["commit"] = json!(applied.commit);
    }
    answer
}

/// Runs blocking work (files, git) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

/// Turns a handler's result into a response.
pub(crate) fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(error) => error.into_response(),
    }
}
