//! The MCP fast lane: a `tools/call` of a built-in tool that only reads
//! (`readFile`, `listFiles`, `search`...) answered here, as one JSON answer,
//! instead of through rmcp's per-request machinery (for a stateless request a
//! service of its own with tasks and channels; for a session, a round trip
//! through the session's task and an event stream). That machinery cost more
//! than the read itself: the lane brings a read over MCP near the price of
//! its HTTP route.
//!
//! The lane takes only what rmcp would take as it is and answer the same way;
//! anything else it hands to rmcp untouched, which then accepts or refuses it
//! as always. Taken: a POST with a JSON body of at most `LANE_BODY` bytes whose
//! `Host` rmcp allows and whose `Accept` and `Content-Type` it takes, and that
//! is one `tools/call` request of a read-only built-in tool, either
//! - stateless (2026-07-28): the protocol version in `_meta` with every
//!   required key, the same in `Mcp-Protocol-Version`, `Mcp-Method` and
//!   `Mcp-Name` given once each and agreeing with the body, no `Mcp-Param-*`
//!   header and no session; or
//! - in a session rmcp holds, of a revision before 2026-07-28 named by
//!   `Mcp-Protocol-Version`, with no protocol version in `_meta`.
//!
//! The result is the same `CallToolResult` the handler gives rmcp (the same
//! call, `Mcp::call_reader`), shaped for the revision as rmcp shapes it, in a
//! JSON-RPC response. A read that fails to run at all (a JSON-RPC error, not
//! an error result) goes to rmcp after all, so errors keep rmcp's statuses.
//! A session does not see these calls (there is nothing in them to cancel or
//! to report progress on), so the lane tells it now and then that it is in
//! use, or rmcp would end it as idle. A request with an `Origin` (a browser's)
//! goes to rmcp.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rmcp::model::{
    ClientJsonRpcMessage, ClientNotification, ClientRequest, CustomNotification, GetMeta,
    ProtocolVersion, RequestId, ServerJsonRpcMessage, ServerResult,
};
use rmcp::transport::common::server_side_http::SessionId;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use warp::http::{header, HeaderMap, Method, Request, Response, StatusCode};

use super::front::{Body, BoxError};
use super::mcp::{Mcp, McpService, Read};
use super::owners::Owners;
use crate::auth::Caller;

/// The largest body the lane reads: a read's arguments are a path and a few
/// numbers. A larger one goes to rmcp, which has its own limit.
const LANE_BODY: u64 = 16 * 1024;

const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";

/// What the lane needs besides the handler: what rmcp was told (the hosts it
/// allows) and the sessions it holds.
#[derive(Clone)]
pub struct Lane {
    mcp: Mcp,
    hosts: Arc<[String]>,
    sessions: Arc<LocalSessionManager>,
    /// How often a session whose requests take the lane is told it is in use.
    keep_every: Duration,
    /// When each such session was last told.
    kept: Arc<Mutex<HashMap<SessionId, Instant>>>,
}

/// A request the lane answered, or the one to hand to rmcp (its body as it
/// came, or the bytes the lane read of it).
pub enum Taken {
    Answered(Response<Body>),
    Passed(Request<Body>),
}

/// Which revision's rules a taken request follows.
#[derive(Clone, Copy, PartialEq)]
enum Revision {
    Stateless,
    Session,
}

impl Lane {
    /// rmcp's service for `mcp`, the lane beside it with the same rules, and
    /// the book of who opened each of rmcp's sessions. `hosts`: the `Host`
    /// values answered besides loopback; `idle`: how long a session may go
    /// without a request.
    pub fn beside(
        mcp: &Mcp,
        hosts: Vec<String>,
        max_body: usize,
        idle: Duration,
        stop: CancellationToken,
    ) -> (McpService, Lane, Owners) {
        let mut allowed = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        allowed.extend(hosts);
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(idle);
        let sessions = Arc::new(sessions);
        let lane = Lane {
            mcp: mcp.clone(),
            hosts: allowed.clone().into(),
            sessions: sessions.clone(),
            keep_every: idle / 4,
            kept: Arc::default(),
        };
        let owners = Owners::of(sessions.clone());
        (mcp.service(allowed, sessions, max_body, stop), lane, owners)
    }

    /// Answers `request` from `caller` if it is a read the lane takes; else
    /// gives it back for rmcp.
    pub async fn take(&self, request: Request<Incoming>, caller: &Caller) -> Taken {
        let Some(revision) = self.may_take(&request) else {
            return Taken::Passed(request.map(|b| b.map_err(BoxError::from).boxed_unsync()));
        };
        let (parts, body) = request.into_parts();
        let bytes = match Limited::new(body, LANE_BODY as usize).collect().await {
            Ok(collected) => collected.to_bytes(),
            // Content-Length said it fits; a body that does not is broken
            // off, and nothing is left to answer.
            Err(e) => {
                tracing::debug!(error = %e, "an MCP request's body could not be read");
                return Taken::Answered(
                    Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(whole(Bytes::new()))
                        .unwrap_or_default(),
                );
            }
        };
        let pass = |bytes: Bytes| Taken::Passed(Request::from_parts(parts.clone(), whole(bytes)));
        let Some((id, name, args)) = self.call_of(&bytes, &parts.headers, revision).await else {
            return pass(bytes);
        };
        let json = match self.mcp.call_reader(&name, args, caller).await {
            Some(Ok(Read::Object(answer))) => object_answer(&id, &answer, revision),
            Some(Ok(Read::Result(result))) => {
                // rmcp's own shaping: for a revision before 2026-07-28,
                // without what it does not know (`resultType`, structured
                // content that is not an object).
                let mut result = ServerResult::CallToolResult(result);
                if revision == Revision::Session {
                    result.strip_result_type_for_legacy_peer();
                    result.strip_non_object_output_for_legacy_peer();
                }
                serde_json::to_vec(&ServerJsonRpcMessage::response(result, id)).ok()
            }
            None | Some(Err(_)) => None,
        };
        let Some(json) = json else {
            return pass(bytes);
        };
        Taken::Answered(
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, JSON)
                .body(whole(Bytes::from(json)))
                .unwrap_or_default(),
        )
    }

    /// Whether the request's line and headers are those of a read the lane
    /// may take, and under which revision's rules (the body decides the rest).
    fn may_take(&self, request: &Request<Incoming>) -> Option<Revision> {
        let headers = request.headers();
        let small = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= LANE_BODY);
        if request.method() != Method::POST
            || request.uri().path() != super::front::MCP_PATH
            || !small
            || !self.host_allowed(headers)
            || !accepts_both(headers)
            || !is_json(headers)
            // A browser's request: its origin is rmcp's to judge.
            || headers.contains_key(header::ORIGIN)
            || headers.keys().any(|k| k.as_str().starts_with("mcp-param-"))
        {
            return None;
        }
        let version = only(headers, "mcp-protocol-version")?;
        match only(headers, "mcp-session-id") {
            None if headers.contains_key("mcp-session-id") => None,
            None => {
                let named = only(headers, "mcp-name")?;
                (version == ProtocolVersion::V_2026_07_28.as_str()
                    && only(headers, "mcp-method")? == "tools/call"
                    && self.mcp.reads_only(named))
                .then_some(Revision::Stateless)
            }
            Some(_) => [
                ProtocolVersion::V_2025_03_26,
                ProtocolVersion::V_2025_06_18,
                ProtocolVersion::V_2025_11_25,
            ]
            .iter()
            .any(|v| v.as_str() == version)
            .then_some(Revision::Session),
        }
    }

    /// The request's id, tool and arguments if the body is one `tools/call`
    /// of a read-only built-in tool that fits `revision`.
    async fn call_of(
        &self,
        body: &[u8],
        headers: &HeaderMap,
        revision: Revision,
    ) -> Option<(rmcp::model::RequestId, String, rmcp::model::JsonObject)> {
        // Not a tools/call without the method's name in it (an escaped one
        // goes to rmcp): the session's other messages are not parsed twice.
        memchr::memmem::find(body, b"tools/call")?;
        let ClientJsonRpcMessage::Request(request) = serde_json::from_slice(body).ok()? else {
            return None;
        };
        // rmcp keeps the request's `_meta` among its extensions.
        let meta = request.request.get_meta().clone();
        let ClientRequest::CallToolRequest(call) = request.request else {
            return None;
        };
        let name = call.params.name.to_string();
        if !self.mcp.reads_only(&name) {
            return None;
        }
        match revision {
            Revision::Stateless => {
                let latest = ProtocolVersion::V_2026_07_28;
                let agrees = meta.protocol_version().as_ref() == Some(&latest)
                    && meta.missing_required_keys(&latest).is_empty()
                    && only(headers, "mcp-name") == Some(name.as_str());
                agrees.then_some(())?;
            }
            Revision::Session => {
                if meta.protocol_version().is_some() {
                    return None;
                }
                let id: SessionId = only(headers, "mcp-session-id")?.into();
                if !self.keep(&id).await {
                    return None;
                }
            }
        }
        Some((request.id, name, call.params.arguments.unwrap_or_default()))
    }

    /// Whether rmcp holds session `id`, which is then kept alive: rmcp ends a
    /// session after `idle` without a message reaching its task, and the
    /// lane's calls never reach it. So every `keep_every` a session in use
    /// is sent a notification of the daemon's own (`notifications/dynapi/read`,
    /// which the handler ignores), on the side: the call does not wait for it.
    async fn keep(&self, id: &SessionId) -> bool {
        let Some(handle) = self.sessions.sessions.read().await.get(id).cloned() else {
            return false;
        };
        let due = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Sessions not heard of for a whole period are gone or will be told anew.
            kept.retain(|_, at| now.duration_since(*at) < self.keep_every * 4);
            match kept.get(id) {
                Some(at) if now.duration_since(*at) < self.keep_every => false,
                _ => {
                    kept.insert(id.clone(), now);
                    true
                }
            }
        };
        if due {
            let note = ClientNotification::CustomNotification(CustomNotification::new(
                "notifications/dynapi/read",
                None,
            ));
            tokio::spawn(async move {
                let _ = handle
                    .push_message(ClientJsonRpcMessage::notification(note), None)
                    .await;
            });
        }
        true
    }

    /// rmcp's DNS-rebinding rule: the `Host` names an allowed host (and its
    /// port, when the allowed entry names one).
    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) =
            only(headers, "host").and_then(|h| warp::http::uri::Authority::try_from(h).ok())
        else {
            return false;
        };
        let name = normalize(host.host());
        self.hosts.iter().any(|allowed| {
            let allowed = allowed.trim();
            match warp::http::uri::Authority::try_from(allowed) {
                Ok(a) => {
                    normalize(a.host()) == name
                        && a.port_u16().is_none_or(|p| host.port_u16() == Some(p))
                }
                Err(_) => normalize(allowed) == name,
            }
        })
    }
}

/// The JSON-RPC answer with a route's JSON object `answer` as the result, as
/// `CallToolResult::structured` makes it (the JSON as the text, the same as
/// the structured content, not an error; `resultType` only for 2026-07-28),
/// written from the route's bytes instead of parsed and written again. The
/// text keeps the route's key order where rmcp's path sorts the keys.
fn object_answer(id: &RequestId, answer: &[u8], revision: Revision) -> Option<Vec<u8>> {
    #[derive(Serialize)]
    struct Message<'a> {
        jsonrpc: &'static str,
        id: &'a RequestId,
        result: Structured<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Structured<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        result_type: Option<&'static str>,
        content: [Text<'a>; 1],
        structured_content: &'a RawValue,
        is_error: bool,
    }
    #[derive(Serialize)]
    struct Text<'a> {
        r#type: &'static str,
        text: &'a str,
    }
    let text = std::str::from_utf8(answer).ok()?.trim();
    let message = Message {
        jsonrpc: "2.0",
        id,
        result: Structured {
            result_type: (revision == Revision::Stateless).then_some("complete"),
            content: [Text {
                r#type: "text",
                text,
            }],
            structured_content: serde_json::from_str(text).ok()?,
            is_error: false,
        },
    };
    serde_json::to_vec(&message).ok()
}

/// `bytes` as a body.
fn whole(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|n| match n {}).boxed_unsync()
}

fn normalize(host: &str) -> String {
    host.trim_matches('[')
        .trim_matches(']')
        .to_ascii_lowercase()
}

/// The header's value if it is given exactly once, as text.
fn only<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?.to_str().ok()?;
    values.next().is_none().then_some(value)
}

/// `Accept` names both JSON and event streams, with no weights (weighted
/// lists are rmcp's to judge).
fn accepts_both(headers: &HeaderMap) -> bool {
    let (mut json, mut stream) = (false, false);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for entry in value.split(',') {
            let mut parts = entry.split(';');
            let essence = parts.next().unwrap_or_default().trim();
            if parts.next().is_some() || entry.contains('"') {
                return false;
            }
            json |= essence.eq_ignore_ascii_case(JSON);
            stream |= essence.eq_ignore_ascii_case(EVENT_STREAM);
        }
    }
    json && stream
}

/// `Content-Type` is JSON (parameters such as a charset allowed, as rmcp does).
fn is_json(headers: &HeaderMap) -> bool {
    only(headers, header::CONTENT_TYPE.as_str()).is_some_and(|v| {
        let essence = v.split_once(';').map_or(v, |(essence, _)| essence);
        essence.trim().eq_ignore_ascii_case(JSON)
    })
}
