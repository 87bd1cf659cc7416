//! Safe wrappers over the raw ABI (`abi.rs`): the [`Host`] of one stream, and the per-config
//! [`Stats`] ids. Each `unsafe` block relies on the same two facts of the ABI: the filter pointer
//! is valid for the hook being run (on that stream's worker thread), and bytes Envoy lends are
//! copied before the hook returns or anything is changed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::abi::{self, EnvoyBuffer, HttpFilterConfigEnvoyPtr, HttpFilterEnvoyPtr, ModuleBuffer};
use crate::host::{Counter, Gauge, Histogram, Host, Resumer};
use crate::tally::Tally;

fn buffer(bytes: &[u8]) -> ModuleBuffer {
    ModuleBuffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

const NULL_BUFFER: ModuleBuffer = ModuleBuffer {
    ptr: std::ptr::null(),
    length: 0,
};

/// Copies Envoy's bytes into an owned string (header values are not always UTF-8; the router
/// reads them as text, as the ext_proc form does).
///
/// # Safety
/// `b` must point at `b.length` readable bytes (or be null).
unsafe fn owned(b: EnvoyBuffer) -> String {
    if b.ptr.is_null() || b.length == 0 {
        return String::new();
    }
    // SAFETY: the caller guarantees `b` describes readable bytes for the current hook.
    let bytes = unsafe { std::slice::from_raw_parts(b.ptr, b.length) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// The metric ids Envoy gave this filter config (indexed by the metric's position in its `ALL`),
/// and the counter increments waiting for the main thread to publish them.
pub struct Stats {
    counters: [usize; Counter::ALL.len()],
    gauges: [usize; Gauge::ALL.len()],
    histograms: [usize; Histogram::ALL.len()],
    tally: Arc<Tally>,
}

impl Stats {
    /// Defines every metric on the filter config (main thread, in `on_http_filter_config_new`).
    pub fn define(config: HttpFilterConfigEnvoyPtr) -> Result<Stats, String> {
        type Define = unsafe extern "C" fn(
            HttpFilterConfigEnvoyPtr,
            ModuleBuffer,
            *const ModuleBuffer,
            usize,
            *mut usize,
        ) -> abi::MetricsResult;
        let define = |f: Define, name: &str, labels: &[&str]| -> Result<usize, String> {
            let labels = labels_of(labels);
            let mut id = 0usize;
            // SAFETY: `config` is the pointer Envoy passed to config_new; the buffers outlive the
            // call and Envoy copies them.
            let result = unsafe {
                f(
                    config,
                    buffer(name.as_bytes()),
                    labels.as_ptr(),
                    labels.len(),
                    &mut id,
                )
            };
            if result == abi::METRICS_SUCCESS && id != 0 {
                Ok(id)
            } else {
                Err(format!("Envoy refused the stat `{name}` (result {result})"))
            }
        };
        let mut stats = Stats {
            counters: [0; Counter::ALL.len()],
            gauges: [0; Gauge::ALL.len()],
            histograms: [0; Histogram::ALL.len()],
            tally: Arc::default(),
        };
        for (slot, counter) in stats.counters.iter_mut().zip(Counter::ALL) {
            *slot = define(
                abi::envoy_dynamic_module_callback_http_filter_config_define_counter,
                counter.name(),
                counter.labels(),
            )?;
        }
        for (slot, gauge) in stats.gauges.iter_mut().zip(Gauge::ALL) {
            *slot = define(
                abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
                gauge.name(),
                &[],
            )?;
        }
        for (slot, histogram) in stats.histograms.iter_mut().zip(Histogram::ALL) {
            *slot = define(
                abi::envoy_dynamic_module_callback_http_filter_config_define_histogram,
                histogram.name(),
                &[],
            )?;
        }
        Ok(stats)
    }

    /// Where streams count (published later, by [`Stats::publish`]).
    pub fn tally(&self) -> &Arc<Tally> {
        &self.tally
    }

    /// Hands Envoy the counts gathered since the last call, and the gauges' current values.
    ///
    /// # Safety
    /// `config` must be this filter config's Envoy pointer, on Envoy's main thread.
    pub unsafe fn publish(&self, config: HttpFilterConfigEnvoyPtr, gauges: &[(Gauge, u64)]) {
        for (counter, labels, count) in self.tally.take() {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            let labels = labels_of(&labels);
            // SAFETY: the caller's contract; Envoy copies the label buffers.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                    config,
                    self.counters[counter as usize],
                    labels.as_ptr(),
                    labels.len(),
                    count,
                );
            }
        }
        for &(gauge, value) in gauges {
            // SAFETY: the caller's contract.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                    config,
                    self.gauges[gauge as usize],
                    std::ptr::null(),
                    0,
                    value,
                );
            }
        }
    }
}

/// How often the publisher thread looks for counts to publish, and the longest gauges wait.
const PUBLISH_TICK: Duration = Duration::from_millis(100);
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// The event id of a publication on the config's scheduler.
pub const PUBLISH_EVENT: u64 = 1;

/// Asks Envoy's main thread to publish the stats (`on_http_filter_config_scheduled`): within
/// [`PUBLISH_TICK`] of a count, and at least every [`GAUGES_EVERY`]. Its thread only commits
/// events, the one thing the ABI lets another thread do; the scheduler pointer sits behind a lock
/// so that no commit can follow its deletion.
pub struct Publisher {
    scheduler: Mutex<usize>,
}

impl Publisher {
    /// # Safety
    /// `config` must be the pointer Envoy passed to `on_http_filter_config_new` (main thread).
    pub unsafe fn start(config: HttpFilterConfigEnvoyPtr, tally: Arc<Tally>) -> Arc<Publisher> {
        // SAFETY: the caller's contract.
        let scheduler =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        let publisher = Arc::new(Publisher {
            scheduler: Mutex::new(scheduler as usize),
        });
        let weak = Arc::downgrade(&publisher);
        let spawned = std::thread::Builder::new()
            .name("rr-stats".to_owned())
            .spawn(move || {
                let mut gauges_at = Instant::now();
                loop {
                    std::thread::sleep(PUBLISH_TICK);
                    let Some(publisher) = weak.upgrade() else {
                        return;
                    };
                    let due = gauges_at.elapsed() >= GAUGES_EVERY;
                    if !(due || tally.pending()) {
                        continue;
                    }
                    if due {
                        gauges_at = Instant::now();
                    }
                    if !publisher.commit() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            crate::log::error(&format!(
                "no stats thread ({e}): the module's stats stay at 0"
            ));
        }
        publisher
    }

    /// Posts a publication to the main thread; `false` once stopped.
    fn commit(&self) -> bool {
        let scheduler = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if *scheduler == 0 {
            return false;
        }
        // SAFETY: the scheduler is live (checked under the lock), and commit may be called from
        // any thread.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                *scheduler as abi::HttpFilterConfigSchedulerPtr,
                PUBLISH_EVENT,
            );
        }
        true
    }

    /// Releases the scheduler (main thread, as the config is destroyed); the thread then ends.
    pub fn stop(&self) {
        let mut scheduler = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if *scheduler != 0 {
            // SAFETY: created by `start`, deleted once (set to 0 under the lock).
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
                    *scheduler as abi::HttpFilterConfigSchedulerPtr,
                );
            }
            *scheduler = 0;
        }
    }
}

fn labels_of(values: &[&str]) -> Vec<ModuleBuffer> {
    values.iter().map(|v| buffer(v.as_bytes())).collect()
}

/// A stream's scheduler. Only `commit` may be called off the worker, so the pointer sits behind
/// a lock: a commit from the store's thread happens only while the stream has not released it,
/// and the worker releases it (at the stream's end) under the same lock.
struct EnvoyResumer {
    scheduler: Mutex<usize>,
}

impl Resumer for EnvoyResumer {
    fn resume(&self, event: u64) {
        let scheduler = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if *scheduler != 0 {
            // SAFETY: the scheduler is live (not yet deleted, checked under the lock), and commit
            // is the callback the ABI allows from any thread.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_scheduler_commit(
                    *scheduler as abi::HttpFilterSchedulerPtr,
                    event,
                );
            }
        }
    }

    fn close(&self) {
        let mut scheduler = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
        if *scheduler != 0 {
            // SAFETY: called on the stream's worker thread (the trait's contract), once.
            unsafe {
                abi::envoy_dynamic_module_callback_http_filter_scheduler_delete(
                    *scheduler as abi::HttpFilterSchedulerPtr,
                );
            }
            *scheduler = 0;
        }
    }
}

/// Which hook an [`EnvoyHost`] serves: a request-body hook sees the frame being received, every
/// other hook only what was buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    RequestBody,
    Other,
}

/// One stream's Envoy.
pub struct EnvoyHost<'a> {
    filter: HttpFilterEnvoyPtr,
    stats: &'a Stats,
    hook: Hook,
}

impl<'a> EnvoyHost<'a> {
    /// # Safety
    /// `filter` must be the pointer Envoy passed to the hook being run, on its worker thread.
    pub unsafe fn new(filter: HttpFilterEnvoyPtr, stats: &'a Stats, hook: Hook) -> Self {
        EnvoyHost {
            filter,
            stats,
            hook,
        }
    }

    fn header(&self, kind: abi::HeaderType, name: &str) -> Option<String> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        let mut count = 0usize;
        // SAFETY: see the type's contract; `out` is copied before anything changes.
        unsafe {
            let found = abi::envoy_dynamic_module_callback_http_get_header(
                self.filter,
                kind,
                buffer(name.as_bytes()),
                &mut out,
                0,
                &mut count,
            );
            (found && count > 0).then(|| owned(out))
        }
    }

    fn set(&mut self, kind: abi::HeaderType, name: &str, value: Option<&str>) {
        let value = value.map_or(NULL_BUFFER, |v| buffer(v.as_bytes()));
        // SAFETY: see the type's contract; Envoy copies the buffers.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.filter,
                kind,
                buffer(name.as_bytes()),
                value,
            );
        }
    }

    fn body(&self, kind: abi::BodyType) -> Vec<u8> {
        // SAFETY: see the type's contract; the chunks are copied at once.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(self.filter, kind);
            if n == 0 {
                return Vec::new();
            }
            let mut chunks = vec![
                EnvoyBuffer {
                    ptr: std::ptr::null(),
                    length: 0
                };
                n
            ];
            if !abi::envoy_dynamic_module_callback_http_get_body_chunks(
                self.filter,
                kind,
                chunks.as_mut_ptr(),
            ) {
                return Vec::new();
            }
            let mut out = Vec::with_capacity(chunks.iter().map(|c| c.length).sum());
            for chunk in chunks.iter().filter(|c| !c.ptr.is_null()) {
                out.extend_from_slice(std::slice::from_raw_parts(chunk.ptr, chunk.length));
            }
            out
        }
    }

    fn body_len(&self, kind: abi::BodyType) -> usize {
        // SAFETY: see the type's contract.
        unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(self.filter, kind) }
    }

    /// Whether the received buffer is the buffered one (an earlier filter buffered the body).
    fn received_is_buffered(&self) -> bool {
        // SAFETY: see the type's contract.
        unsafe {
            abi::envoy_dynamic_module_callback_http_received_buffered_request_body(self.filter)
        }
    }

    fn attribute(&self, id: abi::AttributeId) -> Option<String> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: see the type's contract; `out` is copied at once.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.filter,
                id,
                &mut out,
            )
            .then(|| owned(out))
            .filter(|s| !s.is_empty())
        }
    }
}

impl Host for EnvoyHost<'_> {
    fn request_header_values(&self, names: &[&str]) -> Vec<Option<String>> {
        let mut values = vec![None; names.len()];
        // SAFETY: see the type's contract; the array holds `n` entries, and only the wanted values
        // are copied, before anything changes.
        unsafe {
            let n = abi::envoy_dynamic_module_callback_http_get_headers_size(
                self.filter,
                abi::HEADER_REQUEST,
            );
            let empty = abi::EnvoyHttpHeader {
                key_ptr: std::ptr::null(),
                key_length: 0,
                value_ptr: std::ptr::null(),
                value_length: 0,
            };
            let mut all = vec![empty; n];
            if n == 0
                || !abi::envoy_dynamic_module_callback_http_get_headers(
                    self.filter,
                    abi::HEADER_REQUEST,
                    all.as_mut_ptr(),
                )
            {
                return values;
            }
            for header in &all {
                if header.key_ptr.is_null() {
                    continue;
                }
                let key = std::slice::from_raw_parts(header.key_ptr, header.key_length);
                if let Some(i) = names.iter().position(|n| n.as_bytes() == key)
                    && values[i].is_none()
                {
                    values[i] = Some(owned(EnvoyBuffer {
                        ptr: header.value_ptr,
                        length: header.value_length,
                    }));
                }
            }
        }
        values
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        self.set(abi::HEADER_REQUEST, name, Some(value));
    }

    fn add_request_header(&mut self, name: &str, value: &str) {
        // SAFETY: see the type's contract; Envoy copies the buffers.
        unsafe {
            abi::envoy_dynamic_module_callback_http_add_header(
                self.filter,
                abi::HEADER_REQUEST,
                buffer(name.as_bytes()),
                buffer(value.as_bytes()),
            );
        }
    }

    fn remove_request_header(&mut self, name: &str) {
        self.set(abi::HEADER_REQUEST, name, None);
    }

    fn response_header(&self, name: &str) -> Option<String> {
        self.header(abi::HEADER_RESPONSE, name)
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.set(abi::HEADER_RESPONSE, name, Some(value));
    }

    fn remove_response_header(&mut self, name: &str) {
        self.set(abi::HEADER_RESPONSE, name, None);
    }

    fn request_body_len(&self) -> usize {
        if self.received_is_buffered() {
            self.body_len(abi::BODY_RECEIVED_REQUEST)
        } else {
            self.body_len(abi::BODY_BUFFERED_REQUEST) + self.body_len(abi::BODY_RECEIVED_REQUEST)
        }
    }

    /// At the end of the stream the whole body is what earlier hooks buffered plus this hook's
    /// frame (or only the frame, when it is the buffered body).
    fn request_body(&self) -> Vec<u8> {
        if self.received_is_buffered() {
            return self.body(abi::BODY_RECEIVED_REQUEST);
        }
        let mut body = self.body(abi::BODY_BUFFERED_REQUEST);
        body.extend_from_slice(&self.body(abi::BODY_RECEIVED_REQUEST));
        body
    }

    /// In the request-body hook the new body replaces both the buffered part and the frame (it
    /// goes on as the frame); after a resume, only the buffered body exists.
    fn replace_request_body(&mut self, body: &[u8]) {
        let target = match self.hook {
            Hook::RequestBody => abi::BODY_RECEIVED_REQUEST,
            Hook::Other => abi::BODY_BUFFERED_REQUEST,
        };
        // SAFETY: see the type's contract; Envoy copies the appended bytes.
        unsafe {
            abi::envoy_dynamic_module_callback_http_drain_body(
                self.filter,
                abi::BODY_BUFFERED_REQUEST,
                usize::MAX,
            );
            if self.hook == Hook::RequestBody {
                abi::envoy_dynamic_module_callback_http_drain_body(
                    self.filter,
                    abi::BODY_RECEIVED_REQUEST,
                    usize::MAX,
                );
            }
            abi::envoy_dynamic_module_callback_http_append_body(self.filter, target, buffer(body));
        }
    }

    fn response_chunk(&self) -> Vec<u8> {
        self.body(abi::BODY_RECEIVED_RESPONSE)
    }

    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut headers: Vec<abi::ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| abi::ModuleHttpHeader {
                key_ptr: k.as_ptr(),
                key_length: k.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        // SAFETY: see the type's contract; the header array and buffers outlive the call and
        // Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.filter,
                u32::from(status),
                headers.as_mut_ptr(),
                headers.len(),
                buffer(body),
                buffer(details.as_bytes()),
            );
        }
    }

    fn clear_route_cache(&mut self) {
        // SAFETY: see the type's contract.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.filter) }
    }

    fn override_upstream_host(&mut self, host: &str) -> bool {
        // SAFETY: see the type's contract; Envoy copies the host. Not strict: a pinned host that
        // is gone or unhealthy falls back to the cluster's load balancing, as the ext_proc form's
        // stateful_session does.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_upstream_override_host(
                self.filter,
                buffer(host.as_bytes()),
                false,
            )
        }
    }

    fn upstream_address(&self) -> Option<String> {
        self.attribute(abi::ATTR_UPSTREAM_ADDRESS)
    }

    fn upstream_cluster(&self) -> Option<String> {
        self.attribute(abi::ATTR_XDS_CLUSTER_NAME)
    }

    fn resumer(&mut self) -> Arc<dyn Resumer> {
        // SAFETY: see the type's contract; the scheduler is released by `close` on this worker.
        let scheduler =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(self.filter) };
        Arc::new(EnvoyResumer {
            scheduler: Mutex::new(scheduler as usize),
        })
    }

    fn continue_request(&mut self) {
        // SAFETY: see the type's contract.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.filter) }
    }

    fn continue_response(&mut self) {
        // SAFETY: see the type's contract.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_encoding(self.filter) }
    }

    fn increment(&mut self, counter: Counter, labels: &[&str]) {
        self.stats.tally.add(counter, labels);
    }

    fn record(&mut self, histogram: Histogram, value: u64) {
        // SAFETY: see the type's contract.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                self.filter,
                self.stats.histograms[histogram as usize],
                std::ptr::null(),
                0,
                value,
            );
        }
    }
}
