//! The CronJob controller against a real API server, scheduler and
//! controller manager whose clock a test moves by hand (virtual time: no
//! waiting for minutes to pass), with a process node running the jobs:
//! one job per tick, none while the last still runs under Forbid and the
//! skipped tick run once it ends, the history limit, Replace, and a long
//! outage's missed times giving one catch-up run and a warning.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use skiff::Resource;
use skiff::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use skiff::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::params::ListParams;
use skiff_controllers::clock::{Clock, ManualClock};
use skiff_e2e::cluster::{Cluster, Kubelet, TEST_IMAGE, unique};

const WAIT: Duration = Duration::from_secs(60);

/// A cluster whose controllers read `clock`, and a process node.
async fn cluster(clock: Arc<ManualClock>) -> (Cluster, Kubelet) {
    let cluster = Cluster::start_with_controllers(|c| c.clock = clock).await;
    let name = unique("cron");
    let k = Kubelet::start(&cluster, &name, "process", &[]).await;
    cluster.node_ready(&name).await;
    (cluster, k)
}

/// A clock showing the real time now: a cron job created next has no
/// scheduled time in its past until the test moves the clock.
fn test_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(SystemTime::now()))
}

/// Moves the clock one second past the next minute (plus `extra` whole
/// minutes); returns that minute, counted from the epoch.
fn next_minute(clock: &ManualClock, extra: u64) -> u64 {
    let now = clock
        .now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let minute = now / 60 + 1 + extra;
    clock.set(SystemTime::UNIX_EPOCH + Duration::from_secs(minute * 60 + 1));
    minute
}

fn cron_job(name: &str, node: &str, script: &str, policy: &str) -> CronJob {
    CronJob {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(CronJobSpec {
            schedule: "* * * * *".into(),
            concurrency_policy: policy.into(),
            successful_jobs_history_limit: Some(1),
            job_template: Some(JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    template: Some(PodTemplateSpec {
                        metadata: None,
                        spec: Some(PodSpec {
                            containers: vec![Container {
                                name: "tick".into(),
                                image: TEST_IMAGE.into(),
                                command: vec!["sh".into(), "-c".into(), script.into()],
                                ..Default::default()
                            }],
                            restart_policy: "Never".into(),
                            node_selector: [("kubernetes.io/hostname".to_owned(), node.to_owned())]
                                .into(),
                            termination_grace_period_seconds: Some(1),
                            ..Default::default()
                        }),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

async fn jobs_of(cluster: &Cluster, cj: &CronJob) -> Vec<Job> {
    let mut jobs: Vec<Job> = cluster
        .client
        .api::<Job>("default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| {
            j.meta()
                .owner_references
                .iter()
                .any(|r| r.uid == cj.meta().uid)
        })
        .collect();
    jobs.sort_by(|a, b| a.name().cmp(b.name()));
    jobs
}

async fn event_count(cluster: &Cluster, cj: &CronJob, reason: &str) -> usize {
    cluster
        .client
        .events("default")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| {
            e.reason == reason
                && e.involved_object
                    .as_ref()
                    .is_some_and(|o| o.uid == cj.meta().uid)
        })
        .map(|e| e.count.max(1) as usize)
        .sum()
}

fn complete(j: &Job) -> bool {
    j.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.r#type == "Complete" && c.status == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_forbid_one_job_per_tick_and_none_while_the_last_still_runs() {
    let clock = test_clock();
    let (cluster, node) = cluster(clock.clone()).await;
    let marks = tempfile::tempdir().unwrap();
    let done = marks.path().join("done");
    // Each run waits until the test lets it finish.
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", done.display());
    let cj = cluster
        .client
        .api::<CronJob>("default")
        .create(&cron_job("ticker", &node.name, &script, "Forbid"))
        .await
        .unwrap();
    // The first tick: exactly one job, for that minute.
    let tick = next_minute(&clock, 0);
    let jobs = skiff::testing::eventually("the first tick's job", WAIT, async || {
        let jobs = jobs_of(&cluster, &cj).await;
        (!jobs.is_empty()).then_some(jobs)
    })
    .await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].name(), format!("ticker-{tick}"));

    // Two more ticks while it runs: skipped, said so, no second job.
    for n in 1..=2 {
        next_minute(&clock, 0);
        skiff::testing::eventually("the tick to be skipped", WAIT, async || {
            (event_count(&cluster, &cj, "JobAlreadyActive").await >= n).then_some(())
        })
        .await;
        assert_eq!(
            jobs_of(&cluster, &cj).await.len(),
            1,
            "Forbid: one at a time"
        );
    }

    // The run ends: the skipped tick runs once (not twice) and the history
    // limit of one keeps only the newest finished job.
    std::fs::write(&done, b"").unwrap();
    let jobs = skiff::testing::eventually("the skipped tick to run and finish", WAIT, async || {
        let jobs = jobs_of(&cluster, &cj).await;
        (jobs.len() == 1 && jobs[0].name() != format!("ticker-{tick}") && complete(&jobs[0]))
            .then_some(jobs)
    })
    .await;
    assert_eq!(
        jobs[0].name(),
        format!("ticker-{}", tick + 2),
        "the latest missed tick"
    );
    // The controller records its events and status after its calls return,
    // so they may land a moment after the jobs show the outcome.
    skiff::testing::eventually(
        "the status and events of the finished run",
        WAIT,
        async || {
            let live = cluster
                .client
                .api::<CronJob>("default")
                .get("ticker")
                .await
                .unwrap();
            let succeeded = live
                .status
                .is_some_and(|s| s.last_successful_time.is_some());
            (succeeded
                && event_count(&cluster, &cj, "SawCompletedJob").await >= 1
                && event_count(&cluster, &cj, "SuccessfulDelete").await >= 1)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_gives_one_catch_up_run_and_a_warning_and_replace_replaces() {
    let clock = test_clock();
    let (cluster, node) = cluster(clock.clone()).await;
    let cj = cluster
        .client
        .api::<CronJob>("default")
        .create(&cron_job("late", &node.name, "sleep 300", "Replace"))
        .await
        .unwrap();
    // 150 minutes pass at once, as if the controller had been down.
    let tick = next_minute(&clock, 150);
    let jobs = skiff::testing::eventually("one catch-up job", WAIT, async || {
        let jobs = jobs_of(&cluster, &cj).await;
        (!jobs.is_empty()).then_some(jobs)
    })
    .await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        jobs[0].name(),
        format!("late-{tick}"),
        "the most recent missed time"
    );
    skiff::testing::eventually("the too-many-missed warning", WAIT, async || {
        (event_count(&cluster, &cj, "TooManyMissedTimes").await >= 1).then_some(())
    })
    .await;

    // Replace: the next tick deletes the running job and starts a new one.
    next_minute(&clock, 0);
    skiff::testing::eventually("the running job replaced", WAIT, async || {
        let jobs = jobs_of(&cluster, &cj).await;
        let live: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.meta().deletion_timestamp.is_none())
            .collect();
        (live.len() == 1 && live[0].name() == format!("late-{}", tick + 1)).then_some(())
    })
    .await;
}
