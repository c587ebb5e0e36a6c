//! The Service in front of the broker pods: the mqtts port (8883 by default) and every wss port
//! (443 and 8884 by default, all to the one WebSocket container port). Type and annotations come
//! from the spec.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{HTTP_CONTAINER_PORT, names, owned_meta, selector_labels};
use crate::crd::{Broker, ServiceType};

/// The broker's Service.
pub fn desired_service(b: &Broker) -> Service {
    let l = &b.spec.listeners;
    let mut ports = Vec::new();
    if l.mqtts.enabled {
        ports.push(ServicePort {
            name: Some("mqtts".to_owned()),
            port: l.mqtts.port,
            target_port: Some(IntOrString::String("mqtts".to_owned())),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        });
    }
    if l.wss.enabled {
        for p in &l.wss.ports {
            ports.push(ServicePort {
                name: Some(format!("wss-{p}")),
                port: *p,
                target_port: Some(IntOrString::String("wss".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            });
        }
    }
    // `/metrics` (the pods' http port) for a ServiceMonitor; only on a ClusterIP Service, so
    // a NodePort or LoadBalancer never puts it outside the cluster (a PodMonitor scrapes the
    // pods directly whatever the type).
    if b.spec.service.type_ == ServiceType::ClusterIP {
        ports.push(ServicePort {
            name: Some("metrics".to_owned()),
            port: HTTP_CONTAINER_PORT,
            target_port: Some(IntOrString::String("http".to_owned())),
            protocol: Some("TCP".to_owned()),
            ..ServicePort::default()
        });
    }
    let mut metadata = owned_meta(b, names::workload(b));
    if !b.spec.service.annotations.is_empty() {
        metadata.annotations = Some(b.spec.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(b.spec.service.type_.as_str().to_owned()),
            selector: Some(selector_labels(b)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::broker;

    fn ports(s: &Service) -> Vec<(String, i32, String)> {
        s.spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let target = match p.target_port {
                    Some(IntOrString::String(s)) => s,
                    other => format!("{other:?}"),
                };
                (p.name.unwrap_or_default(), p.port, target)
            })
            .collect()
    }

    #[test]
    fn the_default_service_exposes_8883_443_and_8884() {
        let s = desired_service(&broker(serde_json::json!({})));
        assert_eq!(
            ports(&s),
            [
                ("mqtts".to_owned(), 8883, "mqtts".to_owned()),
                ("wss-443".to_owned(), 443, "wss".to_owned()),
                ("wss-8884".to_owned(), 8884, "wss".to_owned()),
                ("metrics".to_owned(), 9090, "http".to_owned()),
            ]
        );
        let spec = s.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(
            spec.selector.expect("selector")["starling.dev/broker"],
            "sensors"
        );
        assert!(s.metadata.annotations.is_none());
    }

    #[test]
    fn type_annotations_and_ports_come_from_the_spec() {
        let b = broker(serde_json::json!({
            "service": {"type": "LoadBalancer", "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}},
            "listeners": {"mqtts": {"port": 1883}, "wss": {"enabled": false}}
        }));
        let s = desired_service(&b);
        assert_eq!(
            ports(&s),
            [("mqtts".to_owned(), 1883, "mqtts".to_owned())],
            "no metrics port on a LoadBalancer"
        );
        assert_eq!(s.spec.expect("spec").type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            s.metadata.annotations.expect("annotations")["service.beta.kubernetes.io/aws-load-balancer-type"],
            "nlb"
        );
    }
}
