//! The proxy against a real API server in this process, forwarding to real
//! TCP and UDP servers: services without a selector whose Endpoints the
//! tests write, as Kubernetes allows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use skiff::api::core::v1::{
    ClientIpConfig, EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Service, ServicePort,
    ServiceSpec, SessionAffinityConfig,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::Client;
use skiff::params::DeleteParams;
use skiff::testing::eventually;
use skiff_apiserver::testing::TestServer;
use skiff_proxy::ProxyConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

struct Harness {
    client: Client,
    _stop: tokio::sync::oneshot::Sender<()>,
    _server: TestServer,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::embedded(dir.path()).await;
    let client = Client::connect_to(&server.addr.to_string()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ProxyConfig {
        resync: Duration::from_millis(200),
        ..Default::default()
    };
    tokio::spawn(skiff_proxy::run(client.clone(), config, async {
        let _ = stopped.await;
    }));
    Harness {
        client,
        _stop: stop,
        _server: server,
        _dir: dir,
    }
}

/// A TCP server that answers every connection with `id` and closes.
async fn named_server(id: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let id = id.to_owned();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let id = id.clone();
            tokio::spawn(async move {
                let _ = s.write_all(id.as_bytes()).await;
            });
        }
    });
    addr
}

/// A TCP server that echoes what it reads, after the client's half-close, prefixed with `id`.
async fn echo_server(id: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let id = id.to_owned();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let id = id.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut reply = id.as_bytes().to_vec();
                            reply.push(b':');
                            reply.extend_from_slice(&buf[..n]);
                            if s.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(b"|eof").await;
            });
        }
    });
    addr
}

fn service(name: &str, protocol: &str) -> Service {
    Service {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            ports: vec![ServicePort {
                name: "p".into(),
                protocol: protocol.into(),
                port: 8080,
                target_port: "8080".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn endpoints(name: &str, protocol: &str, backends: &[SocketAddr]) -> Endpoints {
    // One subset per backend port (test servers listen on different ports).
    let mut by_port: BTreeMap<u16, Vec<EndpointAddress>> = BTreeMap::new();
    for b in backends {
        by_port.entry(b.port()).or_default().push(EndpointAddress {
            ip: b.ip().to_string(),
            ..Default::default()
        });
    }
    Endpoints {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        subsets: by_port
            .into_iter()
            .map(|(port, addresses)| EndpointSubset {
                addresses,
                not_ready_addresses: vec![],
                ports: vec![EndpointPort {
                    name: "p".into(),
                    port: port.into(),
                    protocol: protocol.into(),
                }],
            })
            .collect(),
    }
}

async fn create_service(h: &Harness, svc: Service, backends: &[SocketAddr]) -> SocketAddr {
    let name = svc.metadata.as_ref().unwrap().name.clone();
    let protocol = svc.spec.as_ref().unwrap().ports[0].protocol.clone();
    let svc = h.client.services("default").create(&svc).await.unwrap();
    h.client
        .endpoints("default")
        .create(&endpoints(&name, &protocol, backends))
        .await
        .unwrap();
    let ip: IpAddr = svc.spec.unwrap().cluster_ip.parse().unwrap();
    SocketAddr::new(ip, 8080)
}

async fn set_endpoints(h: &Harness, name: &str, backends: &[SocketAddr]) {
    let api = h.client.endpoints("default");
    let mut eps = api.get(name).await.unwrap();
    eps.subsets = endpoints(name, "", backends).subsets;
    api.update(&eps).await.unwrap();
}

async fn read_all(mut s: TcpStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// What a connection to `addr` from `from` reads, if it connects.
async fn fetch(addr: SocketAddr, from: Option<IpAddr>) -> Option<String> {
    let stream = match from {
        None => TcpStream::connect(addr).await.ok()?,
        Some(ip) => {
            let s = TcpSocket::new_v4().ok()?;
            s.bind(SocketAddr::new(ip, 0)).ok()?;
            s.connect(addr).await.ok()?
        }
    };
    Some(read_all(stream).await).filter(|s| !s.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_round_robin_over_ready_endpoints() {
    let h = start().await;
    let backends = [
        named_server("a").await,
        named_server("b").await,
        named_server("c").await,
    ];
    let addr = create_service(&h, service("rr", ""), &backends).await;
    eventually(
        "the service to answer",
        Duration::from_secs(30),
        async || fetch(addr, None).await,
    )
    .await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..30 {
        *counts.entry(fetch(addr, None).await.unwrap()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|c| *c == 10), "evenly: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_ready_endpoints_refuses_connections_at_once() {
    let h = start().await;
    let addr = create_service(&h, service("empty", ""), &[]).await;
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let backend = named_server("x").await;
    set_endpoints(&h, "empty", &[backend]).await;
    assert_eq!(
        eventually("the first endpoint", Duration::from_secs(30), async || {
            fetch(addr, None).await
        })
        .await,
        "x"
    );
    set_endpoints(&h, "empty", &[]).await;
    eventually(
        "refusal once the endpoint goes",
        Duration::from_secs(30),
        async || match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_apply_to_new_connections_and_spare_open_ones() {
    let h = start().await;
    let (a, b) = (echo_server("a").await, echo_server("b").await);
    let addr = create_service(&h, service("moving", ""), &[a]).await;
    let mut open = eventually(
        "the service to answer",
        Duration::from_secs(30),
        async || TcpStream::connect(addr).await.ok(),
    )
    .await;
    open.write_all(b"1").await.unwrap();
    let mut buf = [0u8; 16];
    let n = open.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a:1");
    let changed = tokio::time::Instant::now();
    set_endpoints(&h, "moving", &[b]).await;
    eventually(
        "new connections to reach b",
        Duration::from_secs(30),
        async || {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"2").await.ok()?;
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).await.ok()?;
            (&buf[..n] == b"b:2").then_some(())
        },
    )
    .await;
    eprintln!("endpoint change applied after {:?}", changed.elapsed());
    // The connection opened before the change still talks to a.
    open.write_all(b"3").await.unwrap();
    let n = open.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a:3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closes_pass_through_both_ways() {
    let h = start().await;
    let addr = create_service(&h, service("half", ""), &[echo_server("e").await]).await;
    let mut s = eventually(
        "the service to answer",
        Duration::from_secs(30),
        async || TcpStream::connect(addr).await.ok(),
    )
    .await;
    s.write_all(b"hello").await.unwrap();
    // Close our sending side; the server sees EOF, answers, and closes.
    s.shutdown().await.unwrap();
    let reply = read_all(s).await;
    assert_eq!(reply, "e:hello|eof");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_keeps_a_client_on_one_endpoint() {
    let h = start().await;
    let backends = [
        named_server("a").await,
        named_server("b").await,
        named_server("c").await,
    ];
    let mut svc = service("sticky", "");
    let spec = svc.spec.as_mut().unwrap();
    spec.session_affinity = "ClientIP".into();
    spec.session_affinity_config = Some(SessionAffinityConfig {
        client_ip: Some(ClientIpConfig {
            timeout_seconds: Some(600),
        }),
    });
    let addr = create_service(&h, svc, &backends).await;
    let client = IpAddr::from([127, 0, 0, 1]);
    let first = eventually(
        "the service to answer",
        Duration::from_secs(30),
        async || fetch(addr, Some(client)).await,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(fetch(addr, Some(client)).await.unwrap(), first);
    }
    // Other clients are spread over the endpoints.
    let mut others = HashSet::new();
    for i in 2..8u8 {
        others.insert(
            fetch(addr, Some(IpAddr::from([127, 0, 0, i])))
                .await
                .unwrap(),
        );
    }
    assert!(others.len() > 1, "{others:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_are_forwarded_per_client() {
    let h = start().await;
    let mut backends = Vec::new();
    for id in ["u1", "u2"] {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        backends.push(socket.local_addr().unwrap());
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let reply = format!("{id}:{}", String::from_utf8_lossy(&buf[..n]));
                let _ = socket.send_to(reply.as_bytes(), from).await;
            }
        });
    }
    let addr = create_service(&h, service("dns", "UDP"), &backends).await;
    let mut seen = HashSet::new();
    for c in 0..4 {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(addr).await.unwrap();
        let mut buf = [0u8; 1024];
        let reply = eventually("a UDP reply", Duration::from_secs(30), async || {
            client.send(format!("q{c}").as_bytes()).await.ok()?;
            let n = tokio::time::timeout(Duration::from_millis(200), client.recv(&mut buf))
                .await
                .ok()?
                .ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .await;
        let (backend, payload) = reply.split_once(':').unwrap();
        assert_eq!(payload, format!("q{c}"));
        // A client's datagrams keep going to the same endpoint.
        for i in 0..3 {
            client.send(format!("r{i}").as_bytes()).await.unwrap();
            let n = client.recv(&mut buf).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&buf[..n]),
                format!("{backend}:r{i}")
            );
        }
        seen.insert(backend.to_owned());
    }
    assert_eq!(seen.len(), 2, "clients are spread: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_listen_on_the_node_address() {
    let h = start().await;
    let mut svc = service("np", "");
    svc.spec.as_mut().unwrap().r#type = "NodePort".into();
    let cluster = create_service(&h, svc, &[named_server("n").await]).await;
    let node_port = h
        .client
        .services("default")
        .get("np")
        .await
        .unwrap()
        .spec
        .unwrap()
        .ports[0]
        .node_port;
    let node = SocketAddr::from(([127, 0, 0, 1], node_port as u16));
    assert_eq!(
        eventually("the node port", Duration::from_secs(30), async || fetch(
            node, None
        )
        .await)
        .await,
        "n"
    );
    assert_eq!(fetch(cluster, None).await.unwrap(), "n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_go_with_their_service() {
    let h = start().await;
    let addr = create_service(&h, service("gone", ""), &[named_server("g").await]).await;
    eventually(
        "the service to answer",
        Duration::from_secs(30),
        async || fetch(addr, None).await,
    )
    .await;
    h.client
        .services("default")
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the listener to close",
        Duration::from_secs(30),
        async || match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        },
    )
    .await;
}
