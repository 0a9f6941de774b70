//! `GET /openapi.json[?profile=gpt]`: the OpenAPI 3.1 document of the built-in
//! operations (`catalog.rs`) and the endpoints served now. Public, like a GPT
//! Action's importer needs it: it names routes, never data.

use std::sync::Arc;

use serde::Deserialize;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{base_url, catalog, parse_query, raw_query, respond, with_app, ApiError};
use crate::openapi::{self, Profile};
use crate::App;

pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("openapi.json")
        .and(warp::get())
        .and(raw_query())
        .and(warp::header::optional::<String>("host"))
        .and(with_app(app))
        .map(|query: String, host: Option<String>, app: Arc<App>| {
            respond(document(&app, &query, host).map(|doc| warp::reply::json(&doc).into_response()))
        })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentQuery {
    profile: Option<String>,
}

fn document(app: &App, query: &str, host: Option<String>) -> Result<serde_json::Value, ApiError> {
    let q: DocumentQuery = parse_query(query)?;
    let profile = Profile::parse(q.profile.as_deref().unwrap_or("full"))
        .ok_or_else(|| ApiError::bad_request("`profile` is `full` or `gpt`"))?;
    // The public URL when set; else where this request came to.
    let server = base_url(app, host.as_deref());
    let registry = app.syncer.registry();
    Ok(openapi::document(
        &catalog::operations(),
        &registry,
        profile,
        &server,
    ))
}
