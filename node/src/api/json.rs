//! How registry values look in the API's JSON. Node ids are decimal strings (a u64 does
//! not fit a JavaScript number); distances are 0 (same node), 1 (same datacenter), 2
//! (another datacenter).

use copycat::registry::{Change, Publication, RemovalReason, WatchEvent};
use copycat::{MemberStatus, NodeId};
use serde_json::{json, Value};

use super::query::distance_number;
use crate::publications::api_id;

/// Where the API answers from: this node and its datacenter, for distances.
#[derive(Debug, Clone)]
pub struct Vantage {
    /// This node.
    pub node: NodeId,
    /// Its datacenter.
    pub datacenter: String,
}

impl Vantage {
    /// A publication with its distance from here.
    pub fn publication(&self, p: &Publication) -> Value {
        json!({
            "id": api_id(&p.id),
            "name": p.name,
            "endpoint": p.endpoint,
            "node_id": p.id.node.to_string(),
            "datacenter": p.datacenter,
            "distance": distance_number(p.distance_from(self.node, &self.datacenter)),
            "concurrency": p.settings.concurrency,
            "queue_size": p.settings.queue_size,
            "max_distance": distance_number(p.settings.max_distance),
            "priority": p.settings.priority,
            "tags": p.settings.tags,
            "metadata": p.settings.metadata,
        })
    }

    /// The answer of `/v1/resolve`.
    pub fn resolved(&self, p: &Publication) -> Value {
        json!({
            "endpoint": p.endpoint,
            "node_id": p.id.node.to_string(),
            "datacenter": p.datacenter,
            "distance": distance_number(p.distance_from(self.node, &self.datacenter)),
            "priority": p.settings.priority,
            "publication_id": api_id(&p.id),
        })
    }

    /// One service of `/v1/ready`: the resolution plus the endpoint's host and port.
    pub fn ready(&self, name: &str, p: &Publication) -> Value {
        let mut value = self.resolved(p);
        let (host, port) = host_port(&p.endpoint).unzip();
        value["name"] = json!(name);
        value["host"] = json!(host);
        value["port"] = json!(port);
        value
    }

    /// One change of `/v1/watch`.
    pub fn change(&self, event: &WatchEvent) -> Value {
        let (kind, reason) = match event.change {
            Change::Added => ("added", None),
            Change::Changed => ("changed", None),
            Change::Removed(RemovalReason::Unpublished) => ("removed", Some("unpublished")),
            Change::Removed(RemovalReason::OwnerDead) => ("removed", Some("owner_dead")),
        };
        let mut value = json!({
            "kind": kind,
            "revision": event.revision,
            "publication": self.publication(&event.publication),
        });
        if let Some(reason) = reason {
            value["reason"] = json!(reason);
        }
        value
    }
}

/// A member of the cluster.
pub fn member(m: &MemberStatus) -> Value {
    json!({
        "node_id": m.node_id.to_string(),
        "addr": m.addr,
        "datacenter": m.datacenter,
        "state": m.state.to_string(),
        "down_for_ms": m.down_for.map(|d| d.as_millis() as u64),
    })
}

/// The host and port of an endpoint such as `http://127.0.0.1:9000/path`,
/// `127.0.0.1:9000` or `http://[::1]:80`; `None` when it names no port.
pub fn host_port(endpoint: &str) -> Option<(String, u16)> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(
            host_port("http://127.0.0.1:9000/x"),
            Some(("127.0.0.1".into(), 9000))
        );
        assert_eq!(host_port("10.0.0.1:80"), Some(("10.0.0.1".into(), 80)));
        assert_eq!(host_port("http://[::1]:8080"), Some(("::1".into(), 8080)));
        assert_eq!(host_port("http://user@h:1"), Some(("h".into(), 1)));
        assert_eq!(host_port("http://example.com/"), None);
        assert_eq!(host_port("unix:/tmp/sock"), None);
    }
}
