//! What clients are told to connect to, per way of exposing a Broker.

use serde_json::json;

use super::*;
use crate::resources::{desired_service, fixtures::broker};

fn service_with(b: &Broker, patch: impl FnOnce(&mut Service)) -> Option<Service> {
    let mut s = desired_service(b);
    patch(&mut s);
    Some(s)
}

fn seen(service: Option<Service>) -> Seen {
    Seen {
        service,
        ..Seen::default()
    }
}

#[test]
fn a_cluster_ip_service_keeps_the_spec_endpoints_without_a_note() {
    let b = broker(json!({"hostname": "mqtt.example.com"}));
    let o = observe(&b, &seen(Some(desired_service(&b))));
    assert_eq!(o.endpoints, b.endpoints());
    assert!(!o.pending);
}

#[test]
fn a_node_port_service_shows_its_node_ports_and_says_so() {
    let b = broker(json!({"hostname": "mqtt.example.com", "service": {"type": "NodePort"}}));
    // Before the API server assigned the ports.
    let o = observe(&b, &seen(Some(desired_service(&b))));
    assert!(o.pending);
    assert_eq!(o.endpoints.mqtts, None);
    let svc = service_with(&b, |s| {
        for p in s.spec.as_mut().unwrap().ports.as_mut().unwrap() {
            p.node_port = Some(match p.name.as_deref() {
                Some("mqtts") => 30883,
                Some("wss-443") => 30443,
                _ => 30884,
            });
        }
    });
    let o = observe(&b, &seen(svc));
    assert!(!o.pending);
    assert_eq!(
        o.endpoints.mqtts.as_deref(),
        Some("mqtts://mqtt.example.com:30883")
    );
    assert_eq!(
        o.endpoints.wss,
        [
            "wss://mqtt.example.com:30443/mqtt",
            "wss://mqtt.example.com:30884/mqtt"
        ]
    );
    assert!(
        o.endpoints.note.as_deref().unwrap().starts_with("NodePort"),
        "{:?}",
        o.endpoints.note
    );
}

fn with_lb(b: &Broker, ip: Option<&str>, hostname: Option<&str>) -> Option<Service> {
    let mut s = desired_service(b);
    s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
        {"ip": ip, "hostname": hostname}
    ]}}))
    .unwrap();
    Some(s)
}

#[test]
fn a_load_balancer_shows_its_address_once_it_has_one() {
    let b = broker(json!({"service": {"type": "LoadBalancer"}}));
    let o = observe(&b, &seen(Some(desired_service(&b))));
    assert!(o.pending, "no address yet");
    assert!(o.endpoints.note.as_deref().unwrap().contains("waiting"));

    let o = observe(&b, &seen(with_lb(&b, Some("203.0.113.7"), None)));
    assert!(!o.pending);
    assert_eq!(
        o.endpoints.mqtts.as_deref(),
        Some("mqtts://203.0.113.7:8883")
    );
    assert_eq!(o.endpoints.wss[0], "wss://203.0.113.7:443/mqtt");
    let o = observe(&b, &seen(with_lb(&b, None, Some("abc.elb.example.net"))));
    assert_eq!(
        o.endpoints.mqtts.as_deref(),
        Some("mqtts://abc.elb.example.net:8883")
    );
    let o = observe(&b, &seen(with_lb(&b, Some("2001:db8::7"), None)));
    assert_eq!(
        o.endpoints.mqtts.as_deref(),
        Some("mqtts://[2001:db8::7]:8883")
    );
}

#[test]
fn a_load_balancer_keeps_the_host_name_the_broker_names_and_its_certificate_covers() {
    let b = broker(json!({"hostname": "mqtt.example.com", "service": {"type": "LoadBalancer"}}));
    let o = observe(&b, &seen(with_lb(&b, Some("203.0.113.7"), None)));
    assert_eq!(
        o.endpoints.mqtts.as_deref(),
        Some("mqtts://mqtt.example.com:8883")
    );
    assert!(o.endpoints.note.unwrap().contains("203.0.113.7"));
}

fn ingress(v: serde_json::Value) -> Ingress {
    serde_json::from_value(v).unwrap()
}

#[test]
fn an_ingress_to_a_wss_port_decides_the_wss_endpoints_by_its_host_and_tls() {
    let b = broker(json!({"hostname": "mqtt.internal"}));
    let rule = |host: &str, port: serde_json::Value, path: &str| {
        json!({"host": host, "http": {"paths": [{"path": path, "pathType": "Prefix",
            "backend": {"service": {"name": "sensors", "port": port}}}]}})
    };
    let tls = ingress(
        json!({"metadata": {"name": "a", "namespace": "iot"}, "spec": {
        "tls": [{"hosts": ["mqtt.example.com"], "secretName": "x"}],
        "rules": [rule("mqtt.example.com", json!({"name": "wss-443"}), "/mqtt")]}}),
    );
    let plain = ingress(
        json!({"metadata": {"name": "b", "namespace": "iot"}, "spec": {
        "rules": [rule("ws.example.com", json!({"number": 8884}), "/")]}}),
    );
    let elsewhere = ingress(
        json!({"metadata": {"name": "c", "namespace": "iot"}, "spec": {
        "tls": [{"hosts": ["other.example.com"]}],
        "rules": [rule("other.example.com", json!({"name": "wss-443"}), "/"),
                  rule("api.example.com", json!({"number": 8883}), "/")]}}),
    );
    let o = observe(
        &b,
        &Seen {
            service: Some(desired_service(&b)),
            ingresses: vec![tls, plain],
            ..Seen::default()
        },
    );
    assert_eq!(
        o.endpoints.wss,
        [
            "ws://ws.example.com:80/mqtt",
            "wss://mqtt.example.com:443/mqtt"
        ]
    );
    assert_eq!(
        o.endpoints.mqtts.as_deref(),
        Some("mqtts://mqtt.internal:8883"),
        "an Ingress carries no MQTT over TLS"
    );
    assert!(o.endpoints.note.unwrap().contains("Ingress"));
    // Another Service's Ingress changes nothing (names differ: "sensors" is ours).
    let mut other = elsewhere.clone();
    for r in other.spec.as_mut().unwrap().rules.as_mut().unwrap() {
        for p in &mut r.http.as_mut().unwrap().paths {
            p.backend.service.as_mut().unwrap().name = "someone-else".to_owned();
        }
    }
    let o = observe(
        &b,
        &Seen {
            ingresses: vec![other],
            ..Seen::default()
        },
    );
    assert_eq!(o.endpoints, b.endpoints());
    // An Ingress to the mqtts port is not wss; to a wss port on a host TLS covers it is.
    let o = observe(
        &b,
        &Seen {
            ingresses: vec![elsewhere],
            ..Seen::default()
        },
    );
    assert_eq!(o.endpoints.wss, ["wss://other.example.com:443/mqtt"]);
}

fn gateway() -> serde_json::Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "mqtt", "namespace": "edge"},
        "spec": {"gatewayClassName": "example", "listeners": [
            {"name": "mqtts", "protocol": "TLS", "port": 8883, "hostname": "mqtt.example.com",
             "tls": {"mode": "Passthrough"}},
            {"name": "https", "protocol": "HTTPS", "port": 443, "hostname": "*.example.com"},
            {"name": "http", "protocol": "HTTP", "port": 80}
        ]},
        "status": {"addresses": [{"type": "IPAddress", "value": "198.51.100.4"}]}})
}

#[test]
fn gateway_routes_give_the_route_or_listener_host_on_the_listener_port() {
    let b = broker(json!({}));
    let tls_route = json!({"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TLSRoute",
        "metadata": {"name": "m", "namespace": "iot"},
        "spec": {"parentRefs": [{"name": "mqtt", "namespace": "edge", "sectionName": "mqtts"}],
                 "rules": [{"backendRefs": [{"name": "sensors", "port": 8883}]}]}});
    let http_route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "w", "namespace": "iot"},
        "spec": {"parentRefs": [{"name": "mqtt", "namespace": "edge", "sectionName": "https"}],
                 "hostnames": ["ws.example.com"],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/mqtt"}}],
                            "backendRefs": [{"name": "sensors", "port": 443}]}]}});
    let o = observe(
        &b,
        &Seen {
            routes: vec![tls_route.clone(), http_route],
            gateways: vec![gateway()],
            ..Seen::default()
        },
    );
    assert_eq!(
        o.endpoints.mqtts.as_deref(),
        Some("mqtts://mqtt.example.com:8883")
    );
    assert_eq!(o.endpoints.wss, ["wss://ws.example.com:443/mqtt"]);
    assert!(o.endpoints.note.unwrap().contains("Gateway API"));

    // No host on the route or the listener: the Gateway's address; plain HTTP is ws://.
    let plain = json!({"kind": "HTTPRoute", "metadata": {"name": "p", "namespace": "iot"},
        "spec": {"parentRefs": [{"name": "mqtt", "namespace": "edge", "sectionName": "http"}],
                 "rules": [{"backendRefs": [{"name": "sensors", "port": 8884}]}]}});
    let o = observe(
        &b,
        &Seen {
            routes: vec![plain],
            gateways: vec![gateway()],
            ..Seen::default()
        },
    );
    assert_eq!(o.endpoints.wss, ["ws://198.51.100.4:80/mqtt"]);

    // A route whose Gateway was not found, or to another Service, changes nothing.
    let o = observe(
        &b,
        &Seen {
            routes: vec![tls_route],
            ..Seen::default()
        },
    );
    assert_eq!(o.endpoints, b.endpoints());
}

#[test]
fn parent_refs_default_to_the_routes_namespace_and_skip_other_kinds() {
    let route = json!({"metadata": {"namespace": "iot"}, "spec": {"parentRefs": [
        {"name": "gw"}, {"name": "svc", "kind": "Service", "group": ""},
        {"name": "gw2", "namespace": "edge", "sectionName": "s", "port": 443}]}});
    assert_eq!(
        parent_refs(&route),
        [
            ("iot".to_owned(), "gw".to_owned(), None, None),
            (
                "edge".to_owned(),
                "gw2".to_owned(),
                Some("s".to_owned()),
                Some(443)
            )
        ]
    );
}

#[test]
fn a_routes_services_are_its_backends_in_its_own_namespace() {
    let route = json!({"metadata": {"namespace": "iot"}, "spec": {"rules": [
        {"backendRefs": [{"name": "trio", "port": 443}, {"name": "other", "namespace": "edge"}]},
        {"backendRefs": [{"name": "trio", "port": 8884}, {"name": "bucket", "kind": "Backend"}]}]}});
    assert_eq!(route_services(&route), ["trio"]);
}
