//! Forged peer traffic for the attack tests: a TCP connection to a node's raft port that
//! says whatever an attacker wants, encoded by hand from the wire format
//! (`proto/copycat.proto`: a 4-byte big-endian length, then a `Frame`), independently of
//! the library's own encoder.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::Message as RaftMessage;

/// The protocol version the nodes speak (`PROTOCOL_VERSION` of the library).
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
struct Hello {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(string, tag = "2")]
    cluster: String,
    #[prost(uint64, tag = "3")]
    node_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GroupMessage {
    #[prost(bytes = "vec", tag = "1")]
    group: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    message: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReplicaGone {
    #[prost(bytes = "vec", tag = "1")]
    group: Vec<u8>,
    #[prost(uint64, tag = "2")]
    replica_id: u64,
    #[prost(uint64, tag = "3")]
    deleted: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Batch {
    #[prost(message, repeated, tag = "1")]
    messages: Vec<GroupMessage>,
    #[prost(message, repeated, tag = "6")]
    gone: Vec<ReplicaGone>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Frame {
    #[prost(oneof = "Body", tags = "1, 2")]
    body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Body {
    #[prost(message, tag = "1")]
    Hello(Hello),
    #[prost(message, tag = "2")]
    Batch(Batch),
}

/// A connection to one node's raft port, claiming to be node `claimed` of `cluster`.
pub struct ForgedPeer {
    stream: TcpStream,
}

impl ForgedPeer {
    /// Connects to `raft_addr` and sends a `Hello` naming `claimed` as this peer's node id.
    pub fn connect(raft_addr: SocketAddr, cluster: &str, claimed: u64) -> io::Result<ForgedPeer> {
        let stream = TcpStream::connect_timeout(&raft_addr, Duration::from_secs(5))?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut peer = ForgedPeer { stream };
        peer.send(Body::Hello(Hello {
            version: PROTOCOL_VERSION,
            cluster: cluster.to_string(),
            node_id: claimed,
        }))?;
        Ok(peer)
    }

    /// Sends raft messages of group `group` (its 16-byte id) in one batch.
    pub fn send_raft(&mut self, group: [u8; 16], messages: &[RaftMessage]) -> io::Result<()> {
        let mut encoded = Vec::with_capacity(messages.len());
        for msg in messages {
            let message = msg.write_to_bytes().map_err(io::Error::other)?;
            encoded.push(GroupMessage {
                group: group.to_vec(),
                message,
            });
        }
        self.send(Body::Batch(Batch {
            messages: encoded,
            gone: Vec::new(),
        }))
    }

    /// Claims that replica `replica` of `group` was deleted (as `deleted`).
    pub fn send_replica_gone(
        &mut self,
        group: [u8; 16],
        replica: u64,
        deleted: u64,
    ) -> io::Result<()> {
        self.send(Body::Batch(Batch {
            messages: Vec::new(),
            gone: vec![ReplicaGone {
                group: group.to_vec(),
                replica_id: replica,
                deleted,
            }],
        }))
    }

    fn send(&mut self, body: Body) -> io::Result<()> {
        let frame = prost::Message::encode_to_vec(&Frame { body: Some(body) });
        let len = u32::try_from(frame.len()).map_err(io::Error::other)?;
        self.stream.write_all(&len.to_be_bytes())?;
        self.stream.write_all(&frame)?;
        self.stream.flush()
    }
}
