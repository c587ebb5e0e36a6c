//! Secrets the chart asks the operator to generate once: the api's admin token, its key
//! encryption key and the bundled database's password.
//!
//! A chart that renders random values regenerates them on every `helm template` (and so under
//! every GitOps tool that renders charts that way), which replaces the admin token and makes
//! every sealed key unreadable. Instead the chart names these Secrets and the operator creates
//! each one that does not exist yet, in its own namespace, and never changes one that does.
//! Each Secret gets one random value (32 bytes from the system's generator, as 64 lowercase
//! hex characters) substituted for `{random}` in every key's template, so a password and a URL
//! holding it agree.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, api::PostParams};
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::Deserialize;

/// The placeholder replaced with the Secret's random value.
pub const PLACEHOLDER: &str = "{random}";

/// One Secret to generate: its name and, for every key, a template holding `{random}`.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GeneratedSecret {
    /// The Secret's name in the operator's namespace.
    pub name: String,
    /// Key → template.
    pub data: BTreeMap<String, String>,
    /// Labels put on the Secret.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why the list of Secrets to generate is unusable.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The JSON does not parse, or a template lacks the placeholder.
    #[error("invalid list of Secrets to generate: {0}")]
    Invalid(String),
    /// The system's random generator failed.
    #[error("the system's random generator failed")]
    Random,
    /// The API server refused.
    #[error("creating Secret {name}: {source}")]
    Kube {
        /// The Secret.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
}

/// Parses the JSON list (`STARLING_OPERATOR_GENERATE_SECRETS`); empty means none.
pub fn parse(json: &str) -> Result<Vec<GeneratedSecret>, GenerateError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let list: Vec<GeneratedSecret> =
        serde_json::from_str(json).map_err(|e| GenerateError::Invalid(e.to_string()))?;
    for s in &list {
        if s.name.is_empty() || s.data.is_empty() {
            return Err(GenerateError::Invalid(format!(
                "{:?} needs a name and at least one key",
                s.name
            )));
        }
        if !s.data.values().any(|t| t.contains(PLACEHOLDER)) {
            return Err(GenerateError::Invalid(format!(
                "no key of {} holds {PLACEHOLDER}: it would not be secret",
                s.name
            )));
        }
    }
    Ok(list)
}

fn random_hex() -> Result<String, GenerateError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| GenerateError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The Secret `spec` describes, with a fresh random value.
pub fn render(spec: &GeneratedSecret) -> Result<Secret, GenerateError> {
    let random = random_hex()?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            labels: (!spec.labels.is_empty()).then(|| spec.labels.clone()),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            spec.data
                .iter()
                .map(|(k, t)| {
                    (
                        k.clone(),
                        ByteString(t.replace(PLACEHOLDER, &random).into_bytes()),
                    )
                })
                .collect(),
        ),
        ..Secret::default()
    })
}

/// Creates every Secret of `list` that `api` does not have. An existing one (or one another
/// replica creates at the same moment: 409) is left exactly as it is. Returns the Secrets this
/// call created.
pub async fn ensure(
    api: &Api<Secret>,
    list: &[GeneratedSecret],
) -> Result<Vec<Secret>, GenerateError> {
    let mut created = Vec::new();
    for spec in list {
        let kube_err = |source| GenerateError::Kube {
            name: spec.name.clone(),
            source,
        };
        // No read first: the operator may create Secrets here but read only the ones it must.
        match api.create(&PostParams::default(), &render(spec)?).await {
            Ok(s) => created.push(s),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(kube_err(e)),
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_secret_shares_one_random_value_and_secrets_differ() {
        let list = parse(
            r#"[{"name": "db", "data": {"POSTGRES_PASSWORD": "{random}",
                "url": "postgres://starling:{random}@db:5432/starling"}},
               {"name": "kek", "data": {"kek": "{random}"}}]"#,
        )
        .expect("valid");
        let db = render(&list[0]).expect("db");
        let data = db.data.expect("data");
        let pw = String::from_utf8(data["POSTGRES_PASSWORD"].0.clone()).expect("utf8");
        assert_eq!(pw.len(), 64);
        assert!(pw.bytes().all(|b| b.is_ascii_hexdigit()), "{pw}");
        assert_eq!(
            String::from_utf8(data["url"].0.clone()).expect("utf8"),
            format!("postgres://starling:{pw}@db:5432/starling")
        );
        let again = render(&list[0]).expect("again").data.expect("data");
        assert_ne!(
            again["POSTGRES_PASSWORD"], data["POSTGRES_PASSWORD"],
            "fresh each time"
        );
    }

    #[test]
    fn a_template_without_the_placeholder_or_an_unknown_field_is_refused() {
        assert!(parse(r#"[{"name": "x", "data": {"k": "fixed"}}]"#).is_err());
        assert!(parse(r#"[{"name": "x", "data": {"k": "{random}"}, "value": 1}]"#).is_err());
        assert!(parse(r#"[{"name": "", "data": {"k": "{random}"}}]"#).is_err());
        assert!(parse("not json").is_err());
        assert_eq!(parse("  ").expect("none"), Vec::new());
    }
}
