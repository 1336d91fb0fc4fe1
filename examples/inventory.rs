//! The smallest complete app on the typed API: a replicated inventory whose "take" is
//! refused when the stock is short, and the caller gets that refusal as its own response.
//!
//! ```text
//! cargo run --example inventory
//! ```

use std::collections::BTreeMap;

use copycat::{Bincode, Codec, Config, CopyCat, Replicated, StateMachine};
use serde::{Deserialize, Serialize};

#[derive(Default)]
struct Inventory(BTreeMap<String, u32>);

#[derive(Serialize, Deserialize)]
enum Change {
    Add(String, u32),
    Take(String, u32),
}

impl StateMachine for Inventory {
    type Command = Change;
    type Response = Result<u32, String>;

    fn apply(&mut self, change: Change) -> Self::Response {
        match change {
            Change::Add(item, n) => {
                let stock = self.0.entry(item).or_default();
                *stock += n;
                Ok(*stock)
            }
            Change::Take(item, n) => match self.0.get_mut(&item) {
                Some(stock) if *stock >= n => {
                    *stock -= n;
                    Ok(*stock)
                }
                other => Err(format!(
                    "insufficient stock: {} left",
                    other.map_or(0, |s| *s)
                )),
            },
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        Bincode::encode(&self.0).expect("a map of strings and numbers encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.0 = Bincode::decode(snapshot)?;
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let node = CopyCat::start(Config {
        data_dir: dir.path().to_path_buf(),
        port: 0,
        gossip_port: 0,
        ..Config::default()
    })?;
    let inventory: Replicated<Inventory> =
        Replicated::open(&node, node.new_data_structure_id(), Inventory::default())?;
    println!(
        "add 3 apples: {:?}",
        inventory.propose_blocking(Change::Add("apple".into(), 3))?
    );
    println!(
        "take 5: {:?}",
        inventory.propose_blocking(Change::Take("apple".into(), 5))?
    );
    println!(
        "take 2: {:?}",
        inventory.propose_blocking(Change::Take("apple".into(), 2))?
    );
    let left = inventory.read_linearizable_blocking(|inv| inv.0.get("apple").copied())?;
    println!("apples left: {left:?}");
    node.shutdown();
    Ok(())
}
