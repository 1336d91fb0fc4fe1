//! The node's logger: slog records (copycat's, raft's, the registry's and the node's own)
//! as plain text on stderr; stdout carries only the READY line.

use slog::{Drain, Logger};

/// A stderr logger at `level` (`off`, `error`, `warn`, `info`, `debug`, `trace`).
pub fn stderr_logger(level: &str) -> Result<Logger, String> {
    let level = match level.to_ascii_lowercase().as_str() {
        "off" | "none" => return Ok(Logger::root(slog::Discard, slog::o!())),
        "" | "info" => slog::Level::Info,
        "error" => slog::Level::Error,
        "warn" | "warning" => slog::Level::Warning,
        "debug" => slog::Level::Debug,
        "trace" => slog::Level::Trace,
        other => {
            return Err(format!(
                "--log-level {other:?}: use off|error|warn|info|debug|trace"
            ))
        }
    };
    // A synchronous decorator: a log line is never lost on SIGKILL or exit.
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, level).fuse();
    Ok(Logger::root(drain, slog::o!()))
}
