//! Routes over many files: search, combine, archive, history and revert, and the
//! confinement of every project route to the workspace.

use std::io::Read;

use serde_json::{json, Value};

use crate::support::{Daemon, TOKEN};

fn write(d: &Daemon, path: &str, contents: &[u8]) {
    let full = d.workspace.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, contents).unwrap();
}

fn files_of(matches: &Value) -> Vec<String> {
    matches["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}:{}", m["file"].as_str().unwrap(), m["line_number"]))
        .collect()
}

#[tokio::test]
async fn search_honours_gitignore_skips_binaries_and_pages() {
    let d = Daemon::start().await;
    write(&d, "src/a.rs", b"fn main() {\n    let needle = 1;\n}\n");
    write(&d, "src/b.py", b"needle = 2\nNEEDLE = 3\n");
    write(&d, "data/hidden.txt", b"needle in ignored data\n");
    write(&d, "bin/blob", b"needle\0binary\n");
    write(&d, ".github/notes.md", b"a needle in a hidden folder\n");

    let a = d.get("/search?q=needle").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(
        files_of(&a.json),
        [".github/notes.md:1", "src/a.rs:2", "src/b.py:1"]
    );
    assert_eq!(a.json["matches"][1]["line"], json!("    let needle = 1;"));
    assert_eq!(a.json["truncated"], json!(false));

    let a = d.get("/search?q=needle&ignore_case=true&path=src").await;
    assert_eq!(
        files_of(&a.json),
        ["src/a.rs:2", "src/b.py:1", "src/b.py:2"]
    );
    let a = d.get("/search?q=needle&glob=*.py").await;
    assert_eq!(files_of(&a.json), ["src/b.py:1"]);
    let a = d.get("/search?q=%5E%5Cs%2Blet%20%5Cw%2B&regex=true").await;
    assert_eq!(files_of(&a.json), ["src/a.rs:2"]);
    // Literal text is literal: `.` and `(` mean themselves.
    let a = d.get("/search?q=main()").await;
    assert_eq!(files_of(&a.json), ["src/a.rs:1"]);
    // A file named outright is searched even when ignored.
    let a = d.get("/search?q=needle&path=data/hidden.txt").await;
    assert_eq!(files_of(&a.json), ["data/hidden.txt:1"]);

    // Pages: max caps the answer, next_offset continues in the same order.
    let a = d.get("/search?q=needle&ignore_case=true&max=2").await;
    assert_eq!(files_of(&a.json), [".github/notes.md:1", "src/a.rs:2"]);
    assert_eq!(a.json["truncated"], json!(true));
    assert_eq!(a.json["next_offset"], json!(2));
    let a = d
        .get("/search?q=needle&ignore_case=true&max=2&offset=2")
        .await;
    assert_eq!(files_of(&a.json), ["src/b.py:1", "src/b.py:2"]);
    assert_eq!(a.json["truncated"], json!(false));

    assert_eq!(d.get("/search").await.status, 400);
    let a = d.get("/search?q=(&regex=true").await;
    assert_eq!(a.status, 400);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("pattern"));
}

#[tokio::test]
async fn search_answers_stay_under_the_gpt_limit() {
    let d = Daemon::start().await;
    let long_line = format!("match {}\n", "x".repeat(5_000));
    let text: String = std::iter::repeat_n(long_line.as_str(), 400).collect();
    write(&d, "wide.txt", text.as_bytes());
    let a = d.get("/search?q=match&max=500").await;
    assert_eq!(a.status, 200);
    assert!(a.json.to_string().len() < 100_000);
    assert_eq!(a.json["truncated"], json!(true));
    let first = &a.json["matches"][0];
    assert_eq!(first["line_cut"], json!(true));
    assert!(first["line"].as_str().unwrap().len() <= 400);
    let next = a.json["next_offset"].as_u64().unwrap();
    let b = d
        .get(&format!("/search?q=match&max=500&offset={next}"))
        .await;
    assert_eq!(
        b.json["matches"][0]["line_number"],
        json!(next + 1),
        "the next page starts where the first stopped"
    );
}

#[tokio::test]
async fn combine_joins_files_under_headers_and_can_write_the_result() {
    let d = Daemon::start().await;
    write(&d, "docs/a.md", b"# A\n");
    write(&d, "docs/b.md", b"# B");
    write(&d, "docs/logo.png", b"\x89PNG\0\0");
    let a = d
        .post(
            "/combine",
            json!({"paths": ["docs/b.md"], "globs": ["docs/*"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(
        a.json["text"],
        json!("==> docs/b.md <==\n# B\n\n==> docs/a.md <==\n# A\n")
    );
    assert_eq!(a.json["files"], json!(["docs/b.md", "docs/a.md"]));
    assert_eq!(
        a.json["skipped"],
        json!([{"path": "docs/logo.png", "reason": "binary"}])
    );

    let start = d.commits();
    let a = d
        .post(
            "/combine",
            json!({"paths": ["docs"], "output": "build/all-docs.md"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["committed"], json!(true));
    assert_eq!(d.commits(), start + 1);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("build/all-docs.md")).unwrap(),
        "==> docs/a.md <==\n# A\n\n==> docs/b.md <==\n# B\n"
    );

    // A long result comes in pages.
    let big: String = (0..20_000).map(|i| format!("row {i}\n")).collect();
    write(&d, "big/rows.txt", big.as_bytes());
    let a = d.post("/combine", json!({"paths": ["big"]})).await;
    assert!(a.json.to_string().len() < 100_000);
    assert_eq!(a.json["truncated"], json!(true));
    let mut text = a.json["text"].as_str().unwrap().to_string();
    let mut offset = a.json["next_offset"].as_u64();
    while let Some(at) = offset {
        let next = d
            .post("/combine", json!({"paths": ["big"], "offset": at}))
            .await;
        text.push_str(next.json["text"].as_str().unwrap());
        offset = next.json["next_offset"].as_u64();
    }
    assert_eq!(text, format!("==> big/rows.txt <==\n{big}"));

    assert_eq!(d.post("/combine", json!({})).await.status, 400);
    assert_eq!(
        d.post("/combine", json!({"paths": ["missing.txt"]}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn combined_and_archived_sizes_are_bounded() {
    let d = Daemon::start_with(|c| {
        c.files.combine_bytes = 1_000;
        c.files.archive_bytes = 1_000;
    })
    .await;
    write(&d, "big/one.txt", &[b'a'; 800]);
    write(&d, "big/two.txt", &[b'b'; 800]);
    let a = d.post("/combine", json!({"paths": ["big"]})).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.json["error"]["code"], json!("too_large"));
    let a = d.post("/archive", json!({"path": "big"})).await;
    assert_eq!(a.status, 413);
    assert!(!d.workspace.join("archives").exists());
}

#[tokio::test]
async fn archives_hold_the_folder_and_download_as_bytes() {
    let d = Daemon::start().await;
    write(&d, "site/index.html", b"<h1>hi</h1>\n");
    write(&d, "site/css/main.css", b"h1 { color: red }\n");
    write(&d, "site/cache.db", b"ignored");
    let a = d
        .post("/archive", json!({"path": "site", "format": "zip"}))
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["path"], json!("archives/site.zip"));
    assert_eq!(a.json["files"], json!(2));
    // `archives/` is ignored by the template's .gitignore: built, not committed.
    assert_eq!(a.json["committed"], json!(false));
    let raw = d
        .client
        .get(format!("{}/download/archives/site.zip", d.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "application/zip");
    let bytes = raw.bytes().await.unwrap().to_vec();
    assert_eq!(bytes.len() as u64, a.json["size"].as_u64().unwrap());
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        a.json["sha256"].as_str().unwrap()
    );
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["site/css/main.css", "site/index.html"]);
    let mut index = String::new();
    zip.by_name("site/index.html")
        .unwrap()
        .read_to_string(&mut index)
        .unwrap();
    assert_eq!(index, "<h1>hi</h1>\n");

    let start = d.commits();
    let a = d
        .post(
            "/archive",
            json!({"path": "scripts", "format": "tar.gz", "output": "dist/scripts.tar.gz"}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["committed"], json!(true));
    assert_eq!(d.commits(), start + 1);
    let file = std::fs::File::open(d.workspace.join("dist/scripts.tar.gz")).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries: Vec<(String, u32)> = tar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                e.header().mode().unwrap(),
            )
        })
        .collect();
    entries.sort();
    assert!(entries.contains(&("scripts/sample_script.sh".to_string(), 0o755)));

    let a = d
        .post("/archive", json!({"path": "site", "format": "rar"}))
        .await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn history_lists_commits_and_revert_undoes_one() {
    let d = Daemon::start().await;
    d.put("/files/config.toml", json!({"content": "level = 1\n"}))
        .await;
    d.put("/files/other.txt", json!({"content": "x\n"})).await;
    let bad = d
        .put(
            "/files/config.toml",
            json!({"content": "level = 99\n", "message": "Turn it up"}),
        )
        .await;
    let bad_commit = bad.json["commit"].as_str().unwrap().to_string();

    let a = d.get("/history?limit=2").await;
    assert_eq!(a.status, 200);
    let commits = a.json["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 2);
    assert_eq!(commits[0]["commit"], json!(bad_commit));
    assert_eq!(commits[0]["summary"], json!("Turn it up"));
    assert_eq!(commits[0]["author"], json!("env via dynapi"));
    assert_eq!(a.json["next_offset"], json!(2));
    let a = d.get("/history?path=config.toml").await;
    let summaries: Vec<&str> = a.json["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["summary"].as_str().unwrap())
        .collect();
    assert_eq!(summaries, ["Turn it up", "Create config.toml"]);

    let start = d.commits();
    let a = d.post("/revert", json!({"commit": &bad_commit[..8]})).await;
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["reverted"], json!(bad_commit));
    assert_eq!(a.json["files"], json!(["config.toml"]));
    assert_eq!(d.commits(), start + 1);
    assert_eq!(
        std::fs::read_to_string(d.workspace.join("config.toml")).unwrap(),
        "level = 1\n"
    );
    assert!(d
        .git(&["log", "-1", "--format=%B"])
        .contains(&format!("This reverts commit {bad_commit}.")));
    assert_eq!(d.git(&["status", "--porcelain"]), "");

    // Reverting it again has nothing to do; a commit changed since conflicts.
    let a = d.post("/revert", json!({"commit": bad_commit})).await;
    assert_eq!(a.status, 409);
    let first = d.get("/history?path=other.txt").await.json["commits"][0]["commit"]
        .as_str()
        .unwrap()
        .to_string();
    d.put("/files/other.txt", json!({"content": "y\n"})).await;
    let a = d.post("/revert", json!({"commit": first})).await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json["error"]["code"], json!("revert_conflict"));
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("other.txt"));

    assert_eq!(d.post("/revert", json!({"commit": "zz"})).await.status, 400);
    assert_eq!(
        d.post("/revert", json!({"commit": "0123456789abcdef"}))
            .await
            .status,
        404
    );
}

/// Every project route, with `{}` where a hostile path goes.
const ROUTES: &[(&str, &str, Option<&str>)] = &[
    ("GET", "/files/{}", None),
    ("PUT", "/files/{}", Some(r#"{"content": "x"}"#)),
    (
        "PATCH",
        "/files/{}",
        Some(r#"{"edits": [{"old": "a", "new": "b"}]}"#),
    ),
    ("DELETE", "/files/{}", None),
    ("GET", "/download/{}", None),
    ("GET", "/files?path={}", None),
    ("GET", "/search?q=root&path={}", None),
    ("GET", "/history?path={}", None),
    (
        "POST",
        "/files/move",
        Some(r#"{"from": {}, "to": "moved.txt"}"#),
    ),
    (
        "POST",
        "/files/move",
        Some(r#"{"from": "readme.txt", "to": {}}"#),
    ),
    ("POST", "/combine", Some(r#"{"paths": [{}]}"#)),
    (
        "POST",
        "/combine",
        Some(r#"{"paths": ["readme.txt"], "output": {}}"#),
    ),
    ("POST", "/archive", Some(r#"{"path": {}}"#)),
    (
        "POST",
        "/archive",
        Some(r#"{"path": "scripts", "output": {}}"#),
    ),
];

#[tokio::test]
async fn hostile_paths_are_refused_on_every_route() {
    let d = Daemon::start().await;
    let outside = d.workspace.parent().unwrap().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "root secret\n").unwrap();
    std::os::unix::fs::symlink(&outside, d.workspace.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), d.workspace.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(d.workspace.join(".git"), d.workspace.join("g")).unwrap();
    write(&d, "readme.txt", b"a file to move\n");
    d.git(&["add", "readme.txt"]);
    d.git(&["commit", "-qm", "A readme"]);
    let start = d.commits();

    let hostile = [
        "../outside/secret.txt",
        "a/../../outside/secret.txt",
        "/etc/passwd",
        ".git/config",
        ".GIT/config",
        "scripts/../.git/HEAD",
        "a\\..\\secret.txt",
        "a\u{0}b",
        "new\nline",
        "out/secret.txt",
        "out/new.txt",
        "leak.txt",
        "g/config",
    ];
    for path in hostile {
        for (method, route, body) in ROUTES {
            let target = route.replace("{}", &url_path(path));
            let body = body.map(|b| {
                serde_json::from_str::<Value>(&b.replace("{}", &json!(path).to_string())).unwrap()
            });
            let (status, answer) = d.raw(method, &target, body.as_ref()).await;
            assert_eq!(status, 400, "{method} {target} {body:?}: {answer}");
            let answer: Value = serde_json::from_str(&answer).unwrap();
            assert!(answer["error"]["message"].is_string(), "{answer}");
        }
    }
    // The same with percent-encoded tricks in the URL.
    for target in [
        "/files/%2e%2e/outside/secret.txt",
        "/files/..%2Foutside%2Fsecret.txt",
        "/files/%2Fetc%2Fpasswd",
        "/download/%2e%2E%2foutside%2fsecret.txt",
        "/files/a%5C..%5Csecret.txt",
        "/files/%2egit/config",
        "/download/leak.txt",
    ] {
        let (status, answer) = d.raw("GET", target, None).await;
        assert_eq!(status, 400, "{target}: {answer}");
    }
    assert_eq!(d.commits(), start, "nothing was committed");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing was written outside"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "root secret\n"
    );
    let a = d.get("/search?q=secret").await;
    assert_eq!(
        a.json["matches"],
        json!([]),
        "search does not follow links out"
    );
}

/// A path for a URL: every byte that is not plain percent-encoded, `/` and `.`
/// kept, so `..` segments reach the daemon as they are.
fn url_path(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn project_routes_need_their_scopes() {
    let d = Daemon::start().await;
    d.grant_reader("reader-secret", "read").await;
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    let reader = Some("reader-secret");
    assert_eq!(
        d.request("GET", "/files/dynapi.yaml", None, reader)
            .await
            .status,
        200
    );
    assert_eq!(
        d.request("GET", "/search?q=x", None, reader).await.status,
        200
    );
    assert_eq!(d.request("GET", "/history", None, reader).await.status, 200);
    for (method, path, body) in [
        ("PUT", "/files/x.txt", json!({"content": "x"})),
        (
            "PATCH",
            "/files/dynapi.yaml",
            json!({"edits": [{"old": "a", "new": "b"}]}),
        ),
        ("DELETE", "/files/dynapi.yaml", json!({})),
        (
            "POST",
            "/files/move",
            json!({"from": "dynapi.yaml", "to": "y"}),
        ),
        ("POST", "/archive", json!({"path": "scripts"})),
        (
            "POST",
            "/combine",
            json!({"paths": ["scripts"], "output": "all.txt"}),
        ),
        ("POST", "/revert", json!({"commit": head})),
    ] {
        let a = d.request(method, path, Some(body), reader).await;
        assert_eq!(a.status, 403, "{method} {path}: {}", a.json);
    }
    for path in ["/files", "/search?q=x", "/history", "/download/dynapi.yaml"] {
        assert_eq!(
            d.request("GET", path, None, None).await.status,
            401,
            "{path}"
        );
    }
}
