//! The file routes: reading (pages, ETags, binary files), writing (one commit per
//! request, If-Match, exact edits, moves, deletes), and paths `.gitignore` ignores.

use serde_json::json;

use crate::support::{Daemon, TOKEN};

/// `git hash-object` of a workspace file: what the ETag must be.
fn hash_object(d: &Daemon, path: &str) -> String {
    d.git(&["hash-object", path]).trim().to_string()
}

#[tokio::test]
async fn every_write_is_one_commit_by_the_api_with_the_right_mode() {
    let d = Daemon::start().await;
    let start = d.commits();

    let a = d
        .put(
            "/files/notes/todo.md",
            json!({"content": "- write tests\n- ship\n", "message": "Plan the week"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["committed"], json!(true));
    assert_eq!(d.commits(), start + 1);
    assert_eq!(
        a.json["commit"],
        json!(d.git(&["rev-parse", "HEAD"]).trim())
    );
    assert_eq!(d.git(&["log", "-1", "--format=%s"]).trim(), "Plan the week");
    assert_eq!(
        d.git(&["log", "-1", "--format=%an"]).trim(),
        "env via dynapi"
    );
    assert_eq!(a.json["etag"], json!(hash_object(&d, "notes/todo.md")));
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("notes/todo.md")).unwrap(),
        "- write tests\n- ship\n"
    );
    // The working tree and the index agree with the commit.
    assert_eq!(d.git(&["status", "--porcelain"]), "");

    // Executable files are committed as 100755, and replacing keeps the mode.
    let a = d
        .put(
            "/files/tools/build.sh",
            json!({"content": "#!/bin/sh\necho built\n", "executable": true}),
        )
        .await;
    assert_eq!(a.status, 201);
    let a = d
        .put(
            "/files/tools/build.sh",
            json!({"content": "#!/bin/sh\necho rebuilt\n"}),
        )
        .await;
    assert_eq!(a.status, 200);
    assert!(d
        .git(&["ls-tree", "HEAD", "tools/build.sh"])
        .starts_with("100755 "));
    assert!(d
        .git(&["ls-tree", "HEAD", "notes/todo.md"])
        .starts_with("100644 "));
    assert_eq!(d.commits(), start + 3);

    // Writing the same content again changes nothing and commits nothing.
    let a = d
        .put(
            "/files/tools/build.sh",
            json!({"content": "#!/bin/sh\necho rebuilt\n"}),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["changed"], json!(false));
    assert_eq!(d.commits(), start + 3);

    // Move, then delete: one commit each, with clear default messages.
    let a = d
        .post(
            "/files/move",
            json!({"from": "notes/todo.md", "to": "docs/todo.md"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(
        !d.workspace.join("notes").exists(),
        "an emptied folder goes"
    );
    assert_eq!(
        d.git(&["log", "-1", "--format=%s"]).trim(),
        "Move notes/todo.md to docs/todo.md"
    );
    let a = d.delete("/files/docs/todo.md").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["deleted"], json!(true));
    assert!(!d.workspace.join("docs/todo.md").exists());
    assert_eq!(d.commits(), start + 5);
    assert_eq!(d.git(&["status", "--porcelain"]), "");

    // Missing files are 404, folders are not files.
    assert_eq!(d.delete("/files/docs/todo.md").await.status, 404);
    assert_eq!(d.get("/files/nothing/here.txt").await.status, 404);
    let a = d.delete("/files/scripts").await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json["error"]["code"], json!("is_a_folder"));
    let a = d.put("/files/scripts", json!({"content": "x"})).await;
    assert_eq!(a.status, 409, "{}", a.json);
    let a = d
        .put("/files/tools/build.sh/inner", json!({"content": "x"}))
        .await;
    assert_eq!(a.status, 409, "{}", a.json);
    let a = d
        .post(
            "/files/move",
            json!({"from": "tools/build.sh", "to": "scripts/sample_script.sh"}),
        )
        .await;
    assert_eq!(
        a.status, 409,
        "moving onto an existing file needs overwrite"
    );
    assert_eq!(d.commits(), start + 5);
}

#[tokio::test]
async fn exact_edits_apply_together_or_not_at_all() {
    let d = Daemon::start().await;
    d.put(
        "/files/app.py",
        json!({"content": "def greet():\n    return 'hi'\n\ndef part():\n    return 'bye'\n"}),
    )
    .await;
    let start = d.commits();

    let a = d
        .patch(
            "/files/app.py",
            json!({"edits": [
                {"old": "return 'hi'", "new": "return 'hello'"},
                {"old": "def part", "new": "def farewell"},
            ]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["edits"], json!(2));
    assert_eq!(d.commits(), start + 1);
    let text = std::fs::read_to_string(d.workspace.join("app.py")).unwrap();
    assert_eq!(
        text,
        "def greet():\n    return 'hello'\n\ndef farewell():\n    return 'bye'\n"
    );

    // The second edit's `old` occurs twice: nothing applies, and the answer says which.
    let a = d
        .patch(
            "/files/app.py",
            json!({"edits": [
                {"old": "greet", "new": "welcome"},
                {"old": "return", "new": "yield"},
            ]}),
        )
        .await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json["error"]["code"], json!("edit_failed"));
    assert_eq!(a.json["error"]["edit"], json!(1));
    assert_eq!(a.json["error"]["occurrences"], json!(2));
    let a = d
        .patch(
            "/files/app.py",
            json!({"edits": [{"old": "not in the file", "new": "x"}]}),
        )
        .await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json["error"]["edit"], json!(0));
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("app.py")).unwrap(),
        text
    );
    assert_eq!(d.commits(), start + 1);

    assert_eq!(
        d.patch("/files/app.py", json!({"edits": []})).await.status,
        400
    );
    assert_eq!(
        d.patch(
            "/files/none.py",
            json!({"edits": [{"old": "a", "new": "b"}]})
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn if_match_turns_a_stale_write_into_412() {
    let d = Daemon::start().await;
    let first = d.put("/files/shared.txt", json!({"content": "v1\n"})).await;
    let etag = first.json["etag"].as_str().unwrap().to_string();
    let read = d.get("/files/shared.txt").await;
    assert_eq!(
        read.headers["etag"].to_str().unwrap(),
        format!("\"{etag}\"")
    );

    let a = d
        .request(
            "PUT",
            "/files/shared.txt",
            Some(json!({"content": "v2\n"})),
            Some(TOKEN),
        )
        .await;
    assert_eq!(a.status, 200);
    let start = d.commits();
    // Both the header and the body field carry the precondition.
    let stale = d
        .client
        .put(format!("{}/files/shared.txt", d.url))
        .bearer_auth(TOKEN)
        .header("If-Match", format!("\"{etag}\""))
        .json(&json!({"content": "v3\n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status().as_u16(), 412);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!("precondition_failed"));
    assert_eq!(
        body["error"]["current_etag"],
        json!(hash_object(&d, "shared.txt"))
    );
    let a = d
        .patch(
            "/files/shared.txt",
            json!({"edits": [{"old": "v2", "new": "v3"}], "if_match": etag}),
        )
        .await;
    assert_eq!(a.status, 412);
    assert_eq!(d.commits(), start);

    // Two clients holding the same version race: one wins, the other gets 412.
    let current = hash_object(&d, "shared.txt");
    let write = |content: &'static str| {
        let client = d.client.clone();
        let url = format!("{}/files/shared.txt", d.url);
        let current = current.clone();
        async move {
            client
                .put(url)
                .bearer_auth(TOKEN)
                .header("If-Match", current)
                .json(&json!({"content": content}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (a, b) = tokio::join!(write("from A\n"), write("from B\n"));
    let mut statuses = [a, b];
    statuses.sort();
    assert_eq!(statuses, [200, 412]);
    assert_eq!(d.commits(), start + 1);
}

#[tokio::test]
async fn many_clients_writing_different_files_all_land() {
    let d = Daemon::start().await;
    let start = d.commits();
    let writes = (0..32).map(|i| {
        let client = d.client.clone();
        let url = format!("{}/files/load/file-{i}.txt", d.url);
        async move {
            client
                .put(url)
                .bearer_auth(TOKEN)
                .json(&json!({"content": format!("file {i}\n")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(writes).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    assert_eq!(d.commits(), start + 32);
    let tree = d.git(&["ls-tree", "--name-only", "HEAD", "load/"]);
    assert_eq!(tree.lines().count(), 32);
    for i in 0..32 {
        assert_eq!(
            d.git(&["show", &format!("HEAD:load/file-{i}.txt")]),
            format!("file {i}\n")
        );
    }
    assert_eq!(d.git(&["status", "--porcelain"]), "");
}

#[tokio::test]
async fn ignored_paths_are_written_but_not_committed() {
    let d = Daemon::start().await;
    let start = d.commits();
    let a = d
        .put("/files/data/scratch.csv", json!({"content": "a,b\n1,2\n"}))
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.json["committed"], json!(false));
    assert!(a.json.get("commit").is_none());
    assert_eq!(d.commits(), start);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("data/scratch.csv")).unwrap(),
        "a,b\n1,2\n"
    );
    // Ignored files read, edit and move like any other, without commits.
    let a = d.get("/files/data/scratch.csv").await;
    assert_eq!(a.json["content"], json!("a,b\n1,2\n"));
    let a = d
        .patch(
            "/files/data/scratch.csv",
            json!({"edits": [{"old": "1,2", "new": "3,4"}]}),
        )
        .await;
    assert_eq!(a.json["committed"], json!(false));
    let a = d.put("/files/cache.db", json!({"content": "x"})).await;
    assert_eq!(a.json["committed"], json!(false), "`*.db` is ignored too");
    // Moving an ignored file to a tracked place commits it there.
    let a = d
        .post(
            "/files/move",
            json!({"from": "data/scratch.csv", "to": "reports/scratch.csv"}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(d.commits(), start + 1);
    assert_eq!(d.git(&["show", "HEAD:reports/scratch.csv"]), "a,b\n3,4\n");
    assert!(!d.workspace.join("data/scratch.csv").exists());
}

#[tokio::test]
async fn large_files_come_in_pages_and_binary_files_are_named() {
    let d = Daemon::start().await;
    let text: String = (1..=50_000).map(|i| format!("line number {i}\n")).collect();
    std::fs::write(d.workspace.join("big.log"), &text).unwrap();

    let first = d.get("/files/big.log").await;
    assert_eq!(first.status, 200);
    let content = first.json["content"].as_str().unwrap();
    assert!(content.len() <= 60_000);
    assert!(
        first.to_string_len() < 100_000,
        "a GPT reads the whole answer"
    );
    assert_eq!(first.json["truncated"], json!(true));
    assert_eq!(first.json["total_lines"], json!(50_000));
    assert_eq!(first.json["etag"], json!(hash_object(&d, "big.log")));
    assert!(content.starts_with("line number 1\n"));
    let next = first.json["next_offset"].as_u64().unwrap();
    assert_eq!(content.lines().count() as u64, next);

    let page = d
        .get(&format!("/files/big.log?offset={next}&limit=2"))
        .await;
    assert_eq!(
        page.json["content"],
        json!(format!(
            "line number {}\nline number {}\n",
            next + 1,
            next + 2
        ))
    );
    let last = d.get("/files/big.log?offset=49999").await;
    assert_eq!(last.json["content"], json!("line number 50000\n"));
    assert_eq!(last.json["truncated"], json!(false));
    assert!(last.json.get("next_offset").is_none());

    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    std::fs::write(d.workspace.join("blob.bin"), &bytes).unwrap();
    let a = d.get("/files/blob.bin").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["binary"], json!(true));
    assert!(a.json.get("content").is_none());
    assert!(a.json["message"]
        .as_str()
        .unwrap()
        .contains("/download/blob.bin"));
    let raw = d
        .client
        .get(format!("{}/download/blob.bin", d.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 200);
    assert_eq!(
        raw.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", hash_object(&d, "blob.bin"))
    );
    assert_eq!(raw.bytes().await.unwrap().to_vec(), bytes);
}

#[tokio::test]
async fn folders_list_with_depth_and_pages() {
    let d = Daemon::start().await;
    for i in 0..30 {
        std::fs::create_dir_all(d.workspace.join("many/sub")).unwrap();
        std::fs::write(d.workspace.join(format!("many/f{i:02}.txt")), "x").unwrap();
    }
    std::fs::write(d.workspace.join("many/sub/deep.txt"), "deep").unwrap();
    let a = d.get("/files?path=many").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json["total"], json!(31));
    assert!(!a.to_string_contains("deep.txt"));
    let a = d.get("/files/many?depth=2&limit=10&offset=25").await;
    let paths: Vec<&str> = a.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "many/f25.txt",
            "many/f26.txt",
            "many/f27.txt",
            "many/f28.txt",
            "many/f29.txt",
            "many/sub",
            "many/sub/deep.txt"
        ]
    );
    assert!(a.json.get("next_offset").is_none());
    let a = d.get("/files?path=many&limit=10").await;
    assert_eq!(a.json["next_offset"], json!(10));
    let root = d.get("/files").await;
    let names: Vec<&str> = root.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(names.contains(&".gitignore"));
    assert!(!names.contains(&".git"), "`.git` is never listed");
    let a = d.get("/files?path=scripts/sample_script.sh&depth=x").await;
    assert_eq!(a.status, 400, "a bad query is a 400");
}

trait AnswerExt {
    fn to_string_len(&self) -> usize;
    fn to_string_contains(&self, needle: &str) -> bool;
}

impl AnswerExt for crate::support::Answer {
    fn to_string_len(&self) -> usize {
        self.json.to_string().chars().count()
    }
    fn to_string_contains(&self, needle: &str) -> bool {
        self.json.to_string().contains(needle)
    }
}

#[tokio::test]
async fn what_the_os_refuses_for_a_path_the_caller_chose_is_a_4xx() {
    let d = Daemon::start().await;
    let long = "a".repeat(300);
    let commits = d.commits();
    // A name longer than the filesystem allows, by each route that names one.
    let a = d
        .put(
            &format!("/files/notes/{long}.txt"),
            json!({"content": "x\n"}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert!(
        a.json["error"]["message"].as_str().unwrap().contains("255"),
        "{}",
        a.json
    );
    assert!(
        d.put("/files/notes/short.txt", json!({"content": "x\n"}))
            .await
            .status
            < 300
    );
    let commits_after_one = d.commits();
    assert_eq!(commits_after_one, commits + 1);
    let a = d
        .post(
            "/files/move",
            json!({"from": "notes/short.txt", "to": format!("notes/{long}.txt")}),
        )
        .await;
    assert_eq!(a.status, 400, "{}", a.json);
    assert!(a.json["error"]["message"].is_string(), "{}", a.json);
    for path in [
        format!("/files/notes/{long}.txt"),
        format!("/files/{long}/x"),
    ] {
        let a = d.get(&path).await;
        assert!(
            (400..500).contains(&a.status),
            "{path}: {} {}",
            a.status,
            a.json
        );
    }
    let a = d.delete(&format!("/files/notes/{long}.txt")).await;
    assert!((400..500).contains(&a.status), "{} {}", a.status, a.json);
    assert_eq!(d.commits(), commits_after_one);
}
