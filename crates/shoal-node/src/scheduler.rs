//! The scheduler: named tasks on `@every <duration>` or cron specs,
//! configured gardener-style in the YAML config
//! (`scheduler.jobs: [{name, spec, desc, payload}]`), run by each node.
//!
//! Built-in tasks:
//! - `history.snapshot` (this node's): every live container of its engines
//!   into the history, so that "as of" finds long-running containers
//!   whatever the retention deleted;
//! - `history.retention` (the fleet's with a shared PostgreSQL, else this
//!   node's): deletes what is older than `--history-retention` (or the
//!   payload's `keep`);
//! - `inventory.reconcile` (this node's): the watchers' full resync.
//!
//! A period is a slot: `@every` periods are aligned to the epoch and a cron
//! spec's occurrences are the same at every node, so every node names a
//! period alike. A fleet-wide task runs at the ring owner of its name
//! (`task:<name>`); when that node dies the next owner is the owner. Each
//! run claims its (task, slot) in the history store first, so a run is
//! never doubled, even while two nodes briefly both take themselves for
//! the owner.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_core::{LookupKey, NodeId};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::now_ms;

/// When a task runs.
#[derive(Clone, Debug)]
pub enum Spec {
    /// Every period, aligned to the epoch.
    Every(Duration),
    /// At a cron pattern's occurrences (UTC).
    Cron(Box<croner::Cron>),
}

/// A spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {spec:?}: {why}")]
pub struct SpecError {
    /// The spec as given.
    pub spec: String,
    /// What is wrong.
    pub why: String,
}

impl FromStr for Spec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Spec, SpecError> {
        let bad = |why: String| SpecError {
            spec: s.to_owned(),
            why,
        };
        let s = s.trim();
        if let Some(every) = s.strip_prefix("@every") {
            let every = every.trim();
            let d = humantime::parse_duration(every)
                .map_err(|e| bad(format!("{every:?} is not a duration (1h, 30m, 10s): {e}")))?;
            if d < Duration::from_secs(1) {
                return Err(bad("the period must be at least 1s".into()));
            }
            if d > Duration::from_secs(366 * 86_400) {
                return Err(bad("the period must be at most a year".into()));
            }
            return Ok(Spec::Every(d));
        }
        if s.is_empty() {
            return Err(bad(
                "give @every <duration> or a cron pattern (\"0 3 * * *\")".into(),
            ));
        }
        let cron = croner::Cron::from_str(s).map_err(|e| {
            bad(format!(
                "not @every <duration> and not a cron pattern (minute hour day month weekday, or @hourly, @daily): {e}"
            ))
        })?;
        Ok(Spec::Cron(Box::new(cron)))
    }
}

impl Spec {
    /// The start of the first period after `now_ms`.
    pub fn next_after(&self, now_ms: i64) -> Option<i64> {
        match self {
            Spec::Every(d) => {
                let p = d.as_millis() as i64;
                Some((now_ms.div_euclid(p) + 1) * p)
            }
            Spec::Cron(c) => {
                let now = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms)?;
                c.find_next_occurrence(&now, false)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
        }
    }
}

/// One job of `scheduler.jobs`, as the YAML file gives it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// A built-in task: history.snapshot, history.retention or
    /// inventory.reconcile.
    pub name: String,
    /// `@every <duration>` or a cron pattern.
    pub spec: String,
    /// What it is for, for `/v1/tasks`.
    #[serde(default)]
    pub desc: String,
    /// The task's input (history.retention: `{keep: 30d}`).
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
}

/// The task names.
pub const SNAPSHOT: &str = "history.snapshot";
/// See the module's doc.
pub const RETENTION: &str = "history.retention";
/// See the module's doc.
pub const RECONCILE: &str = "inventory.reconcile";

/// What a task does.
#[derive(Clone, Debug, PartialEq)]
pub enum Task {
    /// [`SNAPSHOT`].
    Snapshot,
    /// [`RETENTION`]: what is older than this goes.
    Retention {
        /// How long to keep.
        keep: Duration,
    },
    /// [`RECONCILE`].
    Reconcile,
}

/// A job ready to run.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its name (the task's).
    pub name: String,
    /// Its spec as given.
    pub spec_text: String,
    /// Its spec.
    pub spec: Spec,
    /// What it is for.
    pub desc: String,
    /// What it does.
    pub task: Task,
}

impl Job {
    /// Reads a configured job; `retention` is `--history-retention`.
    pub fn from_config(c: &JobConfig, retention: Duration) -> Result<Job, String> {
        let spec: Spec = c
            .spec
            .parse()
            .map_err(|e: SpecError| format!("scheduler job {:?}: {e}", c.name))?;
        let payload = c.payload.clone().unwrap_or(serde_json::Value::Null);
        let keys: Vec<String> = match &payload {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::Object(m) => m.keys().cloned().collect(),
            _ => {
                return Err(format!("scheduler job {:?}: payload must be a map", c.name));
            }
        };
        let takes: &[&str] = match c.name.as_str() {
            RETENTION => &["keep"],
            SNAPSHOT | RECONCILE => &[],
            other => {
                return Err(format!(
                    "scheduler job {other:?}: no such task; the tasks are {SNAPSHOT}, {RETENTION} and {RECONCILE}"
                ));
            }
        };
        if let Some(k) = keys.iter().find(|k| !takes.contains(&k.as_str())) {
            return Err(format!(
                "scheduler job {:?}: payload key {k:?} is not one it takes ({takes:?})",
                c.name
            ));
        }
        let task = match c.name.as_str() {
            SNAPSHOT => Task::Snapshot,
            RECONCILE => Task::Reconcile,
            _ => {
                let keep = match payload.get("keep") {
                    None => retention,
                    Some(serde_json::Value::String(s)) => {
                        humantime::parse_duration(s).map_err(|e| {
                            format!(
                                "scheduler job {:?}: keep {s:?} is not a duration: {e}",
                                c.name
                            )
                        })?
                    }
                    Some(other) => {
                        return Err(format!(
                            "scheduler job {:?}: keep must be a duration such as \"30d\", not {other}",
                            c.name
                        ));
                    }
                };
                if keep < Duration::from_secs(60) {
                    return Err(format!(
                        "scheduler job {:?}: keep must be at least a minute",
                        c.name
                    ));
                }
                Task::Retention { keep }
            }
        };
        Ok(Job {
            name: c.name.clone(),
            spec_text: c.spec.clone(),
            spec,
            desc: c.desc.clone(),
            task,
        })
    }

    /// The jobs of a node configured with none: a snapshot and the
    /// retention every hour, the reconcile every `resync`.
    pub fn defaults(resync: Duration, retention: Duration) -> Vec<Job> {
        let job = |name: &str, spec: String, desc: &str| JobConfig {
            name: name.to_owned(),
            spec,
            desc: desc.to_owned(),
            payload: None,
        };
        [
            job(
                SNAPSHOT,
                "@every 1h".into(),
                "every live container into the history",
            ),
            job(
                RETENTION,
                "@every 1h".into(),
                "delete history older than --history-retention",
            ),
            job(
                RECONCILE,
                format!("@every {}", humantime::format_duration(resync)),
                "the watchers' full resync with their engines",
            ),
        ]
        .iter()
        .map(|c| Job::from_config(c, retention).expect("the default jobs parse"))
        .collect()
    }

    /// True for the tasks that read or write the history store.
    pub fn needs_history(&self) -> bool {
        !matches!(self.task, Task::Reconcile)
    }

    /// True when one node runs it for the fleet: the retention of a
    /// shared store.
    pub fn fleet_wide(&self, shared_store: bool) -> bool {
        matches!(self.task, Task::Retention { .. }) && shared_store
    }
}

/// A run, as `/v1/tasks` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunView {
    /// The node that ran it.
    pub node: String,
    /// When it started (RFC 3339).
    pub at: String,
    /// How long it took, once done.
    pub duration_ms: Option<i64>,
    /// `running`, `ok` or `failed`.
    pub outcome: String,
    /// What it did, or why it failed.
    pub detail: Option<String>,
}

/// A task, as `/v1/tasks` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    /// Its name.
    pub name: String,
    /// Its spec.
    pub spec: String,
    /// What it is for.
    pub desc: String,
    /// `fleet` (one node runs it for all) or `node` (each node its own).
    pub scope: &'static str,
    /// Who runs it: the ring owner for a fleet task, else this node.
    pub runs_on: NodeId,
    /// The last run, if any.
    pub last_run: Option<RunView>,
    /// When it runs next (RFC 3339).
    pub next_run: Option<String>,
}

/// The answer to `GET /v1/tasks`.
#[derive(Clone, Debug, Serialize)]
pub struct TasksAnswer {
    /// This node's tasks.
    pub tasks: Vec<TaskView>,
    /// The node that answered.
    pub served_by: NodeId,
}

/// What the scheduler needs from the node.
pub trait TaskHost: Send + Sync + 'static {
    /// This node.
    fn me(&self) -> NodeId;
    /// The ring owner of `key` now (the first owner), if any.
    fn owner_of(&self, key: &LookupKey) -> Option<NodeId>;
    /// The history store, if connected, and whether it is shared.
    fn store(&self) -> Option<(Arc<shoal_history::Store>, bool)>;
    /// Writes a snapshot of this node's live containers for period
    /// `slot_ms`; answers how many.
    fn snapshot(&self, slot_ms: i64) -> usize;
    /// Asks the watchers for a full resync.
    fn reconcile(&self);
}

/// The scheduler's state: each job's last run at this node.
pub struct Scheduler {
    jobs: Vec<Job>,
    last: Mutex<BTreeMap<String, RunView>>,
}

fn rfc3339(ms: i64) -> String {
    crate::history::rfc3339_ms(ms)
}

impl Scheduler {
    /// A scheduler of `jobs`.
    pub fn new(jobs: Vec<Job>) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            jobs,
            last: Mutex::new(BTreeMap::new()),
        })
    }

    /// Runs every job until `stop`.
    pub fn spawn(
        self: &Arc<Self>,
        host: Arc<dyn TaskHost>,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.jobs.len())
            .map(|i| {
                let (me, host, stop) = (self.clone(), host.clone(), stop.clone());
                tokio::spawn(async move { me.run_job(i, host, stop).await })
            })
            .collect()
    }

    async fn run_job(self: Arc<Self>, i: usize, host: Arc<dyn TaskHost>, stop: CancellationToken) {
        let job = &self.jobs[i];
        loop {
            let Some(slot) = job.spec.next_after(now_ms() as i64) else {
                warn!(task = %job.name, spec = %job.spec_text, "the schedule has no next run; the task stops");
                return;
            };
            let wait = Duration::from_millis((slot - now_ms() as i64).max(0) as u64);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            self.run_once(job, slot, host.as_ref()).await;
        }
    }

    /// Runs `job` for the period `slot` if this node is to: a fleet task
    /// only at its owner, and only when the claim of the period succeeds.
    pub async fn run_once(&self, job: &Job, slot: i64, host: &dyn TaskHost) {
        let me = host.me();
        let store = host.store();
        let shared = store.as_ref().is_some_and(|(_, shared)| *shared);
        if job.fleet_wide(shared) {
            let owner = host.owner_of(&task_key(&job.name));
            if owner.as_ref() != Some(&me) {
                return;
            }
        }
        let started = now_ms() as i64;
        let needs_store = job.needs_history();
        if needs_store {
            let Some((store, _)) = &store else {
                self.finished(
                    job,
                    &me,
                    started,
                    Err("the history store is not reachable".into()),
                );
                return;
            };
            match store
                .claim_run(&run_name(job, shared, &me), slot, &me.0, started)
                .await
            {
                Ok(true) => {}
                Ok(false) => return, // someone ran this period already
                Err(e) => {
                    self.finished(job, &me, started, Err(format!("claiming the run: {e}")));
                    return;
                }
            }
        }
        let outcome = match &job.task {
            Task::Reconcile => {
                host.reconcile();
                Ok("asked every watcher for a full resync".to_owned())
            }
            Task::Snapshot => Ok(format!(
                "{} live containers into the history",
                host.snapshot(slot)
            )),
            Task::Retention { keep } => match &store {
                Some((store, _)) => {
                    let before = started - keep.as_millis() as i64;
                    match store.delete_before(before).await {
                        Ok(n) => {
                            let _ = store.delete_runs_before(before).await;
                            Ok(format!("deleted {n} changes before {}", rfc3339(before)))
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => Err("the history store is not reachable".into()),
            },
        };
        if needs_store && let Some((store, _)) = &store {
            let (ok, detail) = match &outcome {
                Ok(d) => (true, d.as_str()),
                Err(e) => (false, e.as_str()),
            };
            if let Err(e) = store
                .finish_run(
                    &run_name(job, shared, &me),
                    slot,
                    now_ms() as i64,
                    ok,
                    detail,
                )
                .await
            {
                warn!(task = %job.name, error = %e, "could not record how the run ended");
            }
        }
        self.finished(job, &me, started, outcome);
    }

    fn finished(&self, job: &Job, me: &NodeId, started: i64, outcome: Result<String, String>) {
        let took = now_ms() as i64 - started;
        let (name, detail) = (job.name.clone(), outcome.clone());
        match &outcome {
            Ok(d) => info!(task = %name, took_ms = took, "{d}"),
            Err(e) => warn!(task = %name, took_ms = took, error = %e, "task failed"),
        }
        let run = RunView {
            node: me.0.clone(),
            at: rfc3339(started),
            duration_ms: Some(took),
            outcome: if outcome.is_ok() { "ok" } else { "failed" }.into(),
            detail: Some(detail.unwrap_or_else(|e| e)),
        };
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, run);
    }

    /// `/v1/tasks`: every job, its owner, last run and next run. A fleet
    /// task's last run is read from the shared store (another node may
    /// have run it).
    pub async fn view(&self, host: &dyn TaskHost) -> TasksAnswer {
        let me = host.me();
        let store = host.store();
        let shared = store.as_ref().is_some_and(|(_, s)| *s);
        let mut tasks = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            let fleet = job.fleet_wide(shared);
            let runs_on = if fleet {
                host.owner_of(&task_key(&job.name))
                    .unwrap_or_else(|| me.clone())
            } else {
                me.clone()
            };
            let local = self
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&job.name)
                .cloned();
            let last_run = match (&store, fleet) {
                (Some((store, _)), true) => match store.runs(&job.name, 1).await {
                    Ok(runs) => runs.into_iter().next().map(|r| RunView {
                        node: r.node,
                        at: rfc3339(r.started_ms),
                        duration_ms: r.finished_ms.map(|f| f - r.started_ms),
                        outcome: r.outcome,
                        detail: r.detail,
                    }),
                    Err(_) => local,
                },
                _ => local,
            };
            tasks.push(TaskView {
                name: job.name.clone(),
                spec: job.spec_text.clone(),
                desc: job.desc.clone(),
                scope: if fleet { "fleet" } else { "node" },
                runs_on,
                last_run,
                next_run: job.spec.next_after(now_ms() as i64).map(rfc3339),
            });
        }
        TasksAnswer {
            tasks,
            served_by: me,
        }
    }
}

/// The name a run is claimed under: the task's for a fleet task, the
/// task's at this node (`history.snapshot@node1`) for a node's own, so that
/// with a shared store each node still runs its own.
fn run_name(job: &Job, shared_store: bool, me: &NodeId) -> String {
    if job.fleet_wide(shared_store) {
        job.name.clone()
    } else {
        format!("{}@{}", job.name, me)
    }
}

/// The ring key of a task's owner.
pub fn task_key(name: &str) -> LookupKey {
    LookupKey::Name(format!("task:{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_say_what_is_wrong() {
        assert!(
            matches!("@every 1h".parse::<Spec>(), Ok(Spec::Every(d)) if d == Duration::from_secs(3600))
        );
        assert!(matches!("0 3 * * *".parse::<Spec>(), Ok(Spec::Cron(_))));
        assert!(matches!("@daily".parse::<Spec>(), Ok(Spec::Cron(_))));
        for (bad, says) in [
            ("@every", "not a duration"),
            ("@every soon", "not a duration"),
            ("@every 10ms", "at least 1s"),
            ("@every 2y", "at most a year"),
            ("", "give @every"),
            ("61 * * * *", "cron pattern"),
            ("every hour", "cron pattern"),
        ] {
            let e = bad.parse::<Spec>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn periods_are_the_same_at_every_node() {
        let every = Spec::Every(Duration::from_secs(60));
        assert_eq!(every.next_after(125_000), Some(180_000));
        assert_eq!(every.next_after(180_000), Some(240_000));
        let cron: Spec = "0 3 * * *".parse().unwrap();
        // 2026-12-01T02:14:00Z -> 03:00 the same day.
        let t = shoal_core::history::parse_time_ms("2026-12-01T02:14:00Z").unwrap();
        let next = cron.next_after(t).unwrap();
        assert_eq!(rfc3339(next), "2026-12-01T03:00:00Z");
    }

    #[test]
    fn jobs_are_checked() {
        let job = |name: &str, spec: &str, payload: Option<serde_json::Value>| {
            Job::from_config(
                &JobConfig {
                    name: name.into(),
                    spec: spec.into(),
                    desc: String::new(),
                    payload,
                },
                Duration::from_secs(30 * 86_400),
            )
        };
        let keep = job(
            RETENTION,
            "@every 1h",
            Some(serde_json::json!({"keep": "7d"})),
        )
        .unwrap();
        assert_eq!(
            keep.task,
            Task::Retention {
                keep: Duration::from_secs(7 * 86_400)
            }
        );
        for (name, spec, payload, says) in [
            ("history.vacuum", "@every 1h", None, "no such task"),
            (
                SNAPSHOT,
                "@every 1h",
                Some(serde_json::json!({"keep": "1d"})),
                "not one it takes",
            ),
            (
                RETENTION,
                "@every 1h",
                Some(serde_json::json!({"keep": 5})),
                "must be a duration",
            ),
            (
                RETENTION,
                "@every 1h",
                Some(serde_json::json!({"keep": "1s"})),
                "at least a minute",
            ),
            (
                RETENTION,
                "@every 1h",
                Some(serde_json::json!(["keep"])),
                "must be a map",
            ),
            (RECONCILE, "hourly", None, "cron pattern"),
        ] {
            let e = job(name, spec, payload).unwrap_err();
            assert!(e.contains(says), "{name}: {e}");
        }
        let defaults = Job::defaults(Duration::from_secs(60), Duration::from_secs(86_400));
        assert_eq!(
            defaults.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
            [SNAPSHOT, RETENTION, RECONCILE]
        );
        assert!(defaults[1].fleet_wide(true) && !defaults[1].fleet_wide(false));
        assert!(!defaults[0].fleet_wide(true));
    }
}
