//! A container's confinement from its pod's and its own security contexts
//! (the container's settings win), Kubernetes' `runAsNonRoot` check with
//! its messages, and which pod sysctls a node allows (Kubernetes' safe set
//! plus those the node allows explicitly). Pure: reads specs, decides.

use skiff::api::core::v1::{Container, PodSpec};

use crate::runtime::{ContainerSecurity, Seccomp};

/// Sysctls Kubernetes deems safe: namespaced and unable to hurt other pods.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// A capability name as runtimes take it: upper case, without `CAP_`.
fn capability(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_owned()
}

/// The confinement of container `c` of a pod with `spec`; `seccomp_dir`
/// holds Localhost profiles (the text is read here).
pub fn container_security(
    spec: &PodSpec,
    c: &Container,
    seccomp_dir: &std::path::Path,
) -> Result<ContainerSecurity, String> {
    let pod = spec.security_context.clone().unwrap_or_default();
    let own = c.security_context.clone().unwrap_or_default();
    let mut groups = pod.supplemental_groups.clone();
    if let Some(fs) = pod.fs_group
        && !groups.contains(&fs)
    {
        groups.push(fs);
    }
    let profile = own.seccomp_profile.or(pod.seccomp_profile);
    let seccomp = match profile {
        None => None,
        Some(p) => Some(match p.r#type.as_str() {
            "RuntimeDefault" => Seccomp::RuntimeDefault,
            "Unconfined" => Seccomp::Unconfined,
            "Localhost" => {
                let path = seccomp_dir.join(&p.localhost_profile);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    format!(
                        "cannot read the seccomp profile {} (localhostProfile {:?}): {e}",
                        path.display(),
                        p.localhost_profile
                    )
                })?;
                Seccomp::Localhost(text)
            }
            other => return Err(format!("unknown seccomp profile type {other:?}")),
        }),
    };
    let caps = own.capabilities.unwrap_or_default();
    Ok(ContainerSecurity {
        user: own.run_as_user.or(pod.run_as_user),
        group: own.run_as_group.or(pod.run_as_group),
        supplemental_groups: groups,
        read_only_root: own.read_only_root_filesystem == Some(true),
        privileged: own.privileged == Some(true),
        no_new_privileges: own.allow_privilege_escalation == Some(false),
        cap_add: caps.add.iter().map(|c| capability(c)).collect(),
        cap_drop: caps.drop.iter().map(|c| capability(c)).collect(),
        seccomp,
    })
}

/// Whether container `c` must not run as root (its or its pod's `runAsNonRoot`).
pub fn requires_non_root(spec: &PodSpec, c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or_else(|| {
            spec.security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root)
        })
        .unwrap_or(false)
}

/// Kubernetes' `runAsNonRoot` check: the error message when the container
/// would run as root (or cannot be shown not to); `image_user` is the
/// user its image runs as ("" means root). `who` is
/// `pod: "NAME_NS(UID)", container: NAME`.
pub fn verify_non_root(
    spec: &PodSpec,
    c: &Container,
    uid: Option<i64>,
    image_user: &str,
    who: &str,
) -> Result<(), String> {
    let required = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or_else(|| {
            spec.security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root)
        })
        .unwrap_or(false);
    if !required {
        return Ok(());
    }
    if let Some(u) = uid {
        return if u == 0 {
            Err(format!(
                "container's runAsUser breaks non-root policy ({who})"
            ))
        } else {
            Ok(())
        };
    }
    let user = image_user.split(':').next().unwrap_or("");
    match user {
        "" | "root" => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        numeric if numeric.chars().all(|ch| ch.is_ascii_digit()) => {
            if numeric.parse::<i64>().is_ok_and(|n| n == 0) {
                Err(format!(
                    "container has runAsNonRoot and image will run as root ({who})"
                ))
            } else {
                Ok(())
            }
        }
        name => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify \
             user is non-root ({who})"
        )),
    }
}

/// The first sysctl of the pod the node does not allow, if any.
pub fn forbidden_sysctl(spec: &PodSpec, allowed_unsafe: &[String]) -> Option<String> {
    spec.security_context
        .as_ref()?
        .sysctls
        .iter()
        .find_map(|s| {
            let name = s.name.replace('/', ".");
            let allowed = SAFE_SYSCTLS.contains(&name.as_str())
                || allowed_unsafe.iter().any(|a| match a.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => *a == name,
                });
            (!allowed).then_some(name)
        })
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::{Capabilities, PodSecurityContext, SeccompProfile, SecurityContext};

    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(3000),
                fs_group: Some(2000),
                supplemental_groups: vec![4000],
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    r#type: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_containers_settings_win_over_the_pods() {
        let c = Container {
            security_context: Some(SecurityContext {
                run_as_user: Some(1001),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: vec!["all".into()],
                    add: vec!["CAP_NET_BIND_SERVICE".into()],
                }),
                seccomp_profile: Some(SeccompProfile {
                    r#type: "Unconfined".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = container_security(&spec(), &c, std::path::Path::new("/nonexistent")).unwrap();
        assert_eq!(s.user, Some(1001));
        assert_eq!(s.group, Some(3000));
        assert_eq!(
            s.supplemental_groups,
            [4000, 2000],
            "fsGroup joins the groups"
        );
        assert!(s.read_only_root && s.no_new_privileges && !s.privileged);
        assert_eq!(s.cap_drop, ["ALL"]);
        assert_eq!(s.cap_add, ["NET_BIND_SERVICE"]);
        assert_eq!(s.seccomp, Some(Seccomp::Unconfined));
        let plain =
            container_security(&spec(), &Container::default(), std::path::Path::new("/")).unwrap();
        assert_eq!(plain.seccomp, Some(Seccomp::RuntimeDefault));
    }

    #[test]
    fn run_as_non_root_refuses_root_with_kubernetes_messages() {
        let mut s = spec();
        let c = Container::default();
        let who = "pod: \"p_ns(u)\", container: c";
        assert!(verify_non_root(&s, &c, Some(1000), "", who).is_ok());
        assert_eq!(
            verify_non_root(&s, &c, Some(0), "", who).unwrap_err(),
            format!("container's runAsUser breaks non-root policy ({who})")
        );
        assert_eq!(
            verify_non_root(&s, &c, None, "", who).unwrap_err(),
            format!("container has runAsNonRoot and image will run as root ({who})")
        );
        assert!(verify_non_root(&s, &c, None, "65534", who).is_ok());
        assert!(
            verify_non_root(&s, &c, None, "nobody", who)
                .unwrap_err()
                .contains("non-numeric user (nobody)")
        );
        s.security_context.as_mut().unwrap().run_as_non_root = None;
        assert!(verify_non_root(&s, &c, None, "", who).is_ok());
    }

    #[test]
    fn only_safe_or_allowed_sysctls_pass() {
        let mut s = PodSpec::default();
        let ctx = s.security_context.get_or_insert_with(Default::default);
        ctx.sysctls.push(skiff::api::core::v1::Sysctl {
            name: "net.ipv4.tcp_syncookies".into(),
            value: "1".into(),
        });
        assert_eq!(forbidden_sysctl(&s, &[]), None);
        s.security_context
            .as_mut()
            .unwrap()
            .sysctls
            .push(skiff::api::core::v1::Sysctl {
                name: "net/core/somaxconn".into(),
                value: "1024".into(),
            });
        assert_eq!(
            forbidden_sysctl(&s, &[]).as_deref(),
            Some("net.core.somaxconn")
        );
        assert_eq!(forbidden_sysctl(&s, &["net.core.*".into()]), None);
    }
}
