//! A node's TLS credentials and the node id its certificate names.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::error::{Error, Result};
use crate::id::NodeId;

/// The DNS name suffix of the subject alternative name that carries a node's id.
pub const NODE_NAME_SUFFIX: &str = ".node.copycat";

/// The DNS subject alternative name a certificate carries for node `id`:
/// `<id in decimal>.node.copycat`, e.g. `123456789.node.copycat`.
///
/// A DNS name (rather than a URI) so that dialing node X is standard TLS server name
/// verification against X's name. Certificates for copycat nodes carry exactly one such
/// name, and allow both the server and the client usage (every node dials and accepts).
pub fn node_certificate_name(id: NodeId) -> String {
    format!("{id}{NODE_NAME_SUFFIX}")
}

/// The node id a certificate (DER) names: the one name `<id>.node.copycat` among its DNS
/// subject alternative names, a nonzero id of at most 48 bits. Any other names are ignored.
///
/// Fails (with a message for an error) when the certificate does not parse, names no node
/// id, names an invalid one, or names several different ones.
pub(crate) fn node_id_of_certificate(der: &[u8]) -> std::result::Result<NodeId, String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?;
    let mut ids = Vec::new();
    for name in san.iter().flat_map(|san| san.value.general_names.iter()) {
        if let GeneralName::DNSName(dns) = name {
            if let Some(id) = node_id_of_name(dns)? {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [id] => Ok(*id),
        [] => Err(format!(
            "the certificate names no node id (a DNS subject alternative name like {})",
            node_certificate_name(1)
        )),
        several => Err(format!(
            "the certificate names several node ids ({several:?}); it must name one"
        )),
    }
}

/// The node id of one DNS name: `None` if it is not a node name, an error if it is one
/// with an invalid id.
fn node_id_of_name(dns: &str) -> std::result::Result<Option<NodeId>, String> {
    let split = dns.len().checked_sub(NODE_NAME_SUFFIX.len());
    let Some(split) = split.filter(|at| dns.is_char_boundary(*at)) else {
        return Ok(None);
    };
    let (digits, suffix) = dns.split_at(split);
    if !suffix.eq_ignore_ascii_case(NODE_NAME_SUFFIX) {
        return Ok(None);
    }
    let id: NodeId = digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
        .ok_or_else(|| format!("{dns:?}: the node id is not a decimal number"))?;
    if id == 0 || crate::id::node_of(id) != id {
        return Err(format!("{dns:?}: a node id is nonzero and fits in 48 bits"));
    }
    Ok(Some(id))
}

/// The crypto provider of every TLS object copycat builds (ring: it builds with a C
/// compiler alone). Passed explicitly, so the process-wide default stays the application's.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS credentials: the cluster's CA certificates, the node's certificate chain
/// (its own certificate first) and private key, and the node id the certificate names.
///
/// Checked when loaded: the key matches the certificate, the certificate chains to the CA
/// for both client and server use, and it names exactly one node id (see
/// [`node_certificate_name`]). With TLS configured, that id is the node's id.
/// Cheap to clone. `Debug` shows the node id, never the key.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The loaded credentials.
    inner: Arc<Credentials>,
}

/// What a [`TlsIdentity`] holds.
struct Credentials {
    /// Trust anchors: a peer's certificate must chain to one of them.
    roots: Arc<RootCertStore>,
    /// This node's certificate first, then any intermediates.
    chain: Vec<CertificateDer<'static>>,
    /// This node's private key.
    key: PrivateKeyDer<'static>,
    /// The node id the certificate names.
    node_id: NodeId,
}

/// Where each PEM input came from, for error messages.
struct Labels<'a> {
    ca: &'a str,
    cert: &'a str,
    key: &'a str,
}

impl TlsIdentity {
    /// Loads the CA certificate(s), this node's certificate chain and its private key from
    /// PEM files.
    ///
    /// Fails with [`Error::Credentials`] naming the file and the problem: missing or
    /// unreadable, no PEM item of the right kind, key not matching the certificate,
    /// certificate not signed by the CA or naming no node id.
    pub fn from_files(
        ca: impl AsRef<Path>,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsIdentity> {
        let (ca, cert, key) = (ca.as_ref(), cert.as_ref(), key.as_ref());
        let read = |path: &Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                Error::Credentials(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let (ca_pem, cert_pem, key_pem) = (
            read(ca, "CA file")?,
            read(cert, "certificate file")?,
            read(key, "key file")?,
        );
        let labels = Labels {
            ca: &format!("CA file {}", ca.display()),
            cert: &format!("certificate file {}", cert.display()),
            key: &format!("key file {}", key.display()),
        };
        Self::load(&ca_pem, &cert_pem, &key_pem, &labels)
    }

    /// [`TlsIdentity::from_files`] with the PEM text in memory.
    pub fn from_pem(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsIdentity> {
        let labels = Labels {
            ca: "CA PEM",
            cert: "certificate PEM",
            key: "key PEM",
        };
        Self::load(ca_pem, cert_pem, key_pem, &labels)
    }

    /// The node id the certificate names.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The trust anchors peers' certificates must chain to.
    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.inner.roots.clone()
    }

    /// This node's certificate chain, its own certificate first.
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.inner.chain.clone()
    }

    /// This node's private key.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.inner.key.clone_key()
    }

    /// Parses and checks the three PEM inputs.
    fn load(ca: &[u8], cert: &[u8], key: &[u8], labels: &Labels<'_>) -> Result<TlsIdentity> {
        let fail = |what: &str, msg: String| Error::Credentials(format!("{what}: {msg}"));
        let ca_certs = certificates(ca).map_err(|m| fail(labels.ca, m))?;
        let chain = certificates(cert).map_err(|m| fail(labels.cert, m))?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| fail(labels.key, format!("no usable private key in PEM: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in ca_certs {
            roots
                .add(ca_cert)
                .map_err(|e| fail(labels.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let provider = provider();
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
            .map_err(|e| fail(labels.key, format!("does not match {} ({e})", labels.cert)))?;
        let node_id = node_id_of_certificate(&chain[0]).map_err(|m| fail(labels.cert, m))?;
        let roots = Arc::new(roots);
        verify_chain(&roots, &chain, node_id, &provider).map_err(|m| {
            fail(
                labels.cert,
                format!("not valid under the {}: {m}", labels.ca),
            )
        })?;
        Ok(TlsIdentity {
            inner: Arc::new(Credentials {
                roots,
                chain,
                key,
                node_id,
            }),
        })
    }
}

/// Every certificate of a PEM text; fails if there is none or one does not decode.
fn certificates(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE item in PEM".to_string());
    }
    Ok(certs)
}

/// Checks that `chain` is what peers will accept: signed by `roots`, valid now, usable
/// as a client certificate and as the server certificate of `node_id`.
fn verify_chain(
    roots: &Arc<RootCertStore>,
    chain: &[CertificateDer<'static>],
    node_id: NodeId,
    provider: &Arc<CryptoProvider>,
) -> std::result::Result<(), String> {
    let now = UnixTime::now();
    let (end_entity, intermediates) = (&chain[0], &chain[1..]);
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    client
        .verify_client_cert(end_entity, intermediates, now)
        .map_err(|e| format!("as a client certificate: {e}"))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node_certificate_name(node_id)).map_err(|e| e.to_string())?;
    server
        .verify_server_cert(end_entity, intermediates, &name, &[], now)
        .map_err(|e| format!("as the server certificate of {name:?}: {e}"))?;
    Ok(())
}

impl fmt::Debug for TlsIdentity {
    /// The node id and the chain's length; never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("node_id", &self.inner.node_id)
            .field("chain_len", &self.inner.chain.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse_back() {
        assert_eq!(node_id_of_name(&node_certificate_name(42)), Ok(Some(42)));
        assert_eq!(node_id_of_name("42.NODE.copycat"), Ok(Some(42)));
        assert_eq!(node_id_of_name("example.com"), Ok(None));
        assert_eq!(node_id_of_name("copycat"), Ok(None));
        assert!(node_id_of_name("0.node.copycat").is_err());
        assert!(node_id_of_name("+4.node.copycat").is_err());
        assert!(node_id_of_name("x.node.copycat").is_err());
        assert!(node_id_of_name(&format!("{}.node.copycat", 1u64 << 48)).is_err());
    }
}
