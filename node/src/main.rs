//! `copycat-node`: the per-node service of Copper on copycat. One process per machine
//! runs a copycat node, the service registry on it, a local HTTP/JSON API for
//! applications in any language (`--api`, default 127.0.0.1:5381) and the gateway
//! (`--gateway`, default 127.0.0.1:5380). `copycat-node --help` lists the flags; the README's
//! "copycat-node" section walks through the API with curl.
#![deny(missing_docs)]

mod api;
mod args;
mod follower;
mod gateway;
mod logging;
mod publications;
mod run;
mod server;

use clap::Parser;

/// Parses the settings (exit 2 on a usage error) and runs the node (exit 1 if it fails).
fn main() {
    let settings = match args::Args::parse().resolve() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("copycat-node: {e}");
            std::process::exit(2);
        }
    };
    let log = match logging::stderr_logger(&settings.log_level) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("copycat-node: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run::run(settings, log) {
        eprintln!("copycat-node: {e}");
        std::process::exit(1);
    }
}
