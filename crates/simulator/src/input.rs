//! Loose reading of request inputs: the text to echo, a token estimate, the normalized item list
//! (`input_items`, conversation items) and cursor pagination of item lists.
//!
//! The simulator must accept every valid OpenAI `input` shape (a string, easy messages with string
//! or part-list content, typed `message` items, tool outputs, reasoning items, references, ...), so
//! nothing here rejects: unknown shapes simply contribute no text and are listed as sent.

use serde::Serialize;
use serde_json::{Map, Value};

/// Longest echo of the user's text that goes into an output text.
const ECHO_CHARS: usize = 60;

/// The text of the last user turn in `input`: the last user message (string content, or its last
/// text part) or tool output, whichever comes last.
pub fn last_user_text(input: &Value) -> Option<&str> {
    match input {
        Value::String(s) => Some(s),
        Value::Array(items) => items.iter().rev().find_map(item_user_text),
        Value::Object(_) => item_user_text(input),
        _ => None,
    }
}

fn item_user_text(item: &Value) -> Option<&str> {
    let obj = match item {
        Value::String(s) => return Some(s),
        Value::Object(o) => o,
        _ => return None,
    };
    let kind = obj.get("type").and_then(Value::as_str);
    match kind {
        None | Some("message") => {
            let role = obj.get("role").and_then(Value::as_str).unwrap_or("user");
            if role != "user" {
                return None;
            }
            content_text(obj.get("content")?)
        }
        Some("function_call_output" | "custom_tool_call_output") => {
            content_text(obj.get("output")?)
        }
        _ => None,
    }
}

/// Text of a `content`/`output` value: the string itself, or the last part that has a `text`.
fn content_text(content: &Value) -> Option<&str> {
    match content {
        Value::String(s) => Some(s),
        Value::Array(parts) => parts
            .iter()
            .rev()
            .find_map(|p| p.get("text").and_then(Value::as_str)),
        _ => None,
    }
}

/// Number of characters of all text in `v` (messages, parts, tool outputs), for usage estimates.
/// Binary-ish payloads (`image_url`, `file_data`, `encrypted_content`) are not counted.
pub fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(a) => a.iter().map(text_chars).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "content" | "text" | "output" | "arguments"))
            .map(|(_, v)| text_chars(v))
            .sum(),
        _ => 0,
    }
}

/// Rough token count of `chars` characters (about four per token, as OpenAI suggests).
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// A one-line, length-limited echo of `text` for the output text.
pub fn echo_snippet(text: Option<&str>) -> String {
    let Some(text) = text else {
        return "(no text)".to_owned();
    };
    let mut out = String::with_capacity(ECHO_CHARS + 3);
    let mut chars = 0;
    for word in text.split_whitespace() {
        if chars > 0 {
            out.push(' ');
            chars += 1;
        }
        for c in word.chars() {
            if chars >= ECHO_CHARS {
                out.push('…');
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    if out.is_empty() {
        "(no text)".to_owned()
    } else {
        out
    }
}

/// Turns `input` into a list of items the way the API lists them back: a string becomes one user
/// message, easy messages get `type: "message"` and part-list content, and every item gets an id
/// (from `make_id(index, prefix)`) unless it already has one.
pub fn normalize_items(
    input: &Value,
    mut make_id: impl FnMut(usize, &str) -> String,
) -> Vec<Value> {
    match input {
        Value::String(s) => vec![user_message(s, make_id(0, "msg_"))],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Value::String(s) => Some(user_message(s, make_id(i, "msg_"))),
                Value::Object(o) => Some(normalize_object(o, |p| make_id(i, p))),
                _ => None,
            })
            .collect(),
        Value::Object(o) => vec![normalize_object(o, |p| make_id(0, p))],
        _ => Vec::new(),
    }
}

fn user_message(text: &str, id: String) -> Value {
    serde_json::json!({
        "type": "message",
        "id": id,
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_text", "text": text}],
    })
}

fn normalize_object(o: &Map<String, Value>, make_id: impl FnOnce(&str) -> String) -> Value {
    let mut o = o.clone();
    let is_message = match o.get("type") {
        None => o.contains_key("role"),
        Some(t) => t == "message",
    };
    if is_message {
        o.insert("type".into(), Value::from("message"));
        let assistant = o.get("role").and_then(Value::as_str) == Some("assistant");
        if let Some(Value::String(text)) = o.get("content") {
            let part = if assistant {
                serde_json::json!({"type": "output_text", "text": text, "annotations": []})
            } else {
                serde_json::json!({"type": "input_text", "text": text})
            };
            o.insert("content".into(), Value::Array(vec![part]));
        }
        o.entry("status")
            .or_insert_with(|| Value::from("completed"));
    }
    if !o.get("id").is_some_and(Value::is_string) {
        let prefix = if is_message { "msg_" } else { "item_" };
        o.insert("id".into(), Value::from(make_id(prefix)));
    }
    Value::Object(o)
}

/// `limit` / `order` / `after` of a list endpoint, read leniently from the query string.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub limit: usize,
    pub ascending: bool,
    pub after: Option<String>,
}

impl ListQuery {
    /// Defaults of the API: 20 items, newest first. Bad values fall back to the defaults.
    pub fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut q = Self {
            limit: 20,
            ascending: false,
            after: None,
        };
        for (k, v) in pairs {
            match k.as_str() {
                "limit" => {
                    if let Ok(n) = v.parse::<usize>() {
                        q.limit = n.clamp(1, 100);
                    }
                }
                "order" => q.ascending = v.eq_ignore_ascii_case("asc"),
                "after" if !v.is_empty() => q.after = Some(v.clone()),
                _ => {}
            }
        }
        q
    }
}

/// `{object: "list", data, first_id, last_id, has_more}`.
#[derive(Debug, Serialize)]
pub struct ListPage {
    pub object: &'static str,
    pub data: Vec<Value>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

/// One page of `items` (given oldest first), cloning only the items on the page.
pub fn paginate<'a, I>(items: I, q: &ListQuery) -> ListPage
where
    I: DoubleEndedIterator<Item = &'a Value>,
{
    let ordered: Box<dyn Iterator<Item = &'a Value>> = if q.ascending {
        Box::new(items)
    } else {
        Box::new(items.rev())
    };
    let mut rest: Box<dyn Iterator<Item = &'a Value>> = match &q.after {
        Some(after) => {
            let mut it = ordered;
            // Skip through the cursor item itself; an unknown cursor gives an empty page.
            for v in it.by_ref() {
                if item_id(v) == Some(after.as_str()) {
                    break;
                }
            }
            it
        }
        None => ordered,
    };
    let data: Vec<Value> = rest.by_ref().take(q.limit).cloned().collect();
    let has_more = rest.next().is_some();
    ListPage {
        object: "list",
        first_id: data.first().and_then(item_id).map(str::to_owned),
        last_id: data.last().and_then(item_id).map(str::to_owned),
        data,
        has_more,
    }
}

fn item_id(v: &Value) -> Option<&str> {
    v.get("id").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn last_user_text_covers_all_input_shapes() {
        assert_eq!(last_user_text(&json!("hi")), Some("hi"));
        let easy = json!([
            {"role": "developer", "content": "be terse"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer"},
            {"role": "user", "content": "second"}
        ]);
        assert_eq!(last_user_text(&easy), Some("second"));
        let parts = json!([{"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "what is this"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
        ]}]);
        assert_eq!(last_user_text(&parts), Some("what is this"));
        let tools = json!([
            {"role": "user", "content": "weather?"},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "{\"t\":3}"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "item_reference", "id": "msg_prev"}
        ]);
        assert_eq!(last_user_text(&tools), Some("{\"t\":3}"));
        assert_eq!(last_user_text(&json!(null)), None);
        assert_eq!(last_user_text(&json!([1, true, {"type": "x"}])), None);
    }

    #[test]
    fn echo_is_one_line_and_bounded() {
        assert_eq!(echo_snippet(Some("  a\n b\t c ")), "a b c");
        let long = "x".repeat(500);
        let e = echo_snippet(Some(&long));
        assert_eq!(e.chars().count(), ECHO_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(echo_snippet(None), "(no text)");
        assert_eq!(echo_snippet(Some("   ")), "(no text)");
    }

    #[test]
    fn normalize_gives_typed_items_with_ids() {
        let items = normalize_items(
            &json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                    {"type": "function_call_output", "call_id": "c", "output": "o", "id": "keep"}, 7]),
            |i, p| format!("{p}{i}"),
        );
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["type"], "message");
        assert_eq!(items[0]["id"], "msg_0");
        assert_eq!(items[0]["content"][0]["type"], "input_text");
        assert_eq!(items[1]["content"][0]["type"], "output_text");
        assert_eq!(items[2]["id"], "keep");
        let s = normalize_items(&json!("hello"), |i, p| format!("{p}{i}"));
        assert_eq!(s[0]["content"][0]["text"], "hello");
        assert_eq!(s[0]["role"], "user");
    }

    #[test]
    fn pagination_orders_limits_and_follows_cursor() {
        let items: Vec<Value> = (0..5).map(|i| json!({"id": format!("i{i}")})).collect();
        let q = ListQuery::from_pairs(&[("limit".into(), "2".into())]);
        let p = paginate(items.iter(), &q);
        assert_eq!(p.first_id.as_deref(), Some("i4"));
        assert_eq!(p.last_id.as_deref(), Some("i3"));
        assert!(p.has_more);
        let q = ListQuery::from_pairs(&[
            ("order".into(), "asc".into()),
            ("after".into(), "i2".into()),
            ("limit".into(), "junk".into()),
        ]);
        let p = paginate(items.iter(), &q);
        assert_eq!(p.data.len(), 2);
        assert_eq!(p.first_id.as_deref(), Some("i3"));
        assert!(!p.has_more);
    }

    #[test]
    fn token_estimate_counts_text_not_images() {
        let v = json!([{"role": "user", "content": [
            {"type": "input_text", "text": "abcdefgh"},
            {"type": "input_image", "image_url": "data:image/png;base64,".to_owned() + &"A".repeat(1000)}
        ]}]);
        assert_eq!(text_chars(&v), 8);
        assert_eq!(estimate_tokens(8), 2);
        assert_eq!(estimate_tokens(9), 3);
    }
}
