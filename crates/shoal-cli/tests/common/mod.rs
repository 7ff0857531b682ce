//! What the tests of the built `shoal` binary share: a node process on a
//! loopback port that is killed when the test ends, and a plain HTTP/1.1
//! client over a TCP socket.

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// How long a node may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A node process, killed if the test ends before it is stopped.
pub struct NodeProcess {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    // A file rather than a pipe: a pipe nobody reads fills up and blocks
    // a node that logs a lot.
    log: tempfile::NamedTempFile,
    /// Its own data directory (the embedded history store), kept across
    /// restarts.
    pub data_dir: tempfile::TempDir,
}

impl NodeProcess {
    /// A node on a free port, ready.
    pub fn start(extra: &[&str]) -> Self {
        let node = Self::spawn(free_port(), extra);
        node.wait_ready();
        node
    }

    /// A node on `port`, not waited for.
    pub fn spawn(port: u16, extra: &[&str]) -> Self {
        let mut node = NodeProcess {
            child: None,
            port,
            args: extra.iter().map(|s| s.to_string()).collect(),
            log: tempfile::NamedTempFile::new().unwrap(),
            data_dir: tempfile::tempdir().unwrap(),
        };
        node.respawn();
        node
    }

    /// Starts the process again with the same flags and port (after
    /// [`Self::sigkill`]), not waited for; it logs to the same file.
    pub fn respawn(&mut self) {
        assert!(self.child.is_none(), "the node on port {} runs", self.port);
        let log = OpenOptions::new()
            .append(true)
            .open(self.log.path())
            .unwrap();
        let child = Command::new(SHOAL)
            .args(["node", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.args)
            .env_remove("SHOAL_CONFIG")
            .env("SHOAL_DATA_DIR", self.data_dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the shoal binary starts");
        self.child = Some(child);
    }

    pub fn server(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_ready(&self) -> bool {
        http_get(&format!("{}/readyz", self.server())).is_ok_and(|r| r.0 == 200)
    }

    /// Waits for /readyz; a node that exits or stays unready fails the
    /// test with what it logged.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if self.is_ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the node on port {} did not become ready within {READY_WITHIN:?}; its log:\n{}",
            self.port,
            self.log()
        );
    }

    /// SIGKILL, and reaps the process.
    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        let mut log = String::new();
        let _ = File::open(self.log.path()).and_then(|mut f| f.read_to_string(&mut log));
        log
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.sigterm();
        let status = self.wait_exit();
        (status, self.log())
    }

    /// Sends SIGTERM and returns at once: the node is shutting down.
    pub fn sigterm(&self) {
        let child = self.child.as_ref().expect("the node runs");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit status if the process has exited (then it is reaped), or
    /// None while it runs.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("the node runs");
        let status = child.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Waits for the process to exit (after [`Self::sigterm`]) and reaps
    /// it; fails the test if it takes over 15 s (and the drop kills it).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the node did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct free ports: each is held until all are chosen, so none is
/// handed out twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A plain HTTP/1.1 request over a TCP socket, one connection each:
/// status and body.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let (status, _, body) = http_exchange(method, url, headers, body, Duration::from_secs(10))?;
    Ok((status, body))
}

/// The same, waiting up to `read_timeout` for the answer: status, the
/// answer's head (status line and headers, lowercased) and body.
pub fn http_exchange(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
    read_timeout: Duration,
) -> std::io::Result<(u16, String, String)> {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap();
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(read_timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n{body}")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Ok((status, head.to_ascii_lowercase(), body.to_owned()))
}

pub fn http(method: &str, url: &str, body: &str) -> std::io::Result<(u16, String)> {
    http_request(method, url, &[], body)
}

pub fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    http("GET", url, "")
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Extra dockerds that play other hosts (`scripts/extra-dockerd.sh`),
/// each with its own socket, bridge and data root; stopped and purged
/// when the test ends, pass or fail.
pub struct ExtraEngines(Vec<String>);

impl ExtraEngines {
    /// Starts each named engine (no-op for one that runs).
    pub fn start(names: &[&str]) -> Self {
        let engines = ExtraEngines(names.iter().map(|s| s.to_string()).collect());
        for name in names {
            extra_dockerd(&["start", name]);
        }
        engines
    }

    /// The `DOCKER_HOST` of engine `name`.
    pub fn host(name: &str) -> String {
        format!("unix:///run/shoal-{name}.sock")
    }
}

impl Drop for ExtraEngines {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("bash")
                .arg(repo().join("scripts/extra-dockerd.sh"))
                .args(["stop", name, "--purge"])
                .output();
        }
    }
}

/// Runs `command`, which must succeed: its output, trimmed. A failure
/// names `what` and shows what the command printed.
fn succeeds(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `scripts/extra-dockerd.sh ARGS`, which must succeed.
pub fn extra_dockerd(args: &[&str]) {
    succeeds(
        Command::new("bash")
            .arg(repo().join("scripts/extra-dockerd.sh"))
            .args(args),
        &format!("extra-dockerd.sh {args:?}"),
    );
}

/// `docker ARGS` against `host`, which must succeed: its output, trimmed.
pub fn docker_on(host: &str, args: &[&str]) -> String {
    succeeds(
        Command::new("docker").env("DOCKER_HOST", host).args(args),
        &format!("docker {args:?}"),
    )
}
