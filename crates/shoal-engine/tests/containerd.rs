//! The watcher against a real containerd (Debian's `containerd` package),
//! started by each test with its own root, state and socket in a temporary
//! directory and stopped by PID. Containers are made with `ctr` from the
//! OCI tarball `scripts/oci-image.sh` builds, so no registry is needed.
//!
//! They need root, containerd, runc and `ip`, so they are ignored by a
//! plain `cargo test`; `make test` installs what they need and runs them
//! with `--include-ignored`.

#[path = "support/containerd.rs"]
mod support;
#[path = "support/watching.rs"]
mod watching;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::{ContainerState, LookupKey};
use shoal_engine::containerd::record_id;
use shoal_engine::{ContainerdEngine, Engine};
use support::{Containerd, IMAGE, NetNs, run};
use watching::{by, eventually, ready, watch};

#[tokio::test]
#[ignore = "needs root, containerd, runc and ip: make test runs it"]
async fn containers_of_two_namespaces_by_name_label_project_address_and_id() {
    let ctrd = Containerd::start(&["shoaltest", "other"]);
    let netns = NetNs::new(1);
    let engine = Arc::new(ContainerdEngine::connect(&ctrd.socket(), None, vec![]));
    let identity = engine.identity().await.unwrap();
    assert_eq!(identity.kind, "containerd");
    assert!(identity.id.0.starts_with("containerd-"), "{}", identity.id);
    let (handle, stop) = watch(engine);
    ready(&handle).await;

    ctrd.run_container(
        "shoaltest",
        "web-ctr",
        &[
            "--label",
            "nerdctl/name=shop-web-1",
            "--label",
            "com.docker.compose.project=shop",
            "--label",
            "com.docker.compose.service=web",
            "--label",
            "nerdctl/networks=[\"shop_default\"]",
            "--with-ns",
            &format!("network:{}", netns.path()),
        ],
    );
    let hex_id = "5ca1ab1e".repeat(8);
    ctrd.run_container("other", &hex_id, &[]);

    eventually(&handle, "both containers are in", |inv| {
        !by(inv, "shop-web-1").is_empty() && !by(inv, &hex_id[..12]).is_empty()
    })
    .await;
    let inv = handle.inventory();
    let web = by(&inv, "shop-web-1").pop().unwrap();
    assert_eq!(web.id, record_id("shoaltest", "web-ctr"));
    assert_eq!(web.project.as_deref(), Some("shop"));
    assert_eq!(web.service.as_deref(), Some("web"));
    assert_eq!(web.image, IMAGE);
    let digest = ctrd.ctr("shoaltest", &["images", "list"]);
    assert!(
        web.image_id.starts_with("sha256:") && digest.contains(&web.image_id),
        "image_id {:?} is the image's digest: {digest}",
        web.image_id
    );
    assert_eq!(web.state, ContainerState::Running);
    // started_at from the task's /proc/<pid>/stat: within the last minute.
    let started = web
        .started_at
        .as_deref()
        .expect("started_at of a running task");
    let started =
        time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let age = time::OffsetDateTime::now_utc() - started;
    assert!(
        age.whole_seconds() >= -2 && age.whole_seconds() < 60,
        "{started} is {age} ago"
    );
    assert_eq!(web.engine_id, identity.id);
    assert_eq!(
        web.labels.get("nerdctl/name").map(String::as_str),
        Some("shop-web-1")
    );
    let shop = web
        .networks
        .get("shop_default")
        .expect("the nerdctl network");
    assert_eq!(shop.ip.map(|ip| ip.to_string()), Some(netns.ip.clone()));
    // Name -> address -> the same container; its ID prefix too.
    assert_eq!(
        by(&inv, &netns.ip).pop().map(|r| r.id.clone()),
        Some(web.id.clone())
    );
    assert_eq!(
        by(&inv, &web.id[..20]).pop().map(|r| r.id.clone()),
        Some(web.id.clone())
    );
    let project = inv.lookup(&LookupKey::Project("shop".into()));
    assert_eq!(project.len(), 1, "the project lists it");
    let other = by(&inv, &hex_id).pop().unwrap();
    assert_eq!(other.id, hex_id, "a hex ID is the record's ID");
    assert_eq!(other.primary_name(), hex_id, "no name label: the ID");

    // Pause and resume.
    ctrd.ctr("other", &["tasks", "pause", &hex_id]);
    eventually(&handle, "the paused one is paused", |inv| {
        by(inv, &hex_id)
            .first()
            .is_some_and(|r| r.state == ContainerState::Paused)
    })
    .await;
    ctrd.ctr("other", &["tasks", "resume", &hex_id]);
    eventually(&handle, "the resumed one runs", |inv| {
        by(inv, &hex_id)
            .first()
            .is_some_and(|r| r.state == ContainerState::Running)
    })
    .await;

    // A killed task leaves the inventory; so does a deleted container.
    ctrd.ctr("shoaltest", &["tasks", "kill", "-s", "SIGKILL", "web-ctr"]);
    eventually(&handle, "the killed one is gone", |inv| {
        by(inv, "shop-web-1").is_empty() && by(inv, &netns.ip).is_empty()
    })
    .await;
    ctrd.remove("other", &hex_id);
    eventually(&handle, "the deleted one is gone", |inv| {
        by(inv, &hex_id).is_empty()
    })
    .await;
    assert_eq!(handle.inventory().len(), 0);
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs root, containerd, runc and ip: make test runs it"]
async fn a_containerd_restart_converges_with_nothing_stale() {
    let mut ctrd = Containerd::start(&["default"]);
    let engine = Arc::new(ContainerdEngine::connect(&ctrd.socket(), None, vec![]));
    let (handle, stop) = watch(engine);
    ready(&handle).await;
    ctrd.run_container("default", "stays", &[]);
    ctrd.run_container("default", "dies-meanwhile", &[]);
    eventually(&handle, "both run", |inv| {
        !by(inv, "stays").is_empty() && !by(inv, "dies-meanwhile").is_empty()
    })
    .await;

    // containerd goes away; one container's process dies while it is
    // down, so no event will ever say so.
    let pid = ctrd.task_pid("default", "dies-meanwhile");
    ctrd.stop();
    run(Command::new("kill").args(["-9", &pid.to_string()]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    ctrd.launch();

    ctrd.run_container("default", "new-after", &[]);
    eventually(
        &handle,
        "after the restart: the dead one gone, the new one in",
        |inv| {
            !by(inv, "stays").is_empty()
                && by(inv, "dies-meanwhile").is_empty()
                && !by(inv, "new-after").is_empty()
        },
    )
    .await;
    assert_eq!(handle.inventory().len(), 2);
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs root, containerd, runc and ip: make test runs it"]
async fn containers_made_while_the_first_list_runs_are_not_missed() {
    let ctrd = Arc::new(Containerd::start(&["default"]));
    let maker = {
        let ctrd = ctrd.clone();
        std::thread::spawn(move || {
            for i in 0..6 {
                ctrd.run_container("default", &format!("early-{i}"), &[]);
            }
        })
    };
    // The watcher starts while they are being made.
    let engine = Arc::new(ContainerdEngine::connect(&ctrd.socket(), None, vec![]));
    let (handle, stop) = watch(engine);
    ready(&handle).await;
    maker.join().unwrap();
    eventually(&handle, "all six are in", |inv| {
        (0..6).all(|i| !by(inv, &format!("early-{i}")).is_empty())
    })
    .await;
    stop.cancel();
}

#[tokio::test]
#[ignore = "needs root, containerd, runc and ip: make test runs it"]
async fn only_the_namespaces_asked_for_are_watched() {
    let ctrd = Containerd::start(&["shoaltest", "moby"]);
    ctrd.run_container("moby", "dockers-own", &[]);
    ctrd.run_container("shoaltest", "mine", &[]);
    let skip_moby = Arc::new(ContainerdEngine::connect(
        &ctrd.socket(),
        None,
        vec!["moby".into()],
    ));
    let only = Arc::new(ContainerdEngine::connect(
        &ctrd.socket(),
        Some(vec!["moby".into()]),
        vec![],
    ));
    let (a, stop_a) = watch(skip_moby);
    let (b, stop_b) = watch(only);
    ready(&a).await;
    ready(&b).await;
    eventually(&a, "mine, not Docker's", |inv| {
        !by(inv, "mine").is_empty() && by(inv, "dockers-own").is_empty()
    })
    .await;
    eventually(&b, "only moby's", |inv| {
        by(inv, "mine").is_empty() && !by(inv, "dockers-own").is_empty()
    })
    .await;
    // Events of a namespace not watched change nothing.
    ctrd.run_container("shoaltest", "mine-too", &[]);
    eventually(&a, "the new one", |inv| !by(inv, "mine-too").is_empty()).await;
    assert!(by(&b.inventory(), "mine-too").is_empty());
    stop_a.cancel();
    stop_b.cancel();
}
