//! SQL routes: `POST /sql` (one statement) and `GET /sql/schema`. The `read`
//! scope runs statements on a read-only connection; `sql-write` on a writable
//! one. The database, not this file, refuses a write from a reader.

use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use warp::http::{header, HeaderValue};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{json_request, query_request, respond, ApiError, Opened};
use crate::auth::Scope;
use crate::registry::{Database, DEFAULT_DATABASE};
use crate::sql::{Request, SqlError};
use crate::App;

/// Rows in an answer unless the request asks for more.
const DEFAULT_ROWS: usize = 500;
/// The most rows one answer can hold.
const MAX_ROWS: usize = 100_000;
/// The most characters of rows one answer can hold, when asked for.
const MAX_CHARS: usize = 64 << 20;
/// The longest statement taken.
const MAX_QUERY: usize = 100_000;
/// How long a statement may run.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    run(app.clone()).or(schema(app)).unify()
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SqlRequest {
    /// One SQL statement. Use `?` (SQLite) or `$1` (PostgreSQL) for parameters.
    query: Option<String>,
    /// Values for the statement's parameters, in order.
    #[serde(default)]
    params: Vec<Value>,
    /// A database named in dynapi.yaml (default: the embedded SQLite database).
    database: Option<String>,
    /// Rows to return, at most 100,000 (default 500).
    max_rows: Option<usize>,
    /// Characters of JSON to return at most (default 80,000).
    max_chars: Option<usize>,
    /// Time limit in milliseconds (default and most 30,000).
    timeout_ms: Option<u64>,
}

/// The database `name` (or `default`) of the served commit's `dynapi.yaml`.
fn database(app: &App, name: Option<&str>) -> Result<(String, Database), ApiError> {
    let name = name.filter(|n| !n.is_empty()).unwrap_or(DEFAULT_DATABASE);
    let registry = app.syncer.registry();
    let db = registry
        .settings
        .databases
        .get(name)
        .cloned()
        .ok_or_else(|| SqlError::UnknownDatabase(name.to_string()))?;
    Ok((name.to_string(), db))
}

/// POST /sql — `{"query", "params"?: [], "database"?, "max_rows"?, "max_chars"?}`
/// to `{"columns", "rows", "row_count", "truncated"}` (and `changes` for a
/// statement without rows). Answers fit a GPT by default: 500 rows and 80,000
/// characters at most, `truncated: true` when cut.
fn run(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("sql")
        .and(warp::post())
        .and(json_request(app))
        .then(|app: Arc<App>, opened: Opened<SqlRequest>| async move {
            respond(
                async {
                    let (caller, req) = opened?;
                    let query = req.query.filter(|q| !q.trim().is_empty()).ok_or_else(|| {
                        ApiError::bad_request("`query` is required: one SQL statement")
                    })?;
                    if query.len() > MAX_QUERY {
                        return Err(ApiError::bad_request(format!(
                            "`query` is longer than {MAX_QUERY} bytes"
                        )));
                    }
                    if req.params.iter().any(|p| p.is_object()) {
                        return Err(ApiError::bad_request(
                            "`params` are positional values: numbers, text, booleans, null (or arrays, sent as JSON text)",
                        ));
                    }
                    let (name, db) = database(&app, req.database.as_deref())?;
                    let request = Request {
                        query,
                        params: req.params,
                        write: caller.scopes.contains(Scope::SqlWrite),
                        max_rows: req.max_rows.unwrap_or(DEFAULT_ROWS).clamp(1, MAX_ROWS),
                        max_chars: req
                            .max_chars
                            .unwrap_or(app.config.files.answer_chars)
                            .clamp(1_000, MAX_CHARS),
                        timeout: req
                            .timeout_ms
                            .map(Duration::from_millis)
                            .unwrap_or(TIMEOUT)
                            .clamp(Duration::from_millis(10), TIMEOUT),
                    };
                    let target = format!("{name}: {}", request.query);
                    let started = std::time::Instant::now();
                    let answer = app
                        .sql
                        .run(&app.workspace, &name, &db, request)
                        .await
                        .map_err(ApiError::from);
                    app.audit.record(&crate::audit::Entry {
                        token: &caller.token_name,
                        operation: "sql",
                        target: &target,
                        commit: None,
                        library: None,
                        duration: started.elapsed(),
                        outcome: answer.as_ref().map_or_else(|e| e.code, |_| "ok"),
                    });
                    let answer = answer?;
                    let mut response = Response::new(answer.to_json().into());
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    Ok(response)
                }
                .await,
            )
        })
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SchemaQuery {
    /// A database named in dynapi.yaml (default: the embedded SQLite database).
    database: Option<String>,
}

/// GET /sql/schema?database= — tables and views, with each column's name, type
/// and nullability, and the primary key.
fn schema(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("sql" / "schema")
        .and(warp::get())
        .and(query_request(app))
        .then(|app: Arc<App>, opened: Opened<SchemaQuery>| async move {
            respond(
                async {
                    let (_, q) = opened?;
                    let (name, db) = database(&app, q.database.as_deref())?;
                    let kind = crate::sql::kind(&db);
                    let tables = app.sql.schema(&app.workspace, &name, &db, TIMEOUT).await?;
                    Ok(warp::reply::json(&json!({
                        "database": name,
                        "kind": kind,
                        "tables": tables,
                    }))
                    .into_response())
                }
                .await,
            )
        })
}
