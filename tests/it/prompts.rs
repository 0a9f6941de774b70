//! Prompts kept in git (`prompts/<name>.md`), driven by a real MCP client (the
//! official Python SDK, tests/mcp/prompts.py) in both protocol revisions: the
//! template's prompt is listed and filled; a prompt a human commits is listed
//! after `prompts/list_changed`; an invalid one is refused at its file, line
//! and column (in `/status`, by `dynapi check`, by the writer) while the last
//! good prompts stay; in GitHub mode a prompt added by a pull request is
//! checked there and listed only once the pull request is merged. A token
//! without `read` sees no prompts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::github::{self, BRANCH};
use crate::mcp::Client;
use crate::support::{git, Daemon, TOKEN};

/// JSON-RPC's invalid params, what a wrong `prompts/get` answers.
const INVALID_PARAMS: i64 = -32602;

const EXPLAIN: &str = "---\nname: explain\ndescription: Explain a folder to a newcomer.\narguments:\n  - name: dir\n    description: The folder.\n    required: true\n---\nExplain what `{dir}` holds, file by file. Literal braces: {{dir}}.\n";

/// tests/mcp/prompts.py against `d`'s /mcp in `mode`, past its `connected` step.
async fn connect(d: &Daemon, mode: &str) -> Client {
    connect_as(d, TOKEN, mode).await
}

/// `connect` with the token `token`.
async fn connect_as(d: &Daemon, token: &str, mode: &str) -> Client {
    let args = [
        format!("{}/mcp", d.url),
        token.to_string(),
        mode.to_string(),
    ];
    let mut client = Client::script("prompts.py", &args);
    let connected = client.step("connected").await;
    assert_eq!(
        connected["prompts_capability"],
        json!({"listChanged": true}),
        "{connected}"
    );
    if mode == "legacy" {
        assert_ne!(connected["protocol"], json!("2026-07-28"));
    } else {
        assert_eq!(connected["protocol"], json!(mode));
        assert_eq!(
            connected["honored"],
            json!({"promptsListChanged": true}),
            "{connected}"
        );
    }
    client
}

/// The prompts `prompts/list` shows, by name.
async fn list(client: &mut Client) -> Value {
    client.send(json!({"do": "list"})).await;
    client.step("list").await["prompts"].clone()
}

/// `prompts/get`: the result, or the error.
async fn get(client: &mut Client, name: &str, arguments: Value) -> Value {
    client
        .send(json!({"do": "get", "name": name, "arguments": arguments}))
        .await;
    client.step("get").await
}

/// The one message's text of a filled prompt.
fn text_of(got: &Value) -> &str {
    assert_eq!(got["error"], Value::Null, "{got}");
    let messages = got["result"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{got}");
    assert_eq!(messages[0]["role"], json!("user"));
    messages[0]["content"]["text"].as_str().unwrap()
}

async fn quit(mut client: Client) {
    client.send(json!({"do": "quit"})).await;
    client.finish().await;
}

/// Commits `files` as a human would, and waits until the daemon has synced it
/// (served it, or recorded it as invalid). Returns the commit.
async fn commit(d: &Daemon, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let path = d.workspace.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    d.git(&["add", "."]);
    d.git(&["commit", "-q", "-m", message]);
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let synced = d
        .eventually(Duration::from_secs(5), |d| {
            let status = d.app.syncer.status();
            status.last_sync.and_then(|s| s.commit).as_deref() == Some(head.as_str())
        })
        .await;
    assert!(synced.is_some(), "{head} was not synced");
    head
}

async fn committed_prompts_are_listed_told_and_filled(mode: &str) {
    let d = Daemon::start().await;
    let mut client = connect(&d, mode).await;

    // The template's prompt, with its arguments.
    let prompts = list(&mut client).await;
    assert_eq!(
        prompts,
        json!({"review-file": prompts["review-file"].clone()})
    );
    let review = &prompts["review-file"];
    assert!(!review["description"].as_str().unwrap().is_empty());
    assert_eq!(review["arguments"][0]["name"], json!("path"));
    assert_eq!(review["arguments"][0]["required"], json!(true));
    assert_eq!(review["arguments"][1]["name"], json!("focus"));
    assert_eq!(review["arguments"][1]["required"], json!(false));

    // Filled: the placeholders hold the arguments.
    let got = get(
        &mut client,
        "review-file",
        json!({"path": "scripts/hello.sh", "focus": "quoting"}),
    )
    .await;
    let text = text_of(&got);
    assert!(
        text.contains("Review the file `scripts/hello.sh`"),
        "{text}"
    );
    assert!(text.contains("readFile"), "{text}");
    assert!(text.ends_with("how you would test it."), "{text}");
    assert!(text.contains("review evenly): quoting\n"), "{text}");
    assert_eq!(got["result"]["description"], review["description"]);
    // Refused, naming what is wrong: a required argument left out, an
    // argument the prompt does not take, a prompt that does not exist.
    for (name, arguments, says) in [
        (
            "review-file",
            json!({"focus": "tests"}),
            "the argument `path` is required",
        ),
        (
            "review-file",
            json!({"path": "a", "colour": "red"}),
            "`colour` is not an argument",
        ),
        (
            "no-such-prompt",
            json!({}),
            "no prompt named `no-such-prompt`",
        ),
    ] {
        let got = get(&mut client, name, arguments).await;
        assert_eq!(got["error"]["code"], json!(INVALID_PARAMS), "{got}");
        let message = got["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{got}");
    }

    // A human commits a prompt: the client is told, lists it and fills it.
    commit(&d, &[("prompts/explain.md", EXPLAIN)], "Add explain").await;
    client.send(json!({"do": "wait"})).await;
    let changed = client.step("changed").await;
    let how = if mode == "legacy" {
        "notification"
    } else {
        "subscriptions/listen"
    };
    assert_eq!(changed["how"], json!(how));
    let prompts = list(&mut client).await;
    assert!(prompts.get("explain").is_some(), "{prompts}");
    assert_eq!(
        prompts["explain"]["description"],
        json!("Explain a folder to a newcomer.")
    );
    let got = get(&mut client, "explain", json!({"dir": "scripts"})).await;
    assert_eq!(
        text_of(&got),
        "Explain what `scripts` holds, file by file. Literal braces: {dir}."
    );
    quit(client).await;
    assert_eq!(d.get("/status").await.json["counts"]["prompts"], json!(2));
}

#[tokio::test]
async fn a_committed_prompt_is_listed_told_and_filled_in_a_legacy_session() {
    committed_prompts_are_listed_told_and_filled("legacy").await;
}

#[tokio::test]
async fn a_committed_prompt_is_listed_told_and_filled_in_2026_07_28() {
    committed_prompts_are_listed_told_and_filled("2026-07-28").await;
}

#[tokio::test]
async fn prompts_are_read_a_token_without_the_read_scope_sees_none() {
    let d = Daemon::start().await;
    d.grant_reader("runner-secret", "run").await;
    let mut client = connect_as(&d, "runner-secret", "legacy").await;
    assert_eq!(list(&mut client).await, json!({}));
    let got = get(&mut client, "review-file", json!({"path": "a"})).await;
    assert_eq!(got["result"], Value::Null, "{got}");
    assert!(
        got["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`read` scope"),
        "{got}"
    );
    quit(client).await;
}

/// A prompt with an unknown key (line 4) and a placeholder no argument
/// declares (line 6, column 11).
const BAD: &str = "---\nname: bad\ndescription: Broken.\ncolour: red\n---\nLook at {path}.\n";

#[tokio::test]
async fn an_invalid_prompt_is_refused_where_it_stands_and_the_last_good_prompts_stay() {
    let d = Daemon::start().await;
    let good = commit(&d, &[("prompts/explain.md", EXPLAIN)], "Add explain").await;
    assert_eq!(d.served(), good);
    let mut client = connect(&d, "legacy").await;

    // One commit breaks a prompt and changes another: neither is served.
    let changed = EXPLAIN.replace("to a newcomer", "to anyone");
    let bad = commit(
        &d,
        &[("prompts/bad.md", BAD), ("prompts/explain.md", &changed)],
        "Break a prompt",
    )
    .await;
    assert_eq!(d.served(), good, "the last good commit stays");
    let status = d.get("/status").await.json;
    assert_eq!(status["last_error"]["commit"], json!(bad), "{status}");
    let problems: Vec<String> = status["last_error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}: {}",
                p["file"].as_str().unwrap(),
                p["line"],
                p["column"],
                p["message"].as_str().unwrap()
            )
        })
        .collect();
    let expected = [
        "prompts/bad.md:4:1: `colour` is not a key of a prompt's front matter; write one of `name`, `description`, `arguments`",
        "prompts/bad.md:6:9: `{path}` is not an argument of this prompt; declare it under `arguments:`, or write `{{path}}` for the text `{path}`",
    ];
    assert_eq!(problems, expected, "{status}");
    assert_eq!(status["counts"]["prompts"], json!(2));
    let prompts = list(&mut client).await;
    assert!(prompts.get("bad").is_none(), "{prompts}");
    assert_eq!(
        prompts["explain"]["description"],
        json!("Explain a folder to a newcomer."),
        "the last good prompt stays"
    );
    quit(client).await;

    // `dynapi check` on the checkout says the same, line for line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynapi"))
        .arg("check")
        .arg(&d.workspace)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");

    // A write through the API that would add one is refused, as a manifest's is.
    let a = d
        .put(
            "/files/prompts/worse.md",
            json!({"content": BAD.replace("name: bad", "name: worse")}),
        )
        .await;
    assert_eq!(a.status, 422, "{}", a.json);
    assert!(
        a.json.to_string().contains("prompts/worse.md"),
        "{}",
        a.json
    );
    assert!(!d.workspace.join("prompts/worse.md").exists());
}

async fn a_pull_requests_prompt_is_served_after_the_merge(mode: &str) {
    let (gh, d) = github::start(Duration::from_secs(600)).await;
    let mut client = connect(&d, mode).await;
    assert!(list(&mut client).await.get("explain").is_none());

    // A pull request adds a broken prompt: its check fails, naming the file.
    git(&gh.bare, &["branch", "prompts", BRANCH]);
    let broken = gh.push(
        "prompts",
        &[("prompts/explain.md", &EXPLAIN.replace("{dir}", "{folder}"))],
        "Add explain",
    );
    let number = gh.open_pull("prompts", &broken, BRANCH);
    let status = github::check_pull(&gh, &d, "opened", number, &broken).await;
    assert_eq!(status.state, "failure");
    assert_eq!(status.context, "dynapi/manifests");
    assert!(
        status
            .description
            .contains("prompts/explain.md:9:15: `{folder}`"),
        "{}",
        status.description
    );
    // Fixed: its check passes, and nothing is served yet.
    let fixed = gh.push("prompts", &[("prompts/explain.md", EXPLAIN)], "Fix explain");
    let status = github::check_pull(&gh, &d, "synchronize", number, &fixed).await;
    assert_eq!(status.state, "success", "{}", status.description);
    assert!(
        list(&mut client).await.get("explain").is_none(),
        "listed before the merge"
    );
    client.send(json!({"do": "pending"})).await;
    assert_eq!(client.step("pending").await["count"], json!(0));

    // Merged: the push to the default branch serves it, and clients are told.
    let merge = gh.merge_pull(number);
    assert_eq!(
        github::webhook(&d, "push", &github::fixture("push.4")).await,
        202
    );
    assert!(d
        .eventually(Duration::from_secs(5), |d| d.served() == merge)
        .await
        .is_some());
    client.send(json!({"do": "wait"})).await;
    client.step("changed").await;
    let prompts = list(&mut client).await;
    assert!(prompts.get("explain").is_some(), "{prompts}");
    let got = get(&mut client, "explain", json!({"dir": "src"})).await;
    assert!(text_of(&got).starts_with("Explain what `src` holds"));
    quit(client).await;
}

#[tokio::test]
async fn a_prompt_from_a_pull_request_is_listed_only_after_the_merge_in_a_legacy_session() {
    a_pull_requests_prompt_is_served_after_the_merge("legacy").await;
}

#[tokio::test]
async fn a_prompt_from_a_pull_request_is_listed_only_after_the_merge_in_2026_07_28() {
    a_pull_requests_prompt_is_served_after_the_merge("2026-07-28").await;
}
