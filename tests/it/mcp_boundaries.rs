//! The bounds of MCP resources, long runs and prompts under attack (a fresh
//! reviewer's, issue 22), driven by raw JSON-RPC over HTTP at /mcp (a 2025-06-18
//! session). Each test replays one attack and asserts what the rules promise.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Daemon, TOKEN};

const READER: &str = "reader-secret";

/// One MCP session of the 2025-06-18 revision, by hand.
pub(crate) struct Session<'d> {
    d: &'d Daemon,
    token: String,
    pub(crate) id: String,
    next: u64,
}

/// The JSON-RPC messages of an answer (JSON, or an SSE stream of them).
fn messages(body: &str) -> Vec<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return vec![v];
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|l| serde_json::from_str(l.trim()).ok())
        .collect()
}

impl<'d> Session<'d> {
    pub(crate) async fn open(d: &'d Daemon, token: &str) -> Session<'d> {
        let res = d
            .client
            .post(format!("{}/mcp", d.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "mcp-boundaries", "version": "0"},
                }}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let id = res.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let _ = res.text().await;
        let s = Session {
            d,
            token: token.to_string(),
            id,
            next: 1,
        };
        s.post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        s
    }

    async fn post(&self, message: Value) -> Vec<Value> {
        let res = self
            .d
            .client
            .post(format!("{}/mcp", self.d.url))
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-06-18")
            .json(&message)
            .send()
            .await
            .unwrap();
        messages(&res.text().await.unwrap())
    }

    /// The answer to `method` with `params` (its `result` or `error`).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let answers = self
            .post(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        answers
            .into_iter()
            .find(|m| m["id"] == json!(id))
            .unwrap_or_else(|| panic!("no answer to {method}"))
    }
}

/// (c) + (b): a collaborator commits a symlink `notes/leak.md -> ../.env`
/// (git stores it as a link; a script with a writable folder can make one
/// too). The ignore check looks at the link's own name, which no rule
/// ignores; the read follows the link to `.env`, which the rules promise is
/// never read as a resource.
#[tokio::test]
async fn a_symlink_to_an_ignored_file_does_not_make_it_a_resource() {
    let d = Daemon::start().await;
    d.human_commit(&[(".gitignore", b".env\nsecrets/\n")], "Ignore secrets")
        .await;
    std::fs::write(d.workspace.join(".env"), "API_KEY=hunter2\n").unwrap();
    std::fs::create_dir_all(d.workspace.join("secrets")).unwrap();
    std::fs::write(d.workspace.join("secrets/key.pem"), "PRIVATE\n").unwrap();
    std::fs::create_dir_all(d.workspace.join("notes")).unwrap();
    std::os::unix::fs::symlink("../.env", d.workspace.join("notes/leak.md")).unwrap();
    std::os::unix::fs::symlink("../secrets", d.workspace.join("notes/dir")).unwrap();
    d.git(&["add", "-A"]);
    d.git(&["commit", "-q", "-m", "Links"]);
    d.grant_reader(READER, "read").await;
    let mut s = Session::open(&d, READER).await;

    for uri in [
        "dynapi://files/.env",
        "dynapi://files/secrets/key.pem",
        "dynapi://files/notes/dir/key.pem",
        "dynapi://files/notes/leak.md",
        "dynapi://files/notes/./leak.md",
        "dynapi://files/notes%2Fleak.md",
        "dynapi://files/notes/%2e%2e/.env",
        "dynapi://files/%2e%2e/%2e%2e/etc/passwd",
        "dynapi://files//etc/passwd",
        "dynapi://files/notes/leak.md%00",
        "dynapi://files/.GIT/config",
        "dynapi://files/.git%2Fconfig",
        "dynapi://files/notes\\..\\.env",
        "dynapi://commits/0000/files/.env",
    ] {
        let answer = s.call("resources/read", json!({"uri": uri})).await;
        assert!(
            answer.get("error").is_some() && !answer.to_string().contains("hunter2"),
            "{uri}: {answer}"
        );
    }
    // The file itself, and a folder link, are still read where not ignored.
    std::fs::write(d.workspace.join("notes/ok.md"), "fine\n").unwrap();
    std::os::unix::fs::symlink("ok.md", d.workspace.join("notes/alias.md")).unwrap();
    for uri in [
        "dynapi://files/notes/ok.md",
        "dynapi://files/notes/alias.md",
    ] {
        let answer = s.call("resources/read", json!({"uri": uri})).await;
        assert_eq!(
            answer["result"]["contents"][0]["text"],
            json!("fine\n"),
            "{uri}: {answer}"
        );
    }
    // A folder and a FIFO are no resources (and the FIFO does not block).
    rustix_mkfifo(&d.workspace.join("notes/pipe.md"));
    for uri in ["dynapi://files/notes", "dynapi://files/notes/pipe.md"] {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            s.call("resources/read", json!({"uri": uri})),
        )
        .await
        .expect("a FIFO does not block a read");
        assert_eq!(answer["error"]["code"], json!(-32002), "{uri}: {answer}");
    }
}

fn rustix_mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// (b) + a prompt anyone with `write` may commit: a 60 KB text of `{a}`
/// placeholders (20,000 of them) filled with a 2 KB argument is a 40 MB
/// answer; with the 4 MiB body /mcp takes, terabytes. The filled text must
/// be bounded before it is built.
#[tokio::test]
async fn a_prompt_of_many_placeholders_cannot_multiply_an_argument_into_gigabytes() {
    let d = Daemon::start().await;
    let text = format!(
        "---\nname: boom\ndescription: Many placeholders.\narguments:\n  - name: a\n---\n{}\n",
        "{a}".repeat(20_000)
    );
    d.human_commit(&[("prompts/boom.md", text.as_bytes())], "A prompt")
        .await;
    let mut s = Session::open(&d, TOKEN).await;
    let small = s
        .call(
            "prompts/get",
            json!({"name": "boom", "arguments": {"a": "x"}}),
        )
        .await;
    assert!(small.get("result").is_some(), "{small}");
    let big = s
        .call(
            "prompts/get",
            json!({"name": "boom", "arguments": {"a": "y".repeat(2_000)}}),
        )
        .await;
    assert_eq!(
        big["error"]["code"],
        json!(-32602),
        "{}",
        &big.to_string()[..200.min(big.to_string().len())]
    );
}

impl Session<'_> {
    /// The session's stream of server messages (GET /mcp).
    async fn stream(&self) -> reqwest::Response {
        let res = self
            .d
            .client
            .get(format!("{}/mcp", self.d.url))
            .bearer_auth(&self.token)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &self.id)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        res
    }
}

/// What `stream` says within `wait`, or until it says `until`.
async fn read_for(stream: &mut reqwest::Response, wait: Duration, until: &str) -> String {
    let mut text = String::new();
    let end = tokio::time::Instant::now() + wait;
    while !text.contains(until) {
        match tokio::time::timeout_at(end, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => break,
        }
    }
    text
}

/// (a): a token with only `run` has an MCP session (its tools). Files are
/// told of only to a reader (`listen` checks it); a session's stream must
/// not carry `resources/list_changed` (nor `prompts/list_changed`) either.
#[tokio::test]
async fn a_session_without_read_is_not_told_of_files_or_prompts() {
    let d = Daemon::start().await;
    d.grant_reader("runner-secret", "run").await;
    let reader = Session::open(&d, TOKEN).await;
    let runner = Session::open(&d, "runner-secret").await;
    let mut told_reader = reader.stream().await;
    let mut told_runner = runner.stream().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let prompt = "---\nname: hush\ndescription: A new prompt.\n---\nHello.\n";
    d.human_commit(
        &[
            ("new-file.md", b"x\n"),
            ("prompts/hush.md", prompt.as_bytes()),
        ],
        "A file and a prompt",
    )
    .await;
    let seen = read_for(
        &mut told_reader,
        Duration::from_secs(5),
        "resources/list_changed",
    )
    .await;
    assert!(seen.contains("resources/list_changed"), "{seen}");
    let seen = read_for(&mut told_runner, Duration::from_secs(2), "never").await;
    assert!(!seen.contains("resources/list_changed"), "{seen}");
    assert!(!seen.contains("prompts/list_changed"), "{seen}");
}

/// (b): subscribing one URI again and again fills the daemon's shared 1,000
/// slots, and every other session is then refused any subscription (and the
/// subscriber gets one notification per copy).
#[tokio::test]
async fn one_session_subscribing_one_uri_again_and_again_takes_one_slot() {
    let d = Daemon::start().await;
    let mut greedy = Session::open(&d, TOKEN).await;
    for _ in 0..1_001 {
        let answer = greedy
            .call(
                "resources/subscribe",
                json!({"uri": "dynapi://files/README.md"}),
            )
            .await;
        assert!(answer.get("result").is_some(), "{answer}");
    }
    // Nor can one session take every place with many URIs: 100 a session.
    for i in 0..100 {
        let uri = format!("dynapi://files/many/{i}.md");
        let answer = greedy
            .call("resources/subscribe", json!({ "uri": uri }))
            .await;
        let refused = answer.get("error").is_some();
        // README.md took one of the session's places already.
        assert_eq!(refused, i == 99, "{i}: {answer}");
    }
    let mut other = Session::open(&d, TOKEN).await;
    let answer = other
        .call(
            "resources/subscribe",
            json!({"uri": "dynapi://files/README.md"}),
        )
        .await;
    assert!(answer.get("result").is_some(), "{answer}");
}

/// A session's id is all it takes to use the session. Another token that
/// learns it (from a log, a proxy, a shared screen) must not post into it,
/// call a tool in it, read its stream or end it: to that token the session
/// does not exist. The two tokens share a name, so the session is bound to
/// the token, not to what it is called.
#[tokio::test]
async fn a_session_is_used_only_by_the_token_that_opened_it() {
    let d = Daemon::start().await;
    let (mine, theirs) = ("first-reader-secret", "second-reader-secret");
    let entry = |secret: &str| {
        format!(
            "  - name: reader\n    sha256: {}\n    scopes: [read]\n",
            hex::encode(dynapi::auth::hash_token(secret))
        )
    };
    d.commit_settings(&format!("tokens:\n{}{}", entry(mine), entry(theirs)))
        .await;
    let mut owner = Session::open(&d, mine).await;
    let session = owner.id.clone();
    let by = |token: &str, method: reqwest::Method, message: Option<Value>| {
        let mut request = d
            .client
            .request(method, format!("{}/mcp", d.url))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(message) = message {
            request = request.json(&message);
        }
        request.send()
    };
    let list = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"});
    // A read-only tool call, which the lane would answer without rmcp.
    let read = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "readFile", "arguments": {"path": "README.md"}}});
    for (method, message) in [
        (reqwest::Method::POST, Some(list.clone())),
        (reqwest::Method::POST, Some(read.clone())),
        (reqwest::Method::GET, None),
        (reqwest::Method::DELETE, None),
    ] {
        let res = by(theirs, method.clone(), message).await.unwrap();
        assert_eq!(res.status(), 404, "{method} by another token");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    // The session is whole for its owner, who can still read and end it.
    let tools = owner.call("tools/list", json!({})).await;
    assert!(tools["result"]["tools"].as_array().is_some(), "{tools}");
    let read = by(mine, reqwest::Method::POST, Some(read)).await.unwrap();
    assert_eq!(read.status(), 200);
    assert!(read.text().await.unwrap().contains("\"result\""));
    let end = by(mine, reqwest::Method::DELETE, None).await.unwrap();
    assert_eq!(end.status(), 204);
    // Each token opens sessions of its own.
    Session::open(&d, theirs).await;
}
