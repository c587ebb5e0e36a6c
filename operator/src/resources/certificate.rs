//! The cert-manager `Certificate` of a Broker with `spec.tls.issuerRef`: the Broker's host names,
//! its Secret (`<name>-tls`, which the pods mount), the issuer, and the Broker's validity and
//! renewal windows. cert-manager's types are not a dependency: the object is plain JSON applied
//! as a `DynamicObject`.

use kube::{ResourceExt, core::ApiResource, core::GroupVersionKind};
use serde_json::{Value, json};

use super::{names, owned_meta, tls_hosts};
use crate::crd::{Broker, IssuerRef};

/// `certificates.cert-manager.io/v1`.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// The Certificate for `b`, issued by `issuer`.
pub fn desired_certificate(b: &Broker, issuer: &IssuerRef) -> Value {
    let (ips, dns): (Vec<String>, Vec<String>) = tls_hosts(b)
        .into_iter()
        .partition(|h| h.parse::<std::net::IpAddr>().is_ok());
    let tls = &b.spec.tls;
    json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": owned_meta(b, b.name_any()),
        "spec": {
            "secretName": names::tls(b),
            "commonName": b.host(),
            "dnsNames": dns,
            "ipAddresses": ips,
            "duration": format!("{}h", i64::from(tls.validity_days) * 24),
            "renewBefore": format!("{}h", i64::from(tls.renew_before_days) * 24),
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature"],
            "issuerRef": {"name": issuer.name, "kind": issuer.kind, "group": issuer.group},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::fixtures::broker;

    #[test]
    fn the_certificate_names_the_hosts_the_secret_and_the_issuer() {
        let b = broker(json!({
            "hostname": "mqtt.example.com",
            "tls": {"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}},
        }));
        let issuer = b.spec.tls.issuer_ref.clone().expect("issuerRef");
        assert_eq!(issuer.group, "cert-manager.io", "the default group");
        let c = desired_certificate(&b, &issuer);
        assert_eq!(c["metadata"]["name"], "sensors");
        assert_eq!(c["metadata"]["ownerReferences"][0]["kind"], "Broker");
        assert_eq!(c["spec"]["secretName"], "sensors-tls");
        assert_eq!(
            c["spec"]["dnsNames"],
            json!([
                "mqtt.example.com",
                "sensors.iot.svc",
                "sensors.iot.svc.cluster.local",
                "localhost"
            ])
        );
        assert_eq!(c["spec"]["ipAddresses"], json!(["127.0.0.1"]));
        assert_eq!(
            c["spec"]["issuerRef"],
            json!({"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"})
        );
        assert_eq!(c["spec"]["duration"], "2160h");
        assert_eq!(c["spec"]["renewBefore"], "720h");
    }
}
