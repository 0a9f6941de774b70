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
//!
//! The parts, one RFC's share each: `register.rs` registration (RFC 7591,
//! client metadata documents, the owner's clients), `authorize.rs` the
//! authorization request and the owner's decision (RFC 6749 4.1, RFC 7636's
//! challenge, RFC 9207's `iss`), `token.rs` the token endpoint, refresh
//! rotation, revocation (RFC 7009) and the bearer check. This file keeps
//! `OAuth` and what they share: `Audience` (RFC 8707), `OAuthError`, scopes,
//! hashes and secrets.

pub mod document;
pub mod store;

mod authorize;
mod register;
mod token;

use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::auth::{Scope, Scopes};
use authorize::Guesses;
pub use authorize::{Approval, AuthorizeParams, Refused, CODE_LIFETIME};
pub use register::{
    add_owner_client, allow_redirect, check_redirect_uri, documents_may_be_local, ClientMetadata,
};
pub use store::{Client, ClientKind, Grant, Store, StoreError};
pub use token::{s256, Credentials, RevokeParams, TokenParams, Tokens, REFRESH_LIFETIME};

/// Prefixes that let secret scanners (and `http::bearer`) recognise what a string is.
pub const ACCESS_PREFIX: &str = "dynapi_at_";
pub const REFRESH_PREFIX: &str = "dynapi_rt_";
pub const SECRET_PREFIX: &str = "dynapi_cs_";

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
        match e {
            // The shared state's database is down: it may come back.
            StoreError::Shared(_) => OAuthError::new(
                "temporarily_unavailable",
                "the OAuth store cannot be reached now; try again",
            ),
            StoreError::Sqlite { .. } => OAuthError::new(
                "server_error",
                "the OAuth store could not be read or written",
            ),
        }
    }
}

/// Why an access token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Unknown,
    Expired,
    /// Issued for `/mcp` only (RFC 8707): the resource it names, if it named one.
    ElseWhere(Option<String>),
    /// The store could not be read (the shared state's database is down):
    /// the token may be good, so it is not refused as unknown.
    Unavailable,
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
    /// Replicas count the guesses together here, when they share state.
    shared: Option<std::sync::Arc<crate::shared::Shared>>,
}

impl OAuth {
    /// `local_documents`: see `documents_may_be_local`.
    pub fn new(
        store: Store,
        shared: Option<std::sync::Arc<crate::shared::Shared>>,
        access_lifetime: Duration,
        local_documents: bool,
    ) -> OAuth {
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
            shared,
        }
    }
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

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
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

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
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
    use register::client_name;

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
    fn scope_strings_keep_known_names_only() {
        let s = parse_scope("read  offline_access run");
        assert_eq!(scope_string(s), "read run");
        assert_eq!(client_name(Some("Evil\nName <script>")), "EvilName script");
    }
}
