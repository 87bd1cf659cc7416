//! Request classification (`openai::paths::RequestKind::from_request`) from method and path.
//!
//! Input: `[!]METHOD PATH` as UTF-8 (a leading `!` sets the websocket-upgrade flag). Asserted,
//! beyond "never panics":
//! - an id taken from the path is a substring of the path before its query, is one whole segment
//!   (no `/`), and is a plausible minted id (printable ASCII, no `%`, `\`, not `.`/`..`, at most
//!   256 bytes);
//! - the kind is one the method and path can produce (body-bearing kinds only for POST on
//!   `/v1/...`, by-id kinds only under `/v1/responses/` or `/v1/conversations/`, the websocket kind
//!   exactly for an upgrade on `/v1/responses`);
//! - it is invariant under what the router promises to ignore: the method's letter case, a query
//!   string or fragment, and one trailing slash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use responses_router_core::openai::RequestKind;

fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (websocket, text) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (method, path) = text.split_once(' ').unwrap_or((text, ""));
    let kind = RequestKind::from_request(method, path, websocket);
    let base = path.split(['?', '#']).next().unwrap_or_default();

    let id = match &kind {
        RequestKind::ResponseById { id, .. } => {
            assert!(base.starts_with("/v1/responses/"), "{path}");
            Some(id)
        }
        RequestKind::ConversationById { id } => {
            assert!(base.starts_with("/v1/conversations/"), "{path}");
            Some(id)
        }
        _ => None,
    };
    if let Some(id) = id {
        assert!(base.contains(id.as_str()), "id {id:?} not in {path:?}");
        assert!(
            base.split('/').any(|segment| segment == id),
            "id {id:?} is not a whole segment of {path:?}"
        );
        assert!(!id.is_empty() && id.len() <= 256 && id != "." && id != "..");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'%' && b != b'\\'),
            "implausible id {id:?}"
        );
    }
    if kind.needs_body() {
        assert!(method.eq_ignore_ascii_case("POST"), "{method} needs a body");
        assert!(kind.carries_state_fields() || kind == RequestKind::ChatCompletions);
    }
    if kind.requires_model() {
        assert!(
            kind.needs_body(),
            "a model is required only of body-bearing kinds"
        );
    }
    // A websocket upgrade on `/v1/responses` is always refused as such, whatever the method.
    let route = base.strip_suffix('/').unwrap_or(base);
    assert_eq!(
        kind == RequestKind::ResponsesWebSocket,
        websocket && route == "/v1/responses",
        "{method} {path} (websocket: {websocket}) is {kind:?}"
    );
    if kind != RequestKind::Other {
        assert!(base.starts_with("/v1/"), "{path} classified as {kind:?}");
    }
    assert!(!kind.name().is_empty());

    // Invariances: method case, query/fragment, one trailing slash.
    let same = |m: &str, p: &str| {
        assert_eq!(
            RequestKind::from_request(m, p, websocket),
            kind,
            "{m} {p} vs {method} {path}"
        );
    };
    same(&method.to_ascii_lowercase(), path);
    same(&method.to_ascii_uppercase(), path);
    same(method, base);
    same(method, &format!("{base}?stream=true&x=/v1/responses/a"));
    same(method, &format!("{base}#frag/b"));
    if !base.ends_with('/') {
        same(method, &format!("{base}/"));
    }
}

fuzz_target!(|data: &[u8]| check(data));
