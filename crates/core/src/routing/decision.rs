//! The decision as a value: what a front-end carries out, shaped so that only meaningful
//! combinations can be built (an affinity outcome exists only for a request naming state, a host
//! only for a pin, a category only for a classified model).
//!
//! Explain-only details (the text classified, every category's score) travel apart, in
//! [`Explanation`]; projections for the outside world (Envoy headers, metric labels, the explain
//! outputs) live with the code that consumes them.

use crate::openai::{RequestKind, StateRef};

/// What the router decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What the request is.
    pub kind: RequestKind,
    /// Where it goes.
    pub target: Target,
    /// The model the upstream will see; `None` when the request names none (id paths,
    /// pass-through, a continuation's `input_tokens` without a model).
    pub model: Option<ModelChoice>,
    /// How the target was chosen.
    pub placement: Placement,
    /// The rewritten body, when the model value changed.
    pub body: Option<Vec<u8>>,
    /// What the front-end must watch on the response.
    pub watch: Watch,
}

/// The upstream: an Envoy cluster, and a host inside it when the request is pinned to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub cluster: String,
    /// `ip:port`, only for a request whose state lives on one host of a `pin_host` cluster.
    pub host: Option<String>,
}

/// The model sent upstream and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    pub model: String,
    pub reason: ModelReason,
    /// When the state's location forced another model: what the classifier had picked.
    pub classified: Option<String>,
}

/// Why a model was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelReason {
    /// The client named a served model.
    Explicit,
    /// The classifier picked it from this category.
    Category(String),
    /// `auto` matched no category, an unknown model fell back to the default, or the request
    /// named none.
    Default,
}

/// How the target was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Not an API the router decides on: the default model's clusters, body untouched.
    Passthrough,
    /// A request without state (or creating new state): spread over its candidates by weight,
    /// keyed by the request id.
    Spread,
    /// The store knew where the named state lives.
    Pinned(StateRef),
    /// The named state's id was hashed over the candidates.
    Hashed(StateRef, HashCause),
}

/// Why a request naming state was placed by hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCause {
    /// The store did not know the id.
    Unknown,
    /// The store named a cluster the routing YAML no longer has.
    StaleCluster,
}

/// What the front-end must watch on the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Nothing on the response matters to routing.
    Nothing,
    /// The response headers matter: to learn the id the response creates (`learn`), to add the
    /// decision for the client (`decision_headers`, see `headers::response_headers`), and to
    /// notice when a request pinned to a host was served by another one.
    Response {
        learn: Option<Expect>,
        decision_headers: bool,
    },
}

/// How the id of a created response is expected to arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A JSON object (`stream` false).
    Json,
    /// An SSE stream (`"stream": true`), whose first event names the response.
    Stream,
}

/// Why the upstream (and model) were chosen: Envoy's `x-router-reason` header and the metrics'
/// `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Category,
    Default,
    Explicit,
    Affinity,
    Hash,
    Passthrough,
}

impl Reason {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Category => "category",
            Reason::Default => "default",
            Reason::Explicit => "explicit",
            Reason::Affinity => "affinity",
            Reason::Hash => "hash",
            Reason::Passthrough => "passthrough",
        }
    }
}

/// How a request naming a state id was placed: the `affinity` metric's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// The store knew where the id lives, and the request goes there.
    Hit,
    /// The store did not know the id: placed by hash.
    Miss,
    /// The store named a cluster the routing YAML no longer has: placed by hash.
    StaleCluster,
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

impl Decision {
    /// Why the upstream was chosen: the placement when the request names state, else the
    /// model's reason.
    pub fn reason(&self) -> Reason {
        match (&self.placement, &self.model) {
            (Placement::Passthrough, _) => Reason::Passthrough,
            (Placement::Pinned(_), _) => Reason::Affinity,
            (Placement::Hashed(..), _) | (Placement::Spread, None) => Reason::Hash,
            (Placement::Spread, Some(choice)) => match choice.reason {
                ModelReason::Explicit => Reason::Explicit,
                ModelReason::Category(_) => Reason::Category,
                ModelReason::Default => Reason::Default,
            },
        }
    }

    /// How a request naming state was placed (`None` when it names none).
    pub fn affinity(&self) -> Option<AffinityOutcome> {
        match &self.placement {
            Placement::Pinned(_) => Some(AffinityOutcome::Hit),
            Placement::Hashed(_, HashCause::Unknown) => Some(AffinityOutcome::Miss),
            Placement::Hashed(_, HashCause::StaleCluster) => Some(AffinityOutcome::StaleCluster),
            Placement::Passthrough | Placement::Spread => None,
        }
    }

    /// The state the request names, if any.
    pub fn state(&self) -> Option<&StateRef> {
        match &self.placement {
            Placement::Pinned(state) | Placement::Hashed(state, _) => Some(state),
            Placement::Passthrough | Placement::Spread => None,
        }
    }

    /// The model the upstream will see.
    pub fn model(&self) -> Option<&str> {
        self.model.as_ref().map(|m| m.model.as_str())
    }

    /// The winning category, when classification chose the model.
    pub fn category(&self) -> Option<&str> {
        match &self.model.as_ref()?.reason {
            ModelReason::Category(category) => Some(category),
            ModelReason::Explicit | ModelReason::Default => None,
        }
    }

    /// When the state's location overrode the classifier: the model the classifier had picked.
    pub fn classified_model(&self) -> Option<&str> {
        self.model.as_ref()?.classified.as_deref()
    }

    /// The id the response will create must be learned, and how it is expected to arrive.
    pub fn learns(&self) -> Option<Expect> {
        match self.watch {
            Watch::Response { learn, .. } => learn,
            Watch::Nothing => None,
        }
    }
}

/// What classification saw, for `explain` and the Explain API only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Explanation {
    /// The text that was classified (never logged).
    pub text: Option<String>,
    /// Every category's score, in priority order (empty when no classification ran).
    pub scores: Vec<CategoryScore>,
}

/// One category's score.
#[derive(Debug, Clone, PartialEq)]
pub struct CategoryScore {
    pub category: String,
    /// Rule points (keywords and patterns).
    pub score: u32,
    /// With an embedding model: the similarity by meaning (`None` when the category has no
    /// prototype or the text no embedding).
    pub similarity: Option<f32>,
    /// With an embedding model: the similarity at which the category becomes eligible.
    pub min_similarity: Option<f32>,
    /// With an embedding model: similarity + rule weight x normalised rule points, what the
    /// eligible categories are ranked by.
    pub combined: Option<f32>,
}
