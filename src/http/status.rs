//! Routes about the daemon itself: `GET /` (the seed's root), `GET /healthz`,
//! `GET /readyz`, `GET /status` and `POST /sync`.

use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::{auth, respond, with_app, ApiError, Auth};
use crate::sandbox;
use crate::source::sync::Trigger;
use crate::App;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    root(app.clone())
        .or(healthz())
        .unify()
        .or(readyz(app.clone()))
        .unify()
        .or(status(app.clone()))
        .unify()
        .or(sync(app.clone()))
        .unify()
        .or(metrics(app))
        .unify()
}

/// GET /metrics — Prometheus metrics (OpenMetrics text); needs a `read` token,
/// which a scraper sends with `authorization: {credentials: ...}`.
fn metrics(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .and(auth(app.clone()))
        .and(with_app(app))
        .map(|auth: Auth, app: Arc<App>| {
            respond(auth.check().map(|_| {
                warp::reply::with_header(
                    app.metrics.render(),
                    "content-type",
                    crate::metrics::CONTENT_TYPE,
                )
            }))
        })
}

/// GET / — public: what is running, and which commit it serves.
fn root(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path::end().and(warp::get()).and(with_app(app)).map(|app: Arc<App>| {
        respond(Ok::<_, ApiError>(warp::reply::json(&json!({
            "message": "dynapi is running. GET /endpoints lists what it serves; send Authorization: Bearer <token>.",
            "version": env!("CARGO_PKG_VERSION"),
            "commit": app.syncer.registry().commit,
        }))))
    })
}

/// GET /healthz — public: the process answers.
fn healthz() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("healthz").and(warp::get()).map(|| {
        respond(Ok::<_, ApiError>(warp::reply::json(
            &json!({"status": "ok"}),
        )))
    })
}

/// GET /readyz — public: a registry is loaded and requests can be served.
fn readyz(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("readyz")
        .and(warp::get())
        .and(with_app(app))
        .map(|app: Arc<App>| {
            let commit = app.syncer.registry().commit.clone();
            if commit.is_empty() {
                respond(Err::<warp::reply::Json, _>(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    "no commit has been loaded yet",
                )))
            } else {
                respond(Ok::<_, ApiError>(warp::reply::json(
                    &json!({"ready": true, "commit": commit}),
                )))
            }
        })
}

/// GET /status — commit served, last sync, last error with file/line problems,
/// last-known-good, counts.
fn status(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("status")
        .and(warp::get())
        .and(auth(app.clone()))
        .and(with_app(app))
        .map(|auth: Auth, app: Arc<App>| {
            respond(auth.check().map(|_| {
                let registry = app.syncer.registry();
                let status = app.syncer.status();
                let repository = app.syncer.github_repository();
                // Writes are refused while a human has another branch out.
                let other = app.repo.other_checkout().ok().flatten();
                warp::reply::json(&json!({
                    "commit": registry.commit,
                    "branch": app.config.branch,
                    "checked_out": other.as_deref().unwrap_or(&app.config.branch),
                    "writes": if other.is_some() { "refused: another branch is checked out in the workspace" } else { "taken" },
                    "source": if repository.is_some() { "github" } else { "local" },
                    "repository": repository,
                    "last_known_good": {"commit": registry.commit, "since": status.served_since},
                    "last_sync": status.last_sync,
                    "last_error": status.last_error,
                    "next_sync_in_ms": (status.retry_in_ms > 0).then_some(status.retry_in_ms),
                    "counts": {
                        "endpoints": registry.endpoints().len(),
                        "prompts": registry.prompts().len(),
                        "syncs": status.syncs,
                        "sync_failures": status.failures,
                        "scripts_running": app.exec.running(),
                    },
                    "sandbox": sandbox_status(&app, registry.settings.sandbox),
                    "libraries": libraries_status(&registry),
                    "uptime_seconds": app.started.elapsed().as_secs(),
                }))
            }))
        })
}

/// The libraries served beside the project's endpoints: repository, ref, the
/// commit it resolved to, and which endpoints it serves here.
fn libraries_status(registry: &crate::registry::Registry) -> serde_json::Value {
    registry
        .libraries()
        .iter()
        .map(|library| {
            let mut entry = serde_json::to_value(library.as_ref()).unwrap_or_default();
            entry["endpoints"] = registry
                .endpoints()
                .iter()
                .filter(|e| {
                    e.source
                        .as_ref()
                        .is_some_and(|s| std::sync::Arc::ptr_eq(s, library))
                })
                .map(|e| json!(e.name))
                .collect();
            entry
        })
        .collect()
}

/// What the kernel offers the sandbox, what `dynapi.yaml` asks for, and so what
/// is enforced on every script.
fn sandbox_status(app: &App, mode: sandbox::Mode) -> serde_json::Value {
    let sandbox = app.exec.sandbox();
    let support = sandbox.support();
    let limits = sandbox.limits();
    let on = mode != sandbox::Mode::Off;
    json!({
        "mode": mode,
        "scripts_run": sandbox.check(mode).is_ok(),
        "landlock_abi": support.landlock_abi,
        // Who scripts run as: not root, unless the daemon cannot switch.
        "runs_as": {"user": support.user.name, "uid": support.user.uid, "gid": support.user.gid},
        "enforced": {
            "filesystem": on && support.filesystem,
            "network": on && support.network,
            "signals": on && support.scopes,
            "processes": on && support.processes,
            "memory": on,
            "file_size": on,
            "no_new_privs": on,
            "syscalls": on && support.syscalls,
            "descriptors": on,
        },
        "limits": {
            "memory_bytes": limits.memory,
            // RLIMIT_AS, which counts shared mappings too (no cgroup is used).
            "address_space_bytes": sandbox::address_space(limits.memory),
            "memory_enforced_by": "rlimit",
            "file_size_bytes": limits.file_size,
            "processes": limits.processes,
        },
        "missing": if on {
            support.missing.iter().cloned().chain(sandbox.closed_above(&app.config.workspace)).collect()
        } else {
            vec!["`sandbox: off` in dynapi.yaml".to_string()]
        },
    })
}

/// POST /sync — fetch and reload now; answers the commit served and any problems.
fn sync(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("sync")
        .and(warp::post())
        .and(auth(app.clone()))
        .and(with_app(app))
        .then(|auth: Auth, app: Arc<App>| async move {
            if let Err(e) = auth.check() {
                return respond(Err::<warp::reply::Json, _>(e));
            }
            let report = app.syncer.sync(Trigger::Api).await;
            respond(Ok::<_, ApiError>(warp::reply::json(&report)))
        })
}
