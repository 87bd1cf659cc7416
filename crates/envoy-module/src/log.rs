//! Logging into Envoy's own log (component `dynamic_modules`, filtered by Envoy's log level), each
//! line prefixed `responses-router:`. Unit tests, which run without Envoy, write to stderr.

#[cfg(not(test))]
fn write(level: crate::abi::LogLevel, message: &str) {
    use crate::abi;
    let line = format!("responses-router: {message}");
    // SAFETY: Envoy copies the bytes before returning; the buffer outlives the call.
    unsafe {
        abi::envoy_dynamic_module_callback_log(
            level,
            abi::ModuleBuffer {
                ptr: line.as_ptr(),
                length: line.len(),
            },
        );
    }
}

#[cfg(test)]
fn write(_level: u32, message: &str) {
    eprintln!("responses-router: {message}");
}

/// Formats and writes `message()` only when Envoy logs at debug level (a request's hot path pays
/// for no string it does not log).
pub fn debug(message: impl FnOnce() -> String) {
    if enabled(crate::abi::LOG_DEBUG) {
        write(crate::abi::LOG_DEBUG, &message());
    }
}

#[cfg(not(test))]
fn enabled(level: crate::abi::LogLevel) -> bool {
    // SAFETY: a plain query, callable from any hook.
    unsafe { crate::abi::envoy_dynamic_module_callback_log_enabled(level) }
}

#[cfg(test)]
fn enabled(_level: u32) -> bool {
    true
}

pub fn info(message: &str) {
    write(crate::abi::LOG_INFO, message);
}

pub fn warn(message: &str) {
    write(crate::abi::LOG_WARN, message);
}

pub fn error(message: &str) {
    write(crate::abi::LOG_ERROR, message);
}
