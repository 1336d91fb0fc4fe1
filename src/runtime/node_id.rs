//! The node's persistent id: drawn at random at the first start of a data dir, or, with
//! TLS, the id the node's certificate names.

use std::path::Path;

use crate::error::{Error, Result};
use crate::id::NodeId;
use crate::storage::{LogStore, WriteBatch};

/// Metadata key of the persistent node id.
const NODE_ID_KEY: &str = "node_id";

/// The node id of the data dir behind `store`.
///
/// Without a certificate id (`certified` is `None`), the stored id, or a random one
/// persisted now. With one, the certificate decides: a fresh data dir persists it, and a
/// data dir that already holds another id is [`Error::NodeIdMismatch`] (its replicas
/// belong to that id; serving them under another would confuse every group they are in).
pub(crate) fn load_or_create_node_id(
    store: &dyn LogStore,
    certified: Option<NodeId>,
    data_dir: &Path,
) -> Result<NodeId> {
    if let Some(stored) = stored_node_id(store)? {
        return match certified {
            Some(certificate) if certificate != stored => Err(Error::NodeIdMismatch {
                stored,
                certificate,
                data_dir: data_dir.to_path_buf(),
            }),
            _ => Ok(stored),
        };
    }
    let id = certified.unwrap_or_else(|| crate::id::random_node_id(&mut rand::thread_rng()));
    let batch = WriteBatch {
        groups: Vec::new(),
        meta: vec![(NODE_ID_KEY.to_string(), Some(id.to_be_bytes().to_vec()))],
    };
    store.write(&batch)?;
    Ok(id)
}

/// The id stored in the data dir, if any; a damaged one is [`Error::Corrupted`].
fn stored_node_id(store: &dyn LogStore) -> Result<Option<NodeId>> {
    let Some(bytes) = store.get_meta(NODE_ID_KEY)? else {
        return Ok(None);
    };
    let arr: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Error::Corrupted("the stored node id is not 8 bytes".to_string()))?;
    let id = u64::from_be_bytes(arr);
    if id == 0 || crate::id::node_of(id) != id {
        return Err(Error::Corrupted(format!(
            "the stored node id {id} is out of range"
        )));
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SledStore;

    fn store(dir: &Path) -> SledStore {
        SledStore::open(dir, slog::Logger::root(slog::Discard, slog::o!())).expect("store")
    }

    #[test]
    fn a_damaged_node_id_is_reported_as_corrupted_data() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        let batch = WriteBatch {
            groups: Vec::new(),
            meta: vec![(NODE_ID_KEY.to_string(), Some(vec![1, 2, 3]))],
        };
        store.write(&batch).expect("write");
        match load_or_create_node_id(&store, None, dir.path()) {
            Err(Error::Corrupted(what)) => assert!(what.contains("node id"), "{what}"),
            other => panic!("expected Error::Corrupted, got {other:?}"),
        }
    }

    #[test]
    fn the_certificate_id_is_persisted_then_must_match() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = store(dir.path());
        assert_eq!(
            load_or_create_node_id(&store, Some(42), dir.path()).unwrap(),
            42
        );
        assert_eq!(
            load_or_create_node_id(&store, None, dir.path()).unwrap(),
            42
        );
        assert_eq!(
            load_or_create_node_id(&store, Some(42), dir.path()).unwrap(),
            42
        );
        match load_or_create_node_id(&store, Some(43), dir.path()) {
            Err(e @ Error::NodeIdMismatch { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("42") && msg.contains("43"), "{msg}");
            }
            other => panic!("expected NodeIdMismatch, got {other:?}"),
        }
    }
}
