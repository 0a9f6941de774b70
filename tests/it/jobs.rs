//! Long runs as jobs: a call still running after `job_after` answers 202 and goes
//! on; `?async=true` and `async: true` answer 202 at once; `GET /jobs/{id}` reads
//! state and output page by page; `DELETE /jobs/{id}` kills the process group.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Daemon;

/// Adds an endpoint `name` (POST /name) running `script`; `extra` goes into the manifest.
async fn add(d: &Daemon, name: &str, extra: &str, script: &str) {
    let a = d
        .post(
            "/endpoints",
            json!({
                "manifest": format!("name: {name}\ndescription: Job test {name}.\npath: /{name}\nscript: scripts/{name}.sh\n{extra}"),
                "script": {"path": format!("scripts/{name}.sh"), "content": script},
            }),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
}

/// Reads the job until `done` holds for its view, up to 10 s.
async fn until(d: &Daemon, url: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let a = d.get(url).await;
        assert_eq!(a.status, 200, "{}", a.json);
        if done(&a.json) {
            return a.json;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the job never got there: {}",
            a.json
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_call_still_running_after_job_after_becomes_a_job_read_page_by_page() {
    let d = Daemon::start_with(|c| c.job_after = Duration::from_millis(400)).await;
    add(
        &d,
        "slow",
        "",
        "#!/bin/sh\necho first\nwhile [ ! -e release ]; do sleep 0.05; done\necho second\nexit 3\n",
    )
    .await;

    let started = Instant::now();
    let a = d.post("/call/slow", json!({})).await;
    assert_eq!(a.status, 202, "{}", a.json);
    assert!(started.elapsed() < Duration::from_secs(3));
    let id = a.json["job_id"].as_str().unwrap().to_string();
    let url = format!("/jobs/{id}");
    assert_eq!(a.json["url"], json!(url));
    assert_eq!(a.headers["location"], url.as_str());
    assert!(a.json["message"].as_str().unwrap().contains(&url));

    // Not killed: it is running, and what it printed so far is there.
    let view = d.get(&url).await.json;
    assert_eq!(view["state"], json!("running"), "{view}");
    assert_eq!(view["output"], json!("first\n"));
    assert_eq!(view["next_offset"], json!(6));
    assert_eq!(view["more"], json!(true));
    assert_eq!(view["exit_code"], Value::Null);

    std::fs::write(d.workspace.join("release"), "").unwrap();
    let view = until(&d, &format!("{url}?offset=6"), |v| v["state"] != "running").await;
    assert_eq!(view["state"], json!("failed"), "{view}");
    assert_eq!(view["exit_code"], json!(3));
    assert_eq!(view["output"], json!("second\n"));
    assert_eq!(view["offset"], json!(6));
    assert_eq!(view["next_offset"], json!(13));
    assert_eq!(view["more"], json!(false));
    assert!(view["finished_at"].is_string());

    // A quick call still answers itself.
    std::fs::remove_file(d.workspace.join("release")).unwrap();
    add(&d, "quick", "", "#!/bin/sh\necho done\n").await;
    let a = d.post("/quick", json!({})).await;
    assert_eq!((a.status, &a.json["output"]), (200, &json!("done\n")));
}

#[tokio::test]
async fn async_calls_answer_at_once_and_cancel_kills_the_whole_group() {
    let d = Daemon::start().await;
    let marker = d.workspace.join("survivor");
    add(
        &d,
        "background",
        "async: true\n",
        "#!/bin/sh\n(sleep 1; touch survivor) &\necho started\nsleep 30\n",
    )
    .await;

    let started = Instant::now();
    let a = d.post("/background", json!({})).await;
    assert_eq!(a.status, 202, "{}", a.json);
    assert!(started.elapsed() < Duration::from_secs(2));
    let url = a.json["url"].as_str().unwrap().to_string();
    until(&d, &url, |v| v["output"] == "started\n").await;

    let a = d.delete(&url).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["state"], json!("cancelled"), "{}", a.json);
    assert_eq!(a.json["signal"], json!(9));
    assert!(a.json.get("error").is_none(), "{}", a.json);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!marker.exists(), "a child of the cancelled job lived on");
    // Cancelling again changes nothing.
    let again = d.delete(&url).await;
    assert_eq!(
        (again.status, &again.json["state"]),
        (200, &json!("cancelled"))
    );

    // `?async=true` makes any call a job; a JSON endpoint's whole output is JSON.
    add(
        &d,
        "numbers",
        "output: json\n",
        "#!/bin/sh\necho '{\"n\": [1, 2, 3]}'\n",
    )
    .await;
    let a = d.post("/call/numbers?async=true", json!({})).await;
    assert_eq!(a.status, 202, "{}", a.json);
    let url = a.json["url"].as_str().unwrap().to_string();
    let view = until(&d, &url, |v| v["state"] != "running").await;
    assert_eq!(view["state"], json!("succeeded"), "{view}");
    assert_eq!(view["output"], json!({"n": [1, 2, 3]}));
    let a = d.post("/numbers?async=maybe", json!({})).await;
    assert_eq!(a.status, 400, "{}", a.json);
    let a = d.post("/call/numbers?asink=true", json!({})).await;
    assert_eq!(a.status, 400, "{}", a.json);
}

#[tokio::test]
async fn jobs_are_private_to_their_token_paged_on_characters_and_report_timeouts() {
    let d = Daemon::start().await;
    add(
        &d,
        "accents",
        "async: true\ntimeout: 1s\n",
        "#!/bin/sh\nprintf 'éééé'\nprintf 'oops' >&2\nsleep 5\n",
    )
    .await;
    let a = d.post("/accents", json!({})).await;
    let url = a.json["url"].as_str().unwrap().to_string();

    // Pages never cut a character: 3 bytes give one `é` (2 bytes), and reading on
    // from there gives the rest.
    let first = until(&d, &format!("{url}?limit=3"), |v| v["output_bytes"] == 8).await;
    assert_eq!(first["output"], json!("é"));
    assert_eq!(first["next_offset"], json!(2));
    let rest = d.get(&format!("{url}?offset=2")).await.json;
    assert_eq!(rest["output"], json!("ééé"));
    for bad in ["?limit=0", "?limit=100000", "?offset=99", "?colour=red"] {
        let a = d.get(&format!("{url}{bad}")).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.json);
        assert!(a.json["error"]["message"].is_string());
    }

    // Another token does not see it; an unknown id is 404 too.
    d.grant_reader("reader-secret", "read, run").await;
    let a = d.request("GET", &url, None, Some("reader-secret")).await;
    assert_eq!(a.status, 404, "{}", a.json);
    let a = d.request("DELETE", &url, None, Some("reader-secret")).await;
    assert_eq!(a.status, 404, "{}", a.json);
    assert_eq!(d.get("/jobs/job_nothing").await.status, 404);
    let a = d.request("GET", &url, None, None).await;
    assert_eq!(a.status, 401);

    // Its timeout still holds: killed, and said so.
    let view = until(&d, &url, |v| v["state"] != "running").await;
    assert_eq!(view["state"], json!("timed_out"), "{view}");
    assert_eq!(view["error"]["code"], json!("timeout"));
    assert_eq!(view["stderr"], json!("oops"));
    assert!(view["duration_ms"].as_u64().unwrap() < 3000, "{view}");
}

#[tokio::test]
async fn a_token_with_only_run_reads_and_cancels_the_job_it_started() {
    let d = Daemon::start().await;
    add(
        &d,
        "slow",
        "async: true\n",
        "#!/bin/sh\necho started\nsleep 30\n",
    )
    .await;
    d.grant_reader("runner-secret", "run").await;
    let a = d
        .request("POST", "/slow", Some(json!({})), Some("runner-secret"))
        .await;
    assert_eq!(a.status, 202, "{}", a.json);
    let url = a.json["url"].as_str().unwrap().to_string();
    let a = d.request("GET", &url, None, Some("runner-secret")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    let a = d.request("DELETE", &url, None, Some("runner-secret")).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_ne!(a.json["state"], json!("running"), "{}", a.json);
    // Reading jobs needs the `run` that started them.
    d.grant_reader("reader-only", "read").await;
    let a = d.request("GET", &url, None, Some("reader-only")).await;
    assert_eq!(a.status, 403, "{}", a.json);
}

/// A job is its starter's: the token, not the token's name, which two tokens
/// may share (a reviewer's finding: jobs were bound by name).
#[tokio::test]
async fn two_tokens_of_one_name_do_not_see_each_others_jobs() {
    let d = Daemon::start().await;
    add(&d, "slow", "async: true\n", "#!/bin/sh\nsleep 30\n").await;
    let entry = |secret: &str| {
        format!(
            "  - name: ci\n    sha256: {}\n    scopes: [run]\n",
            hex::encode(dynapi::auth::hash_token(secret))
        )
    };
    let (mine, theirs) = ("first-ci-secret", "second-ci-secret");
    d.commit_settings(&format!("tokens:\n{}{}", entry(mine), entry(theirs)))
        .await;
    let a = d
        .request("POST", "/slow", Some(json!({})), Some(mine))
        .await;
    assert_eq!(a.status, 202, "{}", a.json);
    let url = a.json["url"].as_str().unwrap().to_string();
    for method in ["GET", "DELETE"] {
        let a = d.request(method, &url, None, Some(theirs)).await;
        assert_eq!(a.status, 404, "{method}: {}", a.json);
    }
    let a = d.request("GET", &url, None, Some(mine)).await;
    assert_eq!((a.status, &a.json["state"]), (200, &json!("running")));
    let a = d.request("DELETE", &url, None, Some(mine)).await;
    assert_eq!(a.json["state"], json!("cancelled"), "{}", a.json);
}
