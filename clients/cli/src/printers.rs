//! Tables as kubectl prints them: per-kind columns read from an object's
//! JSON, ages, and alignment.

use std::time::SystemTime;

use serde_json::Value;

/// One column of a table.
pub struct Column {
    /// Header.
    pub name: &'static str,
    /// Shown only with `-o wide`.
    pub wide: bool,
    /// The cell of an object.
    pub cell: fn(&Value) -> String,
}

fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn n(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

/// Age of an object from its creation timestamp, as kubectl writes it.
pub fn age(v: &Value) -> String {
    let ts = s(v, "/metadata/creationTimestamp");
    since(&ts)
}

/// A duration as kubectl's HumanDuration writes it: "45s", "3m12s", "25m",
/// "2h5m", "30h", "3d4h", "200d", "2y30d".
pub fn human_duration(secs: i64) -> String {
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    let years = hours / 24 / 365;
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// Time since an RFC 3339 timestamp, as kubectl writes it ("5s", "3m12s", "2h", "4d").
pub fn since(ts: &str) -> String {
    let Ok(t) = ts.parse::<prost_types::Timestamp>() else {
        return "<unknown>".into();
    };
    let Ok(t) = SystemTime::try_from(t) else {
        return "<unknown>".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    human_duration(secs)
}

/// The object's name.
pub fn name(v: &Value) -> String {
    s(v, "/metadata/name")
}

fn pod_ready(v: &Value) -> String {
    let statuses = v
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let total = v
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|a| a.len())
        .unwrap_or(0);
    let ready = statuses
        .map(|a| {
            a.iter()
                .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
                .count()
        })
        .unwrap_or(0);
    format!("{ready}/{total}")
}

/// The STATUS column of a pod, as kubectl derives it.
pub fn pod_status(v: &Value) -> String {
    if v.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    // An init container still running: Init:N/M (N of M done).
    if let Some(inits) = v
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
    {
        let done = inits
            .iter()
            .take_while(|c| {
                c.pointer("/state/terminated/exitCode")
                    .and_then(Value::as_i64)
                    == Some(0)
            })
            .count();
        if done < inits.len()
            && inits
                .get(done)
                .is_some_and(|c| c.pointer("/state/running").is_some())
        {
            return format!("Init:{done}/{}", inits.len());
        }
    }
    let all = ["/status/initContainerStatuses", "/status/containerStatuses"];
    for (i, p) in all.iter().enumerate() {
        if let Some(list) = v.pointer(p).and_then(Value::as_array) {
            for c in list {
                let waiting = c.pointer("/state/waiting/reason").and_then(Value::as_str);
                if let Some(r) = waiting
                    && !r.is_empty()
                    && r != "PodInitializing"
                {
                    return if i == 0 {
                        format!("Init:{r}")
                    } else {
                        r.to_owned()
                    };
                }
                if i == 1
                    && let Some(r) = c
                        .pointer("/state/terminated/reason")
                        .and_then(Value::as_str)
                    && s(v, "/status/phase") == "Running"
                {
                    return r.to_owned();
                }
            }
        }
    }
    let reason = s(v, "/status/reason");
    if !reason.is_empty() {
        return reason;
    }
    let phase = s(v, "/status/phase");
    if phase.is_empty() {
        "Pending".into()
    } else {
        phase
    }
}

fn restarts(v: &Value) -> String {
    v.pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
                .sum::<i64>()
        })
        .unwrap_or(0)
        .to_string()
}

fn condition(v: &Value, kind: &str) -> Option<String> {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        .and_then(|c| c.get("status").and_then(Value::as_str).map(str::to_owned))
}

fn node_status(v: &Value) -> String {
    let mut status = match condition(v, "Ready").as_deref() {
        Some("True") => "Ready".to_owned(),
        Some("False") => "NotReady".to_owned(),
        _ => "Unknown".to_owned(),
    };
    if v.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_ip(v: &Value) -> String {
    v.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
        })
        .and_then(|x| x.get("address").and_then(Value::as_str))
        .unwrap_or("<none>")
        .to_owned()
}

fn ports(v: &Value) -> String {
    let Some(ports) = v.pointer("/spec/ports").and_then(Value::as_array) else {
        return "<none>".into();
    };
    ports
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn endpoints(v: &Value) -> String {
    let mut out = Vec::new();
    for subset in v
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<i64> = subset
            .get("ports")
            .and_then(Value::as_array)
            .map(|p| {
                p.iter()
                    .filter_map(|p| p.get("port").and_then(Value::as_i64))
                    .collect()
            })
            .unwrap_or_default();
        for a in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = a.get("ip").and_then(Value::as_str).unwrap_or("");
            if ports.is_empty() {
                out.push(ip.to_owned());
            }
            for p in &ports {
                out.push(format!("{ip}:{p}"));
            }
        }
    }
    if out.is_empty() {
        return "<none>".into();
    }
    let more = out.len().saturating_sub(3);
    let mut s = out.into_iter().take(3).collect::<Vec<_>>().join(",");
    if more > 0 {
        s.push_str(&format!(" + {more} more..."));
    }
    s
}

fn selector(v: &Value) -> String {
    v.pointer("/spec/selector")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .map(or_none)
        .unwrap_or_else(|| "<none>".into())
}

fn timestamp_secs(v: &Value, pointer: &str) -> Option<i64> {
    let t = s(v, pointer).parse::<prost_types::Timestamp>().ok()?;
    Some(t.seconds)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn has_condition(v: &Value, kind: &str) -> bool {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(kind)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn job_status(v: &Value) -> String {
    if has_condition(v, "Failed") {
        "Failed"
    } else if has_condition(v, "Complete") {
        "Complete"
    } else if has_condition(v, "Suspended") {
        "Suspended"
    } else if has_condition(v, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(v, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
    .into()
}

fn job_completions(v: &Value) -> String {
    let succeeded = n(v, "/status/succeeded");
    match v.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match v.pointer("/spec/parallelism").and_then(Value::as_i64) {
            Some(p) if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    }
}

fn job_duration(v: &Value) -> String {
    let Some(start) = timestamp_secs(v, "/status/startTime") else {
        return String::new();
    };
    let end = timestamp_secs(v, "/status/completionTime").unwrap_or_else(now_secs);
    human_duration(end - start)
}

/// Access modes as kubectl abbreviates them (RWO, ROX, RWX, RWOP).
fn access_modes(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn template_images(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("image").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn map_selector(v: &Value, pointer: &str) -> String {
    or_none(
        v.pointer(pointer)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, val)| format!("{k}={}", val.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    )
}

/// The value at a dotted field path (proto or JSON field names), as a cell.
pub fn at_path(v: &Value, path: &str) -> String {
    let mut current = v;
    for part in path.split('.') {
        let camel = camel(part);
        match current.get(part).or_else(|| current.get(&camel)) {
            Some(next) => current = next,
            None => return "<none>".to_owned(),
        }
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Null => "<none>".to_owned(),
        other => other.to_string(),
    }
}

/// `snake_case` → `snakeCase` (protobuf's JSON names).
fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The columns of a kind (NAME first; NAMESPACE is added by the caller).
pub fn columns(kind: &str) -> Vec<Column> {
    let c = |name, wide, cell| Column { name, wide, cell };
    let mut cols = vec![c("NAME", false, name as fn(&Value) -> String)];
    match kind {
        "Pod" => {
            cols.push(c("READY", false, pod_ready));
            cols.push(c("STATUS", false, pod_status));
            cols.push(c("RESTARTS", false, restarts));
            cols.push(c("AGE", false, age));
            cols.push(c("IP", true, |v| or_none(s(v, "/status/podIP"))));
            cols.push(c("NODE", true, |v| or_none(s(v, "/spec/nodeName"))));
        }
        "Node" => {
            cols.push(c("STATUS", false, node_status));
            cols.push(c("AGE", false, age));
            cols.push(c("VERSION", false, |v| {
                or_none(s(v, "/status/nodeInfo/kubeletVersion"))
            }));
            cols.push(c("INTERNAL-IP", true, node_ip));
            cols.push(c("POD-CIDR", true, |v| or_none(s(v, "/spec/podCIDR"))));
        }
        "Service" => {
            cols.push(c("TYPE", false, |v| {
                let t = s(v, "/spec/type");
                if t.is_empty() { "ClusterIP".into() } else { t }
            }));
            cols.push(c("CLUSTER-IP", false, |v| or_none(s(v, "/spec/clusterIP"))));
            cols.push(c("EXTERNAL-IP", false, |v| {
                v.pointer("/spec/externalIPs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .map(or_none)
                    .unwrap_or_else(|| "<none>".into())
            }));
            cols.push(c("PORT(S)", false, ports));
            cols.push(c("AGE", false, age));
            cols.push(c("SELECTOR", true, selector));
        }
        "Endpoints" => {
            cols.push(c("ENDPOINTS", false, endpoints));
            cols.push(c("AGE", false, age));
        }
        "Deployment" => {
            cols.push(c("READY", false, |v| {
                format!(
                    "{}/{}",
                    n(v, "/status/readyReplicas"),
                    v.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )
            }));
            cols.push(c("UP-TO-DATE", false, |v| {
                n(v, "/status/updatedReplicas").to_string()
            }));
            cols.push(c("AVAILABLE", false, |v| {
                n(v, "/status/availableReplicas").to_string()
            }));
            cols.push(c("AGE", false, age));
        }
        "ReplicaSet" => {
            cols.push(c("DESIRED", false, |v| {
                v.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .to_string()
            }));
            cols.push(c("CURRENT", false, |v| {
                n(v, "/status/replicas").to_string()
            }));
            cols.push(c("READY", false, |v| {
                n(v, "/status/readyReplicas").to_string()
            }));
            cols.push(c("AGE", false, age));
        }
        "Namespace" => {
            cols.push(c("STATUS", false, |v| or_none(s(v, "/status/phase"))));
            cols.push(c("AGE", false, age));
        }
        "Event" => {
            cols.retain(|_| false);
            cols.push(c("LAST SEEN", false, |v| since(&s(v, "/lastTimestamp"))));
            cols.push(c("TYPE", false, |v| s(v, "/type")));
            cols.push(c("REASON", false, |v| s(v, "/reason")));
            cols.push(c("OBJECT", false, |v| {
                format!(
                    "{}/{}",
                    s(v, "/involvedObject/kind").to_ascii_lowercase(),
                    s(v, "/involvedObject/name")
                )
            }));
            cols.push(c("MESSAGE", false, |v| s(v, "/message")));
        }
        "Lease" => {
            cols.push(c("HOLDER", false, |v| s(v, "/spec/holderIdentity")));
            cols.push(c("AGE", false, age));
        }
        "Job" => {
            cols.push(c("STATUS", false, job_status));
            cols.push(c("COMPLETIONS", false, job_completions));
            cols.push(c("DURATION", false, job_duration));
            cols.push(c("AGE", false, age));
            cols.push(c("IMAGES", true, |v| {
                template_images(v, "/spec/template/spec/containers")
            }));
            cols.push(c("SELECTOR", true, |v| {
                map_selector(v, "/spec/selector/matchLabels")
            }));
        }
        "CronJob" => {
            cols.push(c("SCHEDULE", false, |v| s(v, "/spec/schedule")));
            cols.push(c("TIMEZONE", false, |v| or_none(s(v, "/spec/timeZone"))));
            cols.push(c("SUSPEND", false, |v| {
                (v.pointer("/spec/suspend") == Some(&Value::Bool(true))).to_string()
            }));
            cols.push(c("ACTIVE", false, |v| {
                v.pointer("/status/active")
                    .and_then(Value::as_array)
                    .map(|a| a.len())
                    .unwrap_or(0)
                    .to_string()
            }));
            cols.push(c("LAST SCHEDULE", false, |v| {
                match timestamp_secs(v, "/status/lastScheduleTime") {
                    Some(t) => human_duration(now_secs() - t),
                    None => "<none>".into(),
                }
            }));
            cols.push(c("AGE", false, age));
            cols.push(c("IMAGES", true, |v| {
                template_images(v, "/spec/jobTemplate/spec/template/spec/containers")
            }));
        }
        "DaemonSet" => {
            cols.push(c("DESIRED", false, |v| {
                n(v, "/status/desiredNumberScheduled").to_string()
            }));
            cols.push(c("CURRENT", false, |v| {
                n(v, "/status/currentNumberScheduled").to_string()
            }));
            cols.push(c("READY", false, |v| {
                n(v, "/status/numberReady").to_string()
            }));
            cols.push(c("UP-TO-DATE", false, |v| {
                n(v, "/status/updatedNumberScheduled").to_string()
            }));
            cols.push(c("AVAILABLE", false, |v| {
                n(v, "/status/numberAvailable").to_string()
            }));
            cols.push(c("NODE SELECTOR", false, |v| {
                map_selector(v, "/spec/template/spec/nodeSelector")
            }));
            cols.push(c("AGE", false, age));
            cols.push(c("IMAGES", true, |v| {
                template_images(v, "/spec/template/spec/containers")
            }));
        }
        "StatefulSet" => {
            cols.push(c("READY", false, |v| {
                format!(
                    "{}/{}",
                    n(v, "/status/readyReplicas"),
                    v.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )
            }));
            cols.push(c("AGE", false, age));
            cols.push(c("IMAGES", true, |v| {
                template_images(v, "/spec/template/spec/containers")
            }));
        }
        "PersistentVolume" => {
            cols.push(c("CAPACITY", false, |v| s(v, "/spec/capacity/storage")));
            cols.push(c("ACCESS MODES", false, |v| {
                access_modes(v, "/spec/accessModes")
            }));
            cols.push(c("RECLAIM POLICY", false, |v| {
                s(v, "/spec/persistentVolumeReclaimPolicy")
            }));
            cols.push(c("STATUS", false, |v| s(v, "/status/phase")));
            cols.push(c("CLAIM", false, |v| {
                let name = s(v, "/spec/claimRef/name");
                if name.is_empty() {
                    String::new()
                } else {
                    format!("{}/{name}", s(v, "/spec/claimRef/namespace"))
                }
            }));
            cols.push(c("STORAGECLASS", false, |v| s(v, "/spec/storageClassName")));
            cols.push(c("REASON", false, |v| s(v, "/status/reason")));
            cols.push(c("AGE", false, age));
        }
        "PersistentVolumeClaim" => {
            cols.push(c("STATUS", false, |v| s(v, "/status/phase")));
            cols.push(c("VOLUME", false, |v| s(v, "/spec/volumeName")));
            cols.push(c("CAPACITY", false, |v| s(v, "/status/capacity/storage")));
            cols.push(c("ACCESS MODES", false, |v| {
                access_modes(v, "/status/accessModes")
            }));
            cols.push(c("STORAGECLASS", false, |v| {
                or_none(s(v, "/spec/storageClassName"))
            }));
            cols.push(c("AGE", false, age));
        }
        "StorageClass" => {
            cols[0] = c("NAME", false, |v| {
                let default = v
                    .pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class")
                    .and_then(Value::as_str)
                    == Some("true");
                let name = s(v, "/metadata/name");
                if default {
                    format!("{name} (default)")
                } else {
                    name
                }
            });
            cols.push(c("PROVISIONER", false, |v| s(v, "/provisioner")));
            cols.push(c("RECLAIMPOLICY", false, |v| s(v, "/reclaimPolicy")));
            cols.push(c("VOLUMEBINDINGMODE", false, |v| {
                s(v, "/volumeBindingMode")
            }));
            cols.push(c("ALLOWVOLUMEEXPANSION", false, |v| {
                (v.pointer("/allowVolumeExpansion") == Some(&Value::Bool(true))).to_string()
            }));
            cols.push(c("AGE", false, age));
        }
        "ConfigMap" => {
            cols.push(c("DATA", false, |v| {
                let count = |field: &str| {
                    v.get(field)
                        .and_then(Value::as_object)
                        .map(|m| m.len())
                        .unwrap_or(0)
                };
                (count("data") + count("binaryData")).to_string()
            }));
            cols.push(c("AGE", false, age));
        }
        "Secret" => {
            cols.push(c("TYPE", false, |v| or_none(s(v, "/type"))));
            cols.push(c("DATA", false, |v| {
                v.get("data")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0)
                    .to_string()
            }));
            cols.push(c("AGE", false, age));
        }
        "ResourceQuota" => {
            cols.push(c("AGE", false, age));
            // As kubectl: "pods: 3/10, requests.cpu: 300m/4".
            cols.push(c("USED/HARD", false, |v| {
                let hard = v.pointer("/spec/hard").and_then(Value::as_object);
                hard.map(|h| {
                    h.iter()
                        .map(|(k, limit)| {
                            let used = v
                                .pointer(&format!("/status/used/{}", k.replace('/', "~1")))
                                .and_then(Value::as_str)
                                .unwrap_or("0");
                            format!("{k}: {used}/{}", limit.as_str().unwrap_or(""))
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
            }));
        }
        _ => cols.push(c("AGE", false, age)),
    }
    cols
}

/// Renders rows aligned under headers, three spaces apart.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubectls() {
        for (secs, text) in [
            (5, "5s"),
            (119, "119s"),
            (167, "2m47s"),
            (180, "3m"),
            (1500, "25m"),
            (3 * 3600 + 300, "3h5m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (200 * 86400, "200d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(secs), text, "{secs} s");
        }
    }

    #[test]
    fn pod_columns_read_like_kubectl() {
        let pod = serde_json::json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2000-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "127.1.0.2", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let cells: Vec<String> = columns("Pod").iter().map(|c| (c.cell)(&pod)).collect();
        assert_eq!(cells[..4], ["web-1", "1/2", "CrashLoopBackOff", "3"]);
        assert!(cells[4].ends_with('y'), "{}", cells[4]);
        assert_eq!(cells[5..], ["127.1.0.2", "n1"]);
    }

    #[test]
    fn a_pod_running_its_init_containers_reads_init_n_of_m() {
        let pod = |init: serde_json::Value| {
            serde_json::json!({"status": {"phase": "Pending", "initContainerStatuses": init,
                "containerStatuses": [{"name": "main", "state": {"waiting": {"reason": "PodInitializing"}}}]}})
        };
        let running = pod(serde_json::json!([
            {"name": "a", "state": {"terminated": {"exitCode": 0}}},
            {"name": "b", "state": {"running": {}}}
        ]));
        assert_eq!(pod_status(&running), "Init:1/2");
        let crashing = pod(serde_json::json!([
            {"name": "a", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
        ]));
        assert_eq!(pod_status(&crashing), "Init:CrashLoopBackOff");
    }

    #[test]
    fn tables_align() {
        let t = render(
            &["NAME", "AGE"],
            &[
                vec!["a".into(), "1s".into()],
                vec!["longer".into(), "2m".into()],
            ],
        );
        assert_eq!(t, "NAME     AGE\na        1s\nlonger   2m\n");
    }
}
