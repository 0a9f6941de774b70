//! Search: the crates ripgrep is built from. `ignore` walks the workspace (the
//! repository's `.gitignore` files honoured, `.git` never entered, symlinks never
//! followed), `grep-regex` compiles a literal or a regex, and `grep-searcher`
//! searches each file line by line, giving up on binary files (a NUL byte).
//!
//! Files are searched on a few threads, but answers are deterministic: results are
//! kept per file and handed out in path order, and the search stops once the files
//! searched so far, in order, hold enough matches. So `offset` pages through the
//! same sequence every time, as long as the workspace does not change.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder, Sink, SinkFinish, SinkMatch};
use serde::Serialize;

use super::{FsError, Workspace};

/// What to look for and where.
#[derive(Debug, Clone)]
pub struct Query {
    pub pattern: String,
    /// A regex (Rust syntax) rather than literal text.
    pub regex: bool,
    pub ignore_case: bool,
    /// A folder or file of the workspace (`""` for all of it).
    pub path: String,
    /// Only files matching this glob (ripgrep's `-g` syntax).
    pub glob: Option<String>,
    /// Matches to skip, for the next page.
    pub offset: usize,
    /// Matches to return at most.
    pub max: usize,
    /// Lines longer than this are cut (the match may be past the cut).
    pub max_line_chars: usize,
    /// The answer's budget in characters; it ends early rather than exceed it.
    pub max_answer_chars: usize,
    /// When the search gives up and answers what it found so far.
    pub time_limit: Duration,
}

#[derive(Debug, Serialize)]
pub struct Match {
    pub file: String,
    pub line_number: u64,
    pub line: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub line_cut: bool,
}

#[derive(Debug, Serialize)]
pub struct Found {
    pub matches: Vec<Match>,
    pub files_searched: usize,
    /// Set when more matches follow: ask again with `offset` = this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<usize>,
    pub truncated: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

/// Runs `query` over the workspace.
pub fn search(ws: &Workspace, query: &Query) -> Result<Found, FsError> {
    let matcher = RegexMatcherBuilder::new()
        .fixed_strings(!query.regex)
        .case_insensitive(query.ignore_case)
        .line_terminator(Some(b'\n'))
        .size_limit(16 << 20)
        .dfa_size_limit(16 << 20)
        .build(&query.pattern)
        .map_err(|e| FsError::BadRequest(format!("the pattern does not compile: {e}")))?;
    let files = files_to_search(ws, query)?;
    // One more than asked for tells whether there is a next page.
    let needed = query.offset + query.max + 1;
    let (per_file, timed_out) = search_files(ws, &files, &matcher, needed, query.time_limit);
    let files_searched = per_file.len();

    let mut matches = Vec::new();
    let mut budget = query.max_answer_chars;
    let mut position = 0usize;
    let mut more = false;
    'files: for (index, lines) in per_file.into_iter().enumerate() {
        for (line_number, bytes) in lines {
            position += 1;
            if position <= query.offset {
                continue;
            }
            let file = &files[index].1;
            let (line, line_cut) = cut(&String::from_utf8_lossy(&bytes), query.max_line_chars);
            let cost = file.len() + line.len() + 64;
            if matches.len() >= query.max || cost > budget {
                more = true;
                break 'files;
            }
            budget -= cost;
            matches.push(Match {
                file: file.clone(),
                line_number,
                line,
                line_cut,
            });
        }
    }
    let next_offset = (more || timed_out).then_some(query.offset + matches.len());
    Ok(Found {
        truncated: next_offset.is_some(),
        matches,
        files_searched,
        next_offset,
        timed_out,
    })
}

/// The files to search, in path order: `(path on disk, workspace-relative path)`.
fn files_to_search(ws: &Workspace, query: &Query) -> Result<Vec<(PathBuf, String)>, FsError> {
    let target = ws.resolve(&query.path)?;
    let meta = ws.metadata(&target).map_err(FsError::io(&query.path))?;
    if meta.is_file() {
        // A file named outright is searched even if `.gitignore` ignores it.
        return Ok(vec![(target.clone(), ws.relative(&target))]);
    }
    let mut walk = ws.walker(&target, true);
    if let Some(glob) = query.glob.as_deref().filter(|g| !g.is_empty()) {
        let mut overrides = ignore::overrides::OverrideBuilder::new(ws.root());
        overrides
            .add(glob)
            .map_err(|e| FsError::BadRequest(format!("the glob `{glob}` is not valid: {e}")))?;
        let overrides = overrides
            .build()
            .map_err(|e| FsError::BadRequest(format!("the glob `{glob}` is not valid: {e}")))?;
        walk.overrides(overrides);
    }
    // The walk runs on a few threads too (it is half the work on a large tree);
    // sorting afterwards gives back the deterministic order.
    let found = Mutex::new(Vec::new());
    walk.threads(threads_for(usize::MAX))
        .build_parallel()
        .run(|| {
            let found = &found;
            let target = &target;
            Box::new(move |entry| {
                if let Ok(entry) = entry {
                    if entry.file_type().is_some_and(|t| t.is_file())
                        && entry.path().starts_with(target)
                    {
                        let rel = ws.relative(entry.path());
                        let mut found = found.lock().unwrap_or_else(|e| e.into_inner());
                        found.push((entry.into_path(), rel));
                    }
                }
                ignore::WalkState::Continue
            })
        });
    let mut files = found.into_inner().unwrap_or_else(|e| e.into_inner());
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

/// The matching lines of one file: `(line number, line without its terminator)`.
type FileMatches = Vec<(u64, Vec<u8>)>;

/// Searches `files` on a few threads and returns the matches of the longest
/// prefix of `files` that was searched, in order: all files, or the first ones
/// that together hold `needed` matches, or those done when `limit` ran out.
fn search_files(
    ws: &Workspace,
    files: &[(PathBuf, String)],
    matcher: &RegexMatcher,
    needed: usize,
    limit: Duration,
) -> (Vec<FileMatches>, bool) {
    struct Progress {
        results: Vec<Option<FileMatches>>,
        /// Files `0..prefix` are done.
        prefix: usize,
        found: usize,
    }
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let stop_at = AtomicUsize::new(usize::MAX);
    let progress = Mutex::new(Progress {
        results: (0..files.len()).map(|_| None).collect(),
        prefix: 0,
        found: 0,
    });
    let timed_out = std::sync::atomic::AtomicBool::new(false);
    let threads = threads_for(files.len());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut searcher = SearcherBuilder::new()
                    .line_number(true)
                    .binary_detection(BinaryDetection::quit(b'\x00'))
                    .build();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= files.len() || i >= stop_at.load(Ordering::Relaxed) {
                        return;
                    }
                    if start.elapsed() > limit {
                        timed_out.store(true, Ordering::Relaxed);
                        stop_at.fetch_min(i, Ordering::Relaxed);
                        return;
                    }
                    let found = search_one(ws, &mut searcher, matcher, &files[i].0, needed);
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.results[i] = Some(found);
                    while p.prefix < files.len() {
                        let Some(done) = p.results[p.prefix].as_ref() else {
                            break;
                        };
                        p.found += done.len();
                        p.prefix += 1;
                        if p.found >= needed {
                            stop_at.fetch_min(p.prefix, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        }
    });
    let p = progress.into_inner().unwrap_or_else(|e| e.into_inner());
    let prefix = p.prefix;
    let results = p.results.into_iter().take(prefix).flatten().collect();
    (results, timed_out.into_inner() && prefix < files.len())
}

/// Threads for `work` items: one per core, at most 8, at most one per item.
fn threads_for(work: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(work.max(1))
}

/// The matches of one file (none if it is binary or cannot be read), at most `max`.
fn search_one(
    ws: &Workspace,
    searcher: &mut Searcher,
    matcher: &RegexMatcher,
    path: &std::path::Path,
    max: usize,
) -> FileMatches {
    let mut sink = Collect {
        found: Vec::new(),
        max,
        binary: false,
    };
    // Opened by the kernel beneath the workspace, never through a symlink.
    let Ok(file) = ws.open_file(path) else {
        return Vec::new();
    };
    match searcher.search_file(matcher, &file, &mut sink) {
        Ok(()) if !sink.binary => sink.found,
        _ => Vec::new(),
    }
}

struct Collect {
    found: FileMatches,
    max: usize,
    binary: bool,
}

impl Sink for Collect {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, io::Error> {
        let mut line = mat.bytes();
        while let Some((b'\n' | b'\r', rest)) = line.split_last() {
            line = rest;
        }
        self.found
            .push((mat.line_number().unwrap_or(0), line.to_vec()));
        Ok(self.found.len() < self.max)
    }

    fn binary_data(&mut self, _: &Searcher, _: u64) -> Result<bool, io::Error> {
        self.binary = true;
        Ok(false)
    }

    fn finish(&mut self, _: &Searcher, finish: &SinkFinish) -> Result<(), io::Error> {
        self.binary |= finish.binary_byte_offset().is_some();
        Ok(())
    }
}

/// `text` cut to at most `max` characters, and whether it was cut.
fn cut(text: &str, max: usize) -> (String, bool) {
    match text.char_indices().nth(max) {
        Some((at, _)) => (text[..at].to_string(), true),
        None => (text.to_string(), false),
    }
}
