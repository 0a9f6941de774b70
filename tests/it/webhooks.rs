//! GitHub webhooks, driven with GitHub's own example payloads
//! (tests/fixtures/github-webhooks, from @octokit/webhooks-examples).

use serde_json::{json, Value};

use crate::support::Daemon;

const SECRET: &str = "It's a Secret to Everybody";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/github-webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Sends `body` as GitHub would: event, delivery id, and (when `secret` is given)
/// the signature over these exact bytes.
async fn deliver(
    d: &Daemon,
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: Option<&str>,
) -> (u16, Value) {
    let mut req = d
        .client
        .post(format!("{}/webhooks/github", d.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(secret) = secret {
        req = req.header(
            "X-Hub-Signature-256",
            dynapi::webhook::sign(secret.as_bytes(), body),
        );
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn start() -> Daemon {
    Daemon::start_with(|c| {
        // The fixtures push to `master`; serve that branch.
        c.branch = "master".into();
        c.webhook_secret = Some(SECRET.into());
        // Only the webhook may notice new commits here.
        c.watch_local = false;
    })
    .await
}

#[tokio::test]
async fn webhooks_are_refused_without_a_secret_or_a_valid_signature() {
    let d = Daemon::start().await;
    let ping = fixture("ping.0");
    let (status, body) = deliver(&d, "ping", "d-1", &ping, Some(SECRET)).await;
    assert_eq!(status, 403, "no secret configured: {body}");
    assert_eq!(body["error"]["code"], json!("webhooks_disabled"));

    let d = start().await;
    assert_eq!(deliver(&d, "ping", "d-2", &ping, None).await.0, 401);
    assert_eq!(
        deliver(&d, "ping", "d-3", &ping, Some("wrong")).await.0,
        401
    );
    // The signature covers the raw bytes: the same JSON written differently fails.
    let reserialized =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&ping).unwrap()).unwrap();
    let header = dynapi::webhook::sign(SECRET.as_bytes(), &ping);
    let res = d
        .client
        .post(format!("{}/webhooks/github", d.url))
        .header("X-GitHub-Event", "ping")
        .header("X-Hub-Signature-256", header)
        .body(reserialized)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let (status, body) = deliver(&d, "ping", "d-4", &ping, Some(SECRET)).await;
    assert_eq!(status, 200);
    assert_eq!(body["pong"], json!(true));
}

#[tokio::test]
async fn a_push_to_the_served_branch_syncs_once_and_replays_do_nothing() {
    let d = start().await;
    std::fs::write(
        d.workspace.join("manifests/late.yaml"),
        "name: late\ndescription: Added by a push.\nscript: scripts/sample_script.sh\n",
    )
    .unwrap();
    d.git(&["add", "-A"]);
    d.git(&["commit", "-qm", "Add late"]);
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_ne!(d.served(), head, "nothing but the webhook syncs here");

    let push = fixture("push.4");
    let (status, body) = deliver(&d, "push", "push-1", &push, Some(SECRET)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["sync"], json!("started"));
    assert!(d
        .eventually(std::time::Duration::from_secs(2), |d| d.served() == head)
        .await
        .is_some());
    let status = d.app.syncer.status();
    assert_eq!(
        serde_json::to_value(status.last_sync.unwrap().trigger).unwrap(),
        json!("webhook")
    );
    assert_eq!(d.post("/call/late", json!({})).await.status, 200);

    // The same delivery again does nothing; a push to a tag is ignored.
    let syncs = d.app.syncer.status().syncs;
    let (status, body) = deliver(&d, "push", "push-1", &push, Some(SECRET)).await;
    assert_eq!((status, body["duplicate"].clone()), (200, json!(true)));
    let (status, body) = deliver(&d, "push", "push-2", &fixture("push.0"), Some(SECRET)).await;
    assert_eq!(status, 202);
    assert!(body["ignored"]
        .as_str()
        .unwrap()
        .contains("refs/tags/simple-tag"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(d.app.syncer.status().syncs, syncs);
}

#[tokio::test]
async fn other_events_are_answered_202_and_ignored() {
    let d = start().await;
    for (event, name) in [
        ("issues", "issues.opened.15"),
        ("pull_request", "pull_request.closed.3"),
    ] {
        let (status, body) = deliver(&d, event, name, &fixture(name), Some(SECRET)).await;
        assert_eq!(status, 202, "{event}: {body}");
        assert!(body["ignored"].is_string());
    }
    let (status, _) = deliver(&d, "push", "bad", b"{\"not\": \"a push\"}", Some(SECRET)).await;
    assert_eq!(status, 400);
}
