//! The functions Envoy calls. Each runs its body under `catch_unwind`: a Rust panic must never
//! unwind into Envoy's C++ (that aborts the process). A panic during a request is answered with
//! the router's 500 error and counted; anywhere else it is logged and the hook does nothing.

#![allow(clippy::missing_safety_doc)]

use std::ffi::c_char;
use std::sync::{Arc, Mutex};

use responses_router_redis::Stats as RedisStats;

use crate::abi::{self, EnvoyBuffer, HttpFilterConfigEnvoyPtr, HttpFilterConfigModulePtr};
use crate::abi::{HttpFilterEnvoyPtr, HttpFilterModulePtr};
use crate::envoy::{EnvoyHost, Hook, Publisher, Stats};
use crate::filter::{self, BodyFlow, HeadersFlow, Stream};
use crate::host::{Counter, Gauge, Host};
use crate::router::Router;

/// The module's object for one filter config.
struct FilterConfig {
    router: Arc<Router>,
    stats: Stats,
    publisher: Arc<Publisher>,
    /// The Redis store's counters as last published (main thread only).
    redis_published: Mutex<RedisStats>,
}

/// The module's object for one stream.
struct Filter {
    config: *const FilterConfig,
    stream: Stream,
}

impl Filter {
    /// The filter's config, borrowed apart from the filter itself.
    fn config<'a>(&self) -> &'a FilterConfig {
        // SAFETY: Envoy keeps a filter config alive while any filter created from it lives, and
        // the module never changes a config after creating it.
        unsafe { &*self.config }
    }
}

/// Runs `f`; on a panic, logs it and returns `fallback`.
fn guarded<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    filter::caught(what, f).unwrap_or(fallback)
}

/// Runs a request-phase hook; a panic answers the request with the router's 500 error.
///
/// # Safety
/// `envoy` and `module` must be the pointers Envoy passed to the hook being run.
unsafe fn request_hook<T>(
    what: &str,
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
    hook: Hook,
    stopped: T,
    f: impl FnOnce(&mut Stream, &mut EnvoyHost<'_>) -> T,
) -> T {
    // SAFETY: `module` is the `Filter` this module returned from `on_http_filter_new`, used only
    // on its worker thread, never after `on_http_filter_destroy`.
    let filter = unsafe { &mut *(module as *mut Filter) };
    let config = filter.config();
    // SAFETY: the caller passes Envoy's pointer for the hook being run.
    let mut host = unsafe { EnvoyHost::new(envoy, &config.stats, hook) };
    filter::guarded_hook(what, &mut filter.stream, &mut host, stopped, f)
}

#[unsafe(no_mangle)]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    // The default hook prints a backtrace to stderr (about 0.1 s): log one line instead.
    std::panic::set_hook(Box::new(|info| {
        crate::log::error(&format!("panic: {info}"));
    }));
    abi::ABI_VERSION.as_ptr().cast()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: HttpFilterConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> HttpFilterConfigModulePtr {
    guarded("config_new", std::ptr::null(), || {
        let bytes: &[u8] = if config.ptr.is_null() {
            &[]
        } else {
            // SAFETY: Envoy lends the config bytes for the duration of this call.
            unsafe { std::slice::from_raw_parts(config.ptr, config.length) }
        };
        let built = Router::from_filter_config(bytes).and_then(|router| {
            let stats = Stats::define(config_envoy)?;
            // SAFETY: Envoy's config pointer, in config_new on the main thread.
            let publisher = unsafe { Publisher::start(config_envoy, Arc::clone(stats.tally())) };
            Ok(FilterConfig {
                router,
                stats,
                publisher,
                redis_published: Mutex::default(),
            })
        });
        match built {
            Ok(config) => Box::into_raw(Box::new(config)) as HttpFilterConfigModulePtr,
            Err(why) => {
                // Envoy's own message is generic ("Failed to initialize dynamic module"): say why,
                // in Envoy's log and on stderr (which `envoy --mode validate -l critical` keeps).
                crate::log::error(&format!("invalid filter config: {why}"));
                eprintln!("responses-router: invalid filter config: {why}");
                std::ptr::null()
            }
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: HttpFilterConfigModulePtr,
) {
    guarded("config_destroy", (), || {
        if !config.is_null() {
            // SAFETY: this is the box `config_new` leaked, destroyed once, by Envoy.
            let config = unsafe { Box::from_raw(config as *mut FilterConfig) };
            config.router.stop();
            config.publisher.stop();
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: HttpFilterConfigModulePtr,
    _envoy: HttpFilterEnvoyPtr,
) -> HttpFilterModulePtr {
    guarded("filter_new", std::ptr::null(), || {
        // SAFETY: `config` is the live `FilterConfig` this module made.
        let shared = unsafe { &*(config as *const FilterConfig) };
        let filter = Filter {
            config: config as *const FilterConfig,
            stream: Stream::new(Arc::clone(&shared.router)),
        };
        Box::into_raw(Box::new(filter)) as HttpFilterModulePtr
    })
}

/// Publishes the stats on the main thread (the [`Publisher`] asks for it): counts the streams
/// gathered, and what the reload thread and the store cannot report themselves (they must not
/// touch Envoy from their own threads): reload outcomes, the generation, the store's size.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy: HttpFilterConfigEnvoyPtr,
    config: HttpFilterConfigModulePtr,
    _event_id: u64,
) {
    guarded("config_scheduled", (), || {
        if config.is_null() {
            return;
        }
        // SAFETY: the live `FilterConfig` this module made (Envoy does not call this hook for a
        // destroyed config).
        let config = unsafe { &*(config as *const FilterConfig) };
        let router = &config.router;
        let tally = config.stats.tally();
        let (ok, rejected) = router.take_reloads();
        tally.add_n(Counter::ConfigReloads, &["ok"], ok);
        tally.add_n(Counter::ConfigReloads, &["rejected"], rejected);
        let mut gauges = vec![
            (Gauge::ConfigGeneration, router.generation()),
            (Gauge::StoreEntries, router.store().len() as u64),
        ];
        match router.redis_state() {
            None => gauges.push((Gauge::StoreUp, 1)),
            Some((up, now)) => {
                gauges.extend([
                    (Gauge::StoreUp, u64::from(up)),
                    (Gauge::WriteBehindLength, now.queue_len),
                    (Gauge::Reseeding, u64::from(now.reseeding)),
                ]);
                // The store's counters are totals; Envoy's counters take increments.
                let mut published = config
                    .redis_published
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let then = *published;
                for (counter, now, then) in [
                    (Counter::WriteBehindQueued, now.queued, then.queued),
                    (Counter::WriteBehindDropped, now.dropped, then.dropped),
                    (Counter::WriteBehindFlushed, now.flushed, then.flushed),
                    (Counter::Reseeds, now.reseeds, then.reseeds),
                    (Counter::ReseededIds, now.reseeded, then.reseeded),
                    (
                        Counter::RedisErrors,
                        now.errors + now.timeouts,
                        then.errors + then.timeouts,
                    ),
                    (
                        Counter::RedisSlotMoves,
                        now.topology_changes,
                        then.topology_changes,
                    ),
                ] {
                    tally.add_n(counter, &[], now.saturating_sub(then));
                }
                *published = now;
            }
        }
        // SAFETY: Envoy's pointer for this config, on the main thread.
        unsafe { config.stats.publish(config_envoy, &gauges) };
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
    end_of_stream: bool,
) -> abi::HeadersStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        request_hook(
            "request_headers",
            envoy,
            module,
            Hook::Other,
            abi::HEADERS_STOP_ITERATION,
            |stream, host| match stream.on_request_headers(host, end_of_stream) {
                HeadersFlow::Continue => abi::HEADERS_CONTINUE,
                HeadersFlow::Stop => abi::HEADERS_STOP_ITERATION,
            },
        )
    }
}

fn body_status(flow: BodyFlow) -> abi::BodyStatus {
    match flow {
        BodyFlow::Continue => abi::BODY_CONTINUE,
        BodyFlow::Buffer => abi::BODY_STOP_ITERATION_AND_BUFFER,
        BodyFlow::Stop => abi::BODY_STOP_ITERATION_NO_BUFFER,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
    end_of_stream: bool,
) -> abi::BodyStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        request_hook(
            "request_body",
            envoy,
            module,
            Hook::RequestBody,
            abi::BODY_STOP_ITERATION_NO_BUFFER,
            |stream, host| body_status(stream.on_request_body(host, end_of_stream)),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
) -> abi::TrailersStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        request_hook(
            "request_trailers",
            envoy,
            module,
            Hook::Other,
            abi::TRAILERS_STOP_ITERATION,
            |stream, host| match stream.on_request_trailers(host) {
                HeadersFlow::Continue => abi::TRAILERS_CONTINUE,
                HeadersFlow::Stop => abi::TRAILERS_STOP_ITERATION,
            },
        )
    }
}

/// Runs a response-phase hook: a panic there is logged and the response goes on untouched (the
/// upstream already answered; failing it would lose the answer).
///
/// # Safety
/// As for [`request_hook`].
unsafe fn response_hook<T>(
    what: &str,
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
    fallback: T,
    f: impl FnOnce(&mut Stream, &mut EnvoyHost<'_>) -> T,
) -> T {
    // SAFETY: as in `request_hook`.
    let filter = unsafe { &mut *(module as *mut Filter) };
    let config = filter.config();
    // SAFETY: the caller passes Envoy's pointer for the hook being run.
    let mut host = unsafe { EnvoyHost::new(envoy, &config.stats, Hook::Other) };
    filter::caught(what, || f(&mut filter.stream, &mut host)).unwrap_or_else(|| {
        host.increment(Counter::Panics, &[]);
        fallback
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
    end_of_stream: bool,
) -> abi::HeadersStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        response_hook(
            "response_headers",
            envoy,
            module,
            abi::HEADERS_CONTINUE,
            |stream, host| {
                stream.on_response_headers(host, end_of_stream);
                abi::HEADERS_CONTINUE
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
    end_of_stream: bool,
) -> abi::BodyStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        response_hook(
            "response_body",
            envoy,
            module,
            abi::BODY_CONTINUE,
            |stream, host| body_status(stream.on_response_body(host, end_of_stream)),
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
) -> abi::TrailersStatus {
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        response_hook(
            "response_trailers",
            envoy,
            module,
            abi::TRAILERS_CONTINUE,
            |stream, _| match stream.on_response_trailers() {
                HeadersFlow::Continue => abi::TRAILERS_CONTINUE,
                HeadersFlow::Stop => abi::TRAILERS_STOP_ITERATION,
            },
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: HttpFilterModulePtr) {
    guarded("filter_destroy", (), || {
        if !module.is_null() {
            // SAFETY: the box `filter_new` leaked, destroyed once, by Envoy.
            drop(unsafe { Box::from_raw(module as *mut Filter) });
        }
    })
}

/// Work finished on another thread (the shared store) resumes its stream here, on its worker.
/// A panic while finishing a request answers it with the router's 500; one while releasing an
/// answer is logged and counted, as in the other response hooks (the answer is already on its
/// way: a local reply cannot replace it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    envoy: HttpFilterEnvoyPtr,
    module: HttpFilterModulePtr,
    event_id: u64,
) {
    let on_scheduled =
        |stream: &mut Stream, host: &mut EnvoyHost<'_>| stream.on_scheduled(host, event_id);
    // SAFETY: Envoy's pointers for this hook.
    unsafe {
        if event_id == filter::EVENT_RECORDED {
            response_hook("scheduled", envoy, module, (), on_scheduled)
        } else {
            request_hook("scheduled", envoy, module, Hook::Other, (), on_scheduled)
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
    _code: u32,
    _details: EnvoyBuffer,
    _reset_imminent: bool,
) -> abi::LocalReplyStatus {
    abi::LOCAL_REPLY_CONTINUE
}

// Hooks Envoy 1.40 requires to be exported although the router makes no HTTP callouts or
// streams of its own and does not watch buffer watermarks: they do nothing.

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
    _callout_id: u64,
    _result: abi::HttpCalloutResult,
    _headers: *mut abi::EnvoyHttpHeader,
    _headers_len: usize,
    _body: *mut EnvoyBuffer,
    _body_len: usize,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
    _stream_id: u64,
    _headers: *mut abi::EnvoyHttpHeader,
    _headers_len: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_len: usize,
    _end_stream: bool,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
    _stream_id: u64,
    _trailers: *mut abi::EnvoyHttpHeader,
    _trailers_len: usize,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
    _stream_id: u64,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
    _stream_id: u64,
    _reason: abi::HttpStreamResetReason,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
) {
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: HttpFilterEnvoyPtr,
    _module: HttpFilterModulePtr,
) {
}

/// Compile-time check that the exported hooks have the types Envoy looks them up with.
const _: () = {
    let _: abi::OnProgramInit = envoy_dynamic_module_on_program_init;
    let _: abi::OnConfigNew = envoy_dynamic_module_on_http_filter_config_new;
    let _: abi::OnConfigDestroy = envoy_dynamic_module_on_http_filter_config_destroy;
    let _: abi::OnFilterNew = envoy_dynamic_module_on_http_filter_new;
    let _: abi::OnHeaders = envoy_dynamic_module_on_http_filter_request_headers;
    let _: abi::OnBody = envoy_dynamic_module_on_http_filter_request_body;
    let _: abi::OnTrailers = envoy_dynamic_module_on_http_filter_request_trailers;
    let _: abi::OnHeaders = envoy_dynamic_module_on_http_filter_response_headers;
    let _: abi::OnBody = envoy_dynamic_module_on_http_filter_response_body;
    let _: abi::OnTrailers = envoy_dynamic_module_on_http_filter_response_trailers;
    let _: abi::OnStreamComplete = envoy_dynamic_module_on_http_filter_stream_complete;
    let _: abi::OnFilterDestroy = envoy_dynamic_module_on_http_filter_destroy;
    let _: abi::OnScheduled = envoy_dynamic_module_on_http_filter_scheduled;
    let _: abi::OnConfigScheduled = envoy_dynamic_module_on_http_filter_config_scheduled;
    let _: abi::OnLocalReply = envoy_dynamic_module_on_http_filter_local_reply;
    let _: abi::OnCalloutDone = envoy_dynamic_module_on_http_filter_http_callout_done;
    let _: abi::OnStreamHeaders = envoy_dynamic_module_on_http_filter_http_stream_headers;
    let _: abi::OnStreamData = envoy_dynamic_module_on_http_filter_http_stream_data;
    let _: abi::OnStreamTrailers = envoy_dynamic_module_on_http_filter_http_stream_trailers;
    let _: abi::OnStreamDone = envoy_dynamic_module_on_http_filter_http_stream_complete;
    let _: abi::OnStreamReset = envoy_dynamic_module_on_http_filter_http_stream_reset;
    let _: abi::OnWatermark =
        envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark;
    let _: abi::OnWatermark =
        envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark;
};
