//! Which pub/sub namespaces a `Broker` in a Kubernetes namespace may create or claim.
//!
//! By default a `Broker` in Kubernetes namespace N may only use the pub/sub namespace N (the
//! default of `spec.namespace`), so one team cannot squat, claim or deregister another team's
//! brokers by naming their pub/sub namespace. The operator's `--tenancy-allow` list maps a
//! Kubernetes namespace to further pub/sub namespaces (`team-a=shared,team-a=legacy`).

use std::collections::{BTreeMap, BTreeSet};

/// The operator-level allow-list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tenancy {
    extra: BTreeMap<String, BTreeSet<String>>,
}

/// A `--tenancy-allow` entry that is not `KUBERNETES_NAMESPACE=PUBSUB_NAMESPACE`.
#[derive(Debug, thiserror::Error)]
#[error(
    "'{0}' is not KUBERNETES_NAMESPACE=PUBSUB_NAMESPACE (two non-empty names of letters, digits and '-')"
)]
pub struct InvalidEntry(String);

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

impl Tenancy {
    /// Parses `KUBERNETES_NAMESPACE=PUBSUB_NAMESPACE` entries; blank entries are skipped.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, InvalidEntry> {
        let mut extra: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let Some((k8s, pubsub)) = entry.split_once('=') else {
                return Err(InvalidEntry(entry.to_owned()));
            };
            let (k8s, pubsub) = (k8s.trim(), pubsub.trim());
            if !valid_name(k8s) || !valid_name(pubsub) {
                return Err(InvalidEntry(entry.to_owned()));
            }
            extra
                .entry(k8s.to_owned())
                .or_default()
                .insert(pubsub.to_owned());
        }
        Ok(Self { extra })
    }

    /// Whether a `Broker` in `k8s_namespace` may use the pub/sub namespace `pubsub`.
    pub fn allows(&self, k8s_namespace: &str, pubsub: &str) -> bool {
        k8s_namespace == pubsub
            || self
                .extra
                .get(k8s_namespace)
                .is_some_and(|s| s.contains(pubsub))
    }

    /// The pub/sub namespaces `k8s_namespace` may use, for messages.
    pub fn allowed_for(&self, k8s_namespace: &str) -> Vec<String> {
        let mut all = vec![k8s_namespace.to_owned()];
        if let Some(extra) = self.extra.get(k8s_namespace) {
            all.extend(extra.iter().filter(|p| *p != k8s_namespace).cloned());
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_only_the_same_name_is_allowed() {
        let t = Tenancy::default();
        assert!(t.allows("iot", "iot"));
        assert!(!t.allows("iot", "factory"));
        assert!(!t.allows("factory", "iot"));
        assert_eq!(t.allowed_for("iot"), ["iot"]);
    }

    #[test]
    fn the_allow_list_maps_a_kubernetes_namespace_to_more_pubsub_namespaces() {
        let t = Tenancy::parse(&["iot=factory", " iot = fleet ", "", "ops=iot"]).expect("valid");
        assert!(t.allows("iot", "factory") && t.allows("iot", "fleet") && t.allows("iot", "iot"));
        assert!(t.allows("ops", "iot") && t.allows("ops", "ops"));
        assert!(!t.allows("factory", "iot"), "the mapping is one-way");
        assert!(!t.allows("fleet", "factory"));
        assert_eq!(t.allowed_for("iot"), ["iot", "factory", "fleet"]);
    }

    #[test]
    fn malformed_entries_are_refused_with_the_entry() {
        for bad in ["iot", "=iot", "iot=", "iot=a=b", "IoT=x", "iot=*", "a/b=c"] {
            let e = Tenancy::parse(&[bad]).expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
