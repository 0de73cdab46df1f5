//! Cluster IPs and node ports of Services. Each allocated value is a key
//! of its own in storage (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>-<protocol>`), created with
//! create-if-absent before the Service is stored, so two API servers on one
//! etcd can never hand out one value twice, and the allocation survives
//! restarts. A reservation is freed when its Service goes or its create
//! fails; a repair pass frees what a crash between the two writes left
//! behind, and re-records what Services hold without a key.
//!
//! Values are picked at random in the range (as Kubernetes does), so that
//! clusters sharing a machine rarely pick the same address.
//!
//! This module owns the reservations and their repair; [`service_ips`] and
//! [`node_ports`] own what is reserved. It runs as the Service kind's
//! [`ObjectHooks`], around the registry's writes; it must not store or
//! change Services itself beyond filling in what it allocated.

pub mod node_ports;
pub mod service_ips;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use skiff::Resource;
use skiff::api::core::v1::Service;
use skiff::net::Ipv4Cidr;
use skiff::resource::object_key;

use crate::error::ApiError;
use crate::object_store::decode_object;
use crate::registry::ObjectHooks;
use crate::storage::{RangeRequest, Storage, StorageError};
use node_ports::{PORT_PREFIX, node_ports, port_key};
use service_ips::{IP_PREFIX, has_cluster_ip, ip_key};

/// Default range of cluster IPs: inside 127.0.0.0/8, so services answer on
/// this machine with no set-up, and apart from pod ranges (127.128.0.0/9).
pub const DEFAULT_SERVICE_CIDR: &str = "127.96.0.0/12";
/// Default range of node ports (Kubernetes').
pub const DEFAULT_NODE_PORTS: RangeInclusive<u16> = 30000..=32767;

/// A reservation younger than this may belong to a create in flight: repair leaves it.
const REPAIR_GRACE: Duration = Duration::from_secs(60);

/// Who holds an allocated value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    /// "namespace/name" of the Service.
    owner: String,
    /// Its uid.
    uid: String,
    /// When it was reserved (seconds since the epoch).
    at: u64,
}

/// Allocates Services' cluster IPs and node ports.
pub struct ServiceAllocator {
    storage: Arc<dyn Storage>,
    ips: Ipv4Cidr,
    ports: RangeInclusive<u16>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn storage_error(e: StorageError) -> ApiError {
    ApiError::from_storage("Service", "", e)
}

impl ServiceAllocator {
    /// Allocates cluster IPs from `service_cidr` and node ports from `ports`.
    pub fn new(
        storage: Arc<dyn Storage>,
        service_cidr: &str,
        ports: RangeInclusive<u16>,
    ) -> Result<Self, String> {
        if ports.is_empty() {
            return Err("the node port range is empty".into());
        }
        Ok(Self {
            storage,
            ips: service_ips::parse_range(service_cidr)?,
            ports,
        })
    }

    /// The cluster IP range.
    pub fn range(&self) -> Ipv4Cidr {
        self.ips
    }

    /// Records `svc` as the holder of `key`; false when another holds it.
    async fn reserve(&self, key: &str, svc: &Service) -> Result<bool, ApiError> {
        let value = serde_json::to_vec(&Reservation {
            owner: object_key(svc.namespace(), svc.name()),
            uid: svc.meta().uid.clone(),
            at: now_secs(),
        })
        .map_err(|e| ApiError::Internal(format!("encoding a reservation: {e}")))?;
        match self.storage.create(key, Bytes::from(value)).await {
            Ok(_) => Ok(true),
            Err(StorageError::AlreadyExists { .. }) => {
                // Ours already (a repair re-recorded it)?
                Ok(self
                    .holder(key)
                    .await?
                    .is_some_and(|r| r.uid == svc.meta().uid))
            }
            Err(e) => Err(storage_error(e)),
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<Reservation>, ApiError> {
        Ok(self
            .storage
            .get(key)
            .await
            .map_err(storage_error)?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Frees `key` if `uid` holds it.
    async fn release(&self, key: &str, uid: &str) {
        if let Ok(Some(kv)) = self.storage.get(key).await {
            let holder: Option<Reservation> = serde_json::from_slice(&kv.value).ok();
            if holder.is_none_or(|h| h.uid == uid) {
                let _ = self.storage.delete(key, Some(kv.mod_revision)).await;
            }
        }
    }

    /// Every reserved key under `prefix`.
    async fn reserved(&self, prefix: &str) -> Result<HashSet<String>, ApiError> {
        let mut out = HashSet::new();
        let mut start_after = String::new();
        loop {
            let page = self
                .storage
                .range(RangeRequest {
                    prefix: prefix.to_owned(),
                    start_after: start_after.clone(),
                    revision: None,
                    limit: 10_000,
                })
                .await
                .map_err(storage_error)?;
            if let Some(last) = page.kvs.last() {
                start_after = last.key.clone();
            }
            out.extend(page.kvs.into_iter().map(|kv| kv.key));
            if !page.more {
                return Ok(out);
            }
        }
    }

    /// A free value: random picks first, then a scan of what is taken.
    async fn pick<T: Copy>(
        &self,
        svc: &Service,
        prefix: &str,
        count: u32,
        value: impl Fn(u32) -> T,
        key: impl Fn(T) -> String,
    ) -> Result<Option<T>, ApiError> {
        for _ in 0..32 {
            let v = value(rand::rng().random_range(0..count));
            if self.reserve(&key(v), svc).await? {
                return Ok(Some(v));
            }
        }
        let taken = self.reserved(prefix).await?;
        let start = rand::rng().random_range(0..count);
        for i in 0..count {
            let v = value((start + i) % count);
            if !taken.contains(&key(v)) && self.reserve(&key(v), svc).await? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn keys_of(svc: &Service) -> Vec<String> {
        let mut keys: Vec<String> = node_ports(svc)
            .into_iter()
            .filter(|(_, p, _)| *p != 0)
            .map(|(_, p, proto)| port_key(p, &proto))
            .collect();
        if let Some(ip) = has_cluster_ip(svc).and_then(|ip| ip.parse::<Ipv4Addr>().ok()) {
            keys.push(ip_key(ip));
        }
        keys
    }

    /// Frees reservations whose Service is gone (older than a minute, so
    /// creates in flight keep theirs) and records what Services hold without
    /// a reservation. Returns (freed, recorded).
    pub async fn repair(&self) -> Result<(usize, usize), ApiError> {
        let mut held: HashSet<String> = HashSet::new();
        let mut services = Vec::new();
        let mut start_after = String::new();
        loop {
            let page = self
                .storage
                .range(RangeRequest {
                    prefix: "/registry/services/".into(),
                    start_after: start_after.clone(),
                    revision: None,
                    limit: 10_000,
                })
                .await
                .map_err(storage_error)?;
            if let Some(last) = page.kvs.last() {
                start_after = last.key.clone();
            }
            for kv in &page.kvs {
                if let Ok(svc) = decode_object::<Service>(&kv.key, &kv.value, kv.mod_revision) {
                    held.extend(Self::keys_of(&svc));
                    services.push(svc);
                }
            }
            if !page.more {
                break;
            }
        }
        let mut freed = 0;
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            for key in self.reserved(prefix).await? {
                if held.contains(&key) {
                    continue;
                }
                if let Ok(Some(kv)) = self.storage.get(&key).await {
                    let r: Option<Reservation> = serde_json::from_slice(&kv.value).ok();
                    let old =
                        r.is_none_or(|r| now_secs().saturating_sub(r.at) >= REPAIR_GRACE.as_secs());
                    if old
                        && self
                            .storage
                            .delete(&key, Some(kv.mod_revision))
                            .await
                            .is_ok()
                    {
                        freed += 1;
                    }
                }
            }
        }
        let mut recorded = 0;
        for svc in &services {
            for key in Self::keys_of(svc) {
                if self.holder(&key).await?.is_none() && self.reserve(&key, svc).await? {
                    // The Service may have been deleted since it was listed,
                    // its delete freeing nothing yet: then this record is a
                    // leak, so free it again.
                    if self.still_stored(svc).await? {
                        recorded += 1;
                    } else {
                        self.release(&key, &svc.meta().uid).await;
                    }
                }
            }
        }
        Ok((freed, recorded))
    }

    /// Whether `svc` (the same object, by uid) is still in storage.
    async fn still_stored(&self, svc: &Service) -> Result<bool, ApiError> {
        let key =
            crate::object_store::keys::object_key(&Service::INFO, svc.namespace(), svc.name());
        Ok(match self.storage.get(&key).await.map_err(storage_error)? {
            Some(kv) => decode_object::<Service>(&kv.key, &kv.value, kv.mod_revision)
                .is_ok_and(|s| s.meta().uid == svc.meta().uid),
            None => false,
        })
    }

    /// Repairs now and then every `every`, until `shutdown`.
    pub async fn run_repairs(
        self: Arc<Self>,
        every: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            match self.repair().await {
                Ok((0, 0)) => {}
                Ok((freed, recorded)) => {
                    tracing::info!(
                        freed,
                        recorded,
                        "repaired service IP and node port allocations"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "repairing service allocations failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectHooks<Service> for ServiceAllocator {
    async fn before_create(&self, svc: &mut Service) -> Result<(), ApiError> {
        let Some(spec) = svc.spec.clone() else {
            return Ok(());
        };
        let mut ip_taken = None;
        match spec.cluster_ip.as_str() {
            "None" => {}
            "" => {
                let ip = self.allocate_ip(svc).await?;
                ip_taken = Some(ip.clone());
                if let Some(spec) = svc.spec.as_mut() {
                    spec.cluster_ip = ip.clone();
                    spec.cluster_ips = vec![ip];
                }
            }
            requested => {
                self.reserve_ip(svc, requested).await?;
                ip_taken = Some(requested.to_owned());
                if let Some(spec) = svc.spec.as_mut()
                    && spec.cluster_ips.is_empty()
                {
                    spec.cluster_ips = vec![requested.to_owned()];
                }
            }
        }
        if let Err(e) = self.reserve_ports(svc, None).await {
            if let Some(ip) = ip_taken.and_then(|ip| ip.parse().ok()) {
                self.release(&ip_key(ip), &svc.meta().uid).await;
            }
            return Err(e);
        }
        Ok(())
    }

    async fn create_failed(&self, svc: &Service) {
        self.deleted(svc).await;
    }

    async fn before_update(&self, new: &mut Service, old: &Service) -> Result<(), ApiError> {
        self.reserve_ports(new, Some(old)).await.map(|_| ())
    }

    async fn update_failed(&self, new: &Service, old: &Service) {
        let kept: HashSet<String> = Self::keys_of(old).into_iter().collect();
        for key in Self::keys_of(new).into_iter().filter(|k| !kept.contains(k)) {
            self.release(&key, &new.meta().uid).await;
        }
    }

    async fn updated(&self, new: &Service, old: &Service) {
        let kept: HashSet<String> = Self::keys_of(new).into_iter().collect();
        for key in Self::keys_of(old).into_iter().filter(|k| !kept.contains(k)) {
            self.release(&key, &old.meta().uid).await;
        }
    }

    async fn deleted(&self, svc: &Service) {
        for key in Self::keys_of(svc) {
            self.release(&key, &svc.meta().uid).await;
        }
    }
}
