//! An owner that answers `Stale` to a source's live incarnation does not
//! hide that source's containers: the source counts the answer as a
//! failed delivery and sends a snapshot until the owner takes it.
//!
//! Two nodes over real HTTP on loopback, each with its membership view set
//! by the test (no gossip), so the owner's view can lag the source's
//! restart on purpose: it holds the source's previous incarnation as live,
//! which is what an owner whose records were overwritten, or whose gossip
//! is late, believes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shoal_core::ring::Ring;
use shoal_core::wire::{Publish, PublishAck, PublishBody, SourceClock};
use shoal_core::{EngineId, LookupKey, NodeId};
use shoal_engine::{
    Engines, EnginesConfig, SyntheticEngine, SyntheticSpec, WatcherConfig, synthetic_record,
};
use shoal_node::membership::{ClusterView, Member};
use shoal_node::peer::{HttpPeers, PeerClient};
use shoal_node::{NodeConfig, NodeService, app};
use tokio_util::sync::CancellationToken;

const COUNT: usize = 8;

fn view(me: &str, members: &[(&str, u64, &str)]) -> ClusterView {
    let members: BTreeMap<NodeId, Member> = members
        .iter()
        .map(|(node, incarnation, api)| {
            let member = Member {
                node: NodeId::from(*node),
                incarnation: *incarnation,
                api: (*api).to_owned(),
                alive: true,
                values: BTreeMap::new(),
            };
            (member.node.clone(), member)
        })
        .collect();
    ClusterView {
        me: NodeId::from(me),
        // Two members, two replicas: each owns every key.
        ring: Arc::new(Ring::new(members.keys().cloned(), 64, 2)),
        members,
        joined: true,
        behind: Default::default(),
    }
}

struct Started {
    service: Arc<NodeService>,
    view: Arc<ArcSwap<ClusterView>>,
    view_changes: tokio::sync::watch::Sender<u64>,
}

/// A node serving on `listener`, watching `count` synthetic containers.
async fn start(
    name: &str,
    incarnation: u64,
    listener: tokio::net::TcpListener,
    initial: ClusterView,
    count: usize,
    stop: &CancellationToken,
) -> Started {
    let engine = SyntheticEngine::new(SyntheticSpec {
        count,
        prefix: format!("{name}-"),
        engine_id: EngineId(format!("engine-{name}")),
    });
    let (watcher, _task) = Engines::spawn(
        vec![Arc::new(engine)],
        EnginesConfig {
            watcher: WatcherConfig {
                node: NodeId::from(name),
                ..Default::default()
            },
            withdraw_after: Duration::from_secs(60),
        },
        stop.clone(),
    );
    let config = NodeConfig {
        node_id: NodeId::from(name),
        // No digest round within the test: only the repair that a failed
        // delivery triggers can bring the snapshot.
        sync_interval: Duration::from_secs(600),
        ..Default::default()
    };
    let view = Arc::new(ArcSwap::from_pointee(initial));
    let service = Arc::new(NodeService::with_cluster(
        config,
        watcher.clone(),
        view.clone(),
        Arc::new(HttpPeers::new()),
        incarnation,
    ));
    let (view_changes, changes) = tokio::sync::watch::channel(0);
    service.spawn_tasks(changes, stop);
    let router = app(service.clone());
    let until = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(until.cancelled_owned())
            .await
    });
    watcher.ready().await;
    Started {
        service,
        view,
        view_changes,
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn stale_total(service: &NodeService) -> u64 {
    service
        .render_metrics()
        .lines()
        .find_map(|l| l.strip_prefix("shoal_publish_stale_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_to_the_live_incarnation_is_repaired_by_a_snapshot() {
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    let owner_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let owner_addr = owner_listener.local_addr().unwrap().to_string();
    let source_addr = source_listener.local_addr().unwrap().to_string();
    let now = shoal_node::clock::now_ms();
    let (owner_inc, old_inc, new_inc) = (now - 60_000, now - 30_000, now);

    // The owner believes the source lives in its previous incarnation.
    let owner = start(
        "owner",
        owner_inc,
        owner_listener,
        view(
            "owner",
            &[
                ("owner", owner_inc, &owner_addr),
                ("source", old_inc, &source_addr),
            ],
        ),
        0,
        &stop,
    )
    .await;
    // That incarnation published a container that is gone since.
    let ghost = synthetic_record("ghost-", 0, &EngineId("engine-source".into()));
    let ghost = shoal_core::ContainerRecord {
        node: NodeId::from("source"),
        ..ghost
    };
    let old_life = Publish {
        source: SourceClock {
            node: NodeId::from("source"),
            incarnation: old_inc,
            seq: 1,
            prev: 0,
            ring: owner.view.load().ring.fingerprint(),
        },
        body: PublishBody::Snapshot {
            records: vec![ghost],
        },
    };
    let peers = PeerClient::new(Arc::new(HttpPeers::new()));
    let (ack, _) = peers
        .publish(
            &NodeId::from("owner"),
            &owner_addr,
            &old_life,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(ack, PublishAck::Applied);
    let ghost_key = LookupKey::Name("ghost-0".into());
    assert_eq!(
        owner
            .service
            .owner_lookup(&ghost_key, None)
            .unwrap()
            .records
            .len(),
        1
    );

    // The source restarts: its publishes of the new life are Stale there.
    let source = start(
        "source",
        new_inc,
        source_listener,
        view(
            "source",
            &[
                ("owner", owner_inc, &owner_addr),
                ("source", new_inc, &source_addr),
            ],
        ),
        COUNT,
        &stop,
    )
    .await;
    let key = LookupKey::Name("source-0".into());
    wait_for("a Stale answer counted as a failure", || {
        stale_total(&source.service) >= 1
    })
    .await;
    assert!(
        owner
            .service
            .owner_lookup(&key, None)
            .unwrap()
            .records
            .is_empty(),
        "the owner took nothing of the new life yet"
    );

    // Once the owner's view has the restart, the next repair snapshot is
    // taken: the new life's containers show, the old life's are gone.
    owner.view.store(Arc::new(view(
        "owner",
        &[
            ("owner", owner_inc, &owner_addr),
            ("source", new_inc, &source_addr),
        ],
    )));
    owner.view_changes.send_modify(|v| *v += 1);
    wait_for("the source's containers at the owner", || {
        owner
            .service
            .owner_lookup(&key, None)
            .unwrap()
            .records
            .len()
            == 1
    })
    .await;
    wait_for("every container of the source at the owner", || {
        owner.service.directory_copies() == COUNT
    })
    .await;
    assert!(
        owner
            .service
            .owner_lookup(&ghost_key, None)
            .unwrap()
            .records
            .is_empty(),
        "the previous life's records are void"
    );
    let _ = &source.view;
    let _ = &source.view_changes;
}
