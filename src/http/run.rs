//! How a route runs a script, shared by the routes that do (`endpoints.rs`,
//! `seed.rs`) and the one that reads a finished run (`jobs.rs`): the sandbox
//! policy with its `writable` paths opened, and the answer a run ends in. No
//! routes here, so route modules never import one another.

use std::sync::Arc;

use serde_json::{json, Value};
use warp::http::StatusCode;

use super::ApiError;
use crate::exec::{ExecError, Exit, Finished};
use crate::jobs;
use crate::registry;
use crate::sandbox;
use crate::App;

/// What the sandbox lets a script do, its `writable` paths resolved in the
/// workspace (a folder named there that does not exist yet is made, so that the
/// script may write in it).
pub(super) fn policy(
    app: &App,
    mode: sandbox::Mode,
    wanted: &registry::Sandbox,
) -> Result<sandbox::Policy, ApiError> {
    // Each writable path is opened here, once, beneath the workspace and
    // through no symlink; the sandbox grants that descriptor, never the path
    // looked up again (a folder swapped for a symlink meanwhile grants nothing).
    let mut writable = Vec::new();
    for w in &wanted.writable {
        if w == "." {
            writable.push(sandbox::Writable::Workspace);
            continue;
        }
        let path = app.workspace.resolve(w)?;
        // A missing folder is made the same way, beneath the root; `open_path`
        // said NotFound only after finding no symlink in what exists.
        let fd = match app.workspace.open_path(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => app
                .workspace
                .create_dir_all(&path)
                .and_then(|()| app.workspace.open_path(&path)),
            other => other,
        };
        let fd = fd.map_err(|e| {
            if crate::workspace::beneath::is_escape(&e) {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "writable_refused",
                    format!(
                        "the writable path `{w}` is, or passes through, a symlink; \
                         the script did not run"
                    ),
                )
            } else {
                ApiError::internal(format!("could not open the writable path `{w}`: {e}"))
            }
        })?;
        writable.push(sandbox::Writable::Path(path, Arc::new(fd)));
    }
    Ok(sandbox::Policy {
        mode,
        writable,
        network: wanted.network,
    })
}

/// The answer of a run that ended (see the module doc), also what a finished
/// job's `result` says.
pub(super) fn answer(
    job: &jobs::Job,
    result: &Result<Finished, ExecError>,
) -> Result<Value, ApiError> {
    let finished = result.as_ref().map_err(ApiError::from)?;
    let stdout = String::from_utf8_lossy(&finished.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&finished.stderr).into_owned();
    let truncated = finished.stdout_truncated || finished.stderr_truncated;
    let duration_ms = finished.duration.as_millis() as u64;
    let (exit_code, signal) = match finished.exit {
        Exit::TimedOut => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "`{}` ran longer than its timeout of {} and was stopped",
                    job.endpoint,
                    humantime::format_duration(job.timeout)
                ),
            )
            .with("stdout", json!(stdout))
            .with("stderr", json!(stderr))
            .with("truncated", json!(truncated)))
        }
        Exit::Code(c) => (Some(c), None),
        Exit::Signal(s) => (None, Some(s)),
    };
    let ok = exit_code == Some(0);
    let output = if ok && job.json_output {
        if finished.stdout_truncated {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_output",
                "the script's JSON output was larger than the output limit",
            )
            .with("stderr", json!(stderr)));
        }
        serde_json::from_str::<Value>(&stdout).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "bad_output",
                format!("the script said `output: json` but printed something else: {e}"),
            )
            .with("stdout", json!(stdout))
            .with("stderr", json!(stderr))
        })?
    } else {
        Value::String(stdout)
    };
    let mut answer = json!({
        "ok": ok,
        "exit_code": exit_code,
        "output": output,
        "stderr": stderr,
        "truncated": truncated,
        "duration_ms": duration_ms,
    });
    if let Some(s) = signal {
        answer["signal"] = json!(s);
    }
    Ok(answer)
}
