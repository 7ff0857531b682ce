//! One suite, run against an SQLite file and against a real PostgreSQL
//! (Debian's, started by the test with initdb in a temporary directory and
//! pg_ctl on a free port, stopped when the test ends).

use shoal_core::{ContainerRecord, EngineId, LookupKey, NodeId, parse_ref};
use shoal_history::testing::TestPostgres;
use shoal_history::{Change, HistoryError, Kind, Query, Store};

fn record(id: &str, name: &str, ip: &str, project: Option<&str>) -> ContainerRecord {
    let mut r = running(id, name);
    r.networks.insert(
        "bridge".into(),
        shoal_core::NetworkAttachment {
            ip: Some(ip.parse().unwrap()),
            ..Default::default()
        },
    );
    r.project = project.map(str::to_owned);
    r
}

/// A running container's record, built field by field.
fn running(id: &str, name: &str) -> ContainerRecord {
    ContainerRecord {
        id: format!("{id:0<64}"),
        names: vec![name.to_owned()],
        image: "busybox:latest".into(),
        image_id: "sha256:0".into(),
        state: shoal_core::ContainerState::Running,
        pid: 1,
        labels: Default::default(),
        project: None,
        service: None,
        networks: Default::default(),
        ports: vec![],
        health: shoal_core::Health::None,
        created: "2026-01-01T00:00:00Z".into(),
        started_at: None,
        node: NodeId("n1".into()),
        engine_id: EngineId("e1".into()),
        updated_at: 0,
    }
}

fn change(kind: Kind, key: &str, at_ms: i64, node: &str, record: &ContainerRecord) -> Change {
    Change {
        kind,
        event_key: key.into(),
        at_ms,
        node: NodeId(node.into()),
        exit_code: (kind == Kind::Stopped).then_some(137),
        detail: (kind == Kind::Renamed).then(|| "old-name".to_owned()),
        record: record.clone(),
    }
}

fn ids(changes: &[Change]) -> Vec<(String, Kind)> {
    changes
        .iter()
        .map(|c| (c.record.names[0].clone(), c.kind))
        .collect()
}

async fn suite(store: &Store) {
    store.migrate().await.unwrap();
    store
        .migrate()
        .await
        .expect("migrating twice changes nothing");

    // a: 10.0.0.5 from 100 until its removal at 300. b: 10.0.0.5 from 400.
    let a = record("aa", "db", "10.0.0.5", Some("shop"));
    let mut a_renamed = a.clone();
    a_renamed.names = vec!["db-old".into()];
    let b = record("bb", "db", "10.0.0.5", Some("shop"));
    let c = record("cc", "web", "10.0.0.6", None);
    let changes = vec![
        change(Kind::Started, "t100", 100, "n1", &a),
        change(Kind::Started, "t150", 150, "n1", &c),
        change(Kind::Renamed, "t200", 200, "n1", &a_renamed),
        change(Kind::Removed, "t300", 300, "n1", &a_renamed),
        change(Kind::Started, "t400", 400, "n2", &b),
        change(Kind::Stopped, "t450", 450, "n1", &c),
    ];
    assert_eq!(store.record(&changes).await.unwrap(), 6);
    // A second node watching the same engine records the same changes.
    let again: Vec<Change> = changes
        .iter()
        .map(|ch| Change {
            node: NodeId("n3".into()),
            at_ms: ch.at_ms + 1,
            ..ch.clone()
        })
        .collect();
    assert_eq!(
        store.record(&again).await.unwrap(),
        0,
        "each change is stored once"
    );
    // The same kind happening again is a new change.
    let restarted = change(Kind::Started, "t500", 500, "n1", &c);
    assert_eq!(store.record(&[restarted]).await.unwrap(), 1);

    // Who had 10.0.0.5 then?
    let at = |ms| {
        let store = store.clone();
        async move {
            let key = parse_ref("10.0.0.5", None).unwrap();
            ids(&store.as_of(&key, ms).await.unwrap())
        }
    };
    assert_eq!(at(50).await, vec![]);
    assert_eq!(at(120).await, vec![("db".into(), Kind::Started)]);
    assert_eq!(at(250).await, vec![("db-old".into(), Kind::Renamed)]);
    assert_eq!(at(350).await, vec![], "removed at 300");
    assert_eq!(at(450).await, vec![("db".into(), Kind::Started)]);
    let by_name = store
        .as_of(&LookupKey::Name("db".into()), 250)
        .await
        .unwrap();
    assert!(
        by_name.is_empty(),
        "at 250 a was named db-old: {:?}",
        ids(&by_name)
    );
    let web = LookupKey::Name("web".into());
    assert_eq!(
        store.as_of(&web, 460).await.unwrap().len(),
        0,
        "stopped at 450"
    );
    assert_eq!(
        store.as_of(&web, 510).await.unwrap().len(),
        1,
        "started again at 500"
    );
    let prefix = parse_ref("bb0000000000", None).unwrap();
    assert_eq!(
        ids(&store.as_of(&prefix, 999).await.unwrap()),
        vec![("db".into(), Kind::Started)]
    );
    let shop = LookupKey::Project("shop".into());
    assert_eq!(store.as_of(&shop, 250).await.unwrap().len(), 1);

    // Listings, oldest first, paged without a gap or a repeat.
    let all = |limit| Query {
        limit,
        ..Query::default()
    };
    let whole = store.query(&all(100)).await.unwrap();
    assert_eq!(whole.changes.len(), 7);
    assert!(whole.next.is_none());
    assert!(whole.changes.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let mut paged = Vec::new();
    let mut q = all(2);
    loop {
        let page = store.query(&q).await.unwrap();
        paged.extend(page.changes);
        match page.next {
            Some(next) => q.cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(ids(&paged), ids(&whole.changes));
    let by_ip = store
        .query(&Query {
            ip: Some("10.0.0.5".into()),
            ..all(100)
        })
        .await
        .unwrap();
    assert_eq!(by_ip.changes.len(), 4);
    let window = store
        .query(&Query {
            since_ms: Some(150),
            until_ms: Some(400),
            ..all(100)
        })
        .await
        .unwrap();
    assert_eq!(
        window.changes.iter().map(|c| c.at_ms).collect::<Vec<_>>(),
        vec![150, 200, 300]
    );
    let n2 = store
        .query(&Query {
            node: Some("n2".into()),
            ..all(100)
        })
        .await
        .unwrap();
    assert_eq!(ids(&n2.changes), vec![("db".into(), Kind::Started)]);
    let by_id = store
        .query(&Query {
            id: Some("AA".into()),
            ..all(100)
        })
        .await
        .unwrap();
    assert_eq!(by_id.changes.len(), 3);
    let project = store
        .query(&Query {
            project: Some("shop".into()),
            name: Some("db".into()),
            ..all(100)
        })
        .await
        .unwrap();
    assert_eq!(project.changes.len(), 2);
    // The whole record comes back as it was.
    assert_eq!(whole.changes[0].record, a);

    // Bad queries are refused, saying why.
    for (q, says) in [
        (all(0), "limit"),
        (all(10_001), "limit"),
        (
            Query {
                cursor: Some("zz".into()),
                ..all(10)
            },
            "cursor",
        ),
        (
            Query {
                id: Some("xyz".into()),
                ..all(10)
            },
            "ID prefix",
        ),
    ] {
        match store.query(&q).await {
            Err(HistoryError::BadQuery(m)) => assert!(m.contains(says), "{m}"),
            other => panic!("{q:?} answered {other:?}"),
        }
    }

    // Retention: exactly what is older goes.
    assert_eq!(store.delete_before(300).await.unwrap(), 3);
    let kept = store.query(&all(100)).await.unwrap();
    assert_eq!(
        kept.changes.iter().map(|c| c.at_ms).collect::<Vec<_>>(),
        vec![300, 400, 450, 500]
    );
    assert_eq!(at(450).await, vec![("db".into(), Kind::Started)]);

    // A stop seen before the engine said how it exited gets its exit code
    // when the engine's event comes, once.
    let mut gone = record("f1", "late", "10.9.0.1", None);
    gone.labels.insert("tier".into(), "front".into());
    let mut early = change(Kind::Stopped, "end:run1", 600, "n1", &gone);
    early.exit_code = None;
    assert_eq!(store.record(&[early.clone()]).await.unwrap(), 1);
    let mut told = early.clone();
    told.exit_code = Some(3);
    told.node = NodeId("n2".into());
    assert_eq!(store.record(&[told.clone()]).await.unwrap(), 1);
    assert_eq!(store.record(&[told, early]).await.unwrap(), 0);
    let late = store
        .query(&Query {
            name: Some("late".into()),
            ..all(10)
        })
        .await
        .unwrap();
    assert_eq!(late.changes.len(), 1);
    assert_eq!(late.changes[0].exit_code, Some(3));
    assert_eq!(late.changes[0].node.0, "n1", "the first writer stays");

    // A task's period is claimed once, whoever asks; its outcome is kept.
    assert!(
        store
            .claim_run("history.retention", 3600, "n1", 3601)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_run("history.retention", 3600, "n2", 3602)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_run("history.retention", 7200, "n2", 7201)
            .await
            .unwrap()
    );
    store
        .finish_run("history.retention", 3600, 3650, true, "deleted 3")
        .await
        .unwrap();
    let runs = store.runs("history.retention", 10).await.unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| (r.slot_ms, r.node.as_str(), r.outcome.as_str()))
            .collect::<Vec<_>>(),
        [(7200, "n2", "running"), (3600, "n1", "ok")]
    );
    assert_eq!(runs[1].detail.as_deref(), Some("deleted 3"));
    assert_eq!(store.delete_runs_before(7200).await.unwrap(), 1);

    // A snapshot is no change: "as of" reads it, the listing does not.
    let snap = record("5a", "snapped", "10.7.0.1", None);
    store
        .record(&[change(Kind::Snapshot, "snap:1000", 1000, "n1", &snap)])
        .await
        .unwrap();
    let listed = store
        .query(&Query {
            name: Some("snapped".into()),
            ..all(10)
        })
        .await
        .unwrap();
    assert!(listed.changes.is_empty());
    let found = store
        .as_of(&parse_ref("snapped", None).unwrap(), 1001)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);

    // Labels are matched in the record, over as many pages as it takes.
    let mut many = Vec::new();
    for i in 0..300 {
        let r = record(&format!("e{i:03}"), &format!("bulk{i}"), "10.8.0.1", None);
        many.push(change(Kind::Started, "run", 700 + i, "n1", &r));
    }
    store.record(&many).await.unwrap();
    for (label, want) in [("tier", 1), ("tier=front", 1), ("tier=back", 0)] {
        let q = Query {
            label: Some(label.into()),
            ..all(1)
        };
        let page = store.query(&q).await.unwrap();
        assert_eq!(page.changes.len(), want, "{label}");
        assert!(page.next.is_none(), "{label}: one match, no next page");
    }
}

#[test]
fn urls_are_checked_and_passwords_kept_out_of_messages() {
    assert_eq!(
        shoal_history::redacted("postgres://shoal:hunter2@db:5432/shoal"),
        "postgres://shoal:***@db:5432/shoal"
    );
    assert_eq!(
        shoal_history::redacted("sqlite:///var/lib/shoal/history.db"),
        "sqlite:///var/lib/shoal/history.db"
    );
    let dir = std::path::Path::new("/srv/shoal");
    assert_eq!(
        shoal_history::default_url(Some(dir)),
        "sqlite:///srv/shoal/history.db"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(Store::connect("mysql://x:secret@h/db"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("give sqlite://PATH or postgres://") && !e.contains("secret"),
        "{e}"
    );
}

#[tokio::test]
async fn the_store_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("history.db").display());
    let store = Store::connect(&url).await.unwrap();
    suite(&store).await;
    // What was committed is there for the next process.
    drop(store);
    let again = Store::connect(&url).await.unwrap();
    again.migrate().await.unwrap();
    let q = Query {
        limit: 1000,
        ..Query::default()
    };
    // 4 kept by the retention, the completed stop and 300 more.
    assert_eq!(again.query(&q).await.unwrap().changes.len(), 305);
}

#[tokio::test]
async fn the_store_on_postgres() {
    let pg = TestPostgres::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    suite(&store).await;
}
