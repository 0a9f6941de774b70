//! SQL: the embedded SQLite database by default, PostgreSQL for real, read-only
//! unless the token has `sql-write`, with time and row limits.

use serde_json::{json, Value};

use crate::support::{postgres_database, Daemon};

const READER: &str = "reader-secret";

async fn sql(d: &Daemon, token: &str, body: Value) -> crate::support::Answer {
    d.request("POST", "/sql", Some(body), Some(token)).await
}

#[tokio::test]
async fn the_default_database_answers_with_json_values_and_its_schema() {
    let d = Daemon::start().await;
    assert!(
        d.workspace.join("data/app.db").exists(),
        "the template seeds it"
    );
    let a = d
        .post(
            "/sql",
            json!({"query": "SELECT id, title, done, due FROM todos WHERE done = ? ORDER BY id", "params": [false]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["columns"], json!(["id", "title", "done", "due"]));
    assert_eq!(
        a.json["rows"],
        json!([
            [2, "Add an endpoint with POST /endpoints", false, null],
            [
                3,
                "Ask the assistant what is left to do",
                false,
                "2026-12-31"
            ]
        ])
    );
    assert_eq!(a.json["row_count"], json!(2));
    assert_eq!(a.json["truncated"], json!(false));
    let a = d
        .post(
            "/sql",
            json!({"query": "SELECT 1.5 AS f, x'00ff' AS b, NULL AS n, 'é' AS t"}),
        )
        .await;
    assert_eq!(a.json["rows"], json!([[1.5, "AP8=", null, "é"]]));

    let a = d.get("/sql/schema").await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["kind"], json!("sqlite"));
    let todos = &a.json["tables"][0];
    assert_eq!(todos["name"], json!("todos"));
    assert_eq!(todos["primary_key"], json!(["id"]));
    assert_eq!(
        todos["columns"][2],
        json!({"name": "done", "type": "BOOLEAN", "nullable": false})
    );

    // The same file the template's run_sql.sh uses.
    let a = d
        .post(
            "/run-sql",
            json!({"query": "SELECT count(*) AS n FROM todos"}),
        )
        .await;
    assert_eq!(a.json["output"]["rows"], json!([[3]]), "{}", a.json);
}

#[tokio::test]
async fn readers_cannot_write_and_nobody_reaches_outside_files() {
    let d = Daemon::start().await;
    d.grant_reader(READER, "read").await;
    let insert = json!({"query": "INSERT INTO todos (title) VALUES (?)", "params": ["new"]});
    let a = sql(&d, READER, insert.clone()).await;
    assert_eq!(a.status, 403, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("read_only"));
    for query in [
        "PRAGMA query_only = OFF",
        "DELETE FROM todos",
        "CREATE TABLE t (x)",
    ] {
        let a = sql(&d, READER, json!({ "query": query })).await;
        assert!(
            a.status == 403 || a.status == 400,
            "{query}: {} {}",
            a.status,
            a.json
        );
    }
    let outside = d.workspace.parent().unwrap().join("elsewhere.db");
    for token in [READER, crate::support::TOKEN] {
        for query in [
            format!("ATTACH '{}' AS other", outside.display()),
            format!("VACUUM INTO '{}'", outside.display()),
            "SELECT load_extension('/tmp/nothing.so')".to_string(),
        ] {
            let a = sql(&d, token, json!({ "query": query })).await;
            assert_eq!(a.status, 400, "{query}: {}", a.json);
            assert_eq!(a.json["error"]["code"], json!("sql_error"));
        }
    }
    assert!(!outside.exists());
    let a = sql(&d, READER, json!({"query": "SELECT count(*) FROM todos"})).await;
    assert_eq!(a.json["rows"], json!([[3]]), "nothing was written");

    // The all-scopes token has sql-write.
    let a = d.post("/sql", insert).await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["changes"], json!(1));
    let a = d
        .post(
            "/sql",
            json!({"query": "SELECT title FROM todos WHERE id = 4"}),
        )
        .await;
    assert_eq!(a.json["rows"], json!([["new"]]));
}

#[tokio::test]
async fn statements_stop_at_their_time_and_row_limits() {
    let d = Daemon::start().await;
    let forever =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let a = d
        .post("/sql", json!({"query": forever, "timeout_ms": 300}))
        .await;
    assert_eq!(a.status, 504, "{}", a.json);
    assert_eq!(a.json["error"]["code"], json!("timeout"));

    let many = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 2000) SELECT x FROM c";
    let a = d.post("/sql", json!({ "query": many })).await;
    assert_eq!(a.json["row_count"], json!(500));
    assert_eq!(a.json["truncated"], json!(true));
    assert!(a.json.to_string().len() < 100_000);
    let a = d
        .post("/sql", json!({"query": many, "max_rows": 100000}))
        .await;
    assert_eq!(a.json["row_count"], json!(2000));
    assert_eq!(a.json["truncated"], json!(false));
    // The character budget cuts wide rows before the row cap does.
    let wide = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100) SELECT printf('%.2000c', 'x') FROM c";
    let a = d.post("/sql", json!({ "query": wide })).await;
    assert_eq!(a.json["truncated"], json!(true));
    assert!(a.json["row_count"].as_u64().unwrap() < 100);
    assert!(a.json.to_string().len() < 100_000);
}

#[tokio::test]
async fn bad_statements_are_400_with_the_database_message() {
    let d = Daemon::start().await;
    for (body, needle) in [
        (json!({"query": "SELEC 1"}), "syntax error"),
        (json!({"query": "SELECT 1; SELECT 2"}), "ultiple statements"),
        (json!({"query": "SELECT ?", "params": []}), "parameter"),
        (json!({"query": "SELECT * FROM nowhere"}), "no such table"),
        (json!({}), "query"),
        (
            json!({"query": "SELECT ?", "params": [{"a": 1}]}),
            "positional",
        ),
    ] {
        let a = d.post("/sql", body.clone()).await;
        assert_eq!(a.status, 400, "{body}: {}", a.json);
        let message = a.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
    let a = d
        .post("/sql", json!({"query": "SELECT 1", "database": "nope"}))
        .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn postgres_answers_typed_values_and_refuses_writes_from_readers() {
    let d = Daemon::start().await;
    let url = postgres_database().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE items (
                id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2), in_stock boolean,
                added timestamptz, day date, tags jsonb, raw bytea, big bigint, ratio double precision
             );
             INSERT INTO items (name, price, in_stock, added, day, tags, raw, big, ratio) VALUES
               ('lamp', 12345678.90, true, '2026-11-20 01:02:03.5+00', '2026-11-20', '{\"a\": [1, 2]}', '\\x00ff', 9007199254740993, 0.25),
               ('desk', NULL, false, NULL, NULL, NULL, NULL, -1, NULL);",
        )
        .await
        .unwrap();
    // The URL comes from the environment, so secrets stay out of git.
    let var = format!("DYNAPI_TEST_PG_{}", std::process::id());
    std::env::set_var(&var, &url);
    let hash = hex::encode(dynapi::auth::hash_token(READER));
    std::fs::write(
        d.workspace.join("dynapi.yaml"),
        format!(
            "databases:\n  shop:\n    url: \"${{{var}}}\"\ntokens:\n  - name: reader\n    sha256: {hash}\n    scopes: [read]\n"
        ),
    )
    .unwrap();
    d.git(&["commit", "-qam", "Name the shop database"]);
    let head = d.git(&["rev-parse", "HEAD"]).trim().to_string();
    d.eventually(std::time::Duration::from_secs(2), |d| d.served() == head)
        .await
        .unwrap();

    let a = sql(
        &d,
        READER,
        json!({"database": "shop", "query": "SELECT * FROM items WHERE id >= $1 ORDER BY id", "params": [1]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(
        a.json["columns"],
        json!(["id", "name", "price", "in_stock", "added", "day", "tags", "raw", "big", "ratio"])
    );
    assert_eq!(
        a.json["rows"][0],
        json!([1, "lamp", "12345678.90", true, "2026-11-20T01:02:03.500000Z", "2026-11-20", {"a": [1, 2]}, "AP8=", 9007199254740993i64, 0.25])
    );
    assert_eq!(
        a.json["rows"][1],
        json!([2, "desk", null, false, null, null, null, null, -1, null])
    );
    // Parameters are parsed by PostgreSQL for the type it inferred.
    let a = sql(
        &d,
        READER,
        json!({"database": "shop", "query": "SELECT name FROM items WHERE day = $1 AND in_stock = $2", "params": ["2026-11-20", true]}),
    )
    .await;
    assert_eq!(a.json["rows"], json!([["lamp"]]), "{}", a.json);

    for query in [
        "INSERT INTO items (name) VALUES ('chair')",
        "UPDATE items SET name = 'x'",
        "CREATE TABLE other (x int)",
    ] {
        let a = sql(&d, READER, json!({"database": "shop", "query": query})).await;
        assert_eq!(a.status, 403, "{query}: {}", a.json);
        assert_eq!(a.json["error"]["code"], json!("read_only"));
    }
    let a = sql(
        &d,
        READER,
        json!({"database": "shop", "query": "SET TRANSACTION READ WRITE"}),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.json);
    let a = sql(
        &d,
        READER,
        json!({"database": "shop", "query": "SELECT pg_sleep(5)", "timeout_ms": 300}),
    )
    .await;
    assert_eq!(a.status, 504, "{}", a.json);
    let a = sql(&d, READER, json!({"database": "shop", "query": "SELEC 1"})).await;
    assert_eq!(a.status, 400);
    assert!(a.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("syntax error"));

    let a = d
        .post(
            "/sql",
            json!({"database": "shop", "query": "INSERT INTO items (name) VALUES ($1)", "params": ["chair"]}),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["changes"], json!(1));
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3, "a writer's statement is committed");

    let a = d
        .request("GET", "/sql/schema?database=shop", None, Some(READER))
        .await;
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["kind"], json!("postgres"));
    let items = &a.json["tables"][0];
    assert_eq!(items["name"], json!("items"));
    assert_eq!(items["schema"], json!("public"));
    assert_eq!(items["primary_key"], json!(["id"]));
    assert_eq!(
        items["columns"][1],
        json!({"name": "name", "type": "text", "nullable": false})
    );
    std::env::remove_var(&var);
    let a = sql(&d, READER, json!({"database": "shop", "query": "SELECT 1"})).await;
    assert_eq!(a.status, 502, "a missing variable is named: {}", a.json);
    assert!(a.json["error"]["message"].as_str().unwrap().contains(&var));
}

#[tokio::test]
async fn a_bad_database_entry_is_a_located_problem() {
    let d = Daemon::start().await;
    std::fs::write(
        d.workspace.join("dynapi.yaml"),
        "databases:\n  other:\n    url: sqlite:../outside.db\n",
    )
    .unwrap();
    d.git(&["commit", "-qam", "A database outside"]);
    let status = d
        .eventually(std::time::Duration::from_secs(2), |d| {
            d.app.syncer.status().last_error.is_some()
        })
        .await;
    assert!(status.is_some());
    let a = d.get("/status").await;
    let problem = &a.json["last_error"]["problems"][0];
    assert_eq!(problem["file"], json!("dynapi.yaml"));
    assert_eq!(problem["line"], json!(3));
}

/// PostgreSQL over TLS, as libpq's `sslmode` in the URL asks: `require`
/// encrypts, `verify-ca` checks the chain against `sslrootcert`,
/// `verify-full` the name too; a certificate that does not pass is a 502
/// that says why, and no statement runs.
#[tokio::test]
async fn postgres_speaks_tls_as_the_urls_sslmode_asks() {
    let (url, cert) = crate::support::postgres_tls();
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    let cert = cert.to_str().unwrap();
    let d = Daemon::start().await;
    let base =
        |host: &str, query: &str| format!("postgres://postgres@{host}:{port}/postgres?{query}");
    let databases = [
        ("plain", base("127.0.0.1", "sslmode=disable")),
        ("preferred", base("127.0.0.1", "application_name=dynapi")),
        ("required", base("127.0.0.1", "sslmode=require")),
        (
            "chain",
            base(
                "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={cert}"),
            ),
        ),
        (
            "full",
            base(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={cert}"),
            ),
        ),
        (
            "wrongname",
            base(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={cert}"),
            ),
        ),
        ("untrusted", base("localhost", "sslmode=verify-full")),
    ];
    let mut yaml = String::from("databases:\n");
    for (name, url) in &databases {
        yaml.push_str(&format!("  {name}:\n    url: \"{url}\"\n"));
    }
    let w = d
        .put("/files/dynapi.yaml", json!({ "content": yaml }))
        .await;
    assert!(w.status < 300, "{}", w.json);
    let encrypted = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for (name, expected) in [
        ("plain", false),
        ("preferred", true),
        ("required", true),
        ("chain", true),
        ("full", true),
    ] {
        let a = d
            .post("/sql", json!({"database": name, "query": encrypted}))
            .await;
        assert_eq!(a.status, 200, "{name}: {}", a.json);
        assert_eq!(a.json["rows"], json!([[expected]]), "{name}: {}", a.json);
    }
    for (name, why) in [
        ("wrongname", "not valid for name"),
        ("untrusted", "UnknownIssuer"),
    ] {
        let a = d
            .post("/sql", json!({"database": name, "query": encrypted}))
            .await;
        assert_eq!(a.status, 502, "{name}: {}", a.json);
        assert_eq!(a.json["error"]["code"], json!("database_unavailable"));
        let message = a.json["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{name}: {message}");
    }
}
