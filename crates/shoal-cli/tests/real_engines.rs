//! Three `shoal node` processes, each watching its own dockerd (extra
//! engines started by the test with their own socket, bridge and data
//! root): the same container name on two hosts, a rename, a node killed
//! with SIGKILL, an engine restarted. Each converges; the times are
//! printed.
//!
//! Needs Docker, the test image and root (for the extra engines): ignored
//! by a plain `cargo test`, run by `make test`.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const IMAGE: &str = "shoal-test/busybox:latest";
const BOUND: Duration = Duration::from_secs(30);

use common::{ExtraEngines, docker_on, extra_dockerd};

struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(name: &str, port: u16, engine: &str, peers: &str) -> Node {
        let child = Command::new(SHOAL)
            .args([
                "node",
                "--node-id",
                name,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--docker-host",
                &ExtraEngines::host(engine),
                "--peers",
                peers,
                "--sync-interval",
                "1s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Node {
            port,
            child: Some(child),
        }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-m",
            "5",
            "-H",
            "cache-control: no-cache",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn nodes_of(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["node"].as_str().unwrap_or("").to_owned())
        .collect();
    n.sort();
    n
}

/// Polls until `f` holds, up to BOUND; returns how long it took.
fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < BOUND {
        if f() {
            let took = started.elapsed();
            println!("{what}: {took:?}");
            return took;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out: {what}");
}

#[test]
#[ignore = "needs Docker, root and the test image: make test runs it"]
fn three_nodes_on_three_engines_converge_through_kills_and_restarts() {
    let names = ["ra", "rb", "rc"];
    let _engines = ExtraEngines::start(&names);
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Node> = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| Node::start(&format!("node-{n}"), *p, n, &peers))
        .collect();
    until("three nodes ready and gossiping", || {
        nodes.iter().all(|n| {
            let (s, v) = get(n.port, "/v1/nodes");
            s == 200
                && v["nodes"]
                    .as_array()
                    .is_some_and(|a| a.iter().filter(|m| m["state"] == "alive").count() == 3)
        })
    });

    // The same name on two hosts: every node answers both, each with its node.
    for e in ["ra", "rb"] {
        docker_on(
            &ExtraEngines::host(e),
            &[
                "run",
                "-d",
                "--name",
                "twin",
                "--stop-timeout",
                "1",
                IMAGE,
                "sleep",
                "600",
            ],
        );
    }
    until("a name on two hosts answered twice by every node", || {
        nodes
            .iter()
            .all(|n| nodes_of(&get(n.port, "/v1/containers/twin").1) == ["node-ra", "node-rb"])
    });

    // A rename on one host moves the name key fleet-wide.
    let id = docker_on(
        &ExtraEngines::host("rc"),
        &[
            "run",
            "-d",
            "--name",
            "solo",
            "--restart",
            "always",
            "--stop-timeout",
            "1",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    until("a new container visible from every node", || {
        nodes
            .iter()
            .all(|n| get(n.port, "/v1/containers/solo").0 == 200)
    });
    docker_on(
        &ExtraEngines::host("rc"),
        &["rename", "solo", "solo-renamed"],
    );
    until("a rename visible from every node", || {
        nodes.iter().all(|n| {
            get(n.port, "/v1/containers/solo").0 == 404
                && get(n.port, "/v1/containers/solo-renamed").0 == 200
        })
    });
    let ip = get(ports[0], "/v1/containers/solo-renamed").1["containers"][0]["networks"]["bridge"]
        ["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, by_ip) = get(ports[1], &format!("/v1/containers/{ip}"));
    assert!(
        by_ip["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str())
    );

    // SIGKILL node-rb: its twin leaves; node-ra's twin stays.
    nodes[1].sigkill();
    let took = until(
        "a SIGKILLed node's containers leave the other nodes",
        || {
            [0, 2]
                .iter()
                .all(|&i| nodes_of(&get(ports[i], "/v1/containers/twin").1) == ["node-ra"])
        },
    );
    assert!(took < BOUND);

    // Restart node-rc's engine: node-rc keeps serving, then converges
    // (solo-renamed comes back by its restart policy).
    extra_dockerd(&["stop", "rc"]);
    let (status, _) = get(ports[2], "/v1/containers/twin");
    assert_eq!(
        status, 200,
        "a node whose engine is down keeps serving the fleet"
    );
    extra_dockerd(&["start", "rc"]);
    until("an engine restart converges", || {
        let (s, v) = get(ports[0], "/v1/containers/solo-renamed");
        let (_, n) = get(ports[2], "/v1/nodes");
        let me = n["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["id"] == "node-rc").cloned());
        s == 200
            && v["containers"][0]["id"] == id.as_str()
            && me.is_some_and(|m| m["stale"] == false)
    });
    drop(nodes);
}
