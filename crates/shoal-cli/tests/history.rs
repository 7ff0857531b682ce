//! The history with real parts: `shoal node` processes watching this
//! host's Docker, writing to a real PostgreSQL (Debian's, started by the
//! test) or to their embedded SQLite file.
//!
//! - A container started, renamed, connected to a network, stopped and
//!   removed gives those changes in order, each once although two nodes
//!   watch the engine, and `?at=` answers the address it had then.
//! - PostgreSQL stopped for 30 s while containers churn: lookups never
//!   fail, and once it is back every change is there (none dropped).
//! - A node killed with SIGKILL while it writes: what it had committed is
//!   still there after it restarts, and the file reads back whole.
//!
//! Needs Docker and the test image (`make test-deps`): ignored by a plain
//! `cargo test`; `make test` runs it.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{NodeProcess, free_ports, http_get};
use serde_json::Value;
use shoal_history::testing::TestPostgres;

const IMAGE: &str = "shoal-test/busybox";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the test's containers and network however the test ends.
struct Cleanup {
    containers: Vec<String>,
    network: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        if let Some(n) = &self.network {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn get_json(url: &str) -> (u16, Value) {
    let (status, body) = http_get(url).unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The changes `query` lists at `node`, every page.
fn history(node: &NodeProcess, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = format!("{}/v1/history?{query}{cursor}", node.server());
        let (status, a) = get_json(&url);
        assert_eq!(status, 200, "{url}: {a}");
        all.extend(a["changes"].as_array().unwrap().iter().cloned());
        match a["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return all,
        }
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

fn pair(pg: &TestPostgres) -> (NodeProcess, NodeProcess) {
    let ports = free_ports(2);
    let peers = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let url = pg.url();
    let a = NodeProcess::spawn(
        ports[0],
        &["--node-id", "hist-a", "--peers", &peers, "--history", &url],
    );
    let b = NodeProcess::spawn(
        ports[1],
        &["--node-id", "hist-b", "--peers", &peers, "--history", &url],
    );
    a.wait_ready();
    b.wait_ready();
    (a, b)
}

#[test]
#[ignore = "needs Docker, PostgreSQL and the test image: make test runs it"]
fn a_containers_life_is_recorded_once_in_order_and_answers_as_of_a_time() {
    let pg = TestPostgres::start();
    let (a, b) = pair(&pg);
    let tag = std::process::id();
    let (first, second, net) = (
        format!("hist-{tag}-one"),
        format!("hist-{tag}-two"),
        format!("hist-{tag}-net"),
    );
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        network: None,
    };
    docker(&["network", "create", &net]);
    cleanup.network = Some(net.clone());
    let id = docker(&["run", "-d", "--name", &first, IMAGE, "sleep", "600"]);
    cleanup.containers.push(id.clone());
    std::thread::sleep(Duration::from_millis(300));
    docker(&["rename", &first, &second]);
    docker(&["network", "connect", &net, &second]);
    let ip = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &second,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let connected_at = now_ms();
    std::thread::sleep(Duration::from_millis(500));
    docker(&["stop", "-t", "1", &second]);
    docker(&["rm", &second]);
    std::thread::sleep(Duration::from_millis(200));
    let removed_at = now_ms();

    let query = format!("id={}", &id[..12]);
    let removed = |node: &NodeProcess| history(node, &query).iter().any(|c| c["kind"] == "removed");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !removed(&a) {
        assert!(
            Instant::now() < deadline,
            "no removal in the history within 15 s: {:#?}\nnode a logged:\n{}\nnode b logged:\n{}",
            history(&a, &query),
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let changes = history(&a, &query);
    let seen: Vec<(String, String)> = changes
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_owned(),
                c["detail"].as_str().unwrap_or("").to_owned(),
            )
        })
        // Docker attaches the default network just before the start.
        .filter(|(k, d)| !(k == "network_connected" && d == "bridge"))
        .collect();
    let want: Vec<(String, String)> = [
        ("started", ""),
        ("renamed", first.as_str()),
        ("network_connected", net.as_str()),
        ("stopped", ""),
        ("removed", ""),
    ]
    .iter()
    .map(|(k, d)| (k.to_string(), d.to_string()))
    .collect();
    assert_eq!(seen, want, "{changes:#?}");
    let stop = changes.iter().find(|c| c["kind"] == "stopped").unwrap();
    assert_eq!(stop["exit_code"], 137, "sleep ignores SIGTERM: {stop}");
    assert_eq!(changes.last().unwrap()["name"], second.as_str());
    // Two nodes watch the engine and write to one database: once each.
    let keys: BTreeSet<String> = changes
        .iter()
        .map(|c| format!("{} {}", c["kind"], c["at_ms"]))
        .collect();
    assert_eq!(keys.len(), changes.len(), "a change twice: {changes:#?}");
    let writers: BTreeSet<&str> = changes
        .iter()
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    assert!(
        writers.iter().all(|n| ["hist-a", "hist-b"].contains(n)),
        "{writers:?}"
    );
    // Both nodes answer the same, from the shared database.
    let (_, from_b) = get_json(&format!("{}/v1/history?{query}", b.server()));
    assert_eq!(from_b["source"], "postgres");
    assert_eq!(from_b["changes"].as_array().unwrap().len(), changes.len());

    // Who had the address then, and now that the container is gone.
    for node in [&a, &b] {
        let (status, then) = get_json(&format!(
            "{}/v1/containers/{ip}?at={connected_at}",
            node.server()
        ));
        assert_eq!(status, 200, "{then}");
        let found = then["containers"].as_array().unwrap();
        assert_eq!(found.len(), 1, "{then}");
        assert_eq!(found[0]["id"], id.as_str());
        assert_eq!(found[0]["names"][0], second.as_str());
        let (status, gone) = get_json(&format!(
            "{}/v1/containers/{ip}?at={removed_at}",
            node.server()
        ));
        assert_eq!(status, 404, "{gone}");
        // The live lookup does not know it any more.
        let (status, _) = get_json(&format!("{}/v1/containers/{ip}", node.server()));
        assert_eq!(status, 404);
    }
    // By name, as of then: the new name finds it, the old one does not.
    let (status, by_name) = get_json(&format!(
        "{}/v1/containers/{second}?at={connected_at}",
        a.server()
    ));
    assert_eq!(status, 200, "{by_name}");
    let (status, old_name) = get_json(&format!(
        "{}/v1/containers/{first}?at={connected_at}",
        a.server()
    ));
    assert_eq!(status, 404, "renamed before then: {old_name}");

    // The command line: a timeline, and `get --at`.
    let out = Command::new(common::SHOAL)
        .args(["--server", &a.server(), "history", &id[..12]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for word in [
        "started",
        "renamed",
        "network_connected",
        "exit 137",
        "removed",
    ] {
        assert!(text.contains(word), "{word} missing:\n{text}");
    }
    let out = Command::new(common::SHOAL)
        .args([
            "--server",
            &b.server(),
            "get",
            &ip,
            "--at",
            &connected_at.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&second), "{text}");
}

#[test]
#[ignore = "needs Docker, PostgreSQL and the test image: make test runs it"]
fn a_database_down_for_30s_loses_no_change_and_fails_no_lookup() {
    let pg = TestPostgres::start();
    let (a, b) = pair(&pg);
    let tag = std::process::id();
    let steady = format!("hist-{tag}-steady");
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        network: None,
    };
    cleanup.containers.push(docker(&[
        "run", "-d", "--name", &steady, IMAGE, "sleep", "600",
    ]));
    wait_for("the steady container", Duration::from_secs(10), || {
        get_json(&format!("{}/v1/containers/{steady}", b.server())).0 == 200
    });

    pg.stop();
    let down_since = Instant::now();
    let mut churned = Vec::new();
    let mut lookups = 0;
    let mut i = 0;
    while down_since.elapsed() < Duration::from_secs(30) {
        let name = format!("hist-{tag}-churn{i}");
        i += 1;
        let id = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "600"]);
        cleanup.containers.push(id.clone());
        for node in [&a, &b] {
            let (status, answer) = get_json(&format!("{}/v1/containers/{steady}", node.server()));
            assert_eq!(
                status, 200,
                "a lookup failed with the database down: {answer}"
            );
            lookups += 1;
        }
        docker(&["rm", "-f", &id]);
        churned.push(id);
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, nodes) = get_json(&format!("{}/v1/nodes", a.server()));
    let me = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "hist-a")
        .unwrap()
        .clone();
    assert_eq!(me["history"]["up"], false, "{me}");
    assert!(me["history"]["queued"].as_u64().unwrap() > 0, "{me}");
    let (status, refused) = get_json(&format!("{}/v1/history?limit=1", a.server()));
    assert_eq!(status, 503, "{refused}");

    pg.start_again();
    wait_for("the queues to drain", Duration::from_secs(30), || {
        let (_, nodes) = get_json(&format!("{}/v1/nodes", a.server()));
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["history"]["up"] == true && n["history"]["queued"] == 0)
    });
    let (_, nodes) = get_json(&format!("{}/v1/nodes", b.server()));
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["history"]["dropped"], 0, "{n}");
    }
    for id in &churned {
        let kinds: BTreeSet<String> = history(&a, &format!("id={id}"))
            .iter()
            .map(|c| c["kind"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            kinds.contains("started") && kinds.contains("removed"),
            "{id}: {kinds:?}"
        );
    }
    eprintln!(
        "database down 30 s: {} containers churned, {lookups} lookups, 0 failed, 0 dropped",
        churned.len()
    );
}

#[test]
#[ignore = "needs Docker and the test image: make test runs it"]
fn a_node_killed_while_it_writes_keeps_what_it_committed() {
    let port = free_ports(1)[0];
    let mut node = NodeProcess::spawn(port, &["--node-id", "hist-kill"]);
    node.wait_ready();
    let db = node.data_dir.path().join("history.db");
    let tag = std::process::id();
    let mut cleanup = Cleanup {
        containers: Vec::new(),
        network: None,
    };
    let mut committed = Vec::new();
    for i in 0..6 {
        let name = format!("hist-{tag}-k{i}");
        let id = docker(&["run", "-d", "--name", &name, IMAGE, "sleep", "600"]);
        cleanup.containers.push(id.clone());
        if i == 3 {
            // What the node says it has written so far, then SIGKILL in
            // the middle of more changes.
            wait_for("the first changes", Duration::from_secs(10), || {
                history(&node, "limit=10000").len() >= 3
            });
            committed = history(&node, "limit=10000");
            node.sigkill();
        }
        docker(&["rm", "-f", &id]);
    }
    node.respawn();
    node.wait_ready();
    let after = history(&node, "limit=10000");
    let keys = |cs: &[Value]| -> BTreeSet<String> {
        cs.iter()
            .map(|c| format!("{} {} {}", c["container_id"], c["kind"], c["at_ms"]))
            .collect()
    };
    let lost: Vec<_> = keys(&committed)
        .difference(&keys(&after))
        .cloned()
        .collect();
    assert!(lost.is_empty(), "committed changes lost: {lost:?}");
    // The file reads back whole: every change decodes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = shoal_history::Store::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let mut q = shoal_history::Query {
            limit: 10_000,
            ..Default::default()
        };
        let mut n = 0;
        loop {
            let page = store.query(&q).await.expect("the store reads back");
            n += page.changes.len();
            match page.next {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        assert!(n >= committed.len());
    });
}
