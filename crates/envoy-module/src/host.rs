//! What the per-stream logic needs from Envoy, as a trait: the real implementation calls the ABI
//! (`envoy.rs`), unit tests use an in-memory one. Values are copied out, because the bytes Envoy
//! lends are only valid until the hook returns or the next change.

/// The counters the module exports as Envoy stats (`/stats/prometheus`), with their labels. Names
/// and labels are the ext_proc service's series names, so a dashboard reads both forms (Envoy
/// prefixes `envoy_`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Requests routed: `gen_ai_operation_name`, `reason`, `gen_ai_request_model`, `cluster`,
    /// `category`.
    Decisions,
    /// Requests answered with an error: `code`.
    Refusals,
    /// Requests the router answered itself: `gen_ai_operation_name`.
    Answered,
    /// Requests naming a state id, by placement: `outcome` (hit, miss, stale_cluster,
    /// moved_host).
    Affinity,
    /// Ids whose location was recorded: `source` (json, sse).
    LearnedIds,
    /// Loads of the routing YAML: `result` (ok, rejected).
    ConfigReloads,
    /// Panics caught at the module's boundary (each answered with a 500): no labels.
    Panics,
    /// The shared (Redis) store's: ids queued while Redis did not answer.
    WriteBehindQueued,
    /// Ids dropped from the full write-behind queue.
    WriteBehindDropped,
    /// Queued ids written once Redis answered.
    WriteBehindFlushed,
    /// Times Redis was found emptied and a re-seed began.
    Reseeds,
    /// Ids written back by re-seeds.
    ReseededIds,
    /// Redis commands that failed (errors and timeouts).
    RedisErrors,
    /// Changes of a Redis Cluster's slot map followed.
    RedisSlotMoves,
}

impl Counter {
    /// Every counter, in definition order.
    pub const ALL: [Counter; 14] = [
        Counter::Decisions,
        Counter::Refusals,
        Counter::Answered,
        Counter::Affinity,
        Counter::LearnedIds,
        Counter::ConfigReloads,
        Counter::Panics,
        Counter::WriteBehindQueued,
        Counter::WriteBehindDropped,
        Counter::WriteBehindFlushed,
        Counter::Reseeds,
        Counter::ReseededIds,
        Counter::RedisErrors,
        Counter::RedisSlotMoves,
    ];

    /// The stat's name (Envoy prefixes the filter's `metrics_namespace`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::Decisions => "decisions_total",
            Counter::Refusals => "refusals_total",
            Counter::Answered => "answered_total",
            Counter::Affinity => "affinity_total",
            Counter::LearnedIds => "learned_ids_total",
            Counter::ConfigReloads => "config_reloads_total",
            Counter::Panics => "panics_total",
            Counter::WriteBehindQueued => "affinity_write_behind_queued_total",
            Counter::WriteBehindDropped => "affinity_write_behind_dropped_total",
            Counter::WriteBehindFlushed => "affinity_write_behind_flushed_total",
            Counter::Reseeds => "affinity_reseeds_total",
            Counter::ReseededIds => "affinity_reseeded_ids_total",
            Counter::RedisErrors => "affinity_redis_errors_total",
            Counter::RedisSlotMoves => "affinity_redis_cluster_slot_moves_total",
        }
    }

    /// Its label names; every increment passes exactly these.
    pub fn labels(self) -> &'static [&'static str] {
        match self {
            Counter::Decisions => &[
                "gen_ai_operation_name",
                "reason",
                "gen_ai_request_model",
                "cluster",
                "category",
            ],
            Counter::Refusals => &["code"],
            Counter::Answered => &["gen_ai_operation_name"],
            Counter::Affinity => &["outcome"],
            Counter::LearnedIds => &["source"],
            Counter::ConfigReloads => &["result"],
            _ => &[],
        }
    }
}

/// Gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gauge {
    /// Generation of the routing config in force (1 at start, +1 per accepted reload).
    ConfigGeneration,
    /// Ids held by the in-memory affinity store.
    StoreEntries,
    /// 1 when the affinity store answers (with Redis: Redis answered the last check).
    StoreUp,
    /// Ids waiting in the write-behind queue.
    WriteBehindLength,
    /// 1 while a re-seed writes memory back into a Redis that lost its data.
    Reseeding,
}

impl Gauge {
    pub const ALL: [Gauge; 5] = [
        Gauge::ConfigGeneration,
        Gauge::StoreEntries,
        Gauge::StoreUp,
        Gauge::WriteBehindLength,
        Gauge::Reseeding,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Gauge::ConfigGeneration => "config_generation",
            Gauge::StoreEntries => "affinity_store_entries",
            Gauge::StoreUp => "affinity_store_up",
            Gauge::WriteBehindLength => "affinity_write_behind_length",
            Gauge::Reseeding => "affinity_reseeding",
        }
    }
}

/// Histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Histogram {
    /// Microseconds the router spent deciding a request (body parse included).
    DecisionMicros,
}

impl Histogram {
    pub const ALL: [Histogram; 1] = [Histogram::DecisionMicros];

    pub fn name(self) -> &'static str {
        match self {
            Histogram::DecisionMicros => "decision_duration_us",
        }
    }
}

/// Wakes a stream that waits for work done on another thread (Envoy's per-stream scheduler): the
/// only way another thread may touch a stream.
pub trait Resumer: Send + Sync {
    /// From any thread: Envoy calls the stream's `on_scheduled(event)` on its worker thread, or
    /// nothing if the stream has ended.
    fn resume(&self, event: u64);

    /// On the stream's worker thread only: releases the scheduler; later resumes do nothing.
    fn close(&self);
}

/// Envoy as one stream sees it.
pub trait Host {
    /// The first value of each of `names` (lower-case) among the request headers, in one read
    /// of the header map.
    fn request_header_values(&self, names: &[&str]) -> Vec<Option<String>>;
    fn set_request_header(&mut self, name: &str, value: &str);
    /// Adds a header the request is known not to have: cheaper than a set, which first looks
    /// for the old value.
    fn add_request_header(&mut self, name: &str, value: &str);
    fn remove_request_header(&mut self, name: &str);
    fn response_header(&self, name: &str) -> Option<String>;
    fn set_response_header(&mut self, name: &str, value: &str);
    fn remove_response_header(&mut self, name: &str);

    /// Bytes of the request body so far (buffered by earlier hooks plus this hook's frame).
    fn request_body_len(&self) -> usize;
    /// The request body so far, whole.
    fn request_body(&self) -> Vec<u8>;
    /// Replaces the whole request body.
    fn replace_request_body(&mut self, body: &[u8]);
    /// This hook's frame of the response body.
    fn response_chunk(&self) -> Vec<u8>;

    /// Answers the request locally: nothing reaches an upstream.
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str);
    /// Makes Envoy pick the route again, after the cluster header changed.
    fn clear_route_cache(&mut self);
    /// Sends the request to `host` (`ip:port`) of the routed cluster while it is there.
    fn override_upstream_host(&mut self, host: &str) -> bool;
    /// The host that served the response (`ip:port`).
    fn upstream_address(&self) -> Option<String>;
    /// The cluster that served the response.
    fn upstream_cluster(&self) -> Option<String>;

    /// A resumer for this stream (created on first use, then the same one).
    fn resumer(&mut self) -> std::sync::Arc<dyn Resumer>;
    /// Lets a request held by a hook go on (after `on_scheduled`).
    fn continue_request(&mut self);
    /// Lets a response held by a hook go on (after `on_scheduled`).
    fn continue_response(&mut self);

    fn increment(&mut self, counter: Counter, labels: &[&str]);
    fn record(&mut self, histogram: Histogram, value: u64);
}
