//! Secure clusters: TLS with node ids bound to certificates, sealed gossip whose identities
//! are bound to node ids (forged ones never reroute a member), key rotation,
//! and loading credentials from files.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use copycat::security::node_certificate_name;
use copycat::{Config, CopyCat, Error, GossipKey, Keyring, MemberState, Security, TlsIdentity};
use copycat_testkit::credentials::{random_node_id, DevCa, DevCredentials, NodeCredentials};
use copycat_testkit::gossip_forge::{ForgedInfo, ForgedMember};
use copycat_testkit::in_process::{self, collect, no_snapshot, wait_until, Cluster};

const T: Duration = Duration::from_secs(30);

/// Fresh credentials for `n` nodes.
fn credentials(n: usize) -> DevCredentials {
    DevCredentials::generate(n).expect("credentials")
}

/// A node outside the cluster's start-up set, joining through node 0 with `security`.
fn start_outsider(cluster: &Cluster, dir: &std::path::Path, security: Security) -> CopyCat {
    let peers = vec![cluster.node(0).gossip_addr().to_string()];
    let config = Config {
        security,
        ..in_process::config(dir, peers)
    };
    CopyCat::start(config).expect("outsider starts")
}

/// The alive members `node` lists (itself included).
fn alive(node: &CopyCat) -> Vec<u64> {
    node.members_blocking()
        .expect("members")
        .into_iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| m.node_id)
        .collect()
}

#[test]
fn a_secure_cluster_commits_on_every_node_under_the_certificates_ids() {
    let creds = credentials(3);
    let cluster = Cluster::start_secure(&creds);
    for (i, node) in cluster.running().enumerate() {
        assert_eq!(
            node.node_id(),
            creds.nodes[i].node_id,
            "the id is the certificate's"
        );
    }
    let id = copycat::new_data_structure_id();
    let subs: Vec<_> = cluster
        .running()
        .map(|n| n.subscribe(id, no_snapshot).expect("subscribe"))
        .collect();
    for i in 0..20u32 {
        subs[i as usize % 3]
            .propose_blocking(format!("v{i}").into_bytes(), T)
            .expect("acknowledged");
    }
    let streams: Vec<_> = subs.iter().map(|ds| collect(ds, 20, T)).collect();
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[0], streams[2]);
    for node in cluster.running() {
        let stats = node.security_stats();
        assert_eq!(stats.gossip_rejected, 0, "no gossip refused");
        assert_eq!(stats.connections_refused, 0, "no connection refused");
        assert_eq!(
            stats.gossip_identities_refused, 0,
            "every member proved at once"
        );
        assert!(stats.gossip_opened > 0, "gossip is sealed");
    }
}

#[test]
fn a_node_certified_by_another_ca_never_joins_a_raft_group() {
    let creds = credentials(3);
    let cluster = Cluster::start_secure(&creds);
    let rogue_ca = DevCa::new("rogue CA").expect("CA");
    let rogue = rogue_ca.issue(random_node_id()).expect("certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    // It holds the gossip key, so it is a gossip member: only TLS keeps it out.
    let security = Security {
        tls: Some(rogue.tls()),
        gossip_keys: Some(Keyring::new(creds.gossip_key.clone())),
    };
    let node = start_outsider(&cluster, dir.path(), security);
    let refused = || {
        let cluster_side: u64 = cluster
            .running()
            .map(|n| n.security_stats().connections_refused)
            .sum();
        cluster_side + node.security_stats().connections_refused
    };
    wait_until("handshakes with the rogue node fail", T, || refused() >= 3);
    let ds = new_group_on(cluster.node(0));
    ds.propose_blocking(b"still works".to_vec(), T)
        .expect("the cluster commits without the rogue node");
    wait_until("more failed handshakes", T, || refused() >= 6);
    assert!(
        !node.has_joined_blocking().expect("status"),
        "never in the directory"
    );
    assert!(node
        .hosted_data_structures_blocking()
        .expect("status")
        .is_empty());
    node.shutdown();
}

#[test]
fn a_node_without_the_gossip_key_is_never_a_member() {
    let creds = credentials(3);
    let cluster = Cluster::start_secure(&creds);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Valid certificates from the cluster's CA, but another gossip key, or none.
    let wrong_key = Security {
        tls: Some(creds.ca.issue(random_node_id()).unwrap().tls()),
        gossip_keys: Some(Keyring::new(GossipKey::generate())),
    };
    let plaintext = Security {
        tls: Some(creds.ca.issue(random_node_id()).unwrap().tls()),
        gossip_keys: None,
    };
    let outsiders = [
        start_outsider(&cluster, dir_a.path(), wrong_key),
        start_outsider(&cluster, dir_b.path(), plaintext),
    ];
    let rejected = || -> u64 {
        cluster
            .running()
            .map(|n| n.security_stats().gossip_rejected)
            .sum()
    };
    // Each outsider announces every 500 ms until answered.
    wait_until("the outsiders' datagrams are rejected", T, || {
        rejected() >= 6
    });
    for outsider in &outsiders {
        for node in cluster.running() {
            assert!(!alive(node).contains(&outsider.node_id()));
        }
        assert_eq!(alive(outsider), vec![outsider.node_id()], "it sees no one");
        outsider.shutdown();
    }
}

#[test]
fn a_hello_claiming_another_node_id_than_the_certificate_is_refused() {
    let creds = credentials(3);
    let cluster = Cluster::start_secure(&creds);
    let target = cluster.node(0);
    let (a, b) = (&creds.nodes[1], creds.nodes[2].node_id);
    let refused = || target.security_stats().connections_refused;
    // Control: claiming its own id passes the binding (the empty frame after it then
    // closes the connection for another reason, not counted as a refusal).
    let before = refused();
    speak_as(a, target, a.node_id);
    assert_eq!(refused(), before, "an honest hello is not refused");
    speak_as(a, target, b);
    wait_until("the lying hello is refused", T, || refused() == before + 1);
}

#[test]
fn a_peer_that_never_finishes_the_handshake_is_dropped() {
    let creds = credentials(1);
    let cluster = Cluster::start_secure(&creds);
    let node = cluster.node(0);
    let started = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(node.raft_addr()).unwrap();
    silent.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 64];
    // Some bytes of a TLS alert, maybe, then the end of the stream: never a timeout.
    while matches!(silent.read(&mut buf), Ok(n) if n > 0) {}
    assert!(
        started.elapsed() < T,
        "dropped at the handshake deadline (10 s)"
    );
    wait_until("the silent peer is counted", T, || {
        node.security_stats().connections_refused == 1
    });
}

/// Connects to `target` over TLS with `creds`, sends a `Hello` claiming `claimed` and an
/// empty frame, and reads until the target closes the connection.
fn speak_as(creds: &NodeCredentials, target: &CopyCat, claimed: u64) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(creds.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_slice(creds.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.as_bytes()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let name = ServerName::try_from(node_certificate_name(target.node_id())).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(target.raft_addr()).unwrap();
    tcp.set_read_timeout(Some(T)).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let mut frames = hello_frame(claimed);
    frames.extend_from_slice(&[0, 0, 0, 0]); // A frame without a body.
    tls.write_all(&frames).expect("handshake and write");
    tls.flush().unwrap();
    let mut sink = Vec::new();
    // Ends with EOF or an error once the target drops the connection.
    let _ = tls.read_to_end(&mut sink);
}

/// A length-prefixed `Frame { hello: Hello { version: 1, cluster: "copycat", node_id } }`,
/// encoded by hand (the wire types are internal to the library).
fn hello_frame(node_id: u64) -> Vec<u8> {
    let cluster = Config::default().cluster_name;
    let mut hello = vec![0x08, 1, 0x12, cluster.len() as u8];
    hello.extend_from_slice(cluster.as_bytes());
    hello.push(0x18);
    let mut v = node_id;
    while v >= 0x80 {
        hello.push((v as u8) | 0x80);
        v >>= 7;
    }
    hello.push(v as u8);
    let mut frame = vec![0x0A, hello.len() as u8];
    frame.extend_from_slice(&hello);
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&frame);
    out
}

/// How many gossip datagrams each running node opened so far.
fn gossip_opened(cluster: &Cluster) -> Vec<u64> {
    cluster
        .running()
        .map(|n| n.security_stats().gossip_opened)
        .collect()
}

/// One step of a key rotation, run on one node.
type KeyringStep<'a> = dyn Fn(&CopyCat) -> copycat::Result<()> + 'a;

#[test]
fn rotating_the_gossip_key_under_writes_loses_nothing() {
    let creds = credentials(3);
    let mut cluster = Cluster::start_secure(&creds);
    let id = copycat::new_data_structure_id();
    let subs: Vec<_> = cluster
        .running()
        .map(|n| n.subscribe(id, no_snapshot).expect("subscribe"))
        .collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ds, acked, stop) = (subs[0].clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let value = format!("w{i}").into_bytes();
                ds.propose_blocking(value.clone(), T).expect("acknowledged");
                acked.lock().unwrap().push(value);
                i += 1;
            }
        })
    };
    let writes_so_far = || acked.lock().unwrap().len();
    let old = creds.gossip_key.clone();
    let new = GossipKey::generate();
    // Each step on every node, in turn, with writes flowing between steps.
    let steps: [&KeyringStep<'_>; 3] = [
        &|n| n.install_gossip_key(new.clone()),
        &|n| n.use_gossip_key(&new),
        &|n| n.remove_gossip_key(&old),
    ];
    for step in steps {
        for node in cluster.running() {
            step(node).expect("keyring step");
            // Gossip and writes cross every intermediate state of the keyrings.
            let (writes, opened) = (writes_so_far(), gossip_opened(&cluster));
            wait_until("writes and gossip go on", T, || {
                let now = gossip_opened(&cluster);
                writes_so_far() > writes + 5 && now.iter().zip(&opened).all(|(n, o)| n >= &(o + 3))
            });
        }
    }
    let seen = writes_so_far();
    wait_until("writes go on after the rotation", T, || {
        writes_so_far() > seen + 20
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    for node in cluster.running() {
        assert_eq!(node.gossip_keys(), Some(Keyring::new(new.clone())));
        assert_eq!(node.security_stats().gossip_rejected, 0, "no datagram lost");
        assert_eq!(alive(node).len(), 3, "membership intact");
    }
    let acked = acked.lock().unwrap().clone();
    for ds in &subs {
        let got: Vec<_> = collect(ds, acked.len(), T)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, acked, "every acknowledged write, in order");
    }
    // The cluster now gossips under the new key only: a node holding just that key joins.
    let late = creds.ca.issue(random_node_id()).expect("certificate");
    cluster.security.push(Security {
        tls: Some(late.tls()),
        gossip_keys: Some(Keyring::new(new.clone())),
    });
    cluster.add_node();
    cluster.wait_members(4);
}

#[test]
fn keyring_operations_refuse_what_would_break_gossip() {
    let creds = credentials(1);
    let cluster = Cluster::start_secure(&creds);
    let node = cluster.node(0);
    let other = GossipKey::generate();
    assert!(matches!(
        node.use_gossip_key(&other),
        Err(Error::GossipKey(_))
    ));
    assert!(matches!(
        node.remove_gossip_key(&creds.gossip_key),
        Err(Error::GossipKey(_))
    ));
    let plain = Cluster::start(1);
    assert!(matches!(
        plain.node(0).install_gossip_key(other),
        Err(Error::GossipKey(_))
    ));
    assert_eq!(plain.node(0).gossip_keys(), None);
}

#[test]
fn credentials_load_from_files_with_clear_errors() {
    let creds = credentials(2);
    let dir = tempfile::tempdir().unwrap();
    creds.write_to(dir.path()).unwrap();
    let p = |name: &str| dir.path().join(name);
    let security = Security::from_files(
        p("ca.pem"),
        p("node0.pem"),
        p("node0.key"),
        p("cluster.key"),
    )
    .expect("a generated set loads");
    assert_eq!(security.tls.unwrap().node_id(), creds.nodes[0].node_id);
    assert_eq!(
        security.gossip_keys.unwrap().primary(),
        &creds.gossip_key,
        "the key file round-trips"
    );

    let err = |ca: &str, cert: &str, key: &str| -> String {
        match TlsIdentity::from_files(p(ca), p(cert), p(key)) {
            Err(e @ Error::Credentials(_)) => e.to_string(),
            other => panic!("expected Error::Credentials, got {other:?}"),
        }
    };
    let missing = err("ca.pem", "nope.pem", "node0.key");
    assert!(missing.contains("nope.pem"), "{missing}");
    std::fs::write(p("garbage.pem"), "not PEM at all").unwrap();
    let bad = err("ca.pem", "garbage.pem", "node0.key");
    assert!(
        bad.contains("garbage.pem") && bad.contains("CERTIFICATE"),
        "{bad}"
    );
    let no_key = err("ca.pem", "node0.pem", "node0.pem");
    assert!(
        no_key.contains("node0.pem") && no_key.contains("private key"),
        "{no_key}"
    );
    let mismatch = err("ca.pem", "node0.pem", "node1.key");
    assert!(mismatch.contains("does not match"), "{mismatch}");

    let other_ca = DevCa::new("other").unwrap();
    std::fs::write(p("other-ca.pem"), other_ca.pem()).unwrap();
    let foreign = err("other-ca.pem", "node0.pem", "node0.key");
    assert!(foreign.contains("not valid under"), "{foreign}");

    let anonymous = creds
        .ca
        .issue_for_names(vec!["example.com".into()])
        .unwrap();
    std::fs::write(p("anon.pem"), &anonymous.cert_pem).unwrap();
    std::fs::write(p("anon.key"), &anonymous.key_pem).unwrap();
    let no_id = err("ca.pem", "anon.pem", "anon.key");
    assert!(no_id.contains("names no node id"), "{no_id}");
    let two = creds
        .ca
        .issue_for_names(vec![node_certificate_name(5), node_certificate_name(6)])
        .unwrap();
    std::fs::write(p("two.pem"), &two.cert_pem).unwrap();
    std::fs::write(p("two.key"), &two.key_pem).unwrap();
    let several = err("ca.pem", "two.pem", "two.key");
    assert!(several.contains("several node ids"), "{several}");

    match GossipKey::from_file(p("missing.key")) {
        Err(Error::GossipKey(msg)) => assert!(msg.contains("missing.key"), "{msg}"),
        other => panic!("expected Error::GossipKey, got {other:?}"),
    }
}

#[test]
fn a_data_dir_of_another_node_id_does_not_start_with_this_certificate() {
    let creds = credentials(2);
    let dir = tempfile::tempdir().unwrap();
    let start = |i: usize| {
        let config = Config {
            security: creds.security(i),
            ..in_process::config(dir.path(), Vec::new())
        };
        CopyCat::start(config)
    };
    let node = start(0).expect("first start adopts the certificate's id");
    assert_eq!(node.node_id(), creds.nodes[0].node_id);
    node.shutdown();
    drop(node);
    match start(1) {
        Err(e @ Error::NodeIdMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&creds.nodes[0].node_id.to_string()), "{msg}");
            assert!(msg.contains(&creds.nodes[1].node_id.to_string()), "{msg}");
        }
        other => panic!("expected NodeIdMismatch, got {other:?}"),
    }
    let again = start(0).expect("restarts with its own certificate");
    again.shutdown();
}

/// A subscription on `node` to a new data structure (created by its first proposal).
fn new_group_on(node: &CopyCat) -> copycat::DataStructure {
    node.subscribe(copycat::new_data_structure_id(), no_snapshot)
        .expect("subscribe")
}

/// The raft address `node` lists for member `id`, if it lists it.
fn listed_addr(node: &CopyCat, id: u64) -> Option<String> {
    node.members_blocking()
        .expect("members")
        .into_iter()
        .find(|m| m.node_id == id)
        .map(|m| m.addr)
}

/// A forged gossip member holding the cluster's gossip key: it gossips an identity claiming
/// `claimed` at `raft_addr`, with a bump above any real node's (theirs is the wall clock in
/// nanoseconds), and joins through node 0.
fn forge(
    cluster: &Cluster,
    creds: &DevCredentials,
    claimed: u64,
    raft_addr: SocketAddr,
) -> ForgedMember {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let info = ForgedInfo {
        node_id: claimed,
        raft_addr,
        gossip_addr: socket.local_addr().expect("addr"),
        datacenter: String::new(),
    };
    let cluster_name = Config::default().cluster_name;
    let seed = cluster.node(0).gossip_addr();
    ForgedMember::start(
        socket,
        &cluster_name,
        &creds.gossip_key,
        info,
        u64::MAX / 2,
        seed,
    )
    .expect("forged member starts")
}

#[test]
fn forged_gossip_identities_neither_reroute_members_nor_add_made_up_ones() {
    let creds = credentials(3);
    let cluster = Cluster::start_secure(&creds);
    // The insider: a member with the gossip key and a valid certificate of its own.
    let dir = tempfile::tempdir().expect("temp dir");
    let security = Security {
        tls: Some(creds.ca.issue(random_node_id()).expect("certificate").tls()),
        gossip_keys: Some(Keyring::new(creds.gossip_key.clone())),
    };
    let insider = start_outsider(&cluster, dir.path(), security);
    let ds = new_group_on(cluster.node(0));
    ds.propose_blocking(b"before".to_vec(), T)
        .expect("acknowledged");
    let real: Vec<(u64, String)> = (1..3)
        .map(|i| {
            (
                cluster.node(i).node_id(),
                cluster.node(i).raft_addr().to_string(),
            )
        })
        .collect();
    // Nodes 1 and 2 claimed at the insider's raft address (two of them: every write
    // needs one of them), and a node id nobody holds a certificate for.
    let made_up = random_node_id();
    let forgers: Vec<ForgedMember> = [real[0].0, real[1].0, made_up]
        .into_iter()
        .map(|claimed| forge(&cluster, &creds, claimed, insider.raft_addr()))
        .collect();
    wait_until("the forgers know every node", T, || {
        forgers.iter().all(|f| f.members() >= 4)
    });
    let rerouted = || {
        cluster.running().any(|node| {
            real.iter()
                .any(|(id, addr)| listed_addr(node, *id).is_some_and(|a| &a != addr))
                || listed_addr(node, made_up).is_some()
        })
    };
    // Every node probes every forged identity (3), and again after a failure: the
    // insider's listener refuses each handshake, its certificate naming another node.
    let probed = || {
        cluster
            .running()
            .all(|node| node.security_stats().gossip_identities_refused >= 6)
            && insider.security_stats().connections_refused >= 18
    };
    wait_until("the forgeries are probed twice, or admitted", T, || {
        probed() || rerouted()
    });
    assert!(
        !rerouted(),
        "a member was rerouted, or a made-up one admitted"
    );
    for i in 0..20u32 {
        ds.propose_blocking(format!("after {i}").into_bytes(), T)
            .expect("writes keep flowing");
    }
    assert!(
        !rerouted(),
        "a member was rerouted, or a made-up one admitted"
    );
    for node in cluster.running() {
        assert!(!alive(node).contains(&made_up));
    }
    drop(forgers);
    insider.shutdown();
}

#[test]
fn a_member_restarted_on_new_ports_is_admitted_under_tls() {
    let creds = credentials(3);
    let mut cluster = Cluster::start_secure(&creds);
    let ds = new_group_on(cluster.node(0));
    ds.propose_blocking(b"before".to_vec(), T)
        .expect("acknowledged");
    let (node, old) = (cluster.node(2).node_id(), cluster.node(2).raft_addr());
    cluster.stop(2);
    cluster.restart(2);
    let new = cluster.node(2).raft_addr().to_string();
    assert_ne!(new, old.to_string(), "ports 0: new ports");
    wait_until("node 0 lists node 2 at its new address", T, || {
        listed_addr(cluster.node(0), node).as_deref() == Some(new.as_str())
    });
    let restarted = cluster
        .node(2)
        .subscribe(ds.id(), no_snapshot)
        .expect("subscribe");
    restarted
        .propose_blocking(b"from the restarted node".to_vec(), T)
        .expect("acknowledged");
    ds.propose_blocking(b"after".to_vec(), T)
        .expect("acknowledged");
    assert_eq!(collect(&restarted, 3, T).len(), 3);
}
