//! Text -> token ids, through the model's own `tokenizer.json` (Hugging Face `tokenizers`), with a
//! bounded cache of the ids of text chunks.
//!
//! A full `tokenizers` pass costs 170-480 µs per KiB here (alignment bookkeeping, and for the
//! Llama-2 file one BPE "word" as long as the text). For the two tokenizer families static models
//! ship, a text can be cut into chunks that the tokenizer provably encodes independently, so the
//! ids of a text are the ids of its chunks, in order, and each chunk's ids can be cached: a few µs
//! per KiB once the words have been seen. The family is recognised from `tokenizer.json` at load;
//! anything else is encoded whole, uncached.
//!
//! - [`Chunking::Whitespace`] (BERT: `BertNormalizer` + `BertPreTokenizer`, as model2vec's potion
//!   models ship): normalisation and pre-tokenisation never join characters across whitespace,
//!   so a chunk is a run of non-whitespace characters.
//! - [`Chunking::SpacePrepend`] (Llama-2 SentencePiece BPE as `tokenizer.json`, as wordllama
//!   ships): the normaliser prepends `▁` and turns spaces into `▁`, there is no pre-tokenizer, and
//!   no vocabulary token has a `▁` after another character, so no BPE merge crosses the start of a
//!   `▁` run that follows another character. A chunk is such a run and the characters up to the
//!   next one; it is tokenised by the BPE model directly, in its normalised form.
//!
//! A text that contains an added token's text (`<s>`, `[CLS]`, ...) is encoded whole, uncached:
//! the tokenizer splits those out before normalising, which chunking would not reproduce.
//!
//! The cache only memoises a pure function (chunk -> ids), so it never changes a result. It is
//! bounded: two generations of at most [`CACHE_GENERATION`] chunks each; when the young one is
//! full it becomes the old one and the previous old one is dropped, and a chunk found in the old
//! one moves back to the young one. Chunks longer than [`MAX_CACHED_CHUNK`] bytes are not cached.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::RwLock;

use aho_corasick::AhoCorasick;
use tokenizers::{Model, Tokenizer};

/// Chunks per cache generation (the cache holds at most twice as many).
pub(super) const CACHE_GENERATION: usize = 16_384;
/// Longer chunks are encoded every time, so a hostile text cannot fill the cache with big keys.
pub(super) const MAX_CACHED_CHUNK: usize = 64;

/// How a text is cut into independently encodable chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunking {
    /// Not a recognised family: the text is encoded whole.
    Whole,
    /// BERT normaliser and pre-tokenizer: runs of non-whitespace characters.
    Whitespace,
    /// Llama-2 style `Prepend("▁")` + `Replace(" ", "▁")` with a BPE model and no pre-tokenizer.
    SpacePrepend,
}

/// What the loader needs to know about a `tokenizer.json`, read without keeping (or even
/// allocating) its vocabulary and merges: the big maps are scanned in place. The `tokenizers`
/// crate reads the file for the tokenizer itself.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct TokenizerFacts {
    #[serde(default)]
    normalizer: Option<serde_json::Value>,
    #[serde(default)]
    pre_tokenizer: Option<serde_json::Value>,
    #[serde(default)]
    added_tokens: Vec<AddedTokenFacts>,
    #[serde(default)]
    model: ModelFacts,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AddedTokenFacts {
    id: u32,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ModelFacts {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    ignore_merges: bool,
    /// BPE, WordPiece, WordLevel.
    #[serde(default)]
    unk_token: Option<String>,
    /// Unigram.
    #[serde(default)]
    unk_id: Option<u32>,
    #[serde(default)]
    vocab: VocabFacts,
}

/// Scanned from `model.vocab` (a token -> id map, or Unigram's list of `[piece, score]`).
#[derive(Debug, Default)]
struct VocabFacts {
    max_id: Option<u32>,
    /// Some token holds a `▁` right after another character.
    space_inside: bool,
}

impl<'de> serde::Deserialize<'de> for VocabFacts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = VocabFacts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a vocabulary map or list")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<VocabFacts, A::Error> {
                let mut facts = VocabFacts::default();
                while let Some(token) = map.next_key::<Token<'de>>()? {
                    let id: u32 = map.next_value()?;
                    facts.max_id = facts.max_id.max(Some(id));
                    facts.space_inside |= has_space_after_other(&token.0);
                }
                Ok(facts)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<VocabFacts, A::Error> {
                let mut count = 0u32;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    count += 1;
                }
                Ok(VocabFacts {
                    max_id: count.checked_sub(1),
                    space_inside: false,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A vocabulary key, borrowed from the file when it has no escapes.
struct Token<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Token<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Token<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Token<'de>, E> {
                Ok(Token(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Token<'de>, E> {
                Ok(Token(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

fn has_space_after_other(token: &str) -> bool {
    let mut after_other = false;
    token.chars().any(|c| {
        let inside = c == '▁' && after_other;
        after_other = c != '▁';
        inside
    })
}

impl TokenizerFacts {
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The largest token id of the model's vocabulary and of the added tokens.
    pub(super) fn max_id(&self) -> Option<u32> {
        let added = self.added_tokens.iter().map(|t| t.id).max();
        self.model.vocab.max_id.max(added)
    }

    /// The unknown token (by name, or by id for Unigram).
    pub(super) fn unk(&self, tokenizer: &Tokenizer) -> Option<u32> {
        match &self.model.unk_token {
            Some(token) => tokenizer.token_to_id(token),
            None => self.model.unk_id,
        }
    }

    /// Whether the model is a BPE with dropout (random tokenisation).
    pub(super) fn bpe_dropout(&self) -> bool {
        self.model.kind.as_deref() == Some("BPE") && self.model.dropout.is_some()
    }

    /// The tokenizer family, for chunking.
    pub(super) fn chunking(&self) -> Chunking {
        let null = serde_json::Value::Null;
        let normalizer = self.normalizer.as_ref().unwrap_or(&null);
        let pre_tokenizer = self.pre_tokenizer.as_ref().unwrap_or(&null);
        if normalizer["type"] == "BertNormalizer" && pre_tokenizer["type"] == "BertPreTokenizer" {
            return Chunking::Whitespace;
        }
        let steps = normalizer["normalizers"].as_array();
        let prepend_then_replace = normalizer["type"] == "Sequence"
            && steps.is_some_and(|s| {
                s.len() == 2
                    && s[0]["type"] == "Prepend"
                    && s[0]["prepend"] == "▁"
                    && s[1]["type"] == "Replace"
                    && s[1]["pattern"]["String"] == " "
                    && s[1]["content"] == "▁"
            });
        let model = &self.model;
        let plain_bpe =
            model.kind.as_deref() == Some("BPE") && model.dropout.is_none() && !model.ignore_merges;
        // No token may hold a `▁` right after another character: then no merge crosses a cut.
        if prepend_then_replace && pre_tokenizer.is_null() && plain_bpe && !model.vocab.space_inside
        {
            Chunking::SpacePrepend
        } else {
            Chunking::Whole
        }
    }
}

/// The tokenizer with its chunking and chunk cache.
pub(super) struct TokenEncoder {
    tokenizer: Tokenizer,
    chunking: Chunking,
    /// The texts of the added tokens; a text containing one is encoded whole.
    added: Option<AhoCorasick>,
    cache: RwLock<Generations>,
}

#[derive(Default)]
struct Generations {
    young: HashMap<Box<str>, Box<[u32]>>,
    old: HashMap<Box<str>, Box<[u32]>>,
}

/// The tokenizer failed on a text (a vocabulary without byte fallback or unknown token, say).
#[derive(Debug)]
pub(super) struct EncodeFailed;

impl TokenEncoder {
    /// `chunking` as detected from the file; `Whole` disables the cache. Added tokens that the
    /// normaliser would see (`normalized: true`) cannot be spotted in the raw text, so they also
    /// disable chunking.
    pub(super) fn new(tokenizer: Tokenizer, chunking: Chunking) -> Result<Self, String> {
        let added: Vec<_> = tokenizer.get_added_tokens_decoder().into_values().collect();
        let chunking = if added.iter().any(|t| t.normalized) {
            Chunking::Whole
        } else {
            chunking
        };
        let contents: Vec<&str> = added
            .iter()
            .map(|t| t.content.as_str())
            .filter(|c| !c.is_empty())
            .collect();
        let added = if contents.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(&contents).map_err(|e| e.to_string())?)
        };
        Ok(TokenEncoder {
            tokenizer,
            chunking,
            added,
            cache: RwLock::new(Generations::default()),
        })
    }

    pub(super) fn chunking(&self) -> Chunking {
        self.chunking
    }

    /// Appends the ids of `text` (no special tokens) to `ids`.
    pub(super) fn encode(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), EncodeFailed> {
        let chunked = self.chunking != Chunking::Whole
            && self.added.as_ref().is_none_or(|a| !a.is_match(text));
        if chunked {
            self.encode_chunked(text, ids)
        } else {
            self.encode_whole(text, ids)
        }
    }

    /// The tokenizer's own full pass, uncached.
    pub(super) fn encode_whole(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), EncodeFailed> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|_| EncodeFailed)?;
        ids.extend_from_slice(encoding.get_ids());
        Ok(())
    }

    /// The ids of one chunk (its cache key form: for `SpacePrepend`, spaces not yet turned into
    /// `▁`, and a first chunk with a space put in front for the prepended `▁`).
    fn encode_chunk(&self, chunk: &str) -> Result<Box<[u32]>, EncodeFailed> {
        match self.chunking {
            Chunking::SpacePrepend => {
                let normalized = chunk.replace(' ', "▁");
                let tokens = self
                    .tokenizer
                    .get_model()
                    .tokenize(&normalized)
                    .map_err(|_| EncodeFailed)?;
                Ok(tokens.iter().map(|t| t.id).collect())
            }
            Chunking::Whitespace | Chunking::Whole => {
                let mut ids = Vec::new();
                self.encode_whole(chunk, &mut ids)?;
                Ok(ids.into_boxed_slice())
            }
        }
    }

    fn encode_chunked(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), EncodeFailed> {
        let chunks = chunks(self.chunking, text);
        // Chunks not in the cache, with the position their ids go to.
        let mut missing: Vec<(usize, Cow<'_, str>)> = Vec::new();
        let mut promoted: Vec<(Box<str>, Box<[u32]>)> = Vec::new();
        {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            for chunk in chunks {
                if chunk.len() <= MAX_CACHED_CHUNK {
                    if let Some(hit) = cache.young.get(chunk.as_ref()) {
                        ids.extend_from_slice(hit);
                        continue;
                    }
                    if let Some(hit) = cache.old.get(chunk.as_ref()) {
                        ids.extend_from_slice(hit);
                        promoted.push((chunk.as_ref().into(), hit.clone()));
                        continue;
                    }
                }
                missing.push((ids.len(), chunk));
            }
        }
        if missing.is_empty() && promoted.is_empty() {
            return Ok(());
        }
        // Last first, so the positions recorded before them stay valid.
        let mut fresh = Vec::with_capacity(missing.len());
        for (at, chunk) in missing.into_iter().rev() {
            let chunk_ids = self.encode_chunk(&chunk)?;
            ids.splice(at..at, chunk_ids.iter().copied());
            if chunk.len() <= MAX_CACHED_CHUNK {
                fresh.push((Box::<str>::from(chunk.as_ref()), chunk_ids));
            }
        }
        if fresh.is_empty() && promoted.is_empty() {
            // Only chunks too long to cache were missing: nothing to write.
            return Ok(());
        }
        // A retired generation is freed after the lock is released, not while others wait.
        let mut retired = Vec::new();
        {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            for (chunk, chunk_ids) in fresh.into_iter().chain(promoted) {
                if cache.young.len() >= CACHE_GENERATION {
                    let young = std::mem::take(&mut cache.young);
                    retired.push(std::mem::replace(&mut cache.old, young));
                }
                cache.young.insert(chunk, chunk_ids);
            }
        }
        drop(retired);
        Ok(())
    }

    /// Chunks held by the cache (both generations).
    pub(super) fn cached_chunks(&self) -> usize {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.young.len() + cache.old.len()
    }
}

/// The chunks of `text`, in order, in cache-key form.
fn chunks(chunking: Chunking, text: &str) -> Vec<Cow<'_, str>> {
    match chunking {
        Chunking::Whitespace => text
            .split(char::is_whitespace)
            .filter(|w| !w.is_empty())
            .map(Cow::Borrowed)
            .collect(),
        Chunking::SpacePrepend => space_prepend_chunks(text),
        Chunking::Whole => vec![Cow::Borrowed(text)],
    }
}

/// Cuts `text` before every run of spaces (or `▁`, which the normaliser makes of a space) that
/// follows another character. The normaliser prepends a `▁` to the whole text, which belongs to the
/// first chunk: that chunk's key gets a space in front. An empty text has no chunks (the
/// normaliser leaves it empty, and it has no tokens).
fn space_prepend_chunks(text: &str) -> Vec<Cow<'_, str>> {
    let is_space = |c: char| c == ' ' || c == '▁';
    let mut out = Vec::new();
    let mut start = 0;
    let mut after_other = false;
    for (i, c) in text.char_indices() {
        if is_space(c) && after_other {
            out.push(&text[start..i]);
            start = i;
        }
        after_other = !is_space(c);
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            if i == 0 {
                Cow::Owned(format!(" {chunk}"))
            } else {
                Cow::Borrowed(chunk)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small Llama-2 style tokenizer.json: Prepend + Replace normaliser, no pre-tokenizer, BPE
    /// with byte fallback, three special added tokens.
    pub(crate) fn llama_like() -> String {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert((*t).into(), i.into());
        }
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), (3 + b).into());
        }
        let mut next = 259u32;
        let mut merges = Vec::new();
        let mut add = |token: &str, vocab: &mut serde_json::Map<String, serde_json::Value>| {
            if !vocab.contains_key(token) {
                vocab.insert(token.into(), next.into());
                next += 1;
            }
        };
        for c in "▁abcdehilorstwxy".chars() {
            add(&c.to_string(), &mut vocab);
        }
        for (a, b) in [
            ("▁", "▁"),
            ("▁▁", "▁▁"),
            ("▁", "a"),
            ("▁", "b"),
            ("h", "e"),
            ("l", "l"),
            ("he", "ll"),
            ("hell", "o"),
            ("▁", "hello"),
            ("w", "o"),
            ("r", "l"),
            ("wo", "rl"),
            ("worl", "d"),
            ("▁", "world"),
            ("▁", "x"),
            ("▁x", "y"),
        ] {
            add(&format!("{a}{b}"), &mut vocab);
            merges.push(format!("{a} {b}"));
        }
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
            ]},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": null,
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        })
        .to_string()
    }

    /// A small BERT-uncased style tokenizer.json (WordPiece).
    pub(crate) fn bert_like() -> String {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "the", "cat", "##s", "sat", ",",
            ".", "!", "un", "##able", "é", "e", "a", "b", "c", "##a", "##b", "##c", "中", "文",
        ];
        let vocab: serde_json::Map<_, _> = words
            .iter()
            .enumerate()
            .map(|(i, w)| ((*w).to_string(), serde_json::Value::from(i)))
            .collect();
        let added: Vec<_> = words[..4]
            .iter()
            .enumerate()
            .map(|(i, w)| serde_json::json!({"id": i, "content": w, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        })
        .to_string()
    }

    pub(crate) fn encoder(json: &str) -> TokenEncoder {
        let facts = TokenizerFacts::parse(json.as_bytes()).unwrap();
        let tokenizer = Tokenizer::from_bytes(json.as_bytes()).unwrap();
        TokenEncoder::new(tokenizer, facts.chunking()).unwrap()
    }

    fn chunking_of(value: &serde_json::Value) -> Chunking {
        TokenizerFacts::parse(value.to_string().as_bytes())
            .unwrap()
            .chunking()
    }

    fn both_ways(e: &TokenEncoder, text: &str) -> (Vec<u32>, Vec<u32>) {
        let mut cached = Vec::new();
        let mut whole = Vec::new();
        e.encode(text, &mut cached).unwrap();
        e.encode_whole(text, &mut whole).unwrap();
        (cached, whole)
    }

    const TEXTS: [&str; 16] = [
        "hello world",
        "  hello   world  ",
        "hello\tworld\nhello",
        "",
        " ",
        "▁hello▁▁world",
        "xy xyxy ab ba",
        "helloworld hello, world!",
        "Ünïcode 中文 text — é",
        "a<s>b </s> <unk>",
        "cats sat unable",
        "[CLS] hello [SEP]",
        "x\u{200b}y \u{3000} z\u{a0}w",
        "trailing space ",
        "         ",
        "hello hello hello hello",
    ];

    #[test]
    fn families_are_recognised() {
        assert_eq!(encoder(&llama_like()).chunking(), Chunking::SpacePrepend);
        assert_eq!(encoder(&bert_like()).chunking(), Chunking::Whitespace);
        let mut v: serde_json::Value = serde_json::from_str(&llama_like()).unwrap();
        assert_eq!(chunking_of(&v), Chunking::SpacePrepend);
        v["model"]["vocab"]["a▁"] = 999.into();
        assert_eq!(chunking_of(&v), Chunking::Whole, "a token with ▁ inside");
        let facts = TokenizerFacts::parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(facts.max_id(), Some(999));
        let mut v: serde_json::Value = serde_json::from_str(&llama_like()).unwrap();
        v["model"]["dropout"] = 0.1.into();
        assert_eq!(chunking_of(&v), Chunking::Whole, "BPE dropout");
        let mut v: serde_json::Value = serde_json::from_str(&bert_like()).unwrap();
        v["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
        assert_eq!(chunking_of(&v), Chunking::Whole, "another pre-tokenizer");
    }

    #[test]
    fn chunked_ids_equal_the_tokenizers_own_cold_and_warm() {
        for json in [llama_like(), bert_like()] {
            let e = encoder(&json);
            for pass in ["cold", "warm"] {
                for text in TEXTS {
                    let (cached, whole) = both_ways(&e, text);
                    assert_eq!(cached, whole, "{pass} {text:?}");
                }
            }
            assert!(e.cached_chunks() > 0);
        }
    }

    #[test]
    fn space_prepend_chunks_keep_the_prepended_marker_on_the_first() {
        let got: Vec<String> = space_prepend_chunks(" a  bc▁d ")
            .into_iter()
            .map(Cow::into_owned)
            .collect();
        assert_eq!(got, ["  a", "  bc", "▁d", " "]);
        assert!(space_prepend_chunks("").is_empty());
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_results_exact() {
        let e = encoder(&llama_like());
        let text: String = (0..3 * CACHE_GENERATION)
            .map(|i| format!("x{i} "))
            .collect();
        let (cached, whole) = both_ways(&e, &text);
        assert_eq!(cached, whole);
        assert!(e.cached_chunks() <= 2 * CACHE_GENERATION);
        let long = "y".repeat(MAX_CACHED_CHUNK + 1);
        let before = e.cached_chunks();
        let (cached, whole) = both_ways(&e, &format!("hello {long}"));
        assert_eq!(cached, whole);
        assert!(
            e.cached_chunks() <= before + 1,
            "a long chunk is not cached"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        #[test]
        fn any_text_encodes_as_the_tokenizer_does(text in "[ a-eh-lorswxy▁<>/\\[\\]\t\né中,.!-]{0,40}") {
            for json in [llama_like(), bert_like()] {
                let e = encoder(&json);
                let (cached, whole) = both_ways(&e, &text);
                proptest::prop_assert_eq!(&cached, &whole);
                let (again, _) = both_ways(&e, &text);
                proptest::prop_assert_eq!(again, whole);
            }
        }
    }
}
