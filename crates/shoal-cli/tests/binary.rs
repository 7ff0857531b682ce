//! The built `shoal` binary as a user runs it: a node process on a loopback
//! port, talked to over HTTP and through the client subcommands, stopped
//! with SIGTERM; and the start-up errors a person has to act on.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output};

use common::{NodeProcess, SHOAL, free_port, http, http_get, json};

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

#[test]
fn listings_longer_than_a_page_are_printed_whole() {
    const COUNT: usize = 2500;
    let node = NodeProcess::start(&[
        "--engine",
        "synthetic",
        "--synthetic-count",
        &COUNT.to_string(),
        "--synthetic-prefix",
        "q",
        "--node-id",
        "paged",
    ]);
    let server = node.server();
    let (status, body) = http_get(&format!("{server}/v1/containers")).unwrap();
    assert_eq!(status, 200);
    let first = json(&body);
    assert_eq!(first["containers"].as_array().unwrap().len(), 1000);
    assert!(first["next_cursor"].is_string(), "more than one page");

    let out = shoal(&["--server", &server, "ls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.ends_with(&format!("({COUNT} containers)\n")),
        "{}",
        &listing[listing.len().saturating_sub(200)..]
    );
    let out = shoal(&["--server", &server, "-o", "json", "ls"]);
    let answer = json(&text(&out.stdout));
    let ids: std::collections::HashSet<&str> = answer["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), COUNT, "every container once");
    assert!(answer.get("next_cursor").is_none());

    let (status, body) = http_get(&format!("{server}/v1/containers?label==")).unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["error"]["code"], "bad_request");
    node.terminate();
}

/// `shoal migrate` makes the embedded store where it is told (directory
/// included), says its version, does it again without harm, and refuses a
/// store it does not know without showing the password.
#[test]
fn shoal_migrate_brings_the_history_schema_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("deep/data");
    for _ in 0..2 {
        let out = shoal(&["migrate", "--data-dir", data.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("schema at version 3"),
            "{}",
            text(&out.stdout)
        );
    }
    assert!(data.join("history.db").exists());
    let out = shoal(&["migrate", "--history", "mysql://shoal:secret@db/shoal"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("sqlite://PATH or postgres://"), "{err}");
    assert!(!err.contains("secret"), "the password shows: {err}");
}

/// `shoal` with `env` set and neither SHOAL_SERVER nor SHOAL_API_TOKEN
/// from the caller's environment.
fn shoal_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(SHOAL)
        .args(args)
        .env_remove("SHOAL_SERVER")
        .env_remove("SHOAL_API_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// A job ID of the right shape (a UUIDv7) that no node knows.
const UNKNOWN_JOB: &str = "01a2313b-80bf-710d-be1d-bc3af82cb8ac";

#[test]
fn shoal_run_checks_its_flags_before_asking_any_server() {
    // Nothing listens there: an error that is not "cannot reach" was
    // found without asking.
    let server = format!("http://127.0.0.1:{}", free_port());
    for (flags, says) in [
        (
            &["--env", "FOO"][..],
            r#"--env "FOO" is not KEY=VALUE (write it like --env MODE=fast)"#,
        ),
        (&["-e", "=x"][..], r#"--env "=x" has no key"#),
        (
            &["--env", "1A=b"][..],
            r#"--env: "1A" is not a variable name"#,
        ),
        (
            &["--label", "team"][..],
            r#"--label "team" is not KEY=VALUE"#,
        ),
        (
            &["--label", "shoal.job=x"][..],
            r#"--label: "shoal.job" is reserved"#,
        ),
        (
            &["--memory", "lots"][..],
            r#"--memory "lots" is not a size"#,
        ),
        (&["--cpus", "0"][..], "--cpus: 0 is not between"),
        (
            &["--network", "host"][..],
            "--network: \"host\" is not offered",
        ),
        (&["--name", "a b"][..], "--name: \"a b\" is not a name"),
    ] {
        let mut args = vec!["--server", &server, "run"];
        args.extend_from_slice(flags);
        args.extend(["busybox", "true"]);
        let out = shoal_env(&args, &[("SHOAL_API_TOKEN", "0123456789abcdef0123")]);
        assert!(!out.status.success(), "{flags:?}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{flags:?}: {err}");
        assert!(!err.contains("cannot reach"), "{flags:?} asked: {err}");
        assert!(out.stdout.is_empty(), "{flags:?}: {}", text(&out.stdout));
    }
    // What follows the image is the container's command, hyphens and
    // all: parsed, then the server is asked (and does not answer).
    let out = shoal_env(
        &[
            "--server", &server, "run", "busybox", "sh", "-c", "exit 3", "--wait",
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach shoal"), "{err}");
}

#[test]
fn shoal_run_help_names_the_token_variable_and_hides_its_value() {
    let secret = "do-not-show-0123456789";
    let out = shoal_env(&["run", "--help"], &[("SHOAL_API_TOKEN", secret)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    assert!(help.contains("SHOAL_API_TOKEN"), "{help}");
    assert!(help.contains("--api-token"), "{help}");
    assert!(help.contains("--wait"), "{help}");
    assert!(!help.contains(secret), "the token shows: {help}");
}

#[test]
fn shoal_job_refuses_what_is_no_job_id_and_names_an_unreachable_server() {
    let server = format!("http://127.0.0.1:{}", free_port());
    let out = shoal_env(&["--server", &server, "job", "not-a-uuid"], &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("\"not-a-uuid\" is not a job ID"), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");

    for args in [&["job", UNKNOWN_JOB][..], &["jobs"][..]] {
        let mut all = vec!["--server", server.as_str()];
        all.extend_from_slice(args);
        let out = shoal_env(&all, &[]);
        assert!(!out.status.success(), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("cannot reach shoal"), "{args:?}: {err}");
        assert!(err.contains("--server"), "{args:?}: {err}");
    }
    let out = shoal_env(&["--server", &server, "jobs", "--status", "done"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("done"), "{}", text(&out.stderr));
}

/// Against real (synthetic) nodes: the token's absence or mistake is told
/// plainly with what to set, a node without a token says job creation is
/// off, a synthetic node's refusal comes through, and `job` and `jobs`
/// answer.
#[test]
fn shoal_run_job_and_jobs_against_synthetic_nodes() {
    const TOKEN: &str = "0123456789abcdef0123";
    let node = NodeProcess::start(&[
        "--engine",
        "synthetic",
        "--synthetic-count",
        "3",
        "--node-id",
        "jobs1",
        "--api-token",
        TOKEN,
    ]);
    let server = node.server();
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec!["--server", server.as_str(), "run"];
        args.extend_from_slice(extra);
        args.extend(["busybox", "true"]);
        shoal_env(&args, env)
    };

    let out = run(&[], &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("shoal: creating a job needs the API token"),
        "{err}"
    );
    assert!(err.contains("set SHOAL_API_TOKEN"), "{err}");
    assert!(!err.contains("HTTP 401"), "said plainly: {err}");

    let out = run(&[], &["--api-token", "wrong-token-0123456789"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("the API token is wrong"), "{err}");
    assert!(
        err.contains("not the one the nodes were started with"),
        "{err}"
    );

    // The right token: the node takes the request, but no synthetic node
    // can create a container, and the node says so.
    let out = run(&[("SHOAL_API_TOKEN", TOKEN)], &["--wait"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("can create containers"), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let out = run(&[("SHOAL_API_TOKEN", TOKEN)], &["--node", "jobs1"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node jobs1 cannot create containers"),
        "{err}"
    );

    let out = shoal_env(&["--server", &server, "job", UNKNOWN_JOB], &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not_found") && err.contains(UNKNOWN_JOB),
        "{err}"
    );

    let out = shoal_env(&["--server", &server, "jobs"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("JOB "), "{table}");
    assert!(table.ends_with("(0 jobs)\n"), "{table}");
    let out = shoal_env(
        &[
            "--server", &server, "-o", "json", "jobs", "--status", "failed",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = json(&text(&out.stdout));
    assert_eq!(answer["jobs"], serde_json::json!([]));
    assert_eq!(answer["nodes"]["ok"], serde_json::json!(["jobs1"]));

    // A node started without a token creates no jobs at all (403).
    let closed = NodeProcess::start(&["--engine", "synthetic", "--node-id", "jobs2"]);
    let out = shoal_env(
        &["--server", &closed.server(), "run", "busybox"],
        &[("SHOAL_API_TOKEN", TOKEN)],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("shoal: creating a job is off on this node: it has no API token"),
        "{err}"
    );
    closed.terminate();
    node.terminate();
}
