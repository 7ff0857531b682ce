//! A publish from arbitrary bytes applied to an owner directory that
//! already holds records: never a panic, and the directory stays
//! consistent. The bytes are read twice: as the peer API reads them
//! (validated), and raw, without the bounds, so that the directory itself
//! is shown to survive what validation would have refused (an ID that is
//! not ASCII used to panic it).

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::directory::{Here, OwnerDirectory};
use shoal_core::wire::{self, Publish, PublishBody, SourceClock};
use shoal_core::{ContainerRecord, EngineId, NetworkAttachment, NodeId};

/// The receiver's clock (the seeds use it too).
const NOW_MS: u64 = 1_750_000_000_000;

fn held(node: &str, i: u8) -> ContainerRecord {
    let mut networks = shoal_core::Networks::new();
    networks.insert(
        "bridge".into(),
        NetworkAttachment {
            ip: Some(std::net::IpAddr::from([10, 0, 0, i])),
            ..Default::default()
        },
    );
    ContainerRecord {
        id: format!("{i:02x}").repeat(32),
        names: vec![format!("{node}-{i}")],
        image: "busybox:latest".into(),
        image_id: "sha256:00".into(),
        state: shoal_core::ContainerState::Running,
        pid: 1,
        labels: Default::default(),
        project: None,
        service: None,
        networks,
        ports: Vec::new(),
        health: shoal_core::Health::None,
        created: "2025-01-01T00:00:00Z".into(),
        started_at: None,
        node: NodeId::from(node),
        engine_id: EngineId(format!("engine-{node}")),
        updated_at: 1,
    }
}

/// A directory holding two records from each of two sources.
fn seeded() -> OwnerDirectory {
    let mut d = OwnerDirectory::new();
    for node in ["n1", "n2"] {
        let publish = Publish {
            source: SourceClock {
                node: NodeId::from(node),
                incarnation: NOW_MS - 60_000,
                seq: 1,
                prev: 0,
                ring: 7,
            },
            body: PublishBody::Snapshot {
                records: vec![held(node, 1), held(node, 2)],
            },
        };
        d.apply(
            &publish,
            Here {
                ring: 7,
                live: None,
            },
        );
    }
    d
}

/// What must hold of any directory. `valid`: everything it holds passed
/// the peer bounds, so every record is also found by each of its keys
/// (an ID outside them, say uppercase, is held but matches no ID key).
fn consistent(d: &OwnerDirectory, valid: bool) {
    let mut counted = 0;
    for source in d.sources() {
        let summary = d.summary(&source).expect("a listed source has a summary");
        counted += summary.count as usize;
        for key in d.keys_of_source(&source) {
            assert!(
                !valid || !d.lookup(&key).is_empty(),
                "{key} is held but not found"
            );
        }
    }
    assert_eq!(d.copies(), counted);
    assert_eq!(d.keys() == 0, d.copies() == 0);
    // Forgetting every source leaves nothing behind in the index.
    let mut emptied = d.clone();
    for source in d.sources() {
        emptied.remove_source(&source);
    }
    assert_eq!(emptied.copies(), 0);
    assert_eq!(emptied.keys(), 0, "a key outlived its records");
}

fn apply_both_ways(publish: &Publish, valid: bool) {
    for live in [None, Some(publish.source.incarnation)] {
        let mut d = seeded();
        let here = Here {
            ring: publish.source.ring,
            live,
        };
        let _ = d.keys_touched(publish);
        d.apply(publish, here);
        consistent(&d, valid);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(publish) = wire::decode::<Publish>(data, NOW_MS) {
        apply_both_ways(&publish, true);
    }
    // The same bytes without the bounds: the envelope's version, then the
    // publish, as bincode reads them.
    let config = bincode::config::standard().with_limit::<{ 1 << 20 }>();
    if let Ok(((_version, publish), _)) =
        bincode::serde::decode_from_slice::<(u16, Publish), _>(data, config)
    {
        apply_both_ways(&publish, false);
    }
});
