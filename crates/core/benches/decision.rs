//! The whole request decision as the ext_proc layer runs it, per body size: parse the body, find the
//! state id, extract the latest user turn, classify it, splice the model, pick the upstream.
//!
//! Bodies are Responses requests with `model: "auto"` carrying a conversation of the given size,
//! the shape agents send: many earlier turns, one short latest user turn that decides the route.
//! Target (issue 7): <= 20 us at 16 KiB, <= 2 ms at 4 MiB.

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use responses_router_core::affinity::Location;
use responses_router_core::config::{self, RoutingTable};
use responses_router_core::openai::RequestKind;
use responses_router_core::routing;

const SIZES: [(&str, usize); 4] = [
    ("1KiB", 1 << 10),
    ("16KiB", 16 << 10),
    ("256KiB", 256 << 10),
    ("4MiB", 4 << 20),
];

fn table() -> RoutingTable {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/routing.yaml");
    config::load(&path)
        .expect("deploy/routing.yaml loads")
        .table
}

/// A Responses request of about `size` bytes: earlier turns padded to size, then the user turn.
fn conversation(size: usize, previous_response_id: Option<&str>) -> Vec<u8> {
    let filler = "The quarterly report lists revenue, costs and a forecast for the next period. ";
    let mut items = Vec::new();
    let mut len = 0;
    let mut turn = 0;
    while len < size {
        let role = if turn % 2 == 0 { "user" } else { "assistant" };
        let text = filler.repeat(1 + turn % 5);
        let item = serde_json::json!({"role": role, "content": text}).to_string();
        len += item.len() + 1;
        items.push(item);
        turn += 1;
    }
    items.push(
        serde_json::json!({
            "role": "user",
            "content": "Now write a Python function that sums the column, and fix the bug."
        })
        .to_string(),
    );
    let previous = previous_response_id
        .map(|id| format!(r#""previous_response_id":"{id}","#))
        .unwrap_or_default();
    format!(
        r#"{{"model":"auto",{previous}"input":[{}],"stream":false,"temperature":0.2}}"#,
        items.join(",")
    )
    .into_bytes()
}

fn decide(table: &RoutingTable, kind: &RequestKind, bytes: &[u8], pinned: Option<&Location>) {
    let request_id = "5f1c9a2e-8d7b-4c3a-9e6f-0a1b2c3d4e5f";
    let prepared =
        routing::prepare(table, kind, request_id, Some(bytes)).expect("benchmark body parses");
    let decision = routing::decide(table, &prepared, pinned).expect("decides");
    black_box(decision);
}

fn whole_decision(c: &mut Criterion) {
    let table = table();
    let kind = RequestKind::from_request("POST", "/v1/responses", false);
    let pinned = Location {
        cluster: "code".into(),
        host: None,
    };
    let mut group = c.benchmark_group("decision");
    for (name, size) in SIZES {
        let new = conversation(size, None);
        let continuation = conversation(size, Some("resp_0a1b2c3d4e5f60718293a4b5c6d7e8f9"));
        group.throughput(Throughput::Bytes(new.len() as u64));
        if size >= 1 << 20 {
            group.sample_size(20);
        }
        group.bench_with_input(BenchmarkId::new("new_auto", name), &new, |b, body| {
            b.iter(|| decide(&table, &kind, black_box(body), None))
        });
        group.bench_with_input(
            BenchmarkId::new("continuation_auto", name),
            &continuation,
            |b, body| b.iter(|| decide(&table, &kind, black_box(body), Some(&pinned))),
        );
    }
    group.finish();
}

criterion_group!(benches, whole_decision);
criterion_main!(benches);
