//! The NetworkPolicy of a Broker's pods (when the operator runs with
//! `--broker-network-policies`): MQTT over TLS and WebSockets from anywhere (the Service decides
//! who can reach them), the HTTP port with `/metrics` only from the monitoring namespace. Kubelet
//! probes are not subject to NetworkPolicies with the common network plugins.

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use std::collections::BTreeMap;

use super::{
    HTTP_CONTAINER_PORT, MQTTS_CONTAINER_PORT, WSS_CONTAINER_PORT, names, owned_meta,
    selector_labels,
};
use crate::crd::Broker;

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

/// The NetworkPolicy of `b`'s pods; `monitoring_namespace` may scrape their metrics.
pub fn desired_network_policy(b: &Broker, monitoring_namespace: &str) -> NetworkPolicy {
    let l = &b.spec.listeners;
    let mut mqtt_ports = Vec::new();
    if l.mqtts.enabled {
        mqtt_ports.push(tcp(MQTTS_CONTAINER_PORT));
    }
    if l.wss.enabled {
        mqtt_ports.push(tcp(WSS_CONTAINER_PORT));
    }
    let mut ingress = Vec::new();
    if !mqtt_ports.is_empty() {
        // No `from`: every source, as far as the Service exposes the pods.
        ingress.push(NetworkPolicyIngressRule {
            ports: Some(mqtt_ports),
            from: None,
        });
    }
    ingress.push(NetworkPolicyIngressRule {
        ports: Some(vec![tcp(HTTP_CONTAINER_PORT)]),
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    monitoring_namespace.to_owned(),
                )])),
                ..LabelSelector::default()
            }),
            ..NetworkPolicyPeer::default()
        }]),
    });
    NetworkPolicy {
        metadata: owned_meta(b, names::workload(b)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(b)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::broker;
    use serde_json::json;

    #[test]
    fn mqtt_from_anywhere_metrics_only_from_monitoring() {
        let p = desired_network_policy(&broker(json!({})), "monitoring");
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["metadata"]["name"], "sensors");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Broker");
        assert_eq!(
            v["spec"]["podSelector"]["matchLabels"],
            json!({"app.kubernetes.io/instance": "sensors", "starling.dev/broker": "sensors"})
        );
        assert_eq!(v["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            v["spec"]["ingress"],
            json!([
                {"ports": [{"port": 8883, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}]},
                {"ports": [{"port": 9090, "protocol": "TCP"}],
                 "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
            ])
        );
    }

    #[test]
    fn a_disabled_listener_is_not_opened() {
        let b = broker(json!({"listeners": {"wss": {"enabled": false}}}));
        let v = serde_json::to_value(desired_network_policy(&b, "prom")).expect("json");
        assert_eq!(
            v["spec"]["ingress"][0]["ports"],
            json!([{"port": 8883, "protocol": "TCP"}])
        );
        assert_eq!(
            v["spec"]["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "prom"
        );
    }
}
