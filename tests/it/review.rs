//! A fresh reviewer's attacks on issue 17's fixes. Each test replays one attack
//! and asserts what the trust boundary (DESIGN.md section 6) promises: every
//! test here that fails shows a hole still open.

use serde_json::json;

use crate::support::{Daemon, TOKEN};

const ATTACKER: &str = "attacker-secret";

/// A symlink inside the workspace that leads back to its root: a script run
/// with the default rules (`writable: ["."]`) may make one in any top-level
/// folder, as the first step of `a_write_and_run_token_cannot_widen_the_sandbox...`
/// shows through the API.
fn link_to_root(d: &Daemon) {
    std::fs::create_dir_all(d.workspace.join("data")).unwrap();
    let _ = std::fs::remove_file(d.workspace.join("data/up"));
    std::os::unix::fs::symlink("..", d.workspace.join("data/up")).unwrap();
}

/// `write` + `run` (no `admin`): the first script (default rules) makes
/// `data/up -> ..`; the second endpoint names `data/up` as its `writable`
/// path. `endpoints::policy` resolves it (inside the workspace, so allowed)
/// but hands Landlock the unresolved path, which Landlock follows: the whole
/// workspace, `.git` and `dynapi.yaml` included, becomes writable. The script
/// then edits `dynapi.yaml` and commits it with git, and the attacker's own
/// token is an admin.
#[tokio::test]
async fn a_write_and_run_token_cannot_widen_the_sandbox_through_a_symlinked_writable_path() {
    let d = Daemon::start().await;
    d.grant_reader(ATTACKER, "write, run").await;
    assert_eq!(
        d.request("POST", "/sync", Some(json!({})), Some(ATTACKER))
            .await
            .status,
        403
    );
    let add = |name: &str, extra: &str, script: &str| {
        json!({
            "manifest": format!("name: {name}\ndescription: Probe {name}.\npath: /{name}\nscript: scripts/{name}.sh\n{extra}"),
            "script": {"path": format!("scripts/{name}.sh"), "content": script},
        })
    };
    let put = d
        .request(
            "PUT",
            "/files/data/keep.txt",
            Some(json!({"content": "x\n"})),
            Some(ATTACKER),
        )
        .await;
    assert!(put.status < 300, "{}", put.json);
    // Step 1: a script under the default rules makes a link to the root.
    let a = d
        .request(
            "POST",
            "/endpoints",
            Some(add(
                "mklink",
                "",
                "#!/bin/sh\nln -s .. data/up && echo linked\n",
            )),
            Some(ATTACKER),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let a = d
        .request("POST", "/mklink", Some(json!({})), Some(ATTACKER))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        std::fs::symlink_metadata(d.workspace.join("data/up")).is_ok(),
        "{}",
        a.json
    );
    // Step 2: an endpoint whose writable path is that link.
    let script = String::from(
        r#"#!/bin/sh
cat .git/dynapi/* >/dev/null 2>&1 && echo read-daemon-state
sed -i 's/scopes: \[write, run\]/scopes: [read, write, run, sql-write, admin]/' dynapi.yaml && echo wrote-settings
git -c user.name=x -c user.email=x@x -c safe.directory='*' commit -qam owned && echo committed
"#,
    );
    let a = d
        .request(
            "POST",
            "/endpoints",
            Some(add("grab", "sandbox:\n  writable: [data/up]\n", &script)),
            Some(ATTACKER),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let run = d
        .request("POST", "/grab", Some(json!({})), Some(ATTACKER))
        .await;
    let output = run.json["output"].as_str().unwrap_or_default().to_string();
    // No admin acts: the daemon picks up the commit as it does a human's.
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    d.eventually(std::time::Duration::from_secs(3), |d| d.served() == head)
        .await;
    let as_admin = d
        .request("POST", "/sync", Some(json!({})), Some(ATTACKER))
        .await;
    assert_ne!(
        as_admin.status, 200,
        "a write+run token made itself an admin token: {}",
        run.json
    );
    assert!(
        !output.contains("wrote-settings") && !output.contains("read-daemon-state"),
        "the script wrote dynapi.yaml or read .git/dynapi: {}",
        run.json
    );
}

/// `write` only, with a link to the root somewhere in the workspace (made by
/// any script, see above): `PATCH /files/data/up/dynapi.yaml` passes the
/// writer's check (it compares the path as spelled, `data/up/dynapi.yaml`),
/// and the working-tree write resolves the folder to the root: the
/// `dynapi.yaml` on disk gets the attacker's edit, which the next `/git-sync`
/// by an admin (or a human's `git commit -a`) commits without a word.
/// `DELETE` the same way removes it; `PUT` is stopped only by accident
/// (`check_parents` takes the link for a file).
#[tokio::test]
async fn a_write_token_cannot_edit_dynapi_yaml_through_a_linked_folder() {
    let d = Daemon::start().await;
    d.grant_reader(ATTACKER, "write").await;
    link_to_root(&d);
    let before = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();
    let patch = d
        .request(
            "PATCH",
            "/files/data/up/dynapi.yaml",
            Some(json!({"edits": [{"old": "scopes: [write]", "new": "scopes: [write, admin]"}]})),
            Some(ATTACKER),
        )
        .await;
    let after = std::fs::read_to_string(d.workspace.join("dynapi.yaml")).unwrap();
    assert_eq!(
        before, after,
        "a write token changed dynapi.yaml on disk ({}): {}",
        patch.status, patch.json
    );
    assert!(patch.status >= 400, "{}", patch.json);
    // An admin's routine sync would now commit it.
    let sync = d.post("/git-sync", json!({})).await;
    assert!(sync.status < 300, "{}", sync.json);
    assert_eq!(
        d.request("POST", "/sync", Some(json!({})), Some(ATTACKER))
            .await
            .status,
        403,
        "the write token became an admin"
    );
}

/// The same folder link, `DELETE`: the settings file on disk is removed by a
/// `write` token.
#[tokio::test]
async fn a_write_token_cannot_delete_dynapi_yaml_through_a_linked_folder() {
    let d = Daemon::start().await;
    d.grant_reader(ATTACKER, "write").await;
    link_to_root(&d);
    let a = d
        .request("DELETE", "/files/data/up/dynapi.yaml", None, Some(ATTACKER))
        .await;
    assert!(
        d.workspace.join("dynapi.yaml").is_file(),
        "a write token removed dynapi.yaml ({}): {}",
        a.status,
        a.json
    );
}

/// `POST /run-script` with a served script applies the endpoint's scopes,
/// sandbox and limits, but not its `args` and `params`: a `run` token passes
/// any arguments the manifest would never form (here: the manifest fixes them
/// entirely). DESIGN.md: `run` runs code "only under the rules of the manifest
/// that serves it (its own scope on top of `run`, params, sandbox, limits),
/// whichever route runs it".
#[tokio::test]
async fn run_script_cannot_pass_arguments_the_served_manifest_never_forms() {
    let d = Daemon::start().await;
    d.grant_reader(ATTACKER, "read, run").await;
    d.add_endpoint(
        "fixed",
        "args: [\"status\"]\n",
        "#!/bin/sh\necho \"action=$1\"\n",
    )
    .await;
    let call = d
        .request("POST", "/fixed", Some(json!({})), Some(ATTACKER))
        .await;
    assert_eq!(
        call.json["output"],
        json!("action=status\n"),
        "{}",
        call.json
    );
    let a = d
        .request(
            "POST",
            "/run-script",
            Some(json!({"script_name": "fixed.sh", "args": ["drop-everything"]})),
            Some(ATTACKER),
        )
        .await;
    assert!(
        !a.json["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains("drop-everything"),
        "a run token ran a served script with arguments its manifest never forms: {}",
        a.json
    );
    let _ = TOKEN;
}

/// A FIFO where the SQLite database should be (a script with the default
/// rules may replace `data/app.db` with one: `data/` is writable): `POST /sql`
/// with a `read` token opens it by path, without `O_NONBLOCK`, and the
/// blocking thread waits forever; the statement's time limit (here 1 s) never
/// starts. Every such request pins one of the blocking pool's threads.
#[tokio::test]
async fn sql_on_a_fifo_answers_within_its_time_limit() {
    let d = Daemon::start().await;
    d.grant_reader(ATTACKER, "read").await;
    let db = d.workspace.join("data/app.db");
    let _ = std::fs::remove_file(&db);
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let c = std::ffi::CString::new(db.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        d.request(
            "POST",
            "/sql",
            Some(json!({"query": "SELECT 1", "timeout_ms": 1000})),
            Some(ATTACKER),
        ),
    )
    .await;
    // Release the stuck open (a writer on the FIFO), or the runtime would wait
    // for its blocking thread forever at the end of the test.
    let fifo = db.clone();
    std::thread::spawn(move || {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
    })
    .join()
    .unwrap();
    assert!(
        answer.is_ok(),
        "POST /sql on a FIFO did not answer within 5 s (its limit was 1 s)"
    );
}
