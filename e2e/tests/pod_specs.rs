//! What real pod specs ask of a node, end to end: a real API server,
//! scheduler and controller manager, and `skiff kubelet` running Docker
//! containers (a busybox image built here) or processes. Security
//! contexts confine containers (uid, read-only root, no capabilities,
//! no_new_privs) and `runAsNonRoot` refuses root with Kubernetes' message;
//! ConfigMap items and envFrom reach a container and its updates reach the
//! file; an emptyDir is shared by two containers; a gRPC liveness probe
//! restarts a server that stops SERVING; preStop runs before SIGTERM; the
//! process runtime applies what it can and refuses the rest with an event;
//! termination messages, postStart hooks, downward-API and projected
//! volumes and resourceFieldRef reach containers.

use std::time::Duration;

use skiff::Resource;
use skiff::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapVolumeSource, Container,
    DownwardApiProjection, DownwardApiVolumeFile, EmptyDirVolumeSource, EnvFromSource, EnvVar,
    EnvVarSource, ExecAction, GrpcAction, HostPathVolumeSource, KeyToPath, Lifecycle,
    LifecycleHandler, ObjectFieldSelector, PodSecurityContext, Probe, ProjectedVolumeSource,
    ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::params::DeleteParams;
use skiff_e2e::cluster::{
    Cluster, GRPC_TEST_IMAGE, ensure_grpc_test_image, eventually, is_ready, phase,
};
use skiff_e2e::pods::{container, is_root, node, pod, restarts, waiting_message, waiting_reason};
use skiff_e2e::skiff;

/// The log of pod `name` (its one container) once it holds `wanted`.
async fn log_with(cluster: &Cluster, name: &str, container: &str, wanted: &str) -> String {
    eventually(
        &format!("{name}'s log to show {wanted:?}"),
        Duration::from_secs(60),
        async || {
            let out = skiff(&cluster.server, &["logs", name, "-c", container]).await;
            out.stdout.contains(wanted).then_some(out.stdout)
        },
    )
    .await
}

/// Pod `name` once its container `app` is held in CreateContainerConfigError.
async fn config_error(cluster: &Cluster, name: &str) -> skiff::api::core::v1::Pod {
    cluster
        .pod_until(name, "CreateContainerConfigError", |p| {
            waiting_reason(p, "app").as_deref() == Some("CreateContainerConfigError")
        })
        .await
}

fn volume_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

/// The capabilities left in a `/proc/self/status` line like `CapBnd:\t0000…`.
fn caps(log: &str, field: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX)
}

const CAP_NET_RAW: u64 = 1 << 13;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_security_context_confines_the_container_and_run_as_non_root_refuses_root() {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "docker").await;
    let pods = cluster.client.pods("default");
    let mut c = container(
        "app",
        "id -u; touch /written 2>/dev/null && echo root-writable || echo root-read-only; \
         grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; exec sleep 3600",
    );
    c.security_context = Some(SecurityContext {
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: vec!["ALL".into()],
            add: vec![],
        }),
        ..Default::default()
    });
    let mut p = pod("confined", &k.name, vec![c]);
    p.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
        run_as_user: Some(1000),
        run_as_group: Some(1000),
        run_as_non_root: Some(true),
        ..Default::default()
    });
    pods.create(&p).await.unwrap();
    let log = log_with(&cluster, "confined", "app", "NoNewPrivs").await;
    assert!(log.starts_with("1000\nroot-read-only\n"), "{log}");
    assert_eq!(caps(&log, "CapEff"), 0, "{log}");
    assert_eq!(
        caps(&log, "CapBnd") & CAP_NET_RAW,
        0,
        "no CAP_NET_RAW: {log}"
    );
    assert!(log.contains("NoNewPrivs:\t1"), "{log}");

    // The same without a user on a root image: refused before it starts.
    let mut c = container("app", "exec sleep 3600");
    c.security_context = Some(SecurityContext {
        run_as_non_root: Some(true),
        ..Default::default()
    });
    let created = pods.create(&pod("rooted", &k.name, vec![c])).await.unwrap();
    let uid = created.metadata.unwrap().uid;
    let p = config_error(&cluster, "rooted").await;
    assert_eq!(
        waiting_message(&p, "app"),
        format!(
            "container has runAsNonRoot and image will run as root (pod: \"rooted_default({uid})\", container: app)"
        )
    );
    assert_eq!(phase(&p), "Pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_map_items_env_from_and_updates_and_a_shared_empty_dir() {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "docker").await;
    let configs = cluster.client.api::<ConfigMap>("default");
    let mut cm = ConfigMap {
        metadata: Some(ObjectMeta {
            name: "settings".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        data: [
            ("color".to_owned(), "blue".to_owned()),
            ("size".to_owned(), "large".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    configs.create(&cm).await.unwrap();
    // One container reads the ConfigMap (one key, as a file of its own
    // name) and writes to the emptyDir; the other reads what it wrote.
    let mut reader = container(
        "reader",
        "echo \"env=$CFG_color/$CFG_size\"; ls /etc/settings; \
         while true; do echo \"color=$(cat /etc/settings/conf/color.txt)\" > /shared/msg; \
         cat /shared/msg; sleep 0.3; done",
    );
    reader.env_from = vec![EnvFromSource {
        prefix: "CFG_".into(),
        config_map_ref: Some(ConfigMapEnvSource {
            name: "settings".into(),
            optional: None,
        }),
        secret_ref: None,
    }];
    reader.volume_mounts = vec![
        VolumeMount {
            read_only: true,
            ..volume_mount("settings", "/etc/settings")
        },
        volume_mount("shared", "/shared"),
    ];
    let mut sidecar = container(
        "sidecar",
        "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; \
         while true; do echo \"seen $(cat /shared/msg 2>/dev/null)\"; sleep 0.3; done",
    );
    sidecar.volume_mounts = vec![
        volume_mount("shared", "/shared"),
        volume_mount("scratch", "/scratch"),
    ];
    let mut p = pod("cm", &k.name, vec![reader, sidecar]);
    p.spec.as_mut().unwrap().volumes = vec![
        Volume {
            name: "settings".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "settings".into(),
                items: vec![KeyToPath {
                    key: "color".into(),
                    path: "conf/color.txt".into(),
                    mode: None,
                }],
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "shared".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: "Memory".into(),
                size_limit: "16Mi".into(),
            }),
            ..Default::default()
        },
    ];
    cluster.client.pods("default").create(&p).await.unwrap();
    let log = log_with(&cluster, "cm", "reader", "color=blue").await;
    assert!(log.starts_with("env=blue/large\nconf\n"), "{log}");
    let seen = log_with(&cluster, "cm", "sidecar", "seen color=blue").await;
    if is_root() {
        assert!(
            seen.starts_with("tmpfs\n"),
            "a Memory emptyDir is a tmpfs: {seen}"
        );
    }
    // An update reaches the file.
    cm.data.insert("color".into(), "green".into());
    let mut live = configs.get("settings").await.unwrap();
    live.data = cm.data.clone();
    configs.update(&live).await.unwrap();
    log_with(&cluster, "cm", "sidecar", "seen color=green").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_grpc_liveness_probe_restarts_a_server_that_stops_serving() {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "docker").await;
    ensure_grpc_test_image();
    let probe = |service: Option<&str>| Probe {
        grpc: Some(GrpcAction {
            port: 9555,
            service: service.map(str::to_owned),
        }),
        period_seconds: 1,
        failure_threshold: 1,
        ..Default::default()
    };
    let c = Container {
        name: "server".into(),
        image: GRPC_TEST_IMAGE.into(),
        command: vec![
            "/skiff-test-grpc-health".into(),
            "--listen".into(),
            "0.0.0.0:9555".into(),
            "--serving-for".into(),
            "4".into(),
            "--service".into(),
            "shop".into(),
        ],
        readiness_probe: Some(probe(None)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: 1,
            ..probe(Some("shop"))
        }),
        ..Default::default()
    };
    cluster
        .client
        .pods("default")
        .create(&pod("grpc", &k.name, vec![c]))
        .await
        .unwrap();
    // Ready while it serves…
    cluster.pod_until("grpc", "Ready", is_ready).await;
    // …restarted once it answers NOT_SERVING.
    cluster
        .pod_until("grpc", "restarted by its liveness probe", |p| {
            restarts(p, "server") >= 1
        })
        .await;
    let events = skiff(&cluster.server, &["get", "events"]).await;
    assert!(
        events
            .stdout
            .contains("Container server failed liveness probe, will be restarted"),
        "{}",
        events.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pre_stop_runs_before_sigterm() {
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "docker").await;
    let dir = tempfile::tempdir().unwrap();
    let mut c = container(
        "app",
        "trap 'echo SIGTERM >> /out/log; exit 0' TERM; echo started >> /out/log; \
         while true; do sleep 0.1; done",
    );
    c.volume_mounts = vec![volume_mount("out", "/out")];
    c.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo preStop >> /out/log; sleep 1; echo preStop-done >> /out/log".into(),
                ],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut p = pod("stopper", &k.name, vec![c]);
    let spec = p.spec.as_mut().unwrap();
    spec.termination_grace_period_seconds = Some(10);
    spec.volumes = vec![Volume {
        name: "out".into(),
        host_path: Some(HostPathVolumeSource {
            path: dir.path().display().to_string(),
            r#type: "Directory".into(),
        }),
        ..Default::default()
    }];
    let pods = cluster.client.pods("default");
    pods.create(&p).await.unwrap();
    let log = dir.path().join("log");
    eventually(
        "the container to start",
        Duration::from_secs(60),
        async || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains("started"))
                .then_some(())
        },
    )
    .await;
    let deleted = pods
        .delete("stopper", &DeleteParams::default())
        .await
        .unwrap();
    cluster.pod_gone("stopper", Duration::from_secs(30)).await;
    let gone_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let lines = std::fs::read_to_string(&log).unwrap();
    if lines != "started\npreStop\npreStop-done\nSIGTERM\n" {
        // What the kubelet said of the pod, to tell why.
        let events = cluster
            .client
            .events("default")
            .list(&Default::default())
            .await;
        let events: Vec<_> = events
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|e| format!("{} {}: {}", e.r#type, e.reason, e.message))
                    .collect()
            })
            .unwrap_or_default();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let later = std::fs::read_to_string(&log).unwrap();
        panic!(
            "the container wrote {lines:?} (pod gone at {gone_at:?}; 3 s later: {later:?}); the pod's events: {events:#?}; as deleted: {:?} {:?}",
            deleted.meta().deletion_timestamp,
            deleted.status
        );
    }
}

/// The process runtime (as root): what it can enforce it does, what it
/// cannot it refuses with an event; termination messages, postStart,
/// downward-API and projected volumes and resourceFieldRef.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pods_run_confined_get_their_files_and_report_termination_messages() {
    if !is_root() {
        eprintln!("skipped: the process runtime confines containers only as root");
        return;
    }
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "process").await;
    let pods = cluster.client.pods("default");

    // Confined: a user, no capabilities, a read-only root; files the
    // kubelet writes (downward API, a projected volume) at their paths.
    let mut c = container(
        "app",
        "id -u; touch /written 2>/dev/null && echo root-writable || echo root-read-only; \
         grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; hostname; \
         cat /etc/podinfo/labels; echo; cat /etc/podinfo/cpu; echo; \
         cat /var/run/projected/name; echo; echo \"cpu=$CPU_MILLI\"; \
         test -s /var/run/projected/token && echo token-present; \
         cat /tmp/post-start 2>/dev/null || true; exec sleep 3600",
    );
    c.security_context = Some(SecurityContext {
        run_as_user: Some(1000),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: vec!["ALL".into()],
            add: vec![],
        }),
        ..Default::default()
    });
    c.resources = Some(ResourceRequirements {
        limits: [("cpu".to_owned(), "250m".to_owned())].into(),
        requests: Default::default(),
    });
    c.env = vec![EnvVar {
        name: "CPU_MILLI".into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                resource: "limits.cpu".into(),
                divisor: "1m".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    c.volume_mounts = vec![
        volume_mount("podinfo", "/etc/podinfo"),
        volume_mount("projected", "/var/run/projected"),
    ];
    let mut p = pod("confined", &k.name, vec![c]);
    let meta = p.metadata.as_mut().unwrap();
    meta.labels.insert("app".into(), "shop".into());
    let spec = p.spec.as_mut().unwrap();
    spec.hostname = "shop-1".into();
    spec.volumes = vec![
        Volume {
            name: "podinfo".into(),
            downward_api: Some(skiff::api::core::v1::DownwardApiVolumeSource {
                items: vec![
                    DownwardApiVolumeFile {
                        path: "labels".into(),
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.labels".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    DownwardApiVolumeFile {
                        path: "cpu".into(),
                        resource_field_ref: Some(ResourceFieldSelector {
                            container_name: "app".into(),
                            resource: "limits.cpu".into(),
                            divisor: "1m".into(),
                        }),
                        ..Default::default()
                    },
                ],
                default_mode: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "projected".into(),
            projected: Some(ProjectedVolumeSource {
                sources: vec![
                    VolumeProjection {
                        downward_api: Some(DownwardApiProjection {
                            items: vec![DownwardApiVolumeFile {
                                path: "name".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.name".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: "vault".into(),
                            expiration_seconds: Some(3600),
                            path: "token".into(),
                        }),
                        ..Default::default()
                    },
                ],
                default_mode: None,
            }),
            ..Default::default()
        },
    ];
    pods.create(&p).await.unwrap();
    let log = log_with(&cluster, "confined", "app", "cpu=").await;
    assert!(log.starts_with("1000\nroot-read-only\n"), "{log}");
    assert_eq!(caps(&log, "CapBnd"), 0, "{log}");
    assert!(log.contains("NoNewPrivs:\t1\nshop-1\n"), "{log}");
    assert!(log.contains("app=\"shop\"\n"), "{log}");
    assert!(log.contains("\n250\nconfined\ncpu=250\n"), "{log}");

    // What it cannot enforce it refuses, saying why.
    let mut c = container("app", "exec sleep 3600");
    c.security_context = Some(SecurityContext {
        seccomp_profile: Some(SeccompProfile {
            r#type: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    pods.create(&pod("seccomp", &k.name, vec![c]))
        .await
        .unwrap();
    let p = config_error(&cluster, "seccomp").await;
    assert!(
        waiting_message(&p, "app").contains("cannot apply the seccomp profile RuntimeDefault"),
        "{}",
        waiting_message(&p, "app")
    );
    let events = skiff(&cluster.server, &["get", "events"]).await;
    assert!(
        events.stdout.contains("cannot apply the seccomp profile"),
        "{}",
        events.stdout
    );

    // Termination messages: written to the file, or the log's tail.
    let mut written = container(
        "written",
        "echo 'bye for now' > /dev/termination-log; exit 1",
    );
    written.termination_message_policy = "File".into();
    let mut fallback = container("fallback", "echo 'oops: disk full'; exit 2");
    fallback.termination_message_policy = "FallbackToLogsOnError".into();
    let mut hooked = container("hooked", "sleep 0.5; cat /tmp/hook/post-start; exit 0");
    hooked.volume_mounts = vec![volume_mount("hook", "/tmp/hook")];
    hooked.lifecycle = Some(Lifecycle {
        post_start: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo post-start-ran > /tmp/hook/post-start".into(),
                ],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut p = pod("ending", &k.name, vec![written, fallback, hooked]);
    let spec = p.spec.as_mut().unwrap();
    spec.restart_policy = "Never".into();
    spec.volumes = vec![Volume {
        name: "hook".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }];
    pods.create(&p).await.unwrap();
    let p = cluster
        .pod_until("ending", "Failed", |p| phase(p) == "Failed")
        .await;
    let message = |name: &str| -> String {
        p.status
            .as_ref()
            .unwrap()
            .container_statuses
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.state.as_ref()?.terminated.as_ref())
            .map(|t| t.message.clone())
            .unwrap_or_default()
    };
    assert_eq!(message("written"), "bye for now\n");
    assert_eq!(message("fallback"), "oops: disk full\n");
    assert_eq!(message("hooked"), "", "succeeded: no fallback");
    let hooked = skiff(&cluster.server, &["logs", "ending", "-c", "hooked"]).await;
    assert_eq!(hooked.stdout, "post-start-ran\n", "{hooked:?}");
}

/// Limits the kubelet enforces on any runtime: an emptyDir over its
/// sizeLimit gets the pod evicted, a sysctl outside the safe set fails the
/// pod; and the pod's /etc/hosts carries its host aliases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pods_over_their_empty_dir_limit_are_evicted_and_unsafe_sysctls_refused() {
    if !is_root() {
        eprintln!("skipped: the process runtime mounts /etc/hosts only as root");
        return;
    }
    let cluster = Cluster::start().await;
    let (_net, k) = node(&cluster, "process").await;
    let pods = cluster.client.pods("default");

    let mut c = container(
        "app",
        "cat /etc/hosts; dd if=/dev/zero of=/scratch/fill bs=1024 count=2048 2>/dev/null; \
         echo filled; exec sleep 3600",
    );
    c.volume_mounts = vec![volume_mount("scratch", "/scratch")];
    let mut p = pod("filler", &k.name, vec![c]);
    let spec = p.spec.as_mut().unwrap();
    spec.volumes = vec![Volume {
        name: "scratch".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: String::new(),
            size_limit: "1Mi".into(),
        }),
        ..Default::default()
    }];
    spec.host_aliases = vec![skiff::api::core::v1::HostAlias {
        ip: "10.1.2.3".into(),
        hostnames: vec!["db.local".into(), "cache.local".into()],
    }];
    pods.create(&p).await.unwrap();
    let log = log_with(&cluster, "filler", "app", "filled").await;
    assert!(
        log.contains("# Entries added by HostAliases.\n10.1.2.3\tdb.local\tcache.local\n"),
        "{log}"
    );
    let p = cluster
        .pod_until("filler", "evicted", |p| phase(p) == "Failed")
        .await;
    let status = p.status.unwrap();
    assert_eq!(status.reason, "Evicted");
    assert_eq!(
        status.message,
        "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\"."
    );

    let mut p = pod("tuned", &k.name, vec![container("app", "exec sleep 3600")]);
    p.spec.as_mut().unwrap().security_context = Some(PodSecurityContext {
        sysctls: vec![skiff::api::core::v1::Sysctl {
            name: "net.core.somaxconn".into(),
            value: "1024".into(),
        }],
        ..Default::default()
    });
    pods.create(&p).await.unwrap();
    let p = cluster
        .pod_until("tuned", "failed", |p| phase(p) == "Failed")
        .await;
    let status = p.status.unwrap();
    assert_eq!(status.reason, "SysctlForbidden");
    assert_eq!(
        status.message,
        "Pod forbidden sysctl: \"net.core.somaxconn\" not allowlisted"
    );
}
