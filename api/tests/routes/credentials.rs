//! Client credentials: issued tokens, their bound, and the issuance records.

use crate::client::*;

async fn credentials_are_signed_verifiable_and_never_stored() {
    let api = api().await;
    api.broker(json!({"name": "b1", "expiration": 600})).await;
    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b1/credentials",
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "topicAcl is required natively"
    );
    let r = api
        .call(Method::GET, "/v1/namespaces/home/brokers/b1/credentials?number=3&type=TOKEN&topicAcl=%23&expiration=60", BOOTSTRAP, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let tokens: BTreeMap<String, String> = serde_json::from_value(r.body).unwrap();
    assert_eq!(tokens.len(), 3);
    let verifier = api.verifier().await;
    let now = api.state.clock.now_secs();
    for (client, token) in &tokens {
        assert_eq!(client.len(), 26, "ULID client ids");
        let claims = verifier.verify(token, now, 0).unwrap();
        assert_eq!(&claims.sub, client);
        assert_eq!(
            claims.exp,
            Some(claims.iat + 60),
            "the request's shorter expiration wins"
        );
    }
    // The broker's expiration is a ceiling, and -1 keeps it.
    for q in ["expiration=-1", "expiration=99999", ""] {
        let r = api
            .call(
                Method::GET,
                &format!("/v1/namespaces/home/brokers/b1/credentials?topicAcl=%23&{q}"),
                BOOTSTRAP,
                None,
            )
            .await;
        let token = r
            .body
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        let c = verifier.verify(&token, now, 0).unwrap();
        assert_eq!(c.exp, Some(c.iat + 600), "{q}");
    }
    // clientid is honoured (repeatable), and the object ACL arrives in the token.
    // Encoded as clients do, except `+`, which clients often leave raw in filters.
    let acl = r#"{"pub":["a/+"],"sub":["a/#"]}"#
        .replace('{', "%7B").replace('}', "%7D").replace('"', "%22").replace('[', "%5B").replace(']', "%5D").replace('#', "%23");
    let uri = format!(
        "{C}/namespaces/home/brokers/b1/credentials?clientid=dev-1&clientid=dev-2&topicAcl={acl}"
    );
    let r = api.call(Method::GET, &uri, BOOTSTRAP, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let c = verifier
        .verify(r.body["result"]["dev-1"].as_str().unwrap(), now, 0)
        .unwrap();
    assert!(c.topic_acl.may_publish("a/x") && !c.topic_acl.may_publish("b"));
    assert!(r.body["result"]["dev-2"].is_string());
    // Compatible routes read a missing or empty topicAcl as `#` (a raw `#` never reaches us).
    for q in ["", "?topicAcl=", "?topicAcl"] {
        let r = api
            .call(
                Method::GET,
                &format!("{C}/namespaces/home/brokers/b1/credentials{q}"),
                BOOTSTRAP,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{q}");
        let t = r.body["result"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            verifier.verify(&t, now, 0).unwrap().topic_acl,
            starling_token::TopicAcl::All
        );
    }
    for bad in [
        "number=0&topicAcl=%23",
        "number=101&topicAcl=%23",
        "type=OTHER&topicAcl=%23",
        "topicAcl=a/b",
        "number=2&clientid=x&topicAcl=%23",
        "clientid=x&clientid=x&topicAcl=%23",
        "expiration=0&topicAcl=%23",
    ] {
        let r = api
            .call(
                Method::GET,
                &format!("/v1/namespaces/home/brokers/b1/credentials?{bad}"),
                BOOTSTRAP,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

/// A broker refuses a token over 4096 bytes, so the api never issues one: a `topicAcl` that
/// would make it longer is a 400 that says so, on both route sets; one that fits is issued.
async fn a_token_longer_than_a_broker_accepts_is_a_400_on_both_route_sets() {
    let api = api().await;
    api.broker(json!({"name": "b1"})).await;
    let acl = |n: usize| {
        let filters: Vec<String> = (0..n)
            .map(|i| format!("sensors/{i:04}/temperature/+"))
            .collect();
        let json = json!({"pub": filters, "sub": ["sensors/#"]}).to_string();
        json.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'+' | b'-' | b'_' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let native = "/v1/namespaces/home/brokers/b1/credentials";
    let compat = format!("{C}/namespaces/home/brokers/b1/credentials");
    let r = api
        .call(
            Method::GET,
            &format!("{native}?topicAcl={}", acl(20)),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let token = r.body.as_object().unwrap().values().next().unwrap();
    assert!(token.as_str().unwrap().len() <= starling_token::MAX_TOKEN_LEN);
    let r = api
        .call(
            Method::GET,
            &format!("{native}?topicAcl={}", acl(150)),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("above the 4096 bytes a broker accepts"),
        "{detail}"
    );
    assert!(detail.contains("topicAcl"), "{detail}");
    let r = api
        .call(
            Method::GET,
            &format!("{compat}?topicAcl={}", acl(150)),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    let message = r.body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("above the 4096 bytes"), "{message}");
}

/// `GET .../credentials/issued`: every issued token's record (never the token), newest first,
/// paged by cursor, filtered by client id, with whether its jti is revoked; read role suffices.
async fn issued_token_records_page_newest_first_with_their_revocation() {
    let api = api().await;
    api.broker(json!({"name": "b1", "expiration": 600})).await;
    let read = api.token("read").await;
    let base = "/v1/namespaces/home/brokers/b1";
    let mut issued = Vec::new();
    for round in 0..3 {
        let r = api
            .call(
                Method::GET,
                &format!("{base}/credentials?topicAcl=%23&clientid=a{round}&clientid=b{round}"),
                BOOTSTRAP,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        issued.extend(
            r.body
                .as_object()
                .unwrap()
                .values()
                .map(|t| t.as_str().unwrap().to_string()),
        );
        api.state.clock.advance(1);
    }
    let r = api
        .call(
            Method::GET,
            &format!("{base}/credentials/issued"),
            &read,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let items = r.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 6);
    assert_eq!(r.body["nextCursor"], Value::Null);
    let times: Vec<i64> = items
        .iter()
        .map(|i| i["issuedAt"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    assert!(items[0]["clientId"].as_str().unwrap().ends_with('2'));
    let listed = r.body.to_string();
    assert!(
        issued.iter().all(|t| !listed.contains(t.as_str())),
        "never the token"
    );
    for i in &items {
        assert_eq!(
            i["expiresAt"].as_i64().unwrap(),
            i["issuedAt"].as_i64().unwrap() + 600
        );
        assert_eq!(i["revoked"], false);
        assert_eq!(i["jti"].as_str().unwrap().len(), 32);
    }

    // Pages of 4 and 2, each record once.
    let r1 = api
        .call(
            Method::GET,
            &format!("{base}/credentials/issued?limit=4"),
            &read,
            None,
        )
        .await;
    assert_eq!(r1.body["items"].as_array().unwrap().len(), 4);
    let cursor = r1.body["nextCursor"].as_str().unwrap().to_string();
    let r2 = api
        .call(
            Method::GET,
            &format!("{base}/credentials/issued?limit=4&cursor={cursor}"),
            &read,
            None,
        )
        .await;
    let mut jtis: Vec<&str> = r1.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(r2.body["items"].as_array().unwrap())
        .map(|i| i["jti"].as_str().unwrap())
        .collect();
    assert_eq!(r2.body["nextCursor"], Value::Null);
    jtis.sort_unstable();
    jtis.dedup();
    assert_eq!(jtis.len(), 6);

    let r = api
        .call(
            Method::GET,
            &format!("{base}/credentials/issued?clientid=b1"),
            &read,
            None,
        )
        .await;
    let only: Vec<&Value> = r.body["items"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["clientId"], "b1");
    let jti = only[0]["jti"].as_str().unwrap().to_string();
    let r = api
        .call(
            Method::POST,
            &format!("{base}/revocations?jti={jti}"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .call(
            Method::GET,
            &format!("{base}/credentials/issued?clientid=b1"),
            &read,
            None,
        )
        .await;
    assert_eq!(r.body["items"][0]["revoked"], true);

    for bad in ["cursor=nope", "cursor=YWJj", "limit=0", "limit=1001"] {
        let r = api
            .call(
                Method::GET,
                &format!("{base}/credentials/issued?{bad}"),
                &read,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/nope/credentials/issued",
            &read,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        &api.app,
        Method::GET,
        &format!("{base}/credentials/issued"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

tests!(
    credentials_are_signed_verifiable_and_never_stored,
    a_token_longer_than_a_broker_accepts_is_a_400_on_both_route_sets,
    issued_token_records_page_newest_first_with_their_revocation,
);
