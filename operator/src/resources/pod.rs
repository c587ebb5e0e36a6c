//! `spec.pod`: what a cluster needs on the broker pods (image pull Secrets, node selector,
//! tolerations, affinity, labels, annotations, ServiceAccount), laid over the Deployment's pod
//! template. The operator's own labels (which select the pods) and annotations (the config
//! checksum) win over the spec's; the ServiceAccount's token stays unmounted.

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Affinity, LocalObjectReference, Toleration},
};

use crate::crd::Broker;

/// Lays `b.spec.pod` over `d`'s pod template. `Err` names the field that is not what a PodSpec
/// takes (tolerations and affinity are kept as given by the schema, and checked here).
pub fn apply_pod_options(d: &mut Deployment, b: &Broker) -> Result<(), String> {
    let Some(opts) = &b.spec.pod else {
        return Ok(());
    };
    let Some(template) = d.spec.as_mut().map(|s| &mut s.template) else {
        return Ok(());
    };
    let tolerations = opts
        .tolerations
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::from_value::<Toleration>(serde_json::Value::Object(t.clone()))
                .map_err(|e| format!("spec.pod.tolerations[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let affinity = opts
        .affinity
        .as_ref()
        .map(|a| {
            serde_json::from_value::<Affinity>(serde_json::Value::Object(a.clone()))
                .map_err(|e| format!("spec.pod.affinity: {e}"))
        })
        .transpose()?;

    let meta = template.metadata.get_or_insert_with(Default::default);
    let labels = meta.labels.get_or_insert_with(Default::default);
    for (k, v) in &opts.labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    for (k, v) in &opts.annotations {
        annotations.entry(k.clone()).or_insert_with(|| v.clone());
    }

    let spec = template.spec.get_or_insert_with(Default::default);
    if !opts.image_pull_secrets.is_empty() {
        spec.image_pull_secrets = Some(
            opts.image_pull_secrets
                .iter()
                .map(|n| LocalObjectReference { name: n.clone() })
                .collect(),
        );
    }
    if !opts.node_selector.is_empty() {
        spec.node_selector = Some(opts.node_selector.clone());
    }
    if !tolerations.is_empty() {
        spec.tolerations = Some(tolerations);
    }
    // The user's affinity replaces the anti-affinity of several replicas (resources::spread).
    if affinity.is_some() {
        spec.affinity = affinity;
    }
    if let Some(sa) = &opts.service_account_name {
        spec.service_account_name = Some(sa.clone());
        spec.automount_service_account_token = Some(false);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{
        desired_deployment,
        fixtures::{broker, settings},
    };
    use serde_json::json;

    fn deployment(spec: serde_json::Value) -> Result<Deployment, String> {
        let b = broker(spec);
        let mut d = desired_deployment(&b, &settings(), "brk_1", "sum");
        apply_pod_options(&mut d, &b).map(|()| d)
    }

    #[test]
    fn pod_options_reach_the_pod_template_and_the_operators_keys_win() {
        let d = deployment(json!({"pod": {
            "imagePullSecrets": ["registry"],
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "annotations": {"prometheus.io/scrape": "true", "starling.dev/config-checksum": "mine"},
            "labels": {"team": "iot", "starling.dev/broker": "someone-else"},
            "serviceAccountName": "mqtt"
        }}))
        .expect("valid");
        let t = d.spec.expect("spec").template;
        let meta = t.metadata.expect("meta");
        let labels = meta.labels.expect("labels");
        assert_eq!(labels["team"], "iot");
        assert_eq!(
            labels["starling.dev/broker"], "sensors",
            "the selector label is the operator's"
        );
        let annotations = meta.annotations.expect("annotations");
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["starling.dev/config-checksum"], "sum");
        let spec = t.spec.expect("pod spec");
        assert_eq!(spec.image_pull_secrets.expect("pull")[0].name, "registry");
        assert_eq!(
            spec.node_selector.expect("ns")["kubernetes.io/arch"],
            "arm64"
        );
        assert_eq!(
            spec.tolerations.expect("tol")[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(spec.affinity.and_then(|a| a.node_affinity).is_some());
        assert_eq!(spec.service_account_name.as_deref(), Some("mqtt"));
        assert_eq!(spec.automount_service_account_token, Some(false));
    }

    #[test]
    fn a_malformed_toleration_or_affinity_names_its_field() {
        let err = deployment(json!({"pod": {"tolerations": [{"tolerationSeconds": "soon"}]}}))
            .expect_err("not a number");
        assert!(err.starts_with("spec.pod.tolerations[0]"), "{err}");
        let err = deployment(json!({"pod": {"affinity": {"nodeAffinity": 3}}})).expect_err("bad");
        assert!(err.starts_with("spec.pod.affinity"), "{err}");
    }

    #[test]
    fn without_pod_options_the_template_is_unchanged() {
        let b = broker(json!({}));
        let plain = desired_deployment(&b, &settings(), "brk_1", "sum");
        assert_eq!(deployment(json!({})).expect("valid"), plain);
    }
}
