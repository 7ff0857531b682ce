//! The history's routes through the router (no port bound), over a node
//! watching a synthetic engine and writing to an embedded store in a
//! temporary directory: `/v1/history` paged whole, `?at=` before and after
//! a removal, `History.Query` and `Inventory.Get {at}`, the writer's state
//! in `/v1/nodes` and the metrics, bad input refused with a clear 400, and
//! a node without history answering 503.

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
};
use shoal_node::history::{History, run_writer};
use shoal_node::{NodeConfig, NodeService, app};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const COUNT: usize = 20;

struct Node {
    router: Router,
    engine: SyntheticEngine,
    _dir: Option<tempfile::TempDir>,
    _stop: tokio_util::sync::DropGuard,
}

async fn node(with_history: bool) -> Node {
    let engine = SyntheticEngine::new(SyntheticSpec {
        count: COUNT,
        prefix: "h".into(),
        engine_id: EngineId("e1".into()),
    });
    let stop = CancellationToken::new();
    let dir = with_history.then(|| tempfile::tempdir().unwrap());
    let history = dir.as_ref().map(|d| {
        let url = format!("sqlite://{}", d.path().join("history.db").display());
        let (history, rx) = History::new(&url, 1000);
        tokio::spawn(run_writer(
            history.clone(),
            rx,
            "n1".into(),
            true,
            Duration::from_secs(1),
            stop.clone(),
        ));
        history
    });
    let (handle, _task) = Engines::spawn(
        vec![Arc::new(engine.clone())],
        EnginesConfig {
            watcher: WatcherConfig {
                node: "n1".into(),
                history: history.as_ref().map(|h| h.sink()),
                ..Default::default()
            },
            withdraw_after: Duration::from_secs(60),
        },
        stop.clone(),
    );
    let config = NodeConfig {
        node_id: "n1".into(),
        ..Default::default()
    };
    let service = Arc::new(NodeService::new(config, handle.clone()).with_history(history));
    service.spawn_tasks(tokio::sync::watch::channel(0).1, &stop);
    handle.ready().await;
    Node {
        router: app(service),
        engine,
        _dir: dir,
        _stop: stop.drop_guard(),
    }
}

async fn send(router: &Router, method: Method, uri: &str, body: Body) -> (StatusCode, Value) {
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
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, json)
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    send(router, Method::GET, uri, Body::empty()).await
}

/// Every page of `/v1/history?query`.
async fn all_changes(router: &Router, query: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut uri = format!("/v1/history?{query}");
    for _ in 0..100 {
        let (status, page) = get(router, &uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        all.extend(page["changes"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/history?{query}&cursor={c}"),
            None => return all,
        }
    }
    panic!("more than 100 pages");
}

async fn eventually(router: &Router, query: &str, n: usize) -> Vec<Value> {
    for _ in 0..500 {
        // The writer may not have opened the store yet (503).
        if get(router, &format!("/v1/history?{query}")).await.0 != StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let changes = all_changes(router, query).await;
        if changes.len() >= n {
            return changes;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{query}: fewer than {n} changes");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn changes_page_whole_and_answer_as_of_a_time() {
    let n = node(true).await;
    let started = eventually(&n.router, "limit=3", COUNT).await;
    assert_eq!(started.len(), COUNT, "each start once, over 7 pages");
    assert!(started.iter().all(|c| c["kind"] == "started"));
    let ids: std::collections::BTreeSet<_> = started
        .iter()
        .map(|c| c["container_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), COUNT);

    let (status, c5) = get(&n.router, "/v1/containers/h5").await;
    assert_eq!(status, StatusCode::OK, "{c5}");
    let ip = c5["containers"][0]["networks"]
        .as_object()
        .unwrap()
        .values()
        .find_map(|n| n["ip"].as_str())
        .unwrap()
        .to_owned();
    let before = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(n.engine.remove(&synthetic_id("h", 5)));
    let removed = eventually(&n.router, "name=h5", 2).await;
    assert_eq!(removed[1]["kind"], "removed", "{removed:?}");
    let after = removed[1]["at_ms"].as_u64().unwrap() + 1;

    let (status, then) = get(&n.router, &format!("/v1/containers/{ip}?at={before}")).await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(then["containers"][0]["names"][0], "h5");
    assert_eq!(then["containers"][0]["change"], "started");
    assert_eq!(then["source"], "nodes");
    let (status, gone) = get(&n.router, &format!("/v1/containers/{ip}?at={after}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");
    assert_eq!(gone["error"]["code"], "not_found");

    // JSON-RPC answers the same.
    let (_, rpc) = send(
        &n.router,
        Method::POST,
        "/jrpc",
        Body::from(
            json!([
                {"jsonrpc": "2.0", "id": 1, "method": "History.Query", "params": {"name": "h5"}},
                {"jsonrpc": "2.0", "id": 2, "method": "Inventory.Get", "params": {"ref": ip, "at": before.to_string()}},
                {"jsonrpc": "2.0", "id": 3, "method": "History.Query", "params": {"limit": 0}},
                {"jsonrpc": "2.0", "id": 4, "method": "History.Query", "params": {"colour": "red"}}
            ])
            .to_string(),
        ),
    )
    .await;
    assert_eq!(rpc[0]["result"]["changes"].as_array().unwrap().len(), 2);
    assert_eq!(rpc[1]["result"]["containers"][0]["names"][0], "h5");
    assert_eq!(rpc[2]["error"]["data"]["code"], "bad_request", "{}", rpc[2]);
    assert_eq!(rpc[3]["error"]["code"], -32602, "{}", rpc[3]);

    // The writer's state.
    let (_, nodes) = get(&n.router, "/v1/nodes").await;
    let h = &nodes["nodes"][0]["history"];
    assert_eq!(h["backend"], "sqlite");
    assert_eq!(h["up"], true);
    assert_eq!(h["written"], COUNT + 1);
    assert_eq!(h["dropped"], 0);
    let (_, metrics) = get(&n.router, "/metrics").await;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(&format!("shoal_history_written_total {}", COUNT + 1)),
        "{metrics}"
    );
    assert!(metrics.contains("shoal_history_up 1"));
}

#[tokio::test]
async fn bad_history_input_is_a_clear_400() {
    let n = node(true).await;
    eventually(&n.router, "limit=1", 1).await;
    for (uri, says) in [
        ("/v1/history?colour=red", "unknown query parameter"),
        ("/v1/history?limit=0", "limit"),
        ("/v1/history?limit=10001", "limit"),
        ("/v1/history?limit=ten", "limit"),
        ("/v1/history?since=yesterday", "not a time"),
        ("/v1/history?until=2026-13-01T00:00:00Z", "not a time"),
        ("/v1/history?id=xyz", "not an ID prefix"),
        ("/v1/history?ip=10.0.0", "not an IP address"),
        ("/v1/history?name=a&name=b", "more than once"),
        ("/v1/history?name=", "1 to 1024 bytes"),
        ("/v1/history?cursor=zz", "not one this store gave"),
        ("/v1/containers/h1?at=noon", "not a time"),
        ("/v1/containers/h1?at=1&at=2", "more than once"),
        ("/v1/containers/h1?when=1", "unknown query parameter"),
    ] {
        let (status, e) = get(&n.router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {e}");
        assert_eq!(e["error"]["code"], "bad_request", "{uri}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{uri}: {message}");
    }
    // Nothing changed: the live lookup still answers.
    assert_eq!(get(&n.router, "/v1/containers/h1").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_node_without_history_says_so() {
    let n = node(false).await;
    for uri in ["/v1/history", "/v1/containers/h1?at=2026-01-01T00:00:00Z"] {
        let (status, e) = get(&n.router, uri).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no history"),
            "{uri}: {e}"
        );
    }
    let (_, nodes) = get(&n.router, "/v1/nodes").await;
    assert_eq!(nodes["nodes"][0]["history"], Value::Null);
    assert_eq!(get(&n.router, "/v1/containers/h1").await.0, StatusCode::OK);
}
