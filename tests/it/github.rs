//! GitHub mode against the emulator in tests/support/github.rs: a real bare
//! repository served over git's smart HTTP, and GitHub's REST shapes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::github::{Failure, GitHub, Status};
use crate::support::{git, template_repo, Daemon};

pub(crate) const SECRET: &str = "webhook-secret";
/// The fixtures' pushes go to `master`.
pub(crate) const BRANCH: &str = "master";

/// Content-creating requests go this far apart in tests (GitHub asks for 1 s).
const WRITE_INTERVAL: Duration = Duration::from_millis(10);

pub(crate) async fn start(poll: Duration) -> (GitHub, Daemon) {
    let seed = template_repo(BRANCH, &[]);
    let github = GitHub::start(seed.path(), BRANCH).await;
    let daemon = replica(&github, poll).await;
    (github, daemon)
}

/// Another daemon serving the same GitHub repository.
pub(crate) async fn replica(github: &GitHub, poll: Duration) -> Daemon {
    paced_replica(github, poll, WRITE_INTERVAL).await
}

async fn paced_replica(github: &GitHub, poll: Duration, write_interval: Duration) -> Daemon {
    let (remote, api) = (github.remote(), github.api_url());
    Daemon::start_with(move |c| {
        c.branch = BRANCH.into();
        c.webhook_secret = Some(SECRET.into());
        c.remote = Some(dynapi::config::Remote {
            url: remote,
            api_url: api,
            token: Some(crate::support::github::TOKEN.into()),
            poll,
            write_interval,
        });
    })
    .await
}

/// Delivers a signed event; its status.
pub(crate) async fn webhook(d: &Daemon, event: &str, body: &[u8]) -> u16 {
    deliver(d, event, body).await.0
}

/// Delivers a signed event; its status and answer.
async fn deliver(d: &Daemon, event: &str, body: &[u8]) -> (u16, Value) {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).unwrap();
    deliver_as(d, event, &hex::encode(id), body).await
}

/// Delivers a signed event with the delivery id `delivery`; its status and answer.
pub(crate) async fn deliver_as(
    d: &Daemon,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> (u16, Value) {
    let answer = d
        .client
        .post(format!("{}/webhooks/github", d.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header(
            "X-Hub-Signature-256",
            dynapi::webhook::sign(SECRET.as_bytes(), body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/github-webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

const LATE: &str = "name: late\ndescription: Added on GitHub.\nscript: scripts/sample_script.sh\n";

#[tokio::test]
async fn the_clone_is_served_and_a_push_is_served_after_its_webhook() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    assert_eq!(d.served(), gh.head(BRANCH));
    assert!(d.workspace.join("scripts/sample_script.sh").exists());
    assert_eq!(
        d.get("/hello?name=Ada").await.json["output"],
        json!("Hello, Ada!\n")
    );

    let pushed = gh.push(BRANCH, &[("manifests/late.yaml", LATE)], "Add late");
    assert_eq!(webhook(&d, "push", &fixture("push.4")).await, 202);
    assert!(d
        .eventually(Duration::from_secs(5), |d| d.served() == pushed)
        .await
        .is_some());
    assert_eq!(d.post("/call/late", json!({})).await.status, 200);
    assert!(d.workspace.join("manifests/late.yaml").exists());
    let statuses = gh.statuses();
    let status = statuses
        .iter()
        .find(|s| s.sha == pushed)
        .expect("a status on the push");
    assert_eq!(
        (status.state.as_str(), status.context.as_str()),
        ("success", "dynapi/manifests")
    );
}

#[tokio::test]
async fn events_of_other_repositories_are_ignored() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    let before = d.served();
    gh.push(BRANCH, &[("manifests/late.yaml", LATE)], "Add late");
    // An organization webhook delivers a push to another repository's master.
    let mut push: Value = serde_json::from_slice(&fixture("push.4")).unwrap();
    push["repository"]["full_name"] = json!("Codertocat/Other");
    let (status, answer) = deliver(&d, "push", &serde_json::to_vec(&push).unwrap()).await;
    assert_eq!(status, 202);
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("Codertocat/Other"),
        "{answer}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.served(), before, "no sync for another repository");
    // The same push of this repository is served (names compare case-blind).
    push["repository"]["full_name"] = json!("codertocat/hello-world");
    let (status, _) = deliver(&d, "push", &serde_json::to_vec(&push).unwrap()).await;
    assert_eq!(status, 202);
    let head = gh.head(BRANCH);
    assert!(d
        .eventually(Duration::from_secs(5), |d| d.served() == head)
        .await
        .is_some());
}

#[tokio::test]
async fn a_bad_push_is_not_served_and_gets_a_failed_status() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    let good = d.served();
    let bad = gh.push(
        BRANCH,
        &[(
            "manifests/broken.yaml",
            "name: broken\ndescription: x\nscript: scripts/missing.sh\n",
        )],
        "Break it",
    );
    assert_eq!(webhook(&d, "push", &fixture("push.4")).await, 202);
    let posted = d
        .eventually(Duration::from_secs(5), |_| {
            gh.statuses().iter().any(|s| s.sha == bad)
        })
        .await;
    assert!(posted.is_some());
    let status = gh.statuses().into_iter().find(|s| s.sha == bad).unwrap();
    assert_eq!(status.state, "failure");
    assert!(
        status.description.contains("manifests/broken.yaml"),
        "{}",
        status.description
    );
    assert_eq!(d.served(), good, "the last good commit stays");
    assert!(
        !d.workspace.join("manifests/broken.yaml").exists(),
        "nor does it reach the files"
    );
    let a = d.get("/status").await;
    assert_eq!(a.json["last_error"]["commit"], json!(bad));
    // The same verdict is not posted twice.
    d.post("/sync", json!({})).await;
    assert_eq!(gh.statuses().iter().filter(|s| s.sha == bad).count(), 1);
}

#[tokio::test]
async fn writes_become_commits_on_github_even_after_someone_pushed() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    let a = d
        .put("/files/notes/plan.md", json!({"content": "# Plan\n"}))
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let head = gh.head(BRANCH);
    assert_eq!(a.json["commit"], json!(head));
    assert_eq!(gh.show(&head, "notes/plan.md"), "# Plan\n");
    assert_eq!(
        git(&gh.bare, &["log", "-1", "--format=%an", &head]).trim(),
        "env via dynapi"
    );
    assert_eq!(
        d.get("/files/notes/plan.md").await.json["content"],
        json!("# Plan\n")
    );
    // Text goes inline in the tree: no blob requests.
    assert!(!gh.requests().iter().any(|r| r.ends_with("/git/blobs")));

    // Someone pushes another file; the next write lands on top of it.
    let theirs = gh.push(BRANCH, &[("docs/theirs.md", "theirs\n")], "Their change");
    let a = d
        .patch(
            "/files/notes/plan.md",
            json!({"edits": [{"old": "# Plan", "new": "# Plan v2"}]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    let head = gh.head(BRANCH);
    assert_eq!(
        git(&gh.bare, &["rev-parse", &format!("{head}~1")]).trim(),
        theirs
    );
    assert_eq!(gh.show(&head, "docs/theirs.md"), "theirs\n");
    assert!(d.workspace.join("docs/theirs.md").exists());

    // A file changed on GitHub since it was read is not overwritten.
    gh.push(BRANCH, &[("notes/plan.md", "# Their plan\n")], "Their plan");
    let a = d
        .put("/files/notes/plan.md", json!({"content": "# Mine\n"}))
        .await;
    assert_eq!(a.status, 412, "{}", a.json);
    assert_eq!(gh.show(&gh.head(BRANCH), "notes/plan.md"), "# Their plan\n");
}

#[tokio::test]
async fn endpoints_and_reverts_become_commits_on_github() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    let body = crate::support::endpoint_body("greet", "#!/bin/sh\necho \"hi $1\"\n");
    let a = d.post("/endpoints", body).await;
    assert_eq!(a.status, 201, "{}", a.json);
    let added = gh.head(BRANCH);
    assert_eq!(a.json["commit"], json!(added));
    let tree = git(&gh.bare, &["ls-tree", "-r", &added]);
    assert!(
        tree.lines()
            .any(|l| l.starts_with("100755") && l.ends_with("scripts/greet.sh")),
        "the script is executable on GitHub: {tree}"
    );
    let a = d.post("/greet", json!({"word": "there"})).await;
    assert_eq!(a.json["output"], json!("hi there\n"), "{}", a.json);

    let a = d.delete("/endpoints/greet").await;
    assert_eq!(a.status, 200, "{}", a.json);
    let removed = gh.head(BRANCH);
    assert_ne!(removed, added);
    assert!(!git(&gh.bare, &["ls-tree", "-r", "--name-only", &removed])
        .contains("manifests/greet.yaml"));
    assert_eq!(d.post("/greet", json!({})).await.status, 404);

    // Undo the removal: a new commit on GitHub brings the endpoint back.
    let a = d.post("/revert", json!({"commit": removed})).await;
    assert_eq!(a.status, 201, "{}", a.json);
    let restored = gh.head(BRANCH);
    assert_eq!(
        git(&gh.bare, &["rev-parse", &format!("{restored}~1")]).trim(),
        removed
    );
    assert_eq!(
        gh.show(&restored, "manifests/greet.yaml"),
        gh.show(&added, "manifests/greet.yaml")
    );
    let a = d.post("/greet", json!({"word": "again"})).await;
    assert_eq!(a.json["output"], json!("hi again\n"), "{}", a.json);
}

#[tokio::test]
async fn git_sync_sends_files_written_in_the_workspace_to_github() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    std::fs::create_dir_all(d.workspace.join("reports")).unwrap();
    std::fs::write(d.workspace.join("reports/today.txt"), "42\n").unwrap();
    let png = [0x89u8, b'P', b'N', b'G', 0, 0xff, 0xfe, 1, 2, 3];
    std::fs::write(d.workspace.join("reports/chart.png"), png).unwrap();
    let a = d
        .post("/git-sync", json!({"message": "Today's report"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["committed"], json!(true));
    let head = gh.head(BRANCH);
    assert_eq!(a.json["commit"], json!(head), "served what GitHub has");
    assert_eq!(gh.show(&head, "reports/today.txt"), "42\n");
    assert_eq!(
        git(&gh.bare, &["log", "-1", "--format=%s", &head]).trim(),
        "Today's report"
    );
    // Bytes that are not text go as a base64 blob, intact.
    let blobs: Vec<_> = gh
        .requests()
        .into_iter()
        .filter(|r| r.ends_with("/git/blobs"))
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let out = std::process::Command::new("git")
        .args(["--git-dir", gh.bare.to_str().unwrap(), "cat-file", "blob"])
        .arg(format!("{head}:reports/chart.png"))
        .output()
        .unwrap();
    assert_eq!(out.stdout, png);
    // Nothing left to send: no empty commit.
    let a = d.post("/git-sync", json!({})).await;
    assert_eq!(a.json["committed"], json!(false), "{}", a.json);
    assert_eq!(gh.head(BRANCH), head);
}

#[tokio::test]
async fn github_failures_are_retried_or_answered_never_acknowledged() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    // A 502 on creating a tree is retried: trees are the same trees twice.
    gh.fail_next(&[Failure::ServerError]);
    let a = d.put("/files/a.txt", json!({"content": "a\n"})).await;
    assert_eq!(a.status, 201, "{}", a.json);
    // Rate limited past the retries: the caller is told, nothing moved.
    let before = gh.head(BRANCH);
    gh.fail_next(&[Failure::RateLimited { retry_after: 60 }]);
    let a = d.put("/files/b.txt", json!({"content": "b\n"})).await;
    assert_eq!(a.status, 429, "{}", a.json);
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(gh.head(BRANCH), before);
    // Until the limit resets, nothing more is sent to GitHub.
    let sent = gh.requests().len();
    let a = d.put("/files/c.txt", json!({"content": "c\n"})).await;
    assert_eq!(a.status, 429, "{}", a.json);
    assert_eq!(gh.requests().len(), sent, "{:?}", &gh.requests()[sent..]);
    assert_eq!(gh.head(BRANCH), before);
    assert_eq!(d.get("/healthz").await.status, 200, "the daemon serves on");
}

#[tokio::test]
async fn content_creating_requests_are_paced_one_at_a_time() {
    let seed = template_repo(BRANCH, &[]);
    let gh = GitHub::start(seed.path(), BRANCH).await;
    let interval = Duration::from_millis(250);
    let d = paced_replica(&gh, Duration::from_secs(600), interval).await;
    let paths: Vec<String> = (0..3).map(|i| format!("/files/paced/{i}.txt")).collect();
    let writes = paths.iter().map(|p| d.put(p, json!({"content": "x\n"})));
    for a in futures_util::future::join_all(writes).await {
        assert_eq!(a.status, 201, "{}", a.json);
    }
    let creating = paced(&gh, interval);
    // Three writes: a tree, a commit and a ref update each (and the statuses
    // posted on what gets served, paced with them).
    let git_data = creating.iter().filter(|(_, r)| r.contains("/git/")).count();
    assert_eq!(git_data, 9, "{creating:?}");
}

/// The content-creating requests the emulator took, after checking that
/// each came at least `interval` after the one before.
pub(crate) fn paced(gh: &GitHub, interval: Duration) -> Vec<(std::time::Instant, String)> {
    let creating: Vec<_> = gh
        .timed_requests()
        .into_iter()
        .filter(|(_, r)| r.starts_with("POST") || r.starts_with("PATCH"))
        .collect();
    for pair in creating.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= interval,
            "{} then {} after {gap:?}",
            pair[0].1,
            pair[1].1
        );
    }
    creating
}

#[tokio::test]
async fn endpoints_can_go_through_a_pull_request() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    let before = gh.head(BRANCH);
    let mut body = crate::support::endpoint_body("proposed", "#!/bin/sh\necho proposed\n");
    body["mode"] = json!("pull_request");
    let a = d.post("/endpoints", body).await;
    assert_eq!(a.status, 202, "{}", a.json);
    let url = a.json["pull_request"].as_str().unwrap();
    assert!(url.ends_with("/pull/1"), "{url}");
    assert_eq!(gh.head(BRANCH), before, "the branch waits for a human");
    let pulls = gh.pulls();
    assert_eq!(pulls[0]["base"]["ref"], json!(BRANCH));
    let head = pulls[0]["head"]["ref"].as_str().unwrap();
    assert!(git(
        &gh.bare,
        &[
            "show",
            &format!("refs/heads/{head}:manifests/proposed.yaml")
        ]
    )
    .contains("name: proposed"));
}

/// Sends GitHub's `pull_request` event (`action`) for pull request `number`
/// at `sha`, and waits for the status the daemon posts on `sha`.
pub(crate) async fn check_pull(
    gh: &GitHub,
    d: &Daemon,
    action: &str,
    number: u64,
    sha: &str,
) -> Status {
    let name = match action {
        "opened" => "pull_request.opened.0",
        _ => "pull_request.synchronize.22",
    };
    let mut event: Value = serde_json::from_slice(&fixture(name)).unwrap();
    event["number"] = json!(number);
    event["pull_request"]["number"] = json!(number);
    event["pull_request"]["head"]["sha"] = json!(sha);
    event["pull_request"]["base"]["ref"] = json!(BRANCH);
    let body = serde_json::to_vec(&event).unwrap();
    assert_eq!(webhook(d, "pull_request", &body).await, 202);
    let posted = d
        .eventually(Duration::from_secs(5), |_| {
            gh.statuses().iter().any(|s| s.sha == sha)
        })
        .await;
    assert!(posted.is_some(), "no status on {sha}");
    gh.statuses().into_iter().find(|s| s.sha == sha).unwrap()
}

#[tokio::test]
async fn pull_requests_get_a_status_on_their_head_from_branches_and_forks() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    // A branch with a broken manifest, and a pull request for it.
    git(&gh.bare, &["branch", "changes", BRANCH]);
    let bad = gh.push(
        "changes",
        &[(
            "manifests/oops.yaml",
            "name: Oops\ndescription: x\nscript: scripts/sample_script.sh\n",
        )],
        "A bad name",
    );
    let number = gh.open_pull("changes", &bad, BRANCH);
    let status = check_pull(&gh, &d, "opened", number, &bad).await;
    assert_eq!(status.state, "failure");
    assert_eq!(status.context, "dynapi/manifests");
    assert!(status.description.contains("manifests/oops.yaml"));

    // The author fixes it: the new head gets success.
    let good = "name: oops\ndescription: x\nscript: scripts/sample_script.sh\n";
    let fixed = gh.push("changes", &[("manifests/oops.yaml", good)], "Fix the name");
    let status = check_pull(&gh, &d, "synchronize", number, &fixed).await;
    assert_eq!(status.state, "success", "{}", status.description);

    // From a fork: the head is on no branch here, only at refs/pull/N/head.
    let forked = gh.commit_on(
        &gh.head(BRANCH),
        &[("manifests/late.yaml", LATE)],
        "From a fork",
    );
    let number = gh.open_pull("fork-owner:patch-1", &forked, BRANCH);
    let status = check_pull(&gh, &d, "opened", number, &forked).await;
    assert_eq!(status.state, "success", "{}", status.description);
    assert_eq!(d.served(), gh.head(BRANCH), "checking does not serve");
}

#[tokio::test]
async fn the_poll_catches_a_push_whose_webhook_was_lost() {
    let (gh, d) = start(Duration::from_millis(300)).await;
    let pushed = gh.push(BRANCH, &[("manifests/late.yaml", LATE)], "Add late");
    assert!(d
        .eventually(Duration::from_secs(5), |d| d.served() == pushed)
        .await
        .is_some());
}

#[tokio::test]
async fn replicas_converge_and_their_concurrent_writes_all_land() {
    let (gh, a) = start(Duration::from_millis(300)).await;
    let b = replica(&gh, Duration::from_millis(300)).await;
    let before: usize = git(&gh.bare, &["rev-list", "--count", BRANCH])
        .trim()
        .parse()
        .unwrap();
    let write = |d: &Daemon, i: usize| {
        let (client, url) = (d.client.clone(), format!("{}/files/load/{i}.txt", d.url));
        async move {
            client
                .put(url)
                .bearer_auth(crate::support::TOKEN)
                .json(&json!({"content": format!("{i}\n")}))
                .send()
                .await
                .unwrap()
        }
    };
    let writes = (0..12).map(|i| {
        let d = if i % 2 == 0 { &a } else { &b };
        write(d, i)
    });
    for answer in futures_util::future::join_all(writes).await {
        let status = answer.status().as_u16();
        assert_eq!(status, 201, "{}", answer.text().await.unwrap());
    }
    let after: usize = git(&gh.bare, &["rev-list", "--count", BRANCH])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        after,
        before + 12,
        "every acknowledged write is a commit on GitHub"
    );
    let head = gh.head(BRANCH);
    for d in [&a, &b] {
        assert!(d
            .eventually(Duration::from_secs(5), |d| d.served() == head)
            .await
            .is_some());
    }
    for i in 0..12 {
        assert!(b.workspace.join(format!("load/{i}.txt")).exists());
    }
}

#[tokio::test]
async fn the_repository_policy_sends_file_changes_through_pull_requests() {
    let (gh, d) = start(Duration::from_millis(300)).await;
    let policy = gh.push(
        BRANCH,
        &[("dynapi.yaml", "policy:\n  files: pull_request\n")],
        "Review every change",
    );
    assert!(d
        .eventually(Duration::from_secs(5), |d| d.served() == policy)
        .await
        .is_some());
    let a = d
        .put("/files/docs/idea.md", json!({"content": "an idea\n"}))
        .await;
    assert_eq!(a.status, 202, "{}", a.json);
    assert_eq!(a.json["committed"], json!(false));
    assert!(a.json["pull_request"].as_str().unwrap().contains("/pull/"));
    assert_eq!(gh.head(BRANCH), policy, "the branch waits for the review");
    assert_eq!(gh.pulls().len(), 1);
    // A request may still ask for a plain commit.
    let a = d
        .put(
            "/files/docs/now.md",
            json!({"content": "now\n", "mode": "commit"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    let now = gh.head(BRANCH);
    assert_ne!(now, policy);

    // Every other write follows the policy too, and says where the change went.
    let moved = d
        .post(
            "/files/move",
            json!({"from": "docs/now.md", "to": "docs/later.md"}),
        )
        .await;
    let deleted = d.delete("/files/docs/now.md").await;
    let reverted = d.post("/revert", json!({"commit": now})).await;
    let removed = d.delete("/endpoints/hello?mode=pull_request").await;
    for (what, a) in [
        ("move", moved),
        ("delete", deleted),
        ("revert", reverted),
        ("endpoint removal", removed),
    ] {
        assert_eq!(a.status, 202, "{what}: {}", a.json);
        let url = a.json["pull_request"].as_str().unwrap_or_default();
        assert!(url.contains("/pull/"), "{what}: {}", a.json);
    }
    assert_eq!(gh.pulls().len(), 5);
    assert_eq!(gh.head(BRANCH), now, "the branch waits for the reviews");
    assert_eq!(d.get("/hello?name=Ada").await.status, 200);
}

#[tokio::test]
async fn while_github_is_down_the_daemon_serves_on_and_says_so() {
    let (gh, d) = start(Duration::from_millis(200)).await;
    let served = d.served();
    gh.set_down(true);
    let a = d.post("/sync", json!({})).await;
    assert!(a.json["error"].is_string(), "{}", a.json);
    assert_eq!(
        d.get("/hello?name=Ada").await.status,
        200,
        "the last good commit serves on"
    );
    let a = d.put("/files/x.txt", json!({"content": "x"})).await;
    assert_eq!(a.status, 502, "never acknowledged: {}", a.json);
    assert_eq!(a.json["error"]["code"], json!("github_unavailable"));
    assert!(!d.workspace.join("x.txt").exists());
    // The poll keeps failing, and backs off.
    let backing_off = d
        .eventually(Duration::from_secs(5), |d| {
            d.app.syncer.status().retry_in_ms > 0
        })
        .await;
    assert!(backing_off.is_some());
    let status = d.get("/status").await.json;
    assert_eq!(status["source"], json!("github"));
    assert_eq!(status["repository"], json!("Codertocat/Hello-World"));
    assert_eq!(status["commit"], json!(served), "the last good commit");
    assert!(status["next_sync_in_ms"].as_u64().unwrap() > 0, "{status}");
    assert!(!status["last_error"]["message"].as_str().unwrap().is_empty());
    let pushed = back_up_and_pushed(&gh, &d).await;
    assert!(pushed.is_some(), "it recovers on its own");
    assert_ne!(Some(served), pushed);
}

/// Brings GitHub back, pushes a new manifest and waits until `d` serves it;
/// the commit, if it was served within 10 seconds.
async fn back_up_and_pushed(gh: &GitHub, d: &Daemon) -> Option<String> {
    gh.set_down(false);
    let pushed = gh.push(BRANCH, &[("manifests/late.yaml", LATE)], "Add late");
    d.eventually(Duration::from_secs(10), |d| d.served() == pushed)
        .await
        .map(|_| pushed)
}

/// Files under `dir` (every one, `.git` included; symlinks not followed) whose
/// bytes hold the GitHub token, raw or as the Basic credentials git sends.
fn files_holding_the_token(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use crate::support::github::{git_authorization, TOKEN};
    let basic = git_authorization();
    let encoded = basic.trim_start_matches("Basic ");
    let needles = [TOKEN.as_bytes(), encoded.as_bytes()];
    let mut found = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap();
                if needles
                    .iter()
                    .any(|n| bytes.windows(n.len()).any(|w| w == *n))
                {
                    found.push(entry.path());
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn the_github_token_is_in_no_file_of_the_workspace_and_no_script_reads_it() {
    // The emulator's git side refuses requests without the token, so the clone,
    // the fetches and the write below succeed only if it is sent from memory.
    let (gh, d) = start(Duration::from_secs(600)).await;
    // (git runs off the test's thread: the emulator answers on it.)
    let url = format!("{}.git", gh.remote());
    let anonymous = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            std::process::Command::new("git")
                .args(["ls-remote", &url])
                .env("GIT_TERMINAL_PROMPT", "0")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        !anonymous.status.success(),
        "git without the token is refused"
    );
    let listed = tokio::task::spawn_blocking({
        let (url, dir) = (url.clone(), d.workspace.clone());
        move || {
            let auth = crate::support::github::git_auth_config();
            git(&dir, &["-c", &auth, "ls-remote", &url])
        }
    })
    .await
    .unwrap();
    assert!(listed.contains("refs/heads/"), "{listed}");
    let pushed = gh.push(BRANCH, &[("manifests/late.yaml", LATE)], "Add late");
    assert_eq!(d.post("/sync", json!({})).await.status, 200);
    assert_eq!(d.served(), pushed, "a fetch brought the push");

    let body = crate::support::endpoint_body("peek", "#!/bin/sh\ncat .git/config\n");
    let a = d.post("/endpoints", body).await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(d.served(), gh.head(BRANCH), "the write landed on GitHub");

    let a = d.post("/peek", json!({})).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let seen = a.json["output"].as_str().unwrap_or_default().to_string();
    assert!(
        seen.contains(&format!("url = {}.git", gh.remote())),
        "the script read the remote: {seen}"
    );
    assert!(
        !seen.contains(crate::support::github::TOKEN),
        "no token: {seen}"
    );
    assert_eq!(
        files_holding_the_token(&d.workspace),
        Vec::<std::path::PathBuf>::new()
    );
}

#[tokio::test]
async fn a_token_an_earlier_version_left_in_git_files_is_removed_at_start() {
    use crate::support::github::TOKEN;
    let (gh, mut d) = start(Duration::from_secs(600)).await;
    // What a clone by an earlier version looked like: the token in the remote's
    // URL in `.git/config` and in the reflogs' `clone: from URL`.
    let with_token = |url: &str| url.replacen("://", &format!("://x-access-token:{TOKEN}@"), 1);
    let url = format!("{}.git", gh.remote());
    d.git(&["config", "remote.origin.url", &with_token(&url)]);
    let reflog = d.workspace.join(".git/logs/HEAD");
    let log = std::fs::read_to_string(&reflog).unwrap();
    assert!(log.contains(&format!("clone: from {url}")), "{log}");
    std::fs::write(&reflog, log.replace(&url, &with_token(&url))).unwrap();
    assert_eq!(files_holding_the_token(&d.workspace).len(), 2);

    d.restart().await;
    assert_eq!(
        files_holding_the_token(&d.workspace),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(d.git(&["config", "remote.origin.url"]).trim(), url);
    assert!(std::fs::read_to_string(&reflog)
        .unwrap()
        .contains(&format!("clone: from {url}")));
    // Fetching still works: the token comes from memory.
    let pushed = gh.push(BRANCH, &[("manifests/late.yaml", LATE)], "Add late");
    assert_eq!(d.post("/sync", json!({})).await.status, 200);
    assert_eq!(d.served(), pushed);
}

#[tokio::test]
async fn a_push_that_turns_a_file_into_a_folder_and_back_is_served() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    gh.push(BRANCH, &[("docs", "a file\n")], "docs as a file");
    assert!(d.post("/sync", json!({})).await.status < 300);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs")).unwrap(),
        "a file\n"
    );
    let folder = gh.push_changes(
        BRANCH,
        &[("docs", None), ("docs/index.md", Some("# Docs\n"))],
        "docs as a folder",
    );
    let a = d.post("/sync", json!({})).await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(d.served(), folder, "{}", a.json);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs/index.md")).unwrap(),
        "# Docs\n"
    );
    // And back: the folder goes, the file takes its place; later commits serve.
    let file = gh.push_changes(
        BRANCH,
        &[("docs/index.md", None), ("docs", Some("a file again\n"))],
        "docs as a file again",
    );
    assert!(d.post("/sync", json!({})).await.status < 300);
    assert_eq!(d.served(), file);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs")).unwrap(),
        "a file again\n"
    );
}

#[tokio::test]
async fn a_restart_while_github_is_down_serves_the_local_checkout_and_catches_up() {
    let (gh, mut d) = start(Duration::from_millis(300)).await;
    let served = d.served();
    gh.set_down(true);
    d.restart().await;
    assert_eq!(d.served(), served, "the local checkout is served");
    assert_eq!(d.get("/hello?name=Ada").await.status, 200);
    let status = d.get("/status").await.json;
    assert!(
        status["last_error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("GitHub"),
        "{status}"
    );
    let pushed = back_up_and_pushed(&gh, &d).await;
    assert!(pushed.is_some(), "it catches up once GitHub is back");
}

#[tokio::test]
async fn a_write_on_top_of_a_bad_push_never_brings_the_bad_files_here() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    let good = d.served();
    gh.push(
        BRANCH,
        &[(
            "manifests/broken.yaml",
            "name: broken\ndescription: x\nscript: scripts/missing.sh\n",
        )],
        "Break it",
    );
    let a = d
        .put("/files/README.md", json!({"content": "# Hi\n"}))
        .await;
    assert!(a.status < 300, "acknowledged: it is on GitHub: {}", a.json);
    assert!(
        !d.workspace.join("manifests/broken.yaml").exists(),
        "a commit that does not build reached the working tree"
    );
    assert_eq!(d.served(), good, "the last good commit is served");
}

#[tokio::test]
async fn a_hung_git_connection_holds_no_write_past_the_fetch_timeout() {
    let (gh, d) = start(Duration::from_millis(500)).await;
    gh.set_git_hangs(true);
    let before = gh.head(BRANCH);
    // The writer fetches before it stages: the fetch gives up within
    // FETCH_TIMEOUT, and the write is refused, never half made.
    let a = d.put("/files/notes/x.txt", json!({"content": "x\n"})).await;
    assert_eq!(a.status, 502, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("github_unavailable"));
    assert_eq!(gh.head(BRANCH), before, "nothing reached GitHub");
    gh.set_git_hangs(false);
    // The writer is free again: the next write goes through.
    let b = d.put("/files/notes/y.txt", json!({"content": "y\n"})).await;
    assert!(b.status < 300, "{}", b.json);
    assert!(d.workspace.join("notes/y.txt").exists());
    assert!(!d.workspace.join("notes/x.txt").exists());
}

#[tokio::test]
async fn a_write_on_github_is_acknowledged_when_the_local_index_stays_locked() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    let lock = d.workspace.join(".git/index.lock");
    std::fs::write(&lock, b"").unwrap();
    let held = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(dynapi::source::repo::INDEX_LOCK_WAIT + Duration::from_secs(2));
            std::fs::remove_file(&lock).unwrap();
        })
    };
    let before = gh.head(BRANCH);
    let a = d.put("/files/notes/x.txt", json!({"content": "x\n"})).await;
    let after = gh.head(BRANCH);
    held.join().unwrap();
    assert_ne!(after, before, "the write is on GitHub");
    assert!(
        a.status < 300,
        "on GitHub, answered as a failure: {} {}",
        a.status,
        a.json
    );
}

#[tokio::test]
async fn a_sync_never_writes_into_a_human_s_other_branch() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    git(&d.workspace, &["checkout", "-q", "-b", "feature"]);
    gh.push(BRANCH, &[("docs/theirs.md", "theirs\n")], "Their change");
    let _ = d.post("/sync", json!({})).await;
    assert!(
        !d.workspace.join("docs/theirs.md").exists(),
        "the push to {BRANCH} was written into the `feature` checkout"
    );
    assert_eq!(git(&d.workspace, &["status", "--porcelain"]), "");
}

#[tokio::test]
async fn a_pushed_name_the_workspace_refuses_is_left_out_and_sync_goes_on() {
    let (gh, d) = start(Duration::from_secs(600)).await;
    // A name git accepts and the workspace never writes (a backslash).
    gh.push(
        BRANCH,
        &[("docs/a\\b.md", "odd\n"), ("docs/first.md", "first\n")],
        "An odd name",
    );
    let a = d.post("/sync", json!({})).await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs/first.md")).unwrap(),
        "first\n"
    );
    assert!(!d.workspace.join("docs/a\\b.md").exists());
    // Later pushes are still served: the sync is not wedged on the odd name.
    gh.push(BRANCH, &[("docs/second.md", "second\n")], "A later change");
    let a = d.post("/sync", json!({})).await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs/second.md")).unwrap(),
        "second\n"
    );
}

#[tokio::test]
async fn a_daemon_killed_in_a_checkout_starts_again_and_catches_up() {
    let (gh, mut d) = start(Duration::from_secs(600)).await;
    // What a daemon killed inside a checkout leaves: git's index lock and
    // the daemon's marker that it held it.
    std::fs::write(d.workspace.join(".git/index.lock"), b"").unwrap();
    std::fs::write(d.workspace.join(".git/dynapi/index-lock"), b"1").unwrap();
    gh.push(BRANCH, &[("docs/theirs.md", "theirs\n")], "Their change");
    d.restart().await;
    let a = d.get("/status").await;
    assert!(a.status < 300, "{}", a.json);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("docs/theirs.md")).unwrap(),
        "theirs\n"
    );
    assert!(!d.workspace.join(".git/index.lock").exists());
}
