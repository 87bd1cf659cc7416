//! Prometheus metrics, with an explicit registry (no global recorder) so tests can read them.
//!
//! Labels are bounded: request kinds, decision reasons, error codes and affinity outcomes are
//! fixed sets; models, clusters and categories come from the routing YAML (a client naming an
//! unknown model is refused before it is counted); no id or client text is ever a label value.
//! Where an OpenTelemetry GenAI attribute fits, its name is used (`gen_ai_request_model`,
//! `gen_ai_operation_name`).

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The labels of a routing decision. Every value is bounded: request kinds and reasons are
/// fixed sets, models, clusters and categories come from the routing YAML.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub gen_ai_operation_name: &'static str,
    pub reason: &'static str,
    pub gen_ai_request_model: String,
    pub cluster: String,
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    gen_ai_operation_name: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The router's counters.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    answered: Family<KindLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    affinity: Family<OutcomeLabels, Counter>,
    learned: Family<SourceLabels, Counter>,
    config_generation: Gauge,
    config_reloads: Family<ResultLabels, Counter>,
    config_last_ok: Gauge,
    decision_seconds: Family<PhaseLabels, Histogram>,
    body_bytes: Histogram,
    store_entries: Gauge,
    store_up: Gauge,
    tls_reloads: Family<ResultLabels, Counter>,
    tls_handshakes: Family<ResultLabels, Counter>,
    /// The shared store's counters, read at each scrape once `serve` has built the store.
    shared_store: Arc<OnceLock<Arc<responses_router_redis::Counters>>>,
}

/// Where the router spent the time measured by the decision-duration histogram.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    /// Request headers or body in, routing reply out (what a request waits for).
    Request,
    /// Response headers or body in, learning done (a JSON answer waits for it; streams do not).
    Response,
}

/// Where a learned id came from.
#[derive(Debug, Clone, Copy)]
pub enum LearnSource {
    /// A JSON answer, read by the routing filter before the client saw it.
    Json,
    /// The first event of an SSE stream, read by the observer filter.
    Sse,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("responses_router");
        let decisions = Family::default();
        registry.register(
            "decisions",
            "Requests routed, by request kind and decision reason",
            decisions.clone(),
        );
        let answered = Family::default();
        registry.register(
            "answered",
            "Requests the router answered itself (the model list), by request kind",
            answered.clone(),
        );
        let refusals = Family::default();
        registry.register(
            "refusals",
            "Requests answered with an error by the router, by error code",
            refusals.clone(),
        );
        let affinity = Family::default();
        registry.register(
            "affinity",
            "Requests naming a response or conversation id, by how it was placed: hit (learned \
             location), miss (hash: id unknown), stale_cluster (learned cluster no longer \
             configured: hash), moved_host (served by another host than the pinned one)",
            affinity.clone(),
        );
        let learned = Family::default();
        registry.register(
            "learned_ids",
            "Response and conversation ids whose location was recorded, by source",
            learned.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the routing config in force (1 at start, +1 per accepted reload)",
            config_generation.clone(),
        );
        let config_reloads = Family::default();
        registry.register(
            "config_reloads",
            "Loads of the routing config, by result: ok (in force) or rejected (invalid, old kept)",
            config_reloads.clone(),
        );
        let config_last_ok = Gauge::default();
        registry.register(
            "config_last_reload_ok",
            "1 when the last load of the routing config was accepted, 0 when it was rejected",
            config_last_ok.clone(),
        );
        let decision_seconds = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            // 5 µs .. ~2.6 s, doubling.
            Histogram::new(exponential_buckets(5e-6, 2.0, 20))
        });
        registry.register(
            "decision_duration_seconds",
            "Time the router spent on one Envoy message, from its arrival to the reply, by phase",
            decision_seconds.clone(),
        );
        let body_bytes = Histogram::new(exponential_buckets(256.0, 4.0, 10));
        registry.register(
            "request_body_bytes",
            "Sizes of the request bodies the router buffered to decide",
            body_bytes.clone(),
        );
        let store_entries = Gauge::default();
        registry.register(
            "affinity_store_entries",
            "Ids held by this process's affinity store",
            store_entries.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "affinity_store_up",
            "1 when the affinity store's backend answered its last check, 0 when degraded",
            store_up.clone(),
        );
        let tls_reloads = Family::default();
        registry.register(
            "tls_reloads",
            "Loads of the gRPC listener's TLS certificates (the first at start), by result: ok, \
             rejected (unusable files; the certificates in force stay)",
            tls_reloads.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes on the gRPC listener, by result: ok, failed (e.g. a client without a \
             valid certificate), closed (the peer left before a handshake: a port check), \
             timeout, shed (too many handshakes at once)",
            tls_handshakes.clone(),
        );
        let shared_store = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(SharedStoreCollector(Arc::clone(&shared_store))));
        Metrics {
            registry,
            decisions,
            answered,
            refusals,
            affinity,
            learned,
            config_generation,
            config_reloads,
            config_last_ok,
            decision_seconds,
            body_bytes,
            store_entries,
            store_up,
            tls_reloads,
            tls_handshakes,
            shared_store,
        }
    }
}

impl Metrics {
    /// Counts a decision.
    pub fn decided(&self, labels: &DecisionLabels) {
        self.decisions.get_or_create(labels).inc();
    }

    /// Counts a request the router answered itself.
    pub fn answered(&self, kind: &'static str) {
        self.answered
            .get_or_create(&KindLabels {
                gen_ai_operation_name: kind,
            })
            .inc();
    }

    /// Counts a refused request.
    pub fn refused(&self, code: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { code }).inc();
    }

    /// Counts a continuation that reached another host than the one its state was pinned to.
    pub fn moved_host(&self) {
        self.affinity_outcome("moved_host");
    }

    /// Counts how a request naming a state id was placed (`hit`, `miss`, `stale_cluster`).
    pub fn affinity_outcome(&self, outcome: &'static str) {
        self.affinity
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a learned id.
    pub fn learned(&self, source: LearnSource) {
        let source = match source {
            LearnSource::Json => "json",
            LearnSource::Sse => "sse",
        };
        self.learned.get_or_create(&SourceLabels { source }).inc();
    }

    /// Records a config load: the generation in force and whether the new file was accepted.
    pub fn config_loaded(&self, generation: u64, accepted: bool) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.config_last_ok.set(i64::from(accepted));
        let result = if accepted { "ok" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records how long the router took to answer one Envoy message.
    pub fn observe_duration(&self, phase: Phase, elapsed: std::time::Duration) {
        let phase = match phase {
            Phase::Request => "request",
            Phase::Response => "response",
        };
        self.decision_seconds
            .get_or_create(&PhaseLabels { phase })
            .observe(elapsed.as_secs_f64());
    }

    /// Records the size of a buffered request body.
    pub fn body_size(&self, bytes: usize) {
        self.body_bytes.observe(bytes as f64);
    }

    /// Exports the shared (Redis) store's counters: the write-behind queue, re-seeds after Redis
    /// lost its data, Redis errors and cluster slot moves (once; later calls change nothing).
    pub fn register_shared_store(&self, counters: Arc<responses_router_redis::Counters>) {
        let _ = self.shared_store.set(counters);
    }

    /// Records the affinity store's state, as last checked.
    pub fn store_state(&self, entries: usize, up: bool) {
        self.store_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.store_up.set(i64::from(up));
    }

    /// Counts a load of the TLS certificates (`accepted`: swapped in, else rejected).
    pub fn tls_loaded(&self, accepted: bool) {
        let result = if accepted { "ok" } else { "rejected" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a TLS handshake by result (`ok`, `failed`, `closed`, `timeout`, `shed`).
    pub fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The classic Prometheus text format (0.0.4), for clients that do not ask for OpenMetrics
    /// (curl, `promtool check metrics`). It differs from OpenMetrics in naming a counter family
    /// by its `_total` sample name and in having no `# EOF`.
    pub fn encode_classic(&self) -> String {
        let open = self.encode();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the shared store's atomics at each scrape (the store counts; this only reports), once
/// a shared store is registered; nothing before (an in-process store has no such series).
#[derive(Debug)]
struct SharedStoreCollector(Arc<OnceLock<Arc<responses_router_redis::Counters>>>);

impl Collector for SharedStoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(counters) = self.0.get() else {
            return Ok(());
        };
        let s = counters.snapshot();
        let counters: [(&str, &str, u64); 7] = [
            (
                "affinity_write_behind_queued",
                "Ids learned while Redis (or their part of a cluster) did not answer, queued to be \
                 written once it does.",
                s.queued,
            ),
            (
                "affinity_write_behind_dropped",
                "Ids dropped from the full write-behind queue (oldest first); not shared unless \
                 a re-seed writes them.",
                s.dropped,
            ),
            (
                "affinity_write_behind_flushed",
                "Queued ids written to Redis once it answered again.",
                s.flushed,
            ),
            (
                "affinity_reseeds",
                "Times Redis was found to have lost its data (a marker key gone) and this \
                 replica began writing its memory back.",
                s.reseeds,
            ),
            (
                "affinity_reseeded_ids",
                "Ids written back into Redis by re-seeds.",
                s.reseeded,
            ),
            (
                "affinity_redis_errors",
                "Redis commands that failed (errors and timeouts).",
                s.errors + s.timeouts,
            ),
            (
                "affinity_redis_cluster_slot_moves",
                "Changes of the Redis Cluster's slot map this router followed (failovers, \
                 resharding).",
                s.topology_changes,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, u64); 2] = [
            (
                "affinity_write_behind_length",
                "Ids waiting in the write-behind queue.",
                s.queue_len,
            ),
            (
                "affinity_reseeding",
                "1 while this replica writes its memory back into a Redis that lost its data.",
                u64::from(s.reseeding),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_encode() {
        let m = Metrics::default();
        m.refused("invalid_json");
        m.refused("invalid_json");
        m.learned(LearnSource::Sse);
        m.moved_host();
        let text = m.encode();
        assert!(
            text.contains(r#"responses_router_refusals_total{code="invalid_json"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"responses_router_learned_ids_total{source="sse"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"responses_router_affinity_total{outcome="moved_host"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        let classic = m.encode_classic();
        assert!(
            classic.contains("# TYPE responses_router_refusals_total counter"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP responses_router_refusals_total "),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE responses_router_config_generation gauge"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"));
    }
}
