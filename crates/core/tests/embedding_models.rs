//! The embedding model on a real model, in both layouts the router reads: the files of PyPI's
//! `wordllama` 0.4.0.post1 wheel, and the same model written in model2vec's layout.
//!
//! `scripts/models` fetches them (pip download, pinned and hash-checked) into `.cache/models`;
//! `scripts/test` runs it before `cargo test`. These tests are never skipped: without the files
//! they fail and say how to get them. `RESPONSES_ROUTER_MODELS_DIR` points them elsewhere.

mod support;

use std::sync::LazyLock;

use responses_router_core::classify::{Classifier, EmbeddingModel, Layout};
use responses_router_core::config;

use support::models::{M2V, WORDLLAMA, model_dir};

static WHEEL: LazyLock<EmbeddingModel> = LazyLock::new(|| {
    EmbeddingModel::load(&model_dir(WORDLLAMA)).expect("the wordllama files load")
});
static MODEL2VEC: LazyLock<EmbeddingModel> =
    LazyLock::new(|| EmbeddingModel::load(&model_dir(M2V)).expect("the model2vec directory loads"));

const TEXTS: [&str; 4] = [
    "Why does my Python function raise KeyError?",
    "Write a haiku about autumn.",
    "What is the capital of Peru?",
    "Compose a ballad about a lighthouse keeper.",
];

fn cos(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn the_wordllama_wheel_layout_agrees_with_wordllama_itself() {
    let m = &*WHEEL;
    assert_eq!(m.layout(), Layout::WordLlama);
    assert_eq!((m.tokens(), m.dim()), (32_000, 256));
    assert_eq!(m.weight_file().1, 16_384_096);
    assert!(m.describe().contains("F16") && m.describe().contains("token cache on"));
    // Token ids and vectors from wordllama 0.4.0.post1 in Python (WordLlama.load(...).embed(
    // texts, norm=True), its own tokenizer and F32 table), computed once.
    assert_eq!(
        m.token_ids(TEXTS[0], true).unwrap(),
        [3750, 947, 590, 5132, 740, 12020, 7670, 2392, 29973]
    );
    let reference_heads: [[f32; 4]; 4] = [
        [0.083025, -0.055697, -0.100423, -0.144265],
        [0.067093, 0.190953, 0.09486, -0.096928],
        [0.075314, -0.006555, 0.069658, 0.027883],
        [0.061545, 0.025252, -0.069828, 0.127258],
    ];
    let reference_cosines = [
        (0, 1, 0.033320),
        (0, 2, -0.007997),
        (0, 3, 0.064934),
        (1, 2, 0.093226),
        (1, 3, 0.112982),
        (2, 3, 0.019816),
    ];
    let vectors: Vec<Vec<f32>> = TEXTS.iter().map(|t| m.embed(t).unwrap()).collect();
    for (v, head) in vectors.iter().zip(reference_heads) {
        for (x, y) in v.iter().zip(head) {
            assert!((x - y).abs() < 2e-6, "{:?} vs {head:?}", &v[..4]);
        }
        assert!((cos(v, v) - 1.0).abs() < 1e-5);
    }
    for (a, b, expected) in reference_cosines {
        let got = cos(&vectors[a], &vectors[b]);
        assert!(
            (got - expected).abs() < 1e-5,
            "{a}-{b}: {got} vs {expected}"
        );
    }
}

#[test]
fn the_model2vec_layout_holds_the_same_model_bit_for_bit() {
    let (wheel, m2v) = (&*WHEEL, &*MODEL2VEC);
    assert_eq!(m2v.layout(), Layout::Model2Vec);
    assert_eq!((m2v.tokens(), m2v.dim()), (32_000, 256));
    assert!(m2v.describe().contains("F32"));
    // Its table is the F16 table converted to F32 (exactly): every embedding must be identical,
    // which also checks the F16 pooling's own conversion on all rows these texts touch.
    let texts = TEXTS
        .iter()
        .map(|t| t.to_string())
        .chain(["Übersetze das bitte ins Deutsche: 東京で会いましょう 🎉".to_owned()])
        .chain(std::iter::once(
            include_str!("../benches/support/prompt_1k.txt").to_owned(),
        ));
    for text in texts {
        assert_eq!(wheel.embed(&text), m2v.embed(&text), "{text:?}");
    }
}

/// Texts that stress the chunked tokenisation: spaces, `▁`, added tokens, control characters,
/// CJK, emoji, byte fallback.
const EDGES: [&str; 14] = [
    "",
    " ",
    "   leading and trailing   ",
    "tabs\tand\nnewlines\r\nmixed",
    "▁literal▁marker ▁ ▁▁",
    "<s>special</s> <unk> tokens<s>",
    "\u{0}\u{1}control\u{7f}",
    "non\u{a0}breaking\u{3000}ideographic\u{200b}zero width",
    "café naïve coöperate",
    "東京で会いましょう",
    "emoji 🎉🎉 family 👨‍👩‍👧",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "x",
    "a                                                                                 b",
];

#[test]
fn the_token_cache_gives_the_tokenizers_own_ids_on_the_real_vocabulary() {
    let m = &*WHEEL;
    let mut texts: Vec<String> = EDGES.iter().map(|s| s.to_string()).collect();
    texts.extend(TEXTS.iter().map(|s| s.to_string()));
    texts.push(include_str!("../benches/support/prompt_1k.txt").to_owned());
    texts.push("word ".repeat(3000));
    // Pseudo-random strings over a mixed alphabet (a fixed generator: reproducible).
    let alphabet: Vec<char> = "ab xyz▁  \t\n.,;:!?<>/s\u{a0}é東🎉0123".chars().collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let mut s = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 40) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            s.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        texts.push(s);
    }
    for pass in ["cold", "warm"] {
        for text in &texts {
            assert_eq!(
                m.token_ids(text, true),
                m.token_ids(text, false),
                "{pass}: {text:?}"
            );
        }
    }
    assert!(m.cached_chunks() > 0);
}

#[test]
fn categories_with_examples_route_by_meaning_with_the_real_model() {
    let yaml = format!(
        r#"
default_model: general-model
models:
  - {{ name: general-model, clusters: [{{ name: general }}] }}
  - {{ name: code-model, clusters: [{{ name: code }}] }}
  - {{ name: story-model, clusters: [{{ name: stories }}] }}
classification:
  embedding: {{ model_dir: "{}" }}
categories:
  - name: coding
    model: code-model
    keywords: [python, rust, function, bug]
    examples:
      - "Why does this loop never terminate?"
      - "How do I read a CSV file into a list of records?"
      - "My program crashes with a segmentation fault when I free memory"
  - name: creative
    model: story-model
    keywords: [story, poem, haiku]
    examples:
      - "Write a short story about a dragon who is afraid of the dark"
      - "Compose a sonnet about the sea at night"
      - "Invent a fairy tale for my daughter's bedtime"
"#,
        model_dir(WORDLLAMA).display()
    );
    let table = config::from_yaml(&yaml).expect("the config compiles").table;
    let classifier = table.classifier();
    let category = |text: &str| {
        classifier
            .classify(text)
            .winner
            .map(|w| classifier.categories()[w].name.clone())
    };
    // No keyword of either category in these: they are routed by meaning alone.
    let rules_only = |text: &str| classifier.classify(text).scores.iter().all(|&p| p == 0);
    for (text, expected) in [
        (
            "Compose a ballad about a lighthouse keeper.",
            Some("creative"),
        ),
        (
            "Why is my recursive descent parser so slow on long inputs?",
            Some("coding"),
        ),
        ("What is the capital of Peru?", None),
    ] {
        assert!(rules_only(text), "{text:?} has a keyword");
        assert_eq!(category(text).as_deref(), expected, "{text:?}");
    }
}
