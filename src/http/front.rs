//! The one HTTP server: hyper, with requests under `/mcp` going to rmcp's
//! Streamable HTTP service (after the bearer token checked out; the caller rides
//! along in the request's extensions) and every other request to the warp routes.
//! warp cannot mount a tower service, so this sits in front of both.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, Request, Response};
use warp::reply::Reply;

use super::error::ApiError;
use super::mcp::McpService;
use super::{bearer, new_request_id};
use crate::oauth::Audience;
use crate::App;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Where `/mcp` is served.
pub const MCP_PATH: &str = "/mcp";

/// How long shutdown waits for open connections.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Routes each request to MCP or to warp.
#[derive(Clone)]
pub struct Front {
    pub app: Arc<App>,
    pub routes: BoxedFilter<(warp::reply::Response,)>,
    pub mcp: McpService,
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

    async fn mcp(mut self, mut req: Request<Incoming>) -> Response<Body> {
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
        let mut response = match bearer(&self.app, header, host, Audience::Mcp) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                let mut r = match self.mcp.call(req).await {
                    Ok(r) => r.map(|b| b.map_err(|never| match never {}).boxed_unsync()),
                    Err(never) => match never {},
                };
                // rmcp acknowledges a session's end with 202; clients look for
                // 200 or 204 (the Python SDK logs a warning otherwise).
                if method == http::Method::DELETE && r.status() == http::StatusCode::ACCEPTED {
                    *r.status_mut() = http::StatusCode::NO_CONTENT;
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
        tracing::info!(
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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Event streams are written in pieces (headers, each event, the end):
        // without this, Nagle's algorithm holds each piece for the client's
        // delayed ACK, 40 ms a request.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let front = front.clone();
        let service = hyper::service::service_fn(move |req| {
            let front = front.clone();
            async move { Ok::<_, Infallible>(front.handle(req).await) }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
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

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}
