//! Client metadata documents (draft-ietf-oauth-client-id-metadata-document, the
//! way MCP clients identify themselves without registering): a client id that is
//! an https URL names a JSON document of its metadata, which the server reads.
//!
//! Reading a URL a stranger names is a server-side request, so it is kept small:
//! https only (http to a loopback address only when the configuration puts the
//! daemon on loopback, for clients on the same machine; see
//! `documents_may_be_local`),
//! no credentials in the URL, no redirects followed, a short timeout, and at most
//! `MAX_BYTES` read. Nothing read is shown to the requester but the client's name
//! and redirect URIs, and only after the document proved it names itself.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::ClientMetadata;

pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BYTES: usize = 16 * 1024;

/// Whether a client id is a metadata document's URL: https with a path, or
/// (when `loopback` allows it, for a daemon on loopback itself) http to a
/// loopback address. Otherwise an address written in the URL must be public.
pub fn is_document_id(id: &str, loopback: bool) -> bool {
    let Ok(url) = url::Url::parse(id) else {
        return false;
    };
    let address_ok = match url.host() {
        Some(url::Host::Ipv4(ip)) => loopback || is_public(ip.into()),
        Some(url::Host::Ipv6(ip)) => loopback || is_public(ip.into()),
        Some(url::Host::Domain(_)) => true,
        None => false,
    };
    let scheme_ok = match url.scheme() {
        "https" => true,
        "http" => loopback && super::is_loopback(&url),
        _ => false,
    };
    scheme_ok
        && address_ok
        && url.username().is_empty()
        && url.password().is_none()
        && url.fragment().is_none()
        && url.path() != "/"
}

/// Resolves names as the system does, keeping only public addresses.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is an address on the public internet: not private, loopback,
/// link-local (cloud metadata lives there), shared (CGNAT), unspecified,
/// broadcast, documentation, reserved, or IPv6 unique-local.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (a == 100 && (b & 0xc0) == 64)
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
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
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "140.82.112.3", "2606:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        assert!(!is_document_id(
            "https://169.254.169.254/latest/meta-data",
            false
        ));
        assert!(!is_document_id("https://[fd00::1]/c.json", false));
        assert!(is_document_id("https://140.82.112.3/c.json", false));
    }

    #[tokio::test]
    async fn names_resolving_only_to_private_addresses_are_refused() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let refused = PublicOnly.resolve(name).await;
        assert!(refused.is_err());
    }

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
