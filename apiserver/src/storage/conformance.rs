//! The conformance suite every [`Storage`] backend must pass. Each check
//! works under its own key prefix, so checks can share one backend.
//!
//! Owns the contract's tests; must not depend on a backend's internals.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{EventKind, RangeRequest, Storage, StorageError, WatchStream};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs every check against `storage`, each under `prefix`.
pub async fn run_all(storage: Arc<dyn Storage>, prefix: &str) {
    create_get_update_delete(&*storage, &format!("{prefix}/crud/")).await;
    range_pages_and_reads_the_past(&*storage, &format!("{prefix}/range/")).await;
    watch_streams_changes_with_previous_values(&*storage, &format!("{prefix}/watch/")).await;
    concurrent_compare_and_swap_loses_no_update(storage.clone(), &format!("{prefix}/cas/")).await;
    compaction_discards_history(&*storage, &format!("{prefix}/compact/")).await;
}

/// Create, get, update and delete with their failure cases.
pub async fn create_get_update_delete(s: &dyn Storage, p: &str) {
    let k = format!("{p}a");
    let before = s.current_revision().await.unwrap();
    let created = s.create(&k, b("v1")).await.unwrap();
    assert!(created.mod_revision > before, "a write moves the revision");
    assert_eq!(created.create_revision, created.mod_revision);
    assert_eq!(created.version, 1);
    assert_eq!(s.current_revision().await.unwrap(), created.mod_revision);

    let got = s.get(&k).await.unwrap().expect("created key is readable");
    assert_eq!(got, created);
    assert!(matches!(
        s.create(&k, b("again")).await,
        Err(StorageError::AlreadyExists { .. })
    ));

    let updated = s.update(&k, b("v2"), created.mod_revision).await.unwrap();
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.version, 2);
    assert_eq!(updated.value, b("v2"));

    match s.update(&k, b("stale"), created.mod_revision).await {
        Err(StorageError::Conflict { current, .. }) => assert_eq!(*current, updated),
        other => panic!("stale update must conflict, got {other:?}"),
    }
    assert_eq!(
        s.get(&k).await.unwrap().unwrap().value,
        b("v2"),
        "a failed update changes nothing"
    );
    assert!(matches!(
        s.update(&format!("{p}missing"), b("x"), 1).await,
        Err(StorageError::NotFound { .. })
    ));

    assert!(matches!(
        s.delete(&k, Some(created.mod_revision)).await,
        Err(StorageError::Conflict { .. })
    ));
    let deleted = s.delete(&k, Some(updated.mod_revision)).await.unwrap();
    assert!(deleted.revision > updated.mod_revision);
    assert_eq!(deleted.prev, updated);
    assert!(s.get(&k).await.unwrap().is_none());
    assert!(matches!(
        s.delete(&k, None).await,
        Err(StorageError::NotFound { .. })
    ));
    // A key can be created again after deletion, with a new create revision.
    let again = s.create(&k, b("v3")).await.unwrap();
    assert!(again.create_revision > deleted.revision);
    assert_eq!(again.version, 1);
}

/// Prefix ranges with limits, paging and reads at a past revision.
pub async fn range_pages_and_reads_the_past(s: &dyn Storage, p: &str) {
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(
            s.create(&format!("{p}{i:02}"), b(&format!("v{i}")))
                .await
                .unwrap(),
        );
    }
    // A key outside the prefix that sorts right after it must not leak in.
    let outside = format!("{}0", &p[..p.len() - 1]);
    s.create(&outside, b("outside")).await.unwrap();
    let snapshot = s.current_revision().await.unwrap();

    let all = s
        .range(RangeRequest {
            prefix: p.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.kvs.len(), 10);
    assert!(!all.more);
    assert!(all.revision >= snapshot);
    assert!(all.kvs.windows(2).all(|w| w[0].key < w[1].key), "key order");

    // Page through 3 at a time at one revision.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = s
            .range(RangeRequest {
                prefix: p.into(),
                start_after: after.clone(),
                revision: Some(snapshot),
                limit: 3,
            })
            .await
            .unwrap();
        assert_eq!(page.revision, snapshot);
        assert!(page.kvs.len() <= 3);
        seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        if !page.more {
            break;
        }
        after = page.kvs.last().unwrap().key.clone();
    }
    assert_eq!(
        seen,
        all.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>()
    );

    // Change things, then read the past.
    s.update(&format!("{p}03"), b("changed"), revs[3].mod_revision)
        .await
        .unwrap();
    s.delete(&format!("{p}05"), None).await.unwrap();
    s.create(&format!("{p}99"), b("new")).await.unwrap();
    let past = s
        .range(RangeRequest {
            prefix: p.into(),
            revision: Some(snapshot),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        past.kvs, all.kvs,
        "a read at a past revision sees that revision"
    );
    let past_page = s
        .range(RangeRequest {
            prefix: p.into(),
            start_after: format!("{p}02"),
            revision: Some(snapshot),
            limit: 4,
        })
        .await
        .unwrap();
    assert_eq!(
        past_page
            .kvs
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        [3, 4, 5, 6]
            .map(|i| format!("{p}{i:02}"))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(past_page.kvs[0].value, b("v3"));
    assert!(past_page.more);
    let now = s
        .range(RangeRequest {
            prefix: p.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = now.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert!(!keys.contains(&format!("{p}05")));
    assert!(keys.contains(&format!("{p}99")));
    assert_eq!(now.kvs.len(), 10);

    let future = s.current_revision().await.unwrap() + 1000;
    assert!(matches!(
        s.range(RangeRequest {
            prefix: p.into(),
            revision: Some(future),
            ..Default::default()
        })
        .await,
        Err(StorageError::FutureRevision { .. })
    ));
}

async fn next_events(w: &mut WatchStream, n: usize) -> Vec<super::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch delivers within 10s")
            .expect("watch stream open")
            .expect("watch ok");
        assert!(
            batch
                .events
                .last()
                .is_none_or(|e| batch.progress >= e.revision()),
            "progress covers the batch's events"
        );
        out.extend(batch.events);
    }
    out
}

/// Watches from a past revision and live, with previous values.
pub async fn watch_streams_changes_with_previous_values(s: &dyn Storage, p: &str) {
    let a = format!("{p}a");
    let c1 = s.create(&a, b("1")).await.unwrap();
    let u1 = s.update(&a, b("2"), c1.mod_revision).await.unwrap();
    // Other prefixes are not seen.
    s.create(&format!("{}-other", p.trim_end_matches('/')), b("x"))
        .await
        .unwrap();

    let mut w = s.watch(p, c1.mod_revision).await.unwrap();
    let first = next_events(&mut w, 2).await;
    assert_eq!(first[0].kind, EventKind::Put);
    assert_eq!(first[0].kv, c1);
    assert!(first[0].prev.is_none());
    assert_eq!(first[1].kv, u1);
    assert_eq!(first[1].prev.as_ref(), Some(&c1));

    // Live events after the catch-up.
    let bkey = format!("{p}b");
    let c2 = s.create(&bkey, b("b")).await.unwrap();
    let d1 = s.delete(&a, None).await.unwrap();
    let live = next_events(&mut w, 2).await;
    assert_eq!(live[0].kv, c2);
    assert_eq!(live[1].kind, EventKind::Delete);
    assert_eq!(live[1].kv.key, a);
    assert_eq!(live[1].kv.mod_revision, d1.revision);
    assert_eq!(live[1].prev.as_ref(), Some(&u1));

    // A watch from "now" sees only later writes.
    let mut w2 = s.watch(p, 0).await.unwrap();
    let c3 = s.create(&format!("{p}c"), b("c")).await.unwrap();
    let got = next_events(&mut w2, 1).await;
    assert_eq!(got[0].kv, c3);
    let got = next_events(&mut w, 1).await;
    assert_eq!(got[0].kv, c3);

    // A backend that reports progress does so past writes to other prefixes.
    if s.reports_progress() {
        let elsewhere = s
            .create(&format!("{}-elsewhere", p.trim_end_matches('/')), b("x"))
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let batch = tokio::time::timeout_at(deadline, w.next())
                .await
                .expect("progress within 10s")
                .unwrap()
                .unwrap();
            assert!(batch.events.is_empty(), "no watched key changed");
            if batch.progress >= elsewhere.mod_revision {
                break;
            }
        }
    }

    // Many writes arrive complete and in order.
    let mut expected = Vec::new();
    for i in 0..200 {
        expected.push(
            s.create(&format!("{p}many/{i}"), b("m"))
                .await
                .unwrap()
                .mod_revision,
        );
    }
    let got = next_events(&mut w, 200).await;
    assert_eq!(
        got.iter().map(|e| e.revision()).collect::<Vec<_>>(),
        expected
    );
}

/// Many tasks increment one counter by compare-and-swap: none is lost.
pub async fn concurrent_compare_and_swap_loses_no_update(s: Arc<dyn Storage>, p: &str) {
    const TASKS: usize = 16;
    const EACH: usize = 20;
    let key = format!("{p}counter");
    s.create(&key, b("0")).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let s = s.clone();
        let key = key.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..EACH {
                let mut cur = s.get(&key).await.unwrap().unwrap();
                loop {
                    let n: usize = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                    match s
                        .update(&key, b(&(n + 1).to_string()), cur.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(StorageError::Conflict { current, .. }) => {
                            conflicts += 1;
                            cur = *current;
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        conflicts += h.await.unwrap();
    }
    let v = s.get(&key).await.unwrap().unwrap();
    assert_eq!(
        std::str::from_utf8(&v.value).unwrap(),
        (TASKS * EACH).to_string(),
        "every increment is kept ({conflicts} conflicts were retried)"
    );
    assert_eq!(v.version as usize, TASKS * EACH + 1);
}

/// Compaction makes older revisions unreadable and unwatchable, and keeps the present.
pub async fn compaction_discards_history(s: &dyn Storage, p: &str) {
    let k = format!("{p}k");
    let c = s.create(&k, b("1")).await.unwrap();
    let u = s.update(&k, b("2"), c.mod_revision).await.unwrap();
    let u2 = s.update(&k, b("3"), u.mod_revision).await.unwrap();
    s.compact(u2.mod_revision).await.unwrap();
    assert!(matches!(
        s.range(RangeRequest {
            prefix: p.into(),
            revision: Some(c.mod_revision),
            ..Default::default()
        })
        .await,
        Err(StorageError::Compacted { .. })
    ));
    match s.watch(p, c.mod_revision).await {
        Err(StorageError::Compacted { .. }) => {}
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(StorageError::Compacted { .. }))) => {}
            other => panic!("watch from a compacted revision must fail, got {other:?}"),
        },
        Err(e) => panic!("unexpected error {e}"),
    }
    // The compaction revision itself is still readable and watchable.
    let at = s
        .range(RangeRequest {
            prefix: p.into(),
            revision: Some(u2.mod_revision),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(at.kvs[0].value, b("3"));
    let mut w = s.watch(p, u2.mod_revision).await.unwrap();
    let got = next_events(&mut w, 1).await;
    assert_eq!(got[0].kv, u2);
    assert_eq!(s.get(&k).await.unwrap().unwrap(), u2);
}
