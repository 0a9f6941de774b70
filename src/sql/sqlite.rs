//! SQLite through rusqlite (bundled, so the binary carries its own SQLite).
//!
//! A reader's connection is opened read-only and set `query_only`; every
//! connection has no room for ATTACH (the limit is 0, and the authorizer denies
//! it: an attached file could be anywhere on disk), refuses `load_extension`, and
//! refuses pragmas that set values unless it may write. A progress handler stops
//! a statement at its deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use super::{base64, float, Answer, Column, Request, Rows, SqlError, Table};

/// The sample the default database starts with.
const SEED: &str = "
CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT 0,
    due DATE,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO todos (title, done, due) VALUES
    ('Read the README', 1, '2026-01-05'),
    ('Add an endpoint with POST /endpoints', 0, NULL),
    ('Ask the assistant what is left to do', 0, '2026-12-31');
";

/// Creates the default database with a small sample table, if it is missing.
pub fn seed_default(path: &Path) -> rusqlite::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    }
    let conn = Connection::open(path)?;
    conn.execute_batch(SEED)?;
    Ok(true)
}

/// Pragmas that take a table or index name and only describe it.
const DESCRIBING_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "table_list",
];

fn open(path: &Path, write: bool, timeout: Duration) -> Result<Connection, SqlError> {
    if !write && !path.exists() {
        return Err(SqlError::Database(format!(
            "the database file `{}` does not exist yet",
            path.file_name().unwrap_or_default().to_string_lossy()
        )));
    }
    let flags = if write {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX
        // A symlink anywhere in the path is refused by SQLite itself, so a
        // folder swapped for a link after `sql::target` checked it is not
        // followed to another database (the daemon's OAuth store, say).
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let conn = Connection::open_with_flags(path, flags).map_err(database)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(database)?;
    conn.busy_timeout(timeout).map_err(database)?;
    if !write {
        conn.pragma_update(None, "query_only", true)
            .map_err(database)?;
    }
    conn.authorizer(Some(move |ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            Authorization::Deny
        }
        // A pragma with a value may set something; readers keep the ones that
        // only describe the schema (`pragma_table_info(...)` and friends).
        AuthAction::Pragma {
            pragma_name,
            pragma_value: Some(_),
        } if !write && !DESCRIBING_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str()) => {
            Authorization::Deny
        }
        _ => Authorization::Allow,
    }))
    .map_err(database)?;
    let deadline = Instant::now() + timeout;
    conn.progress_handler(1_000, Some(move || Instant::now() > deadline))
        .map_err(database)?;
    Ok(conn)
}

/// Runs one statement.
pub fn run(path: &Path, request: &Request) -> Result<Answer, SqlError> {
    let conn = open(path, request.write, request.timeout)?;
    let timed_out = |e: rusqlite::Error| classify(e, request.timeout);
    let mut stmt = conn.prepare(&request.query).map_err(timed_out)?;
    let expected = stmt.parameter_count();
    if expected != request.params.len() {
        return Err(SqlError::BadRequest(format!(
            "the statement has {expected} parameter(s) and {} were sent in `params`",
            request.params.len()
        )));
    }
    for (i, value) in request.params.iter().enumerate() {
        bind(&mut stmt, i + 1, value)?;
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    if columns.is_empty() {
        let changes = stmt.raw_execute().map_err(timed_out)?;
        return Ok(Rows::new(0, 0).finish(columns, Some(changes as u64)));
    }
    // SQLite has no boolean type; a column declared BOOLEAN answers true/false.
    let boolean: Vec<bool> = stmt
        .columns()
        .iter()
        .map(|c| {
            c.decl_type().is_some_and(|t| {
                t.eq_ignore_ascii_case("boolean") || t.eq_ignore_ascii_case("bool")
            })
        })
        .collect();
    let mut out = Rows::new(request.max_rows, request.max_chars);
    let mut rows = stmt.raw_query();
    let mut row_values = Vec::with_capacity(columns.len());
    while let Some(row) = rows.next().map_err(timed_out)? {
        if !out.room() {
            break;
        }
        row_values.clear();
        for (i, is_bool) in boolean.iter().enumerate() {
            let cell = row.get_ref(i).map_err(timed_out)?;
            row_values.push(to_json(cell, *is_bool));
        }
        out.push(&row_values);
    }
    Ok(out.finish(columns, None))
}

fn bind(stmt: &mut rusqlite::Statement<'_>, index: usize, value: &Value) -> Result<(), SqlError> {
    let result = match value {
        Value::Null => stmt.raw_bind_parameter(index, rusqlite::types::Null),
        Value::Bool(b) => stmt.raw_bind_parameter(index, *b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => stmt.raw_bind_parameter(index, i),
            None => stmt.raw_bind_parameter(index, n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => stmt.raw_bind_parameter(index, s.as_str()),
        other => stmt.raw_bind_parameter(index, other.to_string()),
    };
    result.map_err(database)
}

fn to_json(cell: ValueRef<'_>, boolean: bool) -> Value {
    match cell {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) if boolean && (i == 0 || i == 1) => Value::Bool(i == 1),
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => float(f),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => base64(b),
    }
}

/// Tables and views, with columns and primary keys.
pub fn schema(path: &Path, timeout: Duration) -> Result<Vec<Table>, SqlError> {
    let conn = open(path, false, timeout)?;
    let mut tables = Vec::new();
    let mut list = conn
        .prepare(
            "SELECT name, type FROM sqlite_schema \
             WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .map_err(database)?;
    let names: Vec<(String, String)> = list
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(database)?
        .collect::<Result<_, _>>()
        .map_err(database)?;
    let mut info = conn
        .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")
        .map_err(database)?;
    for (name, kind) in names {
        let mut key: Vec<(i64, String)> = Vec::new();
        let columns = info
            .query_map([&name], |r| {
                let column: String = r.get(0)?;
                let pk: i64 = r.get(3)?;
                Ok((column, r.get::<_, String>(1)?, r.get::<_, bool>(2)?, pk))
            })
            .map_err(database)?
            .map(|c| {
                c.map(|(column, kind, not_null, pk)| {
                    if pk > 0 {
                        key.push((pk, column.clone()));
                    }
                    Column {
                        name: column,
                        kind,
                        nullable: !not_null && pk == 0,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(database)?;
        key.sort();
        tables.push(Table {
            schema: None,
            name,
            kind,
            columns,
            primary_key: key.into_iter().map(|(_, c)| c).collect(),
        });
    }
    Ok(tables)
}

fn database(e: rusqlite::Error) -> SqlError {
    classify(e, Duration::ZERO)
}

/// Sorts SQLite's errors: a refused write, an interrupted statement, or the
/// database's own message.
fn classify(e: rusqlite::Error, timeout: Duration) -> SqlError {
    use rusqlite::ffi::ErrorCode;
    if let rusqlite::Error::SqliteFailure(code, _) = &e {
        match code.code {
            ErrorCode::ReadOnly => return SqlError::ReadOnly(e.to_string()),
            ErrorCode::OperationInterrupted => return SqlError::Timeout(timeout),
            _ => {}
        }
        if code.extended_code == rusqlite::ffi::SQLITE_AUTH {
            return SqlError::Database(format!(
                "{e} (ATTACH, load_extension, and setting pragmas without `sql-write` are refused)"
            ));
        }
    }
    let message = e.to_string();
    if message.contains("attempt to write a readonly database") {
        return SqlError::ReadOnly(message);
    }
    SqlError::Database(message)
}
