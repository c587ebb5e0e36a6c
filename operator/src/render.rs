//! `starling-operator render`: the objects the operator would apply for a `Broker`, without a
//! cluster, for review (as `helm template` does for the chart) and for offline validation against
//! a Kubernetes version's schemas. The Secrets (the control-plane credential, the certificate,
//! the NATS credentials) are left out: they hold what only a running operator has.

use k8s_openapi::api::core::v1::Secret;
use serde_json::Value;

use crate::{
    crd::Broker,
    error::{Error, Result},
    resources::{self, Settings},
};

/// The broker id the rendered pods name in place of the api's.
pub const RENDERED_BROKER_ID: &str = "brk_rendered";

/// ConfigMap, Service, the data claim, Deployment, PodDisruptionBudget, NetworkPolicy and
/// cert-manager Certificate of `b` under `settings`, each as applied (with `apiVersion` and
/// `kind`); `Err` where the operator would refuse `b` (replicas without NATS, storage with
/// replicas, malformed pod options).
pub fn render(b: &Broker, settings: &Settings) -> Result<Vec<Value>> {
    resources::check_replicas(b, settings)?;
    let config = resources::desired_config_map(b, &settings.broker_hook, None)?;
    let checksum = resources::config_checksum(&config, &Secret::default());
    let mut deployment = resources::desired_deployment(b, settings, RENDERED_BROKER_ID, &checksum);
    resources::apply_pod_options(&mut deployment, b).map_err(Error::PodOptions)?;
    let mut out = vec![json(&config), json(&resources::desired_service(b))];
    if let Some(pvc) = resources::desired_pvc(b) {
        out.push(json(&pvc));
    }
    out.push(json(&deployment));
    if let Some(pdb) = resources::desired_pdb(b) {
        out.push(json(&pdb));
    }
    if let Some(monitoring) = &settings.network_policy {
        out.push(json(&resources::desired_network_policy(b, monitoring)));
    }
    if let Some(issuer) = &b.spec.tls.issuer_ref {
        out.push(resources::desired_certificate(b, issuer));
    }
    Ok(out)
}

/// A Kubernetes object as JSON (these types always serialize).
fn json<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::{broker, settings};

    #[test]
    fn three_replicas_on_nats_render_a_policy_v1_budget_and_the_nats_urls() {
        let b = broker(serde_json::json!({"replicas": 3}));
        let s = Settings {
            cluster_nats: vec!["nats://nats-0:4222".to_owned()],
            network_policy: Some("monitoring".to_owned()),
            ..settings()
        };
        let objects = render(&b, &s).expect("renders");
        let kinds: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["apiVersion"].as_str().unwrap(),
                    o["kind"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "v1 ConfigMap",
                "v1 Service",
                "apps/v1 Deployment",
                "policy/v1 PodDisruptionBudget",
                "networking.k8s.io/v1 NetworkPolicy"
            ]
        );
        let args = objects[2]["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("nats://nats-0:4222"), "{args}");
    }

    #[test]
    fn what_the_operator_refuses_is_not_rendered() {
        let b = broker(serde_json::json!({"replicas": 3}));
        let err = render(&b, &settings()).expect_err("no NATS");
        assert_eq!(err.metric_label(), "ReplicasNeedCluster");
    }
}
