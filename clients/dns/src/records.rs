//! The cluster's names, as Kubernetes' DNS specification lays them out,
//! answered from a view of Services and Endpoints:
//!
//! - `SVC.NS.svc.ZONE` — A: the cluster IP, or for a headless service the
//!   IPs of its ready endpoints; SRV: every named port.
//! - `HOST.SVC.NS.svc.ZONE` — A: the ready endpoint of a headless service
//!   whose hostname is HOST (a stateful set's pod) or whose IP is HOST
//!   written with dashes.
//! - `_PORT._PROTO.SVC.NS.svc.ZONE` — SRV: the named port, with the target's
//!   A record as additional data.
//! - `A-B-C-D.NS.pod.ZONE` — A: that IP.
//!
//! A name in the zone that does not exist is NXDOMAIN; one that exists
//! without records of the asked type is NOERROR with no answer (both with
//! the zone's SOA, for negative caching). Names outside the zone are not
//! this module's (the server forwards them).
//!
//! Pure: reads the view, writes nothing.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use skiff::api::core::v1::{EndpointAddress, Endpoints, Service};

/// Time to live of every cluster record, in seconds (CoreDNS' default).
pub const TTL: u32 = 5;

/// What the server knows of the cluster: Services and their Endpoints.
pub trait ClusterView: Send + Sync {
    /// The Service `ns/name`.
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>>;
    /// The Endpoints `ns/name`.
    fn endpoints(&self, ns: &str, name: &str) -> Option<Arc<Endpoints>>;
    /// Whether the view has caught up with the cluster (else answers could be wrong).
    fn ready(&self) -> bool {
        true
    }
}

/// The answer to a question about a name in the zone.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The name has records of the type asked for.
    Records {
        /// Answer section.
        answers: Vec<Record>,
        /// Additional section (A records of SRV targets).
        additionals: Vec<Record>,
    },
    /// The name exists, without records of that type (NOERROR, empty).
    NoData,
    /// The name does not exist.
    NxDomain,
}

/// The cluster zone (`cluster.local`) and its records.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: String,
    soa: Record,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", s.trim_end_matches('.'))).ok()
}

fn a(owner: &str, ip: Ipv4Addr) -> Option<Record> {
    Some(Record::from_rdata(name(owner)?, TTL, RData::A(A(ip))))
}

/// `10-1-2-3` for 10.1.2.3.
fn dashed(ip: &str) -> String {
    ip.replace('.', "-")
}

fn undashed(label: &str) -> Option<Ipv4Addr> {
    Ipv4Addr::from_str(&label.replace('-', ".")).ok()
}

fn ready_addresses(
    eps: Option<&Endpoints>,
) -> Vec<(&EndpointAddress, &skiff::api::core::v1::EndpointSubset)> {
    eps.map(|e| {
        e.subsets
            .iter()
            .flat_map(|s| s.addresses.iter().map(move |a| (a, s)))
            .collect()
    })
    .unwrap_or_default()
}

fn is_headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .is_some_and(|s| s.cluster_ip == "None" || s.cluster_ip.is_empty())
}

fn cluster_ip(svc: &Service) -> Option<Ipv4Addr> {
    svc.spec.as_ref()?.cluster_ip.parse().ok()
}

impl Zone {
    /// The zone `domain` (e.g. `cluster.local`).
    pub fn new(domain: &str) -> Option<Self> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let apex = name(&domain)?;
        let soa = Record::from_rdata(
            apex.clone(),
            TTL,
            RData::SOA(SOA::new(
                name(&format!("ns.dns.{domain}"))?,
                name(&format!("hostmaster.{domain}"))?,
                1,
                7200,
                1800,
                86400,
                TTL,
            )),
        );
        Some(Self { domain, soa })
    }

    /// The zone's domain, e.g. `cluster.local`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The zone's SOA record (authority section of negative answers).
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `qname` is in the zone.
    pub fn contains(&self, qname: &str) -> bool {
        self.below(qname).is_some()
    }

    /// The labels of `qname` below the zone, or `None` if it is not in it.
    fn below<'a>(&self, qname: &'a str) -> Option<Vec<&'a str>> {
        let q = qname.trim_end_matches('.');
        if q.eq_ignore_ascii_case(&self.domain) {
            return Some(Vec::new());
        }
        let cut = q.len().checked_sub(self.domain.len() + 1)?;
        let (head, tail) = (q.get(..cut)?, q.get(cut..)?);
        if !tail.starts_with('.') || !tail[1..].eq_ignore_ascii_case(&self.domain) {
            return None;
        }
        Some(head.split('.').collect())
    }

    /// Answers `qtype` for `qname`; `None` when the name is not in the zone.
    pub fn lookup(&self, view: &dyn ClusterView, qname: &str, qtype: RecordType) -> Option<Answer> {
        let labels = self.below(qname)?;
        let labels: Vec<String> = labels.iter().map(|l| l.to_ascii_lowercase()).collect();
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let d = &self.domain;
        Some(match l.as_slice() {
            [] => {
                if qtype == RecordType::SOA {
                    Answer::Records {
                        answers: vec![self.soa.clone()],
                        additionals: vec![],
                    }
                } else {
                    Answer::NoData
                }
            }
            ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => Answer::NoData,
            [svc, ns, "svc"] => self.service(view, ns, svc, qtype),
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                self.srv(view, ns, svc, Some((&port[1..], &proto[1..])), qtype)
            }
            [host, svc, ns, "svc"] => {
                if !view.service(ns, svc).is_some_and(|s| is_headless(&s)) {
                    return Some(Answer::NxDomain);
                }
                let eps = view.endpoints(ns, svc);
                let owner = format!("{host}.{svc}.{ns}.svc.{d}");
                let found: Vec<Record> = ready_addresses(eps.as_deref())
                    .into_iter()
                    .filter(|(a, _)| {
                        a.hostname.eq_ignore_ascii_case(host) || dashed(&a.ip) == *host
                    })
                    .filter_map(|(a, _)| a.ip.parse().ok().and_then(|ip| self::a(&owner, ip)))
                    .collect();
                match (found.is_empty(), qtype) {
                    (true, _) => Answer::NxDomain,
                    (false, RecordType::A | RecordType::ANY) => Answer::Records {
                        answers: found,
                        additionals: vec![],
                    },
                    (false, _) => Answer::NoData,
                }
            }
            [ip, _ns, "pod"] => match undashed(ip) {
                None => Answer::NxDomain,
                Some(addr) => match qtype {
                    RecordType::A | RecordType::ANY => Answer::Records {
                        answers: a(&format!("{}.{d}", l.join(".")), addr)
                            .into_iter()
                            .collect(),
                        additionals: vec![],
                    },
                    _ => Answer::NoData,
                },
            },
            _ => Answer::NxDomain,
        })
    }

    /// `SVC.NS.svc.ZONE`.
    fn service(&self, view: &dyn ClusterView, ns: &str, svc: &str, qtype: RecordType) -> Answer {
        let Some(service) = view.service(ns, svc) else {
            return Answer::NxDomain;
        };
        let owner = format!("{svc}.{ns}.svc.{}", self.domain);
        match qtype {
            RecordType::A | RecordType::ANY => {
                let answers: Vec<Record> = if is_headless(&service) {
                    let eps = view.endpoints(ns, svc);
                    let mut ips: Vec<Ipv4Addr> = ready_addresses(eps.as_deref())
                        .into_iter()
                        .filter_map(|(a, _)| a.ip.parse().ok())
                        .collect();
                    ips.sort();
                    ips.dedup();
                    ips.into_iter().filter_map(|ip| a(&owner, ip)).collect()
                } else {
                    cluster_ip(&service)
                        .and_then(|ip| a(&owner, ip))
                        .into_iter()
                        .collect()
                };
                if answers.is_empty() {
                    Answer::NoData
                } else {
                    Answer::Records {
                        answers,
                        additionals: vec![],
                    }
                }
            }
            RecordType::SRV => self.srv(view, ns, svc, None, qtype),
            _ => Answer::NoData,
        }
    }

    /// SRV records of a service's named ports (`port`: one (name, protocol)).
    fn srv(
        &self,
        view: &dyn ClusterView,
        ns: &str,
        svc: &str,
        port: Option<(&str, &str)>,
        qtype: RecordType,
    ) -> Answer {
        let Some(service) = view.service(ns, svc) else {
            return Answer::NxDomain;
        };
        let d = &self.domain;
        let svc_name = format!("{svc}.{ns}.svc.{d}");
        let wanted = |name: &str, protocol: &str| {
            let protocol = if protocol.is_empty() { "TCP" } else { protocol };
            !name.is_empty()
                && port.is_none_or(|(n, p)| {
                    n.eq_ignore_ascii_case(name) && p.eq_ignore_ascii_case(protocol)
                })
        };
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let owner_of = |name: &str, protocol: &str| match port {
            Some(_) => format!(
                "_{}._{}.{svc_name}",
                name.to_ascii_lowercase(),
                if protocol.is_empty() {
                    "tcp".to_owned()
                } else {
                    protocol.to_ascii_lowercase()
                }
            ),
            None => svc_name.clone(),
        };
        if is_headless(&service) {
            let eps = view.endpoints(ns, svc);
            let ready = ready_addresses(eps.as_deref());
            for (addr, subset) in &ready {
                for p in subset.ports.iter().filter(|p| wanted(&p.name, &p.protocol)) {
                    let host = if addr.hostname.is_empty() {
                        dashed(&addr.ip)
                    } else {
                        addr.hostname.to_ascii_lowercase()
                    };
                    let target = format!("{host}.{svc_name}");
                    let (Some(owner), Some(t)) =
                        (name(&owner_of(&p.name, &p.protocol)), name(&target))
                    else {
                        continue;
                    };
                    let weight = (100 / ready.len().max(1)) as u16;
                    answers.push(Record::from_rdata(
                        owner,
                        TTL,
                        RData::SRV(SRV::new(0, weight, p.port as u16, t)),
                    ));
                    if let Ok(ip) = addr.ip.parse() {
                        additionals.extend(a(&target, ip));
                    }
                }
            }
        } else if let Some(ip) = cluster_ip(&service) {
            let ports = service
                .spec
                .as_ref()
                .map(|s| s.ports.as_slice())
                .unwrap_or(&[]);
            for p in ports.iter().filter(|p| wanted(&p.name, &p.protocol)) {
                let (Some(owner), Some(t)) =
                    (name(&owner_of(&p.name, &p.protocol)), name(&svc_name))
                else {
                    continue;
                };
                answers.push(Record::from_rdata(
                    owner,
                    TTL,
                    RData::SRV(SRV::new(0, 100, p.port as u16, t)),
                ));
            }
            if !answers.is_empty() {
                additionals.extend(a(&svc_name, ip));
            }
        }
        if answers.is_empty() {
            // A port that does not exist is no name at all; the service
            // name itself exists whatever its ports.
            return if port.is_some() {
                Answer::NxDomain
            } else {
                Answer::NoData
            };
        }
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Answer::NoData;
        }
        Answer::Records {
            answers,
            additionals,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use skiff::api::core::v1::{EndpointPort, EndpointSubset, ServicePort, ServiceSpec};
    use skiff::api::meta::v1::ObjectMeta;

    use super::*;

    #[derive(Default)]
    struct Fake {
        services: HashMap<(String, String), Arc<Service>>,
        endpoints: HashMap<(String, String), Arc<Endpoints>>,
    }

    impl ClusterView for Fake {
        fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
            self.services.get(&(ns.into(), name.into())).cloned()
        }
        fn endpoints(&self, ns: &str, name: &str) -> Option<Arc<Endpoints>> {
            self.endpoints.get(&(ns.into(), name.into())).cloned()
        }
    }

    fn meta(ns: &str, name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: name.into(),
            namespace: ns.into(),
            ..Default::default()
        })
    }

    fn fake() -> Fake {
        let mut f = Fake::default();
        let svc = |ns: &str, name: &str, ip: &str| Service {
            metadata: meta(ns, name),
            spec: Some(ServiceSpec {
                cluster_ip: ip.into(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    protocol: "TCP".into(),
                    port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        f.services.insert(
            ("default".into(), "web".into()),
            Arc::new(svc("default", "web", "127.96.0.20")),
        );
        f.services.insert(
            ("db".into(), "pg".into()),
            Arc::new(svc("db", "pg", "None")),
        );
        let addr = |ip: &str, host: &str| EndpointAddress {
            ip: ip.into(),
            hostname: host.into(),
            ..Default::default()
        };
        f.endpoints.insert(
            ("db".into(), "pg".into()),
            Arc::new(Endpoints {
                metadata: meta("db", "pg"),
                subsets: vec![EndpointSubset {
                    addresses: vec![addr("10.0.0.2", "pg-0"), addr("10.0.0.3", "")],
                    not_ready_addresses: vec![addr("10.0.0.9", "pg-9")],
                    ports: vec![EndpointPort {
                        name: "http".into(),
                        port: 5432,
                        protocol: "TCP".into(),
                    }],
                }],
            }),
        );
        f
    }

    fn ips(answer: Option<Answer>) -> Vec<String> {
        match answer {
            Some(Answer::Records { answers, .. }) => answers
                .iter()
                .map(|r| match &r.data {
                    RData::A(a) => a.0.to_string(),
                    RData::SRV(s) => format!("{}:{}", s.target, s.port),
                    other => format!("{other:?}"),
                })
                .collect(),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn services_resolve_to_their_cluster_ip_or_ready_endpoints() {
        let z = Zone::new("cluster.local").unwrap();
        let f = fake();
        assert_eq!(
            ips(z.lookup(&f, "web.default.svc.cluster.local.", RecordType::A)),
            ["127.96.0.20"]
        );
        assert_eq!(
            ips(z.lookup(&f, "WEB.Default.svc.Cluster.Local", RecordType::A)),
            ["127.96.0.20"],
            "names are case-insensitive"
        );
        assert_eq!(
            ips(z.lookup(&f, "pg.db.svc.cluster.local.", RecordType::A)),
            ["10.0.0.2", "10.0.0.3"],
            "a headless service: its ready endpoints only"
        );
        assert_eq!(
            ips(z.lookup(&f, "pg-0.pg.db.svc.cluster.local.", RecordType::A)),
            ["10.0.0.2"],
            "a stateful pod by its hostname"
        );
        assert_eq!(
            ips(z.lookup(&f, "10-0-0-3.pg.db.svc.cluster.local.", RecordType::A)),
            ["10.0.0.3"]
        );
        assert_eq!(
            z.lookup(&f, "pg-9.pg.db.svc.cluster.local.", RecordType::A),
            Some(Answer::NxDomain),
            "not ready: not published"
        );
        assert_eq!(
            ips(z.lookup(&f, "10-1-2-3.default.pod.cluster.local.", RecordType::A)),
            ["10.1.2.3"]
        );
    }

    #[test]
    fn srv_records_name_ports_and_targets() {
        let z = Zone::new("cluster.local").unwrap();
        let f = fake();
        assert_eq!(
            ips(z.lookup(
                &f,
                "_http._tcp.web.default.svc.cluster.local.",
                RecordType::SRV
            )),
            ["web.default.svc.cluster.local.:8080"]
        );
        let got = ips(z.lookup(&f, "_http._tcp.pg.db.svc.cluster.local.", RecordType::SRV));
        assert_eq!(
            got,
            [
                "pg-0.pg.db.svc.cluster.local.:5432",
                "10-0-0-3.pg.db.svc.cluster.local.:5432"
            ]
        );
        match z.lookup(&f, "_http._tcp.pg.db.svc.cluster.local.", RecordType::SRV) {
            Some(Answer::Records { additionals, .. }) => assert_eq!(additionals.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            z.lookup(
                &f,
                "_grpc._tcp.web.default.svc.cluster.local.",
                RecordType::SRV
            ),
            Some(Answer::NxDomain)
        );
    }

    #[test]
    fn missing_names_are_nxdomain_and_other_types_nodata() {
        let z = Zone::new("cluster.local").unwrap();
        let f = fake();
        for missing in [
            "nope.default.svc.cluster.local.",
            "web.other.svc.cluster.local.",
            "web.default.default.svc.cluster.local.",
            "a.b.c.d.e.f.cluster.local.",
            "x.web.default.svc.cluster.local.",
            "not-an-ip.default.pod.cluster.local.",
        ] {
            assert_eq!(
                z.lookup(&f, missing, RecordType::A),
                Some(Answer::NxDomain),
                "{missing}"
            );
        }
        assert_eq!(
            z.lookup(&f, "web.default.svc.cluster.local.", RecordType::AAAA),
            Some(Answer::NoData)
        );
        assert_eq!(
            z.lookup(&f, "svc.cluster.local.", RecordType::A),
            Some(Answer::NoData)
        );
        assert_eq!(z.lookup(&f, "example.com.", RecordType::A), None);
        assert_eq!(z.lookup(&f, "notcluster.local.", RecordType::A), None);
        assert!(matches!(
            z.lookup(&f, "cluster.local.", RecordType::SOA),
            Some(Answer::Records { .. })
        ));
    }
}
