//! The token endpoint (RFC 6749 3.2, 4.1.3 and 6): client authentication,
//! codes redeemed with PKCE's verifier (RFC 7636), refresh tokens rotated and
//! a reused one ending its grant (OAuth 2.1 4.3.1), the resource checked again
//! (RFC 8707); revocation (RFC 7009); and `verify`, the bearer check of an
//! access token.

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{Caller, Scope, Scopes};

use super::{
    audience_of, hash, new_secret, parse_scope, random_hex, scope_string, store, Audience, Client,
    Denied, Grant, OAuth, OAuthError, ACCESS_PREFIX, REFRESH_PREFIX,
};

/// How long a refresh token lives unused; each refresh starts it again.
pub const REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// A token request's parameters (RFC 6749 4.1.3 and 6, RFC 7636 4.5, RFC 8707).
#[derive(Debug, Default, Deserialize)]
pub struct TokenParams {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

/// A revocation request's parameters (RFC 7009 2.1).
#[derive(Debug, Default, Deserialize)]
pub struct RevokeParams {
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// How a client proved who it is: HTTP Basic, or the body's fields.
#[derive(Debug, Default)]
pub struct Credentials {
    pub basic: Option<(String, String)>,
    pub id: Option<String>,
    pub secret: Option<String>,
}

/// The token endpoint's answer (RFC 6749 5.1).
#[derive(Debug, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub refresh_token: String,
    pub scope: String,
    /// The resource the token is for (RFC 8707), when one was named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

impl OAuth {
    /// The token endpoint: `authorization_code` and `refresh_token` grants.
    pub async fn token(
        &self,
        base: &str,
        p: TokenParams,
        basic: Option<(String, String)>,
    ) -> Result<Tokens, OAuthError> {
        let client = self
            .authenticate(&Credentials {
                basic,
                id: p.client_id.clone(),
                secret: p.client_secret.clone(),
            })
            .await?;
        match p.grant_type.as_deref() {
            Some("authorization_code") => self.redeem(base, &client, &p).await,
            Some("refresh_token") => self.refresh(base, &client, &p).await,
            Some(other) => Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type `{other}` is not supported; use authorization_code or refresh_token"),
            )),
            None => Err(OAuthError::new("invalid_request", "grant_type is missing")),
        }
    }

    /// Who the client is (RFC 6749 2.3): one way of authenticating, a secret
    /// exactly when the client has one, compared by hash in constant time.
    pub async fn authenticate(&self, c: &Credentials) -> Result<Client, OAuthError> {
        let (id, secret) = match &c.basic {
            Some(_) if c.secret.is_some() => {
                return Err(OAuthError::new(
                    "invalid_request",
                    "send the client secret one way: HTTP Basic or client_secret, not both",
                ))
            }
            Some((id, _)) if c.id.as_deref().is_some_and(|given| given != id) => {
                return Err(OAuthError::new(
                    "invalid_request",
                    "client_id differs from the one in the Authorization header",
                ))
            }
            Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
            None => (c.id.as_deref(), c.secret.as_deref()),
        };
        let unknown = || {
            OAuthError::new(
                "invalid_client",
                "the client is not known or its secret is wrong",
            )
        };
        let id = id.ok_or_else(|| OAuthError::new("invalid_client", "client_id is missing"))?;
        let client = self.store.client(id).await?.ok_or_else(unknown)?;
        match (client.secret_hash, secret) {
            (Some(expected), Some(given)) if bool::from(expected.ct_eq(&hash(given))) => Ok(client),
            (Some(_), _) => Err(unknown()),
            (None, Some(s)) if !s.is_empty() => Err(OAuthError::new(
                "invalid_client",
                "this is a public client: it has no secret to send",
            )),
            (None, _) => Ok(client),
        }
    }

    async fn redeem(
        &self,
        base: &str,
        client: &Client,
        p: &TokenParams,
    ) -> Result<Tokens, OAuthError> {
        let grant_error = |d: &str| OAuthError::new("invalid_grant", d);
        let given = p
            .code
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "code is missing"))?;
        let code_hash = hash(given);
        let code = self
            .store
            .code(&code_hash)
            .await?
            .ok_or_else(|| grant_error("the code is not known"))?;
        if let Some(grant) = &code.grant_id {
            // RFC 6749 4.1.2: a code used twice may have been stolen.
            self.store.revoke_grant(grant).await?;
            return Err(grant_error(
                "the code was already used; the tokens issued for it are revoked",
            ));
        }
        if code.expires < store::now() {
            return Err(grant_error("the code expired; authorize again"));
        }
        if code.client_id != client.id {
            return Err(grant_error("the code was issued to another client"));
        }
        match p.redirect_uri.as_deref() {
            Some(uri) if uri != code.redirect_uri => {
                return Err(grant_error(
                    "redirect_uri differs from the one the code was issued for",
                ))
            }
            None if code.redirect_given => {
                return Err(OAuthError::new(
                    "invalid_request",
                    "redirect_uri is missing; send the one the authorization request named",
                ))
            }
            _ => {}
        }
        match (code.challenge.as_deref(), p.code_verifier.as_deref()) {
            (Some(challenge), Some(verifier)) => {
                if !is_verifier(verifier) {
                    return Err(grant_error(
                        "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
                    ));
                }
                let computed = s256(verifier);
                if !bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                    return Err(grant_error(
                        "code_verifier does not match the code_challenge",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(OAuthError::new(
                    "invalid_request",
                    "code_verifier is missing",
                ))
            }
            (None, Some(_)) => {
                return Err(grant_error(
                    "a code_verifier was sent, but the authorization request had no code_challenge",
                ))
            }
            (None, None) => {}
        }
        same_resource(base, p.resource.as_deref(), &code.resource, &code.audience)?;
        let grant = Grant {
            id: format!("g_{}", random_hex(8)),
            client_id: client.id.clone(),
            client_name: client.name.clone(),
            scope: code.scope.clone(),
            resource: code.resource.clone(),
            audience: code.audience.clone(),
            approved_by: code.approved_by.clone(),
            created: store::now(),
            refreshed: None,
            refresh_expires: store::later(REFRESH_LIFETIME),
        };
        let access = new_secret(ACCESS_PREFIX);
        let refresh = new_secret(REFRESH_PREFIX);
        let stored = self
            .store
            .redeem(
                &code_hash,
                &grant,
                &hash(&refresh),
                &hash(&access),
                store::later(self.access_lifetime),
            )
            .await?;
        if !stored {
            return Err(grant_error("the code was already used"));
        }
        Ok(Tokens {
            access_token: access,
            token_type: "Bearer",
            expires_in: self.access_lifetime.as_secs(),
            refresh_token: refresh,
            scope: code.scope,
            resource: code.resource,
        })
    }

    async fn refresh(
        &self,
        base: &str,
        client: &Client,
        p: &TokenParams,
    ) -> Result<Tokens, OAuthError> {
        let grant_error = |d: &str| OAuthError::new("invalid_grant", d);
        let given = p
            .refresh_token
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is missing"))?;
        let old = hash(given);
        let Some(grant) = self.store.grant_by_refresh(&old).await? else {
            // A rotated-away token coming back means two parties hold it
            // (OAuth 2.1 4.3.1): the grant ends for both.
            if let Some(grant) = self.store.grant_by_previous_refresh(&old).await? {
                if grant.client_id == client.id {
                    self.store.revoke_grant(&grant.id).await?;
                    return Err(grant_error(
                        "this refresh token was already used and replaced; the grant is revoked, sign in again",
                    ));
                }
            }
            return Err(grant_error("the refresh token is not known"));
        };
        if grant.client_id != client.id {
            return Err(grant_error(
                "the refresh token was issued to another client",
            ));
        }
        if grant.refresh_expires < store::now() {
            self.store.revoke_grant(&grant.id).await?;
            return Err(grant_error("the refresh token expired; sign in again"));
        }
        let granted = parse_scope(&grant.scope);
        let scope = match p.scope.as_deref() {
            Some(s) => {
                let asked = parse_scope(s);
                let wider = Scope::ALL
                    .into_iter()
                    .any(|x| asked.contains(x) && !granted.contains(x));
                if wider || asked == Scopes::default() {
                    return Err(OAuthError::new(
                        "invalid_scope",
                        format!(
                            "a refresh may ask for at most what was granted: {}",
                            grant.scope
                        ),
                    ));
                }
                scope_string(asked)
            }
            None => grant.scope.clone(),
        };
        same_resource(
            base,
            p.resource.as_deref(),
            &grant.resource,
            &grant.audience,
        )?;
        let access = new_secret(ACCESS_PREFIX);
        let refresh = new_secret(REFRESH_PREFIX);
        let rotated = self
            .store
            .rotate(
                &grant.id,
                &old,
                &hash(&refresh),
                store::later(REFRESH_LIFETIME),
                &store::NewAccess {
                    hash: &hash(&access),
                    scope: &scope,
                    expires: store::later(self.access_lifetime),
                },
            )
            .await?;
        if !rotated {
            return Err(grant_error(
                "the refresh token was used by another request at the same time",
            ));
        }
        Ok(Tokens {
            access_token: access,
            token_type: "Bearer",
            expires_in: self.access_lifetime.as_secs(),
            refresh_token: refresh,
            scope,
            resource: grant.resource,
        })
    }

    /// Revocation (RFC 7009): a refresh token ends its grant and every access
    /// token of it; an access token ends itself. Unknown tokens are answered
    /// like known ones (2.2), but another client's token is refused.
    pub async fn revoke(
        &self,
        p: &RevokeParams,
        basic: Option<(String, String)>,
    ) -> Result<(), OAuthError> {
        let client = self
            .authenticate(&Credentials {
                basic,
                id: p.client_id.clone(),
                secret: p.client_secret.clone(),
            })
            .await?;
        let token = p
            .token
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "token is missing"))?;
        let h = hash(token);
        let not_yours = || {
            OAuthError::new(
                "unauthorized_client",
                "the token was issued to another client",
            )
        };
        if let Some(grant) = self.store.grant_by_refresh(&h).await? {
            if grant.client_id != client.id {
                return Err(not_yours());
            }
            self.store.revoke_grant(&grant.id).await?;
        } else if let Some(access) = self.store.access(&h).await? {
            if access.client_id != client.id {
                return Err(not_yours());
            }
            self.store.revoke_access(&h).await?;
        }
        Ok(())
    }

    /// The caller an access token stands for, if it is live and meant for `at`.
    pub async fn verify(&self, token: &str, at: Audience) -> Result<Caller, Denied> {
        let access = match self.store.access(&hash(token)).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(Denied::Unknown),
            Err(e) => {
                tracing::error!("{e}");
                return Err(Denied::Unavailable);
            }
        };
        if access.expires < store::now() {
            return Err(Denied::Expired);
        }
        let audience = Audience::parse(&access.audience);
        if audience == Audience::Mcp && at != Audience::Mcp {
            return Err(Denied::ElseWhere(access.resource));
        }
        Ok(Caller {
            token_name: format!("oauth:{}/{}", access.client_name, access.grant_id),
            scopes: parse_scope(&access.scope),
            holder: crate::auth::Holder::Grant(access.grant_id.clone()),
        })
    }
}

/// RFC 8707 at the token endpoint: a `resource` named there must be the one
/// the owner approved (or, when none was named then, the audience's own).
fn same_resource(
    base: &str,
    asked: Option<&str>,
    approved: &Option<String>,
    audience: &str,
) -> Result<(), OAuthError> {
    let Some(asked) = asked else {
        return Ok(());
    };
    let (canonical, _) = audience_of(base, asked)?;
    let expected = approved
        .clone()
        .unwrap_or_else(|| Audience::parse(audience).resource(base));
    if canonical != expected {
        return Err(OAuthError::new(
            "invalid_target",
            format!("resource must be {expected}, the one the owner approved"),
        ));
    }
    Ok(())
}

/// BASE64URL(SHA256(verifier)), RFC 7636 4.2.
pub fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn is_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
