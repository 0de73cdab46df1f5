//! Services' cluster IPs and node ports, on both storage backends: unique,
//! from the configured ranges, kept across API server restarts, freed on
//! delete; a requested value out of range is INVALID_ARGUMENT and one in
//! use ALREADY_EXISTS, naming the field and storing nothing.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use skiff::Resource;
use skiff::api::core::v1::{Service, ServicePort, ServiceSpec};
use skiff::api::meta::v1::ObjectMeta;
use skiff::client::{Client, Error};
use skiff::params::DeleteParams;
use skiff_apiserver::ServerConfig;
use skiff_apiserver::storage::etcd::EtcdStorage;
use skiff_apiserver::storage::{
    Deleted, KeyValue, RangeRequest, RangeResponse, Result as StorageResult, Revision, Storage,
    WatchStream,
};
use skiff_apiserver::testing::{EtcdServer, TestServer};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let storage = skiff_apiserver::storage::embedded::EmbeddedStorage::open(dir.path()).unwrap();
                    super::$name(std::sync::Arc::new(storage)).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (storage, _etcd) = super::etcd_storage().await;
                    super::$name(storage).await;
                }
            )*
        }
    };
}

async fn etcd_storage() -> (Arc<dyn Storage>, EtcdServer) {
    let etcd = EtcdServer::start().await;
    let storage = EtcdStorage::connect(std::slice::from_ref(&etcd.endpoint), "/skiff")
        .await
        .unwrap();
    (Arc::new(storage), etcd)
}

on_both_backends!(
    cluster_ips_are_unique_in_range_and_freed_on_delete,
    requested_cluster_ips_are_checked,
    allocations_survive_a_restart,
    node_ports_are_allocated_checked_and_freed,
    repair_frees_leaked_reservations_and_records_missing_ones,
    repair_does_not_re_record_a_service_deleted_while_it_runs,
    the_cluster_dns_service_exists_from_the_first_start,
    a_taken_dns_address_does_not_stop_the_server,
    a_create_refused_for_a_name_in_use_allocates_nothing,
);

/// A server whose cluster IPs come from a /28 (14 addresses), all free:
/// the cluster DNS Service the server makes at its first start is deleted
/// (a restart makes it again).
async fn server(storage: Arc<dyn Storage>) -> (TestServer, Client) {
    let config = ServerConfig {
        service_cidr: "127.99.0.0/28".into(),
        node_ports: 30000..=30009,
        ..Default::default()
    };
    let s = TestServer::start_with(storage, config).await;
    let c = Client::connect_to(&s.addr.to_string()).await.unwrap();
    let dns = c.services("kube-system");
    dns.get("kube-dns").await.expect("the DNS service exists");
    dns.delete("kube-dns", &DeleteParams::default())
        .await
        .expect("the DNS service is deleted");
    (s, c)
}

async fn the_cluster_dns_service_exists_from_the_first_start(storage: Arc<dyn Storage>) {
    let s = TestServer::start_with(storage, ServerConfig::default()).await;
    let c = Client::connect_to(&s.addr.to_string()).await.unwrap();
    let dns = c.services("kube-system").get("kube-dns").await.unwrap();
    let spec = dns.spec.unwrap();
    assert_eq!(
        spec.cluster_ip, "127.96.0.10",
        "the tenth address of the range"
    );
    let ports: Vec<(String, String, i32)> = spec
        .ports
        .iter()
        .map(|p| (p.name.clone(), p.protocol.clone(), p.port))
        .collect();
    assert_eq!(
        ports,
        [
            ("dns".to_owned(), "UDP".to_owned(), 53),
            ("dns-tcp".to_owned(), "TCP".to_owned(), 53),
            ("metrics".to_owned(), "TCP".to_owned(), 9153),
        ]
    );
    assert!(
        spec.selector.is_empty(),
        "its endpoints are the DNS servers' own"
    );
    assert_eq!(dns.metadata.unwrap().labels["k8s-app"], "kube-dns");
}

async fn a_taken_dns_address_does_not_stop_the_server(storage: Arc<dyn Storage>) {
    // A user's Service holds the tenth address when kube-dns is (re)made.
    let (s, c) = server(storage.clone()).await;
    c.services("default")
        .create(&service("squatter", "127.99.0.10"))
        .await
        .unwrap();
    s.stop().await;
    let config = ServerConfig {
        service_cidr: "127.99.0.0/28".into(),
        node_ports: 30000..=30009,
        ..Default::default()
    };
    let s = TestServer::start_with(storage, config).await;
    let c = Client::connect_to(&s.addr.to_string()).await.unwrap();
    let ip = ip_of(&c.services("kube-system").get("kube-dns").await.unwrap());
    assert!(ip.starts_with("127.99.0.") && ip != "127.99.0.10", "{ip}");
}

fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        metadata: Some(ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ip.into(),
            ports: vec![ServicePort {
                port: 80,
                target_port: "8080".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

fn node_port_service(name: &str, node_port: i32) -> Service {
    let mut s = service(name, "");
    let spec = s.spec.as_mut().unwrap();
    spec.r#type = "NodePort".into();
    spec.ports[0].node_port = node_port;
    s
}

fn ip_of(s: &Service) -> String {
    s.spec.as_ref().unwrap().cluster_ip.clone()
}

async fn cluster_ips_are_unique_in_range_and_freed_on_delete(storage: Arc<dyn Storage>) {
    let (_s, c) = server(storage).await;
    let api = c.services("default");
    let mut ips = HashSet::new();
    for i in 0..14 {
        let s = api.create(&service(&format!("s{i}"), "")).await.unwrap();
        let ip = ip_of(&s);
        assert!(ip.starts_with("127.99.0."), "{ip}");
        let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!(
            (1..=14).contains(&last),
            "not the network or broadcast address: {ip}"
        );
        assert_eq!(s.spec.as_ref().unwrap().cluster_ips, vec![ip.clone()]);
        assert!(ips.insert(ip), "unique");
    }
    // The range is full.
    match api.create(&service("one-too-many", "")).await {
        Err(Error::ResourceExhausted { message: m, .. }) => {
            assert!(m.contains("127.99.0.0/28"), "{m}")
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    assert!(api.get_opt("one-too-many").await.unwrap().is_none());
    // Deleting one frees its address for the next.
    let freed = ip_of(&api.get("s3").await.unwrap());
    api.delete("s3", &DeleteParams::default()).await.unwrap();
    let again = api.create(&service("again", "")).await.unwrap();
    assert_eq!(ip_of(&again), freed);
    // Headless services take none.
    let headless = api.create(&service("headless", "None")).await.unwrap();
    assert_eq!(ip_of(&headless), "None");
    // The cluster IP cannot change.
    let mut changed = api.get("s0").await.unwrap();
    // Another address than the one it was given (allocation is random).
    let other = if ip_of(&changed) == "127.99.0.14" {
        "127.99.0.13"
    } else {
        "127.99.0.14"
    };
    changed.spec.as_mut().unwrap().cluster_ip = other.into();
    let result = api.update(&changed).await;
    assert!(matches!(result, Err(Error::Invalid { .. })), "{result:?}");
}

async fn requested_cluster_ips_are_checked(storage: Arc<dyn Storage>) {
    let (_s, c) = server(storage.clone()).await;
    let api = c.services("default");
    let a = api.create(&service("a", "127.99.0.7")).await.unwrap();
    assert_eq!(ip_of(&a), "127.99.0.7");
    let before = storage.current_revision().await.unwrap();
    match api.create(&service("b", "127.99.0.7")).await {
        Err(Error::AlreadyExists(m)) => {
            assert!(
                m.contains("spec.clusterIP") && m.contains("default/a"),
                "{m}"
            )
        }
        other => panic!("expected ALREADY_EXISTS, got {other:?}"),
    }
    for (ip, why) in [
        ("10.0.0.1", "outside the range"),
        ("127.99.0.0", "the network address"),
        ("127.99.0.15", "the broadcast address"),
        ("not-an-ip", "not an address"),
    ] {
        match api.create(&service("c", ip)).await {
            Err(Error::Invalid { fields, .. }) => {
                assert!(
                    fields.iter().any(|(f, _)| f == "spec.clusterIP"),
                    "{why}: {fields:?}"
                )
            }
            other => panic!("{why}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    assert_eq!(
        storage.current_revision().await.unwrap(),
        before,
        "nothing was written"
    );
    assert!(api.get_opt("b").await.unwrap().is_none());
}

async fn allocations_survive_a_restart(storage: Arc<dyn Storage>) {
    let (s, c) = server(storage.clone()).await;
    let a = c
        .services("default")
        .create(&service("a", ""))
        .await
        .unwrap();
    let np = c
        .services("default")
        .create(&node_port_service("np", 0))
        .await
        .unwrap();
    let port = np.spec.as_ref().unwrap().ports[0].node_port;
    s.stop().await;
    let (_s, c) = server(storage).await;
    let api = c.services("default");
    assert!(matches!(
        api.create(&service("b", &ip_of(&a))).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        api.create(&node_port_service("np2", port)).await,
        Err(Error::AlreadyExists(_))
    ));
    // The next 12 take the rest of the /28 without touching a's address.
    for i in 0..12 {
        let s = api.create(&service(&format!("n{i}"), "")).await.unwrap();
        assert_ne!(ip_of(&s), ip_of(&a));
    }
}

async fn node_ports_are_allocated_checked_and_freed(storage: Arc<dyn Storage>) {
    let (_s, c) = server(storage).await;
    let api = c.services("default");
    let a = api.create(&node_port_service("a", 0)).await.unwrap();
    let port = a.spec.as_ref().unwrap().ports[0].node_port;
    assert!((30000..=30009).contains(&port), "{port}");
    match api.create(&node_port_service("b", port)).await {
        Err(Error::AlreadyExists(m)) => assert!(m.contains("spec.ports[0].nodePort"), "{m}"),
        other => panic!("expected ALREADY_EXISTS, got {other:?}"),
    }
    match api.create(&node_port_service("b", 31000)).await {
        Err(Error::Invalid { fields, .. }) => assert_eq!(fields[0].0, "spec.ports[0].nodePort"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    // b's failed create did not keep its cluster IP either: 13 more fit.
    for i in 0..13 {
        api.create(&service(&format!("fill{i}"), "")).await.unwrap();
    }
    api.delete("fill0", &DeleteParams::default()).await.unwrap();
    // Turning a into a ClusterIP service gives its node port back.
    let mut cip = api.get("a").await.unwrap();
    cip.spec.as_mut().unwrap().r#type = "ClusterIP".into();
    cip.spec.as_mut().unwrap().ports[0].node_port = 0;
    let cip = api.update(&cip).await.unwrap();
    assert_eq!(cip.spec.as_ref().unwrap().ports[0].node_port, 0);
    let b = api.create(&node_port_service("b", port)).await.unwrap();
    assert_eq!(b.spec.as_ref().unwrap().ports[0].node_port, port);
    // Updating a NodePort service keeps its port.
    let mut b2 = b.clone();
    b2.meta_mut().labels.insert("x".into(), "y".into());
    b2.spec.as_mut().unwrap().ports[0].node_port = 0;
    let b2 = api.update(&b2).await.unwrap();
    assert_eq!(b2.spec.as_ref().unwrap().ports[0].node_port, port);
}

/// Storage that deletes one Service (and frees its address, as its delete
/// does) right after the first listing of Services: a delete that lands
/// while repair runs.
struct DeleteAfterListing {
    inner: Arc<dyn Storage>,
    victim: String,
    reservation: String,
    done: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Storage for DeleteAfterListing {
    async fn get(&self, key: &str) -> StorageResult<Option<KeyValue>> {
        self.inner.get(key).await
    }
    async fn range(&self, request: RangeRequest) -> StorageResult<RangeResponse> {
        let listing = request.prefix == "/registry/services/";
        let out = self.inner.range(request).await?;
        if listing && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.inner.delete(&self.victim, None).await?;
            self.inner.delete(&self.reservation, None).await?;
        }
        Ok(out)
    }
    async fn create(&self, key: &str, value: Bytes) -> StorageResult<KeyValue> {
        self.inner.create(key, value).await
    }
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> StorageResult<KeyValue> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> StorageResult<Deleted> {
        self.inner.delete(key, expected).await
    }
    async fn put(&self, key: &str, value: Bytes) -> StorageResult<KeyValue> {
        self.inner.put(key, value).await
    }
    async fn watch(&self, prefix: &str, start: Revision) -> StorageResult<WatchStream> {
        self.inner.watch(prefix, start).await
    }
    async fn compact(&self, revision: Revision) -> StorageResult<()> {
        self.inner.compact(revision).await
    }
    async fn current_revision(&self) -> StorageResult<Revision> {
        self.inner.current_revision().await
    }
    fn reports_progress(&self) -> bool {
        self.inner.reports_progress()
    }
}

async fn repair_does_not_re_record_a_service_deleted_while_it_runs(storage: Arc<dyn Storage>) {
    let (s, c) = server(storage.clone()).await;
    let a = c
        .services("default")
        .create(&service("a", ""))
        .await
        .unwrap();
    s.stop().await;
    let reservation = format!("/registry/ranges/serviceips/{}", ip_of(&a));
    let racing: Arc<dyn Storage> = Arc::new(DeleteAfterListing {
        inner: storage.clone(),
        victim: "/registry/services/default/a".into(),
        reservation: reservation.clone(),
        done: false.into(),
    });
    let allocator =
        skiff_apiserver::allocation::ServiceAllocator::new(racing, "127.99.0.0/28", 30000..=30009)
            .unwrap();
    assert_eq!(allocator.repair().await.unwrap(), (0, 0));
    assert!(
        storage.get(&reservation).await.unwrap().is_none(),
        "the deleted Service's address stays free"
    );
}

async fn repair_frees_leaked_reservations_and_records_missing_ones(storage: Arc<dyn Storage>) {
    let (s, c) = server(storage.clone()).await;
    let a = c
        .services("default")
        .create(&service("a", ""))
        .await
        .unwrap();
    s.stop().await;
    // Allocation is random: the ghost's address must be one `a` does not hold.
    let ghost_ip = if ip_of(&a) == "127.99.0.9" {
        "127.99.0.10"
    } else {
        "127.99.0.9"
    };
    let ghost_key = format!("/registry/ranges/serviceips/{ghost_ip}");
    // A crash between reserving and storing leaves a reservation behind; a
    // lost reservation leaves a Service without one.
    storage
        .create(
            &ghost_key,
            Bytes::from_static(br#"{"owner":"default/ghost","uid":"x","at":0}"#),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let key = format!("/registry/ranges/serviceips/{}", ip_of(&a));
    storage.delete(&key, None).await.unwrap();
    let allocator = skiff_apiserver::allocation::ServiceAllocator::new(
        storage.clone(),
        "127.99.0.0/28",
        30000..=30009,
    )
    .unwrap();
    assert_eq!(allocator.repair().await.unwrap(), (1, 1));
    assert!(storage.get(&ghost_key).await.unwrap().is_none());
    assert!(storage.get(&key).await.unwrap().is_some());
    assert_eq!(
        allocator.repair().await.unwrap(),
        (0, 0),
        "nothing left to repair"
    );
    let (_s, c) = server(storage).await;
    assert!(matches!(
        c.services("default")
            .create(&service("b", &ip_of(&a)))
            .await,
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(
        ip_of(
            &c.services("default")
                .create(&service("ghost", ghost_ip))
                .await
                .unwrap()
        ),
        ghost_ip
    );
}

/// Found by `skiff-loadtest fuzz`: a second Service of the same name was
/// refused ALREADY_EXISTS only after a cluster IP had been reserved (and
/// released again), so a refused request wrote twice. The name is now
/// checked first: the refusal leaves the storage revision where it was.
async fn a_create_refused_for_a_name_in_use_allocates_nothing(storage: Arc<dyn Storage>) {
    let (s, c) = server(storage).await;
    let services = c.services("default");
    services.create(&service("web", "")).await.unwrap();
    let before = s.storage.current_revision().await.unwrap();
    for ip in ["", "127.99.0.9"] {
        let err = services.create(&service("web", ip)).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{ip:?}: {err:?}");
        assert_eq!(
            s.storage.current_revision().await.unwrap(),
            before,
            "a refused create ({ip:?}) wrote to storage"
        );
    }
    // A name deleted just before is free at once (a consistent read).
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    services
        .create(&service("web", "127.99.0.9"))
        .await
        .unwrap();
}
