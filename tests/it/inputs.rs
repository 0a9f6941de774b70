//! DESIGN.md section 4's table of errors, held by every route: each operation
//! the OpenAPI document lists is called with inputs of the wrong type, too
//! long, empty, and with bytes that are not UTF-8, in its path, its query and
//! its body. None answers 500 or drops the connection; every refusal has the
//! JSON error shape.

use serde_json::{json, Map, Value};

use crate::support::{Daemon, TOKEN};

/// Text of `n` characters.
fn long(n: usize) -> String {
    "x".repeat(n)
}

/// A value of another JSON type than `schema` says.
fn wrong_type(schema: &Value) -> Value {
    let ty = schema["type"].as_str().unwrap_or("");
    match ty {
        "string" => json!(12345),
        "integer" | "number" => json!("not a number"),
        "boolean" => json!("yes"),
        "array" => json!({"not": "an array"}),
        "object" => json!(["not", "an", "object"]),
        _ => json!({"unexpected": [1, 2, {"deep": null}]}),
    }
}

/// The bodies to try for a request body of `schema`.
fn bodies(schema: &Value) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("an empty body".to_string(), Vec::new()),
        ("an empty object".to_string(), b"{}".to_vec()),
        ("an array".to_string(), b"[1, 2]".to_vec()),
        ("a string".to_string(), b"\"text\"".to_vec()),
        ("null".to_string(), b"null".to_vec()),
        ("JSON cut short".to_string(), b"{\"path\": \"a".to_vec()),
        (
            "bytes that are not UTF-8".to_string(),
            b"{\"path\": \"\xff\xfe\", \"content\": \"\xc3\x28\"}".to_vec(),
        ),
    ];
    let properties = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // A valid-looking base: each property a value of its own type.
    let mut base = Map::new();
    for (name, s) in &properties {
        let v = match s["type"].as_str() {
            Some("string") => json!("notes/a.txt"),
            Some("integer") | Some("number") => json!(1),
            Some("boolean") => json!(true),
            Some("array") => json!([]),
            Some("object") => json!({}),
            _ => json!("x"),
        };
        base.insert(name.clone(), v);
    }
    for (name, s) in &properties {
        let mut wrong = base.clone();
        wrong.insert(name.clone(), wrong_type(s));
        out.push((
            format!("`{name}` of the wrong type"),
            serde_json::to_vec(&wrong).unwrap(),
        ));
        let mut too_long = base.clone();
        too_long.insert(name.clone(), json!(long(70_000)));
        out.push((
            format!("`{name}` too long"),
            serde_json::to_vec(&too_long).unwrap(),
        ));
        let mut empty = base.clone();
        empty.insert(name.clone(), json!(""));
        out.push((
            format!("`{name}` empty"),
            serde_json::to_vec(&empty).unwrap(),
        ));
        let mut bytes = serde_json::to_vec(&base).unwrap();
        // The property's value as raw bytes that are not UTF-8.
        let mut raw = base.clone();
        raw.insert(name.clone(), json!("@@RAW@@"));
        bytes.clear();
        let text = serde_json::to_string(&raw).unwrap();
        let (before, after) = text.split_once("@@RAW@@").unwrap();
        bytes.extend_from_slice(before.as_bytes());
        bytes.extend_from_slice(b"\xff\xc0\x80");
        bytes.extend_from_slice(after.as_bytes());
        out.push((format!("`{name}` not UTF-8"), bytes));
    }
    out
}

/// The path and query variants to try for an operation at `path` with its
/// query parameters.
fn targets(path: &str, query: &[(String, Value)]) -> Vec<(String, String)> {
    let fill = |value: &str| {
        let mut out = String::new();
        let mut rest = path;
        while let Some(start) = rest.find('{') {
            let end = rest[start..]
                .find('}')
                .map_or(rest.len(), |e| start + e + 1);
            out.push_str(&rest[..start]);
            out.push_str(value);
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    };
    let mut out = vec![
        ("plain".to_string(), fill("notes%2Fa.txt")),
        ("a path parameter too long".to_string(), fill(&long(5_000))),
        (
            "a path parameter of 300 bytes".to_string(),
            fill(&long(300)),
        ),
        (
            "a path parameter not UTF-8".to_string(),
            fill("%FF%FE%C0%80"),
        ),
        (
            "a path parameter of dots".to_string(),
            fill("..%2F..%2Fetc"),
        ),
        ("a path parameter with NUL".to_string(), fill("a%00b")),
    ];
    if !path.contains('{') {
        out.truncate(1);
    }
    let base = fill("notes%2Fa.txt");
    for (name, schema) in query {
        let wrong = match schema["type"].as_str() {
            Some("integer") | Some("number") | Some("boolean") => "not-a-number".to_string(),
            _ => "-1".to_string(),
        };
        for (what, value) in [
            ("of the wrong type", wrong),
            ("too long", long(20_000)),
            ("empty", String::new()),
            ("not UTF-8", "%FF%FE".to_string()),
            ("huge", "99999999999999999999999999".to_string()),
        ] {
            out.push((format!("`{name}` {what}"), format!("{base}?{name}={value}")));
        }
    }
    out
}

#[tokio::test]
async fn every_operation_refuses_bad_input_without_a_500() {
    let d = Daemon::start().await;
    let doc = d.get("/openapi.json").await.json;
    let client = crate::support::client();
    let mut tried = 0;
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let query: Vec<(String, Value)> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "query")
                        .map(|p| (p["name"].as_str().unwrap().to_string(), p["schema"].clone()))
                        .collect()
                })
                .unwrap_or_default();
            let schema = &op["requestBody"]["content"]["application/json"]["schema"];
            let payloads = if schema.is_null() {
                vec![("no body".to_string(), Vec::new())]
            } else {
                bodies(schema)
            };
            for (target_case, target) in targets(path, &query) {
                for (body_case, body) in &payloads {
                    tried += 1;
                    let request = client
                        .request(
                            reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                            format!("{}{target}", d.url),
                        )
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(body.clone());
                    let what = format!(
                        "{} {path}: {target_case}, {body_case}",
                        method.to_uppercase()
                    );
                    let Ok(answer) = request.send().await else {
                        failures.push(format!("{what}: the connection was dropped"));
                        continue;
                    };
                    let status = answer.status().as_u16();
                    *statuses.entry(status).or_default() += 1;
                    let bytes = answer.bytes().await.unwrap_or_default();
                    if status == 500 {
                        failures.push(format!("{what}: 500 {}", String::from_utf8_lossy(&bytes)));
                    } else if status >= 400 {
                        let shaped = serde_json::from_slice::<Value>(&bytes).is_ok_and(|v| {
                            v["error"]["code"].is_string() && v["error"]["message"].is_string()
                        });
                        if !shaped {
                            failures.push(format!(
                                "{what}: {status} without the error shape: {}",
                                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                            ));
                        }
                    }
                }
            }
        }
    }
    eprintln!("{tried} requests: {statuses:?}");
    assert!(tried > 500, "only {tried} requests were tried");
    // Real work was reached, not only the front door.
    for status in [200, 400, 404] {
        assert!(statuses.contains_key(&status), "no {status}: {statuses:?}");
    }
    assert!(
        failures.is_empty(),
        "{} of {tried} requests went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The daemon still serves.
    assert_eq!(d.get("/healthz").await.status, 200);
}
