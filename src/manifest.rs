//! Manifests as written: the raw YAML types of `manifests/*.yaml` and `dynapi.yaml`,
//! and the `Problem` type every validation error is reported in.
//!
//! This module owns parsing text into raw types and locating a key in that text
//! (`file:line:column`). It does no I/O and no semantic checks: `registry.rs` turns
//! raw types into checked endpoints, once, when a commit is loaded.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

// Limits. A registry is built from every manifest of a commit on each sync and
// each write's check, one at a time, so its cost is paid by every writer queued
// behind it: these bound that cost whatever a commit holds. They are far above
// what an endpoint needs (the template's manifests are under 1 KiB with a few
// parameters), and every check below them is linear in the text.

/// Largest manifest (and `dynapi.yaml`), in bytes. Checked before any parsing,
/// so a bigger file costs nothing; leaves room for long descriptions and enums.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// Most manifests in `manifests/`. A registry of more is no longer a menu an
/// assistant can choose from (tool lists are cut far lower), and it bounds the
/// files each build reads.
pub const MAX_MANIFESTS: usize = 1000;
/// Most bytes of all manifests together: bounds one build's parsing to a few
/// milliseconds' worth of YAML, where 1,000 files of 64 KiB would be 64 MiB.
pub const MAX_TOTAL_BYTES: usize = 4 << 20;
/// Most parameters of one endpoint. Assistants fill a few; a schema of dozens is
/// already past what function calling handles well (send a file instead).
pub const MAX_PARAMS: usize = 64;
/// Most `{placeholders}` in an endpoint's path: the router (matchit) takes at
/// most 26 and panics past that; a path with more is a form, not a route.
pub const MAX_PATH_PARAMS: usize = 16;
/// Most `args` entries of one endpoint.
pub const MAX_ARGS: usize = 64;
/// Most `env` entries of one endpoint.
pub const MAX_ENV: usize = 64;
/// Most values of one parameter's `enum` (each is checked on every call).
pub const MAX_ENUM: usize = 256;
/// Most `sandbox.writable` paths of one endpoint (each becomes a Landlock rule).
pub const MAX_WRITABLE: usize = 64;

/// One manifest, exactly as the YAML says it. Every field is optional here so that
/// validation can report all missing and wrong fields at once, with their lines.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub script: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub params: BTreeMap<String, RawParam>,
    pub output: Option<String>,
    pub timeout: Option<String>,
    #[serde(default, rename = "async")]
    pub is_async: bool,
    pub consequential: Option<bool>,
    pub scope: Option<String>,
    pub concurrency: Option<u64>,
    pub sandbox: Option<RawSandbox>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One parameter: the JSON-Schema subset DESIGN.md section 3 lists.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawParam {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub description: Option<String>,
    pub default: Option<serde_json::Value>,
    #[serde(rename = "enum")]
    pub choices: Option<Vec<serde_json::Value>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    #[serde(rename = "minLength")]
    pub min_length: Option<u64>,
    #[serde(rename = "maxLength")]
    pub max_length: Option<u64>,
    pub pattern: Option<String>,
    pub items: Option<Box<RawParam>>,
    pub required: Option<bool>,
    pub allow_leading_dash: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    pub network: Option<bool>,
    pub writable: Option<Vec<String>>,
}

/// `dynapi.yaml`, the repository's settings. Optional; validated like a manifest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub defaults: Option<RawDefaults>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
    #[serde(default)]
    pub databases: std::collections::BTreeMap<String, RawDatabase>,
    pub policy: Option<RawPolicy>,
    pub sandbox: Option<String>,
}

/// How writes reach the branch in GitHub mode: `commit` or `pull_request`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub endpoints: Option<String>,
    pub files: Option<String>,
}

/// A database `POST /sql` may query: `url` is `sqlite:<path in the workspace>` or
/// `postgres://...`, with `${ENV}` substituted when it is used.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub timeout: Option<String>,
}

/// A token the repository grants: only the sha256 of the secret is ever in git.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: Option<String>,
    pub sha256: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A validation error, located in its file. Displayed as `file:line:column: message`,
/// the form editors and CI annotations understand.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A parsed YAML document together with the positions of its keys, so that later
/// checks can point at the exact line of the value they reject.
pub struct Parsed<T> {
    pub value: T,
    pub locator: Locator,
}

/// Parses `text` (the contents of `file`) into `T`. A text over `MAX_FILE_BYTES`,
/// syntax errors, unknown keys and wrong types come back as one `Problem` with
/// serde_norway's position.
pub fn parse<T: serde::de::DeserializeOwned + Default>(
    file: &str,
    text: &str,
) -> Result<Parsed<T>, Problem> {
    if text.len() > MAX_FILE_BYTES {
        return Err(too_large(file, text.len() as u64));
    }
    let value = if text.trim().is_empty() {
        // An empty file is an empty mapping, so the checks can say which keys are missing.
        T::default()
    } else {
        serde_norway::from_str::<T>(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            Problem {
                file: file.to_string(),
                line,
                column,
                message: clean_serde_message(&e.to_string()),
            }
        })?
    };
    Ok(Parsed {
        value,
        locator: Locator::new(file, text),
    })
}

/// The problem of a file over `MAX_FILE_BYTES`.
pub fn too_large(file: &str, bytes: u64) -> Problem {
    Problem {
        file: file.to_string(),
        line: 1,
        column: 1,
        message: format!(
            "the file is {bytes} bytes, over the limit of {MAX_FILE_BYTES} bytes (64 KiB); make descriptions shorter or split it"
        ),
    }
}

/// serde_norway appends " at line L column C" to its messages; we print the position
/// in front instead, so drop the tail.
fn clean_serde_message(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Positions of mapping keys by their dotted path (`params.limit.minimum`).
pub struct Locator {
    file: String,
    keys: HashMap<String, (usize, usize)>,
}

impl Locator {
    fn new(file: &str, text: &str) -> Locator {
        let mut collector = KeyCollector::default();
        // The text already parsed with serde_norway; should this parser disagree, the
        // problems simply point at line 1 rather than failing.
        let _ = Parser::new_from_str(text).load(&mut collector, false);
        Locator {
            file: file.to_string(),
            keys: collector.keys,
        }
    }

    /// A problem at the key `path` (dotted), or at the closest enclosing key that
    /// exists, or at the top of the file.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> Problem {
        let mut probe = path;
        let (line, column) = loop {
            if let Some(pos) = self.keys.get(probe) {
                break *pos;
            }
            match probe.rfind('.') {
                Some(i) => probe = &probe[..i],
                None => break (1, 1),
            }
        };
        Problem {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// Walks parser events keeping a stack of where we are: inside a mapping we alternate
/// between expecting a key and a value; a key's scalar records its position.
#[derive(Default)]
struct KeyCollector {
    keys: HashMap<String, (usize, usize)>,
    stack: Vec<Frame>,
}

enum Frame {
    Mapping {
        path: String,
        pending_key: Option<String>,
    },
    Sequence {
        path: String,
        index: usize,
    },
}

impl KeyCollector {
    /// The path of the value about to start, and advances the parent's state.
    fn next_value_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { path, pending_key }) => {
                pending_key.take().map(|k| join(path, &k))
            }
            Some(Frame::Sequence { path, index }) => {
                let p = join(path, &index.to_string());
                *index += 1;
                Some(p)
            }
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::Mapping {
                pending_key: None,
                ..
            })
        )
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for KeyCollector {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => {
                if self.expecting_key() {
                    if let Some(Frame::Mapping { path, pending_key }) = self.stack.last_mut() {
                        let full = join(path, &text);
                        // yaml-rust2 counts columns from 0; editors count from 1.
                        self.keys
                            .entry(full)
                            .or_insert((mark.line(), mark.col() + 1));
                        *pending_key = Some(text);
                    }
                } else {
                    self.next_value_path();
                }
            }
            Event::MappingStart(..) => {
                let path = self.next_value_path().unwrap_or_default();
                self.stack.push(Frame::Mapping {
                    path,
                    pending_key: None,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.next_value_path().unwrap_or_default();
                self.stack.push(Frame::Sequence { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.next_value_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_in_block_and_flow_style() {
        let text =
            "name: x\nparams:\n  dir:\n    type: string\n  limit: { type: integer, minimum: 1 }\n";
        let parsed = parse::<RawManifest>("manifests/x.yaml", text).unwrap();
        let p = parsed.locator.problem("params.dir.type", "m");
        assert_eq!((p.line, p.column), (4, 5));
        let p = parsed.locator.problem("params.limit.minimum", "m");
        assert_eq!(p.line, 5);
        // A key that is absent points at its closest parent.
        let p = parsed.locator.problem("params.limit.maximum", "m");
        assert_eq!(p.line, 5);
        assert_eq!(parsed.locator.problem("nothing", "m").line, 1);
    }

    #[test]
    fn unknown_keys_are_reported_with_their_position() {
        let err = parse::<RawManifest>("m.yaml", "name: x\nscirpt: a.sh\n")
            .err()
            .unwrap();
        assert_eq!(err.line, 2);
        assert!(
            err.message.contains("unknown field `scirpt`"),
            "{}",
            err.message
        );
        assert!(err.to_string().starts_with("m.yaml:2:"));
    }
}
