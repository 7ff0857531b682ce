//! A PostgreSQL of a test's own, for the store's tests and the node's:
//! Debian's server (`scripts/ensure-postgres.sh` installs it), started with
//! initdb in a temporary directory and pg_ctl on a free port, stopped by
//! pg_ctl (the PID in its data directory) when dropped. Test support only;
//! it panics on failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL of the test's own: initdb in a temporary directory (as the
/// `postgres` user when the test runs as root, which initdb refuses), a
/// free port, a socket in the directory; stopped on drop.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn postgres_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .expect("no PostgreSQL: scripts/ensure-postgres.sh installs Debian's")
}

fn as_postgres_user(bin: &Path, tool: &str, args: &[&str]) -> Command {
    let mut cmd = if current_uid() == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    };
    cmd.args(args);
    cmd
}

/// This process's user ID, read from /proc.
fn current_uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(0)
}

impl TestPostgres {
    /// Starts one; panics with initdb's or pg_ctl's words when it cannot.
    pub fn start() -> TestPostgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if current_uid() == 0 {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data_s = data.to_str().unwrap();
        let out = as_postgres_user(
            &bin,
            "initdb",
            &["-D", data_s, "-U", "shoal", "--auth=trust", "-E", "UTF8"],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = TestPostgres { dir, bin, port };
        pg.pg_ctl_start();
        pg
    }

    fn pg_ctl_start(&self) {
        let data = self.dir.path().join("data");
        let options = format!(
            "-p {} -k {} -h 127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let out = as_postgres_user(
            &self.bin,
            "pg_ctl",
            &[
                "start",
                "-w",
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops it (fast: open connections are cut), keeping its data.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres_user(
            &self.bin,
            "pg_ctl",
            &["stop", "-w", "-m", "fast", "-D", data.to_str().unwrap()],
        )
        .output();
    }

    /// Starts it again on the same port, after [`TestPostgres::stop`].
    pub fn start_again(&self) {
        self.pg_ctl_start();
    }

    /// Its URL, for the `shoal` user (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://shoal@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // pg_ctl signals the PID in the data directory's postmaster.pid.
        self.stop();
    }
}
