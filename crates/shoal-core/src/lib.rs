//! shoal's model, with no I/O: what a container record is, how a ref a
//! person typed becomes a lookup key, the inventory of one engine with an
//! index for every kind of key, the deltas between two inventories, and the
//! filters of a listing.
//!
//! The engine layer fills an [`Inventory`] and emits [`Delta`]s; the node
//! answers lookups from it. Nothing here spawns tasks or reads clocks: times
//! come in as arguments.

pub mod changes;
pub mod directory;
pub mod filter;
pub mod history;
pub mod inventory;
pub mod jobs;
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
pub use key::{KeyKind, LookupKey, RefError, is_plain_name, parse_ref, record_keys};
pub use model::{
    ContainerRecord, ContainerState, EngineId, Health, Labels, NetworkAttachment, Networks, NodeId,
    PortMapping,
};

/// FNV-1a, 64 bits: a hash that is the same in every process and version,
/// for ring placement and record digests (std's hashers promise neither).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::new();
    h.update(bytes);
    h.0
}

/// FNV-1a as it is fed: [`fnv1a`] of everything written to it, so an
/// encoder can stream into the hash with no buffer.
pub(crate) struct Fnv1a(pub(crate) u64);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

impl std::io::Write for Fnv1a {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
