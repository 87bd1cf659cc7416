//! Classifies texts with a routing YAML's categories, through the router's own classifier: the
//! accuracy evaluation (`bench/classify_eval`) runs it once per configuration.
//!
//!     cargo run --release -p responses-router-core --example classify -- ROUTING.yaml < texts.jsonl
//!
//! Input: one JSON string per line. Output: one JSON object per line, in input order:
//! `{"category": NAME or null, "points": [...], "similarity": [...], "first_us": T, "warm_us": T}`
//! where `first_us` is the time of the first classification of that text (the words of earlier
//! texts are cached, a new word costs a tokenizer pass) and `warm_us` the mean of 20 more.

use std::io::{BufRead, Write};
use std::time::Instant;

use responses_router_core::classify::Classifier;
use responses_router_core::config;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: classify ROUTING.yaml < texts.jsonl")?;
    let table = config::load(path.as_ref())?.table;
    let classifier = table.classifier();
    let names: Vec<&str> = classifier
        .categories()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for line in std::io::stdin().lock().lines() {
        let text: String = serde_json::from_str(&line?)?;
        let started = Instant::now();
        let result = classifier.classify(&text);
        let first_us = started.elapsed().as_secs_f64() * 1e6;
        const REPEATS: u32 = 20;
        let started = Instant::now();
        for _ in 0..REPEATS {
            std::hint::black_box(classifier.classify(std::hint::black_box(&text)));
        }
        let warm_us = started.elapsed().as_secs_f64() * 1e6 / f64::from(REPEATS);
        let record = serde_json::json!({
            "category": result.winner.map(|w| names[w]),
            "points": result.scores,
            "similarity": result.similarities,
            "first_us": first_us,
            "warm_us": warm_us,
        });
        writeln!(out, "{record}")?;
    }
    out.flush()?;
    Ok(())
}
