//! What a front-end keeps from a decision until the response headers arrive, and what it learns
//! from them: one record for both front-ends, so that a response is watched alike whether Envoy
//! talks to the router over ext_proc or runs it in-process.

use crate::affinity::Location;

use super::Decision;
use super::headers::{self, HeaderChanges};

/// The part of a decision the response headers are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseWatch {
    /// The cluster the request was routed to: where a created id lives unless Envoy names the
    /// cluster that served it.
    pub routed_cluster: String,
    /// The host the request was pinned to, if any.
    pub pinned_host: Option<String>,
    /// Whether the response creates an id the router must learn.
    pub learn: bool,
    /// The decision headers for the client (empty unless the config exposes the decision).
    pub decision_headers: HeaderChanges,
}

impl ResponseWatch {
    /// What to watch on the response to `decision`; `None` when nothing on it matters.
    pub fn of(decision: &Decision) -> Option<Self> {
        let super::Watch::Response {
            learn,
            decision_headers,
        } = decision.watch
        else {
            return None;
        };
        Some(ResponseWatch {
            routed_cluster: decision.target.cluster.clone(),
            pinned_host: decision.target.host.clone(),
            learn: learn.is_some(),
            decision_headers: if decision_headers {
                headers::response_headers(decision)
            } else {
                HeaderChanges::default()
            },
        })
    }

    /// Whether a pinned request was served by another host than its pin: Envoy could not use
    /// the pinned host (gone or unhealthy) and load-balanced instead.
    pub fn moved_host(&self, served_by: Option<&str>) -> bool {
        match (self.pinned_host.as_deref(), served_by) {
            (Some(pinned), Some(served)) => pinned != served,
            _ => false,
        }
    }

    /// Where an id the response creates lives: the cluster Envoy says served it (else the one
    /// routed to) and the host that served it.
    pub fn location(self, served_cluster: Option<String>, served_by: Option<String>) -> Location {
        Location {
            cluster: served_cluster.unwrap_or(self.routed_cluster),
            host: served_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(pinned_host: Option<&str>) -> ResponseWatch {
        ResponseWatch {
            routed_cluster: "code".into(),
            pinned_host: pinned_host.map(str::to_owned),
            learn: true,
            decision_headers: HeaderChanges::default(),
        }
    }

    #[test]
    fn only_a_pinned_request_served_elsewhere_moved_host() {
        assert!(watch(Some("10.0.0.1:80")).moved_host(Some("10.0.0.2:80")));
        assert!(!watch(Some("10.0.0.1:80")).moved_host(Some("10.0.0.1:80")));
        assert!(!watch(Some("10.0.0.1:80")).moved_host(None));
        assert!(!watch(None).moved_host(Some("10.0.0.2:80")));
    }

    #[test]
    fn the_served_cluster_wins_over_the_routed_one() {
        let served = watch(None).location(Some("code-b".into()), Some("10.0.0.2:80".into()));
        assert_eq!(served.cluster, "code-b");
        assert_eq!(served.host.as_deref(), Some("10.0.0.2:80"));
        assert_eq!(watch(None).location(None, None).cluster, "code");
    }
}
