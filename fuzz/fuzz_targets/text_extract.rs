//! Text extraction (`openai::text::extract`) on bodies the probe accepts.
//!
//! Asserted, beyond "no panic":
//! - the extracted text is made only of the body's own decoded strings: it splits into pieces, joined
//!   by `\n`, each of which is a string value somewhere in `input`, `messages` or `instructions`
//!   (so extraction never reads past those fields, let alone the body);
//! - its length is bounded by the decoded length of those strings plus one separator each;
//! - with `include_instructions` the text is the same or longer and still made of body strings;
//!   without it, `instructions` contributes nothing (the text is what the body without
//!   `instructions` would give);
//! - errors are client errors naming `input`/`messages`/`instructions`, and extraction is
//!   deterministic.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use responses_router_core::openai::body::parse;
use responses_router_core::openai::text::{TextPolicy, extract};
use serde_json::Value;

/// Every string value (not keys) under `v`, repeats included: a repeated string may be extracted
/// once per occurrence.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Value::Object(map) => map.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

/// Whether `text` is a `\n`-join of strings from `pool` (each used any number of times).
fn made_of(text: &str, pool: &BTreeSet<String>) -> bool {
    if text.is_empty() {
        return true;
    }
    // reachable[i]: text[..i] is a join of pool strings followed by a separator (or i == 0).
    let bytes = text.as_bytes();
    let mut reachable = vec![false; bytes.len() + 1];
    reachable[0] = true;
    for start in 0..bytes.len() {
        if !reachable[start] {
            continue;
        }
        for piece in pool.iter().filter(|p| !p.is_empty()) {
            if text[start..].starts_with(piece.as_str()) {
                let end = start + piece.len();
                if end == bytes.len() {
                    return true;
                }
                if bytes[end] == b'\n' {
                    reachable[end + 1] = true;
                }
            }
        }
    }
    false
}

fn check(bytes: &[u8]) {
    let Ok(parsed) = parse(bytes) else { return };
    let with = TextPolicy {
        include_instructions: true,
    };
    let plain = extract(&parsed.text, TextPolicy::default());
    let full = extract(&parsed.text, with);
    for result in [&plain, &full] {
        if let Err(e) = result {
            assert_eq!(e.status, 400);
            let param = e.param.as_deref();
            assert!(
                matches!(param, Some("input" | "messages" | "instructions")),
                "extraction error names {param:?}: {}",
                e.message
            );
        }
    }
    assert_eq!(
        plain.as_ref().map_err(|e| e.message.clone()),
        extract(&parsed.text, TextPolicy::default())
            .as_ref()
            .map_err(|e| e.message.clone()),
        "extraction is not deterministic"
    );

    // The decoded strings the text may come from, from serde_json's reading of the whole body.
    // A body serde_json cannot decode as a whole (a lone surrogate escape in a part the router
    // skips, see body_splice) leaves no oracle for the text-origin checks; the rest still apply.
    let mut pool = Vec::new();
    let mut instructions_pool = Vec::new();
    let document = serde_json::from_slice::<Value>(bytes).ok();
    let decodable = document.is_some();
    if let Some(document) = &document {
        for name in ["input", "messages"] {
            if let Some(v) = document.get(name) {
                strings(v, &mut pool);
            }
        }
        if let Some(v) = document.get("instructions") {
            strings(v, &mut instructions_pool);
        }
    }
    let bound = |pool: &[String]| pool.iter().map(|s| s.len() + 1).sum::<usize>();
    let all: Vec<String> = pool.iter().chain(&instructions_pool).cloned().collect();
    let all_set: BTreeSet<String> = all.iter().cloned().collect();
    let pool_set: BTreeSet<String> = pool.iter().cloned().collect();

    if let Ok(text) = &plain {
        assert!(
            !decodable || text.len() <= bound(&pool),
            "text longer than the body's strings"
        );
        assert!(
            !decodable || made_of(text, &pool_set),
            "text not made of input strings: {text:?}"
        );
        // `instructions` is ignored without the policy: removing it changes nothing.
        if parsed.text.instructions.is_some() {
            let mut without = parsed;
            without.text.instructions = None;
            let again = extract(&without.text, TextPolicy::default()).map_err(|e| e.message);
            assert_eq!(
                again.as_ref(),
                Ok(text),
                "instructions leaked into the text"
            );
        }
    }
    if let Ok(text) = &full {
        assert!(
            !decodable || text.len() <= bound(&all),
            "text longer than the body's strings"
        );
        assert!(
            !decodable || made_of(text, &all_set),
            "text not made of body strings: {text:?}"
        );
        if let Ok(plain) = &plain {
            assert!(
                text.len() >= plain.len(),
                "instructions policy dropped text"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| check(data));
