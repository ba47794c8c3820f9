//! The store conformance suite: the same checks against every backend, so that the
//! cluster backend cannot drift from the embedded one. Each check takes the roles it
//! tests; the backends are at the bottom (SQLite in a temporary directory, JetStream
//! on a `nats-server -js` of the test's own).

#![allow(clippy::unwrap_used)]

use super::{ArtifactStore, FunctionStore, MetaChange, VersionTaken};
use crate::testing::NatsServer;
use cirrus_api::{ArtifactKind, FunctionConfig, TriggerInfo, TriggerSpec, VersionInfo};
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;

fn version(function: &str, number: u32) -> VersionInfo {
    VersionInfo {
        function: function.into(),
        version: number,
        sha256: format!("{number:064}"),
        kind: ArtifactKind::HttpComponent,
        size_bytes: 10,
        config: FunctionConfig::default(),
        created_at: "2026-12-07T00:00:00.000Z".into(),
    }
}

fn trigger(function: &str, id: &str) -> TriggerInfo {
    TriggerInfo {
        id: id.into(),
        function: function.into(),
        spec: TriggerSpec::Schedule("rate(1 minute)".into()),
        created_at: "2026-12-07T00:00:00.000Z".into(),
        state: None,
    }
}

/// Versions are numbered once; aliases and triggers are stored and read back; deleting
/// a function takes everything of it and nothing of another.
async fn metadata_round_trip(store: &dyn FunctionStore) {
    let r1 = store
        .insert_version(&version("f", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.insert_version(&version("f", 1)).await.unwrap(),
        Err(VersionTaken),
        "a version number is taken once"
    );
    let r2 = store
        .insert_version(&version("f", 2))
        .await
        .unwrap()
        .unwrap();
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    store
        .insert_version(&version("g", 1))
        .await
        .unwrap()
        .unwrap();
    let r3 = store.set_alias("f", "live", 1).await.unwrap();
    let r4 = store.set_alias("f", "live", 2).await.unwrap();
    assert!(r4 > r3);
    store.set_alias("f", "old", 1).await.unwrap();
    store.delete_alias("f", "old").await.unwrap();
    store.insert_trigger(&trigger("f", "t1")).await.unwrap();
    store.insert_trigger(&trigger("g", "t2")).await.unwrap();

    let all = store.load_all().await.unwrap();
    let names: Vec<&str> = all.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["f", "g"]);
    let f = &all[0];
    assert_eq!(f.versions, vec![version("f", 1), version("f", 2)]);
    assert_eq!(f.aliases, vec![("live".to_owned(), 2)]);
    assert_eq!(f.triggers, vec![trigger("f", "t1")]);

    store.delete_trigger("g", "t2").await.unwrap();
    let gone = store.delete_function("f").await.unwrap();
    assert!(gone > r4);
    let all = store.load_all().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, "g");
    assert!(all[0].triggers.is_empty());
    // A deleted function's numbers are free again (it starts over at 1).
    store
        .insert_version(&version("f", 1))
        .await
        .unwrap()
        .unwrap();
}

/// A watcher (`watcher` may be another node's handle on the same state) sees every
/// change in commit order, with growing revisions.
async fn feed_in_order(store: &dyn FunctionStore, watcher: &dyn FunctionStore) {
    let mut feed = watcher.watch().await.unwrap();
    store
        .insert_version(&version("w", 1))
        .await
        .unwrap()
        .unwrap();
    store.set_alias("w", "live", 1).await.unwrap();
    store.insert_trigger(&trigger("w", "t")).await.unwrap();
    store.delete_function("w").await.unwrap();
    let mut seen = Vec::new();
    let mut last = 0;
    while seen.len() < 6 {
        let next = tokio::time::timeout(Duration::from_secs(5), feed.next())
            .await
            .expect("the feed delivers within 5 s")
            .expect("the feed stays open")
            .expect("the feed does not lag");
        assert!(next.revision > last, "revisions grow in feed order");
        last = next.revision;
        seen.push(next.change);
    }
    assert_eq!(seen[0], MetaChange::Version(Box::new(version("w", 1))));
    assert_eq!(
        seen[1],
        MetaChange::Alias {
            function: "w".into(),
            alias: "live".into(),
            version: 1
        }
    );
    assert_eq!(seen[2], MetaChange::Trigger(Box::new(trigger("w", "t"))));
    let mut rest: Vec<String> = seen[3..].iter().map(MetaChange::key).collect();
    rest.sort();
    assert_eq!(
        rest,
        ["fn.w.alias.live", "fn.w.trigger.t", "fn.w.v.1"],
        "the delete removes every key: {seen:?}"
    );
    assert!(seen[3..].iter().all(|c| matches!(
        c,
        MetaChange::AliasGone { .. }
            | MetaChange::TriggerGone { .. }
            | MetaChange::VersionGone { .. }
    )));
}

/// Of two claims of the same tick, one wins.
async fn schedule_ticks_claimed_once(a: &dyn FunctionStore, b: &dyn FunctionStore) {
    assert!(a.claim_schedule_tick("s", None, 100).await.unwrap());
    assert!(!b.claim_schedule_tick("s", None, 100).await.unwrap());
    assert!(b.claim_schedule_tick("s", Some(100), 200).await.unwrap());
    assert!(!a.claim_schedule_tick("s", Some(100), 200).await.unwrap());
    assert_eq!(
        a.schedule_marks().await.unwrap(),
        vec![("s".to_owned(), 200)]
    );
}

async fn artifacts_round_trip(store: &dyn ArtifactStore) {
    let sha = "ab".repeat(32);
    assert_eq!(store.get(&sha).await.unwrap(), None);
    let bytes = bytes::Bytes::from(vec![7u8; 300_000]);
    store.put(&sha, bytes.clone()).await.unwrap();
    store.put(&sha, bytes.clone()).await.unwrap();
    assert_eq!(store.get(&sha).await.unwrap(), Some(bytes));
}

/// A replica writes each batch of another node's records once, however often it is
/// delivered (the mark moves with the batch, in one transaction).
#[test]
fn replicated_records_are_written_once() {
    use super::RecordStore as _;
    let dir = tempfile::tempdir().unwrap();
    let store = super::SqliteStore::open(&dir.path().join("cirrus.db")).unwrap();
    let line = |request: &str| cirrus_api::LogLine {
        time: "2026-12-07T00:00:00.000Z".into(),
        function: "f".into(),
        version: 1,
        request_id: request.into(),
        stream: cirrus_api::LogStream::Stderr,
        line: "hello".into(),
    };
    assert_eq!(store.replication_mark().unwrap(), 0);
    assert!(store.write_replicated(5, &[], &[line("a")]).unwrap());
    assert!(!store.write_replicated(5, &[], &[line("a")]).unwrap());
    assert!(!store.write_replicated(3, &[], &[line("b")]).unwrap());
    assert!(store.write_replicated(6, &[], &[line("c")]).unwrap());
    assert_eq!(store.replication_mark().unwrap(), 6);
    let lines: Vec<String> = store
        .logs("f", None, 10)
        .unwrap()
        .into_iter()
        .map(|l| l.request_id)
        .collect();
    assert_eq!(lines, ["a", "c"]);
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(super::SqliteStore::open(&dir.path().join("cirrus.db")).unwrap());
    metadata_round_trip(&*store).await;
    feed_in_order(&*store, &*store).await;
    schedule_ticks_claimed_once(&*store, &*store).await;
    let artifacts = super::FsArtifactStore::open(&dir.path().join("artifacts")).unwrap();
    artifacts_round_trip(&artifacts).await;
}

#[tokio::test]
async fn jetstream_conforms() {
    let nats = NatsServer::start();
    let options = super::jetstream::ClusterOptions::new(&nats.url());
    let a = super::jetstream::JetStream::connect(&options)
        .await
        .unwrap();
    let b = super::jetstream::JetStream::connect(&options)
        .await
        .unwrap();
    metadata_round_trip(&a).await;
    feed_in_order(&a, &b).await;
    schedule_ticks_claimed_once(&a, &b).await;
    artifacts_round_trip(&a).await;
}
