//! Who opened each MCP session. A session's id travels in a header and is
//! all it takes to post into the session, read its stream of server messages
//! (its resource updates, its log) or end it. So a request that names a
//! session is taken only from the holder that opened it (the same configured
//! token, or the same OAuth grant); to anyone else the session does not exist,
//! and they get the 404 of an unknown one. The MCP specification asks servers
//! to bind a session to its user; rmcp keeps no owner, so the front does,
//! before the lane or rmcp sees the request.
//!
//! This holds because every way into a session names it in that header:
//! rmcp is given no event store (a `GET` resuming with `Last-Event-ID` and no
//! session would replay one) and no session store (a session restored from
//! one would be in no book); `mcp.rs` must keep it so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::SessionId;
use warp::http::HeaderMap;

use crate::auth::{Caller, Holder};

/// The header that names a session, in requests and in `initialize`'s answer.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// The holder of each session rmcp holds (and of some it has ended since,
/// until the next sweep).
#[derive(Clone)]
pub struct Owners {
    sessions: Arc<LocalSessionManager>,
    book: Arc<Mutex<Book>>,
}

struct Book {
    holder: HashMap<SessionId, Holder>,
    /// How many entries make the next insertion sweep out ended sessions.
    sweep_at: usize,
}

/// Entries kept before the first sweep.
const FIRST_SWEEP: usize = 64;

impl Owners {
    pub fn of(sessions: Arc<LocalSessionManager>) -> Owners {
        Owners {
            sessions,
            book: Arc::new(Mutex::new(Book {
                holder: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            })),
        }
    }

    /// Whether `caller` may send a request with these headers: one naming no
    /// session, or only sessions `caller` opened. A session opened elsewhere
    /// (or never) is refused, as is an id that is not text.
    pub fn admit(&self, headers: &HeaderMap, caller: &Caller) -> bool {
        let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        headers.get_all(SESSION_HEADER).iter().all(|value| {
            value
                .to_str()
                .ok()
                .and_then(|id| book.holder.get(id))
                .is_some_and(|holder| *holder == caller.holder)
        })
    }

    /// Records `holder` (a caller's) as the holder of the session `answer`
    /// opens, if it opens one (the answer to an `initialize` sent without a
    /// session).
    pub async fn record(&self, answer: &HeaderMap, holder: Holder) {
        let Some(id) = answer.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return;
        };
        let due = {
            let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
            book.holder.insert(id.into(), holder);
            book.holder.len() >= book.sweep_at
        };
        if due {
            // Ended sessions are dropped, by rmcp's own account of what it holds.
            let live = self.sessions.sessions.read().await;
            let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
            book.holder.retain(|id, _| live.contains_key(id));
            book.sweep_at = (book.holder.len() * 2).max(FIRST_SWEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{hash_token, Scopes};
    use warp::http::HeaderValue;

    fn caller(secret: &str) -> Caller {
        Caller {
            token_name: "same-name".into(),
            scopes: Scopes::all(),
            holder: Holder::Token(hash_token(secret)),
        }
    }

    fn naming(ids: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for id in ids {
            headers.append(SESSION_HEADER, HeaderValue::from_str(id).unwrap());
        }
        headers
    }

    #[tokio::test]
    async fn a_session_is_admitted_only_for_its_holder() {
        let owners = Owners::of(Arc::default());
        let (a, b) = (caller("a"), caller("b"));
        owners.record(&naming(&["s1"]), a.holder.clone()).await;
        assert!(owners.admit(&HeaderMap::new(), &b), "no session named");
        assert!(owners.admit(&naming(&["s1"]), &a));
        assert!(
            !owners.admit(&naming(&["s1"]), &b),
            "same name, other token"
        );
        assert!(!owners.admit(&naming(&["unknown"]), &a));
        assert!(
            !owners.admit(&naming(&["s1", "s2"]), &a),
            "one of two unknown"
        );
        let mut not_text = HeaderMap::new();
        not_text.insert(SESSION_HEADER, HeaderValue::from_bytes(b"s\xff").unwrap());
        assert!(!owners.admit(&not_text, &a));
    }

    #[tokio::test]
    async fn ended_sessions_are_swept_and_the_book_stays_bounded() {
        let owners = Owners::of(Arc::default());
        let a = caller("a");
        // rmcp holds none of these sessions: each sweep empties the book.
        for i in 0..1_000 {
            owners
                .record(&naming(&[&format!("s{i}")]), a.holder.clone())
                .await;
            assert!(owners.book.lock().unwrap().holder.len() < FIRST_SWEEP);
        }
    }
}
