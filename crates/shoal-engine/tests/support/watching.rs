//! A watcher on a real engine and waiting for its inventory, for the
//! tests against real Docker and real containerd (included with
//! `#[path]`).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::{Inventory, NodeId, parse_ref};
use shoal_engine::{Engine, Watcher, WatcherConfig, WatcherHandle};
use tokio_util::sync::CancellationToken;

/// The longest anything a test waits for may take.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// A watcher on `engine` as node `test-node`, with no periodic resync
/// inside a test (an hour): only events and the first list count.
pub fn watch(engine: Arc<dyn Engine>) -> (WatcherHandle, CancellationToken) {
    let stop = CancellationToken::new();
    let (handle, _task) = Watcher::spawn(
        engine,
        WatcherConfig {
            node: NodeId::from("test-node"),
            resync_interval: Duration::from_secs(3600),
            ..Default::default()
        },
        stop.clone(),
    );
    (handle, stop)
}

pub async fn ready(handle: &WatcherHandle) {
    tokio::time::timeout(CONVERGE, handle.ready())
        .await
        .unwrap_or_else(|_| panic!("no first sync: {:?}", handle.status()));
}

/// Waits until `f` holds for the inventory; panics with `what` after
/// CONVERGE. Returns how long it took.
pub async fn eventually(
    handle: &WatcherHandle,
    what: &str,
    f: impl Fn(&Inventory) -> bool,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < CONVERGE {
        if f(&handle.inventory()) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held: Vec<_> = handle
        .inventory()
        .records()
        .map(|r| format!("{} {:?}", r.primary_name(), r.state))
        .collect();
    panic!(
        "timed out waiting for: {what}; inventory: {held:?}; status: {:?}",
        handle.status()
    );
}

/// The records `reference` finds.
pub fn by(inv: &Inventory, reference: &str) -> Vec<Arc<shoal_core::ContainerRecord>> {
    inv.lookup(&parse_ref(reference, None).unwrap())
}
