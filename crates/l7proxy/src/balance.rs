//! Endpoint balancing with outlier detection.
//!
//! Round robin over the candidate endpoints that are not ejected. An
//! endpoint is ejected for [`OutlierConfig::base_ejection_time`] after
//! [`OutlierConfig::consecutive_errors`] consecutive failures (5xx, connect
//! failure, reset, timeout); any success resets its count. Invariant: when
//! every candidate is ejected, all are used (Envoy's panic threshold), so
//! ejection never turns a degraded service into an unavailable one.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::config::OutlierConfig;

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
    cursor: AtomicUsize,
}

impl Balancer {
    /// A balancer with `config`.
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            health: Mutex::new(HashMap::new()),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The index in `keys` to use next, or `None` when `keys` is empty.
    pub fn pick(&self, keys: &[&str], now: Instant) -> Option<usize> {
        if keys.is_empty() {
            return None;
        }
        let healthy: Vec<usize> = match self.health.lock() {
            Ok(h) => (0..keys.len())
                .filter(|&i| {
                    h.get(keys[i])
                        .and_then(|s| s.ejected_until)
                        .is_none_or(|until| until <= now)
                })
                .collect(),
            Err(_) => (0..keys.len()).collect(),
        };
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        if healthy.is_empty() {
            Some(n % keys.len())
        } else {
            healthy.get(n % healthy.len()).copied()
        }
    }

    /// Records an attempt's result; returns whether it ejected the endpoint.
    pub fn report(&self, key: &str, failed: bool, now: Instant) -> bool {
        let Ok(mut h) = self.health.lock() else {
            return false;
        };
        if !failed {
            h.remove(key);
            return false;
        }
        let s = h.entry(key.to_owned()).or_default();
        s.consecutive = s.consecutive.saturating_add(1);
        if self.config.consecutive_errors > 0
            && s.consecutive >= self.config.consecutive_errors
            && s.ejected_until.is_none_or(|u| u <= now)
        {
            s.ejected_until = Some(now + self.config.base_ejection_time);
            s.consecutive = 0;
            tracing::info!(endpoint = key, "outlier detection: endpoint ejected");
            return true;
        }
        false
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
            assert_eq!(b.pick(&keys, t0), Some(1));
        }
        let later = t0 + Duration::from_secs(11);
        assert!(!b.is_ejected("a", later));
        let picks: Vec<_> = (0..4).filter_map(|_| b.pick(&keys, later)).collect();
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
        assert_eq!(b.pick(&["a"], t0), Some(0));
        assert_eq!(b.pick(&[], t0), None);
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
}
