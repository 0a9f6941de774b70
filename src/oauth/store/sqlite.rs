//! The OAuth store in SQLite: a file in the state folder (`.git/dynapi/oauth.db`),
//! outside git, shared by the daemon and `dynapi oauth` on the command line
//! (SQLite's locking makes that safe; a revocation on the command line takes
//! effect on the next request).
//!
//! Only this module's connection may open the file in the daemon's process:
//! SQLite's locks are POSIX record locks, which belong to the process, so
//! closing any other descriptor of the file would silently drop them.
//!
//! Every call takes the connection's std `Mutex` for a few statements on an
//! indexed table; that is microseconds, so the async threads call it directly
//! instead of handing it to a blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, Access, Client, ClientKind, Code, Grant, NewAccess, StoreError};

/// The file's name in the state folder.
pub const FILE: &str = "oauth.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    secret_hash BLOB,
    redirect_uris TEXT NOT NULL,
    scope TEXT,
    created INTEGER NOT NULL,
    fetched INTEGER,
    approved INTEGER
);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL REFERENCES clients(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    resource TEXT,
    audience TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    created INTEGER NOT NULL,
    refreshed INTEGER,
    refresh_hash BLOB NOT NULL UNIQUE,
    previous_refresh_hash BLOB,
    refresh_expires INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_previous ON grants(previous_refresh_hash);
CREATE TABLE IF NOT EXISTS codes (
    hash BLOB PRIMARY KEY,
    client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    redirect_given INTEGER NOT NULL,
    challenge TEXT,
    scope TEXT NOT NULL,
    resource TEXT,
    audience TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    expires INTEGER NOT NULL,
    grant_id TEXT
);
CREATE TABLE IF NOT EXISTS access (
    hash BLOB PRIMARY KEY,
    grant_id TEXT NOT NULL REFERENCES grants(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    expires INTEGER NOT NULL
);
";

pub struct Sqlite {
    path: PathBuf,
    db: Mutex<Connection>,
}

impl Sqlite {
    /// Opens (creating when missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Sqlite, StoreError> {
        let path = dir.join(FILE);
        let fail = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(rusqlite::Error::InvalidPath(e.to_string().into())))?;
        // Secrets' hashes only, but still nobody else's business. SQLite gives
        // the -wal and -shm files the database file's mode, so the file is made
        // 0600 before SQLite first opens it; stores made before that rule got
        // their modes from the umask, and are put right here.
        private_file(&path)
            .map_err(|e| fail(rusqlite::Error::InvalidPath(e.to_string().into())))?;
        let db = Connection::open(&path).map_err(fail)?;
        db.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        db.pragma_update(None, "foreign_keys", "ON").map_err(fail)?;
        db.execute_batch(SCHEMA).map_err(fail)?;
        add_approved(&db).map_err(fail)?;
        for companion in ["-wal", "-shm"] {
            let mut name = path.clone().into_os_string();
            name.push(companion);
            make_private(Path::new(&name));
        }
        Ok(Sqlite {
            path,
            db: Mutex::new(db),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        // A panic while the lock was held cannot leave SQLite half-written (each
        // change is one statement or one transaction), so a poisoned lock is used.
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut db).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    pub fn add_client(&self, c: &Client) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&c.redirect_uris).unwrap_or_else(|_| "[]".into());
        self.with(|db| {
            db.execute(
                "INSERT INTO clients (id, name, kind, secret_hash, redirect_uris, scope, created, fetched, approved)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CASE WHEN ?9 THEN ?7 END)
                 ON CONFLICT(id) DO UPDATE SET name = ?2, redirect_uris = ?5, scope = ?6, fetched = ?8,
                     approved = coalesce(approved, CASE WHEN ?9 THEN ?7 END)",
                params![
                    c.id,
                    c.name,
                    c.kind.as_str(),
                    c.secret_hash.map(|h| h.to_vec()),
                    uris,
                    c.scope,
                    c.created,
                    c.fetched,
                    c.approved || c.kind == ClientKind::Owner
                ],
            )
            .map(drop)
        })
    }

    pub fn client(&self, id: &str) -> Result<Option<Client>, StoreError> {
        self.with(|db| {
            db.query_row(
                "SELECT id, name, kind, secret_hash, redirect_uris, scope, created, fetched, approved FROM clients WHERE id = ?1",
                [id],
                client_row,
            )
            .optional()
        })
    }

    pub fn clients(&self) -> Result<Vec<Client>, StoreError> {
        self.with(|db| {
            let mut stmt = db.prepare(
                "SELECT id, name, kind, secret_hash, redirect_uris, scope, created, fetched, approved FROM clients ORDER BY created, id",
            )?;
            let rows = stmt.query_map([], client_row)?;
            rows.collect()
        })
    }

    /// Clients that came by themselves (registered, or named by a metadata
    /// document) and never got a grant are forgotten once older than
    /// `before`: anyone may make them, so what they leave behind is bounded.
    /// Answers how many such clients are left.
    pub fn prune_strangers(&self, before: i64) -> Result<usize, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM clients WHERE kind IN ('registered', 'document') AND created < ?1
                 AND approved IS NULL AND id NOT IN (SELECT client_id FROM grants)",
                [before],
            )?;
            db.query_row(
                "SELECT count(*) FROM clients WHERE kind IN ('registered', 'document')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
        })
    }

    /// Records that the owner approved the client (the first time only).
    pub fn mark_approved(&self, id: &str) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "UPDATE clients SET approved = ?2 WHERE id = ?1 AND approved IS NULL",
                params![id, now()],
            )
            .map(drop)
        })
    }

    /// Removes a client with its grants and their tokens; false if unknown.
    pub fn remove_client(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            let tx = db.transaction()?;
            tx.execute("DELETE FROM codes WHERE client_id = ?1", [id])?;
            let n = tx.execute("DELETE FROM clients WHERE id = ?1", [id])?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    pub fn add_code(&self, hash: &[u8; 32], code: &Code) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute("DELETE FROM codes WHERE expires < ?1", [now() - 3600])?;
            db.execute(
                "INSERT INTO codes (hash, client_id, redirect_uri, redirect_given, challenge, scope, resource, audience, approved_by, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    hash.to_vec(),
                    code.client_id,
                    code.redirect_uri,
                    code.redirect_given,
                    code.challenge,
                    code.scope,
                    code.resource,
                    code.audience,
                    code.approved_by,
                    code.expires
                ],
            )
            .map(drop)
        })
    }

    pub fn code(&self, hash: &[u8; 32]) -> Result<Option<Code>, StoreError> {
        self.with(|db| {
            db.query_row(
                "SELECT client_id, redirect_uri, redirect_given, challenge, scope, resource, audience, approved_by, expires, grant_id
                 FROM codes WHERE hash = ?1",
                [hash.to_vec()],
                |r| {
                    Ok(Code {
                        client_id: r.get(0)?,
                        redirect_uri: r.get(1)?,
                        redirect_given: r.get(2)?,
                        challenge: r.get(3)?,
                        scope: r.get(4)?,
                        resource: r.get(5)?,
                        audience: r.get(6)?,
                        approved_by: r.get(7)?,
                        expires: r.get(8)?,
                        grant_id: r.get(9)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Redeems a code: makes its grant and first access token in one
    /// transaction, and only if nobody redeemed it first (false then).
    pub fn redeem(
        &self,
        code_hash: &[u8; 32],
        grant: &Grant,
        refresh_hash: &[u8; 32],
        access_hash: &[u8; 32],
        access_expires: i64,
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            let tx = db.transaction()?;
            let claimed = tx.execute(
                "UPDATE codes SET grant_id = ?2 WHERE hash = ?1 AND grant_id IS NULL",
                params![code_hash.to_vec(), grant.id],
            )?;
            if claimed == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO grants (id, client_id, scope, resource, audience, approved_by, created, refresh_hash, refresh_expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    grant.id,
                    grant.client_id,
                    grant.scope,
                    grant.resource,
                    grant.audience,
                    grant.approved_by,
                    grant.created,
                    refresh_hash.to_vec(),
                    grant.refresh_expires
                ],
            )?;
            tx.execute(
                "INSERT INTO access (hash, grant_id, scope, expires) VALUES (?1, ?2, ?3, ?4)",
                params![access_hash.to_vec(), grant.id, grant.scope, access_expires],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// The grant whose current refresh token hashes to `hash`.
    pub fn grant_by_refresh(&self, hash: &[u8; 32]) -> Result<Option<Grant>, StoreError> {
        self.grant_where("g.refresh_hash = ?1", hash)
    }

    /// The grant whose previous (rotated away) refresh token hashes to `hash`.
    pub fn grant_by_previous_refresh(&self, hash: &[u8; 32]) -> Result<Option<Grant>, StoreError> {
        self.grant_where("g.previous_refresh_hash = ?1", hash)
    }

    fn grant_where(&self, condition: &str, hash: &[u8; 32]) -> Result<Option<Grant>, StoreError> {
        let sql = format!("{GRANT_SELECT} WHERE {condition}");
        self.with(|db| db.query_row(&sql, [hash.to_vec()], grant_row).optional())
    }

    pub fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        let sql = format!("{GRANT_SELECT} ORDER BY g.created, g.id");
        self.with(|db| {
            let mut stmt = db.prepare(&sql)?;
            let rows = stmt.query_map([], grant_row)?;
            rows.collect()
        })
    }

    /// Rotates a grant's refresh token (only if `old` is still its current one)
    /// and adds an access token; false if another request rotated it first.
    pub fn rotate(
        &self,
        grant_id: &str,
        old: &[u8; 32],
        new: &[u8; 32],
        refresh_expires: i64,
        access: &NewAccess<'_>,
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            let tx = db.transaction()?;
            let n = tx.execute(
                "UPDATE grants SET refresh_hash = ?3, previous_refresh_hash = ?2, refresh_expires = ?4, refreshed = ?5
                 WHERE id = ?1 AND refresh_hash = ?2",
                params![grant_id, old.to_vec(), new.to_vec(), refresh_expires, now()],
            )?;
            if n == 0 {
                return Ok(false);
            }
            tx.execute("DELETE FROM access WHERE expires < ?1", [now()])?;
            tx.execute(
                "INSERT INTO access (hash, grant_id, scope, expires) VALUES (?1, ?2, ?3, ?4)",
                params![access.hash.to_vec(), grant_id, access.scope, access.expires],
            )?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// Revokes a grant and every token it issued; false if unknown.
    pub fn revoke_grant(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|db| Ok(db.execute("DELETE FROM grants WHERE id = ?1", [id])? > 0))
    }

    pub fn revoke_access(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.with(|db| Ok(db.execute("DELETE FROM access WHERE hash = ?1", [hash.to_vec()])? > 0))
    }

    /// The access token hashing to `hash`, with its grant's client and audience.
    /// Every request with an OAuth token asks this, so the statement is kept
    /// prepared (parsing and planning the join cost more than running it).
    pub fn access(&self, hash: &[u8; 32]) -> Result<Option<Access>, StoreError> {
        self.with(|db| {
            let mut stmt = db.prepare_cached(
                "SELECT a.grant_id, c.name, a.scope, g.audience, g.resource, a.expires, g.client_id
                 FROM access a JOIN grants g ON g.id = a.grant_id JOIN clients c ON c.id = g.client_id
                 WHERE a.hash = ?1",
            )?;
            stmt.query_row(
                [&hash[..]],
                |r| {
                    Ok(Access {
                        grant_id: r.get(0)?,
                        client_name: r.get(1)?,
                        scope: r.get(2)?,
                        audience: r.get(3)?,
                        resource: r.get(4)?,
                        expires: r.get(5)?,
                        client_id: r.get(6)?,
                    })
                },
            )
            .optional()
        })
    }
}

/// Stores made before clients had `approved` get the column; a client with a
/// grant or a code, or made by the owner, was approved.
fn add_approved(db: &Connection) -> rusqlite::Result<()> {
    let has: bool = db.query_row(
        "SELECT count(*) FROM pragma_table_info('clients') WHERE name = 'approved'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has {
        db.execute_batch(
            "ALTER TABLE clients ADD COLUMN approved INTEGER;
             UPDATE clients SET approved = created WHERE kind = 'owner'
                 OR id IN (SELECT client_id FROM grants) OR id IN (SELECT client_id FROM codes);",
        )?;
    }
    Ok(())
}

/// Creates `path` with mode 0600 when missing, and makes it 0600 when not.
fn private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    make_private(path);
    Ok(())
}

/// Sets mode 0600 on `path` if it exists (the -wal and -shm files come and go
/// with connections, so a missing one is no error).
fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("could not make {} private: {e}", path.display()),
    }
}

const GRANT_SELECT: &str = "SELECT g.id, g.client_id, c.name, g.scope, g.resource, g.audience, g.approved_by, g.created, g.refreshed, g.refresh_expires
     FROM grants g JOIN clients c ON c.id = g.client_id";

fn grant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        client_id: r.get(1)?,
        client_name: r.get(2)?,
        scope: r.get(3)?,
        resource: r.get(4)?,
        audience: r.get(5)?,
        approved_by: r.get(6)?,
        created: r.get(7)?,
        refreshed: r.get(8)?,
        refresh_expires: r.get(9)?,
    })
}

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Client> {
    let secret: Option<Vec<u8>> = r.get(3)?;
    let uris: String = r.get(4)?;
    let kind: String = r.get(2)?;
    Ok(Client {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: ClientKind::parse(&kind),
        secret_hash: secret.and_then(|s| s.try_into().ok()),
        redirect_uris: serde_json::from_str(&uris).unwrap_or_default(),
        scope: r.get(5)?,
        created: r.get(6)?,
        fetched: r.get(7)?,
        approved: r.get::<_, Option<i64>>(8)?.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_database_and_its_wal_and_shm_are_private_from_the_first_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Sqlite::open(dir.path()).unwrap();
        // A write makes SQLite create the -wal and -shm files, if it had not.
        store.prune_strangers(0).unwrap();
        store
            .revoke_grant("g_none")
            .expect("a statement runs on the store");
        for name in [FILE, "oauth.db-wal", "oauth.db-shm"] {
            let path = dir.path().join(name);
            assert!(path.exists(), "{name} exists while the store is open");
            assert_eq!(mode(&path), 0o600, "{name}");
        }
        drop(store);

        // A store made before this rule, readable by everyone, is put right.
        let old = tempfile::tempdir().unwrap();
        for name in [FILE, "oauth.db-wal", "oauth.db-shm"] {
            let path = old.path().join(name);
            std::fs::copy(dir.path().join(FILE), &path).ok();
            if name != FILE {
                std::fs::write(&path, b"").unwrap();
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let _store = Sqlite::open(old.path()).unwrap();
        for name in [FILE, "oauth.db-wal", "oauth.db-shm"] {
            assert_eq!(mode(&old.path().join(name)), 0o600, "{name}");
        }
    }
}
