//! History: `GET /history` (commits of the branch, newest first, for the whole
//! repository or one path) and `POST /revert` (one new commit that undoes an
//! earlier one).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{blocking, json_request, query_request, respond, with_write_status, ApiError, Opened};
use crate::source::change::{self, ChangeError};
use crate::source::repo::Lookup;
use crate::source::writes::message_or;
use crate::App;

/// Characters of a commit message shown in a history answer.
const MAX_MESSAGE_CHARS: usize = 2_000;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    history(app.clone()).or(revert(app)).unify()
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    /// Only commits that changed this file or folder.
    path: Option<String>,
    /// Commits to return (default 20, at most 200).
    limit: Option<usize>,
    /// Commits to skip, for the next page.
    offset: Option<usize>,
}

/// GET /history?path=&limit=&offset= — commits, newest first; with `path`, those
/// that changed that file or folder.
fn history(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("history")
        .and(warp::get())
        .and(query_request(app))
        .then(|app: Arc<App>, opened: Opened<HistoryQuery>| async move {
            respond(
                async {
                    let (_, q) = opened?;
                    let path = match q.path.as_deref() {
                        Some(p) => Some(app.workspace.normalize(p)?).filter(|p| !p.is_empty()),
                        None => None,
                    };
                    let limit = q.limit.unwrap_or(20).clamp(1, 100);
                    let offset = q.offset.unwrap_or(0);
                    let repo = app.repo.clone();
                    let walk = app.config.files.history_walk;
                    let budget = app.config.files.answer_chars;
                    let p = path.clone();
                    let (mut commits, mut more) = blocking(move || {
                        repo.log(p.as_deref(), offset, limit, walk)
                            .map_err(ApiError::internal)
                    })
                    .await?;
                    let mut used = 0usize;
                    for (i, c) in commits.iter_mut().enumerate() {
                        if let Some((at, _)) = c.message.char_indices().nth(MAX_MESSAGE_CHARS) {
                            c.message.truncate(at);
                            c.message.push_str(" […]");
                        }
                        used += c.message.len() + c.summary.len() + 300;
                        if used > budget {
                            commits.truncate(i.max(1));
                            more = true;
                            break;
                        }
                    }
                    let mut answer = json!({
                        "path": path,
                        "commits": commits,
                    });
                    if more {
                        answer["next_offset"] = json!(offset + commits.len());
                    }
                    Ok(warp::reply::json(&answer).into_response())
                }
                .await,
            )
        })
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RevertRequest {
    /// The commit to undo: its id, or at least 4 leading hex digits.
    commit: Option<String>,
    /// The commit message (default `Revert "<summary>"`).
    message: Option<String>,
    /// `commit` (default) or `pull_request` (GitHub mode).
    mode: Option<String>,
}

/// POST /revert — `{"commit"}` (its id, or at least 4 leading hex digits): one new
/// commit that puts back every file it changed. 409 when a file was changed again
/// since.
fn revert(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("revert")
        .and(warp::post())
        .and(json_request(app))
        .then(|app: Arc<App>, opened: Opened<RevertRequest>| async move {
            respond(
                async {
                    let (caller, req) = opened?;
                    let wanted = req.commit.unwrap_or_default().trim().to_ascii_lowercase();
                    if wanted.len() < 4
                        || wanted.len() > 40
                        || !wanted.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(ApiError::bad_request(
                            "`commit` is a commit id (4 to 40 hex digits) from GET /history",
                        ));
                    }
                    let repo = app.repo.clone();
                    let walk = app.config.files.history_walk;
                    let w = wanted.clone();
                    let (target, info, ops) = blocking(move || {
                        let target = match repo.find_in_history(&w, walk).map_err(ApiError::internal)? {
                            Lookup::Found(id) => id,
                            Lookup::NotFound => {
                                return Err(ApiError::not_found(format!(
                                    "no commit `{w}` in the branch's history; GET /history lists them"
                                )))
                            }
                            Lookup::Ambiguous => {
                                return Err(ApiError::bad_request(format!(
                                    "`{w}` is the start of more than one commit; give more digits"
                                )))
                            }
                        };
                        let info = repo.commit_info(target).map_err(ApiError::internal)?;
                        let ops = match change::revert_ops(&repo, target) {
                            Err(ChangeError::Empty) => {
                                return Err(ApiError::new(
                                    StatusCode::CONFLICT,
                                    "no_change",
                                    format!("commit {target} changes nothing now: it is undone already, or changed no files"),
                                ))
                            }
                            Err(ChangeError::Conflict(m)) => {
                                return Err(ApiError::new(StatusCode::CONFLICT, "revert_conflict", m))
                            }
                            other => other?,
                        };
                        Ok((target, info, ops))
                    })
                    .await?;
                    let files: Vec<String> = ops.iter().map(|op| match op {
                        change::Op::Write { path, .. } | change::Op::Delete { path, .. } => path.clone(),
                        change::Op::Edit { path, .. } => path.clone(),
                        change::Op::Move { to, .. } => to.clone(),
                    }).collect();
                    let message = message_or(req.message, || {
                        format!("Revert \"{}\"\n\nThis reverts commit {target}.", info.summary)
                    });
                    let applied =
                        app.writes.commit::<ApiError>(&caller, message, ops, req.mode.as_deref()).await?;
                    let mut answer = json!({
                        "reverted": target.to_string(),
                        "commit": applied.commit,
                        "files": files,
                    });
                    if let Some(url) = &applied.pull_request {
                        answer["pull_request"] = json!(url);
                    }
                    Ok(with_write_status(&applied, &answer, StatusCode::CREATED))
                }
                .await,
            )
        })
}
