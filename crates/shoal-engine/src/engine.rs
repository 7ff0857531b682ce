//! The `Engine` trait: the few calls the watcher needs from a container
//! engine, so that Docker and the synthetic engine are interchangeable.

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
}
