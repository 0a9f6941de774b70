//! Tokens and scopes: what a bearer token may do, and checking one in constant time.
//!
//! Only hashes are compared: a presented token is hashed with SHA-256 and compared
//! with every known hash using `subtle`, without stopping at the first match, so
//! the time taken says nothing about which token (or how much of one) matched.
//! This module never logs or stores a token in the clear; the one exception is the
//! token the daemon generates for itself, which `config.rs` keeps in the state dir.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do (DESIGN.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Run,
    SqlWrite,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Write,
        Scope::Run,
        Scope::SqlWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Run => "run",
            Scope::SqlWrite => "sql-write",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                format!("unknown scope `{s}`; scopes are read, write, run, sql-write, admin")
            })
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scope::ALL.into_iter().collect()
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Parses `read,run` or `all`.
    pub fn parse_list(list: &str) -> Result<Scopes, String> {
        if list.trim() == "all" {
            return Ok(Scopes::all());
        }
        list.split(',').map(|s| s.trim().parse::<Scope>()).collect()
    }

    /// Whether every scope of `other` is in this set.
    pub fn covers(self, other: Scopes) -> bool {
        self.0 & other.0 == other.0
    }

    /// The scopes of the set, in `Scope::ALL`'s order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .map(Scope::as_str)
            .collect()
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Scopes(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

/// A token known to the daemon: its name (what logs and commit authors show) and
/// the SHA-256 of its secret.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub name: String,
    pub hash: [u8; 32],
    pub scopes: Scopes,
}

impl TokenEntry {
    pub fn from_secret(name: &str, secret: &str, scopes: Scopes) -> TokenEntry {
        TokenEntry {
            name: name.to_string(),
            hash: hash_token(secret),
            scopes,
        }
    }
}

/// Who is calling, once their token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_name: String,
    pub scopes: Scopes,
    /// Who holds the token, for what only they may use.
    pub holder: Holder,
}

/// Who holds a token, for what a caller starts and only they may use (an MCP
/// session, a job): a configured token, by its hash (names need not be
/// unique), or an OAuth grant, so that a refreshed access token is the same
/// holder. The two kinds never compare equal, whatever the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Token([u8; 32]),
    Grant(String),
}

impl Holder {
    /// The holder as text, kept with a job (in the shared state too).
    pub fn key(&self) -> String {
        match self {
            Holder::Token(hash) => format!("token:{}", hex::encode(hash)),
            Holder::Grant(id) => format!("grant:{id}"),
        }
    }
}

pub fn hash_token(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Finds the token whose hash matches `secret`, looking at every entry whatever
/// the outcome so that timing does not depend on the position of a match.
pub fn verify<'a>(
    secret: &str,
    entries: impl IntoIterator<Item = &'a TokenEntry>,
) -> Option<Caller> {
    let presented = hash_token(secret);
    let mut found: Option<&TokenEntry> = None;
    for entry in entries {
        let matched: bool = entry.hash.ct_eq(&presented).into();
        if matched && found.is_none() {
            found = Some(entry);
        }
    }
    found.map(|e| Caller {
        token_name: e.name.clone(),
        scopes: e.scopes,
        holder: Holder::Token(e.hash),
    })
}

/// A new random token: `dynapi_` and 32 random bytes in hex. The prefix lets
/// secret scanners recognise a leaked token.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!("dynapi_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_finds_the_matching_token_and_only_it() {
        let a = TokenEntry::from_secret("a", "secret-a", Scopes::parse_list("read").unwrap());
        let b = TokenEntry::from_secret("b", "secret-b", Scopes::all());
        let entries = [a, b];
        assert_eq!(verify("secret-b", &entries).unwrap().token_name, "b");
        assert!(verify("secret-c", &entries).is_none());
        assert!(verify("", &entries).is_none());
    }

    #[test]
    fn scope_lists_parse_and_reject_unknown_names() {
        let s = Scopes::parse_list("read, sql-write").unwrap();
        assert!(s.contains(Scope::Read) && s.contains(Scope::SqlWrite));
        assert!(!s.contains(Scope::Admin));
        assert_eq!(Scopes::parse_list("all").unwrap(), Scopes::all());
        assert!(Scopes::parse_list("root")
            .unwrap_err()
            .contains("unknown scope"));
    }
}
