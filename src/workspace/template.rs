//! The bundled template a new workspace starts from: the project's own
//! `manifests/`, `prompts/` and `scripts/` (embedded at build time), a `.gitignore` for data the
//! daemon must never commit, a commented `dynapi.yaml`, and the GitHub workflow
//! that runs `dynapi check` on pull requests. It only produces file contents; it
//! never touches the disk.

use include_dir::{include_dir, Dir};

/// The bundled template: the project's own `manifests/`, `prompts/` and `scripts/`.
static TEMPLATE_MANIFESTS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/manifests");
static TEMPLATE_PROMPTS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/prompts");
static TEMPLATE_SCRIPTS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/scripts");

const TEMPLATE_GITIGNORE: &str =
    "# Read and written through dynapi, never committed.\ndata/\narchives/\n*.db\n*.sqlite\n";
const TEMPLATE_SETTINGS: &str = "# dynapi settings for this repository (all optional).\n# defaults:\n#   timeout: 30s\n# tokens:            # more tokens: `dynapi token new --scopes read` prints a line for here\n#   - name: reader\n#     sha256: <64 hex digits>\n#     scopes: [read]\n";
const TEMPLATE_WORKFLOW: &str = include_str!("template/dynapi-check.yml");

/// The library template (`dynapi init --library`): one endpoint to start
/// from, its script, and a README saying how projects include it.
const LIBRARY_MANIFEST: &str = "name: word-count\ndescription: Count the lines, words and bytes of a file of the project.\nmethod: GET\npath: /word-count\nscript: scripts/word_count.sh\nargs: [\"{path}\"]\nparams:\n  path:\n    type: string\n    description: The file to count, relative to the project root.\n    maxLength: 1000\n    required: true\ntimeout: 10s\nsandbox:\n  writable: []\n";
const LIBRARY_SCRIPT: &str = "#!/bin/sh\n# Runs from the library's read-only checkout; the working folder is the\n# including project's workspace.\nexec wc -- \"$1\"\n";
const LIBRARY_README: &str = "# A dynapi library\n\nEndpoints other projects serve by including this repository from their\n`dynapi.yaml`, pinned by tag:\n\n```yaml\ninclude:\n  - repository: https://github.com/OWNER/THIS-REPOSITORY\n    ref: v1.0.0\n    endpoints: [word-count]   # optional: all when left out\n    prefix: lib               # optional: lib-word-count at /lib/word-count\n    sandbox:                  # what the project lets these scripts do\n      network: false\n      writable: []\n```\n\nManifests live in `manifests/`, scripts in `scripts/`, as in any dynapi\nrepository. A library's `dynapi.yaml` is not read by the projects that\ninclude it. Its scripts run from a read-only checkout of the tagged commit,\nin the including project's workspace and under its sandbox.\n";

/// Every file `dynapi init --library` starts a library with.
pub fn library_files() -> Vec<TemplateFile> {
    let file = |path: &str, contents: &str, executable: bool| TemplateFile {
        path: path.to_string(),
        contents: contents.as_bytes().to_vec(),
        executable,
    };
    let mut files = vec![
        file(
            ".github/workflows/dynapi-check.yml",
            TEMPLATE_WORKFLOW,
            false,
        ),
        file("README.md", LIBRARY_README, false),
        file("manifests/word-count.yaml", LIBRARY_MANIFEST, false),
        file("scripts/word_count.sh", LIBRARY_SCRIPT, true),
    ];
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// A file of the template: repository-relative path, contents, executable bit.
pub struct TemplateFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub executable: bool,
}

/// Every file a new repository starts with. Scripts are executable; `with_workflow`
/// adds the GitHub workflow that runs `dynapi check` on pull requests.
pub fn template_files(with_workflow: bool) -> Vec<TemplateFile> {
    let mut files = Vec::new();
    collect(
        &TEMPLATE_MANIFESTS,
        crate::layout::MANIFEST_DIR,
        false,
        &mut files,
    );
    collect(
        &TEMPLATE_PROMPTS,
        crate::layout::PROMPTS_DIR,
        false,
        &mut files,
    );
    collect(
        &TEMPLATE_SCRIPTS,
        crate::layout::SCRIPTS_DIR,
        true,
        &mut files,
    );
    let mut add = |path: &str, contents: &str| {
        files.push(TemplateFile {
            path: path.to_string(),
            contents: contents.as_bytes().to_vec(),
            executable: false,
        })
    };
    add(".gitignore", TEMPLATE_GITIGNORE);
    add(crate::layout::SETTINGS_FILE, TEMPLATE_SETTINGS);
    if with_workflow {
        add(".github/workflows/dynapi-check.yml", TEMPLATE_WORKFLOW);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// Adds every file below `dir` (include_dir paths are relative to the embedded root).
fn collect(dir: &Dir<'_>, top: &str, executable: bool, out: &mut Vec<TemplateFile>) {
    for file in dir.files() {
        out.push(TemplateFile {
            path: format!("{top}/{}", file.path().to_string_lossy()),
            contents: file.contents().to_vec(),
            executable,
        });
    }
    for sub in dir.dirs() {
        collect(sub, top, executable, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_the_seed_scripts_executable() {
        let files = template_files(true);
        let find = |p: &str| files.iter().find(|f| f.path == p);
        assert!(find("scripts/sample_script.sh").unwrap().executable);
        assert!(find("scripts/run_sql.sh").unwrap().executable);
        assert!(!find("manifests/hello.yaml").unwrap().executable);
        assert!(!find("prompts/review-file.md").unwrap().executable);
        assert!(find(".github/workflows/dynapi-check.yml").is_some());
    }
}
