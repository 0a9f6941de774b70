//! The repository's layout: where manifests, prompts, settings and scripts live, and the
//! folder inside `.git` the daemon keeps to itself. Names only, no I/O. The
//! registry (and through its re-exports the writer and the routes), the
//! sandbox, the workspace's template and its state folder read them here, so
//! no module asks another for a file name.

/// The folder manifests live in, and the settings file, at the repository root.
pub const MANIFEST_DIR: &str = "manifests";
pub const SETTINGS_FILE: &str = "dynapi.yaml";
/// The folder MCP prompts live in (`prompts/<name>.md`), at the repository root.
pub const PROMPTS_DIR: &str = "prompts";
/// The folder the template's scripts live in, at the repository root.
pub const SCRIPTS_DIR: &str = "scripts";
/// The folder in the workspace's `.git` the daemon keeps to itself (its token,
/// audit log, OAuth store): never committed, unreadable by scripts.
pub const PRIVATE: &str = "dynapi";
/// The folder in the workspace's `.git` where the libraries a project
/// includes are checked out, one read-only folder per commit
/// (`.git/dynapi-libraries/<commit>/`): scripts read and run them (every entry
/// of `.git` but `PRIVATE` is read-only to them), never write them.
pub const LIBRARIES: &str = "dynapi-libraries";
/// Inside `PRIVATE`: the bare caches of libraries fetched over HTTP(S).
pub const LIBRARY_CACHE: &str = "libraries";
