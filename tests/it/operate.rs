//! What an operator watches: the audit log and `GET /metrics`.

use serde_json::{json, Value};

use crate::support::{Daemon, TOKEN};

#[tokio::test]
async fn every_write_run_and_statement_is_in_the_audit_log_without_the_token() {
    let d = Daemon::start().await;
    let a = d
        .put("/files/notes/a.md", json!({"content": "one\n"}))
        .await;
    assert!(a.status < 300, "{}", a.json);
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let refused = d
        .put(
            "/files/notes/a.md",
            json!({"content": "two\n", "if_match": "0000"}),
        )
        .await;
    assert_eq!(refused.status, 412, "{}", refused.json);
    assert_eq!(d.get("/hello?name=Ada").await.status, 200);
    assert_eq!(
        d.post("/sql", json!({"query": "select 1 as one"}))
            .await
            .status,
        200
    );

    let text = std::fs::read_to_string(d.workspace.join(".git/dynapi/audit.log")).unwrap();
    assert!(!text.contains(TOKEN), "the audit log holds the token");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |operation: &str, outcome: &str| {
        lines
            .iter()
            .find(|l| l["operation"] == json!(operation) && l["outcome"] == json!(outcome))
            .unwrap_or_else(|| panic!("no {operation} {outcome} in {text}"))
            .clone()
    };
    let write = find("write", "ok");
    assert_eq!(write["target"], json!("notes/a.md"));
    assert_eq!(write["commit"], json!(head));
    assert!(write["time"].as_str().unwrap().ends_with('Z'));
    assert!(write["duration_ms"].is_u64());
    let token = write["token"].as_str().unwrap();
    assert!(!token.is_empty());
    assert_eq!(
        find("write", "precondition_failed")["target"],
        json!("notes/a.md")
    );
    let run = find("run", "ok");
    assert_eq!(run["target"], json!("hello"));
    assert_eq!(run["token"], json!(token));
    assert_eq!(run["commit"], json!(head));
    assert_eq!(
        find("sql", "ok")["target"],
        json!("default: select 1 as one")
    );
    // Scripts cannot read it.
    assert!(d.git(&["status", "--porcelain"]).trim().is_empty());
}

#[tokio::test]
async fn metrics_count_requests_by_route_runs_syncs_and_name_the_commit() {
    let d = Daemon::start().await;
    assert_eq!(d.request("GET", "/metrics", None, None).await.status, 401);
    for path in [
        "/files/scripts/sample_script.sh",
        "/files/manifests/hello.yaml",
    ] {
        assert_eq!(d.get(path).await.status, 200);
    }
    assert_eq!(d.get("/hello").await.status, 200);
    assert_eq!(d.get("/files/missing.txt").await.status, 404);
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();

    let res = d
        .client
        .get(format!("{}/metrics", d.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = res.text().await.unwrap();
    for line in [
        r#"dynapi_http_requests_total{route="/files/{path}",method="GET",status="200"} 2"#,
        r#"dynapi_http_requests_total{route="/files/{path}",method="GET",status="404"} 1"#,
        r#"dynapi_http_requests_total{route="/hello",method="GET",status="200"} 1"#,
        r#"dynapi_script_runs_total{endpoint="hello",outcome="ok"} 1"#,
        r#"dynapi_script_duration_seconds_count{endpoint="hello"} 1"#,
        r#"dynapi_http_request_duration_seconds_bucket{le="+Inf",route="/hello"} 1"#,
        &format!(r#"dynapi_commit{{commit="{head}"}} 1"#),
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line `{line}` in:\n{text}"
        );
    }
    assert!(
        text.contains(r#"dynapi_syncs_total{outcome="ok"}"#),
        "{text}"
    );
    assert!(!text.contains("missing.txt"), "raw paths are not labels");
}
