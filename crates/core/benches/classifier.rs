//! The keyword/regex classifier alone, with a small rule set (10 keywords) and a large one (1,000
//! keywords and 50 regexes), over the text sizes a latest user turn has, ASCII and not.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use responses_router_core::classify::{Classifier, RuleCategory, RulesClassifier};

fn category(name: &str, keywords: Vec<String>, patterns: Vec<String>) -> RuleCategory {
    RuleCategory {
        name: name.into(),
        keywords,
        patterns,
        min_score: 1,
    }
}

/// 10 keywords over two categories, like the shipped deploy/routing.yaml.
fn small() -> RulesClassifier {
    let words = |ws: &[&str]| ws.iter().map(|w| w.to_string()).collect();
    RulesClassifier::new(vec![
        category(
            "coding",
            words(&[
                "python",
                "rust",
                "function",
                "compiler",
                "bug",
                "stack trace",
            ]),
            vec![],
        ),
        category(
            "creative",
            words(&["story", "poem", "haiku", "novel"]),
            vec![],
        ),
    ])
    .expect("small rule set compiles")
}

/// 1,000 keywords and 50 regexes over 10 categories. `ascii`: the same patterns with ASCII-only
/// classes (`(?-u)`), which the regex crate runs on its lazy DFA; Unicode `\b` and `\w` send it to
/// a slower engine (its PikeVM).
fn large(ascii: bool) -> RulesClassifier {
    let flags = if ascii { "(?-u)" } else { "" };
    let categories = (0..10)
        .map(|c| {
            let keywords = (0..100).map(|k| format!("topic{c}term{k:03}")).collect();
            let patterns = (0..5)
                .map(|p| {
                    format!(
                        r"{flags}\b(?:ticket|case)-{c}{p}\d{{3,6}}\b|\bstage{c}{p}\s+\w+\s+report\b"
                    )
                })
                .collect();
            category(&format!("category{c}"), keywords, patterns)
        })
        .collect();
    RulesClassifier::new(categories).expect("large rule set compiles")
}

/// English-like text of `size` bytes that mentions a few of the keywords.
fn text(size: usize) -> String {
    let sentence = "Please review the attached notes about topic3term042 and the python function \
                    that failed in stage31 nightly build report, then summarise the next steps. ";
    sentence.repeat(size / sentence.len() + 1)[..size].to_owned()
}

fn classify(c: &mut Criterion) {
    let rule_sets = [
        ("10_keywords", small()),
        ("1000_keywords_50_regexes", large(false)),
        ("1000_keywords_50_ascii_regexes", large(true)),
    ];
    // A text with one non-ASCII letter takes the Unicode path of the patterns.
    let mut non_ascii = text(1 << 10);
    non_ascii.replace_range(0..2, "é");
    let inputs = [
        ("1KiB", text(1 << 10)),
        ("16KiB", text(16 << 10)),
        ("1KiB_non_ascii", non_ascii),
    ];
    let mut group = c.benchmark_group("classifier");
    for (size, input) in &inputs {
        group.throughput(Throughput::Bytes(input.len() as u64));
        for (name, rules) in &rule_sets {
            let id = BenchmarkId::new(*name, size);
            group.bench_with_input(id, input, |b, t| b.iter(|| rules.classify(black_box(t))));
        }
    }
    group.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
