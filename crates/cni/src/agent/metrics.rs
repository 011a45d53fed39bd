//! The agent's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The agent's Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `ambit_cni_pods_enrolled`: pods currently enrolled.
    pub pods_enrolled: Gauge,
    /// `ambit_cni_plugin_events_total{event,result}`.
    pub events: Family<Vec<(String, String)>, Counter>,
    /// `ambit_cni_reconciles_total`.
    pub reconciles: Counter,
    /// `ambit_cni_reconcile_failures_total`.
    pub failures: Counter,
    /// `ambit_cni_pod_enrol_failures_total`: pods whose enrolment failed
    /// (rolled back, retried by the next reconcile).
    pub enrol_failures: Counter,
    /// `ambit_cni_stale_records_total`: remembered sandboxes skipped at
    /// start because their network namespace is gone.
    pub stale_records: Counter,
    /// `ambit_cni_pods_found_running_total`: pods running before the
    /// agent whose network namespace was found in `/proc`.
    pub found_running: Counter,
    /// `ambit_cni_pod_rule_repairs_total`: enrolled pods whose in-pod
    /// rules had drifted and were put back.
    pub rule_repairs: Counter,
}

impl Metrics {
    /// Registers every metric under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ambit_cni_pods_enrolled",
            "Pods currently enrolled in the mesh",
            self.pods_enrolled.clone(),
        );
        registry.register(
            "ambit_cni_plugin_events",
            "Pod events received from the CNI plugin",
            self.events.clone(),
        );
        registry.register(
            "ambit_cni_reconciles",
            "Reconciles that changed something",
            self.reconciles.clone(),
        );
        registry.register(
            "ambit_cni_reconcile_failures",
            "Reconciles that failed (retried later)",
            self.failures.clone(),
        );
        registry.register(
            "ambit_cni_pod_enrol_failures",
            "Pod enrolments that failed and were rolled back (retried later)",
            self.enrol_failures.clone(),
        );
        registry.register(
            "ambit_cni_stale_records",
            "Remembered sandboxes skipped at start because their network namespace is gone",
            self.stale_records.clone(),
        );
        registry.register(
            "ambit_cni_pods_found_running",
            "Pods running before the agent whose network namespace was found in /proc",
            self.found_running.clone(),
        );
        registry.register(
            "ambit_cni_pod_rule_repairs",
            "Enrolled pods whose in-pod rules had drifted and were repaired",
            self.rule_repairs.clone(),
        );
    }
}
