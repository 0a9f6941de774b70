//! Adding, calling and removing endpoints through the API; every write one commit.

use std::time::Duration;

use serde_json::json;

use crate::support::{endpoint_body, Daemon};

#[tokio::test]
async fn an_added_endpoint_is_one_commit_and_live_when_answered() {
    let d = Daemon::start().await;
    let before = d.git(&["rev-list", "--count", "HEAD"]);
    let body = json!({
        "manifest": "name: shout\ndescription: Upper-case a word.\nmethod: POST\npath: /shout/{word}\nscript: scripts/shout.sh\nargs: [\"{word}\"]\nparams:\n  word: {type: string, maxLength: 20}\n",
        "script": {"path": "scripts/shout.sh", "content": "#!/bin/sh\necho \"$1\" | tr a-z A-Z\n"},
        "message": "Add shout",
    });
    let a = d.post("/endpoints", body).await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["live"], json!(true));
    let commit = a.json["commit"].as_str().unwrap().to_string();

    // Live at once: its own route and /call/{name}.
    let r = d.post("/shout/hey", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["output"], json!("HEY\n"));
    assert_eq!(r.json["ok"], json!(true));
    let r = d.post("/call/shout", json!({"word": "abc"})).await;
    assert_eq!(r.json["output"], json!("ABC\n"));

    // ONE commit with both files, the script executable, authored through the API.
    assert_eq!(d.git(&["rev-parse", "HEAD"]).trim(), commit);
    let count: u32 = d
        .git(&["rev-list", "--count", "HEAD"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, before.trim().parse::<u32>().unwrap() + 1);
    let tree = d.git(&["ls-tree", "-r", "HEAD"]);
    assert!(
        tree.lines()
            .any(|l| l.starts_with("100755") && l.ends_with("scripts/shout.sh")),
        "{tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.starts_with("100644") && l.ends_with("manifests/shout.yaml")),
        "{tree}"
    );
    assert_eq!(
        d.git(&["log", "-1", "--format=%s|%an"]).trim(),
        "Add shout|env via dynapi"
    );
    assert_eq!(
        d.git(&["status", "--porcelain"]).trim(),
        "",
        "index and working tree match the commit"
    );

    let list = d.get("/endpoints").await;
    let shout = list.json["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "shout")
        .unwrap()
        .clone();
    assert_eq!(shout["method"], json!("POST"));
    assert_eq!(shout["params"]["required"], json!(["word"]));
    assert_eq!(
        shout["params"]["properties"]["word"]["maxLength"],
        json!(20)
    );

    let del = d.delete("/endpoints/shout").await;
    assert_eq!(del.status, 200, "{}", del.json);
    assert_eq!(del.json["script_deleted"], json!(true));
    assert_eq!(d.post("/shout/hey", json!({})).await.status, 404);
    assert!(!d.workspace.join("scripts/shout.sh").exists());
    assert_eq!(d.delete("/endpoints/shout").await.status, 404);
}

#[tokio::test]
async fn an_invalid_manifest_is_refused_with_every_problem_and_nothing_is_committed() {
    let d = Daemon::start().await;
    let head = d.git(&["rev-parse", "HEAD"]);
    let a = d
        .post("/endpoints", json!({"manifest": "name: Bad_Name\ndescription: x\nmethod: FETCH\nscript: scripts/missing.sh\ntimeout: 1d\n"}))
        .await;
    assert_eq!(a.status, 422, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("invalid_manifest"));
    let problems = a.json["error"]["problems"].as_array().unwrap();
    let lines: Vec<u64> = problems
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert!(
        lines.contains(&1) && lines.contains(&3) && lines.contains(&5),
        "{problems:?}"
    );
    assert!(problems
        .iter()
        .all(|p| p["file"] == "manifests/new-endpoint.yaml"));

    // An unknown key hides nothing: every problem is listed, each at its value.
    let a = d
        .post(
            "/endpoints",
            json!({ "manifest": crate::cli::FIVE_PROBLEMS }),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.json);
    let at: Vec<(u64, u64)> = a.json["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["line"].as_u64().unwrap(), p["column"].as_u64().unwrap()))
        .collect();
    let expected: Vec<(u64, u64)> = crate::cli::FIVE_AT
        .iter()
        .map(|(l, c, _)| (*l as u64, *c as u64))
        .collect();
    assert_eq!(at, expected, "{}", a.json);

    // A valid manifest whose script is neither sent nor in the repository.
    let a = d
        .post("/endpoints", json!({"manifest": {"name": "ghost", "description": "x", "script": "scripts/ghost.sh"}}))
        .await;
    assert_eq!(a.status, 422, "{}", a.json);
    assert_eq!(
        a.json["error"]["problems"][0]["file"],
        json!("manifests/ghost.yaml")
    );
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist in this commit"));

    // A route that collides with an existing endpoint.
    let a = d
        .post("/endpoints", json!({"manifest": {"name": "hello-again", "description": "x", "method": "GET", "path": "/hello", "script": "scripts/sample_script.sh"}}))
        .await;
    assert_eq!(a.status, 422, "{}", a.json);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("conflicts"));

    let a = d
        .post("/endpoints", json!({"manifest": "name: [unclosed\n"}))
        .await;
    assert_eq!(a.status, 422);
    assert_eq!(d.git(&["rev-parse", "HEAD"]), head, "nothing was committed");
}

#[tokio::test]
async fn parameters_are_validated_before_the_script_starts() {
    let d = Daemon::start().await;
    let a = d.get("/count-lines?limit=0").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json["error"]["code"], json!("invalid_param"));
    assert_eq!(a.json["error"]["param"], json!("limit"));
    let a = d.get("/hello?nme=x").await;
    assert_eq!(a.json["error"]["param"], json!("nme"));
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("takes name"));
    // Option injection: a value that would reach argv starting with `-`.
    let a = d.get("/hello?name=--help").await;
    assert_eq!(a.status, 400);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("allow_leading_dash"));
    let a = d.post("/call/hello", json!({"name": "Grace"})).await;
    assert_eq!(a.json["output"], json!("Hello, Grace!\n"));
    let a = d.post("/call/nope", json!({})).await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn json_output_is_parsed_and_failures_and_timeouts_are_defined() {
    let d = Daemon::start().await;
    let a = d
        .post("/run-sql", json!({"query": "select 2 as two"}))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["output"]["rows"], json!([[2]]));

    let add = |name: &str, script: &str, extra: &str| {
        json!({
            "manifest": format!("name: {name}\ndescription: x\nscript: scripts/{name}.sh\n{extra}"),
            "script": {"path": format!("scripts/{name}.sh"), "content": script},
        })
    };
    assert_eq!(
        d.post(
            "/endpoints",
            add("fails", "#!/bin/sh\necho partial\nexit 3\n", "")
        )
        .await
        .status,
        201
    );
    let a = d.post("/fails", json!({})).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        (
            a.json["ok"].clone(),
            a.json["exit_code"].clone(),
            a.json["output"].clone()
        ),
        (json!(false), json!(3), json!("partial\n"))
    );

    assert_eq!(
        d.post(
            "/endpoints",
            add("notjson", "#!/bin/sh\necho not json\n", "output: json\n")
        )
        .await
        .status,
        201
    );
    let a = d.post("/notjson", json!({})).await;
    assert_eq!(a.status, 502);
    assert_eq!(a.json["error"]["code"], json!("bad_output"));

    let started = std::time::Instant::now();
    assert_eq!(
        d.post(
            "/endpoints",
            add(
                "slow",
                "#!/bin/sh\necho started\nsleep 30 &\nsleep 30\n",
                "timeout: 500ms\n"
            )
        )
        .await
        .status,
        201
    );
    let a = d.post("/slow", json!({})).await;
    assert_eq!(a.status, 504, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("timeout"));
    assert_eq!(a.json["error"]["stdout"], json!("started\n"));
    assert!(started.elapsed() < Duration::from_secs(10));
    // The background `sleep 30` went with the group.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "^sleep 30$"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "a child outlived its script's timeout"
    );
}

#[tokio::test]
async fn many_endpoints_added_at_once_all_land() {
    let d = Daemon::start().await;
    let base: u32 = d
        .git(&["rev-list", "--count", "HEAD"])
        .trim()
        .parse()
        .unwrap();
    let n = 12;
    let calls = (0..n).map(|i| {
        let d = &d;
        async move {
            d.post(
                "/endpoints",
                endpoint_body(&format!("e{i}"), &format!("#!/bin/sh\necho {i}\n")),
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    for a in &answers {
        assert_eq!(a.status, 201, "{}", a.json);
        assert_eq!(a.json["live"], json!(true));
    }
    let count: u32 = d
        .git(&["rev-list", "--count", "HEAD"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(count, base + n);
    for i in 0..n {
        let a = d.post(&format!("/e{i}"), json!({})).await;
        assert_eq!(a.json["output"], json!(format!("{i}\n")));
    }
}

#[tokio::test]
async fn callers_beyond_the_script_limit_get_429_with_retry_after() {
    let d = Daemon::start_with(|c| {
        c.limits.max_running = 1;
        c.limits.queue_wait = Duration::from_millis(100);
    })
    .await;
    assert_eq!(
        d.post("/endpoints", endpoint_body("nap", "#!/bin/sh\nsleep 1\n"))
            .await
            .status,
        201
    );
    let first = d.post("/nap", json!({}));
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        d.get("/hello").await
    };
    let (first, busy) = tokio::join!(first, second);
    assert_eq!(first.status, 200);
    assert_eq!(busy.status, 429, "{}", busy.json);
    assert_eq!(busy.headers["retry-after"], "1");
    assert_eq!(busy.json["error"]["code"], json!("busy"));
}

/// A manifest for `scripts/sample_script.sh` with `params` parameters, padded with
/// a description of `padding` bytes.
fn big_manifest(name: &str, params: usize, padding: usize) -> String {
    let mut text = format!(
        "name: {name}\ndescription: Big{}.\nscript: scripts/sample_script.sh\nparams:\n",
        "g".repeat(padding)
    );
    for i in 0..params {
        text.push_str(&format!("  p{i}: {{type: string}}\n"));
    }
    text
}

#[tokio::test]
async fn oversized_manifests_are_refused_and_never_served() {
    let d = Daemon::start().await;
    let head = d.git(&["rev-parse", "HEAD"]);
    for (manifest, limit) in [
        (
            big_manifest("wide", 65, 0),
            "`params` has 65 parameters, over the limit of 64",
        ),
        (
            big_manifest("long", 1, 70_000),
            "over the limit of 65536 bytes (64 KiB)",
        ),
    ] {
        let a = d.post("/endpoints", json!({ "manifest": manifest })).await;
        assert_eq!(a.status, 422, "{}", a.json);
        assert_eq!(a.json["error"]["code"], json!("invalid_manifest"));
        let problem = &a.json["error"]["problems"][0];
        assert!(
            problem["message"].as_str().unwrap().contains(limit),
            "{problem}"
        );
        assert!(problem["line"].as_u64().unwrap() >= 1, "{problem}");
    }
    assert_eq!(d.git(&["rev-parse", "HEAD"]), head, "nothing was committed");

    // A human's commit of one is not served, and /status names file and limit.
    let good = d.served();
    std::fs::write(
        d.workspace.join("manifests/long.yaml"),
        big_manifest("long", 1, 70_000),
    )
    .unwrap();
    d.git(&["add", "manifests/long.yaml"]);
    d.git(&["commit", "-q", "-m", "Add a long manifest"]);
    let bad = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let reported = d
        .eventually(Duration::from_secs(3), |d| {
            d.app
                .syncer
                .status()
                .last_error
                .is_some_and(|e| e.commit.as_deref() == Some(bad.as_str()))
        })
        .await;
    assert!(reported.is_some(), "the commit was not looked at");
    assert_eq!(d.served(), good);
    let status = d.get("/status").await;
    let problem = &status.json["last_error"]["problems"][0];
    assert_eq!(problem["file"], json!("manifests/long.yaml"));
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("over the limit of 65536 bytes"),
        "{problem}"
    );
    assert_eq!(d.get("/long").await.status, 404);
}

/// `output_schema` (MCP's `outputSchema` of the endpoint's tool) is checked
/// like every key: an object schema, only with `output: json`, `required`
/// names among its properties; each problem at its line.
#[tokio::test]
async fn an_output_schema_is_checked_with_the_manifest() {
    let d = Daemon::start().await;
    let manifest = |extra: &str| {
        format!(
            "name: report\ndescription: A report.\nmethod: GET\nscript: scripts/hello.sh\n{extra}"
        )
    };
    let a = d
        .post(
            "/endpoints",
            json!({"manifest": manifest("output_schema:\n  type: array\n  required: [total]\n")}),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.json);
    let problems: Vec<String> = a.json["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}: {}", p["line"], p["message"].as_str().unwrap()))
        .collect();
    let all = problems.join("\n");
    assert!(all.contains("add `output: json`"), "{all}");
    assert!(all.contains("needs `type: object`"), "{all}");
    assert!(all.contains("names \"total\""), "{all}");
    // At its value: the mapping under `output_schema:` starts on line 6.
    assert!(problems.iter().all(|p| p.starts_with("6: ")), "{all}");

    let good = "output: json\noutput_schema:\n  type: object\n  properties:\n    total: {type: integer}\n  required: [total]\n";
    let a = d
        .post("/endpoints", json!({"manifest": manifest(good)}))
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
}
