//! Tests of the binding between a gossip identity's node id and its raft address: real
//! sealed gossip and real TLS listeners on loopback, with a forger holding the gossip key
//! and a valid certificate of its own.

use super::*;
use crate::runtime::tls::TransportTls;
use crate::runtime::transport::{Transport, TransportConfig, TransportLimits};
use crate::security::{GossipKey, Keyring, TlsIdentity};
use copycat_testkit::credentials::{DevCa, NodeCredentials};

/// Node ids of the certificates the tests issue.
const A: NodeId = 1001;
const B: NodeId = 1002;
const MALLORY: NodeId = 1003;
/// A node id nobody holds a certificate for.
const MADE_UP: NodeId = 4242;

/// Deadline of every awaited condition.
const WAIT: Duration = Duration::from_secs(20);

/// The cluster's CA, certificates and gossip key.
struct Credentials {
    /// Issues the certificates.
    ca: DevCa,
    /// The gossip key every test node (the forger included) holds.
    key: GossipKey,
}

impl Credentials {
    fn new() -> Self {
        Credentials {
            ca: DevCa::new("binding tests CA").expect("CA"),
            key: GossipKey::generate(),
        }
    }

    /// The transport TLS of a certificate for `node` (PEM crosses from the testkit's
    /// copycat to this one).
    fn tls(&self, node: NodeId) -> Arc<TransportTls> {
        let creds: NodeCredentials = self.ca.issue(node).expect("certificate");
        let identity = TlsIdentity::from_pem(
            creds.ca_pem.as_bytes(),
            creds.cert_pem.as_bytes(),
            creds.key_pem.as_bytes(),
        )
        .expect("identity");
        Arc::new(TransportTls::new(&identity).expect("tls"))
    }
}

/// A gossip node with TLS: its gossip and the TLS listener at its advertised raft address.
struct SecureNode {
    /// The gossip side.
    node: TestNode,
    /// Accepts at `node.info.raft_addr` with the node's certificate.
    transport: Transport,
    /// The transport's TLS, for its refusal counter.
    tls: Arc<TransportTls>,
}

impl SecureNode {
    /// Stops gossip abruptly and closes the listener.
    fn stop(self) {
        drop(self.node);
        self.transport.shutdown();
    }
}

/// Starts a node holding the certificate of `certified` that gossips an identity naming
/// `claimed` (an honest node claims its own id), its raft address being its own listener.
fn start_secure(
    rt: &tokio::runtime::Runtime,
    creds: &Credentials,
    certified: NodeId,
    claimed: NodeId,
    seeds: Vec<SocketAddr>,
) -> SecureNode {
    let tls = creds.tls(certified);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let raft_addr = listener.local_addr().expect("addr");
    let transport = Transport::start(
        rt.handle(),
        listener,
        TransportConfig {
            cluster: CLUSTER.to_owned(),
            node_id: certified,
            max_frame_bytes: 1 << 20,
            logger: logger(),
            tls: Some(tls.clone()),
            limits: TransportLimits::default(),
        },
        Arc::new(|_, _| {}),
        Arc::new(|_| {}),
    )
    .expect("transport");
    let socket = bind();
    let info = NodeInfo {
        node_id: claimed,
        raft_addr,
        gossip_addr: socket.local_addr().expect("addr"),
        datacenter: "dc".to_owned(),
    };
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let gossip = Gossip::start(
        rt.handle(),
        socket,
        GossipConfig {
            cluster: CLUSTER.to_owned(),
            me: info.clone(),
            seeds,
            rng_seed: certified,
            logger: logger(),
            seal: Some(Arc::new(GossipSeal::new(
                CLUSTER,
                Keyring::new(creds.key.clone()),
            ))),
            tls: Some(tls.clone()),
        },
        Arc::new(move |e| sink.lock().unwrap().push(e)),
    )
    .expect("start gossip");
    SecureNode {
        node: TestNode {
            gossip,
            info,
            events,
        },
        transport,
        tls,
    }
}

/// Starts A and B, B joining through A, and waits until they see each other.
fn honest_pair(rt: &tokio::runtime::Runtime, creds: &Credentials) -> (SecureNode, SecureNode) {
    let a = start_secure(rt, creds, A, A, vec![]);
    let b = start_secure(rt, creds, B, B, vec![a.node.info.gossip_addr]);
    wait_full_view(&[&a.node, &b.node], WAIT);
    (a, b)
}

/// Whether `node` ever reported `info`'s node up with another raft address than
/// `info`'s.
fn saw_up_elsewhere(node: &TestNode, info: &NodeInfo) -> bool {
    node.events().iter().any(|e| {
        matches!(e, MembershipEvent::Up(up)
            if up.node_id == info.node_id && up.raft_addr != info.raft_addr)
    })
}

/// Mallory holds the gossip key and a valid certificate of its own, and gossips an identity
/// claiming B's node id with its own addresses and a higher bump (it starts later): A's
/// probe of Mallory's raft address meets Mallory's certificate, so B keeps its addresses.
#[test]
fn a_forged_identity_with_a_higher_bump_does_not_reroute_a_member() {
    let rt = runtime();
    let creds = Credentials::new();
    let (a, b) = honest_pair(&rt, &creds);
    let forger = start_secure(&rt, &creds, MALLORY, B, vec![a.node.info.gossip_addr]);
    wait_for("the forger hears from A", WAIT, || {
        forger.node.member_ids().contains(&A)
    });
    // Two failed probes: the forgery reached A, was refused, and was retried.
    wait_for("A's probes of the forgery fail", WAIT, || {
        a.tls.probes_failed() >= 2 && forger.tls.refused() >= 2
    });
    assert_eq!(a.node.gossip.members(), vec![b.node.info.clone()]);
    assert!(
        !saw_up_elsewhere(&a.node, &b.node.info),
        "B was never rerouted: {:?}",
        a.node.events()
    );
    forger.stop();
    b.stop();
    a.stop();
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Mallory gossips an identity with a node id nobody holds a certificate for: it is never
/// reported up.
#[test]
fn a_made_up_node_id_is_never_up() {
    let rt = runtime();
    let creds = Credentials::new();
    let (a, b) = honest_pair(&rt, &creds);
    let forger = start_secure(&rt, &creds, MALLORY, MADE_UP, vec![a.node.info.gossip_addr]);
    wait_for("A's probes of the made-up member fail", WAIT, || {
        a.tls.probes_failed() >= 2 && forger.tls.refused() >= 2
    });
    assert_eq!(a.node.gossip.members(), vec![b.node.info.clone()]);
    let up = |e: &MembershipEvent| matches!(e, MembershipEvent::Up(i) if i.node_id == MADE_UP);
    assert!(!a.node.events().iter().any(up), "{:?}", a.node.events());
    assert!(!b.node.events().iter().any(up), "{:?}", b.node.events());
    forger.stop();
    b.stop();
    a.stop();
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// B restarts on new ports with its own certificate: its new identity is proved and
/// admitted, and B is never reported down meanwhile (its old identity stands for it until
/// the new one is proved, and dies after).
#[test]
fn a_member_restarted_on_new_ports_is_admitted() {
    let rt = runtime();
    let creds = Credentials::new();
    let (a, b) = honest_pair(&rt, &creds);
    let downs_before = a.node.gossip.foca_downs();
    b.stop();
    let b2 = start_secure(&rt, &creds, B, B, vec![a.node.info.gossip_addr]);
    wait_full_view(&[&a.node, &b2.node], WAIT);
    wait_for("A's foca declares B's old identity down", WAIT, || {
        a.node.gossip.foca_downs() > downs_before
    });
    assert_eq!(a.node.gossip.members(), vec![b2.node.info.clone()]);
    assert!(!saw_down(&a.node, B), "{:?}", a.node.events());
    b2.stop();
    a.stop();
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// An identity of node 3 (gossiping on `port`) with `bump`.
fn identity(port: u16, bump: u64) -> GossipIdentity {
    GossipIdentity {
        info: info(3, port),
        bump,
    }
}

/// Only proved identities represent a node; a pending one keeps the previous
/// representative, a refuted one does not.
#[test]
fn view_admits_only_proved_identities() {
    use Verification::{Pending, Refuted, Verified};
    let real = identity(7000, 10);
    let forged = identity(7100, 99);
    let made_up = GossipIdentity {
        info: info(4, 7200),
        bump: 1,
    };
    let status = |verified: &[&GossipIdentity], pending: &[&GossipIdentity]| {
        let verified: Vec<GossipIdentity> = verified.iter().map(|i| (*i).clone()).collect();
        let pending: Vec<GossipIdentity> = pending.iter().map(|i| (*i).clone()).collect();
        move |i: &GossipIdentity| {
            if verified.contains(i) {
                Verified
            } else if pending.contains(i) {
                Pending
            } else {
                Refuted
            }
        }
    };
    let all = [&real, &forged, &made_up];
    // Nothing proved yet: nothing is up.
    let (view, events) = diff_view(&HashMap::new(), all.into_iter(), 1, |_| Pending);
    assert!(view.is_empty() && events.is_empty());
    // The real identity is proved: up; the forged one's higher bump changes nothing,
    // pending or refuted, and the made-up node never appears.
    let (view, events) = diff_view(&view, all.into_iter(), 1, status(&[&real], &[&forged]));
    assert_eq!(events, vec![MembershipEvent::Up(real.info.clone())]);
    let (view, events) = diff_view(&view, all.into_iter(), 1, status(&[&real], &[]));
    assert!(events.is_empty());
    // Restart on new ports: the old life is gone, the new one pending keeps the old
    // representative; proved, it is up; refuted, the node is down.
    let restarted = identity(7300, 20);
    let now = [&restarted];
    let (kept, events) = diff_view(&view, now.into_iter(), 1, status(&[], &[&restarted]));
    assert!(events.is_empty());
    assert_eq!(kept, view);
    let (_, events) = diff_view(&kept, now.into_iter(), 1, status(&[&restarted], &[]));
    assert_eq!(events, vec![MembershipEvent::Up(restarted.info.clone())]);
    let (gone, events) = diff_view(&kept, now.into_iter(), 1, status(&[], &[]));
    assert_eq!(events, vec![MembershipEvent::Down(3)]);
    assert!(gone.is_empty());
}

/// An identity of `node` whose raft address is loopback `port` (nothing listens there).
fn bound(node: NodeId, port: u16) -> GossipIdentity {
    GossipIdentity {
        info: NodeInfo {
            node_id: node,
            raft_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            datacenter: String::new(),
        },
        bump: 1,
    }
}

/// The verifier's bounds (probes at once, bindings tracked) and its rules: a proved
/// binding survives fewer than `RECHECK_FAILURES` failed rechecks, and proving a node's
/// new address rechecks its old one at once.
#[test]
fn the_verifier_is_bounded_and_rechecks_a_moved_node() {
    use super::super::verify::*;
    let creds = Credentials::new();
    runtime().block_on(async {
        let mut verifier = Verifier::new(creds.tls(A), logger());
        let now = Instant::now();
        let many: Vec<GossipIdentity> = (0..MAX_TRACKED as u64 + 10)
            .map(|i| bound(5000 + i, 1))
            .collect();
        verifier.track(many.iter(), A, now);
        assert_eq!(verifier.running(), MAX_CONCURRENT_PROBES);
        assert_eq!(verifier.tracked(), MAX_TRACKED);
        let last = many.last().expect("identities");
        assert_eq!(
            verifier.verification(last),
            Verification::Refuted,
            "untracked"
        );
        assert_eq!(verifier.verification(&many[0]), Verification::Pending);
        assert_eq!(verifier.next_due(), None, "no free slot");

        // Only the node's identities stay tracked; nothing else is probed meanwhile.
        let (old, new) = (bound(B, 2), bound(B, 3));
        verifier.track([&old, &new].into_iter(), A, now);
        assert_eq!(verifier.tracked(), 2);
        let proved = |v: &mut Verifier, i: &GossipIdentity, at| {
            v.on_outcome(((B, i.info.raft_addr), Ok(B)), at)
        };
        let failed = |v: &mut Verifier, i: &GossipIdentity, at| {
            let e = std::io::Error::other("test");
            let refused = crate::runtime::tls::ProbeError::Connect(e);
            v.on_outcome(((B, i.info.raft_addr), Err(refused)), at)
        };
        assert!(proved(&mut verifier, &old, now), "pending to verified");
        for _ in 1..RECHECK_FAILURES {
            assert!(!failed(&mut verifier, &old, now), "still verified");
        }
        assert!(failed(&mut verifier, &old, now), "refuted at last");
        assert_eq!(verifier.verification(&old), Verification::Refuted);
        assert!(proved(&mut verifier, &old, now), "proved again");
        // B moved: proving its new address makes its old one due at once (or probed).
        let later = now + Duration::from_secs(1);
        assert_eq!(verifier.due(&old), Some(Some(now + RECHECK_EVERY)));
        assert!(proved(&mut verifier, &new, later));
        let due = verifier.due(&old).expect("tracked");
        assert!(due.is_none_or(|at| at <= later), "{due:?}");
    });
}
