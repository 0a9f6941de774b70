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

    /// tests/mcp/`name` with `args`.
    pub(crate) fn script(name: &str, args: &[String]) -> Client {
        let python = std::env::var("DYNAPI_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = format!("{}/tests/mcp/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new(&python)
            .arg(&script)
            .args(args)
            // The scripts import each other: no __pycache__ in the source tree.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{python} runs {script}: {e}"));
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
            panic!("the MCP client ended before `{step}`:\n{out}\n(it needs PyPI's mcp==2.3.0; .ci/run installs it)");
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
