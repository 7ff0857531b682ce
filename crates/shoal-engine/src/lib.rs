//! shoal's view of container engines.
//!
//! [`Engine`] is the small trait the rest of shoal needs from an engine:
//! identity, an event subscription, a list of live containers and an
//! inspect. [`DockerEngine`] implements it over bollard,
//! [`ContainerdEngine`] over containerd's gRPC API; [`SyntheticEngine`]
//! holds generated containers in memory for tests, simulations and
//! benchmarks. The [`Watcher`] turns either into a live, correct
//! [`shoal_core::Inventory`] and a stream of deltas; it knows nothing of
//! peers or HTTP.

pub mod containerd;
pub mod docker;
pub mod engine;
pub mod engines;
pub mod synthetic;
pub mod watcher;

pub use containerd::ContainerdEngine;
pub use docker::DockerEngine;
pub use engine::{
    Engine, EngineError, EngineEvent, EngineIdentity, EventStream, LabelledContainer, NewContainer,
};
pub use engines::{
    EngineState, Engines, EnginesConfig, EnginesCounters, EnginesHandle, EnginesStatus,
};
pub use synthetic::{SyntheticEngine, SyntheticSpec, synthetic_id, synthetic_record};
pub use watcher::{Watcher, WatcherConfig, WatcherCounters, WatcherHandle, WatcherStatus};
