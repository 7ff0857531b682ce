//! shoal's model, with no I/O: what a container record is, how a ref a
//! person typed becomes a lookup key, the inventory of one engine with an
//! index for every kind of key, the deltas between two inventories, and the
//! filters of a listing.
//!
//! The engine layer fills an [`Inventory`] and emits [`Delta`]s; the node
//! answers lookups from it. Nothing here spawns tasks or reads clocks: times
//! come in as arguments.

pub mod directory;
pub mod filter;
pub mod inventory;
pub mod key;
pub mod model;
pub mod placement;
pub mod protocol;
pub mod ring;
mod set;
pub mod validate;
pub mod wire;

pub use filter::{FilterError, ListFilter};
pub use inventory::{Delta, Inventory};
pub use key::{KeyKind, LookupKey, RefError, parse_ref, record_keys};
pub use model::{
    ContainerRecord, ContainerState, EngineId, Health, Labels, NetworkAttachment, Networks, NodeId,
    PortMapping,
};

/// FNV-1a, 64 bits: a hash that is the same in every process and version,
/// for ring placement and record digests (std's hashers promise neither).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
