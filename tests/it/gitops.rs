//! The GitOps loop on the local source: a human's commit is served within a second;
//! a broken commit is never served, and /status says why.

use std::time::Duration;

use dynapi::source::sync::WatchPoll;
use serde_json::json;

use crate::support::Daemon;

#[tokio::test]
async fn a_human_commit_is_served_within_a_second() {
    let d = Daemon::start().await;
    std::fs::write(
        d.workspace.join("manifests/greet.yaml"),
        "name: greet\ndescription: Greet.\nmethod: GET\npath: /greet/{who}\nscript: scripts/hello.sh\nargs: [\"{who}\"]\nparams:\n  who: {type: string}\n",
    )
    .unwrap();
    d.git(&["add", "manifests/greet.yaml"]);
    d.git(&["commit", "-q", "-m", "Add greet"]);
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let took = d
        .eventually(Duration::from_secs(1), |d| d.served() == head)
        .await;
    assert!(
        took.is_some(),
        "the new commit was not served within a second"
    );
    let a = d.get("/greet/Linus").await;
    assert_eq!(a.json["output"], json!("Hello, Linus!\n"));
}

/// inotify, not the poll, notices the commit: with both polls an hour apart
/// the commit is served all the same, and well within the poll's old 200 ms.
#[tokio::test]
async fn a_human_commit_is_noticed_without_waiting_for_the_poll() {
    let d = Daemon::start_with(|c| {
        c.watch_poll = WatchPoll {
            events: Duration::from_secs(3600),
            alone: Duration::from_secs(3600),
        };
    })
    .await;
    // Commits of every shape git makes: a loose ref, a packed one, and a
    // branch moved by `reset` (one rename, no new objects).
    for round in 0..3 {
        let before = d.served();
        match round {
            0 => {
                std::fs::write(d.workspace.join("notes.txt"), "one\n").unwrap();
                d.git(&["add", "notes.txt"]);
                d.git(&["commit", "-q", "-m", "A note"]);
            }
            1 => {
                d.git(&["pack-refs", "--all"]);
                std::fs::write(d.workspace.join("notes.txt"), "two\n").unwrap();
                d.git(&["commit", "-q", "-am", "Another note"]);
            }
            _ => {
                d.git(&["reset", "-q", "--hard", "HEAD~1"]);
            }
        }
        let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
        assert_ne!(head, before);
        let took = d
            .eventually(Duration::from_secs(2), |d| d.served() == head)
            .await;
        assert!(took.is_some(), "round {round}: the commit was not noticed");
    }
}

#[tokio::test]
async fn a_broken_commit_is_not_served_and_status_names_file_and_line() {
    let d = Daemon::start().await;
    let good = d.served();
    std::fs::write(d.workspace.join("manifests/hello.yaml"), "name: hello\ndescription: Hi.\nmethod: GET\nscript: scripts/sample_script.sh\nparams:\n  name: {type: strin}\n").unwrap();
    d.git(&["commit", "-q", "-am", "Break hello"]);
    let bad = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let reported = d
        .eventually(Duration::from_secs(2), |d| {
            d.app
                .syncer
                .status()
                .last_error
                .is_some_and(|e| e.commit.as_deref() == Some(bad.as_str()))
        })
        .await;
    assert!(reported.is_some(), "the broken commit was not looked at");
    assert_eq!(d.served(), good, "the last-known-good registry stays");
    let a = d.get("/hello").await;
    assert_eq!(
        a.json["output"],
        json!("Hello, world!\n"),
        "still serving the good commit"
    );

    let status = d.get("/status").await;
    assert_eq!(status.json["commit"], json!(good));
    assert_eq!(status.json["last_known_good"]["commit"], json!(good));
    let problem = &status.json["last_error"]["problems"][0];
    assert_eq!(problem["file"], json!("manifests/hello.yaml"));
    assert_eq!(problem["line"], json!(6));
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("`strin` is not a parameter type"),
        "{problem}"
    );
    assert_eq!(status.json["last_sync"]["outcome"], json!("invalid"));

    // POST /sync reports the same problems; fixing the commit serves it.
    let sync = d.post("/sync", json!({})).await;
    assert_eq!(sync.status, 200);
    assert_eq!(sync.json["served"], json!(good));
    d.git(&["revert", "--no-edit", "HEAD"]);
    let fixed = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    assert!(d
        .eventually(Duration::from_secs(1), |d| d.served() == fixed)
        .await
        .is_some());
}

#[tokio::test]
async fn an_api_write_lands_on_top_of_a_human_commit() {
    let d = Daemon::start().await;
    std::fs::write(d.workspace.join("notes.txt"), "from a human\n").unwrap();
    d.git(&["add", "notes.txt"]);
    d.git(&["commit", "-q", "-m", "Human note"]);
    let a = d
        .post(
            "/endpoints",
            crate::support::endpoint_body("after", "#!/bin/sh\necho after\n"),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let log = d.git(&["log", "--format=%s", "-3"]);
    assert_eq!(
        log.lines().take(2).collect::<Vec<_>>(),
        vec!["Add endpoint after", "Human note"]
    );
    assert!(d.workspace.join("notes.txt").exists());
    assert_eq!(d.git(&["status", "--porcelain"]).trim(), "");
}

#[tokio::test]
async fn a_registry_swap_never_cuts_a_running_request() {
    let d = Daemon::start().await;
    assert_eq!(
        d.post(
            "/endpoints",
            crate::support::endpoint_body("long", "#!/bin/sh\nsleep 1\necho finished\n")
        )
        .await
        .status,
        201
    );
    let running = d.post("/long", json!({}));
    let remove = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.delete("/endpoints/long").await
    };
    let (answer, removed) = tokio::join!(running, remove);
    assert_eq!(removed.status, 200);
    assert_eq!(
        answer.json["output"],
        json!("finished\n"),
        "the request finished on the registry it started with"
    );
    assert_eq!(d.post("/long", json!({})).await.status, 404);
}
