//! Client metadata documents (draft-ietf-oauth-client-id-metadata-document, the
//! way MCP clients identify themselves without registering): a client id that is
//! an https URL names a JSON document of its metadata, which the server reads.
//!
//! Reading a URL a stranger names is a server-side request, so it is kept small:
//! https only (http to a loopback address only when the daemon itself is served
//! on one, for clients on the same machine),
//! no credentials in the URL, no redirects followed, a short timeout, and at most
//! `MAX_BYTES` read. Nothing read is shown to the requester but the client's name
//! and redirect URIs, and only after the document proved it names itself.

use std::time::Duration;

use super::ClientMetadata;

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BYTES: usize = 16 * 1024;

/// Whether a client id is a metadata document's URL: https with a path, or
/// (when `loopback` allows it) http to a loopback address.
pub fn is_document_id(id: &str, loopback: bool) -> bool {
    let Ok(url) = url::Url::parse(id) else {
        return false;
    };
    let scheme_ok = match url.scheme() {
        "https" => true,
        "http" => loopback && super::is_loopback(&url),
        _ => false,
    };
    scheme_ok
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && url.path() != "/"
}

/// Reads and checks the document at `url`.
pub async fn fetch(http: &reqwest::Client, url: &str) -> Result<ClientMetadata, String> {
    let fail = |e: String| format!("the client metadata document {url}: {e}");
    let mut response = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(fail(format!("answered {}", response.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| fail(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_BYTES {
            return Err(fail(format!("larger than {MAX_BYTES} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let meta: ClientMetadata = serde_json::from_slice(&body)
        .map_err(|e| fail(format!("not client metadata JSON: {e}")))?;
    if meta.client_id.as_deref() != Some(url) {
        return Err(fail("its client_id is not its own URL".into()));
    }
    if meta.client_secret.is_some()
        || meta
            .token_endpoint_auth_method
            .as_deref()
            .is_some_and(|m| m != "none")
    {
        return Err(fail(
            "a metadata document client is public: token_endpoint_auth_method must be none".into(),
        ));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::is_document_id;

    #[test]
    fn only_https_urls_with_a_path_name_documents_and_loopback_only_when_local() {
        assert!(is_document_id(
            "https://app.example/oauth/client.json",
            false
        ));
        assert!(!is_document_id("https://app.example/", false));
        assert!(!is_document_id("https://user:pw@app.example/c.json", false));
        assert!(!is_document_id("dyn_0123", true));
        assert!(!is_document_id("http://app.example/c.json", true));
        assert!(!is_document_id("http://127.0.0.1:8080/c.json", false));
        assert!(is_document_id("http://127.0.0.1:8080/c.json", true));
    }
}
