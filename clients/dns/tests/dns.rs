//! The cluster DNS server against a real API server in this process, asked
//! over real UDP and TCP sockets: Services by name (cluster IP, or ready
//! endpoints when headless), a stateful pod by its hostname, SRV records of
//! named ports, NXDOMAIN for what does not exist, other names forwarded to
//! an upstream, a deleted Service gone within seconds, its own address
//! published in kube-system/kube-dns, and queries counted in /metrics.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use skiff::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort, ServiceSpec,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use skiff::params::DeleteParams;
use skiff::testing::eventually;
use skiff_apiserver::testing::TestServer;
use skiff_dns::{Dns, DnsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn meta(ns: &str, name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        namespace: ns.into(),
        ..Default::default()
    })
}

fn service(ns: &str, name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ip.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8080,
                target_port: "8080".into(),
                ..Default::default()
            }],
            selector: [("app".to_owned(), name.to_owned())].into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&query(name, qtype), server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
    let q = query(name, qtype);
    s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
    s.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<String> {
    let mut out: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// An upstream resolver that knows one name, `outside.test.` → 192.0.2.7.
async fn fake_upstream() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_available = true;
            r.queries = q.queries.clone();
            let name = q.queries[0].name().clone();
            if name.to_ascii().eq_ignore_ascii_case("outside.test.") {
                r.answers.push(Record::from_rdata(
                    name,
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
            } else {
                r.metadata.response_code = ResponseCode::NXDomain;
            }
            let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_names_resolve_others_are_forwarded_and_changes_follow() {
    let dir = tempfile::tempdir().unwrap();
    let api = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&api.addr.to_string()).await.unwrap();
    client
        .services("default")
        .create(&service("default", "web", ""))
        .await
        .unwrap();
    let web_ip = client
        .services("default")
        .get("web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip;
    client
        .services("default")
        .create(&service("default", "db", "None"))
        .await
        .unwrap();
    let addr = |ip: &str, host: &str| EndpointAddress {
        ip: ip.into(),
        hostname: host.into(),
        ..Default::default()
    };
    client
        .endpoints("default")
        .create(&Endpoints {
            metadata: meta("default", "db"),
            subsets: vec![EndpointSubset {
                addresses: vec![addr("127.128.9.2", "db-0"), addr("127.128.9.3", "db-1")],
                not_ready_addresses: vec![addr("127.128.9.4", "db-2")],
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: "TCP".into(),
                }],
            }],
        })
        .await
        .unwrap();
    let upstream = fake_upstream().await;
    let dns = Dns::start(
        client.clone(),
        DnsConfig {
            upstreams: Some(vec![upstream]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let at = dns.addr();

    // Synced: a Service by its full name, over UDP and TCP.
    let m = eventually(
        "the DNS server to sync",
        Duration::from_secs(10),
        async || {
            let m = ask_udp(at, "web.default.svc.cluster.local.", RecordType::A).await;
            (m.metadata.response_code == ResponseCode::NoError).then_some(m)
        },
    )
    .await;
    assert_eq!(a_records(&m), std::slice::from_ref(&web_ip));
    assert!(m.metadata.authoritative);
    let m = ask_tcp(at, "web.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), std::slice::from_ref(&web_ip));
    // A headless Service: its ready endpoints only; a stateful pod by hostname.
    let m = ask_udp(at, "db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), ["127.128.9.2", "127.128.9.3"]);
    let m = ask_udp(at, "db-1.db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(a_records(&m), ["127.128.9.3"]);
    // SRV for a named port.
    let m = ask_udp(
        at,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    match &m.answers[0].data {
        RData::SRV(srv) => {
            assert_eq!(srv.port, 8080);
            assert_eq!(srv.target.to_ascii(), "web.default.svc.cluster.local.");
        }
        other => panic!("{other:?}"),
    }
    let mut additional = m.clone();
    additional.answers = m.additionals.clone();
    assert_eq!(a_records(&additional), std::slice::from_ref(&web_ip));
    // What does not exist.
    for missing in [
        "nope.default.svc.cluster.local.",
        "web.default.default.svc.cluster.local.",
        "db-2.db.default.svc.cluster.local.",
    ] {
        let m = ask_udp(at, missing, RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{missing}"
        );
        assert!(
            m.authorities
                .iter()
                .any(|r| r.record_type() == RecordType::SOA),
            "{missing}: the SOA for negative caching"
        );
    }
    // Another type of an existing name: no error, no answer.
    let m = ask_udp(at, "web.default.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    // Names outside the zone go upstream.
    let m = ask_udp(at, "outside.test.", RecordType::A).await;
    assert_eq!(a_records(&m), ["192.0.2.7"]);
    assert!(!m.metadata.authoritative);
    let m = ask_udp(at, "missing.test.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // Its address is the DNS Service's endpoint.
    let eps = client
        .endpoints("kube-system")
        .get("kube-dns")
        .await
        .unwrap();
    let published: Vec<(String, i32, String)> = eps
        .subsets
        .iter()
        .flat_map(|s| {
            s.addresses.iter().flat_map(move |a| {
                s.ports
                    .iter()
                    .map(move |p| (a.ip.clone(), p.port, p.protocol.clone()))
            })
        })
        .collect();
    assert_eq!(
        published,
        [
            (
                "127.0.0.1".to_owned(),
                i32::from(at.port()),
                "UDP".to_owned()
            ),
            (
                "127.0.0.1".to_owned(),
                i32::from(at.port()),
                "TCP".to_owned()
            ),
        ]
    );

    // A deleted Service stops resolving within a few seconds.
    client
        .services("default")
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted service to be NXDOMAIN",
        Duration::from_secs(5),
        async || {
            let m = ask_udp(at, "web.default.svc.cluster.local.", RecordType::A).await;
            (m.metadata.response_code == ResponseCode::NXDomain).then_some(())
        },
    )
    .await;

    // Counted by type and result.
    let metrics = skiff::metrics::global().render();
    assert!(
        metrics
            .contains("skiff_dns_requests_total{type=\"A\",rcode=\"NXDOMAIN\",zone=\"cluster\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("zone=\"forward\""), "{metrics}");

    // Stopping withdraws it.
    dns.stop().await;
    let eps = client
        .endpoints("kube-system")
        .get_opt("kube-dns")
        .await
        .unwrap();
    assert!(eps.as_ref().is_none_or(|e| e.subsets.is_empty()), "{eps:?}");
}
