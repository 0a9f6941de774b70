//! The built-in OAuth 2.1 authorization server (DESIGN.md section 6), so that
//! ChatGPT's MCP connectors and GPT Actions' OAuth option can sign in: client
//! registration (RFC 7591, and client metadata documents), the authorization
//! code grant with PKCE (S256 only), rotating refresh tokens, revocation
//! (RFC 7009), and the audience of each token (RFC 8707 `resource`).
//!
//! This module owns the flows and their refusals, named as the RFCs name them;
//! it knows no HTTP (`http/oauth.rs` serves it) and no rows (`store.rs` keeps
//! them). Tokens are opaque random strings, not JWTs: the daemon is its own
//! resource server, so a lookup by hash costs less than a signature check, and a
//! revoked token stops working on the next request.
//!
//! Who approves: the owner, on the consent page, with a token that has the
//! `admin` scope. An issued token carries at most the scopes that token has and
//! goes through the same scope checks as every other token.

pub mod document;
pub mod store;

use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{Caller, Scope, Scopes};
pub use store::{Client, ClientKind, Grant, Store, StoreError};

/// Prefixes that let secret scanners (and `http::bearer`) recognise what a string is.
pub const ACCESS_PREFIX: &str = "dynapi_at_";
pub const REFRESH_PREFIX: &str = "dynapi_rt_";
pub const SECRET_PREFIX: &str = "dynapi_cs_";

/// How long a code may wait to be redeemed (RFC 6749 suggests at most 10 minutes).
pub const CODE_LIFETIME: Duration = Duration::from_secs(120);
/// How long a refresh token lives unused; each refresh starts it again.
pub const REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a metadata document is trusted before it is read again.
const DOCUMENT_FRESH: i64 = 3600;
/// Registered clients kept at most; ones never approved are forgotten after a day.
const MAX_REGISTERED: usize = 1000;
const UNUSED_CLIENT_KEPT: i64 = 24 * 3600;
/// Bounds on what a registration may make big.
const MAX_REDIRECT_URIS: usize = 10;
const MAX_URI_LEN: usize = 2000;
const MAX_NAME_LEN: usize = 64;

/// The scopes a client gets asked about when its request names none.
const DEFAULT_SCOPES: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Run];

/// Where a token is accepted: the whole API (GPT Actions, or a client that
/// named the server's base URL) or only `/mcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Api,
    Mcp,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Api => "api",
            Audience::Mcp => "mcp",
        }
    }

    /// The resource identifier (RFC 8707) for this audience under `base`.
    pub fn resource(self, base: &str) -> String {
        match self {
            Audience::Api => base.to_string(),
            Audience::Mcp => format!("{base}/mcp"),
        }
    }

    fn parse(s: &str) -> Audience {
        if s == "mcp" {
            Audience::Mcp
        } else {
            Audience::Api
        }
    }
}

/// An error as RFC 6749 section 5.2 (and RFCs 7591, 7009, 8707) name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            error,
            description: description.into(),
        }
    }

    /// The HTTP status the token, registration and revocation endpoints answer with.
    pub fn status(&self) -> u16 {
        match self.error {
            "invalid_client" => 401,
            "server_error" => 500,
            "temporarily_unavailable" => 503,
            _ => 400,
        }
    }
}

impl From<StoreError> for OAuthError {
    fn from(e: StoreError) -> OAuthError {
        tracing::error!("{e}");
        OAuthError::new(
            "server_error",
            "the OAuth store could not be read or written",
        )
    }
}

/// Why an access token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unknown,
    Expired,
    /// Issued for `/mcp` only (RFC 8707): the resource it names, if it named one.
    ElseWhere(Option<String>),
}

/// Wrong owner tokens the consent page takes from one address within
/// `GUESS_WINDOW` before that address is locked. Tokens the daemon makes
/// cannot be guessed, but `dynapi.yaml` may hash a weak one. Counting per
/// address keeps a stranger from locking the owner out; a locked address
/// still gets a token checked now and then (`LOCKED_BACKOFF`), so an owner
/// sharing it (a proxy, a NAT) gets in, while guesses stay few.
const MAX_GUESSES: usize = 20;
const GUESS_WINDOW: Duration = Duration::from_secs(600);
/// While an address is locked, its first try is checked; after each wrong one
/// the next check waits twice as long as the last, from 1 s up to this.
const LOCKED_BACKOFF: Duration = Duration::from_secs(60);
/// Addresses remembered before those with no recent guess are forgotten.
const GUESSERS_KEPT: usize = 4096;

/// One address's recent wrong owner tokens.
#[derive(Debug, Default)]
struct Guesses {
    /// When, oldest first, within `GUESS_WINDOW`.
    wrong: std::collections::VecDeque<std::time::Instant>,
    /// While locked: when the next token may be checked, and how many wrong
    /// ones were given while locked (the backoff's exponent).
    next_check: Option<std::time::Instant>,
    locked_wrong: u32,
}

impl Guesses {
    fn forget_old(&mut self) {
        while self
            .wrong
            .front()
            .is_some_and(|t| t.elapsed() >= GUESS_WINDOW)
        {
            self.wrong.pop_front();
        }
        if !self.locked() {
            self.next_check = None;
            self.locked_wrong = 0;
        }
    }

    fn locked(&self) -> bool {
        self.wrong.len() >= MAX_GUESSES
    }
}

/// The authorization server's state: the store and how long tokens live.
pub struct OAuth {
    pub store: Store,
    /// Reads metadata documents: from public addresses only, unless
    /// `local_documents`.
    http: reqwest::Client,
    /// Whether documents on loopback and private addresses are read: set from
    /// the configuration alone (`documents_may_be_local`), never from a request.
    local_documents: bool,
    access_lifetime: Duration,
    /// Recent wrong owner tokens, by the address they came from (`None`: a
    /// request without one, as in-process).
    guesses: std::sync::Mutex<std::collections::HashMap<Option<std::net::IpAddr>, Guesses>>,
}

/// An authorization request's parameters (RFC 6749 4.1.1, RFC 7636, RFC 8707),
/// as the query (and the consent form, which carries them on) sends them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub state: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<String>,
}

/// A checked authorization request, ready for the owner's decision.
#[derive(Debug, Clone)]
pub struct Approval {
    pub client: Client,
    pub redirect_uri: String,
    redirect_given: bool,
    challenge: Option<String>,
    /// What the client asked for (the consent page's boxes start ticked here).
    pub scopes: Scopes,
    pub state: Option<String>,
    pub audience: Audience,
    /// The resource as the client named it, made canonical.
    pub resource: Option<String>,
}

/// An authorization request refused: either on a page (the client or its
/// redirect URI cannot be trusted, RFC 6749 4.1.2.1) or back at the client.
#[derive(Debug)]
pub enum Refused {
    Page(OAuthError),
    Redirect(String),
}

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
    /// `local_documents`: see `documents_may_be_local`.
    pub fn new(store: Store, access_lifetime: Duration, local_documents: bool) -> OAuth {
        crate::install_tls();
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(document::FETCH_TIMEOUT)
            .user_agent(concat!("dynapi/", env!("CARGO_PKG_VERSION")));
        let builder = if local_documents {
            builder
        } else {
            builder.dns_resolver(std::sync::Arc::new(document::PublicOnly))
        };
        // Building fails only without a TLS provider, installed above; a
        // default client instead would drop the public-only resolver.
        let http = builder.build().expect("an HTTP client builds");
        OAuth {
            store,
            http,
            local_documents,
            access_lifetime,
            guesses: Default::default(),
        }
    }

    /// Whether an owner token from `from` is checked now, or how long that
    /// address must wait first (it gave too many wrong ones).
    pub fn owner_may_try(&self, from: Option<std::net::IpAddr>) -> Result<(), Duration> {
        let mut all = self.guesses.lock().unwrap_or_else(|p| p.into_inner());
        let Some(guesses) = all.get_mut(&from) else {
            return Ok(());
        };
        guesses.forget_old();
        match guesses.next_check {
            Some(next) if guesses.locked() && next > std::time::Instant::now() => {
                Err(next.saturating_duration_since(std::time::Instant::now()))
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong owner token from `from`; answers how long that address
    /// must wait before its next try when it is now locked.
    pub fn owner_guessed_wrong(&self, from: Option<std::net::IpAddr>) -> Option<Duration> {
        let mut all = self.guesses.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= GUESSERS_KEPT && !all.contains_key(&from) {
            all.retain(|_, g| {
                g.forget_old();
                !g.wrong.is_empty()
            });
        }
        let guesses = all.entry(from).or_default();
        guesses.forget_old();
        let was_locked = guesses.locked();
        guesses.wrong.push_back(std::time::Instant::now());
        if !guesses.locked() {
            return None;
        }
        let wait = if was_locked {
            let wait = Duration::from_secs(1u64 << guesses.locked_wrong.min(6)).min(LOCKED_BACKOFF);
            guesses.locked_wrong += 1;
            guesses.next_check = Some(std::time::Instant::now() + wait);
            wait
        } else {
            // Just locked: the next try is checked (it may be the owner's).
            Duration::ZERO
        };
        Some(wait)
    }

    // ----- registration -------------------------------------------------

    /// Dynamic registration (RFC 7591): a public client (`none`) or one with a
    /// secret (`client_secret_basic`, the RFC's default, or `_post`). The secret
    /// is answered once and only its hash kept.
    pub fn register(&self, meta: ClientMetadata) -> Result<(Client, Option<String>), OAuthError> {
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
        self.room_for_a_stranger()?;
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
        self.store.add_client(&client)?;
        Ok((client, secret))
    }

    /// Whether another client may come by itself (`MAX_REGISTERED`).
    fn room_for_a_stranger(&self) -> Result<(), OAuthError> {
        let left = self
            .store
            .prune_strangers(store::now() - UNUSED_CLIENT_KEPT)?;
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
    async fn client(&self, id: &str) -> Result<Option<Client>, OAuthError> {
        let known = self.store.client(id)?;
        let is_document = document::is_document_id(id, self.local_documents);
        let approved = known.as_ref().is_some_and(|c| c.approved);
        match known {
            Some(c) if c.kind != ClientKind::Document => return Ok(Some(c)),
            _ if !is_document => return Ok(None),
            Some(c) if c.fetched.unwrap_or(0) + DOCUMENT_FRESH > store::now() => {
                return Ok(Some(c))
            }
            Some(_) => {}
            None => self.room_for_a_stranger()?,
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
        self.store.add_client(&client)?;
        Ok(Some(client))
    }

    // ----- authorization --------------------------------------------------

    /// Checks an authorization request as RFC 6749 4.1.2.1 orders it: the client
    /// and its redirect URI first (refused on a page, never redirected), then
    /// the rest (refused back at the client, with `state` and `iss`).
    pub async fn check_authorize(
        &self,
        base: &str,
        p: &AuthorizeParams,
    ) -> Result<Approval, Refused> {
        let page = |error, d: &str| Refused::Page(OAuthError::new(error, d));
        let Some(client_id) = p.client_id.as_deref().filter(|s| !s.is_empty()) else {
            return Err(page("invalid_request", "client_id is missing"));
        };
        let client = match self.client(client_id).await {
            Ok(Some(c)) => c,
            Ok(None) => return Err(page("invalid_client", "the client is not registered here")),
            Err(e) => return Err(Refused::Page(e)),
        };
        let (redirect_uri, redirect_given) = match p.redirect_uri.as_deref() {
            Some(uri)
                if client
                    .redirect_uris
                    .iter()
                    .any(|r| redirect_matches(r, uri)) =>
            {
                (uri.to_string(), true)
            }
            Some(_) => {
                return Err(page(
                    "invalid_request",
                    "redirect_uri is not one the client registered (they are compared exactly)",
                ))
            }
            None if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), false),
            None => {
                return Err(page(
                    "invalid_request",
                    "redirect_uri is missing, and the client has none or several",
                ))
            }
        };
        // RFC 6749 sends the remaining errors back to the client, but a
        // client nobody approved is whoever registered it, and its redirect URI
        // whatever they wrote: redirecting there would make this daemon an open
        // redirector (RFC 9700 4.11.2). Until the owner approves it once, its
        // errors are shown on this daemon's own page.
        let trusted = client.approved || client.kind == ClientKind::Owner;
        let back = |error, d: &str| {
            if !trusted {
                return Refused::Page(OAuthError::new(error, d));
            }
            Refused::Redirect(back_to_client(
                &redirect_uri,
                vec![("error", error), ("error_description", d)],
                p.state.as_deref(),
                base,
            ))
        };
        if p.response_type.as_deref() != Some("code") {
            return Err(back(
                "unsupported_response_type",
                "response_type must be `code`",
            ));
        }
        match (
            p.code_challenge.as_deref(),
            p.code_challenge_method.as_deref(),
        ) {
            (Some(_), Some(m)) if m != "S256" => {
                return Err(back(
                    "invalid_request",
                    "code_challenge_method must be S256",
                ))
            }
            (Some(_), None) => {
                return Err(back(
                    "invalid_request",
                    "code_challenge_method must be S256 (plain is not accepted)",
                ))
            }
            (Some(c), Some(_)) if !is_challenge(c) => {
                return Err(back(
                    "invalid_request",
                    "code_challenge must be the 43-character base64url SHA-256 of the verifier",
                ))
            }
            (None, _) if client.kind != ClientKind::Owner => {
                return Err(back(
                    "invalid_request",
                    "PKCE is required: send code_challenge and code_challenge_method=S256",
                ))
            }
            _ => {}
        }
        let (resource, audience) = match p.resource.as_deref() {
            Some(r) => match audience_of(base, r) {
                Ok((canonical, a)) => (Some(canonical), a),
                Err(e) => return Err(back(e.error, &e.description)),
            },
            None => (None, Audience::Api),
        };
        let scopes = match p.scope.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(s) => {
                let scopes = parse_scope(s);
                if scopes == Scopes::default() {
                    return Err(back(
                        "invalid_scope",
                        "no known scope requested; scopes are read, write, run, sql-write, admin",
                    ));
                }
                scopes
            }
            None => client
                .scope
                .as_deref()
                .map(parse_scope)
                .filter(|s| *s != Scopes::default())
                .unwrap_or_else(|| DEFAULT_SCOPES.into_iter().collect()),
        };
        Ok(Approval {
            client,
            redirect_uri,
            redirect_given,
            challenge: p.code_challenge.clone(),
            scopes,
            state: p.state.clone(),
            audience,
            resource,
        })
    }

    /// The owner approved `granted`: a code, and where to send the browser.
    pub fn approve(
        &self,
        base: &str,
        a: &Approval,
        granted: Scopes,
        approver: &Caller,
    ) -> Result<String, OAuthError> {
        let code = new_secret("");
        self.store.add_code(
            &hash(&code),
            &store::Code {
                client_id: a.client.id.clone(),
                redirect_uri: a.redirect_uri.clone(),
                redirect_given: a.redirect_given,
                challenge: a.challenge.clone(),
                scope: scope_string(granted),
                resource: a.resource.clone(),
                audience: a.audience.as_str().into(),
                approved_by: approver.token_name.clone(),
                expires: store::later(CODE_LIFETIME),
                grant_id: None,
            },
        )?;
        self.store.mark_approved(&a.client.id)?;
        Ok(back_to_client(
            &a.redirect_uri,
            vec![("code", code.as_str())],
            a.state.as_deref(),
            base,
        ))
    }

    /// The owner said no (RFC 6749 4.1.2.1 `access_denied`).
    pub fn deny(&self, base: &str, a: &Approval) -> String {
        back_to_client(
            &a.redirect_uri,
            vec![
                ("error", "access_denied"),
                ("error_description", "the owner did not approve"),
            ],
            a.state.as_deref(),
            base,
        )
    }

    // ----- tokens -----------------------------------------------------------

    /// The token endpoint: `authorization_code` and `refresh_token` grants.
    pub fn token(
        &self,
        base: &str,
        p: TokenParams,
        basic: Option<(String, String)>,
    ) -> Result<Tokens, OAuthError> {
        let client = self.authenticate(&Credentials {
            basic,
            id: p.client_id.clone(),
            secret: p.client_secret.clone(),
        })?;
        match p.grant_type.as_deref() {
            Some("authorization_code") => self.redeem(base, &client, &p),
            Some("refresh_token") => self.refresh(base, &client, &p),
            Some(other) => Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type `{other}` is not supported; use authorization_code or refresh_token"),
            )),
            None => Err(OAuthError::new("invalid_request", "grant_type is missing")),
        }
    }

    /// Who the client is (RFC 6749 2.3): one way of authenticating, a secret
    /// exactly when the client has one, compared by hash in constant time.
    pub fn authenticate(&self, c: &Credentials) -> Result<Client, OAuthError> {
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
        let client = self.store.client(id)?.ok_or_else(unknown)?;
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

    fn redeem(&self, base: &str, client: &Client, p: &TokenParams) -> Result<Tokens, OAuthError> {
        let grant_error = |d: &str| OAuthError::new("invalid_grant", d);
        let given = p
            .code
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "code is missing"))?;
        let code_hash = hash(given);
        let code = self
            .store
            .code(&code_hash)?
            .ok_or_else(|| grant_error("the code is not known"))?;
        if let Some(grant) = &code.grant_id {
            // RFC 6749 4.1.2: a code used twice may have been stolen.
            self.store.revoke_grant(grant)?;
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
        let stored = self.store.redeem(
            &code_hash,
            &grant,
            &hash(&refresh),
            &hash(&access),
            store::later(self.access_lifetime),
        )?;
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

    fn refresh(&self, base: &str, client: &Client, p: &TokenParams) -> Result<Tokens, OAuthError> {
        let grant_error = |d: &str| OAuthError::new("invalid_grant", d);
        let given = p
            .refresh_token
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is missing"))?;
        let old = hash(given);
        let Some(grant) = self.store.grant_by_refresh(&old)? else {
            // A rotated-away token coming back means two parties hold it
            // (OAuth 2.1 4.3.1): the grant ends for both.
            if let Some(grant) = self.store.grant_by_previous_refresh(&old)? {
                if grant.client_id == client.id {
                    self.store.revoke_grant(&grant.id)?;
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
            self.store.revoke_grant(&grant.id)?;
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
        let rotated = self.store.rotate(
            &grant.id,
            &old,
            &hash(&refresh),
            store::later(REFRESH_LIFETIME),
            &store::NewAccess {
                hash: &hash(&access),
                scope: &scope,
                expires: store::later(self.access_lifetime),
            },
        )?;
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
    pub fn revoke(
        &self,
        p: &RevokeParams,
        basic: Option<(String, String)>,
    ) -> Result<(), OAuthError> {
        let client = self.authenticate(&Credentials {
            basic,
            id: p.client_id.clone(),
            secret: p.client_secret.clone(),
        })?;
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
        if let Some(grant) = self.store.grant_by_refresh(&h)? {
            if grant.client_id != client.id {
                return Err(not_yours());
            }
            self.store.revoke_grant(&grant.id)?;
        } else if let Some(access) = self.store.access(&h)? {
            if access.client_id != client.id {
                return Err(not_yours());
            }
            self.store.revoke_access(&h)?;
        }
        Ok(())
    }

    /// The caller an access token stands for, if it is live and meant for `at`.
    pub fn verify(&self, token: &str, at: Audience) -> Result<Caller, Denied> {
        let access = match self.store.access(&hash(token)) {
            Ok(Some(a)) => a,
            Ok(None) => return Err(Denied::Unknown),
            Err(e) => {
                tracing::error!("{e}");
                return Err(Denied::Unknown);
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
        })
    }
}

// ----- the owner's clients ---------------------------------------------------

/// A confidential client made by the owner (`dynapi oauth client new`), as GPT
/// Actions' OAuth settings take one. It may skip PKCE, which GPT Actions do
/// not send; when it does send a challenge, the challenge is enforced. Only the
/// command line makes them, on the store alone: no server is needed.
pub fn add_owner_client(
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
    store.add_client(&client)?;
    Ok((client, secret))
}

/// Adds a redirect URI to an owner's client (GPT Actions show their callback
/// URL only once the action is saved).
pub fn allow_redirect(store: &Store, client_id: &str, uri: &str) -> Result<Client, OAuthError> {
    check_redirect_uri(uri).map_err(|e| OAuthError::new("invalid_redirect_uri", e))?;
    let mut client = store
        .client(client_id)?
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
        store.add_client(&client)?;
    }
    Ok(client)
}

// ----- checks and small helpers ---------------------------------------------

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

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Exact string comparison, except that a loopback IP redirect URI matches on
/// any port (RFC 8252 7.3: native apps take whatever port is free).
fn redirect_matches(registered: &str, given: &str) -> bool {
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

/// A resource identifier (RFC 8707) made canonical, and the audience it is:
/// the base URL itself (the whole API) or its `/mcp`. Anything else is
/// `invalid_target`.
pub fn audience_of(base: &str, resource: &str) -> Result<(String, Audience), OAuthError> {
    let refuse = || {
        OAuthError::new(
            "invalid_target",
            format!("resource must be {base}/mcp (MCP) or {base} (the whole API)"),
        )
    };
    let (Ok(r), Ok(b)) = (url::Url::parse(resource), url::Url::parse(base)) else {
        return Err(refuse());
    };
    if r.fragment().is_some()
        || r.query().is_some()
        || r.scheme() != b.scheme()
        || r.host() != b.host()
        || r.port_or_known_default() != b.port_or_known_default()
    {
        return Err(refuse());
    }
    let base_path = b.path().trim_end_matches('/');
    let path = r.path().trim_end_matches('/');
    let base = base.trim_end_matches('/');
    if path == base_path {
        Ok((Audience::Api.resource(base), Audience::Api))
    } else if path == format!("{base_path}/mcp") {
        Ok((Audience::Mcp.resource(base), Audience::Mcp))
    } else {
        Err(refuse())
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

/// Where an authorization answer sends the browser: `uri` with `pairs`, the
/// client's `state` when it sent one (RFC 6749 4.1.2) and `iss` (RFC 9207)
/// added to its query.
fn back_to_client<'a>(
    uri: &str,
    mut pairs: Vec<(&str, &'a str)>,
    state: Option<&'a str>,
    iss: &'a str,
) -> String {
    if let Some(state) = state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", iss));
    let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{encoded}")
}

/// The scopes named in a space-separated OAuth scope string; names it does not
/// know are left out (RFC 6749 3.3 lets a server grant less than asked).
pub fn parse_scope(s: &str) -> Scopes {
    s.split_ascii_whitespace()
        .filter_map(|name| name.parse::<Scope>().ok())
        .collect()
}

pub fn scope_string(scopes: Scopes) -> String {
    scopes.names().join(" ")
}

/// A client's display name, safe in commit authors, logs and the consent page.
fn client_name(given: Option<&str>) -> String {
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

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
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

fn is_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// `prefix` and 32 random bytes, base64url.
fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex::encode(bytes)
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
    fn resources_are_the_base_or_its_mcp() {
        let base = "https://api.example.com";
        assert_eq!(
            audience_of(base, "https://api.example.com/mcp/").unwrap(),
            ("https://api.example.com/mcp".into(), Audience::Mcp)
        );
        assert_eq!(
            audience_of(base, "https://API.example.com:443").unwrap(),
            ("https://api.example.com".into(), Audience::Api)
        );
        for wrong in [
            "https://evil.example.com/mcp",
            "http://api.example.com/mcp",
            "https://api.example.com/files",
            "https://api.example.com/mcp#x",
            "mcp",
        ] {
            assert_eq!(
                audience_of(base, wrong).unwrap_err().error,
                "invalid_target",
                "{wrong}"
            );
        }
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

    #[test]
    fn scope_strings_keep_known_names_only() {
        let s = parse_scope("read  offline_access run");
        assert_eq!(scope_string(s), "read run");
        assert_eq!(client_name(Some("Evil\nName <script>")), "EvilName script");
    }
}
