//! A containerd of a test's own and a network namespace with a veth, for
//! the tests against a real containerd in shoal-engine and shoal-cli
//! (included with `#[path]`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The test image, in every namespace a [`Containerd`] is started with.
pub const IMAGE: &str = "shoal-test/busybox:latest";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The test image as an OCI tarball, built once per test process.
fn oci_image() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| run(Command::new("bash").arg(repo_root().join("scripts/oci-image.sh"))))
}

/// A containerd of the test's own, with the test image imported into the
/// namespaces the test uses. Stopped by PID when dropped, after its
/// containers are removed (their shims outlive containerd otherwise).
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    namespaces: Vec<String>,
}

impl Containerd {
    pub fn start(namespaces: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("shoal-containerd-")
            .tempdir()
            .unwrap();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{d}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n"
            ),
        )
        .unwrap();
        let mut c = Containerd {
            dir,
            child: None,
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        };
        c.launch();
        for ns in namespaces {
            c.ctr(
                ns,
                &["images", "import", "--snapshotter", "native", oci_image()],
            );
        }
        c
    }

    pub fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd starts (Debian package containerd)");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            let up = Command::new("ctr")
                .args(["-a", &self.socket(), "version"])
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd did not answer; see {}", self.log());
    }

    /// Stops containerd by its PID; its containers keep running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    pub fn socket(&self) -> String {
        self.dir
            .path()
            .join("containerd.sock")
            .display()
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr(&self, namespace: &str, args: &[&str]) -> String {
        run(Command::new("ctr")
            .args(["-a", &self.socket(), "-n", namespace])
            .args(args))
    }

    /// `ctr run -d` of the test image: `sleep 600` as `id`.
    pub fn run_container(&self, namespace: &str, id: &str, extra: &[&str]) {
        let mut args = vec!["run", "-d", "--snapshotter", "native"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, id, "sleep", "600"]);
        self.ctr(namespace, &args);
    }

    /// Kills and deletes the task and the container `id`.
    pub fn remove(&self, namespace: &str, id: &str) {
        let ctr = |args: &[&str]| {
            Command::new("ctr")
                .args(["-a", &self.socket(), "-n", namespace])
                .args(args)
                .output()
        };
        let _ = ctr(&["tasks", "delete", "--force", id]);
        let _ = ctr(&["containers", "delete", id]);
    }

    pub fn task_pid(&self, namespace: &str, id: &str) -> u32 {
        let tasks = self.ctr(namespace, &["tasks", "list"]);
        tasks
            .lines()
            .find_map(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f[1].parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no task {id}: {tasks}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // A test that failed while containerd was stopped: start it again,
        // or the containers' shims would outlive the test.
        if self.child.is_none() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.launch()));
        }
        if self.child.is_some() {
            for ns in self.namespaces.clone() {
                let ids = Command::new("ctr")
                    .args(["-a", &self.socket(), "-n", &ns, "containers", "list", "-q"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                for id in ids.split_whitespace() {
                    self.remove(&ns, id);
                }
            }
        }
        self.stop();
    }
}

/// A network namespace with one veth to the host: `10.213.<n>.2/24`
/// inside (as `eth0`), `.1` outside. Deleted when dropped.
pub struct NetNs {
    name: String,
    host_if: String,
    /// The address inside.
    pub ip: String,
}

impl NetNs {
    pub fn new(n: u8) -> Self {
        let tag = format!("{}{n}", std::process::id() % 10_000);
        let name = format!("shoal-ctrd-{tag}");
        let host_if = format!("shc{tag}");
        let peer = format!("shp{tag}");
        let ip = format!("10.213.{n}.2");
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        let _ = Command::new("ip")
            .args(["link", "delete", &host_if])
            .output();
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer,
        ]));
        run(Command::new("ip").args(["link", "set", &peer, "netns", &name]));
        let inside = |args: &[&str]| {
            run(Command::new("ip")
                .args(["netns", "exec", &name, "ip"])
                .args(args));
        };
        inside(&["link", "set", &peer, "name", "eth0"]);
        inside(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        inside(&["link", "set", "lo", "up"]);
        run(Command::new("ip").args(["addr", "add", &format!("10.213.{n}.1/24"), "dev", &host_if]));
        run(Command::new("ip").args(["link", "set", &host_if, "up"]));
        NetNs { name, host_if, ip }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}
