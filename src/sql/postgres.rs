//! PostgreSQL through tokio-postgres (async: nothing here blocks a runtime thread).
//!
//! Each statement gets its own connection and transaction: `BEGIN READ ONLY` for
//! readers (plus one query, so the transaction can no longer be made read-write),
//! `SET LOCAL statement_timeout`, the statement, then `ROLLBACK` for readers or
//! `COMMIT` for writers. Parameters go as text and PostgreSQL parses them for the
//! types it inferred, as psql would. Results come in PostgreSQL's binary format
//! and are turned into JSON here, type by type.

use std::error::Error;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{pin_mut, TryStreamExt};
use serde_json::Value;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type};
use tokio_postgres::{Client, NoTls, Socket};

use super::{base64, float, Answer, Column, Request, Rows, SqlError, Table};

/// How long connecting may take, on top of the statement's own limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Result<Client, SqlError> {
    let target = super::tls::prepare(url)?;
    match target.tls {
        Some(tls) => open(&target.url, tls).await,
        None => open(&target.url, NoTls).await,
    }
}

async fn open<T>(url: &str, tls: T) -> Result<Client, SqlError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let connecting = tokio_postgres::connect(url, tls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| SqlError::Unavailable("connecting timed out".into()))?
        .map_err(|e| SqlError::Unavailable(crate::error_chain(&e)))?;
    // The connection runs until the client is dropped.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Opens the request's transaction on a new connection.
async fn begin(url: &str, write: bool, timeout: Duration) -> Result<Client, SqlError> {
    let client = connect(url).await?;
    let mode = if write { "READ WRITE" } else { "READ ONLY" };
    let ms = timeout.as_millis().max(1);
    client
        .batch_execute(&format!(
            "BEGIN {mode}; SET LOCAL statement_timeout = {ms}; \
             SET LOCAL idle_in_transaction_session_timeout = {ms}; SELECT 1"
        ))
        .await
        .map_err(|e| classify(e, timeout))?;
    // The shared state of replicas (`--state`) holds OAuth grants and every
    // owner's jobs: a `databases:` entry naming that database (by any URL,
    // or as `${DYNAPI_STATE}`) must not hand it to POST /sql.
    let state: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'dynapi_migrations')",
            &[],
        )
        .await
        .map_err(|e| classify(e, timeout))?
        .get(0);
    if state {
        return Err(SqlError::Refused(
            "this database holds dynapi's shared state (`--state`): POST /sql never reaches it; name another one in dynapi.yaml".into(),
        ));
    }
    Ok(client)
}

/// Runs one statement.
pub async fn run(url: &str, request: &Request) -> Result<Answer, SqlError> {
    let limit = request.timeout + CONNECT_TIMEOUT;
    tokio::time::timeout(limit, run_in_time(url, request))
        .await
        .map_err(|_| SqlError::Timeout(request.timeout))?
}

async fn run_in_time(url: &str, request: &Request) -> Result<Answer, SqlError> {
    let client = begin(url, request.write, request.timeout).await?;
    let failed = |e| classify(e, request.timeout);
    let statement = client.prepare(&request.query).await.map_err(failed)?;
    let expected = statement.params().len();
    if expected != request.params.len() {
        return Err(SqlError::BadRequest(format!(
            "the statement has {expected} parameter(s) and {} were sent in `params`",
            request.params.len()
        )));
    }
    let params: Vec<TextParam> = request.params.iter().map(TextParam::from_json).collect();
    let columns: Vec<String> = statement
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let answer = if columns.is_empty() {
        let changes = client
            .execute_raw(&statement, params.iter())
            .await
            .map_err(failed)?;
        Rows::new(0, 0).finish(columns, Some(changes))
    } else {
        let stream = client
            .query_raw(&statement, params.iter())
            .await
            .map_err(failed)?;
        pin_mut!(stream);
        let mut out = Rows::new(request.max_rows, request.max_chars);
        let mut values = Vec::with_capacity(columns.len());
        while let Some(row) = stream.try_next().await.map_err(failed)? {
            if !out.room() {
                break;
            }
            values.clear();
            for i in 0..columns.len() {
                let cell: Cell = row.try_get(i).map_err(failed)?;
                values.push(cell.0);
            }
            out.push(&values);
        }
        out.finish(columns, None)
    };
    let end = if request.write { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await.map_err(failed)?;
    Ok(answer)
}

/// Tables and views outside PostgreSQL's own schemas.
pub async fn schema(url: &str, timeout: Duration) -> Result<Vec<Table>, SqlError> {
    let client = begin(url, false, timeout).await?;
    let failed = |e| classify(e, timeout);
    let rows = client
        .query(
            "SELECT c.table_schema::text, c.table_name::text, t.table_type::text,
                    c.column_name::text, c.data_type::text, c.is_nullable::text = 'YES',
                    EXISTS (
                        SELECT 1 FROM information_schema.table_constraints tc
                        JOIN information_schema.key_column_usage k
                          ON k.constraint_name = tc.constraint_name
                         AND k.table_schema = tc.table_schema
                         AND k.table_name = tc.table_name
                        WHERE tc.constraint_type = 'PRIMARY KEY'
                          AND k.table_schema = c.table_schema
                          AND k.table_name = c.table_name
                          AND k.column_name = c.column_name)
             FROM information_schema.columns c
             JOIN information_schema.tables t
               ON t.table_schema = c.table_schema AND t.table_name = c.table_name
             WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema')
             ORDER BY 1, 2, c.ordinal_position",
            &[],
        )
        .await
        .map_err(failed)?;
    let mut tables: Vec<Table> = Vec::new();
    for row in rows {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let same = tables
            .last()
            .is_some_and(|t| t.schema.as_deref() == Some(schema.as_str()) && t.name == name);
        if !same {
            let kind: String = row.get(2);
            tables.push(Table {
                schema: Some(schema),
                name,
                kind: if kind == "VIEW" { "view" } else { "table" }.into(),
                columns: Vec::new(),
                primary_key: Vec::new(),
            });
        }
        let table = tables.last_mut().expect("pushed above");
        let column: String = row.get(3);
        if row.get::<_, bool>(6) {
            table.primary_key.push(column.clone());
        }
        table.columns.push(Column {
            name: column,
            kind: row.get(4),
            nullable: row.get(5),
        });
    }
    Ok(tables)
}

/// Sorts PostgreSQL's errors: a refused write, a cancelled statement, or the
/// database's own message (with its detail and hint).
fn classify(e: tokio_postgres::Error, timeout: Duration) -> SqlError {
    use tokio_postgres::error::SqlState;
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION => {
            SqlError::ReadOnly(db.message().to_string())
        }
        Some(db) if *db.code() == SqlState::QUERY_CANCELED => SqlError::Timeout(timeout),
        Some(db) => {
            let mut message = db.message().to_string();
            if let Some(detail) = db.detail() {
                message.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                message.push_str(&format!(" Hint: {hint}"));
            }
            SqlError::Database(message)
        }
        None if e.is_closed() => SqlError::Unavailable(e.to_string()),
        None => SqlError::Database(e.to_string()),
    }
}

/// A parameter sent as text: PostgreSQL parses it for whatever type it inferred
/// for the placeholder, so `$1` works for an integer column, a date or JSON alike.
#[derive(Debug)]
struct TextParam(Option<String>);

impl TextParam {
    fn from_json(value: &Value) -> TextParam {
        TextParam(match value {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        })
    }
}

impl ToSql for TextParam {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> tokio_postgres::types::Format {
        tokio_postgres::types::Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Any column value, as JSON.
struct Cell(Value);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Cell, Box<dyn Error + Sync + Send>> {
        let value = match *ty {
            Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
            Type::INT2 => Value::from(i16::from_sql(ty, raw)?),
            Type::INT4 => Value::from(i32::from_sql(ty, raw)?),
            Type::INT8 => Value::from(i64::from_sql(ty, raw)?),
            Type::OID => Value::from(u32::from_sql(ty, raw)?),
            Type::FLOAT4 => float(f32::from_sql(ty, raw)? as f64),
            Type::FLOAT8 => float(f64::from_sql(ty, raw)?),
            Type::NUMERIC => Value::String(numeric(raw)?),
            Type::JSON => serde_json::from_slice(raw)?,
            Type::JSONB => match raw.split_first() {
                Some((1, text)) => serde_json::from_slice(text)?,
                _ => return Err("unknown jsonb version".into()),
            },
            Type::BYTEA => base64(raw),
            Type::TIMESTAMP => Value::String(timestamp(i64::from_sql(ty, raw)?, "")),
            Type::TIMESTAMPTZ => Value::String(timestamp(i64::from_sql(ty, raw)?, "Z")),
            Type::DATE => Value::String(date(i32::from_sql(ty, raw)?)),
            Type::TIME => Value::String(time_of_day(i64::from_sql(ty, raw)?)),
            Type::UUID => Value::String(uuid(raw)?),
            _ if is_text(ty) => Value::String(String::from_utf8_lossy(raw).into_owned()),
            _ => Value::String(format!(
                "<{} value: cast it to text in the query, e.g. `column::text`>",
                ty.name()
            )),
        };
        Ok(Cell(value))
    }

    fn from_sql_null(_: &Type) -> Result<Cell, Box<dyn Error + Sync + Send>> {
        Ok(Cell(Value::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Types whose binary form is their text: text types, and enums.
fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::CHAR
    ) || matches!(ty.kind(), Kind::Enum(_))
        || ty.name() == "citext"
}

/// Days from 1970-01-01 to a civil date (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        d => {
            let (y, m, d) = civil(i64::from(d) + PG_EPOCH_DAYS);
            format!("{y:04}-{m:02}-{d:02}")
        }
    }
}

fn time_of_day(micros: i64) -> String {
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let mut text = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac > 0 {
        text.push_str(&format!(".{frac:06}"));
    }
    text
}

/// A timestamp (microseconds since 2000-01-01) in ISO 8601; `zone` is `Z` for
/// `timestamptz` (PostgreSQL sends those in UTC).
fn timestamp(micros: i64, zone: &str) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        m => {
            let day = m.div_euclid(86_400_000_000);
            let rest = m.rem_euclid(86_400_000_000);
            let (y, mo, d) = civil(day + PG_EPOCH_DAYS);
            format!("{y:04}-{mo:02}-{d:02}T{}{zone}", time_of_day(rest))
        }
    }
}

fn uuid(raw: &[u8]) -> Result<String, Box<dyn Error + Sync + Send>> {
    if raw.len() != 16 {
        return Err("a uuid is 16 bytes".into());
    }
    let hex = hex::encode(raw);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// A `numeric` in its exact decimal text. Binary form: digit count, weight (of the
/// first digit, in powers of 10,000), sign, display scale, then base-10,000 digits.
fn numeric(raw: &[u8]) -> Result<String, Box<dyn Error + Sync + Send>> {
    let word = |i: usize| -> Result<i16, Box<dyn Error + Sync + Send>> {
        raw.get(i..i + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric value is cut short".into())
    };
    let count = word(0)?.max(0) as usize;
    let weight = i64::from(word(2)?);
    let sign = word(4)? as u16;
    let scale = word(6)?.max(0) as usize;
    let digits = (0..count)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<Vec<i16>, _>>()?;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    // The digit whose place value is 10,000^exponent.
    let at = |exponent: i64| -> i16 {
        let index = weight - exponent;
        if index >= 0 && (index as usize) < digits.len() {
            digits[index as usize]
        } else {
            0
        }
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        for exponent in (0..=weight).rev() {
            if exponent == weight {
                text.push_str(&at(exponent).to_string());
            } else {
                text.push_str(&format!("{:04}", at(exponent)));
            }
        }
    }
    if scale > 0 {
        let mut fraction = String::new();
        let mut exponent = -1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", at(exponent)));
            exponent -= 1;
        }
        fraction.truncate(scale);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_iso_8601() {
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(date(9_820), "2026-11-20");
        assert_eq!(date(-10_957 - 1), "1969-12-31");
        assert_eq!(
            timestamp(9_820 * 86_400_000_000 + 3_723_000_042, "Z"),
            "2026-11-20T01:02:03.000042Z"
        );
        assert_eq!(timestamp(-1_000_000, ""), "1999-12-31T23:59:59");
        assert_eq!(time_of_day(45_296_000_000), "12:34:56");
    }

    #[test]
    fn numerics_keep_every_digit() {
        // 12345.678: weight 1, digits [1, 2345, 6780], scale 3.
        let mut raw = Vec::new();
        for w in [3i16, 1, 0, 3, 1, 2345, 6780] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric(&raw).unwrap(), "12345.678");
        // -0.0005: weight -1, digits [5], scale 4.
        let mut raw = Vec::new();
        for w in [1i16, -1, 0x4000u16 as i16, 4, 5] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric(&raw).unwrap(), "-0.0005");
        // 100000000 (10^8): weight 2, digits [1], scale 0.
        let mut raw = Vec::new();
        for w in [1i16, 2, 0, 0, 1] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric(&raw).unwrap(), "100000000");
    }
}
