//! Manifests as written: the raw types of `manifests/*.yaml`, `dynapi.yaml` and
//! the front matter of `prompts/*.md`, and the `Problem` type every validation
//! error is reported in.
//!
//! This module owns reading text into raw types. The YAML is parsed into a tree of
//! nodes that keep their positions (yaml-rust2's events), then read field by field:
//! an unknown key or a value of the wrong type is one problem among the others, at
//! the position of what is wrong, and the rest of the file is still read. It does
//! no I/O and no semantic checks: `registry.rs` turns raw types into checked
//! endpoints, once, when a commit is loaded, and locates its own problems at the
//! values they reject with the `Locator` made here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::Serialize;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

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
#[derive(Debug, Default)]
pub struct RawManifest {
    pub name: Option<String>,
    pub description: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub script: Option<String>,
    pub args: Vec<String>,
    pub params: BTreeMap<String, RawParam>,
    pub output: Option<String>,
    /// A JSON Schema of the JSON the script prints (`output: json`), an object.
    pub output_schema: Option<serde_json::Value>,
    pub timeout: Option<String>,
    pub is_async: bool,
    pub consequential: Option<bool>,
    pub scope: Option<String>,
    pub concurrency: Option<u64>,
    pub sandbox: Option<RawSandbox>,
    pub env: BTreeMap<String, String>,
}

/// One parameter: the JSON-Schema subset DESIGN.md section 3 lists.
#[derive(Debug, Default, Clone)]
pub struct RawParam {
    pub kind: Option<String>,
    pub description: Option<String>,
    pub default: Option<serde_json::Value>,
    pub choices: Option<Vec<serde_json::Value>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<String>,
    pub items: Option<Box<RawParam>>,
    pub required: Option<bool>,
    pub allow_leading_dash: Option<bool>,
}

#[derive(Debug, Default)]
pub struct RawSandbox {
    pub network: Option<bool>,
    pub writable: Option<Vec<String>>,
}

/// `dynapi.yaml`, the repository's settings. Optional; validated like a manifest.
#[derive(Debug, Default)]
pub struct RawSettings {
    pub defaults: Option<RawDefaults>,
    pub tokens: Vec<RawToken>,
    pub databases: BTreeMap<String, RawDatabase>,
    pub policy: Option<RawPolicy>,
    pub sandbox: Option<String>,
    /// Libraries whose endpoints this repository serves beside its own.
    pub include: Vec<RawInclude>,
}

/// One `include:` entry: a library repository at a ref, which of its
/// endpoints, under which prefix, and what its scripts may do here.
#[derive(Debug, Default)]
pub struct RawInclude {
    pub repository: Option<String>,
    pub git_ref: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub sandbox: Option<RawSandbox>,
}

/// How writes reach the branch in GitHub mode: `commit` or `pull_request`.
#[derive(Debug, Default)]
pub struct RawPolicy {
    pub endpoints: Option<String>,
    pub files: Option<String>,
}

/// A database `POST /sql` may query: `url` is `sqlite:<path in the workspace>` or
/// `postgres://...`, with `${ENV}` substituted when it is used.
#[derive(Debug, Default)]
pub struct RawDatabase {
    pub url: Option<String>,
}

#[derive(Debug, Default)]
pub struct RawDefaults {
    pub timeout: Option<String>,
}

/// A token the repository grants: only the sha256 of the secret is ever in git.
#[derive(Debug, Default)]
pub struct RawToken {
    pub name: Option<String>,
    pub sha256: Option<String>,
    pub scopes: Vec<String>,
}

/// A prompt's front matter (`prompts/<name>.md`, between its `---` lines).
#[derive(Debug, Default)]
pub struct RawPrompt {
    pub name: Option<String>,
    pub description: Option<String>,
    pub arguments: Vec<RawPromptArgument>,
}

/// One of a prompt's `arguments`.
#[derive(Debug, Default)]
pub struct RawPromptArgument {
    pub name: Option<String>,
    pub description: Option<String>,
    pub required: Option<bool>,
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

/// Deepest nesting read. The template's manifests nest four levels (a parameter's
/// `items`); a `default` or `enum` value may nest more, but not without end: the
/// tree is walked and dropped recursively, so the depth is what bounds the stack.
const MAX_DEPTH: usize = 64;
/// Most nodes one file may make, aliases counted at their full size: 64 KiB of
/// text makes at most about 33,000 (`[a,a,a...]`), so only an alias that repeats
/// what it names over and over (a "billion laughs") reaches it.
const MAX_NODES: usize = 65_536;

/// A file's raw value together with where each of its keys and values stands,
/// and the problems found reading it (syntax, unknown keys, wrong types).
pub struct Parsed<T> {
    pub value: T,
    pub locator: Locator,
    pub problems: Vec<Problem>,
}

/// Reads a manifest. Whatever is wrong is in `problems`, each at its value; what
/// could be read is in `value`, so the registry's checks still run on the rest.
pub fn parse_manifest(file: &str, text: &str) -> Parsed<RawManifest> {
    parse(file, text)
}

/// Reads `dynapi.yaml`, like `parse_manifest`.
pub fn parse_settings(file: &str, text: &str) -> Parsed<RawSettings> {
    parse(file, text)
}

/// Reads a prompt's front matter, like `parse_manifest`. `front` is the file's
/// text from its opening `---` line up to its closing one (excluded): YAML
/// reads the opening line as the document's start, so lines and columns are
/// the file's own.
pub fn parse_prompt(file: &str, front: &str) -> Parsed<RawPrompt> {
    parse(file, front)
}

fn parse<T: FromNode + Default>(file: &str, text: &str) -> Parsed<T> {
    let mut locator = Locator {
        file: file.to_string(),
        spots: HashMap::new(),
        reported: HashSet::new(),
    };
    if text.len() > MAX_FILE_BYTES {
        return Parsed {
            value: T::default(),
            locator,
            problems: vec![too_large(file, text.len() as u64)],
        };
    }
    let root = match tree(text) {
        Ok(root) => root,
        Err((at, message)) => {
            return Parsed {
                value: T::default(),
                locator,
                problems: vec![Problem {
                    file: file.to_string(),
                    line: at.line,
                    column: at.column,
                    message,
                }],
            }
        }
    };
    locator.record("", None, &root);
    let mut reader = Reader {
        file,
        problems: Vec::new(),
        reported: HashSet::new(),
    };
    // An empty file is an empty mapping, so the checks can say which keys are missing.
    let value = T::read(&root, "", &mut reader).unwrap_or_default();
    locator.reported = reader.reported;
    Parsed {
        value,
        locator,
        problems: reader.problems,
    }
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

/// A line and a column, both counted from 1 as editors count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pos {
    line: usize,
    column: usize,
}

impl Pos {
    const TOP: Pos = Pos { line: 1, column: 1 };

    fn of(mark: &Marker) -> Pos {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Pos {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// One YAML node and where it starts.
#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    at: Pos,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `plain` is a scalar without quotes or tag, the only kind YAML resolves to
    /// null, booleans and numbers.
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>),
}

impl Node {
    fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The scalar as YAML resolves it (null, boolean, integer, real or string).
    fn resolved(&self) -> Option<Yaml> {
        match &self.kind {
            _ if self.is_null() => Some(Yaml::Null),
            Kind::Scalar { text, plain: true } => Some(Yaml::from_str(text)),
            Kind::Scalar { text, plain: false } => Some(Yaml::String(text.clone())),
            _ => None,
        }
    }

    /// What the node is, for a message: "`maybe`", "a list", "a mapping".
    fn describe(&self) -> String {
        match &self.kind {
            _ if self.is_null() => "empty".to_string(),
            Kind::Scalar { text, .. } => {
                let short: String = text.chars().take(40).collect();
                if short.len() < text.len() {
                    format!("`{short}...`")
                } else {
                    format!("`{short}`")
                }
            }
            Kind::Sequence(_) => "a list".to_string(),
            Kind::Mapping(_) => "a mapping".to_string(),
        }
    }
}

/// Parses `text` into its one document's tree. The parser's events are consumed
/// in a loop with an explicit stack, so neither nesting nor aliases can make the
/// work or the stack grow past the limits above. `Err` is the one problem that
/// stops reading: a syntax error, too deep, too many nodes, several documents.
fn tree(text: &str) -> Result<Node, (Pos, String)> {
    struct Open {
        node: Node,
        anchor: usize,
        key: Option<Node>,
        size: usize,
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut root = None;
    let mut documents = 0;
    let mut nodes = 0;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| (Pos::of(e.marker()), e.info().to_string()))?;
        let at = Pos::of(&mark);
        // A finished node: its anchor, its size (aliases included) and the node.
        let done = match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err((
                        at,
                        "a file holds one YAML document; remove the `---` and what follows it"
                            .to_string(),
                    ));
                }
                None
            }
            Event::Scalar(text, style, anchor, tag) => {
                nodes += 1;
                let plain = style == TScalarStyle::Plain && tag.is_none();
                Some((
                    anchor,
                    1,
                    Node {
                        kind: Kind::Scalar { text, plain },
                        at,
                    },
                ))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                nodes += 1;
                if stack.len() >= MAX_DEPTH {
                    return Err((at, format!("nested deeper than {MAX_DEPTH} levels")));
                }
                let kind = match event {
                    Event::SequenceStart(..) => Kind::Sequence(Vec::new()),
                    _ => Kind::Mapping(Vec::new()),
                };
                stack.push(Open {
                    node: Node { kind, at },
                    anchor,
                    key: None,
                    size: 1,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                stack.pop().map(|open| (open.anchor, open.size, open.node))
            }
            Event::Alias(id) => {
                let Some((node, size)) = anchors.get(&id) else {
                    return Err((at, "this alias names no anchor".to_string()));
                };
                nodes += size;
                let mut node = node.clone();
                node.at = at;
                Some((0, *size, node))
            }
            _ => None,
        };
        if nodes > MAX_NODES {
            return Err((at, format!("the file makes more than {MAX_NODES} values (aliases count each time they are used); write it out plainly")));
        }
        let Some((anchor, size, node)) = done else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(parent) => {
                parent.size += size;
                match (&mut parent.node.kind, parent.key.take()) {
                    (Kind::Sequence(items), _) => items.push(node),
                    (Kind::Mapping(entries), Some(key)) => entries.push((key, node)),
                    (Kind::Mapping(entries), None) => {
                        // yaml-rust2 marks a block mapping after its first key;
                        // it starts where that key does.
                        if entries.is_empty()
                            && (node.at.line, node.at.column)
                                < (parent.node.at.line, parent.node.at.column)
                        {
                            parent.node.at = node.at;
                        }
                        parent.key = Some(node)
                    }
                    (Kind::Scalar { .. }, _) => unreachable!("only collections are open"),
                }
            }
        }
    }
    // No document at all (an empty file, or only comments) is an empty value.
    Ok(root.unwrap_or(Node {
        kind: Kind::Scalar {
            text: String::new(),
            plain: true,
        },
        at: Pos::TOP,
    }))
}

/// Where each key and value of a file stands, by dotted path
/// (`params.limit.minimum`, `args.0`), and which paths already have a problem.
pub struct Locator {
    file: String,
    spots: HashMap<String, Spot>,
    reported: HashSet<String>,
}

struct Spot {
    key: Option<Pos>,
    value: Pos,
}

impl Locator {
    fn record(&mut self, path: &str, key: Option<Pos>, node: &Node) {
        if self.spots.contains_key(path) {
            // A repeated key (itself a problem): the first one is what is read.
            return;
        }
        self.spots.insert(
            path.to_string(),
            Spot {
                key,
                value: node.at,
            },
        );
        match &node.kind {
            Kind::Scalar { .. } => {}
            Kind::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.record(&join(path, &i.to_string()), None, item);
                }
            }
            Kind::Mapping(entries) => {
                for (k, v) in entries {
                    if let Kind::Scalar { text, .. } = &k.kind {
                        self.record(&join(path, text), Some(k.at), v);
                    }
                }
            }
        }
    }

    fn closest(&self, path: &str) -> Option<&Spot> {
        let mut probe = path;
        loop {
            if let Some(spot) = self.spots.get(probe) {
                return Some(spot);
            }
            probe = &probe[..probe.rfind('.')?];
        }
    }

    /// A problem at the value of `path` (dotted), or at the value of the closest
    /// enclosing key that exists, or at the top of the file.
    pub fn problem(&self, path: &str, message: impl Into<String>) -> Problem {
        let at = self.closest(path).map_or(Pos::TOP, |s| s.value);
        self.at(at, message.into())
    }

    /// A problem with the key of `path` itself (a name that is not a valid name),
    /// at the key; where there is none, like `problem`.
    pub fn key_problem(&self, path: &str, message: impl Into<String>) -> Problem {
        let at = match self.spots.get(path) {
            Some(Spot { key: Some(key), .. }) => *key,
            _ => self.closest(path).map_or(Pos::TOP, |s| s.value),
        };
        self.at(at, message.into())
    }

    /// Whether reading already reported the value at `path` or around it (a value
    /// of the wrong type is left out): the checks then say nothing more about it.
    pub fn reported(&self, path: &str) -> bool {
        let mut probe = path;
        loop {
            if self.reported.contains(probe) {
                return true;
            }
            match probe.rfind('.') {
                Some(i) => probe = &probe[..i],
                None => return false,
            }
        }
    }

    fn at(&self, at: Pos, message: String) -> Problem {
        Problem {
            file: self.file.clone(),
            line: at.line,
            column: at.column,
            message,
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Collects the problems of reading one file's tree into raw types.
struct Reader<'a> {
    file: &'a str,
    problems: Vec<Problem>,
    /// Paths whose value was not read because it was wrong.
    reported: HashSet<String>,
}

impl Reader<'_> {
    fn problem(&mut self, at: Pos, message: String) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            message,
        });
    }

    /// The value at `path` is not `expected`: reported, and left out.
    fn wrong<T>(&mut self, node: &Node, path: &str, expected: &str) -> Option<T> {
        let what = if path.is_empty() {
            "the file".to_string()
        } else {
            format!("`{path}`")
        };
        self.problem(
            node.at,
            format!("{what} must be {expected}, not {}", node.describe()),
        );
        self.reported.insert(path.to_string());
        None
    }

    /// An optional field: an empty value is `None`, like an absent one.
    fn optional<T: FromNode>(&mut self, node: &Node, path: &str) -> Option<T> {
        if node.is_null() {
            None
        } else {
            T::read(node, path, self)
        }
    }

    /// The entries of a mapping (an empty value has none), each key text once.
    /// A key that is not text, or repeated, is reported here.
    fn entries<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
    ) -> Option<Vec<(&'n str, &'n Node)>> {
        let entries = match &node.kind {
            _ if node.is_null() => return Some(Vec::new()),
            Kind::Mapping(entries) => entries,
            _ => return self.wrong(node, path, what),
        };
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            match &key.kind {
                Kind::Scalar { text, .. } if seen.insert(text.as_str()) => {
                    out.push((text.as_str(), value))
                }
                Kind::Scalar { text, .. } => {
                    self.problem(
                        key.at,
                        format!("`{}` is written twice; keep one", join(path, text)),
                    );
                }
                _ => self.problem(key.at, "a key must be plain text".to_string()),
            }
        }
        Some(out)
    }

    /// Reads the fields of a struct: `field` takes each known key; every other key
    /// is reported at the key, with the closest known one as a suggestion.
    fn fields(
        &mut self,
        node: &Node,
        path: &str,
        what: &str,
        known: &[&str],
        mut field: impl FnMut(&mut Self, &str, &Node, &str),
    ) -> Option<()> {
        let expected = format!("a mapping of {what}'s keys (`key: value` lines)");
        for (key, value) in self.entries(node, path, &expected)? {
            if known.contains(&key) {
                field(self, key, value, &join(path, key));
            } else {
                let at = match &node.kind {
                    Kind::Mapping(entries) => entries
                        .iter()
                        .find(|(k, _)| matches!(&k.kind, Kind::Scalar { text, .. } if text == key))
                        .map_or(value.at, |(k, _)| k.at),
                    _ => value.at,
                };
                let hint = match closest_word(key, known) {
                    Some(near) => format!("did you mean `{near}`?"),
                    None => format!("write one of `{}`", known.join("`, `")),
                };
                self.problem(at, format!("`{key}` is not a key of {what}; {hint}"));
            }
        }
        Some(())
    }
}

/// The known word within two edits of `word`, if any (a typo's likely intent).
fn closest_word<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let next = (diagonal + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(row[j + 1] + 1);
                diagonal = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    };
    // Keys are short; a long unknown key is not worth comparing letter by letter.
    if word.len() > 64 {
        return None;
    }
    known
        .iter()
        .map(|k| {
            (
                distance(&word.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// A raw type read from a node. `None` means the node was not such a value: the
/// problem is reported, and the field stays unset.
trait FromNode: Sized {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self>;
}

impl FromNode for String {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => Some(text.clone()),
            _ => r.wrong(node, path, "text"),
        }
    }
}

impl FromNode for bool {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        match node.resolved() {
            Some(Yaml::Boolean(b)) => Some(b),
            _ => r.wrong(node, path, "`true` or `false`"),
        }
    }
}

impl FromNode for u64 {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        match node.resolved() {
            Some(Yaml::Integer(n)) if n >= 0 => Some(n as u64),
            _ => r.wrong(node, path, "a whole number, 0 or more"),
        }
    }
}

impl FromNode for f64 {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        match node.resolved() {
            Some(Yaml::Integer(n)) => Some(n as f64),
            Some(Yaml::Real(text)) => Yaml::Real(text)
                .as_f64()
                .filter(|n| n.is_finite())
                .or_else(|| r.wrong(node, path, "a number")),
            _ => r.wrong(node, path, "a number"),
        }
    }
}

/// Any value (a parameter's `default` and `enum` values), as JSON.
impl FromNode for serde_json::Value {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        use serde_json::Value;
        match &node.kind {
            Kind::Scalar { .. } => match node.resolved()? {
                Yaml::Integer(n) => Some(Value::from(n)),
                Yaml::Real(text) => match Yaml::Real(text)
                    .as_f64()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => Some(Value::Number(n)),
                    None => r.wrong(node, path, "a finite number"),
                },
                Yaml::Boolean(b) => Some(Value::Bool(b)),
                Yaml::String(s) => Some(Value::String(s)),
                _ => Some(Value::Null),
            },
            Kind::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(Self::read(item, &join(path, &i.to_string()), r));
                }
                out.into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(Value::Array)
            }
            Kind::Mapping(_) => {
                let map: BTreeMap<String, Value> = FromNode::read(node, path, r)?;
                Some(Value::Object(map.into_iter().collect()))
            }
        }
    }
}

impl<T: FromNode> FromNode for Box<T> {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        T::read(node, path, r).map(Box::new)
    }
}

/// A list; an empty value is an empty list. One wrong item leaves the whole list
/// out (every wrong item is reported), so the indices the checks name stay true.
impl<T: FromNode> FromNode for Vec<T> {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let items = match &node.kind {
            _ if node.is_null() => return Some(Vec::new()),
            Kind::Sequence(items) => items,
            _ => return r.wrong(node, path, "a list, like `[a, b]`"),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(T::read(item, &join(path, &i.to_string()), r));
        }
        out.into_iter().collect()
    }
}

/// A mapping with keys of the user's choosing (`params`, `env`, `databases`); an
/// empty value is an empty mapping. A wrong value leaves out its entry alone.
impl<T: FromNode> FromNode for BTreeMap<String, T> {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut out = BTreeMap::new();
        for (key, value) in r.entries(node, path, "a mapping (`key: value` lines)")? {
            if let Some(v) = T::read(value, &join(path, key), r) {
                out.insert(key.to_string(), v);
            }
        }
        Some(out)
    }
}

impl FromNode for RawManifest {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        const KEYS: &[&str] = &[
            "name",
            "description",
            "method",
            "path",
            "script",
            "args",
            "params",
            "output",
            "output_schema",
            "timeout",
            "async",
            "consequential",
            "scope",
            "concurrency",
            "sandbox",
            "env",
        ];
        let mut m = RawManifest::default();
        r.fields(node, path, "a manifest", KEYS, |r, key, v, at| match key {
            "name" => m.name = r.optional(v, at),
            "description" => m.description = r.optional(v, at),
            "method" => m.method = r.optional(v, at),
            "path" => m.path = r.optional(v, at),
            "script" => m.script = r.optional(v, at),
            "args" => m.args = r.optional(v, at).unwrap_or_default(),
            "params" => m.params = r.optional(v, at).unwrap_or_default(),
            "output" => m.output = r.optional(v, at),
            "output_schema" => m.output_schema = r.optional(v, at),
            "timeout" => m.timeout = r.optional(v, at),
            "async" => m.is_async = r.optional(v, at).unwrap_or_default(),
            "consequential" => m.consequential = r.optional(v, at),
            "scope" => m.scope = r.optional(v, at),
            "concurrency" => m.concurrency = r.optional(v, at),
            "sandbox" => m.sandbox = r.optional(v, at),
            _ => m.env = r.optional(v, at).unwrap_or_default(),
        })?;
        Some(m)
    }
}

impl FromNode for RawParam {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        const KEYS: &[&str] = &[
            "type",
            "description",
            "default",
            "enum",
            "minimum",
            "maximum",
            "minLength",
            "maxLength",
            "pattern",
            "items",
            "required",
            "allow_leading_dash",
        ];
        let mut p = RawParam::default();
        r.fields(node, path, "a parameter", KEYS, |r, key, v, at| match key {
            "type" => p.kind = r.optional(v, at),
            "description" => p.description = r.optional(v, at),
            // `default: ~` is no default, as before: JSON has no use for a null default.
            "default" => p.default = r.optional(v, at),
            "enum" => p.choices = r.optional(v, at),
            "minimum" => p.minimum = r.optional(v, at),
            "maximum" => p.maximum = r.optional(v, at),
            "minLength" => p.min_length = r.optional(v, at),
            "maxLength" => p.max_length = r.optional(v, at),
            "pattern" => p.pattern = r.optional(v, at),
            "items" => p.items = r.optional(v, at),
            "required" => p.required = r.optional(v, at),
            _ => p.allow_leading_dash = r.optional(v, at),
        })?;
        Some(p)
    }
}

impl FromNode for RawSandbox {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut s = RawSandbox::default();
        r.fields(
            node,
            path,
            "`sandbox`",
            &["network", "writable"],
            |r, key, v, at| match key {
                "network" => s.network = r.optional(v, at),
                _ => s.writable = r.optional(v, at),
            },
        )?;
        Some(s)
    }
}

impl FromNode for RawSettings {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        const KEYS: &[&str] = &[
            "defaults",
            "tokens",
            "databases",
            "policy",
            "sandbox",
            "include",
        ];
        let mut s = RawSettings::default();
        r.fields(
            node,
            path,
            "`dynapi.yaml`",
            KEYS,
            |r, key, v, at| match key {
                "defaults" => s.defaults = r.optional(v, at),
                "tokens" => s.tokens = r.optional(v, at).unwrap_or_default(),
                "databases" => s.databases = r.optional(v, at).unwrap_or_default(),
                "policy" => s.policy = r.optional(v, at),
                "include" => s.include = r.optional(v, at).unwrap_or_default(),
                _ => s.sandbox = r.optional(v, at),
            },
        )?;
        Some(s)
    }
}

impl FromNode for RawInclude {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut i = RawInclude::default();
        r.fields(
            node,
            path,
            "an include",
            &["repository", "ref", "endpoints", "prefix", "sandbox"],
            |r, key, v, at| match key {
                "repository" => i.repository = r.optional(v, at),
                "ref" => i.git_ref = r.optional(v, at),
                "endpoints" => i.endpoints = r.optional(v, at),
                "prefix" => i.prefix = r.optional(v, at),
                _ => i.sandbox = r.optional(v, at),
            },
        )?;
        Some(i)
    }
}

impl FromNode for RawPolicy {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut p = RawPolicy::default();
        r.fields(
            node,
            path,
            "`policy`",
            &["endpoints", "files"],
            |r, key, v, at| match key {
                "endpoints" => p.endpoints = r.optional(v, at),
                _ => p.files = r.optional(v, at),
            },
        )?;
        Some(p)
    }
}

impl FromNode for RawDatabase {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut d = RawDatabase::default();
        r.fields(node, path, "a database", &["url"], |r, _, v, at| {
            d.url = r.optional(v, at)
        })?;
        Some(d)
    }
}

impl FromNode for RawDefaults {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut d = RawDefaults::default();
        r.fields(node, path, "`defaults`", &["timeout"], |r, _, v, at| {
            d.timeout = r.optional(v, at)
        })?;
        Some(d)
    }
}

impl FromNode for RawPrompt {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut p = RawPrompt::default();
        r.fields(
            node,
            path,
            "a prompt's front matter",
            &["name", "description", "arguments"],
            |r, key, v, at| match key {
                "name" => p.name = r.optional(v, at),
                "description" => p.description = r.optional(v, at),
                _ => p.arguments = r.optional(v, at).unwrap_or_default(),
            },
        )?;
        Some(p)
    }
}

impl FromNode for RawPromptArgument {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut a = RawPromptArgument::default();
        r.fields(
            node,
            path,
            "a prompt argument",
            &["name", "description", "required"],
            |r, key, v, at| match key {
                "name" => a.name = r.optional(v, at),
                "description" => a.description = r.optional(v, at),
                _ => a.required = r.optional(v, at),
            },
        )?;
        Some(a)
    }
}

impl FromNode for RawToken {
    fn read(node: &Node, path: &str, r: &mut Reader) -> Option<Self> {
        let mut t = RawToken::default();
        r.fields(
            node,
            path,
            "a token",
            &["name", "sha256", "scopes"],
            |r, key, v, at| match key {
                "name" => t.name = r.optional(v, at),
                "sha256" => t.sha256 = r.optional(v, at),
                _ => t.scopes = r.optional(v, at).unwrap_or_default(),
            },
        )?;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `file:line:column: message` of each problem reading `text` as a manifest.
    fn read(text: &str) -> Vec<String> {
        parse_manifest("m.yaml", text)
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn locates_values_in_block_and_flow_style() {
        let text = "name: x\nparams:\n  dir:\n    type: string\n  limit: { type: integer, minimum: 1 }\nargs:\n  - \"{dir}\"\n";
        let parsed = parse_manifest("manifests/x.yaml", text);
        assert!(parsed.problems.is_empty());
        let at = |path: &str| {
            let p = parsed.locator.problem(path, "m");
            (p.line, p.column)
        };
        assert_eq!(at("name"), (1, 7));
        assert_eq!(at("params.dir.type"), (4, 11));
        assert_eq!(at("params.limit.minimum"), (5, 36));
        assert_eq!(at("args.0"), (7, 5));
        // A key that is absent points at its closest parent's value.
        assert_eq!(at("params.limit.maximum"), (5, 10));
        assert_eq!(at("nothing"), (1, 1));
        // A problem with a key's own name points at the key.
        let p = parsed.locator.key_problem("params.dir", "m");
        assert_eq!((p.line, p.column), (3, 3));
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_reported_and_the_rest_is_read() {
        let text = "name: x\nscirpt: a.sh\nconsequential: maybe\nconcurrency: -1\nargs: [a, [b]]\nparams:\n  n: {type: integer, minimum: five, colour: red}\nsandbox: {network: true, writeable: [out]}\n";
        let parsed = parse_manifest("m.yaml", text);
        let problems: Vec<String> = parsed.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            vec![
                "m.yaml:2:1: `scirpt` is not a key of a manifest; did you mean `script`?",
                "m.yaml:3:16: `consequential` must be `true` or `false`, not `maybe`",
                "m.yaml:4:14: `concurrency` must be a whole number, 0 or more, not `-1`",
                "m.yaml:5:11: `args.1` must be text, not a list",
                "m.yaml:7:31: `params.n.minimum` must be a number, not `five`",
                "m.yaml:7:37: `colour` is not a key of a parameter; write one of `type`, `description`, `default`, `enum`, `minimum`, `maximum`, `minLength`, `maxLength`, `pattern`, `items`, `required`, `allow_leading_dash`",
                "m.yaml:8:26: `writeable` is not a key of `sandbox`; did you mean `writable`?",
            ]
        );
        // What was right is read; what was wrong is left out and marked reported.
        let m = parsed.value;
        assert_eq!(m.name.as_deref(), Some("x"));
        assert_eq!(m.params["n"].kind.as_deref(), Some("integer"));
        assert_eq!(m.sandbox.and_then(|s| s.network), Some(true));
        assert!(m.args.is_empty() && m.consequential.is_none());
        assert!(parsed.locator.reported("consequential"));
        assert!(parsed.locator.reported("args.1"));
        assert!(!parsed.locator.reported("name"));
    }

    #[test]
    fn values_resolve_as_yaml_does() {
        let text = "name: 12\nasync: true\nparams:\n  a: {default: 0x10, enum: [1.5, \"2\", ~, yes], maximum: 3}\n";
        let parsed = parse_manifest("m.yaml", text);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let m = parsed.value;
        assert_eq!(m.name.as_deref(), Some("12"));
        assert!(m.is_async);
        let a = &m.params["a"];
        assert_eq!(a.default, Some(serde_json::json!(16)));
        assert_eq!(
            a.choices,
            Some(vec![
                serde_json::json!(1.5),
                serde_json::json!("2"),
                serde_json::Value::Null,
                serde_json::json!("yes")
            ])
        );
        assert_eq!(a.maximum, Some(3.0));
        // Empty values are absent ones; an empty file is an empty manifest.
        assert!(read("name:\nargs:\nparams:\n").is_empty());
        assert!(read("").is_empty() && read("# nothing\n").is_empty());
    }

    #[test]
    fn what_stops_reading_is_one_problem_at_its_place() {
        assert_eq!(
            read("name: x\nparams: [\n"),
            vec!["m.yaml:3:1: while parsing a node, did not find expected node content"]
        );
        assert_eq!(
            read("- a\n- b\n"),
            vec!["m.yaml:1:1: the file must be a mapping of a manifest's keys (`key: value` lines), not a list"]
        );
        assert_eq!(
            read("name: x\nname: y\n"),
            vec!["m.yaml:2:1: `name` is written twice; keep one"]
        );
        assert_eq!(
            read("name: x\n---\nname: y\n"),
            vec![
                "m.yaml:2:1: a file holds one YAML document; remove the `---` and what follows it"
            ]
        );
        let deep = format!("env: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            read(&deep),
            vec!["m.yaml:1:69: nested deeper than 64 levels"]
        );
        // Aliases that multiply what they name stop at a bound, not at memory's end.
        let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            laughs.push_str(&format!(
                "l{i}: &l{i} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            ));
        }
        let problems = read(&laughs);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("more than 65536 values"),
            "{problems:?}"
        );
    }
}
