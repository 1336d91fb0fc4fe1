//! The node's settings: command-line flags, each also read from an environment variable
//! `COPYCAT_<FLAG>`, over an optional TOML file (`--config FILE`), over the defaults.
//!
//! Precedence, highest first: a flag, its environment variable, the file, the default.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// Default address of the local API.
pub const DEFAULT_API: &str = "127.0.0.1:5381";
/// Default address of the gateway (Copper's :5380).
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:5380";
/// Default threads of the gateway and the forwarding entry (see `run::spawn_gateways`).
pub const DEFAULT_GATEWAY_THREADS: usize = 2;
/// Default open connections per HTTP listener (see `server::MAX_CONNECTIONS`).
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;

/// Command-line flags. Every value is optional here so that the file and the defaults can
/// fill what is not given; [`Args::resolve`] applies the precedence.
#[derive(Debug, Default, Parser)]
#[command(
    name = "copycat-node",
    version,
    about = "The per-node service of Copper on copycat: the service registry over a local \
             HTTP/JSON API, the gateway and Prometheus metrics.",
    after_help = "Logs go to stderr; COPYCAT_LOG (or --log-level) sets the level. On start \
                  the process prints one line `READY api=… gateway=… forward=… raft=… \
                  gossip=… node_id=…` to stdout. SIGTERM or ctrl-c shuts it down cleanly (exit 0)."
)]
pub struct Args {
    /// A TOML file with any of these settings, keys named as the long flags
    /// (`data-dir = "/var/lib/copycat"`, `peers = ["10.0.0.1:7459"]`).
    #[arg(long, env = "COPYCAT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its data [default: ./copy-cat-db/].
    #[arg(long, env = "COPYCAT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address copycat binds and advertises to its peers [default: 127.0.0.1].
    #[arg(long, env = "COPYCAT_HOSTNAME", value_name = "HOST")]
    pub hostname: Option<String>,
    /// copycat's raft TCP port; 0 picks a free one [default: 7458].
    #[arg(long, env = "COPYCAT_PORT")]
    pub port: Option<u16>,
    /// copycat's gossip UDP port; 0 picks a free one [default: 7459].
    #[arg(long, env = "COPYCAT_GOSSIP_PORT")]
    pub gossip_port: Option<u16>,
    /// Gossip addresses of running nodes, comma-separated; none starts a new cluster.
    #[arg(
        long,
        env = "COPYCAT_PEERS",
        value_delimiter = ',',
        value_name = "ADDRS"
    )]
    pub peers: Option<Vec<String>>,
    /// This node's datacenter [default: default].
    #[arg(long, env = "COPYCAT_DATACENTER", value_name = "NAME")]
    pub datacenter: Option<String>,
    /// A node founding a new cluster waits until this many nodes are up before it creates
    /// anything (start them together) [default: 1].
    #[arg(long, env = "COPYCAT_BOOTSTRAP_EXPECT", value_name = "N")]
    pub bootstrap_expect: Option<usize>,
    /// Address of the local HTTP/JSON API; port 0 picks a free one [default: 127.0.0.1:5381].
    #[arg(long, env = "COPYCAT_API", value_name = "ADDR")]
    pub api: Option<String>,
    /// Address of the gateway; port 0 picks a free one [default: 127.0.0.1:5380].
    #[arg(long, env = "COPYCAT_GATEWAY", value_name = "ADDR")]
    pub gateway: Option<String>,
    /// Address of the forwarding entry, where other nodes' gateways send requests for the
    /// publications made through this node; it must be reachable from them and advertises
    /// itself in those publications; port 0 picks a free one [default: HOSTNAME:0].
    #[arg(long, env = "COPYCAT_FORWARD", value_name = "ADDR")]
    pub forward: Option<String>,
    /// Open HTTP connections at once, per listener; more wait in the listen backlog
    /// [default: 1024].
    #[arg(long, env = "COPYCAT_HTTP_MAX_CONNECTIONS", value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// Threads serving the gateway and the forwarding entry, each with its own event loop
    /// (1 to 64) [default: 2].
    #[arg(long, env = "COPYCAT_GATEWAY_THREADS", value_name = "N")]
    pub gateway_threads: Option<usize>,
    /// Seal gossip under this key (64 hex digits).
    #[arg(long, env = "COPYCAT_CLUSTER_KEY", value_name = "FILE")]
    pub cluster_key: Option<PathBuf>,
    /// TLS: the cluster's CA certificate (PEM); the three TLS flags go together.
    #[arg(long, env = "COPYCAT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// TLS: this node's certificate (PEM); its node id becomes the node's.
    #[arg(long, env = "COPYCAT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: this node's private key (PEM).
    #[arg(long, env = "COPYCAT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Log level on stderr: off, error, warn, info, debug or trace [default: info].
    #[arg(long, env = "COPYCAT_LOG", value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// The same settings as a TOML file holds them (every key optional, unknown keys refused).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    data_dir: Option<PathBuf>,
    hostname: Option<String>,
    port: Option<u16>,
    gossip_port: Option<u16>,
    peers: Option<Vec<String>>,
    datacenter: Option<String>,
    bootstrap_expect: Option<usize>,
    api: Option<String>,
    gateway: Option<String>,
    forward: Option<String>,
    http_max_connections: Option<usize>,
    gateway_threads: Option<usize>,
    cluster_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    log_level: Option<String>,
}

/// The node's settings once flags, environment, file and defaults are combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Address copycat binds and advertises.
    pub hostname: String,
    /// Raft TCP port (0: any).
    pub port: u16,
    /// Gossip UDP port (0: any).
    pub gossip_port: u16,
    /// Gossip addresses of running nodes.
    pub peers: Vec<String>,
    /// This node's datacenter.
    pub datacenter: String,
    /// Nodes a founder waits for before creating anything.
    pub bootstrap_expect: usize,
    /// Local API address (`host:port`).
    pub api: String,
    /// Gateway address (`host:port`).
    pub gateway: String,
    /// Forwarding entry address (`host:port`).
    pub forward: String,
    /// Open connections per HTTP listener.
    pub http_max_connections: usize,
    /// Threads of the gateway and the forwarding entry.
    pub gateway_threads: usize,
    /// Gossip key file.
    pub cluster_key: Option<PathBuf>,
    /// TLS CA, certificate and key files (all or none).
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// Log level name.
    pub log_level: String,
}

/// A setting that cannot be used; the message names the flag (or file key).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The `--config` file cannot be read.
    #[error("--config {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML for these settings.
    #[error("--config {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The TOML error, naming the key.
        message: String,
    },
    /// A value out of range.
    #[error("--{flag}: {message}")]
    Invalid {
        /// The flag (= file key).
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Args {
    /// Combines the flags with the `--config` file (if any) and the defaults.
    pub fn resolve(self) -> Result<Settings, SettingsError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let tls_ca = self.tls_ca.or(file.tls_ca);
        let tls_cert = self.tls_cert.or(file.tls_cert);
        let tls_key = self.tls_key.or(file.tls_key);
        let tls = match (tls_ca, tls_cert, tls_key) {
            (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
            (None, None, None) => None,
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    ("--tls-ca", ca.is_none()),
                    ("--tls-cert", cert.is_none()),
                    ("--tls-key", key.is_none()),
                ]
                .iter()
                .filter(|(_, missing)| *missing)
                .map(|(flag, _)| *flag)
                .collect();
                return Err(SettingsError::Invalid {
                    flag: "tls-ca",
                    message: format!(
                        "--tls-ca, --tls-cert and --tls-key go together; missing {}",
                        missing.join(", ")
                    ),
                });
            }
        };
        let bootstrap_expect = self.bootstrap_expect.or(file.bootstrap_expect).unwrap_or(1);
        if bootstrap_expect == 0 {
            return Err(SettingsError::Invalid {
                flag: "bootstrap-expect",
                message: "must be at least 1".to_string(),
            });
        }
        let http_max_connections = self
            .http_max_connections
            .or(file.http_max_connections)
            .unwrap_or(DEFAULT_HTTP_MAX_CONNECTIONS);
        if !(1..=1 << 20).contains(&http_max_connections) {
            return Err(SettingsError::Invalid {
                flag: "http-max-connections",
                message: format!("{http_max_connections} is not in 1..=1048576"),
            });
        }
        let gateway_threads = self
            .gateway_threads
            .or(file.gateway_threads)
            .unwrap_or(DEFAULT_GATEWAY_THREADS);
        if !(1..=64).contains(&gateway_threads) {
            return Err(SettingsError::Invalid {
                flag: "gateway-threads",
                message: format!("{gateway_threads} is not in 1..=64"),
            });
        }
        let peers: Vec<String> = self
            .peers
            .or(file.peers)
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        let hostname = self
            .hostname
            .or(file.hostname)
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let forward = self
            .forward
            .or(file.forward)
            .unwrap_or_else(|| host_port(&hostname, 0));
        Ok(Settings {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./copy-cat-db/")),
            hostname,
            port: self.port.or(file.port).unwrap_or(7458),
            gossip_port: self.gossip_port.or(file.gossip_port).unwrap_or(7459),
            peers,
            datacenter: self
                .datacenter
                .or(file.datacenter)
                .unwrap_or_else(|| "default".to_string()),
            bootstrap_expect,
            api: self
                .api
                .or(file.api)
                .unwrap_or_else(|| DEFAULT_API.to_string()),
            gateway: self
                .gateway
                .or(file.gateway)
                .unwrap_or_else(|| DEFAULT_GATEWAY.to_string()),
            forward,
            http_max_connections,
            gateway_threads,
            cluster_key: self.cluster_key.or(file.cluster_key),
            tls,
            log_level: self
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
        })
    }
}

/// `host:port`, with an IPv6 literal in brackets.
pub fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Reads and parses a `--config` file.
fn read_file(path: &Path) -> Result<FileSettings, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| SettingsError::ParseFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("copycat-node").chain(args.iter().copied()))
            .expect("valid flags")
    }

    #[test]
    fn defaults_are_the_seed_and_copper_ones() {
        let settings = parse(&[]).resolve().expect("defaults");
        assert_eq!(settings.port, 7458);
        assert_eq!(settings.gossip_port, 7459);
        assert_eq!(settings.api, DEFAULT_API);
        assert_eq!(settings.gateway, DEFAULT_GATEWAY);
        assert_eq!(settings.forward, "127.0.0.1:0");
        let settings = parse(&["--hostname", "::1"]).resolve().expect("v6");
        assert_eq!(settings.forward, "[::1]:0");
        assert_eq!(settings.data_dir, PathBuf::from("./copy-cat-db/"));
        assert!(settings.peers.is_empty());
        assert!(settings.tls.is_none());
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "port = 1000\ngossip-port = 1001\npeers = [\"10.0.0.1:7459\"]\ndatacenter = \"west\"\n",
        )
        .expect("write");
        let file = file.to_string_lossy().to_string();
        let settings = parse(&["--config", &file, "--port", "2000", "--peers", "a:1, b:2"])
            .resolve()
            .expect("settings");
        assert_eq!(settings.port, 2000);
        assert_eq!(settings.gossip_port, 1001);
        assert_eq!(settings.datacenter, "west");
        assert_eq!(settings.peers, vec!["a:1", "b:2"]);
    }

    #[test]
    fn unknown_file_keys_and_partial_tls_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "prot = 1\n").expect("write");
        let file = file.to_string_lossy().to_string();
        let err = parse(&["--config", &file]).resolve().unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
        let err = parse(&["--tls-ca", "ca.pem"]).resolve().unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
    }
}
