//! Prompts kept in git: `prompts/<name>.md`, a YAML front matter between two
//! `---` lines (`name`, `description`, `arguments`), then the prompt's text, a
//! template whose `{argument}` placeholders are filled when a client asks for
//! it (`{{` and `}}` write literal braces).
//!
//! Prompts belong to the registry of a commit: `check_prompts` reads them in the
//! same pass as the manifests, so they follow the same rules (every problem at
//! its file, line and column; a commit with any problem is not served, the last
//! good one stays). `Prompt` is valid by construction; `Prompt::fill` is the
//! only place arguments become a prompt's text. No I/O.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::bind::is_param_name;
use super::check::{is_name, suggest_name, Check};
use crate::layout::PROMPTS_DIR;
use crate::manifest::{self, Problem, RawPrompt};

/// Most prompts in `prompts/`: a menu a person picks from, not a library.
pub const MAX_PROMPTS: usize = 200;
/// Most bytes of all prompts together: a registry keeps every prompt's text in
/// memory, and every sync and write's check reads them all.
pub const MAX_PROMPTS_TOTAL_BYTES: usize = 2 << 20;
/// Most arguments of one prompt (a client asks a person for each).
pub const MAX_PROMPT_ARGUMENTS: usize = 32;
/// Brace problems reported for one prompt's text. A text of code with braces
/// not doubled would otherwise make one problem per brace; the first few show
/// what to do.
const MAX_TEXT_PROBLEMS: usize = 10;
/// Longest placeholder looked for after a `{`: an argument name is at most 64.
const MAX_PLACEHOLDER: usize = 64;
/// Most bytes of one filled prompt. A text of many placeholders repeats each
/// argument as often as it names it: the length is counted before the text is
/// built, so a large argument in a prompt of thousands of `{a}` is refused,
/// not made into gigabytes.
pub const MAX_FILLED_BYTES: usize = 4 << 20;

/// A checked prompt: valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub name: String,
    pub description: String,
    pub arguments: Vec<PromptArgument>,
    /// The text, in pieces: placeholders are indices into `arguments`.
    text: Vec<Part>,
    /// The file this prompt came from, relative to the repository root.
    pub file: String,
}

/// One argument a prompt takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptArgument {
    pub name: String,
    pub description: Option<String>,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Argument(usize),
}

/// Why arguments do not fill a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    #[error("the argument `{0}` is required")]
    Missing(String),
    #[error("`{0}` is not an argument of this prompt")]
    Unknown(String),
    #[error("the argument `{0}` must be text")]
    NotText(String),
    #[error("the prompt filled with these arguments would be {0} bytes, more than the {MAX_FILLED_BYTES} a prompt may be: give shorter arguments")]
    TooLong(usize),
}

impl Prompt {
    /// The prompt's text with `arguments` in its placeholders. An optional
    /// argument left out (or empty) fills its placeholders with nothing; a
    /// required one left out (or empty) and one the prompt does not declare
    /// are refused, by name.
    pub fn fill(&self, arguments: &Map<String, Value>) -> Result<String, FillError> {
        if let Some(unknown) = arguments
            .keys()
            .find(|k| !self.arguments.iter().any(|a| &a.name == *k))
        {
            return Err(FillError::Unknown(unknown.clone()));
        }
        let mut values = Vec::with_capacity(self.arguments.len());
        for a in &self.arguments {
            let value = match arguments.get(&a.name) {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(FillError::NotText(a.name.clone())),
            };
            if a.required && value.is_empty() {
                return Err(FillError::Missing(a.name.clone()));
            }
            values.push(value);
        }
        let length = self.text.iter().fold(0usize, |sum, part| {
            sum.saturating_add(match part {
                Part::Text(text) => text.len(),
                Part::Argument(i) => values.get(*i).map_or(0, |v| v.len()),
            })
        });
        if length > MAX_FILLED_BYTES {
            return Err(FillError::TooLong(length));
        }
        let mut out = String::with_capacity(length);
        for part in &self.text {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Argument(i) => out.push_str(values.get(*i).copied().unwrap_or_default()),
            }
        }
        Ok(out)
    }
}

/// Checks the prompts of one commit (`(path, text)` pairs, in path order):
/// every problem goes to `problems`; what is returned is sorted by name and
/// complete only when no problem was added. Past the folder's limits the
/// rest is not read (`super::within_limits`).
pub(super) fn check_prompts(
    files: &[(String, String)],
    problems: &mut Vec<Problem>,
) -> Vec<Prompt> {
    let limits = super::Limits {
        folder: PROMPTS_DIR,
        what: "prompts",
        count: MAX_PROMPTS,
        bytes: MAX_PROMPTS_TOTAL_BYTES,
    };
    let mut prompts: Vec<Prompt> = super::within_limits(files, &limits, problems)
        .into_iter()
        .filter_map(|(file, text)| check_prompt(file, text, problems))
        .collect();
    prompts.sort_by(|a, b| a.name.cmp(&b.name));
    prompts
}

/// A prompt file cut at its front matter's closing `---` line.
struct Split<'t> {
    /// From the opening `---` line to the closing one, excluded.
    front: &'t str,
    body: &'t str,
    /// The line the body starts on.
    body_line: usize,
}

/// Finds the front matter: the first line is `---`, and so is the line that
/// ends it. `Err` says what is missing.
fn split(text: &str) -> Result<Split<'_>, &'static str> {
    const HOW: &str = "a prompt starts with its front matter: a `---` line, then `name:`, `description:` and `arguments:`, then a `---` line, then the prompt's text";
    let mut lines = text.split_inclusive('\n');
    match lines.next() {
        Some(first) if first.trim_end() == "---" => {
            let mut end = first.len();
            for (i, line) in lines.enumerate() {
                if line.trim_end() == "---" {
                    return Ok(Split {
                        front: text.get(..end).unwrap_or_default(),
                        body: text.get(end + line.len()..).unwrap_or_default(),
                        // The opening line is 1, this loop starts at line 2.
                        body_line: i + 3,
                    });
                }
                end += line.len();
            }
            Err("the front matter has no closing `---` line; end it with one, then write the prompt's text")
        }
        _ => Err(HOW),
    }
}

fn check_prompt(file: &str, text: &str, problems: &mut Vec<Problem>) -> Option<Prompt> {
    let split = match split(text) {
        Ok(split) => split,
        Err(message) => {
            problems.push(super::problem_at_top(file, message.to_string()));
            return None;
        }
    };
    let before = problems.len();
    let parsed = manifest::parse_prompt(file, split.front);
    problems.extend(parsed.problems);
    let mut check = Check {
        locator: &parsed.locator,
        problems,
    };
    let RawPrompt {
        name,
        description,
        arguments: raw_arguments,
    } = parsed.value;
    if raw_arguments.len() > MAX_PROMPT_ARGUMENTS {
        check.at(
            "arguments",
            format!(
                "`arguments` has {} arguments, over the limit of {MAX_PROMPT_ARGUMENTS}",
                raw_arguments.len()
            ),
        );
        return None;
    }
    let stem = file
        .strip_prefix(&format!("{PROMPTS_DIR}/"))
        .and_then(|f| f.strip_suffix(".md"))
        .unwrap_or(file);
    let name = name.unwrap_or_default();
    if name.is_empty() {
        check.at(
            "name",
            format!("add `name: {stem}`: a prompt's name is its file's name without `.md`"),
        );
    } else if !is_name(&name) {
        let better = suggest_name(&name);
        check.at(
            "name",
            format!("`{name}` is not a valid name (lowercase letters, digits and dashes, at most 64); write `{better}` and name the file `{PROMPTS_DIR}/{better}.md`"),
        );
    } else if name != stem {
        check.at(
            "name",
            format!("a prompt's name is its file's name without `.md`: write `name: {stem}`, or rename the file to `{PROMPTS_DIR}/{name}.md`"),
        );
    }
    let description = description.unwrap_or_default().trim().to_string();
    if description.is_empty() {
        check.at("description", "add `description:`, one sentence saying what the prompt is for; the person choosing a prompt reads it");
    }
    let mut arguments = Vec::with_capacity(raw_arguments.len());
    let mut seen = HashSet::new();
    for (i, raw) in raw_arguments.into_iter().enumerate() {
        let key = format!("arguments.{i}.name");
        let name = raw.name.unwrap_or_default();
        if name.is_empty() {
            check.at(&key, "add `name:` to this argument, e.g. `name: path`");
        } else if !is_param_name(&name) {
            check.at(&key, format!("`{name}` is not a valid argument name (lowercase letters, digits, `_`, starting with a letter)"));
        } else if !seen.insert(name.clone()) {
            check.at(
                &key,
                format!("the argument `{name}` is declared twice; keep one"),
            );
        }
        arguments.push(PromptArgument {
            name,
            description: raw
                .description
                .map(|d| d.trim().to_string())
                .filter(|d| !d.is_empty()),
            required: raw.required.unwrap_or(false),
        });
    }
    let names: Vec<&str> = arguments.iter().map(|a| a.name.as_str()).collect();
    let text = template(file, &split, &names, check.problems);
    if problems.len() > before {
        return None;
    }
    Some(Prompt {
        name,
        description,
        arguments,
        text,
        file: file.to_string(),
    })
}

/// Reads the prompt's text into pieces, reporting each brace that is neither a
/// declared `{argument}` nor doubled, at its line and column (the first
/// `MAX_TEXT_PROBLEMS` of them). Blank lines and spaces around the text are
/// dropped; a text left empty is a problem.
fn template(file: &str, split: &Split, names: &[&str], problems: &mut Vec<Problem>) -> Vec<Part> {
    let body = split.body;
    let (mut line, mut column) = (split.body_line, 1);
    let mut reported = 0;
    let mut problem = |line: usize, column: usize, message: String| {
        reported += 1;
        problems.push(Problem {
            file: file.to_string(),
            line,
            column,
            message,
        });
        reported < MAX_TEXT_PROBLEMS
    };
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let at = (line, column);
        if c == '\n' {
            (line, column) = (line + 1, 1);
        } else {
            column += 1;
        }
        let doubled = matches!(chars.peek(), Some((_, next)) if *next == c);
        let going_on = match c {
            '{' | '}' if doubled => {
                chars.next();
                column += 1;
                text.push(c);
                true
            }
            '{' => {
                let rest = body.get(i + 1..).unwrap_or_default();
                let end = rest
                    .bytes()
                    .take(MAX_PLACEHOLDER + 1)
                    .position(|b| matches!(b, b'}' | b'{' | b'\n'));
                let inner = end.and_then(|end| rest.get(..end)).unwrap_or_default();
                let closed = end.is_some_and(|end| rest.as_bytes().get(end) == Some(&b'}'));
                if closed && is_param_name(inner) {
                    // ASCII to the closing brace: bytes are characters here.
                    for _ in 0..=inner.len() {
                        chars.next();
                    }
                    column += inner.len() + 1;
                    match names.iter().position(|n| *n == inner) {
                        Some(index) => {
                            parts.push(Part::Text(std::mem::take(&mut text)));
                            parts.push(Part::Argument(index));
                            true
                        }
                        None => problem(
                            at.0,
                            at.1,
                            format!("`{{{inner}}}` is not an argument of this prompt; declare it under `arguments:`, or write `{{{{{inner}}}}}` for the text `{{{inner}}}`"),
                        ),
                    }
                } else {
                    problem(
                        at.0,
                        at.1,
                        "`{` starts a placeholder such as `{path}`; write `{{` for a literal `{`"
                            .to_string(),
                    )
                }
            }
            '}' => problem(
                at.0,
                at.1,
                "a `}` alone is not text here; write `}}` for a literal `}`".to_string(),
            ),
            _ => {
                text.push(c);
                true
            }
        };
        if !going_on {
            break;
        }
    }
    parts.push(Part::Text(text));
    // Blank lines and spaces around the text are layout, not prompt.
    if let Some(Part::Text(first)) = parts.first_mut() {
        *first = first.trim_start().to_string();
    }
    if let Some(Part::Text(last)) = parts.last_mut() {
        *last = last.trim_end().to_string();
    }
    parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
    if parts.is_empty() && reported == 0 {
        problems.push(Problem {
            file: file.to_string(),
            line: split.body_line.saturating_sub(1),
            column: 1,
            message: "the prompt has no text after its front matter; write it below this line"
                .to_string(),
        });
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REVIEW: &str = "---\nname: review\ndescription: Review a file.\narguments:\n  - name: path\n    description: The file.\n    required: true\n  - name: focus\n---\n\nRead `{path}` and review it. Focus: {focus}\nLiteral braces: {{path}} and }}.\n\n";

    /// Checks `files` as `prompts/`: the prompts, or each problem's
    /// `file:line:column: message` in the registry's order.
    fn check(files: &[(String, String)]) -> Result<Vec<Prompt>, Vec<String>> {
        let mut problems = Vec::new();
        let prompts = check_prompts(files, &mut problems);
        problems.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        if problems.is_empty() {
            Ok(prompts)
        } else {
            Err(problems.iter().map(|p| p.to_string()).collect())
        }
    }

    fn one(text: &str) -> Result<Prompt, Vec<String>> {
        check(&[("prompts/review.md".into(), text.into())]).map(|mut p| p.remove(0))
    }

    fn args(v: serde_json::Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_prompt_is_read_and_filled() {
        let p = one(REVIEW).unwrap();
        assert_eq!(p.name, "review");
        assert_eq!(p.description, "Review a file.");
        assert_eq!(
            p.arguments,
            vec![
                PromptArgument {
                    name: "path".into(),
                    description: Some("The file.".into()),
                    required: true
                },
                PromptArgument {
                    name: "focus".into(),
                    description: None,
                    required: false
                },
            ]
        );
        assert_eq!(
            p.fill(&args(json!({"path": "src/a {b}.rs", "focus": "names"})))
                .unwrap(),
            "Read `src/a {b}.rs` and review it. Focus: names\nLiteral braces: {path} and }."
        );
        // An optional argument left out fills nothing.
        assert_eq!(
            p.fill(&args(json!({"path": "x"}))).unwrap(),
            "Read `x` and review it. Focus: \nLiteral braces: {path} and }."
        );
    }

    #[test]
    fn filling_refuses_what_the_prompt_does_not_take_by_name() {
        let p = one(REVIEW).unwrap();
        let fill = |v| p.fill(&args(v)).unwrap_err();
        assert_eq!(fill(json!({})), FillError::Missing("path".into()));
        assert_eq!(fill(json!({"path": ""})), FillError::Missing("path".into()));
        assert_eq!(
            fill(json!({"path": "x", "colour": "red"})),
            FillError::Unknown("colour".into())
        );
        assert_eq!(fill(json!({"path": 3})), FillError::NotText("path".into()));
        // A text of many placeholders does not multiply an argument unbounded.
        let many = format!(
            "---\nname: review\ndescription: x\narguments:\n  - name: a\n---\n{}\n",
            "{a}".repeat(20_000)
        );
        let many = one(&many).unwrap();
        assert!(many.fill(&args(json!({"a": "y".repeat(200)}))).is_ok());
        assert_eq!(
            many.fill(&args(json!({"a": "y".repeat(2_000)}))),
            Err(FillError::TooLong(40_000_000))
        );
        assert_eq!(
            FillError::Missing("path".into()).to_string(),
            "the argument `path` is required"
        );
    }

    #[test]
    fn every_problem_is_at_its_line_and_column() {
        let text = "---\nname: Review\ndescription: x\ncolour: red\narguments:\n  - name: Path\n  - name: focus\n    requird: true\n  - name: focus\n---\nRead {path} and {nope} with {focus}.\nA { alone, { not a name }, and } alone.\n";
        assert_eq!(
            one(text).unwrap_err(),
            vec![
                "prompts/review.md:2:7: `Review` is not a valid name (lowercase letters, digits and dashes, at most 64); write `review` and name the file `prompts/review.md`",
                "prompts/review.md:4:1: `colour` is not a key of a prompt's front matter; write one of `name`, `description`, `arguments`",
                "prompts/review.md:6:11: `Path` is not a valid argument name (lowercase letters, digits, `_`, starting with a letter)",
                "prompts/review.md:8:5: `requird` is not a key of a prompt argument; did you mean `required`?",
                "prompts/review.md:9:11: the argument `focus` is declared twice; keep one",
                "prompts/review.md:11:6: `{path}` is not an argument of this prompt; declare it under `arguments:`, or write `{{path}}` for the text `{path}`",
                "prompts/review.md:11:17: `{nope}` is not an argument of this prompt; declare it under `arguments:`, or write `{{nope}}` for the text `{nope}`",
                "prompts/review.md:12:3: `{` starts a placeholder such as `{path}`; write `{{` for a literal `{`",
                "prompts/review.md:12:12: `{` starts a placeholder such as `{path}`; write `{{` for a literal `{`",
                "prompts/review.md:12:25: a `}` alone is not text here; write `}}` for a literal `}`",
                "prompts/review.md:12:32: a `}` alone is not text here; write `}}` for a literal `}`",
            ]
        );
    }

    #[test]
    fn the_front_matter_and_the_name_are_required() {
        assert_eq!(
            one("Just text.\n").unwrap_err(),
            vec!["prompts/review.md:1:1: a prompt starts with its front matter: a `---` line, then `name:`, `description:` and `arguments:`, then a `---` line, then the prompt's text"]
        );
        assert_eq!(
            one("---\nname: review\ndescription: x\nText.\n").unwrap_err(),
            vec!["prompts/review.md:1:1: the front matter has no closing `---` line; end it with one, then write the prompt's text"]
        );
        assert_eq!(
            one("---\ndescription: x\n---\nText.\n").unwrap_err(),
            vec!["prompts/review.md:1:1: add `name: review`: a prompt's name is its file's name without `.md`"]
        );
        assert_eq!(
            one("---\nname: other\n---\n\n  \n").unwrap_err(),
            vec![
                "prompts/review.md:1:1: add `description:`, one sentence saying what the prompt is for; the person choosing a prompt reads it",
                "prompts/review.md:2:7: a prompt's name is its file's name without `.md`: write `name: review`, or rename the file to `prompts/other.md`",
                "prompts/review.md:3:1: the prompt has no text after its front matter; write it below this line",
            ]
        );
        // Windows line ends and a placeholder first and last.
        let p = one(
            "---\r\nname: review\r\ndescription: x\r\narguments: [{name: a}]\r\n---\r\n{a}\r\n",
        )
        .unwrap();
        assert_eq!(p.fill(&args(json!({"a": "A"}))).unwrap(), "A");
    }

    #[test]
    fn each_limit_is_refused_and_named() {
        let arguments: String = (0..=MAX_PROMPT_ARGUMENTS)
            .map(|i| format!("  - name: a{i}\n"))
            .collect();
        assert_eq!(
            one(&format!(
                "---\nname: review\ndescription: x\narguments:\n{arguments}---\nText.\n"
            ))
            .unwrap_err(),
            vec!["prompts/review.md:5:3: `arguments` has 33 arguments, over the limit of 32"]
        );
        // A text of code with braces not doubled: the first few are named.
        let code = "fn main() { }\n".repeat(100);
        let problems = one(&format!("---\nname: review\ndescription: x\n---\n{code}")).unwrap_err();
        assert_eq!(problems.len(), MAX_TEXT_PROBLEMS, "{problems:?}");
        assert!(
            problems[0].starts_with("prompts/review.md:5:11: `{`"),
            "{problems:?}"
        );

        let prompt = |i: usize| {
            (
                format!("prompts/p{i:03}.md"),
                format!("---\nname: p{i:03}\ndescription: x\n---\nText.\n"),
            )
        };
        let files: Vec<(String, String)> = (0..=MAX_PROMPTS).map(prompt).collect();
        assert_eq!(
            check(&files).unwrap_err(),
            vec!["prompts/p200.md:1:1: `prompts/` holds more than the limit of 200 prompts; remove some"]
        );
        assert_eq!(check(&files[..MAX_PROMPTS]).unwrap().len(), MAX_PROMPTS);
        let big = format!("{}{}", REVIEW, "x".repeat(manifest::MAX_FILE_BYTES));
        let problems = one(&big).unwrap_err();
        assert!(
            problems[0].contains("over the limit of 65536 bytes"),
            "{problems:?}"
        );
        let large = |i: usize| {
            let head = format!("---\nname: r{i:02}\ndescription: x\n---\n");
            let text = "x".repeat(manifest::MAX_FILE_BYTES - head.len());
            (format!("prompts/r{i:02}.md"), head + &text)
        };
        let files: Vec<(String, String)> = (0..40).map(large).collect();
        assert_eq!(
            check(&files).unwrap_err(),
            vec![
            "prompts/r32.md:1:1: the prompts together are over the limit of 2097152 bytes (2 MiB); make some smaller or remove some"]
        );
    }

    #[test]
    fn the_templates_example_is_valid() {
        let text = include_str!("../../prompts/review-file.md");
        let prompts = check(&[("prompts/review-file.md".into(), text.into())]).unwrap();
        let filled = prompts[0]
            .fill(&args(json!({"path": "scripts/hello.sh"})))
            .unwrap();
        assert!(
            filled.contains("Review the file `scripts/hello.sh`"),
            "{filled}"
        );
    }
}
