//! The OAuth 2.1 authorization server's routes (the flows are `oauth/`):
//!
//! - `GET /.well-known/oauth-authorization-server` (RFC 8414)
//! - `GET /.well-known/oauth-protected-resource[/mcp]` (RFC 9728)
//! - `POST /oauth/register` (RFC 7591)
//! - `GET /oauth/authorize`: the consent page; `POST /oauth/authorize`: the
//!   owner's decision, proven with a token that has the `admin` scope
//! - `POST /oauth/token`, `POST /oauth/revoke` (RFC 6749, RFC 7009)
//!
//! These answer errors in the RFCs' shape (`{"error", "error_description"}`),
//! which OAuth clients read, instead of dynapi's own. The consent page and its
//! refusals are HTML for a browser and the JSON error shape for anything else.
//! Metadata, registration, token and revocation allow any origin (CORS): they
//! take no cookies, and browser-based MCP clients call them.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::json;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use super::{base_url, body, front, raw_query, with_app, ApiError};
use crate::audit::Entry;
use crate::auth::{self, Scope, Scopes};
use crate::oauth::{
    self, Approval, AuthorizeParams, OAuthError, Refused, RevokeParams, TokenParams,
};
use crate::App;

/// Bodies the OAuth endpoints take are small.
const BODY_LIMIT: u64 = 64 * 1024;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // CORS is wrapped inside each path prefix: warp's CORS filter answers a
    // preflight before the routes it wraps are matched, so wrapped around
    // everything it would answer preflights for every path of the API.
    let cors = warp::cors()
        .allow_any_origin()
        .allow_methods(["GET", "POST"])
        .allow_headers(["authorization", "content-type", "mcp-protocol-version"]);
    let well_known = warp::path(".well-known").and(
        server_metadata(app.clone())
            .or(resource_metadata(app.clone()))
            .unify()
            .with(cors.clone())
            .map(Reply::into_response),
    );
    let oauth = warp::path("oauth").and(
        register(app.clone())
            .or(token(app.clone()))
            .unify()
            .or(revoke(app.clone()))
            .unify()
            .with(cors)
            .map(Reply::into_response),
    );
    well_known
        .or(oauth)
        .unify()
        .or(consent(app.clone()))
        .unify()
        .or(decide(app))
        .unify()
}

/// The host a request came to, for the base URL when `--public-url` is not set.
fn host() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("host")
}

/// `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata.
fn server_metadata(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("oauth-authorization-server")
        .and(warp::get())
        .and(host())
        .and(with_app(app))
        .map(|host: Option<String>, app: Arc<App>| {
            let base = base_url(&app, host.as_deref());
            let methods = ["none", "client_secret_basic", "client_secret_post"];
            warp::reply::json(&json!({
                "issuer": base,
                "authorization_endpoint": format!("{base}/oauth/authorize"),
                "token_endpoint": format!("{base}/oauth/token"),
                "registration_endpoint": format!("{base}/oauth/register"),
                "revocation_endpoint": format!("{base}/oauth/revoke"),
                "scopes_supported": Scopes::all().names(),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_methods_supported": methods,
                "revocation_endpoint_auth_methods_supported": methods,
                "code_challenge_methods_supported": ["S256"],
                "authorization_response_iss_parameter_supported": true,
                "client_id_metadata_document_supported": true,
            }))
            .into_response()
        })
}

/// `GET /.well-known/oauth-protected-resource` (the whole API) and
/// `/.well-known/oauth-protected-resource/mcp` (RFC 9728 3.1: the resource's
/// path goes after the well-known name).
fn resource_metadata(
    app: Arc<App>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let api = warp::path!("oauth-protected-resource").map(|| oauth::Audience::Api);
    let mcp = warp::path!("oauth-protected-resource" / "mcp").map(|| oauth::Audience::Mcp);
    api.or(mcp)
        .unify()
        .and(warp::get())
        .and(host())
        .and(with_app(app))
        .map(
            |audience: oauth::Audience, host: Option<String>, app: Arc<App>| {
                let base = base_url(&app, host.as_deref());
                warp::reply::json(&json!({
                    "resource": audience.resource(&base),
                    "authorization_servers": [base],
                    "scopes_supported": Scopes::all().names(),
                    "bearer_methods_supported": ["header"],
                    "resource_name": "dynapi",
                }))
                .into_response()
            },
        )
}

/// `POST /oauth/register`: RFC 7591 dynamic registration, open to anyone (a
/// registration grants nothing; the owner's approval does).
fn register(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("register")
        .and(warp::post())
        .and(with_app(app))
        .and(body(BODY_LIMIT))
        .then(|app: Arc<App>, body: Result<Bytes, ApiError>| async move {
            let parsed = body
                .map_err(|e| OAuthError::new("invalid_client_metadata", e.message))
                .and_then(|b| {
                    serde_json::from_slice::<oauth::ClientMetadata>(&b).map_err(|e| {
                        OAuthError::new(
                            "invalid_client_metadata",
                            format!("the body is not client metadata JSON: {e}"),
                        )
                    })
                });
            let registered = match parsed {
                Ok(meta) => {
                    let method = meta.token_endpoint_auth_method.clone();
                    app.oauth.register(meta).await.map(|r| (r, method))
                }
                Err(e) => Err(e),
            };
            match registered {
                Ok(((client, secret), asked)) => {
                    audit(
                        &app,
                        "-",
                        &format!("register client {} ({})", client.id, client.name),
                    );
                    // The method asked for (both secret methods are taken alike),
                    // else RFC 7591's default.
                    let method = asked.unwrap_or_else(|| "client_secret_basic".into());
                    let mut answer = json!({
                        "client_id": client.id,
                        "client_id_issued_at": client.created,
                        "client_name": client.name,
                        "redirect_uris": client.redirect_uris,
                        "grant_types": ["authorization_code", "refresh_token"],
                        "response_types": ["code"],
                        "token_endpoint_auth_method": method,
                    });
                    if let Some(secret) = secret {
                        answer["client_secret"] = json!(secret);
                        answer["client_secret_expires_at"] = json!(0);
                    }
                    if let Some(scope) = client.scope {
                        answer["scope"] = json!(scope);
                    }
                    no_store(warp::reply::with_status(
                        warp::reply::json(&answer),
                        StatusCode::CREATED,
                    ))
                }
                Err(e) => oauth_error(&e),
            }
        })
}

/// `POST /oauth/token`: RFC 6749 section 4.1.3 and 6.
fn token(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("token")
        .and(warp::post())
        .and(host())
        .and(with_app(app))
        .and(form_request::<TokenParams>())
        .then(
            |host: Option<String>, app: Arc<App>, request: FormRequest<TokenParams>| async move {
                let base = base_url(&app, host.as_deref());
                let answer = match request {
                    Ok((basic, params)) => app.oauth.token(&base, params, basic).await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(tokens) => no_store(warp::reply::json(&tokens)),
                    Err(e) => oauth_error(&e),
                }
            },
        )
}

/// `POST /oauth/revoke`: RFC 7009. Unknown tokens are answered 200 too (2.2).
fn revoke(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("revoke")
        .and(warp::post())
        .and(with_app(app))
        .and(form_request::<RevokeParams>())
        .then(
            |app: Arc<App>, request: FormRequest<RevokeParams>| async move {
                let answer = match request {
                    Ok((basic, params)) => app.oauth.revoke(&params, basic).await,
                    Err(e) => Err(e),
                };
                match answer {
                    Ok(()) => no_store(warp::reply::json(&json!({}))),
                    Err(e) => oauth_error(&e),
                }
            },
        )
}

/// The HTTP Basic client credentials (if any) and the parameters of a token
/// or revocation request, or why they cannot be read.
type FormRequest<T> = Result<(Option<(String, String)>, T), OAuthError>;

/// What the token and revocation endpoints read: HTTP Basic client
/// credentials, and a form body (RFC 6749 3.2: `application/x-www-form-urlencoded`;
/// a parameter sent twice is refused).
fn form_request<T: serde::de::DeserializeOwned + Send>(
) -> impl Filter<Extract = (FormRequest<T>,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::header::optional::<String>("content-type"))
        .and(body(BODY_LIMIT))
        .map(
            |authorization: Option<String>,
             content_type: Option<String>,
             body: Result<Bytes, ApiError>| {
                let is_form = content_type.as_deref().is_some_and(|t| {
                    t.split(';').next().is_some_and(|t| {
                        t.trim()
                            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                    })
                });
                let basic = basic_credentials(authorization.as_deref())?;
                let body = body.map_err(|e| OAuthError::new("invalid_request", e.message))?;
                if !is_form {
                    return Err(OAuthError::new(
                        "invalid_request",
                        "send the parameters as application/x-www-form-urlencoded",
                    ));
                }
                let params = serde_urlencoded::from_bytes(&body).map_err(|e| {
                    OAuthError::new("invalid_request", format!("the form cannot be read: {e}"))
                })?;
                Ok((basic, params))
            },
        )
}

/// `Authorization: Basic` client credentials, each form-urlencoded first
/// (RFC 6749 2.3.1). Any other Authorization header is not client auth.
fn basic_credentials(header: Option<&str>) -> Result<Option<(String, String)>, OAuthError> {
    let Some(encoded) = header.and_then(|h| {
        h.strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
    }) else {
        return Ok(None);
    };
    let bad = || OAuthError::new("invalid_client", "the Basic credentials cannot be read");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| bad())
    };
    Ok(Some((decode(id)?, decode(secret)?)))
}

/// RFC 6749 5.2's error body, never cached.
fn oauth_error(e: &OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = no_store(warp::reply::with_status(
        warp::reply::json(&json!({"error": e.error, "error_description": e.description})),
        status,
    ));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"dynapi\""),
        );
    }
    response
}

/// RFC 6749 5.1: answers holding tokens are not cached.
fn no_store(reply: impl Reply) -> Response {
    let mut response = reply.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

// ----- the consent page -----------------------------------------------------

/// `GET /oauth/authorize`: checks the request and shows the owner what the
/// client asks for.
fn consent(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("oauth" / "authorize")
        .and(warp::get())
        .and(raw_query())
        .and(host())
        .and(warp::header::optional::<String>("accept"))
        .and(with_app(app))
        .then(
            |query: String, host: Option<String>, accept: Option<String>, app: Arc<App>| async move {
                let base = base_url(&app, host.as_deref());
                let html = wants_html(accept.as_deref());
                let params = match serde_urlencoded::from_str::<AuthorizeParams>(&query) {
                    Ok(p) => p,
                    Err(e) => {
                        let e = OAuthError::new("invalid_request", format!("the query cannot be read: {e}"));
                        return refusal_page(&e, html);
                    }
                };
                match app.oauth.check_authorize(&base, &params).await {
                    Ok(approval) => page(StatusCode::OK, &consent_html(&base, &params, &approval, None)),
                    Err(Refused::Page(e)) => refusal_page(&e, html),
                    Err(Refused::Redirect(url)) => redirect(StatusCode::FOUND, &url),
                }
            },
        )
}

/// `POST /oauth/authorize`: the owner's decision. The form carries the request
/// on, so it is checked again here; the owner proves who they are with a token
/// that has the `admin` scope (typed into this page, never into the client).
fn decide(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("oauth" / "authorize")
        .and(warp::post())
        .and(host())
        .and(warp::header::optional::<String>("accept"))
        .and(warp::ext::optional::<front::Peer>())
        .and(with_app(app))
        .and(body(BODY_LIMIT))
        .then(
            |host: Option<String>, accept: Option<String>, peer: Option<front::Peer>, app: Arc<App>, body: Result<Bytes, ApiError>| async move {
                let base = base_url(&app, host.as_deref());
                let html = wants_html(accept.as_deref());
                let fields = match body.map_err(|e| e.message).and_then(|b| {
                    serde_urlencoded::from_bytes::<Vec<(String, String)>>(&b).map_err(|e| e.to_string())
                }) {
                    Ok(fields) => fields,
                    Err(e) => {
                        let e = OAuthError::new("invalid_request", format!("the form cannot be read: {e}"));
                        return refusal_page(&e, html);
                    }
                };
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let params = AuthorizeParams {
                    response_type: field("response_type"),
                    client_id: field("client_id"),
                    redirect_uri: field("redirect_uri"),
                    code_challenge: field("code_challenge"),
                    code_challenge_method: field("code_challenge_method"),
                    state: field("state"),
                    scope: field("scope"),
                    resource: field("resource"),
                };
                let approval = match app.oauth.check_authorize(&base, &params).await {
                    Ok(a) => a,
                    Err(Refused::Page(e)) => return refusal_page(&e, html),
                    Err(Refused::Redirect(url)) => return redirect(StatusCode::SEE_OTHER, &url),
                };
                if field("decision").as_deref() == Some("deny") {
                    audit(&app, "-", &format!("deny client {}", approval.client.id));
                    return redirect(StatusCode::SEE_OTHER, &app.oauth.deny(&base, &approval));
                }
                // Guesses are counted per address, so a stranger's cannot
                // lock out an owner elsewhere.
                let from = peer.map(|p| front::address_key(p.0.ip()));
                if let Err(wait) = app.oauth.owner_may_try(from).await {
                    return too_many_guesses(&base, &params, &approval, wait);
                }
                let token = field("owner_token").unwrap_or_default();
                let registry = app.syncer.registry();
                let owner = auth::verify(
                    token.trim(),
                    app.tokens.iter().chain(registry.settings.tokens.iter()),
                )
                .filter(|_| !token.trim().is_empty());
                let Some(owner) = owner else {
                    let locked = app.oauth.owner_guessed_wrong(from).await;
                    audit(&app, "-", &format!("approve client {}: wrong token", approval.client.id));
                    if let Some(wait) = locked.filter(|w| !w.is_zero()) {
                        return too_many_guesses(&base, &params, &approval, wait);
                    }
                    let html = consent_html(&base, &params, &approval, Some("That token is not one of this daemon's tokens."));
                    return page(StatusCode::UNAUTHORIZED, &html);
                };
                if !owner.scopes.contains(Scope::Admin) {
                    let message = format!(
                        "The token `{}` does not have the admin scope; only an owner's admin token approves.",
                        owner.token_name
                    );
                    return page(StatusCode::FORBIDDEN, &consent_html(&base, &params, &approval, Some(&message)));
                }
                let ticked: Scopes = fields
                    .iter()
                    .filter(|(k, _)| k == "grant")
                    .filter_map(|(_, v)| v.parse::<Scope>().ok())
                    .collect();
                // Never more than the approving token has.
                let granted: Scopes = Scope::ALL
                    .into_iter()
                    .filter(|s| ticked.contains(*s) && owner.scopes.contains(*s))
                    .collect();
                if granted == Scopes::default() {
                    let html = consent_html(&base, &params, &approval, Some("Tick at least one scope, or deny."));
                    return page(StatusCode::BAD_REQUEST, &html);
                }
                match app.oauth.approve(&base, &approval, granted, &owner).await {
                    Ok(url) => {
                        audit(
                            &app,
                            &owner.token_name,
                            &format!(
                                "approve client {} ({}) for {}",
                                approval.client.id,
                                approval.client.name,
                                oauth::scope_string(granted)
                            ),
                        );
                        redirect(StatusCode::SEE_OTHER, &url)
                    }
                    Err(e) => refusal_page(&e, html),
                }
            },
        )
}

/// The consent page again, 429: this address gave too many wrong tokens and
/// must wait `wait` before the next is checked.
fn too_many_guesses(
    base: &str,
    params: &AuthorizeParams,
    approval: &Approval,
    wait: std::time::Duration,
) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let message =
        format!("Too many wrong tokens were tried from this address; try again in {seconds} s.");
    let mut response = page(
        StatusCode::TOO_MANY_REQUESTS,
        &consent_html(base, params, approval, Some(&message)),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn audit(app: &App, token: &str, target: &str) {
    app.audit.record(&Entry {
        token,
        operation: "oauth",
        target,
        commit: None,
        library: None,
        duration: std::time::Duration::ZERO,
        outcome: "ok",
    });
}

fn wants_html(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("text/html"))
}

fn redirect(status: StatusCode, url: &str) -> Response {
    let mut response = warp::reply::with_status(warp::reply::reply(), status).into_response();
    if let Ok(v) = HeaderValue::from_str(url) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal that cannot go back to the client: a page for a browser, the JSON
/// error shape (with the RFC's error name as its code) for anything else.
fn refusal_page(e: &OAuthError, html: bool) -> Response {
    // A page refuses the request itself, whoever the client is: 400, unless the
    // daemon failed.
    let status = if e.error == "server_error" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    if html {
        let body = format!(
            "<h1>This sign-in cannot go on</h1><p><code>{}</code>: {}</p><p>Nothing was granted. Start again from the app that sent you here.</p>",
            escape(e.error),
            escape(&e.description)
        );
        return page(status, &body);
    }
    ApiError::new(status, e.error, e.description.clone()).into_response()
}

/// An HTML page that no other site may frame, cache or be told about.
fn page(status: StatusCode, content: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>dynapi: sign in</title><style>{STYLE}</style></head><body><main>{content}</main></body></html>"
    );
    let mut response = warp::reply::with_status(warp::reply::html(html), status).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f6f7f9;margin:0}\
main{max-width:34rem;margin:3rem auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 1px 4px #0002}\
label{display:block;margin:.4rem 0}input[type=password]{width:100%;padding:.5rem;box-sizing:border-box}\
.error{color:#a00}button{padding:.5rem 1.2rem;margin-right:.5rem}code{word-break:break-all}";

const SCOPE_HELP: [(Scope, &str); 5] = [
    (Scope::Read, "read files, search, history, read-only SQL"),
    (
        Scope::Write,
        "change files and endpoints (each change is a commit)",
    ),
    (Scope::Run, "run scripts and endpoints"),
    (Scope::SqlWrite, "write to databases"),
    (Scope::Admin, "sync, revert, settings (dynapi.yaml)"),
];

fn consent_html(base: &str, params: &AuthorizeParams, a: &Approval, error: Option<&str>) -> String {
    let mut html = String::new();
    html.push_str(&format!(
        "<h1>Allow {} to use this dynapi?</h1>",
        escape(&a.client.name)
    ));
    html.push_str(&format!(
        "<p>Client <code>{}</code> will be sent back to <code>{}</code>",
        escape(&a.client.id),
        escape(&a.redirect_uri)
    ));
    if let Some(resource) = &a.resource {
        html.push_str(&format!(
            ", with access to <code>{}</code>",
            escape(resource)
        ));
    }
    html.push_str(".</p>");
    if let Some(error) = error {
        html.push_str(&format!("<p class=\"error\">{}</p>", escape(error)));
    }
    html.push_str(&format!(
        "<form method=\"post\" action=\"{}/oauth/authorize\">",
        escape(base)
    ));
    let hidden = [
        ("response_type", &params.response_type),
        ("client_id", &params.client_id),
        ("redirect_uri", &params.redirect_uri),
        ("code_challenge", &params.code_challenge),
        ("code_challenge_method", &params.code_challenge_method),
        ("state", &params.state),
        ("scope", &params.scope),
        ("resource", &params.resource),
    ];
    for (name, value) in hidden {
        if let Some(value) = value {
            html.push_str(&format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                escape(value)
            ));
        }
    }
    html.push_str("<fieldset><legend>It may</legend>");
    for (scope, help) in SCOPE_HELP {
        let checked = if a.scopes.contains(scope) {
            " checked"
        } else {
            ""
        };
        html.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"grant\" value=\"{scope}\"{checked}> <b>{scope}</b>: {help}</label>"
        ));
    }
    html.push_str("</fieldset>");
    html.push_str(
        "<p><label>Your admin token (it proves you own this daemon; it is not given to the client)\
         <input type=\"password\" name=\"owner_token\" autocomplete=\"off\" autofocus></label></p>\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button></form>",
    );
    html
}

/// Text made safe inside HTML elements and double-quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
