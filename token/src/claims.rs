//! The claims of a Starling token.

use serde::{Deserialize, Serialize};

use crate::TopicAcl;

/// The claims of a Starling (and Cloudflare Pub/Sub) token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The client id the token is bound to.
    pub sub: String,
    /// The token id, used for revocation.
    pub jti: String,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expiry, unix seconds; `None` means the token does not expire (Cloudflare's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// What the client may publish and subscribe to.
    #[serde(rename = "topicAcl")]
    pub topic_acl: TopicAcl,
}

impl Claims {
    /// The claims as a JSON value, in a fixed order (infallible, used when signing).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("sub".into(), self.sub.clone().into());
        map.insert("jti".into(), self.jti.clone().into());
        map.insert("iat".into(), self.iat.into());
        if let Some(exp) = self.exp {
            map.insert("exp".into(), exp.into());
        }
        if let Some(nbf) = self.nbf {
            map.insert("nbf".into(), nbf.into());
        }
        map.insert("topicAcl".into(), self.topic_acl.to_json());
        serde_json::Value::Object(map)
    }
}
