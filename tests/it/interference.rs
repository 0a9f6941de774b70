//! The writer while humans, editors and git move underneath (issue 19): a
//! `git status` holding the index lock, a client that hangs up mid-write.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::Daemon;

/// Holds `.git/index.lock` as a running `git status` or `git add` does, for
/// `hold`, from another thread.
fn hold_index_lock(d: &Daemon, hold: Duration) -> std::thread::JoinHandle<()> {
    let lock = d.workspace.join(".git/index.lock");
    std::fs::write(&lock, b"").unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        std::fs::remove_file(&lock).unwrap();
    })
}

#[tokio::test]
async fn a_write_waits_for_a_held_index_lock_and_git_status_stays_clean() {
    let d = Daemon::start().await;
    let held = hold_index_lock(&d, Duration::from_millis(400));
    let a = d
        .put("/files/notes/x.txt", json!({"content": "written\n"}))
        .await;
    assert!(a.status < 300, "{}", a.json);
    held.join().unwrap();
    assert_eq!(
        d.git(&["status", "--porcelain"]),
        "",
        "the index lags the commit"
    );
    assert_eq!(d.git(&["show", "HEAD:notes/x.txt"]), "written\n");
}

#[tokio::test]
async fn a_write_refused_while_the_index_stays_locked_leaves_nothing_behind() {
    let d = Daemon::start().await;
    let commits = d.commits();
    let held = hold_index_lock(
        &d,
        dynapi::source::repo::INDEX_LOCK_WAIT + Duration::from_millis(700),
    );
    let started = Instant::now();
    let a = d
        .put("/files/notes/x.txt", json!({"content": "written\n"}))
        .await;
    // git's lock is taken before the branch moves: a human's git that keeps
    // it is a refusal with nothing done, never a commit the index lacks.
    assert_eq!(a.status, 409, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("index_locked"), "{}", a.json);
    assert!(started.elapsed() >= dynapi::source::repo::INDEX_LOCK_WAIT);
    assert_eq!(d.commits(), commits);
    assert!(!d.workspace.join("notes/x.txt").exists());
    held.join().unwrap();
    let a = d
        .put("/files/notes/x.txt", json!({"content": "written\n"}))
        .await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(d.git(&["status", "--porcelain"]), "");
    std::fs::write(d.workspace.join("human.txt"), "h\n").unwrap();
    d.git(&["add", "human.txt"]);
    d.git(&["commit", "-q", "-m", "A human commit"]);
    assert_eq!(d.git(&["show", "HEAD:notes/x.txt"]), "written\n");
}

#[tokio::test]
async fn an_endpoint_with_a_placeholder_first_never_shadows_the_api() {
    let d = Daemon::start().await;
    let a = d
        .post(
            "/endpoints",
            json!({
                "manifest": "name: slug\ndescription: Catches everything.\nmethod: GET\npath: /{slug}\nscript: scripts/slug.sh\nargs: [\"{slug}\"]\nparams:\n  slug: {type: string}\n",
                "script": {"path": "scripts/slug.sh", "content": "#!/bin/sh\necho \"slug $1\"\n"},
            }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(
        d.get("/anything").await.json["output"],
        json!("slug anything\n")
    );
    for path in [
        "/jobs",
        "/sync",
        "/files",
        "/status",
        "/metrics",
        "/webhooks",
        "/oauth",
        "/call",
    ] {
        let a = d.get(path).await;
        assert!(
            !a.json.to_string().contains("slug "),
            "GET {path} reached the endpoint: {}",
            a.json
        );
    }
    // The built-in ones still answer as themselves.
    assert_eq!(d.get("/status").await.status, 200);
    assert_eq!(d.get("/files").await.status, 200);
}

#[tokio::test]
async fn a_large_parameter_reaches_stdin_and_a_too_long_argument_is_a_413() {
    let d = Daemon::start().await;
    d.add_endpoint(
        "count",
        "params:\n  text: {type: string}\n",
        "#!/bin/sh\npython3 -c 'import json,sys; print(len(json.load(sys.stdin)[\"text\"]))'\necho \"env ${#DYNAPI_PARAM_TEXT}\"\n",
    )
    .await;
    let big = "x".repeat(200_000);
    let a = d.post("/count", json!({ "text": big })).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["output"], json!("200000\nenv 0\n"), "{}", a.json);
    let small = d.post("/count", json!({ "text": "abc" })).await;
    assert_eq!(small.json["output"], json!("3\nenv 3\n"), "{}", small.json);

    d.add_endpoint(
        "echo-arg",
        "args: [\"{text}\"]\nparams:\n  text: {type: string, required: true}\n",
        "#!/bin/sh\necho ${#1}\n",
    )
    .await;
    let a = d.post("/echo-arg", json!({ "text": big })).await;
    assert_eq!(a.status, 413, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("too_large"));
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stdin"));
    let a = d
        .post("/echo-arg", json!({ "text": "x".repeat(100_000) }))
        .await;
    assert_eq!(a.json["output"], json!("100000\n"), "{}", a.json);
}

#[tokio::test]
async fn reverting_a_file_that_became_a_folder_brings_the_file_back() {
    let d = Daemon::start().await;
    assert!(
        d.put("/files/docs", json!({"content": "a file\n"}))
            .await
            .status
            < 300
    );
    let a = d
        .post(
            "/files/move",
            json!({"from": "docs", "to": "docs/index.md"}),
        )
        .await;
    assert_eq!(a.status, 409, "a file cannot move below itself: {}", a.json);
    // As a human would: the file becomes a folder in one commit.
    d.git(&["rm", "-q", "docs"]);
    std::fs::create_dir(d.workspace.join("docs")).unwrap();
    std::fs::write(d.workspace.join("docs/index.md"), "# Docs\n").unwrap();
    d.git(&["add", "docs/index.md"]);
    d.git(&["commit", "-q", "-m", "docs as a folder"]);
    let folder = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let a = d.post("/revert", json!({ "commit": folder })).await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs")).unwrap(),
        "a file\n"
    );
    assert_eq!(d.git(&["status", "--porcelain"]), "");
}

#[tokio::test]
async fn a_local_sync_that_failed_once_is_tried_again_until_the_commit_is_served() {
    let d = Daemon::start().await;
    // A human's commit whose object is briefly unreadable (as while git
    // repacks): the branch points at it before the daemon can read it.
    std::fs::write(d.workspace.join("later.txt"), "later\n").unwrap();
    d.git(&["add", "later.txt"]);
    let tree = d.git(&["write-tree"]).trim().to_string();
    let parent = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let commit = d
        .git(&["commit-tree", &tree, "-p", &parent, "-m", "Later"])
        .trim()
        .to_string();
    // The commit is readable (the watcher sees the new head), its tree not yet.
    let object = d
        .workspace
        .join(".git/objects")
        .join(&tree[..2])
        .join(&tree[2..]);
    let hidden = d.workspace.join("hidden-object");
    std::fs::rename(&object, &hidden).unwrap();
    std::fs::write(
        d.workspace.join(".git/refs/heads/main"),
        format!("{commit}\n"),
    )
    .unwrap();
    let failed = d
        .eventually(Duration::from_secs(5), |d| {
            d.app.syncer.status().last_error.is_some()
        })
        .await;
    assert!(
        failed.is_some(),
        "the sync did not fail while the object was gone"
    );
    std::fs::rename(&hidden, &object).unwrap();
    // Nothing else triggers a sync: the daemon tries again by itself.
    let served = d
        .eventually(Duration::from_secs(10), |d| d.served() == commit)
        .await;
    assert!(
        served.is_some(),
        "a commit that failed to sync once was never served"
    );
}

#[tokio::test]
async fn a_restart_on_a_head_that_does_not_build_serves_the_last_commit_that_does() {
    let mut d = Daemon::start().await;
    let good = d.served();
    std::fs::write(
        d.workspace.join("manifests/broken.yaml"),
        "name: broken\ndescription: x\nscript: scripts/missing.sh\n",
    )
    .unwrap();
    d.git(&["add", "manifests/broken.yaml"]);
    d.git(&["commit", "-q", "-m", "Break it"]);
    d.restart().await;
    assert_eq!(
        d.served(),
        good,
        "an empty registry instead of the last good one"
    );
    assert_eq!(d.get("/hello?name=Ada").await.status, 200);
    let status = d.get("/status").await.json;
    assert_eq!(
        status["last_error"]["problems"][0]["file"],
        json!("manifests/broken.yaml"),
        "{status}"
    );
}

#[tokio::test]
async fn a_tracked_symlink_is_neither_replaced_nor_dropped_silently_and_modes_are_kept() {
    let d = Daemon::start().await;
    std::os::unix::fs::symlink("hello.yaml", d.workspace.join("manifests/alias")).unwrap();
    d.git(&["add", "manifests/alias"]);
    d.git(&["commit", "-q", "-m", "A link"]);
    let commits = d.commits();
    let a = d
        .put("/files/manifests/alias", json!({"content": "x\n"}))
        .await;
    assert_eq!(a.status, 409, "{}", a.json);
    let a = d.delete("/files/manifests/alias").await;
    assert_eq!(a.status, 409, "{}", a.json);
    assert_eq!(d.commits(), commits);
    assert!(
        std::fs::symlink_metadata(d.workspace.join("manifests/alias"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // A private file stays private when the API rewrites it.
    use std::os::unix::fs::PermissionsExt;
    assert!(
        d.put("/files/notes/secret.txt", json!({"content": "a\n"}))
            .await
            .status
            < 300
    );
    let file = d.workspace.join("notes/secret.txt");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        d.put("/files/notes/secret.txt", json!({"content": "b\n"}))
            .await
            .status
            < 300
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn a_caller_that_hangs_up_stops_its_run_and_frees_its_slot() {
    let d = Daemon::start().await;
    d.add_endpoint(
        "slow",
        "concurrency: 1\ntimeout: 60s\n",
        "#!/bin/sh\nsleep 30\necho done\n",
    )
    .await;
    let impatient = crate::support::client_builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/slow", d.url))
        .bearer_auth(crate::support::TOKEN)
        .json(&json!({}))
        .send()
        .await;
    assert!(gone.is_err(), "the client was meant to give up");
    // With the first run still holding the endpoint's one slot this would be
    // 429 for the next 30 seconds.
    let freed = d
        .eventually(Duration::from_secs(5), |d| d.app.exec.running() == 0)
        .await;
    assert!(freed.is_some(), "the abandoned run goes on");
    let a = d
        .request(
            "POST",
            "/slow?async=true",
            Some(json!({})),
            Some(crate::support::TOKEN),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.json);
    let job = a.json["job_id"].as_str().unwrap().to_string();
    assert!(d.delete(&format!("/jobs/{job}")).await.status < 300);
}

#[tokio::test]
async fn writes_wait_while_a_human_has_another_branch_checked_out() {
    let d = Daemon::start().await;
    d.git(&["checkout", "-q", "-b", "feature"]);
    let commits = d.commits();
    let a = d.put("/files/notes/x.txt", json!({"content": "x\n"})).await;
    assert_eq!(a.status, 409, "{}", a.json);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("feature"));
    assert!(!d.workspace.join("notes/x.txt").exists());
    let status = d.get("/status").await.json;
    assert_eq!(status["checked_out"], json!("feature"), "{status}");
    d.git(&["checkout", "-q", "main"]);
    assert_eq!(d.commits(), commits);
    let a = d.put("/files/notes/x.txt", json!({"content": "x\n"})).await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(d.get("/status").await.json["checked_out"], json!("main"));
}

#[tokio::test]
async fn a_daemon_killed_between_the_commit_and_the_working_tree_finishes_the_write_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("workspace");
    let start = |failpoint: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_dynapi"));
        command.current_dir(dir.path());
        if let Some(point) = failpoint {
            command.env("DYNAPI_FAILPOINT", point);
        }
        crate::support::serve(command, &[])
    };
    let (mut child, url, token) = start(Some("after-ref-update"));
    let client = crate::support::client();
    let killed = client
        .put(format!("{url}/files/notes/x.txt"))
        .bearer_auth(&token)
        .json(&json!({"content": "written\n"}))
        .send()
        .await;
    assert!(killed.is_err(), "the daemon died before it answered");
    let _ = child.wait();
    // The branch holds the write; the working tree and the index do not.
    let git = |args: &[&str]| crate::support::git(&workspace, args);
    assert_eq!(git(&["show", "HEAD:notes/x.txt"]), "written\n");
    assert!(!workspace.join("notes/x.txt").exists());
    assert_ne!(git(&["status", "--porcelain"]), "");

    let (mut child, _, _) = start(None);
    assert_eq!(
        std::fs::read_to_string(workspace.join("notes/x.txt")).unwrap(),
        "written\n"
    );
    assert_eq!(
        git(&["status", "--porcelain"]),
        "",
        "the index lags the commit"
    );
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_write_leaves_a_whole_write_in_git_and_the_audit_log() {
    let d = Daemon::start().await;
    let held = hold_index_lock(&d, Duration::from_millis(1500));
    let impatient = crate::support::client_builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .put(format!("{}/files/notes/x.txt", d.url))
        .bearer_auth(crate::support::TOKEN)
        .json(&json!({"content": "written\n"}))
        .send()
        .await;
    assert!(gone.is_err(), "the client was meant to give up");
    // The next write waits for the first one to be whole: it sees its file.
    let a = d
        .patch(
            "/files/notes/x.txt",
            json!({"edits": [{"old": "written", "new": "edited"}]}),
        )
        .await;
    assert!(a.status < 300, "{}", a.json);
    held.join().unwrap();
    assert_eq!(d.git(&["show", "HEAD:notes/x.txt"]), "edited\n");
    assert_eq!(d.git(&["status", "--porcelain"]), "");
    let audit =
        std::fs::read_to_string(d.workspace.join(".git/dynapi/audit.log")).unwrap_or_default();
    let writes = audit
        .lines()
        .filter(|l| l.contains("\"write\"") && l.contains("notes/x.txt"))
        .count();
    assert_eq!(writes, 2, "{audit}");
}

#[tokio::test]
async fn a_script_that_leaves_a_chatty_child_behind_ends_when_it_ends() {
    let d = Daemon::start().await;
    d.add_endpoint(
        "chatty",
        "timeout: 20s\n",
        "#!/bin/sh\n(while :; do echo more; done) &\necho main done\nexit 3\n",
    )
    .await;
    let started = std::time::Instant::now();
    let a = d.post("/chatty", json!({})).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "it waited for the timeout"
    );
    assert_eq!(a.json["exit_code"], json!(3), "{}", a.json["exit_code"]);
    assert_ne!(a.json["error"]["code"], json!("timeout"));
}

#[tokio::test]
async fn with_core_filemode_false_the_bits_on_disk_do_not_reach_commits() {
    use std::os::unix::fs::PermissionsExt;
    let d = Daemon::start().await;
    d.git(&["config", "core.fileMode", "false"]);
    assert!(
        d.put("/files/notes/a.txt", json!({"content": "a\n"}))
            .await
            .status
            < 300
    );
    let file = d.workspace.join("notes/a.txt");
    // A filesystem that shows every file executable.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        d.put("/files/notes/a.txt", json!({"content": "b\n"}))
            .await
            .status
            < 300
    );
    assert!(d
        .git(&["ls-tree", "HEAD", "notes/a.txt"])
        .starts_with("100644"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = d.post("/git-sync", json!({})).await;
    assert_eq!(a.json["committed"], json!(false), "{}", a.json);
    assert!(d
        .git(&["ls-tree", "HEAD", "notes/a.txt"])
        .starts_with("100644"));
}

#[tokio::test]
async fn a_file_name_that_is_not_utf8_is_never_committed_under_another_name() {
    use std::os::unix::ffi::OsStrExt;
    let d = Daemon::start().await;
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    std::fs::write(d.workspace.join("notes-odd").with_file_name(odd), "x\n").unwrap();
    std::fs::write(d.workspace.join("plain.txt"), "y\n").unwrap();
    let a = d.post("/git-sync", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let tracked = d.git(&["ls-files"]);
    assert!(tracked.contains("plain.txt"), "{tracked}");
    assert!(
        !tracked.contains('\u{fffd}') && !tracked.contains("caf"),
        "{tracked}"
    );
}

#[tokio::test]
async fn a_revert_onto_a_folder_of_empty_folders_is_committed_and_written() {
    let d = Daemon::start().await;
    assert!(
        d.put("/files/docs", json!({"content": "a file\n"}))
            .await
            .status
            < 300
    );
    d.git(&["rm", "-q", "docs"]);
    std::fs::create_dir(d.workspace.join("docs")).unwrap();
    std::fs::write(d.workspace.join("docs/index.md"), "# Docs\n").unwrap();
    d.git(&["add", "docs/index.md"]);
    d.git(&["commit", "-q", "-m", "docs as a folder"]);
    let folder = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    // An empty folder git does not track (a script's output folder).
    std::fs::create_dir(d.workspace.join("docs/images")).unwrap();
    let commits = d.commits();
    let a = d.post("/revert", json!({ "commit": folder })).await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(d.commits(), commits + 1);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs")).unwrap(),
        "a file\n"
    );
    assert_eq!(d.git(&["status", "--porcelain"]), "");
}
