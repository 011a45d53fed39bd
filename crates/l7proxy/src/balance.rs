//! Endpoint balancing with outlier detection.
//!
//! Round robin or least request ([`LoadBalancer`]) over the candidate
//! endpoints that are not ejected. Least request counts in-flight requests
//! per endpoint ([`Balancer::begin`] returns a guard that holds one until
//! the response body is done) and picks the less loaded of two random
//! candidates (Envoy's power of two choices). An
//! endpoint is ejected for [`OutlierConfig::base_ejection_time`] after
//! [`OutlierConfig::consecutive_errors`] consecutive failures (5xx, connect
//! failure, reset, timeout); any success resets its count. Invariant: when
//! every candidate is ejected, all are used (Envoy's panic threshold), so
//! ejection never turns a degraded service into an unavailable one.
//!
//! Time is passed in, so the state machine is tested without sleeping.
//!
//! Cost: while no endpoint has a failure on record (the usual case), a
//! pick and a successful report take no lock: an atomic count of the
//! health entries says there is nothing to look up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::{LoadBalancer, OutlierConfig};

/// In-flight requests by endpoint key; entries at zero are removed.
type Active = Arc<Mutex<HashMap<String, usize>>>;

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    consecutive: u32,
    ejected_until: Option<Instant>,
}

/// Per-endpoint health, keyed by endpoint (workload uid and port).
#[derive(Debug)]
pub struct Balancer {
    config: OutlierConfig,
    health: Mutex<HashMap<String, Health>>,
    /// `health.len()`, kept under its lock, read without it: zero means
    /// every endpoint is healthy.
    unhealthy: AtomicUsize,
    cursor: AtomicUsize,
    active: Active,
}

/// One in-flight request to an endpoint, counted for least request until
/// dropped.
#[derive(Debug)]
pub struct InFlight {
    active: Active,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut a = match self.active.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = a.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                a.remove(&self.key);
            }
        }
    }
}

impl Balancer {
    /// A balancer with `config`.
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            health: Mutex::new(HashMap::new()),
            unhealthy: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
            active: Arc::default(),
        }
    }

    /// Counts a request to `key` as in flight until the guard is dropped.
    pub fn begin(&self, key: &str) -> InFlight {
        let mut a = match self.active.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        let key = key.to_owned();
        match a.get_mut(&key) {
            Some(n) => *n += 1,
            None => {
                a.insert(key.clone(), 1);
            }
        }
        InFlight {
            active: Arc::clone(&self.active),
            key,
        }
    }

    /// Requests in flight to `key`.
    pub fn in_flight(&self, key: &str) -> usize {
        self.active
            .lock()
            .ok()
            .and_then(|a| a.get(key).copied())
            .unwrap_or(0)
    }

    /// The index in `keys` to use next under `policy`, or `None` when
    /// `keys` is empty.
    pub fn pick<K: AsRef<str>>(
        &self,
        keys: &[K],
        policy: LoadBalancer,
        now: Instant,
    ) -> Option<usize> {
        if keys.is_empty() {
            return None;
        }
        if self.unhealthy.load(Ordering::Acquire) == 0 {
            // Nothing on record: every key is a candidate.
            return self.choose(keys, policy, |i| i, keys.len());
        }
        let healthy: Vec<usize> = match self.health.lock() {
            Ok(h) => (0..keys.len())
                .filter(|&i| {
                    h.get(keys[i].as_ref())
                        .and_then(|s| s.ejected_until)
                        .is_none_or(|until| until <= now)
                })
                .collect(),
            Err(_) => (0..keys.len()).collect(),
        };
        if healthy.is_empty() {
            self.choose(keys, policy, |i| i, keys.len())
        } else {
            self.choose(keys, policy, |i| healthy[i], healthy.len())
        }
    }

    /// One of `n` candidates (`candidate(i)` is the index in `keys` of the
    /// `i`th), `n > 0`.
    fn choose<K: AsRef<str>>(
        &self,
        keys: &[K],
        policy: LoadBalancer,
        candidate: impl Fn(usize) -> usize,
        n: usize,
    ) -> Option<usize> {
        match policy {
            LoadBalancer::RoundRobin => {
                let c = self.cursor.fetch_add(1, Ordering::Relaxed);
                Some(candidate(c % n))
            }
            LoadBalancer::LeastRequest => {
                if n == 1 {
                    return Some(candidate(0));
                }
                let a = fastrand::usize(0..n);
                let b = (a + 1 + fastrand::usize(0..n - 1)) % n;
                let (ia, ib) = (candidate(a), candidate(b));
                let active = self.active.lock().ok()?;
                let load = |i: usize| active.get(keys[i].as_ref()).copied().unwrap_or(0);
                Some(if load(ib) < load(ia) { ib } else { ia })
            }
        }
    }

    /// Records an attempt's result; returns whether it ejected the endpoint.
    pub fn report(&self, key: &str, failed: bool, now: Instant) -> bool {
        if !failed && self.unhealthy.load(Ordering::Acquire) == 0 {
            // No failure on record anywhere: nothing to reset.
            return false;
        }
        let Ok(mut h) = self.health.lock() else {
            return false;
        };
        let ejected = if failed {
            let s = h.entry(key.to_owned()).or_default();
            s.consecutive = s.consecutive.saturating_add(1);
            if self.config.consecutive_errors > 0
                && s.consecutive >= self.config.consecutive_errors
                && s.ejected_until.is_none_or(|u| u <= now)
            {
                s.ejected_until = Some(now + self.config.base_ejection_time);
                s.consecutive = 0;
                tracing::info!(endpoint = key, "outlier detection: endpoint ejected");
                true
            } else {
                false
            }
        } else {
            h.remove(key);
            false
        };
        self.unhealthy.store(h.len(), Ordering::Release);
        ejected
    }

    /// Whether `key` is ejected at `now`.
    pub fn is_ejected(&self, key: &str, now: Instant) -> bool {
        self.health
            .lock()
            .ok()
            .and_then(|h| h.get(key).and_then(|s| s.ejected_until))
            .is_some_and(|u| u > now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ejects_after_consecutive_failures_and_returns() {
        let b = Balancer::new(OutlierConfig {
            consecutive_errors: 3,
            base_ejection_time: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        let keys = ["a", "b"];
        assert!(!b.report("a", true, t0));
        assert!(!b.report("a", true, t0));
        assert!(!b.report("a", false, t0), "a success resets the count");
        assert!(!b.report("a", true, t0));
        assert!(!b.report("a", true, t0));
        assert!(b.report("a", true, t0));
        assert!(b.is_ejected("a", t0));
        for _ in 0..10 {
            assert_eq!(b.pick(&keys, LoadBalancer::RoundRobin, t0), Some(1));
        }
        let later = t0 + Duration::from_secs(11);
        assert!(!b.is_ejected("a", later));
        let picks: Vec<_> = (0..4)
            .filter_map(|_| b.pick(&keys, LoadBalancer::RoundRobin, later))
            .collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn all_ejected_uses_all() {
        let b = Balancer::new(OutlierConfig {
            consecutive_errors: 1,
            base_ejection_time: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        assert!(b.report("a", true, t0));
        assert_eq!(b.pick(&["a"], LoadBalancer::RoundRobin, t0), Some(0));
        assert_eq!(b.pick::<&str>(&[], LoadBalancer::LeastRequest, t0), None);
    }

    #[test]
    fn disabled_never_ejects() {
        let b = Balancer::new(OutlierConfig {
            consecutive_errors: 0,
            base_ejection_time: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(!b.report("a", true, t0));
        }
    }

    #[test]
    fn least_request_prefers_fewer_in_flight() {
        let b = Balancer::new(OutlierConfig::default());
        let t0 = Instant::now();
        let keys = ["a", "b", "c"];
        let busy: Vec<InFlight> = (0..5).map(|_| b.begin("a")).collect();
        let _one = b.begin("b");
        assert_eq!(
            (b.in_flight("a"), b.in_flight("b"), b.in_flight("c")),
            (5, 1, 0)
        );
        // Of any two candidates the less loaded wins: "a" never, and with
        // two candidates only the idle one.
        for _ in 0..200 {
            assert_ne!(b.pick(&keys, LoadBalancer::LeastRequest, t0), Some(0));
            assert_eq!(b.pick(&keys[..2], LoadBalancer::LeastRequest, t0), Some(1));
        }
        let picks: Vec<_> = (0..200)
            .filter_map(|_| b.pick(&keys, LoadBalancer::LeastRequest, t0))
            .collect();
        assert!(picks.contains(&2), "the idle endpoint is chosen: {picks:?}");
        drop(busy);
        assert_eq!(b.in_flight("a"), 0, "guards release their count");
        // Ejection still applies before the load comparison.
        let b2 = Balancer::new(OutlierConfig {
            consecutive_errors: 1,
            base_ejection_time: Duration::from_secs(10),
        });
        assert!(b2.report("c", true, t0));
        for _ in 0..50 {
            assert_ne!(b2.pick(&keys, LoadBalancer::LeastRequest, t0), Some(2));
        }
    }
}
