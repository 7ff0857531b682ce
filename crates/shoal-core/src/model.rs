//! The container record: what shoal knows about one live container, exactly
//! as the public JSON API shows it.

use litemap::LiteMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The compose label that names a container's project.
pub const COMPOSE_PROJECT_LABEL: &str = "com.docker.compose.project";
/// The compose label that names a container's service.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";

/// A node of the fleet: `--node-id`, else the host name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_owned())
    }
}

/// A container engine, by the ID the engine reports for itself (`docker
/// info`). Several nodes may watch one engine; records are identified by
/// `(engine_id, container_id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct EngineId(pub String);

impl fmt::Display for EngineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The states a live container can be in. Only these are in the inventory:
/// a container leaves it when it exits, dies or is destroyed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Its process runs.
    Running,
    /// Frozen by `docker pause`.
    Paused,
    /// Between a death and the restart its policy asks for.
    Restarting,
}

impl ContainerState {
    /// The engine's word for the state, as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Restarting => "restarting",
        }
    }

    /// Reads an engine's state word; `None` for states that are not live
    /// (`created`, `exited`, `dead`, `removing`, …).
    pub fn from_engine(state: &str) -> Option<Self> {
        match state {
            "running" => Some(ContainerState::Running),
            "paused" => Some(ContainerState::Paused),
            "restarting" => Some(ContainerState::Restarting),
            _ => None,
        }
    }
}

impl fmt::Display for ContainerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health of a container as its healthcheck reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No healthcheck is defined.
    #[default]
    None,
    /// The healthcheck has not passed yet.
    Starting,
    /// The last healthchecks passed.
    Healthy,
    /// The healthcheck failed too often.
    Unhealthy,
}

impl Health {
    /// Reads an engine's health word; unknown words count as `None`.
    pub fn from_engine(status: &str) -> Self {
        match status {
            "starting" => Health::Starting,
            "healthy" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            _ => Health::None,
        }
    }
}

/// One network a container is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct NetworkAttachment {
    /// IPv4 address on this network, if any.
    pub ip: Option<IpAddr>,
    /// IPv6 address on this network, if any.
    pub ipv6: Option<IpAddr>,
    /// MAC address, as the engine prints it.
    pub mac: Option<String>,
    /// DNS aliases on this network.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The network's gateway, if the engine reports one.
    pub gateway: Option<IpAddr>,
}

/// A published or exposed port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMapping {
    /// The port inside the container.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The host address it is published on, if published.
    pub host_ip: Option<String>,
    /// The host port it is published on, if published.
    pub host_port: Option<u16>,
}

/// Labels, by name. A sorted vector (`LiteMap`), not a `BTreeMap`: a
/// `BTreeMap` node holds room for 11 entries however few there are, and
/// records are held once per owner; the JSON and bincode forms are the same
/// map either way.
pub type Labels = LiteMap<String, String>;

/// Network name -> attachment, as a sorted vector for the same reason.
pub type Networks = LiteMap<String, NetworkAttachment>;

/// The most entries a map reserves room for before it has read them.
const MAP_PREALLOC: usize = 64;

/// Reads a map of labels or networks like `LiteMap`'s own deserializer,
/// but reserves room for at most [`MAP_PREALLOC`] entries up front.
/// `LiteMap` reserves what the input claims, and in bincode that is a
/// number a peer writes: a claim of 2^40 entries aborted the process on
/// allocation (found by the fuzzer). The map still grows to whatever the
/// input really holds, within the decode limit.
fn bounded_map<'de, D, V>(deserializer: D) -> Result<LiteMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = LiteMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map with string keys")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut access: A,
        ) -> Result<Self::Value, A::Error> {
            let reserve = access.size_hint().unwrap_or(0).min(MAP_PREALLOC);
            let mut map = LiteMap::with_capacity(reserve);
            let mut out_of_order = Vec::new();
            // Sorted input (what a LiteMap wrote) appends; the rest is
            // merged once at the end, as LiteMap does.
            while let Some((key, value)) = access.next_entry::<String, V>()? {
                if let Some(entry) = map.try_append(key, value) {
                    out_of_order.push(entry);
                }
            }
            map.extend(out_of_order);
            Ok(map)
        }
    }

    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

/// Writes a map of labels or networks as a map, also when it is empty:
/// `LiteMap`'s own serializer writes an empty map as a sequence (`[]` in
/// the JSON), which [`bounded_map`] and every other client reading a map
/// refuse. In bincode a map and a sequence of pairs are the same bytes.
fn as_map<S, V>(map: &LiteMap<String, V>, serializer: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    V: Serialize,
{
    serializer.collect_map(map.iter())
}

/// One live container on one engine. The field names are the public API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The full 64-hex container ID.
    pub id: String,
    /// Names without the leading `/`.
    pub names: Vec<String>,
    /// The image as the container was created from it (`busybox:latest`).
    pub image: String,
    /// The image's content ID.
    pub image_id: String,
    /// running, paused or restarting.
    pub state: ContainerState,
    /// The main process's PID on its host (0 when not running).
    pub pid: i64,
    /// All labels.
    #[serde(serialize_with = "as_map", deserialize_with = "bounded_map")]
    pub labels: Labels,
    /// The compose project, from `com.docker.compose.project`.
    pub project: Option<String>,
    /// The compose service, from `com.docker.compose.service`.
    pub service: Option<String>,
    /// Network name -> attachment.
    #[serde(serialize_with = "as_map", deserialize_with = "bounded_map")]
    pub networks: Networks,
    /// Exposed and published ports.
    pub ports: Vec<PortMapping>,
    /// Healthcheck status.
    pub health: Health,
    /// When the container was created (RFC 3339, as the engine says).
    pub created: String,
    /// When it last started (RFC 3339), if it did.
    pub started_at: Option<String>,
    /// The node (host) that runs it.
    pub node: NodeId,
    /// The engine that runs it.
    pub engine_id: EngineId,
    /// When this node last read it from the engine, in milliseconds since
    /// the Unix epoch.
    pub updated_at: u64,
}

impl ContainerRecord {
    /// The first name, the one people use.
    pub fn primary_name(&self) -> &str {
        self.names.first().map(String::as_str).unwrap_or("")
    }

    /// The first 12 hex characters of the ID, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        crate::key::short_id(&self.id)
    }

    /// Every address the container has, v4 and v6, on every network.
    pub fn ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.networks
            .values()
            .flat_map(|n| n.ip.into_iter().chain(n.ipv6))
    }

    /// Fills `project` and `service` from the compose labels.
    pub fn with_compose_fields(mut self) -> Self {
        self.project = self.labels.get(COMPOSE_PROJECT_LABEL).cloned();
        self.service = self.labels.get(COMPOSE_SERVICE_LABEL).cloned();
        self
    }

    /// True when the two records say the same thing about the container,
    /// ignoring when they were read.
    pub fn same_content(&self, other: &ContainerRecord) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let ContainerRecord {
            id,
            names,
            image,
            image_id,
            state,
            pid,
            labels,
            project,
            service,
            networks,
            ports,
            health,
            created,
            started_at,
            node,
            engine_id,
            updated_at: _,
        } = self;
        *id == other.id
            && *names == other.names
            && *image == other.image
            && *image_id == other.image_id
            && *state == other.state
            && *pid == other.pid
            && *labels == other.labels
            && *project == other.project
            && *service == other.service
            && *networks == other.networks
            && *ports == other.ports
            && *health == other.health
            && *created == other.created
            && *started_at == other.started_at
            && *node == other.node
            && *engine_id == other.engine_id
    }
}

#[cfg(test)]
mod map_tests {
    use super::*;

    #[test]
    fn empty_labels_and_networks_are_json_maps_and_read_back() {
        let r = crate::inventory::tests::record(1, "web", "10.0.0.1", None);
        let mut empty = r.clone();
        empty.labels = Labels::new();
        empty.networks = Networks::new();
        let json = serde_json::to_value(&empty).unwrap();
        assert_eq!(json["labels"], serde_json::json!({}));
        assert_eq!(json["networks"], serde_json::json!({}));
        for record in [r, empty] {
            let text = serde_json::to_string(&record).unwrap();
            let back: ContainerRecord = serde_json::from_str(&text).unwrap();
            assert_eq!(back, record);
        }
    }
}
