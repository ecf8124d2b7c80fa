//! Logging: JSON lines when stderr is not a terminal, readable text when it is.
//! Lines are written by a background thread, so a request never waits on the
//! log's write.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Lines queued for the writer thread at most.
const LOG_QUEUE_LINES: usize = 8_192;

/// Installs the global subscriber. `SWITCHYARD_LOG` (or `RUST_LOG`) filters.
/// Keep the returned guard until the process ends: dropping it flushes the
/// lines still queued.
pub fn init() -> WorkerGuard {
    let filter = std::env::var("SWITCHYARD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // The queue is preallocated: the default (128k lines) costs 4 MB of
    // resident memory before the first request. Past the limit lines are
    // dropped rather than making a request wait.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
    guard
}
