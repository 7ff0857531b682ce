//! The seeds of the fuzz corpus (`fuzz/corpus/<target>/`): valid
//! encodings of real peer messages, from which the fuzzer mutates. This
//! test checks that the committed seeds are exactly what this build
//! encodes, and that each decodes; after a change of the wire format,
//! `make fuzz-seeds` writes them anew (SHOAL_FUZZ_WRITE_SEEDS=1).

use std::net::IpAddr;
use std::path::PathBuf;

use shoal_core::filter::ListFilter;
use shoal_core::jobs::{JobEvent, JobId, JobRecord, JobReport, JobRequest, JobSpec, Resources};
use shoal_core::wire::{
    self, DigestReply, DigestRequest, Invalidate, LocalQuery, LocalReply, LookupReply, Pong,
    Publish, PublishAck, PublishBody, RecordId, ResyncRequest, SourceClock,
};
use shoal_core::{
    ContainerRecord, ContainerState, EngineId, Health, LookupKey, NetworkAttachment, NodeId,
    PortMapping,
};

/// The fuzz targets' clock (`NOW_MS` in fuzz/fuzz_targets/*.rs).
const NOW_MS: u64 = 1_750_000_000_000;

fn record(node: &str, i: u8) -> ContainerRecord {
    let mut networks = shoal_core::Networks::new();
    networks.insert(
        "bridge".into(),
        NetworkAttachment {
            ip: Some(IpAddr::from([10, 0, 0, i])),
            ipv6: Some("fd00::2".parse().unwrap()),
            mac: Some("02:42:ac:11:00:02".into()),
            aliases: vec![format!("web-{i}")],
            gateway: Some(IpAddr::from([10, 0, 0, 254])),
        },
    );
    let mut labels = shoal_core::Labels::new();
    labels.insert("com.docker.compose.project".into(), "shop".into());
    labels.insert("com.docker.compose.service".into(), "web".into());
    ContainerRecord {
        id: format!("{i:02x}").repeat(32),
        names: vec![format!("{node}-{i}")],
        image: "busybox:latest".into(),
        image_id: format!("sha256:{}", "ab".repeat(32)),
        state: ContainerState::Running,
        pid: 4242,
        labels,
        project: None,
        service: None,
        networks,
        ports: vec![PortMapping {
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: Some("0.0.0.0".into()),
            host_port: Some(8080),
        }],
        health: Health::Healthy,
        created: "2025-06-01T12:00:00.123456789Z".into(),
        started_at: Some("2025-06-01T12:00:01Z".into()),
        node: NodeId::from(node),
        engine_id: EngineId(format!("engine-{node}")),
        updated_at: NOW_MS - 5,
    }
    .with_compose_fields()
}

fn clock(node: &str, incarnation: u64, seq: u64) -> SourceClock {
    SourceClock {
        node: NodeId::from(node),
        incarnation,
        seq,
        prev: seq - 1,
        ring: 7,
    }
}

/// Publishes as the directory target sees them: against its seeded
/// directory (records 1 and 2 of n1 and n2, incarnation NOW_MS - 60000).
fn publishes() -> Vec<(&'static str, Publish)> {
    let old = NOW_MS - 60_000;
    vec![
        (
            "delta-upsert-and-remove",
            Publish {
                source: clock("n1", old, 2),
                body: PublishBody::Delta {
                    upserts: vec![record("n1", 3)],
                    removes: vec![RecordId::of(&record("n1", 1))],
                },
            },
        ),
        (
            "snapshot-replaces",
            Publish {
                source: clock("n2", old, 5),
                body: PublishBody::Snapshot {
                    records: vec![record("n2", 2), record("n2", 4)],
                },
            },
        ),
        (
            "new-incarnation",
            Publish {
                source: clock("n1", NOW_MS, 1),
                body: PublishBody::Snapshot {
                    records: vec![record("n1", 9)],
                },
            },
        ),
        (
            "same-engine-other-source",
            Publish {
                source: clock("n3", NOW_MS - 1, 1),
                body: PublishBody::Delta {
                    upserts: vec![ContainerRecord {
                        node: NodeId::from("n3"),
                        ..record("n1", 2)
                    }],
                    removes: vec![],
                },
            },
        ),
    ]
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, p) in publishes() {
        seeds.push(("directory_apply", name, wire::encode(&p)));
        seeds.push(("peer_decode", name, wire::encode(&p)));
    }
    let mut peer = |name, bytes| seeds.push(("peer_decode", name, bytes));
    peer(
        "digest",
        wire::encode(&DigestRequest {
            source: clock("n1", NOW_MS - 60_000, 3),
            count: 2,
            digest: 0x1234_5678_9abc_def0,
        }),
    );
    peer(
        "lookup-reply",
        wire::encode(&LookupReply {
            node: NodeId::from("n2"),
            records: vec![record("n1", 1), record("n2", 2)],
            complete_for: vec![(NodeId::from("n1"), NOW_MS - 60_000)],
        }),
    );
    peer(
        "invalidate",
        wire::encode(&Invalidate {
            owner: NodeId::from("n2"),
            keys: vec![
                LookupKey::Id("0101010101010101".into()),
                LookupKey::Name("web".into()),
                LookupKey::Ip(IpAddr::from([10, 0, 0, 1])),
                LookupKey::Project("shop".into()),
            ],
            everything: false,
        }),
    );
    peer(
        "resync",
        wire::encode(&ResyncRequest {
            owner: NodeId::from("n2"),
            ring: 7,
        }),
    );
    peer(
        "local-key",
        wire::encode(&LocalQuery::Key(LookupKey::Name("web".into()))),
    );
    peer(
        "local-filter",
        wire::encode(&LocalQuery::Filter(
            ListFilter::from_pairs([("label", "a=b"), ("state", "running"), ("image", "busybox")])
                .unwrap(),
        )),
    );
    peer(
        "local-reply",
        wire::encode(&LocalReply {
            node: NodeId::from("n1"),
            ready: true,
            records: vec![record("n1", 1)],
        }),
    );
    peer(
        "pong",
        wire::encode(&Pong {
            node: NodeId::from("n1"),
            incarnation: NOW_MS - 60_000,
            ring: vec![NodeId::from("n1"), NodeId::from("n2")],
        }),
    );
    peer("publish-ack", wire::encode(&PublishAck::Stale));
    peer("digest-reply", wire::encode(&DigestReply { matches: true }));
    let (run, report) = job_calls();
    peer("job-run", wire::encode(&run));
    peer("job-report", wire::encode(&report));
    seeds
}

/// A job placed on a node, and that node's report that it runs.
fn job_calls() -> (JobRequest, JobRequest) {
    let id = JobId::parse("01977420-0000-7000-8000-000000000001").unwrap();
    let spec = JobSpec {
        image: "busybox:latest".into(),
        arguments: vec!["sleep".into(), "60".into()],
        resources: Resources {
            cpus: Some(0.5),
            memory_bytes: Some(64 << 20),
        },
        env: [("GREETING".into(), "hi".into())].into(),
        name: Some("worker".into()),
        labels: [("team".into(), "infra".into())].into(),
        node: Some(NodeId::from("n2")),
        network: Some("backend".into()),
    };
    let record = JobRecord::new(
        id.clone(),
        spec,
        NodeId::from("n2"),
        NOW_MS - 60_000,
        NOW_MS,
    );
    let report = JobReport {
        id,
        node: NodeId::from("n2"),
        epoch: 1,
        event: JobEvent::Running {
            container_id: "ab".repeat(32),
        },
    };
    (JobRequest::Run(record), JobRequest::Report(report))
}

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn the_fuzz_corpus_holds_every_seed_as_this_build_encodes_it() {
    let write = std::env::var_os("SHOAL_FUZZ_WRITE_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus(target).join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(corpus(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let held = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make fuzz-seeds`", path.display()));
        assert!(
            held == bytes,
            "{} differs from this build's encoding; run `make fuzz-seeds`",
            path.display()
        );
    }
}

#[test]
fn every_seed_is_a_valid_message() {
    for (name, p) in publishes() {
        let decoded: Publish =
            wire::decode(&wire::encode(&p), NOW_MS).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, p);
    }
    let decodes = |name: &str, bytes: &[u8]| -> bool {
        match name {
            "digest" => wire::decode::<DigestRequest>(bytes, NOW_MS).is_ok(),
            "lookup-reply" => wire::decode::<LookupReply>(bytes, NOW_MS).is_ok(),
            "invalidate" => wire::decode::<Invalidate>(bytes, NOW_MS).is_ok(),
            "resync" => wire::decode::<ResyncRequest>(bytes, NOW_MS).is_ok(),
            "local-key" | "local-filter" => wire::decode::<LocalQuery>(bytes, NOW_MS).is_ok(),
            "local-reply" => wire::decode::<LocalReply>(bytes, NOW_MS).is_ok(),
            "pong" => wire::decode::<Pong>(bytes, NOW_MS).is_ok(),
            "publish-ack" => wire::decode::<PublishAck>(bytes, NOW_MS).is_ok(),
            "digest-reply" => wire::decode::<DigestReply>(bytes, NOW_MS).is_ok(),
            "job-run" | "job-report" => wire::decode::<JobRequest>(bytes, NOW_MS).is_ok(),
            _ => wire::decode::<Publish>(bytes, NOW_MS).is_ok(),
        }
    };
    for (_, name, bytes) in seeds() {
        assert!(decodes(name, &bytes), "{name} does not decode");
    }
}
