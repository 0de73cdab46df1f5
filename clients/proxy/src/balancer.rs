//! Picks the endpoint a new connection goes to: round-robin over the ready
//! endpoints, or the endpoint a client used last when the service pins
//! clients (`sessionAffinity: ClientIP`) and the pin has not expired.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Endpoints of one service port and how clients are spread over them.
#[derive(Default)]
pub struct Balancer {
    endpoints: RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
    affinity: RwLock<Option<Duration>>,
    pins: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Balancer {
    /// A balancer with no endpoints.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the ready endpoints (connections already open are not touched).
    pub fn set_endpoints(&self, mut endpoints: Vec<SocketAddr>) {
        endpoints.sort();
        endpoints.dedup();
        let mut current = self
            .endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if **current != endpoints {
            *current = Arc::new(endpoints);
        }
    }

    /// Pins clients to an endpoint for `timeout` after their last connection (`None`: no pinning).
    pub fn set_affinity(&self, timeout: Option<Duration>) {
        *self
            .affinity
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = timeout;
        if timeout.is_none() {
            self.pins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }

    /// The ready endpoints.
    pub fn endpoints(&self) -> Arc<Vec<SocketAddr>> {
        self.endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether any endpoint is ready.
    pub fn has_endpoints(&self) -> bool {
        !self.endpoints().is_empty()
    }

    /// Endpoints to try for a connection from `client`, best first: the
    /// pinned one (if any and still ready), then round-robin order.
    pub fn pick(&self, client: IpAddr) -> Vec<SocketAddr> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        let mut order: Vec<SocketAddr> = endpoints
            .iter()
            .cycle()
            .skip(start)
            .take(endpoints.len())
            .copied()
            .collect();
        let affinity = *self
            .affinity
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(timeout) = affinity {
            let now = Instant::now();
            let mut pins = self
                .pins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let pinned = pins
                .get(&client)
                .filter(|(ep, at)| now.duration_since(*at) < timeout && endpoints.contains(ep))
                .map(|(ep, _)| *ep);
            let Some(&chosen) = pinned.as_ref().or(order.first()) else {
                return order;
            };
            pins.insert(client, (chosen, now));
            if pins.len() > 4096 {
                pins.retain(|_, (_, at)| now.duration_since(*at) < timeout);
            }
            if let Some(i) = order.iter().position(|e| *e == chosen) {
                order.swap(0, i);
            }
        }
        order
    }

    /// `client` could not reach `endpoint`: forget the pin so the next try goes elsewhere.
    pub fn failed(&self, client: IpAddr, endpoint: SocketAddr) {
        let mut pins = self
            .pins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pins.get(&client).is_some_and(|(e, _)| *e == endpoint) {
            pins.remove(&client);
        }
    }

    /// Records that `client` ended up on `endpoint` (after a failover).
    pub fn used(&self, client: IpAddr, endpoint: SocketAddr) {
        if self
            .affinity
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
        {
            self.pins
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(client, (endpoint, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let b = Balancer::new();
        b.set_endpoints(eps(3));
        let mut counts = HashMap::new();
        for i in 0..300u32 {
            let client = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            *counts.entry(b.pick(client)[0]).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c == 100), "{counts:?}");
    }

    #[test]
    fn pick_lists_every_endpoint_for_failover() {
        let b = Balancer::new();
        b.set_endpoints(eps(4));
        let order = b.pick(IpAddr::from([1, 2, 3, 4]));
        assert_eq!(order.len(), 4);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, eps(4));
        assert!(Balancer::new().pick(IpAddr::from([1, 2, 3, 4])).is_empty());
    }

    #[test]
    fn client_ip_affinity_pins_until_timeout_or_endpoint_loss() {
        let b = Balancer::new();
        b.set_endpoints(eps(3));
        b.set_affinity(Some(Duration::from_millis(200)));
        let client = IpAddr::from([10, 1, 1, 1]);
        let first = b.pick(client)[0];
        for _ in 0..20 {
            assert_eq!(b.pick(client)[0], first);
        }
        // Another client is spread as usual.
        let other = IpAddr::from([10, 1, 1, 2]);
        let seen: std::collections::HashSet<_> = (0..6)
            .map(|_| {
                b.failed(other, b.pick(other)[0]);
                b.pick(other)[0]
            })
            .collect();
        assert!(seen.len() > 1);
        // The pinned endpoint goes away: the client moves and stays.
        b.set_endpoints(eps(3).into_iter().filter(|e| *e != first).collect());
        let moved = b.pick(client)[0];
        assert_ne!(moved, first);
        assert_eq!(b.pick(client)[0], moved);
        // The pin expires after the timeout without connections.
        std::thread::sleep(Duration::from_millis(250));
        b.set_endpoints(eps(3));
        let picks: std::collections::HashSet<_> = (0..3)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(250));
                b.pick(client)[0]
            })
            .collect();
        assert!(
            picks.len() > 1,
            "expired pins let the client move: {picks:?}"
        );
    }
}
