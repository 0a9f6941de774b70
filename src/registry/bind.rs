//! Binding request values to a run: `Param` (a checked parameter, its JSON
//! Schema), `coerce` (text from a URL to the parameter's type), and
//! `Endpoint::bind`, the only place request values become argv, environment and
//! stdin (`Invocation`), with the argv template (`ArgPart`) they fill.

use serde::Serialize;
use serde_json::{Map, Value};

use super::Endpoint;

/// `[a-z_][a-z0-9_]{0,63}`: parameter names, which also become environment names.
pub(super) fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
        && s.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    String,
    Integer,
    Number,
    Boolean,
    Array,
}

impl ParamKind {
    pub(super) fn parse(s: &str) -> Option<ParamKind> {
        Some(match s {
            "string" => ParamKind::String,
            "integer" => ParamKind::Integer,
            "number" => ParamKind::Number,
            "boolean" => ParamKind::Boolean,
            "array" => ParamKind::Array,
            _ => return None,
        })
    }
}

/// A checked parameter.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub kind: ParamKind,
    pub description: Option<String>,
    pub default: Option<Value>,
    pub choices: Option<Vec<Value>>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub pattern: Option<regex::Regex>,
    pub items: Option<Box<Param>>,
    pub required: bool,
    pub allow_leading_dash: bool,
}

/// One piece of an argv template: literal text or a parameter's value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ArgPart {
    Text(String),
    Param(String),
}

/// Splits `--max={limit}` into text and parameter parts. A `{` that does not open a
/// valid `{name}` is literal text.
pub(super) fn parse_template(arg: &str) -> Vec<ArgPart> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = arg;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_param_name(&after[..close]) => {
                text.push_str(&rest[..open]);
                if !text.is_empty() {
                    parts.push(ArgPart::Text(std::mem::take(&mut text)));
                }
                parts.push(ArgPart::Param(after[..close].to_string()));
                rest = &after[close + 1..];
            }
            _ => {
                text.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(ArgPart::Text(text));
    }
    parts
}

/// A parameter the caller got wrong; answered as 400 with the parameter named.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamError {
    pub param: Option<String>,
    pub message: String,
    /// The value is valid but too large to pass to a process (413).
    pub too_large: bool,
}

/// The largest value that also goes into the environment as
/// `DYNAPI_PARAM_<NAME>`; larger ones are on stdin only. Linux refuses any
/// single argv or environment string over 128 KiB (`MAX_ARG_STRLEN`), and all
/// of them together over a quarter of the stack limit.
pub const MAX_ENV_VALUE: usize = 32 << 10;
/// The largest single argv entry (`MAX_ARG_STRLEN`, less its NUL).
pub const MAX_ARG: usize = (128 << 10) - 1;
/// The most argv may hold in all, well under `ARG_MAX` (2 MiB with the usual
/// 8 MiB stack), leaving room for the environment.
pub const MAX_ARGV: usize = 1 << 20;

/// What running an endpoint needs, built from validated parameters.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// All parameters (defaults applied) as one JSON object, for the script's stdin.
    pub stdin: Vec<u8>,
}

impl Param {
    /// Validates (and, for text from a URL, converts) one value against this parameter.
    pub(super) fn check_value(&self, value: Value) -> Result<Value, String> {
        let value = coerce(self.kind, value)?;
        match (&value, self.kind) {
            (Value::String(s), ParamKind::String) => {
                let len = s.chars().count() as u64;
                if let Some(min) = self.min_length.filter(|m| len < *m) {
                    return Err(format!("must be at least {min} characters long"));
                }
                if let Some(max) = self.max_length.filter(|m| len > *m) {
                    return Err(format!("must be at most {max} characters long"));
                }
                if let Some(re) = self.pattern.as_ref().filter(|re| !re.is_match(s)) {
                    return Err(format!("must match the pattern `{}`", re.as_str()));
                }
                if s.contains('\0') {
                    return Err("must not contain NUL characters".into());
                }
            }
            (Value::Number(n), ParamKind::Integer | ParamKind::Number) => {
                let x = n.as_f64().unwrap_or(0.0);
                if let Some(min) = self.minimum.filter(|m| x < *m) {
                    return Err(format!("must be at least {min}"));
                }
                if let Some(max) = self.maximum.filter(|m| x > *m) {
                    return Err(format!("must be at most {max}"));
                }
            }
            (Value::Array(items), ParamKind::Array) => {
                let item = self.items.as_ref().ok_or("has no item type")?;
                let checked: Result<Vec<Value>, String> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        item.check_value(v.clone())
                            .map_err(|e| format!("item {i} {e}"))
                    })
                    .collect();
                return Ok(Value::Array(checked?)).and_then(|v| self.check_choice(v));
            }
            _ => {}
        }
        self.check_choice(value)
    }

    fn schema(&self) -> Value {
        let mut s = Map::new();
        let kind = match self.kind {
            ParamKind::String => "string",
            ParamKind::Integer => "integer",
            ParamKind::Number => "number",
            ParamKind::Boolean => "boolean",
            ParamKind::Array => "array",
        };
        s.insert("type".into(), Value::from(kind));
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                s.insert(k.into(), v);
            }
        };
        put("description", self.description.clone().map(Value::from));
        put("default", self.default.clone());
        put("enum", self.choices.clone().map(Value::Array));
        let bound = |b: Option<f64>| match (b, self.kind) {
            (Some(x), ParamKind::Integer) if x.fract() == 0.0 => Some(Value::from(x as i64)),
            (b, _) => b.and_then(serde_json::Number::from_f64).map(Value::Number),
        };
        put("minimum", bound(self.minimum));
        put("maximum", bound(self.maximum));
        put("minLength", self.min_length.map(Value::from));
        put("maxLength", self.max_length.map(Value::from));
        put(
            "pattern",
            self.pattern.as_ref().map(|r| Value::from(r.as_str())),
        );
        put("items", self.items.as_ref().map(|i| i.schema()));
        Value::Object(s)
    }

    fn check_choice(&self, value: Value) -> Result<Value, String> {
        match &self.choices {
            Some(choices) if !choices.contains(&value) => {
                let list: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
                Err(format!("must be one of {}", list.join(", ")))
            }
            _ => Ok(value),
        }
    }
}

/// Converts a value to `kind` where that is unambiguous: numbers and booleans may
/// arrive as text (query strings and path segments always do, and assistants often
/// quote numbers), a single value may stand for a one-item array.
fn coerce(kind: ParamKind, value: Value) -> Result<Value, String> {
    let type_error = |v: &Value| format!("must be {}, not {}", kind_name(kind), value_kind(v));
    match (kind, value) {
        (ParamKind::String, Value::String(s)) => Ok(Value::String(s)),
        (ParamKind::String, v @ (Value::Number(_) | Value::Bool(_))) => {
            Ok(Value::String(v.to_string()))
        }
        (ParamKind::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Value::Number(n)),
        (ParamKind::Integer, Value::Number(n))
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 9e15) =>
        {
            Ok(Value::from(n.as_f64().unwrap_or(0.0) as i64))
        }
        (ParamKind::Integer, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("must be an integer, not `{s}`")),
        (ParamKind::Number, Value::Number(n)) => Ok(Value::Number(n)),
        (ParamKind::Number, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("must be a number, not `{s}`")),
        (ParamKind::Boolean, Value::Bool(b)) => Ok(Value::Bool(b)),
        (ParamKind::Boolean, Value::String(s)) => match s.as_str() {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("must be true or false, not `{s}`")),
        },
        (ParamKind::Array, Value::Array(a)) => Ok(Value::Array(a)),
        (ParamKind::Array, v @ (Value::String(_) | Value::Number(_) | Value::Bool(_))) => {
            Ok(Value::Array(vec![v]))
        }
        (_, v) => Err(type_error(&v)),
    }
}

fn kind_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::String => "a string",
        ParamKind::Integer => "an integer",
        ParamKind::Number => "a number",
        ParamKind::Boolean => "true or false",
        ParamKind::Array => "an array",
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text a value takes in argv and the environment.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Endpoint {
    /// Validates the caller's parameters (unknown names, types, bounds, required,
    /// leading dashes) and builds argv, environment and stdin. Nothing else may
    /// turn request data into process input.
    pub fn bind(&self, mut input: Map<String, Value>) -> Result<Invocation, ParamError> {
        if let Some(unknown) = input
            .keys()
            .find(|k| !self.params.iter().any(|p| &p.name == *k))
        {
            let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
            return Err(ParamError {
                param: Some(unknown.clone()),
                message: if known.is_empty() {
                    format!(
                        "unknown parameter `{unknown}`: endpoint `{}` takes no parameters",
                        self.name
                    )
                } else {
                    format!(
                        "unknown parameter `{unknown}`: endpoint `{}` takes {}",
                        self.name,
                        known.join(", ")
                    )
                },
                too_large: false,
            });
        }
        let mut values = Map::new();
        for p in &self.params {
            let value = match input.remove(&p.name) {
                Some(Value::Null) | None => match &p.default {
                    Some(d) => d.clone(),
                    None if p.required || self.path_has(&p.name) => {
                        return Err(ParamError {
                            param: Some(p.name.clone()),
                            message: format!("parameter `{}` is required", p.name),
                            too_large: false,
                        })
                    }
                    None => continue,
                },
                Some(v) => p.check_value(v).map_err(|m| ParamError {
                    param: Some(p.name.clone()),
                    message: format!("parameter `{}` {m}", p.name),
                    too_large: false,
                })?,
            };
            values.insert(p.name.clone(), value);
        }

        let mut args = Vec::new();
        for template in &self.args {
            // A template that is exactly one array parameter becomes one argv entry per item.
            if let [ArgPart::Param(name)] = template.as_slice() {
                if let Some(Value::Array(items)) = values.get(name) {
                    for item in items {
                        args.push(self.checked_arg(name, as_text(item))?);
                    }
                    continue;
                }
            }
            let mut arg = String::new();
            for part in template {
                match part {
                    ArgPart::Text(t) => arg.push_str(t),
                    ArgPart::Param(name) => {
                        let text = match values.get(name) {
                            Some(Value::Array(items)) => {
                                items.iter().map(as_text).collect::<Vec<_>>().join(",")
                            }
                            Some(v) => as_text(v),
                            None => String::new(),
                        };
                        let text = self.checked_arg(name, text)?;
                        arg.push_str(&text);
                    }
                }
            }
            args.push(arg);
        }

        if let Some(long) = args.iter().find(|a| a.len() > MAX_ARG) {
            return Err(ParamError {
                param: None,
                message: format!(
                    "an argument would be {} bytes; a process takes at most {MAX_ARG} in one argument (the script can read large values from stdin)",
                    long.len()
                ),
                too_large: true,
            });
        }
        let total: usize = args.iter().map(|a| a.len() + 1).sum();
        if total > MAX_ARGV {
            return Err(ParamError {
                param: None,
                message: format!(
                    "the arguments would be {total} bytes; a run takes at most {MAX_ARGV} (the script can read large values from stdin)"
                ),
                too_large: true,
            });
        }
        // Large values stay on stdin only: one over 128 KiB in the environment
        // would make the process fail to start at all.
        let env = values
            .iter()
            .map(|(k, v)| (k, as_text(v)))
            .filter(|(_, v)| v.len() <= MAX_ENV_VALUE)
            .map(|(k, v)| (format!("DYNAPI_PARAM_{}", k.to_ascii_uppercase()), v))
            .collect();
        let stdin = serde_json::to_vec(&Value::Object(values)).unwrap_or_default();
        Ok(Invocation { args, env, stdin })
    }

    /// The parameters as a JSON Schema object (what `GET /endpoints` shows and the
    /// OpenAPI and MCP descriptions are built from).
    pub fn params_schema(&self) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for p in &self.params {
            properties.insert(p.name.clone(), p.schema());
            if p.required || self.path_has(&p.name) {
                required.push(Value::String(p.name.clone()));
            }
        }
        serde_json::json!({"type": "object", "properties": properties, "required": required})
    }

    fn path_has(&self, name: &str) -> bool {
        self.path.contains(&format!("{{{name}}}"))
    }

    /// Refuses a value that would start with `-` in argv unless its parameter allows
    /// it: such a value could be read as an option by the tools a script calls.
    fn checked_arg(&self, name: &str, text: String) -> Result<String, ParamError> {
        let allowed = self
            .params
            .iter()
            .find(|p| p.name == name)
            .is_some_and(|p| p.allow_leading_dash);
        if text.starts_with('-') && !allowed {
            return Err(ParamError {
                param: Some(name.to_string()),
                message: format!(
                    "parameter `{name}` may not start with `-` (it would reach the script as an option); the manifest can allow it with `allow_leading_dash: true`"
                ),
                too_large: false,
            });
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_text_and_params() {
        assert_eq!(
            parse_template("--x={a}{b}-{ not }"),
            vec![
                ArgPart::Text("--x=".into()),
                ArgPart::Param("a".into()),
                ArgPart::Param("b".into()),
                ArgPart::Text("-{ not }".into())
            ]
        );
    }
}
