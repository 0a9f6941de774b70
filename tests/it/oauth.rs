//! OAuth 2.1 sign-in, driven the way an MCP client (or GPT Actions) drives it:
//! discovery from a 401, registration, authorization with PKCE, the owner's
//! consent on the daemon's page, tokens, a call to /mcp, refresh, revocation;
//! and every refusal answered with the error the RFCs name.

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{Daemon, TOKEN};

/// A browser and an OAuth client in one: it follows no redirects, so each one
/// can be looked at.
struct Browser {
    http: reqwest::Client,
    base: String,
}

/// What an answer was: status, headers, body text and body JSON (Null if none).
struct Seen {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

impl Seen {
    fn location(&self) -> String {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// The query parameters of the redirect's target.
    fn redirected_with(&self) -> Vec<(String, String)> {
        let location = self.location();
        let query = location.split_once('?').map(|(_, q)| q).unwrap_or("");
        serde_urlencoded::from_str(query).unwrap()
    }

    fn param(&self, name: &str) -> Option<String> {
        self.redirected_with()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

async fn seen(res: reqwest::Response) -> Seen {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Seen {
        status,
        headers,
        text,
        json,
    }
}

const REDIRECT: &str = "http://127.0.0.1:9/callback";

impl Browser {
    fn new(d: &Daemon) -> Browser {
        Browser {
            http: crate::support::client_builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: d.url.clone(),
        }
    }

    async fn get(&self, url: &str, token: Option<&str>) -> Seen {
        let mut req = self.http.get(url).header("accept", "text/html");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        seen(req.send().await.unwrap()).await
    }

    async fn form(&self, path: &str, fields: &[(&str, &str)], basic: Option<(&str, &str)>) -> Seen {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(fields).unwrap());
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        seen(req.send().await.unwrap()).await
    }

    async fn register(&self, metadata: Value) -> Seen {
        seen(
            self.http
                .post(format!("{}/oauth/register", self.base))
                .json(&metadata)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The authorization request as a client builds it.
    fn authorize_url(&self, params: &[(&str, &str)]) -> String {
        format!(
            "{}/oauth/authorize?{}",
            self.base,
            serde_urlencoded::to_string(params).unwrap()
        )
    }

    /// The owner's answer on the consent page: the request's fields as the page
    /// carries them, the token, the ticked scopes and the button.
    async fn decide(
        &self,
        params: &[(&str, &str)],
        owner_token: &str,
        grant: &[&str],
        decision: &str,
    ) -> Seen {
        let mut fields: Vec<(&str, &str)> = params.to_vec();
        fields.push(("owner_token", owner_token));
        for scope in grant {
            fields.push(("grant", scope));
        }
        fields.push(("decision", decision));
        self.form("/oauth/authorize", &fields, None).await
    }

    /// A tool call over /mcp (the stateless revision: no session to set up).
    async fn mcp_call(&self, token: &str, tool: &str, arguments: Value) -> Seen {
        seen(
            self.http
                .post(format!("{}/mcp", self.base))
                .bearer_auth(token)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", tool)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": tool, "arguments": arguments,
                        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                            "io.modelcontextprotocol/clientCapabilities": {},
                            "io.modelcontextprotocol/clientInfo": {"name": "oauth-test", "version": "1"}}}}))
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

/// A PKCE pair: a verifier and its S256 challenge (RFC 7636 4.1, 4.2).
fn pkce() -> (String, String) {
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).unwrap();
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// Registers a public client and takes it through consent to a code: answers
/// the client id, the code and the verifier.
async fn code_for(b: &Browser, scope: &str, resource: &str) -> (String, String, String) {
    let reg = b
        .register(
            json!({"redirect_uris": [REDIRECT], "client_name": "Refusals",
            "token_endpoint_auth_method": "none"}),
        )
        .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    let client_id = reg.json["client_id"].as_str().unwrap().to_string();
    let (verifier, challenge) = pkce();
    let params = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "s"),
        ("scope", scope),
        ("resource", resource),
    ];
    let grants: Vec<&str> = scope.split(' ').collect();
    let approved = b.decide(&params, TOKEN, &grants, "approve").await;
    assert_eq!(approved.status, 303, "{}", approved.text);
    let code = approved.param("code").expect("a code");
    (client_id, code, verifier)
}

async fn redeem(b: &Browser, client_id: &str, code: &str, verifier: &str, resource: &str) -> Seen {
    b.form(
        "/oauth/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
            ("resource", resource),
        ],
        None,
    )
    .await
}

#[tokio::test]
async fn an_mcp_client_signs_in_with_oauth_calls_mcp_refreshes_and_revokes() {
    let d = Daemon::start().await;
    let b = Browser::new(&d);

    // 1. Discovery starts from the 401 (RFC 9728 5.1).
    let first = seen(
        b.http
            .post(format!("{}/mcp", d.url))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first.status, 401);
    let challenge = first.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let metadata_url = format!("{}/.well-known/oauth-protected-resource/mcp", d.url);
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{metadata_url}\"")
    );
    let resource_doc = b.get(&metadata_url, None).await;
    assert_eq!(
        resource_doc.json["resource"],
        json!(format!("{}/mcp", d.url))
    );
    let issuer = resource_doc.json["authorization_servers"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(issuer, d.url);
    // RFC 8414 3: the metadata is at the issuer's well-known URL and names it.
    let server = b
        .get(
            &format!("{issuer}/.well-known/oauth-authorization-server"),
            None,
        )
        .await
        .json;
    assert_eq!(server["issuer"], json!(issuer));
    assert_eq!(server["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(server["client_id_metadata_document_supported"], json!(true));

    // Browser-based clients may call the token endpoint from another origin;
    // the rest of the API is not opened to them.
    let preflight = |path: &str| {
        b.http
            .request(reqwest::Method::OPTIONS, format!("{}{path}", d.url))
            .header("origin", "https://inspector.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("/oauth/token").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://inspector.example"
    );
    let refused = preflight("/files/x.md").await.unwrap();
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));

    // 2. Registration (RFC 7591): a public client.
    let reg = b
        .register(json!({
            "redirect_uris": [REDIRECT],
            "client_name": "Test Connector",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }))
        .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    assert!(reg.json.get("client_secret").is_none());
    let client_id = reg.json["client_id"].as_str().unwrap().to_string();

    // 3. Authorization with PKCE: the owner's consent page.
    let (verifier, challenge) = pkce();
    let resource = format!("{}/mcp", d.url);
    let params = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("state", "st4te"),
        ("scope", "read run"),
        ("resource", resource.as_str()),
    ];
    let page = b
        .get(
            server["authorization_endpoint"]
                .as_str()
                .map(|e| format!("{e}?{}", serde_urlencoded::to_string(params).unwrap()))
                .as_deref()
                .unwrap(),
            None,
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("Allow Test Connector"), "{}", page.text);
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert!(!page.text.contains(TOKEN));

    // The owner must prove it: a wrong token, then a token without admin.
    let wrong = b
        .decide(&params, "not-a-token", &["read", "run"], "approve")
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.location().is_empty());
    d.grant_reader("reader-secret", "read, run").await;
    let reader = b
        .decide(&params, "reader-secret", &["read", "run"], "approve")
        .await;
    assert_eq!(reader.status, 403, "{}", reader.text);
    assert!(reader.text.contains("admin"));

    // Approved with the admin token: back to the client with code, state, iss (RFC 9207).
    let approved = b.decide(&params, TOKEN, &["read", "run"], "approve").await;
    assert_eq!(approved.status, 303, "{}", approved.text);
    assert!(approved.location().starts_with(&format!("{REDIRECT}?")));
    assert_eq!(approved.param("state").as_deref(), Some("st4te"));
    assert_eq!(approved.param("iss").as_deref(), Some(d.url.as_str()));
    let code = approved.param("code").unwrap();

    // 4. The token request, with the verifier and the resource.
    let tokens = redeem(&b, &client_id, &code, &verifier, &resource).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    assert_eq!(tokens.headers["cache-control"], "no-store");
    assert_eq!(tokens.json["token_type"], json!("Bearer"));
    assert_eq!(tokens.json["scope"], json!("read run"));
    assert_eq!(tokens.json["resource"], json!(resource));
    assert!(tokens.json["expires_in"].as_u64().unwrap() > 0);
    let access = tokens.json["access_token"].as_str().unwrap().to_string();
    let refresh = tokens.json["refresh_token"].as_str().unwrap().to_string();

    // 5. The token works at /mcp, tool calls included (forwarded to the routes).
    let listed = b
        .mcp_call(&access, "listFiles", json!({"path": "manifests"}))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert!(listed.text.contains("hello.yaml"), "{}", listed.text);
    // Scopes hold: the owner granted read and run, not write.
    let write = b
        .mcp_call(
            &access,
            "writeFile",
            json!({"path": "x.md", "content": "no"}),
        )
        .await;
    assert!(write.text.contains("forbidden"), "{}", write.text);
    assert!(!d.workspace.join("x.md").exists());
    // It was issued for /mcp (RFC 8707): the rest of the API refuses it.
    let elsewhere = d.request("GET", "/files", None, Some(&access)).await;
    assert_eq!(elsewhere.status, 401);
    let www = elsewhere.headers["www-authenticate"].to_str().unwrap();
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert!(
        www.contains("/.well-known/oauth-protected-resource\""),
        "{www}"
    );

    // 6. Refresh: a new pair, the refresh token rotated.
    let refreshed = b
        .form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", &client_id),
            ],
            None,
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let access2 = refreshed.json["access_token"].as_str().unwrap().to_string();
    let refresh2 = refreshed.json["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(refresh2, refresh);
    assert_ne!(access2, access);
    assert_eq!(
        b.mcp_call(&access2, "listFiles", json!({"path": "manifests"}))
            .await
            .status,
        200
    );

    // 7. Revocation (RFC 7009): the refresh token ends the grant and its tokens.
    let revoked = b
        .form(
            "/oauth/revoke",
            &[("token", &refresh2), ("client_id", &client_id)],
            None,
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert_eq!(
        b.mcp_call(&access2, "listFiles", json!({})).await.status,
        401
    );
    let after = b
        .form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh2),
                ("client_id", &client_id),
            ],
            None,
        )
        .await;
    assert_eq!(after.json["error"], json!("invalid_grant"));
    // An unknown token is answered like a known one (RFC 7009 2.2).
    let unknown = b
        .form(
            "/oauth/revoke",
            &[("token", "nothing-like-it"), ("client_id", &client_id)],
            None,
        )
        .await;
    assert_eq!(unknown.status, 200);

    // The audit log names the approval, never a secret.
    let log = std::fs::read_to_string(d.app.audit.path()).unwrap();
    assert!(log.contains("approve client"), "{log}");
    assert!(!log.contains(&refresh) && !log.contains(&access));
}

/// The official MCP Python SDK's OAuth client, as ChatGPT's connectors sign in:
/// from the 401 to tools, with only the scopes the owner ticked.
#[tokio::test]
async fn the_mcp_python_sdk_signs_in_with_oauth_and_gets_what_the_owner_granted() {
    let d = Daemon::start().await;
    let mut sdk = crate::mcp::Client::script(
        "oauth_client.py",
        &[format!("{}/mcp", d.url), TOKEN.to_string()],
    );
    let consent = sdk.step("consent").await;
    assert_eq!(consent["status"], json!(200), "{consent}");
    assert_eq!(consent["has_form"], json!(true));
    let signed_in = sdk.step("signed-in").await;
    sdk.finish().await;
    assert_eq!(signed_in["scope"], json!("read run"), "{signed_in}");
    let tools: Vec<&str> = signed_in["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"listFiles") && !tools.contains(&"writeFile"),
        "{tools:?}"
    );
    assert_eq!(signed_in["listed"]["is_error"], json!(false), "{signed_in}");
    assert!(signed_in["listed"].to_string().contains("hello.yaml"));
    assert_eq!(signed_in["write"]["is_error"], json!(true));
    assert!(!d.workspace.join("x.md").exists());
    // The SDK registered itself; the owner sees it.
    let client = signed_in["client"].as_str().unwrap();
    assert!(cli(&d, &["list"]).contains(client));
}

#[tokio::test]
async fn oauth_refusals_carry_the_errors_the_rfcs_name() {
    let d = Daemon::start().await;
    let b = Browser::new(&d);
    let resource = format!("{}/mcp", d.url);
    let reg = b
        .register(json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"}))
        .await;
    let client_id = reg.json["client_id"].as_str().unwrap().to_string();
    let (_, challenge) = pkce();
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, String)> {
        let mut p = vec![
            ("response_type", "code".to_string()),
            ("client_id", client_id.clone()),
            ("redirect_uri", REDIRECT.to_string()),
            ("code_challenge", challenge.clone()),
            ("code_challenge_method", "S256".to_string()),
            ("state", "s".to_string()),
        ];
        for (k, v) in extra {
            p.retain(|(name, _)| name != k);
            if !v.is_empty() {
                p.push((k, v.to_string()));
            }
        }
        p
    };
    let authorize = |params: Vec<(&str, String)>| {
        let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        b.authorize_url(&pairs)
    };

    // Refused on a page, never redirected: unknown client, unregistered redirect.
    for (params, error) in [
        (with(&[("client_id", "dyn_unknown")]), "invalid_client"),
        (
            with(&[("redirect_uri", "http://127.0.0.1:9/other")]),
            "invalid_request",
        ),
        (
            with(&[("redirect_uri", "https://evil.example/callback")]),
            "invalid_request",
        ),
    ] {
        let page = seen(b.http.get(authorize(params)).send().await.unwrap()).await;
        assert_eq!(page.status, 400, "{}", page.text);
        assert!(page.location().is_empty());
        assert_eq!(page.json["error"]["code"], json!(error), "{}", page.text);
    }
    // Refused back at the client, with state and iss, once the owner approved
    // the client (before that, see
    // `a_client_nobody_approved_gets_its_errors_on_a_page_not_a_redirect`).
    let pairs = with(&[]);
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let approved = b.decide(&pairs, TOKEN, &["read"], "approve").await;
    assert_eq!(approved.status, 303, "{}", approved.text);
    for (params, error) in [
        (
            with(&[("code_challenge", ""), ("code_challenge_method", "")]),
            "invalid_request",
        ),
        (
            with(&[("code_challenge_method", "plain")]),
            "invalid_request",
        ),
        (
            with(&[("response_type", "token")]),
            "unsupported_response_type",
        ),
        (
            with(&[("resource", "https://evil.example/mcp")]),
            "invalid_target",
        ),
        (with(&[("scope", "root")]), "invalid_scope"),
    ] {
        let back = b.get(&authorize(params), None).await;
        assert_eq!(back.status, 302, "{}", back.text);
        assert!(back.location().starts_with(REDIRECT));
        assert_eq!(
            back.param("error").as_deref(),
            Some(error),
            "{}",
            back.location()
        );
        assert_eq!(back.param("state").as_deref(), Some("s"));
        assert_eq!(back.param("iss").as_deref(), Some(d.url.as_str()));
    }
    // The owner denies: access_denied.
    let denied = b
        .decide(
            &with(&[])
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
            "",
            &[],
            "deny",
        )
        .await;
    assert_eq!(denied.param("error").as_deref(), Some("access_denied"));

    // Wrong verifier.
    let (client, code, _) = code_for(&b, "read", &resource).await;
    let (wrong_verifier, _) = pkce();
    let answer = redeem(&b, &client, &code, &wrong_verifier, &resource).await;
    assert_eq!(
        (answer.status, answer.json["error"].clone()),
        (400, json!("invalid_grant"))
    );

    // A reused code: refused, and the tokens issued for it are revoked.
    let (client, code, verifier) = code_for(&b, "read", &resource).await;
    let first = redeem(&b, &client, &code, &verifier, &resource).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let access = first.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        b.mcp_call(&access, "listFiles", json!({})).await.status,
        200
    );
    let again = redeem(&b, &client, &code, &verifier, &resource).await;
    assert_eq!(
        again.json["error"],
        json!("invalid_grant"),
        "{}",
        again.text
    );
    assert_eq!(
        b.mcp_call(&access, "listFiles", json!({})).await.status,
        401
    );

    // Wrong redirect URI at the token endpoint.
    let (client, code, verifier) = code_for(&b, "read", &resource).await;
    let answer = b
        .form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:9/elsewhere"),
                ("client_id", &client),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(
        answer.json["error"],
        json!("invalid_grant"),
        "{}",
        answer.text
    );

    // Wrong resource at the token endpoint.
    let answer = redeem(
        &b,
        &client,
        &code,
        &verifier,
        &d.url.replace("127.0.0.1", "localhost"),
    )
    .await;
    assert_eq!(
        answer.json["error"],
        json!("invalid_target"),
        "{}",
        answer.text
    );

    // A refresh token used twice: the second use ends the grant (OAuth 2.1 4.3.1).
    let (client, code, verifier) = code_for(&b, "read run", &resource).await;
    let tokens = redeem(&b, &client, &code, &verifier, &resource).await;
    let refresh = tokens.json["refresh_token"].as_str().unwrap().to_string();
    let refresh_with = |token: String, scope: Option<&'static str>| {
        let client = client.clone();
        let b = &b;
        async move {
            let mut fields = vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", token),
                ("client_id", client),
            ];
            if let Some(s) = scope {
                fields.push(("scope", s.to_string()));
            }
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            b.form("/oauth/token", &pairs, None).await
        }
    };
    let wider = refresh_with(refresh.clone(), Some("read run write")).await;
    assert_eq!(
        wider.json["error"],
        json!("invalid_scope"),
        "{}",
        wider.text
    );
    let narrower = refresh_with(refresh.clone(), Some("read")).await;
    assert_eq!(narrower.json["scope"], json!("read"), "{}", narrower.text);
    let new_access = narrower.json["access_token"].as_str().unwrap().to_string();
    let reused = refresh_with(refresh, None).await;
    assert_eq!(
        reused.json["error"],
        json!("invalid_grant"),
        "{}",
        reused.text
    );
    assert_eq!(
        b.mcp_call(&new_access, "listFiles", json!({})).await.status,
        401
    );

    // Token endpoint basics.
    let answer = b
        .form(
            "/oauth/token",
            &[("grant_type", "password"), ("client_id", &client)],
            None,
        )
        .await;
    assert_eq!(answer.json["error"], json!("unsupported_grant_type"));
    let answer = b
        .form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("client_id", "dyn_nobody"),
            ],
            None,
        )
        .await;
    assert_eq!(
        (answer.status, answer.json["error"].clone()),
        (401, json!("invalid_client"))
    );
    let json_body = seen(
        b.http
            .post(format!("{}/oauth/token", d.url))
            .json(&json!({"grant_type": "authorization_code"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(json_body.json["error"], json!("invalid_request"));

    // Guessing owner tokens is bounded per address: after 20 wrong ones from
    // an address, it gets one token checked at a time, waiting longer after
    // each wrong one; the right token still gets through; other addresses are
    // not affected.
    let page_params = with(&[]);
    let page_params: Vec<(&str, &str)> =
        page_params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for _ in 0..20 {
        let guess = b.decide(&page_params, "guess", &["read"], "approve").await;
        assert_eq!(guess.status, 401);
    }
    let owner = b.decide(&page_params, TOKEN, &["read"], "approve").await;
    assert_eq!(owner.status, 303, "the owner gets in: {}", owner.text);
    let locked = b.decide(&page_params, "guess", &["read"], "approve").await;
    assert_eq!(locked.status, 429, "{}", locked.text);
    assert_eq!(locked.headers["retry-after"], "1");
    assert!(locked.location().is_empty());
    let waiting = b.decide(&page_params, TOKEN, &["read"], "approve").await;
    assert_eq!(waiting.status, 429, "not checked yet: {}", waiting.text);
    let elsewhere = Browser {
        http: crate::support::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap(),
        base: d.url.clone(),
    };
    let other = elsewhere
        .decide(&page_params, "guess", &["read"], "approve")
        .await;
    assert_eq!(other.status, 401, "another address is not locked");
    let other = elsewhere
        .decide(&page_params, TOKEN, &["read"], "approve")
        .await;
    assert_eq!(other.status, 303, "{}", other.text);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let owner = b.decide(&page_params, TOKEN, &["read"], "approve").await;
    assert_eq!(owner.status, 303, "after the wait: {}", owner.text);

    // A client asking for a secret gets one, with the method it named.
    let confidential = b
        .register(json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_post"}))
        .await;
    assert_eq!(confidential.status, 201, "{}", confidential.text);
    assert_eq!(
        confidential.json["token_endpoint_auth_method"],
        json!("client_secret_post")
    );
    assert!(confidential.json["client_secret"]
        .as_str()
        .unwrap()
        .starts_with("dynapi_cs_"));
    assert_eq!(confidential.json["client_secret_expires_at"], json!(0));

    // Registration refusals (RFC 7591 3.2.2).
    for (metadata, error) in [
        (
            json!({"client_name": "no redirect"}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["http://example.com/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": ["javascript:alert(1)"]}),
            "invalid_redirect_uri",
        ),
        (
            json!({"redirect_uris": [REDIRECT], "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (json!("not an object"), "invalid_client_metadata"),
    ] {
        let answer = b.register(metadata.clone()).await;
        assert_eq!(
            (answer.status, answer.json["error"].clone()),
            (400, json!(error)),
            "{metadata}"
        );
    }
}

#[tokio::test]
async fn an_expired_access_token_is_refused_and_the_refresh_token_gets_a_new_one() {
    let d = Daemon::start_with(|c| c.oauth_access_lifetime = Duration::from_secs(1)).await;
    let b = Browser::new(&d);
    let resource = format!("{}/mcp", d.url);
    let (client, code, verifier) = code_for(&b, "read", &resource).await;
    let tokens = redeem(&b, &client, &code, &verifier, &resource).await;
    assert_eq!(tokens.json["expires_in"], json!(1));
    let access = tokens.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        b.mcp_call(&access, "listFiles", json!({})).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let expired = b.mcp_call(&access, "listFiles", json!({})).await;
    assert_eq!(expired.status, 401);
    let www = expired.headers["www-authenticate"].to_str().unwrap();
    assert!(
        www.contains("error=\"invalid_token\"") && www.contains("expired"),
        "{www}"
    );
    let refreshed = b
        .form(
            "/oauth/token",
            &[
                ("grant_type", "refresh_token"),
                (
                    "refresh_token",
                    tokens.json["refresh_token"].as_str().unwrap(),
                ),
                ("client_id", &client),
            ],
            None,
        )
        .await;
    let access = refreshed.json["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        b.mcp_call(&access, "listFiles", json!({})).await.status,
        200
    );
}

/// `dynapi oauth ...` against `d`'s workspace; answers stdout, after checking it succeeded.
fn cli(d: &Daemon, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynapi"))
        .arg("oauth")
        .args(args)
        .arg("--workspace")
        .arg(&d.workspace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dynapi oauth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Checks that no file in the state folder (the store, its write-ahead log,
/// the audit log) contains `secret`. grep reads them, in its own process:
/// closing a descriptor of the store in this one would drop the locks SQLite
/// holds on it for the daemon (POSIX record locks belong to the process).
fn assert_no_file_holds(d: &Daemon, secret: &str) {
    let dir = d.workspace.join(".git/dynapi");
    assert!(dir.join("oauth.db").exists());
    let found = std::process::Command::new("grep")
        .args(["-rlaF", "--", secret])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        found.status.code(),
        Some(1),
        "grep found a secret in: {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"))
}

#[tokio::test]
async fn a_gpt_actions_client_made_on_the_command_line_signs_in_and_is_revoked_there() {
    let mut d = Daemon::start().await;
    let b = Browser::new(&d);
    let made = cli(
        &d,
        &["client", "new", "--name", "My GPT", "--public-url", &d.url],
    );
    let id = field(&made, "Client ID:");
    let secret = field(&made, "Client Secret:");
    assert_eq!(field(&made, "Token URL:"), format!("{}/oauth/token", d.url));
    assert_eq!(
        field(&made, "Authorization URL:"),
        format!("{}/oauth/authorize", d.url)
    );
    // Only hashes are kept: no file of the daemon's state holds the secret.
    assert_no_file_holds(&d, &secret);
    // (The same search does find what is kept in the clear, the client id.)
    let found = std::process::Command::new("grep")
        .args(["-rlaF", "--", &id])
        .arg(d.workspace.join(".git/dynapi"))
        .status()
        .unwrap();
    assert!(found.success());

    // GPT Actions' callback is known once the action is saved.
    let callback = "https://chatgpt.com/aip/g-0123456789abcdef/oauth/callback";
    let params = [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", callback),
        ("state", "gpt-state"),
        ("scope", "read write"),
    ];
    let before = b.get(&b.authorize_url(&params), None).await;
    assert_eq!(before.status, 400, "unknown redirect before allow-redirect");
    cli(&d, &["client", "allow-redirect", &id, callback]);

    // GPT Actions send no PKCE: allowed for this confidential client.
    assert_eq!(b.get(&b.authorize_url(&params), None).await.status, 200);
    let approved = b
        .decide(&params, TOKEN, &["read", "write"], "approve")
        .await;
    assert_eq!(approved.status, 303, "{}", approved.text);
    let code = approved.param("code").unwrap();
    let token_fields = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", callback),
    ];
    let wrong = b
        .form(
            "/oauth/token",
            &token_fields,
            Some((&id, "dynapi_cs_wrong")),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.json["error"].clone()),
        (401, json!("invalid_client"))
    );
    // Client secret in the Basic header ("Basic authorization header" in the GPT editor).
    let tokens = b
        .form("/oauth/token", &token_fields, Some((&id, &secret)))
        .await;
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    let access = tokens.json["access_token"].as_str().unwrap().to_string();

    // No resource named: the token is for the whole API, with the granted scopes.
    let wrote = d
        .request(
            "PUT",
            "/files/notes/gpt.md",
            Some(json!({"content": "hi\n"})),
            Some(&access),
        )
        .await;
    assert_eq!(wrote.status, 201, "{}", wrote.json);
    let author = d.git(&["log", "-1", "--format=%an"]);
    assert!(author.contains("oauth:My GPT/g_"), "{author}");
    // Only what was granted: read and write, not admin.
    let sync = d.request("POST", "/sync", None, Some(&access)).await;
    assert_eq!(sync.status, 403, "{}", sync.json);

    // Clients and grants survive a restart: the token and its refresh still work.
    let refresh = tokens.json["refresh_token"].as_str().unwrap().to_string();
    d.restart().await;
    let b = Browser::new(&d);
    let after_restart = d.request("GET", "/files", None, Some(&access)).await;
    assert_eq!(after_restart.status, 200, "{}", after_restart.json);
    let refreshed = b
        .form(
            "/oauth/token",
            &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            Some((&id, &secret)),
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.text);
    let access = refreshed.json["access_token"].as_str().unwrap().to_string();

    // The owner sees the client and the grant, and revokes the grant.
    let listed = cli(&d, &["list"]);
    assert!(
        listed.contains(&id) && listed.contains("My GPT"),
        "{listed}"
    );
    let grant = listed
        .split_whitespace()
        .find(|w| w.starts_with("g_"))
        .unwrap()
        .to_string();
    cli(&d, &["revoke", &grant]);
    let after = d.request("GET", "/files", None, Some(&access)).await;
    assert_eq!(after.status, 401);
    assert_no_file_holds(&d, &access);
    assert_no_file_holds(&d, &refresh);
    // Removing the client ends everything it had.
    cli(&d, &["revoke", &id]);
    assert!(!cli(&d, &["list"]).contains(&id));
}

#[tokio::test]
async fn a_client_named_by_its_metadata_document_signs_in_without_registering() {
    use warp::Filter;
    let d = Daemon::start().await;
    let b = Browser::new(&d);
    // The client's documents, on loopback (plain http is allowed only there).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = format!("http://{}", listener.local_addr().unwrap());
    let id = format!("{site}/client.json");
    let own = id.clone();
    let docs = warp::path!("client.json")
        .map(move || {
            warp::reply::json(&json!({
                "client_id": own,
                "client_name": "Document Client",
                "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
            }))
        })
        .or(warp::path!("liar.json").map(|| {
            warp::reply::json(&json!({
                "client_id": "https://someone-else.example/client.json",
                "redirect_uris": [REDIRECT],
            }))
        }));
    tokio::spawn(warp::serve(docs).incoming(listener).run());

    let (verifier, challenge) = pkce();
    let params = [
        ("response_type", "code"),
        ("client_id", id.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("scope", "read"),
    ];
    let page = b.get(&b.authorize_url(&params), None).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("Allow Document Client"), "{}", page.text);
    let approved = b.decide(&params, TOKEN, &["read"], "approve").await;
    let code = approved.param("code").expect("a code");
    let tokens = b
        .form(
            "/oauth/token",
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
                ("client_id", &id),
                ("code_verifier", &verifier),
            ],
            None,
        )
        .await;
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    let access = tokens.json["access_token"].as_str().unwrap();
    assert_eq!(
        d.request("GET", "/files", None, Some(access)).await.status,
        200
    );

    // A daemon served at a public URL does not read its own machine's
    // plain-http services for a stranger: the same document is refused there.
    let public = Daemon::start_with(|c| c.public_url = Some("https://dynapi.example".into())).await;
    let there = Browser::new(&public);
    let refused = seen(
        there
            .http
            .get(there.authorize_url(&params))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.json["error"]["code"], json!("invalid_client"));

    // A document that names another client id is not believed; nor is an
    // address that does not answer.
    for bad in [
        format!("{site}/liar.json"),
        "http://127.0.0.1:9/client.json".to_string(),
    ] {
        let mut params = params.to_vec();
        params[1] = ("client_id", bad.as_str());
        let refused = seen(b.http.get(b.authorize_url(&params)).send().await.unwrap()).await;
        assert_eq!(refused.status, 400, "{}", refused.text);
        assert_eq!(
            refused.json["error"]["code"],
            json!("invalid_client"),
            "{}",
            refused.text
        );
    }
}

#[tokio::test]
async fn a_daemon_others_can_reach_never_reads_documents_on_its_own_machine() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // Listening on every address, without --public-url: the URLs it writes come
    // from the request's Host, which here says loopback. That must not make it
    // read loopback documents for whoever sent the request.
    let d = Daemon::start_with(|c| c.listen = "0.0.0.0:0".parse().unwrap()).await;
    let b = Browser::new(&d);
    // A service on the daemon's machine, counting who connects to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (_, challenge) = pkce();
    for id in [
        format!("http://127.0.0.1:{port}/doc.json"),
        format!("https://127.0.0.1:{port}/doc.json"),
        format!("https://localhost:{port}/doc.json"),
    ] {
        let params = [
            ("response_type", "code"),
            ("client_id", id.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let refused = seen(
            b.http
                .get(b.authorize_url(&params))
                .header("host", format!("127.0.0.1:{port}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(refused.status, 400, "{id}: {}", refused.text);
        assert_eq!(
            refused.json["error"]["code"],
            json!("invalid_client"),
            "{id}: {}",
            refused.text
        );
        assert!(refused.location().is_empty());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the daemon connected to a loopback service for a stranger"
    );
}

#[tokio::test]
async fn a_client_nobody_approved_gets_its_errors_on_a_page_not_a_redirect() {
    let d = Daemon::start().await;
    let b = Browser::new(&d);
    // Anyone may register a client with any https redirect URI.
    let evil = "https://evil.example/land";
    let reg = b
        .register(json!({"redirect_uris": [evil], "token_endpoint_auth_method": "none"}))
        .await;
    assert_eq!(reg.status, 201, "{}", reg.text);
    let client_id = reg.json["client_id"].as_str().unwrap().to_string();
    let (_, challenge) = pkce();
    let bogus = b.authorize_url(&[
        ("client_id", client_id.as_str()),
        ("redirect_uri", evil),
        ("response_type", "bogus"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);

    // Not approved yet: the error is shown here, in JSON to a program...
    let page = seen(b.http.get(&bogus).send().await.unwrap()).await;
    assert_eq!(page.status, 400, "{}", page.text);
    assert!(!page.headers.contains_key("location"), "{:?}", page.headers);
    assert_eq!(
        page.json["error"]["code"],
        json!("unsupported_response_type"),
        "{}",
        page.text
    );
    // ...and as a page to a browser.
    let html = b.get(&bogus, None).await;
    assert_eq!(html.status, 400, "{}", html.text);
    assert!(!html.headers.contains_key("location"));
    assert!(
        html.text.contains("unsupported_response_type"),
        "{}",
        html.text
    );
    assert!(!html.text.contains("evil.example"), "{}", html.text);

    // Once the owner approved it, errors go back to it as RFC 6749 says.
    let params = [
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", evil),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    let approved = b.decide(&params, TOKEN, &["read"], "approve").await;
    assert_eq!(approved.status, 303, "{}", approved.text);
    let back = b.get(&bogus, None).await;
    assert_eq!(back.status, 302, "{}", back.text);
    assert!(back.location().starts_with(evil), "{}", back.location());
    assert_eq!(
        back.param("error").as_deref(),
        Some("unsupported_response_type")
    );

    // A client the owner made on the command line counts as approved.
    let (owner, _) = dynapi::oauth::add_owner_client(
        &d.app.oauth.store,
        "Owner's",
        vec![REDIRECT.to_string()],
        dynapi::auth::Scopes::all(),
    )
    .await
    .unwrap();
    let back = b
        .get(
            &b.authorize_url(&[
                ("client_id", owner.id.as_str()),
                ("redirect_uri", REDIRECT),
                ("response_type", "bogus"),
            ]),
            None,
        )
        .await;
    assert_eq!(back.status, 302, "{}", back.text);
    assert!(back.location().starts_with(REDIRECT), "{}", back.location());
}
