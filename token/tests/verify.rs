//! Verification: every refusal, and the tokens that must be accepted.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use starling_token::{Claims, Jwks, SigningKey, TokenError, TopicAcl, Verifier, peek_kid};

const NOW: i64 = 1_800_000_000;

fn claims() -> Claims {
    Claims {
        sub: "client-1".into(),
        jti: "jti-1".into(),
        iat: NOW - 10,
        exp: Some(NOW + 3600),
        nbf: None,
        topic_acl: TopicAcl::All,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with an arbitrary header and payload, signed by `key` over the usual signing input.
fn forge(key: &SigningKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let sig = key.sign_bytes(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn setup() -> (SigningKey, Verifier) {
    let key = SigningKey::generate().unwrap();
    let verifier = Verifier::new(&Jwks {
        keys: vec![key.public_jwk()],
    })
    .unwrap();
    (key, verifier)
}

#[test]
fn valid_token_verifies_and_returns_its_claims() {
    let (key, v) = setup();
    let token = key.sign_claims(&claims());
    assert_eq!(v.verify(&token, NOW, 0).unwrap(), claims());
    assert_eq!(peek_kid(&token).unwrap(), key.kid());
}

#[test]
fn token_without_exp_is_valid() {
    let (key, v) = setup();
    let c = Claims {
        exp: None,
        ..claims()
    };
    let token = key.sign_claims(&c);
    assert_eq!(
        v.verify(&token, NOW + 10 * 365 * 86_400, 0).unwrap().exp,
        None
    );
}

#[test]
fn expired_token_is_refused_with_skew_honoured() {
    let (key, v) = setup();
    let token = key.sign_claims(&Claims {
        exp: Some(NOW),
        ..claims()
    });
    assert_eq!(v.verify(&token, NOW, 0), Err(TokenError::Expired));
    assert_eq!(
        v.verify(&token, NOW + 4, 5).map(|c| c.sub),
        Ok("client-1".into())
    );
    assert_eq!(v.verify(&token, NOW + 5, 5), Err(TokenError::Expired));
    assert!(v.verify(&token, NOW - 1, 0).is_ok());
}

#[test]
fn nbf_in_the_future_is_refused() {
    let (key, v) = setup();
    let token = key.sign_claims(&Claims {
        nbf: Some(NOW + 60),
        ..claims()
    });
    assert_eq!(v.verify(&token, NOW, 0), Err(TokenError::NotYetValid));
    assert!(v.verify(&token, NOW, 60).is_ok());
    assert!(v.verify(&token, NOW + 60, 0).is_ok());
}

#[test]
fn alg_none_is_refused() {
    let (key, v) = setup();
    let payload = serde_json::to_string(&claims()).unwrap();
    let header = format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid());
    let token = format!("{}.{}.", b64(header.as_bytes()), b64(payload.as_bytes()));
    assert_eq!(
        v.verify(&token, NOW, 0),
        Err(TokenError::UnsupportedAlgorithm)
    );
    // Even with a valid Ed25519 signature, the header must say EdDSA.
    let token = forge(&key, &header, &payload);
    assert_eq!(
        v.verify(&token, NOW, 0),
        Err(TokenError::UnsupportedAlgorithm)
    );
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let (key, v) = setup();
    let payload = serde_json::to_string(&claims()).unwrap();
    let header = format!(r#"{{"alg":"HS256","kid":"{}"}}"#, key.kid());
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    for secret in [
        key.public_key_bytes().to_vec(),
        key.public_jwk().x.into_bytes(),
    ] {
        let mac = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &secret),
            input.as_bytes(),
        );
        let token = format!("{input}.{}", b64(mac.as_ref()));
        assert_eq!(
            v.verify(&token, NOW, 0),
            Err(TokenError::UnsupportedAlgorithm)
        );
    }
}

#[test]
fn missing_alg_is_refused() {
    let (key, v) = setup();
    let payload = serde_json::to_string(&claims()).unwrap();
    let token = forge(&key, &format!(r#"{{"kid":"{}"}}"#, key.kid()), &payload);
    assert_eq!(
        v.verify(&token, NOW, 0),
        Err(TokenError::UnsupportedAlgorithm)
    );
}

#[test]
fn unknown_or_missing_kid_is_refused() {
    let (_, v) = setup();
    let other = SigningKey::generate().unwrap();
    let token = other.sign_claims(&claims());
    assert_eq!(v.verify(&token, NOW, 0), Err(TokenError::UnknownKeyId));
    let payload = serde_json::to_string(&claims()).unwrap();
    let token = forge(&other, r#"{"alg":"EdDSA"}"#, &payload);
    assert_eq!(v.verify(&token, NOW, 0), Err(TokenError::MissingKeyId));
    assert_eq!(peek_kid(&token), Err(TokenError::MissingKeyId));
}

#[test]
fn signature_by_another_key_under_our_kid_is_refused() {
    let (key, v) = setup();
    let other = SigningKey::generate().unwrap();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, key.kid());
    let token = forge(&other, &header, &serde_json::to_string(&claims()).unwrap());
    assert_eq!(v.verify(&token, NOW, 0), Err(TokenError::BadSignature));
}

#[test]
fn tampered_payload_is_refused() {
    let (key, v) = setup();
    let token = key.sign_claims(&claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let evil = b64(br##"{"sub":"admin","jti":"x","iat":1,"topicAcl":"#"}"##);
    parts[1] = &evil;
    assert_eq!(
        v.verify(&parts.join("."), NOW, 0),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn truncated_signature_is_refused() {
    let (key, v) = setup();
    let token = key.sign_claims(&claims());
    let short = &token[..token.len() - 4];
    assert!(matches!(
        v.verify(short, NOW, 0),
        Err(TokenError::BadSignature | TokenError::Malformed)
    ));
}

#[test]
fn missing_required_claims_are_refused_by_name() {
    let (key, v) = setup();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, key.kid());
    let cases = [
        (r##"{"jti":"j","iat":1,"topicAcl":"#"}"##, "sub"),
        (r##"{"sub":"s","iat":1,"topicAcl":"#"}"##, "jti"),
        (r##"{"sub":"s","jti":"j","topicAcl":"#"}"##, "iat"),
        (r#"{"sub":"s","jti":"j","iat":1}"#, "topicAcl"),
        (r##"{"sub":"","jti":"j","iat":1,"topicAcl":"#"}"##, "sub"),
    ];
    for (payload, name) in cases {
        let token = forge(&key, &header, payload);
        assert_eq!(
            v.verify(&token, NOW, 0),
            Err(TokenError::MissingClaim(name)),
            "{payload}"
        );
    }
}

#[test]
fn claims_of_the_wrong_type_are_refused() {
    let (key, v) = setup();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, key.kid());
    let cases = [
        (r##"{"sub":1,"jti":"j","iat":1,"topicAcl":"#"}"##, "sub"),
        (r##"{"sub":"s","jti":"j","iat":"1","topicAcl":"#"}"##, "iat"),
        (
            r##"{"sub":"s","jti":"j","iat":1,"exp":"never","topicAcl":"#"}"##,
            "exp",
        ),
        (
            r#"{"sub":"s","jti":"j","iat":1,"topicAcl":"a/b"}"#,
            "topicAcl",
        ),
    ];
    for (payload, name) in cases {
        let token = forge(&key, &header, payload);
        assert_eq!(
            v.verify(&token, NOW, 0),
            Err(TokenError::InvalidClaim(name)),
            "{payload}"
        );
    }
}

#[test]
fn malformed_and_overlong_tokens_are_refused() {
    let (_, v) = setup();
    for bad in ["", "a", "a.b", "a.b.c.d", "!!!.b.c", "e30.e30.e30"] {
        assert!(
            matches!(
                v.verify(bad, NOW, 0),
                Err(TokenError::Malformed | TokenError::MissingKeyId)
            ),
            "{bad}"
        );
    }
    let long = "a".repeat(starling_token::MAX_TOKEN_LEN + 1);
    assert_eq!(v.verify(&long, NOW, 0), Err(TokenError::TooLong));
}

#[test]
fn acl_object_survives_signing_and_verification() {
    let (key, v) = setup();
    let acl: TopicAcl = serde_json::from_str(r#"{"pub":["a/+"],"sub":["b/#"]}"#).unwrap();
    let c = Claims {
        topic_acl: acl.clone(),
        ..claims()
    };
    let got = v.verify(&key.sign_claims(&c), NOW, 0).unwrap();
    assert_eq!(got.topic_acl, acl);
    assert!(got.topic_acl.may_publish("a/x"));
    assert!(got.topic_acl.may_subscribe("b"), "b/# covers b");
    assert!(!got.topic_acl.may_subscribe("c"));
    assert!(!got.topic_acl.may_publish("b/x"));
}

#[test]
fn error_display_never_contains_the_token() {
    let (key, v) = setup();
    let token = key.sign_claims(&Claims {
        exp: Some(1),
        ..claims()
    });
    let err = v.verify(&token, NOW, 0).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(&token[..20]));
    assert_eq!(err.metric_label(), "expired");
}

#[test]
fn verifier_rejects_malformed_ed25519_keys_and_ignores_other_types() {
    let key = SigningKey::generate().unwrap();
    let mut bad = key.public_jwk();
    bad.x = "short".into();
    assert!(matches!(
        Verifier::new(&Jwks { keys: vec![bad] }),
        Err(TokenError::InvalidKey(_))
    ));
    let mut rsa = key.public_jwk();
    rsa.kty = "RSA".into();
    let v = Verifier::new(&Jwks { keys: vec![rsa] }).unwrap();
    assert!(v.is_empty());
}

#[test]
fn webhook_signature_verifies_by_kid() {
    let (key, v) = setup();
    let sig = key.sign_bytes(b"1700000000[]");
    assert!(v.verify_bytes(key.kid(), b"1700000000[]", &sig).is_ok());
    assert_eq!(
        v.verify_bytes(key.kid(), b"1700000001[]", &sig),
        Err(TokenError::BadSignature)
    );
}
