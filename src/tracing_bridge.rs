//! copycat logs through slog (raft-rs requires it); [`tracing_logger`], the default
//! `Config::logger`, forwards every record to `tracing`, so an application that uses
//! `tracing` sees copycat's logs with no slog setup (target `copycat`, the record's
//! key-value pairs appended to the message).

use std::fmt::Write as _;

/// A slog logger whose records become `tracing` events (target `copycat`). Records below
/// what the `tracing` subscriber enables are dropped before they are formatted.
pub fn tracing_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// Forwards records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        macro_rules! forward {
            ($level:expr) => {
                if tracing::enabled!(target: "copycat", $level) {
                    let pairs = pairs(record, values);
                    tracing::event!(target: "copycat", $level, "{}{}", record.msg(), pairs);
                }
            };
        }
        match record.level() {
            slog::Level::Critical | slog::Level::Error => forward!(tracing::Level::ERROR),
            slog::Level::Warning => forward!(tracing::Level::WARN),
            slog::Level::Info => forward!(tracing::Level::INFO),
            slog::Level::Debug => forward!(tracing::Level::DEBUG),
            slog::Level::Trace => forward!(tracing::Level::TRACE),
        }
        Ok(())
    }
}

/// The record's and the logger's key-value pairs as `, key: value` text.
fn pairs(record: &slog::Record, values: &slog::OwnedKVList) -> String {
    let mut out = Pairs(String::new());
    // Writing into a String cannot fail; a value whose formatting fails is left out.
    let _ = slog::KV::serialize(&record.kv(), record, &mut out);
    let _ = slog::KV::serialize(values, record, &mut out);
    out.0
}

struct Pairs(String);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, ", {key}: {value}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// Keeps the message of every event.
    struct Collect(Arc<Mutex<Vec<(tracing::Level, String)>>>);

    struct Message<'a>(&'a mut String);

    impl tracing::field::Visit for Message<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            }
        }
    }

    impl Subscriber for Collect {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() <= tracing::Level::INFO
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut text = String::new();
            event.record(&mut Message(&mut text));
            let level = *event.metadata().level();
            self.0.lock().expect("events").push((level, text));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn records_become_tracing_events_with_their_pairs_and_levels_filter_first() {
        let events = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Collect(events.clone()), || {
            let log = tracing_logger().new(slog::o!("node" => 7));
            slog::warn!(log, "peer unreachable"; "peer" => 3);
            slog::debug!(log, "not enabled, never formatted");
        });
        let events = events.lock().expect("events").clone();
        assert_eq!(
            events,
            vec![(
                tracing::Level::WARN,
                "peer unreachable, peer: 3, node: 7".to_string()
            )]
        );
    }
}
