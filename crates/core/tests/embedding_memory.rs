//! The embedding model's memory budget: the loaded model (table, tokenizer, token cache) takes at
//! most twice its weight file (issue 14), counted exactly by a global allocator, so the figure
//! does not depend on the machine. The wordllama table is F16 on disk and stays F16 in memory;
//! converting it to F32 at load would alone take twice the file.

mod support;

use responses_router_core::classify::EmbeddingModel;

#[path = "../benches/support/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

#[test]
fn the_loaded_model_takes_at_most_twice_its_weight_file() {
    let dir = support::models::model_dir(support::models::WORDLLAMA);
    let before = counting_alloc::live_bytes();
    let model = EmbeddingModel::load(&dir).expect("the wordllama files load");
    let loaded = counting_alloc::live_bytes().saturating_sub(before);
    let file = model.weight_file().1 as usize;
    println!(
        "weight file {file} bytes; loaded model {loaded} heap bytes ({:.2}x; table {} bytes)",
        loaded as f64 / file as f64,
        model.table_bytes()
    );
    assert!(
        loaded <= 2 * file,
        "{loaded} heap bytes for a {file}-byte file"
    );

    // In use: a varied text warms the token cache (bounded; see classify/embedding/tokens.rs).
    let text = include_str!("../benches/support/prompt_1k.txt").repeat(4);
    for i in 0..200 {
        model.embed(&format!("{text} {i} variant{i} word{}", i * 7));
    }
    let in_use = counting_alloc::live_bytes().saturating_sub(before);
    println!(
        "after 200 texts: {in_use} heap bytes ({:.2}x), {} chunks cached",
        in_use as f64 / file as f64,
        model.cached_chunks()
    );
    assert!(in_use <= 2 * file, "{in_use} heap bytes in use");
    drop(model);
}
