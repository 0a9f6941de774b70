//! `ApiError`, the one error shape every answer uses:
//! `{"error": {"code": "...", "message": "...", ...details}}` with the right status.
//! Application errors are replies built here; `handle_rejection` maps warp's own
//! rejections (no route, body too large) to the same shape.

use std::convert::Infallible;

use serde_json::{json, Map, Value};
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use crate::exec::ExecError;
use crate::manifest::Problem;
use crate::sandbox::SandboxError;
use crate::source::change::ChangeError;
use crate::source::github::GitHubError;
use crate::source::repo::RepoError;
use crate::source::writes::{Refusal, WriteError};
use crate::sql::SqlError;
use crate::workspace::files::EditError;
use crate::workspace::{FsError, PathError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
    pub retry_after: Option<u64>,
    /// A 401's `WWW-Authenticate` challenge, when it says more than the realm.
    pub challenge: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            retry_after: None,
            challenge: None,
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> ApiError {
        self.details.insert(key.to_string(), value);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error: {message}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message.to_string(),
        )
    }

    /// 422 with every manifest problem, each with file, line and column.
    pub fn invalid_manifests(problems: &[Problem]) -> ApiError {
        let summary: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_manifest",
            format!(
                "the manifests are invalid; nothing was committed: {}",
                summary.join("; ")
            ),
        )
        .with("problems", json!(problems))
    }

    pub fn busy(retry_after: u64, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message);
        e.retry_after = Some(retry_after);
        e
    }
}

impl ApiError {
    /// The JSON an answer carries: `{"error": {"code", "message", ...details}}`.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), Value::from(self.code));
        error.insert("message".into(), Value::from(self.message.clone()));
        error.extend(self.details.clone());
        json!({ "error": error })
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            warp::reply::with_status(warp::reply::json(&self.body()), self.status).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = self
                .challenge
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or(HeaderValue::from_static("Bearer realm=\"dynapi\""));
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::NotFound(_) => ApiError::not_found(e.to_string()),
            ChangeError::Precondition { ref current, .. } => {
                let current = current.clone();
                ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition_failed",
                    e.to_string(),
                )
                .with("current_etag", json!(current))
            }
            ChangeError::Edit { ref error, .. } => {
                let (index, found) = match error {
                    EditError::Empty { index } | EditError::NotFound { index } => (*index, 0),
                    EditError::Ambiguous { index, count } => (*index, *count),
                };
                ApiError::new(StatusCode::CONFLICT, "edit_failed", e.to_string())
                    .with("edit", json!(index))
                    .with("occurrences", json!(found))
            }
            ChangeError::NotText(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_text", e.to_string())
            }
            ChangeError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ChangeError::Settings => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs the `admin` scope: dynapi.yaml grants tokens and sets the sandbox",
            )
            .with("reason", serde_json::json!(e.to_string())),
            ChangeError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            ChangeError::Invalid(problems) => ApiError::invalid_manifests(&problems),
            ChangeError::Empty => ApiError::new(
                StatusCode::CONFLICT,
                "no_change",
                "the change leaves every file as it was; nothing to commit",
            ),
            ChangeError::Path(p) => p.into(),
            ChangeError::Repo(RepoError::IndexLocked(_)) => {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    "index_locked",
                    format!("nothing was written: {e}; try again when that git command is done"),
                );
                e.retry_after = Some(5);
                e
            }
            // Other writers (replicas, humans) kept moving the branch for
            // every attempt: nothing was written, and a retry may well land.
            ChangeError::Repo(RepoError::Moved) => {
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "branch_busy",
                    "nothing was written: the branch moved under every attempt (other writers); try again",
                );
                e.retry_after = Some(1);
                e
            }
            ChangeError::Repo(RepoError::Io(io)) => os_error(&io, "nothing was committed")
                .unwrap_or_else(|| ApiError::internal(format!("the commit failed: {io}"))),
            ChangeError::Repo(r) => ApiError::internal(format!("the commit failed: {r}")),
            ChangeError::GitHub(g) => g.into(),
        }
    }
}

/// A write the service refused: the writer's reason, a `mode` that cannot be
/// honoured (400), or a write whose task ended without an answer (500).
impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Change(e) => e.into(),
            WriteError::Mode(message) => ApiError::bad_request(message),
            WriteError::Lost(message) => ApiError::internal(message),
        }
    }
}

/// The audit log names a refused write by its answer's code.
impl Refusal for ApiError {
    fn code(&self) -> &'static str {
        self.code
    }
}

impl From<FsError> for ApiError {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Path(p) => p.into(),
            FsError::NotFound(_) => ApiError::not_found(e.to_string()),
            FsError::IsFolder(_) => {
                ApiError::new(StatusCode::CONFLICT, "is_a_folder", e.to_string())
            }
            FsError::NotFolder(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_a_folder", e.to_string())
            }
            FsError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
            }
            FsError::BadRequest(m) => ApiError::bad_request(m),
            FsError::Io {
                ref path,
                ref source,
            } => os_error(source, &format!("`{path}`")).unwrap_or_else(|| ApiError::internal(e)),
        }
    }
}

/// What the operating system said of a path the caller chose, when that is
/// the request's fault or the disk's state rather than the daemon's: a name
/// too long, a file where a folder is needed, a read-only or full disk. The one
/// place these become answers (every file route and the writer pass here);
/// `None` for errors that are the daemon's (500).
fn os_error(e: &std::io::Error, what: &str) -> Option<ApiError> {
    use std::io::ErrorKind as K;
    let (status, code, reason) = match e.kind() {
        K::InvalidFilename => (
            StatusCode::BAD_REQUEST,
            "bad_path",
            "a file name is too long",
        ),
        K::NotADirectory => (
            StatusCode::CONFLICT,
            "not_a_folder",
            "a part of the path is a file, not a folder",
        ),
        K::IsADirectory => (StatusCode::CONFLICT, "is_a_folder", "the path is a folder"),
        K::DirectoryNotEmpty => (
            StatusCode::CONFLICT,
            "not_empty",
            "a folder there is not empty",
        ),
        K::AlreadyExists => (
            StatusCode::CONFLICT,
            "conflict",
            "something is already there",
        ),
        K::ReadOnlyFilesystem => (
            StatusCode::CONFLICT,
            "read_only",
            "the workspace's disk is read-only",
        ),
        K::PermissionDenied => (
            StatusCode::FORBIDDEN,
            "permission_denied",
            "the daemon's user may not do this on disk",
        ),
        K::StorageFull | K::QuotaExceeded => (
            StatusCode::INSUFFICIENT_STORAGE,
            "disk_full",
            "the disk is full",
        ),
        K::FileTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the file is larger than the disk allows",
        ),
        K::CrossesDevices => (StatusCode::CONFLICT, "conflict", "the move crosses disks"),
        _ => return None,
    };
    Some(ApiError::new(
        status,
        code,
        format!("{what}: {reason} ({e})"),
    ))
}

impl From<SqlError> for ApiError {
    fn from(e: SqlError) -> Self {
        let message = e.to_string();
        match e {
            SqlError::UnknownDatabase(_) => ApiError::not_found(message),
            SqlError::Config(..) | SqlError::Unavailable(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "database_unavailable", message)
            }
            SqlError::Database(_) => ApiError::new(StatusCode::BAD_REQUEST, "sql_error", message),
            SqlError::ReadOnly(_) => ApiError::new(StatusCode::FORBIDDEN, "read_only", message),
            SqlError::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            SqlError::BadRequest(_) => ApiError::bad_request(message),
            SqlError::Busy => ApiError::busy(1, format!("{message}; retry in a second")),
            SqlError::Refused(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "database_refused", message)
            }
            SqlError::Path(p) => p.into(),
        }
    }
}

/// GitHub refused or could not be reached: the write did not happen.
impl From<GitHubError> for ApiError {
    fn from(e: GitHubError) -> Self {
        let message = format!("nothing was written: {e}");
        match e {
            GitHubError::RateLimited(wait) => {
                ApiError::busy(wait.as_secs().max(1), message).with("github", json!("rate_limited"))
            }
            _ => ApiError::new(StatusCode::BAD_GATEWAY, "github_unavailable", message),
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Io(..) => ApiError::internal(e),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.to_string()),
        }
    }
}

impl From<ExecError> for ApiError {
    fn from(e: ExecError) -> Self {
        ApiError::from(&e)
    }
}

impl From<&ExecError> for ApiError {
    fn from(e: &ExecError) -> Self {
        match e {
            ExecError::Busy(_) | ExecError::EndpointBusy { .. } => {
                ApiError::busy(1, format!("{e}; retry in a second"))
            }
            ExecError::Sandbox(SandboxError::Unavailable(_) | SandboxError::Closed(_)) => {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "sandbox_unavailable",
                    e.to_string(),
                )
            }
            ExecError::Sandbox(SandboxError::Setup(_)) => ApiError::internal(e),
            ExecError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            ExecError::Spawn { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "script_failed_to_start",
                format!("{e} (does the script start with a `#!` line?)"),
            ),
        }
    }
}

/// Maps warp's rejections to the error shape. Anything unexpected is a 404 or 405,
/// never a 500: rejections only ever mean "this route did not match".
pub async fn handle_rejection(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::not_found("no route here; GET /endpoints lists the endpoints")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not take that method",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is too large",
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("invalid query string: {e}"))
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(e.to_string())
    } else {
        tracing::debug!(?rejection, "unmatched rejection");
        ApiError::not_found("no route here")
    };
    Ok(error.into_response())
}
