//! What real applications write in their pod specs, through a real gRPC
//! server, on both storage backends: security contexts, gRPC probes,
//! lifecycle hooks, termination messages, resource and downward-API
//! references, projected volumes, DNS settings and placement constraints
//! are stored as written with Kubernetes' defaults; every bad field is
//! refused with INVALID_ARGUMENT naming it and nothing stored; priority
//! classes give pods their priority; service-account tokens are issued
//! for audiences and pods.

use skiff::client::dynamic::DynamicClient;
use skiff::client::{Error, Transport};
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::testing::{EtcdServer, TestServer};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let server = skiff_apiserver::testing::TestServer::embedded(dir.path()).await;
                    super::$name(&server).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let etcd = super::EtcdServer::start().await;
                    let storage = super::EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint), "/skiff")
                        .await
                        .unwrap();
                    let server = super::TestServer::start(std::sync::Arc::new(storage)).await;
                    super::$name(&server).await;
                }
            )*
        }
    };
}

on_both_backends!(
    real_pod_specs_are_stored_as_written_with_kubernetes_defaults,
    each_bad_pod_field_is_refused_by_name_and_nothing_is_stored,
    priority_classes_give_pods_their_priority,
);

/// A pod with most of what the issue lists, as a user writes it.
const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: shop, namespace: default}
spec:
  serviceAccountName: default
  terminationGracePeriodSeconds: 5
  securityContext:
    fsGroup: 1000
    runAsGroup: 1000
    runAsNonRoot: true
    runAsUser: 1000
    supplementalGroups: [2000]
    seccompProfile: {type: RuntimeDefault}
    sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]
  dnsPolicy: ClusterFirst
  dnsConfig:
    nameservers: [10.0.0.53]
    searches: [shop.example.com]
    options: [{name: ndots, value: "2"}, {name: edns0}]
  hostAliases: [{ip: 10.1.2.3, hostnames: [db.local, cache.local]}]
  hostname: shop-0
  subdomain: shop
  shareProcessNamespace: true
  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector: {matchLabels: {app: shop}}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector: {matchLabels: {app: shop}}
  volumes:
  - name: tmp
    emptyDir: {medium: Memory, sizeLimit: 64Mi}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: cpu, resourceFieldRef: {containerName: server, resource: limits.cpu, divisor: 1m}}
  - name: token
    projected:
      sources:
      - serviceAccountToken: {audience: vault, expirationSeconds: 3600, path: token}
      - configMap: {name: settings, items: [{key: a, path: a.conf}], optional: true}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
  containers:
  - name: server
    image: gcr.io/google-samples/microservices-demo/emailservice:v0.10.0
    ports: [{containerPort: 8080}]
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}
      privileged: false
      readOnlyRootFilesystem: true
    readinessProbe:
      periodSeconds: 5
      grpc: {port: 8080}
    livenessProbe:
      grpc: {port: 8080, service: email}
      terminationGracePeriodSeconds: 2
    startupProbe:
      httpGet:
        path: /_healthz
        port: 8080
        scheme: HTTPS
        httpHeaders: [{name: Cookie, value: shop_session-id=x-readiness-probe}]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "echo started"]}}
      preStop: {sleep: {seconds: 3}}
    terminationMessagePolicy: FallbackToLogsOnError
    env:
    - name: CPU_LIMIT
      valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}
    resources:
      limits: {cpu: 200m, memory: 128Mi}
    volumeMounts:
    - {name: tmp, mountPath: /tmp}
    - {name: info, mountPath: /etc/podinfo, readOnly: true}
    - {name: token, mountPath: /var/run/secrets/tokens}
    - {name: tmp, mountPath: /logs, subPathExpr: $(POD_NAME)}
"#;

async fn create(t: &Transport, yaml: &str) -> Result<serde_json::Value, Error> {
    let mut docs = skiff::manifest::parse(yaml, "test").expect("the manifest parses");
    let m = docs.remove(0);
    let created = DynamicClient::new(t.clone())
        .create(&m.kind, m.object)
        .await?;
    Ok(skiff::manifest::message_value(&created))
}

async fn real_pod_specs_are_stored_as_written_with_kubernetes_defaults(s: &TestServer) {
    let t = s.transport().await;
    let pod = create(&t, POD).await.expect("the pod is accepted");
    let spec = &pod["spec"];
    // As written.
    assert_eq!(spec["securityContext"]["runAsUser"], 1000);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    assert_eq!(spec["dnsConfig"]["options"][0]["value"], "2");
    assert_eq!(spec["hostAliases"][0]["hostnames"][1], "cache.local");
    assert_eq!(spec["shareProcessNamespace"], true);
    assert_eq!(
        spec["topologySpreadConstraints"][0]["whenUnsatisfiable"],
        "ScheduleAnyway"
    );
    assert_eq!(
        spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        100
    );
    assert_eq!(spec["volumes"][0]["emptyDir"]["medium"], "Memory");
    assert_eq!(
        spec["volumes"][1]["downwardAPI"]["items"][1]["resourceFieldRef"]["divisor"],
        "1m"
    );
    assert_eq!(
        spec["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "vault"
    );
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["readinessProbe"]["grpc"]["port"], 8080);
    assert_eq!(c["livenessProbe"]["grpc"]["service"], "email");
    assert_eq!(c["livenessProbe"]["terminationGracePeriodSeconds"], 2);
    assert_eq!(
        c["startupProbe"]["httpGet"]["httpHeaders"][0]["name"],
        "Cookie"
    );
    assert_eq!(c["lifecycle"]["preStop"]["sleep"]["seconds"], 3);
    assert_eq!(
        c["env"][0]["valueFrom"]["resourceFieldRef"]["resource"],
        "limits.cpu"
    );
    assert_eq!(c["volumeMounts"][3]["subPathExpr"], "$(POD_NAME)");
    // Kubernetes' defaults.
    assert_eq!(spec["dnsPolicy"], "ClusterFirst");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent", "a tagged image");
    assert_eq!(c["readinessProbe"]["timeoutSeconds"], 1);
    assert_eq!(c["readinessProbe"]["failureThreshold"], 3);
    let latest = POD
        .replace("name: shop, namespace", "name: latest, namespace")
        .replace(
            "gcr.io/google-samples/microservices-demo/emailservice:v0.10.0",
            "busybox",
        );
    let pod = create(&t, &latest).await.unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["imagePullPolicy"], "Always",
        "an untagged image is pulled Always, as in Kubernetes"
    );
}

async fn each_bad_pod_field_is_refused_by_name_and_nothing_is_stored(s: &TestServer) {
    let t = s.transport().await;
    let cases: &[(&str, &str, &str)] = &[
        (
            "runAsUser: 1000\n",
            "runAsUser: -1\n",
            "spec.securityContext.runAsUser",
        ),
        (
            "seccompProfile: {type: RuntimeDefault}",
            "seccompProfile: {type: Strict}",
            "spec.securityContext.seccompProfile.type",
        ),
        (
            "name: net.ipv4.ip_unprivileged_port_start",
            "name: Net..bad",
            "spec.securityContext.sysctls[0].name",
        ),
        (
            "privileged: false",
            "privileged: true",
            "spec.containers[0].securityContext",
        ),
        (
            "dnsPolicy: ClusterFirst",
            "dnsPolicy: Cluster",
            "spec.dnsPolicy",
        ),
        (
            "nameservers: [10.0.0.53]",
            "nameservers: [not-an-ip]",
            "spec.dnsConfig.nameservers[0]",
        ),
        (
            "hostnames: [db.local, cache.local]",
            "hostnames: [Bad_Host]",
            "spec.hostAliases[0].hostnames[0]",
        ),
        (
            "whenUnsatisfiable: ScheduleAnyway",
            "whenUnsatisfiable: Sometimes",
            "spec.topologySpreadConstraints[0].whenUnsatisfiable",
        ),
        (
            "weight: 100",
            "weight: 0",
            "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
        ),
        (
            "medium: Memory",
            "medium: Tape",
            "spec.volumes[0].emptyDir.medium",
        ),
        (
            "expirationSeconds: 3600",
            "expirationSeconds: 60",
            "spec.volumes[2].projected.sources[0].serviceAccountToken.expirationSeconds",
        ),
        (
            "fieldPath: metadata.labels}",
            "fieldPath: status.podIP}",
            "spec.volumes[1].downwardAPI.items[0].fieldRef.fieldPath",
        ),
        (
            "grpc: {port: 8080}",
            "grpc: {port: 70000}",
            "spec.containers[0].readinessProbe.grpc.port",
        ),
        (
            "periodSeconds: 5\n      grpc: {port: 8080}",
            "periodSeconds: 5\n      terminationGracePeriodSeconds: 3\n      grpc: {port: 8080}",
            "spec.containers[0].readinessProbe.terminationGracePeriodSeconds",
        ),
        (
            "name: Cookie",
            "name: \"Bad Header\"",
            "spec.containers[0].startupProbe.httpGet.httpHeaders[0].name",
        ),
        (
            "preStop: {sleep: {seconds: 3}}",
            "preStop: {sleep: {seconds: 0}}",
            "spec.containers[0].lifecycle.preStop.sleep.seconds",
        ),
        (
            "terminationMessagePolicy: FallbackToLogsOnError",
            "terminationMessagePolicy: Always",
            "spec.containers[0].terminationMessagePolicy",
        ),
        (
            "{resource: limits.cpu, divisor: 1m}}\n    resources",
            "{resource: limits.gpu, divisor: 1m}}\n    resources",
            "spec.containers[0].env[0].valueFrom.resourceFieldRef.resource",
        ),
        (
            "subPathExpr: $(POD_NAME)",
            "subPathExpr: ../$(POD_NAME)",
            "spec.containers[server].volumeMounts[3].subPathExpr",
        ),
    ];
    for (from, to, field) in cases {
        assert!(POD.contains(from), "the test pod has {from:?}");
        let bad = POD.replacen(from, to, 1);
        let before = s.storage.current_revision().await.unwrap();
        match create(&t, &bad).await {
            Err(Error::Invalid { fields, .. }) => assert!(
                fields.iter().any(|(f, _)| f == field),
                "{to:?}: expected {field} among {fields:?}"
            ),
            other => panic!("{to:?}: expected INVALID_ARGUMENT naming {field}, got {other:?}"),
        }
        assert_eq!(
            s.storage.current_revision().await.unwrap(),
            before,
            "{to:?}: nothing is stored"
        );
    }
}

const CLASS: &str = r#"
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
globalDefault: true
description: important work
"#;

fn pod_with(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n{extra}  containers: [{{name: c, image: busybox}}]\n"
    )
}

async fn priority_classes_give_pods_their_priority(s: &TestServer) {
    let t = s.transport().await;
    // The system classes exist from the first start.
    let client = DynamicClient::new(t.clone());
    let kind = skiff::client::dynamic::DynamicKind::of(
        skiff::KindInfo::by_api_version("scheduling.k8s.io/v1", "PriorityClass").unwrap(),
    );
    let critical = client
        .get(&kind, "", "system-node-critical")
        .await
        .expect("system-node-critical exists");
    assert_eq!(
        skiff::manifest::message_value(&critical)["value"],
        2_000_001_000
    );
    let class = create(&t, CLASS).await.unwrap();
    assert_eq!(class["preemptionPolicy"], "PreemptLowerPriority");
    // A pod naming the class gets its value; one naming none gets the default.
    let named = create(&t, &pod_with("named", "  priorityClassName: high\n"))
        .await
        .unwrap();
    assert_eq!(named["spec"]["priority"], 1000);
    assert_eq!(named["spec"]["preemptionPolicy"], "PreemptLowerPriority");
    let defaulted = create(&t, &pod_with("defaulted", "")).await.unwrap();
    assert_eq!(defaulted["spec"]["priorityClassName"], "high");
    assert_eq!(defaulted["spec"]["priority"], 1000);
    // Refusals, with nothing stored.
    let before = s.storage.current_revision().await.unwrap();
    match create(&t, &pod_with("ghost", "  priorityClassName: nope\n")).await {
        Err(Error::Forbidden(m)) => assert!(m.contains("no PriorityClass with name nope"), "{m}"),
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    match create(
        &t,
        &pod_with("mismatch", "  priorityClassName: high\n  priority: 5\n"),
    )
    .await
    {
        Err(Error::Forbidden(m)) => assert!(m.contains("computed 1000"), "{m}"),
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    match create(&t, &CLASS.replace("name: high", "name: other")).await {
        Err(Error::Forbidden(m)) => assert!(m.contains("already marked as default"), "{m}"),
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    match create(
        &t,
        &CLASS
            .replace("name: high", "name: huge")
            .replace("value: 1000", "value: 1500000000")
            .replace("globalDefault: true", "globalDefault: false"),
    )
    .await
    {
        Err(Error::Invalid { fields, .. }) => assert_eq!(fields[0].0, "value"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert_eq!(s.storage.current_revision().await.unwrap(), before);
}
