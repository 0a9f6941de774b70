//! The authorization request and the owner's decision (RFC 6749 4.1): the
//! request checked in the RFC's order, PKCE's challenge (RFC 7636, S256
//! only), the resource asked for (RFC 8707), the answer carried back to the
//! client with `state` and `iss` (RFC 9207); and the limit on wrong owner
//! tokens per address at the consent page.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Scope, Scopes};
use crate::shared::{Shared, SharedError};

use super::register::redirect_matches;
use super::{
    audience_of, hash, new_secret, parse_scope, scope_string, store, Audience, Client, ClientKind,
    OAuth, OAuthError,
};

/// How long a code may wait to be redeemed (RFC 6749 suggests at most 10 minutes).
pub const CODE_LIFETIME: Duration = Duration::from_secs(120);

/// The scopes a client gets asked about when its request names none.
const DEFAULT_SCOPES: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Run];

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

/// One address's recent wrong owner tokens: kept in memory, or (replicas)
/// in the shared state's `dynapi_guesses`, where every replica counts them.
#[derive(Debug, Default)]
pub(super) struct Guesses {
    /// When, oldest first, within `GUESS_WINDOW`.
    wrong: std::collections::VecDeque<SystemTime>,
    /// While locked: when the next token may be checked, and how many wrong
    /// ones were given while locked (the backoff's exponent).
    next_check: Option<SystemTime>,
    locked_wrong: u32,
}

impl Guesses {
    fn forget_old(&mut self, now: SystemTime) {
        let recent = |t: &SystemTime| now.duration_since(*t).unwrap_or_default() < GUESS_WINDOW;
        while self.wrong.front().is_some_and(|t| !recent(t)) {
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

    /// `Err(wait)` while the address is locked and its next check is later.
    fn may_try(&mut self, now: SystemTime) -> Result<(), Duration> {
        self.forget_old(now);
        match self.next_check {
            Some(next) if self.locked() && next > now => {
                Err(next.duration_since(now).unwrap_or_default())
            }
            _ => Ok(()),
        }
    }

    /// Counts a wrong token; the wait before the next try when now locked.
    fn guessed_wrong(&mut self, now: SystemTime) -> Option<Duration> {
        self.forget_old(now);
        let was_locked = self.locked();
        self.wrong.push_back(now);
        if !self.locked() {
            return None;
        }
        let wait = if was_locked {
            let wait = Duration::from_secs(1u64 << self.locked_wrong.min(6)).min(LOCKED_BACKOFF);
            self.locked_wrong += 1;
            self.next_check = Some(now + wait);
            wait
        } else {
            // Just locked: the next try is checked (it may be the owner's).
            Duration::ZERO
        };
        Some(wait)
    }
}

/// The shared state's key of an address.
fn address_key(from: Option<std::net::IpAddr>) -> String {
    from.map_or_else(|| "-".to_string(), |a| a.to_string())
}

/// Reads an address's guesses from the shared state, lets `change` count
/// them, and writes them back, in one transaction that locks the row.
async fn in_shared<T>(
    shared: &Shared,
    from: Option<std::net::IpAddr>,
    change: impl FnOnce(&mut Guesses) -> T,
) -> Result<T, SharedError> {
    let key = address_key(from);
    let mut db = shared.client().await?;
    let tx = db.transaction().await?;
    tx.execute(
        "INSERT INTO dynapi_guesses (address, wrong) VALUES ($1, '{}') ON CONFLICT (address) DO NOTHING",
        &[&key],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT wrong, next_check, locked_wrong FROM dynapi_guesses WHERE address = $1 FOR UPDATE",
            &[&key],
        )
        .await?;
    let mut guesses = Guesses {
        wrong: row.get::<_, Vec<SystemTime>>(0).into(),
        next_check: row.get(1),
        locked_wrong: row.get::<_, i32>(2).max(0) as u32,
    };
    let answer = change(&mut guesses);
    let wrong: Vec<SystemTime> = guesses.wrong.into();
    if wrong.is_empty() {
        tx.execute("DELETE FROM dynapi_guesses WHERE address = $1", &[&key])
            .await?;
    } else {
        tx.execute(
            "UPDATE dynapi_guesses SET wrong = $2, next_check = $3, locked_wrong = $4 WHERE address = $1",
            &[&key, &wrong, &guesses.next_check, &(guesses.locked_wrong as i32)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(answer)
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

impl OAuth {
    /// Whether an owner token from `from` is checked now, or how long that
    /// address must wait first (it gave too many wrong ones).
    pub async fn owner_may_try(&self, from: Option<std::net::IpAddr>) -> Result<(), Duration> {
        let now = SystemTime::now();
        if let Some(shared) = &self.shared {
            match in_shared(shared, from, |g| g.may_try(now)).await {
                Ok(answer) => return answer,
                Err(e) => tracing::warn!("owner-token guesses: {e}; this replica's count answers"),
            }
        }
        let mut all = self.guesses.lock().unwrap_or_else(|p| p.into_inner());
        match all.get_mut(&from) {
            Some(guesses) => guesses.may_try(now),
            None => Ok(()),
        }
    }

    /// Counts a wrong owner token from `from`; answers how long that address
    /// must wait before its next try when it is now locked.
    pub async fn owner_guessed_wrong(&self, from: Option<std::net::IpAddr>) -> Option<Duration> {
        let now = SystemTime::now();
        if let Some(shared) = &self.shared {
            match in_shared(shared, from, |g| g.guessed_wrong(now)).await {
                Ok(answer) => return answer,
                Err(e) => tracing::warn!("owner-token guesses: {e}; this replica counts alone"),
            }
        }
        let mut all = self.guesses.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= GUESSERS_KEPT && !all.contains_key(&from) {
            all.retain(|_, g| {
                g.forget_old(now);
                !g.wrong.is_empty()
            });
        }
        all.entry(from).or_default().guessed_wrong(now)
    }

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
    pub async fn approve(
        &self,
        base: &str,
        a: &Approval,
        granted: Scopes,
        approver: &Caller,
    ) -> Result<String, OAuthError> {
        let code = new_secret("");
        self.store
            .add_code(
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
            )
            .await?;
        self.store.mark_approved(&a.client.id).await?;
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

fn is_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}
