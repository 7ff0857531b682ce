//! A fleet of eight `shoal node` processes mixing engines: one watches this
//! host's Docker, one a containerd the test starts, six are synthetic.
//! Every node answers the Docker container and the containerd one by every
//! key kind: name, ID prefixes of 12 and 20 characters and the full ID,
//! address and compose project, without and with the hot cache.
//!
//! A second fleet of eight has one node that watches both engines
//! (`--engine docker --engine containerd`): it serves both, skips
//! containerd's `moby` namespace, and when its containerd stops only the
//! containerd container leaves the fleet.
//!
//! Needs Docker, the test image, root, containerd and runc: ignored by a
//! plain `cargo test`, run by `make test`. The two fleets take turns.

mod common;
#[path = "../../shoal-engine/tests/support/containerd.rs"]
mod containerd;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{NodeProcess, free_ports, http_request};
use containerd::{Containerd, IMAGE, NetNs, run};
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(30);
const NODES: usize = 8;

/// One fleet of eight processes at a time on two cores.
static ONE_FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A container on this host's Docker, removed when the test ends.
struct DockerContainer(String);

impl Drop for DockerContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// GET with or without the hot cache; (status, body).
fn get(port: u16, path: &str, cached: bool) -> (u16, Value) {
    let headers: &[(&str, &str)] = if cached {
        &[]
    } else {
        &[("cache-control", "no-cache")]
    };
    let (status, body) = http_request(
        "GET",
        &format!("http://127.0.0.1:{port}{path}"),
        headers,
        "",
    )
    .unwrap_or((0, String::new()));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < BOUND {
        if f() {
            println!("{what}: {:?}", started.elapsed());
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out: {what}");
}

/// Eight `shoal node` processes on free ports, `<prefix><i>` each, peers of
/// one another; node `i` gets `engine_args(i)`.
fn fleet<'a>(
    prefix: &str,
    engine_args: impl Fn(usize) -> Vec<&'a str>,
) -> (Vec<u16>, Vec<NodeProcess>) {
    let ports = free_ports(NODES);
    let peers = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let nodes = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let id = format!("{prefix}{i}");
            let mut args = vec!["--node-id", &id, "--peers", &peers, "--log-level", "warn"];
            args.extend(engine_args(i));
            NodeProcess::spawn(*port, &args)
        })
        .collect();
    (ports, nodes)
}

/// The IDs a lookup answered.
fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["id"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
#[ignore = "needs Docker, the test image, root, containerd and runc: make test runs it"]
fn a_fleet_of_docker_containerd_and_synthetic_nodes_answers_every_key_kind() {
    let _turn = ONE_FLEET.lock().unwrap_or_else(|p| p.into_inner());
    let ctrd = Containerd::start(&["shoalmix"]);
    let netns = NetNs::new(9);
    ctrd.run_container(
        "shoalmix",
        "mix-ctr",
        &[
            "--label",
            "nerdctl/name=mix-ctr-web",
            "--label",
            "com.docker.compose.project=mixshop",
            "--with-ns",
            &format!("network:{}", netns.path()),
        ],
    );
    let docker_name = "mix-docker-web";
    let _ = Command::new("docker")
        .args(["rm", "-f", docker_name])
        .output();
    let docker = DockerContainer(docker_name.to_owned());
    run(Command::new("docker").args([
        "run",
        "-d",
        "--name",
        &docker.0,
        "--label",
        "com.docker.compose.project=mixshop",
        IMAGE,
        "sleep",
        "600",
    ]));

    let socket = ctrd.socket();
    let (ports, _nodes) = fleet("mix", |i| match i {
        0 => vec!["--engine", "docker"],
        1 => vec!["--engine", "containerd", "--containerd-address", &socket],
        _ => vec!["--engine", "synthetic", "--synthetic-count", "100"],
    });
    until("eight nodes ready and alive everywhere", || {
        ports.iter().all(|p| {
            let (s, v) = get(*p, "/v1/nodes", false);
            s == 200
                && v["nodes"].as_array().is_some_and(|a| {
                    a.iter()
                        .filter(|m| m["state"] == "alive" && m["ready"] == true)
                        .count()
                        == NODES
                })
        })
    });
    let (_, nodes) = get(ports[0], "/v1/nodes", false);
    let kinds: Vec<&str> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["engines"].as_array().unwrap())
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"docker") && kinds.contains(&"containerd"),
        "{kinds:?}"
    );

    until("both containers known to every node", || {
        ports.iter().all(|p| {
            get(*p, "/v1/containers/mix-ctr-web", false).0 == 200
                && get(*p, &format!("/v1/containers/{docker_name}"), false).0 == 200
        })
    });
    let (_, ctr) = get(ports[2], "/v1/containers/mix-ctr-web", false);
    let ctr = &ctr["containers"][0];
    assert_eq!(ctr["node"], "mix1");
    assert_eq!(ctr["project"], "mixshop");
    let (_, dock) = get(ports[2], &format!("/v1/containers/{docker_name}"), false);
    let dock = &dock["containers"][0];
    assert_eq!(dock["node"], "mix0");
    let docker_ip = dock["networks"]["bridge"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();

    for (what, record, ip) in [
        ("containerd", ctr, netns.ip.clone()),
        ("docker", dock, docker_ip),
    ] {
        let id = record["id"].as_str().unwrap();
        let name = record["names"][0].as_str().unwrap();
        let refs = [
            name.to_owned(),
            id[..12].to_owned(),
            id[..20].to_owned(),
            id.to_owned(),
            ip.clone(),
        ];
        for cached in [false, true] {
            for (i, port) in ports.iter().enumerate() {
                for r in &refs {
                    let (status, v) = get(*port, &format!("/v1/containers/{r}"), cached);
                    assert_eq!(
                        (status, ids(&v)),
                        (200, vec![id.to_owned()]),
                        "the {what} container by {r} at node mix{i} (hot cache {cached})"
                    );
                }
            }
        }
    }
    for port in &ports {
        let (status, v) = get(*port, "/v1/projects/mixshop", false);
        assert_eq!(status, 200, "{v}");
        let in_project = ids(&v);
        let mut both = vec![
            ctr["id"].as_str().unwrap().to_owned(),
            dock["id"].as_str().unwrap().to_owned(),
        ];
        both.sort();
        assert_eq!(in_project, both, "project mixshop at :{port}: {v}");
    }
}

/// The engines `/v1/nodes` at `port` lists for `node`: (kind, state).
fn engines_of(port: u16, node: &str) -> Vec<(String, String)> {
    let (_, v) = get(port, "/v1/nodes", false);
    v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"] == node)
        .flat_map(|m| m["engines"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("").to_owned(),
                e["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn pair(kind: &str, state: &str) -> (String, String) {
    (kind.to_owned(), state.to_owned())
}

#[test]
#[ignore = "needs Docker, the test image, root, containerd and runc: make test runs it"]
fn one_node_watching_docker_and_containerd_serves_both_and_loses_one_alone() {
    let _turn = ONE_FLEET.lock().unwrap_or_else(|p| p.into_inner());
    let mut ctrd = Containerd::start(&["shoalboth", "moby"]);
    let netns = NetNs::new(10);
    ctrd.run_container(
        "shoalboth",
        "both-ctr",
        &[
            "--label",
            "nerdctl/name=both-ctr-web",
            "--with-ns",
            &format!("network:{}", netns.path()),
        ],
    );
    // What Docker's own containerd would hold: skipped, since the node
    // watches Docker itself.
    ctrd.run_container(
        "moby",
        "both-moby",
        &["--label", "nerdctl/name=both-moby-ghost"],
    );
    let docker_name = "both-docker-web";
    let _ = Command::new("docker")
        .args(["rm", "-f", docker_name])
        .output();
    let docker = DockerContainer(docker_name.to_owned());
    run(Command::new("docker").args(["run", "-d", "--name", &docker.0, IMAGE, "sleep", "600"]));

    let socket = ctrd.socket();
    let (ports, _nodes) = fleet("both", |i| match i {
        0 => vec![
            "--engine",
            "docker",
            "--engine",
            "containerd",
            "--containerd-address",
            &socket,
            "--engine-lost-after",
            "3s",
        ],
        _ => vec!["--engine", "synthetic", "--synthetic-count", "100"],
    });
    until(
        "both0's two engines synced, as every node sees them",
        || {
            ports.iter().all(|p| {
                engines_of(*p, "both0")
                    == vec![pair("docker", "synced"), pair("containerd", "synced")]
            })
        },
    );
    until("both containers known to every node", || {
        ports.iter().all(|p| {
            get(*p, "/v1/containers/both-ctr-web", false).0 == 200
                && get(*p, &format!("/v1/containers/{docker_name}"), false).0 == 200
        })
    });
    let (_, ctr) = get(ports[5], "/v1/containers/both-ctr-web", false);
    let ctr = ctr["containers"][0].clone();
    let (_, dock) = get(ports[5], &format!("/v1/containers/{docker_name}"), false);
    let dock = dock["containers"][0].clone();
    assert_eq!(
        (&ctr["node"], &dock["node"]),
        (&"both0".into(), &"both0".into())
    );
    assert_ne!(
        ctr["engine_id"], dock["engine_id"],
        "each record names its own engine"
    );
    let docker_ip = dock["networks"]["bridge"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    for (record, ip) in [(&ctr, netns.ip.clone()), (&dock, docker_ip)] {
        let id = record["id"].as_str().unwrap();
        let name = record["names"][0].as_str().unwrap();
        for cached in [false, true] {
            for (i, port) in ports.iter().enumerate() {
                for r in [name, &id[..12], id, &ip] {
                    let (status, v) = get(*port, &format!("/v1/containers/{r}"), cached);
                    assert_eq!(
                        (status, ids(&v)),
                        (200, vec![id.to_owned()]),
                        "{r} at node both{i} (hot cache {cached})"
                    );
                }
            }
        }
    }
    for (i, port) in ports.iter().enumerate() {
        let (status, v) = get(*port, "/v1/containers/both-moby-ghost", false);
        assert_eq!(status, 404, "moby is skipped, at both{i}: {v}");
    }

    // containerd stops: after --engine-lost-after its container leaves the
    // fleet; Docker's stays, fresh.
    ctrd.stop();
    until("the containerd container withdrawn everywhere", || {
        ports
            .iter()
            .all(|p| get(*p, "/v1/containers/both-ctr-web", false).0 == 404)
    });
    for (i, port) in ports.iter().enumerate() {
        let (status, v) = get(*port, &format!("/v1/containers/{docker_name}"), true);
        assert_eq!(status, 200, "Docker's container at both{i}: {v}");
        assert_ne!(v["containers"][0]["stale"], true, "{v}");
    }
    // Gossip carries the engines' states, a round or two behind.
    until("both0's containerd shown withdrawn everywhere", || {
        ports.iter().all(|p| {
            engines_of(*p, "both0")
                == vec![pair("docker", "synced"), pair("containerd", "withdrawn")]
        })
    });

    ctrd.launch();
    until("the containerd container back everywhere", || {
        ports.iter().all(|p| {
            get(*p, "/v1/containers/both-ctr-web", false).0 == 200
                && engines_of(*p, "both0")
                    == vec![pair("docker", "synced"), pair("containerd", "synced")]
        })
    });
}
