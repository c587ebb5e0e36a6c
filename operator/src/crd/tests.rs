//! Tests of the `Broker` schema: the committed CRD, defaults and validation rules.

use super::*;

const COMMITTED: &str = include_str!("../../../crds/broker.yaml");
const CHART_COPY: &str = include_str!("../../../charts/starling/files/broker-crd.yaml");
const CHART_COPY_WITHOUT_CEL: &str =
    include_str!("../../../charts/starling/files/broker-crd-without-cel.yaml");

#[test]
fn committed_crd_matches_the_generated_one() {
    let generated = crd_yaml().expect("crd renders");
    assert!(
        generated == COMMITTED,
        "crds/broker.yaml is stale: run `cargo run -p starling-operator -- crd > crds/broker.yaml`"
    );
    assert!(
        CHART_COPY == COMMITTED,
        "charts/starling/files/broker-crd.yaml differs from crds/broker.yaml: copy it"
    );
    let without_cel = crd_yaml_without_cel().expect("crd renders");
    assert!(
        without_cel == CHART_COPY_WITHOUT_CEL,
        "charts/starling/files/broker-crd-without-cel.yaml is stale: run \
         `cargo run -p starling-operator -- crd --without-cel > charts/starling/files/broker-crd-without-cel.yaml`"
    );
    assert!(!without_cel.contains("x-kubernetes-validations"));
    let stripped = without_cel.lines().skip(1).collect::<Vec<_>>();
    let plain = generated
        .lines()
        .skip(1)
        .filter(|l| !l.contains("x-kubernetes-validations"))
        .count();
    assert!(stripped.len() < plain, "only the rules are left out");
}

#[test]
fn every_example_broker_passes_the_cel_rules() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            let b: Broker =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                cel_errors(&b).is_empty(),
                "{}: {:?}",
                path.display(),
                cel_errors(&b)
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} examples");
}

fn broker(spec: serde_json::Value) -> Broker {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "starling.dev/v1alpha1",
        "kind": "Broker",
        "metadata": {"name": "sensors", "namespace": "iot"},
        "spec": spec,
    }))
    .expect("a valid Broker")
}

fn cel_errors(b: &Broker) -> Vec<String> {
    match kube::core::cel::validate_cel(b) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn an_empty_spec_takes_the_documented_defaults() {
    let b = broker(serde_json::json!({}));
    assert_eq!(b.spec.replicas, 1);
    assert_eq!(b.spec.listeners.mqtts.port, 8883);
    assert!(b.spec.listeners.mqtts.enabled && b.spec.listeners.wss.enabled);
    assert_eq!(b.spec.listeners.wss.ports, vec![443, 8884]);
    assert_eq!(b.spec.service.type_, ServiceType::ClusterIP);
    assert_eq!(b.spec.tls, TlsSpec::default());
    assert_eq!(b.pubsub_namespace(), "iot");
    assert!(cel_errors(&b).is_empty(), "{:?}", cel_errors(&b));
}

#[test]
fn endpoints_use_the_hostname_or_the_domain() {
    let b = broker(serde_json::json!({"hostname": "mqtt.example.com"}));
    let e = b.endpoints();
    assert_eq!(e.mqtts.as_deref(), Some("mqtts://mqtt.example.com:8883"));
    assert_eq!(
        e.wss,
        vec![
            "wss://mqtt.example.com:443/mqtt",
            "wss://mqtt.example.com:8884/mqtt"
        ]
    );

    let b = broker(serde_json::json!({"domain": "example.net", "namespace": "acme"}));
    assert_eq!(b.host(), "sensors.acme.example.net");

    let b = broker(serde_json::json!({"listeners": {"wss": {"enabled": false}}}));
    assert_eq!(
        b.endpoints().mqtts.as_deref(),
        Some("mqtts://sensors.iot.svc:8883")
    );
    assert!(b.endpoints().wss.is_empty());
}

#[test]
fn hostname_and_domain_together_break_a_cel_rule() {
    let b = broker(serde_json::json!({"hostname": "a.example.com", "domain": "example.com"}));
    let errors = cel_errors(&b);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("either hostname or domain")),
        "{errors:?}"
    );
}

#[test]
fn disabling_every_listener_breaks_a_cel_rule() {
    let b = broker(
        serde_json::json!({"listeners": {"mqtts": {"enabled": false}, "wss": {"enabled": false}}}),
    );
    let errors = cel_errors(&b);
    assert!(
        errors.iter().any(|e| e.contains("at least one listener")),
        "{errors:?}"
    );
}

#[test]
fn an_mqtts_port_shared_with_wss_breaks_a_cel_rule() {
    let b = broker(serde_json::json!({"listeners": {"mqtts": {"port": 443}}}));
    let errors = cel_errors(&b);
    assert!(
        errors.iter().any(|e| e.contains("must differ")),
        "{errors:?}"
    );
}

#[test]
fn renewal_before_the_certificate_is_issued_breaks_a_cel_rule() {
    let b = broker(serde_json::json!({"tls": {"validityDays": 30, "renewBeforeDays": 30}}));
    let errors = cel_errors(&b);
    assert!(
        errors.iter().any(|e| e.contains("renewBeforeDays")),
        "{errors:?}"
    );
}

#[test]
fn a_burst_below_the_rate_breaks_a_cel_rule() {
    let b = broker(serde_json::json!({"limits": {"maxPublishRate": 10, "publishBurst": 5}}));
    let errors = cel_errors(&b);
    assert!(
        errors.iter().any(|e| e.contains("publishBurst")),
        "{errors:?}"
    );
    let ok = broker(serde_json::json!({"limits": {"maxPublishRate": 10, "publishBurst": 20}}));
    assert!(cel_errors(&ok).is_empty());
}

#[test]
fn a_name_that_is_not_a_dns_label_breaks_a_cel_rule() {
    let mut b = broker(serde_json::json!({}));
    b.metadata.name = Some("Sensors.v2".to_owned());
    let errors = cel_errors(&b);
    assert!(errors.iter().any(|e| e.contains("DNS label")), "{errors:?}");
}

/// Changing it is caught by the field's rule. Setting or removing it is the spec-level rule's
/// job on API servers with CEL (the client-side evaluator here does not run it) and the
/// operator's everywhere (`controller::tests`).
#[test]
fn changing_the_pubsub_namespace_breaks_a_transition_rule() {
    let old = broker(serde_json::json!({"namespace": "acme"}));
    let new = broker(serde_json::json!({"namespace": "other"}));
    let result = kube::core::cel::validate_cel_update(&new, &old);
    let errors: Vec<String> = result
        .err()
        .map(|e| e.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    assert!(errors.iter().any(|e| e.contains("immutable")), "{errors:?}");
    assert!(kube::core::cel::validate_cel_update(&old, &old).is_ok());
    let crd = serde_json::to_value(Broker::crd()).expect("crd");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert!(
        spec["x-kubernetes-validations"]
            .as_array()
            .expect("spec rules")
            .iter()
            .any(|r| r["rule"]
                .as_str()
                .is_some_and(|r| r.contains("has(oldSelf.namespace)"))),
        "a spec-level rule covers setting and removing it"
    );
}

#[test]
fn the_schema_bounds_replicas_and_ports() {
    let crd = serde_json::to_value(Broker::crd()).expect("crd serializes");
    assert_eq!(
        crd["spec"]["versions"][0]["subresources"]["scale"],
        serde_json::json!({
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector"
        })
    );
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["maximum"], 64.0);
    assert_eq!(spec["replicas"]["minimum"], 0.0);
    assert_eq!(
        spec["listeners"]["properties"]["mqtts"]["properties"]["port"]["maximum"],
        65535.0
    );
    assert_eq!(
        spec["service"]["properties"]["type"]["enum"],
        serde_json::json!(["ClusterIP", "NodePort", "LoadBalancer"])
    );
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["subresources"]["status"], serde_json::json!({}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Ready", "Endpoint", "Age"]);
}
