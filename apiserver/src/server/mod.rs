//! Assembly of the API server: one store and one generic service per kind,
//! server reflection (v1 and v1alpha, for grpcurl 1.8), gRPC health with a
//! status per service, request size limits, and the namespaces every
//! cluster starts with.
//!
//! Owns wiring and start-up; must not hold request logic (each part above
//! owns its own).

pub mod connection;
mod health;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff::Resource;
use skiff::api::apiextensions::v1::ResourceDefinition;
use skiff::api::core::v1::{
    LimitRange, Namespace, Node, Pod, ResourceQuota, Secret, Service, ServiceAccount, ServicePort,
    ServiceSpec,
};
use skiff::api::meta::v1::ObjectMeta;
use skiff::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use skiff::api::scheduling::v1::PriorityClass;
use skiff::api::storage::v1::StorageClass;
use skiff::server::{MessageLimits, ServeWith};
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;

use crate::admission::Admission;
use crate::allocation::ServiceAllocator;
use crate::authz::rbac::RbacAuthorizer;
use crate::cacher::feed::{Feed, FeedStats};
use crate::cacher::{Cacher, CacherConfig, CacherStats};
use crate::error::ApiError;
use crate::filters::request_size::RequestSizeLayer;
use crate::object_store::{ObjectStore, ReadVersion, StorageStore};
use crate::registry::strategy::Strategy;
use crate::registry::{
    ApiContext, MAX_OBJECT_BYTES, ResourceServer, streaming_paths, usage_counter,
};
use crate::storage::Storage;
use crate::storage::embedded::EmbeddedStorage;
use crate::storage::etcd::EtcdStorage;

pub use crate::authz::node::NODE_LEASE_NAMESPACE;

/// The multiplexed watch's service name (health reports it serving).
pub const MULTIPLEXED_WATCH: &str = "skiff.meta.v1.WatchService";

/// Namespaces that exist from the first start.
pub const BOOTSTRAP_NAMESPACES: &[&str] = &[
    "default",
    // Kubernetes' own: add-ons' manifests name kube-system; kube-public is
    // readable by all; kube-node-lease is where Kubernetes keeps node leases.
    "kube-system",
    "kube-public",
    "kube-node-lease",
    // Skiff's components' leases and keys, and its node leases (kept, so
    // that clusters made before the kube-* namespaces keep working).
    "skiff-system",
    "skiff-node-lease",
];

/// Which storage backend to use.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// The embedded store in a data directory.
    Embedded {
        /// Directory holding the database.
        data_dir: PathBuf,
    },
    /// An etcd cluster.
    Etcd {
        /// Client URLs, e.g. `http://127.0.0.1:2379`.
        endpoints: Vec<String>,
        /// Prefix of every key (several clusters may share one etcd).
        key_prefix: String,
    },
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Storage could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    /// Bootstrapping objects failed.
    #[error("cannot bootstrap the cluster: {0}")]
    Bootstrap(#[source] ApiError),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Opens the configured storage backend.
pub async fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, ServerError> {
    Ok(match config {
        StorageConfig::Embedded { data_dir } => Arc::new(EmbeddedStorage::open(data_dir)?),
        StorageConfig::Etcd {
            endpoints,
            key_prefix,
        } => Arc::new(EtcdStorage::connect(endpoints, key_prefix).await?),
    })
}

/// Tuning of an API server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Serve lists and watches from a watch cache (Kubernetes' default);
    /// `None` serves them straight from storage.
    pub watch_cache: Option<CacherConfig>,
    /// How often storage is compacted; `None` never.
    pub compaction_interval: Option<Duration>,
    /// Range Services' cluster IPs come from.
    pub service_cidr: String,
    /// Range of node ports.
    pub node_ports: std::ops::RangeInclusive<u16>,
    /// Authentication, authorization, limits, audit and TLS.
    pub security: SecurityConfig,
    /// How often the health status follows whether storage answers; `None`
    /// keeps it SERVING.
    pub storage_health_interval: Option<Duration>,
}

/// PEM files of the server's TLS identity.
#[derive(Clone)]
pub struct TlsPem {
    /// Certificate chain.
    pub cert: Vec<u8>,
    /// Private key.
    pub key: Vec<u8>,
    /// CA whose client certificates authenticate users (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("client_ca", &self.client_ca.is_some())
            .finish()
    }
}

/// Who may do what, and how much.
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// Credentials accepted; `None` turns authentication off, and every
    /// request acts as an administrator (tests, `skiff apiserver --insecure`).
    pub authentication: Option<crate::authn::AuthConfig>,
    /// Authorize requests with RBAC (else everything is allowed).
    pub rbac: bool,
    /// Limits on requests in flight; `None` for none.
    pub limits: Option<crate::filters::LimitsConfig>,
    /// The audit log's file and level.
    pub audit: Option<(PathBuf, crate::filters::AuditLevel)>,
    /// Serve TLS with this identity (else plaintext).
    pub tls: Option<TlsPem>,
    /// Signs the service-account tokens clients request (projected volumes).
    pub token_signer: Option<crate::registry::service_account::TokenSigner>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            watch_cache: Some(CacherConfig::default()),
            compaction_interval: Some(Duration::from_secs(300)),
            service_cidr: crate::allocation::DEFAULT_SERVICE_CIDR.into(),
            node_ports: crate::allocation::DEFAULT_NODE_PORTS,
            security: SecurityConfig::default(),
            storage_health_interval: Some(Duration::from_secs(1)),
        }
    }
}

type StatsFn = Arc<dyn Fn() -> CacherStats + Send + Sync>;

/// A configured API server, ready to serve.
pub struct ApiServer {
    routes: RoutesBuilder,
    allocator: Arc<ServiceAllocator>,
    filters: crate::filters::FilterConfig,
    authorizer: Option<Arc<RbacAuthorizer>>,
    storage: Arc<dyn Storage>,
    shutdown: tokio::sync::watch::Sender<bool>,
    config: ServerConfig,
    cache_stats: CacheStatsHandle,
    health: tonic_health::server::HealthReporter,
    defined: Arc<crate::apiextensions::DefinedKinds>,
}

struct Registrar {
    routes: RoutesBuilder,
    storage: Arc<dyn Storage>,
    ctx: Arc<ApiContext>,
    config: ServerConfig,
    services: Vec<&'static str>,
    cache_stats: Vec<(&'static str, StatsFn)>,
    /// The one storage watch every cacher is fed by.
    feed: Option<Arc<Feed>>,
    /// Admission, told of every kind so quota can count it.
    admission: Option<Arc<Admission>>,
    /// Stores made before their kind is served (other parts of the server
    /// read them too), by type: `Arc<dyn ObjectStore<K>>` for each such `K`.
    shared: http::Extensions,
    /// Paths of the streaming methods of the kinds served, for the filters.
    streaming: HashSet<String>,
    /// Every kind served, for the multiplexed watch.
    watchable: crate::registry::multiplex::WatchableKinds,
}

impl Registrar {
    /// The store of kind `K`: its cacher, or storage directly.
    fn store<K: Strategy>(&mut self) -> Arc<dyn ObjectStore<K>> {
        match self.config.watch_cache {
            Some(config) => {
                let storage = &self.storage;
                let feed = self
                    .feed
                    .get_or_insert_with(|| Feed::start(storage.clone(), config.feed));
                let cacher = Arc::new(Cacher::<K>::new(feed, config));
                let weak = Arc::downgrade(&cacher);
                self.cache_stats.push((
                    K::INFO.kind,
                    Arc::new(move || weak.upgrade().map(|c| c.stats()).unwrap_or_default()),
                ));
                cacher
            }
            None => Arc::new(StorageStore::<K>::new(self.storage.clone())),
        }
    }

    /// Serves kind `K` from `store` rather than a store of its own: for
    /// kinds other parts of the server read too.
    fn shared<K: Strategy>(&mut self, store: Arc<dyn ObjectStore<K>>) {
        self.shared.insert(store);
    }

    /// Serves kind `K`: the one line a new kind costs.
    fn add<K>(&mut self)
    where
        K: Strategy + ServeWith<ResourceServer<K>>,
    {
        let store = match self.shared.remove::<Arc<dyn ObjectStore<K>>>() {
            Some(store) => store,
            None => self.store::<K>(),
        };
        if let Some(admission) = &self.admission {
            admission.count_kind(usage_counter::<K>());
        }
        self.streaming.extend(streaming_paths::<K>());
        self.add_server(ResourceServer::new(store, self.ctx.clone()));
    }

    fn add_server<K>(&mut self, server: ResourceServer<K>)
    where
        K: Strategy + ServeWith<ResourceServer<K>>,
    {
        let server = Arc::new(server);
        self.watchable.add(&K::INFO, server.clone());
        K::add_service(
            &mut self.routes,
            server,
            MessageLimits {
                max_decoding: MAX_OBJECT_BYTES + 1024,
                max_encoding: usize::MAX,
            },
        );
        self.services.push(K::INFO.service_name);
    }
}

impl ApiServer {
    /// Builds the server over `storage` with the default configuration.
    pub async fn new(storage: Arc<dyn Storage>) -> Result<Self, ServerError> {
        Self::with_config(storage, ServerConfig::default()).await
    }

    /// Builds the server over `storage` and creates the bootstrap namespaces.
    pub async fn with_config(
        storage: Arc<dyn Storage>,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        let storage: Arc<dyn Storage> = Arc::new(crate::storage::metered::MeteredStorage(storage));
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let mut r = Registrar {
            routes: RoutesBuilder::default(),
            storage: storage.clone(),
            // Replaced below, once the namespace store exists.
            ctx: Arc::new(ApiContext {
                namespaces: Arc::new(StorageStore::<Namespace>::new(storage.clone())),
                shutdown: shutdown_rx.clone(),
                kubelets: Arc::new(crate::kubelet_client::KubeletConnector::new(Arc::new(
                    StorageStore::<Node>::new(storage.clone()),
                ))),
                authorizer: None,
                pods: None,
                admission: None,
                allocator: None,
                token_signer: None,
            }),
            config: config.clone(),
            services: Vec::new(),
            cache_stats: Vec::new(),
            feed: None,
            admission: None,
            shared: http::Extensions::new(),
            streaming: HashSet::new(),
            watchable: Default::default(),
        };
        let namespaces: Arc<dyn ObjectStore<Namespace>> = Arc::new(
            crate::object_store::ReadYourWrites::new(r.store::<Namespace>()),
        );
        let nodes = r.store::<Node>();
        let pods = r.store::<Pod>();
        let accounts = r.store::<ServiceAccount>();
        let secrets = r.store::<Secret>();
        let roles = r.store::<Role>();
        let cluster_roles = r.store::<ClusterRole>();
        let role_bindings = r.store::<RoleBinding>();
        let cluster_role_bindings = r.store::<ClusterRoleBinding>();
        let limit_ranges = r.store::<LimitRange>();
        let quotas = r.store::<ResourceQuota>();
        let storage_classes = r.store::<StorageClass>();
        let priority_classes = r.store::<PriorityClass>();
        let services = r.store::<Service>();
        let definitions = r.store::<ResourceDefinition>();
        let admission = Arc::new(crate::admission::Admission::new(
            accounts.clone(),
            limit_ranges.clone(),
            quotas.clone(),
            storage_classes.clone(),
            priority_classes.clone(),
            storage.clone(),
        ));
        let security = &config.security;
        let authorizer = security.rbac.then(|| {
            Arc::new(RbacAuthorizer::new(
                roles.clone(),
                cluster_roles.clone(),
                role_bindings.clone(),
                cluster_role_bindings.clone(),
            ))
        });
        let mut filters = crate::filters::FilterConfig {
            authenticator: security.authentication.clone().map(|a| {
                Arc::new(
                    crate::authn::Authenticator::new(a, accounts.clone(), secrets.clone())
                        .with_pods(pods.clone()),
                )
            }),
            limits: security
                .limits
                .clone()
                .map(|l| Arc::new(crate::filters::Limits::new(l))),
            audit: match &security.audit {
                Some((path, level)) => Some(Arc::new(
                    crate::filters::AuditLog::open(path, *level).map_err(|e| {
                        ServerError::Config(format!("audit log {}: {e}", path.display()))
                    })?,
                )),
                None => None,
            },
            streaming: Default::default(),
        };
        let allocator = Arc::new(
            ServiceAllocator::new(
                storage.clone(),
                &config.service_cidr,
                config.node_ports.clone(),
            )
            .map_err(ServerError::Config)?,
        );
        let ctx = Arc::new(ApiContext {
            namespaces: namespaces.clone(),
            shutdown: shutdown_rx,
            kubelets: Arc::new(crate::kubelet_client::KubeletConnector::new(nodes.clone())),
            authorizer: authorizer.clone(),
            pods: Some(pods.clone()),
            admission: Some(admission.clone()),
            allocator: Some(allocator.clone()),
            token_signer: security.token_signer.clone(),
        });
        r.ctx = ctx.clone();
        r.admission = Some(admission);
        r.shared(namespaces.clone());
        r.shared(nodes);
        r.shared(pods);
        r.shared(accounts);
        r.shared(secrets);
        r.shared(roles);
        r.shared(cluster_roles.clone());
        r.shared(role_bindings);
        r.shared(cluster_role_bindings.clone());
        r.shared(limit_ranges);
        r.shared(quotas);
        r.shared(storage_classes.clone());
        r.shared(priority_classes.clone());
        r.shared(services.clone());
        r.shared(definitions.clone());
        let defined = crate::apiextensions::DefinedKinds::new(
            storage.clone(),
            r.feed.clone(),
            config.watch_cache,
            ctx.clone(),
            definitions,
        );
        // Every kind the API defines, each through its Strategy: a kind
        // without one, or left out here, does not build.
        macro_rules! serve_every_kind {
            ($($kind:ty),* $(,)?) => { $( r.add::<$kind>(); )* };
        }
        skiff::for_each_kind!(serve_every_kind);
        filters.streaming = Arc::new(std::mem::take(&mut r.streaming));

        let reporter = tonic_health::server::HealthReporter::new();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        for name in &r.services {
            reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let mut routes = r.routes;
        routes.add_service(health::service(reporter.clone()));
        let mut watchable = r.watchable;
        watchable.with_more(defined.clone());
        routes.add_service(watchable.into_service(ctx.shutdown.clone(), MAX_OBJECT_BYTES + 1024));
        reporter
            .set_service_status(MULTIPLEXED_WATCH, ServingStatus::Serving)
            .await;
        // Reflection lists what this server serves, not every service the
        // descriptors hold (the kubelet's is served by nodes).
        let mut served: Vec<&str> = r.services.clone();
        served.extend([
            MULTIPLEXED_WATCH,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]);
        let reflection = crate::apiextensions::reflection::LiveReflection::new(
            served.iter().map(|s| (*s).to_owned()).collect(),
            defined.clone(),
        )
        .map_err(|e| ServerError::Config(format!("the API's descriptors: {e}")))?;
        routes.add_service(crate::apiextensions::reflection::v1::service(
            reflection.clone(),
        ));
        routes.add_service(crate::apiextensions::reflection::v1alpha::service(
            reflection,
        ));

        bootstrap_namespaces(&*namespaces, &ctx).await?;
        bootstrap_storage_class(storage_classes, &ctx).await?;
        bootstrap_priority_classes(priority_classes, &ctx).await?;
        bootstrap_dns_service(services, &ctx, &config.service_cidr).await?;
        bootstrap_rbac(&cluster_roles, &cluster_role_bindings, &ctx).await?;
        let cache_stats = CacheStatsHandle {
            kinds: r.cache_stats,
            feed: r.feed.as_ref().map(Arc::downgrade),
        };
        register_cache_metrics(cache_stats.clone());
        defined.load().await.map_err(ServerError::Bootstrap)?;
        Ok(Self {
            routes,
            allocator,
            filters,
            authorizer,
            storage,
            shutdown,
            config,
            cache_stats,
            health: reporter,
            defined,
        })
    }

    /// Statistics of every kind's watch cache.
    pub fn cache_stats(&self) -> Vec<(&'static str, CacherStats)> {
        self.cache_stats.get()
    }

    /// A handle that reads the watch cache statistics while the server runs.
    pub fn cache_stats_handle(&self) -> CacheStatsHandle {
        self.cache_stats.clone()
    }

    /// The storage the server writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let compactor = self
            .config
            .compaction_interval
            .map(|every| tokio::spawn(crate::storage::compactor::run(self.storage.clone(), every)));
        let rbac_refresh = self
            .authorizer
            .clone()
            .map(|a| tokio::spawn(a.refresh(Duration::from_secs(2), self.shutdown.subscribe())));
        let repairs = tokio::spawn(
            self.allocator
                .clone()
                .run_repairs(Duration::from_secs(180), self.shutdown.subscribe()),
        );
        let health = self.config.storage_health_interval.map(|every| {
            tokio::spawn(report_storage_health(
                self.storage.clone(),
                self.health.clone(),
                every,
            ))
        });
        let definitions = tokio::spawn(self.defined.clone().run());
        let streams = self.shutdown;
        let shutdown = async move {
            shutdown.await;
            // End watches so that in-flight requests can drain.
            let _ = streams.send(true);
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.config.security.tls {
            let mut config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
            if let Some(ca) = &tls.client_ca {
                config = config
                    .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                    .client_auth_optional(true);
            }
            builder = builder.tls_config(config)?;
        }
        let result = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .max_concurrent_streams(Some(1 << 20))
            .layer(crate::filters::panic::CatchPanicLayer)
            .layer(crate::filters::FiltersLayer::new(self.filters.clone()))
            .layer(RequestSizeLayer::new(MAX_OBJECT_BYTES))
            .layer(crate::apiextensions::grpc::DefinedKindsLayer::new(
                self.defined.clone(),
            ))
            .add_routes(self.routes.routes())
            // Our own listener: tonic's tcp_nodelay only applies to listeners
            // it binds, so set it on the incoming stream (no Nagle delays).
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true))
                        .with_keepalive(Some(Duration::from_secs(60))),
                    |accepted| accepted.map(crate::server::connection::Connection::new),
                ),
                shutdown,
            )
            .await;
        if let Some(c) = compactor {
            c.abort();
        }
        repairs.abort();
        definitions.abort();
        if let Some(h) = health {
            h.abort();
        }
        if let Some(r) = rbac_refresh {
            r.abort();
        }
        result?;
        Ok(())
    }
}

/// Keeps the gRPC health status ("" service) at SERVING while storage
/// answers a consistent read and NOT_SERVING while it does not (an API
/// server cut off from etcd), so that clients of several API servers move
/// to the others.
async fn report_storage_health(
    storage: Arc<dyn Storage>,
    reporter: tonic_health::server::HealthReporter,
    every: Duration,
) {
    let mut serving = true;
    loop {
        tokio::time::sleep(every).await;
        let answers = matches!(
            tokio::time::timeout(every * 3, storage.current_revision()).await,
            Ok(Ok(_))
        );
        if answers != serving {
            serving = answers;
            let status = if serving {
                tracing::info!("storage answers again: health is SERVING");
                ServingStatus::Serving
            } else {
                tracing::warn!("storage does not answer: health is NOT_SERVING");
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
        }
    }
}

/// Exposes the watch caches of the newest server in this process on `/metrics`.
fn register_cache_metrics(handle: CacheStatsHandle) {
    static CURRENT: std::sync::Mutex<Option<CacheStatsHandle>> = std::sync::Mutex::new(None);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    *CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
    REGISTERED.call_once(|| {
        skiff::metrics::global().collect(Box::new(|e| {
            let Some(handle) = CURRENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() else {
                return;
            };
            let stats = handle.get();
            type Field = fn(&CacherStats) -> f64;
            let families: [(&str, &str, Field); 8] = [
                (
                    "apiserver_registered_watchers",
                    "Open watches by kind.",
                    |s| s.watchers as f64,
                ),
                (
                    "apiserver_watch_cache_objects",
                    "Objects in the watch cache by kind.",
                    |s| s.objects as f64,
                ),
                (
                    "apiserver_watch_cache_resource_version",
                    "Revision the watch cache has reached.",
                    |s| s.revision as f64,
                ),
                (
                    "apiserver_watch_cache_events_total",
                    "Storage events the cache processed.",
                    |s| s.events as f64,
                ),
                (
                    "apiserver_watch_events_total",
                    "Events dispatched to watchers.",
                    |s| s.delivered as f64,
                ),
                (
                    "apiserver_terminated_watchers_total",
                    "Watchers closed for not keeping up.",
                    |s| s.closed_slow as f64,
                ),
                (
                    "apiserver_watch_cache_relists_total",
                    "Times a watch cache re-listed storage.",
                    |s| s.relists as f64,
                ),
                (
                    "apiserver_watch_cache_fresh_waits_total",
                    "Reads and watches that waited for the watch cache to catch up with storage.",
                    |s| s.fresh_waits as f64,
                ),
            ];
            for (name, help, field) in families {
                e.gauge_header(name, help);
                for (kind, s) in &stats {
                    e.sample(name, &[("kind", kind)], field(s));
                }
            }
            if let Some(feed) = handle.feed() {
                type FeedField = fn(&FeedStats) -> f64;
                let families: [(&str, &str, FeedField); 3] = [
                    (
                        "apiserver_storage_watches_opened_total",
                        "Storage watches the watch cache opened (one, plus one per resume or re-list).",
                        |s| s.watches_opened as f64,
                    ),
                    (
                        "apiserver_storage_watch_resumes_total",
                        "Times the storage watch broke and resumed from its last revision.",
                        |s| s.resumes as f64,
                    ),
                    (
                        "apiserver_watch_cache_progress_markers_total",
                        "Progress markers written to confirm the watch cache is fresh.",
                        |s| s.markers as f64,
                    ),
                ];
                for (name, help, field) in families {
                    e.gauge_header(name, help);
                    e.sample(name, &[], field(&feed));
                }
            }
        }));
    });
}

/// Reads watch cache statistics of a running server.
#[derive(Clone)]
pub struct CacheStatsHandle {
    kinds: Vec<(&'static str, StatsFn)>,
    feed: Option<std::sync::Weak<Feed>>,
}

impl CacheStatsHandle {
    /// Statistics of every kind's watch cache.
    pub fn get(&self) -> Vec<(&'static str, CacherStats)> {
        self.kinds.iter().map(|(k, f)| (*k, f())).collect()
    }

    /// Statistics of one kind's watch cache.
    pub fn kind(&self, kind: &str) -> Option<CacherStats> {
        self.kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, f)| f())
    }

    /// Counters of the storage watch feeding the caches (while it runs).
    pub fn feed(&self) -> Option<FeedStats> {
        self.feed.as_ref()?.upgrade().map(|f| f.stats())
    }
}

async fn bootstrap_namespaces(
    namespaces: &dyn ObjectStore<Namespace>,
    ctx: &Arc<ApiContext>,
) -> Result<(), ServerError> {
    let server = ResourceServer::<Namespace>::new(ctx.namespaces.clone(), ctx.clone());
    for name in BOOTSTRAP_NAMESPACES {
        if namespaces
            .get("", name, ReadVersion::Latest)
            .await
            .map_err(ServerError::Bootstrap)?
            .is_some()
        {
            continue;
        }
        let ns = Namespace {
            metadata: Some(ObjectMeta {
                name: (*name).to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        match server.create_object(ns).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ServerError::Bootstrap(e)),
        }
    }
    Ok(())
}

/// The priority classes Kubernetes has from the first start, for pods the
/// cluster cannot do without: (name, value, description).
pub const SYSTEM_PRIORITY_CLASSES: &[(&str, i32, &str)] = &[
    (
        "system-node-critical",
        crate::registry::strategy::SYSTEM_CRITICAL_PRIORITY + 1000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        crate::registry::strategy::SYSTEM_CRITICAL_PRIORITY,
        "Used for system critical pods that must run in the cluster, but can be moved to \
         another node if necessary.",
    ),
];

async fn bootstrap_priority_classes(
    classes: Arc<dyn ObjectStore<PriorityClass>>,
    ctx: &Arc<ApiContext>,
) -> Result<(), ServerError> {
    let server = ResourceServer::<PriorityClass>::new(classes.clone(), ctx.clone());
    for (name, value, description) in SYSTEM_PRIORITY_CLASSES {
        if classes
            .get("", name, ReadVersion::Latest)
            .await
            .map_err(ServerError::Bootstrap)?
            .is_some()
        {
            continue;
        }
        let class = PriorityClass {
            metadata: Some(ObjectMeta {
                name: (*name).to_owned(),
                ..Default::default()
            }),
            value: *value,
            description: (*description).to_owned(),
            ..Default::default()
        };
        match server.create_object(class).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ServerError::Bootstrap(e)),
        }
    }
    Ok(())
}

/// Namespace and name of the cluster DNS Service (Kubernetes' `kube-dns`).
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// The cluster IP the DNS Service asks for: the tenth address of the
/// service range, as kubeadm chooses (127.96.0.10 by default).
pub fn dns_service_ip(service_cidr: &str) -> Option<String> {
    let range: skiff::net::Ipv4Cidr = service_cidr.parse().ok()?;
    range.nth(10).map(|ip| ip.to_string())
}

/// Creates the `kube-dns` Service in kube-system unless it exists: ports
/// `dns` (53/UDP), `dns-tcp` (53/TCP) and `metrics` (9153/TCP), no selector
/// (the DNS servers publish their own addresses as its endpoints).
async fn bootstrap_dns_service(
    services: Arc<dyn ObjectStore<Service>>,
    ctx: &Arc<ApiContext>,
    service_cidr: &str,
) -> Result<(), ServerError> {
    let (ns, name) = DNS_SERVICE;
    if services
        .get(ns, name, ReadVersion::Latest)
        .await
        .map_err(ServerError::Bootstrap)?
        .is_some()
    {
        return Ok(());
    }
    let port = |name: &str, protocol: &str, port: i32| ServicePort {
        name: name.to_owned(),
        protocol: protocol.to_owned(),
        port,
        target_port: port.to_string(),
        ..Default::default()
    };
    let service = |ip: Option<String>| Service {
        metadata: Some(ObjectMeta {
            name: name.to_owned(),
            namespace: ns.to_owned(),
            labels: [
                ("k8s-app", "kube-dns"),
                ("kubernetes.io/cluster-service", "true"),
                ("kubernetes.io/name", "KubeDNS"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        }),
        spec: Some(ServiceSpec {
            cluster_ip: ip.unwrap_or_default(),
            ports: vec![
                port("dns", "UDP", 53),
                port("dns-tcp", "TCP", 53),
                port("metrics", "TCP", 9153),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = ResourceServer::<Service>::new(services, ctx.clone());
    match server
        .create_object(service(dns_service_ip(service_cidr)))
        .await
    {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        // The tenth address is taken (or not in the range): any other will do.
        Err(ApiError::Invalid { .. } | ApiError::Allocated { .. }) => {
            match server.create_object(service(None)).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
                Err(e) => Err(ServerError::Bootstrap(e)),
            }
        }
        Err(e) => Err(ServerError::Bootstrap(e)),
    }
}

/// Name of the storage class that exists from the first start.
pub const LOCAL_PATH_CLASS: &str = "local-path";
/// Provisioner of [`LOCAL_PATH_CLASS`]: the controller manager's local-path provisioner.
pub const LOCAL_PATH_PROVISIONER: &str = "skiff.dev/local-path";

/// Creates the default `local-path` storage class if it is missing (a
/// user who deleted it gets it back on restart, as with k3s).
async fn bootstrap_storage_class(
    classes: Arc<dyn ObjectStore<StorageClass>>,
    ctx: &Arc<ApiContext>,
) -> Result<(), ServerError> {
    if classes
        .get("", LOCAL_PATH_CLASS, ReadVersion::Latest)
        .await
        .map_err(ServerError::Bootstrap)?
        .is_some()
    {
        return Ok(());
    }
    let class = StorageClass {
        metadata: Some(ObjectMeta {
            name: LOCAL_PATH_CLASS.to_owned(),
            annotations: [(
                crate::registry::strategy::DEFAULT_CLASS_ANNOTATION.to_owned(),
                "true".to_owned(),
            )]
            .into(),
            ..Default::default()
        }),
        provisioner: LOCAL_PATH_PROVISIONER.to_owned(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("WaitForFirstConsumer".into()),
        ..Default::default()
    };
    match ResourceServer::<StorageClass>::new(classes, ctx.clone())
        .create_object(class)
        .await
    {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(ServerError::Bootstrap(e)),
    }
}

/// Writes the bootstrap roles and bindings that are missing or changed.
async fn bootstrap_rbac(
    roles: &Arc<dyn ObjectStore<ClusterRole>>,
    bindings: &Arc<dyn ObjectStore<ClusterRoleBinding>>,
    ctx: &Arc<ApiContext>,
) -> Result<(), ServerError> {
    let role_server = ResourceServer::<ClusterRole>::new(roles.clone(), ctx.clone());
    for role in crate::authz::rbac::bootstrap_cluster_roles() {
        match roles
            .get("", role.name(), ReadVersion::Latest)
            .await
            .map_err(ServerError::Bootstrap)?
        {
            Some(existing) if existing.rules == role.rules => {}
            Some(existing) => {
                let mut updated = existing.clone();
                updated.rules = role.rules.clone();
                let _ = roles
                    .update(updated, existing.resource_version() as i64)
                    .await;
            }
            None => match role_server.create_object(role).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(ServerError::Bootstrap(e)),
            },
        }
    }
    let binding_server = ResourceServer::<ClusterRoleBinding>::new(bindings.clone(), ctx.clone());
    for binding in crate::authz::rbac::bootstrap_cluster_role_bindings() {
        let existing = bindings
            .get("", binding.name(), ReadVersion::Latest)
            .await
            .map_err(ServerError::Bootstrap)?;
        if existing.is_none() {
            match binding_server.create_object(binding).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(ServerError::Bootstrap(e)),
            }
        }
    }
    Ok(())
}
