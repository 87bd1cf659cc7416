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

/// Sends `tracing` events (the shared Redis store logs through it) into Envoy's log, at their
/// level, from whichever thread they happen on. Once per process; info and above.
pub fn forward_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(TracingLines)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

/// Makes one [`TracingLine`] per event.
struct TracingLines;

/// One formatted event, written to Envoy's log when the formatter is done with it.
struct TracingLine {
    level: crate::abi::LogLevel,
    text: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TracingLines {
    type Writer = TracingLine;

    fn make_writer(&'a self) -> TracingLine {
        TracingLine {
            level: crate::abi::LOG_INFO,
            text: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> TracingLine {
        use crate::abi::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN};
        let level = match *meta.level() {
            tracing::Level::ERROR => LOG_ERROR,
            tracing::Level::WARN => LOG_WARN,
            tracing::Level::INFO => LOG_INFO,
            _ => LOG_DEBUG,
        };
        TracingLine {
            level,
            text: Vec::new(),
        }
    }
}

impl std::io::Write for TracingLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TracingLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.text);
        let line = text.trim_end();
        if !line.is_empty() {
            write(self.level, line);
        }
    }
}
