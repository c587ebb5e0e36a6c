//! The broker's data directory (`--data-dir`): retained messages, persistent sessions and the
//! managed state (keys, revocations) the broker saves so a restart during a control-plane outage
//! still serves.
//!
//! With `spec.storage` it is a PersistentVolumeClaim (`<name>-data`, ReadWriteOnce, owned by the
//! Broker, so it goes when the Broker goes); the Deployment then replaces its pod with
//! `Recreate`, so the claim is never wanted by two pods at once (a surge pod would wait forever
//! for a volume attached to another node). Without it the directory is an emptyDir: it survives
//! container restarts, not a pod moved or replaced, and the status says the state is not durable.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
        PersistentVolumeClaimVolumeSource, Volume, VolumeResourceRequirements,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use super::{names, owned_meta};
use crate::crd::Broker;

/// Where the broker container sees its data directory.
pub const DATA_DIR: &str = "/var/lib/starling";

/// The PersistentVolumeClaim of `b`, when `spec.storage` asks for one.
pub fn desired_pvc(b: &Broker) -> Option<PersistentVolumeClaim> {
    let storage = b.spec.storage.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: owned_meta(b, names::data(b)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

/// The name of the data volume: `data` for the claim, `data-ephemeral` for the emptyDir. They
/// differ so that adding or removing `spec.storage` replaces the volume entry instead of merging
/// a claim into the emptyDir's entry (server-side apply keeps both sources there, which the API
/// server refuses).
pub fn data_volume_name(b: &Broker) -> &'static str {
    if b.spec.storage.is_some() {
        "data"
    } else {
        "data-ephemeral"
    }
}

/// The data volume of the pod: the claim, or an emptyDir.
pub fn data_volume(b: &Broker) -> Volume {
    if b.spec.storage.is_some() {
        Volume {
            name: data_volume_name(b).to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::data(b),
                read_only: None,
            }),
            ..Volume::default()
        }
    } else {
        Volume {
            name: data_volume_name(b).to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::broker;

    #[test]
    fn a_broker_with_storage_gets_an_owned_read_write_once_claim_of_that_size() {
        let b =
            broker(serde_json::json!({"storage": {"size": "2Gi", "storageClassName": "fast-ssd"}}));
        let pvc = desired_pvc(&b).expect("a claim");
        assert_eq!(pvc.metadata.name.as_deref(), Some("sensors-data"));
        assert_eq!(
            pvc.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].kind.as_str()),
            Some("Broker")
        );
        let spec = pvc.spec.expect("spec");
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast-ssd"));
        assert_eq!(
            spec.resources.and_then(|r| r.requests).expect("requests")["storage"],
            Quantity("2Gi".to_owned())
        );
        let v = data_volume(&b);
        assert_eq!(
            v.persistent_volume_claim.map(|c| c.claim_name).as_deref(),
            Some("sensors-data")
        );
    }

    #[test]
    fn a_broker_without_storage_gets_no_claim_and_an_empty_dir() {
        let b = broker(serde_json::json!({}));
        assert!(desired_pvc(&b).is_none());
        let v = data_volume(&b);
        assert!(v.empty_dir.is_some());
        assert!(v.persistent_volume_claim.is_none());
    }
}
