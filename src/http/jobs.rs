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
use crate::exec::{Exit, Output};
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
                respond((|| {
                    let job = find(&app, &id, auth)?;
                    let page: Page = parse_query(&query)?;
                    Ok(warp::reply::json(&view(&job, &page)?))
                })())
            },
        );
    let delete = warp::path!("jobs" / String)
        .and(warp::delete())
        .and(auth(app.clone()))
        .and(with_app(app))
        .then(|id: String, auth: Auth, app: Arc<App>| async move {
            respond(
                async {
                    let job = find(&app, &id, auth)?;
                    if job.end().is_none() {
                        job.live().cancel();
                        job.wait(CANCEL_WAIT).await;
                    }
                    Ok(warp::reply::json(&view(&job, &Page::default())?))
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

fn find(app: &App, id: &str, auth: Auth) -> Result<Arc<Job>, ApiError> {
    let caller: Caller = auth.check()?;
    app.jobs
        .get(id)
        .filter(|job| job.owner == caller.token_name || caller.scopes.contains(Scope::Admin))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no job `{id}`: finished jobs are dropped after a while, and a restart forgets them"
            ))
        })
}

fn view(job: &Job, page: &Page) -> Result<Value, ApiError> {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "`limit` is between 1 and {MAX_LIMIT}"
        )));
    }
    let end = job.end();
    let state = job.state();
    let finished = end.as_ref().and_then(|e| e.result.as_ref().ok());
    let output = match finished {
        Some(f) => Output {
            streams: [f.stdout.clone(), f.stderr.clone()],
            truncated: [f.stdout_truncated, f.stderr_truncated],
        },
        None => job.live().read(Output::clone),
    };
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
    let (exit_code, signal) = match finished.map(|f| f.exit) {
        Some(Exit::Code(c)) => (Some(c), None),
        Some(Exit::Signal(s)) => (None, Some(s)),
        _ => (None, None),
    };
    let mut view = json!({
        "id": job.id,
        "endpoint": job.endpoint,
        "state": state.as_str(),
        "started_at": rfc3339(job.started_at),
        "finished_at": end.as_ref().map(|e| rfc3339(e.at)),
        "duration_ms": jobs::elapsed_ms(job, end.as_deref()),
        "exit_code": exit_code,
        "output": out,
        "offset": page.offset,
        "next_offset": stop,
        "output_bytes": stdout.len(),
        "more": stop < stdout.len() || state == State::Running,
        "stderr": String::from_utf8_lossy(&stderr[tail_start..]),
        "truncated": output.truncated[0] || output.truncated[1],
    });
    if let Some(s) = signal {
        view["signal"] = json!(s);
    }
    if let Some(end) = &end {
        if state != State::Cancelled {
            if let Err(e) = answer(job, &end.result) {
                view["error"] = json!({"code": e.code, "message": e.message});
            }
        }
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
