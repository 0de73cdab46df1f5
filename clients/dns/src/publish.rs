//! The DNS server's own address in the endpoints of the cluster DNS
//! Service (`kube-system/kube-dns`), so that the proxy sends the Service's
//! cluster IP, port 53, to it — as the API server publishes itself as the
//! `kubernetes` Service. Several servers add themselves side by side; one
//! address holds one server (a restarted server on the same address
//! replaces its predecessor's ports).
//!
//! Writes only that Endpoints object.

use std::time::Duration;

use skiff::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::{Client, Error};

/// Namespace and name of the cluster DNS Service.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The ports a DNS server at `port` (and metrics at `metrics`) serves,
/// named as the Service's ports.
fn ports(port: u16, metrics: Option<u16>) -> Vec<EndpointPort> {
    let mut out = vec![
        EndpointPort {
            name: "dns".into(),
            port: i32::from(port),
            protocol: "UDP".into(),
        },
        EndpointPort {
            name: "dns-tcp".into(),
            port: i32::from(port),
            protocol: "TCP".into(),
        },
    ];
    if let Some(m) = metrics {
        out.push(EndpointPort {
            name: "metrics".into(),
            port: i32::from(m),
            protocol: "TCP".into(),
        });
    }
    out
}

/// `subsets` without `ip`, and with it under `with` if given.
fn place(
    subsets: &[EndpointSubset],
    ip: &str,
    with: Option<Vec<EndpointPort>>,
) -> Vec<EndpointSubset> {
    let mut out: Vec<EndpointSubset> = subsets
        .iter()
        .cloned()
        .map(|mut s| {
            s.addresses.retain(|a| a.ip != ip);
            s.not_ready_addresses.retain(|a| a.ip != ip);
            s
        })
        .filter(|s| !s.addresses.is_empty() || !s.not_ready_addresses.is_empty())
        .collect();
    if let Some(ports) = with {
        let address = EndpointAddress {
            ip: ip.to_owned(),
            ..Default::default()
        };
        match out.iter_mut().find(|s| s.ports == ports) {
            Some(s) => {
                s.addresses.push(address);
                s.addresses.sort_by(|a, b| a.ip.cmp(&b.ip));
            }
            None => out.push(EndpointSubset {
                addresses: vec![address],
                not_ready_addresses: vec![],
                ports,
            }),
        }
    }
    out
}

/// Writes `subsets_of(current)` until it sticks (compare-and-swap).
async fn update(
    client: &Client,
    subsets_of: impl Fn(&[EndpointSubset]) -> Vec<EndpointSubset>,
) -> Result<(), Error> {
    let (ns, name) = DNS_SERVICE;
    let api = client.endpoints(ns);
    for _ in 0..20 {
        let result = match api.get_opt(name).await? {
            Some(mut e) => {
                let subsets = subsets_of(&e.subsets);
                if subsets == e.subsets {
                    return Ok(());
                }
                e.subsets = subsets;
                api.update(&e).await.map(|_| ())
            }
            None => {
                let subsets = subsets_of(&[]);
                if subsets.is_empty() {
                    return Ok(());
                }
                api.create(&Endpoints {
                    metadata: Some(ObjectMeta {
                        name: name.to_owned(),
                        namespace: ns.to_owned(),
                        labels: [("k8s-app".to_owned(), "kube-dns".to_owned())].into(),
                        ..Default::default()
                    }),
                    subsets,
                })
                .await
                .map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(Error::Conflict(_) | Error::AlreadyExists(_) | Error::NotFound(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict(format!(
        "endpoints {ns}/{name} kept changing under the DNS server"
    )))
}

/// Adds this server (`ip`, `port`, metrics port) to the DNS Service's endpoints.
pub async fn publish(
    client: &Client,
    ip: &str,
    port: u16,
    metrics: Option<u16>,
) -> Result<(), Error> {
    update(client, |s| place(s, ip, Some(ports(port, metrics)))).await
}

/// Removes this server's address from the DNS Service's endpoints.
pub async fn withdraw(client: &Client, ip: &str) -> Result<(), Error> {
    update(client, |s| place(s, ip, None)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_sit_side_by_side_and_a_restart_replaces_its_predecessor() {
        let a = place(&[], "127.0.0.1", Some(ports(1053, None)));
        let ab = place(&a, "127.0.0.2", Some(ports(1053, None)));
        assert_eq!(ab.len(), 1);
        assert_eq!(ab[0].addresses.len(), 2);
        // 127.0.0.1 restarts on another port.
        let restarted = place(&ab, "127.0.0.1", Some(ports(2053, None)));
        assert_eq!(restarted.len(), 2);
        let ips: Vec<(&str, i32)> = restarted
            .iter()
            .flat_map(|s| {
                s.addresses
                    .iter()
                    .map(move |a| (a.ip.as_str(), s.ports[0].port))
            })
            .collect();
        assert_eq!(ips, [("127.0.0.2", 1053), ("127.0.0.1", 2053)]);
        let gone = place(&restarted, "127.0.0.1", None);
        assert_eq!(gone.len(), 1);
        assert!(place(&gone, "127.0.0.2", None).is_empty());
    }
}
