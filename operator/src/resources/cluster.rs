//! NATS credentials and TLS of the brokers' cluster link, from Secrets in the operator's own
//! namespace (the chart's `nats.auth` / `nats.tls`, or the token it has the operator generate
//! for the NATS it installs). Pods cannot mount a Secret of another namespace, so each Broker
//! gets a copy, `<name>-nats`, owned by it. The pods see the files under [`NATS_DIR`] and the
//! user, password or token as environment variables from that Secret
//! (`STARLING_BROKER__CLUSTER__*`): the ConfigMap holds only the files' paths, and nothing of
//! them reaches a log or the status.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::Deployment,
        core::v1::{EnvVar, EnvVarSource, Secret, SecretKeySelector},
    },
};
use serde::Serialize;

use super::{names, owned_meta};
use crate::crd::Broker;

/// Where the pod sees the copied files.
pub const NATS_DIR: &str = "/etc/starling/nats";

/// Keys of the auth Secret: `user` with `password`, or `token`, or `nats.creds` (a credentials
/// file: user JWT and NKey seed).
pub(crate) const USER_KEY: &str = "user";
/// See [`USER_KEY`].
pub(crate) const PASSWORD_KEY: &str = "password";
/// See [`USER_KEY`].
pub(crate) const TOKEN_KEY: &str = "token";
/// See [`USER_KEY`].
pub const CREDS_KEY: &str = "nats.creds";
/// Keys of the TLS Secret: `ca.crt` (the NATS servers' CA), and for a client certificate
/// `tls.crt` with `tls.key`.
pub(crate) const CA_KEY: &str = "ca.crt";
/// See [`CA_KEY`].
pub(crate) const CERT_KEY: &str = "tls.crt";
/// See [`CA_KEY`].
pub(crate) const KEY_KEY: &str = "tls.key";

/// Where the operator reads the brokers' NATS credentials (its flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSecrets {
    /// The operator's namespace, which holds both Secrets.
    pub namespace: String,
    /// The auth Secret ([`USER_KEY`]).
    pub auth: Option<String>,
    /// The TLS Secret ([`CA_KEY`]).
    pub tls: Option<String>,
}

impl ClusterSecrets {
    /// Whether any Secret is named.
    pub fn any(&self) -> bool {
        self.auth.is_some() || self.tls.is_some()
    }
}

/// What a broker pod gets: the entries of both Secrets that mean something to it, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsCredentials {
    data: BTreeMap<String, ByteString>,
    /// The inbox prefix the broker's NATS user is allowed (not secret: it goes to `[cluster]`).
    inbox_prefix: Option<String>,
}

fn entry(s: Option<&Secret>, key: &str) -> Option<ByteString> {
    s?.data
        .as_ref()?
        .get(key)
        .filter(|v| !v.0.is_empty())
        .cloned()
}

impl NatsCredentials {
    /// The credentials in `auth` and `tls` (either may be absent). `Err` says what is wrong,
    /// naming keys, never values.
    pub fn from_secrets(auth: Option<&Secret>, tls: Option<&Secret>) -> Result<Self, String> {
        let mut data = BTreeMap::new();
        for key in [USER_KEY, PASSWORD_KEY, TOKEN_KEY, CREDS_KEY] {
            if let Some(v) = entry(auth, key) {
                data.insert(key.to_owned(), v);
            }
        }
        for key in [CA_KEY, CERT_KEY, KEY_KEY] {
            if let Some(v) = entry(tls, key) {
                data.insert(key.to_owned(), v);
            }
        }
        let has = |k: &str| data.contains_key(k);
        if auth.is_some() && !(has(USER_KEY) || has(TOKEN_KEY) || has(CREDS_KEY)) {
            return Err(format!(
                "the NATS auth Secret has none of {USER_KEY:?} (with {PASSWORD_KEY:?}), \
                 {TOKEN_KEY:?} or {CREDS_KEY:?}"
            ));
        }
        if has(USER_KEY) != has(PASSWORD_KEY) {
            return Err(format!(
                "the NATS auth Secret needs {USER_KEY:?} and {PASSWORD_KEY:?} together"
            ));
        }
        let ways = [has(USER_KEY), has(TOKEN_KEY), has(CREDS_KEY)]
            .iter()
            .filter(|x| **x)
            .count();
        if ways > 1 {
            return Err(format!(
                "the NATS auth Secret has more than one of {USER_KEY:?}/{PASSWORD_KEY:?}, \
                 {TOKEN_KEY:?} and {CREDS_KEY:?}: keep one"
            ));
        }
        if has(CERT_KEY) != has(KEY_KEY) {
            return Err(format!(
                "the NATS TLS Secret needs {CERT_KEY:?} and {KEY_KEY:?} together"
            ));
        }
        if tls.is_some() && !has(CA_KEY) && !has(CERT_KEY) {
            return Err(format!(
                "the NATS TLS Secret has neither {CA_KEY:?} nor {CERT_KEY:?}/{KEY_KEY:?}"
            ));
        }
        Ok(NatsCredentials {
            data,
            inbox_prefix: None,
        })
    }

    /// These credentials with the login the operator minted for the broker (its own NATS user
    /// on the chart's NATS) in place of any user, password, token or credentials file.
    pub fn with_login(mut self, login: &crate::nats_auth::BrokerLogin) -> Self {
        for key in [USER_KEY, PASSWORD_KEY, TOKEN_KEY] {
            self.data.remove(key);
        }
        self.data.insert(
            CREDS_KEY.to_owned(),
            ByteString(login.creds.clone().into_bytes()),
        );
        self.inbox_prefix = Some(login.inbox_prefix.clone());
        self
    }

    fn has(&self, key: &str) -> bool {
        self.data.contains_key(key)
    }

    /// Name/value pairs for the pod template's checksum (a rotated credential rolls the pods).
    pub fn checksum_parts(&self) -> impl Iterator<Item = (String, &[u8])> {
        self.data
            .iter()
            .map(|(k, v)| (format!("nats/{k}"), v.0.as_slice()))
    }
}

/// `<name>-nats`, the Broker's copy.
pub fn desired_nats_secret(b: &Broker, creds: &NatsCredentials) -> Secret {
    Secret {
        metadata: owned_meta(b, names::nats(b)),
        type_: Some("Opaque".to_owned()),
        data: Some(creds.data.clone()),
        ..Secret::default()
    }
}

/// `[cluster]` of `broker.toml`: the paths of the files, nothing secret.
#[derive(Serialize, Default, Debug, PartialEq)]
pub(crate) struct ClusterToml {
    #[serde(skip_serializing_if = "Option::is_none")]
    creds: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inbox_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<String>,
}

impl ClusterToml {
    /// The table for `creds`; `None` when it names no file.
    pub(crate) fn for_credentials(creds: &NatsCredentials) -> Option<Self> {
        let path = |key: &str| creds.has(key).then(|| format!("{NATS_DIR}/{key}"));
        let t = ClusterToml {
            creds: path(CREDS_KEY),
            inbox_prefix: creds.inbox_prefix.clone(),
            tls_ca: path(CA_KEY),
            tls_cert: path(CERT_KEY),
            tls_key: path(KEY_KEY),
        };
        (t != ClusterToml::default()).then_some(t)
    }
}

/// Mounts `<name>-nats` at [`NATS_DIR`] and passes its user, password or token as the broker's
/// environment variables.
pub fn apply_nats_credentials(d: &mut Deployment, b: &Broker, creds: &NatsCredentials) {
    let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(super::deployment::secret_volume("nats", names::nats(b)));
    let Some(container) = spec.containers.first_mut() else {
        return;
    };
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(super::deployment::mount("nats", NATS_DIR));
    let env = container.env.get_or_insert_with(Vec::new);
    for (key, var) in [
        (USER_KEY, "STARLING_BROKER__CLUSTER__USER"),
        (PASSWORD_KEY, "STARLING_BROKER__CLUSTER__PASSWORD"),
        (TOKEN_KEY, "STARLING_BROKER__CLUSTER__TOKEN"),
    ] {
        if creds.has(key) {
            env.push(EnvVar {
                name: var.to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: names::nats(b),
                        key: key.to_owned(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{
        desired_deployment,
        fixtures::{broker, settings},
    };

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn a_token_goes_to_the_pod_as_an_environment_variable_from_the_brokers_own_secret() {
        let b = broker(serde_json::json!({"replicas": 3}));
        let creds =
            NatsCredentials::from_secrets(Some(&secret(&[("token", "s3cr3t")])), None).unwrap();
        let copy = desired_nats_secret(&b, &creds);
        assert_eq!(copy.metadata.name.as_deref(), Some("sensors-nats"));
        assert_eq!(copy.metadata.namespace.as_deref(), Some("iot"));
        assert!(
            copy.metadata.owner_references.is_some(),
            "owned by the Broker"
        );
        assert_eq!(copy.data.as_ref().unwrap()["token"].0, b"s3cr3t");
        assert_eq!(
            ClusterToml::for_credentials(&creds),
            None,
            "no file to name"
        );

        let mut d = desired_deployment(&b, &settings(), "brk_1", "sum");
        apply_nats_credentials(&mut d, &b, &creds);
        let rendered = serde_json::to_string(&d).unwrap();
        assert!(!rendered.contains("s3cr3t"), "only a reference: {rendered}");
        let pod = d.spec.unwrap().template.spec.unwrap();
        let env = pod.containers[0].env.clone().unwrap();
        let token = env
            .iter()
            .find(|e| e.name == "STARLING_BROKER__CLUSTER__TOKEN")
            .expect("token variable");
        let from = token.value_from.clone().unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (from.name.as_str(), from.key.as_str()),
            ("sensors-nats", "token")
        );
        assert!(
            pod.volumes.unwrap().iter().any(|v| v
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref())
                == Some("sensors-nats"))
        );
    }

    #[test]
    fn a_minted_login_replaces_any_shared_credential_in_the_brokers_secret() {
        let b = broker(serde_json::json!({"replicas": 3}));
        let login = crate::nats_auth::BrokerLogin {
            creds: "-----BEGIN NATS USER JWT-----\nminted\n".to_owned(),
            inbox_prefix: "_INBOX_starling.brk_1".to_owned(),
        };
        let creds = NatsCredentials::from_secrets(
            Some(&secret(&[("token", "shared-token")])),
            Some(&secret(&[("ca.crt", "CA")])),
        )
        .unwrap()
        .with_login(&login);
        let copy = desired_nats_secret(&b, &creds);
        let data = copy.data.unwrap();
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ca.crt", "nats.creds"],
            "the shared token is gone"
        );
        assert_eq!(data["nats.creds"].0, login.creds.as_bytes());
        let toml = toml::to_string(&ClusterToml::for_credentials(&creds).unwrap()).unwrap();
        assert_eq!(
            toml,
            "creds = \"/etc/starling/nats/nats.creds\"\ninbox_prefix = \"_INBOX_starling.brk_1\"\n\
             tls_ca = \"/etc/starling/nats/ca.crt\"\n"
        );
        let mut d = desired_deployment(&b, &settings(), "brk_1", "sum");
        apply_nats_credentials(&mut d, &b, &creds);
        let rendered = serde_json::to_string(&d).unwrap();
        assert!(
            !rendered.contains("minted") && !rendered.contains("CLUSTER__TOKEN"),
            "{rendered}"
        );
    }

    #[test]
    fn creds_and_tls_files_are_named_by_path_in_the_config() {
        let creds = NatsCredentials::from_secrets(
            Some(&secret(&[("nats.creds", "-----BEGIN NATS USER JWT-----")])),
            Some(&secret(&[
                ("ca.crt", "CA"),
                ("tls.crt", "C"),
                ("tls.key", "K"),
            ])),
        )
        .unwrap();
        let toml = toml::to_string(&ClusterToml::for_credentials(&creds).unwrap()).unwrap();
        assert_eq!(
            toml,
            "creds = \"/etc/starling/nats/nats.creds\"\ntls_ca = \"/etc/starling/nats/ca.crt\"\n\
             tls_cert = \"/etc/starling/nats/tls.crt\"\ntls_key = \"/etc/starling/nats/tls.key\"\n"
        );
    }

    #[test]
    fn incomplete_or_ambiguous_secrets_are_refused_naming_keys_only() {
        let cases: [(Option<Secret>, Option<Secret>, &str); 6] = [
            (Some(secret(&[("user", "u")])), None, "together"),
            (Some(secret(&[("password", "hunter2")])), None, "none of"),
            (
                Some(secret(&[
                    ("user", "u"),
                    ("password", "hunter2"),
                    ("token", "t"),
                ])),
                None,
                "more than one",
            ),
            (Some(secret(&[("other", "x")])), None, "none of"),
            (None, Some(secret(&[("tls.crt", "C")])), "together"),
            (None, Some(secret(&[("nothing", "x")])), "neither"),
        ];
        for (auth, tls, says) in cases {
            let err = NatsCredentials::from_secrets(auth.as_ref(), tls.as_ref()).unwrap_err();
            assert!(err.contains(says), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let ok = NatsCredentials::from_secrets(
            Some(&secret(&[("user", "u"), ("password", "p")])),
            Some(&secret(&[("ca.crt", "CA")])),
        )
        .unwrap();
        assert_eq!(ok.checksum_parts().count(), 3);
    }
}
