//! SQL: one statement against a database `dynapi.yaml` names (the workspace's
//! SQLite file `data/app.db` by default, or PostgreSQL), with positional
//! parameters, a row cap, a size cap and a time limit.
//!
//! Read-only unless the caller may write, and that is enforced by the database,
//! never by reading the SQL text: SQLite opens the file read-only with
//! `query_only` and an authorizer; PostgreSQL runs the statement in a read-only
//! transaction. Blocking SQLite work runs on tokio's blocking pool; PostgreSQL is
//! async. Rows are serialized as they are read, so the answer is built once.

mod postgres;
mod sqlite;
pub(crate) mod tls;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::registry::Database;
use crate::workspace::{PathError, Workspace};

pub use sqlite::seed_default;

/// What to run.
#[derive(Debug, Clone)]
pub struct Request {
    pub query: String,
    /// Positional parameters (`?` or `?1` in SQLite, `$1` in PostgreSQL).
    pub params: Vec<Value>,
    /// Whether the statement may write (the caller has `sql-write`).
    pub write: bool,
    pub max_rows: usize,
    /// The answer's budget in characters of JSON rows.
    pub max_chars: usize,
    pub timeout: Duration,
}

/// What a statement answered. `rows` is kept as serialized JSON (an array of
/// arrays), written once while reading.
#[derive(Debug)]
pub struct Answer {
    pub columns: Vec<String>,
    pub rows_json: String,
    pub row_count: usize,
    pub truncated: bool,
    /// Rows a statement without a result changed.
    pub changes: Option<u64>,
}

impl Answer {
    /// `{"columns", "rows", "row_count", "truncated", "changes"?}`.
    pub fn to_json(&self) -> String {
        let columns = serde_json::to_string(&self.columns).unwrap_or_else(|_| "[]".into());
        let mut out = String::with_capacity(self.rows_json.len() + columns.len() + 96);
        out.push_str("{\"columns\":");
        out.push_str(&columns);
        out.push_str(",\"rows\":");
        out.push_str(&self.rows_json);
        out.push_str(&format!(
            ",\"row_count\":{},\"truncated\":{}",
            self.row_count, self.truncated
        ));
        if let Some(changes) = self.changes {
            out.push_str(&format!(",\"changes\":{changes}"));
        }
        out.push('}');
        out
    }
}

/// Builds the JSON array of rows within the caps.
struct Rows {
    json: String,
    count: usize,
    truncated: bool,
    max_rows: usize,
    max_chars: usize,
}

impl Rows {
    fn new(max_rows: usize, max_chars: usize) -> Rows {
        Rows {
            json: String::from("["),
            count: 0,
            truncated: false,
            max_rows,
            max_chars,
        }
    }

    /// Whether another row may come in; false marks the answer truncated.
    fn room(&mut self) -> bool {
        if self.count >= self.max_rows || self.json.len() >= self.max_chars {
            self.truncated = true;
            return false;
        }
        true
    }

    /// Adds one row; a row that would pass the budget ends the answer instead
    /// (unless it is the first).
    fn push(&mut self, row: &[Value]) {
        let start = self.json.len();
        if self.count > 0 {
            self.json.push(',');
        }
        // Serializing plain JSON values into a String cannot fail.
        let _ = serde_json::to_writer(string_writer(&mut self.json), row);
        if self.json.len() > self.max_chars && self.count > 0 {
            self.json.truncate(start);
            self.truncated = true;
            return;
        }
        self.count += 1;
    }

    fn finish(mut self, columns: Vec<String>, changes: Option<u64>) -> Answer {
        self.json.push(']');
        Answer {
            columns,
            rows_json: self.json,
            row_count: self.count,
            truncated: self.truncated,
            changes,
        }
    }
}

/// A `Write` over a `String` that only ever receives serde_json's output, which
/// is UTF-8.
fn string_writer(s: &mut String) -> impl std::io::Write + '_ {
    struct W<'a>(&'a mut String);
    impl std::io::Write for W<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let text = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
            self.0.push_str(text);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    W(s)
}

/// A table or view and its columns.
#[derive(Debug, Serialize)]
pub struct Table {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub name: String,
    /// `table` or `view`.
    pub kind: String,
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub nullable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("no database named `{0}` in dynapi.yaml; `default` is the workspace's data/app.db")]
    UnknownDatabase(String),
    #[error("database `{0}`: {1}")]
    Config(String, String),
    #[error("could not reach the database: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Database(String),
    #[error("this token may only read; writing needs the `sql-write` scope ({0})")]
    ReadOnly(String),
    #[error("the statement ran past its time limit of {0:?} and was stopped")]
    Timeout(Duration),
    #[error("{0}")]
    BadRequest(String),
    #[error("every database slot is busy")]
    Busy,
    /// The database is one `POST /sql` must never reach (the daemon's own).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Path(#[from] PathError),
}

/// How many statements run at once, across all databases.
const MAX_RUNNING: usize = 8;
/// How long a statement waits for a slot before the caller gets 429.
const QUEUE_WAIT: Duration = Duration::from_secs(2);

/// Runs statements, a bounded number at a time.
pub struct Sql {
    slots: Semaphore,
}

impl Default for Sql {
    fn default() -> Self {
        Sql {
            slots: Semaphore::new(MAX_RUNNING),
        }
    }
}

/// Where a database is, once `${ENV}` is substituted.
enum Target {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Sql {
    /// Runs `request` against `db` (named `name`).
    pub async fn run(
        &self,
        ws: &Workspace,
        name: &str,
        db: &Database,
        request: Request,
    ) -> Result<Answer, SqlError> {
        let _slot = self.slot().await?;
        match target(ws, name, db)? {
            Target::Sqlite(path) => {
                tokio::task::spawn_blocking(move || sqlite::run(&path, &request))
                    .await
                    .map_err(|e| SqlError::Unavailable(e.to_string()))?
            }
            Target::Postgres(url) => postgres::run(&url, &request).await,
        }
    }

    /// The tables of `db`, their columns and primary keys.
    pub async fn schema(
        &self,
        ws: &Workspace,
        name: &str,
        db: &Database,
        timeout: Duration,
    ) -> Result<Vec<Table>, SqlError> {
        let _slot = self.slot().await?;
        match target(ws, name, db)? {
            Target::Sqlite(path) => {
                tokio::task::spawn_blocking(move || sqlite::schema(&path, timeout))
                    .await
                    .map_err(|e| SqlError::Unavailable(e.to_string()))?
            }
            Target::Postgres(url) => postgres::schema(&url, timeout).await,
        }
    }

    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, SqlError> {
        match tokio::time::timeout(QUEUE_WAIT, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(SqlError::Busy),
        }
    }
}

fn target(ws: &Workspace, name: &str, db: &Database) -> Result<Target, SqlError> {
    let url = expand(name, &db.url)?;
    if let Some(path) = url.strip_prefix("sqlite:") {
        let resolved = ws.resolve(path)?;
        // SQLite opens by path (with `SQLITE_OPEN_NOFOLLOW`): the path must be
        // where the file really is, and a FIFO or device there would block
        // the open beyond any time limit.
        match ws.metadata_as_spelled(&resolved) {
            Ok(None) => {}
            Ok(Some(meta)) if meta.is_file() => {}
            Ok(Some(_)) => {
                return Err(SqlError::Config(
                    name.into(),
                    format!("`{path}` is not a regular file"),
                ))
            }
            Err(e) if crate::workspace::beneath::is_escape(&e) => {
                return Err(PathError::Refused(
                    path.to_string(),
                    "a database is opened where it really is: no symlink on the way",
                )
                .into())
            }
            Err(e) => return Err(SqlError::Config(name.into(), e.to_string())),
        }
        return Ok(Target::Sqlite(resolved));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url));
    }
    Err(SqlError::Config(
        name.into(),
        "its url is neither `sqlite:<path>` nor `postgres://...`".into(),
    ))
}

/// `sqlite` or `postgres`, for answers (`unknown` when its URL cannot be built).
pub fn kind(db: &Database) -> &'static str {
    match expand("", &db.url) {
        Ok(url) if url.starts_with("sqlite:") => "sqlite",
        Ok(url) if url.starts_with("postgres") => "postgres",
        _ => "unknown",
    }
}

/// Variables `expand` refuses: the daemon's secrets.
const SECRET_VARIABLES: &[&str] = &[
    "DYNAPI_STATE",
    "DYNAPI_TOKEN",
    "GITHUB_TOKEN",
    "DYNAPI_WEBHOOK_SECRET",
];

/// Substitutes `${NAME}` with the environment variable NAME.
fn expand(database: &str, text: &str) -> Result<String, SqlError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| {
            SqlError::Config(database.into(), "a `${` in its url is never closed".into())
        })?;
        let var = &after[..end];
        // The daemon's own secrets never go into a URL that dynapi.yaml (a
        // commit) names: the database's host would be told them.
        if SECRET_VARIABLES.contains(&var) {
            return Err(SqlError::Config(
                database.into(),
                format!("`{var}` holds a secret of the daemon and is not substituted"),
            ));
        }
        let value = std::env::var(var).map_err(|_| {
            SqlError::Config(
                database.into(),
                format!("the environment variable `{var}` its url uses is not set"),
            )
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// JSON for a float: non-finite numbers (which JSON lacks) become null.
fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// Bytes as base64 text.
fn base64(bytes: &[u8]) -> Value {
    use base64::Engine;
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_substituted_and_missing_names_are_named() {
        std::env::set_var("DYNAPI_TEST_SQL_PW", "s3cret");
        assert_eq!(
            expand("x", "postgres://u:${DYNAPI_TEST_SQL_PW}@h/db").unwrap(),
            "postgres://u:s3cret@h/db"
        );
        let e = expand("x", "postgres://u:${DYNAPI_NOT_SET_ANYWHERE}@h").unwrap_err();
        assert!(e.to_string().contains("DYNAPI_NOT_SET_ANYWHERE"));
        assert!(expand("x", "postgres://${OPEN").is_err());
    }

    #[test]
    fn rows_stop_at_the_caps() {
        let mut rows = Rows::new(2, 1000);
        for i in 0..5 {
            if !rows.room() {
                break;
            }
            rows.push(&[Value::from(i)]);
        }
        let a = rows.finish(vec!["n".into()], None);
        assert_eq!(a.rows_json, "[[0],[1]]");
        assert!(a.truncated);
        let mut rows = Rows::new(100, 10);
        for i in 0..5 {
            if !rows.room() {
                break;
            }
            rows.push(&[Value::from("abcd"), Value::from(i)]);
        }
        let a = rows.finish(vec![], None);
        assert_eq!(a.row_count, 1, "the first row always fits");
        assert!(a.truncated);
        assert_eq!(
            serde_json::from_str::<Value>(&a.to_json()).unwrap()["rows"],
            serde_json::json!([["abcd", 0]])
        );
    }
}
