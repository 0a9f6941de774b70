//! The OAuth store in the shared state's PostgreSQL (`--state`), so that a
//! client registered through one replica, approved on a second and redeeming
//! its code on a third finds the same rows everywhere. The same rows and
//! answers as `sqlite.rs`, in the `dynapi_oauth_*` tables (`shared/schema.rs`);
//! what must happen at once (redeeming a code, rotating a refresh token) is one
//! transaction, and a lost race is told the same way (false).

use std::sync::Arc;

use tokio_postgres::Row;

use super::{now, Access, Client, ClientKind, Code, Grant, NewAccess, StoreError};
use crate::shared::Shared;

pub struct Postgres {
    shared: Arc<Shared>,
}

const CLIENT_SELECT: &str = "SELECT id, name, kind, secret_hash, redirect_uris, scope, created, fetched, approved FROM dynapi_oauth_clients";

const GRANT_SELECT: &str = "SELECT g.id, g.client_id, c.name, g.scope, g.resource, g.audience, g.approved_by, g.created, g.refreshed, g.refresh_expires
     FROM dynapi_oauth_grants g JOIN dynapi_oauth_clients c ON c.id = g.client_id";

impl Postgres {
    pub fn new(shared: Arc<Shared>) -> Postgres {
        Postgres { shared }
    }

    pub async fn add_client(&self, c: &Client) -> Result<(), StoreError> {
        let uris = serde_json::to_string(&c.redirect_uris).unwrap_or_else(|_| "[]".into());
        let approved = c.approved || c.kind == ClientKind::Owner;
        self.shared
            .client()
            .await?
            .execute(
                "INSERT INTO dynapi_oauth_clients (id, name, kind, secret_hash, redirect_uris, scope, created, fetched, approved)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $9::boolean THEN $7::bigint END)
                 ON CONFLICT (id) DO UPDATE SET name = $2, redirect_uris = $5, scope = $6, fetched = $8,
                     approved = coalesce(dynapi_oauth_clients.approved, CASE WHEN $9::boolean THEN $7::bigint END)",
                &[
                    &c.id,
                    &c.name,
                    &c.kind.as_str(),
                    &c.secret_hash.map(|h| h.to_vec()),
                    &uris,
                    &c.scope,
                    &c.created,
                    &c.fetched,
                    &approved,
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn client(&self, id: &str) -> Result<Option<Client>, StoreError> {
        let sql = format!("{CLIENT_SELECT} WHERE id = $1");
        let row = self.shared.client().await?.query_opt(&sql, &[&id]).await?;
        Ok(row.as_ref().map(client_row))
    }

    pub async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let sql = format!("{CLIENT_SELECT} ORDER BY created, id");
        let rows = self.shared.client().await?.query(&sql, &[]).await?;
        Ok(rows.iter().map(client_row).collect())
    }

    pub async fn prune_strangers(&self, before: i64) -> Result<usize, StoreError> {
        let db = self.shared.client().await?;
        db.execute(
            "DELETE FROM dynapi_oauth_clients WHERE kind IN ('registered', 'document') AND created < $1
             AND approved IS NULL AND id NOT IN (SELECT client_id FROM dynapi_oauth_grants)",
            &[&before],
        )
        .await?;
        let row = db
            .query_one(
                "SELECT count(*) FROM dynapi_oauth_clients WHERE kind IN ('registered', 'document')",
                &[],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    pub async fn mark_approved(&self, id: &str) -> Result<(), StoreError> {
        self.shared
            .client()
            .await?
            .execute(
                "UPDATE dynapi_oauth_clients SET approved = $2 WHERE id = $1 AND approved IS NULL",
                &[&id, &now()],
            )
            .await?;
        Ok(())
    }

    pub async fn remove_client(&self, id: &str) -> Result<bool, StoreError> {
        let mut db = self.shared.client().await?;
        let tx = db.transaction().await?;
        tx.execute(
            "DELETE FROM dynapi_oauth_codes WHERE client_id = $1",
            &[&id],
        )
        .await?;
        let n = tx
            .execute("DELETE FROM dynapi_oauth_clients WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    pub async fn add_code(&self, hash: &[u8; 32], code: &Code) -> Result<(), StoreError> {
        let db = self.shared.client().await?;
        db.execute(
            "DELETE FROM dynapi_oauth_codes WHERE expires < $1",
            &[&(now() - 3600)],
        )
        .await?;
        db.execute(
            "INSERT INTO dynapi_oauth_codes (hash, client_id, redirect_uri, redirect_given, challenge, scope, resource, audience, approved_by, expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &&hash[..],
                &code.client_id,
                &code.redirect_uri,
                &code.redirect_given,
                &code.challenge,
                &code.scope,
                &code.resource,
                &code.audience,
                &code.approved_by,
                &code.expires,
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn code(&self, hash: &[u8; 32]) -> Result<Option<Code>, StoreError> {
        let row = self
            .shared
            .client()
            .await?
            .query_opt(
                "SELECT client_id, redirect_uri, redirect_given, challenge, scope, resource, audience, approved_by, expires, grant_id
                 FROM dynapi_oauth_codes WHERE hash = $1",
                &[&&hash[..]],
            )
            .await?;
        Ok(row.map(|r| Code {
            client_id: r.get(0),
            redirect_uri: r.get(1),
            redirect_given: r.get(2),
            challenge: r.get(3),
            scope: r.get(4),
            resource: r.get(5),
            audience: r.get(6),
            approved_by: r.get(7),
            expires: r.get(8),
            grant_id: r.get(9),
        }))
    }

    pub async fn redeem(
        &self,
        code_hash: &[u8; 32],
        grant: &Grant,
        refresh_hash: &[u8; 32],
        access_hash: &[u8; 32],
        access_expires: i64,
    ) -> Result<bool, StoreError> {
        let mut db = self.shared.client().await?;
        let tx = db.transaction().await?;
        let claimed = tx
            .execute(
                "UPDATE dynapi_oauth_codes SET grant_id = $2 WHERE hash = $1 AND grant_id IS NULL",
                &[&&code_hash[..], &grant.id],
            )
            .await?;
        if claimed == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO dynapi_oauth_grants (id, client_id, scope, resource, audience, approved_by, created, refresh_hash, refresh_expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &grant.id,
                &grant.client_id,
                &grant.scope,
                &grant.resource,
                &grant.audience,
                &grant.approved_by,
                &grant.created,
                &&refresh_hash[..],
                &grant.refresh_expires,
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO dynapi_oauth_access (hash, grant_id, scope, expires) VALUES ($1, $2, $3, $4)",
            &[&&access_hash[..], &grant.id, &grant.scope, &access_expires],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn grant_by_refresh(&self, hash: &[u8; 32]) -> Result<Option<Grant>, StoreError> {
        self.grant_where("g.refresh_hash = $1", hash).await
    }

    pub async fn grant_by_previous_refresh(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<Grant>, StoreError> {
        self.grant_where("g.previous_refresh_hash = $1", hash).await
    }

    async fn grant_where(
        &self,
        condition: &str,
        hash: &[u8; 32],
    ) -> Result<Option<Grant>, StoreError> {
        let sql = format!("{GRANT_SELECT} WHERE {condition}");
        let row = self
            .shared
            .client()
            .await?
            .query_opt(&sql, &[&&hash[..]])
            .await?;
        Ok(row.as_ref().map(grant_row))
    }

    pub async fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        let sql = format!("{GRANT_SELECT} ORDER BY g.created, g.id");
        let rows = self.shared.client().await?.query(&sql, &[]).await?;
        Ok(rows.iter().map(grant_row).collect())
    }

    pub async fn rotate(
        &self,
        grant_id: &str,
        old: &[u8; 32],
        new: &[u8; 32],
        refresh_expires: i64,
        access: &NewAccess<'_>,
    ) -> Result<bool, StoreError> {
        let mut db = self.shared.client().await?;
        let tx = db.transaction().await?;
        let n = tx
            .execute(
                "UPDATE dynapi_oauth_grants SET refresh_hash = $3, previous_refresh_hash = $2, refresh_expires = $4, refreshed = $5
                 WHERE id = $1 AND refresh_hash = $2",
                &[&grant_id, &&old[..], &&new[..], &refresh_expires, &now()],
            )
            .await?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM dynapi_oauth_access WHERE expires < $1",
            &[&now()],
        )
        .await?;
        tx.execute(
            "INSERT INTO dynapi_oauth_access (hash, grant_id, scope, expires) VALUES ($1, $2, $3, $4)",
            &[&&access.hash[..], &grant_id, &access.scope, &access.expires],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn revoke_grant(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .shared
            .client()
            .await?
            .execute("DELETE FROM dynapi_oauth_grants WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    pub async fn revoke_access(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let n = self
            .shared
            .client()
            .await?
            .execute(
                "DELETE FROM dynapi_oauth_access WHERE hash = $1",
                &[&&hash[..]],
            )
            .await?;
        Ok(n > 0)
    }

    /// Every request with an OAuth token asks this; the pool's connections keep
    /// the statement prepared.
    pub async fn access(&self, hash: &[u8; 32]) -> Result<Option<Access>, StoreError> {
        let db = self.shared.client().await?;
        let statement = db
            .prepare_cached(
                "SELECT a.grant_id, c.name, a.scope, g.audience, g.resource, a.expires, g.client_id
                 FROM dynapi_oauth_access a JOIN dynapi_oauth_grants g ON g.id = a.grant_id
                 JOIN dynapi_oauth_clients c ON c.id = g.client_id
                 WHERE a.hash = $1",
            )
            .await?;
        let row = db.query_opt(&statement, &[&&hash[..]]).await?;
        Ok(row.map(|r| Access {
            grant_id: r.get(0),
            client_name: r.get(1),
            scope: r.get(2),
            audience: r.get(3),
            resource: r.get(4),
            expires: r.get(5),
            client_id: r.get(6),
        }))
    }
}

fn grant_row(r: &Row) -> Grant {
    Grant {
        id: r.get(0),
        client_id: r.get(1),
        client_name: r.get(2),
        scope: r.get(3),
        resource: r.get(4),
        audience: r.get(5),
        approved_by: r.get(6),
        created: r.get(7),
        refreshed: r.get(8),
        refresh_expires: r.get(9),
    }
}

fn client_row(r: &Row) -> Client {
    let secret: Option<Vec<u8>> = r.get(3);
    let uris: String = r.get(4);
    let kind: String = r.get(2);
    Client {
        id: r.get(0),
        name: r.get(1),
        kind: ClientKind::parse(&kind),
        secret_hash: secret.and_then(|s| s.try_into().ok()),
        redirect_uris: serde_json::from_str(&uris).unwrap_or_default(),
        scope: r.get(5),
        created: r.get(6),
        fetched: r.get(7),
        approved: r.get::<_, Option<i64>>(8).is_some(),
    }
}
