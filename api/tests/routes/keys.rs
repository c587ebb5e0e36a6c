//! Signing keys: the published set, rotation, the keys' states.

use crate::client::*;

async fn publickeys_never_contain_a_private_part() {
    let api = api().await;
    api.broker(json!({"name": "b1"})).await;
    for uri in [
        "/v1/namespaces/home/brokers/b1/publickeys".to_string(),
        format!("{C}/namespaces/home/brokers/b1/publickeys"),
    ] {
        let r = api.call(Method::GET, &uri, BOOTSTRAP, None).await;
        let keys = if r.body.get("result").is_some() {
            r.body["result"]["keys"].clone()
        } else {
            r.body["keys"].clone()
        };
        let keys = keys.as_array().unwrap().clone();
        assert_eq!(
            keys.len(),
            3,
            "the current and next token keys, and the hook key"
        );
        for k in keys {
            assert!(k.get("d").is_none());
            assert_eq!(
                (
                    k["kty"].as_str(),
                    k["crv"].as_str(),
                    k["alg"].as_str(),
                    k["use"].as_str()
                ),
                (Some("OKP"), Some("Ed25519"), Some("EdDSA"), Some("sig"))
            );
            assert_eq!(
                k["kid"].as_str().unwrap(),
                starling_token::thumbprint(k["x"].as_str().unwrap())
            );
        }
    }
}

async fn rotation_keeps_old_tokens_valid_until_retire_at_then_drops_the_key() {
    let api = api().await;
    api.broker(json!({"name": "b1"})).await;
    let issue = || async {
        let r = api
            .call(
                Method::GET,
                "/v1/namespaces/home/brokers/b1/credentials?topicAcl=%23&expiration=-1",
                BOOTSTRAP,
                None,
            )
            .await;
        r.body
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    let old = issue().await;
    let old_kid = starling_token::peek_kid(&old).unwrap();
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces/home/brokers/b1/keys/rotate?retire_after=3600",
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["retiringKid"], old_kid.as_str());
    assert!(r.body["message"].as_str().unwrap().contains("without exp"));
    let retire_at = r.body["retireAt"].as_i64().unwrap();
    let new = issue().await;
    let new_kid = starling_token::peek_kid(&new).unwrap();
    assert_ne!(new_kid, old_kid);
    assert_eq!(
        r.body["currentKid"],
        new_kid.as_str(),
        "the old next key signs now"
    );
    let now = api.state.clock.now_secs();
    let v = api.verifier().await;
    assert!(v.verify(&old, now, 0).is_ok() && v.verify(&new, now, 0).is_ok());
    assert_eq!(
        v.len(),
        5,
        "next, current and retiring token keys; current and retiring hook keys"
    );
    api.state.clock.advance(retire_at - now);
    let v = api.verifier().await;
    assert_eq!(
        v.verify(&old, retire_at, 0),
        Err(TokenError::UnknownKeyId),
        "gone from /publickeys at retire_at"
    );
    assert!(v.verify(&new, retire_at, 0).is_ok());
    // The default retire_at is at least 24 h.
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces/home/brokers/b1/keys/rotate"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert!(r.body["result"]["retireAt"].as_i64().unwrap() >= retire_at + 86_400);
}

/// `GET .../keys`: next and current keys, and after a rotation the retiring one with its retire
/// time; public parts only.
async fn keys_show_their_state_and_retire_time() {
    let api = api().await;
    api.broker(json!({"name": "b1"})).await;
    let read = api.token("read").await;
    let base = "/v1/namespaces/home/brokers/b1";
    let r = api
        .call(Method::GET, &format!("{base}/keys"), &read, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let states: Vec<&str> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["status"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2);
    assert!(
        states.contains(&"current") && states.contains(&"next"),
        "{states:?}"
    );
    assert!(
        r.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["retireAt"].is_null())
    );
    let rotated = api
        .call(
            Method::POST,
            &format!("{base}/keys/rotate?retire_after=60"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let r = api
        .call(Method::GET, &format!("{base}/keys"), &read, None)
        .await;
    let keys = r.body["keys"].as_array().unwrap();
    let retiring = keys.iter().find(|k| k["status"] == "retiring").unwrap();
    assert_eq!(retiring["kid"], rotated.body["retiringKid"]);
    assert_eq!(retiring["retireAt"], rotated.body["retireAt"]);
    let current = keys.iter().find(|k| k["status"] == "current").unwrap();
    assert_eq!(current["kid"], rotated.body["currentKid"]);
    assert!(!r.body.to_string().contains("sealed") && !r.body.to_string().contains("\"d\""));
    // Past its retire time the key is gone from the list.
    api.state.clock.advance(61);
    let r = api
        .call(Method::GET, &format!("{base}/keys"), &read, None)
        .await;
    assert!(
        r.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["status"] != "retiring")
    );
}

tests!(
    publickeys_never_contain_a_private_part,
    rotation_keeps_old_tokens_valid_until_retire_at_then_drops_the_key,
    keys_show_their_state_and_retire_time,
);
