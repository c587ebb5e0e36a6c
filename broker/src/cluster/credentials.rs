//! What one broker may touch on a NATS server shared by several brokers, and the NATS
//! credentials that say it.
//!
//! On a NATS of its own installation (the chart's), the operator runs decentralized JWT auth:
//! an operator key signs one account for every broker (and the system account), the account
//! key signs one user per broker, and the NATS servers trust the operator and know the two
//! accounts from their configuration ([`server_config`]) without ever being reloaded when
//! brokers come and go. A broker's user JWT ([`Permissions::for_tenants`]) lets it publish and
//! subscribe only under its own tenants' names: their subjects (`starling.<tenant>.>`), their
//! session records, their retained-message bucket, the JetStream API of their streams and
//! consumers, the acknowledgements of those streams, and an inbox prefix of its own
//! ([`inbox_prefix`], `[cluster] inbox_prefix`), so no broker reads another's replies.
//!
//! The names come from the same functions the broker uses ([`super::subject::tenant_prefix`],
//! [`super::link::stream_name`], [`super::sessions::bucket_name`],
//! [`super::retained::bucket_name`]), so the permissions cannot drift from what the broker
//! does.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha512_256};

use super::subject::{push_token, tenant_prefix};

/// The first token of every broker's inbox prefix.
pub const INBOX_ROOT: &str = "_INBOX_starling";

/// Why keys or credentials could not be made or read. Never holds a key or a seed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    /// A seed is not an NKey seed of the kind wanted.
    #[error("the {0} seed is not a valid NKey seed of that kind")]
    BadSeed(&'static str),
    /// Signing failed.
    #[error("cannot sign the {0} JWT")]
    Sign(&'static str),
}

/// The inbox prefix of a broker serving `tenant`: `_INBOX_starling.<tenant token>`. Replies to
/// its requests (JetStream's answers, its consumers' deliveries) come under it.
pub fn inbox_prefix(tenant: &str) -> String {
    let mut s = String::from(INBOX_ROOT);
    s.push('.');
    push_token(&mut s, tenant);
    s
}

/// The JetStream streams of `tenant`: its QoS 1/2 messages, its sessions, and the stream
/// under its retained-message bucket.
pub fn tenant_streams(tenant: &str) -> [String; 3] {
    [
        super::link::stream_name(tenant),
        super::sessions::bucket_name(tenant),
        format!("KV_{}", super::retained::bucket_name(tenant)),
    ]
}

/// A NATS user's publish and subscribe allow lists (everything else is denied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Permissions {
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (plain or in a queue group).
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// What a broker serving `tenants`, with the inbox prefix `inbox`, needs and no more.
    pub fn for_tenants(tenants: &[&str], inbox: &str) -> Permissions {
        let mut publish = vec!["$JS.API.INFO".to_owned(), format!("{inbox}.>")];
        let mut subscribe = vec![format!("{inbox}.>")];
        for tenant in tenants {
            let messages = format!("{}.>", tenant_prefix(tenant));
            publish.push(messages.clone());
            subscribe.push(messages);
            let mut sessions = String::from(super::sessions::SESSIONS_ROOT);
            sessions.push('.');
            push_token(&mut sessions, tenant);
            publish.push(format!("{sessions}.>"));
            publish.push(format!("$KV.{}.>", super::retained::bucket_name(tenant)));
            // The JetStream API of the tenant's own streams: every request whose stream token
            // is one of them (the user JWT travels in the CONNECT line, which NATS bounds to
            // 4 KiB by default, so the list stays short).
            for stream in tenant_streams(tenant) {
                publish.extend([
                    // STREAM.{CREATE,UPDATE,INFO,DELETE,PURGE}, CONSUMER.{CREATE,NAMES,LIST},
                    // DIRECT.GET of the stream.
                    format!("$JS.API.*.*.{stream}"),
                    // CONSUMER.{CREATE,INFO,DELETE} of a named consumer, DIRECT.GET by subject.
                    format!("$JS.API.*.*.{stream}.>"),
                    // STREAM.MSG.{GET,DELETE}.
                    format!("$JS.API.*.*.*.{stream}"),
                    // CONSUMER.DURABLE.CREATE, CONSUMER.MSG.NEXT.
                    format!("$JS.API.*.*.*.{stream}.>"),
                    // Acknowledgements and flow control of its consumers' deliveries.
                    format!("$JS.*.{stream}.>"),
                ]);
            }
        }
        Permissions { publish, subscribe }
    }
}

/// The keys of a NATS installation run with decentralized auth: the operator, which signs
/// every account, and the system account (the servers' own). Each tenant's account key is
/// derived from the operator's seed and the tenant's name ([`ServerKeys::account`]), so it is
/// never stored and every operator replica finds the same.
pub struct ServerKeys {
    /// Signs the accounts.
    pub operator: KeyPair,
    /// The NATS servers' own account; its users publish accounts.
    pub system: KeyPair,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("operator", &self.operator.public_key())
            .field("system", &self.system.public_key())
            .finish()
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `limits` of an account without bounds; with JetStream (storage without bounds) or without.
fn account_limits(jetstream: bool) -> serde_json::Value {
    let js = if jetstream { -1 } else { 0 };
    json!({
        "subs": -1, "data": -1, "payload": -1,
        "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
    })
}

/// The subject a system-account user publishes an account JWT to: every server of the
/// cluster (full resolver) stores it.
pub const CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";

impl ServerKeys {
    /// Two new keys.
    pub fn generate() -> ServerKeys {
        ServerKeys {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
        }
    }

    /// The keys of the two seeds (`SO…`, `SA…`).
    pub fn from_seeds(operator: &str, system: &str) -> Result<ServerKeys, CredentialsError> {
        let read = |seed: &str, what: &'static str, prefix: char| {
            let kp =
                KeyPair::from_seed(seed.trim()).map_err(|_| CredentialsError::BadSeed(what))?;
            if kp.public_key().starts_with(prefix) {
                Ok(kp)
            } else {
                Err(CredentialsError::BadSeed(what))
            }
        };
        Ok(ServerKeys {
            operator: read(operator, "operator", 'O')?,
            system: read(system, "system account", 'A')?,
        })
    }

    /// The seeds, in the order of [`ServerKeys::from_seeds`].
    pub fn seeds(&self) -> Result<[String; 2], CredentialsError> {
        let seed = |kp: &KeyPair, what| kp.seed().map_err(|_| CredentialsError::BadSeed(what));
        Ok([
            seed(&self.operator, "operator")?,
            seed(&self.system, "system account")?,
        ])
    }

    /// The account of `tenant`: its key comes from a SHA-256 of the operator's seed and the
    /// tenant's name.
    pub fn account(&self, tenant: &str) -> Result<KeyPair, CredentialsError> {
        let seed = self
            .operator
            .seed()
            .map_err(|_| CredentialsError::BadSeed("operator"))?;
        let mut h = sha2::Sha256::new();
        h.update(b"starling tenant account\0");
        h.update(seed.as_bytes());
        h.update([0]);
        h.update(tenant.as_bytes());
        KeyPair::new_from_raw(nkeys::KeyPairType::Account, h.finalize().into())
            .map_err(|_| CredentialsError::BadSeed("account"))
    }

    /// The JWT of `tenant`'s account (JetStream without bounds), signed by the operator: what
    /// is published to the servers ([`CLAIMS_UPDATE`]) before the tenant's broker connects.
    pub fn account_jwt(&self, tenant: &str, iat: u64) -> Result<String, CredentialsError> {
        let account = self.account(tenant)?;
        encode(
            &self.operator,
            "account",
            &account.public_key(),
            &format!("tenant {tenant}"),
            iat,
            json!({"type": "account", "version": 2, "limits": account_limits(true)}),
        )
    }

    /// The NATS server configuration that trusts these keys: the operator JWT, the system
    /// account (preloaded), and a full resolver keeping the accounts published to it in
    /// `resolver_dir` (on every server; they share what each is given). Accounts and users
    /// come and go without the configuration changing. Issued at `iat` (seconds).
    pub fn server_config(&self, resolver_dir: &str, iat: u64) -> Result<String, CredentialsError> {
        let system = self.system.public_key();
        let operator = encode(
            &self.operator,
            "operator",
            &self.operator.public_key(),
            "starling",
            iat,
            json!({"type": "operator", "version": 2, "system_account": system}),
        )?;
        let sys = encode(
            &self.operator,
            "system account",
            &system,
            "SYS",
            iat,
            json!({"type": "account", "version": 2, "limits": account_limits(false)}),
        )?;
        let dir = serde_json::to_string(resolver_dir).unwrap_or_default();
        Ok(format!(
            "# Decentralized auth: written by the Starling operator, the same on every NATS server.\n\
             operator: {operator}\n\
             system_account: {system}\n\
             resolver: {{\n  type: full\n  dir: {dir}\n  allow_delete: false\n}}\n\
             resolver_preload: {{\n  {system}: {sys}\n}}\n"
        ))
    }

    /// A new user of the system account that may only publish accounts ([`CLAIMS_UPDATE`]):
    /// the operator's own login to NATS. Issued at `iat` (seconds).
    pub fn publisher_creds(&self, iat: u64) -> Result<String, CredentialsError> {
        let permissions = Permissions {
            publish: vec![CLAIMS_UPDATE.to_owned()],
            subscribe: vec!["_INBOX.>".to_owned()],
        };
        user_creds(&self.system, "starling-operator", &permissions, iat)
    }

    /// A new user of `tenant`'s account, named `name`, with `permissions`: its credentials
    /// file (JWT and seed), as NATS clients read it. Issued at `iat` (seconds).
    pub fn user_creds(
        &self,
        tenant: &str,
        name: &str,
        permissions: &Permissions,
        iat: u64,
    ) -> Result<String, CredentialsError> {
        user_creds(&self.account(tenant)?, name, permissions, iat)
    }

    /// Whether `creds` (a credentials file) is a user of `tenant`'s account with exactly
    /// `permissions`: minted earlier for the same broker, nothing to change.
    pub fn creds_current(&self, creds: &str, tenant: &str, permissions: &Permissions) -> bool {
        let Ok(account) = self.account(tenant) else {
            return false;
        };
        let Some(claims) = creds_jwt(creds).and_then(jwt_claims) else {
            return false;
        };
        let issuer = claims.get("iss").and_then(|v| v.as_str());
        let allow = |kind: &str| -> Option<Vec<String>> {
            serde_json::from_value(claims.get("nats")?.get(kind)?.get("allow")?.clone()).ok()
        };
        issuer == Some(account.public_key().as_str())
            && allow("pub").as_ref() == Some(&permissions.publish)
            && allow("sub").as_ref() == Some(&permissions.subscribe)
    }
}

fn user_creds(
    account: &KeyPair,
    name: &str,
    permissions: &Permissions,
    iat: u64,
) -> Result<String, CredentialsError> {
    let user = KeyPair::new_user();
    let jwt = encode(
        account,
        "user",
        &user.public_key(),
        name,
        iat,
        json!({
            "pub": {"allow": permissions.publish},
            "sub": {"allow": permissions.subscribe},
            "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2,
        }),
    )?;
    let seed = user.seed().map_err(|_| CredentialsError::BadSeed("user"))?;
    Ok(creds_file(&jwt, &seed))
}

/// Why publishing an account failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishAccountError {
    /// No server answered in time, or the request could not be sent.
    #[error("no NATS server took the account: {0}")]
    Request(String),
    /// A server answered with an error.
    #[error("NATS refused the account: {0}")]
    Refused(String),
}

/// Publishes `account_jwt` to the servers through `client` (a user of [`ServerKeys::publisher_creds`]).
pub async fn publish_account(
    client: &async_nats::Client,
    account_jwt: String,
) -> Result<(), PublishAccountError> {
    let reply = client
        .request(CLAIMS_UPDATE, account_jwt.into())
        .await
        .map_err(|e| PublishAccountError::Request(e.to_string()))?;
    let answer: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|_| PublishAccountError::Refused("an answer that is not JSON".into()))?;
    match answer
        .get("data")
        .and_then(|d| d.get("code"))
        .and_then(|c| c.as_u64())
    {
        Some(200) => Ok(()),
        _ => Err(PublishAccountError::Refused(
            answer
                .get("error")
                .and_then(|e| e.get("description"))
                .and_then(|d| d.as_str())
                .unwrap_or("no reason given")
                .to_owned(),
        )),
    }
}

/// A JWT of `kind` about `subject`, signed by `issuer`: header `{"typ":"JWT","alg":"ed25519-nkey"}`,
/// claims `jti` (a hash of the rest, as NATS's tools make it), `iat`, `iss`, `name`, `sub`, `nats`.
fn encode(
    issuer: &KeyPair,
    kind: &'static str,
    subject: &str,
    name: &str,
    iat: u64,
    nats: serde_json::Value,
) -> Result<String, CredentialsError> {
    let mut claims = json!({
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let digest = Sha512_256::digest(claims.to_string().as_bytes());
    claims["jti"] = data_encoding::BASE32_NOPAD.encode(&digest).into();
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|_| CredentialsError::Sign(kind))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// A credentials file: the user JWT and its NKey seed, in the layout NATS's tools write.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The JWT of a credentials file.
pub fn creds_jwt(creds: &str) -> Option<&str> {
    let mut lines = creds.lines();
    lines.find(|l| l.contains("BEGIN NATS USER JWT"))?;
    lines.next().map(str::trim).filter(|l| !l.is_empty())
}

/// The claims of a JWT, unverified (for comparing what was minted with what is wanted).
pub fn jwt_claims(jwt: &str) -> Option<serde_json::Value> {
    let body = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_brokers_permissions_name_only_its_tenants() {
        let p = Permissions::for_tenants(&["t1"], &inbox_prefix("t1"));
        for wanted in [
            "starling.t1.>",
            "starling-sessions.t1.>",
            "$KV.starling-retained-t1.>",
            "$JS.API.*.*.STARLING_t1",
            "$JS.API.*.*.STARLING_t1_SESSIONS",
            "$JS.API.*.*.KV_starling-retained-t1",
            "$JS.API.*.*.*.STARLING_t1.>",
            "$JS.*.STARLING_t1.>",
            "_INBOX_starling.t1.>",
        ] {
            assert!(p.publish.iter().any(|s| s == wanted), "{wanted}: {p:?}");
        }
        assert_eq!(p.subscribe, ["_INBOX_starling.t1.>", "starling.t1.>"]);
        // Nothing of another tenant, no wildcard where a stream or tenant name goes, and not
        // the shared default inbox.
        for s in p.publish.iter().chain(&p.subscribe) {
            assert!(!s.contains("t2") && !s.starts_with("_INBOX."), "{s}");
            assert!(!s.starts_with("starling.*") && !s.starts_with(">"), "{s}");
        }
    }

    #[test]
    fn a_brokers_user_jwt_fits_the_connect_line_nats_allows() {
        // A managed tenant's name is the api's broker id: 32 hex digits.
        let id = "d3378d8d3bac38551dc08e91dfc309b4";
        let keys = ServerKeys::generate();
        let creds = keys
            .user_creds(
                id,
                &format!("broker {id}"),
                &Permissions::for_tenants(&[id], &inbox_prefix(id)),
                1,
            )
            .unwrap();
        let jwt = creds_jwt(&creds).unwrap();
        // NATS's max_control_line is 4096 bytes by default; the CONNECT line carries the JWT,
        // its nonce signature and a few hundred bytes more.
        assert!(jwt.len() < 3000, "{} bytes", jwt.len());
    }

    #[test]
    fn a_tenant_with_special_characters_is_escaped_like_its_subjects() {
        let p = Permissions::for_tenants(&["a.b"], &inbox_prefix("a.b"));
        assert!(
            p.subscribe.contains(&"starling.a~2Eb.>".to_owned()),
            "{p:?}"
        );
        assert!(p.publish.iter().all(|s| !s.contains("a.b")), "{p:?}");
    }

    #[test]
    fn jwts_have_the_nats_header_and_claims_and_verify() {
        let keys = ServerKeys::generate();
        let perms = Permissions::for_tenants(&["t1"], &inbox_prefix("t1"));
        let creds = keys
            .user_creds("t1", "broker t1", &perms, 1_700_000_000)
            .unwrap();
        let jwt = creds_jwt(&creds).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
            br#"{"typ":"JWT","alg":"ed25519-nkey"}"#
        );
        let claims = jwt_claims(jwt).unwrap();
        let account = keys.account("t1").unwrap().public_key();
        assert_eq!(claims["iss"], account);
        assert!(claims["sub"].as_str().unwrap().starts_with('U'));
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nats"]["type"], "user");
        assert_eq!(claims["nats"]["version"], 2);
        assert!(!claims["jti"].as_str().unwrap().is_empty());
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        KeyPair::from_public_key(&account)
            .unwrap()
            .verify(signed.as_bytes(), &signature)
            .expect("signed by the tenant's account");
        // The seed in the file is the user's.
        let seed = creds
            .lines()
            .skip_while(|l| !l.contains("BEGIN USER NKEY SEED"))
            .nth(1)
            .unwrap();
        assert_eq!(
            KeyPair::from_seed(seed).unwrap().public_key(),
            claims["sub"]
        );
        assert!(keys.creds_current(&creds, "t1", &perms));
        let other = Permissions::for_tenants(&["t2"], &inbox_prefix("t2"));
        assert!(!keys.creds_current(&creds, "t1", &other));
        assert!(!keys.creds_current(&creds, "t2", &perms));
        assert!(!ServerKeys::generate().creds_current(&creds, "t1", &perms));
        assert!(!keys.creds_current("garbage", "t1", &perms));

        // The account: signed by the operator, its key the same from the same seed.
        let account_jwt = keys.account_jwt("t1", 1).unwrap();
        let a = jwt_claims(&account_jwt).unwrap();
        assert_eq!(a["iss"], keys.operator.public_key());
        assert_eq!(a["sub"], account);
        assert_eq!(a["nats"]["type"], "account");
        assert_eq!(a["nats"]["limits"]["disk_storage"], -1);
        let [o, s] = keys.seeds().unwrap();
        let again = ServerKeys::from_seeds(&o, &s).unwrap();
        assert_eq!(again.account("t1").unwrap().public_key(), account);
        assert_ne!(keys.account("t2").unwrap().public_key(), account);
    }

    #[test]
    fn keys_go_through_their_seeds_and_wrong_seeds_are_refused_without_showing_them() {
        let keys = ServerKeys::generate();
        let [o, s] = keys.seeds().unwrap();
        let back = ServerKeys::from_seeds(&o, &s).unwrap();
        assert_eq!(back.system.public_key(), keys.system.public_key());
        let e = ServerKeys::from_seeds(&s, &s).unwrap_err();
        assert_eq!(e, CredentialsError::BadSeed("operator"));
        assert!(!e.to_string().contains(&s));
        assert!(!format!("{keys:?}").contains(&o[..10]));
        let conf = keys.server_config("/data/jwt", 1).unwrap();
        assert!(conf.contains(&format!("system_account: {}", keys.system.public_key())));
        assert!(conf.contains("dir: \"/data/jwt\""));
        assert!(!conf.contains(&o) && !conf.contains(&s));
        let publisher = keys.publisher_creds(1).unwrap();
        let claims = jwt_claims(creds_jwt(&publisher).unwrap()).unwrap();
        assert_eq!(claims["iss"], keys.system.public_key());
        assert_eq!(claims["nats"]["pub"]["allow"], json!([CLAIMS_UPDATE]));
    }
}
