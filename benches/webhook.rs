//! Webhook to live route: in GitHub mode, with a repository of 1,000 manifests,
//! how long from a push's webhook until the route it adds answers. Against the
//! floor any fetch-based sync has: `git fetch` of the same push by the git
//! command line into a clone, measured in the same run.
//!
//!     cargo bench --bench webhook [-- PUSHES]
//!
//! Runs the real daemon and the GitHub emulator from tests/support in one
//! process, on loopback.

#[allow(dead_code)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::git;
use support::github::GitHub;

const BRANCH: &str = "main";
const SECRET: &str = "bench";
const MANIFESTS: usize = 1_000;

fn main() {
    let pushes: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(pushes));
}

/// The template plus a thousand manifests, each its own GET route.
fn seed() -> tempfile::TempDir {
    let manifests: Vec<(String, String)> = (0..MANIFESTS)
        .map(|i| {
            (
                format!("manifests/ep-{i}.yaml"),
                format!("name: ep-{i}\ndescription: Endpoint {i}.\nmethod: GET\nscript: scripts/sample_script.sh\nargs: [\"{{who}}\"]\nparams:\n  who: {{type: string, default: world}}\n"),
            )
        })
        .collect();
    support::template_repo(BRANCH, &manifests)
}

fn stats(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], *samples.last().unwrap())
}

async fn run(pushes: usize) {
    let seed = seed();
    let gh = GitHub::start(seed.path(), BRANCH).await;
    let (remote, api) = (gh.remote(), gh.api_url());
    let d = support::Daemon::start_with(move |c| {
        c.webhook_secret = Some(SECRET.into());
        c.remote = Some(dynapi::config::Remote {
            url: remote,
            api_url: api,
            token: Some(support::github::TOKEN.into()),
            poll: Duration::from_secs(3600),
            write_interval: dynapi::source::github::WRITE_INTERVAL,
        });
    })
    .await;
    let peer = tempfile::tempdir().unwrap();
    let clone_url = format!("{}.git", gh.remote());
    let peer_dir = peer.path().join("clone");
    tokio::task::spawn_blocking({
        let (url, dir) = (clone_url.clone(), peer_dir.clone());
        move || {
            git(
                dir.parent().unwrap(),
                // The emulator's git side wants the token, as a private repository would.
                &[
                    "-c",
                    &support::github::git_auth_config(),
                    "clone",
                    "-q",
                    &url,
                    dir.to_str().unwrap(),
                ],
            )
        }
    })
    .await
    .unwrap();
    let payload = serde_json::to_vec(&serde_json::json!({
        "ref": format!("refs/heads/{BRANCH}"), "before": "0", "after": "0", "deleted": false,
        "repository": {"full_name": format!("{}/{}", support::github::OWNER, support::github::REPO)},
    }))
    .unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..pushes {
        let name = format!("new-{i}");
        let manifest = format!(
            "name: {name}\ndescription: Pushed {i}.\nmethod: GET\nscript: scripts/sample_script.sh\n"
        );
        gh.push(
            BRANCH,
            &[(&format!("manifests/{name}.yaml"), &manifest)],
            "Add one",
        );

        let start = Instant::now();
        let status = d
            .client
            .post(format!("{}/webhooks/github", d.url))
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", format!("bench-{i}"))
            .header(
                "X-Hub-Signature-256",
                dynapi::webhook::sign(SECRET.as_bytes(), &payload),
            )
            .body(payload.clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 202);
        loop {
            let a = d.get(&format!("/{name}")).await;
            if a.status == 200 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the route never came"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ours.push(start.elapsed());

        let dir = peer_dir.clone();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || {
            let auth = support::github::git_auth_config();
            git(&dir, &["-c", &auth, "fetch", "-q", "origin"])
        })
        .await
        .unwrap();
        theirs.push(start.elapsed());
    }
    let (our_median, our_worst) = stats(ours);
    let (their_median, their_worst) = stats(theirs);
    println!("{pushes} pushes, {MANIFESTS} manifests in the repository");
    println!("dynapi webhook -> route answering: median {our_median:?}, worst {our_worst:?}");
    println!("git fetch of the same push:       median {their_median:?}, worst {their_worst:?}");
    println!(
        "ratio dynapi/git-fetch (median): {:.2}",
        our_median.as_secs_f64() / their_median.as_secs_f64()
    );
}
