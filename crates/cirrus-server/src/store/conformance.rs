//! The store conformance suite: the same checks against every backend, so that the
//! cluster backend cannot drift from the embedded one. Each check takes the roles it
//! tests; the backends are at the bottom (SQLite in a temporary directory, JetStream
//! on a `nats-server -js` of the test's own).

#![allow(clippy::unwrap_used)]

use super::{
    ArtifactStore, BucketDelete, CompleteConflict, CompletedUpload, Enqueued, EventQueue,
    FunctionStore, KvCondition, KvStore, KvWrite, MetaChange, NewEvent, ObjectMeta, ObjectStore,
    Part, PutCondition, PutRefused, QueuedEvent, Upload, VersionTaken,
};
use crate::clock::Clock as _;
use crate::testing::NatsServer;
use cirrus_api::{ArtifactKind, FunctionConfig, Trigger, TriggerInfo, TriggerSpec, VersionInfo};
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

fn event(function: &str, body: &str) -> NewEvent {
    NewEvent::fired(function, Trigger::Async, None, None, now_ms()).with_json(body.into())
}

fn now_ms() -> u64 {
    crate::clock::SystemClock.now_ms()
}

/// Claims until `n` events come (a queue shared over the network may hand them over in
/// more than one pull), or a few seconds pass.
async fn claim(queue: &Arc<dyn EventQueue>, n: usize) -> Vec<QueuedEvent> {
    let mut claimed = Vec::new();
    for _ in 0..50 {
        claimed.extend(queue.claim(now_ms(), 16).await.unwrap());
        if claimed.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    claimed
}

/// Events accepted by one queue are delivered by another, once each; duplicates by
/// idempotency key name the first event; a retry waits its time and counts an attempt
/// (a busy one does not); a narrowed batch is retried narrowed; a dead event is listed,
/// read, redriven with fresh attempts, and purged.
async fn events_delivered_retried_and_dead_lettered(
    a: Arc<dyn EventQueue>,
    b: Arc<dyn EventQueue>,
) {
    let first = event("f", "1");
    let keyed = NewEvent {
        idempotency_key: Some("k".into()),
        ..event("f", "2")
    };
    let again = NewEvent {
        idempotency_key: Some("k".into()),
        ..event("f", "3")
    };
    let batch = vec![first.clone(), keyed, again];
    let results = a.enqueue(batch, now_ms(), 60_000).await.unwrap();
    assert_eq!(results[..2], [Enqueued::New, Enqueued::New]);
    let Enqueued::Duplicate(earlier) = &results[2] else {
        panic!("{results:?}")
    };
    let claimed = claim(&b, 2).await;
    let mut bodies: Vec<&[u8]> = claimed.iter().map(|c| c.event.data.as_slice()).collect();
    bodies.sort();
    assert_eq!(bodies, [b"1", b"2"], "the duplicate is not queued");
    assert!(claimed.iter().all(|c| c.attempts == 1));
    let keyed = claimed.iter().find(|c| c.event.data == b"2").unwrap();
    assert_eq!(&keyed.event.id, earlier);
    assert!(a.claim(now_ms(), 16).await.unwrap().is_empty(), "held by b");

    // Retried: not before its time, then with the attempt counted; a busy retry gives
    // its attempt back; a narrowed body is what comes next.
    let (id, keyed_id) = (first.id.clone(), keyed.event.id.clone());
    let later = now_ms() + 600;
    b.retry(&id, later, "boom", true).await.unwrap();
    b.complete(&keyed_id).await.unwrap();
    assert!(a.claim(now_ms(), 16).await.unwrap().is_empty(), "not yet");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = claim(&a, 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].event.id.as_str(), again[0].attempts),
        (first.id.as_str(), 2)
    );
    let id = first.id.clone();
    a.set_data(&id, b"narrowed".to_vec()).await.unwrap();
    a.retry(&id, now_ms(), "busy", false).await.unwrap();
    let busy = claim(&b, 1).await;
    assert_eq!(busy[0].attempts, 2, "a busy retry is not an attempt");
    assert_eq!(busy[0].event.data, b"narrowed");

    // Dead, listed, read, redriven, purged.
    let id = first.id.clone();
    b.kill(&id, now_ms(), "gave up").await.unwrap();
    let dead = a.dead(Some("f"), 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].request_id, first.id);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_str()),
        (2, "gave up")
    );
    assert!(a.dead(Some("g"), 10).await.unwrap().is_empty());
    let id = first.id.clone();
    let (_, data) = a.dead_event(&id).await.unwrap().unwrap();
    assert_eq!(data, b"narrowed");
    assert_eq!(b.depth().await.unwrap(), (0, 1));
    let id = first.id.clone();
    assert_eq!(a.redrive(Some(&id), None, now_ms()).await.unwrap(), 1);
    let redriven = claim(&b, 1).await;
    assert_eq!(
        (redriven[0].event.id.as_str(), redriven[0].attempts),
        (first.id.as_str(), 1)
    );
    let id = first.id.clone();
    b.kill(&id, now_ms(), "again").await.unwrap();
    assert_eq!(a.purge(None, Some("f")).await.unwrap(), 1);
    assert_eq!(a.depth().await.unwrap(), (0, 0));
}

/// The first event either queue hands out (a cluster's ordered events go to whichever
/// node follows their partition first), and the queue that did.
async fn claim_either(queues: [&Arc<dyn EventQueue>; 2]) -> (QueuedEvent, Arc<dyn EventQueue>) {
    for _ in 0..50 {
        for queue in queues {
            if let Some(first) = queue.claim(now_ms(), 1).await.unwrap().pop() {
                return (first, queue.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no event was handed out")
}

/// Events with one ordering key run one at a time, in order, whichever queue claims
/// them: a busy attempt is offered again without counting, a failed one keeps its place
/// until its retry, a dead one no longer holds the others back.
async fn ordered_events_one_at_a_time(a: Arc<dyn EventQueue>, b: Arc<dyn EventQueue>) {
    let ordered = |body: &str| event("o", body).ordered_by("orders/42".into());
    let batch = vec![ordered("1"), ordered("2"), ordered("3")];
    a.enqueue(batch, now_ms(), 60_000).await.unwrap();
    let text = |e: &QueuedEvent| String::from_utf8(e.event.data.clone()).unwrap();
    let nothing_else = || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for queue in [&a, &b] {
            let more = queue.claim(now_ms(), 16).await.unwrap();
            assert!(
                more.is_empty(),
                "the next event waits for the one before: {more:?}"
            );
        }
    };
    let (first, holder) = claim_either([&a, &b]).await;
    assert_eq!((text(&first), first.attempts), ("1".to_owned(), 1));
    nothing_else().await;

    let id = first.event.id.clone();
    holder.retry(&id, now_ms(), "busy", false).await.unwrap();
    let (again, holder) = claim_either([&a, &b]).await;
    assert_eq!(
        (text(&again), again.attempts),
        ("1".to_owned(), 1),
        "busy is not an attempt"
    );

    let (id, later) = (first.event.id.clone(), now_ms() + 500);
    holder.retry(&id, later, "boom", true).await.unwrap();
    nothing_else().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (retried, holder) = claim_either([&a, &b]).await;
    assert_eq!((text(&retried), retried.attempts), ("1".to_owned(), 2));
    let id = first.event.id.clone();
    holder.complete(&id).await.unwrap();

    let (second, holder) = claim_either([&a, &b]).await;
    assert_eq!((text(&second), second.attempts), ("2".to_owned(), 1));
    let id = second.event.id.clone();
    holder.kill(&id, now_ms(), "gave up").await.unwrap();
    let (third, holder) = claim_either([&a, &b]).await;
    assert_eq!(text(&third), "3");
    let id = third.event.id.clone();
    holder.complete(&id).await.unwrap();
    assert_eq!(b.purge(None, Some("o")).await.unwrap(), 1);
    assert_eq!(b.depth().await.unwrap(), (0, 0));
}

/// A write to `t/key` whose change event says `op:old→new` (versions), ordered by key.
async fn put(
    kv: &Arc<dyn KvStore>,
    key: &str,
    value: Option<&str>,
    condition: KvCondition,
) -> KvWrite {
    let owned = key.to_owned();
    let change: super::KvEvents = Box::new(
        move |old: Option<(&cirrus_api::KvEntry, &[u8])>,
              new: Option<(&cirrus_api::KvEntry, &[u8])>| {
            let v = |e: Option<(&cirrus_api::KvEntry, &[u8])>| {
                e.map_or("-".to_owned(), |(e, _)| e.version.to_string())
            };
            let body = format!("{owned}:{}>{}", v(old), v(new));
            vec![event("watcher", &body).ordered_by(format!("kv:t:{owned}"))]
        },
    );
    let value = value.map(|v| (v.as_bytes().to_vec(), Some("text/plain".to_owned())));
    kv.kv_write("t", key, value, condition, now_ms(), change)
        .await
        .unwrap()
}

fn version_of(written: KvWrite) -> u64 {
    match written {
        KvWrite::Done(entry) => entry.version,
        other => panic!("not written: {other:?}"),
    }
}

/// Rows written through either store are read through the other; versions count from
/// 1 per key; conditions hold (also for writers racing on two stores); deleted rows
/// leave listings; each write's change event is queued, in order.
async fn kv_tables_round_trip(
    a: Arc<dyn KvStore>,
    b: Arc<dyn KvStore>,
    queues: [Arc<dyn EventQueue>; 2],
) {
    assert_eq!(
        version_of(put(&a, "k1", Some("one"), KvCondition::Absent).await),
        1
    );
    assert!(matches!(
        put(&b, "k1", Some("again"), KvCondition::Absent).await,
        KvWrite::Conflict(Some(1))
    ));
    assert_eq!(
        version_of(put(&b, "k1", Some("two"), KvCondition::Version(1)).await),
        2
    );
    assert!(matches!(
        put(&a, "k1", Some("late"), KvCondition::Version(1)).await,
        KvWrite::Conflict(Some(2))
    ));
    let read = |kv: &Arc<dyn KvStore>, key: &str| {
        let (kv, key) = (kv.clone(), key.to_owned());
        async move { kv.kv_get("t", &key).await.unwrap() }
    };
    let (entry, value) = read(&a, "k1").await.unwrap();
    assert_eq!((entry.version, value.as_slice()), (2, &b"two"[..]));
    assert_eq!(entry.content_type.as_deref(), Some("text/plain"));

    for key in ["k2", "x/ü 1", "x/2"] {
        put(&a, key, Some(key), KvCondition::Any).await;
    }
    let list = |kv: &Arc<dyn KvStore>, prefix: &str, after: Option<&str>, limit: usize| {
        let (kv, prefix, after) = (kv.clone(), prefix.to_owned(), after.map(str::to_owned));
        async move {
            kv.kv_list("t", &prefix, after.as_deref(), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(&b, "", None, 10).await, ["k1", "k2", "x/2", "x/ü 1"]);
    assert_eq!(list(&b, "x/", None, 10).await, ["x/2", "x/ü 1"]);
    assert_eq!(list(&b, "", Some("k2"), 1).await, ["x/2"]);

    assert!(matches!(
        put(&b, "k1", None, KvCondition::Version(1)).await,
        KvWrite::Conflict(Some(2))
    ));
    assert_eq!(
        version_of(put(&b, "k1", None, KvCondition::Version(2)).await),
        2
    );
    assert!(read(&a, "k1").await.is_none());
    assert_eq!(list(&a, "k", None, 10).await, ["k2"]);
    assert!(matches!(
        put(&a, "k1", None, KvCondition::Any).await,
        KvWrite::Missing
    ));
    assert_eq!(
        version_of(put(&a, "k1", Some("new"), KvCondition::Absent).await),
        1
    );

    // Each write's change event, in the order of the writes, one at a time.
    let [qa, qb] = &queues;
    let mut changes = Vec::new();
    for _ in 0..7 {
        let (next, holder) = claim_either([qa, qb]).await;
        changes.push(String::from_utf8(next.event.data.clone()).unwrap());
        holder.complete(&next.event.id).await.unwrap();
    }
    changes.retain(|c| c.starts_with("k1:"));
    assert_eq!(changes, ["k1:->1", "k1:1>2", "k1:2>-", "k1:->1"]);

    // Writers on both stores racing on one row: every increment lands once.
    let increment = |kv: Arc<dyn KvStore>| async move {
        for _ in 0..10 {
            loop {
                let (entry, value) = read(&kv, "counter").await.unwrap();
                let n: u64 = String::from_utf8(value).unwrap().parse().unwrap();
                let next = (n + 1).to_string();
                let cond = KvCondition::Version(entry.version);
                if let KvWrite::Done(_) = put(&kv, "counter", Some(&next), cond).await {
                    break;
                }
            }
        }
    };
    put(&a, "counter", Some("0"), KvCondition::Any).await;
    tokio::join!(increment(a.clone()), increment(b.clone()));
    let (entry, value) = read(&b, "counter").await.unwrap();
    assert_eq!((entry.version, value.as_slice()), (21, &b"20"[..]));
    for _ in 0..21 {
        let (next, holder) = claim_either([qa, qb]).await;
        holder.complete(&next.event.id).await.unwrap();
    }
    assert_eq!(qa.depth().await.unwrap(), (0, 0));
}

fn object(bucket: &str, key: &str, etag: &str, blob: &str) -> ObjectMeta {
    ObjectMeta {
        bucket: bucket.into(),
        key: key.into(),
        size: 3,
        etag: etag.into(),
        content_type: Some("text/plain".into()),
        metadata: vec![("colour".into(), "blue".into())],
        checksum: None,
        modified_ms: now_ms(),
        blob: blob.into(),
        parts: Vec::new(),
    }
}

/// An object change's notification: `bucket/key`.
fn notified(o: &ObjectMeta) -> Vec<NewEvent> {
    vec![event("notified", &format!("{}/{}", o.bucket, o.key))]
}

fn put_object(
    store: &Arc<dyn ObjectStore>,
    o: ObjectMeta,
    condition: PutCondition,
) -> impl std::future::Future<Output = Result<Option<ObjectMeta>, PutRefused>> {
    let store = store.clone();
    async move {
        store
            .put_object(&o, &condition, Box::new(notified))
            .await
            .unwrap()
    }
}

/// Buckets and objects written through either store are read through the other;
/// conditional writes hold for writers racing on both; listings are in key order;
/// multipart uploads complete only with the parts they hold, once; each change's
/// notification is queued.
async fn objects_round_trip(
    a: Arc<dyn ObjectStore>,
    b: Arc<dyn ObjectStore>,
    queue: Arc<dyn EventQueue>,
) {
    assert!(a.create_bucket("photos", 1).await.unwrap());
    assert!(!b.create_bucket("photos", 2).await.unwrap());
    assert!(b.bucket_exists("photos").await.unwrap());
    assert!(!b.bucket_exists("photo").await.unwrap());
    assert_eq!(b.list_buckets().await.unwrap(), [("photos".to_owned(), 1)]);

    assert_eq!(
        put_object(&a, object("nowhere", "k", "e", "b0"), PutCondition::Any).await,
        Err(PutRefused::NoSuchBucket)
    );
    assert_eq!(
        put_object(
            &a,
            object("photos", "cat.jpg", "e1", "b1"),
            PutCondition::Absent
        )
        .await,
        Ok(None)
    );
    assert_eq!(
        put_object(
            &b,
            object("photos", "cat.jpg", "e2", "b2"),
            PutCondition::Absent
        )
        .await,
        Err(PutRefused::PreconditionFailed { missing: false })
    );
    assert_eq!(
        put_object(
            &b,
            object("photos", "dog.jpg", "e2", "b2"),
            PutCondition::Etag("e1".into())
        )
        .await,
        Err(PutRefused::PreconditionFailed { missing: true })
    );
    let replaced = put_object(
        &b,
        object("photos", "cat.jpg", "e2", "b2"),
        PutCondition::Etag("e1".into()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(replaced.blob, "b1");
    let read = a.get_object("photos", "cat.jpg").await.unwrap().unwrap();
    assert_eq!((read.etag.as_str(), read.blob.as_str()), ("e2", "b2"));
    assert_eq!(read.metadata, [("colour".to_owned(), "blue".to_owned())]);

    // Two writers racing to create one key: exactly one wins.
    let racers = (0..8).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        put_object(
            &store,
            object("photos", "race", &format!("r{i}"), &format!("r{i}")),
            PutCondition::Absent,
        )
    });
    let won = futures_util::future::join_all(racers)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count();
    assert_eq!(won, 1, "one of the racing creates wins");

    for key in ["a/1", "a/2", "b/ü 1", "z"] {
        put_object(&a, object("photos", key, "e", key), PutCondition::Any)
            .await
            .unwrap();
    }
    let keys = |store: &Arc<dyn ObjectStore>, from: &str, after: Option<&str>, limit: usize| {
        let (store, from, after) = (store.clone(), from.to_owned(), after.map(str::to_owned));
        async move {
            store
                .list_objects("photos", &from, after.as_deref(), limit)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        keys(&b, "", None, 10).await,
        ["a/1", "a/2", "b/ü 1", "cat.jpg", "race", "z"]
    );
    assert_eq!(keys(&b, "b", None, 2).await, ["b/ü 1", "cat.jpg"]);
    assert_eq!(keys(&b, "", Some("cat.jpg"), 10).await, ["race", "z"]);
    assert_eq!(
        a.delete_bucket("photos").await.unwrap(),
        BucketDelete::NotEmpty
    );

    let removed = b
        .delete_object("photos", "z", Box::new(notified))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(removed.blob, "z");
    assert!(a
        .delete_object("photos", "z", Box::new(notified))
        .await
        .unwrap()
        .is_none());
    assert!(a.get_object("photos", "z").await.unwrap().is_none());
    assert_eq!(keys(&a, "y", None, 10).await, Vec::<String>::new());

    // A multipart upload started on one store, its parts recorded through both.
    let upload = Upload {
        id: "u1".into(),
        bucket: "photos".into(),
        key: "big".into(),
        content_type: None,
        metadata: Vec::new(),
        checksum_algorithm: None,
        checksum_type: None,
        created_ms: 10,
    };
    let u = upload.clone();
    a.create_upload(&u).await.unwrap().unwrap();
    let part = |number: u32, blob: &str| Part {
        number,
        size: 5,
        etag: format!("p{number}"),
        checksum: None,
        modified_ms: now_ms(),
        blob: blob.into(),
    };
    let p = part(1, "p1a");
    assert_eq!(b.put_part("u1", &p).await.unwrap(), Ok(None));
    let p = part(1, "p1b");
    assert_eq!(
        a.put_part("u1", &p).await.unwrap().unwrap().unwrap().blob,
        "p1a"
    );
    let p = part(2, "p2");
    b.put_part("u1", &p).await.unwrap().unwrap();
    let p = part(1, "x");
    assert!(b.put_part("nope", &p).await.unwrap().is_err());
    assert_eq!(a.get_upload("u1").await.unwrap(), Some(upload.clone()));
    assert_eq!(
        b.list_uploads("photos", "b").await.unwrap(),
        std::slice::from_ref(&upload)
    );
    assert!(b.list_uploads("photos", "c").await.unwrap().is_empty());
    let numbers: Vec<u32> = a
        .parts("u1")
        .await
        .unwrap()
        .iter()
        .map(|p| p.number)
        .collect();
    assert_eq!(numbers, [1, 2]);
    let live = a.live_blobs().await.unwrap();
    assert!(
        live.contains("p1b") && live.contains("p2") && live.contains("b2"),
        "{live:?}"
    );
    assert!(!live.contains("p1a") && !live.contains("z"), "{live:?}");

    let receipt = CompletedUpload {
        bucket: "photos".into(),
        key: "big".into(),
        parts: "1:p1,2:p2".into(),
        etag: "m-2".into(),
        checksum: None,
    };
    let complete_if =
        |store: &Arc<dyn ObjectStore>, parts: Vec<(u32, String)>, condition: PutCondition| {
            let (store, receipt) = (store.clone(), receipt.clone());
            async move {
                store
                    .complete_upload(
                        "u1",
                        &parts,
                        &object("photos", "big", "m-2", "joined"),
                        &condition,
                        &receipt,
                        Box::new(notified),
                    )
                    .await
                    .unwrap()
            }
        };
    let complete = |store: &Arc<dyn ObjectStore>, parts: Vec<(u32, String)>| {
        complete_if(store, parts, PutCondition::Any)
    };
    assert_eq!(
        complete(&b, vec![(1, "p1a".into()), (2, "p2".into())]).await,
        Err(CompleteConflict::PartChanged(1))
    );
    // A completion whose condition fails leaves the upload as it was.
    put_object(
        &a,
        object("photos", "big", "e0", "old-big"),
        PutCondition::Any,
    )
    .await
    .unwrap();
    let parts = vec![(1, "p1b".to_owned()), (2, "p2".to_owned())];
    assert_eq!(
        complete_if(&b, parts, PutCondition::Absent).await,
        Err(CompleteConflict::PreconditionFailed { missing: false })
    );
    assert!(a.get_upload("u1").await.unwrap().is_some());
    let done = complete(&b, vec![(1, "p1b".into()), (2, "p2".into())])
        .await
        .unwrap();
    assert_eq!(done.replaced.unwrap().blob, "old-big");
    let mut blobs = done.part_blobs.clone();
    blobs.sort();
    assert_eq!(blobs, ["p1b", "p2"]);
    assert_eq!(
        complete(&a, vec![(1, "p1b".into()), (2, "p2".into())]).await,
        Err(CompleteConflict::NoSuchUpload)
    );
    assert_eq!(
        a.completed_upload("u1").await.unwrap(),
        Some(receipt.clone())
    );
    assert!(a.get_upload("u1").await.unwrap().is_none());
    assert!(a.parts("u1").await.unwrap().is_empty());
    assert_eq!(
        b.get_object("photos", "big").await.unwrap().unwrap().blob,
        "joined"
    );

    // An abandoned upload goes with its bucket once the objects are gone.
    let u = Upload {
        id: "u2".into(),
        ..upload.clone()
    };
    a.create_upload(&u).await.unwrap().unwrap();
    let p = part(1, "left");
    a.put_part("u2", &p).await.unwrap().unwrap();
    for key in ["a/1", "a/2", "b/ü 1", "cat.jpg", "race", "big"] {
        a.delete_object("photos", key, Box::new(notified))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        b.delete_bucket("photos").await.unwrap(),
        BucketDelete::Deleted(vec!["left".into()])
    );
    assert!(a.get_upload("u2").await.unwrap().is_none());
    assert_eq!(
        a.delete_bucket("photos").await.unwrap(),
        BucketDelete::Missing
    );
    assert!(a.list_buckets().await.unwrap().is_empty());

    // Every write above that changed an object queued its notification.
    let mut notes = 0;
    while notes < 16 {
        let claimed = claim(&queue, 1).await;
        assert!(
            !claimed.is_empty(),
            "{notes} notifications came, 16 expected"
        );
        for c in claimed {
            assert_eq!(c.event.function, "notified");
            notes += 1;
            queue.complete(&c.event.id).await.unwrap();
        }
    }
    assert_eq!(queue.depth().await.unwrap(), (0, 0));
}

/// With a lineage budget of 2, the third event a lineage creates is dead, saying why,
/// whichever queue takes it.
async fn lineage_budget_holds(a: Arc<dyn EventQueue>, b: Arc<dyn EventQueue>) {
    let caused = || NewEvent {
        root_id: Some("root".into()),
        ..event("h", "x")
    };
    let batch = vec![caused(), caused()];
    a.enqueue(batch, now_ms(), 60_000).await.unwrap();
    let batch = vec![caused()];
    b.enqueue(batch, now_ms(), 60_000).await.unwrap();
    let dead = a.dead(Some("h"), 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].last_error.starts_with("lineage budget exhausted"));
    for claimed in claim(&b, 2).await {
        b.complete(&claimed.event.id).await.unwrap();
    }
    assert_eq!(a.purge(None, None).await.unwrap(), 1);
}

#[tokio::test]
async fn sqlite_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(super::SqliteStore::open(&dir.path().join("cirrus.db")).unwrap());
    let queue: Arc<dyn EventQueue> = Arc::new(store.clone());
    metadata_round_trip(&*store).await;
    feed_in_order(&*store, &*store).await;
    schedule_ticks_claimed_once(&*store, &*store).await;
    let artifacts = super::FsArtifactStore::open(&dir.path().join("artifacts")).unwrap();
    artifacts_round_trip(&artifacts).await;
    store.set_lineage_budget(2);
    events_delivered_retried_and_dead_lettered(queue.clone(), queue.clone()).await;
    ordered_events_one_at_a_time(queue.clone(), queue.clone()).await;
    lineage_budget_holds(queue.clone(), queue.clone()).await;
    let kv: Arc<dyn KvStore> = Arc::new(store.clone());
    kv_tables_round_trip(kv.clone(), kv, [queue.clone(), queue.clone()]).await;
    let objects: Arc<dyn ObjectStore> = Arc::new(store.clone());
    objects_round_trip(objects.clone(), objects, queue).await;
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

    // Two nodes' queues over one stream, and their tables.
    let mut queues = Vec::new();
    let mut tables = Vec::new();
    let mut buckets = Vec::new();
    for js in [a, b] {
        let queue = super::jetstream::events::ClusterQueue::open_for_test(js.clone()).await;
        queue.set_lineage_budget(2);
        let kv = super::jetstream::tables::ClusterTables::open(&js, 1, queue.clone())
            .await
            .unwrap();
        tables.push(Arc::new(kv) as Arc<dyn KvStore>);
        let objects = super::jetstream::objects::ClusterObjects::open(&js, 1, queue.clone())
            .await
            .unwrap();
        buckets.push(Arc::new(objects) as Arc<dyn ObjectStore>);
        queues.push(queue as Arc<dyn EventQueue>);
    }
    events_delivered_retried_and_dead_lettered(queues[0].clone(), queues[1].clone()).await;
    ordered_events_one_at_a_time(queues[0].clone(), queues[1].clone()).await;
    lineage_budget_holds(queues[0].clone(), queues[1].clone()).await;
    kv_tables_round_trip(
        tables[0].clone(),
        tables[1].clone(),
        [queues[0].clone(), queues[1].clone()],
    )
    .await;
    objects_round_trip(buckets[0].clone(), buckets[1].clone(), queues[1].clone()).await;
}
