//! The four seed-compatible routes, exactly as DESIGN.md section 4 lists them.

use serde_json::json;

use crate::support::{Daemon, TOKEN};

#[tokio::test]
async fn root_answers_without_a_token_with_version_and_commit() {
    let d = Daemon::start().await;
    let a = d.request("GET", "/", None, None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["commit"], json!(d.served()));
    assert_eq!(a.json["version"], json!(env!("CARGO_PKG_VERSION")));
    assert!(a.json["message"].is_string());
    assert!(a.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn list_scripts_lists_the_template_scripts() {
    let d = Daemon::start().await;
    let a = d.get("/list-scripts").await;
    assert_eq!(a.status, 200);
    let scripts = a.json["scripts"].as_array().unwrap();
    assert!(scripts.contains(&json!("sample_script.sh")), "{scripts:?}");
    assert!(scripts.contains(&json!("run_sql.sh")), "{scripts:?}");
}

#[tokio::test]
async fn run_script_answers_the_seed_shape_for_success_and_failure() {
    let d = Daemon::start().await;
    // The seed's own example, as its README shows it.
    let a = d
        .post("/run-script", json!({"script_name": "sample_script.sh"}))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["success"], json!(true));
    assert_eq!(a.json["stdout"], json!("This is a sample script!\n"));
    // A script an endpoint serves takes its arguments as the endpoint's.
    let a = d
        .post(
            "/run-script",
            json!({"script_name": "hello.sh", "args": ["Ada"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["stdout"], json!("Hello, Ada!\n"));
    assert_eq!(a.json["stderr"], json!(""));
    assert_eq!(a.json["return_code"], json!(0));

    std::fs::write(
        d.workspace.join("scripts/fail.sh"),
        "#!/bin/sh\necho oops >&2\nexit 7\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", "scripts/fail.sh"])
        .current_dir(&d.workspace)
        .status()
        .unwrap();
    let a = d
        .post("/run-script", json!({"script_name": "fail.sh"}))
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["success"], json!(false));
    assert_eq!(a.json["return_code"], json!(7));
    assert_eq!(a.json["stderr"], json!("oops\n"));

    let a = d
        .post(
            "/run-script",
            json!({"script_name": "../manifests/hello.yaml"}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("bad_path"));
    let a = d
        .post("/run-script", json!({"script_name": "missing.sh"}))
        .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn git_sync_commits_what_a_script_wrote_and_skips_ignored_files() {
    let d = Daemon::start().await;
    // Scripts cannot make top-level folders (the sandbox keeps `.git` out of
    // their reach); the folder is there, as a human made it.
    std::fs::create_dir(d.workspace.join("reports")).unwrap();
    std::fs::write(d.workspace.join("scripts/report.sh"), "#!/bin/sh\nmkdir -p reports data\necho done > reports/today.txt\necho scratch > data/cache.txt\n").unwrap();
    std::process::Command::new("chmod")
        .args(["+x", "scripts/report.sh"])
        .current_dir(&d.workspace)
        .status()
        .unwrap();
    let a = d
        .post("/run-script", json!({"script_name": "report.sh"}))
        .await;
    assert_eq!(a.json["success"], json!(true));

    let a = d
        .post("/git-sync", json!({"message": "Add today's report"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["message"], json!("Git synchronization complete."));
    let head = d.git(&["rev-parse", "HEAD"]);
    assert_eq!(a.json["commit"], json!(head.trim()));
    let files = d.git(&["show", "--name-only", "--format=%s", "HEAD"]);
    assert!(files.contains("Add today's report"));
    assert!(
        files.contains("reports/today.txt") && files.contains("scripts/report.sh"),
        "{files}"
    );
    assert!(
        !files.contains("data/cache.txt"),
        "ignored files are never committed: {files}"
    );
    assert_eq!(
        d.git(&["status", "--porcelain"]).trim(),
        "",
        "the workspace is clean after the sync"
    );

    // Nothing left to commit: still a success, with the same commit.
    let again = d.request("POST", "/git-sync", None, Some(TOKEN)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["commit"], json!(head.trim()));
    assert_eq!(again.json["committed"], json!(false));
}
