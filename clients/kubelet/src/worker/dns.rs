//! A pod's name resolution files, as the kubelet writes them: its
//! `resolv.conf` by DNS policy (ClusterFirst: the cluster DNS Service's IP,
//! search `NS.svc.DOMAIN svc.DOMAIN DOMAIN` and the node's, `ndots:5`;
//! Default: the node's; None: only `dnsConfig`), merged with `dnsConfig`;
//! and its `/etc/hosts` (localhost, the pod's own name and IP, host
//! aliases). Pure text from the spec; the worker writes the files.

use skiff::api::core::v1::PodSpec;

/// The most name servers a resolv.conf lists (glibc's MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// The most search domains Kubernetes writes.
const MAX_SEARCHES: usize = 32;

/// What a resolv.conf says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub nameservers: Vec<String>,
    /// The `search` line.
    pub searches: Vec<String>,
    /// `options`, each `name` or `name:value`.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Reads a resolv.conf text.
    pub fn parse(text: &str) -> Self {
        let mut out = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => out.nameservers.extend(words.next().map(str::to_owned)),
                Some("search" | "domain") => out.searches = words.map(str::to_owned).collect(),
                Some("options") => out.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        out
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

/// The DNS policy that applies, and whether ClusterFirst fell back to the
/// node's resolver because no cluster DNS is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effective {
    /// The cluster's DNS.
    Cluster,
    /// The node's resolver.
    Node,
    /// The node's resolver, because no cluster DNS is known.
    NodeFallback,
    /// Only what `dnsConfig` says.
    Nothing,
}

/// The policy that applies to `spec` on a node whose cluster DNS is
/// `cluster_dns` (empty: unknown).
pub fn effective(spec: &PodSpec, cluster_dns: &[String]) -> Effective {
    let cluster = || {
        if cluster_dns.is_empty() {
            Effective::NodeFallback
        } else {
            Effective::Cluster
        }
    };
    match spec.dns_policy.as_str() {
        "None" => Effective::Nothing,
        "Default" => Effective::Node,
        "ClusterFirstWithHostNet" => cluster(),
        // ClusterFirst: a pod on the node's network keeps the node's resolver.
        _ if spec.host_network => Effective::Node,
        _ => cluster(),
    }
}

/// The resolv.conf of a pod in namespace `ns`.
pub fn resolv_conf(
    spec: &PodSpec,
    ns: &str,
    cluster_dns: &[String],
    domain: &str,
    node: &ResolvConf,
) -> ResolvConf {
    let mut out = match effective(spec, cluster_dns) {
        Effective::Cluster => {
            let mut searches = vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_owned(),
            ];
            searches.extend(node.searches.iter().cloned());
            ResolvConf {
                nameservers: cluster_dns.to_vec(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        Effective::Node | Effective::NodeFallback => node.clone(),
        Effective::Nothing => ResolvConf::default(),
    };
    if let Some(c) = &spec.dns_config {
        for ns in &c.nameservers {
            if !out.nameservers.contains(ns) {
                out.nameservers.push(ns.clone());
            }
        }
        for s in &c.searches {
            if !out.searches.contains(s) {
                out.searches.push(s.clone());
            }
        }
        for o in &c.options {
            out.options
                .retain(|existing| existing.split(':').next() != Some(o.name.as_str()));
            out.options.push(match &o.value {
                Some(v) => format!("{}:{v}", o.name),
                None => o.name.clone(),
            });
        }
    }
    out.nameservers.truncate(MAX_NAMESERVERS);
    let mut seen = std::collections::HashSet::new();
    out.searches.retain(|s| seen.insert(s.clone()));
    out.searches.truncate(MAX_SEARCHES);
    out
}

/// The `/etc/hosts` of a pod (not on the node's network): localhost, the
/// pod's IP under its host name (and fully qualified name with a
/// subdomain), then its host aliases.
pub fn hosts_file(spec: &PodSpec, pod_name: &str, ns: &str, ip: &str, domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let hostname = if spec.hostname.is_empty() {
        pod_name
    } else {
        &spec.hostname
    };
    if !ip.is_empty() {
        if spec.subdomain.is_empty() {
            out.push_str(&format!("{ip}\t{hostname}\n"));
        } else {
            out.push_str(&format!(
                "{ip}\t{hostname}.{}.{ns}.svc.{domain}\t{hostname}\n",
                spec.subdomain
            ));
        }
    }
    out.push_str(&host_aliases(spec));
    out
}

/// The host-alias lines Kubernetes appends to a hosts file.
pub fn host_aliases(spec: &PodSpec) -> String {
    if spec.host_aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for a in &spec.host_aliases {
        out.push_str(&format!("{}\t{}\n", a.ip, a.hostnames.join("\t")));
    }
    out
}

#[cfg(test)]
mod tests {
    use skiff::api::core::v1::{HostAlias, PodDnsConfig, PodDnsConfigOption};

    use super::*;

    fn node() -> ResolvConf {
        ResolvConf::parse("nameserver 10.0.0.2\nsearch corp.example\noptions timeout:2\n")
    }

    #[test]
    fn cluster_first_points_at_the_cluster_dns_with_kubernetes_search_path() {
        let spec = PodSpec {
            dns_policy: "ClusterFirst".into(),
            ..Default::default()
        };
        let r = resolv_conf(
            &spec,
            "shop",
            &["127.96.0.10".into()],
            "cluster.local",
            &node(),
        );
        assert_eq!(
            r.render(),
            "nameserver 127.96.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
        // No cluster DNS known: the node's resolver, flagged as a fallback.
        assert_eq!(effective(&spec, &[]), Effective::NodeFallback);
        assert_eq!(
            resolv_conf(&spec, "shop", &[], "cluster.local", &node()),
            node()
        );
        // On the node's network, ClusterFirst means the node's resolver…
        let host = PodSpec {
            host_network: true,
            ..spec.clone()
        };
        assert_eq!(effective(&host, &["1.2.3.4".into()]), Effective::Node);
        // …unless asked for with ClusterFirstWithHostNet.
        let with = PodSpec {
            dns_policy: "ClusterFirstWithHostNet".into(),
            ..host
        };
        assert_eq!(effective(&with, &["1.2.3.4".into()]), Effective::Cluster);
    }

    #[test]
    fn dns_config_merges_and_none_uses_only_it() {
        let config = PodDnsConfig {
            nameservers: vec!["1.1.1.1".into(), "127.96.0.10".into()],
            searches: vec!["extra.example".into()],
            options: vec![
                PodDnsConfigOption {
                    name: "ndots".into(),
                    value: Some("2".into()),
                },
                PodDnsConfigOption {
                    name: "edns0".into(),
                    value: None,
                },
            ],
        };
        let spec = PodSpec {
            dns_policy: "ClusterFirst".into(),
            dns_config: Some(config.clone()),
            ..Default::default()
        };
        let r = resolv_conf(
            &spec,
            "ns",
            &["127.96.0.10".into()],
            "cluster.local",
            &node(),
        );
        assert_eq!(r.nameservers, ["127.96.0.10", "1.1.1.1"]);
        assert_eq!(r.searches.last().unwrap(), "extra.example");
        assert_eq!(r.options, ["ndots:2", "edns0"]);
        let none = PodSpec {
            dns_policy: "None".into(),
            dns_config: Some(config),
            ..Default::default()
        };
        let r = resolv_conf(
            &none,
            "ns",
            &["127.96.0.10".into()],
            "cluster.local",
            &node(),
        );
        assert_eq!(
            r.render(),
            "nameserver 1.1.1.1\nnameserver 127.96.0.10\nsearch extra.example\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn hosts_files_name_the_pod_and_its_aliases() {
        let spec = PodSpec {
            hostname: "web-0".into(),
            subdomain: "web".into(),
            host_aliases: vec![HostAlias {
                ip: "10.1.2.3".into(),
                hostnames: vec!["db.local".into(), "cache.local".into()],
            }],
            ..Default::default()
        };
        let h = hosts_file(&spec, "web-0", "shop", "127.128.0.5", "cluster.local");
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(
            h.contains("127.128.0.5\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{h}"
        );
        assert!(h.ends_with("# Entries added by HostAliases.\n10.1.2.3\tdb.local\tcache.local\n"));
    }
}
