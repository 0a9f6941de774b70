//! Tokens and scopes, the error shape, request ids, body limits.

use serde_json::json;

use crate::support::{Daemon, TOKEN};

#[tokio::test]
async fn routes_need_a_valid_token_and_answer_the_json_error_shape() {
    let d = Daemon::start().await;
    for (method, path) in [
        ("GET", "/endpoints"),
        ("GET", "/status"),
        ("POST", "/run-script"),
        ("POST", "/endpoints"),
        ("GET", "/hello"),
        ("POST", "/sync"),
        ("POST", "/mcp"),
    ] {
        let a = d.request(method, path, Some(json!({})), None).await;
        assert_eq!(a.status, 401, "{method} {path}");
        assert_eq!(a.json["error"]["code"], json!("unauthorized"));
        assert!(a.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let a = d
            .request(method, path, Some(json!({})), Some("wrong"))
            .await;
        assert_eq!(a.status, 401, "{method} {path}");
    }
    for path in ["/healthz", "/readyz", "/"] {
        assert_eq!(
            d.request("GET", path, None, None).await.status,
            200,
            "{path}"
        );
    }
    let a = d.request("GET", "/nowhere", None, Some(TOKEN)).await;
    assert_eq!(a.status, 404);
    assert!(a.json["error"]["message"].is_string());
    let a = d.request("GET", "/run-script", None, Some(TOKEN)).await;
    assert_eq!(a.status, 405);
}

#[tokio::test]
async fn tokens_granted_in_dynapi_yaml_carry_only_their_scopes() {
    let d = Daemon::start().await;
    d.grant_reader("reader-secret", "read").await;
    assert_eq!(
        d.request("GET", "/endpoints", None, Some("reader-secret"))
            .await
            .status,
        200
    );
    let a = d
        .request("GET", "/hello", None, Some("reader-secret"))
        .await;
    assert_eq!(a.status, 403);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`run` scope"));
    let a = d
        .request("POST", "/endpoints", Some(json!({})), Some("reader-secret"))
        .await;
    assert_eq!(a.status, 403);
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_bodies_are_bounded() {
    let d = Daemon::start_with(|c| c.max_body = 1024).await;
    let res = d
        .client
        .get(format!("{}/healthz", d.url))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let big = json!({"script_name": "x".repeat(4096)});
    let a = d.post("/run-script", big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json["error"]["code"], json!("too_large"));
    let a = d
        .request(
            "POST",
            "/run-script",
            Some(json!(["not", "an", "object"])),
            Some(TOKEN),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json["error"]["code"], json!("bad_request"));
}

/// Every route that writes, asked by a write token to change `dynapi.yaml`:
/// 403 from each, no commit, the file as it was (the one place that turns
/// the caller's scope into the writer's permission is `source::writes`).
#[tokio::test]
async fn no_writing_route_lets_a_write_token_change_dynapi_yaml() {
    let d = Daemon::start().await;
    d.grant_reader("writer-secret", "read, write, run").await;
    let settings = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();
    let first = settings.lines().next().unwrap_or("#").to_string();
    let commits = d.commits();
    let tries = [
        (
            "PATCH",
            "/files/dynapi.yaml",
            json!({"edits": [{"old": first, "new": format!("{first}\nsandbox: off")}]}),
        ),
        ("DELETE", "/files/dynapi.yaml", json!({})),
        (
            "POST",
            "/combine",
            json!({"paths": ["manifests"], "output": "dynapi.yaml"}),
        ),
        (
            "POST",
            "/archive",
            json!({"path": "manifests", "format": "zip", "output": "dynapi.yaml"}),
        ),
    ];
    for (method, path, body) in tries {
        let a = d
            .request(method, path, Some(body), Some("writer-secret"))
            .await;
        assert_eq!(a.status, 403, "{method} {path}: {}", a.json);
    }
    assert_eq!(d.commits(), commits, "a refused change was committed");
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap(),
        settings
    );
}

#[tokio::test]
async fn only_an_admin_token_may_change_dynapi_yaml() {
    let d = Daemon::start().await;
    d.grant_reader("writer-secret", "read, write, run").await;
    let commits = d.commits();
    let settings = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();
    let escalate = json!({"content": format!("{settings}\nsandbox: off\n")});
    let a = d
        .request(
            "PUT",
            "/files/dynapi.yaml",
            Some(escalate.clone()),
            Some("writer-secret"),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin"));
    let moved = json!({"from": "dynapi.yaml", "to": "settings.yaml"});
    let a = d
        .request("POST", "/files/move", Some(moved), Some("writer-secret"))
        .await;
    assert_eq!(a.status, 403, "{}", a.json);
    // Nor as an endpoint's "script".
    let sneak = json!({
        "manifest": "name: sneak\ndescription: Writes the settings.\npath: /sneak\nscript: dynapi.yaml\n",
        "script": {"path": "dynapi.yaml", "content": "#!/bin/sh\n"},
    });
    let a = d
        .request("POST", "/endpoints", Some(sneak), Some("writer-secret"))
        .await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert_eq!(d.commits(), commits, "a refused change was committed");
    // The same token writes other files, and an admin writes this one.
    let a = d
        .request(
            "PUT",
            "/files/notes.md",
            Some(json!({"content": "hi\n"})),
            Some("writer-secret"),
        )
        .await;
    assert!(a.status < 300, "{}", a.json);
    assert!(d.put("/files/dynapi.yaml", escalate).await.status < 300);
}
