//! Eight `shoal node` processes on loopback, each with a synthetic engine
//! of 40 containers: every node answers every container of the fleet by
//! full ID, ID prefix, name and address, and keeps answering the live
//! nodes' containers while one owner is SIGKILLed and restarted, killed
//! for good, or stopped with SIGTERM (then its own containers leave every
//! answer within a gossip round or two, not when the failure detector
//! gives up on it). The issue "Answers you can trust", as a user's fleet
//! sees it.
//!
//! The figures (how many answers were wrong, and how; how soon a stopped
//! node left) are printed; run with
//! `--nocapture` to see them when the tests pass.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use common::{NodeProcess, free_ports, http_get, http_request, json};
use serde_json::Value;

const FLEET_SIZE: usize = 8;
const CONTAINERS_PER_NODE: usize = 40;
/// Containers of each node that test 1 asks every node for.
const SAMPLED_PER_NODE: usize = 5;
/// The one flag the fleet does not take at its default: deaths are
/// detected in seconds, so a test can wait one out.
const DEAD_AFTER: &str = "3s";
/// The longest a fleet may take to form (every node ready, every member
/// alive in every view) and to settle (publishing done).
const FORM_WITHIN: Duration = Duration::from_secs(40);
/// Threads that keep asking while a node is killed: enough to find a short
/// window of denials, few enough to leave the two cores to the nodes (a
/// starved node misses gossip and is declared dead for no fault of the
/// code).
const LOOKUP_THREADS: usize = 3;
/// The bounds of a lookup loop, whichever comes first. The count is far
/// above what the time allows, so a loop that hits it says so.
const LOOKUP_LIMIT: usize = 200_000;
const LOOKUP_TIME_LIMIT: Duration = Duration::from_secs(25);

/// `--dead-after` of the leave test: long, so that a node the failure
/// detector had to find would stay visible for seconds (about half of it,
/// then an upkeep tick).
const LONG_DEAD_AFTER: &str = "10s";
/// How soon a node stopped with SIGTERM must be out of every answer with
/// [`LONG_DEAD_AFTER`]: peers hear it leave at once, their view follows
/// within a gossip interval (667 ms) and their directory within an upkeep
/// tick (1 s), so 1.7 s at most on an idle machine; the rest is for a
/// machine busy with other work, whose timers run late. The detector alone
/// takes about 6 s.
const LEFT_WITHIN: Duration = Duration::from_secs(3);

/// One fleet at a time: three fleets of eight node processes on two cores
/// starve gossip, and members declared dead by a starved failure detector
/// would be failures of the test, not of the code.
static ONE_FLEET_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A container as its own node lists it.
#[derive(Clone, Debug)]
struct Container {
    node: usize,
    id: String,
    name: String,
    ip: String,
}

/// How a container is named in a lookup.
#[derive(Clone, Copy, Debug)]
enum Ref {
    FullId,
    Prefix20,
    Prefix12,
    Name,
    Ip,
}

const REFS: [Ref; 5] = [
    Ref::FullId,
    Ref::Prefix20,
    Ref::Prefix12,
    Ref::Name,
    Ref::Ip,
];

impl Ref {
    fn label(self) -> &'static str {
        match self {
            Ref::FullId => "by full id",
            Ref::Prefix20 => "by 20-hex prefix",
            Ref::Prefix12 => "by 12-hex prefix",
            Ref::Name => "by name",
            Ref::Ip => "by ip",
        }
    }

    fn of(self, c: &Container) -> &str {
        match self {
            Ref::FullId => &c.id,
            Ref::Prefix20 => &c.id[..20],
            Ref::Prefix12 => &c.id[..12],
            Ref::Name => &c.name,
            Ref::Ip => &c.ip,
        }
    }
}

enum Answer {
    /// 200 with exactly the container asked for.
    Right,
    /// 404: the fleet says the container does not exist.
    Denied(String),
    /// 200 with something else.
    Wrong(String),
    /// Any other status, or no answer.
    Error(String),
}

/// Asks the node on `port` for `c`.
fn ask(port: u16, c: &Container, by: Ref, no_cache: bool) -> Answer {
    let url = format!("http://127.0.0.1:{port}/v1/containers/{}", by.of(c));
    let headers: &[(&str, &str)] = if no_cache {
        &[("Cache-Control", "no-cache")]
    } else {
        &[]
    };
    match http_request("GET", &url, headers, "") {
        Err(e) => Answer::Error(e.to_string()),
        Ok((200, body)) => {
            let ids: Vec<String> = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["containers"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .map(|r| r["id"].as_str().unwrap_or("?").to_owned())
                .collect();
            if ids == [c.id.as_str()] {
                Answer::Right
            } else {
                Answer::Wrong(format!("200 with {ids:?}"))
            }
        }
        Ok((404, body)) => Answer::Denied(body),
        Ok((status, body)) => Answer::Error(format!("{status} {body}")),
    }
}

/// Answers counted: how many were asked and how many went wrong, how.
#[derive(Default)]
struct Tally {
    asked: usize,
    denied: usize,
    wrong: usize,
    errors: usize,
    /// Denials, wrong answers and errors by kind of ref (as in [`REFS`]).
    failed_by_ref: [usize; REFS.len()],
    /// The first failure of each kind of ref: one kind failing often
    /// does not hide another.
    first_by_ref: [Option<String>; REFS.len()],
}

impl Tally {
    fn add(&mut self, answer: Answer, by: Ref, asked: impl FnOnce() -> String) {
        self.asked += 1;
        let failure = match answer {
            Answer::Right => return,
            Answer::Denied(body) => {
                self.denied += 1;
                format!("404 {body}")
            }
            Answer::Wrong(what) => {
                self.wrong += 1;
                what
            }
            Answer::Error(what) => {
                self.errors += 1;
                what
            }
        };
        self.failed_by_ref[by as usize] += 1;
        self.first_by_ref[by as usize].get_or_insert_with(|| format!("{}: {failure}", asked()));
    }

    fn failed(&self) -> usize {
        self.denied + self.wrong + self.errors
    }

    fn merge(&mut self, other: Tally) {
        self.asked += other.asked;
        self.denied += other.denied;
        self.wrong += other.wrong;
        self.errors += other.errors;
        for (mine, theirs) in self.failed_by_ref.iter_mut().zip(other.failed_by_ref) {
            *mine += theirs;
        }
        for (mine, theirs) in self.first_by_ref.iter_mut().zip(other.first_by_ref) {
            if mine.is_none() {
                *mine = theirs;
            }
        }
    }

    /// One failure of each kind of ref that failed, a line each.
    fn examples(&self) -> String {
        self.first_by_ref
            .iter()
            .flatten()
            .map(|e| format!("\n  {e}"))
            .collect()
    }

    fn by_ref(&self) -> String {
        REFS.iter()
            .zip(self.failed_by_ref)
            .map(|(by, n)| format!("{} {n}", by.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A fleet of node processes, all killed when it is dropped.
struct Fleet {
    nodes: Vec<NodeProcess>,
    ids: Vec<String>,
    // Dropped after the nodes, so the next fleet starts when they are gone.
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Fleet {
    /// Starts the fleet and waits until it has formed and settled.
    fn start() -> Fleet {
        Self::start_with(DEAD_AFTER)
    }

    /// [`Self::start`] with another `--dead-after`.
    fn start_with(dead_after: &str) -> Fleet {
        // A test that failed holding the lock poisons it; its fleet is gone.
        let one_at_a_time = ONE_FLEET_AT_A_TIME
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let ports = free_ports(FLEET_SIZE);
        let peers = ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let ids: Vec<String> = (0..FLEET_SIZE).map(|i| format!("fleet-{i}")).collect();
        let count = CONTAINERS_PER_NODE.to_string();
        let nodes = ports
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (&port, id))| {
                NodeProcess::spawn(
                    port,
                    &[
                        "--node-id",
                        id,
                        "--engine",
                        "synthetic",
                        "--synthetic-count",
                        &count,
                        "--synthetic-prefix",
                        &format!("c{i}-"),
                        "--peers",
                        &peers,
                        "--dead-after",
                        dead_after,
                    ],
                )
            })
            .collect();
        let fleet = Fleet {
            nodes,
            ids,
            _one_at_a_time: one_at_a_time,
        };
        for node in &fleet.nodes {
            node.wait_ready();
        }
        let all: Vec<usize> = (0..FLEET_SIZE).collect();
        fleet.wait_until("every node sees all 8 members alive and ready", || {
            all.iter().all(|&i| fleet.sees_alive(i, &all))
        });
        let formed = started.elapsed();
        fleet.wait_settled();
        println!(
            "fleet of {FLEET_SIZE} formed in {formed:.1?}, settled in {:.1?}",
            started.elapsed()
        );
        fleet
    }

    fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// Polls `done` until it holds; fails the test after [`FORM_WITHIN`].
    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + FORM_WITHIN;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out after {FORM_WITHIN:?} waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The members `node` sees, by ID: (state, ready).
    fn view(&self, node: usize) -> HashMap<String, (String, bool)> {
        let Ok((200, body)) = http_get(&format!("{}/v1/nodes", self.nodes[node].server())) else {
            return HashMap::new();
        };
        json(&body)["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["id"].as_str().unwrap_or("").to_owned(),
                    (
                        m["state"].as_str().unwrap_or("").to_owned(),
                        m["ready"] == true,
                    ),
                )
            })
            .collect()
    }

    /// True when `node` sees exactly `members` alive, each ready.
    fn sees_alive(&self, node: usize, members: &[usize]) -> bool {
        let view = self.view(node);
        let alive: BTreeSet<&str> = view
            .iter()
            .filter(|(_, (state, ready))| state == "alive" && *ready)
            .map(|(id, _)| id.as_str())
            .collect();
        alive == members.iter().map(|&m| self.ids[m].as_str()).collect()
    }

    /// Waits until the fleet's publishing is over: the records published
    /// and the copies held, summed over the nodes, are the same three
    /// times in a row, half a second apart (longer than a ring change
    /// waits to settle). Lookups asked before that would test how fast a
    /// fleet forms, which is not what these tests are about.
    fn wait_settled(&self) {
        let mut last = Vec::new();
        let mut same = 0;
        self.wait_until("the fleet stops publishing", || {
            let now: Vec<u64> = ["shoal_publishes_total", "shoal_directory_record_copies"]
                .iter()
                .map(|metric| (0..FLEET_SIZE).map(|i| self.metric(i, metric)).sum())
                .collect();
            same = if now == last { same + 1 } else { 0 };
            last = now;
            std::thread::sleep(Duration::from_millis(300));
            same >= 2
        });
    }

    /// A metric of `node`, summed over its labels.
    fn metric(&self, node: usize, name: &str) -> u64 {
        let Ok((200, text)) = http_get(&format!("{}/metrics", self.nodes[node].server())) else {
            return 0;
        };
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Every container of the fleet, each as its own node lists it; checks
    /// that every ref the tests use names one container only.
    fn inventory(&self) -> Vec<Container> {
        let mut all = Vec::new();
        let mut engines = BTreeSet::new();
        let mut ips_seen: HashMap<String, usize> = HashMap::new();
        for (i, id) in self.ids.iter().enumerate() {
            let (status, body) = http_get(&format!(
                "{}/v1/containers?node={id}",
                self.nodes[i].server()
            ))
            .unwrap();
            assert_eq!(status, 200, "{body}");
            let records = json(&body)["containers"].as_array().unwrap().clone();
            assert_eq!(records.len(), CONTAINERS_PER_NODE, "{id} lists: {body}");
            for r in &records {
                assert_eq!(r["node"], id.as_str(), "{r}");
                engines.insert((id.clone(), r["engine_id"].as_str().unwrap().to_owned()));
                for net in r["networks"].as_object().unwrap().values() {
                    for ip in [&net["ip"], &net["ipv6"]] {
                        if let Some(ip) = ip.as_str() {
                            *ips_seen.entry(ip.to_owned()).or_default() += 1;
                        }
                    }
                }
                all.push(Container {
                    node: i,
                    id: r["id"].as_str().unwrap().to_owned(),
                    name: r["names"][0].as_str().unwrap().to_owned(),
                    ip: r["networks"]["synthetic-a"]["ip"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                });
            }
        }
        let engine_ids: BTreeSet<&String> = engines.iter().map(|(_, e)| e).collect();
        assert!(
            engines.len() == FLEET_SIZE && engine_ids.len() == FLEET_SIZE,
            "each node must have one engine of its own: {engines:?}"
        );
        let distinct = |f: fn(&Container) -> &str| {
            all.iter().map(f).collect::<BTreeSet<_>>().len() == all.len()
        };
        assert!(
            all.iter().all(|c| c.id.len() == 64),
            "IDs are 64 hex characters"
        );
        assert!(
            distinct(|c| &c.id[..12]),
            "two containers share an ID prefix"
        );
        assert!(distinct(|c| &c.name), "two containers share a name");
        assert!(
            all.iter().all(|c| ips_seen[&c.ip] == 1),
            "two containers share an address: choose other synthetic prefixes"
        );
        all
    }
}

/// Test 1, once per cache mode: every node asked for `sampled` by every
/// kind of ref, one thread per node asked. A tally per kind of ref.
fn ask_everyone(fleet: &Fleet, sampled: &[&Container], no_cache: bool) -> Vec<Tally> {
    let per_asker: Vec<Vec<Tally>> = std::thread::scope(|s| {
        let askers: Vec<_> = (0..FLEET_SIZE)
            .map(|asker| {
                s.spawn(move || {
                    REFS.iter()
                        .map(|&by| {
                            let mut tally = Tally::default();
                            for c in sampled {
                                let answer = ask(fleet.port(asker), c, by, no_cache);
                                tally.add(answer, by, || {
                                    format!(
                                        "{} asked for {} {} of {}",
                                        fleet.ids[asker],
                                        by.label(),
                                        by.of(c),
                                        fleet.ids[c.node]
                                    )
                                });
                            }
                            tally
                        })
                        .collect()
                })
            })
            .collect();
        askers.into_iter().map(|a| a.join().unwrap()).collect()
    });
    let mut by_ref: Vec<Tally> = REFS.iter().map(|_| Tally::default()).collect();
    for tallies in per_asker {
        for (total, tally) in by_ref.iter_mut().zip(tallies) {
            total.merge(tally);
        }
    }
    by_ref
}

#[test]
fn every_node_answers_every_container_by_full_id_prefix_name_and_ip() {
    let fleet = Fleet::start();
    let inventory = fleet.inventory();
    let sampled: Vec<&Container> = (0..FLEET_SIZE)
        .flat_map(|node| {
            inventory
                .iter()
                .filter(move |c| c.node == node)
                .step_by(CONTAINERS_PER_NODE / SAMPLED_PER_NODE)
        })
        .collect();
    assert_eq!(sampled.len(), FLEET_SIZE * SAMPLED_PER_NODE);

    let mut failures = Vec::new();
    for (no_cache, mode) in [(true, "no-cache"), (false, "hot cache")] {
        for (by, tally) in REFS.iter().zip(ask_everyone(&fleet, &sampled, no_cache)) {
            let line = format!(
                "{mode}, {}: {} of {} wrong ({} denied, {} other answers, {} errors)",
                by.label(),
                tally.failed(),
                tally.asked,
                tally.denied,
                tally.wrong,
                tally.errors
            );
            println!("{line}");
            assert_eq!(tally.asked, FLEET_SIZE * FLEET_SIZE * SAMPLED_PER_NODE);
            if tally.failed() > 0 {
                failures.push(format!("{line}; e.g.{}", tally.examples()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "not every node answers every container:\n{}",
        failures.join("\n")
    );
}

/// Lookups asked over and over, by several threads, while the test kills
/// a node: of `targets`, at the nodes in `askers`, tallied per phase of
/// the test.
struct LookupLoop {
    ports: Vec<u16>,
    ids: Vec<String>,
    targets: Vec<Container>,
    askers: RwLock<Vec<usize>>,
    phase: AtomicUsize,
    stop: AtomicBool,
    asked: AtomicUsize,
    deadline: Instant,
}

impl LookupLoop {
    /// Lookups of every container but the victim's, asked at every node
    /// but the victim. Copies what it needs of the fleet, so that the test
    /// can kill and restart the fleet's processes while the lookups run.
    fn sparing(fleet: &Fleet, victim: usize) -> Self {
        let targets = fleet
            .inventory()
            .into_iter()
            .filter(|c| c.node != victim)
            .collect();
        let askers = (0..FLEET_SIZE).filter(|&i| i != victim).collect();
        LookupLoop {
            ports: fleet.nodes.iter().map(|n| n.port).collect(),
            ids: fleet.ids.clone(),
            targets,
            askers: RwLock::new(askers),
            phase: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            asked: AtomicUsize::new(0),
            deadline: Instant::now() + LOOKUP_TIME_LIMIT,
        }
    }

    /// Runs the lookups while `script` kills and restarts, then stops them
    /// (on a panic of the script too) and returns the tally of each phase.
    /// `script` returns when the lookups should end.
    fn run(&self, phases: usize, script: impl FnOnce(&Self)) -> Vec<Tally> {
        struct StopOnDrop<'s>(&'s AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let per_thread: Vec<Vec<Tally>> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..LOOKUP_THREADS)
                .map(|t| s.spawn(move || self.worker(t, phases)))
                .collect();
            {
                let _stop = StopOnDrop(&self.stop);
                script(self);
            }
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(
            Instant::now() < self.deadline && self.asked.load(Ordering::Relaxed) < LOOKUP_LIMIT,
            "the lookups hit their bound ({LOOKUP_LIMIT} or {LOOKUP_TIME_LIMIT:?}) before the \
             test was done: they did not cover all of it"
        );
        let mut tallies: Vec<Tally> = (0..phases).map(|_| Tally::default()).collect();
        for thread in per_thread {
            for (total, tally) in tallies.iter_mut().zip(thread) {
                total.merge(tally);
            }
        }
        tallies
    }

    fn worker(&self, thread: usize, phases: usize) -> Vec<Tally> {
        let mut tallies: Vec<Tally> = (0..phases).map(|_| Tally::default()).collect();
        // xorshift: a spread of askers and targets without a dependency.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (thread as u64 + 1);
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as usize
        };
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline {
            let n = self.asked.fetch_add(1, Ordering::Relaxed);
            if n >= LOOKUP_LIMIT {
                break;
            }
            let asker = {
                let askers = self.askers.read().unwrap();
                askers[next() % askers.len()]
            };
            let c = &self.targets[next() % self.targets.len()];
            let by = REFS[n % REFS.len()];
            let no_cache = (n / REFS.len()).is_multiple_of(2);
            let phase = self.phase.load(Ordering::Relaxed);
            let answer = ask(self.ports[asker], c, by, no_cache);
            tallies[phase].add(answer, by, || {
                format!(
                    "{} asked for {} {} of {} ({})",
                    self.ids[asker],
                    by.label(),
                    by.of(c),
                    self.ids[c.node],
                    if no_cache { "no-cache" } else { "hot cache" }
                )
            });
        }
        tallies
    }

    fn enter_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::Relaxed);
    }
}

/// Prints each phase and the total in one line each; the total last.
fn report(test: &str, phases: &[&str], tallies: Vec<Tally>) -> Tally {
    let mut total = Tally::default();
    for (name, tally) in phases.iter().zip(tallies) {
        println!(
            "  {name}: {} of {} denied, {} errors, {} other answers (failed {})",
            tally.denied,
            tally.asked,
            tally.errors,
            tally.wrong,
            tally.by_ref()
        );
        total.merge(tally);
    }
    println!(
        "{test}: {} of {} denied, {} errors",
        total.denied, total.asked, total.errors
    );
    total
}

/// Fails the test if a live node's container was denied or answered
/// wrongly while `cause` was happening.
fn assert_nothing_denied(total: &Tally, cause: &str) {
    assert!(
        total.denied == 0 && total.wrong == 0,
        "{cause} made the fleet deny or misanswer containers of live nodes: {} denied, {} \
         other answers; e.g.{}",
        total.denied,
        total.wrong,
        total.examples()
    );
}

#[test]
fn an_owner_killed_and_restarted_at_once_denies_nothing() {
    let mut fleet = Fleet::start();
    let victim = 3;
    let lookups = LookupLoop::sparing(&fleet, victim);
    let mut restarted_within = Duration::ZERO;
    let tallies = lookups.run(3, |lookups| {
        std::thread::sleep(Duration::from_secs(2));
        let node = &mut fleet.nodes[victim];
        lookups.enter_phase(1);
        let killed = Instant::now();
        node.sigkill();
        node.respawn();
        node.wait_ready();
        restarted_within = killed.elapsed();
        // Ready, it is asked too (asked while down it could only fail).
        lookups.askers.write().unwrap().push(victim);
        lookups.enter_phase(2);
        std::thread::sleep(Duration::from_secs(6));
    });
    println!(
        "{} SIGKILLed and restarted at once: ready again within {restarted_within:.1?}",
        fleet.ids[victim]
    );
    let total = report(
        "restart",
        &[
            "before the kill",
            "until it is ready again",
            "6 s after it is ready",
        ],
        tallies,
    );
    assert_nothing_denied(&total, "a restarted owner");
}

#[test]
fn a_node_killed_for_good_denies_nothing_of_the_live_nodes() {
    let mut fleet = Fleet::start();
    let victim = 5;
    let lookups = LookupLoop::sparing(&fleet, victim);
    let tallies = lookups.run(2, |lookups| {
        std::thread::sleep(Duration::from_secs(1));
        lookups.enter_phase(1);
        fleet.nodes[victim].sigkill();
        // Well past --dead-after: the death is detected and the ring
        // changes while the lookups go on.
        std::thread::sleep(Duration::from_secs(10));
    });
    let total = report(
        "killed for good",
        &["before the kill", "10 s after the kill"],
        tallies,
    );
    let live: Vec<usize> = (0..FLEET_SIZE).filter(|&i| i != victim).collect();
    for &i in &live {
        assert!(
            fleet.sees_alive(i, &live),
            "{} does not see exactly the 7 live nodes alive 10 s after the kill: the test did \
             not cover a detected death",
            fleet.ids[i]
        );
    }
    assert_nothing_denied(&total, "a dead node");
}

/// How every node in `askers` answers a no-cache lookup of each of
/// `containers` by full ID, all askers at once.
fn ask_all(ports: &[u16], askers: &[usize], containers: &[Container]) -> Vec<Answer> {
    std::thread::scope(|s| {
        let threads: Vec<_> = askers
            .iter()
            .map(|&asker| {
                s.spawn(move || {
                    containers
                        .iter()
                        .map(|c| ask(ports[asker], c, Ref::FullId, true))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    })
}

/// The answers in one line: how many were right, denied, other, errors.
fn summary(answers: &[Answer]) -> String {
    let count = |f: fn(&Answer) -> bool| answers.iter().filter(|a| f(a)).count();
    format!(
        "{} answered, {} denied, {} other answers, {} errors",
        count(|a| matches!(a, Answer::Right)),
        count(|a| matches!(a, Answer::Denied(_))),
        count(|a| matches!(a, Answer::Wrong(_))),
        count(|a| matches!(a, Answer::Error(_)))
    )
}

#[test]
fn a_node_stopped_with_sigterm_leaves_within_a_gossip_round_or_two() {
    let mut fleet = Fleet::start_with(LONG_DEAD_AFTER);
    let victim = 6;
    let leaving: Vec<Container> = fleet
        .inventory()
        .into_iter()
        .filter(|c| c.node == victim)
        .step_by(CONTAINERS_PER_NODE / SAMPLED_PER_NODE)
        .collect();
    let others: Vec<usize> = (0..FLEET_SIZE).filter(|&i| i != victim).collect();
    let ports: Vec<u16> = fleet.nodes.iter().map(|n| n.port).collect();
    let before = ask_all(&ports, &others, &leaving);
    assert!(
        before.iter().all(|a| matches!(a, Answer::Right)),
        "before the SIGTERM every node must answer the victim's containers, or the test \
         measures nothing: {}",
        summary(&before)
    );

    let lookups = LookupLoop::sparing(&fleet, victim);
    let mut left_after = None;
    let mut stopped = None;
    let mut last = String::new();
    let tallies = lookups.run(2, |lookups| {
        std::thread::sleep(Duration::from_secs(1));
        lookups.enter_phase(1);
        let node = &mut fleet.nodes[victim];
        let signalled = Instant::now();
        node.sigterm();
        // Bounded well past what the detector takes, so a node that only
        // the detector removes shows up as a figure, not a hang.
        while signalled.elapsed() < Duration::from_secs(15) {
            let answers = ask_all(&ports, &others, &leaving);
            last = summary(&answers);
            if answers.iter().all(|a| matches!(a, Answer::Denied(_))) {
                left_after = Some(signalled.elapsed());
                break;
            }
            if stopped.is_none() {
                stopped = node.try_exit().map(|s| (s, signalled.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, _) = *stopped.get_or_insert_with(|| (node.wait_exit(), signalled.elapsed()));
        assert!(
            status.success(),
            "exit status {status:?}; log:\n{}",
            node.log()
        );
        // The other nodes' containers keep answering through the stop too.
        std::thread::sleep(Duration::from_secs(1));
    });
    let total = report(
        "left",
        &[
            "before the SIGTERM",
            "from the SIGTERM until 1 s after it stopped",
        ],
        tallies,
    );
    let left_after = left_after.unwrap_or_else(|| {
        panic!("the victim's containers were still answered 15 s after SIGTERM: {last}")
    });
    let stopped_after = stopped.map(|(_, after)| after).unwrap_or_default();
    println!(
        "{} left the fleet {} ms after SIGTERM (--dead-after {LONG_DEAD_AFTER}); the process \
         had stopped {} ms after it",
        fleet.ids[victim],
        left_after.as_millis(),
        stopped_after.as_millis()
    );
    let after = ask_all(&ports, &others, &leaving);
    assert!(
        after.iter().all(|a| matches!(a, Answer::Denied(_))),
        "the victim's containers came back after it stopped: {}",
        summary(&after)
    );
    assert!(
        left_after < LEFT_WITHIN,
        "the victim's containers were answered for {left_after:?} after SIGTERM, not within \
         {LEFT_WITHIN:?}: the fleet waited for the failure detector"
    );
    assert_nothing_denied(&total, "a node leaving");
    assert_eq!(
        total.errors,
        0,
        "a node leaving made lookups fail:{}",
        total.examples()
    );
}

/// The secret of the fleet in [`a_node_with_the_wrong_secret_never_joins_and_nothing_it_sends_is_applied`].
const SECRET_A: &str = "the-fleet-secret-A-0123";
/// The intruder's.
const SECRET_B: &str = "the-wrong-secret-B-0123";

#[test]
fn a_node_with_the_wrong_secret_never_joins_and_nothing_it_sends_is_applied() {
    let _one_at_a_time = ONE_FLEET_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let ports = free_ports(4);
    let peers = ports[..3]
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let node = |i: usize, id: &str, secret: &str| {
        NodeProcess::spawn(
            ports[i],
            &[
                "--node-id",
                id,
                "--engine",
                "synthetic",
                "--synthetic-count",
                "10",
                "--synthetic-prefix",
                &format!("{id}-"),
                "--peers",
                &peers,
                "--dead-after",
                DEAD_AFTER,
                "--cluster-secret",
                secret,
            ],
        )
    };
    let good: Vec<NodeProcess> = (0..3)
        .map(|i| node(i, &format!("g{i}"), SECRET_A))
        .collect();
    for n in &good {
        n.wait_ready();
    }
    let members = |n: &NodeProcess| -> BTreeSet<String> {
        let (status, body) = http_get(&format!("{}/v1/nodes", n.server())).unwrap();
        assert_eq!(status, 200, "{body}");
        json(&body)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let fleet: BTreeSet<String> = ["g0", "g1", "g2"].map(String::from).into();
    let deadline = Instant::now() + FORM_WITHIN;
    while !good.iter().all(|n| members(n) == fleet) {
        assert!(Instant::now() < deadline, "the fleet did not form");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The good fleet answers its own containers: a 404 for the
    // intruder's below is the refusal, not a fleet that answers nothing.
    for n in &good {
        let deadline = Instant::now() + FORM_WITHIN;
        while http_get(&format!("{}/v1/containers/g2-3", n.server()))
            .unwrap()
            .0
            != 200
        {
            assert!(Instant::now() < deadline, "g2-3 is not answered");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let intruder = node(3, "x1", SECRET_B);
    let deadline = Instant::now() + FORM_WITHIN;
    while !http_get(&format!("{}/healthz", intruder.server())).is_ok_and(|r| r.0 == 200) {
        assert!(Instant::now() < deadline, "the intruder never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Longer than joining takes and than the failure detector's window:
    // the intruder is never a member, and its containers are never
    // answered.
    let watched = Instant::now();
    let mut polls = 0;
    while watched.elapsed() < Duration::from_secs(6) {
        for n in &good {
            assert_eq!(members(n), fleet, "node on port {}", n.port);
            let (status, body) = http_get(&format!("{}/v1/containers/x1-1", n.server())).unwrap();
            assert_eq!(status, 404, "node on port {}: {body}", n.port);
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let alone: BTreeSet<String> = ["x1".to_owned()].into();
    assert_eq!(members(&intruder), alone, "the intruder sees no one");
    // Its gossip reached the fleet and was dropped.
    let refused: Vec<u64> = good
        .iter()
        .map(|n| {
            let (_, text) = http_get(&format!("{}/metrics", n.server())).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("shoal_gossip_refused_total "))
                .and_then(|v| v.parse().ok())
                .unwrap()
        })
        .collect();
    assert!(
        refused.iter().all(|&r| r > 0),
        "gossip refused: {refused:?}"
    );
    // A publish it signs for a good node is refused, as the intruder's own
    // client would send it.
    let publish = shoal_core::wire::Publish {
        source: shoal_core::wire::SourceClock {
            node: "x1".into(),
            incarnation: 1,
            seq: 1,
            prev: 0,
            ring: 0,
        },
        body: shoal_core::wire::PublishBody::Snapshot {
            records: vec![shoal_engine::synthetic_record(
                "x1-",
                0,
                &shoal_core::EngineId("x1-engine".into()),
            )],
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(shoal_node::peer::PeerTransport::call(
        &shoal_node::peer::HttpPeers::with_secret(Some(SECRET_B.into())),
        &"g0".into(),
        &format!("127.0.0.1:{}", good[0].port),
        shoal_node::peer::routes::PUBLISH,
        Some(shoal_core::wire::encode(&publish)),
        Duration::from_secs(5),
    ));
    assert!(
        matches!(
            answer,
            Err(shoal_node::peer::PeerError::Status { status: 401, .. })
        ),
        "{answer:?}"
    );
    assert_eq!(
        http_get(&format!("{}/v1/containers/x1-0", good[0].server()))
            .unwrap()
            .0,
        404
    );
    println!(
        "wrong secret: never a member in {polls} polls of 3 nodes over {:.1?}; gossip packets dropped per node: {refused:?}; its publish: 401",
        watched.elapsed()
    );
}
