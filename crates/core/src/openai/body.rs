//! What a request body says about routing, read without re-serializing it.
//!
//! The body is parsed once into borrowed [`RawValue`] spans, so the `model` value can be replaced by
//! a byte splice and every other byte reaches the backend exactly as the client sent it (no key
//! reordering, no number reformatting, no loss above 2^53). The parse uses serde_json, the same
//! semantics a backend's JSON parser applies: escaped key spellings (`"mod\u0065l"`) are the key,
//! and a duplicated routing field is rejected instead of letting router and backend disagree on
//! which copy counts.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::turns::{TextFields, Turns};

/// The routing-relevant top-level fields of a request body, borrowing from the body bytes.
#[derive(Debug)]
pub struct ParsedBody<'a> {
    /// The whole body; spans below point into it.
    pub bytes: &'a [u8],
    /// The `model` value, unescaped, and the byte range of its JSON literal in `bytes`.
    pub model: Option<ModelField<'a>>,
    /// Where the conversation's state is named, if anywhere.
    pub state: Option<StateRef>,
    /// `"stream": true`: the answer is an SSE stream.
    pub stream: bool,
    /// `input`, `messages` and `instructions`: what text extraction needs, gathered in the same
    /// single pass.
    pub text: TextFields<'a>,
}

/// The `model` field: its value and where its literal sits in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelField<'a> {
    pub name: Cow<'a, str>,
    pub span: std::ops::Range<usize>,
}

/// A reference to conversation state that decides where a request must go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "id")]
pub enum StateRef {
    /// `previous_response_id`: the response this turn continues.
    PreviousResponse(String),
    /// `conversation` (a string or `{ "id": .. }`), or a conversation id in a path.
    Conversation(String),
    /// A response id in a path (`GET /v1/responses/{id}` and friends).
    Response(String),
}

impl StateRef {
    /// The id itself, used as the affinity and hashing key.
    pub fn id(&self) -> &str {
        match self {
            StateRef::PreviousResponse(id)
            | StateRef::Conversation(id)
            | StateRef::Response(id) => id,
        }
    }
}

/// The top-level fields the router reads: each may appear once (a duplicate is a 400 naming it).
pub const ROUTING_FIELDS: [&str; 7] = [
    "model",
    "previous_response_id",
    "conversation",
    "input",
    "messages",
    "instructions",
    "stream",
];

/// Top-level fields the router reads. Fields serde knows are checked for duplicates; all others are
/// skipped (but still syntax-checked).
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    previous_response_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    conversation: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<Turns<'a>>,
    #[serde(borrow, default)]
    messages: Option<Turns<'a>>,
    #[serde(borrow, default)]
    instructions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ConversationObject<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

/// Parses a body for routing. Errors are client errors (400) naming the offending field.
pub fn parse(bytes: &[u8]) -> Result<ParsedBody<'_>, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => return Err(ApiError::invalid_json("the request body is empty")),
        Some(_) => {
            return Err(ApiError::invalid_json(
                "the request body must be a JSON object",
            ));
        }
    }
    // JSON text is UTF-8 (RFC 8259 §8.1). serde_json checks the strings it keeps but skips the
    // fields it ignores without decoding them, so invalid bytes there would be forwarded as if the
    // body were JSON; the backend's parser would then see another document than the router did.
    // Checking once up front also spares serde_json re-checking every borrowed span.
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid_json(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let probe: Probe<'_> = serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        if let Some(field) = duplicate_field(&msg) {
            ApiError::invalid_field(
                field,
                format!("duplicate `{field}` field in the request body"),
            )
        } else {
            ApiError::invalid_json(format!("could not parse the JSON body: {msg}"))
        }
    })?;

    let model = match probe.model {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => {
            let name = string_value(raw, "model")?;
            Some(ModelField {
                name,
                span: span_of(bytes, raw),
            })
        }
    };

    let previous = optional_string(probe.previous_response_id, "previous_response_id")?;
    let conversation = match probe.conversation {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) if raw.get().starts_with('"') => {
            Some(string_value(raw, "conversation")?.into_owned())
        }
        Some(raw) => {
            let invalid = || {
                ApiError::invalid_field(
                    "conversation",
                    "`conversation` must be a string or an object with a string `id`",
                )
            };
            // serde's derived structs also read an array by position (`["conv_1"]`), which the
            // backend refuses: only an object may name the conversation.
            if !raw.get().starts_with('{') {
                return Err(invalid());
            }
            let obj: ConversationObject<'_> =
                serde_json::from_str(raw.get()).map_err(|_| invalid())?;
            Some(obj.id.into_owned())
        }
    };
    let state = match (previous, conversation) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_field(
                "previous_response_id",
                "`previous_response_id` cannot be used together with `conversation`",
            ));
        }
        (Some(p), None) => Some(StateRef::PreviousResponse(non_empty(
            p,
            "previous_response_id",
        )?)),
        (None, Some(c)) => Some(StateRef::Conversation(non_empty(c, "conversation")?)),
        (None, None) => None,
    };

    Ok(ParsedBody {
        bytes,
        model,
        state,
        stream: probe.stream.is_some_and(|r| r.get() == "true"),
        text: TextFields {
            input: probe.input,
            messages: probe.messages,
            instructions: probe.instructions.filter(|r| r.get() != "null"),
        },
    })
}

/// Returns a copy of `body` with only the bytes of `span` replaced by `new_model` as a JSON string.
pub fn splice_model(body: &[u8], span: &std::ops::Range<usize>, new_model: &str) -> Vec<u8> {
    // Serializing a &str cannot fail; the fallback keeps the function total anyway.
    let literal = serde_json::to_string(new_model).unwrap_or_else(|_| String::from("\"\""));
    let mut out = Vec::with_capacity(body.len() - span.len() + literal.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(literal.as_bytes());
    out.extend_from_slice(&body[span.end..]);
    out
}

fn string_value<'a>(raw: &'a RawValue, field: &'static str) -> Result<Cow<'a, str>, ApiError> {
    if !raw.get().starts_with('"') {
        return Err(ApiError::invalid_field(
            field,
            format!("`{field}` must be a string"),
        ));
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| ApiError::invalid_field(field, format!("`{field}` is not a valid string")))
}

fn optional_string(
    raw: Option<&RawValue>,
    field: &'static str,
) -> Result<Option<String>, ApiError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => Ok(Some(string_value(raw, field)?.into_owned())),
    }
}

fn non_empty(id: String, field: &'static str) -> Result<String, ApiError> {
    if id.is_empty() {
        Err(ApiError::invalid_field(
            field,
            format!("`{field}` must not be empty"),
        ))
    } else {
        Ok(id)
    }
}

/// The byte range of a borrowed RawValue inside the body it was parsed from.
fn span_of(body: &[u8], raw: &RawValue) -> std::ops::Range<usize> {
    // serde_json borrows RawValue straight from the input slice, so the pointer lies inside `body`.
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    start..start + raw.get().len()
}

/// serde reports duplicates as "duplicate field `name` at line .."; map that to the field name.
fn duplicate_field(msg: &str) -> Option<&'static str> {
    let rest = msg.strip_prefix("duplicate field `")?;
    let name = rest.split('`').next()?;
    ROUTING_FIELDS.into_iter().find(|f| *f == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn model_of(body: &str) -> String {
        parse(body.as_bytes())
            .unwrap()
            .model
            .unwrap()
            .name
            .into_owned()
    }

    #[test]
    fn finds_model_anywhere_at_top_level_only() {
        assert_eq!(model_of(r#"{"model":"auto","input":"hi"}"#), "auto");
        assert_eq!(
            model_of(r#"{"input":[{"model":"x"}],"metadata":{"model":"y"}, "model" : "m1" }"#),
            "m1"
        );
    }

    #[test]
    fn escaped_key_spelling_is_the_model_key() {
        assert_eq!(model_of(r#"{"mod\u0065l":"auto","input":"x"}"#), "auto");
        assert_eq!(model_of(r#"{"model":"c\u006fde-model"}"#), "code-model");
    }

    #[test]
    fn duplicate_model_is_rejected_even_when_escaped() {
        for body in [
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":"a","input":"x","mod\u0065l":"b"}"#,
            r#"{"model":"a","model":null}"#,
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.param.as_deref(), Some("model"), "{body}");
        }
        let err = parse(br#"{"previous_response_id":"a","previous_response_id":"b"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("previous_response_id"));
    }

    #[test]
    fn non_string_model_is_an_error() {
        for body in [
            r#"{"model":1}"#,
            r#"{"model":{"x":1}}"#,
            r#"{"model":["a"]}"#,
            r#"{"model":true}"#,
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(
                (err.status, err.param.as_deref()),
                (400, Some("model")),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in [
            "",
            "   ",
            "{",
            "[]",
            "\"model\"",
            r#"{"model":"a",}"#,
            r#"{"model":"a"} trailing"#,
            "{\"model\":\"\u{0}\"}",
        ] {
            let err = parse(body.as_bytes()).unwrap_err();
            assert_eq!(err.status, 400, "{body:?}");
        }
        assert_eq!(parse(b"{\"model\":\"\xff\"}").unwrap_err().status, 400);
    }

    #[test]
    fn invalid_utf8_anywhere_is_400() {
        for body in [
            &b"{\"model\":\"auto\",\"input\":\"caf\xc3\x28\"}"[..],
            b"{\"model\":\"auto\",\"input\":\"x\",\"metadata\":{\"k\":\"\xfe\xff\"}}",
            b"{\"model\":\"auto\",\"\xff\":1}",
            b"{\"model\":\"auto\",\"input\":\"x\"} \xff",
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_json"), "{body:?}");
        }
        // Non-ASCII that is valid UTF-8 is fine.
        assert!(parse("{\"model\":\"auto\",\"input\":\"héllo ✓\"}".as_bytes()).is_ok());
    }

    #[test]
    fn deep_nesting_neither_overflows_nor_hides_the_model() {
        // serde_json skips unknown values without recursion: 100,000 levels parse in bounded stack
        // and reach the backend untouched, whose own parser decides.
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = format!("{{\"a\":{},\"model\":\"m\"}}", nest(100_000));
        let parsed = parse(deep.as_bytes()).map_err(|e| e.message);
        assert_eq!(
            parsed.map(|p| p.model.map(|m| m.name.into_owned())),
            Ok(Some("m".into()))
        );
        // Inside a field the router reads, the depth limit applies: a clean 400.
        let deep_model = format!("{{\"model\":{}}}", nest(100_000));
        assert_eq!(
            parse(deep_model.as_bytes()).map(|_| ()).unwrap_err().status,
            400
        );
    }

    #[test]
    fn state_references() {
        let state = |b: &str| parse(b.as_bytes()).unwrap().state;
        assert_eq!(
            state(r#"{"previous_response_id":"resp_\u0041"}"#),
            Some(StateRef::PreviousResponse("resp_A".into()))
        );
        assert_eq!(
            state(r#"{"conversation":"conv_1"}"#),
            Some(StateRef::Conversation("conv_1".into()))
        );
        assert_eq!(
            state(r#"{"conversation":{"id":"conv_2","x":1}}"#),
            Some(StateRef::Conversation("conv_2".into()))
        );
        assert_eq!(
            state(r#"{"previous_response_id":null,"conversation":null}"#),
            None
        );
        for bad in [
            r#"{"previous_response_id":1}"#,
            r#"{"previous_response_id":""}"#,
            r#"{"conversation":{"id":3}}"#,
            r#"{"conversation":[]}"#,
            // Found by the body_splice fuzz target: an array was read as the object's fields.
            r#"{"conversation":["conv_1"]}"#,
            r#"{"previous_response_id":"r","conversation":"c"}"#,
        ] {
            assert_eq!(parse(bad.as_bytes()).unwrap_err().status, 400, "{bad}");
        }
    }

    #[test]
    fn splice_replaces_only_the_value() {
        let body = br#"{ "big": 12345678901234567890, "model" : "auto" , "f":1.50e+3}"#;
        let parsed = parse(body).unwrap();
        let span = parsed.model.unwrap().span;
        let out = splice_model(body, &span, "code \"model\"");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{ "big": 12345678901234567890, "model" : "code \"model\"" , "f":1.50e+3}"#
        );
    }

    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("12345678901234567890123".to_owned()),
            Just("-1.50e+10".to_owned()),
            "[ -~]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just(r#""\u00e9\ud83d\ude00""#.to_owned()),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(" , "))),
                prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|kv| {
                    let fields: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\":{v}"))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    proptest! {
        /// Random bodies with `model` anywhere among the top-level keys: the splice changes the
        /// model's literal and nothing else, and the result parses to the same document but for it.
        #[test]
        fn splice_is_byte_identical_elsewhere(
            keys in prop::collection::btree_map("[a-z]{1,8}", json_value(), 0..6),
            position in 0usize..7,
            old in "[ -~]{0,10}",
            new in "[ -~\u{e9}\u{1F600}]{0,10}",
            ws in prop_oneof![Just(""), Just(" "), Just("\n\t ")],
        ) {
            let mut fields: Vec<String> = keys
                .iter()
                .filter(|(k, _)| k.as_str() != "model")
                .map(|(k, v)| format!("\"{k}\"{ws}:{ws}{v}"))
                .collect();
            let old_literal = serde_json::to_string(&old).unwrap();
            let pos = position.min(fields.len());
            fields.insert(pos, format!("\"model\"{ws}:{ws}{old_literal}"));
            let body = format!("{ws}{{{ws}{}{ws}}}{ws}", fields.join(&format!("{ws},{ws}")));

            let parsed = parse(body.as_bytes()).unwrap();
            let model = parsed.model.unwrap();
            prop_assert_eq!(model.name.as_ref(), old.as_str());
            let out = splice_model(body.as_bytes(), &model.span, &new);

            let new_literal = serde_json::to_string(&new).unwrap();
            prop_assert_eq!(&out[..model.span.start], &body.as_bytes()[..model.span.start]);
            prop_assert_eq!(&out[model.span.start..model.span.start + new_literal.len()], new_literal.as_bytes());
            prop_assert_eq!(&out[model.span.start + new_literal.len()..], &body.as_bytes()[model.span.end..]);

            let mut before: serde_json::Value = serde_json::from_str(&body).unwrap();
            let after: serde_json::Value = serde_json::from_slice(&out).unwrap();
            before["model"] = serde_json::Value::String(new.clone());
            prop_assert_eq!(before, after);
        }
    }
}
