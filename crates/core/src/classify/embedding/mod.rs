//! A static-embedding model: a tokenizer plus a token -> vector table. A text's embedding is the
//! mean of its tokens' vectors, scaled to unit length, so comparing two texts is one dot product
//! (their cosine similarity). No layers, no matrix products: a tokenizer pass (cached per chunk,
//! see [`tokens`]) and one table row per token.
//!
//! The model is read from a local directory once, when a routing config is compiled; nothing is
//! ever downloaded. Two layouts are read ([`Layout`]): model2vec's directory and the files of
//! PyPI's `wordllama` wheel. What an embedding is, exactly:
//!
//! 1. the text, cut to its first [`MAX_EMBED_BYTES`] bytes (at a whitespace if one is near), is
//!    tokenised without special tokens (no `<s>`, `[CLS]`);
//! 2. the unknown token is dropped (as model2vec does; a byte-fallback vocabulary has none);
//! 3. the rows of the remaining ids are summed in F32, in token order (model2vec's per-token
//!    `weights` and `mapping` are honoured);
//! 4. the sum is scaled to unit length (the mean's division by the count cancels here).
//!
//! A text with no known token has no embedding (`None`), never a zero or NaN vector.

mod files;
mod table;
mod tokens;

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use tokenizers::Tokenizer;

pub use files::Layout;
use files::ModelFiles;
use table::{Storage, VectorTable};
pub(crate) use table::{dots, normalize};
use tokens::{Chunking, TokenEncoder, TokenizerFacts};

/// Only this many bytes of a text are embedded: a prompt's topic shows in its first few KiB, and
/// this bounds the cost of a hostile text (4 KiB of words never seen before, each a tokenizer
/// pass, about 1 ms here; the usual latest user turn is far shorter, and its words cached).
pub const MAX_EMBED_BYTES: usize = 4 * 1024;

/// Why a model directory cannot be used. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: not a file", .0.display())]
    NotAFile(PathBuf),
    #[error(
        "{}: no model there: expected the model2vec layout (tokenizer.json and \
         model.safetensors) or the wordllama wheel's (wordllama/weights/*.safetensors and \
         wordllama/tokenizers/*_tokenizer_config.json)",
        .0.display()
    )]
    UnknownLayout(PathBuf),
    #[error("{}: {problem}", path.display())]
    Layout { path: PathBuf, problem: String },
    #[error("{}: not a usable tokenizer.json: {problem}", path.display())]
    Tokenizer { path: PathBuf, problem: String },
    #[error("{}: not a usable safetensors table: {problem}", path.display())]
    Table { path: PathBuf, problem: String },
    #[error("{}: dimension mismatch: {problem}", path.display())]
    Dimension { path: PathBuf, problem: String },
}

/// A loaded static-embedding model. Immutable but for its token cache, which only memoises; share
/// it (`Arc`) between routing tables while its files are unchanged.
pub struct EmbeddingModel {
    files: ModelFiles,
    encoder: TokenEncoder,
    table: VectorTable,
    /// The unknown token's id, dropped before pooling.
    unk: Option<u32>,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("dir", &self.files.dir)
            .field("layout", &self.files.layout)
            .field("tokens", &self.table.tokens())
            .field("dim", &self.table.dim())
            .field("dtype", &self.table.dtype())
            .finish_non_exhaustive()
    }
}

impl EmbeddingModel {
    /// Reads the model in `dir` (either layout), checking that its parts fit together.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let files = ModelFiles::locate(dir)?;
        let (encoder, unk, max_id) = load_tokenizer(&files.tokenizer.path)?;
        let table = load_table(&files.table.path, files.layout)?;
        let dim_error = |path: &Path, problem: String| ModelError::Dimension {
            path: path.to_owned(),
            problem,
        };
        if let Some(max_id) = max_id.filter(|&id| id as usize >= table.tokens()) {
            return Err(dim_error(
                &files.table.path,
                format!(
                    "the tokenizer ({}) has token id {max_id} but the table has vectors for {} \
                     tokens only",
                    files.tokenizer.path.display(),
                    table.tokens()
                ),
            ));
        }
        if let Some(config) = &files.config {
            let text = std::fs::read(&config.path).map_err(|source| ModelError::Io {
                path: config.path.clone(),
                source,
            })?;
            let json: serde_json::Value =
                serde_json::from_slice(&text).map_err(|e| ModelError::Layout {
                    path: config.path.clone(),
                    problem: format!("not JSON: {e}"),
                })?;
            if let Some(hidden) = json["hidden_dim"]
                .as_u64()
                .filter(|&h| h != table.dim() as u64)
            {
                return Err(dim_error(
                    &config.path,
                    format!(
                        "hidden_dim is {hidden} but the table's vectors have {} dimensions",
                        table.dim()
                    ),
                ));
            }
        }
        Ok(EmbeddingModel {
            files,
            encoder,
            table,
            unk,
        })
    }

    /// The unit-length embedding of `text` (its first [`MAX_EMBED_BYTES`] bytes); `None` when
    /// the text has no token the model knows.
    pub fn embed(&self, text: &str) -> Option<Vec<f32>> {
        let text = capped(text);
        let mut ids = Vec::with_capacity(text.len() / 3 + 4);
        self.encoder.encode(text, &mut ids).ok()?;
        self.pool(&ids)
    }

    /// The mean of the ids' vectors, unit length (the unknown token is skipped).
    fn pool(&self, ids: &[u32]) -> Option<Vec<f32>> {
        let mut sum = vec![0.0f32; self.table.dim()];
        let mut used = 0usize;
        for &id in ids {
            if Some(id) != self.unk && self.table.add_token(id, &mut sum) {
                used += 1;
            }
        }
        (used > 0 && normalize(&mut sum)).then_some(sum)
    }

    /// The token ids of `text`: `cached` through the chunk cache, else the tokenizer's own full
    /// pass (which the cache must always agree with; the tests compare the two).
    pub fn token_ids(&self, text: &str, cached: bool) -> Option<Vec<u32>> {
        let mut ids = Vec::new();
        let encoded = if cached {
            self.encoder.encode(text, &mut ids)
        } else {
            self.encoder.encode_whole(text, &mut ids)
        };
        encoded.ok().map(|()| ids)
    }

    /// Whether `dir` still holds exactly the files this model was read from, unchanged (same
    /// paths, inodes, sizes and modification times): then a reload can keep this model.
    pub fn unchanged(&self, dir: &Path) -> bool {
        self.files.unchanged(dir)
    }

    /// Dimensions of a vector.
    pub fn dim(&self) -> usize {
        self.table.dim()
    }

    /// Token ids the table has vectors for.
    pub fn tokens(&self) -> usize {
        self.table.tokens()
    }

    /// The layout the files were found in.
    pub fn layout(&self) -> Layout {
        self.files.layout
    }

    /// The model directory (absolute, symlinks resolved).
    pub fn dir(&self) -> &Path {
        &self.files.dir
    }

    /// The weight file (`.safetensors`) and its size in bytes.
    pub fn weight_file(&self) -> (&Path, u64) {
        (&self.files.table.path, self.files.table.len())
    }

    /// Heap bytes of the vector table as held in memory (F16 tables stay F16).
    pub fn table_bytes(&self) -> usize {
        self.table.heap_bytes()
    }

    /// Chunks in the token cache.
    pub fn cached_chunks(&self) -> usize {
        self.encoder.cached_chunks()
    }

    /// One line for logs and `validate`: layout, size, dtype, and whether the token cache applies.
    pub fn describe(&self) -> String {
        format!(
            "{} model, {} tokens x {} dims, {}, {}",
            self.files.layout.name(),
            self.table.tokens(),
            self.table.dim(),
            self.table.dtype(),
            match self.encoder.chunking() {
                Chunking::Whole => "tokenizer uncached",
                Chunking::Whitespace | Chunking::SpacePrepend => "token cache on",
            }
        )
    }
}

/// `text` cut to at most [`MAX_EMBED_BYTES`], at a char boundary, and at the last whitespace in
/// the final 64 bytes if there is one (so no word is cut in half).
fn capped(text: &str) -> &str {
    if text.len() <= MAX_EMBED_BYTES {
        return text;
    }
    let mut end = MAX_EMBED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    let last_space = head
        .char_indices()
        .rev()
        .take_while(|&(i, _)| i + 64 >= end)
        .find(|&(_, c)| c.is_whitespace());
    match last_space {
        Some((i, _)) => &head[..i],
        None => head,
    }
}

/// The tokenizer, its unknown token's id, and the largest id it can produce.
fn load_tokenizer(path: &Path) -> Result<(TokenEncoder, Option<u32>, Option<u32>), ModelError> {
    let bad = |problem: String| ModelError::Tokenizer {
        path: path.to_owned(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
    let facts = TokenizerFacts::parse(&bytes).map_err(|e| bad(e.to_string()))?;
    drop(bytes);
    tokenizer
        .with_truncation(None)
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_padding(None);
    if facts.bpe_dropout() {
        return Err(bad(
            "BPE dropout is set: tokenisation would be random; set `dropout` to null".into(),
        ));
    }
    let unk = facts.unk(&tokenizer);
    let encoder = TokenEncoder::new(tokenizer, facts.chunking()).map_err(bad)?;
    Ok((encoder, unk, facts.max_id()))
}

/// The vector table: `embedding.weight` (wordllama) or `embeddings` (model2vec), else the only
/// 2-D tensor; F32, F16 or BF16, every value finite. model2vec's optional `weights` (per token,
/// float) and `mapping` (per token, integer row) come along.
fn load_table(path: &Path, layout: Layout) -> Result<VectorTable, ModelError> {
    let bad = |problem: String| ModelError::Table {
        path: path.to_owned(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_owned(),
        source,
    })?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let names = tensors.names();
    let preferred: &[&str] = match layout {
        Layout::WordLlama => &["embedding.weight", "embeddings"],
        Layout::Model2Vec => &["embeddings", "embedding.weight"],
    };
    let name = match preferred.iter().find(|n| names.contains(n)) {
        Some(name) => (*name).to_owned(),
        None => {
            let two_d: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| tensors.tensor(n).is_ok_and(|t| t.shape().len() == 2))
                .collect();
            match two_d.as_slice() {
                [only] => (*only).to_owned(),
                _ => {
                    return Err(bad(format!(
                        "no tensor named `embeddings` or `embedding.weight`, and {} 2-D tensors",
                        two_d.len()
                    )));
                }
            }
        }
    };
    let view = tensors.tensor(&name).map_err(|e| bad(e.to_string()))?;
    let &[rows, dim] = view.shape() else {
        return Err(bad(format!(
            "tensor `{name}` has shape {:?}; a [tokens, dims] table is needed",
            view.shape()
        )));
    };
    let data = view.data();
    let storage = match view.dtype() {
        Dtype::F32 => Storage::F32(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Storage::F16(
            data.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        Dtype::BF16 => Storage::Bf16(
            data.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        other => {
            return Err(bad(format!(
                "tensor `{name}` is {other:?}; F32, F16 or BF16 is needed"
            )));
        }
    };
    let count = rows * dim;
    if let Some(i) = (0..count).find(|&i| storage.get(i).is_none_or(|v| !v.is_finite())) {
        return Err(bad(format!(
            "tensor `{name}` holds a value that is not a finite number (row {}, column {})",
            i / dim.max(1),
            i % dim.max(1)
        )));
    }
    let weights = match tensors.tensor("weights") {
        Ok(w) if layout == Layout::Model2Vec => Some(float_vector(&w).ok_or_else(|| {
            bad("tensor `weights` must be a 1-D F32, F16 or BF16 vector of finite numbers".into())
        })?),
        _ => None,
    };
    let mapping = match tensors.tensor("mapping") {
        Ok(m) if layout == Layout::Model2Vec => Some(
            int_vector(&m)
                .ok_or_else(|| bad("tensor `mapping` must be a 1-D I32 or I64 vector".into()))?,
        ),
        _ => None,
    };
    if let (Some(w), Some(m)) = (&weights, &mapping)
        && w.len() != m.len()
    {
        return Err(ModelError::Dimension {
            path: path.to_owned(),
            problem: format!("`weights` has {} entries, `mapping` {}", w.len(), m.len()),
        });
    }
    if let Some(bad_row) = mapping
        .as_ref()
        .and_then(|m| m.iter().find(|&&r| r as usize >= rows))
    {
        return Err(ModelError::Dimension {
            path: path.to_owned(),
            problem: format!("`mapping` names row {bad_row}, but `{name}` has {rows} rows"),
        });
    }
    drop(tensors);
    drop(bytes);
    VectorTable::new(rows, dim, storage, weights, mapping)
        .ok_or_else(|| bad(format!("tensor `{name}` [{rows}, {dim}] is inconsistent")))
}

fn float_vector(view: &safetensors::tensor::TensorView<'_>) -> Option<Vec<f32>> {
    let [_] = view.shape() else { return None };
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| table::f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect(),
        _ => return None,
    };
    values.iter().all(|v| v.is_finite()).then_some(values)
}

fn int_vector(view: &safetensors::tensor::TensorView<'_>) -> Option<Vec<u32>> {
    let [_] = view.shape() else { return None };
    let data = view.data();
    match view.dtype() {
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|b| u32::try_from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok())
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|b| {
                let v = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                u32::try_from(v).ok()
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a safetensors file with the given tensors (name, dtype, shape, little-endian bytes).
    pub(crate) fn write_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                (*name).to_owned(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let header = serde_json::Value::Object(header).to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&data);
        std::fs::write(path, file).unwrap();
    }

    pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// A word-level tokenizer over `words` (id = position; `[UNK]` must be one of them), split on
    /// whitespace: the hand-made models of the unit tests.
    pub(crate) fn word_tokenizer(words: &[&str]) -> String {
        let vocab: serde_json::Map<_, _> = words
            .iter()
            .enumerate()
            .map(|(i, w)| ((*w).to_string(), serde_json::Value::from(i)))
            .collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        })
        .to_string()
    }

    /// A model2vec directory with a word-level tokenizer and an F32 table of `rows`.
    pub(crate) fn tiny_model(dir: &Path, words: &[&str], rows: &[&[f32]]) -> EmbeddingModel {
        std::fs::write(dir.join("tokenizer.json"), word_tokenizer(words)).unwrap();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        write_safetensors(
            &dir.join("model.safetensors"),
            &[(
                "embeddings",
                "F32",
                vec![rows.len(), rows[0].len()],
                f32_bytes(&flat),
            )],
        );
        EmbeddingModel::load(dir).unwrap()
    }

    #[test]
    fn an_embedding_is_the_unit_mean_of_the_known_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let m = tiny_model(
            dir.path(),
            &["[UNK]", "a", "b", "c"],
            &[&[9.0, 9.0], &[3.0, 0.0], &[0.0, 4.0], &[-3.0, 0.0]],
        );
        // (3, 0) + (0, 4) = (3, 4), length 5; the unknown word is dropped, not averaged in.
        assert_eq!(m.embed("a b zzz"), Some(vec![3.0 / 5.0, 4.0 / 5.0]));
        assert_eq!(m.embed("A  B"), m.embed("b a"), "the tokenizer lowercases");
        // (3, 0) + (-3, 0) = 0: no direction, no embedding; likewise no known token, or no text.
        assert_eq!(m.embed("a c"), None);
        assert_eq!(m.embed("zzz"), None);
        assert_eq!(m.embed(""), None);
        assert_eq!(m.embed("b b b"), Some(vec![0.0, 1.0]));
        assert_eq!((m.dim(), m.tokens(), m.layout()), (2, 4, Layout::Model2Vec));
    }

    #[test]
    fn weights_and_mapping_are_honoured_and_mismatches_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            word_tokenizer(&["[UNK]", "a", "b"]),
        )
        .unwrap();
        let write = |mapping: &[i32], weights: &[f32]| {
            write_safetensors(
                &dir.path().join("model.safetensors"),
                &[
                    (
                        "embeddings",
                        "F32",
                        vec![2, 2],
                        f32_bytes(&[1.0, 0.0, 0.0, 2.0]),
                    ),
                    (
                        "mapping",
                        "I32",
                        vec![mapping.len()],
                        mapping.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    ),
                    ("weights", "F32", vec![weights.len()], f32_bytes(weights)),
                ],
            )
        };
        // a -> row 1 (0, 2) x 1.5 = (0, 3); b -> row 0 (1, 0) x 4 = (4, 0); sum (4, 3) / 5.
        write(&[0, 1, 0], &[1.0, 1.5, 4.0]);
        let m = EmbeddingModel::load(dir.path()).unwrap();
        assert_eq!(m.embed("a b"), Some(vec![4.0 / 5.0, 3.0 / 5.0]));
        write(&[0, 1, 2], &[1.0, 1.0, 1.0]);
        let err = EmbeddingModel::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("dimension mismatch") && err.contains("row 2"),
            "{err}"
        );
        write(&[0, 1], &[1.0, 1.0]);
        let err = EmbeddingModel::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("token id 2") && err.contains("2 tokens only"),
            "{err}"
        );
    }

    #[test]
    fn broken_tables_and_tokenizers_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        std::fs::write(path.join("tokenizer.json"), word_tokenizer(&["[UNK]", "a"])).unwrap();
        let table = path.join("model.safetensors");
        let load = || EmbeddingModel::load(path).unwrap_err().to_string();
        write_safetensors(&table, &[("embeddings", "I32", vec![2, 1], vec![0; 8])]);
        assert!(load().contains("F32, F16 or BF16 is needed"), "{}", load());
        write_safetensors(
            &table,
            &[("embeddings", "F32", vec![2], f32_bytes(&[1.0, 2.0]))],
        );
        assert!(load().contains("[tokens, dims] table"), "{}", load());
        write_safetensors(
            &table,
            &[("embeddings", "F32", vec![2, 1], f32_bytes(&[1.0, f32::NAN]))],
        );
        assert!(load().contains("row 1, column 0"), "{}", load());
        std::fs::write(&table, b"not a table").unwrap();
        assert!(
            load().contains("not a usable safetensors table"),
            "{}",
            load()
        );
        write_safetensors(
            &table,
            &[("embeddings", "F32", vec![2, 3], f32_bytes(&[1.0; 6]))],
        );
        std::fs::write(path.join("config.json"), r#"{"hidden_dim": 64}"#).unwrap();
        assert!(
            load().contains("hidden_dim is 64 but the table's vectors have 3"),
            "{}",
            load()
        );
        std::fs::remove_file(path.join("config.json")).unwrap();
        std::fs::write(path.join("tokenizer.json"), "{").unwrap();
        assert!(load().contains("not a usable tokenizer.json"), "{}", load());
    }

    #[test]
    fn long_texts_are_cut_at_a_word() {
        let text = "word ".repeat(MAX_EMBED_BYTES);
        let cut = capped(&text);
        assert!(
            cut.len() <= MAX_EMBED_BYTES && cut.ends_with("word"),
            "{}",
            cut.len()
        );
        assert_eq!(capped("short"), "short");
        // Multi-byte characters at every alignment, with and without spaces.
        for offset in 0..4 {
            for unit in ["é", "京", "🎉", "京 ", "a京"] {
                let text = format!("{}{}", "x".repeat(offset), unit.repeat(MAX_EMBED_BYTES));
                let cut = capped(&text);
                assert!(cut.len() <= MAX_EMBED_BYTES && text.starts_with(cut));
                assert!(cut.len() + 64 + 4 >= MAX_EMBED_BYTES, "{}", cut.len());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_cut_is_a_prefix_within_the_limit(
            text in "(\\PC|\\s){0,64}",
            repeat in 1usize..400,
        ) {
            let long = text.repeat(repeat);
            let cut = capped(&long);
            proptest::prop_assert!(cut.len() <= MAX_EMBED_BYTES);
            proptest::prop_assert!(long.starts_with(cut));
        }
    }
}
