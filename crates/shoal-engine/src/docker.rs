//! `DockerEngine`: the Docker Engine API through bollard, with the API
//! version negotiated so that old engines (20.10, API 1.41) and new ones
//! (28.x) both work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{
    EventsOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
};
use futures::StreamExt;
use shoal_core::{
    ContainerRecord, ContainerState, EngineId, Health, NetworkAttachment, NodeId, PortMapping,
};
use tokio::sync::OnceCell;

use crate::engine::{Engine, EngineError, EngineEvent, EngineIdentity, EventStream};
use shoal_core::history::{ChangeKind, EventFacts};

/// The socket Docker listens on when `DOCKER_HOST` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Container actions after which the container is re-read. Others (exec_*,
/// attach, top, …) change nothing the inventory holds; healthchecks alone
/// cause an exec_* event every interval.
const CONTAINER_ACTIONS: &[&str] = &[
    "create",
    "start",
    "restart",
    "die",
    "stop",
    "kill",
    "oom",
    "destroy",
    "pause",
    "unpause",
    "rename",
    "health_status",
    "update",
];
const NETWORK_ACTIONS: &[&str] = &["connect", "disconnect"];

/// How long one API call (list, inspect, info) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Events a little older than the subscription are replayed too: the
/// engine's clock and ours may differ, and re-reading is idempotent.
const SINCE_MARGIN: time::Duration = time::Duration::seconds(2);

/// A Docker engine reached through bollard.
pub struct DockerEngine {
    host: String,
    client: Docker,
    negotiated: OnceCell<()>,
}

impl DockerEngine {
    /// A client for `host` (`unix:///path`, `tcp://host:port` or
    /// `http://…`). Nothing is sent until the first call. Fails only when
    /// the address cannot be a Docker host.
    pub fn connect(host: &str) -> Result<Self, EngineError> {
        let client = Docker::connect_with_host(host)
            .map_err(|e| EngineError::Unreachable(format!("{host}: {e}")))?
            .with_timeout(CALL_TIMEOUT);
        Ok(DockerEngine {
            host: host.to_owned(),
            client,
            negotiated: OnceCell::new(),
        })
    }

    /// The host from `DOCKER_HOST`, else the local socket.
    pub fn default_host() -> String {
        std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned())
    }

    /// When `host` is a unix socket that does not exist, a message a person
    /// can act on; `None` otherwise (including every non-unix host).
    pub fn missing_socket(host: &str) -> Option<String> {
        let path = host.strip_prefix("unix://")?;
        (!Path::new(path).exists()).then(|| {
            format!(
                "the Docker socket {path} does not exist: is dockerd running on this host? \
                 Point --docker-host (or DOCKER_HOST) at the engine's socket, \
                 or use --engine synthetic to run without one"
            )
        })
    }

    /// The address this client talks to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Negotiates the API version once per client: bollard starts at its
    /// newest version and steps down to what the engine speaks.
    async fn client(&self) -> Result<&Docker, EngineError> {
        self.negotiated
            .get_or_try_init(|| async {
                let negotiated = self
                    .client
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(|e| classify(&self.host, e))?;
                // negotiate_version shares its version cell with our client.
                drop(negotiated);
                Ok::<(), EngineError>(())
            })
            .await?;
        Ok(&self.client)
    }
}

/// An error with its causes: bollard's own message often hides the one a
/// person needs ("permission denied", "no such file").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn classify(host: &str, e: BollardError) -> EngineError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Api(format!("{host}: HTTP {status_code}: {message}")),
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            EngineError::Api(format!("{host}: {e}"))
        }
        other => EngineError::Unreachable(format!("{host}: {}", with_causes(&other))),
    }
}

/// Reads an event into "re-read this container", or `None` for events that
/// change nothing the inventory holds.
pub fn event_container(ev: &EventMessage) -> Option<EngineEvent> {
    let action = ev.action.as_deref()?;
    let actor = ev.actor.as_ref()?;
    // health_status carries its result after a colon.
    let verb = action.split(':').next().unwrap_or(action).trim();
    let id = match ev.typ? {
        EventMessageTypeEnum::CONTAINER if CONTAINER_ACTIONS.contains(&verb) => actor.id.clone()?,
        EventMessageTypeEnum::NETWORK if NETWORK_ACTIONS.contains(&verb) => {
            actor.attributes.as_ref()?.get("container")?.clone()
        }
        _ => return None,
    };
    let attribute = |k: &str| actor.attributes.as_ref()?.get(k).cloned();
    let (kind, detail) = match verb {
        "start" => (Some(ChangeKind::Started), None),
        "die" => (Some(ChangeKind::Stopped), None),
        "destroy" => (Some(ChangeKind::Removed), None),
        "rename" => (
            Some(ChangeKind::Renamed),
            attribute("oldName").map(|n| n.trim_start_matches('/').to_owned()),
        ),
        "pause" => (Some(ChangeKind::Paused), None),
        "unpause" => (Some(ChangeKind::Unpaused), None),
        "health_status" => (
            Some(ChangeKind::Health),
            action.split_once(':').map(|(_, s)| s.trim().to_owned()),
        ),
        "connect" => (Some(ChangeKind::NetworkConnected), attribute("name")),
        "disconnect" => (Some(ChangeKind::NetworkDisconnected), attribute("name")),
        _ => (None, None),
    };
    Some(EngineEvent {
        container_id: id,
        action: verb.to_owned(),
        facts: EventFacts {
            kind,
            time_ns: ev
                .time_nano
                .or_else(|| ev.time.map(|s| s.saturating_mul(1_000_000_000))),
            exit_code: (verb == "die")
                .then(|| attribute("exitCode")?.parse().ok())
                .flatten(),
            detail,
        },
    })
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn parse_ip(s: Option<&String>) -> Option<IpAddr> {
    s.and_then(|s| s.parse().ok())
}

/// Turns an inspect answer into a record, `Ok(None)` when the container is
/// not live, or an error when the answer lacks the ID or state that say
/// which container it is and whether it lives: such an answer must not read
/// as "gone". `node`, `engine_id` and `updated_at` are left for the watcher.
pub fn record_from_inspect(
    c: ContainerInspectResponse,
) -> Result<Option<ContainerRecord>, &'static str> {
    let st = c.state.unwrap_or_default();
    let status = st.status.ok_or("the inspect answer has no State.Status")?;
    let id = c.id.ok_or("the inspect answer has no Id")?;
    let Some(state) = ContainerState::from_engine(status.as_ref()) else {
        return Ok(None);
    };
    let config = c.config.unwrap_or_default();
    let labels: shoal_core::Labels = config.labels.unwrap_or_default().into_iter().collect();
    let settings = c.network_settings.unwrap_or_default();
    let networks = settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| {
            let attachment = NetworkAttachment {
                ip: parse_ip(ep.ip_address.as_ref()),
                ipv6: parse_ip(ep.global_ipv6_address.as_ref()),
                mac: non_empty(ep.mac_address),
                aliases: ep.aliases.unwrap_or_default(),
                gateway: parse_ip(ep.gateway.as_ref()),
            };
            (name, attachment)
        })
        .collect();
    let ports = ports_from(settings.ports.unwrap_or_default());
    let started_at = non_empty(st.started_at).filter(|s| !s.starts_with("0001-"));
    Ok(Some(
        ContainerRecord {
            id,
            names: non_empty(c.name)
                .map(|n| n.trim_start_matches('/').to_owned())
                .into_iter()
                .collect(),
            image: config.image.unwrap_or_default(),
            image_id: c.image.unwrap_or_default(),
            state,
            pid: st.pid.unwrap_or(0),
            labels,
            project: None,
            service: None,
            networks,
            ports,
            health: st
                .health
                .and_then(|h| h.status)
                .map(|s| Health::from_engine(s.as_ref()))
                .unwrap_or_default(),
            created: c.created.unwrap_or_default(),
            started_at,
            node: NodeId::default(),
            engine_id: EngineId::default(),
            updated_at: 0,
        }
        .with_compose_fields(),
    ))
}

fn ports_from(map: HashMap<String, Option<Vec<bollard::models::PortBinding>>>) -> Vec<PortMapping> {
    let mut ports = Vec::new();
    for (spec, bindings) in map {
        let (port, protocol) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
        let Ok(container_port) = port.parse::<u16>() else {
            continue;
        };
        let bindings = bindings.unwrap_or_default();
        if bindings.is_empty() {
            ports.push(PortMapping {
                container_port,
                protocol: protocol.to_owned(),
                host_ip: None,
                host_port: None,
            });
        }
        for b in bindings {
            ports.push(PortMapping {
                container_port,
                protocol: protocol.to_owned(),
                host_ip: non_empty(b.host_ip),
                host_port: b.host_port.and_then(|p| p.parse().ok()),
            });
        }
    }
    ports.sort_by(|a, b| {
        (a.container_port, &a.protocol, &a.host_ip, a.host_port).cmp(&(
            b.container_port,
            &b.protocol,
            &b.host_ip,
            b.host_port,
        ))
    });
    ports
}

#[async_trait]
impl Engine for DockerEngine {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn identity(&self) -> Result<EngineIdentity, EngineError> {
        let docker = self.client().await?;
        let info = docker.info().await.map_err(|e| classify(&self.host, e))?;
        let id = non_empty(info.id)
            .ok_or_else(|| EngineError::Api(format!("{}: the engine reported no ID", self.host)))?;
        Ok(EngineIdentity {
            id: EngineId(id),
            kind: "docker",
            version: info.server_version.unwrap_or_default(),
            api_version: Some(docker.client_version().to_string()),
            host_name: info.name.unwrap_or_default(),
        })
    }

    async fn subscribe(&self) -> Result<EventStream, EngineError> {
        let docker = self.client().await?;
        // Ask for events since the engine's own "now": events are replayed
        // from the engine's buffer even if our request is registered a little
        // later, so nothing falls between this call and the list after it.
        let info = docker.info().await.map_err(|e| classify(&self.host, e))?;
        let since = info
            .system_time
            .as_deref()
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| t - SINCE_MARGIN)
            .ok_or_else(|| {
                EngineError::Api(format!("{}: the engine reported no usable time", self.host))
            })?;
        let since = format!("{}.{:09}", since.unix_timestamp(), since.nanosecond());
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container", "network"]);
        let options = EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        let host = self.host.clone();
        let host_end = host.clone();
        let events = docker
            .events(Some(options))
            .filter_map(move |item| {
                let host = host.clone();
                async move {
                    match item {
                        Ok(ev) => event_container(&ev).map(Ok),
                        Err(e) => Some(Err(EngineError::StreamLost(format!("{host}: {e}")))),
                    }
                }
            })
            .chain(futures::stream::once(async move {
                Err(EngineError::StreamLost(format!(
                    "{host_end}: the event stream ended"
                )))
            }));
        Ok(events.boxed())
    }

    async fn list(&self) -> Result<Vec<String>, EngineError> {
        let docker = self.client().await?;
        let mut filters = HashMap::new();
        filters.insert("status", vec!["running", "paused", "restarting"]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| classify(&self.host, e))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerRecord>, EngineError> {
        let docker = self.client().await?;
        match docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => record_from_inspect(c)
                .map_err(|why| EngineError::Api(format!("{}: inspect {id}: {why}", self.host))),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(classify(&self.host, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn event(
        typ: EventMessageTypeEnum,
        action: &str,
        id: &str,
        attrs: &[(&str, &str)],
    ) -> EventMessage {
        EventMessage {
            typ: Some(typ),
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: Some(id.to_owned()),
                attributes: Some(
                    attrs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn container_lifecycle_events_reread_the_container() {
        for action in [
            "start", "die", "stop", "kill", "destroy", "pause", "unpause", "rename", "update",
        ] {
            let ev = event_container(&event(EventMessageTypeEnum::CONTAINER, action, "abc", &[]));
            assert_eq!(
                ev.map(|e| e.container_id),
                Some("abc".to_owned()),
                "{action}"
            );
        }
    }

    #[test]
    fn health_status_carries_its_result_after_a_colon() {
        let ev = event_container(&event(
            EventMessageTypeEnum::CONTAINER,
            "health_status: healthy",
            "abc",
            &[],
        ));
        assert_eq!(ev.unwrap().action, "health_status");
    }

    #[test]
    fn exec_events_are_ignored() {
        for action in [
            "exec_create: sh",
            "exec_start: sh",
            "exec_die",
            "attach",
            "top",
        ] {
            assert_eq!(
                event_container(&event(EventMessageTypeEnum::CONTAINER, action, "abc", &[])),
                None
            );
        }
    }

    #[test]
    fn network_connect_rereads_the_container_it_names() {
        let ev = event_container(&event(
            EventMessageTypeEnum::NETWORK,
            "connect",
            "netid",
            &[("container", "abc"), ("name", "testnet")],
        ));
        assert_eq!(ev.unwrap().container_id, "abc");
        let ev = event_container(&event(
            EventMessageTypeEnum::NETWORK,
            "create",
            "netid",
            &[],
        ));
        assert_eq!(ev, None);
    }

    #[test]
    fn a_missing_unix_socket_is_named() {
        let msg = DockerEngine::missing_socket("unix:///nonexistent/docker.sock").unwrap();
        assert!(msg.contains("/nonexistent/docker.sock"));
        assert_eq!(DockerEngine::missing_socket("tcp://127.0.0.1:2375"), None);
    }

    #[test]
    fn exited_containers_are_not_records() {
        let c = ContainerInspectResponse {
            id: Some("a".repeat(64)),
            state: Some(bollard::models::ContainerState {
                status: Some(bollard::models::ContainerStateStatusEnum::EXITED),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(record_from_inspect(c), Ok(None));
    }

    #[test]
    fn an_inspect_answer_without_id_or_state_is_an_error_not_gone() {
        let running = || {
            Some(bollard::models::ContainerState {
                status: Some(bollard::models::ContainerStateStatusEnum::RUNNING),
                ..Default::default()
            })
        };
        let no_id = ContainerInspectResponse {
            state: running(),
            ..Default::default()
        };
        assert!(record_from_inspect(no_id).is_err());
        let no_state = ContainerInspectResponse {
            id: Some("a".repeat(64)),
            ..Default::default()
        };
        assert!(record_from_inspect(no_state).is_err());
        let live = ContainerInspectResponse {
            id: Some("a".repeat(64)),
            state: running(),
            ..Default::default()
        };
        assert!(matches!(record_from_inspect(live), Ok(Some(_))));
    }
}
