//! NATS decentralized auth for the NATS the chart installs: an account per broker, a user per
//! broker, no shared secret.
//!
//! The operator keeps two NKeys in a Secret of its namespace (`--broker-cluster-nats-keys`,
//! created once, never changed): the operator key, which signs every account, and the system
//! account's. From them it writes the NATS servers' auth configuration (`auth.conf`: the
//! operator JWT, the system account, a full resolver on the servers' volume) into a second
//! Secret (`--broker-cluster-nats-config`), which the chart's NATS pods include; it only
//! changes when the keys do. For each Broker, named by the api's broker id (the one tenant a
//! managed broker pod serves), it publishes the tenant's account to the servers
//! (`$SYS.REQ.CLAIMS.UPDATE`, as a user of the system account that may do nothing else) and
//! mints a user of that account whose permissions cover only the tenant's names
//! ([`starling_broker::cluster::credentials::Permissions::for_tenants`]); its credentials file
//! goes to the Broker's `<name>-nats` Secret and is kept as long as it still fits. No server
//! is reloaded when Brokers come and go. Seeds and credentials never reach a log, an error, an
//! event or the status.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use starling_broker::cluster::credentials::{
    self as creds, Permissions, ServerKeys, inbox_prefix, jwt_claims, now_secs,
};

/// Keys of the keys Secret.
pub const OPERATOR_SEED_KEY: &str = "operator.nk";
/// See [`OPERATOR_SEED_KEY`].
pub const SYSTEM_SEED_KEY: &str = "system.nk";
/// The key of the configuration Secret that the NATS servers include.
pub const CONFIG_KEY: &str = "auth.conf";
/// Where the chart's NATS servers keep the accounts published to them (on their volume).
pub const RESOLVER_DIR: &str = "/data/jwt";
/// How long publishing an account may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Reading or writing one Secret failed. Names the Secret, never a value.
#[derive(Debug, thiserror::Error)]
#[error("the Secret {name}: {source}")]
pub struct SecretError {
    /// The Secret.
    pub name: String,
    /// Why.
    #[source]
    pub source: kube::Error,
}

/// What turns an API error about the Secret `name` into a [`SecretError`] (for `map_err`).
pub fn secret_error(name: &str) -> impl Fn(kube::Error) -> SecretError + '_ {
    move |source| SecretError {
        name: name.to_owned(),
        source,
    }
}

/// Why the NATS auth could not be set up or used. Names Secrets and keys, never values.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    /// Reading or writing a Secret failed.
    #[error(transparent)]
    Kube(#[from] SecretError),
    /// The keys Secret lacks a key or holds a bad seed.
    #[error("the Secret {name}: {reason}")]
    BadKeys {
        /// The Secret.
        name: String,
        /// What is wrong (keys, never values).
        reason: String,
    },
    /// Signing failed.
    #[error("{0}")]
    Credentials(#[from] creds::CredentialsError),
    /// The connection to NATS could not be made.
    #[error("cannot connect to NATS to publish accounts: {0}")]
    Connect(String),
}

/// Publishes account JWTs to the NATS servers.
#[async_trait]
pub trait AccountPublisher: Send + Sync {
    /// Publishes `jwt`; `Err` says why, without the JWT.
    async fn publish(&self, jwt: String) -> Result<(), String>;
}

/// A NATS connection as a user of the system account that may only publish accounts.
pub struct NatsPublisher {
    client: async_nats::Client,
}

impl NatsPublisher {
    /// Connects to `urls` (in the background, retrying) with the publisher credentials of
    /// `keys`, trusting only `ca` (PEM) for TLS when given; TLS is required on `tls://` URLs.
    pub async fn connect(
        keys: &ServerKeys,
        urls: &[String],
        ca: Option<&str>,
    ) -> Result<Self, NatsAuthError> {
        let creds = keys.publisher_creds(now_secs())?;
        let mut options = async_nats::ConnectOptions::with_credentials(&creds)
            .map_err(|_| NatsAuthError::Connect("unusable publisher credentials".into()))?;
        if let Some(ca) = ca {
            options = options.tls_client_config(
                crate::nats_tls::client_config(ca).map_err(NatsAuthError::Connect)?,
            );
        }
        if urls.iter().any(|u| u.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        let client = options
            .name("starling-operator")
            .request_timeout(Some(PUBLISH_TIMEOUT))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(urls)
            .await
            .map_err(|e| NatsAuthError::Connect(e.to_string()))?;
        Ok(NatsPublisher { client })
    }
}

#[async_trait]
impl AccountPublisher for NatsPublisher {
    async fn publish(&self, jwt: String) -> Result<(), String> {
        creds::publish_account(&self.client, jwt)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The operator's side of the NATS auth: the keys, and where accounts are published.
pub struct NatsAuth {
    keys: ServerKeys,
    publisher: Arc<dyn AccountPublisher>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("keys", &self.keys)
            .finish()
    }
}

impl PartialEq for NatsAuth {
    fn eq(&self, other: &Self) -> bool {
        self.keys.operator.public_key() == other.keys.operator.public_key()
            && self.keys.system.public_key() == other.keys.system.public_key()
    }
}

impl Eq for NatsAuth {}

/// What a broker pod gets: its credentials file and its inbox prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerLogin {
    /// The credentials file (secret).
    pub creds: String,
    /// The inbox prefix its permissions allow.
    pub inbox_prefix: String,
}

impl NatsAuth {
    /// The auth of `keys`, publishing through `publisher`.
    pub fn new(keys: ServerKeys, publisher: Arc<dyn AccountPublisher>) -> Self {
        NatsAuth { keys, publisher }
    }

    /// The keys.
    pub fn keys(&self) -> &ServerKeys {
        &self.keys
    }

    /// Publishes the account of `tenant` to the servers (again: the servers keep the newest).
    pub async fn publish_account(&self, tenant: &str) -> Result<(), String> {
        let jwt = self
            .keys
            .account_jwt(tenant, now_secs())
            .map_err(|e| e.to_string())?;
        self.publisher.publish(jwt).await
    }

    /// The login of a broker serving `tenant`: `existing` (the credentials file in its Secret)
    /// when it is a user of the tenant's account with the permissions wanted now, else a new
    /// user.
    pub fn broker_login(
        &self,
        tenant: &str,
        existing: Option<&str>,
    ) -> Result<BrokerLogin, creds::CredentialsError> {
        let inbox = inbox_prefix(tenant);
        let permissions = Permissions::for_tenants(&[tenant], &inbox);
        let creds = match existing {
            Some(c) if self.keys.creds_current(c, tenant, &permissions) => c.to_owned(),
            _ => self.keys.user_creds(
                tenant,
                &format!("broker {tenant}"),
                &permissions,
                now_secs(),
            )?,
        };
        Ok(BrokerLogin {
            creds,
            inbox_prefix: inbox,
        })
    }
}

/// The UTF-8 value of `key` in `s`, if any.
pub(crate) fn value(s: &Secret, key: &str) -> Option<String> {
    let v = s.data.as_ref()?.get(key)?;
    String::from_utf8(v.0.clone()).ok()
}

/// The keys Secret, new: two fresh seeds.
pub fn new_keys_secret(name: &str, namespace: &str) -> Result<Secret, NatsAuthError> {
    let [operator, system] = ServerKeys::generate().seeds()?;
    Ok(opaque_secret(
        name,
        namespace,
        &[(OPERATOR_SEED_KEY, &operator), (SYSTEM_SEED_KEY, &system)],
    ))
}

/// An `Opaque` Secret `namespace/name` holding `data`.
pub(crate) fn opaque_secret(name: &str, namespace: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// The keys held by `s`.
pub fn keys_of(s: &Secret, name: &str) -> Result<ServerKeys, NatsAuthError> {
    let bad = |reason: String| NatsAuthError::BadKeys {
        name: name.to_owned(),
        reason,
    };
    let operator =
        value(s, OPERATOR_SEED_KEY).ok_or_else(|| bad(format!("no {OPERATOR_SEED_KEY:?}")))?;
    let system = value(s, SYSTEM_SEED_KEY).ok_or_else(|| bad(format!("no {SYSTEM_SEED_KEY:?}")))?;
    ServerKeys::from_seeds(&operator, &system).map_err(|e| bad(e.to_string()))
}

/// The configuration Secret the NATS servers include, for `keys`.
pub fn desired_config_secret(
    name: &str,
    namespace: &str,
    keys: &ServerKeys,
) -> Result<Secret, NatsAuthError> {
    let conf = keys.server_config(RESOLVER_DIR, now_secs())?;
    Ok(opaque_secret(name, namespace, &[(CONFIG_KEY, &conf)]))
}

/// Whether the configuration in `s` trusts `keys` (its operator JWT is of the operator key,
/// its system account the system key): nothing to write.
pub fn config_current(s: &Secret, keys: &ServerKeys) -> bool {
    let Some(conf) = value(s, CONFIG_KEY) else {
        return false;
    };
    let line = |prefix: &str| {
        conf.lines()
            .find_map(|l| l.strip_prefix(prefix).map(str::trim))
            .map(str::to_owned)
    };
    let operator = line("operator:")
        .as_deref()
        .and_then(jwt_claims)
        .and_then(|c| c.get("sub").and_then(|s| s.as_str()).map(str::to_owned));
    operator.as_deref() == Some(keys.operator.public_key().as_str())
        && line("system_account:").as_deref() == Some(keys.system.public_key().as_str())
        && conf.contains(RESOLVER_DIR)
}

/// The Secret `name` of `api`, created from `new` first when it does not exist (another
/// operator replica creating it at the same moment is fine: its Secret is read); `true` when
/// this call created it. An existing Secret is never changed.
pub(crate) async fn get_or_create<E: From<SecretError>>(
    api: &Api<Secret>,
    name: &str,
    new: impl FnOnce() -> Result<Secret, E>,
) -> Result<(Secret, bool), E> {
    if let Some(s) = api.get_opt(name).await.map_err(secret_error(name))? {
        return Ok((s, false));
    }
    match api.create(&PostParams::default(), &new()?).await {
        Ok(s) => Ok((s, true)),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Ok((api.get(name).await.map_err(secret_error(name))?, false))
        }
        Err(e) => Err(secret_error(name)(e).into()),
    }
}

/// Reads the keys Secret `keys_name`, creating it first when it does not exist (another
/// operator replica creating it meanwhile is fine), then writes the configuration Secret
/// `config_name` when it is missing or does not trust those keys. Both in `api`'s namespace.
pub async fn ensure(
    api: &Api<Secret>,
    namespace: &str,
    keys_name: &str,
    config_name: &str,
) -> Result<ServerKeys, NatsAuthError> {
    let (keys_secret, created) =
        get_or_create(api, keys_name, || new_keys_secret(keys_name, namespace)).await?;
    if created {
        tracing::info!(secret = keys_name, %namespace, "generated the NATS operator and system account keys");
    }
    let keys = keys_of(&keys_secret, keys_name)?;
    let current = api
        .get_opt(config_name)
        .await
        .map_err(secret_error(config_name))?;
    if !current.as_ref().is_some_and(|s| config_current(s, &keys)) {
        let desired = desired_config_secret(config_name, namespace, &keys)?;
        api.patch(
            config_name,
            &PatchParams::apply(crate::controller::MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
        .map_err(secret_error(config_name))?;
        tracing::info!(secret = config_name, %namespace, "wrote the NATS servers' auth configuration");
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(std::sync::Mutex<Vec<String>>);

    #[async_trait]
    impl AccountPublisher for Recorder {
        async fn publish(&self, jwt: String) -> Result<(), String> {
            self.0.lock().unwrap().push(jwt);
            Ok(())
        }
    }

    #[test]
    fn the_keys_secret_reads_back_and_a_bad_one_is_refused_naming_keys_only() {
        let s = new_keys_secret("starling-nats-keys", "starling-system").unwrap();
        let keys = keys_of(&s, "starling-nats-keys").unwrap();
        assert!(keys.operator.public_key().starts_with('O'));
        let mut broken = s.clone();
        let seed = value(&s, SYSTEM_SEED_KEY).unwrap();
        broken.data.as_mut().unwrap().insert(
            OPERATOR_SEED_KEY.to_owned(),
            ByteString(seed.clone().into_bytes()),
        );
        let e = keys_of(&broken, "starling-nats-keys")
            .unwrap_err()
            .to_string();
        assert!(e.contains("operator") && !e.contains(&seed), "{e}");
        broken.data.as_mut().unwrap().remove(SYSTEM_SEED_KEY);
        let e = keys_of(&broken, "k").unwrap_err().to_string();
        assert!(e.contains("system.nk"), "{e}");
    }

    #[test]
    fn the_servers_configuration_trusts_the_keys_and_holds_no_seed() {
        let s = new_keys_secret("k", "ns").unwrap();
        let keys = keys_of(&s, "k").unwrap();
        let config = desired_config_secret("starling-nats-auth-config", "ns", &keys).unwrap();
        assert_eq!(
            config.metadata.name.as_deref(),
            Some("starling-nats-auth-config")
        );
        let conf = value(&config, CONFIG_KEY).unwrap();
        for seed in [
            value(&s, OPERATOR_SEED_KEY).unwrap(),
            value(&s, SYSTEM_SEED_KEY).unwrap(),
        ] {
            assert!(!conf.contains(&seed));
        }
        assert!(
            conf.contains("resolver: {\n  type: full\n  dir: \"/data/jwt\""),
            "{conf}"
        );
        assert!(config_current(&config, &keys));
        let other = ServerKeys::generate();
        assert!(
            !config_current(&config, &other),
            "other keys: written again"
        );
        assert!(!config_current(&Secret::default(), &keys));
    }

    #[tokio::test]
    async fn a_broker_gets_a_user_of_its_own_account_kept_while_it_fits() {
        let recorder = Arc::new(Recorder(std::sync::Mutex::new(Vec::new())));
        let auth = NatsAuth::new(ServerKeys::generate(), recorder.clone());
        auth.publish_account("b1").await.unwrap();
        let published = recorder.0.lock().unwrap().clone();
        let account = jwt_claims(&published[0]).unwrap();
        assert_eq!(
            account["sub"],
            auth.keys().account("b1").unwrap().public_key()
        );
        assert_eq!(account["iss"], auth.keys().operator.public_key());

        let login = auth.broker_login("b1", None).unwrap();
        assert_eq!(login.inbox_prefix, "_INBOX_starling.b1");
        let user = jwt_claims(creds::creds_jwt(&login.creds).unwrap()).unwrap();
        assert_eq!(user["iss"], account["sub"]);
        assert_eq!(
            user["nats"]["sub"]["allow"],
            serde_json::json!(["_INBOX_starling.b1.>", "starling.b1.>"])
        );
        // Kept as long as it fits; another tenant's or a foreign one is replaced.
        let again = auth.broker_login("b1", Some(&login.creds)).unwrap();
        assert_eq!(again.creds, login.creds);
        let moved = auth.broker_login("b2", Some(&login.creds)).unwrap();
        assert_ne!(moved.creds, login.creds);
        let junk = auth.broker_login("b1", Some("junk")).unwrap();
        assert!(creds::creds_jwt(&junk.creds).is_some());
        let [operator_seed, _] = auth.keys().seeds().unwrap();
        assert!(!format!("{auth:?}").contains(&operator_seed));
    }
}
