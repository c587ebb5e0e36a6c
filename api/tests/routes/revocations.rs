//! Revocations: the bound per request, the cap per broker, how long one stays in the feed.

use crate::client::*;

async fn revocations_accept_repeated_and_comma_separated_jtis_within_the_bound() {
    let api = api_with(Config {
        max_revocations: 4,
        ..Config::default()
    })
    .await;
    api.broker(json!({"name": "b1"})).await;
    let base = "/v1/namespaces/home/brokers/b1/revocations";
    assert_eq!(
        api.call(
            Method::POST,
            &format!("{base}?jti=a&jti=b"),
            BOOTSTRAP,
            None
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces/home/brokers/b1/revocations?jti=c,d"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["result"].clone()),
        (StatusCode::OK, Value::Null)
    );
    let r = api
        .call(
            Method::GET,
            &format!("{C}/namespaces/home/brokers/b1/revocations"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.body["result"], json!(["a", "b", "c", "d"]));
    let r = api
        .call(Method::POST, &format!("{base}?jti=e"), BOOTSTRAP, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "bound of 4");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("already has 4 live revocations")
    );
    assert_eq!(
        api.call(Method::DELETE, &format!("{base}?jti=a,b"), BOOTSTRAP, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = api.call(Method::GET, base, BOOTSTRAP, None).await;
    assert_eq!(
        r.body,
        json!([
            {"jti": "c", "expiresAt": null, "kid": null},
            {"jti": "d", "expiresAt": null, "kid": null}
        ])
    );
    assert_eq!(
        api.call(Method::POST, base, BOOTSTRAP, None).await.status,
        StatusCode::BAD_REQUEST,
        "no jti"
    );
}

/// The revocation cap's 400 names the cap, says that nothing was revoked, how long revocations
/// last and how to make room, on both route sets.
async fn the_revocation_cap_is_a_400_that_names_it_and_says_how_to_make_room() {
    let api = api_with(Config {
        max_revocations: 2,
        ..Config::default()
    })
    .await;
    api.broker(json!({"name": "b1"})).await;
    let native = "/v1/namespaces/home/brokers/b1/revocations";
    let compat = format!("{C}/namespaces/home/brokers/b1/revocations");
    let r = api
        .call(Method::POST, &format!("{native}?jti=a,b"), BOOTSTRAP, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .call(Method::POST, &format!("{native}?jti=c"), BOOTSTRAP, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let detail = r.body["detail"].as_str().unwrap().to_string();
    let r = api
        .call(Method::POST, &format!("{compat}?jti=c"), BOOTSTRAP, None)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let message = r.body["errors"][0]["message"].as_str().unwrap().to_string();
    for text in [&detail, &message] {
        for says in [
            "already has 2 live revocations",
            "max_revocations",
            "nothing was revoked",
            "exp plus 300 s",
            "without exp until the key that signed it is retired",
            "keys/rotate",
            "DELETE",
        ] {
            assert!(text.contains(says), "{says:?} not in {text}");
        }
    }
    let r = api.call(Method::GET, native, BOOTSTRAP, None).await;
    assert_eq!(r.body.as_array().map(Vec::len), Some(2));
}

/// A broker accepts a token until `exp` plus its clock skew; the state feed keeps the token's
/// revocation until `exp` plus the largest skew any broker accepts, so it never works again.
async fn a_revoked_token_stays_in_the_state_feed_until_exp_plus_the_largest_clock_skew() {
    let api = api().await;
    // The checks below count to the second from the token's exp.
    api.state.clock.stop();
    let (created, secret) = api.broker(json!({"name": "b1"})).await;
    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b1/credentials?topicAcl=%23&expiration=60&clientid=c1",
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.body["c1"].as_str().unwrap().to_string();
    let jti = Verifier::new(&api.verifier_jwks().await)
        .unwrap()
        .verify(&token, api.state.clock.now_secs(), 0)
        .unwrap()
        .jti;
    let r = api
        .call(
            Method::POST,
            &format!("/v1/namespaces/home/brokers/b1/revocations?jti={jti}"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let uri = format!(
        "/internal/v1/brokers/{}/state",
        created["id"].as_str().unwrap()
    );
    let revoked = || async {
        let r = send(&api.internal, Method::GET, &uri, Some(&secret), None, &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        r.body["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["jti"] == jti.as_str())
    };
    // 30 s past exp a broker with the default skew still accepts the token.
    api.state.clock.advance(60 + 30);
    assert!(
        revoked().await,
        "dropped while a broker still takes the token"
    );
    api.state.clock.advance(300 - 30 - 1);
    api.state
        .store
        .collect_expired(api.state.clock.now_secs())
        .await
        .unwrap();
    assert!(revoked().await, "dropped 1 s before exp plus 300 s");
    api.state.clock.advance(1);
    assert!(!revoked().await, "kept past exp plus the largest skew");
}

tests!(
    revocations_accept_repeated_and_comma_separated_jtis_within_the_bound,
    the_revocation_cap_is_a_400_that_names_it_and_says_how_to_make_room,
    a_revoked_token_stays_in_the_state_feed_until_exp_plus_the_largest_clock_skew,
);
