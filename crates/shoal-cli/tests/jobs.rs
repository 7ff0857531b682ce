//! Jobs on a real fleet: three `shoal node` processes, each on its own
//! dockerd (extra engines started by the test), creating containers
//! through the job queue. In order: the token is required and a refused
//! Create creates nothing; a job created through one node answers the same
//! at all three and its container shows in every node's inventory; a
//! missing image fails with the engine's message; a full queue answers
//! 429; 500 Creates over 30 s all end, none doubled (the time from Create
//! to running is printed); the placed node killed while jobs wait leaves
//! each placed again or failed, none lost or doubled; an owner killed
//! leaves Status answered by the replica.
//!
//! Needs Docker, root and the test image: ignored by a plain `cargo test`,
//! run by `make test`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{ExtraEngines, NodeProcess};
use serde_json::{Value, json};

const IMAGE: &str = "shoal-test/busybox:latest";
const TOKEN: &str = "jobs-test-token-0123456789";
const NAMES: [&str; 3] = ["ja", "jb", "jc"];

fn host(engine: &str) -> String {
    ExtraEngines::host(engine)
}

fn docker(engine: &str, args: &[&str]) -> String {
    common::docker_on(&host(engine), args)
}

/// One request: status, the response's head (for its headers) and body;
/// status 0 when the node cannot be reached.
fn request(
    method: &str,
    port: u16,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Cache-Control", "no-cache")];
    headers.extend(auth.as_deref().map(|a| ("Authorization", a)));
    common::http_exchange(
        method,
        &format!("http://127.0.0.1:{port}{path}"),
        &headers,
        body,
        Duration::from_secs(20),
    )
    .unwrap_or_default()
}

/// Every node counts three live members.
fn all_see_three(ports: &[u16]) -> bool {
    ports.iter().all(|p| {
        let (s, _, b) = request("GET", *p, "/v1/nodes", None, "");
        s == 200
            && parse(&b)["nodes"]
                .as_array()
                .is_some_and(|a| a.iter().filter(|m| m["state"] == "alive").count() == 3)
    })
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// `POST /v1/jobs`: the status and the answer.
fn create(port: u16, job: &Value, token: Option<&str>) -> (u16, String, Value) {
    let (s, head, body) = request("POST", port, "/v1/jobs", token, &job.to_string());
    (s, head, parse(&body))
}

fn job(port: u16, id: &str) -> (u16, Value) {
    let (s, _, body) = request("GET", port, &format!("/v1/jobs/{id}"), None, "");
    (s, parse(&body))
}

fn rpc(port: u16, method: &str, params: Value, token: Option<&str>) -> (u16, Value) {
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (s, _, body) = request("POST", port, "/jrpc", token, &call.to_string());
    (s, parse(&body))
}

/// Polls until `f` holds, up to `bound`.
fn until(what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < bound {
        if f() {
            let took = started.elapsed();
            println!("{what}: {took:?}");
            return took;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {bound:?}: {what}");
}

/// Job IDs of the containers an engine has, each as often as it has one.
fn job_containers(engine: &str) -> Vec<String> {
    docker(
        engine,
        &[
            "ps",
            "-a",
            "--filter",
            "label=shoal.job",
            "--format",
            "{{.Label \"shoal.job\"}}",
        ],
    )
    .lines()
    .map(str::to_owned)
    .filter(|l| !l.is_empty())
    .collect()
}

/// How many containers carry each job ID, over the given engines.
fn containers_per_job(engines: &[&str]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for e in engines {
        for id in job_containers(e) {
            *count.entry(id).or_insert(0) += 1;
        }
    }
    count
}

fn all_jobs(port: u16) -> Vec<Value> {
    let (s, _, body) = request("GET", port, "/v1/jobs?limit=10000", None, "");
    assert_eq!(s, 200, "{body}");
    parse(&body)["jobs"].as_array().cloned().unwrap_or_default()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
#[ignore = "needs Docker, root and the test image: make test runs it"]
fn jobs_run_anywhere_in_a_fleet_of_three_engines_and_survive_node_loss() {
    let _engines = ExtraEngines::start(&NAMES);
    let ports = common::free_ports(3);
    let peers = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    // The third node has a small queue and one worker: the queue test
    // fills it, and the fault test finds jobs still waiting in it.
    let extra = |i: usize| -> Vec<String> {
        let mut a: Vec<String> = [
            "--node-id",
            &format!("node-{}", NAMES[i]),
            "--docker-host",
            &host(NAMES[i]),
            "--peers",
            &peers,
            "--api-token",
            TOKEN,
            "--no-history",
            "--sync-interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if i == 2 {
            a.extend(["--queue-size", "10", "--worker-count", "1"].map(String::from));
        }
        a
    };
    let mut nodes: Vec<NodeProcess> = (0..3)
        .map(|i| {
            let a = extra(i);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            NodeProcess::spawn(ports[i], &a)
        })
        .collect();
    for n in &nodes {
        n.wait_ready();
    }
    let [pa, pb, pc] = [ports[0], ports[1], ports[2]];
    until(
        "three nodes see each other",
        Duration::from_secs(30),
        || all_see_three(&ports),
    );
    let everywhere = NAMES;
    until(
        "every node's job path is gossiped",
        Duration::from_secs(10),
        || {
            let (_, _, b) = request("GET", pa, "/v1/nodes", None, "");
            let v = parse(&b);
            let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
            nodes.len() == 3
                && nodes.iter().all(|n| n["jobs"]["creates"] == true)
                && nodes
                    .iter()
                    .any(|n| n["id"] == "node-jc" && n["jobs"]["queue_size"] == 10)
        },
    );

    // 1. No token, a wrong token: 401, and nothing is created.
    let seed = json!({"image": IMAGE, "arguments": ["sleep", "60"], "resources": {"memory": "64m"}, "env": {"GREETING": "hi"}});
    let (s, head, body) = create(pa, &seed, None);
    assert_eq!(s, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert_eq!(create(pa, &seed, Some("wrong-token-0123456789")).0, 401);
    let (s, v) = rpc(pb, "ContainerService.Create", json!([seed]), None);
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], -32001, "{v}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(containers_per_job(&everywhere).is_empty());
    assert_eq!(all_jobs(pa).len(), 0, "a refused Create left a job");

    // 2. Created through one node (the seed's JSON-RPC call), the same
    // answer from all three, running, and in every node's inventory.
    let (s, v) = rpc(pa, "ContainerService.Create", json!([seed]), Some(TOKEN));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["message"], "Job created successfully", "{v}");
    let id = v["result"]["job_id"].as_str().unwrap().to_owned();
    until("the job runs", Duration::from_secs(30), || {
        job(pb, &id).1["status"] == "running"
    });
    let answers: Vec<Value> = ports
        .iter()
        .map(|p| {
            let (s, v) = rpc(*p, "ContainerService.Status", json!([{"job_id": id}]), None);
            assert_eq!(s, 200, "{v}");
            v["result"].clone()
        })
        .collect();
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
    let placed = answers[0]["node"].as_str().unwrap().to_owned();
    let container = answers[0]["container_id"].as_str().unwrap().to_owned();
    let name = format!("shoal-job-{id}");
    until(
        "the job's container is in every node's inventory",
        Duration::from_secs(30),
        || {
            ports.iter().all(|p| {
                let (s, _, b) = request("GET", *p, &format!("/v1/containers/{name}"), None, "");
                let v = parse(&b);
                s == 200
                    && v["containers"][0]["node"] == placed.as_str()
                    && v["containers"][0]["id"] == container.as_str()
                    && v["containers"][0]["labels"]["shoal.job"] == id.as_str()
            })
        },
    );
    let engine = NAMES[["node-ja", "node-jb", "node-jc"]
        .iter()
        .position(|n| *n == placed)
        .unwrap()];
    let env = docker(
        engine,
        &[
            "inspect",
            "--format",
            "{{.Config.Env}} {{.HostConfig.Memory}}",
            &container,
        ],
    );
    assert!(
        env.contains("GREETING=hi") && env.ends_with("67108864"),
        "{env}"
    );

    // 3. A missing image: failed, with the engine's message.
    let (s, _, v) = create(
        pb,
        &json!({"image": "shoal-test/no-such-image:0"}),
        Some(TOKEN),
    );
    assert_eq!(s, 202, "{v}");
    let bad = v["job_id"].as_str().unwrap().to_owned();
    until(
        "the missing image fails the job",
        Duration::from_secs(30),
        || job(pc, &bad).1["status"] == "failed",
    );
    let error = job(pa, &bad).1["error"].as_str().unwrap_or("").to_owned();
    assert!(
        error.contains("No such image") && error.contains("does not pull"),
        "{error}"
    );

    // 4. A full queue: 429 with Retry-After, and no container for it.
    let burst: Vec<(u16, String, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|_| {
                s.spawn(|| {
                    create(
                        pa,
                        &json!({"image": IMAGE, "arguments": ["true"], "node": "node-jc"}),
                        Some(TOKEN),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let full: Vec<_> = burst.iter().filter(|(s, _, _)| *s == 429).collect();
    let accepted: Vec<String> = burst
        .iter()
        .filter(|(s, _, _)| *s == 202)
        .map(|(_, _, v)| v["job_id"].as_str().unwrap().to_owned())
        .collect();
    println!(
        "a burst of 40 at a queue of 10 with one worker: {} accepted, {} refused 429",
        accepted.len(),
        full.len()
    );
    assert!(
        !full.is_empty(),
        "no 429 from a burst of 40 at a queue of 10"
    );
    assert_eq!(accepted.len() + full.len(), 40, "{burst:?}");
    assert!(full[0].1.contains("retry-after:"), "{}", full[0].1);
    assert_eq!(full[0].2["error"]["code"], "queue_full");
    until("the accepted burst ends", Duration::from_secs(90), || {
        accepted.iter().all(|j| job(pa, j).1["status"] == "exited")
    });
    let per_job = containers_per_job(&everywhere);
    let burst_containers: usize = accepted
        .iter()
        .map(|j| per_job.get(j).copied().unwrap_or(0))
        .sum();
    assert_eq!(
        burst_containers,
        accepted.len(),
        "one container per accepted job"
    );
    assert_eq!(
        per_job.len(),
        1 + accepted.len(),
        "containers only for the first job and the accepted ones (a missing image made none): {per_job:?}"
    );

    // 5. Load: 500 Creates over 30 s at the three nodes in turn.
    const LOAD: usize = 500;
    let next = AtomicUsize::new(0);
    let ids = Mutex::new(Vec::new());
    let refused = AtomicUsize::new(0);
    let started = Instant::now();
    let spacing = Duration::from_secs(30) / LOAD as u32;
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= LOAD {
                        return;
                    }
                    let due = started + spacing * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let port = ports[i % 3];
                    let body = json!({"image": IMAGE, "arguments": ["sleep", "2"]});
                    // A client honours 429 and tries again, a bounded
                    // number of times.
                    for _ in 0..30 {
                        let (s, _, v) = create(port, &body, Some(TOKEN));
                        if s == 202 {
                            ids.lock()
                                .unwrap()
                                .push(v["job_id"].as_str().unwrap().to_owned());
                            break;
                        }
                        assert_eq!(s, 429, "{v}");
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        }
    });
    let sent_in = started.elapsed();
    let ids = ids.into_inner().unwrap();
    assert_eq!(ids.len(), LOAD, "every Create was accepted in the end");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), LOAD);
    let load: BTreeSet<&String> = ids.iter().collect();
    let mut done = Vec::new();
    until("500 jobs end", Duration::from_secs(300), || {
        done = all_jobs(pb)
            .into_iter()
            .filter(|j| load.contains(&j["job_id"].as_str().unwrap_or("").to_owned()))
            .collect();
        done.len() == LOAD
            && done
                .iter()
                .all(|j| matches!(j["status"].as_str(), Some("exited" | "failed")))
    });
    let failed: Vec<&Value> = done.iter().filter(|j| j["status"] != "exited").collect();
    let mut to_running: Vec<u64> = done
        .iter()
        .filter_map(|j| Some(j["started_at"].as_u64()? - j["created_at"].as_u64()?))
        .collect();
    to_running.sort_unstable();
    let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
    for j in &done {
        *by_node
            .entry(j["node"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    println!(
        "load: {LOAD} Creates sent in {sent_in:?} ({} answered 429 and were sent again); \
         Create to running: p50 {} ms, p99 {} ms, max {} ms; {} failed; per node {by_node:?}",
        refused.load(Ordering::Relaxed),
        percentile(&to_running, 0.5),
        percentile(&to_running, 0.99),
        to_running.last().copied().unwrap_or(0),
        failed.len()
    );
    assert!(failed.is_empty(), "failed jobs under load: {failed:#?}");
    let per_job = containers_per_job(&everywhere);
    for id in &ids {
        assert_eq!(
            per_job.get(id),
            Some(&1),
            "job {id} has {:?} containers",
            per_job.get(id)
        );
    }

    // 6. The placed node killed while jobs wait in its queue. Only its
    // engine has the image, so they all go there; then a second engine
    // gets it, so the jobs that were never claimed can run elsewhere.
    docker("jc", &["tag", IMAGE, "shoal-test/only-c:1"]);
    let mut waiting = Vec::new();
    for _ in 0..10 {
        let (s, _, v) = create(
            pa,
            &json!({"image": "shoal-test/only-c:1", "arguments": ["sleep", "300"]}),
            Some(TOKEN),
        );
        assert_eq!(s, 202, "{v}");
        assert_eq!(v["node"], "node-jc", "{v}");
        waiting.push(v["job_id"].as_str().unwrap().to_owned());
    }
    docker("jb", &["tag", IMAGE, "shoal-test/only-c:1"]);
    nodes[2].sigkill();
    let killed_at = Instant::now();
    let mut outcome: BTreeMap<String, (String, String)> = BTreeMap::new();
    until(
        "every job of the killed node is placed again or failed",
        Duration::from_secs(60),
        || {
            outcome = waiting
                .iter()
                .map(|j| {
                    let (_, v) = job(pa, j);
                    (
                        j.clone(),
                        (
                            v["status"].as_str().unwrap_or("?").to_owned(),
                            v["node"].as_str().unwrap_or("?").to_owned(),
                        ),
                    )
                })
                .collect();
            outcome.values().all(|(status, _)| status != "pending")
        },
    );
    let moved = outcome.values().filter(|(_, n)| n != "node-jc").count();
    let failed = outcome.values().filter(|(s, _)| s == "failed").count();
    let ran_there = outcome.len() - moved - failed;
    println!(
        "node-jc killed with 10 jobs: {moved} placed again, {failed} failed, {ran_there} had started there ({:?} after the kill)",
        killed_at.elapsed()
    );
    assert!(moved >= 1, "no job was placed again: {outcome:?}");
    let per_job = containers_per_job(&["ja", "jb", "jc"]);
    for j in &waiting {
        assert!(
            per_job.get(j).copied().unwrap_or(0) <= 1,
            "job {j} has {:?} containers",
            per_job.get(j)
        );
        let (status, node) = &outcome[j];
        if status == "running" {
            let engine = if node == "node-jb" {
                "jb"
            } else if node == "node-ja" {
                "ja"
            } else {
                "jc"
            };
            assert!(
                job_containers(engine).contains(j),
                "job {j} runs on {node} without a container"
            );
        }
    }

    // 7. The killed node comes back and finds its running job containers;
    // then an owner is killed: Status still answers, the same at both
    // nodes left, for jobs whose owners included it.
    nodes[2].respawn();
    nodes[2].wait_ready();
    until(
        "node-jc is back in every view",
        Duration::from_secs(30),
        || all_see_three(&ports),
    );
    // A job failed while its node was gone does not run when the node is
    // back: a container it may have made is removed.
    let failed_jobs: Vec<&String> = waiting
        .iter()
        .filter(|j| outcome[*j].0 == "failed")
        .collect();
    until(
        "no failed job has a live container once node-jc is back",
        Duration::from_secs(30),
        || {
            let live = docker(
                "jc",
                &[
                    "ps",
                    "--filter",
                    "label=shoal.job",
                    "--format",
                    "{{.Label \"shoal.job\"}}",
                ],
            );
            failed_jobs
                .iter()
                .all(|j| !live.lines().any(|l| l == j.as_str()))
        },
    );
    let mut named_a = Vec::new();
    for _ in 0..10 {
        let (s, _, v) = create(
            pa,
            &json!({"image": IMAGE, "arguments": ["sleep", "300"], "node": "node-ja"}),
            Some(TOKEN),
        );
        assert_eq!(s, 202, "{v}");
        named_a.push(v["job_id"].as_str().unwrap().to_owned());
    }
    until("the ten jobs run", Duration::from_secs(60), || {
        named_a.iter().all(|j| job(pa, j).1["status"] == "running")
    });
    nodes[1].sigkill();
    let checks_from = Instant::now();
    let mut asked = 0;
    while checks_from.elapsed() < Duration::from_secs(8) {
        for j in &named_a {
            let (sa, va) = job(pa, j);
            let (sc, vc) = job(pc, j);
            assert_eq!(sa, 200, "job {j} at node-ja after node-jb's kill: {va}");
            assert_eq!(sc, 200, "job {j} at node-jc after node-jb's kill: {vc}");
            assert_eq!(va["status"], "running", "{va}");
            assert_eq!(va, vc, "the two nodes left answer alike");
            asked += 2;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{asked} Status calls after node-jb was killed: all answered");
    drop(nodes);
}
