//! `POST /webhooks/github`: GitHub's webhooks. No bearer token: the body's
//! HMAC-SHA256 signature (`X-Hub-Signature-256`) with `DYNAPI_WEBHOOK_SECRET` is
//! the credential, checked over the raw bytes before anything is parsed. The
//! answer comes before any sync runs: a push only wakes the sync loop, which
//! coalesces triggers. With shared state (`--state`) a push also tells the
//! other replicas to sync, and a delivery id is a replay on every replica.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{body, respond, with_app, ApiError};
use crate::shared::Event;
use crate::source::sync::Trigger;
use crate::webhook::{self, EventRepository, PullRequestEvent, Push};
use crate::App;

/// GitHub caps payloads at 25 MB; a little more is accepted.
const MAX_PAYLOAD: u64 = 26 << 20;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("webhooks" / "github")
        .and(warp::post())
        .and(warp::header::optional::<String>("x-hub-signature-256"))
        .and(warp::header::optional::<String>("x-github-event"))
        .and(warp::header::optional::<String>("x-github-delivery"))
        .and(with_app(app))
        .and(body(MAX_PAYLOAD))
        .then(
            |signature: Option<String>,
             event: Option<String>,
             delivery: Option<String>,
             app: Arc<App>,
             body: Result<Bytes, ApiError>| async move {
                respond(receive(&app, signature, event, delivery, body).await)
            },
        )
}

fn accepted(value: serde_json::Value) -> Response {
    warp::reply::with_status(warp::reply::json(&value), StatusCode::ACCEPTED).into_response()
}

async fn receive(
    app: &App,
    signature: Option<String>,
    event: Option<String>,
    delivery: Option<String>,
    body: Result<Bytes, ApiError>,
) -> Result<Response, ApiError> {
    let Some(secret) = app.config.webhook_secret.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "webhooks_disabled",
            "webhooks are refused: the daemon has no DYNAPI_WEBHOOK_SECRET",
        ));
    };
    let body = body?;
    let signed = signature
        .as_deref()
        .is_some_and(|s| webhook::signature_is_valid(secret.as_bytes(), &body, s));
    if !signed {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "X-Hub-Signature-256 is missing or does not sign this body with the webhook secret",
        ));
    }
    if let Some(id) = delivery.as_deref() {
        if !app.deliveries.first_time(id).await {
            return Ok(
                warp::reply::json(&json!({"delivery": id, "duplicate": true})).into_response(),
            );
        }
    }
    let event = event.unwrap_or_default();
    let parse_error = |e: serde_json::Error| {
        ApiError::bad_request(format!(
            "the `{event}` payload is not what GitHub sends: {e}"
        ))
    };
    // An organization's webhook sends every repository's events.
    if let Some(served) = app.syncer.github_repository() {
        let from = serde_json::from_slice::<EventRepository>(&body)
            .ok()
            .and_then(|e| e.repository)
            .map(|r| r.full_name);
        if let Some(from) = from.filter(|f| !f.eq_ignore_ascii_case(&served)) {
            return Ok(accepted(json!({
                "event": event,
                "ignored": format!("an event of `{from}`; the daemon serves `{served}`"),
            })));
        }
    }
    match event.as_str() {
        "ping" => Ok(warp::reply::json(&json!({"pong": true})).into_response()),
        "push" => {
            let push: Push = serde_json::from_slice(&body).map_err(parse_error)?;
            let served = format!("refs/heads/{}", app.config.branch);
            if push.reference != served || push.deleted {
                return Ok(accepted(json!({
                    "event": "push",
                    "ignored": format!("a push to `{}`; the daemon serves `{served}`", push.reference),
                })));
            }
            app.syncer.trigger(Trigger::Webhook);
            // GitHub delivers to one replica; it tells the others.
            if let Some(shared) = app.shared.clone() {
                tokio::spawn(async move {
                    if let Err(e) = shared.notify(&Event::Sync).await {
                        tracing::warn!("could not tell the other replicas of a push: {e}");
                    }
                });
            }
            Ok(accepted(
                json!({"event": "push", "sync": "started", "after": push.after}),
            ))
        }
        "pull_request" if app.config.remote.is_some() => {
            let event: PullRequestEvent = serde_json::from_slice(&body).map_err(parse_error)?;
            if !matches!(event.action.as_str(), "opened" | "synchronize" | "reopened") {
                return Ok(accepted(
                    json!({"event": "pull_request", "ignored": format!("action `{}`", event.action)}),
                ));
            }
            let syncer = app.syncer.clone();
            let (number, sha) = (event.number, event.pull_request.head.sha);
            tokio::spawn(async move { syncer.check_pull_request(number, sha).await });
            Ok(accepted(
                json!({"event": "pull_request", "check": "started", "number": event.number}),
            ))
        }
        other => Ok(accepted(json!({
            "event": other,
            "ignored": "the daemon acts on `push` to its branch and on `ping`",
        }))),
    }
}
