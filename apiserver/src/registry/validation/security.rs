//! Security contexts of pods and containers: ids in range, capabilities,
//! seccomp profiles, sysctl names, and the combinations Kubernetes refuses
//! (privileged without privilege escalation). Whether a node can enforce
//! them is the kubelet's question, not this module's.
//!
//! Pure checks; no I/O and no defaulting.

use skiff::api::core::v1 as core;

use super::Violations;
use crate::error::FieldViolation;

/// Largest UID or GID Kubernetes accepts.
const MAX_ID: i64 = i32::MAX as i64;

fn validate_id(path: String, id: Option<i64>, v: &mut Violations) {
    if let Some(id) = id
        && !(0..=MAX_ID).contains(&id)
    {
        v.push(FieldViolation::new(
            path,
            format!("{id}: must be between 0 and 2147483647, inclusive"),
        ));
    }
}

fn validate_seccomp(profile: Option<&core::SeccompProfile>, path: &str, v: &mut Violations) {
    let Some(p) = profile else { return };
    match p.r#type.as_str() {
        "RuntimeDefault" | "Unconfined" => {
            if !p.localhost_profile.is_empty() {
                v.push(FieldViolation::new(
                    format!("{path}.seccompProfile.localhostProfile"),
                    "can only be set when type is Localhost",
                ));
            }
        }
        "Localhost" => {
            if p.localhost_profile.is_empty() {
                v.push(FieldViolation::new(
                    format!("{path}.seccompProfile.localhostProfile"),
                    "must be set when seccomp type is Localhost",
                ));
            } else if p.localhost_profile.starts_with('/')
                || p.localhost_profile.split('/').any(|s| s == "..")
            {
                v.push(FieldViolation::new(
                    format!("{path}.seccompProfile.localhostProfile"),
                    "must be a relative path without '..'",
                ));
            }
        }
        "" => v.push(FieldViolation::new(
            format!("{path}.seccompProfile.type"),
            "required",
        )),
        other => v.push(FieldViolation::new(
            format!("{path}.seccompProfile.type"),
            format!(
                "Unsupported value: {other:?}: supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""
            ),
        )),
    }
}

/// Whether `name` is a well-formed sysctl name (`net.ipv4.tcp_syncookies`
/// or with '/' separators).
pub fn valid_sysctl_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split(['.', '/']).all(|seg| {
        !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
            && seg
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && seg
                .chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

/// Validates a pod's security context at `path` ("spec.securityContext").
pub fn validate_pod_security_context(
    sc: Option<&core::PodSecurityContext>,
    path: &str,
    v: &mut Violations,
) {
    let Some(sc) = sc else { return };
    validate_id(format!("{path}.runAsUser"), sc.run_as_user, v);
    validate_id(format!("{path}.runAsGroup"), sc.run_as_group, v);
    validate_id(format!("{path}.fsGroup"), sc.fs_group, v);
    for (i, g) in sc.supplemental_groups.iter().enumerate() {
        validate_id(format!("{path}.supplementalGroups[{i}]"), Some(*g), v);
    }
    validate_seccomp(sc.seccomp_profile.as_ref(), path, v);
    if !matches!(
        sc.fs_group_change_policy.as_str(),
        "" | "OnRootMismatch" | "Always"
    ) {
        v.push(FieldViolation::new(
            format!("{path}.fsGroupChangePolicy"),
            format!(
                "Unsupported value: {:?}: supported values: \"OnRootMismatch\", \"Always\"",
                sc.fs_group_change_policy
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, s) in sc.sysctls.iter().enumerate() {
        let p = format!("{path}.sysctls[{i}]");
        if s.name.is_empty() {
            v.push(FieldViolation::new(format!("{p}.name"), "required"));
        } else if !valid_sysctl_name(&s.name) {
            v.push(FieldViolation::new(
                format!("{p}.name"),
                format!(
                    "{:?}: must have at most 253 characters and match the regex \
                     ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$",
                    s.name
                ),
            ));
        } else if !seen.insert(s.name.replace('/', ".")) {
            v.push(FieldViolation::new(
                format!("{p}.name"),
                format!("Duplicate value: {:?}", s.name),
            ));
        }
    }
}

/// Validates a container's security context at `path`
/// ("spec.containers[0].securityContext").
pub fn validate_security_context(
    sc: Option<&core::SecurityContext>,
    path: &str,
    v: &mut Violations,
) {
    let Some(sc) = sc else { return };
    validate_id(format!("{path}.runAsUser"), sc.run_as_user, v);
    validate_id(format!("{path}.runAsGroup"), sc.run_as_group, v);
    validate_seccomp(sc.seccomp_profile.as_ref(), path, v);
    if let Some(caps) = &sc.capabilities {
        for (list, field) in [(&caps.add, "add"), (&caps.drop, "drop")] {
            for (i, c) in list.iter().enumerate() {
                if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                    v.push(FieldViolation::new(
                        format!("{path}.capabilities.{field}[{i}]"),
                        format!("{c:?}: not a capability name (e.g. NET_ADMIN, or ALL)"),
                    ));
                }
            }
        }
    }
    if sc.allow_privilege_escalation == Some(false) {
        if sc.privileged == Some(true) {
            v.push(FieldViolation::new(
                path,
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            ));
        }
        let adds_sys_admin = sc.capabilities.as_ref().is_some_and(|c| {
            c.add.iter().any(|a| {
                let a = a.to_ascii_uppercase();
                a == "SYS_ADMIN" || a == "CAP_SYS_ADMIN"
            })
        });
        if adds_sys_admin {
            v.push(FieldViolation::new(
                path,
                "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_follow_kubernetes_rule() {
        assert!(valid_sysctl_name("net.ipv4.tcp_syncookies"));
        assert!(valid_sysctl_name("kernel.shm_rmid_forced"));
        assert!(valid_sysctl_name("net/ipv4/ip_local_port_range"));
        assert!(!valid_sysctl_name("net..ipv4"));
        assert!(!valid_sysctl_name("Net.ipv4"));
        assert!(!valid_sysctl_name(""));
        assert!(!valid_sysctl_name("net.ipv4.-x"));
    }

    #[test]
    fn contexts_name_each_bad_field() {
        let mut v = Vec::new();
        validate_pod_security_context(
            Some(&core::PodSecurityContext {
                run_as_user: Some(-1),
                fs_group: Some(1 << 40),
                supplemental_groups: vec![5, -2],
                seccomp_profile: Some(core::SeccompProfile {
                    r#type: "Localhost".into(),
                    ..Default::default()
                }),
                sysctls: vec![
                    core::Sysctl {
                        name: "net.ipv4.tcp_syncookies".into(),
                        value: "1".into(),
                    },
                    core::Sysctl {
                        name: "net/ipv4/tcp_syncookies".into(),
                        value: "1".into(),
                    },
                ],
                ..Default::default()
            }),
            "spec.securityContext",
            &mut v,
        );
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.securityContext.runAsUser",
                "spec.securityContext.fsGroup",
                "spec.securityContext.supplementalGroups[1]",
                "spec.securityContext.seccompProfile.localhostProfile",
                "spec.securityContext.sysctls[1].name",
            ]
        );
        let mut v = Vec::new();
        validate_security_context(
            Some(&core::SecurityContext {
                privileged: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(core::Capabilities {
                    add: vec!["SYS_ADMIN".into(), "bad cap".into()],
                    drop: vec!["ALL".into()],
                }),
                seccomp_profile: Some(core::SeccompProfile {
                    r#type: "Strict".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "c",
            &mut v,
        );
        let messages: Vec<String> = v
            .iter()
            .map(|f| format!("{}: {}", f.field, f.description))
            .collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].starts_with("c.seccompProfile.type: Unsupported value"));
        assert!(messages[1].starts_with("c.capabilities.add[1]"));
        assert!(messages[2].contains("`privileged` to true"));
        assert!(messages[3].contains("CAP_SYS_ADMIN"));
    }
}
