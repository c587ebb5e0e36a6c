//! Interoperability with an independent Ed25519/JWT implementation: Python's `cryptography`
//! (pinned in tests/python/requirements.txt and installed by scripts/test) signs tokens that we
//! verify, and verifies tokens and webhook signatures that we sign.

use std::io::Write as _;
use std::process::{Command, Stdio};

use starling_token::{Claims, Jwks, SigningKey, TokenError, TopicAcl, Verifier};

const PY: &str = r#"
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives import serialization

def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def unb64(s): return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

req = json.load(sys.stdin)
out = {}
if req["op"] == "sign":
    key = Ed25519PrivateKey.generate()
    x = b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    kid = b64(hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True).encode()).digest())
    header = b64(json.dumps({"alg": "EdDSA", "kid": kid}, separators=(",", ":")).encode())
    tokens = []
    for claims in req["claims"]:
        payload = b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = (header + "." + payload).encode()
        tokens.append(header + "." + payload + "." + b64(key.sign(signing_input)))
    out = {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}, "tokens": tokens}
elif req["op"] == "verify":
    jwk = req["jwk"]
    pub = Ed25519PublicKey.from_public_bytes(unb64(jwk["x"]))
    kid = b64(hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]}, separators=(",", ":"), sort_keys=True).encode()).digest())
    h, p, s = req["token"].split(".")
    pub.verify(unb64(s), (h + "." + p).encode())
    pub.verify(base64.b64decode(req["webhook_sig"]), req["webhook_msg"].encode())
    out = {"header": json.loads(unb64(h)), "claims": json.loads(unb64(p)), "kid": kid}
json.dump(out, sys.stdout)
"#;

fn python(request: serde_json::Value) -> serde_json::Value {
    let mut child = Command::new("python3")
        .args(["-c", PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with `cryptography` (tests/python/requirements.txt) is needed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const NOW: i64 = 1_800_000_000;

#[test]
fn tokens_signed_by_python_cryptography_verify_and_refusals_hold() {
    let reply = python(serde_json::json!({"op": "sign", "claims": [
        {"sub": "c1", "jti": "j1", "iat": NOW - 5, "exp": NOW + 60, "topicAcl": "#"},
        {"sub": "c2", "jti": "j2", "iat": NOW - 5, "topicAcl": {"pub": ["a/+"], "sub": ["a/#"]}},
        {"sub": "c3", "jti": "j3", "iat": NOW - 100, "exp": NOW - 50, "topicAcl": "#"},
        {"sub": "c4", "iat": NOW, "topicAcl": "#"},
    ]}));
    let jwks: Jwks = serde_json::from_value(serde_json::json!({"keys": [reply["jwk"]]})).unwrap();
    let verifier = Verifier::new(&jwks).unwrap();
    let tokens: Vec<String> = serde_json::from_value(reply["tokens"].clone()).unwrap();

    let c1 = verifier.verify(&tokens[0], NOW, 0).unwrap();
    assert_eq!((c1.sub.as_str(), c1.exp), ("c1", Some(NOW + 60)));
    let c2 = verifier.verify(&tokens[1], NOW, 0).unwrap();
    assert_eq!(c2.exp, None);
    assert!(c2.topic_acl.may_publish("a/b") && !c2.topic_acl.may_publish("b"));
    assert_eq!(
        verifier.verify(&tokens[2], NOW, 5),
        Err(TokenError::Expired)
    );
    assert_eq!(
        verifier.verify(&tokens[3], NOW, 0),
        Err(TokenError::MissingClaim("jti"))
    );

    // Python computed the kid as an RFC 7638 thumbprint: ours must agree.
    assert_eq!(
        jwks.keys[0].kid,
        starling_token::thumbprint(&jwks.keys[0].x)
    );
}

#[test]
fn tokens_and_webhook_signatures_we_sign_verify_in_python_cryptography() {
    let key = SigningKey::generate().unwrap();
    let claims = Claims {
        sub: "01J0000000000000000000000".into(),
        jti: "abc".into(),
        iat: NOW,
        exp: None,
        nbf: None,
        topic_acl: TopicAcl::All,
    };
    let token = key.sign_claims(&claims);
    let msg = "1800000000[{\"mid\":1}]";
    let sig = key.sign_bytes(msg.as_bytes());
    use base64::Engine as _;
    let reply = python(serde_json::json!({
        "op": "verify",
        "jwk": key.public_jwk(),
        "token": token,
        "webhook_msg": msg,
        "webhook_sig": base64::engine::general_purpose::STANDARD.encode(sig),
    }));
    assert_eq!(
        reply["header"],
        serde_json::json!({"alg": "EdDSA", "kid": key.kid()})
    );
    assert_eq!(reply["kid"], key.kid());
    assert_eq!(reply["claims"]["sub"], "01J0000000000000000000000");
    assert_eq!(reply["claims"]["topicAcl"], "#");
    assert!(reply["claims"].get("exp").is_none());
}
