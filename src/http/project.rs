//! Routes over many files at once: `GET /search`, `POST /combine` and
//! `POST /archive`. The work itself lives in `workspace::{search, combine,
//! archive}`; here are the limits and the answers' shape.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sha2::Digest;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{
    blocking, json_request, query_request, respond, with_write_status, written, ApiError, Opened,
};
use crate::auth::Scope;
use crate::source::change::Op;
use crate::source::writes::message_or;
use crate::workspace::archive::{self, Format};
use crate::workspace::{combine, search};
use crate::App;

/// The longest search pattern taken.
const MAX_PATTERN: usize = 1_000;
/// Characters of a matching line shown.
const MAX_LINE_CHARS: usize = 400;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    search_route(app.clone())
        .or(combine_route(app.clone()))
        .unify()
        .or(archive_route(app))
        .unify()
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchQuery {
    /// The text to find (literal unless `regex=true`).
    q: Option<String>,
    /// Search only under this folder.
    path: Option<String>,
    /// Only files whose path matches, like ripgrep's -g (for example `*.rs` or `!*.md`).
    glob: Option<String>,
    /// Treat `q` as a regular expression (Rust syntax).
    #[serde(default)]
    regex: bool,
    /// Match without regard to case.
    #[serde(default)]
    ignore_case: bool,
    /// Matches to return, at most 500 (default 100).
    max: Option<usize>,
    /// Matches to skip: the `next_offset` of the previous answer.
    offset: Option<usize>,
}

/// GET /search?q=&path=&glob=&regex=&ignore_case=&max=&offset= — matching lines
/// with file and line number, `.gitignore` honoured, binary files skipped.
fn search_route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("search")
        .and(warp::get())
        .and(query_request(app))
        .then(|app: Arc<App>, opened: Opened<SearchQuery>| async move {
            respond(
                async {
                    let (_, q) = opened?;
                    let pattern = q.q.filter(|p| !p.is_empty()).ok_or_else(|| {
                        ApiError::bad_request(
                            "`q` is required: the text (or with `regex=true`, the regex) to find",
                        )
                    })?;
                    if pattern.len() > MAX_PATTERN {
                        return Err(ApiError::bad_request(format!(
                            "`q` is longer than {MAX_PATTERN} characters"
                        )));
                    }
                    let limits = &app.config.files;
                    let query = search::Query {
                        pattern,
                        regex: q.regex,
                        ignore_case: q.ignore_case,
                        path: q.path.unwrap_or_default(),
                        glob: q.glob,
                        offset: q.offset.unwrap_or(0),
                        max: q.max.unwrap_or(100).clamp(1, limits.search_matches),
                        max_line_chars: MAX_LINE_CHARS,
                        max_answer_chars: limits.answer_chars,
                        time_limit: limits.search_time,
                    };
                    let ws = app.workspace.clone();
                    let found = blocking(move || Ok(search::search(&ws, &query)?)).await?;
                    Ok(warp::reply::json(&found).into_response())
                }
                .await,
            )
        })
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CombineRequest {
    /// Files or folders to combine.
    #[serde(default)]
    paths: Vec<String>,
    /// Globs selecting files to combine (for example `src/**/*.rs`).
    #[serde(default)]
    globs: Vec<String>,
    /// Write the combined text to this file (one commit) instead of answering it.
    output: Option<String>,
    /// The commit message when writing `output`.
    message: Option<String>,
    /// Where in the combined text this answer starts (bytes), for the next page.
    offset: Option<usize>,
}

/// POST /combine — `{"paths" or "globs", "output"?}`: the files as one text, each
/// under a `==> path <==` header. With `output`, the text is written there (one
/// commit) instead of answered.
fn combine_route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("combine")
        .and(warp::post())
        .and(json_request(app))
        .then(|app: Arc<App>, opened: Opened<CombineRequest>| async move {
            respond(
                async {
                    let (caller, req) = opened?;
                    if req.paths.is_empty() && req.globs.is_empty() {
                        return Err(ApiError::bad_request(
                            "send `paths` (files or folders) or `globs` (like `src/**/*.rs`)",
                        ));
                    }
                    if let Some(output) = &req.output {
                        auth_write(&caller)?;
                        app.workspace.normalize(output)?;
                    }
                    let limits = app.config.files.clone();
                    let ws = app.workspace.clone();
                    let (paths, globs) = (req.paths.clone(), req.globs.clone());
                    let combined = blocking(move || {
                        Ok(combine::combine(
                            &ws,
                            &paths,
                            &globs,
                            limits.combine_bytes,
                            limits.combine_files,
                        )?)
                    })
                    .await?;
                    let Some(output) = req.output else {
                        let budget = app.config.files.answer_chars;
                        let start = floor_char(&combined.text, req.offset.unwrap_or(0));
                        let end = floor_char(&combined.text, start.saturating_add(budget));
                        let rest = end < combined.text.len();
                        let mut answer = json!({
                            "text": &combined.text[start..end],
                            "files": combined.files,
                            "skipped": combined.skipped,
                            "size": combined.text.len(),
                            "offset": start,
                            "truncated": rest,
                        });
                        if rest {
                            answer["next_offset"] = json!(end);
                            answer["note"] = json!("the text goes on: ask again with `offset` = `next_offset`, or write it to a file with `output`");
                        }
                        return Ok(warp::reply::json(&answer).into_response());
                    };
                    let output = app.workspace.normalize(&output)?;
                    let count = combined.files.len();
                    let message =
                        message_or(req.message, || format!("Combine {count} files into {output}"));
                    let size = combined.text.len();
                    let applied = app.writes.commit::<ApiError>(&caller, message, vec![Op::Write {
                                path: output.clone(),
                                contents: combined.text.into_bytes(),
                                executable: Some(false),
                                if_match: None,
                            }], None).await?;
                    let mut answer = written(&applied, &output);
                    answer["size"] = json!(size);
                    answer["files"] = json!(combined.files);
                    answer["skipped"] = json!(combined.skipped);
                    Ok(with_write_status(&applied, &answer, StatusCode::CREATED))
                }
                .await,
            )
        })
}

fn auth_write(caller: &crate::auth::Caller) -> Result<(), ApiError> {
    if caller.scopes.contains(Scope::Write) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "writing the result needs the `write` scope; the token `{}` has: {}",
                caller.token_name,
                caller.scopes.names().join(", ")
            ),
        ))
    }
}

/// The largest char boundary of `text` at or before `at`.
fn floor_char(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ArchiveRequest {
    /// The folder (or file) to archive; `.` for the whole workspace.
    path: Option<String>,
    /// `zip` or `tar.gz`.
    format: Option<String>,
    /// Where to write the archive (default `archives/<folder>.<ext>`).
    output: Option<String>,
    /// Include files `.gitignore` ignores (default false).
    #[serde(default)]
    include_ignored: bool,
    /// The commit message, when the archive is committed.
    message: Option<String>,
}

/// POST /archive — `{"path", "format": "zip" or "tar.gz", "output"?}`: builds the
/// archive into the workspace (default `archives/<folder>.<ext>`) and answers its
/// path, size and sha256; `GET /download/{path}` fetches it.
fn archive_route(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("archive")
        .and(warp::post())
        .and(json_request(app))
        .then(|app: Arc<App>, opened: Opened<ArchiveRequest>| async move {
            respond(
                async {
                    let (caller, req) = opened?;
                    let format_name = req.format.as_deref().unwrap_or("zip");
                    let format = Format::parse(format_name).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "`format` is `zip` or `tar.gz`, not `{format_name}`"
                        ))
                    })?;
                    let ws = app.workspace.clone();
                    let path = ws.normalize(req.path.as_deref().unwrap_or(""))?;
                    let name = match path.rsplit('/').next() {
                        Some(n) if !n.is_empty() => n.to_string(),
                        _ => "workspace".to_string(),
                    };
                    let output = ws
                        .normalize(&req.output.unwrap_or_else(|| {
                            format!("archives/{name}.{}", format.extension())
                        }))?;
                    let skip = ws.resolve(&output)?;
                    let max = app.config.files.archive_bytes;
                    let (p, include_ignored) = (path.clone(), req.include_ignored);
                    let built = blocking(move || {
                        Ok(archive::build(
                            &ws,
                            &p,
                            format,
                            include_ignored,
                            &skip,
                            max,
                        )?)
                    })
                    .await?;
                    let size = built.bytes.len();
                    let sha256 = hex::encode(sha2::Sha256::digest(&built.bytes));
                    let message = message_or(req.message, || {
                        format!(
                            "Archive {} as {output}",
                            if path.is_empty() {
                                "the workspace"
                            } else {
                                &path
                            }
                        )
                    });
                    let applied = app
                        .writes
                        .commit::<ApiError>(
                            &caller,
                            message,
                            vec![Op::Write {
                                path: output.clone(),
                                contents: built.bytes,
                                executable: Some(false),
                                if_match: None,
                            }],
                            None,
                        )
                        .await?;
                    let mut answer = written(&applied, &output);
                    answer["format"] = json!(format.extension());
                    answer["size"] = json!(size);
                    answer["sha256"] = json!(sha256);
                    answer["files"] = json!(built.files);
                    answer["download"] = json!(format!("/download/{output}"));
                    Ok(with_write_status(&applied, &answer, StatusCode::CREATED))
                }
                .await,
            )
        })
}
