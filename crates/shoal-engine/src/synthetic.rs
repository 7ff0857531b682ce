//! `SyntheticEngine`: an engine held in memory, for tests, simulations and
//! benchmarks. `--synthetic-count N --synthetic-prefix P` gives N
//! deterministic containers named `P0`…`P{N-1}` with stable IDs, addresses
//! on two networks and compose labels on some; tests script events on it
//! and can take it away and bring it back like a restarting dockerd.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use shoal_core::model::{COMPOSE_PROJECT_LABEL, COMPOSE_SERVICE_LABEL};
use shoal_core::{ContainerRecord, ContainerState, EngineId, Health, NetworkAttachment, NodeId};
use tokio::sync::broadcast;

use crate::engine::{Engine, EngineError, EngineEvent, EngineIdentity, EventStream};
use shoal_core::history::{ChangeKind, EventFacts};

/// How many events a subscriber may fall behind before its stream is
/// dropped, as Docker drops a slow consumer.
const EVENT_BUFFER: usize = 65_536;

/// What the synthetic engine starts with.
#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    /// How many containers.
    pub count: usize,
    /// Name prefix: containers are `{prefix}0` … `{prefix}{count-1}`.
    pub prefix: String,
    /// The engine's ID.
    pub engine_id: EngineId,
}

/// 64 bits of a deterministic hash (splitmix64 over FNV-1a), enough to
/// spread IDs and addresses without a dependency.
fn mix(seed: u64, text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stable 64-hex ID of synthetic container `i` of `prefix`.
pub fn synthetic_id(prefix: &str, i: usize) -> String {
    let key = format!("{prefix}\u{0}{i}");
    (0..4).map(|k| format!("{:016x}", mix(k, &key))).collect()
}

/// The record of synthetic container `i`: named `{prefix}{i}`; on network
/// `synthetic-a` with a v4 address in 10.0.0.0/8 (the second octet from the
/// prefix, so fleets with distinct prefixes rarely collide); every third on
/// `synthetic-b` too, with v4 and v6; every fifth in compose project
/// `{prefix}proj{k}` (ten projects) as service `svc{i % 3}`.
pub fn synthetic_record(prefix: &str, i: usize, engine_id: &EngineId) -> ContainerRecord {
    let n = u32::try_from(i).unwrap_or(u32::MAX);
    let salt = (mix(99, prefix) % 200) as u8 + 20;
    let host = n.wrapping_add(2);
    let mut networks = shoal_core::Networks::new();
    networks.insert(
        "synthetic-a".to_owned(),
        NetworkAttachment {
            ip: Some(IpAddr::V4(Ipv4Addr::new(
                10,
                salt.wrapping_add((host >> 16) as u8),
                (host >> 8) as u8,
                host as u8,
            ))),
            ipv6: None,
            mac: Some(format!(
                "02:42:0a:{salt:02x}:{:02x}:{:02x}",
                (host >> 8) as u8,
                host as u8
            )),
            aliases: vec![format!("{prefix}{i}")],
            gateway: Some(IpAddr::V4(Ipv4Addr::new(10, salt, 0, 1))),
        },
    );
    if i.is_multiple_of(3) {
        networks.insert(
            "synthetic-b".to_owned(),
            NetworkAttachment {
                ip: Some(IpAddr::V4(Ipv4Addr::new(
                    172,
                    20 + (salt % 10),
                    (host >> 8) as u8,
                    host as u8,
                ))),
                ipv6: Some(IpAddr::V6(Ipv6Addr::new(
                    0xfd00,
                    u16::from(salt),
                    0,
                    0,
                    0,
                    0,
                    (host >> 16) as u16,
                    host as u16,
                ))),
                mac: None,
                aliases: vec![],
                gateway: None,
            },
        );
    }
    let mut labels = shoal_core::Labels::new();
    labels.insert("shoal.synthetic".to_owned(), "true".to_owned());
    if i.is_multiple_of(5) {
        labels.insert(
            COMPOSE_PROJECT_LABEL.to_owned(),
            format!("{prefix}proj{}", (i / 5) % 10),
        );
        labels.insert(COMPOSE_SERVICE_LABEL.to_owned(), format!("svc{}", i % 3));
    }
    ContainerRecord {
        id: synthetic_id(prefix, i),
        names: vec![format!("{prefix}{i}")],
        image: "synthetic/app:1".to_owned(),
        image_id: format!("sha256:{}", synthetic_id("image", 0)),
        state: ContainerState::Running,
        pid: 1000 + i64::from(n),
        labels,
        project: None,
        service: None,
        networks,
        ports: vec![],
        health: Health::None,
        created: "2026-01-01T00:00:00Z".to_owned(),
        started_at: Some("2026-01-01T00:00:01Z".to_owned()),
        node: NodeId::default(),
        engine_id: engine_id.clone(),
        updated_at: 0,
    }
    .with_compose_fields()
}

struct SyntheticState {
    containers: BTreeMap<String, ContainerRecord>,
    up: bool,
    /// Inspects still to fail, by container ID (see `fail_inspect`).
    failing_inspects: HashMap<String, usize>,
}

/// An engine held in memory. Clones share the same engine.
#[derive(Clone)]
pub struct SyntheticEngine {
    engine_id: EngineId,
    state: Arc<Mutex<SyntheticState>>,
    events: broadcast::Sender<Result<EngineEvent, EngineError>>,
    calls: Arc<AtomicU64>,
}

impl SyntheticEngine {
    /// An engine with the spec's containers, all running.
    pub fn new(spec: SyntheticSpec) -> Self {
        let containers = (0..spec.count)
            .map(|i| {
                let r = synthetic_record(&spec.prefix, i, &spec.engine_id);
                (r.id.clone(), r)
            })
            .collect();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        SyntheticEngine {
            engine_id: spec.engine_id,
            state: Arc::new(Mutex::new(SyntheticState {
                containers,
                up: true,
                failing_inspects: HashMap::new(),
            })),
            events,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SyntheticState> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, id: &str, action: &str) {
        // No subscriber is fine: the watcher lists on connect.
        // The history reads Docker's verbs.
        let kind = match action {
            "start" => Some(ChangeKind::Started),
            "die" => Some(ChangeKind::Stopped),
            "destroy" => Some(ChangeKind::Removed),
            "rename" => Some(ChangeKind::Renamed),
            "pause" => Some(ChangeKind::Paused),
            "unpause" => Some(ChangeKind::Unpaused),
            "connect" => Some(ChangeKind::NetworkConnected),
            "disconnect" => Some(ChangeKind::NetworkDisconnected),
            "health_status" => Some(ChangeKind::Health),
            _ => None,
        };
        let time_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .ok();
        let _ = self.events.send(Ok(EngineEvent {
            facts: EventFacts {
                kind,
                time_ns,
                ..EventFacts::default()
            },
            ..EngineEvent::new(id, action)
        }));
    }

    /// Starts (or replaces) a container and says so.
    pub fn run(&self, mut record: ContainerRecord) {
        record.engine_id = self.engine_id.clone();
        let id = record.id.clone();
        self.state().containers.insert(id.clone(), record);
        self.emit(&id, "start");
    }

    /// Changes a container in place and says so; false when it is not there.
    pub fn modify(
        &self,
        id: &str,
        action: &str,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> bool {
        let found = match self.state().containers.get_mut(id) {
            Some(r) => {
                change(r);
                true
            }
            None => false,
        };
        if found {
            self.emit(id, action);
        }
        found
    }

    /// Removes a container (`docker rm -f`) and says so.
    pub fn remove(&self, id: &str) -> bool {
        let found = self.state().containers.remove(id).is_some();
        if found {
            self.emit(id, "destroy");
        }
        found
    }

    /// Changes a container without any event, as when the engine drops one.
    pub fn modify_silently(&self, id: &str, change: impl FnOnce(&mut ContainerRecord)) {
        if let Some(r) = self.state().containers.get_mut(id) {
            change(r);
        }
    }

    /// Takes the engine away (`false`: every call fails and every event
    /// stream ends with an error) or brings it back (`true`).
    pub fn set_up(&self, up: bool) {
        self.state().up = up;
        if !up {
            let _ = self.events.send(Err(EngineError::StreamLost(
                "synthetic engine went away".into(),
            )));
        }
    }

    /// Makes the next `times` inspects of container `id` fail with an API
    /// error, as when dockerd answers 500 or with a body that cannot be
    /// decoded, while the engine stays up and the container lives on.
    pub fn fail_inspect(&self, id: &str, times: usize) {
        self.state().failing_inspects.insert(id.to_owned(), times);
    }

    /// How many engine calls (list, inspect, identity, subscribe) were made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The IDs of the containers it holds now.
    pub fn ids(&self) -> Vec<String> {
        self.state().containers.keys().cloned().collect()
    }

    fn check_up(&self) -> Result<(), EngineError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.state().up {
            Ok(())
        } else {
            Err(EngineError::Unreachable("synthetic engine is down".into()))
        }
    }
}

#[async_trait]
impl Engine for SyntheticEngine {
    fn kind(&self) -> &'static str {
        "synthetic"
    }

    async fn identity(&self) -> Result<EngineIdentity, EngineError> {
        self.check_up()?;
        Ok(EngineIdentity {
            id: self.engine_id.clone(),
            kind: "synthetic",
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: None,
            host_name: self.engine_id.0.clone(),
        })
    }

    async fn subscribe(&self) -> Result<EventStream, EngineError> {
        self.check_up()?;
        let rx = self.events.subscribe();
        let stream = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(Ok(ev)) => Some((Ok(ev), Some(rx))),
                Ok(Err(e)) => Some((Err(e), None)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(EngineError::StreamLost(format!(
                        "subscriber fell {n} events behind"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(stream.boxed())
    }

    async fn list(&self) -> Result<Vec<String>, EngineError> {
        self.check_up()?;
        Ok(self.ids())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerRecord>, EngineError> {
        self.check_up()?;
        let mut state = self.state();
        if let Some(left) = state.failing_inspects.get_mut(id).filter(|n| **n > 0) {
            *left -= 1;
            return Err(EngineError::Api(format!(
                "synthetic inspect of {id} failed as scripted"
            )));
        }
        Ok(state.containers.get(id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_stable_and_distinct() {
        let e = EngineId("e".into());
        let a = synthetic_record("c-", 7, &e);
        let b = synthetic_record("c-", 7, &e);
        assert_eq!(a, b);
        assert_eq!(a.names, ["c-7"]);
        assert_eq!(a.id.len(), 64);
        let ids: std::collections::HashSet<_> =
            (0..10_000).map(|i| synthetic_id("c-", i)).collect();
        assert_eq!(ids.len(), 10_000);
        let ips: std::collections::HashSet<_> = (0..10_000)
            .map(|i| {
                synthetic_record("c-", i, &e)
                    .networks
                    .get("synthetic-a")
                    .and_then(|n| n.ip)
            })
            .collect();
        assert_eq!(ips.len(), 10_000);
    }

    #[test]
    fn some_containers_are_in_compose_projects() {
        let e = EngineId("e".into());
        let r = synthetic_record("c-", 10, &e);
        assert_eq!(r.project.as_deref(), Some("c-proj2"));
        assert_eq!(r.service.as_deref(), Some("svc1"));
        assert!(synthetic_record("c-", 11, &e).project.is_none());
        assert_eq!(synthetic_record("c-", 9, &e).networks.len(), 2);
    }
}
