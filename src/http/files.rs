//! The file routes: `GET /files` and `GET /files/{path}` (list a folder, or read a
//! page of a file), `PUT`, `PATCH` and `DELETE /files/{path}`, `POST /files/move`,
//! and `GET /download/{path}` (raw bytes).
//!
//! Reads answer from the working tree with `ETag` = the git blob id of the file;
//! writes take `If-Match` (the header, or `if_match` in the body) and become one
//! commit each through the write service (`source::writes`). A path `.gitignore` ignores is written
//! but not committed, and the answer says `"committed": false`.

use std::sync::Arc;

use bytes::Bytes;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{
    auth, blocking, body, json_request, parse_json, parse_query, raw_query, respond, tail_path,
    with_app, with_write_status, written, ApiError, Auth, Opened,
};
use crate::source::change::Op;
use crate::source::writes::message_or;
use crate::workspace::files::{self, content_type, PageRequest, TextEdit};
use crate::workspace::FsError;
use crate::App;

/// The most edits one PATCH may carry.
const MAX_EDITS: usize = 100;
/// The most files one folder move may carry.
const MAX_MOVE_FILES: usize = 10_000;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    read(app.clone())
        .or(put(app.clone()))
        .unify()
        .or(patch(app.clone()))
        .unify()
        .or(delete(app.clone()))
        .unify()
        .or(move_files(app.clone()))
        .unify()
        .or(download(app))
        .unify()
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadQuery {
    /// The folder to list, relative to the workspace root (for `GET /files`; default the root).
    path: Option<String>,
    /// How many folder levels to list, 1-10 (default 1).
    depth: Option<usize>,
    /// Lines (files) or entries (folders) to skip.
    offset: Option<u64>,
    /// Lines (files) or entries (folders) to return.
    limit: Option<u64>,
}

/// The query of `GET /files/{path}`: the path is in the route.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    /// For a folder: how many levels to list, 1-10 (default 1).
    depth: Option<usize>,
    /// Lines (files) or entries (folders) to skip.
    offset: Option<u64>,
    /// Lines (files) or entries (folders) to return.
    limit: Option<u64>,
}

/// GET /files?path=&depth= and GET /files/{path}?offset=&limit= — a folder's
/// entries, or a page of a file's lines with its `ETag`.
fn read(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("files")
        .and(tail_path())
        .and(warp::get())
        .and(raw_query())
        .and(auth(app.clone()))
        .and(with_app(app))
        .then(
            |path: Result<String, ApiError>, query: String, auth: Auth, app: Arc<App>| async move {
                respond(read_file(path, query, auth, app).await)
            },
        )
}

async fn read_file(
    path: Result<String, ApiError>,
    query: String,
    auth: Auth,
    app: Arc<App>,
) -> Result<Response, ApiError> {
    auth.check()?;
    let q: ReadQuery = match path? {
        p if p.is_empty() => parse_query(&query)?,
        p => {
            let page: PageQuery = parse_query(&query)?;
            ReadQuery {
                path: Some(p),
                depth: page.depth,
                offset: page.offset,
                limit: page.limit,
            }
        }
    };
    let path = q.path.clone().unwrap_or_default();
    let limits = app.config.files.clone();
    let ws = app.workspace.clone();
    blocking(move || {
        let rel = ws.normalize(&path)?;
        let target = ws.resolve(&rel)?;
        let meta = ws.metadata(&target).map_err(FsError::io(&rel))?;
        if meta.is_dir() {
            let depth = q.depth.unwrap_or(1).clamp(1, 10);
            let max = (q.limit.unwrap_or(limits.list_entries as u64) as usize)
                .clamp(1, limits.list_entries);
            let listing = files::list(&ws, &rel, depth, q.offset.unwrap_or(0) as usize, max)?;
            return Ok(warp::reply::json(&listing).into_response());
        }
        let page = files::read_page(
            &ws,
            &target,
            &rel,
            PageRequest {
                offset: q.offset.unwrap_or(0),
                limit: q.limit.unwrap_or(u64::MAX).max(1),
                max_bytes: limits.read_bytes,
            },
        )?;
        let etag = page.etag.clone();
        let mut value = serde_json::to_value(&page).map_err(ApiError::internal)?;
        if page.binary {
            value["message"] = json!(format!(
                "`{rel}` is a binary file; GET /download/{rel} gives its bytes"
            ));
        }
        Ok(with_etag(warp::reply::json(&value).into_response(), &etag))
    })
    .await
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

/// The precondition: the `If-Match` header, else `if_match` from the body.
fn precondition(header: Option<String>, body: Option<String>) -> Option<String> {
    header.or(body).filter(|s| !s.trim().is_empty())
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PutFile {
    /// The whole new text of the file.
    content: Option<String>,
    /// The commit message (default `Create <path>` or `Update <path>`).
    message: Option<String>,
    /// Make the file executable (scripts); the mode is kept when not sent.
    executable: Option<bool>,
    /// The file's `etag` as last read: the write is refused with 412 if the file changed since.
    if_match: Option<String>,
    /// `commit` (default) or `pull_request` (GitHub mode: the change waits in a pull request).
    mode: Option<String>,
}

/// What a write to one file carries besides its path: a JSON body or a query
/// string, still to be parsed into the route's request type.
enum Raw {
    Json(Result<Bytes, ApiError>),
    Query(String),
}

impl Raw {
    fn parse<T: DeserializeOwned + Default>(self) -> Result<T, ApiError> {
        match self {
            Raw::Json(body) => parse_json(body),
            Raw::Query(query) => parse_query(&query),
        }
    }
}

/// The body, bounded by `Config::max_body`.
fn with_json(app: &App) -> impl Filter<Extract = (Raw,), Error = Rejection> + Clone {
    body(app.config.max_body).map(Raw::Json)
}

fn with_query() -> impl Filter<Extract = (Raw,), Error = Rejection> + Clone {
    // `and_then` only to say this filter's error as the body's is said.
    raw_query().and_then(|query| async move { Ok::<_, Rejection>(Raw::Query(query)) })
}

/// The opening of a write to one file, `/files/{path}` by `method`: the app,
/// the `If-Match` header, and the caller with the path (in the workspace's
/// form) and the request parsed into `T`, refused in that order: the token
/// (the scope the catalogue documents), the path, then the request. As
/// `json_request`, an `Err` is the answer, never a rejection.
fn one_file<T: DeserializeOwned + Default + Send>(
    app: Arc<App>,
    method: impl Filter<Extract = (), Error = Rejection> + Clone + Send + Sync + 'static,
    raw: impl Filter<Extract = (Raw,), Error = Rejection> + Clone + Send + Sync + 'static,
) -> impl Filter<Extract = (Arc<App>, Option<String>, Opened<(String, T)>), Error = Rejection> + Clone
{
    warp::path("files")
        .and(tail_path())
        .and(method)
        .and(warp::header::optional::<String>("if-match"))
        .and(auth(app.clone()))
        .and(with_app(app))
        .and(raw)
        .map(
            |path: Result<String, ApiError>,
             if_match: Option<String>,
             auth: Auth,
             app: Arc<App>,
             raw: Raw| {
                let opened = auth.check().and_then(|caller| {
                    let path = app.workspace.normalize(&path?)?;
                    Ok((caller, (path, raw.parse()?)))
                });
                (app, if_match, opened)
            },
        )
        .untuple_one()
}

/// PUT /files/{path} — create or replace a file: one commit. 201 when created.
fn put(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    one_file(app.clone(), warp::put(), with_json(&app)).then(
        |app: Arc<App>, if_match: Option<String>, opened: Opened<(String, PutFile)>| async move {
            respond(
                async {
                    let (caller, (path, req)) = opened?;
                    let content = req.content.ok_or_else(|| {
                        ApiError::bad_request(
                            "`content` is required: the whole new text of the file",
                        )
                    })?;
                    let exists = app.workspace.resolve(&path)?.exists();
                    let message = message_or(req.message, || {
                        format!("{} {path}", if exists { "Update" } else { "Create" })
                    });
                    let applied = app
                        .writes
                        .commit::<ApiError>(
                            &caller,
                            message,
                            vec![Op::Write {
                                path: path.clone(),
                                contents: content.into_bytes(),
                                executable: req.executable,
                                if_match: precondition(if_match, req.if_match),
                            }],
                            req.mode.as_deref(),
                        )
                        .await?;
                    let status = if applied.pull_request.is_some() {
                        StatusCode::ACCEPTED
                    } else if applied.created.contains(&path) {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    let answer = written(&applied, &path);
                    let etag = answer["etag"].as_str().unwrap_or_default().to_string();
                    Ok(with_etag(
                        warp::reply::with_status(warp::reply::json(&answer), status)
                            .into_response(),
                        &etag,
                    ))
                }
                .await,
            )
        },
    )
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchFile {
    /// Exact-text replacements, applied in order; each `old` must occur exactly once.
    #[serde(default)]
    edits: Vec<TextEdit>,
    /// The commit message (default `Edit <path>`).
    message: Option<String>,
    /// The file's `etag` as last read: refused with 412 if the file changed since.
    if_match: Option<String>,
    /// `commit` (default) or `pull_request` (GitHub mode).
    mode: Option<String>,
}

/// PATCH /files/{path} — exact-text edits, all or none: one commit. 409 naming the
/// edit when its `old` is not found exactly once.
fn patch(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    one_file(app.clone(), warp::patch(), with_json(&app))
        .then(
            |app: Arc<App>, if_match: Option<String>, opened: Opened<(String, PatchFile)>| async move {
                respond(
                    async {
                        let (caller, (path, req)) = opened?;
                        if req.edits.is_empty() {
                            return Err(ApiError::bad_request(
                                "`edits` is required: a list of {\"old\", \"new\"}",
                            ));
                        }
                        if req.edits.len() > MAX_EDITS {
                            return Err(ApiError::bad_request(format!(
                                "at most {MAX_EDITS} edits at once; send the whole file with PUT instead"
                            )));
                        }
                        let count = req.edits.len();
                        let message = message_or(req.message, || format!("Edit {path}"));
                        let applied = app.writes.commit::<ApiError>(&caller,
                            message,
                            vec![Op::Edit {
                                path: path.clone(),
                                edits: req.edits,
                                if_match: precondition(if_match, req.if_match),
                            }],
                            req.mode.as_deref(),
                        )
                        .await?;
                        let mut answer = written(&applied, &path);
                        answer["edits"] = json!(count);
                        let etag = answer["etag"].as_str().unwrap_or_default().to_string();
                        Ok(with_etag(
                            with_write_status(&applied, &answer, StatusCode::OK),
                            &etag,
                        ))
                    }
                    .await,
                )
            },
        )
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    /// The commit message (default `Delete <path>`).
    message: Option<String>,
    /// The file's `etag` as last read: refused with 412 if the file changed since.
    if_match: Option<String>,
    /// `commit` (default) or `pull_request` (GitHub mode).
    mode: Option<String>,
}

/// DELETE /files/{path}?message= — remove a file: one commit.
fn delete(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    one_file(app, warp::delete(), with_query())
        .then(
            |app: Arc<App>, if_match: Option<String>, opened: Opened<(String, DeleteQuery)>| async move {
                respond(
                    async {
                        let (caller, (path, q)) = opened?;
                        if app.workspace.resolve(&path)?.is_dir() {
                            return Err(FsError::IsFolder(path).into());
                        }
                        let message = message_or(q.message, || format!("Delete {path}"));
                        let applied = app
                            .writes
                            .commit::<ApiError>(
                                &caller,
                                message,
                                vec![Op::Delete {
                                    path: path.clone(),
                                    if_match: precondition(if_match, q.if_match),
                                }],
                                q.mode.as_deref(),
                            )
                            .await?;
                        let mut answer = written(&applied, &path);
                        answer["deleted"] = json!(applied.pull_request.is_none());
                        Ok(with_write_status(&applied, &answer, StatusCode::OK))
                    }
                    .await,
                )
            },
        )
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveFiles {
    /// The file or folder to move.
    from: Option<String>,
    /// Where it goes.
    to: Option<String>,
    /// Replace `to` if it exists (default false: 409).
    #[serde(default)]
    overwrite: bool,
    /// The commit message (default `Move <from> to <to>`).
    message: Option<String>,
    /// For a file: its `etag` as last read.
    if_match: Option<String>,
    /// `commit` (default) or `pull_request` (GitHub mode).
    mode: Option<String>,
}

/// POST /files/move — `{"from", "to"}`: rename a file, or a folder with every file
/// in it: one commit.
fn move_files(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("files" / "move")
        .and(warp::post())
        .and(warp::header::optional::<String>("if-match"))
        .and(json_request(app))
        .then(
            |if_match: Option<String>, app: Arc<App>, opened: Opened<MoveFiles>| async move {
                respond(
                    async {
                        let (caller, req) = opened?;
                        let (Some(from), Some(to)) = (req.from, req.to) else {
                            return Err(ApiError::bad_request("`from` and `to` are required"));
                        };
                        let ws = app.workspace.clone();
                        let from = ws.normalize(&from)?;
                        let to = ws.normalize(&to)?;
                        if from.is_empty() || to.is_empty() {
                            return Err(ApiError::bad_request(
                                "`from` and `to` must name something inside the workspace, not its root",
                            ));
                        }
                        let if_match = precondition(if_match, req.if_match);
                        let overwrite = req.overwrite;
                        let (f, t) = (from.clone(), to.clone());
                        let ops = blocking(move || move_ops(&ws, &f, &t, overwrite, if_match))
                            .await?;
                        let moved = ops.len();
                        let message = message_or(req.message, || format!("Move {from} to {to}"));
                        let applied =
                            app.writes.commit::<ApiError>(&caller, message, ops, req.mode.as_deref()).await?;
                        let mut answer = json!({
                            "from": from,
                            "to": to,
                            "files": moved,
                            "changed": applied.changed,
                            "commit": applied.commit,
                            "committed": applied.uncommitted.is_empty() && applied.pull_request.is_none(),
                        });
                        if !applied.uncommitted.is_empty() {
                            answer["uncommitted"] = json!(applied.uncommitted);
                        }
                        if let Some(url) = &applied.pull_request {
                            answer["pull_request"] = json!(url);
                        }
                        Ok(with_write_status(&applied, &answer, StatusCode::OK))
                    }
                    .await,
                )
            },
        )
}

/// One move for a file; one per file for a folder (every file in it, ignored
/// ones too: they move in the workspace only).
fn move_ops(
    ws: &crate::workspace::Workspace,
    from: &str,
    to: &str,
    overwrite: bool,
    if_match: Option<String>,
) -> Result<Vec<Op>, ApiError> {
    let source = ws.resolve(from)?;
    let meta = std::fs::symlink_metadata(&source).map_err(FsError::io(from))?;
    if !meta.is_dir() {
        return Ok(vec![Op::Move {
            from: from.to_string(),
            to: to.to_string(),
            overwrite,
            if_match,
        }]);
    }
    if if_match.is_some() {
        return Err(ApiError::bad_request(
            "`If-Match` applies to a file; a folder has no version of its own",
        ));
    }
    if to.starts_with(&format!("{from}/")) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("`{to}` is inside `{from}`: a folder cannot move into itself"),
        ));
    }
    let mut ops = Vec::new();
    for entry in ws.walker(&source, false).build().flatten() {
        if !entry.file_type().is_some_and(|t| t.is_file()) || !entry.path().starts_with(&source) {
            continue;
        }
        let rel = ws.relative(entry.path());
        let rest = rel
            .strip_prefix(from)
            .unwrap_or(&rel)
            .trim_start_matches('/');
        ops.push(Op::Move {
            from: rel.clone(),
            to: format!("{to}/{rest}"),
            overwrite,
            if_match: None,
        });
        if ops.len() > MAX_MOVE_FILES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("`{from}` holds more than {MAX_MOVE_FILES} files; move it in parts"),
            ));
        }
    }
    if ops.is_empty() {
        return Err(ApiError::not_found(format!(
            "`{from}` holds no files to move"
        )));
    }
    Ok(ops)
}

/// GET /download/{path} — the raw bytes of any file in the workspace (archives
/// included), streamed, with `ETag` and `Content-Disposition: attachment`.
fn download(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("download")
        .and(tail_path())
        .and(warp::get())
        .and(auth(app.clone()))
        .and(with_app(app))
        .then(
            |path: Result<String, ApiError>, auth: Auth, app: Arc<App>| async move {
                respond(
                    async {
                        auth.check()?;
                        let ws = app.workspace.clone();
                        let path = ws.normalize(&path?)?;
                        let rel = path.clone();
                        let (file, size, etag) = blocking(move || {
                            let target = ws.resolve(&rel)?;
                            let mut file =
                                ws.open_file(&target).map_err(|e| match e.raw_os_error() {
                                    Some(libc::EISDIR) => FsError::IsFolder(rel.clone()),
                                    _ => FsError::io(&rel)(e),
                                })?;
                            let meta = file.metadata().map_err(FsError::io(&rel))?;
                            // The ETag of the very bytes sent: hashed from the
                            // same descriptor, then read again from the start.
                            let (etag, _) =
                                files::state_of(&mut file).map_err(FsError::io(&rel))?;
                            std::io::Seek::rewind(&mut file).map_err(FsError::io(&rel))?;
                            Ok((file, meta.len(), etag.to_string()))
                        })
                        .await?;
                        let stream =
                            tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
                        let mut response = warp::reply::stream(stream).into_response();
                        let name = path.rsplit('/').next().unwrap_or("download");
                        let headers = response.headers_mut();
                        headers.insert(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static(content_type(name)),
                        );
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                        headers.insert(
                            header::X_CONTENT_TYPE_OPTIONS,
                            HeaderValue::from_static("nosniff"),
                        );
                        let safe: String = name
                            .chars()
                            .map(|c| {
                                if c.is_ascii_graphic() && c != '"' && c != '\\' {
                                    c
                                } else {
                                    '_'
                                }
                            })
                            .collect();
                        if let Ok(v) =
                            HeaderValue::from_str(&format!("attachment; filename=\"{safe}\""))
                        {
                            headers.insert(header::CONTENT_DISPOSITION, v);
                        }
                        Ok(with_etag(response, &etag))
                    }
                    .await,
                )
            },
        )
}
