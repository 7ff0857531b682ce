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
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummaryStateEnum, EventMessage,
    EventMessageTypeEnum, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use shoal_core::{
    ContainerRecord, ContainerState, EngineId, Health, NetworkAttachment, NodeId, PortMapping,
};
use tokio::sync::OnceCell;

use crate::engine::{
    Engine, EngineError, EngineEvent, EngineIdentity, EventStream, LabelledContainer, NewContainer,
};
use shoal_core::history::{ChangeKind, EventFacts};
use shoal_core::jobs::JOB_LABEL;

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

/// How long one API call (list, inspect, info, create, start) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The timeout of a wait: none. A job may run for hours. bollard bounds
/// only the time to the response's head, which dockerd sends before it
/// blocks, but a proxy in between may hold the head back; a duration this
/// long overflows tokio's deadline, and tokio then sets none.
const NO_TIMEOUT: Duration = Duration::from_secs(u64::MAX);
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

    /// Every container, in any state, that one list filter matches
    /// (`status`, `label`, …, with its values).
    async fn containers_where(
        &self,
        filter: &str,
        values: Vec<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
        let docker = self.client().await?;
        let filters = HashMap::from([(filter, values)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        docker
            .list_containers(Some(options))
            .await
            .map_err(|e| classify(&self.host, e))
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

/// The body of `docker create` for a job's container: its command, env,
/// labels and limits, and nothing that widens what the container may do
/// (no privilege, mounts, host network or capabilities). An invalid limit
/// is the reason why, for [`EngineError::Refused`].
fn create_body(c: &NewContainer) -> Result<ContainerCreateBody, String> {
    // The job spec refuses these already; the engine never relies on it.
    if let Some(net) = c
        .network
        .as_deref()
        .filter(|n| *n == "host" || n.starts_with("container:"))
    {
        return Err(format!(
            "network {net:?} would share another namespace: a job gets its own"
        ));
    }
    let nano_cpus = match c.cpus {
        None => None,
        Some(cpus) if cpus.is_finite() && cpus > 0.0 => Some((cpus * 1e9).round() as i64),
        Some(cpus) => return Err(format!("cpus must be a positive number, not {cpus}")),
    };
    let memory = c
        .memory_bytes
        .map(|m| i64::try_from(m).map_err(|_| format!("a memory limit of {m} bytes is too large")))
        .transpose()?;
    Ok(ContainerCreateBody {
        image: Some(c.image.clone()),
        // None, not an empty list: the image's own command runs.
        cmd: (!c.cmd.is_empty()).then(|| c.cmd.clone()),
        env: (!c.env.is_empty()).then(|| c.env.clone()),
        labels: Some(
            c.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        host_config: Some(HostConfig {
            nano_cpus,
            memory,
            network_mode: c.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// True when the engine's 404 on create is about the image (a missing
/// network is a 404 too on recent engines).
fn no_such_image(message: &str) -> bool {
    message.to_ascii_lowercase().contains("no such image")
}

/// The exit code in a list entry's status (`Exited (7) 3 seconds ago`),
/// which saves an inspect per exited container; `None` when the status
/// does not read that way.
fn exit_code_from_status(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split_once(')')?.0.parse().ok()
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
        let list = self
            .containers_where("status", vec!["running", "paused", "restarting"])
            .await?;
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

    /// Docker creates containers.
    fn cannot_create(&self) -> Option<String> {
        None
    }

    async fn has_image(&self, image: &str) -> Result<bool, EngineError> {
        let docker = self.client().await?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(classify(&self.host, e)),
        }
    }

    /// `docker create` without the pull the CLI would make. The name is the
    /// job's, so a retry after a crash or a lost answer finds the container
    /// the first try made (the engine answers 409) instead of a second one.
    async fn create(&self, c: &NewContainer) -> Result<String, EngineError> {
        let docker = self.client().await?;
        let body = create_body(c).map_err(EngineError::Refused)?;
        let options = CreateContainerOptionsBuilder::default()
            .name(&c.name)
            .build();
        let message = match docker.create_container(Some(options), body).await {
            Ok(created) => {
                for warning in created.warnings.iter().filter(|w| !w.is_empty()) {
                    // A limit the kernel cannot apply is dropped with only
                    // a warning.
                    tracing::warn!(host = %self.host, container = %c.name, "docker create: {warning}");
                }
                return Ok(created.id);
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 409, ..
            }) => return self.created_before(docker, c).await,
            Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            }) if no_such_image(&message) => {
                return Err(EngineError::Refused(format!(
                    "image {:?} is not on this engine ({message}); shoal does not pull images",
                    c.image
                )));
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 400 | 404,
                message,
            }) => message,
            Err(e) => return Err(classify(&self.host, e)),
        };
        Err(EngineError::Refused(format!(
            "the engine refused to create {}: {message}",
            c.name
        )))
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        match docker
            .start_container(id, None::<StartContainerOptions>)
            .await
        {
            // 304: started already (bollard passes it as success; both are
            // taken).
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            // 404: no such container or network; 400: the command cannot
            // run (no such executable). Neither changes on a retry.
            Err(BollardError::DockerResponseServerError {
                status_code: status_code @ (400 | 404),
                message,
            }) => Err(EngineError::Refused(format!(
                "the engine refused to start {id} (HTTP {status_code}): {message}"
            ))),
            Err(e) => Err(classify(&self.host, e)),
        }
    }

    /// Stops and removes the container (`docker rm -f`); gone already is
    /// done.
    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(classify(&self.host, e)),
        }
    }

    /// Waits on a client without the call timeout. A container that exited
    /// already (or never started) answers at once with its exit code.
    async fn wait(&self, id: &str) -> Result<i64, EngineError> {
        let waiter = self.client().await?.clone().with_timeout(NO_TIMEOUT);
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut answers = waiter.wait_container(id, Some(options));
        match answers.next().await {
            Some(Ok(answer)) => Ok(answer.status_code),
            // bollard turns every nonzero exit code into this error.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            })) => Err(EngineError::Refused(format!("wait for {id}: {message}"))),
            Some(Err(e)) => Err(classify(&self.host, e)),
            None => Err(EngineError::Unreachable(format!(
                "{}: the wait for {id} ended without an exit code",
                self.host
            ))),
        }
    }

    async fn labelled(&self, key: &str) -> Result<Vec<LabelledContainer>, EngineError> {
        let docker = self.client().await?;
        let list = self.containers_where("label", vec![key]).await?;
        let mut found = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            let value = c.labels.and_then(|mut l| l.remove(key)).unwrap_or_default();
            let state = c.state.unwrap_or(ContainerSummaryStateEnum::EMPTY);
            let live = matches!(
                state,
                ContainerSummaryStateEnum::RUNNING
                    | ContainerSummaryStateEnum::PAUSED
                    | ContainerSummaryStateEnum::RESTARTING
            );
            let mut exit_code = None;
            if matches!(
                state,
                ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD
            ) {
                exit_code = c.status.as_deref().and_then(exit_code_from_status);
                if exit_code.is_none() {
                    match docker
                        .inspect_container(&id, None::<InspectContainerOptions>)
                        .await
                    {
                        Ok(i) => exit_code = i.state.and_then(|s| s.exit_code),
                        // Removed since the list: it is not there anymore.
                        Err(BollardError::DockerResponseServerError {
                            status_code: 404, ..
                        }) => continue,
                        Err(e) => return Err(classify(&self.host, e)),
                    }
                }
            }
            found.push(LabelledContainer {
                id,
                value,
                live,
                exit_code,
            });
        }
        Ok(found)
    }
}

impl DockerEngine {
    /// After a 409 on create: the container of that name is the job's own
    /// when it carries the job's label with the same value (an earlier try
    /// made it); any other is someone else's and is left alone.
    async fn created_before(
        &self,
        docker: &Docker,
        c: &NewContainer,
    ) -> Result<String, EngineError> {
        let existing = match docker
            .inspect_container(&c.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(existing) => existing,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                // Removed between the create and the inspect: a retry
                // creates it.
                return Err(EngineError::Api(format!(
                    "{}: the name {} was taken, then freed",
                    self.host, c.name
                )));
            }
            Err(e) => return Err(classify(&self.host, e)),
        };
        let theirs = existing
            .config
            .as_ref()
            .and_then(|config| config.labels.as_ref())
            .and_then(|labels| labels.get(JOB_LABEL));
        match (c.labels.get(JOB_LABEL), theirs, existing.id) {
            (Some(ours), Some(theirs), Some(id)) if ours == theirs => Ok(id),
            (_, _, id) => Err(EngineError::Refused(format!(
                "the name {} is taken by another container ({})",
                c.name,
                id.as_deref()
                    .map_or("unknown", |id| &id[..id.len().min(12)])
            ))),
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

    fn job(cmd: &[&str]) -> NewContainer {
        NewContainer {
            name: "shoal-job-1".into(),
            image: "busybox:1".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            labels: [(JOB_LABEL.to_owned(), "1".to_owned())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_container_gets_its_limits_and_nothing_that_widens_it() {
        let body = create_body(&NewContainer {
            env: vec!["A=1".into()],
            cpus: Some(1.0 / 3.0),
            memory_bytes: Some(64 << 20),
            network: Some("jobs".into()),
            ..job(&["sh", "-c", "exit 7"])
        })
        .unwrap();
        assert_eq!(body.image.as_deref(), Some("busybox:1"));
        assert_eq!(body.cmd.unwrap(), ["sh", "-c", "exit 7"]);
        assert_eq!(body.env.unwrap(), ["A=1"]);
        assert_eq!(body.labels.unwrap()[JOB_LABEL], "1");
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(333_333_333));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.network_mode.as_deref(), Some("jobs"));
        assert_eq!(host.privileged, None);
        assert_eq!(host.binds, None);
        assert_eq!(host.mounts, None);
        assert_eq!(host.cap_add, None);
    }

    #[test]
    fn an_empty_command_keeps_the_images_and_no_limit_is_none() {
        let body = create_body(&job(&[])).unwrap();
        assert_eq!(body.cmd, None, "an empty Cmd would not be the image's");
        let host = body.host_config.unwrap();
        assert_eq!(
            (host.nano_cpus, host.memory, host.network_mode),
            (None, None, None)
        );
    }

    #[test]
    fn limits_docker_cannot_take_and_shared_namespaces_are_refused_before_the_call() {
        for cpus in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let c = NewContainer {
                cpus: Some(cpus),
                ..job(&[])
            };
            assert!(create_body(&c).is_err(), "{cpus}");
        }
        for network in ["host", "container:abc"] {
            let c = NewContainer {
                network: Some(network.into()),
                ..job(&[])
            };
            assert!(create_body(&c).is_err(), "{network}");
        }
        let c = NewContainer {
            memory_bytes: Some(u64::MAX),
            ..job(&[])
        };
        assert!(create_body(&c).is_err());
    }

    #[test]
    fn the_exit_code_is_read_from_a_list_status() {
        assert_eq!(exit_code_from_status("Exited (7) 3 seconds ago"), Some(7));
        assert_eq!(
            exit_code_from_status("Exited (137) About a minute ago"),
            Some(137)
        );
        assert_eq!(exit_code_from_status("Up 2 seconds"), None);
        assert_eq!(exit_code_from_status("Created"), None);
    }

    #[test]
    fn a_404_on_create_is_about_the_image_only_when_it_says_so() {
        assert!(no_such_image("No such image: shoal-test/no-such-image:0"));
        assert!(!no_such_image("network nope-net not found"));
    }
}
