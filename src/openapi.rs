//! The OpenAPI 3.1 document of the daemon: the built-in operations (described in
//! `http::catalog`, their request schemas derived from the very types the routes
//! parse) and every endpoint of the served registry. Two profiles: `full`, and
//! `gpt`, which fits what GPT Actions' importer accepts (at most 30 operations,
//! short texts, only plain schema constructs, `x-openai-isConsequential`).

use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use crate::auth::Scope;
use crate::registry::{Endpoint, Method, Registry};

/// GPT Actions refuse a document with more operations than this.
pub const GPT_MAX_OPERATIONS: usize = 30;
/// GPT Actions' limits on texts.
pub const GPT_MAX_SUMMARY: usize = 300;
pub const GPT_MAX_PARAM_DESCRIPTION: usize = 700;

/// One built-in operation, as documented.
pub struct Operation {
    /// The `operationId`, and the MCP tool's name.
    pub id: &'static str,
    pub method: Method,
    /// With `{placeholders}`.
    pub path: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    /// The scope a token needs; `None`: no token.
    pub scope: Option<Scope>,
    /// Descriptions of the path's placeholders.
    pub path_params: &'static [(&'static str, &'static str)],
    /// An object schema whose properties are the query parameters.
    pub query: Option<Value>,
    /// The JSON body's schema, and which of its properties are required.
    pub body: Option<Value>,
    /// The success status and the answer's schema; `also`: another success
    /// status with the same answer (201 created, 200 replaced).
    pub status: u16,
    pub also: Option<u16>,
    pub answer: Value,
    /// Writes or runs something: GPT asks the user before calling it.
    pub consequential: bool,
    /// Whether the GPT profile carries it.
    pub gpt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Full,
    Gpt,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Profile> {
        match s {
            "full" | "" => Some(Profile::Full),
            "gpt" => Some(Profile::Gpt),
            _ => None,
        }
    }
}

/// The JSON Schema of `T` as a request is read, made plain: inline, no `null`
/// in types, no `$schema` or `title`, `{}` for "anything".
pub fn schema_of<T: JsonSchema>() -> Value {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut value = schema.to_value();
    if let Value::Object(map) = &mut value {
        map.remove("$schema");
        map.remove("title");
    }
    plain(&mut value);
    value
}

/// `schema` with `names` required.
pub fn requiring(mut schema: Value, names: &[&str]) -> Value {
    schema["required"] = json!(names);
    schema
}

/// Turns the constructs importers stumble on into plain ones: `"type": [T,
/// "null"]` into `T`, `anyOf` with `null` into the other branch, `true` into `{}`.
/// (Requests: a caller need never send `null`.)
fn plain(value: &mut Value) {
    plain_as(value, false);
}

/// `plain` for what is answered, where `null` is really sent: a value that
/// may be null loses its `type` instead (a schema of properties alone takes
/// `null` too), so the plain subset still tells the truth.
fn plain_answer(value: &mut Value) {
    plain_as(value, true);
}

fn plain_as(value: &mut Value, answer: bool) {
    match value {
        Value::Bool(true) => *value = json!({}),
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get("type") {
                let rest: Vec<Value> = types
                    .iter()
                    .filter(|t| t.as_str() != Some("null"))
                    .cloned()
                    .collect();
                if rest.len() == 1 && answer && rest.len() < types.len() {
                    map.remove("type");
                } else if rest.len() == 1 {
                    map.insert("type".into(), rest[0].clone());
                }
            }
            if let Some(Value::Array(branches)) = map.get("anyOf") {
                let rest: Vec<Value> = branches
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                    .cloned()
                    .collect();
                let nullable = rest.len() < branches.len();
                if rest.len() == 1 {
                    map.remove("anyOf");
                    if let Value::Object(inner) = &rest[0] {
                        for (k, v) in inner {
                            if !(answer && nullable && k == "type") {
                                map.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                        }
                    }
                }
            }
            if map.get("default") == Some(&Value::Null) {
                map.remove("default");
            }
            // schemars' `uint` formats are not OpenAPI's.
            if map
                .get("format")
                .and_then(Value::as_str)
                .is_some_and(|f| f.starts_with("uint"))
            {
                map.remove("format");
            }
            for v in map.values_mut() {
                plain_as(v, answer);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| plain_as(v, answer)),
        _ => {}
    }
}

/// The error every route answers with.
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "A stable code, e.g. bad_path, precondition_failed, invalid_manifest."},
                    "message": {"type": "string", "description": "What went wrong and what to do instead."}
                },
                "required": ["code", "message"]
            }
        },
        "required": ["error"]
    })
}

/// What running a script answers (`/call/{name}` and each endpoint's route).
pub fn run_answer_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "ok": {"type": "boolean", "description": "Whether the script exited 0."},
            "exit_code": {"type": "integer"},
            "output": {"description": "stdout: text, or parsed JSON for `output: json` endpoints."},
            "stderr": {"type": "string"},
            "truncated": {"type": "boolean"},
            "duration_ms": {"type": "integer"},
            "job_id": {"type": "string", "description": "Only in a 202 answer: the run goes on as a job (it was still running after 40 s, or the call asked for async); read it with getJob."},
            "message": {"type": "string", "description": "Only in a 202 answer: what to do next."}
        }
    })
}

/// Cuts `text` to at most `max` characters, on a character boundary.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

/// The document for `builtins` and the endpoints of `registry`, served at `server`.
pub fn document(
    builtins: &[Operation],
    registry: &Registry,
    profile: Profile,
    server: &str,
) -> Value {
    let gpt = profile == Profile::Gpt;
    let mut paths = Map::new();
    let mut count = 0;
    for op in builtins.iter().filter(|op| !gpt || op.gpt) {
        let item = builtin_operation(op, gpt);
        add(&mut paths, op.path, op.method, item);
        count += 1;
    }
    let mut left_out = Vec::new();
    for endpoint in registry.endpoints() {
        if gpt && count >= GPT_MAX_OPERATIONS {
            left_out.push(endpoint.name.clone());
            continue;
        }
        add(
            &mut paths,
            &endpoint.path,
            endpoint.method,
            endpoint_operation(endpoint, gpt),
        );
        count += 1;
    }
    let mut description = String::from(
        "A git repository's project over HTTP: read, search and edit files (every write is a commit), run SQL, run scripts, and add endpoints. Endpoints added after import are reached with callEndpoint; listEndpoints shows them.",
    );
    if !left_out.is_empty() {
        description.push_str(&format!(
            " Not listed here (call them with callEndpoint): {}.",
            left_out.join(", ")
        ));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "dynapi",
            "version": env!("CARGO_PKG_VERSION"),
            "description": if gpt { clip(&description, GPT_MAX_SUMMARY) } else { description },
        },
        "servers": [{"url": server}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

fn add(paths: &mut Map<String, Value>, path: &str, method: Method, operation: Value) {
    let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
    item[method.as_str().to_ascii_lowercase()] = operation;
}

fn responses(statuses: &[u16], answer: Value) -> Value {
    let error = json!({"description": "An error", "content": {"application/json": {"schema": error_schema()}}});
    let mut all = json!({"default": error});
    for status in statuses {
        all[status.to_string()] =
            json!({"description": "Success", "content": {"application/json": {"schema": answer}}});
    }
    all
}

fn param(name: &str, place: &str, schema: &Value, required: bool, gpt: bool) -> Value {
    let mut schema = schema.clone();
    let description = schema
        .as_object_mut()
        .and_then(|m| m.remove("description"))
        .and_then(|d| d.as_str().map(String::from))
        .unwrap_or_default();
    let description = if gpt {
        clip(&description, GPT_MAX_PARAM_DESCRIPTION)
    } else {
        description
    };
    json!({
        "name": name,
        "in": place,
        "required": required || place == "path",
        "description": description,
        "schema": schema,
    })
}

/// The names an object schema lists as `required`.
fn required_names(schema: &Value) -> Vec<&str> {
    schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Query parameters from an object schema's properties.
fn query_params(schema: &Value, gpt: bool) -> Vec<Value> {
    let required = required_names(schema);
    schema["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, s)| param(name, "query", s, required.contains(&name.as_str()), gpt))
                .collect()
        })
        .unwrap_or_default()
}

fn texts(summary: &str, description: &str, gpt: bool) -> (String, String) {
    if gpt {
        (
            clip(summary, GPT_MAX_SUMMARY),
            clip(description, GPT_MAX_SUMMARY),
        )
    } else {
        (summary.to_string(), description.to_string())
    }
}

fn builtin_operation(op: &Operation, gpt: bool) -> Value {
    let (summary, description) = texts(op.summary, op.description, gpt);
    let mut parameters: Vec<Value> = op
        .path_params
        .iter()
        .map(|(name, d)| {
            param(
                name,
                "path",
                &json!({"type": "string", "description": d}),
                true,
                gpt,
            )
        })
        .collect();
    if let Some(query) = &op.query {
        parameters.extend(query_params(query, gpt));
    }
    let mut item = json!({
        "operationId": op.id,
        "summary": summary,
        "description": description,
        "responses": responses(
            &[Some(op.status), op.also].into_iter().flatten().collect::<Vec<_>>(),
            {
                // The GPT profile keeps to the plain subset its importer reads.
                let mut answer = op.answer.clone();
                if gpt {
                    plain_answer(&mut answer);
                }
                answer
            },
        ),
    });
    if !parameters.is_empty() {
        item["parameters"] = json!(parameters);
    }
    if let Some(body) = &op.body {
        item["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": body}}});
    }
    if op.scope.is_none() {
        item["security"] = json!([]);
    }
    item["x-openai-isConsequential"] = json!(op.consequential);
    item
}

fn endpoint_operation(e: &Endpoint, gpt: bool) -> Value {
    let (summary, description) = texts(&e.description, &e.description, gpt);
    let schema = e.params_schema();
    let in_path = |name: &str| e.path.contains(&format!("{{{name}}}"));
    let required = required_names(&schema);
    let mut parameters = Vec::new();
    let mut body_props = Map::new();
    let with_body = !matches!(e.method, Method::Get | Method::Delete);
    for (name, s) in schema["properties"].as_object().into_iter().flatten() {
        if in_path(name) {
            parameters.push(param(name, "path", s, true, gpt));
        } else if with_body {
            body_props.insert(name.clone(), s.clone());
        } else {
            parameters.push(param(
                name,
                "query",
                s,
                required.contains(&name.as_str()),
                gpt,
            ));
        }
    }
    let mut item = json!({
        "operationId": format!("endpoint_{}", e.name.replace('-', "_")),
        "summary": summary,
        "description": description,
        "responses": responses(&[200, 202], run_answer_schema()),
        "x-openai-isConsequential": e.consequential,
    });
    // Where the endpoint comes from; the GPT profile keeps to what GPT
    // Actions read.
    if !gpt {
        item["x-dynapi-source"] = e.source_json();
    }
    if !parameters.is_empty() {
        item["parameters"] = json!(parameters);
    }
    if with_body {
        let body_required: Vec<&str> = required
            .iter()
            .copied()
            .filter(|n| body_props.contains_key(*n))
            .collect();
        item["requestBody"] = json!({
            "required": !body_required.is_empty(),
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": body_props,
                "required": body_required,
            }}},
        });
    }
    item
}
