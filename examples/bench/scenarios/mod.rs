//! One module per `--scenario`.

pub mod failover;
pub mod heal;
pub mod idle;
pub mod latency;
pub mod recovery;
pub mod wan;
pub mod write;
