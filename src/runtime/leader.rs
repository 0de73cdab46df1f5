//! Leader election on a `Lease`: among replicas with the same lease, one
//! holds it and renews it; the others take over once it has not been
//! renewed for its duration. Expiry is judged by when this replica last saw
//! the lease change (as client-go does), so clocks need not agree.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::api::coordination::v1::{Lease, LeaseSpec};
use crate::api::meta::v1::ObjectMeta;
use crate::client::{Api, Error, Result};

/// How an election runs.
#[derive(Debug, Clone)]
pub struct LeaderElectionConfig {
    /// Namespace of the lease.
    pub namespace: String,
    /// Name of the lease (one per group of replicas).
    pub name: String,
    /// This replica's identity (unique among replicas).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
    /// A leader that cannot renew for this long steps down.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// Kubernetes' defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why leading ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The lease could not be renewed within the renew deadline.
    #[error("lost leadership of lease {0}: could not renew it in time")]
    Lost(String),
}

/// Takes part in an election.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    observed: std::sync::Mutex<Option<(LeaseSpec, Instant)>>,
}

impl LeaderElector {
    /// An elector using `api` (any namespace; the config's is used).
    pub fn new(api: Api<Lease>, config: LeaderElectionConfig) -> Self {
        Self {
            api,
            config,
            observed: std::sync::Mutex::new(None),
        }
    }

    fn now() -> prost_types::Timestamp {
        SystemTime::now().into()
    }

    fn spec(&self, acquire: Option<prost_types::Timestamp>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire.or_else(|| Some(Self::now())),
            renew_time: Some(Self::now()),
            lease_transitions: Some(transitions),
        }
    }

    /// One attempt: true if this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let current = match self.api.get_opt(&self.config.name).await? {
            Some(l) => l,
            None => {
                let lease = Lease {
                    metadata: Some(ObjectMeta {
                        name: self.config.name.clone(),
                        namespace: self.config.namespace.clone(),
                        ..Default::default()
                    }),
                    spec: Some(self.spec(None, 0)),
                };
                return match self.api.create(&lease).await {
                    Ok(_) => Ok(true),
                    Err(Error::AlreadyExists(_) | Error::Conflict(_)) => Ok(false),
                    Err(e) => Err(e),
                };
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let now = Instant::now();
        let expired = {
            let mut observed = self.observed.lock().expect("observed lock");
            match observed.as_ref() {
                Some((seen, at)) if *seen == spec => {
                    now.duration_since(*at) >= self.config.lease_duration
                }
                _ => {
                    *observed = Some((spec.clone(), now));
                    false
                }
            }
        };
        let mut next = current.clone();
        if holder == self.config.identity {
            next.spec = Some(LeaseSpec {
                renew_time: Some(Self::now()),
                ..spec
            });
        } else if holder.is_empty() || expired {
            next.spec = Some(self.spec(None, spec.lease_transitions.unwrap_or(0) + 1));
        } else {
            return Ok(false);
        }
        match self.api.update(&next).await {
            Ok(updated) => {
                *self.observed.lock().expect("observed lock") =
                    updated.spec.map(|s| (s, Instant::now()));
                Ok(true)
            }
            Err(Error::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits to become leader, then runs `lead` with a receiver that turns
    /// `true` when leadership is lost, renewing meanwhile. Returns when
    /// `lead` finishes (Ok) or leadership is lost (after `lead` has stopped).
    pub async fn run<F, Fut>(&self, lead: F) -> std::result::Result<(), LeaderError>
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()>,
    {
        // Never stopped: the sender lives as long as the call.
        let (_never, stop) = watch::channel(false);
        self.run_unless(lead, stop).await
    }

    /// Leads whenever elected until `shutdown`, as a resilient loop: `lead`
    /// gets a future that completes when it must stop (leadership lost, or
    /// shutdown); after a lost lease this replica campaigns again in-process,
    /// never giving up. On shutdown the lease is released, so another
    /// replica takes over at once.
    pub async fn lead_until<F, Fut>(&self, mut lead: F, shutdown: impl Future<Output = ()>)
    where
        F: FnMut(futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let campaign = async {
            loop {
                let stop = stop_rx.clone();
                let result = self
                    .run_unless(
                        |mut lost| {
                            let mut stop = stop.clone();
                            lead(Box::pin(async move {
                                tokio::select! {
                                    _ = lost.wait_for(|l| *l) => {}
                                    _ = stop.wait_for(|s| *s) => {}
                                }
                            }))
                        },
                        stop_rx.clone(),
                    )
                    .await;
                if *stop_rx.borrow() {
                    return;
                }
                match result {
                    // `lead` ended by itself.
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(lease = %self.config.name, error = %e, "stepped down; campaigning again")
                    }
                }
            }
        };
        tokio::pin!(campaign);
        tokio::pin!(shutdown);
        tokio::select! {
            _ = &mut campaign => {}
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                campaign.await;
            }
        }
        if let Err(e) = self.release().await {
            tracing::warn!(lease = %self.config.name, error = %e, "could not release the lease");
        }
    }

    /// [`run`](Self::run), giving up the campaign (Ok) once `stop` turns true
    /// while not leading; while leading, `lead` is expected to watch `stop`.
    async fn run_unless<F, Fut>(
        &self,
        lead: F,
        mut stop: watch::Receiver<bool>,
    ) -> std::result::Result<(), LeaderError>
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "leader election attempt failed")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
        tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
        let (lost_tx, lost_rx) = watch::channel(false);
        let renew = async {
            let mut last_renewed = Instant::now();
            loop {
                tokio::time::sleep(self.config.retry_period).await;
                match self.try_acquire_or_renew().await {
                    Ok(true) => last_renewed = Instant::now(),
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(lease = %self.config.name, error = %e, "lease renewal failed");
                        if last_renewed.elapsed() >= self.config.renew_deadline {
                            break;
                        }
                    }
                }
            }
        };
        let lead = lead(lost_rx);
        tokio::pin!(lead);
        tokio::select! {
            _ = &mut lead => Ok(()),
            _ = renew => {
                let _ = lost_tx.send(true);
                lead.await;
                tracing::warn!(lease = %self.config.name, "lost leadership");
                Err(LeaderError::Lost(self.config.name.clone()))
            }
        }
    }

    /// Gives the lease up (so another replica takes over at once).
    pub async fn release(&self) -> Result<()> {
        if let Some(mut lease) = self.api.get_opt(&self.config.name).await?
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.config.identity.as_str())
        {
            if let Some(s) = lease.spec.as_mut() {
                s.holder_identity = None;
            }
            match self.api.update(&lease).await {
                Ok(_) | Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
