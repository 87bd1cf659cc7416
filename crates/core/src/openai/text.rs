//! Which text of a request is classified.
//!
//! The rule (documented in the README): the **latest user turn** decides the route. For Responses
//! `input` that is a plain string, or the last `user` message plus every client-authored item after
//! it (tool outputs such as `function_call_output`); assistant history and binary parts (images,
//! files, encrypted reasoning) are skipped. If the input has no user message, all non-assistant text
//! counts. For chat `messages` the same rule applies to the last `user` message and `tool` messages
//! after it. With `include_instructions`, `instructions` and `system`/`developer` messages are added.
//! Classifying one turn keeps the cost bounded by what the user just typed, not by history length.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::error::ApiError;
use super::turns::{Item, Part, Role, TextFields, Turns};

/// How much of the request counts as text to classify.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextPolicy {
    /// Also classify `instructions` and `system`/`developer` messages.
    pub include_instructions: bool,
}

/// Extracts the text to classify from a Responses or chat body. Returns an empty string when the
/// request carries no classifiable text; the caller decides whether that is an error.
pub fn extract(body: &TextFields<'_>, policy: TextPolicy) -> Result<String, ApiError> {
    let mut pieces: Vec<Cow<'_, str>> = Vec::new();
    if let Some(raw) = body
        .instructions
        .filter(|r| policy.include_instructions && r.get().starts_with('"'))
    {
        pieces.push(parse_str(raw, "instructions")?);
    }
    let (turns, field) = match (&body.input, &body.messages) {
        (Some(input), _) => (input, "input"),
        (None, Some(messages)) => (messages, "messages"),
        (None, None) => return Ok(join(pieces)),
    };
    match turns {
        Turns::Text(text) => pieces.push(Cow::Borrowed(text.as_ref())),
        Turns::Items {
            instructions,
            latest,
        } => {
            if policy.include_instructions {
                for item in instructions {
                    content_text(item.content, &mut pieces)?;
                }
            }
            for item in latest {
                match item.role {
                    Role::User => content_text(item.content, &mut pieces)?,
                    Role::None => item_text(item, &mut pieces)?,
                    Role::Assistant | Role::Instruction => {}
                }
            }
        }
        Turns::Other => {
            return Err(ApiError::invalid_field(
                field,
                format!("`{field}` must be a string or an array of items"),
            ));
        }
    }
    Ok(join(pieces))
}

/// Text of a role-less item: tool outputs (string or part list), or content of a `message`.
fn item_text<'a>(item: &Item<'a>, pieces: &mut Vec<Cow<'a, str>>) -> Result<(), ApiError> {
    let is_tool_output = item.kind.as_deref().is_some_and(|k| k.ends_with("_output"));
    if is_tool_output {
        content_text(item.output, pieces)?;
    }
    // Chat `tool` messages carry their text in `content`.
    content_text(item.content, pieces)
}

/// Text of a `content` (or tool `output`) value: a string, or a list of text parts.
fn content_text<'a>(
    content: Option<&'a RawValue>,
    pieces: &mut Vec<Cow<'a, str>>,
) -> Result<(), ApiError> {
    let Some(raw) = content else { return Ok(()) };
    match raw.get().as_bytes().first() {
        Some(b'"') => pieces.push(parse_str(raw, "input")?),
        Some(b'[') => {
            let parts: Vec<&RawValue> = serde_json::from_str(raw.get()).unwrap_or_default();
            for part in parts {
                let Ok(part) = serde_json::from_str::<Part<'a>>(part.get()) else {
                    continue;
                };
                let text_part = matches!(
                    part.kind.as_deref(),
                    Some("input_text") | Some("output_text") | Some("text") | None
                );
                if let Some(text) = part.text.filter(|t| text_part && t.get().starts_with('"')) {
                    pieces.push(parse_str(text, "input")?);
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_str<'a>(raw: &'a RawValue, field: &str) -> Result<Cow<'a, str>, ApiError> {
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| ApiError::invalid_field(field, format!("`{field}` holds an invalid string")))
}

fn join(pieces: Vec<Cow<'_, str>>) -> String {
    let mut text = String::with_capacity(pieces.iter().map(|p| p.len() + 1).sum());
    for piece in pieces.iter().filter(|p| !p.trim().is_empty()) {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(piece);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text fields of a body, read as the body parser reads them.
    fn parse(body: &[u8]) -> serde_json::Result<TextFields<'_>> {
        serde_json::from_slice(body)
    }

    fn text(body: &str) -> String {
        extract(&parse(body.as_bytes()).unwrap(), TextPolicy::default()).unwrap()
    }

    fn text_with_instructions(body: &str) -> String {
        let policy = TextPolicy {
            include_instructions: true,
        };
        extract(&parse(body.as_bytes()).unwrap(), policy).unwrap()
    }

    #[test]
    fn plain_string_input() {
        assert_eq!(
            text(r#"{"model":"auto","input":"Fix my \"Rust\" code"}"#),
            "Fix my \"Rust\" code"
        );
    }

    #[test]
    fn easy_messages_use_the_latest_user_turn() {
        let body = r#"{"input":[
            {"role":"developer","content":"Answer in French."},
            {"role":"user","content":"What is a mutex?"},
            {"role":"assistant","content":"Un verrou."},
            {"role":"user","content":"And a semaphore?"}]}"#;
        assert_eq!(text(body), "And a semaphore?");
        assert_eq!(
            text_with_instructions(body),
            "Answer in French.\nAnd a semaphore?"
        );
    }

    #[test]
    fn typed_message_items_with_part_lists() {
        let body = r#"{"input":[{"type":"message","role":"user","content":[
            {"type":"input_text","text":"What is in this image?"},
            {"type":"input_image","image_url":"data:image/png;base64,iVBOR","detail":"auto"},
            {"type":"input_file","filename":"a.pdf","file_data":"data:application/pdf;base64,JVB"},
            {"type":"input_text","text":"Be brief."}]}]}"#;
        assert_eq!(text(body), "What is in this image?\nBe brief.");
    }

    #[test]
    fn tool_outputs_after_the_user_turn_count_assistant_history_does_not() {
        let body = r#"{"input":[
            {"role":"user","content":"weather in Oslo?"},
            {"type":"message","id":"m","status":"completed","role":"assistant",
             "content":[{"type":"output_text","text":"Calling tool.","annotations":[]}]},
            {"type":"function_call","call_id":"c","name":"get_weather","arguments":"{}"},
            {"type":"function_call_output","call_id":"c","output":"{\"temp_c\":3}"},
            {"type":"reasoning","id":"rs","summary":[],"encrypted_content":"gAAA"},
            {"type":"item_reference","id":"msg_prev"}]}"#;
        assert_eq!(text(body), "weather in Oslo?\n{\"temp_c\":3}");
    }

    #[test]
    fn role_less_items_only() {
        let body = r#"{"previous_response_id":"resp_1","input":[
            {"type":"function_call_output","call_id":"c","output":[{"type":"input_text","text":"42 rows"}]}]}"#;
        assert_eq!(text(body), "42 rows");
    }

    #[test]
    fn output_text_parts_in_user_turn_are_read() {
        let body =
            r#"{"input":[{"role":"user","content":[{"type":"output_text","text":"quoted"}]}]}"#;
        assert_eq!(text(body), "quoted");
    }

    #[test]
    fn chat_messages() {
        let body = r#"{"model":"auto","messages":[
            {"role":"system","content":"You are terse."},
            {"role":"user","content":[{"type":"text","text":"explain"},{"type":"image_url","image_url":{"url":"x"}}]},
            {"role":"assistant","content":null,"tool_calls":[]},
            {"role":"tool","tool_call_id":"t","content":"result 7"}]}"#;
        assert_eq!(text(body), "explain\nresult 7");
        assert_eq!(
            text_with_instructions(body),
            "You are terse.\nexplain\nresult 7"
        );
    }

    #[test]
    fn instructions_field_only_with_policy() {
        let body = r#"{"instructions":"Be terse.","input":"hello"}"#;
        assert_eq!(text(body), "hello");
        assert_eq!(text_with_instructions(body), "Be terse.\nhello");
    }

    #[test]
    fn nothing_to_classify_is_empty() {
        assert_eq!(text(r#"{"model":"auto"}"#), "");
        assert_eq!(text(r#"{"input":[]}"#), "");
        assert_eq!(
            text(r#"{"input":[1,"x",null,{"role":"user","content":7}]}"#),
            ""
        );
        assert_eq!(text(r#"{"input":"   "}"#), "");
    }

    #[test]
    fn wrong_input_types_are_errors() {
        for body in [
            r#"{"input":5}"#,
            r#"{"input":{"a":1}}"#,
            r#"{"input":true}"#,
        ] {
            let err = extract(&parse(body.as_bytes()).unwrap(), TextPolicy::default()).unwrap_err();
            assert_eq!(
                (err.status, err.param.as_deref()),
                (400, Some("input")),
                "{body}"
            );
        }
        let err =
            extract(&parse(br#"{"messages":7}"#).unwrap(), TextPolicy::default()).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
    }

    #[test]
    fn unusable_items_are_skipped_without_failing_the_body() {
        // Non-objects, mistyped or duplicated text fields: skipped, as the backend may accept or
        // reject them; the well-formed user turn after them is still found.
        let body = r#"{"input":[
            7, "loose", [1,[2]], null,
            {"role":5,"content":"mistyped role"},
            {"role":"user","role":"user","content":"duplicated role"},
            {"role":"user","content":"the question","extra":{"deep":[{"x":1}]}},
            {"type":{"not":"a string"},"output":"mistyped type"}
        ]}"#;
        assert_eq!(text(body), "the question");
    }

    #[test]
    fn long_histories_keep_only_the_latest_turn() {
        let mut items: Vec<String> = (0..10_000)
            .map(|i| {
                format!(
                    r#"{{"role":"{}","content":"turn {i}"}}"#,
                    ["user", "assistant"][i % 2]
                )
            })
            .collect();
        items.push(r#"{"role":"user","content":"last"}"#.into());
        items.push(r#"{"type":"function_call_output","output":"tool says hi"}"#.into());
        let body = format!(r#"{{"input":[{}]}}"#, items.join(","));
        assert_eq!(text(&body), "last\ntool says hi");
    }
}
