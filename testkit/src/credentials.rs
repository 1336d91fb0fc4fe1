//! Development credentials for a secure cluster: a CA, a certificate and key per node
//! naming its node id, and a gossip key. Used by the `keys` example (which writes them to
//! files), `bench --secure` and the security tests.
//!
//! Node certificates follow what copycat expects (see `copycat::TlsIdentity`): one DNS
//! subject alternative name `<node id>.node.copycat`, ECDSA P-256 keys, and both the
//! server and the client extended key usage (each node dials and accepts).

use std::io::Write;
use std::path::Path;

use copycat::security::node_certificate_name;
use copycat::{GossipKey, Keyring, Security, TlsIdentity};
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A result whose error is a message.
pub type Result<T> = std::result::Result<T, String>;

/// A random node id: nonzero, 48 bits (what copycat draws for a node without TLS).
pub fn random_node_id() -> u64 {
    rand::thread_rng().gen_range(1..(1u64 << 48))
}

/// A development certificate authority that signs node certificates.
pub struct DevCa {
    /// The CA's certificate and signing key.
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Result<DevCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(text)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(text)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(text)?;
        Ok(DevCa { issuer })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and key for node `node_id`.
    pub fn issue(&self, node_id: u64) -> Result<NodeCredentials> {
        let mut creds = self.issue_for_names(vec![node_certificate_name(node_id)])?;
        creds.node_id = node_id;
        Ok(creds)
    }

    /// A certificate with exactly these subject alternative names (for tests of
    /// certificates that name no node id, or several); its `node_id` is 0.
    pub fn issue_for_names(&self, names: Vec<String>) -> Result<NodeCredentials> {
        let mut params = CertificateParams::new(names).map_err(text)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "copycat node");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(text)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(text)?;
        Ok(NodeCredentials {
            node_id: 0,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.pem(),
        })
    }
}

/// One node's certificate and key, with the CA that signed them.
#[derive(Clone)]
pub struct NodeCredentials {
    /// The node id the certificate names.
    pub node_id: u64,
    /// The node's certificate, PEM.
    pub cert_pem: String,
    /// The node's private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

impl NodeCredentials {
    /// The node's [`TlsIdentity`], trusting the CA that issued it.
    pub fn tls(&self) -> TlsIdentity {
        TlsIdentity::from_pem(
            self.ca_pem.as_bytes(),
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
        )
        .expect("generated credentials load")
    }
}

/// A whole development cluster's credentials: a CA, `n` nodes' certificates and keys (with
/// random node ids), and a gossip key.
pub struct DevCredentials {
    /// The CA.
    pub ca: DevCa,
    /// Node `i`'s certificate and key.
    pub nodes: Vec<NodeCredentials>,
    /// The cluster's gossip key.
    pub gossip_key: GossipKey,
}

impl DevCredentials {
    /// Fresh credentials for `n` nodes.
    pub fn generate(n: usize) -> Result<DevCredentials> {
        let ca = DevCa::new("copycat development CA")?;
        let nodes = (0..n)
            .map(|_| ca.issue(random_node_id()))
            .collect::<Result<Vec<_>>>()?;
        Ok(DevCredentials {
            ca,
            nodes,
            gossip_key: GossipKey::generate(),
        })
    }

    /// Node `i`'s security settings: its TLS identity and the gossip key.
    pub fn security(&self, i: usize) -> Security {
        Security {
            tls: Some(self.nodes[i].tls()),
            gossip_keys: Some(Keyring::new(self.gossip_key.clone())),
        }
    }

    /// Writes `cluster.key`, `ca.pem`, and `node{i}.pem` and `node{i}.key` for every node
    /// into `dir` (created if needed); key files are readable by their owner only.
    pub fn write_to(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        write_file(dir, "cluster.key", &self.gossip_key.to_hex(), true)?;
        write_file(dir, "ca.pem", &self.ca.pem(), false)?;
        for (i, node) in self.nodes.iter().enumerate() {
            write_file(dir, &format!("node{i}.pem"), &node.cert_pem, false)?;
            write_file(dir, &format!("node{i}.key"), &node.key_pem, true)?;
        }
        Ok(())
    }
}

/// Writes `contents` to `dir/name`, mode 0600 if `secret` (on Unix), else 0644.
fn write_file(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<()> {
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let _ = secret;
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = options.open(&path).map_err(fail)?;
    // The mode only applies to a new file: an existing one is narrowed here.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    file.write_all(contents.as_bytes()).map_err(fail)?;
    if !contents.ends_with('\n') {
        file.write_all(b"\n").map_err(fail)?;
    }
    Ok(())
}

/// An error's message.
fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}
