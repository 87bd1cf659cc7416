//! Body probe and model splice (`openai::body::{parse, splice_model}`), on arbitrary bytes.
//!
//! Asserted, beyond "no panic":
//! - parse agrees with serde_json on what is JSON: an accepted body is a JSON object to serde_json
//!   too (except the documented divergences below), and a body serde_json accepts as an object is
//!   rejected only for a reason that names a routing field (type, duplicate, conflict, empty id);
//! - the model span lies inside the body, its bytes are a JSON string literal, and that literal
//!   decodes to the reported model name; the same holds for the other routing fields' values;
//! - the splice output equals the input except the model literal, which is replaced by the JSON
//!   encoding of the new model (byte for byte), and re-parsing the output yields the new model, the
//!   same state reference and the same document with `model` set to the new value.
//!
//! Divergences that are by design and therefore tolerated: values of fields the router does not read
//! are skipped, not decoded, so neither nesting deeper than serde_json's recursion limit nor numbers
//! beyond f64's range (`1e999`) nor lone UTF-16 surrogate escapes nor invalid UTF-8 inside them make
//! the router reject a body (the backend's own parser decides those).
#![no_main]

use libfuzzer_sys::fuzz_target;
use responses_router_core::openai::body::{ROUTING_FIELDS, parse, splice_model};
use serde_json::Value;

/// Replacement models: plain, empty, needing escapes, non-ASCII, control characters.
const NEW_MODELS: [&str; 6] = [
    "code-model",
    "",
    "a\"b\\c/d",
    "mod\u{e9}le-\u{1F600}",
    "\u{0}\n\t\u{1f}\u{7f}",
    "</script>\u{2028}",
];


/// Whether serde_json's rejection of the whole document is one the router tolerates by design in
/// values it skips (see the module doc).
fn tolerated_divergence(bytes: &[u8], err: &serde_json::Error) -> bool {
    let msg = err.to_string();
    std::str::from_utf8(bytes).is_err()
        || msg.starts_with("recursion limit exceeded")
        || msg.starts_with("number out of range")
        || msg.starts_with("lone leading surrogate")
        || msg.starts_with("unexpected end of hex escape")
        || msg.starts_with("invalid unicode code point")
}

fn check(bytes: &[u8]) {
    let oracle = serde_json::from_slice::<Value>(bytes);
    let parsed = match parse(bytes) {
        Ok(parsed) => parsed,
        Err(err) => {
            assert_eq!(err.status, 400, "rejections are client errors");
            // A body serde_json reads as an object is refused only over a routing field.
            if let Ok(Value::Object(_)) = &oracle {
                let param = err.param.as_deref();
                assert!(
                    param.is_some_and(|p| ROUTING_FIELDS.contains(&p)),
                    "valid JSON object rejected without naming a routing field: {} ({param:?})",
                    err.message
                );
            }
            return;
        }
    };
    let value = match oracle {
        Ok(Value::Object(map)) => map,
        Ok(other) => panic!("parse accepted a non-object: {other}"),
        Err(e) => {
            assert!(
                tolerated_divergence(bytes, &e),
                "parse accepted a body serde_json rejects: {e}"
            );
            return splice_only(bytes, &parsed);
        }
    };

    // Routing fields agree with the document serde_json sees.
    match (&parsed.model, value.get("model")) {
        (Some(m), Some(Value::String(s))) => assert_eq!(m.name, s.as_str()),
        (None, None | Some(Value::Null)) => {}
        (m, v) => panic!("model disagrees: parse {m:?}, serde_json {v:?}"),
    }
    // `input` and `messages` are read in the same single pass, into the shape text extraction
    // needs: a string stays that string, an array is an array, anything else is `Other`.
    for (turns, name) in [(&parsed.text.input, "input"), (&parsed.text.messages, "messages")] {
        use responses_router_core::openai::turns::Turns;
        match (turns, value.get(name).filter(|v| !v.is_null())) {
            (None, None) => {}
            (Some(Turns::Text(t)), Some(Value::String(s))) => assert_eq!(t, s, "{name} text"),
            (Some(Turns::Items { .. }), Some(Value::Array(_))) => {}
            (Some(Turns::Other), Some(v)) if !v.is_string() && !v.is_array() => {}
            (t, v) => panic!("{name} disagrees: parse {t:?}, serde_json {v:?}"),
        }
    }
    let expected = value.get("instructions").filter(|v| !v.is_null());
    let got = parsed
        .text
        .instructions
        .map(|r| serde_json::from_str::<Value>(r.get()).expect("raw span is JSON"));
    assert_eq!(got.as_ref(), expected, "instructions disagree");
    if let Some(r) = parsed.text.instructions {
        assert!(
            within(bytes, r.get().as_bytes()),
            "instructions span outside the body"
        );
    }
    if let Some(state) = &parsed.state {
        use responses_router_core::openai::StateRef;
        assert!(!state.id().is_empty());
        let expected = match state {
            StateRef::PreviousResponse(_) => value.get("previous_response_id"),
            StateRef::Conversation(_) => {
                value.get("conversation").map(|c| c.get("id").unwrap_or(c))
            }
            StateRef::Response(_) => panic!("a body never names a response by path"),
        };
        assert_eq!(
            expected.and_then(Value::as_str),
            Some(state.id()),
            "state id disagrees with the document"
        );
    }

    splice_only(bytes, &parsed);
    let Some(model) = &parsed.model else { return };
    for new in NEW_MODELS {
        let out = splice_model(bytes, &model.span, new);
        let mut expected = value.clone();
        expected.insert("model".into(), Value::String(new.into()));
        let after: Value = serde_json::from_slice(&out).expect("spliced body is JSON");
        assert_eq!(
            after,
            Value::Object(expected),
            "splice changed more than the model"
        );
        let reparsed = parse(&out).expect("spliced body parses");
        assert_eq!(reparsed.model.as_ref().map(|m| m.name.as_ref()), Some(new));
        assert_eq!(reparsed.state, parsed.state);
    }
}

/// Span and byte-level splice checks, which hold even where serde_json's whole-document reading
/// diverges by design.
fn splice_only(bytes: &[u8], parsed: &responses_router_core::openai::ParsedBody<'_>) {
    assert_eq!(parsed.bytes, bytes);
    let Some(model) = &parsed.model else { return };
    let span = model.span.clone();
    assert!(
        span.start < span.end && span.end <= bytes.len(),
        "model span out of the body"
    );
    let literal = &bytes[span.clone()];
    assert!(
        literal.len() >= 2 && literal[0] == b'"' && literal[literal.len() - 1] == b'"',
        "model span is not a string literal"
    );
    let decoded: String = serde_json::from_slice(literal).expect("model literal decodes");
    assert_eq!(decoded, model.name, "model name is not its literal's value");

    for new in NEW_MODELS {
        let out = splice_model(bytes, &span, new);
        let encoded = serde_json::to_string(new).expect("a str serializes");
        assert_eq!(out.len(), bytes.len() - span.len() + encoded.len());
        assert_eq!(
            &out[..span.start],
            &bytes[..span.start],
            "bytes before the model changed"
        );
        assert_eq!(
            &out[span.start..span.start + encoded.len()],
            encoded.as_bytes()
        );
        assert_eq!(
            &out[span.start + encoded.len()..],
            &bytes[span.end..],
            "bytes after the model changed"
        );
        let reparsed = parse(&out).expect("spliced body parses");
        let m = reparsed.model.expect("spliced body has a model");
        assert_eq!(m.name, new);
        assert_eq!(m.span, span.start..span.start + encoded.len());
        assert_eq!(
            reparsed.state, parsed.state,
            "splice changed the state reference"
        );
    }
}

/// Whether `part` is a sub-slice of `whole` (same memory, not just equal bytes).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

fuzz_target!(|data: &[u8]| check(data));
