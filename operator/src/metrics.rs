//! Prometheus metrics of the operator: reconciles, errors by reason, reconcile duration, and
//! whether this replica leads.

use std::sync::atomic::AtomicI64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label set of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::metric_label`].
    pub reason: String,
}

/// Label set of the per-Broker gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    /// The Broker's Kubernetes namespace.
    pub namespace: String,
    /// The Broker's name.
    pub broker: String,
}

/// The operator's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed, by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge<i64, AtomicI64>,
    /// 1 for each Broker whose last status was Ready, 0 for each other one (for alerts).
    pub broker_ready: Family<BrokerLabels, Gauge<i64, AtomicI64>>,
    /// Unix time at which each Broker's serving certificate expires (for alerts).
    pub certificate_not_after: Family<BrokerLabels, Gauge<i64, AtomicI64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            errors: Family::default(),
            duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            leader: Gauge::default(),
            broker_ready: Family::default(),
            certificate_not_after: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `starling_operator` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("starling_operator");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            self.errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            self.duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
        r.register(
            "broker_ready",
            "1 when the Broker's last status was Ready, else 0",
            self.broker_ready.clone(),
        );
        r.register(
            "certificate_not_after_timestamp_seconds",
            "Unix time at which the Broker's serving certificate expires",
            self.certificate_not_after.clone(),
        );
    }

    /// Records when the Broker `namespace/broker`'s certificate expires.
    pub fn set_certificate_not_after(&self, namespace: &str, broker: &str, unix_seconds: i64) {
        self.certificate_not_after
            .get_or_create(&BrokerLabels {
                namespace: namespace.to_owned(),
                broker: broker.to_owned(),
            })
            .set(unix_seconds);
    }

    /// Records whether the Broker `namespace/broker` is Ready.
    pub fn set_broker_ready(&self, namespace: &str, broker: &str, ready: bool) {
        self.broker_ready
            .get_or_create(&BrokerLabels {
                namespace: namespace.to_owned(),
                broker: broker.to_owned(),
            })
            .set(i64::from(ready));
    }

    /// Forgets a deleted Broker.
    pub fn forget_broker(&self, namespace: &str, broker: &str) {
        let labels = BrokerLabels {
            namespace: namespace.to_owned(),
            broker: broker.to_owned(),
        };
        self.broker_ready.remove(&labels);
        self.certificate_not_after.remove(&labels);
    }

    /// Counts a failed reconcile.
    pub fn count_error(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_exported_by_reason() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.reconciles.inc();
        m.count_error("ApiUnreachable");
        m.count_error("ApiUnreachable");
        m.duration.observe(0.2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(
            text.contains("starling_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("starling_operator_reconcile_errors_total{reason=\"ApiUnreachable\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("starling_operator_reconcile_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn broker_readiness_is_a_gauge_per_broker_that_deletion_removes() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        m.set_broker_ready("iot", "orders", true);
        m.set_broker_ready("iot", "sensors", false);
        let encode = || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
            text
        };
        let text = encode();
        assert!(
            text.contains("starling_operator_broker_ready{namespace=\"iot\",broker=\"orders\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("starling_operator_broker_ready{namespace=\"iot\",broker=\"sensors\"} 0"),
            "{text}"
        );
        m.set_certificate_not_after("iot", "sensors", 1_900_000_000);
        assert!(
            encode().contains("starling_operator_certificate_not_after_timestamp_seconds{namespace=\"iot\",broker=\"sensors\"} 1900000000"),
            "{}",
            encode()
        );
        m.forget_broker("iot", "sensors");
        assert!(!encode().contains("broker=\"sensors\""));
    }
}
