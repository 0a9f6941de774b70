//! The shared state's tables, as numbered migrations. Each is applied once, in
//! order, inside one transaction that first takes an advisory lock: replicas
//! starting at the same moment apply them one after the other, and the second
//! finds nothing left to do. A migration is never edited once released; a
//! change of schema is a new one at the end.
//!
//! Times the replicas compare (leases, pacing) are the database's `now()`, so
//! that the replicas' clocks need not agree; the OAuth tables keep the
//! seconds-since-the-epoch integers of the SQLite store they mirror.

use super::SharedError;

/// The advisory lock migrations are applied under ("dynapi" in ASCII).
const LOCK: i64 = 0x0000_6479_6e61_7069;

const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "
CREATE TABLE dynapi_oauth_clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    secret_hash BYTEA,
    redirect_uris TEXT NOT NULL,
    scope TEXT,
    created BIGINT NOT NULL,
    fetched BIGINT,
    approved BIGINT
);
CREATE TABLE dynapi_oauth_grants (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES dynapi_oauth_clients(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    resource TEXT,
    audience TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    created BIGINT NOT NULL,
    refreshed BIGINT,
    refresh_hash BYTEA NOT NULL UNIQUE,
    previous_refresh_hash BYTEA,
    refresh_expires BIGINT NOT NULL
);
CREATE INDEX dynapi_oauth_grants_previous ON dynapi_oauth_grants(previous_refresh_hash);
CREATE TABLE dynapi_oauth_codes (
    hash BYTEA PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    redirect_given BOOLEAN NOT NULL,
    challenge TEXT,
    scope TEXT NOT NULL,
    resource TEXT,
    audience TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    expires BIGINT NOT NULL,
    grant_id TEXT
);
CREATE TABLE dynapi_oauth_access (
    hash BYTEA PRIMARY KEY,
    grant_id TEXT NOT NULL REFERENCES dynapi_oauth_grants(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE TABLE dynapi_deliveries (
    id TEXT PRIMARY KEY,
    received TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dynapi_deliveries_received ON dynapi_deliveries(received);
CREATE TABLE dynapi_github (
    id INT PRIMARY KEY CHECK (id = 1),
    next_write TIMESTAMPTZ NOT NULL DEFAULT now(),
    blocked_until TIMESTAMPTZ
);
INSERT INTO dynapi_github (id) VALUES (1);
CREATE TABLE dynapi_guesses (
    address TEXT PRIMARY KEY,
    wrong TIMESTAMPTZ[] NOT NULL,
    next_check TIMESTAMPTZ,
    locked_wrong INT NOT NULL DEFAULT 0
);
CREATE TABLE dynapi_jobs (
    id TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    owner TEXT NOT NULL,
    json_output BOOLEAN NOT NULL,
    replica TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    state TEXT NOT NULL,
    duration_ms BIGINT,
    exit_code INT,
    signal INT,
    stdout BYTEA NOT NULL DEFAULT '',
    stderr BYTEA NOT NULL DEFAULT '',
    truncated BOOLEAN NOT NULL DEFAULT false,
    error_code TEXT,
    error_message TEXT
);
CREATE INDEX dynapi_jobs_finished ON dynapi_jobs(finished_at);
",
)];

/// Applies the migrations this database has not had yet.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), SharedError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS dynapi_migrations (
             version INT PRIMARY KEY,
             applied TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM dynapi_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(newer) = applied.iter().copied().find(|v| *v > latest) {
        return Err(SharedError::Database(format!(
            "its schema is at version {newer}, made by a newer dynapi than this one (which knows up to {latest})"
        )));
    }
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO dynapi_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!("the shared state's schema: migration {version} applied");
    }
    tx.commit().await?;
    Ok(())
}
