//! MCP at /mcp, driven by a real client (the official Python SDK, PyPI `mcp`,
//! running tests/mcp/client.py) in both protocol revisions: every built-in
//! operation and every endpoint is a tool with an input schema; calls answer
//! structured content (errors as `isError` with dynapi's error object); an
//! endpoint added through the addEndpoint tool, and one a human commits, arrive
//! as `tools/list_changed` and show in the next tools/list. A foreign `Host` is
//! refused; a token with fewer scopes sees and may call only its tools. (Without
//! a token /mcp is 401: `security::routes_need_a_valid_token_...`.)

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::mcp_boundaries::Session;
use crate::support::{Daemon, TOKEN};

/// A client script of tests/mcp, running, and its output lines.
pub(crate) struct Client {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// For the scripts that take commands (tests/mcp/prompts.py).
    stdin: ChildStdin,
}

impl Client {
    /// tests/mcp/client.py against `d`'s /mcp as `token`.
    fn start(d: &Daemon, token: &str, args: &[&str]) -> Client {
        let mut all = vec![format!("{}/mcp", d.url), token.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Client::script("client.py", &all)
    }

    /// tests/mcp/`name` with `args`: Python's SDK for a `.py`, the TypeScript
    /// SDK under Node.js for a `.mjs` (tests/run installs both).
    pub(crate) fn script(name: &str, args: &[String]) -> Client {
        let python = std::env::var("DYNAPI_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let runner = if name.ends_with(".mjs") {
            "node".to_string()
        } else {
            python
        };
        let script = format!("{}/tests/mcp/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(&runner)
            .arg(&script)
            .args(args)
            // The scripts import each other: no __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{runner} runs {script}: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stdin = child.stdin.take().unwrap();
        Client {
            child,
            lines,
            stdin,
        }
    }

    /// Sends the script one command, a line of JSON.
    pub(crate) async fn send(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next step the client prints; its `step` must be `step`.
    pub(crate) async fn step(&mut self, step: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no `{step}` from the MCP client within 60 s"))
            .unwrap();
        let Some(line) = line else {
            let out = stderr_of(&mut self.child).await;
            panic!("the MCP client ended before `{step}`:\n{out}\n(it needs PyPI's mcp==2.3.0 and npm's @modelcontextprotocol/sdk; tests/run installs them)");
        };
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["step"], json!(step), "{value}");
        value
    }

    /// Waits for the client to exit and checks it succeeded.
    pub(crate) async fn finish(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the MCP client exits")
            .unwrap();
        if !status.success() {
            panic!(
                "the MCP client failed:\n{}",
                stderr_of(&mut self.child).await
            );
        }
    }
}

/// What `child` wrote on stderr (it is stopped first if still running).
async fn stderr_of(child: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err).await;
    }
    err
}

/// The built-in operations that must be tools: the catalogue's, less the few
/// that make no sense to a model (health, the documents, raw downloads).
fn builtin_tools() -> BTreeSet<String> {
    dynapi::http::catalog::operations()
        .iter()
        .map(|op| op.id.to_string())
        .filter(|id| !dynapi::http::mcp::NOT_TOOLS.contains(&id.as_str()))
        .collect()
}

fn names(tools: &Value) -> BTreeSet<String> {
    tools.as_object().unwrap().keys().cloned().collect()
}

/// A tool result's structured content, checking it is (or is not) an error.
fn content(result: &Value, is_error: bool) -> &Value {
    assert_eq!(result["is_error"], json!(is_error), "{result}");
    // The same JSON is also the text content, for clients that read only text.
    let text: Value = serde_json::from_str(result["text"][0].as_str().unwrap()).unwrap();
    assert_eq!(text, result["structured"]);
    &result["structured"]
}

async fn a_session(mode: &str) {
    let d = Daemon::start().await;
    let mut client = Client::start(&d, TOKEN, &[mode]);

    let connected = client.step("connected").await;
    if mode == "legacy" {
        assert_ne!(connected["protocol"], json!("2026-07-28"));
        assert_eq!(connected["server"], json!("dynapi"));
    } else {
        assert_eq!(connected["protocol"], json!(mode));
    }
    let tools = &connected["tools"];
    let listed = names(tools);
    let mut expected = builtin_tools();
    expected.extend(["hello", "count-lines", "run-sql"].map(String::from));
    assert_eq!(listed, expected);
    for (name, tool) in tools.as_object().unwrap() {
        assert_eq!(tool["inputSchema"]["type"], json!("object"), "{name}");
        assert!(!tool["description"].as_str().unwrap().is_empty(), "{name}");
    }
    assert_eq!(
        tools["hello"]["inputSchema"]["properties"]["name"]["type"],
        json!("string")
    );
    assert_eq!(
        tools["readFile"]["annotations"]["readOnlyHint"],
        json!(true)
    );
    assert_eq!(
        tools["deleteFile"]["annotations"]["destructiveHint"],
        json!(true)
    );
    assert!(tools["writeFile"]["inputSchema"]["required"]
        .as_array()
        .unwrap()
        .contains(&json!("path")));

    let called = client.step("called").await;
    assert_eq!(
        content(&called["hello"], false)["output"],
        json!("Hello, Ada!\n")
    );
    let write = content(&called["write"], false);
    assert_eq!(write["committed"], json!(true));
    assert_eq!(
        d.git(&["log", "-1", "--format=%H %s"]).trim(),
        format!("{} Note from MCP", write["commit"].as_str().unwrap())
    );
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("notes/from mcp.md")).unwrap(),
        "hi from MCP\n"
    );
    let read = content(&called["read"], false);
    assert_eq!(read["content"], json!("hi from MCP\n"));
    assert_eq!(read["etag"], write["etag"]);
    assert_eq!(
        content(&called["missing"], true)["error"]["code"],
        json!("not_found")
    );
    assert_eq!(
        content(&called["bad_argument"], true)["error"]["code"],
        json!("bad_request")
    );
    assert_eq!(content(&called["sql"], false)["rows"], json!([[2]]));

    // The assistant adds an endpoint through a tool: told, listed, callable.
    let added = client.step("added").await;
    content(&added["add"], false);
    assert_eq!(
        d.git(&["log", "-1", "--format=%s"]).trim(),
        "Add shout through MCP"
    );
    assert!(names(&added["tools"]).contains("shout"));
    assert_eq!(
        added["tools"]["shout"]["inputSchema"]["required"],
        json!(["word"])
    );
    assert_eq!(content(&added["shout"], false)["output"], json!("HEY\n"));

    // A human commits one: told again.
    client.step("ready").await;
    std::fs::write(
        d.workspace.join("manifests/whisper.yaml"),
        "name: whisper\ndescription: Lower-case a word.\nmethod: POST\npath: /whisper\n\
         script: scripts/whisper.sh\nargs: ['{word}']\nparams:\n  word: {type: string, required: true}\n",
    )
    .unwrap();
    let script = d.workspace.join("scripts/whisper.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"$1\" | tr A-Z a-z\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    d.git(&["add", "."]);
    d.git(&["commit", "-q", "-m", "Add whisper"]);
    let human = client.step("human").await;
    assert!(names(&human["tools"]).contains("whisper"));
    assert_eq!(content(&human["result"], false)["output"], json!("hey\n"));
    client.finish().await;
}

#[tokio::test]
async fn an_mcp_client_sees_calls_and_is_told_of_new_tools_in_a_legacy_session() {
    a_session("legacy").await;
}

#[tokio::test]
async fn an_mcp_client_sees_calls_and_is_told_of_new_tools_in_2026_07_28() {
    a_session("2026-07-28").await;
}

#[tokio::test]
async fn mcp_refuses_foreign_hosts_and_shows_a_reader_only_what_it_may_do() {
    let d = Daemon::start().await;
    // A Host the daemon does not answer to (DNS rebinding): refused, in the
    // JSON error shape.
    let a = d
        .client
        .post(format!("{}/mcp", d.url))
        .bearer_auth(TOKEN)
        .header("host", "rebound.example")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 403);
    let body: Value = a.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("forbidden"), "{body}");

    d.grant_reader("reader-secret", "read, run").await;
    let mut client = Client::start(&d, "reader-secret", &["legacy", "readonly"]);
    let tools = names(&client.step("connected").await["tools"]);
    for read in [
        "readFile",
        "listFiles",
        "search",
        "hello",
        "run-sql",
        "getJob",
    ] {
        assert!(tools.contains(read), "{read} missing from {tools:?}");
    }
    for write in ["writeFile", "addEndpoint", "revert", "deleteFile", "sync"] {
        assert!(!tools.contains(write), "{write} shown to a reader");
    }
    // Calling one anyway is refused by the route, as over plain HTTP.
    let write = client.step("write").await;
    assert_eq!(
        content(&write["result"], true)["error"]["code"],
        json!("forbidden")
    );
    client.finish().await;
    assert!(!d.workspace.join("x.md").exists());
}

/// The project's files as resources, in one protocol revision: listed in
/// pages (ignored secrets and `.git` left out), read as text or base64, read as
/// of a commit, refused outside the workspace; a human's commit of a
/// subscribed file is told as `resources/updated`, a file added as
/// `list_changed`.
async fn resources(script: &str, mode: &str) {
    let d = Daemon::start().await;
    let many: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| (format!("many/{i:03}.txt"), format!("{i}\n").into_bytes()))
        .collect();
    let mut files: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    files.extend([
        ("notes.md", b"first\n".as_slice()),
        ("data/logo.bin", b"\x89PNG\x00\xff\x01"),
        ("docs/a b.md", b"spaced\n"),
        (".gitignore", b".env\n"),
    ]);
    let first = d.human_commit(&files, "Notes and data").await;
    d.human_commit(&[("notes.md", b"second\n")], "Second notes")
        .await;
    // A secret the repository ignores, and a file beside the workspace.
    std::fs::write(d.workspace.join(".env"), "TOKEN=hunter2\n").unwrap();
    std::fs::write(d.workspace.parent().unwrap().join("outside.txt"), "out\n").unwrap();

    let mut client = Client::script(
        script,
        &[
            format!("{}/mcp", d.url),
            TOKEN.into(),
            mode.into(),
            first.clone(),
        ],
    );
    let listed = client.step("listed").await;
    let uris: Vec<&str> = listed["uris"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        listed["pages"].as_u64().unwrap() >= 2,
        "{}",
        listed["pages"]
    );
    let mut sorted = uris.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, uris, "every file once, by path, across pages");
    for uri in [
        "dynapi://files/notes.md",
        "dynapi://files/many/000.txt",
        "dynapi://files/many/599.txt",
        "dynapi://files/docs/a%20b.md",
        "dynapi://files/manifests/hello.yaml",
    ] {
        assert!(uris.contains(&uri), "{uri} not listed");
    }
    assert_eq!(uris.iter().filter(|u| u.contains("/many/")).count(), 600);
    assert!(!uris
        .iter()
        .any(|u| u.contains(".env") || u.contains(".git/")));
    assert_eq!(
        listed["templates"],
        json!([
            "dynapi://files/{+path}",
            "dynapi://commits/{commit}/files/{+path}"
        ])
    );

    let read = client.step("read").await;
    assert_eq!(read["notes"][0]["text"], json!("second\n"), "{read}");
    assert_eq!(read["notes"][0]["uri"], json!("dynapi://files/notes.md"));
    assert_eq!(read["spaced"][0]["text"], json!("spaced\n"), "{read}");
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(read["binary"][0]["blob"].as_str().unwrap())
        .unwrap();
    assert_eq!(blob, b"\x89PNG\x00\xff\x01");
    assert_eq!(read["at_commit"][0]["text"], json!("first\n"), "{read}");
    // Not found is -32002 before 2026-07-28, which makes it invalid params
    // (-32602) like a URI or path the server refuses.
    let not_found = if mode == "legacy" { -32002 } else { -32602 };
    for (name, code) in [
        ("ignored", not_found),
        ("missing", not_found),
        ("escape", -32602),
        ("git", -32602),
        ("foreign", -32602),
        ("folder", not_found),
    ] {
        assert_eq!(read[name]["error"]["code"], json!(code), "{name}: {read}");
    }
    assert!(!read.to_string().contains("hunter2"));
    assert!(!read.to_string().contains("out\\n"));

    // Completion of a template's path and commit, and a prompt's path: by
    // prefix, confined, ignored files and .git left out, at most 100.
    let completed = client.step("completed").await;
    let values = |name: &str| completed[name]["values"].clone();
    assert_eq!(values("folder"), json!(["docs/"]), "{completed}");
    assert_eq!(values("in_folder"), json!(["docs/a b.md"]));
    assert_eq!(completed["many"]["values"].as_array().unwrap().len(), 100);
    assert_eq!(completed["many"]["values"][0], json!("many/000.txt"));
    assert_eq!(completed["many"]["has_more"], json!(true));
    assert_eq!(values("secret"), json!([]));
    assert_eq!(values("dot"), json!([".gitignore"]));
    assert_eq!(values("escape"), json!([]));
    let commit = values("commit");
    assert!(
        commit.as_array().unwrap().contains(&json!(first[..7])),
        "{completed}"
    );
    assert_eq!(values("prompt"), json!(["scripts/hello.sh"]));
    assert_eq!(values("not_a_path"), json!([]));

    client.step("ready").await;
    d.human_commit(
        &[("notes.md", b"third\n"), ("new.md", b"new\n")],
        "Third notes, and a new file",
    )
    .await;
    let updated = client.step("updated").await;
    assert_eq!(updated["uris"], json!(["dynapi://files/notes.md"]));
    assert_eq!(updated["list_changed"], json!(true));
    assert_eq!(updated["text"], json!("third\n"));
    client.finish().await;

    // Resources need the read scope, as GET /files does.
    d.grant_reader("runner-secret", "run").await;
    let mut client = Client::script(
        script,
        &[
            format!("{}/mcp", d.url),
            "runner-secret".into(),
            mode.into(),
            "0000000".into(),
            "noread".into(),
        ],
    );
    let refused = client.step("refused").await;
    assert!(
        refused["list"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`read` scope"),
        "{refused}"
    );
    assert!(refused["read"]["error"].is_object(), "{refused}");
    client.finish().await;
}

#[tokio::test]
async fn the_project_is_resources_and_a_human_commit_is_told_in_a_legacy_session() {
    resources("resources.py", "legacy").await;
}

#[tokio::test]
async fn the_project_is_resources_to_the_typescript_sdk_too() {
    resources("resources.mjs", "legacy").await;
}

#[tokio::test]
async fn the_project_is_resources_and_a_human_commit_is_told_in_2026_07_28() {
    resources("resources.py", "2026-07-28").await;
}

/// A long tool call, in one protocol revision: a client that sent a
/// progress token hears of each line the script prints while it runs (and of
/// its stderr lines as log messages at `info`), and a call it cancels leaves
/// no process behind.
async fn long_runs(script: &str, mode: &str) {
    let d = Daemon::start_with(|c| c.job_after = Duration::from_secs(12)).await;
    d.add_endpoint(
        "ticker",
        "",
        "#!/bin/sh\ni=1\nwhile [ $i -le 10 ]; do echo \"line $i\"; echo \"err $i\" >&2; i=$((i+1)); sleep 1; done\n",
    )
    .await;
    d.add_endpoint(
        "forever",
        "",
        "#!/bin/sh\nsleep 300 &\necho \"pid $$ pid $!\"\nwait\n",
    )
    .await;
    d.add_endpoint("sleepy", "", "#!/bin/sh\nsleep 20\necho awake\n")
        .await;
    let schema = "output: json\noutput_schema:\n  type: object\n  properties:\n    \
                  city: {type: string}\n    temp: {type: number}\n  required: [city, temp]\n";
    d.add_endpoint(
        "weather",
        schema,
        "#!/bin/sh\necho '{\"city\": \"Oslo\", \"temp\": -3.5}'\n",
    )
    .await;
    d.add_endpoint("broken", schema, "#!/bin/sh\necho '{\"city\": \"Oslo\"}'\n")
        .await;
    let mut client = Client::script(
        script,
        &[format!("{}/mcp", d.url), TOKEN.into(), mode.into()],
    );

    let ticked = client.step("ticked").await;
    assert_eq!(ticked["result"]["is_error"], json!(false), "{ticked}");
    assert!(ticked["result"]["structured"]["output"]
        .as_str()
        .unwrap()
        .ends_with("line 10\n"));
    let progress = ticked["progress"].as_array().unwrap();
    assert!(progress.len() >= 5, "{ticked}");
    let values: Vec<f64> = progress
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
    let said: String = progress
        .iter()
        .map(|p| p["message"].as_str().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    for i in 1..=10 {
        assert!(
            said.contains(&format!("line {i}\n")) || said.ends_with(&format!("line {i}")),
            "line {i} never told: {said}"
        );
    }
    // Told as it went, not all at the end: the first line came in an early message.
    assert!(progress[..progress.len() - 3]
        .iter()
        .any(|p| p["message"].as_str().unwrap_or_default().contains("line 1")));
    let logs = ticked["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l["data"] == json!("err 3")
            && l["level"] == json!("info")
            && l["logger"] == json!("ticker")),
        "{ticked}"
    );

    let cancelled = client.step("cancelled").await;
    let pids: Vec<u64> = cancelled["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{cancelled}");
    let gone = d
        .eventually(Duration::from_secs(10), |_| {
            pids.iter()
                .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .await;
    assert!(
        gone.is_some(),
        "the cancelled call's processes {pids:?} are still there"
    );

    // A run that outlives --job-after says it became a job, and getJob reads it.
    let jobbed = client.step("jobbed").await;
    let result = &jobbed["result"]["structured"];
    assert_eq!(result["state"], json!("running"), "{jobbed}");
    assert!(result["message"].as_str().unwrap().contains("getJob"));
    assert_eq!(
        jobbed["job"]["structured"]["state"],
        json!("running"),
        "{jobbed}"
    );

    // An endpoint whose manifest gives an output_schema: the tool lists it as
    // its outputSchema and answers the script's JSON as structured content
    // (the SDK checks it against the schema); output missing a required field
    // is an error result that says so.
    let structured = client.step("structured").await;
    assert_eq!(
        structured["schema"]["required"],
        json!(["city", "temp"]),
        "{structured}"
    );
    assert_eq!(
        structured["weather"],
        json!({"is_error": false, "structured": {"city": "Oslo", "temp": -3.5}})
    );
    assert_eq!(
        structured["broken"]["is_error"],
        json!(true),
        "{structured}"
    );
    assert!(structured["broken"]["text"][0]
        .as_str()
        .unwrap()
        .contains("without temp"));
    client.finish().await;
}

#[tokio::test]
async fn a_long_tool_call_tells_its_progress_and_dies_when_cancelled_in_a_legacy_session() {
    long_runs("progress.py", "legacy").await;
}

#[tokio::test]
async fn a_long_tool_call_tells_its_progress_to_the_typescript_sdk_too() {
    long_runs("progress.mjs", "legacy").await;
}

#[tokio::test]
async fn a_long_tool_call_tells_its_progress_and_dies_when_cancelled_in_2026_07_28() {
    long_runs("progress.py", "2026-07-28").await;
}

/// One `tools/call` sent as raw HTTP: the status, the `Content-Type`, and the
/// JSON-RPC message (from the event stream when rmcp answers with one).
async fn raw_call(
    d: &Daemon,
    token: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, String, Value) {
    let mut request = d.client.post(format!("{}/mcp", d.url)).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.json(body).send().await.unwrap();
    let status = answer.status().as_u16();
    let kind = answer
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = answer.text().await.unwrap();
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .find(|data| !data.is_empty())
        .unwrap_or(&text);
    let message = serde_json::from_str(json).unwrap_or_else(|_| json!(text));
    (status, kind, message)
}

/// The message with its result's text read as JSON where it is JSON: the lane
/// writes a route's object with the route's key order, rmcp's path sorts it.
fn text_as_json(mut message: Value) -> Value {
    if let Some(text) = message.pointer_mut("/result/content/0/text") {
        if let Some(json) = text.as_str().and_then(|t| serde_json::from_str(t).ok()) {
            *text = json;
        }
    }
    message
}

/// A read-only built-in tool call takes a fast lane past rmcp's per-request
/// machinery (`http::lane`); what a client gets must not change. The same
/// calls, in a 2025-06-18 session and stateless, answered by the lane and by
/// rmcp (a weighted `Accept`, which the lane leaves to rmcp), give the same
/// JSON-RPC message: a file, a missing file, an argument the route refuses.
/// In a session the lane answers plain JSON where rmcp streams. A browser's
/// request (with an `Origin`) is left to rmcp. The route still judges the
/// token's scopes, and a call the lane cannot take is refused by rmcp as
/// before (an unknown session, headers that contradict the body).
#[tokio::test]
async fn a_read_over_mcp_answers_the_same_through_the_fast_lane() {
    let d = Daemon::start().await;
    let lane = "application/json, text/event-stream";
    let rmcp = "application/json;q=1, text/event-stream;q=1";
    let session = Session::open(&d, TOKEN).await.id;
    let stateless_meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let call = |name: &str, args: Value, stateless: bool| {
        let mut params = json!({"name": name, "arguments": args});
        if stateless {
            params["_meta"] = stateless_meta.clone();
        }
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params})
    };
    let cases = [
        ("readFile", json!({"path": "manifests/hello.yaml"}), false),
        ("readFile", json!({"path": "nope.txt"}), true),
        ("listFiles", json!({"depth": "deep"}), true),
    ];
    for (name, args, is_error) in cases {
        for stateless in [false, true] {
            let headers = |accept: &'static str| -> Vec<(&'static str, String)> {
                let mut h = vec![("accept", accept.to_string())];
                if stateless {
                    h.push(("mcp-protocol-version", "2026-07-28".into()));
                    h.push(("mcp-method", "tools/call".into()));
                    h.push(("mcp-name", name.to_string()));
                } else {
                    h.push(("mcp-protocol-version", "2025-06-18".into()));
                    h.push(("mcp-session-id", session.clone()));
                }
                h
            };
            let send = |accept| {
                let h = headers(accept);
                let body = call(name, args.clone(), stateless);
                let d = &d;
                async move {
                    let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
                    raw_call(d, TOKEN, &h, &body).await
                }
            };
            let (fast_status, fast_kind, fast) = send(lane).await;
            let (slow_status, slow_kind, slow) = send(rmcp).await;
            let case = format!("{name} {args} stateless={stateless}");
            assert_eq!((fast_status, slow_status), (200, 200), "{case}");
            assert_eq!(
                text_as_json(fast.clone()),
                text_as_json(slow),
                "{case}: the lane and rmcp differ"
            );
            assert_eq!(fast["result"]["isError"], json!(is_error), "{case}: {fast}");
            assert!(
                fast_kind.starts_with("application/json"),
                "{case}: {fast_kind}"
            );
            if !stateless {
                assert!(
                    slow_kind.starts_with("text/event-stream"),
                    "{case}: {slow_kind}"
                );
                assert!(fast["result"].get("resultType").is_none(), "{case}: {fast}");
            } else {
                assert_eq!(fast["result"]["resultType"], json!("complete"), "{case}");
            }
        }
    }

    // A browser's request (it has an `Origin`) is rmcp's to judge.
    let browser = [
        ("accept", lane),
        ("mcp-protocol-version", "2025-06-18"),
        ("mcp-session-id", session.as_str()),
        ("origin", "http://localhost"),
    ];
    let body = call("readFile", json!({"path": "manifests/hello.yaml"}), false);
    let (_, kind, _) = raw_call(&d, TOKEN, &browser, &body).await;
    assert!(kind.starts_with("text/event-stream"), "{kind}");

    // The route judges the scopes: a token that may run but not read.
    d.grant_reader("runner-secret", "run").await;
    let h = [
        ("accept", lane),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "readFile"),
    ];
    let body = call("readFile", json!({"path": "manifests/hello.yaml"}), true);
    let (status, _, refused) = raw_call(&d, "runner-secret", &h, &body).await;
    assert_eq!(status, 200);
    assert_eq!(refused["result"]["isError"], json!(true), "{refused}");
    assert_eq!(
        refused["result"]["structuredContent"]["error"]["code"],
        json!("forbidden"),
        "{refused}"
    );

    // What the lane cannot take, rmcp refuses as before.
    let named_else = [
        ("accept", lane),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "listFiles"),
    ];
    let (status, _, mismatch) = raw_call(&d, TOKEN, &named_else, &body).await;
    assert_eq!(status, 400, "{mismatch}");
    assert!(mismatch["error"].is_object(), "{mismatch}");
    let gone = [
        ("accept", lane),
        ("mcp-protocol-version", "2025-06-18"),
        ("mcp-session-id", "no-such-session"),
    ];
    let body = call("readFile", json!({"path": "manifests/hello.yaml"}), false);
    let (status, _, unknown) = raw_call(&d, TOKEN, &gone, &body).await;
    assert_eq!(status, 404, "{unknown}");
    assert_eq!(unknown["error"]["code"], json!("not_found"), "{unknown}");
}

/// A session whose calls all take the fast lane never reaches rmcp's session
/// task, which ends a session after `--mcp-session-idle` without a message:
/// the lane keeps it alive. With 2 s idle, a session reading for 5 s is still
/// there, and one left alone beside it is gone (404).
#[tokio::test]
async fn a_session_that_only_reads_through_the_fast_lane_stays_alive() {
    let d = Daemon::start_with(|c| c.mcp_session_idle = Duration::from_secs(2)).await;
    let accept = "application/json, text/event-stream";
    let reading = Session::open(&d, TOKEN).await.id;
    let idle = Session::open(&d, TOKEN).await.id;
    let in_session = |session: &str, body: Value| {
        let headers = [
            ("accept", accept.to_string()),
            ("mcp-protocol-version", "2025-06-18".to_string()),
            ("mcp-session-id", session.to_string()),
        ];
        let d = &d;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            raw_call(d, TOKEN, &h, &body).await
        }
    };
    let read = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "readFile", "arguments": {"path": "manifests/hello.yaml"}}});
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let (status, kind, answer) = in_session(&reading, read.clone()).await;
        assert_eq!(status, 200, "{answer}");
        // The lane's answer, not rmcp's stream.
        assert!(kind.starts_with("application/json"), "{kind}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, tools) = in_session(&reading, list.clone()).await;
    assert_eq!(status, 200, "the reading session was ended: {tools}");
    assert!(tools["result"]["tools"].is_array(), "{tools}");
    let (status, _, gone) = in_session(&idle, list).await;
    assert_eq!(status, 404, "the idle session was not ended: {gone}");
}
