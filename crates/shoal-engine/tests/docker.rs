//! The watcher against real Docker engines: the host's, and an extra
//! dockerd started by the test for the restart case.
//!
//! These need a running engine and the test image `shoal-test/busybox`, so
//! they are ignored by a plain `cargo test`; `make test` installs and
//! starts what they need and runs them with `--include-ignored`.

#[path = "support/watching.rs"]
mod watching;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_core::{ContainerState, Health, Inventory, LookupKey};
use shoal_engine::{
    DockerEngine, Engine, EngineError, EngineIdentity, EventStream, LabelledContainer, NewContainer,
};
use watching::{CONVERGE, by, eventually, ready, watch};

const IMAGE: &str = "shoal-test/busybox:latest";
/// An image no engine has: shoal must say so, not pull it.
const MISSING_IMAGE: &str = "shoal-test/no-such-image:0";

fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the docker CLI against `host` (None: the default engine).
fn docker_at(host: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.env("DOCKER_HOST", h);
    }
    let out = cmd.args(args).output().expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker(args: &[&str]) -> String {
    docker_at(None, args)
}

/// Best-effort removal, for cleanup before and after a test.
fn docker_quiet(host: Option<&str>, args: &[&str]) {
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.env("DOCKER_HOST", h);
    }
    let _ = cmd.args(args).output();
}

fn require_image(host: Option<&str>) {
    let mut cmd = Command::new("docker");
    if let Some(h) = host {
        cmd.env("DOCKER_HOST", h);
    }
    let ok = cmd
        .args(["image", "inspect", IMAGE])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the test image {IMAGE} is missing: run scripts/test-image.sh (make test does)"
    );
}

/// Containers and networks a test made, removed when it ends, pass or fail.
struct Cleanup {
    host: Option<String>,
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Cleanup {
    fn new(host: Option<&str>) -> Self {
        Cleanup {
            host: host.map(str::to_owned),
            containers: vec![],
            networks: vec![],
        }
    }

    fn container(&mut self, name: &str) -> String {
        docker_quiet(self.host.as_deref(), &["rm", "-f", name]);
        self.containers.push(name.to_owned());
        name.to_owned()
    }

    fn network(&mut self, name: &str) -> String {
        docker_quiet(self.host.as_deref(), &["network", "rm", name]);
        self.networks.push(name.to_owned());
        name.to_owned()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            docker_quiet(self.host.as_deref(), &["rm", "-f", c]);
        }
        for n in &self.networks {
            docker_quiet(self.host.as_deref(), &["network", "rm", n]);
        }
    }
}

fn one(inv: &Inventory, name: &str) -> Option<Arc<shoal_core::ContainerRecord>> {
    by(inv, name).into_iter().next()
}

#[tokio::test]
#[ignore = "needs a Docker engine and the test image: make test runs it"]
async fn cache_inventory_scenario_name_to_ip_to_the_same_container() {
    require_image(None);
    let mut cleanup = Cleanup::new(None);
    let bridge = cleanup.container("bridge-cnt");
    let testnet_cnt = cleanup.container("testnet-cnt");
    let net = cleanup.network("shoal-testnet");
    docker(&["network", "create", "--subnet", "192.168.0.0/16", &net]);

    let engine = Arc::new(DockerEngine::connect(&DockerEngine::default_host()).unwrap());
    let identity = engine.identity().await.unwrap();
    assert!(
        identity.api_version.is_some(),
        "the API version is negotiated"
    );
    let (handle, stop) = watch(engine);
    ready(&handle).await;

    docker(&["run", "-d", "--name", &bridge, IMAGE, "sleep", "600"]);
    docker(&[
        "run",
        "-d",
        "--name",
        &testnet_cnt,
        "--network",
        &net,
        IMAGE,
        "sleep",
        "600",
    ]);
    for (name, network) in [(&bridge, "bridge"), (&testnet_cnt, net.as_str())] {
        eventually(&handle, &format!("{name} is running"), |inv| {
            one(inv, name).is_some()
        })
        .await;
        let inv = handle.inventory();
        let record = one(&inv, name).unwrap();
        let ip = record
            .networks
            .get(network)
            .and_then(|n| n.ip)
            .unwrap_or_else(|| panic!("{name} has an IP on {network}"));
        let expected_ip = docker(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            name,
        ]);
        assert_eq!(ip.to_string(), expected_ip, "the IP is the engine's");
        if network != "bridge" {
            assert!(expected_ip.starts_with("192.168."), "{expected_ip}");
        }
        let by_ip = by(&inv, &ip.to_string());
        assert_eq!(by_ip.len(), 1, "one container has {ip}");
        assert_eq!(by_ip[0].id, record.id, "name -> IP -> the same container");
        let by_id = by(&inv, &record.id[..12]);
        assert_eq!(by_id[0].id, record.id);
        assert_eq!(record.node.0, "test-node");
        assert_eq!(record.engine_id, identity.id);
        assert_eq!(record.image, IMAGE);
        assert_eq!(record.state, ContainerState::Running);
    }
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs a Docker engine and the test image: make test runs it"]
async fn every_event_kind_shows_up_in_the_inventory() {
    require_image(None);
    let mut cleanup = Cleanup::new(None);
    let name = cleanup.container("shoal-events-a");
    let renamed = cleanup.container("shoal-events-b");
    let net = cleanup.network("shoal-events-net");
    docker(&["network", "create", &net]);

    let engine = Arc::new(DockerEngine::connect(&DockerEngine::default_host()).unwrap());
    // No periodic resync: only events may bring the changes.
    let (handle, stop) = watch(engine);
    ready(&handle).await;

    // start (with a healthcheck, for health_status)
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "com.docker.compose.project=evproj",
        "--label",
        "com.docker.compose.service=web",
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        IMAGE,
        "sleep",
        "600",
    ]);
    eventually(&handle, "start", |inv| inv.get(&id).is_some()).await;
    let inv = handle.inventory();
    assert_eq!(inv.get(&id).unwrap().project.as_deref(), Some("evproj"));
    assert_eq!(
        inv.lookup(&LookupKey::Project("evproj".into())).len(),
        1,
        "the project key finds it"
    );

    eventually(&handle, "health_status: healthy", |inv| {
        inv.get(&id).is_some_and(|r| r.health == Health::Healthy)
    })
    .await;

    docker(&["pause", &id]);
    eventually(&handle, "pause", |inv| {
        inv.get(&id)
            .is_some_and(|r| r.state == ContainerState::Paused)
    })
    .await;
    docker(&["unpause", &id]);
    eventually(&handle, "unpause", |inv| {
        inv.get(&id)
            .is_some_and(|r| r.state == ContainerState::Running)
    })
    .await;

    docker(&["rename", &name, &renamed]);
    eventually(&handle, "rename moves the name key", |inv| {
        one(inv, &renamed).is_some() && one(inv, &name).is_none()
    })
    .await;

    docker(&["network", "connect", &net, &id]);
    eventually(&handle, "network connect adds the address", |inv| {
        inv.get(&id)
            .is_some_and(|r| r.networks.get(&net).is_some_and(|n| n.ip.is_some()))
    })
    .await;
    let ip = handle.inventory().get(&id).unwrap().networks[&net]
        .ip
        .unwrap();
    assert_eq!(by(&handle.inventory(), &ip.to_string())[0].id, id);
    docker(&["network", "disconnect", &net, &id]);
    eventually(&handle, "network disconnect drops the address", |inv| {
        inv.get(&id).is_some_and(|r| !r.networks.contains_key(&net))
    })
    .await;
    assert!(by(&handle.inventory(), &ip.to_string()).is_empty());

    docker(&["update", "--cpu-shares", "512", &id]);
    docker(&["stop", "-t", "1", &id]);
    eventually(&handle, "stop removes it", |inv| inv.get(&id).is_none()).await;
    docker(&["start", &id]);
    eventually(&handle, "start brings it back", |inv| {
        inv.get(&id).is_some()
    })
    .await;
    docker(&["kill", &id]);
    eventually(&handle, "kill removes it", |inv| inv.get(&id).is_none()).await;
    docker(&["start", &id]);
    eventually(&handle, "started again", |inv| inv.get(&id).is_some()).await;
    docker(&["rm", "-f", &id]);
    eventually(&handle, "destroy removes it", |inv| inv.get(&id).is_none()).await;

    // die: a container that exits by itself.
    let short = docker(&["run", "-d", IMAGE, "sh", "-c", "sleep 2; exit 3"]);
    cleanup.containers.push(short.clone());
    eventually(&handle, "short-lived container runs", |inv| {
        inv.get(&short).is_some()
    })
    .await;
    eventually(&handle, "die removes it", |inv| inv.get(&short).is_none()).await;
    stop.cancel();
}

/// A Docker engine whose list misses a container created right after the
/// subscription: only the event stream can bring it.
struct ListRacer {
    inner: DockerEngine,
    name: String,
    created: std::sync::Mutex<Option<String>>,
}

#[async_trait]
impl Engine for ListRacer {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    async fn identity(&self) -> Result<EngineIdentity, EngineError> {
        self.inner.identity().await
    }
    async fn subscribe(&self) -> Result<EventStream, EngineError> {
        self.inner.subscribe().await
    }
    async fn list(&self) -> Result<Vec<String>, EngineError> {
        let listed = self.inner.list().await?;
        let mut created = self.created.lock().unwrap();
        if created.is_none() {
            // Created after subscribe and after the list was taken: the
            // list is stale by one container, as a real race leaves it.
            *created = Some(docker(&[
                "run", "-d", "--name", &self.name, IMAGE, "sleep", "600",
            ]));
        }
        Ok(listed)
    }
    async fn inspect(&self, id: &str) -> Result<Option<shoal_core::ContainerRecord>, EngineError> {
        self.inner.inspect(id).await
    }
}

#[tokio::test]
#[ignore = "needs a Docker engine and the test image: make test runs it"]
async fn a_container_created_while_the_first_list_runs_is_not_missed() {
    require_image(None);
    let mut cleanup = Cleanup::new(None);
    let name = cleanup.container("shoal-list-race");
    let engine = Arc::new(ListRacer {
        inner: DockerEngine::connect(&DockerEngine::default_host()).unwrap(),
        name: name.clone(),
        created: std::sync::Mutex::new(None),
    });
    let (handle, stop) = watch(engine.clone());
    ready(&handle).await;
    let id = engine.created.lock().unwrap().clone().expect("created");
    eventually(&handle, "the racing container arrives by event", |inv| {
        inv.get(&id).is_some()
    })
    .await;
    stop.cancel();
}

/// An extra dockerd started (and purged) by the test, through the repo's
/// script, so the host's engine is never restarted.
struct ExtraEngine {
    name: String,
}

impl ExtraEngine {
    fn script(args: &[&str]) {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/extra-dockerd.sh"))
            .args(args)
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "extra-dockerd.sh {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(name: &str) -> Self {
        Self::script(&["start", name]);
        ExtraEngine {
            name: name.to_owned(),
        }
    }

    fn host(&self) -> String {
        format!("unix:///run/shoal-{}.sock", self.name)
    }

    fn stop(&self) {
        Self::script(&["stop", &self.name]);
    }

    fn restart(&self) {
        Self::script(&["start", &self.name]);
    }
}

impl Drop for ExtraEngine {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/extra-dockerd.sh"))
            .args(["stop", &self.name, "--purge"])
            .output();
    }
}

#[tokio::test]
#[ignore = "needs a Docker engine and the test image: make test runs it"]
async fn an_engine_restart_converges_with_nothing_stale() {
    let extra = ExtraEngine::start("restart");
    let host = extra.host();
    require_image(Some(&host));
    let keep = docker_at(
        Some(&host),
        &[
            "run",
            "-d",
            "--name",
            "keep",
            "--restart",
            "always",
            "--stop-timeout",
            "1",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    let gone = docker_at(
        Some(&host),
        &[
            "run",
            "-d",
            "--name",
            "gone",
            "--stop-timeout",
            "1",
            IMAGE,
            "sleep",
            "600",
        ],
    );

    let engine = Arc::new(DockerEngine::connect(&host).unwrap());
    let identity = engine.identity().await.unwrap();
    let (handle, stop) = watch(engine);
    ready(&handle).await;
    eventually(&handle, "both containers", |inv| {
        inv.get(&keep).is_some() && inv.get(&gone).is_some()
    })
    .await;

    extra.stop();
    let started = Instant::now();
    while !handle.status().stale && started.elapsed() < CONVERGE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        handle.status().stale,
        "a lost engine marks the inventory stale"
    );
    assert_eq!(
        handle.inventory().len(),
        2,
        "the last inventory is still served"
    );

    extra.restart();
    let took = eventually(&handle, "converged after the restart", |inv| {
        inv.get(&keep).is_some() && inv.get(&gone).is_none() && inv.len() == 1
    })
    .await;
    println!("converged {took:?} after the engine answered again");
    let started = Instant::now();
    while handle.status().stale && started.elapsed() < CONVERGE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = handle.status();
    assert!(!status.stale, "fresh again: {status:?}");
    assert_eq!(
        status.engine.map(|e| e.id),
        Some(identity.id),
        "the engine keeps its identity"
    );

    // And it follows events on the new connection.
    let later = docker_at(
        Some(&host),
        &["run", "-d", "--name", "later", IMAGE, "sleep", "600"],
    );
    eventually(&handle, "a container started after the restart", |inv| {
        inv.get(&later).is_some()
    })
    .await;
    stop.cancel();
}

/// A job ID shaped like a UUID, new for every run so that runs never share
/// a container.
fn job_id() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A job's container as the node asks for it.
fn job_container(job: &str, cmd: &[&str]) -> NewContainer {
    NewContainer {
        name: format!("shoal-job-{job}"),
        image: IMAGE.to_owned(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: vec!["SHOAL_TEST=1".to_owned()],
        labels: [("shoal.job".to_owned(), job.to_owned())].into(),
        cpus: Some(0.5),
        memory_bytes: Some(64 << 20),
        network: None,
    }
}

fn labelled_as<'a>(found: &'a [LabelledContainer], id: &str) -> &'a LabelledContainer {
    found
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("labelled finds {id}: {found:?}"))
}

#[tokio::test]
#[ignore = "needs a Docker engine and the test image: make test runs it"]
async fn a_job_container_is_created_once_started_and_waited_for() {
    require_image(None);
    let mut cleanup = Cleanup::new(None);
    let engine = DockerEngine::connect(&DockerEngine::default_host()).unwrap();
    assert_eq!(engine.cannot_create(), None);
    assert!(engine.has_image(IMAGE).await.unwrap());
    assert!(!engine.has_image(MISSING_IMAGE).await.unwrap());

    let job = job_id();
    let new = job_container(&job, &["sh", "-c", "exit 7"]);
    cleanup.container(&new.name);
    let id = engine.create(&new).await.unwrap();
    assert_eq!(
        engine.create(&new).await.unwrap(),
        id,
        "a retry finds the container the first try made"
    );
    let same_job = docker(&[
        "ps",
        "-a",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=shoal.job={job}"),
    ]);
    assert_eq!(same_job, id, "one container for the job");
    let host_config = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.Privileged}} \
         {{.HostConfig.NetworkMode}} {{json .Config.Cmd}} {{json .Config.Env}}",
        &id,
    ]);
    assert!(
        host_config.starts_with(&format!(
            "500000000 {} false default [\"sh\",\"-c\",\"exit 7\"] ",
            64 << 20
        )),
        "{host_config}"
    );
    assert!(host_config.contains("\"SHOAL_TEST=1\""), "{host_config}");

    engine.start(&id).await.unwrap();
    assert_eq!(engine.wait(&id).await.unwrap(), 7);
    assert_eq!(
        engine.wait(&id).await.unwrap(),
        7,
        "an exited container answers at once"
    );

    // A job still running: started twice is started once, and it is live.
    let running_job = job_id();
    let running = job_container(&running_job, &["sleep", "600"]);
    cleanup.container(&running.name);
    let running_id = engine.create(&running).await.unwrap();
    engine.start(&running_id).await.unwrap();
    engine.start(&running_id).await.unwrap();

    let found = engine.labelled("shoal.job").await.unwrap();
    assert_eq!(
        labelled_as(&found, &id),
        &LabelledContainer {
            id: id.clone(),
            value: job.clone(),
            live: false,
            exit_code: Some(7),
        }
    );
    assert_eq!(
        labelled_as(&found, &running_id),
        &LabelledContainer {
            id: running_id.clone(),
            value: running_job.clone(),
            live: true,
            exit_code: None,
        }
    );

    // Removed, running or not; removing what is gone is done.
    engine.remove(&running_id).await.unwrap();
    engine.remove(&running_id).await.unwrap();
    let left = engine.labelled("shoal.job").await.unwrap();
    assert!(left.iter().all(|c| c.id != running_id), "{left:?}");

    // Not pulled: refused, naming the image.
    let missing = NewContainer {
        image: MISSING_IMAGE.to_owned(),
        ..job_container(&job_id(), &[])
    };
    cleanup.container(&missing.name);
    match engine.create(&missing).await {
        Err(e @ EngineError::Refused(_)) => {
            let text = e.to_string();
            assert!(text.contains(MISSING_IMAGE), "{text}");
            assert!(text.contains("does not pull"), "{text}");
            assert!(!e.is_transient());
        }
        other => panic!("a missing image is refused: {other:?}"),
    }

    // A container of that name that is not the job's is left alone.
    let taken = job_container(&job_id(), &[]);
    cleanup.container(&taken.name);
    let stranger = docker(&["create", "--name", &taken.name, IMAGE, "true"]);
    match engine.create(&taken).await {
        Err(EngineError::Refused(text)) => assert!(text.contains("taken"), "{text}"),
        other => panic!("a name taken by another container is refused: {other:?}"),
    }
    assert_eq!(
        docker(&["inspect", "-f", "{{.Id}}", &taken.name]),
        stranger,
        "the stranger is untouched"
    );

    // A container that is not there: refused, not retried.
    for result in [
        engine.start("shoal-job-none").await.map(|_| 0),
        engine.wait("shoal-job-none").await,
    ] {
        assert!(matches!(result, Err(EngineError::Refused(_))), "{result:?}");
    }
}
