//! Classification by meaning (issue 14): classifying a 1 KiB text against 10 categories of 20
//! examples (and 10 keywords) each with the real wordllama model, the pieces of that cost, the
//! model's load time, and its resident memory (printed: criterion measures time only).
//!
//! Target: <= 30 µs per classification at 1 KiB; resident memory <= 2x the weight file.
//! Needs the model: `scripts/models` (the benchmark fails and says so without it).

#[path = "support/models.rs"]
mod models;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use responses_router_core::classify::{Classifier, EmbeddingModel};
use responses_router_core::config;

const PROMPT_1K: &str = include_str!("support/prompt_1k.txt");

/// 10 topics, each with 20 example utterances and 10 keywords, as a routing YAML.
fn ten_categories(model_dir: &str) -> String {
    let topics: [(&str, [&str; 10]); 10] = [
        (
            "coding",
            [
                "python", "rust", "function", "compiler", "bug", "api", "thread", "server",
                "deploy", "test",
            ],
        ),
        (
            "math",
            [
                "integral",
                "equation",
                "matrix",
                "proof",
                "probability",
                "derivative",
                "prime",
                "vector",
                "limit",
                "series",
            ],
        ),
        (
            "science",
            [
                "physics",
                "chemistry",
                "cell",
                "energy",
                "atom",
                "molecule",
                "planet",
                "gene",
                "force",
                "reaction",
            ],
        ),
        (
            "health",
            [
                "symptom", "doctor", "medicine", "diet", "sleep", "pain", "vaccine", "blood",
                "heart", "exercise",
            ],
        ),
        (
            "law",
            [
                "contract",
                "court",
                "lawyer",
                "lease",
                "liability",
                "copyright",
                "statute",
                "judge",
                "tenant",
                "claim",
            ],
        ),
        (
            "business",
            [
                "revenue",
                "marketing",
                "startup",
                "pricing",
                "customer",
                "budget",
                "invoice",
                "investor",
                "sales",
                "strategy",
            ],
        ),
        (
            "history",
            [
                "empire",
                "war",
                "century",
                "king",
                "revolution",
                "ancient",
                "treaty",
                "dynasty",
                "colony",
                "medieval",
            ],
        ),
        (
            "creative",
            [
                "story",
                "poem",
                "haiku",
                "novel",
                "character",
                "plot",
                "lyrics",
                "fairy",
                "dragon",
                "sonnet",
            ],
        ),
        (
            "travel",
            [
                "flight",
                "hotel",
                "itinerary",
                "visa",
                "beach",
                "museum",
                "train",
                "passport",
                "tour",
                "luggage",
            ],
        ),
        (
            "cooking",
            [
                "recipe",
                "oven",
                "bake",
                "flour",
                "sauce",
                "grill",
                "vegetarian",
                "dessert",
                "spice",
                "dough",
            ],
        ),
    ];
    let mut yaml = format!(
        "default_model: general\nmodels:\n  - {{ name: general, clusters: [{{ name: g }}] }}\n\
         classification:\n  embedding: {{ model_dir: \"{model_dir}\" }}\ncategories:\n"
    );
    for (name, words) in topics {
        yaml += &format!(
            "  - name: {name}\n    model: general\n    keywords: [{}]\n    examples:\n",
            words.join(", ")
        );
        for i in 0..20 {
            let (a, b) = (words[i % 10], words[(i * 3 + 1) % 10]);
            yaml += &format!(
                "      - \"Can you help me with the {a} and the {b}, question {i} about {name}?\"\n"
            );
        }
    }
    yaml
}

/// Resident memory of this process, in bytes (Linux): anonymous (heap) and file-backed (code).
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("RssAnon:")?, field("RssFile:")?))
}

fn embedding(c: &mut Criterion) {
    let dir = models::model_dir(models::WORDLLAMA);

    // Resident memory of the loaded model: RSS before and after loading (and after use).
    let before = rss();
    let model = EmbeddingModel::load(&dir).expect("the model loads");
    let loaded = rss();
    for line in PROMPT_1K.lines() {
        black_box(model.embed(line));
    }
    let used = rss();
    let file = model.weight_file().1;
    if let (Some(b), Some(l), Some(u)) = (before, loaded, used) {
        let mib = |bytes: u64| bytes as f64 / 1048576.0;
        let anon = l.0 - b.0;
        println!(
            "embedding/resident_memory: weight file {:.1} MiB; after load RSS +{:.1} MiB \
             anonymous ({:.2}x the file) and +{:.1} MiB of code pages touched for the first \
             time; after use +{:.1} MiB anonymous ({:.2}x); the table itself {:.1} MiB",
            mib(file),
            mib(anon),
            anon as f64 / file as f64,
            mib(l.1.saturating_sub(b.1)),
            mib(u.0 - b.0),
            (u.0 - b.0) as f64 / file as f64,
            mib(model.table_bytes() as u64)
        );
    }
    drop(model);

    let mut group = c.benchmark_group("embedding");
    group.sample_size(10);
    group.bench_function("load_wordllama_model", |b| {
        b.iter(|| black_box(EmbeddingModel::load(black_box(&dir)).expect("loads")))
    });
    group.finish();

    let yaml = ten_categories(&dir.display().to_string());
    let table = config::from_yaml(&yaml)
        .expect("10 categories compile")
        .table;
    let classifier = table.classifier();
    let model = table.embedding_model().expect("a model").clone();
    let short = "Why does my Python function raise KeyError when the key is there?";

    let mut group = c.benchmark_group("embedding");
    for (name, text) in [("1KiB", PROMPT_1K), ("short", short)] {
        // Warm: the words have been seen before (the steady state of a running router).
        black_box(classifier.classify(text));
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("classify_10x20_warm", name),
            text,
            |b, t| b.iter(|| black_box(classifier.classify(black_box(t)))),
        );
        group.bench_with_input(BenchmarkId::new("embed_warm", name), text, |b, t| {
            b.iter(|| black_box(model.embed(black_box(t))))
        });
        group.bench_with_input(BenchmarkId::new("token_ids_cached", name), text, |b, t| {
            b.iter(|| black_box(model.token_ids(black_box(t), true)))
        });
        // What every chunk of a never-seen text costs: the tokenizer's own full pass.
        group.bench_with_input(
            BenchmarkId::new("token_ids_uncached", name),
            text,
            |b, t| b.iter(|| black_box(model.token_ids(black_box(t), false))),
        );
    }
    group.finish();
}

criterion_group!(benches, embedding);
criterion_main!(benches);
