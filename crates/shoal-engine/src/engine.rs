//! The `Engine` trait: the few calls the watcher needs from a container
//! engine, so that Docker and the synthetic engine are interchangeable.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use shoal_core::history::EventFacts;
use shoal_core::{ContainerRecord, EngineId};

/// Who an engine is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineIdentity {
    /// The engine's own ID (`docker info` ID). Records are identified by
    /// `(engine_id, container_id)`.
    pub id: EngineId,
    /// `docker` or `synthetic`.
    pub kind: &'static str,
    /// The engine's version (`28.2.2`).
    pub version: String,
    /// The API version in use after negotiation, if the engine has one.
    pub api_version: Option<String>,
    /// The host name the engine reports.
    pub host_name: String,
}

impl fmt::Display for EngineIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.kind, self.version, self.id)
    }
}

/// Something the engine said about one container: the watcher re-reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineEvent {
    /// The full container ID.
    pub container_id: String,
    /// The engine's word for what happened (`start`, `die`, `connect`, …),
    /// for logs.
    pub action: String,
    /// What it means for the history: the kind of change, the engine's
    /// time, an exit code.
    pub facts: EventFacts,
}

impl EngineEvent {
    /// An event about `container_id` that the history does not keep.
    pub fn new(container_id: impl Into<String>, action: impl Into<String>) -> Self {
        EngineEvent {
            container_id: container_id.into(),
            action: action.into(),
            facts: EventFacts::default(),
        }
    }
}

/// Why an engine call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The engine cannot be reached: socket missing, connection refused or
    /// dropped, timeout. The watcher keeps its last inventory and retries.
    #[error("engine unreachable: {0}")]
    Unreachable(String),
    /// The engine answered with an error.
    #[error("engine error: {0}")]
    Api(String),
    /// The event stream ended or fell behind.
    #[error("event stream lost: {0}")]
    StreamLost(String),
    /// The engine refused the request for good (no such image, a bad
    /// setting): trying again gives the same answer.
    #[error("{0}")]
    Refused(String),
    /// This engine cannot do that (containerd and the synthetic engine
    /// create no containers).
    #[error("{0}")]
    Unsupported(String),
}

impl EngineError {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            EngineError::Unreachable(_) | EngineError::Api(_) | EngineError::StreamLost(_)
        )
    }
}

/// A container a job asks an engine to create, as `docker create`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewContainer {
    /// Its name (`shoal-job-<id>`): a container of that name that exists
    /// already is the one (a retry after a crash finds it).
    pub name: String,
    /// The image, which must be on the engine: nothing is pulled.
    pub image: String,
    /// The command; empty keeps the image's.
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Labels, the job's ID among them.
    pub labels: BTreeMap<String, String>,
    /// CPUs, as `--cpus`.
    pub cpus: Option<f64>,
    /// Memory in bytes, as `--memory`.
    pub memory_bytes: Option<u64>,
    /// A network to attach instead of the default bridge.
    pub network: Option<String>,
}

/// A container found by its label (see [`Engine::labelled`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledContainer {
    /// Its full ID.
    pub id: String,
    /// The label's value.
    pub value: String,
    /// Running (or paused, restarting).
    pub live: bool,
    /// Its exit code, once it exited.
    pub exit_code: Option<i64>,
}

/// A stream of events that starts no later than the `subscribe` call that
/// returned it.
pub type EventStream = BoxStream<'static, Result<EngineEvent, EngineError>>;

/// A container engine, as the watcher uses it.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// The kind of engine (`docker`, `containerd`), known before it
    /// answers; the same word as [`EngineIdentity::kind`].
    fn kind(&self) -> &'static str;

    /// The engine's identity and version.
    async fn identity(&self) -> Result<EngineIdentity, EngineError>;

    /// Subscribes to container events. Every event that happens after this
    /// call returns is delivered; events from a little before may be
    /// delivered too (re-reading a container is idempotent).
    async fn subscribe(&self) -> Result<EventStream, EngineError>;

    /// The IDs of the live containers (running, paused, restarting).
    async fn list(&self) -> Result<Vec<String>, EngineError>;

    /// Reads one container. `None` when it is gone or not live. The
    /// record's `node`, `engine_id` and `updated_at` are left for the
    /// watcher to fill.
    async fn inspect(&self, id: &str) -> Result<Option<ContainerRecord>, EngineError>;

    /// Why this engine cannot create containers, or `None` when it can.
    fn cannot_create(&self) -> Option<String> {
        Some(format!(
            "the {} engine does not create containers",
            self.kind()
        ))
    }

    /// True when the image is on the engine.
    async fn has_image(&self, _image: &str) -> Result<bool, EngineError> {
        Err(self.unsupported())
    }

    /// Creates the container, or finds the one of that name (created by an
    /// earlier try) and answers its ID. Never pulls an image: a missing one
    /// is [`EngineError::Refused`].
    async fn create(&self, _container: &NewContainer) -> Result<String, EngineError> {
        Err(self.unsupported())
    }

    /// Starts a created container (a running one is left as it is).
    async fn start(&self, _id: &str) -> Result<(), EngineError> {
        Err(self.unsupported())
    }

    /// Waits for the container to exit and answers its exit code.
    async fn wait(&self, _id: &str) -> Result<i64, EngineError> {
        Err(self.unsupported())
    }

    /// Stops and removes a container (gone already is done).
    async fn remove(&self, _id: &str) -> Result<(), EngineError> {
        Err(self.unsupported())
    }

    /// Every container, in any state, that carries the label `key`.
    async fn labelled(&self, _key: &str) -> Result<Vec<LabelledContainer>, EngineError> {
        Err(self.unsupported())
    }

    /// The error of a call this engine does not make.
    fn unsupported(&self) -> EngineError {
        EngineError::Unsupported(
            self.cannot_create()
                .unwrap_or_else(|| format!("the {} engine does not do that", self.kind())),
        )
    }
}
