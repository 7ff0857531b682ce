//! `ContainerdEngine`: containerd's gRPC API through `containerd-client`,
//! for Kubernetes nodes and hosts run with nerdctl or `ctr`.
//!
//! containerd has namespaces; a container is identified by its namespace
//! and an ID of the creator's choosing (`ctr run … web`). shoal's records
//! are identified by 12 to 64 hex characters, so a containerd ID that is
//! such (nerdctl's, Kubernetes') is the record's ID as it is, and any other
//! gets a stable one: the SHA-256 of `<namespace>/<id>`. The name is the
//! ID the user gave unless a label names the container (`nerdctl/name`,
//! or Kubernetes' `io.kubernetes.*` labels).
//!
//! containerd knows no addresses: they are read from the task's own
//! network namespace under `/proc/<pid>/net`, which needs the host's PID
//! namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, GetContainerRequest, GetImageRequest, GetRequest, ListNamespacesRequest,
    ListTasksRequest, PublishRequest, SubscribeRequest,
};
use containerd_client::types::v1::Status as TaskStatus;
use futures::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use shoal_core::{
    ContainerRecord, ContainerState, EngineId, Health, Labels, NetworkAttachment, NodeId,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::engine::{Engine, EngineError, EngineEvent, EngineIdentity, EventStream};
use shoal_core::history::{ChangeKind, EventFacts};

/// The socket containerd listens on by default.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
/// Docker's own namespace in containerd: its containers are Docker's to
/// report, so a node that also watches Docker skips it.
pub const DOCKER_NAMESPACE: &str = "moby";
/// The label nerdctl names a container with.
pub const NERDCTL_NAME_LABEL: &str = "nerdctl/name";
/// The label nerdctl lists a container's networks in (a JSON array).
pub const NERDCTL_NETWORKS_LABEL: &str = "nerdctl/networks";
/// Kubernetes' labels on the containers the CRI plugin makes.
const K8S_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const K8S_POD_NAME: &str = "io.kubernetes.pod.name";
const K8S_CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// The topic of the event a subscription publishes to know it is
/// registered; its namespace and type.
const PROBE_TOPIC: &str = "/shoal/subscribed";
const PROBE_NAMESPACE: &str = "shoal";
const PROBE_TYPE: &str = "shoal.v1.Subscribed";
/// How often the probe is published until the subscription answers.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Where CNI plugins' results are cached, one file per attachment.
pub const CNI_RESULTS: &str = "/var/lib/cni/results";
/// The most CNI result files read per container, and the largest read.
const CNI_MAX_FILES: usize = 64;
const CNI_MAX_BYTES: u64 = 1 << 20;
/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The topics after which a container is re-read. A task event carries
/// no labels, so every one of them re-reads the whole container.
const TOPICS: &[&str] = &[
    "/containers/create",
    "/containers/update",
    "/containers/delete",
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
    "/tasks/paused",
    "/tasks/resumed",
    "/tasks/oom",
];

/// A containerd reached over its gRPC socket.
pub struct ContainerdEngine {
    address: PathBuf,
    channel: Channel,
    /// Which namespaces are watched.
    namespaces: Namespaces,
    /// Where `/proc` is: the host's, to read tasks' addresses.
    proc_root: PathBuf,
    /// Where CNI keeps its results (`/var/lib/cni/results`).
    cni_results: PathBuf,
    /// Record ID -> (namespace, containerd ID), for every container seen
    /// in a list or an event and not yet found gone.
    known: Known,
}

/// Which namespaces an engine watches: the ones given (every one there
/// is when `None`) but those in `skip`. Lists and the event stream both
/// ask it.
#[derive(Clone, Debug)]
struct Namespaces {
    given: Option<Vec<String>>,
    skip: Vec<String>,
}

impl Namespaces {
    fn watches(&self, namespace: &str) -> bool {
        !self.skip.iter().any(|s| s == namespace)
            && self
                .given
                .as_ref()
                .is_none_or(|given| given.iter().any(|g| g == namespace))
    }
}

/// Record ID -> (namespace, containerd ID).
type Known = Arc<Mutex<HashMap<String, (String, String)>>>;

impl ContainerdEngine {
    /// A client for the socket at `address`, watching `namespaces` (every
    /// one when `None`) except those in `skip`. Nothing is sent until the
    /// first call, and a lost connection is made again on the next, so
    /// making the client cannot fail.
    pub fn connect(address: &str, namespaces: Option<Vec<String>>, skip: Vec<String>) -> Self {
        let path = PathBuf::from(address.strip_prefix("unix://").unwrap_or(address));
        let socket = path.clone();
        // The URI is not used: every connection is the unix socket.
        let channel = Endpoint::from_static("http://[::]")
            .connect_timeout(CALL_TIMEOUT)
            .connect_with_connector_lazy(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }));
        ContainerdEngine {
            address: path,
            channel,
            namespaces: Namespaces {
                given: namespaces,
                skip,
            },
            proc_root: PathBuf::from("/proc"),
            cni_results: PathBuf::from(CNI_RESULTS),
            known: Known::default(),
        }
    }

    /// When the socket at `address` does not exist, a message a person can
    /// act on.
    pub fn missing_socket(address: &str) -> Option<String> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        (!Path::new(path).exists()).then(|| {
            format!(
                "the containerd socket {path} does not exist: is containerd running on this \
                 host? Point --containerd-address at its socket"
            )
        })
    }

    fn unreachable(&self, what: &str, status: Status) -> EngineError {
        let address = self.address.display();
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                EngineError::Unreachable(format!("{address}: {what}: {}", status_text(&status)))
            }
            _ => EngineError::Api(format!("{address}: {what}: {}", status_text(&status))),
        }
    }

    /// The namespaces to watch now.
    async fn watched_namespaces(&self) -> Result<Vec<String>, EngineError> {
        let all = match &self.namespaces.given {
            Some(given) => given.clone(),
            None => NamespacesClient::new(self.channel.clone())
                .list(timed(ListNamespacesRequest::default()))
                .await
                .map_err(|s| self.unreachable("listing namespaces", s))?
                .into_inner()
                .namespaces
                .into_iter()
                .map(|n| n.name)
                .collect(),
        };
        Ok(all
            .into_iter()
            .filter(|n| self.namespaces.watches(n))
            .collect())
    }

    fn remember(&self, namespace: &str, id: &str) -> String {
        remember(&self.known, namespace, id)
    }

    fn forget(&self, record_id: &str) {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(record_id);
    }

    fn whereabouts(&self, record_id: &str) -> Option<(String, String)> {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(record_id)
            .cloned()
    }

    /// Reads one container of `namespace`: `None` when it is gone or has no
    /// live task.
    async fn read(
        &self,
        namespace: &str,
        id: &str,
    ) -> Result<Option<ContainerRecord>, EngineError> {
        let container = found(
            ContainersClient::new(self.channel.clone())
                .get(in_namespace(
                    GetContainerRequest { id: id.to_owned() },
                    namespace,
                ))
                .await,
        )
        .map_err(|s| self.unreachable("reading a container", s))?
        .and_then(|answer| answer.container);
        let Some(container) = container else {
            return Ok(None);
        };
        let task = found(
            TasksClient::new(self.channel.clone())
                .get(in_namespace(
                    GetRequest {
                        container_id: id.to_owned(),
                        exec_id: String::new(),
                    },
                    namespace,
                ))
                .await,
        )
        .map_err(|s| self.unreachable("reading a task", s))?
        .and_then(|answer| answer.process);
        let Some(task) = task else {
            return Ok(None);
        };
        let Some(state) = live_state(task.status) else {
            return Ok(None);
        };
        let mut record = record_from(namespace, container, state, task.pid);
        record.started_at = process_started_at(task.pid);
        record.networks = self.addresses(id, task.pid, &record.labels);
        record.image_id = self.image_digest(namespace, &record.image).await?;
        Ok(Some(record))
    }

    /// The digest an image name points at (its manifest or index, the ID
    /// nerdctl shows), or empty when the image is gone or unreadable.
    async fn image_digest(&self, namespace: &str, image: &str) -> Result<String, EngineError> {
        if image.is_empty() {
            return Ok(String::new());
        }
        let answer = found(
            ImagesClient::new(self.channel.clone())
                .get(in_namespace(
                    GetImageRequest {
                        name: image.to_owned(),
                    },
                    namespace,
                ))
                .await,
        )
        .map_err(|s| self.unreachable("reading an image", s));
        let answer = match answer {
            Ok(answer) => answer,
            // An image containerd cannot describe leaves the ID empty; it
            // must not keep the container out of the inventory.
            Err(EngineError::Api(_)) => None,
            Err(e) => return Err(e),
        };
        Ok(answer
            .and_then(|a| a.image)
            .and_then(|i| i.target)
            .map(|t| t.digest)
            .unwrap_or_default())
    }

    /// The addresses of container `id`, by network: what CNI recorded
    /// for it, then what the network namespace `pid` lives in shows that
    /// CNI did not name.
    fn addresses(&self, id: &str, pid: u32, labels: &Labels) -> shoal_core::Networks {
        let mut networks = cni_networks(&self.cni_results, id);
        if pid == 0 {
            return networks;
        }
        let net = self.proc_root.join(pid.to_string()).join("net");
        let read = |file: &str| std::fs::read_to_string(net.join(file)).unwrap_or_default();
        let names: Vec<String> = labels
            .get(NERDCTL_NETWORKS_LABEL)
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or_default();
        let seen = networks_from(&read("fib_trie"), &read("route"), &read("if_inet6"), &names);
        for (name, attachment) in seen {
            let known = networks.values().any(|n| {
                (n.ip.is_some() && n.ip == attachment.ip)
                    || (n.ipv6.is_some() && n.ipv6 == attachment.ipv6)
            });
            if !known {
                networks.insert(name, attachment);
            }
        }
        networks
    }
}

/// Notes where a container lives; its record ID.
fn remember(known: &Known, namespace: &str, id: &str) -> String {
    let record_id = record_id(namespace, id);
    known
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(record_id.clone(), (namespace.to_owned(), id.to_owned()));
    record_id
}

/// An answer, or `None` when containerd says there is no such thing.
fn found<T>(answer: Result<tonic::Response<T>, Status>) -> Result<Option<T>, Status> {
    match answer {
        Ok(answer) => Ok(Some(answer.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// A request with containerd's namespace header and the call timeout.
fn in_namespace<T>(message: T, namespace: &str) -> Request<T> {
    let mut request = timed(message);
    if let Ok(value) = namespace.parse() {
        request.metadata_mut().insert("containerd-namespace", value);
    }
    request
}

fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

fn status_text(s: &Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_owned()
    }
}

/// The record ID of containerd's `id` in `namespace`: the ID itself when
/// it is 12 to 64 hex characters, else a stable SHA-256 of both.
pub fn record_id(namespace: &str, id: &str) -> String {
    if (12..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return id.to_ascii_lowercase();
    }
    let digest = Sha256::digest(format!("{namespace}/{id}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A task status that is in the inventory.
fn live_state(status: i32) -> Option<ContainerState> {
    match TaskStatus::try_from(status).ok()? {
        TaskStatus::Running => Some(ContainerState::Running),
        TaskStatus::Paused | TaskStatus::Pausing => Some(ContainerState::Paused),
        _ => None,
    }
}

/// The name people know a container by: nerdctl's name, Kubernetes'
/// `<pod namespace>/<pod>/<container>` (a pod's sandbox is
/// `<pod namespace>/<pod>`), else the ID it was created with.
pub fn container_name(id: &str, labels: &Labels) -> String {
    if let Some(name) = labels.get(NERDCTL_NAME_LABEL).filter(|n| !n.is_empty()) {
        return name.clone();
    }
    if let (Some(ns), Some(pod)) = (labels.get(K8S_POD_NAMESPACE), labels.get(K8S_POD_NAME)) {
        return match labels.get(K8S_CONTAINER_NAME) {
            Some(c) => format!("{ns}/{pod}/{c}"),
            None => format!("{ns}/{pod}"),
        };
    }
    id.to_owned()
}

/// A container and its task's state and PID as a record; addresses are
/// read apart. `node`, `engine_id` and `updated_at` are left for the
/// watcher.
fn record_from(namespace: &str, c: Container, state: ContainerState, pid: u32) -> ContainerRecord {
    let labels: Labels = c.labels.into_iter().collect();
    let name = container_name(&c.id, &labels);
    let mut record = ContainerRecord {
        id: record_id(namespace, &c.id),
        names: vec![name],
        image: c.image,
        image_id: String::new(),
        state,
        pid: i64::from(pid),
        labels,
        project: None,
        service: None,
        networks: Default::default(),
        ports: Vec::new(),
        health: Health::None,
        created: c.created_at.map(rfc3339).unwrap_or_default(),
        started_at: None,
        node: NodeId::default(),
        engine_id: EngineId::default(),
        updated_at: 0,
    }
    .with_compose_fields();
    // A Kubernetes container's project is its pod's namespace.
    if record.project.is_none() {
        record.project = record.labels.get(K8S_POD_NAMESPACE).cloned();
        record.service = record.labels.get(K8S_CONTAINER_NAME).cloned();
    }
    record
}

/// When a process started (RFC 3339, to the second), from its
/// `/proc/<pid>/stat` and the boot time in `/proc/stat`: a task carries no
/// start time. `None` without the host's PID namespace.
fn process_started_at(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    started_at_from(&stat, &boot)
}

/// Clock ticks per second in `/proc` times: USER_HZ, 100 in Linux's ABI.
const USER_HZ: u64 = 100;

/// The start time in a `/proc/<pid>/stat` line (field 22, ticks since
/// boot) plus `/proc/stat`'s `btime`, as RFC 3339 to the second (boot time
/// has no finer grain, and a value that changed from read to read would be
/// a change of the record).
fn started_at_from(stat: &str, proc_stat: &str) -> Option<String> {
    // The command (field 2) is in parentheses and may hold spaces or ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: i64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let seconds = btime.checked_add(i64::try_from(ticks / USER_HZ).ok()?)?;
    Some(rfc3339(prost_types::Timestamp { seconds, nanos: 0 })).filter(|s| !s.is_empty())
}

fn rfc3339(t: prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|s| {
            s.replace_nanosecond(t.nanos.clamp(0, 999_999_999) as u32)
                .ok()
        })
        .and_then(|s| {
            s.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The local IPv4 addresses in `/proc/<pid>/net/fib_trie` (its
/// `/32 host LOCAL` leaves, in whichever table the kernel prints them),
/// loopback left out.
pub fn local_ipv4(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let text = line.trim();
        if let Some(addr) = text.strip_prefix("|-- ") {
            leaf = addr.parse().ok();
        } else if text.starts_with("/32 host LOCAL")
            && let Some(ip) = leaf
            && !ip.is_loopback()
            && !found.contains(&ip)
        {
            found.push(ip);
        }
    }
    found
}

/// `/proc/<pid>/net/route`'s routes as (interface, destination, mask).
fn routes(route: &str) -> Vec<(String, u32, u32)> {
    route
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Each address is printed as the kernel's u32 holding it in
            // network byte order.
            let addr = |s: &str| {
                u32::from_str_radix(s, 16)
                    .ok()
                    .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
            };
            let (dest, mask) = (addr(f.get(1)?)?, addr(f.get(7)?)?);
            Some((f[0].to_owned(), dest, mask))
        })
        .collect()
}

/// The global IPv6 addresses in `/proc/<pid>/net/if_inet6`, with their
/// interface.
pub fn global_ipv6(if_inet6: &str) -> Vec<(String, Ipv6Addr)> {
    if_inet6
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (hex, scope, iface) = (f.first()?, f.get(3)?, f.get(5)?);
            if *scope != "00" || *iface == "lo" {
                return None;
            }
            let bits = u128::from_str_radix(hex, 16).ok()?;
            Some(((*iface).to_owned(), Ipv6Addr::from(bits)))
        })
        .collect()
}

/// The addresses of a network namespace, by network: an interface's
/// network is the name at its place among the namespace's interfaces in
/// `names` (nerdctl's order: eth0 is the first network), else the
/// interface's own name.
pub fn networks_from(
    fib_trie: &str,
    route: &str,
    if_inet6: &str,
    names: &[String],
) -> shoal_core::Networks {
    let routes = routes(route);
    let v4: Vec<(String, Ipv4Addr)> = local_ipv4(fib_trie)
        .into_iter()
        .map(|ip| {
            let a = u32::from(ip);
            let iface = routes
                .iter()
                .filter(|(_, dest, mask)| *mask != 0 && a & mask == *dest)
                .max_by_key(|(_, _, mask)| mask.count_ones())
                .map(|(iface, _, _)| iface.clone())
                .unwrap_or_else(|| "default".to_owned());
            (iface, ip)
        })
        .collect();
    let v6 = global_ipv6(if_inet6);
    let mut ifaces: Vec<String> = v4.iter().map(|(i, _)| i.clone()).collect();
    ifaces.extend(v6.iter().map(|(i, _)| i.clone()));
    ifaces.sort();
    ifaces.dedup();
    let mut networks = shoal_core::Networks::new();
    for (place, iface) in ifaces.iter().enumerate() {
        let name = names.get(place).cloned().unwrap_or_else(|| iface.clone());
        let attachment = NetworkAttachment {
            ip: v4
                .iter()
                .find(|(i, _)| i == iface)
                .map(|(_, ip)| IpAddr::V4(*ip)),
            ipv6: v6
                .iter()
                .find(|(i, _)| i == iface)
                .map(|(_, ip)| IpAddr::V6(*ip)),
            mac: None,
            aliases: Vec::new(),
            gateway: None,
        };
        networks.insert(name, attachment);
    }
    networks
}

/// The networks CNI attached container `id` to, from its cached results
/// (`<network>-<container ID>-<interface>` files of libcni's
/// `cniCacheV1`): each network's name, first IPv4 and IPv6 address and
/// gateway. Unreadable or foreign files are skipped.
pub fn cni_networks(dir: &Path, id: &str) -> shoal_core::Networks {
    let mut networks = shoal_core::Networks::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return networks;
    };
    let infix = format!("-{id}-");
    let files = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(&infix))
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.is_file() && m.len() <= CNI_MAX_BYTES)
        })
        .take(CNI_MAX_FILES);
    for entry in files {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some((name, attachment)) = cni_result(&text, id) {
            networks.insert(name, attachment);
        }
    }
    networks
}

/// One cached CNI result: its network and addresses, if it is container
/// `id`'s.
fn cni_result(text: &str, id: &str) -> Option<(String, NetworkAttachment)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if v["containerId"].as_str()? != id {
        return None;
    }
    let name = v["networkName"]
        .as_str()
        .filter(|n| !n.is_empty())?
        .to_owned();
    let ips = v["result"]["ips"].as_array()?;
    let address = |want_v4: bool| {
        ips.iter().find_map(|ip| {
            let cidr = ip["address"].as_str()?;
            let addr: IpAddr = cidr.split('/').next()?.parse().ok()?;
            (addr.is_ipv4() == want_v4).then_some((addr, ip["gateway"].as_str()))
        })
    };
    let v4 = address(true);
    let v6 = address(false);
    Some((
        name,
        NetworkAttachment {
            ip: v4.map(|(a, _)| a),
            ipv6: v6.map(|(a, _)| a),
            mac: None,
            aliases: Vec::new(),
            gateway: v4.or(v6).and_then(|(_, g)| g).and_then(|g| g.parse().ok()),
        },
    ))
}

/// The container an event is about, if its topic changes what the
/// inventory holds.
fn event_container_id(topic: &str, event: &prost_types::Any) -> Option<String> {
    use containerd_client::events::*;
    let bytes = event.value.as_slice();
    let id = match topic {
        "/containers/create" => ContainerCreate::decode(bytes).ok()?.id,
        "/containers/update" => ContainerUpdate::decode(bytes).ok()?.id,
        "/containers/delete" => ContainerDelete::decode(bytes).ok()?.id,
        "/tasks/create" => TaskCreate::decode(bytes).ok()?.container_id,
        "/tasks/start" => TaskStart::decode(bytes).ok()?.container_id,
        "/tasks/exit" => TaskExit::decode(bytes).ok()?.container_id,
        "/tasks/delete" => TaskDelete::decode(bytes).ok()?.container_id,
        "/tasks/paused" => TaskPaused::decode(bytes).ok()?.container_id,
        "/tasks/resumed" => TaskResumed::decode(bytes).ok()?.container_id,
        "/tasks/oom" => TaskOom::decode(bytes).ok()?.container_id,
        _ => return None,
    };
    (!id.is_empty()).then_some(id)
}

/// What a containerd event means for the history. Only the main process's
/// exit ends a run: an exec's exit names its own process ID.
fn event_facts(
    topic: &str,
    event: &prost_types::Any,
    timestamp: Option<prost_types::Timestamp>,
) -> EventFacts {
    use containerd_client::events::TaskExit;
    let mut facts = EventFacts {
        time_ns: timestamp.map(|t| t.seconds.saturating_mul(1_000_000_000) + i64::from(t.nanos)),
        ..EventFacts::default()
    };
    facts.kind = match topic {
        "/tasks/start" => Some(ChangeKind::Started),
        "/tasks/paused" => Some(ChangeKind::Paused),
        "/tasks/resumed" => Some(ChangeKind::Unpaused),
        "/containers/delete" => Some(ChangeKind::Removed),
        "/tasks/exit" => match TaskExit::decode(event.value.as_slice()) {
            Ok(exit) if exit.id == exit.container_id || exit.id.is_empty() => {
                facts.exit_code = Some(i64::from(exit.exit_status));
                Some(ChangeKind::Stopped)
            }
            _ => None,
        },
        _ => None,
    };
    facts
}

#[async_trait]
impl Engine for ContainerdEngine {
    fn kind(&self) -> &'static str {
        "containerd"
    }

    async fn identity(&self) -> Result<EngineIdentity, EngineError> {
        let version = VersionClient::new(self.channel.clone())
            .version(timed(()))
            .await
            .map_err(|s| self.unreachable("asking the version", s))?
            .into_inner();
        let server = IntrospectionClient::new(self.channel.clone())
            .server(timed(()))
            .await
            .map_err(|s| self.unreachable("asking the server's ID", s))?
            .into_inner();
        let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Ok(EngineIdentity {
            id: EngineId(format!("containerd-{}", server.uuid)),
            kind: "containerd",
            version: version.version,
            api_version: None,
            host_name,
        })
    }

    async fn subscribe(&self) -> Result<EventStream, EngineError> {
        let mut filters: Vec<String> = TOPICS.iter().map(|t| format!("topic=={t:?}")).collect();
        filters.push(format!("topic=={PROBE_TOPIC:?}"));
        let mut events = EventsClient::new(self.channel.clone());
        let call = events.subscribe(Request::new(SubscribeRequest { filters }));
        // containerd answers a subscription only with its first event, and
        // says nothing when it has registered it. So a probe is published
        // until the subscription answers with its first event (a probe or
        // any other): it is registered by then, and every later event is
        // delivered.
        let probing = async {
            let mut publisher = EventsClient::new(self.channel.clone());
            loop {
                let probe = PublishRequest {
                    topic: PROBE_TOPIC.to_owned(),
                    event: Some(prost_types::Any {
                        type_url: PROBE_TYPE.to_owned(),
                        value: Vec::new(),
                    }),
                };
                if let Err(s) = publisher
                    .publish(in_namespace(probe, PROBE_NAMESPACE))
                    .await
                {
                    return self.unreachable("publishing the subscription's probe", s);
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
        };
        let subscribed = async {
            tokio::select! {
                answer = call => answer.map_err(|s| self.unreachable("subscribing to events", s)),
                failed = probing => Err(failed),
            }
        };
        let stream = tokio::time::timeout(CALL_TIMEOUT, subscribed)
            .await
            .map_err(|_| {
                EngineError::Unreachable(format!(
                    "{}: subscribing to events: no answer within {CALL_TIMEOUT:?}",
                    self.address.display()
                ))
            })??
            .into_inner();
        let known = self.known.clone();
        let address = self.address.display().to_string();
        let namespaces = self.namespaces.clone();
        let events = stream.filter_map(move |item| {
            let out = match item {
                Err(s) => Some(Err(EngineError::StreamLost(format!(
                    "{address}: {}",
                    status_text(&s)
                )))),
                Ok(envelope) => {
                    let id = envelope
                        .event
                        .as_ref()
                        .and_then(|e| event_container_id(&envelope.topic, e));
                    match id {
                        Some(id) if namespaces.watches(&envelope.namespace) => {
                            let facts = envelope
                                .event
                                .as_ref()
                                .map(|e| event_facts(&envelope.topic, e, envelope.timestamp))
                                .unwrap_or_default();
                            Some(Ok(EngineEvent {
                                container_id: remember(&known, &envelope.namespace, &id),
                                action: envelope.topic.trim_start_matches('/').to_owned(),
                                facts,
                            }))
                        }
                        _ => None,
                    }
                }
            };
            async move { out }
        });
        Ok(events.boxed())
    }

    async fn list(&self) -> Result<Vec<String>, EngineError> {
        let mut ids = Vec::new();
        for namespace in self.watched_namespaces().await? {
            let tasks = TasksClient::new(self.channel.clone())
                .list(in_namespace(ListTasksRequest::default(), &namespace))
                .await
                .map_err(|s| self.unreachable("listing tasks", s))?
                .into_inner()
                .tasks;
            for task in tasks {
                // A task's ID is its container's; containerd leaves
                // `container_id` empty in this answer.
                let id = if task.container_id.is_empty() {
                    &task.id
                } else {
                    &task.container_id
                };
                if live_state(task.status).is_some() && !id.is_empty() {
                    ids.push(self.remember(&namespace, id));
                }
            }
        }
        Ok(ids)
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerRecord>, EngineError> {
        // Every ID the watcher has came from a list or an event, which
        // remembered where it lives; one forgotten since is gone.
        let Some((namespace, containerd_id)) = self.whereabouts(id) else {
            return Ok(None);
        };
        let record = self.read(&namespace, &containerd_id).await?;
        if record.is_none() {
            self.forget(id);
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIB_TRIE: &str = "Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.88.0.0/16 2 0 2
        +-- 10.88.0.0/28 2 0 2
           |-- 10.88.0.0
              /16 link UNICAST
           |-- 10.88.0.7
              /32 host LOCAL
        |-- 10.88.255.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.88.0.0/16 2 0 2
           |-- 10.88.0.7
              /32 host LOCAL
     |-- 192.168.50.3
        /32 host LOCAL
";
    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100580A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000580A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
eth1\t0032A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const IF_INET6: &str = "fe80000000000000ac4329fffed9bc59 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000007 02 40 00 00     eth0
";

    #[test]
    fn local_ipv4_reads_host_leaves_once_without_loopback() {
        let ips = local_ipv4(FIB_TRIE);
        assert_eq!(
            ips,
            vec![Ipv4Addr::new(10, 88, 0, 7), Ipv4Addr::new(192, 168, 50, 3)]
        );
    }

    #[test]
    fn global_ipv6_skips_link_local_and_loopback() {
        assert_eq!(
            global_ipv6(IF_INET6),
            vec![("eth0".to_owned(), "fd00::7".parse().unwrap())]
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn routes_read_the_kernels_byte_order() {
        let r = routes(ROUTE);
        assert_eq!(
            r[1],
            (
                "eth0".into(),
                u32::from(Ipv4Addr::new(10, 88, 0, 0)),
                0xffff_0000
            )
        );
        assert_eq!(r[2].1, u32::from(Ipv4Addr::new(192, 168, 50, 0)));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn addresses_go_to_nerdctls_networks_in_interface_order() {
        let names = vec!["shop_default".to_owned(), "backend".to_owned()];
        let n = networks_from(FIB_TRIE, ROUTE, IF_INET6, &names);
        let shop = n.get("shop_default").unwrap();
        assert_eq!(shop.ip, Some("10.88.0.7".parse().unwrap()));
        assert_eq!(shop.ipv6, Some("fd00::7".parse().unwrap()));
        assert_eq!(
            n.get("backend").unwrap().ip,
            Some("192.168.50.3".parse().unwrap())
        );
        // Without names, the interface names the network.
        let n = networks_from(FIB_TRIE, ROUTE, IF_INET6, &[]);
        assert!(n.get("eth0").is_some() && n.get("eth1").is_some());
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cni_results_name_the_networks_of_their_container_only() {
        let dir = tempfile::tempdir().unwrap();
        let result = |network: &str, id: &str, ips: &str| {
            format!(
                r#"{{"kind":"cniCacheV1","containerId":"{id}","ifName":"eth0","networkName":"{network}",
                   "result":{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"/var/run/netns/x"}}],
                   "ips":{ips}}}}}"#
            )
        };
        let web = "0123456789abcdef0123";
        std::fs::write(
            dir.path().join(format!("shop_default-{web}-eth0")),
            result(
                "shop_default",
                web,
                r#"[{"interface":0,"address":"10.4.0.5/24","gateway":"10.4.0.1"},{"interface":0,"address":"fd00:4::5/64"}]"#,
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("other-ffffffffffffffffffff-eth0"),
            result(
                "other",
                "ffffffffffffffffffff",
                r#"[{"address":"10.9.0.2/24"}]"#,
            ),
        )
        .unwrap();
        // A file named for this container that is not its result.
        std::fs::write(dir.path().join(format!("x-{web}-eth1")), "not json").unwrap();
        let n = cni_networks(dir.path(), web);
        assert_eq!(n.len(), 1, "{n:?}");
        let shop = n.get("shop_default").unwrap();
        assert_eq!(shop.ip, Some("10.4.0.5".parse().unwrap()));
        assert_eq!(shop.ipv6, Some("fd00:4::5".parse().unwrap()));
        assert_eq!(shop.gateway, Some("10.4.0.1".parse().unwrap()));
        assert!(cni_networks(&dir.path().join("missing"), web).is_empty());
    }

    #[test]
    fn names_come_from_nerdctl_then_kubernetes_then_the_id() {
        assert_eq!(container_name("web", &labels(&[])), "web");
        assert_eq!(
            container_name("x", &labels(&[(NERDCTL_NAME_LABEL, "shop-web-1")])),
            "shop-web-1"
        );
        let k8s = labels(&[
            (K8S_POD_NAMESPACE, "shop"),
            (K8S_POD_NAME, "web-7d9f"),
            (K8S_CONTAINER_NAME, "nginx"),
        ]);
        assert_eq!(container_name("ab12", &k8s), "shop/web-7d9f/nginx");
        let sandbox = labels(&[(K8S_POD_NAMESPACE, "shop"), (K8S_POD_NAME, "web-7d9f")]);
        assert_eq!(container_name("ab12", &sandbox), "shop/web-7d9f");
    }

    #[test]
    fn kubernetes_containers_take_their_pods_namespace_as_project() {
        let c = Container {
            id: "0123456789abcdef0123".into(),
            labels: [
                (K8S_POD_NAMESPACE.to_owned(), "shop".to_owned()),
                (K8S_POD_NAME.to_owned(), "web-7d9f".to_owned()),
                (K8S_CONTAINER_NAME.to_owned(), "nginx".to_owned()),
            ]
            .into_iter()
            .collect(),
            image: "nginx:1".into(),
            ..Default::default()
        };
        let r = record_from("k8s.io", c, ContainerState::Running, 42);
        assert_eq!(r.id, "0123456789abcdef0123");
        assert_eq!(r.primary_name(), "shop/web-7d9f/nginx");
        assert_eq!(r.project.as_deref(), Some("shop"));
        assert_eq!(r.service.as_deref(), Some("nginx"));
        assert_eq!(
            r.labels.get(K8S_POD_NAME).map(String::as_str),
            Some("web-7d9f")
        );
        assert_eq!(r.pid, 42);
    }

    #[test]
    fn compose_labels_win_over_kubernetes() {
        let c = Container {
            id: "web".into(),
            labels: [("com.docker.compose.project".to_owned(), "shop".to_owned())]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            record_from("default", c, ContainerState::Paused, 1)
                .project
                .as_deref(),
            Some("shop")
        );
    }

    #[test]
    fn record_ids_are_hex_ids_as_they_are_and_hashes_of_others() {
        let hex = "AB".repeat(32);
        assert_eq!(record_id("default", &hex), hex.to_ascii_lowercase());
        let web = record_id("default", "web");
        assert_eq!(web.len(), 64);
        assert!(web.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(web, record_id("default", "web"));
        assert_ne!(web, record_id("other", "web"));
        // Too short for an ID prefix: hashed too.
        assert_eq!(record_id("default", "abc123").len(), 64);
    }

    #[test]
    fn only_running_and_paused_tasks_are_live() {
        assert_eq!(
            live_state(TaskStatus::Running as i32),
            Some(ContainerState::Running)
        );
        assert_eq!(
            live_state(TaskStatus::Paused as i32),
            Some(ContainerState::Paused)
        );
        assert_eq!(live_state(TaskStatus::Stopped as i32), None);
        assert_eq!(live_state(TaskStatus::Created as i32), None);
        assert_eq!(live_state(99), None);
    }

    #[test]
    fn every_topic_names_its_container() {
        use containerd_client::events::{ContainerDelete, TaskExit, TaskStart};
        let any = |m: &dyn Fn() -> Vec<u8>| prost_types::Any {
            type_url: String::new(),
            value: m(),
        };
        let start = any(&|| {
            TaskStart {
                container_id: "web".into(),
                pid: 7,
            }
            .encode_to_vec()
        });
        assert_eq!(
            event_container_id("/tasks/start", &start).as_deref(),
            Some("web")
        );
        let exit = any(&|| {
            TaskExit {
                container_id: "web".into(),
                ..Default::default()
            }
            .encode_to_vec()
        });
        assert_eq!(
            event_container_id("/tasks/exit", &exit).as_deref(),
            Some("web")
        );
        let del = any(&|| ContainerDelete { id: "web".into() }.encode_to_vec());
        assert_eq!(
            event_container_id("/containers/delete", &del).as_deref(),
            Some("web")
        );
        assert_eq!(event_container_id("/images/create", &del), None);
        // Bytes that are not the topic's message name nothing.
        let junk = prost_types::Any {
            type_url: String::new(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert_eq!(event_container_id("/tasks/start", &junk), None);
    }

    #[test]
    fn a_process_start_is_its_stat_ticks_after_boot() {
        // Field 22 of a real line, a command with a space and a ')'.
        let stat = "4242 (sleep ) x) S 4200 4242 4242 0 -1 4194560 97 0 0 0 0 0 0 0 20 0 1 0 \
                    12345 1318912 153 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let proc_stat = "cpu  1 2 3\nintr 0\nbtime 1796083200\nprocesses 9\n";
        // 1796083200 = 2026-12-01T00:00:00Z; 12345 ticks = 123 s.
        assert_eq!(
            started_at_from(stat, proc_stat).as_deref(),
            Some("2026-12-01T00:02:03Z")
        );
        assert_eq!(started_at_from(stat, "cpu 1\n"), None, "no btime");
        assert_eq!(
            started_at_from("4242 (sleep) S 1", proc_stat),
            None,
            "short line"
        );
        assert_eq!(started_at_from("garbage", proc_stat), None);
    }
}
