//! The brokers' state feed on the internal listener.

use crate::client::*;

/// The current key of broker b1 as the credentials route signs with it.
async fn current_kid(api: &Api) -> String {
    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b1/credentials?topicAcl=%23",
            BOOTSTRAP,
            None,
        )
        .await;
    let token = r.body.as_object().unwrap().values().next().unwrap();
    starling_token::peek_kid(token.as_str().unwrap()).unwrap()
}

/// The state feed gives a broker with a hook the private part of its hook key, a key of its own
/// that signs the hook's requests (published in `/publickeys`, so receivers verify as before)
/// and is never one of the keys brokers accept for client tokens: whoever holds the broker
/// secret, or a Write-role token that can set a hook, cannot sign a client token with it.
async fn state_carries_the_hook_key_only_while_a_hook_is_set_and_never_a_token_key() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let api = api().await;
    let (created, secret) = api.broker(json!({"name": "b1"})).await;
    let id = created["id"].as_str().unwrap().to_string();
    let uri = format!("/internal/v1/brokers/{id}/state");
    let state = || async { send(&api.internal, Method::GET, &uri, Some(&secret), None, &[]).await };
    let set_hook = |url: Value| {
        let api = &api;
        async move {
            let r = api
                .call(
                    Method::PATCH,
                    "/v1/namespaces/home/brokers/b1",
                    BOOTSTRAP,
                    Some(json!({"on_publish": {"url": url}})),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        }
    };
    let publickeys = || async {
        let r = api
            .call(
                Method::GET,
                "/v1/namespaces/home/brokers/b1/publickeys",
                BOOTSTRAP,
                None,
            )
            .await;
        for k in r.body["keys"].as_array().unwrap() {
            assert!(k.get("d").is_none(), "no private part in /publickeys: {k}");
        }
        serde_json::from_value::<Jwks>(r.body).unwrap()
    };

    // The internal document describes the field.
    let doc = serde_json::to_value(starling_api::routes::openapi::internal_document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["StateView"]["properties"]["hookKey"]["oneOf"][1]["$ref"],
        "#/components/schemas/PrivateKey",
        "{}",
        schemas["StateView"]
    );
    assert!(schemas["PrivateKey"]["properties"]["d"].is_object());
    assert!(
        schemas["StateView"]["properties"]
            .get("signingKey")
            .is_none()
    );

    let r = state().await;
    assert_eq!(r.body["hookKey"], Value::Null, "no hook, no private key");
    let v0 = r.body["version"].as_u64().unwrap();

    set_hook(json!("https://hook.example/in")).await;
    let mut previous_hook_kid: Option<String> = None;
    for round in 0..2 {
        let r = state().await;
        assert!(r.body["version"].as_u64().unwrap() > v0);
        assert_eq!(
            r.body["onPublish"],
            json!({"url": "https://hook.example/in"})
        );
        assert_eq!(
            r.headers.get("cache-control").unwrap(),
            "no-store",
            "a private key is never cached"
        );
        let hk = &r.body["hookKey"];
        let kid = hk["kid"].as_str().unwrap().to_string();
        let token_jwks: Jwks = serde_json::from_value(r.body["jwks"].clone()).unwrap();
        assert_ne!(
            kid,
            current_kid(&api).await,
            "not the token key (round {round})"
        );
        assert!(
            token_jwks.keys.iter().all(|k| k.kid != kid),
            "the feed's token key set leaves the hook key out"
        );
        let seed = URL_SAFE_NO_PAD.decode(hk["d"].as_str().unwrap()).unwrap();
        let key = starling_token::SigningKey::from_seed(&seed.try_into().unwrap()).unwrap();
        assert_eq!(key.kid(), kid);
        // It signs hook requests that verify with /publickeys, picked by kid...
        let message = b"1700000000[{\"mid\":1}]";
        let jwks = publickeys().await;
        assert!(jwks.keys.iter().any(|k| k.kid == kid), "published");
        if let Some(old) = &previous_hook_kid {
            assert!(
                jwks.keys.iter().any(|k| &k.kid == old),
                "the previous hook key stays published until retire_at"
            );
        }
        Verifier::new(&jwks)
            .unwrap()
            .verify_bytes(&kid, message, &key.sign_bytes(message))
            .expect("what the hook key signs verifies with /publickeys");
        // ...and no client token: the keys brokers accept do not have it.
        let forged = key.sign_claims(&starling_token::Claims {
            sub: "c1".into(),
            jti: "forged".into(),
            iat: api.state.clock.now_secs(),
            exp: None,
            nbf: None,
            topic_acl: starling_token::TopicAcl::All,
        });
        assert!(matches!(
            Verifier::new(&token_jwks)
                .unwrap()
                .verify(&forged, api.state.clock.now_secs(), 0),
            Err(TokenError::UnknownKeyId)
        ));
        // The document the broker's managed mode reads into its hook target: the URL, the
        // broker's hostname, and a hook key whose seed is the key of that kid.
        let seed = r.body["hookKey"]["d"].as_str().unwrap();
        let seed_kid = starling_token::SigningKey::from_d(seed)
            .unwrap()
            .kid()
            .to_string();
        assert_eq!(
            (
                r.body["onPublish"]["url"].as_str().unwrap(),
                r.body["broker"]["hostname"].as_str().unwrap(),
                Some(seed_kid.as_str())
            ),
            (
                "https://hook.example/in",
                "b1.home.example.test",
                Some(kid.as_str())
            )
        );
        assert_eq!(r.body["hookKey"]["kid"], kid.as_str());
        // A rotation gives the hook a new key too.
        let r = api
            .call(
                Method::POST,
                "/v1/namespaces/home/brokers/b1/keys/rotate",
                BOOTSTRAP,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let new_hook_kid = r.body["hookKid"].as_str().unwrap().to_string();
        assert_ne!(new_hook_kid, kid);
        assert_eq!(state().await.body["hookKey"]["kid"], new_hook_kid.as_str());
        previous_hook_kid = Some(kid);
    }

    for clear in [Value::Null, json!("")] {
        set_hook(clear.clone()).await;
        let r = state().await;
        assert_eq!(
            (r.body["onPublish"].clone(), r.body["hookKey"].clone()),
            (Value::Null, Value::Null),
            "cleared with {clear}"
        );
        set_hook(json!("https://hook.example/in")).await;
    }
}

/// A broker created before hook keys existed gets its own hook key when the api starts, and
/// from then on its state carries that key for a hook, never a token key.
async fn brokers_from_before_hook_keys_get_one_when_the_api_starts() {
    let api = api().await;
    let (created, secret) = api
        .broker(json!({"name": "b1", "on_publish": {"url": "https://hook.example/in"}}))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    // The same broker as an older api stored it: no hook key.
    let b = api
        .state
        .store
        .get_broker_by_id(&id)
        .await
        .unwrap()
        .unwrap();
    let old = starling_api::store::Broker {
        id: "0".repeat(32),
        name: "old".into(),
        ..b
    };
    let old_keys = [starling_api::keys::new_key_record(
        &api.state.kek,
        &old.id,
        starling_api::store::KeyStatus::Current,
        1,
    )
    .unwrap()];
    api.state
        .store
        .create_broker(&old, "hash", &old_keys, None)
        .await
        .unwrap();
    assert_eq!(
        starling_api::server::backfill_hook_keys(&api.state)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        starling_api::server::backfill_hook_keys(&api.state)
            .await
            .unwrap(),
        0,
        "once"
    );
    let hooks = api.state.store.list_hook_keys(&old.id).await.unwrap();
    assert_eq!(hooks.len(), 1);
    assert!(old_keys.iter().all(|k| k.kid != hooks[0].kid));
    // The broker made by the api had its own from the start.
    let uri = format!("/internal/v1/brokers/{id}/state");
    let r = send(&api.internal, Method::GET, &uri, Some(&secret), None, &[]).await;
    let hook_kid = r.body["hookKey"]["kid"].as_str().unwrap();
    let own = api.state.store.list_hook_keys(&id).await.unwrap();
    assert_eq!(own[0].kid, hook_kid);
}

async fn internal_state_long_polls_and_answers_304_410_401() {
    let api = api().await;
    let (created, secret) = api.broker(json!({"name": "b1", "expiration": 120})).await;
    let id = created["id"].as_str().unwrap().to_string();
    let uri = format!("/internal/v1/brokers/{id}/state");
    let r = send(&api.internal, Method::GET, &uri, Some(&secret), None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let v1 = r.body["version"].as_u64().unwrap();
    assert_eq!(
        r.body["broker"],
        json!({"id": id, "name": "b1", "namespace": "home", "hostname": "b1.home.example.test"})
    );
    assert_eq!(r.body["jwks"]["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        (
            r.body["revocations"].clone(),
            r.body["onPublish"].clone(),
            r.body["hookKey"].clone()
        ),
        (json!([]), Value::Null, Value::Null)
    );
    assert_eq!(
        send(
            &api.internal,
            Method::GET,
            &uri,
            Some("sbs_wrong"),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&api.internal, Method::GET, &uri, None, None, &[])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = send(
        &api.internal,
        Method::GET,
        &format!("{uri}?since={v1}&wait=1s"),
        Some(&secret),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    // A waiting poll wakes when a revocation lands.
    let internal = api.internal.clone();
    let poll_uri = format!("{uri}?since={v1}&wait=30s");
    let s = secret.clone();
    let poll =
        tokio::spawn(
            async move { send(&internal, Method::GET, &poll_uri, Some(&s), None, &[]).await },
        );
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    assert_eq!(
        api.call(
            Method::POST,
            "/v1/namespaces/home/brokers/b1/revocations?jti=x1",
            BOOTSTRAP,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    let r = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(r.body["version"].as_u64().unwrap() > v1);
    assert_eq!(
        r.body["revocations"],
        json!([{"jti": "x1", "expiresAt": null, "kid": null}])
    );
    // Deletion: 410 Gone, also for a poll that was waiting.
    let v2 = r.body["version"].as_u64().unwrap();
    let internal = api.internal.clone();
    let poll_uri = format!("{uri}?since={v2}&wait=30s");
    let s = secret.clone();
    let poll =
        tokio::spawn(
            async move { send(&internal, Method::GET, &poll_uri, Some(&s), None, &[]).await },
        );
    tokio::task::yield_now().await;
    assert_eq!(
        api.call(
            Method::DELETE,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    let r = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(
        send(&api.internal, Method::GET, &uri, Some(&secret), None, &[])
            .await
            .status,
        StatusCode::GONE
    );
}

tests!(
    state_carries_the_hook_key_only_while_a_hook_is_set_and_never_a_token_key,
    brokers_from_before_hook_keys_get_one_when_the_api_starts,
    internal_state_long_polls_and_answers_304_410_401,
);
