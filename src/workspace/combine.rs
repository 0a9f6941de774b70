//! Combine: many files of the workspace as one text, each under a header line
//! `==> path <==` (the convention of `head` and `tail`), for an assistant that wants
//! a whole folder in one read. Binary files are skipped and named; the total is
//! bounded.

use std::collections::HashSet;

use serde::Serialize;

use super::{FsError, Workspace};

#[derive(Debug, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Combined {
    pub text: String,
    /// The files in the text, in order.
    pub files: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// Combines `paths` (files, or folders meaning every file below them) in the order
/// given, then the files matching any of `globs`, in path order; each file once.
/// Folders and globs honour `.gitignore`; a file named outright is always read.
/// More than `max_bytes` of text, or more than `max_files` files, is refused.
pub fn combine(
    ws: &Workspace,
    paths: &[String],
    globs: &[String],
    max_bytes: usize,
    max_files: usize,
) -> Result<Combined, FsError> {
    let mut chosen: Vec<(std::path::PathBuf, String)> = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |abs: std::path::PathBuf, rel: String| {
        if seen.insert(rel.clone()) {
            chosen.push((abs, rel));
        }
    };
    for path in paths {
        let target = ws.resolve(path)?;
        let meta = ws.metadata(&target).map_err(FsError::io(path))?;
        if meta.is_file() {
            add(target.clone(), ws.relative(&target));
            continue;
        }
        for entry in ws.walker(&target, true).build().flatten() {
            if entry.file_type().is_some_and(|t| t.is_file()) && entry.path().starts_with(&target) {
                let rel = ws.relative(entry.path());
                add(entry.into_path(), rel);
            }
        }
    }
    if !globs.is_empty() {
        let mut overrides = ignore::overrides::OverrideBuilder::new(ws.root());
        for glob in globs {
            overrides
                .add(glob)
                .map_err(|e| FsError::BadRequest(format!("the glob `{glob}` is not valid: {e}")))?;
        }
        let overrides = overrides
            .build()
            .map_err(|e| FsError::BadRequest(format!("the globs are not valid: {e}")))?;
        let mut walk = ws.walker(ws.root(), true);
        walk.overrides(overrides);
        for entry in walk.build().flatten() {
            if entry.file_type().is_some_and(|t| t.is_file()) {
                let rel = ws.relative(entry.path());
                add(entry.into_path(), rel);
            }
        }
    }
    if chosen.len() > max_files {
        return Err(FsError::TooLarge(format!(
            "{} files match; combine at most {max_files} at once",
            chosen.len()
        )));
    }

    let mut combined = Combined {
        text: String::new(),
        files: Vec::new(),
        skipped: Vec::new(),
    };
    for (abs, rel) in chosen {
        let too_large = || {
            FsError::TooLarge(format!(
                "the combined text would be larger than {max_bytes} bytes; combine fewer files"
            ))
        };
        let file = ws.open_file(&abs).map_err(FsError::io(&rel))?;
        let size = file.metadata().map_err(FsError::io(&rel))?.len();
        if combined.text.len() as u64 + size > max_bytes as u64 {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(file, size), &mut bytes)
            .map_err(FsError::io(&rel))?;
        if bytes[..bytes.len().min(8000)].contains(&0) {
            combined.skipped.push(Skipped {
                path: rel,
                reason: "binary",
            });
            continue;
        }
        let Ok(text) = String::from_utf8(bytes) else {
            combined.skipped.push(Skipped {
                path: rel,
                reason: "not UTF-8 text",
            });
            continue;
        };
        let header = format!("==> {rel} <==\n");
        if combined.text.len() + header.len() + text.len() + 2 > max_bytes {
            return Err(too_large());
        }
        if !combined.text.is_empty() {
            combined.text.push('\n');
        }
        combined.text.push_str(&header);
        combined.text.push_str(&text);
        if !text.ends_with('\n') {
            combined.text.push('\n');
        }
        combined.files.push(rel);
    }
    Ok(combined)
}
