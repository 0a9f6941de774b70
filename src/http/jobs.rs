//! `GET /jobs/{id}` and `DELETE /jobs/{id}`: a long endpoint run, read page by
//! page while it goes on, or stopped. A job is visible to the token that started it
//! and to admins; to anyone else it does not exist (404).
//!
//! The answer: `{"id", "endpoint", "state", "started_at", "finished_at",
//! "duration_ms", "exit_code", "signal"?, "output", "offset", "next_offset",
//! "output_bytes", "more", "stderr", "truncated", "error"?}`. `output` is stdout
//! from byte `offset` on, at most `limit` bytes, cut on a character boundary;
//! `next_offset` is where to read on, and `more` says whether there is (or will
//! be) more. When the job succeeded, its endpoint says `output: json`, and the
//! whole output is in the page, `output` is that JSON. `stderr` is its last 8 KB.
//! `error` is the error a waiting caller would have got (timeout, bad output,
//! could not start).

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::run::answer;
use super::{auth, parse_query, raw_query, respond, with_app, ApiError, Auth};
use crate::auth::{Caller, Scope};
use crate::jobs::{self, Job, State};
use crate::App;

/// The page size when the caller gives none, and the largest one: GPT Actions
/// refuse answers over 100,000 characters.
const DEFAULT_LIMIT: usize = 60_000;
const MAX_LIMIT: usize = 90_000;
/// How much of the end of stderr an answer carries.
const STDERR_TAIL: usize = 8 * 1024;
/// How long `DELETE` waits for the killed script to be gone.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let get = warp::path!("jobs" / String)
        .and(warp::get())
        .and(raw_query())
        .and(auth(app.clone()))
        .and(with_app(app.clone()))
        .then(
            |id: String, query: String, auth: Auth, app: Arc<App>| async move {
                respond(
                    async {
                        let page: Page = parse_query(&query)?;
                        let seen = match find(&app, &id, auth).await? {
                            Found::Here(job) => job.seen(describe),
                            Found::Elsewhere(seen) => *seen,
                        };
                        Ok(warp::reply::json(&view(&seen, &page)?))
                    }
                    .await,
                )
            },
        );
    let delete = warp::path!("jobs" / String)
        .and(warp::delete())
        .and(auth(app.clone()))
        .and(with_app(app))
        .then(|id: String, auth: Auth, app: Arc<App>| async move {
            respond(
                async {
                    let seen = match find(&app, &id, auth).await? {
                        Found::Here(job) => {
                            if job.end().is_none() {
                                job.live().cancel();
                                job.wait(CANCEL_WAIT).await;
                            }
                            job.seen(describe)
                        }
                        Found::Elsewhere(seen) if seen.state == State::Running => {
                            cancel_elsewhere(&app, *seen).await?
                        }
                        Found::Elsewhere(seen) => *seen,
                    };
                    Ok(warp::reply::json(&view(&seen, &Page::default())?))
                }
                .await,
            )
        });
    get.or(delete).unify()
}

/// Which part of the output to answer.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    /// The byte of stdout to start at: 0, or the `next_offset` of the last answer.
    #[serde(default)]
    offset: usize,
    /// The most bytes of stdout to answer (default 60000, at most 90000).
    limit: Option<usize>,
}

/// Where a job is: run by this daemon, or (replicas) by another one.
enum Found {
    Here(Arc<Job>),
    Elsewhere(Box<jobs::Seen>),
}

async fn find(app: &App, id: &str, auth: Auth) -> Result<Found, ApiError> {
    let caller: Caller = auth.check()?;
    // The holder, not the name: two tokens may share a name.
    let holder = caller.holder.key();
    let may_see = |owner: &str| owner == holder || caller.scopes.contains(Scope::Admin);
    let not_found = || {
        ApiError::not_found(format!(
            "no job `{id}`: finished jobs are dropped after a while, and a restart forgets them"
        ))
    };
    if let Some(job) = app.jobs.get(id) {
        return match may_see(&job.owner) {
            true => Ok(Found::Here(job)),
            false => Err(not_found()),
        };
    }
    match app.jobs.elsewhere(id).await.map_err(unavailable)? {
        Some(seen) if may_see(&seen.owner) => Ok(Found::Elsewhere(Box::new(seen))),
        _ => Err(not_found()),
    }
}

fn unavailable(e: crate::shared::SharedError) -> ApiError {
    // The database's name and address are the operator's business.
    tracing::warn!("jobs in the shared state: {e}");
    ApiError::new(
        warp::http::StatusCode::SERVICE_UNAVAILABLE,
        "state_unavailable",
        "the shared state cannot be read now; try again",
    )
}

/// Asks the replica running the job to stop it, and reads the job until it
/// ended (or `CANCEL_WAIT` passed).
async fn cancel_elsewhere(app: &App, seen: jobs::Seen) -> Result<jobs::Seen, ApiError> {
    app.jobs
        .cancel_elsewhere(&seen.id)
        .await
        .map_err(unavailable)?;
    let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
    let mut last = seen;
    while last.state == State::Running && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if let Some(now) = app.jobs.elsewhere(&last.id).await.map_err(unavailable)? {
            last = now;
        }
    }
    Ok(last)
}

/// The error a waiting caller would have got from the run's end.
pub(super) fn describe(job: &Job, end: &jobs::End) -> Option<(String, String)> {
    answer(job, &end.result)
        .err()
        .map(|e| (e.code.to_string(), e.message))
}

fn view(job: &jobs::Seen, page: &Page) -> Result<Value, ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "`limit` is between 1 and {MAX_LIMIT}"
        )));
    }
    let state = job.state;
    let output = &job.output;
    let stdout = &output.streams[0];
    if page.offset > stdout.len() {
        return Err(ApiError::bad_request(format!(
            "`offset` {} is past the {} bytes of output",
            page.offset,
            stdout.len()
        )));
    }
    let stop = char_boundary(stdout, (page.offset + limit).min(stdout.len()));
    let chunk = &stdout[page.offset..stop];
    let whole = page.offset == 0 && stop == stdout.len();
    let text = Value::String(String::from_utf8_lossy(chunk).into_owned());
    let out = match (state, whole && job.json_output) {
        (State::Succeeded, true) => serde_json::from_slice(chunk).unwrap_or(text),
        _ => text,
    };
    let stderr = &output.streams[1];
    let tail_start = stderr.len().saturating_sub(STDERR_TAIL);
    let tail_start = (tail_start..stderr.len())
        .find(|&i| !is_continuation(stderr[i]))
        .unwrap_or(stderr.len());
    let mut view = json!({
        "id": job.id,
        "endpoint": job.endpoint,
        "state": state.as_str(),
        "started_at": rfc3339(job.started_at),
        "finished_at": job.finished_at.map(rfc3339),
        "duration_ms": job.duration_ms,
        "exit_code": job.exit_code,
        "output": out,
        "offset": page.offset,
        "next_offset": stop,
        "output_bytes": stdout.len(),
        "more": stop < stdout.len() || state == State::Running,
        "stderr": String::from_utf8_lossy(&stderr[tail_start..]),
        "truncated": output.truncated[0] || output.truncated[1],
    });
    if let Some(s) = job.signal {
        view["signal"] = json!(s);
    }
    if let Some((code, message)) = &job.error {
        view["error"] = json!({"code": code, "message": message});
    }
    Ok(view)
}

fn is_continuation(byte: u8) -> bool {
    byte & 0b1100_0000 == 0b1000_0000
}

/// `at`, moved back to the start of the UTF-8 character it falls in (the end of
/// the bytes is always a boundary).
fn char_boundary(bytes: &[u8], at: usize) -> usize {
    if at >= bytes.len() {
        return bytes.len();
    }
    let mut i = at;
    while i > 0 && at - i < 4 && is_continuation(bytes[i]) {
        i -= 1;
    }
    if is_continuation(bytes[i]) {
        at
    } else {
        i
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_on_character_boundaries() {
        let text = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        assert_eq!(char_boundary(text, 2), 1);
        assert_eq!(char_boundary(text, 3), 3);
        assert_eq!(char_boundary(text, 5), 3);
        assert_eq!(char_boundary(text, 8), 6);
        assert_eq!(char_boundary(text, 10), 10);
        assert_eq!(char_boundary(text, 99), 10);
    }
}
