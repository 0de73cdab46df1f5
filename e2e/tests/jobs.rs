//! The Job controller against a real API server, scheduler and controller
//! manager, with a process node running real processes: completions and
//! parallelism with failures counted against the back-off limit (and a
//! growing pause before each replacement), indexed completion, the
//! back-off limit and the active deadline failing a job, suspension, and
//! the TTL deleting a finished job.

use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::batch::v1::{Job, JobSpec};
use skiff::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::params::ListParams;
use skiff_e2e::cluster::{Cluster, Kubelet, TEST_IMAGE, unique};

const WAIT: Duration = Duration::from_secs(90);

async fn process_node(cluster: &Cluster) -> Kubelet {
    let name = unique("jobs");
    let k = Kubelet::start(cluster, &name, "process", &[]).await;
    cluster.node_ready(&name).await;
    k
}

/// A job running `script` with `sh -c` on `node`.
fn job(name: &str, node: &str, script: &str, f: impl FnOnce(&mut JobSpec)) -> Job {
    let mut spec = JobSpec {
        template: Some(PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "work".into(),
                    image: TEST_IMAGE.into(),
                    command: vec!["sh".into(), "-c".into(), script.into()],
                    ..Default::default()
                }],
                restart_policy: "Never".into(),
                node_selector: [("kubernetes.io/hostname".to_owned(), node.to_owned())].into(),
                termination_grace_period_seconds: Some(1),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    f(&mut spec);
    Job {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(spec),
        status: None,
    }
}

async fn job_until(cluster: &Cluster, name: &str, what: &str, check: impl Fn(&Job) -> bool) -> Job {
    let api = cluster.client.api::<Job>("default");
    skiff::testing::eventually(what, WAIT, async || {
        api.get(name).await.ok().filter(|j| check(j))
    })
    .await
}

fn condition(j: &Job, kind: &str) -> Option<(String, String)> {
    j.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == kind && c.status == "True")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

async fn job_pods(cluster: &Cluster, job: &Job) -> Vec<Pod> {
    let uid = &job.meta().uid;
    cluster
        .client
        .pods("default")
        .list(&ListParams {
            label_selector: format!("batch.kubernetes.io/controller-uid={uid}"),
            ..Default::default()
        })
        .await
        .unwrap()
        .items
}

async fn reasons(cluster: &Cluster, job: &Job) -> Vec<String> {
    let events = cluster
        .client
        .events("default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    events
        .into_iter()
        .filter(|e| {
            e.involved_object
                .as_ref()
                .is_some_and(|o| o.uid == job.meta().uid)
        })
        .map(|e| e.reason)
        .collect()
}

/// Sets a job's `suspend`, reading again when the controller wrote in between.
async fn set_suspend(cluster: &Cluster, name: &str, suspend: bool) {
    let api = cluster.client.api::<Job>("default");
    loop {
        let mut live = api.get(name).await.unwrap();
        live.spec.as_mut().unwrap().suspend = Some(suspend);
        match api.update(&live).await {
            Ok(_) => return,
            Err(e) if e.is_conflict() => continue,
            Err(e) => panic!("suspending {name}: {e}"),
        }
    }
}

fn created(p: &Pod) -> SystemTime {
    SystemTime::try_from(p.meta().creation_timestamp.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_five_completions_two_at_a_time_counts_two_failures_and_completes() {
    let cluster = Cluster::start().await;
    let node = process_node(&cluster).await;
    let marks = tempfile::tempdir().unwrap();
    let dir = marks.path().display();
    // The first two runs fail (mkdir is atomic: one run per mark), the rest succeed.
    let script = format!(
        "mkdir {dir}/fail1 2>/dev/null && exit 1; mkdir {dir}/fail2 2>/dev/null && exit 1; exit 0"
    );
    let j = job("five", &node.name, &script, |s| {
        s.completions = Some(5);
        s.parallelism = Some(2);
        s.backoff_limit = Some(3);
    });
    let api = cluster.client.api::<Job>("default");
    api.create(&j).await.unwrap();
    let done = job_until(&cluster, "five", "the job to complete", |j| {
        condition(j, "Complete").is_some()
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!((status.succeeded, status.failed, status.active), (5, 2, 0));
    assert_eq!(
        condition(&done, "Complete").unwrap().0,
        "CompletionsReached"
    );
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    let pods = job_pods(&cluster, &done).await;
    assert_eq!(pods.len(), 7, "five successes and two failures, no more");
    let failed: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.status.as_ref().unwrap().phase == "Failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        pods.iter().all(|p| p.meta().finalizers.is_empty()),
        "every pod counted and released"
    );
    // No more than two ran at once: at most two pods were created before
    // the first one finished.
    let mut by_creation = pods.clone();
    by_creation.sort_by_key(created);
    let first_finish = pods
        .iter()
        .filter_map(|p| {
            p.status
                .as_ref()?
                .container_statuses
                .first()?
                .state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
        })
        .map(|t| SystemTime::try_from(t).unwrap())
        .min()
        .unwrap();
    assert!(
        by_creation
            .iter()
            .filter(|p| created(p) < first_finish)
            .count()
            <= 2,
        "parallelism 2"
    );
    let reasons = reasons(&cluster, &done).await;
    assert!(
        reasons.iter().any(|r| r == "SuccessfulCreate"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "Completed"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_job_runs_each_index_zero_to_four_exactly_once() {
    let cluster = Cluster::start().await;
    let node = process_node(&cluster).await;
    let marks = tempfile::tempdir().unwrap();
    let dir = marks.path().display();
    let script = format!("touch {dir}/index-$JOB_COMPLETION_INDEX-$$");
    let j = job("indexed", &node.name, &script, |s| {
        s.completions = Some(5);
        s.parallelism = Some(3);
        s.completion_mode = "Indexed".into();
    });
    cluster
        .client
        .api::<Job>("default")
        .create(&j)
        .await
        .unwrap();
    let done = job_until(&cluster, "indexed", "the indexed job to complete", |j| {
        condition(j, "Complete").is_some()
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.completed_indexes, "0-4");
    assert_eq!(status.succeeded, 5);
    let mut runs: Vec<String> = std::fs::read_dir(marks.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .map(|n| n.split('-').nth(1).unwrap().to_owned())
        .collect();
    runs.sort();
    assert_eq!(runs, ["0", "1", "2", "3", "4"], "each index once");
    let pods = job_pods(&cluster, &done).await;
    let mut names: Vec<String> = pods
        .iter()
        .map(|p| {
            let index = &p.meta().annotations["batch.kubernetes.io/job-completion-index"];
            assert!(
                p.name().starts_with(&format!("indexed-{index}-")),
                "{}",
                p.name()
            );
            assert_eq!(
                p.spec.as_ref().unwrap().hostname,
                format!("indexed-{index}")
            );
            index.clone()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["0", "1", "2", "3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fails_past_its_backoff_limit_with_a_growing_pause_between_retries() {
    let cluster = Cluster::start().await;
    let node = process_node(&cluster).await;
    let j = job("doomed", &node.name, "exit 3", |s| {
        s.backoff_limit = Some(2);
    });
    cluster
        .client
        .api::<Job>("default")
        .create(&j)
        .await
        .unwrap();
    let failed = job_until(&cluster, "doomed", "the job to fail", |j| {
        condition(j, "Failed").is_some()
    })
    .await;
    let (reason, message) = condition(&failed, "Failed").unwrap();
    assert_eq!(reason, "BackoffLimitExceeded");
    assert_eq!(message, "Job has reached the specified backoff limit");
    let status = failed.status.clone().unwrap();
    assert_eq!((status.failed, status.active), (3, 0));
    assert!(
        status.completion_time.is_none(),
        "only a complete job has one"
    );
    let mut pods = job_pods(&cluster, &failed).await;
    assert_eq!(pods.len(), 3, "the first try and two retries");
    pods.sort_by_key(created);
    // The pause doubles: 0.5 s after the first failure, 1 s after the second.
    let gap = |a: &Pod, b: &Pod| created(b).duration_since(created(a)).unwrap();
    assert!(
        gap(&pods[0], &pods[1]) >= Duration::from_millis(500),
        "{:?}",
        gap(&pods[0], &pods[1])
    );
    assert!(
        gap(&pods[1], &pods[2]) >= Duration::from_millis(1000),
        "{:?}",
        gap(&pods[1], &pods[2])
    );
    let reasons = reasons(&cluster, &failed).await;
    assert!(
        reasons.iter().any(|r| r == "BackoffLimitExceeded"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_stops_a_jobs_pods_and_resuming_starts_them_again() {
    let cluster = Cluster::start().await;
    let node = process_node(&cluster).await;
    let j = job("paused", &node.name, "sleep 300", |s| {
        s.parallelism = Some(2)
    });
    let api = cluster.client.api::<Job>("default");
    api.create(&j).await.unwrap();
    job_until(&cluster, "paused", "two active pods", |j| {
        j.status.as_ref().is_some_and(|s| s.active == 2)
    })
    .await;
    set_suspend(&cluster, "paused", true).await;
    let suspended = job_until(
        &cluster,
        "paused",
        "the job to be suspended with no pods",
        |j| condition(j, "Suspended").is_some() && j.status.as_ref().is_some_and(|s| s.active == 0),
    )
    .await;
    assert_eq!(
        condition(&suspended, "Suspended").unwrap().0,
        "JobSuspended"
    );
    assert_eq!(
        suspended.status.as_ref().unwrap().failed,
        0,
        "suspension is no failure"
    );
    skiff::testing::eventually("the suspended job's pods to go", WAIT, async || {
        job_pods(&cluster, &suspended)
            .await
            .iter()
            .all(|p| p.meta().deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    set_suspend(&cluster, "paused", false).await;
    let resumed = job_until(&cluster, "paused", "two active pods again", |j| {
        condition(j, "Suspended").is_none() && j.status.as_ref().is_some_and(|s| s.active == 2)
    })
    .await;
    let reasons = reasons(&cluster, &resumed).await;
    assert!(reasons.iter().any(|r| r == "Suspended"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Resumed"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_deadline_fails_a_job_and_its_ttl_then_deletes_it() {
    let cluster = Cluster::start().await;
    let node = process_node(&cluster).await;
    let j = job("slow", &node.name, "sleep 300", |s| {
        s.active_deadline_seconds = Some(2);
        s.ttl_seconds_after_finished = Some(2);
    });
    let api = cluster.client.api::<Job>("default");
    let created_job = api.create(&j).await.unwrap();
    let failed = job_until(&cluster, "slow", "the deadline to fail the job", |j| {
        condition(j, "Failed").is_some()
    })
    .await;
    assert_eq!(condition(&failed, "Failed").unwrap().0, "DeadlineExceeded");
    skiff::testing::eventually("the TTL to delete the job", WAIT, async || {
        api.get_opt("slow").await.unwrap().is_none().then_some(())
    })
    .await;
    skiff::testing::eventually("the job's pods to go with it", WAIT, async || {
        job_pods(&cluster, &created_job)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_job_name_read_a_pod_of_the_job() {
    let cluster = Cluster::start().await;
    let node = process_node(&cluster).await;
    let j = job("pi", &node.name, "echo pi is 3.14159", |_| {});
    cluster
        .client
        .api::<Job>("default")
        .create(&j)
        .await
        .unwrap();
    job_until(&cluster, "pi", "the job to complete", |j| {
        condition(j, "Complete").is_some()
    })
    .await;
    let out = skiff_e2e::skiff(&cluster.server, &["logs", "job/pi"]).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "pi is 3.14159");
    let out = skiff_e2e::skiff(&cluster.server, &["logs", "job/nope"]).await;
    assert!(!out.ok && out.stderr.contains("nope"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_deleted_as_soon_as_they_succeed_are_still_counted_once() {
    use futures::StreamExt;
    use skiff::runtime::{Event, WatcherConfig, watcher};
    let cluster = Cluster::start().await;
    let node = process_node(&cluster).await;
    // Something deletes every pod the moment it succeeds.
    let client = cluster.client.clone();
    let deleter = tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(client.all::<Pod>(), WatcherConfig::default()));
        while let Some(ev) = events.next().await {
            let Ok(Event::Apply(p) | Event::InitApply(p)) = ev else {
                continue;
            };
            if p.status.as_ref().is_some_and(|s| s.phase == "Succeeded")
                && p.meta().deletion_timestamp.is_none()
            {
                let params = skiff::params::DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                let _ = client.pods(p.namespace()).delete(p.name(), &params).await;
            }
        }
    });
    let j = job("quick", &node.name, "exit 0", |s| {
        s.completions = Some(3);
        s.parallelism = Some(3);
    });
    cluster
        .client
        .api::<Job>("default")
        .create(&j)
        .await
        .unwrap();
    let done = job_until(&cluster, "quick", "the job to complete", |j| {
        condition(j, "Complete").is_some()
    })
    .await;
    let status = done.status.clone().unwrap();
    assert_eq!((status.succeeded, status.failed), (3, 0), "{status:?}");
    let created = reasons(&cluster, &done)
        .await
        .into_iter()
        .filter(|r| r == "SuccessfulCreate")
        .count();
    assert!(
        created <= 3,
        "no pod was lost and replaced ({created} creations)"
    );
    deleter.abort();
}
