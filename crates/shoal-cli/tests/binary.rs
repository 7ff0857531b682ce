//! The built `shoal` binary as a user runs it: a node process on a loopback
//! port, talked to over HTTP and through the client subcommands, stopped
//! with SIGTERM; and the start-up errors a person has to act on.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A node process, killed if the test ends before it is stopped.
struct NodeProcess {
    child: Option<Child>,
    port: u16,
}

impl NodeProcess {
    fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(SHOAL)
            .args(["node", "--listen", &listen])
            .args(extra)
            .env_remove("SHOAL_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the shoal binary starts");
        let node = NodeProcess {
            child: Some(child),
            port,
        };
        node.wait_ready();
        node
    }

    fn server(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get(&format!("{}/readyz", self.server())).is_ok_and(|r| r.0 == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the node on port {} did not become ready", self.port);
    }

    /// SIGTERM, then the exit status and everything it logged.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut log = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut log)
                    .unwrap();
                return (status, log);
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET or POST over a TCP socket: status and body.
fn http(method: &str, url: &str, body: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap();
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    http("GET", url, "")
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn shoal(args: &[&str]) -> Output {
    Command::new(SHOAL)
        .args(args)
        .env_remove("SHOAL_SERVER")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_node_process_serves_http_and_the_client_commands_then_stops_on_sigterm() {
    let node = NodeProcess::start(&[
        "--engine",
        "synthetic",
        "--synthetic-count",
        "50",
        "--synthetic-prefix",
        "p",
        "--node-id",
        "proc1",
    ]);
    let server = node.server();

    let (status, body) = http_get(&format!("{server}/v1/containers/p3")).unwrap();
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    let ip = answer["containers"][0]["networks"]["synthetic-a"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = http_get(&format!("{server}/v1/containers/{ip}")).unwrap();
    assert_eq!(json(&body)["containers"][0]["names"][0], "p3");
    let (status, body) = http(
        "POST",
        &format!("{server}/jrpc"),
        r#"{"jsonrpc":"2.0","id":7,"method":"Inventory.Get","params":{"ref":"p4"}}"#,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&body)["result"]["containers"][0]["names"][0], "p4");

    let out = shoal(&["--server", &server, "get", "p3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(table.contains(" p3 "), "{table}");
    assert!(table.contains("(served by proc1, owner,"), "{table}");

    let out = shoal(&["--server", &server, "-o", "json", "get", "p3"]);
    assert_eq!(json(&text(&out.stdout))["containers"][0]["names"][0], "p3");

    let out = shoal(&["--server", &server, "ls", "--project", "pproj0"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains(" p0 ") && listing.contains("pproj0"),
        "{listing}"
    );
    assert!(listing.ends_with("(1 container)\n"), "{listing}");

    let out = shoal(&["--server", &server, "nodes"]);
    let nodes = text(&out.stdout);
    assert!(
        nodes.contains("proc1") && nodes.contains("alive") && nodes.contains("50"),
        "{nodes}"
    );

    let out = shoal(&["--server", &server, "projects"]);
    assert!(
        text(&out.stdout).contains("pproj0"),
        "{}",
        text(&out.stdout)
    );
    let out = shoal(&["--server", &server, "projects", "pproj1"]);
    assert!(text(&out.stdout).contains(" p5 "), "{}", text(&out.stdout));

    let out = shoal(&["--server", &server, "get", "nope"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not_found") && err.contains("nope"), "{err}");

    let (status, log) = node.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn an_unreachable_server_is_named_with_what_to_do() {
    let port = free_port();
    let out = shoal(&["--server", &format!("http://127.0.0.1:{port}"), "get", "x"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach shoal"), "{err}");
    assert!(err.contains("--server"), "{err}");
}

#[test]
fn a_missing_engine_socket_is_an_error_that_names_it() {
    let out = shoal(&[
        "node",
        "--listen",
        "127.0.0.1:0",
        "--docker-host",
        "unix:///nonexistent/shoal-test.sock",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("/nonexistent/shoal-test.sock"), "{err}");
    assert!(err.contains("dockerd"), "{err}");
}

#[test]
fn a_taken_port_is_an_error_that_says_so() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = shoal(&[
        "node",
        "--engine",
        "synthetic",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(err.contains("--listen"), "{err}");
}

#[test]
fn a_config_file_is_honoured_and_an_unknown_key_is_refused() {
    let mut good = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        good,
        "node-id: from-file\nengine: synthetic\nsynthetic-count: 3"
    )
    .unwrap();
    let node = NodeProcess::start(&["--config", good.path().to_str().unwrap()]);
    let (_, body) = http_get(&format!("{}/healthz", node.server())).unwrap();
    assert_eq!(json(&body)["node"], "from-file");
    let (_, body) = http_get(&format!("{}/v1/containers", node.server())).unwrap();
    assert_eq!(json(&body)["containers"].as_array().unwrap().len(), 3);
    drop(node);

    let mut bad = tempfile::NamedTempFile::new().unwrap();
    writeln!(bad, "engine: synthetic\nlisten_addr: 127.0.0.1:1").unwrap();
    let out = shoal(&["node", "--config", bad.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("listen_addr"), "{err}");
    assert!(err.contains(&bad.path().display().to_string()), "{err}");
}
