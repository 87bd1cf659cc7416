//! Where a model's files are, for the two layouts the router reads, and how to tell that they have
//! not changed (so a reload can keep the loaded model).
//!
//! - **model2vec** (a directory as model2vec and its "potion" models ship it): `tokenizer.json`,
//!   `model.safetensors` and, optionally, `config.json`.
//! - **the wordllama wheel** (PyPI `wordllama`, unpacked): `wordllama/weights/<name>_<dim>.safetensors`
//!   and `wordllama/tokenizers/<name>_tokenizer_config.json` (a complete `tokenizer.json`). The
//!   directory given may be the unpacked wheel or its `wordllama/` package directory.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::ModelError;

/// The layout a model directory has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `tokenizer.json` + `model.safetensors` (+ `config.json`).
    Model2Vec,
    /// The files of PyPI's `wordllama` wheel.
    WordLlama,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Model2Vec => "model2vec",
            Layout::WordLlama => "wordllama",
        }
    }
}

/// One file and what identifies its content on disk: a replaced or rewritten file changes its
/// inode, size or modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub(super) path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    /// Device and inode (Unix).
    node: Option<(u64, u64)>,
}

impl FileStamp {
    /// The file's size in bytes.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn of(path: &Path) -> Result<Self, ModelError> {
        let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(ModelError::NotAFile(path.to_owned()));
        }
        #[cfg(unix)]
        let node = {
            use std::os::unix::fs::MetadataExt;
            Some((meta.dev(), meta.ino()))
        };
        #[cfg(not(unix))]
        let node = None;
        Ok(FileStamp {
            path: path.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok(),
            node,
        })
    }
}

/// A model directory's files, located and stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ModelFiles {
    /// The directory as configured, made absolute and with symlinks resolved.
    pub(super) dir: PathBuf,
    pub(super) layout: Layout,
    pub(super) tokenizer: FileStamp,
    pub(super) table: FileStamp,
    /// model2vec's `config.json`, if there is one.
    pub(super) config: Option<FileStamp>,
}

impl ModelFiles {
    /// Finds the files of the model in `dir` and stamps them.
    pub(super) fn locate(dir: &Path) -> Result<Self, ModelError> {
        let canonical = std::fs::canonicalize(dir).map_err(|source| ModelError::Io {
            path: dir.to_owned(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(ModelError::NotADirectory(dir.to_owned()));
        }
        let tokenizer_json = canonical.join("tokenizer.json");
        if tokenizer_json.exists() {
            let config = canonical.join("config.json");
            return Ok(ModelFiles {
                tokenizer: FileStamp::of(&tokenizer_json)?,
                table: FileStamp::of(&canonical.join("model.safetensors"))?,
                config: if config.exists() {
                    Some(FileStamp::of(&config)?)
                } else {
                    None
                },
                dir: canonical,
                layout: Layout::Model2Vec,
            });
        }
        let package = [canonical.join("wordllama"), canonical.clone()]
            .into_iter()
            .find(|p| p.join("weights").is_dir() && p.join("tokenizers").is_dir())
            .ok_or_else(|| ModelError::UnknownLayout(dir.to_owned()))?;
        let (table, tokenizer) = wordllama_pair(&package)?;
        Ok(ModelFiles {
            tokenizer: FileStamp::of(&tokenizer)?,
            table: FileStamp::of(&table)?,
            config: None,
            dir: canonical,
            layout: Layout::WordLlama,
        })
    }

    /// Whether `dir` still names exactly these files, unchanged.
    pub(super) fn unchanged(&self, dir: &Path) -> bool {
        ModelFiles::locate(dir).is_ok_and(|now| &now == self)
    }
}

/// The one weights file of a wordllama package and its tokenizer: `weights/<name>_<dim>.safetensors`
/// goes with `tokenizers/<name>_tokenizer_config.json`.
fn wordllama_pair(package: &Path) -> Result<(PathBuf, PathBuf), ModelError> {
    let weights_dir = package.join("weights");
    let read = std::fs::read_dir(&weights_dir).map_err(|source| ModelError::Io {
        path: weights_dir.clone(),
        source,
    })?;
    let mut weights: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    weights.sort();
    let [table] = weights.as_slice() else {
        return Err(ModelError::Layout {
            path: weights_dir,
            problem: format!(
                "expected exactly one .safetensors file, found {}",
                weights.len()
            ),
        });
    };
    let stem = table
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    // `l2_supercat_256` -> `l2_supercat`
    let name = stem
        .rsplit_once('_')
        .filter(|(_, dim)| !dim.is_empty() && dim.bytes().all(|b| b.is_ascii_digit()))
        .map_or(stem, |(name, _)| name);
    let tokenizer = package
        .join("tokenizers")
        .join(format!("{name}_tokenizer_config.json"));
    if !tokenizer.is_file() {
        return Err(ModelError::Layout {
            path: tokenizer,
            problem: format!("the tokenizer for {} is missing", table.display()),
        });
    }
    Ok((table.clone(), tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn both_layouts_are_found_and_anything_else_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let m2v = dir.path().join("m2v");
        touch(&m2v.join("tokenizer.json"));
        touch(&m2v.join("model.safetensors"));
        let files = ModelFiles::locate(&m2v).unwrap();
        assert_eq!(
            (files.layout, files.config.is_none()),
            (Layout::Model2Vec, true)
        );

        let wheel = dir.path().join("wheel");
        touch(&wheel.join("wordllama/weights/l2_supercat_256.safetensors"));
        touch(&wheel.join("wordllama/tokenizers/l2_supercat_tokenizer_config.json"));
        for d in [wheel.clone(), wheel.join("wordllama")] {
            let files = ModelFiles::locate(&d).unwrap();
            assert_eq!(files.layout, Layout::WordLlama);
            assert!(
                files
                    .tokenizer
                    .path
                    .ends_with("l2_supercat_tokenizer_config.json")
            );
        }
        touch(&wheel.join("wordllama/weights/l3_supercat_512.safetensors"));
        let err = ModelFiles::locate(&wheel).unwrap_err().to_string();
        assert!(
            err.contains("exactly one .safetensors file, found 2"),
            "{err}"
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = ModelFiles::locate(&empty).unwrap_err().to_string();
        assert!(
            err.contains("model2vec") && err.contains("wordllama"),
            "{err}"
        );
        let missing = ModelFiles::locate(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, ModelError::Io { .. }));
    }

    #[test]
    fn a_rewritten_file_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("tokenizer.json"));
        touch(&dir.path().join("model.safetensors"));
        let files = ModelFiles::locate(dir.path()).unwrap();
        assert!(files.unchanged(dir.path()));
        std::fs::write(dir.path().join("model.safetensors"), b"longer").unwrap();
        assert!(!files.unchanged(dir.path()));
    }
}
