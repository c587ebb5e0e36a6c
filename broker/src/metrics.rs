//! Prometheus metrics of the broker, served at `/metrics` on the HTTP listener.
//!
//! Counters are cheap atomics; connection tasks bump them directly on the hot path. Label sets
//! are small and fixed (QoS, drop reason, listener kind), so no label value comes from a client.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A JetStream operation (`op` label of `starling_cluster_jetstream_errors_total`).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum JetStreamOp {
    /// Opening or creating a tenant's retained bucket.
    bucket,
    /// Storing a retained message.
    put,
    /// Deleting a retained message (an empty retained payload).
    delete,
    /// Purging an expired retained message.
    purge,
    /// Reading a bucket (the load at start and the updates after it).
    watch,
    /// Deleting a deleted tenant's bucket.
    delete_bucket,
    /// The periodic JetStream availability check.
    account,
}

/// Labels of `starling_cluster_jetstream_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JetStreamOpLabels {
    /// The operation.
    pub op: JetStreamOp,
}

/// Why a message was not delivered to a subscriber (or not accepted from a publisher).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// The subscriber's queue was full (slow consumer).
    queue_full,
    /// The message is larger than the subscriber's Maximum Packet Size.
    packet_too_large,
    /// The message expired before it could be delivered.
    expired,
    /// The session ended with the message still queued.
    session_ended,
    /// The publisher was not allowed to publish to the topic.
    not_authorized,
    /// A QoS 0 message for a session that is not connected.
    offline_qos0,
    /// A PUBACK or PUBREC with an error reason code from the subscriber.
    rejected_by_client,
    /// The on-publish hook left the message out of its answer.
    hook_rejected,
    /// The on-publish hook changed the message's topic.
    hook_topic_changed,
    /// The on-publish hook's request failed (timeout, status, malformed answer, unreachable).
    hook_failed,
    /// The subscriber's current token may not read the topic: the message was queued or in
    /// flight under an earlier token with a wider ACL, and the session resumed or
    /// re-authenticated with a narrower one.
    not_readable,
    /// A retained message the tenant's retained store has no room for
    /// (`limits.max_retained_messages`, `limits.max_retained_bytes`): refused as a whole.
    retained_full,
    /// A QoS 1/2 message refused because the durable store cannot be written (disk full,
    /// I/O error): PUBACK/PUBREC 0x97 or 0x80.
    storage_failed,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 13] = [
        DropReason::queue_full,
        DropReason::packet_too_large,
        DropReason::expired,
        DropReason::session_ended,
        DropReason::not_authorized,
        DropReason::offline_qos0,
        DropReason::rejected_by_client,
        DropReason::hook_rejected,
        DropReason::hook_topic_changed,
        DropReason::hook_failed,
        DropReason::not_readable,
        DropReason::retained_full,
        DropReason::storage_failed,
    ];
}

/// Label set: drop reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: DropReason,
}

/// Label set: QoS.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QosLabels {
    /// 0, 1 or 2.
    pub qos: u8,
}

/// Label set: a reason as a static string (refusals, disconnects).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// Reason, e.g. `not_authorized`.
    pub reason: &'static str,
}

/// Label set: listener kind and a reason as static strings (transport handshakes).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// `mqtts`, `ws`, `wss`.
    pub listener: &'static str,
    /// Reason, e.g. `tls_alpn` or `handshake_timeout`.
    pub reason: &'static str,
}

/// Label set: the broker id a managed tenant runs as (set by the operator or the command line,
/// never by a client).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerIdLabels {
    /// The api's broker id.
    pub broker_id: String,
}

/// Every metric of the broker.
#[derive(Debug)]
pub struct Metrics {
    /// Connections currently open (after CONNACK).
    pub connections: Gauge,
    /// Connections accepted by the network listeners (before CONNECT).
    pub sockets_accepted: Counter,
    /// CONNECTs accepted.
    pub connects: Counter,
    /// CONNECTs refused, by reason.
    pub connects_refused: Family<CodeLabels, Counter>,
    /// Credentials refused, by reason (`bad_signature`, `expired`, `revoked`, ...).
    pub auth_failures: Family<CodeLabels, Counter>,
    /// Connections closed by the broker because of a protocol error, by reason.
    pub protocol_errors: Family<CodeLabels, Counter>,
    /// PUBLISH packets received from clients, by QoS.
    pub messages_in: Family<QosLabels, Counter>,
    /// PUBLISH packets sent to clients, by QoS.
    pub messages_out: Family<QosLabels, Counter>,
    /// Bytes read from clients.
    pub bytes_in: Counter,
    /// Bytes written to clients.
    pub bytes_out: Counter,
    /// Messages not delivered, by reason.
    pub dropped: Family<ReasonLabels, Counter>,
    /// Retained messages held.
    pub retained: Gauge,
    /// Sessions held (connected or not).
    pub sessions: Gauge,
    /// Subscriptions held.
    pub subscriptions: Gauge,
    /// TLS and WebSocket handshakes refused, by listener kind and reason.
    pub handshake_failures: Family<ListenerReasonLabels, Counter>,
    /// On-publish hook requests, by outcome (`ok`, `timeout`, `status`, `malformed`, ...).
    pub hook_requests: Family<CodeLabels, Counter>,
    /// On-publish hook request latency, in seconds.
    pub hook_latency: Histogram,
    /// Messages waiting in the hooks' queues for a request.
    pub hook_queue: Gauge,
    /// Sockets the broker closed that linger, reading what their client still sends.
    pub lingering: Gauge,
    /// Sockets closed at once because `limits.max_lingering` sockets were lingering.
    pub linger_skipped: Counter,
    /// Messages sent to the other replicas through NATS (`[cluster]`).
    pub cluster_sent: Counter,
    /// Messages received from other replicas through NATS.
    pub cluster_received: Counter,
    /// Messages not sent to or not read from NATS (queue full, connection error, malformed).
    pub cluster_errors: Counter,
    /// NATS messages from other replicas dropped because the replica had fallen behind by
    /// `[cluster] receive_queue_bytes` (a frame of QoS 0 messages counts once).
    pub cluster_dropped: Counter,
    /// The last NATS round trip measured (a PING answered), in seconds.
    pub cluster_nats_rtt: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// JetStream operations that failed, by operation.
    pub cluster_jetstream_errors: Family<JetStreamOpLabels, Counter>,
    /// Unix time at which each managed tenant's state was last confirmed current by the control
    /// plane (a new state applied, or a long-poll that found none); absent before the first.
    pub control_plane_synced: Family<BrokerIdLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Control-plane polls that failed (unreachable, refused, or an unusable state).
    pub control_plane_failures: Family<BrokerIdLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("starling");
        let m = Metrics {
            connections: Gauge::default(),
            sockets_accepted: Counter::default(),
            connects: Counter::default(),
            connects_refused: Family::default(),
            auth_failures: Family::default(),
            protocol_errors: Family::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            dropped: Family::default(),
            retained: Gauge::default(),
            sessions: Gauge::default(),
            subscriptions: Gauge::default(),
            handshake_failures: Family::default(),
            hook_requests: Family::default(),
            hook_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            hook_queue: Gauge::default(),
            lingering: Gauge::default(),
            linger_skipped: Counter::default(),
            cluster_sent: Counter::default(),
            cluster_received: Counter::default(),
            cluster_errors: Counter::default(),
            cluster_dropped: Counter::default(),
            cluster_nats_rtt: Gauge::default(),
            cluster_jetstream_errors: Family::default(),
            control_plane_synced: Family::default(),
            control_plane_failures: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connections",
            "MQTT connections open",
            m.connections.clone(),
        );
        registry.register(
            "sockets_accepted",
            "Network connections accepted by the listeners",
            m.sockets_accepted.clone(),
        );
        registry.register("connects", "CONNECTs accepted", m.connects.clone());
        registry.register(
            "connects_refused",
            "CONNECTs refused, by reason",
            m.connects_refused.clone(),
        );
        registry.register(
            "auth_failures",
            "Credentials refused, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "protocol_errors",
            "Connections closed for a protocol error, by reason",
            m.protocol_errors.clone(),
        );
        registry.register(
            "messages_in",
            "PUBLISH packets received, by QoS",
            m.messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "PUBLISH packets sent, by QoS",
            m.messages_out.clone(),
        );
        registry.register("bytes_in", "Bytes read from clients", m.bytes_in.clone());
        registry.register("bytes_out", "Bytes written to clients", m.bytes_out.clone());
        registry.register(
            "dropped",
            "Messages not delivered, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "retained_messages",
            "Retained messages held",
            m.retained.clone(),
        );
        registry.register(
            "sessions",
            "Sessions held, connected or not",
            m.sessions.clone(),
        );
        registry.register(
            "subscriptions",
            "Subscriptions held",
            m.subscriptions.clone(),
        );
        registry.register(
            "handshake_failures",
            "TLS and WebSocket handshakes refused, by listener and reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "hook_requests",
            "On-publish hook requests, by outcome",
            m.hook_requests.clone(),
        );
        registry.register(
            "hook_latency_seconds",
            "On-publish hook request latency",
            m.hook_latency.clone(),
        );
        registry.register(
            "hook_queue",
            "Messages waiting for an on-publish hook request",
            m.hook_queue.clone(),
        );
        registry.register(
            "lingering_sockets",
            "Closed connections still reading what their client sends, before the socket is dropped",
            m.lingering.clone(),
        );
        registry.register(
            "linger_skipped",
            "Connections closed without lingering because too many sockets were lingering",
            m.linger_skipped.clone(),
        );
        registry.register(
            "cluster_sent",
            "Messages sent to the other replicas through NATS",
            m.cluster_sent.clone(),
        );
        registry.register(
            "cluster_received",
            "Messages received from other replicas through NATS",
            m.cluster_received.clone(),
        );
        registry.register(
            "cluster_errors",
            "Messages not sent to or not read from NATS",
            m.cluster_errors.clone(),
        );
        registry.register(
            "cluster_dropped",
            "NATS messages from other replicas dropped because the replica had fallen behind by cluster.receive_queue_bytes (a frame of QoS 0 messages counts once)",
            m.cluster_dropped.clone(),
        );
        registry.register(
            "cluster_nats_rtt_seconds",
            "The last round trip to the NATS server measured (a PING answered), in seconds",
            m.cluster_nats_rtt.clone(),
        );
        registry.register(
            "cluster_jetstream_errors",
            "JetStream operations that failed, by operation",
            m.cluster_jetstream_errors.clone(),
        );
        registry.register(
            "control_plane_synced_timestamp_seconds",
            "Unix time at which the control plane last confirmed a managed tenant's state current",
            m.control_plane_synced.clone(),
        );
        registry.register(
            "control_plane_poll_failures",
            "Control-plane polls that failed, by managed tenant",
            m.control_plane_failures.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Records that the control plane confirmed `broker_id`'s state current now.
    pub fn control_plane_synced(&self, broker_id: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.control_plane_synced
            .get_or_create(&BrokerIdLabels {
                broker_id: broker_id.to_owned(),
            })
            .set(now);
    }

    /// Counts a failed JetStream operation.
    pub fn jetstream_failed(&self, op: JetStreamOp) {
        self.cluster_jetstream_errors
            .get_or_create(&JetStreamOpLabels { op })
            .inc();
    }

    /// Counts a failed control-plane poll for `broker_id`.
    pub fn control_plane_failed(&self, broker_id: &str) {
        self.control_plane_failures
            .get_or_create(&BrokerIdLabels {
                broker_id: broker_id.to_owned(),
            })
            .inc();
    }

    /// Counts a dropped message.
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts `n` dropped messages.
    pub fn count_drops(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped
                .get_or_create(&ReasonLabels { reason })
                .inc_by(n);
        }
    }

    /// Connections open now, and messages in, out and dropped since start, summed over their
    /// labels (for the control plane's health view; see `control::StatsReport`).
    pub fn summary(&self) -> crate::control::StatsReport {
        let qos = |f: &Family<QosLabels, Counter>| {
            (0..=2u8)
                .filter_map(|qos| f.get(&QosLabels { qos }).map(|c| c.get()))
                .sum()
        };
        crate::control::StatsReport {
            instance: String::new(),
            connections: u64::try_from(self.connections.get()).unwrap_or(0),
            messages_in: qos(&self.messages_in),
            messages_out: qos(&self.messages_out),
            dropped: DropReason::ALL
                .iter()
                .filter_map(|&reason| self.dropped.get(&ReasonLabels { reason }).map(|c| c.get()))
                .sum(),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_sums_every_label_and_creates_no_series() {
        let m = Metrics::new();
        m.connections.set(7);
        m.messages_in.get_or_create(&QosLabels { qos: 0 }).inc_by(3);
        m.messages_in.get_or_create(&QosLabels { qos: 2 }).inc_by(2);
        m.messages_out
            .get_or_create(&QosLabels { qos: 1 })
            .inc_by(5);
        m.count_drop(DropReason::queue_full);
        m.count_drops(DropReason::hook_failed, 4);
        let before = m.encode();
        let s = m.summary();
        assert_eq!(
            (s.connections, s.messages_in, s.messages_out, s.dropped),
            (7, 5, 5, 5)
        );
        assert_eq!(m.encode(), before, "reading creates no label sets");
    }

    #[test]
    fn control_plane_sync_is_a_recent_timestamp_per_broker_id() {
        let m = Metrics::new();
        assert!(
            !m.encode()
                .contains("starling_control_plane_synced_timestamp_seconds{")
        );
        m.control_plane_synced("brk_1");
        m.control_plane_failed("brk_2");
        let text = m.encode();
        let line = text
            .lines()
            .find(|l| {
                l.starts_with(
                    "starling_control_plane_synced_timestamp_seconds{broker_id=\"brk_1\"}",
                )
            })
            .unwrap_or_else(|| panic!("{text}"));
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!((now - value).abs() < 60.0, "{value} vs {now}");
        assert!(
            text.contains("starling_control_plane_poll_failures_total{broker_id=\"brk_2\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn drop_reason_all_lists_every_reason_once() {
        // The match has no wildcard: a new reason fails to compile here until it is listed.
        let index = |r: DropReason| match r {
            DropReason::queue_full => 0,
            DropReason::packet_too_large => 1,
            DropReason::expired => 2,
            DropReason::session_ended => 3,
            DropReason::not_authorized => 4,
            DropReason::offline_qos0 => 5,
            DropReason::rejected_by_client => 6,
            DropReason::hook_rejected => 7,
            DropReason::hook_topic_changed => 8,
            DropReason::hook_failed => 9,
            DropReason::not_readable => 10,
            DropReason::retained_full => 11,
            DropReason::storage_failed => 12,
        };
        let mut seen: Vec<usize> = DropReason::ALL.iter().map(|&r| index(r)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..13).collect::<Vec<_>>());
    }
}
