//! What keeps a Broker with more than one replica available through voluntary disruptions:
//! a `policy/v1` PodDisruptionBudget (at most one pod down at a time), and pods spread over
//! zones and nodes (topology spread on `topology.kubernetes.io/zone`, preferred anti-affinity on
//! `kubernetes.io/hostname`). A single replica gets none of these: a budget would block every
//! node drain, and there is nothing to spread.

use k8s_openapi::{
    api::{
        core::v1::{
            Affinity, PodAffinityTerm, PodAntiAffinity, TopologySpreadConstraint,
            WeightedPodAffinityTerm,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{names, owned_meta, selector_labels};
use crate::crd::Broker;

fn selector(b: &Broker) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(b)),
        ..LabelSelector::default()
    }
}

/// The PodDisruptionBudget of `b`, when it runs more than one replica.
pub fn desired_pdb(b: &Broker) -> Option<PodDisruptionBudget> {
    (b.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: owned_meta(b, names::workload(b)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(b)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// Topology spread constraints and anti-affinity of `b`'s pods, when it runs more than one.
pub fn spread(b: &Broker) -> (Option<Vec<TopologySpreadConstraint>>, Option<Affinity>) {
    if b.spec.replicas <= 1 {
        return (None, None);
    }
    let zones = TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(selector(b)),
        ..TopologySpreadConstraint::default()
    };
    let nodes = PodAntiAffinity {
        preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
            weight: 100,
            pod_affinity_term: PodAffinityTerm {
                label_selector: Some(selector(b)),
                topology_key: "kubernetes.io/hostname".to_owned(),
                ..PodAffinityTerm::default()
            },
        }]),
        ..PodAntiAffinity::default()
    };
    (
        Some(vec![zones]),
        Some(Affinity {
            pod_anti_affinity: Some(nodes),
            ..Affinity::default()
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::broker;
    use serde_json::json;

    #[test]
    fn one_replica_gets_no_budget_and_no_spread() {
        let b = broker(json!({}));
        assert_eq!(b.spec.replicas, 1);
        assert!(desired_pdb(&b).is_none());
        assert_eq!(spread(&b), (None, None));
    }

    #[test]
    fn several_replicas_get_a_budget_of_one_and_spread_over_zones_and_nodes() {
        let mut b = broker(json!({}));
        b.spec.replicas = 3;
        let pdb = serde_json::to_value(desired_pdb(&b).expect("a budget")).expect("json");
        assert_eq!(pdb["metadata"]["name"], "sensors");
        assert_eq!(pdb["metadata"]["ownerReferences"][0]["kind"], "Broker");
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"],
            json!({"app.kubernetes.io/instance": "sensors", "starling.dev/broker": "sensors"})
        );
        let (tsc, affinity) = spread(&b);
        let tsc = serde_json::to_value(tsc).expect("json");
        assert_eq!(tsc[0]["topologyKey"], "topology.kubernetes.io/zone");
        assert_eq!(tsc[0]["maxSkew"], 1);
        let a = serde_json::to_value(affinity).expect("json");
        let term = &a["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(
            term["podAffinityTerm"]["topologyKey"],
            "kubernetes.io/hostname"
        );
    }
}
