//! Where commits come from and go to. `repo` wraps the git repository (gix),
//! `change` is the single writer, `writes` the service every API write goes
//! through (the only holder of the writer), `sync` loads commits into
//! registries, `refwatch` says when the local branch may have moved (inotify),
//! `library` fetches and checks out the libraries `dynapi.yaml` includes.
//! The local source is the embedded default; the workspace is the repository.

pub mod change;
pub mod github;
pub mod library;
pub mod refwatch;
pub mod repo;
pub mod sync;
pub mod writes;
