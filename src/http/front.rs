//! The one HTTP server: hyper, with requests under `/mcp` going to rmcp's
//! Streamable HTTP service (after the bearer token checked out; the caller rides
//! along in the request's extensions) and every other request to the warp routes.
//! warp cannot mount a tower service, so this sits in front of both.
//!
//! It also bounds what clients can hold: a deadline for request headers (and,
//! on a new connection, for the first request to start, whichever HTTP version
//! it turns out to speak), and a bound on connections open at once, overall
//! and per address. A connection over a bound is answered at once with a short
//! 503 or 429 and closed, without reading its request. Each request carries
//! its peer's address (`Peer`) for the routes that limit per address.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Request, Response};
use warp::reply::Reply;

use super::error::ApiError;
use super::lane::{Lane, Taken};
use super::mcp::McpService;
use super::owners::{Owners, SESSION_HEADER};
use super::{bearer, new_request_id};
use crate::config::ConnectionLimits;
use crate::oauth::Audience;
use crate::App;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every answer the front gives (and of a request the lane passes on).
pub(super) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Where `/mcp` is served.
pub const MCP_PATH: &str = "/mcp";

/// How long shutdown waits for open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections over a bound being answered at once; past this many, more are
/// closed without an answer, so that refusing cannot itself hold descriptors.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is kept for its answer to be written and
/// read: the descriptor is not held longer than this.
const REFUSE_WITHIN: Duration = Duration::from_millis(500);

/// The address a request came from (the TCP peer), in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Routes each request to MCP or to warp.
#[derive(Clone)]
pub struct Front {
    pub app: Arc<App>,
    pub routes: BoxedFilter<(warp::reply::Response,)>,
    pub mcp: McpService,
    pub lane: Lane,
    pub owners: Owners,
}

impl Front {
    async fn handle(self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if path == MCP_PATH || path.starts_with("/mcp/") {
            return self.mcp(req).await;
        }
        let mut warp = warp::service(self.routes);
        match warp.call(req).await {
            Ok(response) => response.map(|b| b.map_err(BoxError::from).boxed_unsync()),
            Err(never) => match never {},
        }
    }

    async fn mcp(mut self, req: Request<Incoming>) -> Response<Body> {
        let started = std::time::Instant::now();
        let id = new_request_id(
            req.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
        );
        let method = req.method().clone();
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok());
        let mut response = match bearer(&self.app, header, host, Audience::Mcp).await {
            // A session is used only by the holder that opened it.
            Ok(caller) if !self.owners.admit(req.headers(), &caller) => ApiError::new(
                http::StatusCode::NOT_FOUND,
                "not_found",
                "no such MCP session (it ended, or another token opened it); \
                 send `initialize` without Mcp-Session-Id to open one",
            )
            .into_response()
            .map(|b| b.map_err(BoxError::from).boxed_unsync()),
            Ok(caller) => {
                let opens = !req.headers().contains_key(SESSION_HEADER);
                let holder = caller.holder.clone();
                // A read the lane takes is answered there; rmcp has the rest.
                let mut r = match self.lane.take(req, &caller).await {
                    Taken::Answered(r) => r,
                    Taken::Passed(mut req) => {
                        req.extensions_mut().insert(caller);
                        match self.mcp.call(req).await {
                            Ok(r) => r.map(|b| b.map_err(|never| match never {}).boxed_unsync()),
                            Err(never) => match never {},
                        }
                    }
                };
                // rmcp acknowledges a session's end with 202; clients look for
                // 200 or 204 (the Python SDK logs a warning otherwise).
                if method == http::Method::DELETE && r.status() == http::StatusCode::ACCEPTED {
                    *r.status_mut() = http::StatusCode::NO_CONTENT;
                }
                if opens {
                    self.owners.record(r.headers(), holder).await;
                }
                in_error_shape(r).await
            }
            Err(e) => e
                .into_response()
                .map(|b| b.map_err(BoxError::from).boxed_unsync()),
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", v);
        }
        tracing::debug!(
            target: "dynapi::request",
            method = %method,
            path = MCP_PATH,
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
        );
        response
    }
}

/// rmcp answers transport problems (a Host or Origin not allowed, a method or
/// media type it does not take, an unknown session) in plain text; everything
/// dynapi answers has the JSON error shape, so those are rewrapped. JSON-RPC
/// errors, already JSON, pass as they are.
async fn in_error_shape(response: Response<Body>) -> Response<Body> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, mut body) = response.into_parts();
    // rmcp's messages are one short line; a limit keeps it so.
    let mut text = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
        }
        if text.len() > 4096 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&text[..text.len().min(4096)])
        .trim()
        .to_string();
    let code = match status {
        http::StatusCode::FORBIDDEN => "forbidden",
        http::StatusCode::NOT_FOUND => "not_found",
        http::StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        http::StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        http::StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        http::StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else if status == http::StatusCode::FORBIDDEN && text.contains("Host") {
        format!("{text}: /mcp answers loopback names and the host of --public-url")
    } else {
        text
    };
    let mut wrapped = ApiError::new(status, code, message)
        .into_response()
        .map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync());
    // Keep what rmcp said besides the body (Allow, Mcp-Session-Id...).
    for (name, value) in parts.headers.iter() {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            wrapped.headers_mut().insert(name, value.clone());
        }
    }
    wrapped
}

/// Accepts connections on `listener` until `stop` resolves, then waits for the
/// connections still open to finish their requests.
pub async fn run(listener: tokio::net::TcpListener, front: Front, stop: impl Future<Output = ()>) {
    let limits = front.app.config.connections.clone();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper keeps no header deadline at all (its default
    // needs one). The HTTP/1 deadline also ends a keep-alive connection left
    // idle that long.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // HTTP/2 has no header deadline in hyper; pings find peers that went away
    // so their connections are not counted forever.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let open = Open::new(&limits);
    let refusing = Arc::new(AtomicUsize::new(0));
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let slot = match open.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(over) => {
                refuse(stream, over, &refusing);
                continue;
            }
        };
        // Event streams are written in pieces (headers, each event, the end):
        // without this, Nagle's algorithm holds each piece for the client's
        // delayed ACK, 40 ms a request.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let front = front.clone();
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let started = started.clone();
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                started.store(true, Ordering::Relaxed);
                req.extensions_mut().insert(Peer(peer));
                let front = front.clone();
                async move { Ok::<_, Infallible>(front.handle(req).await) }
            })
        };
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            // Until a first request has begun, the connection is still
            // choosing its HTTP version, where hyper has no deadline: a client
            // that sends nothing (or half an HTTP/2 preface) is closed here.
            let ended = match tokio::time::timeout(header_timeout, &mut connection).await {
                Ok(ended) => ended,
                Err(_) if !started.load(Ordering::Relaxed) => {
                    tracing::debug!(%peer, "no request within {header_timeout:?}; closed");
                    return;
                }
                Err(_) => connection.await,
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // MCP clients hold event streams open; give requests in flight a while,
    // then close what is left.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
}

/// The connections open, overall and per address, against their bounds.
#[derive(Clone)]
struct Open {
    counts: Arc<Mutex<Counts>>,
    max: usize,
    per_address: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Which bound a connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    All,
    Address,
}

/// One admitted connection; dropping it (when the connection ends) frees its
/// place.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Open {
    fn new(limits: &ConnectionLimits) -> Open {
        Open {
            counts: Default::default(),
            max: limits.max.max(1),
            per_address: limits.per_address.max(1),
        }
    }

    fn admit(&self, ip: IpAddr) -> Result<Slot, Over> {
        let address = address_key(ip);
        // A std Mutex: a few map operations per connection, never held across
        // an await.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.total >= self.max {
            return Err(Over::All);
        }
        let mine = counts.by_address.entry(address).or_insert(0);
        if *mine >= self.per_address {
            return Err(Over::Address);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Slot {
            counts: self.counts.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

/// What "one address" is: an IPv4 address, or an IPv6 /64 (what one host
/// usually gets, and can pick addresses from at will).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Answers a connection over a bound without reading its request: a short
/// 503 (everyone's bound) or 429 (its address's), then closes it. The answer
/// is written, the sending side shut, and what the client sent read and
/// dropped for a moment (closing with unread bytes would reset the connection
/// and could destroy the answer before the client reads it).
fn refuse(stream: tokio::net::TcpStream, over: Over, refusing: &Arc<AtomicUsize>) {
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSE_WITHIN, async {
            stream.write_all(&refusal(over)).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(stream);
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// The bytes of a refusal: status, `Retry-After`, `Connection: close` and the
/// JSON error shape.
fn refusal(over: Over) -> Vec<u8> {
    let (status, code, message) = match over {
        Over::All => (
            "503 Service Unavailable",
            "too_many_connections",
            "the daemon has as many connections open as it takes; try again shortly",
        ),
        Over::Address => (
            "429 Too Many Requests",
            "too_many_connections",
            "this address has as many connections open as one address may; close some or try again shortly",
        ),
    };
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
