//! Where the authorization server keeps its clients, grants, codes and access
//! tokens: SQLite in the state folder by default (`sqlite.rs`), or PostgreSQL
//! when replicas share their state (`postgres.rs`, `--state`). Both keep the
//! same rows and answer the same questions; only SHA-256 hashes of secrets,
//! codes and tokens are stored.
//!
//! This module knows rows, not flows: `oauth/mod.rs` decides what a request may
//! do.

mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::shared::{Shared, SharedError};
pub use sqlite::{Sqlite, FILE};

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn later(after: Duration) -> i64 {
    now().saturating_add(after.as_secs() as i64)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the OAuth store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the OAuth store in {0}")]
    Shared(#[from] SharedError),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        StoreError::Shared(e.into())
    }
}

/// How a client came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Registered itself (RFC 7591).
    Registered,
    /// Made by the owner with `dynapi oauth client new`.
    Owner,
    /// Its id is the URL of its metadata document.
    Document,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Registered => "registered",
            ClientKind::Owner => "owner",
            ClientKind::Document => "document",
        }
    }

    fn parse(s: &str) -> ClientKind {
        match s {
            "owner" => ClientKind::Owner,
            "document" => ClientKind::Document,
            _ => ClientKind::Registered,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub kind: ClientKind,
    /// The SHA-256 of its secret; `None` for a public client.
    pub secret_hash: Option<[u8; 32]>,
    pub redirect_uris: Vec<String>,
    /// The scopes it asks for when an authorization request names none.
    pub scope: Option<String>,
    pub created: i64,
    /// When a metadata document was last read.
    pub fetched: Option<i64>,
    /// Whether the owner ever approved it (clients the owner made count as
    /// approved): until then its redirect URIs are only what a stranger wrote.
    pub approved: bool,
}

/// What the owner approved for a client, while its refresh token lives.
#[derive(Debug, Clone)]
pub struct Grant {
    pub id: String,
    pub client_id: String,
    pub client_name: String,
    pub scope: String,
    pub resource: Option<String>,
    /// `api` or `mcp`: where its access tokens are accepted.
    pub audience: String,
    pub approved_by: String,
    pub created: i64,
    pub refreshed: Option<i64>,
    pub refresh_expires: i64,
}

/// An authorization code, as issued.
#[derive(Debug, Clone)]
pub struct Code {
    pub client_id: String,
    pub redirect_uri: String,
    pub redirect_given: bool,
    pub challenge: Option<String>,
    pub scope: String,
    pub resource: Option<String>,
    pub audience: String,
    pub approved_by: String,
    pub expires: i64,
    /// Set once redeemed: the grant it made.
    pub grant_id: Option<String>,
}

/// An access token to store: its hash, scopes and end.
#[derive(Debug, Clone)]
pub struct NewAccess<'a> {
    pub hash: &'a [u8; 32],
    pub scope: &'a str,
    pub expires: i64,
}

/// An access token, looked up by its hash.
#[derive(Debug, Clone)]
pub struct Access {
    pub grant_id: String,
    pub client_id: String,
    pub client_name: String,
    pub scope: String,
    pub audience: String,
    pub resource: Option<String>,
    pub expires: i64,
}

/// The store: one of the two kinds.
pub enum Store {
    Sqlite(Box<Sqlite>),
    Postgres(postgres::Postgres),
}

impl Store {
    /// The SQLite store in the state folder `dir`, made when missing.
    pub fn open(dir: &std::path::Path) -> Result<Store, StoreError> {
        Sqlite::open(dir).map(|db| Store::Sqlite(Box::new(db)))
    }

    /// The store in the shared state.
    pub fn shared(shared: Arc<Shared>) -> Store {
        Store::Postgres(postgres::Postgres::new(shared))
    }

    pub async fn add_client(&self, c: &Client) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(db) => db.add_client(c),
            Store::Postgres(db) => db.add_client(c).await,
        }
    }

    pub async fn client(&self, id: &str) -> Result<Option<Client>, StoreError> {
        match self {
            Store::Sqlite(db) => db.client(id),
            Store::Postgres(db) => db.client(id).await,
        }
    }

    pub async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        match self {
            Store::Sqlite(db) => db.clients(),
            Store::Postgres(db) => db.clients().await,
        }
    }

    /// Clients that came by themselves (registered, or named by a metadata
    /// document) and never got a grant are forgotten once older than
    /// `before`: anyone may make them, so what they leave behind is bounded.
    /// Answers how many such clients are left.
    pub async fn prune_strangers(&self, before: i64) -> Result<usize, StoreError> {
        match self {
            Store::Sqlite(db) => db.prune_strangers(before),
            Store::Postgres(db) => db.prune_strangers(before).await,
        }
    }

    /// Records that the owner approved the client (the first time only).
    pub async fn mark_approved(&self, id: &str) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(db) => db.mark_approved(id),
            Store::Postgres(db) => db.mark_approved(id).await,
        }
    }

    /// Removes a client with its grants and their tokens; false if unknown.
    pub async fn remove_client(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(db) => db.remove_client(id),
            Store::Postgres(db) => db.remove_client(id).await,
        }
    }

    pub async fn add_code(&self, hash: &[u8; 32], code: &Code) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(db) => db.add_code(hash, code),
            Store::Postgres(db) => db.add_code(hash, code).await,
        }
    }

    pub async fn code(&self, hash: &[u8; 32]) -> Result<Option<Code>, StoreError> {
        match self {
            Store::Sqlite(db) => db.code(hash),
            Store::Postgres(db) => db.code(hash).await,
        }
    }

    /// Redeems a code: makes its grant and first access token at once, and
    /// only if nobody redeemed it first (false then).
    pub async fn redeem(
        &self,
        code_hash: &[u8; 32],
        grant: &Grant,
        refresh_hash: &[u8; 32],
        access_hash: &[u8; 32],
        access_expires: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(db) => {
                db.redeem(code_hash, grant, refresh_hash, access_hash, access_expires)
            }
            Store::Postgres(db) => {
                db.redeem(code_hash, grant, refresh_hash, access_hash, access_expires)
                    .await
            }
        }
    }

    /// The grant whose current refresh token hashes to `hash`.
    pub async fn grant_by_refresh(&self, hash: &[u8; 32]) -> Result<Option<Grant>, StoreError> {
        match self {
            Store::Sqlite(db) => db.grant_by_refresh(hash),
            Store::Postgres(db) => db.grant_by_refresh(hash).await,
        }
    }

    /// The grant whose previous (rotated away) refresh token hashes to `hash`.
    pub async fn grant_by_previous_refresh(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<Grant>, StoreError> {
        match self {
            Store::Sqlite(db) => db.grant_by_previous_refresh(hash),
            Store::Postgres(db) => db.grant_by_previous_refresh(hash).await,
        }
    }

    pub async fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        match self {
            Store::Sqlite(db) => db.grants(),
            Store::Postgres(db) => db.grants().await,
        }
    }

    /// Rotates a grant's refresh token (only if `old` is still its current one)
    /// and adds an access token; false if another request rotated it first.
    pub async fn rotate(
        &self,
        grant_id: &str,
        old: &[u8; 32],
        new: &[u8; 32],
        refresh_expires: i64,
        access: &NewAccess<'_>,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(db) => db.rotate(grant_id, old, new, refresh_expires, access),
            Store::Postgres(db) => db.rotate(grant_id, old, new, refresh_expires, access).await,
        }
    }

    /// Revokes a grant and every token it issued; false if unknown.
    pub async fn revoke_grant(&self, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(db) => db.revoke_grant(id),
            Store::Postgres(db) => db.revoke_grant(id).await,
        }
    }

    pub async fn revoke_access(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(db) => db.revoke_access(hash),
            Store::Postgres(db) => db.revoke_access(hash).await,
        }
    }

    /// The access token hashing to `hash`, with its grant's client and audience.
    pub async fn access(&self, hash: &[u8; 32]) -> Result<Option<Access>, StoreError> {
        match self {
            Store::Sqlite(db) => db.access(hash),
            Store::Postgres(db) => db.access(hash).await,
        }
    }
}
