//! A pod's name resolution: its DNS policy, extra resolver configuration
//! and host aliases, with Kubernetes' limits (3 name servers, 32 search
//! domains, a `dnsConfig` with a name server when the policy is None).
//!
//! Pure checks; no I/O and no defaulting.

use skiff::api::core::v1 as core;
use skiff::names::validate_dns1123_subdomain;

use super::{Violations, validate_ip};
use crate::error::FieldViolation;

/// Name servers a resolv.conf may list (glibc's MAXNS).
pub const MAX_NAMESERVERS: usize = 3;
/// Search domains a pod may have in all.
pub const MAX_SEARCHES: usize = 32;

/// Validates `dnsPolicy`, `dnsConfig` and `hostAliases` of a pod spec at `path`.
pub fn validate_dns(spec: &core::PodSpec, path: &str, v: &mut Violations) {
    match spec.dns_policy.as_str() {
        "" | "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" => {}
        "None" => match &spec.dns_config {
            None => v.push(FieldViolation::new(
                format!("{path}.dnsConfig"),
                "must provide `dnsConfig` when `dnsPolicy` is None",
            )),
            Some(c) if c.nameservers.is_empty() => v.push(FieldViolation::new(
                format!("{path}.dnsConfig.nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            )),
            Some(_) => {}
        },
        other => v.push(FieldViolation::new(
            format!("{path}.dnsPolicy"),
            format!(
                "Unsupported value: {other:?}: supported values: \"ClusterFirstWithHostNet\", \
                 \"ClusterFirst\", \"Default\", \"None\""
            ),
        )),
    }
    if let Some(c) = &spec.dns_config {
        let p = format!("{path}.dnsConfig");
        if c.nameservers.len() > MAX_NAMESERVERS {
            v.push(FieldViolation::new(
                format!("{p}.nameservers"),
                format!("must not have more than {MAX_NAMESERVERS} nameservers"),
            ));
        }
        for (i, ns) in c.nameservers.iter().enumerate() {
            validate_ip(&format!("{p}.nameservers[{i}]"), ns, v);
        }
        if c.searches.len() > MAX_SEARCHES {
            v.push(FieldViolation::new(
                format!("{p}.searches"),
                format!("must not have more than {MAX_SEARCHES} search paths"),
            ));
        }
        if c.searches.iter().map(|s| s.len() + 1).sum::<usize>() > 2048 {
            v.push(FieldViolation::new(
                format!("{p}.searches"),
                "must not have more than 2048 characters (including spaces) in the search list",
            ));
        }
        for (i, s) in c.searches.iter().enumerate() {
            let domain = s.strip_suffix('.').unwrap_or(s);
            if let Err(e) = validate_dns1123_subdomain(domain) {
                v.push(FieldViolation::new(format!("{p}.searches[{i}]"), e));
            }
        }
        for (i, o) in c.options.iter().enumerate() {
            if o.name.is_empty() {
                v.push(FieldViolation::new(
                    format!("{p}.options[{i}].name"),
                    "must not be empty",
                ));
            }
        }
    }
    for (i, a) in spec.host_aliases.iter().enumerate() {
        let p = format!("{path}.hostAliases[{i}]");
        validate_ip(&format!("{p}.ip"), &a.ip, v);
        for (j, h) in a.hostnames.iter().enumerate() {
            if let Err(e) = validate_dns1123_subdomain(h) {
                v.push(FieldViolation::new(format!("{p}.hostnames[{j}]"), e));
            }
        }
    }
    if !spec.hostname.is_empty()
        && let Err(e) = skiff::names::validate_dns1123_label(&spec.hostname)
    {
        v.push(FieldViolation::new(format!("{path}.hostname"), e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_none_needs_a_nameserver_and_limits_hold() {
        let mut v = Vec::new();
        let spec = core::PodSpec {
            dns_policy: "None".into(),
            ..Default::default()
        };
        validate_dns(&spec, "spec", &mut v);
        assert_eq!(v[0].field, "spec.dnsConfig");
        let mut v = Vec::new();
        let spec = core::PodSpec {
            dns_policy: "None".into(),
            dns_config: Some(core::PodDnsConfig {
                nameservers: vec![
                    "1.1.1.1".into(),
                    "1.1.1.2".into(),
                    "1.1.1.3".into(),
                    "nope".into(),
                ],
                searches: vec!["ok.example".into(), "-bad".into()],
                options: vec![core::PodDnsConfigOption::default()],
            }),
            host_aliases: vec![core::HostAlias {
                ip: "10.0.0.1".into(),
                hostnames: vec!["good.local".into(), "Bad_Name".into()],
            }],
            ..Default::default()
        };
        validate_dns(&spec, "spec", &mut v);
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.dnsConfig.nameservers",
                "spec.dnsConfig.nameservers[3]",
                "spec.dnsConfig.searches[1]",
                "spec.dnsConfig.options[0].name",
                "spec.hostAliases[0].hostnames[1]",
            ]
        );
        let mut v = Vec::new();
        let spec = core::PodSpec {
            dns_policy: "Cluster".into(),
            ..Default::default()
        };
        validate_dns(&spec, "spec", &mut v);
        assert!(
            v[0].description
                .starts_with("Unsupported value: \"Cluster\"")
        );
    }
}
