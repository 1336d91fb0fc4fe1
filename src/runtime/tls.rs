//! TLS on the transport's connections: rustls configurations built from the node's
//! [`TlsIdentity`], the dialer's and the acceptor's handshakes, and the node id each side
//! proves.
//!
//! Both sides use TLS 1.3 only, with mutual authentication against the cluster's CA.
//! - The dialer names the node it means to reach as the TLS server name
//!   ([`node_certificate_name`]), so a server whose certificate names another node fails
//!   the handshake: gossip that points node X's address elsewhere cannot receive X's
//!   traffic.
//! - The acceptor requires a client certificate and takes the peer's node id from it; the
//!   transport then refuses a `Hello` that claims another id.
//!
//! - A probe ([`TransportTls::probe`]) runs the dialer's handshake alone, to learn whether
//!   the server at an address holds a certificate for the node gossip says is there: the
//!   gossip view admits a member's addresses only once a probe proved them.
//!
//! Session resumption is off on both sides: connections are long-lived (one per peer), so
//! it would save little, and every connection then proves the peer's certificate afresh.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::security::{node_certificate_name, node_id_of_certificate, TlsIdentity};

/// A connection's byte stream: plain TCP, or TLS over TCP.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A connection of either kind.
pub(crate) type BoxedStream = Box<dyn Stream>;

/// Why an accepted connection failed its TLS handshake or proved no node id.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcceptError {
    /// The handshake failed: no certificate, one the CA did not sign, not TLS at all...
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// The handshake did not finish before the deadline.
    #[error("no TLS handshake within {0:?}")]
    TimedOut(std::time::Duration),
    /// The verified client certificate names no valid node id.
    #[error("the peer's certificate names no node id: {0}")]
    NoNodeId(String),
}

/// Why a probe did not prove that the server at an address is the node it was asked about.
///
/// Normal network outcomes (nothing listens there, another node or an impostor does):
/// nothing changed anywhere, the caller decides whether to probe again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// No TCP connection to the address.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The handshake failed: the server's certificate does not name the node asked about,
    /// was not signed by the cluster's CA, the server refused ours, or it is not TLS.
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    /// Connection and handshake did not finish before the deadline.
    #[error("no handshake within {0:?}")]
    TimedOut(Duration),
    /// The handshake passed but the certificate names no node id, or another one (not
    /// expected: the handshake already checks the name).
    #[error("the server's certificate does not name node {expected}: {problem}")]
    WrongNode {
        /// The node asked about.
        expected: NodeId,
        /// What the certificate holds instead.
        problem: String,
    },
}

/// The transport's TLS: what dials and what accepts, and how many peers were refused.
pub(crate) struct TransportTls {
    /// Dials peers, presenting our certificate.
    connector: TlsConnector,
    /// Accepts peers, requiring theirs.
    acceptor: TlsAcceptor,
    /// Inbound connections refused: failed handshakes and `Hello`s claiming another id.
    refused: AtomicU64,
    /// Probes that did not prove the node id asked about.
    probes_failed: AtomicU64,
}

impl TransportTls {
    /// Builds both sides from `identity`; fails with [`Error::Credentials`] if rustls
    /// refuses them (already checked when the identity was loaded, so not expected).
    pub(crate) fn new(identity: &TlsIdentity) -> Result<TransportTls> {
        let fail = |e: &dyn std::fmt::Display| Error::Credentials(format!("TLS setup: {e}"));
        let provider = crate::security::tls_provider();
        let versions = &[&rustls::version::TLS13];
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(identity.roots(), provider.clone())
                .build()
                .map_err(|e| fail(&e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| fail(&e))?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(identity.chain(), identity.key())
            .map_err(|e| fail(&e))?;
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| fail(&e))?
            .with_root_certificates(identity.roots())
            .with_client_auth_cert(identity.chain(), identity.key())
            .map_err(|e| fail(&e))?;
        client.resumption = Resumption::disabled();
        Ok(TransportTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
            refused: AtomicU64::new(0),
            probes_failed: AtomicU64::new(0),
        })
    }

    /// Runs the dialer's handshake on `tcp`; fails unless the server proves it is `peer`.
    pub(crate) async fn connect(&self, tcp: TcpStream, peer: NodeId) -> io::Result<BoxedStream> {
        let name = ServerName::try_from(node_certificate_name(peer))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = self.connector.connect(name, tcp).await?;
        Ok(Box::new(tls))
    }

    /// Proves, within `timeout`, that the server at `addr` holds a certificate of the
    /// cluster's CA for node `peer`: connects, runs the dialer's handshake (which checks
    /// the server's certificate names `peer`, and presents ours), reads the node id back
    /// from the verified certificate and closes the connection with a TLS close before
    /// any `Hello` (the acceptor takes that as a routine close).
    ///
    /// Returns the node id the server's certificate names (always `peer`).
    pub(crate) async fn probe(
        &self,
        addr: SocketAddr,
        peer: NodeId,
        timeout: Duration,
    ) -> std::result::Result<NodeId, ProbeError> {
        let name = ServerName::try_from(node_certificate_name(peer))
            .map_err(|e| ProbeError::Handshake(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(ProbeError::Connect)?;
            let mut tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(ProbeError::Handshake)?;
            let (_, connection) = tls.get_ref();
            let proved = connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .ok_or_else(|| "no certificate presented".to_string())
                .and_then(|certificate| node_id_of_certificate(certificate));
            // Best effort: the proof is already in hand.
            let _ = tls.shutdown().await;
            match proved {
                Ok(id) if id == peer => Ok(id),
                Ok(id) => Err(ProbeError::WrongNode {
                    expected: peer,
                    problem: format!("it names node {id}"),
                }),
                Err(problem) => Err(ProbeError::WrongNode {
                    expected: peer,
                    problem,
                }),
            }
        };
        let proved = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ProbeError::TimedOut(timeout))
            .and_then(|proved| proved);
        if proved.is_err() {
            self.probes_failed.fetch_add(1, Ordering::Relaxed);
        }
        proved
    }

    /// Runs the acceptor's handshake on `tcp`; returns the stream and the node id the
    /// peer's verified certificate names.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::result::Result<(BoxedStream, NodeId), AcceptError> {
        let tls = self
            .acceptor
            .accept(tcp)
            .await
            .map_err(AcceptError::Handshake)?;
        let (_, connection) = tls.get_ref();
        // rustls only completes a handshake with a verified client certificate, so the
        // list is there; a missing one is still an error, not a panic.
        let certificate = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or_else(|| AcceptError::NoNodeId("no certificate presented".to_string()))?;
        let node_id = node_id_of_certificate(certificate).map_err(AcceptError::NoNodeId)?;
        Ok((Box::new(tls), node_id))
    }

    /// Counts an inbound connection refused.
    pub(crate) fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Inbound connections refused so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Probes that failed so far.
    pub(crate) fn probes_failed(&self) -> u64 {
        self.probes_failed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use copycat_testkit::credentials::{DevCa, NodeCredentials};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// The transport TLS of `creds` (PEM crosses from the testkit's copycat to this one).
    fn tls(creds: &NodeCredentials) -> TransportTls {
        let identity = TlsIdentity::from_pem(
            creds.ca_pem.as_bytes(),
            creds.cert_pem.as_bytes(),
            creds.key_pem.as_bytes(),
        )
        .expect("identity");
        TransportTls::new(&identity).expect("tls")
    }

    /// Dials `server` at a fresh listener, expecting the node `expected`; returns what the
    /// dialer got and what the acceptor got.
    async fn dial(
        client: &TransportTls,
        server: &TransportTls,
        expected: NodeId,
    ) -> (
        io::Result<BoxedStream>,
        std::result::Result<NodeId, AcceptError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accept = async {
            let (tcp, _) = listener.accept().await.expect("accept");
            match server.accept(tcp).await {
                Ok((mut stream, id)) => {
                    // Read the one byte the dialer sends after a successful handshake.
                    let _ = stream.read_u8().await;
                    Ok(id)
                }
                Err(e) => Err(e),
            }
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let mut stream = client.connect(tcp, expected).await?;
            stream.write_all(&[1]).await?;
            stream.flush().await?;
            Ok(stream)
        };
        tokio::join!(connect, accept)
    }

    #[test]
    fn the_dialer_refuses_a_server_that_is_not_the_node_it_dials() {
        let ca = DevCa::new("test CA").expect("CA");
        let (a, b) = (ca.issue(11).unwrap(), ca.issue(22).unwrap());
        let (tls_a, tls_b) = (tls(&a), tls(&b));
        crate::runtime::test_runtime().block_on(async {
            let (dialed, accepted) = dial(&tls_a, &tls_b, 22).await;
            assert!(dialed.is_ok(), "{:?}", dialed.err());
            assert_eq!(accepted.expect("accepted"), 11, "the id is the client's");
            // Node 22's certificate does not make it node 33.
            let (dialed, accepted) = dial(&tls_a, &tls_b, 33).await;
            let error = dialed.err().expect("refused").to_string();
            assert!(error.contains("33.node.copycat"), "{error}");
            assert!(matches!(accepted, Err(AcceptError::Handshake(_))));
        });
    }

    #[test]
    fn a_certificate_from_another_ca_fails_both_ways() {
        let (ca, rogue_ca) = (DevCa::new("CA").unwrap(), DevCa::new("rogue").unwrap());
        let (good, rogue) = (ca.issue(11).unwrap(), rogue_ca.issue(22).unwrap());
        let (tls_good, tls_rogue) = (tls(&good), tls(&rogue));
        crate::runtime::test_runtime().block_on(async {
            let (dialed, accepted) = dial(&tls_rogue, &tls_good, 11).await;
            assert!(dialed.is_err() && accepted.is_err(), "rogue client");
            let (dialed, accepted) = dial(&tls_good, &tls_rogue, 22).await;
            assert!(dialed.is_err() && accepted.is_err(), "rogue server");
        });
    }

    #[test]
    fn a_probe_reports_the_node_id_the_server_proves() {
        let ca = DevCa::new("CA").unwrap();
        let (a, b) = (ca.issue(11).unwrap(), ca.issue(22).unwrap());
        let (tls_a, tls_b) = (tls(&a), Arc::new(tls(&b)));
        let short = std::time::Duration::from_millis(300);
        crate::runtime::test_runtime().block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = tls_b.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let server = server.clone();
                    tokio::spawn(async move {
                        if let Ok((mut stream, _)) = server.accept(tcp).await {
                            let _ = stream.read_u8().await;
                        }
                    });
                }
            });
            let timeout = std::time::Duration::from_secs(5);
            assert_eq!(tls_a.probe(addr, 22, timeout).await.expect("proved"), 22);
            let refused = tls_a.probe(addr, 33, timeout).await;
            assert!(
                matches!(refused, Err(ProbeError::Handshake(_))),
                "{refused:?}"
            );
            // Nothing listens: no connection.
            let closed = {
                let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                l.local_addr().expect("addr")
            };
            let nobody = tls_a.probe(closed, 22, timeout).await;
            assert!(matches!(nobody, Err(ProbeError::Connect(_))), "{nobody:?}");
            // A listener that never answers: the deadline ends the probe.
            let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let started = std::time::Instant::now();
            let mute = tls_a.probe(silent.local_addr().unwrap(), 22, short).await;
            assert!(matches!(mute, Err(ProbeError::TimedOut(_))), "{mute:?}");
            assert!(started.elapsed() < timeout);
        });
    }
}
