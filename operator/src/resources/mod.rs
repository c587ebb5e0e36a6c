//! Pure builders of the Kubernetes objects that run a `Broker`: `desired_*(&Broker, ..)` returns
//! the object the operator applies with server-side apply. Nothing here does I/O, so every
//! builder is tested directly.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::Broker;

mod certificate;
mod cluster;
mod config;
mod deployment;
mod disruption;
mod network_policy;
mod pod;
mod secrets;
mod service;
mod storage;

pub use certificate::{certificate_resource, desired_certificate};
pub use cluster::{
    CREDS_KEY, ClusterSecrets, NATS_DIR, NatsCredentials, apply_nats_credentials,
    desired_nats_secret,
};
pub use config::{
    BrokerHook, CONFIG_KEY, InvalidHost, allowed_host, desired_config_map, render_config,
    render_config_with, tenant_limits,
};
pub use deployment::{CHECKSUM_ANNOTATION, broker_args, config_checksum, desired_deployment};
pub use disruption::{desired_pdb, spread};
pub use network_policy::desired_network_policy;
pub use pod::apply_pod_options;
pub use secrets::{
    BROKER_ID_KEY, BROKER_SECRET_KEY, CA_CERT_KEY, CA_KEY_KEY, Credentials, ca_from_secret,
    desired_ca_secret, desired_credentials_secret, desired_tls_secret, leaf_from_secret,
};
pub use service::desired_service;
pub use storage::{DATA_DIR, data_volume, data_volume_name, desired_pvc};

/// Container port of MQTT over TLS.
pub const MQTTS_CONTAINER_PORT: i32 = 8883;
/// Container port of MQTT over WebSockets; every wss Service port targets it.
pub const WSS_CONTAINER_PORT: i32 = 8443;
/// Container port of `/healthz`, `/readyz` and `/metrics`.
pub const HTTP_CONTAINER_PORT: i32 = 9090;

/// Operator-wide settings the builders need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Image of `starling-broker` when the Broker names none.
    pub default_image: String,
    /// The api's internal URL, given to brokers as `--control-plane`.
    pub control_plane_url: String,
    /// The hook address rules of every broker (`[hook]` in `broker.toml`).
    pub broker_hook: BrokerHook,
    /// Which pub/sub namespaces a Kubernetes namespace may use.
    pub tenancy: crate::tenancy::Tenancy,
    /// With `Some(monitoring namespace)`, each Broker gets a NetworkPolicy
    /// ([`desired_network_policy`]) whose metrics port only that namespace reaches.
    pub network_policy: Option<String>,
    /// NATS servers every broker joins its replicas through (`--cluster-nats`); empty: each
    /// Broker runs one replica on its own store.
    pub cluster_nats: Vec<String>,
    /// Where the brokers' NATS credentials and TLS files come from.
    pub cluster_secrets: ClusterSecrets,
    /// On the chart's NATS: an account and a user per Broker, minted by the operator (then
    /// `cluster_secrets.auth` is not used).
    pub nats_auth: Option<std::sync::Arc<crate::nats_auth::NatsAuth>>,
}

/// Object names derived from the Broker's name.
pub mod names {
    use super::Broker;
    use kube::ResourceExt;

    /// The Deployment and the Service.
    pub fn workload(b: &Broker) -> String {
        b.name_any()
    }
    /// The ConfigMap with `broker.toml`.
    pub fn config(b: &Broker) -> String {
        format!("{}-config", b.name_any())
    }
    /// The Secret with the broker's control-plane credential.
    pub fn credentials(b: &Broker) -> String {
        format!("{}-credentials", b.name_any())
    }
    /// The Secret with the copy of the NATS credentials and TLS files.
    pub fn nats(b: &Broker) -> String {
        format!("{}-nats", b.name_any())
    }
    /// The PersistentVolumeClaim with the data directory (`spec.storage`).
    pub fn data(b: &Broker) -> String {
        format!("{}-data", b.name_any())
    }
    /// The Secret with the operator-issued CA.
    pub fn ca(b: &Broker) -> String {
        format!("{}-ca", b.name_any())
    }
    /// The TLS Secret the pods mount: `tls.secretName`, else the operator-issued one.
    pub fn tls(b: &Broker) -> String {
        b.spec
            .tls
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-tls", b.name_any()))
    }
}

/// [`selector_labels`] as a label selector string (`k=v,k=v`), for the scale subresource.
pub fn selector_string(b: &Broker) -> String {
    selector_labels(b)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `b` may run with `settings`: more than one replica needs a NATS cluster, and a claim
/// (`spec.storage`) is for one replica only.
pub fn check_replicas(b: &Broker, settings: &Settings) -> Result<(), crate::error::Error> {
    let n = b.spec.replicas;
    if n > 1 && settings.cluster_nats.is_empty() {
        return Err(crate::error::Error::ReplicasNeedCluster(n));
    }
    if n > 1 && b.spec.storage.is_some() {
        return Err(crate::error::Error::StorageWithReplicas(n));
    }
    Ok(())
}

/// Labels on every object the operator makes for `b`.
pub fn labels(b: &Broker) -> BTreeMap<String, String> {
    let mut l = selector_labels(b);
    l.insert(
        "app.kubernetes.io/name".to_owned(),
        "starling-broker".to_owned(),
    );
    l.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "starling-operator".to_owned(),
    );
    l.insert(
        "app.kubernetes.io/part-of".to_owned(),
        "starling".to_owned(),
    );
    l
}

/// The labels that select the broker's pods.
pub fn selector_labels(b: &Broker) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".to_owned(), b.name_any()),
        ("starling.dev/broker".to_owned(), b.name_any()),
    ])
}

/// Metadata of an owned object: name, namespace, labels and a controller owner reference.
pub fn owned_meta(b: &Broker, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: b.namespace(),
        labels: Some(labels(b)),
        owner_references: owner_reference(b).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The controller owner reference to `b` (none before the API server gave it a uid).
pub fn owner_reference(b: &Broker) -> Option<OwnerReference> {
    b.controller_owner_ref(&())
}

/// The hosts the broker's certificate must cover.
pub fn tls_hosts(b: &Broker) -> Vec<String> {
    let name = b.name_any();
    let ns = b.namespace().unwrap_or_else(|| "default".to_owned());
    let mut hosts = vec![
        b.host(),
        format!("{name}.{ns}.svc"),
        format!("{name}.{ns}.svc.cluster.local"),
        // In-pod tools and local checks connect over loopback.
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let mut seen = std::collections::BTreeSet::new();
    hosts.retain(|h| seen.insert(h.clone()));
    hosts
}

/// A hex SHA-256 over named byte strings, in order, each framed by its name and length.
pub fn checksum<'a>(parts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (name, bytes) in parts {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! A `Broker` as the API server would hand it to the controller.
    use crate::crd::Broker;

    /// A Broker `sensors` in namespace `iot` with a uid, generation 1 and `spec`.
    pub(crate) fn broker(spec: serde_json::Value) -> Broker {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "starling.dev/v1alpha1",
            "kind": "Broker",
            "metadata": {
                "name": "sensors",
                "namespace": "iot",
                "uid": "6c1d7f38-0000-4000-8000-000000000001",
                "generation": 1,
                "resourceVersion": "100",
            },
            "spec": spec,
        }))
        .expect("a valid Broker")
    }

    pub(crate) fn settings() -> super::Settings {
        super::Settings {
            default_image: "ghcr.io/starling-mqtt/starling-broker:0.1.0".to_owned(),
            control_plane_url: "http://starling-api-internal.starling-system.svc:8081".to_owned(),
            broker_hook: super::BrokerHook::default(),
            tenancy: crate::tenancy::Tenancy::default(),
            network_policy: None,
            cluster_nats: Vec::new(),
            cluster_secrets: super::ClusterSecrets::default(),
            nats_auth: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::broker;
    use super::*;

    #[test]
    fn owned_objects_point_back_to_their_broker_as_controller() {
        let b = broker(serde_json::json!({}));
        let meta = owned_meta(&b, names::config(&b));
        let owner = &meta.owner_references.expect("owner refs")[0];
        assert_eq!(owner.kind, "Broker");
        assert_eq!(owner.api_version, "starling.dev/v1alpha1");
        assert_eq!(owner.name, "sensors");
        assert_eq!(owner.uid, "6c1d7f38-0000-4000-8000-000000000001");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("iot"));
        assert_eq!(
            meta.labels.expect("labels")["starling.dev/broker"],
            "sensors"
        );
    }

    #[test]
    fn tls_hosts_start_with_the_public_host_and_have_no_duplicates() {
        let b = broker(serde_json::json!({"hostname": "mqtt.example.com"}));
        assert_eq!(
            tls_hosts(&b),
            [
                "mqtt.example.com",
                "sensors.iot.svc",
                "sensors.iot.svc.cluster.local",
                "localhost",
                "127.0.0.1"
            ]
        );
        let b = broker(serde_json::json!({}));
        assert_eq!(tls_hosts(&b)[0], "sensors.iot.svc");
        assert_eq!(tls_hosts(&b).len(), 4);
    }

    #[test]
    fn the_checksum_changes_with_any_part_and_with_framing() {
        let a = checksum([("a", b"xy".as_slice()), ("b", b"z".as_slice())]);
        assert_eq!(
            a,
            checksum([("a", b"xy".as_slice()), ("b", b"z".as_slice())])
        );
        assert_ne!(
            a,
            checksum([("a", b"x".as_slice()), ("b", b"yz".as_slice())])
        );
        assert_ne!(
            a,
            checksum([("a", b"xy".as_slice()), ("b", b"Z".as_slice())])
        );
        assert_eq!(a.len(), 64);
    }
}
