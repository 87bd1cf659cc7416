//! Prometheus metrics, with an explicit registry (no global recorder) so tests can read them.
//!
//! Labels are bounded: request kinds, decision reasons, error codes and affinity outcomes are
//! fixed sets of `&'static str`; no model, cluster or id appears as a label value.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::routing::{AffinityOutcome, Decision};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    kind: &'static str,
    reason: &'static str,
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
    refusals: Family<RefusalLabels, Counter>,
    affinity: Family<OutcomeLabels, Counter>,
    learned: Family<SourceLabels, Counter>,
    config_generation: Gauge,
    config_reloads: Family<ResultLabels, Counter>,
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
        Metrics {
            registry,
            decisions,
            refusals,
            affinity,
            learned,
            config_generation,
            config_reloads,
        }
    }
}

impl Metrics {
    /// Counts a decision and, if the request named state, how it was placed.
    pub fn decided(&self, decision: &Decision) {
        self.decisions
            .get_or_create(&DecisionLabels {
                kind: decision.kind,
                reason: decision.reason.as_str(),
            })
            .inc();
        if let Some(outcome) = decision.affinity {
            self.affinity_outcome(outcome.as_str());
        }
    }

    /// Counts a refused request.
    pub fn refused(&self, code: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { code }).inc();
    }

    /// Counts a continuation that reached another host than the one its state was pinned to.
    pub fn moved_host(&self) {
        self.affinity_outcome("moved_host");
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
        let result = if accepted { "ok" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn affinity_outcome(&self, outcome: &'static str) {
        self.affinity
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl AffinityOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AffinityOutcome::Hit => "hit",
            AffinityOutcome::Miss => "miss",
            AffinityOutcome::StaleCluster => "stale_cluster",
        }
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
    }
}
