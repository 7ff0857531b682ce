//! Every public route through the router (no port bound), over a node
//! watching a synthetic engine; and bad input of every kind answered with a
//! clear 4xx, the JSON error shape, nothing changed and the node still up.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_core::EngineId;
use shoal_engine::{
    Engines, EnginesConfig, SyntheticEngine, SyntheticSpec, WatcherConfig, synthetic_id,
    synthetic_record,
};
use shoal_node::{NodeConfig, NodeService, app};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const COUNT: usize = 20;

struct Node {
    router: Router,
    service: Arc<NodeService>,
    engine: SyntheticEngine,
    _stop: tokio_util::sync::DropGuard,
}

async fn node_with(config: NodeConfig, up: bool) -> Node {
    let engine = SyntheticEngine::new(SyntheticSpec {
        count: COUNT,
        prefix: "c".into(),
        engine_id: EngineId("e1".into()),
    });
    engine.set_up(up);
    let stop = CancellationToken::new();
    let (handle, _task) = Engines::spawn(
        vec![Arc::new(engine.clone())],
        EnginesConfig {
            watcher: WatcherConfig {
                node: config.node_id.clone(),
                ..Default::default()
            },
            withdraw_after: Duration::from_secs(60),
        },
        stop.clone(),
    );
    let service = Arc::new(NodeService::new(config, handle.clone()));
    // Alone, the ring never changes: the sender may go.
    service.spawn_tasks(tokio::sync::watch::channel(0).1, &stop);
    if up {
        handle.ready().await;
        // The publisher fills this node's directory right after the sync.
        for _ in 0..1000 {
            if service.directory_copies() == COUNT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(service.directory_copies(), COUNT);
    }
    Node {
        router: app(service.clone()),
        service,
        engine,
        _stop: stop.drop_guard(),
    }
}

async fn node() -> Node {
    node_with(
        NodeConfig {
            node_id: "n1".into(),
            ..Default::default()
        },
        true,
    )
    .await
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    json: Value,
}

async fn send(router: &Router, method: Method, uri: &str, body: Body) -> Answer {
    let response = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(body)
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        json,
    }
}

async fn get(router: &Router, uri: &str) -> Answer {
    send(router, Method::GET, uri, Body::empty()).await
}

async fn rpc(router: &Router, body: Value) -> Answer {
    send(router, Method::POST, "/jrpc", Body::from(body.to_string())).await
}

fn names(a: &Answer) -> Vec<String> {
    let mut n: Vec<String> = a.json["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["names"][0].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

/// The JSON error shape, with this code.
fn assert_error(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{:?}", a.json);
    assert_eq!(a.json["error"]["code"], code, "{:?}", a.json);
    assert!(
        a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{:?}",
        a.json
    );
    assert_eq!(
        a.json.as_object().unwrap().len(),
        1,
        "only `error`: {:?}",
        a.json
    );
}

#[tokio::test]
async fn lookup_by_name_then_by_its_ip_returns_the_same_container() {
    let n = node().await;
    let a = get(&n.router, "/v1/containers/c3").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["served_by"], "n1");
    assert_eq!(a.json["path"], "owner");
    assert_eq!(a.headers["x-shoal-node"], "n1");
    assert_eq!(a.headers["x-shoal-path"], "owner");
    let c = &a.json["containers"][0];
    assert_eq!(c["node"], "n1");
    assert_eq!(c["engine_id"], "e1");
    let id = c["id"].as_str().unwrap().to_owned();
    let ip = c["networks"]["synthetic-a"]["ip"]
        .as_str()
        .unwrap()
        .to_owned();

    let by_ip = get(&n.router, &format!("/v1/containers/{ip}")).await;
    assert_eq!(by_ip.json["containers"][0]["id"], id.as_str());
    let by_prefix = get(&n.router, &format!("/v1/containers/{}", &id[..12])).await;
    assert_eq!(by_prefix.json["containers"][0]["id"], id.as_str());
    let by_full = get(&n.router, &format!("/v1/containers/{id}")).await;
    assert_eq!(by_full.json["containers"][0]["id"], id.as_str());
    let alias = get(&n.router, "/data/c3").await;
    assert_eq!(alias.json["containers"], a.json["containers"]);
}

#[tokio::test]
async fn by_forces_the_kind_of_key() {
    let n = node().await;
    let a = get(&n.router, "/v1/containers/c0?by=name").await;
    assert_eq!(names(&a), ["c0"]);
    let a = get(&n.router, "/v1/containers/cproj0?by=project").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(names(&a), ["c0"]);
    let a = get(&n.router, "/v1/containers/c0?by=ip").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn a_missing_name_is_404_with_the_json_error() {
    let n = node().await;
    let a = get(&n.router, "/v1/containers/nope").await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        a.json["error"]["message"],
        "no container matches name \"nope\""
    );
    assert_eq!(a.headers["x-shoal-node"], "n1");
}

#[tokio::test]
async fn every_list_filter_narrows_the_listing() {
    let n = node().await;
    let all = get(&n.router, "/v1/containers").await;
    assert_eq!(all.json["containers"].as_array().unwrap().len(), COUNT);
    assert_eq!(all.json["nodes"], json!({"ok": ["n1"], "failed": []}));
    let cases: &[(&str, usize)] = &[
        ("name=c1", 11), // c1, c10…c19
        ("label=com.docker.compose.service=svc0", 2),
        ("label=com.docker.compose.project", 4),
        (
            "label=shoal.synthetic&label=com.docker.compose.project=cproj1",
            1,
        ),
        ("project=cproj0", 1),
        ("project=cproj0&name=c1", 0),
        ("node=n1", COUNT),
        ("node=n2", 0),
        ("state=running", COUNT),
        ("state=paused", 0),
        ("image=synthetic/app", COUNT),
        ("image=synthetic/app:1", COUNT),
        ("image=synthetic", 0),
    ];
    for (q, expected) in cases {
        let a = get(&n.router, &format!("/v1/containers?{q}")).await;
        assert_eq!(a.status, StatusCode::OK, "{q}");
        assert_eq!(
            a.json["containers"].as_array().unwrap().len(),
            *expected,
            "{q}"
        );
    }
}

#[tokio::test]
async fn projects_are_listed_and_looked_up() {
    let n = node().await;
    let a = get(&n.router, "/v1/projects").await;
    assert_eq!(a.status, StatusCode::OK);
    let projects = a.json["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 4, "c0, c5, c10, c15 in cproj0..cproj3");
    let p0 = projects.iter().find(|p| p["name"] == "cproj0").unwrap();
    assert_eq!(p0["containers"], 1);
    assert_eq!(p0["nodes"]["n1"], json!(["c0"]));
    assert_eq!(p0["services"], json!(["svc0"]));
    let a = get(&n.router, "/v1/projects/cproj1").await;
    assert_eq!(a.json["project"], "cproj1");
    assert_eq!(names(&a), ["c5"]);
    let a = get(&n.router, "/v1/projects/nothing").await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn nodes_health_readiness_and_metrics_answer() {
    let n = node().await;
    let a = get(&n.router, "/v1/nodes").await;
    let me = &a.json["nodes"][0];
    assert_eq!(me["id"], "n1");
    assert_eq!(me["state"], "alive");
    assert_eq!(me["containers"], COUNT);
    let engines = me["engines"].as_array().unwrap();
    assert_eq!(engines.len(), 1, "{me}");
    assert_eq!(engines[0]["kind"], "synthetic");
    assert_eq!(engines[0]["id"], "e1");
    assert_eq!(engines[0]["state"], "synced");
    assert_eq!(engines[0]["containers"], COUNT);
    assert_eq!(me["ring_share"], 1.0);
    assert_eq!(get(&n.router, "/healthz").await.status, StatusCode::OK);
    let r = get(&n.router, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["engine"], "synced");
    get(&n.router, "/v1/containers/c1").await;
    get(&n.router, "/v1/containers/nope").await;
    let m = get(&n.router, "/metrics").await;
    let text = m.json.as_str().unwrap();
    assert!(text.contains("shoal_http_requests_total{"), "{text}");
    assert!(
        text.contains("shoal_lookups_total{path=\"owner\",result=\"found\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("shoal_lookups_total{path=\"owner\",result=\"not_found\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("shoal_local_containers {COUNT}")),
        "{text}"
    );
}

#[tokio::test]
async fn nodes_say_whether_peer_requests_are_authenticated() {
    let open = node().await;
    assert_eq!(
        get(&open.router, "/v1/nodes").await.json["peer_auth"],
        "none"
    );
    let guarded = node_with(
        NodeConfig {
            node_id: "n1".into(),
            cluster_secret: Some("a-long-enough-secret".into()),
            ..Default::default()
        },
        true,
    )
    .await;
    assert_eq!(
        get(&guarded.router, "/v1/nodes").await.json["peer_auth"],
        "hmac"
    );
}

#[tokio::test]
async fn the_noop_baseline_is_public_and_not_under_the_peer_api() {
    // With a secret, so that a 200 shows the baseline needs no peer MAC.
    let n = node_with(
        NodeConfig {
            node_id: "n1".into(),
            cluster_secret: Some("a-long-enough-secret".into()),
            ..Default::default()
        },
        true,
    )
    .await;
    let a = get(&n.router, "/v1/noop").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json, Value::Null, "no body");
    // nginx refuses all of /_shoal/, so the baseline must not live there.
    assert_error(
        &get(&n.router, "/_shoal/v1/noop").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn a_node_whose_engine_never_answered_is_not_ready_and_says_so() {
    let n = node_with(
        NodeConfig {
            node_id: "n2".into(),
            ..Default::default()
        },
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = get(&n.router, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["ready"], false);
    assert_error(
        &get(&n.router, "/v1/containers/c1").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert_error(
        &get(&n.router, "/v1/containers").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    assert_eq!(get(&n.router, "/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn live_changes_show_up_in_the_api() {
    let n = node().await;
    let mut r = synthetic_record("new", 0, &EngineId("e1".into()));
    r.names = vec!["late".into()];
    n.engine.run(r);
    let mut found = false;
    for _ in 0..500 {
        if get(&n.router, "/v1/containers/late").await.status == StatusCode::OK {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(found, "a started container appears");
    n.engine.remove(&synthetic_id("c", 1));
    let mut gone = false;
    for _ in 0..500 {
        if get(&n.router, "/v1/containers/c1").await.status == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(gone, "a removed container leaves");
}

#[tokio::test]
async fn jsonrpc_methods_answer_like_the_rest_routes() {
    let n = node().await;
    let a = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":1,"method":"Inventory.Get","params":{"ref":"c2"}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["id"], 1);
    assert_eq!(a.json["result"]["containers"][0]["names"][0], "c2");
    let a = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":"x","method":"Inventory.Get","params":["cproj0","project"]}),
    )
    .await;
    assert_eq!(a.json["result"]["containers"][0]["names"][0], "c0");
    let a = rpc(&n.router, json!({"jsonrpc":"2.0","id":2,"method":"Inventory.List","params":{"filters":{"label":["shoal.synthetic","com.docker.compose.service=svc0"]}}})).await;
    assert_eq!(a.json["result"]["containers"].as_array().unwrap().len(), 2);
    let a = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":3,"method":"Inventory.Projects"}),
    )
    .await;
    assert_eq!(a.json["result"]["projects"].as_array().unwrap().len(), 4);
    let a = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":4,"method":"Inventory.Projects","params":{"name":"cproj2"}}),
    )
    .await;
    assert_eq!(a.json["result"]["project"], "cproj2");
    let a = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":5,"method":"Inventory.Nodes","params":{}}),
    )
    .await;
    assert_eq!(a.json["result"]["nodes"][0]["id"], "n1");
}

#[tokio::test]
async fn a_batch_answers_every_call_in_order_and_skips_notifications() {
    let n = node().await;
    let a = rpc(
        &n.router,
        json!([
            {"jsonrpc":"2.0","id":1,"method":"Inventory.Get","params":{"ref":"c1"}},
            {"jsonrpc":"2.0","method":"Inventory.Nodes"},
            {"jsonrpc":"2.0","id":2,"method":"Inventory.Get","params":{"ref":"nope"}},
            {"jsonrpc":"2.0","id":3,"method":"No.Such"},
            7
        ]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let answers = a.json.as_array().unwrap();
    assert_eq!(
        answers.len(),
        4,
        "the notification gets no answer: {answers:?}"
    );
    assert_eq!(answers[0]["id"], 1);
    assert!(answers[0]["result"].is_object());
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(answers[1]["error"]["code"], -32004);
    assert_eq!(answers[1]["error"]["data"]["code"], "not_found");
    assert_eq!(answers[2]["error"]["code"], -32601);
    assert_eq!(answers[3]["error"]["code"], -32600);
    assert_eq!(answers[3]["id"], Value::Null);

    let a = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","method":"Inventory.Nodes"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = rpc(
        &n.router,
        json!([{"jsonrpc":"2.0","method":"Inventory.Nodes"}]),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn invalid_jsonrpc_is_a_4xx_with_the_standard_code() {
    let n = node_with(
        NodeConfig {
            node_id: "n1".into(),
            max_batch: 3,
            ..Default::default()
        },
        true,
    )
    .await;
    let cases: Vec<(Body, StatusCode, i64)> = vec![
        (Body::from("{not json"), StatusCode::BAD_REQUEST, -32700),
        (Body::from("[]"), StatusCode::BAD_REQUEST, -32600),
        (
            Body::from(r#"{"jsonrpc":"1.0","id":1,"method":"Inventory.Nodes"}"#),
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            Body::from(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"Inventory.Nodes"}"#),
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            Body::from(r#"{"jsonrpc":"2.0","id":1,"method":5}"#),
            StatusCode::BAD_REQUEST,
            -32600,
        ),
        (
            Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"Nope"}"#),
            StatusCode::NOT_FOUND,
            -32601,
        ),
        (
            Body::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.Get","params":{"ref":"a","x":1}}"#,
            ),
            StatusCode::BAD_REQUEST,
            -32602,
        ),
        (
            Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.Get","params":{"ref":5}}"#),
            StatusCode::BAD_REQUEST,
            -32602,
        ),
        (
            Body::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.Get","params":{"ref":"a","by":"colour"}}"#,
            ),
            StatusCode::BAD_REQUEST,
            -32602,
        ),
        (
            Body::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.Get","params":{"ref":"a\u0000b"}}"#,
            ),
            StatusCode::BAD_REQUEST,
            -32602,
        ),
        (
            Body::from(
                r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.List","params":{"filters":{"state":"exited"}}}"#,
            ),
            StatusCode::BAD_REQUEST,
            -32602,
        ),
        (Body::from(r#"[1,2,3,4]"#), StatusCode::BAD_REQUEST, -32600),
    ];
    for (body, status, code) in cases {
        let a = send(&n.router, Method::POST, "/jrpc", body).await;
        assert_eq!(a.status, status, "{:?}", a.json);
        assert_eq!(a.json["jsonrpc"], "2.0");
        assert_eq!(a.json["error"]["code"], code, "{:?}", a.json);
    }
    let a = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":9,"method":"Inventory.Get","params":{"ref":"nope"}}),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "an application error is not a bad request"
    );
    assert_eq!(a.json["error"]["code"], -32004);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx_and_changes_nothing() {
    let n = node_with(
        NodeConfig {
            node_id: "n1".into(),
            max_body_bytes: 4096,
            ..Default::default()
        },
        true,
    )
    .await;
    let long_ref = format!("/v1/containers/{}", "a".repeat(10_000));
    let long_query = format!("/v1/containers?name={}", "a".repeat(5_000));
    let bad: Vec<(&str, StatusCode, &str)> = vec![
        (
            "/v1/containers/web;rm",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers/a%00b",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers/a%0Ab",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers/%ff%fe",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (&long_ref, StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/v1/containers/c1?by=bogus",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers/c1?by=name&by=id",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers/c1?verbose=1",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers?colour=red",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers?state=exited",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers?name=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/containers?name=%ff",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (&long_query, StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/projects?x=1", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/projects/a%00", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v2/containers/c1", StatusCode::NOT_FOUND, "not_found"),
        // `/` is the web view; nothing else at the top is a route.
        ("/index.html", StatusCode::NOT_FOUND, "not_found"),
        ("/ui/app.exe", StatusCode::NOT_FOUND, "not_found"),
        (
            "/v1/watch?since=n1:x:1",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/watch?since=a&since=b",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/watch?colour=red",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (uri, status, code) in bad {
        let a = get(&n.router, uri).await;
        assert_error(&a, status, code);
    }
    let a = send(&n.router, Method::POST, "/v1/nodes", Body::empty()).await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let a = send(
        &n.router,
        Method::DELETE,
        "/v1/containers/c1",
        Body::empty(),
    )
    .await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let a = send(&n.router, Method::GET, "/jrpc", Body::empty()).await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"Inventory.Get","params":{{"ref":"{}"}}}}"#,
        "a".repeat(10_000)
    );
    let a = send(&n.router, Method::POST, "/jrpc", Body::from(huge)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.json["error"]["code"], -32600);

    // Nothing changed, and the node still answers.
    let all = get(&n.router, "/v1/containers").await;
    assert_eq!(all.json["containers"].as_array().unwrap().len(), COUNT);
    assert_eq!(
        get(&n.router, "/v1/containers/c1").await.status,
        StatusCode::OK
    );
}

fn a_publish() -> Vec<u8> {
    a_publish_of("evil")
}

/// A snapshot from `intruder` with one container named after `prefix`.
fn a_publish_of(prefix: &str) -> Vec<u8> {
    publish_of("intruder", shoal_node::clock::now_ms(), 1, prefix)
}

/// A snapshot of one container, `evil0`, from `node` in `incarnation`.
/// How this node's own directory answers `name` (a lookup with
/// `x-shoal-hop`, as a peer's forward: the directory as it is, never the
/// engine, so it shows what a publish applied).
async fn in_directory(router: &Router, name: &str) -> StatusCode {
    let request = Request::builder()
        .uri(format!("/v1/containers/{name}"))
        .header("x-shoal-hop", "1")
        .body(Body::empty())
        .unwrap();
    answer(router, request).await.status
}

fn publish_from(node: &str, incarnation: u64, seq: u64) -> Vec<u8> {
    publish_of(node, incarnation, seq, "evil")
}

/// A snapshot of one container named after `prefix`, from `node` in
/// `incarnation`.
fn publish_of(node: &str, incarnation: u64, seq: u64, prefix: &str) -> Vec<u8> {
    use shoal_core::wire::{Publish, PublishBody, SourceClock, encode};
    encode(&Publish {
        source: SourceClock {
            node: node.into(),
            incarnation,
            seq,
            prev: 0,
            ring: 0,
        },
        body: PublishBody::Snapshot {
            records: vec![shoal_core::ContainerRecord {
                node: node.into(),
                ..synthetic_record(prefix, 0, &EngineId("x".into()))
            }],
        },
    })
}

#[tokio::test]
async fn peer_routes_refuse_bad_bytes_and_other_versions() {
    let n = node().await;
    let a = send(
        &n.router,
        Method::POST,
        "/_shoal/v1/publish",
        Body::from(vec![1u8, 2, 3]),
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let mut other_version = a_publish();
    other_version[0] = 9;
    let a = send(
        &n.router,
        Method::POST,
        "/_shoal/v1/publish",
        Body::from(other_version),
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("version 9")
    );
    let a = get(&n.router, "/_shoal/v1/lookup/colour/red").await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(
        get(&n.router, "/v1/containers/evil0").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn with_a_cluster_secret_unsigned_peer_requests_are_refused() {
    let secret = "a-long-enough-secret";
    let n = node_with(
        NodeConfig {
            node_id: "n1".into(),
            cluster_secret: Some(secret.into()),
            ..Default::default()
        },
        true,
    )
    .await;
    let a = send(
        &n.router,
        Method::POST,
        "/_shoal/v1/publish",
        Body::from(a_publish()),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json["error"]["code"], "unauthorized");
    assert_eq!(
        in_directory(&n.router, "evil0").await,
        StatusCode::NOT_FOUND,
        "nothing applied"
    );

    // Signed for another node: refused, and so is the same request
    // replayed. From a live member (the node itself, as a forger that has
    // the secret could claim), or validation would refuse it first.
    let body = publish_from("n1", n.service.pong().incarnation, 1_000_000);
    let (for_n2, _) = signed(secret, "n2", "/_shoal/v1/publish", &body);
    let a = answer(&n.router, for_n2).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another node")
    );
    // A body other than the signed one: refused after the headers pass.
    let (tampered, _) = signed(secret, "n1", "/_shoal/v1/publish", &body);
    let tampered = tampered.map(|_| Body::from(a_publish_of("evil-too")));
    assert_error(
        &answer(&n.router, tampered).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(
        in_directory(&n.router, "evil0").await,
        StatusCode::NOT_FOUND,
        "nothing applied"
    );

    let (request, auth) = signed(secret, "n1", "/_shoal/v1/publish", &body);
    let replay = clone_request(&request, &body);
    let response = n.router.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a signed publish is applied"
    );
    let mac = response.headers()["x-shoal-auth"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer_body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        shoal_node::auth::verify_response(
            secret.as_bytes(),
            &auth.nonce,
            200,
            &answer_body,
            Some(&mac)
        ),
        Ok(()),
        "the answer is signed for the request"
    );
    assert_eq!(in_directory(&n.router, "evil0").await, StatusCode::OK);
    let a = answer(&n.router, replay).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("replay")
    );
}

/// A request to node `to` signed with `secret`, and its signature.
fn signed(
    secret: &str,
    to: &str,
    uri: &str,
    body: &[u8],
) -> (Request<Body>, shoal_node::auth::RequestAuth) {
    let auth = shoal_node::auth::RequestAuth::sign(
        secret.as_bytes(),
        "POST",
        uri,
        &to.into(),
        body,
        shoal_node::clock::now_ms() / 1000,
    );
    (request_with(&auth, uri, body), auth)
}

fn request_with(auth: &shoal_node::auth::RequestAuth, uri: &str, body: &[u8]) -> Request<Body> {
    let mut request = Request::builder().method(Method::POST).uri(uri);
    for (name, value) in auth.headers() {
        request = request.header(name, value);
    }
    request.body(Body::from(body.to_vec())).unwrap()
}

/// The same request again: a replay.
fn clone_request(request: &Request<Body>, body: &[u8]) -> Request<Body> {
    let mut copy = Request::builder()
        .method(request.method())
        .uri(request.uri());
    for (name, value) in request.headers() {
        copy = copy.header(name, value);
    }
    copy.body(Body::from(body.to_vec())).unwrap()
}

async fn answer(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

#[tokio::test]
async fn with_a_cluster_secret_a_refused_request_has_no_body_byte_read() {
    let secret = "a-long-enough-secret";
    let n = node_with(
        NodeConfig {
            node_id: "n1".into(),
            cluster_secret: Some(secret.into()),
            ..Default::default()
        },
        true,
    )
    .await;
    // A body that records being read, under headers signed with another
    // secret, for another node, and none.
    let other = signed("another-long-secret", "n1", "/_shoal/v1/publish", b"x").0;
    let for_n2 = signed(secret, "n2", "/_shoal/v1/publish", b"x").0;
    let unsigned = Request::builder()
        .method(Method::POST)
        .uri("/_shoal/v1/publish")
        .body(Body::empty())
        .unwrap();
    for request in [other, for_n2, unsigned] {
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = read.clone();
        let body = Body::from_stream(futures::stream::once(async move {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(bytes::Bytes::from(a_publish()))
        }));
        let a = answer(&n.router, request.map(|_| body)).await;
        assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            !read.load(std::sync::atomic::Ordering::SeqCst),
            "the body was read before the refusal: {:?}",
            a.json
        );
    }
}

/// Follows `next_cursor` from `first` to the end; every page's items.
async fn all_pages(router: &Router, first: &str, items: &str) -> (Vec<Value>, usize) {
    let mut seen = Vec::new();
    let mut uri = first.to_owned();
    for pages in 1..=100 {
        let a = get(router, &uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {:?}", a.json);
        seen.extend(a.json[items].as_array().unwrap().iter().cloned());
        match a.json["next_cursor"].as_str() {
            Some(c) => uri = format!("{first}&cursor={c}"),
            None => return (seen, pages),
        }
    }
    panic!("{first} never ended");
}

#[tokio::test]
async fn listings_come_in_pages_that_follow_each_other() {
    let n = node().await;
    let all = get(&n.router, "/v1/containers").await;
    assert!(all.json.get("next_cursor").is_none(), "one page holds 20");
    let (paged, pages) = all_pages(&n.router, "/v1/containers?limit=7", "containers").await;
    assert_eq!(pages, 3);
    assert_eq!(paged, *all.json["containers"].as_array().unwrap());

    let (filtered, pages) =
        all_pages(&n.router, "/v1/containers?name=c1&limit=5", "containers").await;
    assert_eq!((filtered.len(), pages), (11, 3));

    let all = get(&n.router, "/v1/projects").await;
    let (paged, pages) = all_pages(&n.router, "/v1/projects?limit=3", "projects").await;
    assert_eq!(pages, 2);
    assert_eq!(paged, *all.json["projects"].as_array().unwrap());

    let first = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":1,"method":"Inventory.List","params":{"limit":15}}),
    )
    .await;
    let page = &first.json["result"];
    assert_eq!(page["containers"].as_array().unwrap().len(), 15);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":2,"method":"Inventory.List","params":[null, 15, cursor]}),
    )
    .await;
    assert_eq!(
        rest.json["result"]["containers"].as_array().unwrap().len(),
        5
    );
    assert!(rest.json["result"].get("next_cursor").is_none());
    let projects = rpc(
        &n.router,
        json!({"jsonrpc":"2.0","id":3,"method":"Inventory.Projects","params":{"limit":1}}),
    )
    .await;
    assert_eq!(
        projects.json["result"]["projects"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(projects.json["result"]["next_cursor"].is_string());
}

/// The number of `shoal_http_requests_total` series.
async fn request_series(router: &Router) -> usize {
    let m = get(router, "/metrics").await;
    m.json
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("shoal_http_requests_total{"))
        .count()
}

#[tokio::test]
async fn every_public_route_refuses_bad_input_and_nothing_changes() {
    let n = node_with(
        NodeConfig {
            node_id: "n1".into(),
            max_body_bytes: 4096,
            max_batch_listings: 2,
            ..Default::default()
        },
        true,
    )
    .await;
    let a_cursor = {
        let a = get(&n.router, "/v1/containers?limit=1").await;
        a.json["next_cursor"].as_str().unwrap().to_owned()
    };
    let project_cursor = {
        let a = get(&n.router, "/v1/projects?limit=1").await;
        a.json["next_cursor"].as_str().unwrap().to_owned()
    };
    let cursor_twice = format!("/v1/containers?cursor={a_cursor}&cursor={a_cursor}");
    let wrong_listing = format!("/v1/projects?cursor={a_cursor}");
    let wrong_listing_back = format!("/v1/containers?cursor={project_cursor}");
    let bad: Vec<String> = [
        "/v1/containers?label==",
        "/v1/containers?label==x",
        "/v1/containers?label=",
        "/v1/containers?label",
        "/v1/containers?limit=0",
        "/v1/containers?limit=10001",
        "/v1/containers?limit=-1",
        "/v1/containers?limit=ten",
        "/v1/containers?limit=1&limit=2",
        "/v1/containers?cursor=",
        "/v1/containers?cursor=zz",
        "/v1/containers?cursor=5b5d",
        "/v1/projects?limit=0",
        "/v1/projects?cursor=not-hex",
        "/v1/projects?name=x",
        "/v1/projects/cproj0?limit=1",
        "/v1/projects/a%0Ab",
        "/v1/projects/%ff",
        "/v1/nodes?verbose=1",
        "/v1/nodes?%ff=1",
        "/data/a;b",
        "/data/c1?by=colour",
        "/v1/containers/c1?by=",
        &cursor_twice,
        &wrong_listing,
        &wrong_listing_back,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let copies = n.service.directory_copies();
    // A first round creates the error series; the second creates none.
    for round in 0..2 {
        let series = request_series(&n.router).await;
        for uri in &bad {
            assert_error(
                &get(&n.router, uri).await,
                StatusCode::BAD_REQUEST,
                "bad_request",
            );
        }
        for method in ["PUT", "DELETE", "PATCH", &format!("X-MADE-UP-{round}")] {
            for route in [
                "/v1/containers",
                "/v1/containers/c1",
                "/v1/projects",
                "/v1/nodes",
                "/healthz",
                "/nope",
            ] {
                let method = Method::from_bytes(method.as_bytes()).unwrap();
                let a = send(&n.router, method.clone(), route, Body::empty()).await;
                assert!(a.status.is_client_error(), "{method} {route}: {}", a.status);
                assert!(a.json["error"]["code"].is_string(), "{method} {route}");
            }
        }
        // Bodies and headers of the one route that reads a body.
        let probes: Vec<(Request<Body>, StatusCode)> = vec![
            (
                Request::post("/jrpc").body(Body::from(vec![0xffu8, 0xfe, 0x00])).unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/jrpc")
                    .body(Body::from_stream(futures::stream::iter(
                        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1000]))),
                    )))
                    .unwrap(),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                Request::post("/jrpc")
                    .header("content-type", "text/plain")
                    .body(Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.List","params":{"filters":{"label":"="}}}"#))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/jrpc")
                    .body(Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.List","params":{"limit":"7"}}"#))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/jrpc")
                    .body(Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.Projects","params":{"name":"cproj0","limit":2}}"#))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/jrpc")
                    .body(Body::from(r#"{"jsonrpc":"2.0","id":1,"method":"Inventory.List","params":{"cursor":"00"}}"#))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
            (
                Request::post("/jrpc")
                    .body(Body::from(
                        json!([
                            {"jsonrpc":"2.0","id":1,"method":"Inventory.List"},
                            {"jsonrpc":"2.0","id":2,"method":"Inventory.Projects"},
                            {"jsonrpc":"2.0","id":3,"method":"Inventory.List"}
                        ])
                        .to_string(),
                    ))
                    .unwrap(),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (request, status) in probes {
            let what = format!("{:?}", request.headers());
            let response = n.router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), status, "{what}");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert!(
                body["error"]["code"].is_number() || body["error"]["code"].is_string(),
                "{body}"
            );
        }
        if round == 1 {
            assert_eq!(
                request_series(&n.router).await,
                series,
                "a second round of bad input creates no metrics series"
            );
        }
    }
    let text = get(&n.router, "/metrics")
        .await
        .json
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(!text.contains("X-MADE-UP"), "{text}");
    assert_eq!(n.service.directory_copies(), copies);
    let all = get(&n.router, "/v1/containers").await;
    assert_eq!(all.json["containers"].as_array().unwrap().len(), COUNT);
}

/// A JSON-RPC request whose body never comes: it holds a public slot
/// until the body timeout.
fn a_request_that_never_sends_its_body() -> Request<Body> {
    Request::post("/jrpc")
        .body(Body::from_stream(futures::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >()))
        .unwrap()
}

#[tokio::test]
async fn beyond_the_public_limit_requests_are_shed_and_peers_still_answer() {
    let n = node_with(
        NodeConfig {
            node_id: "n1".into(),
            max_concurrent_requests: 1,
            body_read_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        true,
    )
    .await;
    let held = tokio::spawn(
        n.router
            .clone()
            .oneshot(a_request_that_never_sends_its_body()),
    );
    let mut shed = None;
    for _ in 0..200 {
        let a = get(&n.router, "/v1/nodes").await;
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            shed = Some(a);
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let shed = shed.expect("the second public request is shed while the first holds the slot");
    assert_error(&shed, StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(
        get(&n.router, "/_shoal/v1/ping").await.status,
        StatusCode::OK,
        "peer routes have their own limit"
    );
    let response = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the body timeout ends the held request")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(get(&n.router, "/v1/nodes").await.status, StatusCode::OK);
}

/// A publish from `node` whose one record `edit` spoils.
fn spoiled_publish(
    node: &str,
    incarnation: u64,
    edit: impl FnOnce(&mut shoal_core::ContainerRecord),
) -> Vec<u8> {
    use shoal_core::wire::{Publish, PublishBody, SourceClock, encode};
    let mut record = shoal_core::ContainerRecord {
        node: node.into(),
        ..synthetic_record("evil", 0, &EngineId("x".into()))
    };
    edit(&mut record);
    encode(&Publish {
        source: SourceClock {
            node: node.into(),
            incarnation,
            seq: 1_000_000,
            prev: 0,
            ring: 0,
        },
        body: PublishBody::Delta {
            upserts: vec![record],
            removes: vec![],
        },
    })
}

async fn post_peer(router: &Router, path: &str, body: Vec<u8>) -> Answer {
    send(router, Method::POST, path, Body::from(body)).await
}

#[tokio::test]
async fn peer_bodies_out_of_bounds_are_refused_and_change_nothing() {
    use shoal_core::validate::{MAX_INCARNATION_AHEAD_MS, MAX_LABEL_VALUE_LEN, MAX_NAME_LEN};
    use shoal_core::wire::{DigestRequest, Invalidate, LocalQuery, ResyncRequest, SourceClock};
    let n = node().await;
    // From the node itself, in its live incarnation: only the bounds
    // refuse these.
    let live = n.service.pong().incarnation;
    let now = shoal_node::clock::now_ms();
    let spoiled: Vec<(&str, Vec<u8>)> = vec![
        (
            "a non-ASCII ID",
            spoiled_publish("n1", live, |r| {
                r.id = format!("{}é{}", "a".repeat(11), "b".repeat(51))
            }),
        ),
        (
            "a short ID",
            spoiled_publish("n1", live, |r| r.id = "abc".into()),
        ),
        (
            "a non-hex ID",
            spoiled_publish("n1", live, |r| r.id = "z".repeat(64)),
        ),
        (
            "a long name",
            spoiled_publish("n1", live, |r| r.names = vec!["n".repeat(MAX_NAME_LEN + 1)]),
        ),
        (
            "a huge label",
            spoiled_publish("n1", live, |r| {
                r.labels
                    .insert("k".into(), "v".repeat(MAX_LABEL_VALUE_LEN + 1));
            }),
        ),
        (
            "a far-future incarnation",
            spoiled_publish("n1", now + MAX_INCARNATION_AHEAD_MS + 60_000, |_| {}),
        ),
        (
            "an incarnation before 2024",
            spoiled_publish("n1", 5, |_| {}),
        ),
    ];
    for (what, body) in spoiled {
        let a = post_peer(&n.router, "/_shoal/v1/publish", body).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
        let message = a.json["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("invalid peer message: "),
            "{what}: {message}"
        );
    }

    // Well-formed, from a node this one has never heard of: refused, and
    // the message says why.
    let a = post_peer(
        &n.router,
        "/_shoal/v1/publish",
        spoiled_publish("stranger", now, |_| {}),
    )
    .await;
    assert_error(&a, StatusCode::CONFLICT, "not_a_member");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stranger is not a live member")
    );
    let digest = |node: &str, incarnation| {
        shoal_core::wire::encode(&DigestRequest {
            source: SourceClock {
                node: node.into(),
                incarnation,
                seq: 1,
                prev: 1,
                ring: 0,
            },
            count: 0,
            digest: 0,
        })
    };
    let a = post_peer(&n.router, "/_shoal/v1/digest", digest("stranger", now)).await;
    assert_error(&a, StatusCode::CONFLICT, "not_a_member");
    let a = post_peer(&n.router, "/_shoal/v1/digest", digest("n1", u64::MAX)).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    // The other peer bodies are held to their bounds too.
    let bad_key = shoal_core::wire::encode(&Invalidate {
        owner: "n2".into(),
        keys: vec![shoal_core::LookupKey::Id("not-hex".into())],
        everything: false,
    });
    let a = post_peer(&n.router, "/_shoal/v1/invalidate", bad_key).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let bad_filter = shoal_core::wire::encode(&LocalQuery::Filter(shoal_core::ListFilter {
        image: Some("i".repeat(100_000)),
        ..Default::default()
    }));
    let a = post_peer(&n.router, "/_shoal/v1/local", bad_filter).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    let bad_owner = shoal_core::wire::encode(&ResyncRequest {
        owner: "a\nb".into(),
        ring: 0,
    });
    let a = post_peer(&n.router, "/_shoal/v1/resync", bad_owner).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");

    // Nothing changed: the directory holds the node's own containers, no
    // more, and every one still answers.
    assert_eq!(n.service.directory_copies(), COUNT);
    assert_eq!(
        get(&n.router, "/v1/containers/evil0").await.status,
        StatusCode::NOT_FOUND
    );
    let all = get(&n.router, "/v1/containers").await;
    assert_eq!(all.json["containers"].as_array().unwrap().len(), COUNT);
    assert_eq!(
        get(&n.router, "/v1/containers/c1").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_forged_publish_from_a_later_incarnation_hides_nothing() {
    use shoal_core::wire::{PublishAck, decode};
    let n = node().await;
    let now = shoal_node::clock::now_ms();
    // Within the clock bound, claiming this live node restarted: its owner
    // keeps the live incarnation's records and calls the forgery stale.
    let response = n
        .router
        .clone()
        .oneshot(
            Request::builder()
                .method(Method::POST)
                .uri("/_shoal/v1/publish")
                .body(Body::from(publish_from("n1", now + 5 * 60 * 1000, 1)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        decode::<PublishAck>(&bytes, now).unwrap(),
        PublishAck::Stale
    );
    // Beyond the bound it is not even decoded.
    let a = post_peer(
        &n.router,
        "/_shoal/v1/publish",
        publish_from("n1", now + 60 * 60 * 1000, 1),
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ahead of this node's clock")
    );
    assert_eq!(n.service.directory_copies(), COUNT);
    assert_eq!(
        get(&n.router, "/v1/containers/c1").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&n.router, "/v1/containers/evil0").await.status,
        StatusCode::NOT_FOUND
    );
}

/// The web view: the page revalidated by its ETag, its assets named by a
/// hash of their contents and cached for long, an unknown asset a 404 in
/// the API's error shape.
#[tokio::test]
async fn the_web_view_is_served_with_cache_headers() {
    let n = node().await;
    let page = send(&n.router, Method::GET, "/", Body::empty()).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-cache");
    let html = page.json.as_str().unwrap().to_owned();
    assert!(
        html.contains("new EventSource") || html.contains("/ui/app.js?v="),
        "{html}"
    );
    let script = html
        .split('"')
        .find(|s| s.starts_with("/ui/app.js?v="))
        .expect("the page names its script with a version");
    assert!(!script.contains("{{"), "the version is filled in: {script}");
    let etag = page.headers["etag"].to_str().unwrap().to_owned();
    let again = n
        .router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/")
                .header("if-none-match", &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    let js = send(&n.router, Method::GET, script, Body::empty()).await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
    assert!(
        js.headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(
        js.json
            .as_str()
            .unwrap()
            .contains("new EventSource(\"/v1/watch\")")
    );
    let css = send(&n.router, Method::GET, "/ui/app.css", Body::empty()).await;
    assert_eq!(css.headers["content-type"], "text/css; charset=utf-8");
    let missing = send(&n.router, Method::GET, "/ui/nope.js", Body::empty()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json["error"]["code"], "not_found");
}

async fn send_with(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    answer(router, request.body(Body::from(body.to_owned())).unwrap()).await
}

const TOKEN: &str = "routes-test-token-0123";

/// A node with the API token, for reads too when `reads`.
async fn guarded(reads: bool) -> Node {
    node_with(
        NodeConfig {
            node_id: "n1".into(),
            api_token: Some(TOKEN.into()),
            api_token_reads: reads,
            ..Default::default()
        },
        true,
    )
    .await
}

#[tokio::test]
async fn creating_a_job_needs_the_token_and_a_node_without_one_creates_none() {
    let open = node().await;
    let job = json!({"image": "busybox", "arguments": ["true"]}).to_string();
    let a = send_with(&open.router, Method::POST, "/v1/jobs", None, &job).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--api-token")
    );

    let guarded = guarded(false).await;
    let r = &guarded.router;
    let a = send_with(r, Method::POST, "/v1/jobs", None, &job).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"shoal\"");
    let a = send_with(
        r,
        Method::POST,
        "/v1/jobs",
        Some("not-the-token-0123456"),
        &job,
    )
    .await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "ContainerService.Create", "params": [{"image": "busybox"}]});
    let a = send_with(r, Method::POST, "/jrpc", None, &call.to_string()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.json);
    assert_eq!(a.json["error"]["code"], -32001);
    assert_eq!(a.headers["www-authenticate"], "Bearer realm=\"shoal\"");

    // With the token, a synthetic engine still cannot create: the answer
    // says so, and no job is kept.
    let a = send_with(r, Method::POST, "/v1/jobs", Some(TOKEN), &job).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("can create containers"),
        "{:?}",
        a.json
    );
    let a = send_with(r, Method::GET, "/v1/jobs", None, "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json["jobs"], json!([]));
    let nodes = get(r, "/v1/nodes").await;
    let jobs = &nodes.json["nodes"][0]["jobs"];
    assert_eq!(jobs["creates"], false, "{jobs}");
    assert!(
        jobs["why_not"]
            .as_str()
            .is_some_and(|w| w.contains("synthetic")),
        "{jobs}"
    );
    assert_eq!(jobs["queue_size"], 100);
    assert_eq!(guarded.service.jobs().held(), 0);
}

#[tokio::test]
async fn bad_job_input_is_a_clear_400_and_creates_nothing() {
    let n = guarded(false).await;
    let r = &n.router;
    for body in [
        "not json".to_owned(),
        json!(["busybox"]).to_string(),
        json!({"arguments": ["true"]}).to_string(),
        json!({"image": "busybox", "privileged": true}).to_string(),
        json!({"image": "busybox", "network": "host"}).to_string(),
        json!({"image": "busybox", "resources": {"memory": "1k"}}).to_string(),
        json!({"image": "busybox", "resources": {"cpus": -1}}).to_string(),
        json!({"image": "busybox", "env": {"A=B": "x"}}).to_string(),
        json!({"image": "busybox", "labels": {"shoal.job": "x"}}).to_string(),
        json!({"image": "bad image"}).to_string(),
    ] {
        let a = send_with(r, Method::POST, "/v1/jobs", Some(TOKEN), &body).await;
        assert_error(&a, StatusCode::BAD_REQUEST, "bad_request");
    }
    for (uri, status, code) in [
        ("/v1/jobs/not-a-job", StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/v1/jobs/019ad5a2-7c3e-4b21-9f00-0123456789ab",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/v1/jobs/019ad5a2-7c3e-7b21-9f00-0123456789ab",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/jobs?status=done",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("/v1/jobs?limit=0", StatusCode::BAD_REQUEST, "bad_request"),
        ("/v1/jobs?color=red", StatusCode::BAD_REQUEST, "bad_request"),
    ] {
        assert_error(&get(r, uri).await, status, code);
    }
    let status = json!({"jsonrpc": "2.0", "id": 1, "method": "ContainerService.Status", "params": [{"job_id": "nope"}]});
    let a = rpc(r, status).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json["error"]["code"], -32602);
    assert_eq!(n.service.jobs().held(), 0);
}

#[tokio::test]
async fn with_api_token_reads_every_read_needs_the_token_but_the_probes() {
    let n = guarded(true).await;
    let r = &n.router;
    assert_error(
        &send_with(r, Method::GET, "/v1/containers/c1", None, "").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let a = send_with(r, Method::GET, "/v1/containers/c1", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.json);
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "Inventory.Nodes"});
    let a = send_with(r, Method::POST, "/jrpc", None, &call.to_string()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    for probe in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(r, probe).await.status, StatusCode::OK, "{probe}");
    }
}
