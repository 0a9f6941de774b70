//! Registration (RFC 7591): clients that register themselves, clients whose
//! id is the URL of a metadata document (read through `document.rs`), and the
//! owner's confidential clients the command line makes; what a redirect URI
//! may be and how one is matched (RFC 8252 for loopback and apps' schemes).

use serde::Deserialize;

use crate::auth::Scopes;

use super::{
    document, hash, is_loopback, new_secret, parse_scope, random_hex, scope_string, store, Client,
    ClientKind, OAuth, OAuthError, Store, SECRET_PREFIX,
};

/// How long a metadata document is trusted before it is read again.
const DOCUMENT_FRESH: i64 = 3600;
/// Registered clients kept at most; ones never approved are forgotten after a day.
const MAX_REGISTERED: usize = 1000;
const UNUSED_CLIENT_KEPT: i64 = 24 * 3600;
/// Bounds on what a registration may make big.
const MAX_REDIRECT_URIS: usize = 10;
const MAX_URI_LEN: usize = 2000;
const MAX_NAME_LEN: usize = 64;

/// Client metadata (RFC 7591 2), as a registration or a metadata document sends it.
#[derive(Debug, Default, Deserialize)]
pub struct ClientMetadata {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub scope: Option<String>,
    /// Only in a metadata document, where it must be the document's own URL.
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

/// Whether a daemon may read client metadata documents from loopback and
/// private addresses: only when it listens on a loopback address and its public
/// URL, if it has one, is loopback too (everything on one machine, as in
/// development). A daemon anyone else can reach never reads its own machine's
/// or network's services for a stranger. This is decided from the
/// configuration alone: a request's `Host` header is the client's to choose.
pub fn documents_may_be_local(listen: std::net::SocketAddr, public_url: Option<&str>) -> bool {
    let public_is_loopback = match public_url {
        None => true,
        Some(url) => url::Url::parse(url).is_ok_and(|u| is_loopback(&u)),
    };
    listen.ip().is_loopback() && public_is_loopback
}

impl OAuth {
    /// Dynamic registration (RFC 7591): a public client (`none`) or one with a
    /// secret (`client_secret_basic`, the RFC's default, or `_post`). The secret
    /// is answered once and only its hash kept.
    pub async fn register(
        &self,
        meta: ClientMetadata,
    ) -> Result<(Client, Option<String>), OAuthError> {
        let method = meta
            .token_endpoint_auth_method
            .as_deref()
            .unwrap_or("client_secret_basic");
        if !["none", "client_secret_basic", "client_secret_post"].contains(&method) {
            return Err(OAuthError::new(
                "invalid_client_metadata",
                format!("token_endpoint_auth_method `{method}` is not supported; use none, client_secret_basic or client_secret_post"),
            ));
        }
        check_metadata(&meta)?;
        self.room_for_a_stranger().await?;
        let secret = (method != "none").then(|| new_secret(SECRET_PREFIX));
        let client = Client {
            id: format!("dyn_{}", random_hex(12)),
            name: client_name(meta.client_name.as_deref()),
            kind: ClientKind::Registered,
            secret_hash: secret.as_deref().map(hash),
            redirect_uris: meta.redirect_uris,
            scope: meta.scope.as_deref().map(|s| scope_string(parse_scope(s))),
            created: store::now(),
            fetched: None,
            approved: false,
        };
        self.store.add_client(&client).await?;
        Ok((client, secret))
    }

    /// Whether another client may come by itself (`MAX_REGISTERED`).
    async fn room_for_a_stranger(&self) -> Result<(), OAuthError> {
        let left = self
            .store
            .prune_strangers(store::now() - UNUSED_CLIENT_KEPT)
            .await?;
        if left >= MAX_REGISTERED {
            return Err(OAuthError::new(
                "temporarily_unavailable",
                format!("{MAX_REGISTERED} self-made clients are kept at most; revoke some with `dynapi oauth revoke`"),
            ));
        }
        Ok(())
    }

    /// The client `id` names: a stored one, or a metadata document read (again,
    /// once an hour) when the id is its URL. A document on a loopback or
    /// private address is read only when the configuration allows it
    /// (`documents_may_be_local`).
    pub(super) async fn client(&self, id: &str) -> Result<Option<Client>, OAuthError> {
        let known = self.store.client(id).await?;
        let is_document = document::is_document_id(id, self.local_documents);
        let approved = known.as_ref().is_some_and(|c| c.approved);
        match known {
            Some(c) if c.kind != ClientKind::Document => return Ok(Some(c)),
            _ if !is_document => return Ok(None),
            Some(c) if c.fetched.unwrap_or(0) + DOCUMENT_FRESH > store::now() => {
                return Ok(Some(c))
            }
            Some(_) => {}
            None => self.room_for_a_stranger().await?,
        }
        let meta = document::fetch(&self.http, id)
            .await
            .map_err(|e| OAuthError::new("invalid_client", e))?;
        check_metadata(&meta)?;
        let client = Client {
            id: id.to_string(),
            name: client_name(meta.client_name.as_deref()),
            kind: ClientKind::Document,
            secret_hash: None,
            redirect_uris: meta.redirect_uris,
            scope: meta.scope.as_deref().map(|s| scope_string(parse_scope(s))),
            created: store::now(),
            fetched: Some(store::now()),
            approved,
        };
        self.store.add_client(&client).await?;
        Ok(Some(client))
    }
}

// ----- the owner's clients ---------------------------------------------------

/// A confidential client made by the owner (`dynapi oauth client new`), as GPT
/// Actions' OAuth settings take one. It may skip PKCE, which GPT Actions do
/// not send; when it does send a challenge, the challenge is enforced. Only the
/// command line makes them, on the store alone: no server is needed.
pub async fn add_owner_client(
    store: &Store,
    name: &str,
    redirect_uris: Vec<String>,
    scopes: Scopes,
) -> Result<(Client, String), OAuthError> {
    for uri in &redirect_uris {
        check_redirect_uri(uri).map_err(|e| OAuthError::new("invalid_redirect_uri", e))?;
    }
    let secret = new_secret(SECRET_PREFIX);
    let client = Client {
        id: format!("dynapi_client_{}", random_hex(12)),
        name: client_name(Some(name)),
        kind: ClientKind::Owner,
        secret_hash: Some(hash(&secret)),
        redirect_uris,
        scope: Some(scope_string(scopes)),
        created: store::now(),
        fetched: None,
        approved: true,
    };
    store.add_client(&client).await?;
    Ok((client, secret))
}

/// Adds a redirect URI to an owner's client (GPT Actions show their callback
/// URL only once the action is saved).
pub async fn allow_redirect(
    store: &Store,
    client_id: &str,
    uri: &str,
) -> Result<Client, OAuthError> {
    check_redirect_uri(uri).map_err(|e| OAuthError::new("invalid_redirect_uri", e))?;
    let mut client = store
        .client(client_id)
        .await?
        .ok_or_else(|| OAuthError::new("invalid_client", format!("no client `{client_id}`")))?;
    if client.kind != ClientKind::Owner {
        return Err(OAuthError::new(
            "invalid_client",
            "only clients made with `dynapi oauth client new` are changed here; others register their own redirect URIs",
        ));
    }
    if !client.redirect_uris.iter().any(|u| u == uri) {
        if client.redirect_uris.len() >= MAX_REDIRECT_URIS {
            return Err(OAuthError::new(
                "invalid_redirect_uri",
                format!("a client has at most {MAX_REDIRECT_URIS} redirect URIs"),
            ));
        }
        client.redirect_uris.push(uri.to_string());
        store.add_client(&client).await?;
    }
    Ok(client)
}

fn check_metadata(meta: &ClientMetadata) -> Result<(), OAuthError> {
    let bad = |d: String| OAuthError::new("invalid_client_metadata", d);
    if meta.redirect_uris.is_empty() {
        return Err(OAuthError::new(
            "invalid_redirect_uri",
            "redirect_uris is missing or empty",
        ));
    }
    if meta.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::new(
            "invalid_redirect_uri",
            format!("at most {MAX_REDIRECT_URIS} redirect_uris"),
        ));
    }
    for uri in &meta.redirect_uris {
        check_redirect_uri(uri).map_err(|e| OAuthError::new("invalid_redirect_uri", e))?;
    }
    if let Some(types) = &meta.grant_types {
        if let Some(t) = types
            .iter()
            .find(|t| !["authorization_code", "refresh_token"].contains(&t.as_str()))
        {
            return Err(bad(format!(
                "grant type `{t}` is not supported; authorization_code and refresh_token are"
            )));
        }
    }
    if let Some(types) = &meta.response_types {
        if let Some(t) = types.iter().find(|t| t.as_str() != "code") {
            return Err(bad(format!(
                "response type `{t}` is not supported; code is"
            )));
        }
    }
    Ok(())
}

/// A redirect URI a client may register: absolute, without a fragment; https,
/// or http to a loopback address (RFC 8252 7.3), or an app's own scheme
/// (RFC 8252 7.1), but never a scheme a browser would run or read locally.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!(
            "a redirect URI is at most {MAX_URI_LEN} characters"
        ));
    }
    let url = url::Url::parse(uri).map_err(|e| format!("`{uri}` is not an absolute URI: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!(
            "`{uri}` has a fragment, which redirect URIs may not have"
        ));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(format!(
            "`{uri}`: plain http is allowed only to 127.0.0.1, [::1] or localhost"
        )),
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" | "ftp" | "ws" | "wss" => {
            Err(format!(
                "`{uri}`: the scheme `{}` is not allowed",
                url.scheme()
            ))
        }
        _ => Ok(()),
    }
}

/// Exact string comparison, except that a loopback IP redirect URI matches on
/// any port (RFC 8252 7.3: native apps take whatever port is free).
pub(super) fn redirect_matches(registered: &str, given: &str) -> bool {
    if registered == given {
        return true;
    }
    let (Ok(r), Ok(g)) = (url::Url::parse(registered), url::Url::parse(given)) else {
        return false;
    };
    let ip_loopback = |u: &url::Url| {
        u.scheme() == "http"
            && matches!(u.host(), Some(url::Host::Ipv4(_) | url::Host::Ipv6(_)))
            && is_loopback(u)
    };
    if !(ip_loopback(&r) && ip_loopback(&g)) {
        return false;
    }
    let mut g = g;
    let _ = g.set_port(r.port());
    r.as_str() == g.as_str()
}

/// A client's display name, safe in commit authors, logs and the consent page.
pub(super) fn client_name(given: Option<&str>) -> String {
    let name: String = given
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_alphanumeric() || " -_.()".contains(*c))
        .take(MAX_NAME_LEN)
        .collect();
    let name = name.trim();
    if name.is_empty() {
        "unnamed client".into()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_checked_and_matched_exactly_but_for_loopback_ports() {
        assert!(
            check_redirect_uri("https://chatgpt.com/connector_platform_oauth_redirect").is_ok()
        );
        assert!(check_redirect_uri("http://127.0.0.1:33418/callback").is_ok());
        assert!(check_redirect_uri("cursor://anysphere.cursor-retrieval/oauth/callback").is_ok());
        assert!(check_redirect_uri("http://example.com/cb").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("https://a.example/cb#x").is_err());
        assert!(check_redirect_uri("/relative").is_err());
        assert!(redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb/"
        ));
        assert!(!redirect_matches(
            "https://a.example/cb",
            "https://a.example/cb?x=1"
        ));
        assert!(redirect_matches(
            "http://127.0.0.1:1000/cb",
            "http://127.0.0.1:2000/cb"
        ));
        assert!(!redirect_matches(
            "http://127.0.0.1:1000/cb",
            "http://127.0.0.1:2000/other"
        ));
        assert!(!redirect_matches(
            "http://localhost:1000/cb",
            "http://localhost:2000/cb"
        ));
    }

    #[test]
    fn only_a_daemon_on_loopback_with_a_loopback_url_reads_local_documents() {
        let on =
            |listen: &str, url: Option<&str>| documents_may_be_local(listen.parse().unwrap(), url);
        assert!(on("127.0.0.1:8000", None));
        assert!(on("[::1]:8000", Some("http://localhost:8000")));
        assert!(!on("0.0.0.0:8000", None));
        assert!(!on("0.0.0.0:8000", Some("http://localhost:8000")));
        assert!(!on("192.168.1.5:8000", None));
        assert!(!on("127.0.0.1:8000", Some("https://dynapi.example.com")));
        assert!(!on("127.0.0.1:8000", Some("not a url")));
    }
}
