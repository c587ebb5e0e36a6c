//! Brokers: create, change, the secret, the hook, expiration, limits, operator-managed brokers, endpoints, stats.

use crate::client::*;

async fn broker_create_shows_the_secret_once_and_rotates_it() {
    let api = api().await;
    let (created, secret) = api.broker(json!({"name": "b1", "expiration": 3600})).await;
    assert!(secret.starts_with("sbs_"));
    assert_eq!(created["expiration"], 3600);
    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            None,
        )
        .await;
    assert!(!r.body.to_string().contains(&secret));
    let id = created["id"].as_str().unwrap();
    let state_uri = format!("/internal/v1/brokers/{id}/state");
    assert_eq!(
        send(
            &api.internal,
            Method::GET,
            &state_uri,
            Some(&secret),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::OK
    );
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces/home/brokers/b1/secret/rotate",
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.headers["cache-control"], "no-store");
    let new = r.body["secret"].as_str().unwrap();
    assert_ne!(new, secret);
    assert_eq!(
        send(
            &api.internal,
            Method::GET,
            &state_uri,
            Some(&secret),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&api.internal, Method::GET, &state_uri, Some(new), None, &[])
            .await
            .status,
        StatusCode::OK
    );
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces/home/brokers",
            BOOTSTRAP,
            Some(json!({"name": "B1"})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "broker names are case-insensitive"
    );
}

async fn on_publish_url_is_stored_cleared_and_malformed_is_400() {
    let api = api().await;
    let hook = "https://h.example/x?tenant=1";
    api.broker(json!({"name": "b1"})).await;
    let (created, _) = api
        .broker(json!({"name": "b2", "on_publish": {"url": hook}}))
        .await;
    assert_eq!(created["on_publish"], json!({"url": hook}));
    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b2",
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.body["on_publish"], json!({"url": hook}), "stored");

    // The compatible route sets it too, and a change of something else keeps it.
    let r = api
        .call(
            Method::PATCH,
            &format!("{C}/namespaces/home/brokers/b1"),
            BOOTSTRAP,
            Some(json!({"on_publish": {"url": "http://127.0.0.1:9/hook"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["success"], true);
    assert_eq!(
        r.body["result"]["on_publish"],
        json!({"url": "http://127.0.0.1:9/hook"})
    );
    let r = api
        .call(
            Method::PATCH,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            Some(json!({"description": "d"})),
        )
        .await;
    assert_eq!(r.body["on_publish"]["url"], "http://127.0.0.1:9/hook");
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces/home/brokers"),
            BOOTSTRAP,
            Some(json!({"name": "c1", "on_publish": {"url": hook}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["result"]["on_publish"]["url"], hook);

    // `{"url": null}`, `null` and an empty URL all mean no hook.
    for clear in [json!({"url": null}), Value::Null, json!({"url": ""})] {
        let r = api
            .call(
                Method::PATCH,
                "/v1/namespaces/home/brokers/b2",
                BOOTSTRAP,
                Some(json!({"on_publish": {"url": hook}})),
            )
            .await;
        assert_eq!(r.body["on_publish"]["url"], hook);
        let r = api
            .call(
                Method::PATCH,
                "/v1/namespaces/home/brokers/b2",
                BOOTSTRAP,
                Some(json!({ "on_publish": clear })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{clear}");
        assert_eq!(r.body["on_publish"], Value::Null, "{clear} clears");
    }
    let (created, _) = api
        .broker(json!({"name": "b3", "on_publish": {"url": ""}}))
        .await;
    assert_eq!(created["on_publish"], Value::Null, "empty means none");

    // Not an absolute http(s) URL, or one with credentials in it: 400, and nothing changes.
    let before = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            None,
        )
        .await;
    for bad in [
        "h.example/x",
        "ftp://h.example/x",
        "https://",
        "https://:443/x",
        "https://h x/",
        "https://user:pass@h.example/x",
    ] {
        let r = api
            .call(
                Method::PATCH,
                "/v1/namespaces/home/brokers/b1",
                BOOTSTRAP,
                Some(json!({"on_publish": {"url": bad}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            !r.body.to_string().contains("pass@"),
            "the refusal does not echo credentials: {}",
            r.body
        );
        let r = api
            .call(
                Method::POST,
                &format!("{C}/namespaces/home/brokers"),
                BOOTSTRAP,
                Some(json!({"name": "c2", "on_publish": {"url": bad}})),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.body["success"], false);
    }
    let long = format!("https://h.example/{}", "a".repeat(2100));
    let r = api
        .call(
            Method::PATCH,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            Some(json!({"on_publish": {"url": long}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "too long");
    let after = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(after.body, before.body, "a refused change changes nothing");
}

async fn expiration_is_validated_in_seconds() {
    let api = api().await;
    api.broker(json!({"name": "b1"})).await;
    for bad in [
        json!(0),
        json!(-2),
        json!(3_600_000_000_000i64),
        json!("1h"),
    ] {
        let r = api
            .call(
                Method::PATCH,
                "/v1/namespaces/home/brokers/b1",
                BOOTSTRAP,
                Some(json!({"expiration": bad})),
            )
            .await;
        assert!(r.status.is_client_error(), "{bad}: {:?}", r.status);
    }
    let r = api
        .call(
            Method::PATCH,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            Some(json!({"expiration": 3_600_000_000_000i64})),
        )
        .await;
    assert!(r.body["detail"].as_str().unwrap().contains("nanoseconds"));
}

/// JSON has one number type: `3600.0` is the whole number 3600 (JSON Schema's `integer` says
/// the same), so the document's `integer` fields accept it on create and change, on both route
/// sets; a fraction is still refused. (Found by schemathesis: such bodies got a 422.)
async fn whole_number_expirations_written_as_floats_are_accepted() {
    let api = api().await;
    let (created, _) = api
        .broker(json!({"name": "b1", "expiration": 3600.0}))
        .await;
    assert_eq!(created["expiration"], json!(3600));
    let r = api
        .call(
            Method::PATCH,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            Some(json!({"expiration": 7200.0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["expiration"], json!(7200));
    let r = api
        .call(
            Method::PATCH,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            Some(json!({"expiration": -1.0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["expiration"], Value::Null);
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces/home/brokers"),
            BOOTSTRAP,
            Some(json!({"name": "b2", "expiration": 60.0})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["result"]["expiration"], json!(60));
    for bad in [json!(1.5), json!(1e300), json!(0.0)] {
        let r = api
            .call(
                Method::PATCH,
                "/v1/namespaces/home/brokers/b1",
                BOOTSTRAP,
                Some(json!({"expiration": bad})),
            )
            .await;
        assert!(r.status.is_client_error(), "{bad}: {:?}", r.status);
    }
    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/b1",
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        r.body["expiration"],
        Value::Null,
        "refused changes change nothing"
    );
}

async fn operator_managed_brokers_refuse_changes_without_the_marker() {
    let api = api().await;
    let managed =
        json!({"name": "b1", "managedBy": {"kind": "Broker", "namespace": "prod", "name": "edge"}});
    let (created, _) = api.broker(managed.clone()).await;
    assert_eq!(created["managedBy"]["name"], "edge");
    let uri = "/v1/namespaces/home/brokers/b1";
    let r = api
        .call(
            Method::PATCH,
            uri,
            BOOTSTRAP,
            Some(json!({"expiration": 60})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("Broker prod/edge")
    );
    let r = api
        .call(
            Method::PATCH,
            uri,
            BOOTSTRAP,
            Some(json!({"description": "fine"})),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "description is not owned by the resource"
    );
    let marker = [("x-starling-managed-by", "Broker/prod/edge")];
    let r = send(
        &api.app,
        Method::PATCH,
        uri,
        Some(BOOTSTRAP),
        Some(json!({"expiration": 60, "limits": {"maxConnections": 5}})),
        &marker,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["limits"]["maxConnections"], 5);
    let r = api.call(Method::DELETE, uri, BOOTSTRAP, None).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("Broker prod/edge")
    );
    let wrong = [("x-starling-managed-by", "Broker/prod/other")];
    assert_eq!(
        send(&api.app, Method::DELETE, uri, Some(BOOTSTRAP), None, &wrong)
            .await
            .status,
        StatusCode::CONFLICT
    );
    // Registering again is idempotent for the same resource.
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces/home/brokers",
            BOOTSTRAP,
            Some(managed),
        )
        .await;
    assert_eq!(
        (r.status, r.body["id"].clone(), r.body["secret"].clone()),
        (StatusCode::OK, created["id"].clone(), Value::Null)
    );
    assert_eq!(
        send(
            &api.app,
            Method::DELETE,
            uri,
            Some(BOOTSTRAP),
            None,
            &marker
        )
        .await
        .status,
        StatusCode::NO_CONTENT
    );
    // A broker made through the API: the operator (which names itself in the marker) may not
    // delete it, even one of the same name as its Broker.
    api.broker(json!({"name": "b1"})).await;
    let r = send(
        &api.app,
        Method::DELETE,
        uri,
        Some(BOOTSTRAP),
        None,
        &marker,
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("not managed by"),
        "{:?}",
        r.body
    );
    assert_eq!(
        api.call(Method::GET, uri, BOOTSTRAP, None).await.status,
        StatusCode::OK,
        "still there"
    );
    assert_eq!(
        api.call(Method::DELETE, uri, BOOTSTRAP, None).await.status,
        StatusCode::NO_CONTENT,
        "its owner, through the API, still can"
    );
}

/// `authType` and `auth_type` may both be given; each must say TOKEN (the second was ignored
/// when the first was there, so `"auth_type": "TOKEN*"` was accepted).
async fn either_spelling_of_the_auth_type_must_say_token() {
    let api = api().await;
    api.broker(json!({"name": "b0"})).await;
    let uri = "/v1/namespaces/home/brokers";
    for body in [
        json!({"name": "b1", "authType": "TOKEN", "auth_type": "TOKEN*"}),
        json!({"name": "b1", "authType": "JWT", "auth_type": "TOKEN"}),
        json!({"name": "b1", "auth_type": "token"}),
    ] {
        let r = api
            .call(Method::POST, uri, BOOTSTRAP, Some(body.clone()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {:?}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains("TOKEN"));
    }
    let r = api
        .call(
            Method::POST,
            uri,
            BOOTSTRAP,
            Some(json!({"name": "b1", "authType": "TOKEN", "auth_type": "TOKEN"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
}

/// Limits are one schema (the broker's limits table): either spelling of a key is accepted and
/// stored as camelCase, an unknown key, a value out of bounds or an operator-only limit is a 400
/// that names it (on both route sets), and the state feed carries what was stored.
async fn broker_limits_are_validated_against_the_table_and_carried_by_the_state() {
    let api = api().await;
    let (created, secret) = api
        .broker(json!({"name": "b1", "limits": {"max_connections": 10, "maxPacketSize": 2048}}))
        .await;
    assert_eq!(
        created["limits"],
        json!({"maxConnections": 10, "maxPacketSize": 2048})
    );
    let native = "/v1/namespaces/home/brokers/b1";
    let compat = format!("{C}/namespaces/home/brokers/b1");
    for (limits, says) in [
        (json!({"maxConections": 1}), "unknown limit `maxConections`"),
        (
            json!({"maxPacketSize": 10}),
            "maxPacketSize 10 is outside 64..=268435455",
        ),
        (json!({"maxConnections": -1}), "maxConnections"),
        (
            json!({"connectTimeoutSecs": 5, "maxTopicDepth": 4}),
            "connectTimeoutSecs only the broker's operator sets",
        ),
        (json!([1, 2]), "limits"),
    ] {
        let r = api
            .call(
                Method::PATCH,
                native,
                BOOTSTRAP,
                Some(json!({ "limits": limits })),
            )
            .await;
        // 422 when the body does not fit the schema (as for every body), 400 for a value.
        assert!(
            matches!(
                r.status,
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "{limits}: {:?}",
            r.body
        );
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{limits}: {detail}");
        let r = api
            .call(
                Method::PATCH,
                &compat,
                BOOTSTRAP,
                Some(json!({ "limits": limits })),
            )
            .await;
        assert!(
            matches!(
                r.status,
                StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
            ),
            "{limits}: {:?}",
            r.body
        );
        let message = r.body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{limits}: {message}");
    }
    let r = api
        .call(
            Method::PATCH,
            native,
            BOOTSTRAP,
            Some(json!({"limits": {"profile": "cloudflare", "max_retained_bytes": 1048576}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let stored = json!({"profile": "cloudflare", "maxRetainedBytes": 1048576});
    assert_eq!(r.body["limits"], stored);
    let id = created["id"].as_str().unwrap();
    let uri = format!("/internal/v1/brokers/{id}/state");
    let state = send(&api.internal, Method::GET, &uri, Some(&secret), None, &[]).await;
    assert_eq!(state.status, StatusCode::OK);
    assert_eq!(state.body["limits"], stored, "the feed carries them");
    let r = api
        .call(
            Method::PATCH,
            native,
            BOOTSTRAP,
            Some(json!({"limits": {}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body.get("limits").is_none(), "{{}} clears: {:?}", r.body);
}

/// Brokers show where browsers connect: `wss://<broker>.<namespace>.<domain>/mqtt`, or the
/// configured `ws_endpoint`, on both route sets.
async fn brokers_show_their_websocket_endpoint() {
    let api = api().await;
    let (created, _) = api.broker(json!({"name": "b1"})).await;
    assert_eq!(created["wsEndpoint"], "wss://b1.home.example.test/mqtt");
    let r = api
        .call(
            Method::GET,
            &format!("{C}/namespaces/home/brokers/b1"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        r.body["result"]["wsEndpoint"],
        "wss://b1.home.example.test/mqtt"
    );
    let shared = api_with(Config {
        ws_endpoint: Some("wss://localhost:8884/mqtt".into()),
        ..Config::default()
    })
    .await;
    let (created, _) = shared.broker(json!({"name": "b1"})).await;
    assert_eq!(created["wsEndpoint"], "wss://localhost:8884/mqtt");
}

/// An operator-managed broker is advertised at the endpoints its Broker resource's status names,
/// on both route sets; only the managing resource sets them, and they are validated.
async fn managed_brokers_advertise_the_endpoints_their_resource_sends() {
    let api = api().await;
    let marker = [("x-starling-managed-by", "Broker/prod/edge")];
    let (created, _) = api
        .broker(json!({
            "name": "b1",
            "managedBy": {"kind": "Broker", "namespace": "prod", "name": "edge"},
            "endpoint": "mqtts://mqtt.example.com:8883",
            "wsEndpoint": "wss://mqtt.example.com:443/mqtt",
        }))
        .await;
    assert_eq!(created["endpoint"], "mqtts://mqtt.example.com:8883");
    assert_eq!(created["wsEndpoint"], "wss://mqtt.example.com:443/mqtt");
    let compat = api
        .call(
            Method::GET,
            &format!("{C}/namespaces/home/brokers/b1"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        (
            &compat.body["result"]["endpoint"],
            &compat.body["result"]["wsEndpoint"]
        ),
        (
            &json!("mqtts://mqtt.example.com:8883"),
            &json!("wss://mqtt.example.com:443/mqtt")
        )
    );
    let uri = "/v1/namespaces/home/brokers/b1";
    // The resource moves its hostname: the operator patches both.
    let r = send(
        &api.app,
        Method::PATCH,
        uri,
        Some(BOOTSTRAP),
        Some(json!({"endpoint": "mqtts://devices.example.org:8883", "wsEndpoint": "wss://devices.example.org:8884/mqtt"})),
        &marker,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let listed = api
        .call(
            Method::GET,
            &format!("{C}/namespaces/home/brokers"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        listed.body["result"][0]["endpoint"],
        "mqtts://devices.example.org:8883"
    );
    // Without the marker: 409, like the resource's other fields.
    let r = api
        .call(
            Method::PATCH,
            uri,
            BOOTSTRAP,
            Some(json!({"endpoint": "mqtts://elsewhere.example.org:8883"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{:?}", r.body);
    // Malformed: a 400 that names the field.
    for bad in [
        json!({"endpoint": "https://devices.example.org"}),
        json!({"endpoint": "mqtts://"}),
        json!({"endpoint": "mqtts://user@devices.example.org"}),
        json!({"wsEndpoint": "mqtts://devices.example.org:8883"}),
        json!({"endpoint": format!("mqtts://{}.example.org", "a".repeat(600))}),
    ] {
        let r = send(
            &api.app,
            Method::PATCH,
            uri,
            Some(BOOTSTRAP),
            Some(bad.clone()),
            &marker,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {:?}", r.body);
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("ndpoint`"), "{bad}: {detail}");
    }
    // null goes back to the derived endpoint.
    let r = send(
        &api.app,
        Method::PATCH,
        uri,
        Some(BOOTSTRAP),
        Some(json!({"endpoint": null})),
        &marker,
    )
    .await;
    assert_eq!(r.body["endpoint"], "mqtts://b1.home.example.test:8883");
    assert_eq!(r.body["wsEndpoint"], "wss://devices.example.org:8884/mqtt");

    // A broker made through the API: its endpoints are derived and cannot be set, but a body
    // read back from a GET (carrying the derived ones) is accepted.
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces/home/brokers",
            BOOTSTRAP,
            Some(json!({"name": "b2", "endpoint": "mqtts://mine.example.org:8883"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("managedBy"));
    let (b2, _) = api.broker(json!({"name": "b2"})).await;
    let mut round_trip = b2.clone();
    round_trip["description"] = json!("read, changed, written back");
    round_trip.as_object_mut().unwrap().retain(|k, _| {
        [
            "name",
            "description",
            "expiration",
            "endpoint",
            "wsEndpoint",
        ]
        .contains(&k.as_str())
    });
    let r = api
        .call(
            Method::PATCH,
            "/v1/namespaces/home/brokers/b2",
            BOOTSTRAP,
            Some(round_trip),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = api
        .call(
            Method::PATCH,
            "/v1/namespaces/home/brokers/b2",
            BOOTSTRAP,
            Some(json!({"endpoint": "mqtts://mine.example.org:8883"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
}

/// A broker's counters arrive with its state-feed polls (`X-Starling-Broker-Stats`) and show at
/// `GET .../stats` as chart points; a malformed report or a wrong secret records nothing and the
/// poll is answered as usual; `dev`'s embedded broker stands for every broker.
async fn stats_show_what_brokers_report_with_their_polls() {
    let api = api().await;
    let (created, secret) = api.broker(json!({"name": "b1"})).await;
    let read = api.token("read").await;
    let id = created["id"].as_str().unwrap().to_string();
    let stats = "/v1/namespaces/home/brokers/b1/stats";
    let r = api.call(Method::GET, stats, &read, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.body["source"].clone(), r.body["points"].clone()),
        (json!("none"), json!([]))
    );

    let poll = |secret: String, header: String| {
        let internal = api.internal.clone();
        let uri = format!("/internal/v1/brokers/{id}/state");
        async move {
            send(
                &internal,
                Method::GET,
                &uri,
                Some(&secret),
                None,
                &[("x-starling-broker-stats", &header)],
            )
            .await
            .status
        }
    };
    let report = |n: u64| {
        format!(
            "instance=pod-a; connections=3; messages_in={}; messages_out={}; dropped=0",
            n,
            2 * n
        )
    };
    assert_eq!(poll(secret.clone(), report(10)).await, StatusCode::OK);
    api.state.clock.advance(10);
    assert_eq!(poll(secret.clone(), report(110)).await, StatusCode::OK);
    assert_eq!(
        poll(secret.clone(), "connections=9".into()).await,
        StatusCode::OK,
        "a bad report is ignored"
    );
    assert_eq!(
        poll("sbs_wrong".into(), "instance=evil; connections=999".into()).await,
        StatusCode::UNAUTHORIZED
    );

    let r = api.call(Method::GET, stats, &read, None).await;
    assert_eq!(r.body["source"], "reported");
    let instances = r.body["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{:?}", r.body);
    assert_eq!(instances[0]["instance"], "pod-a");
    assert_eq!(instances[0]["messagesIn"], 110);
    let points = r.body["points"].as_array().unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0]["connections"], 3);
    // 100 and 200 more over the 10 s the clock moved (and the few milliseconds the test took).
    let rate = |k: &str| points[0][k].as_f64().unwrap();
    assert!(
        (9.9..=10.0).contains(&rate("messagesInPerSec")),
        "{:?}",
        points[0]
    );
    assert!(
        (19.8..=20.0).contains(&rate("messagesOutPerSec")),
        "{:?}",
        points[0]
    );

    api.state.stats.record(
        starling_api::stats::EMBEDDED,
        "embedded",
        starling_api::stats::Sample {
            at_ms: api.state.clock.now_micros() / 1000,
            connections: 1,
            messages_in: 0,
            messages_out: 0,
            dropped: 0,
        },
    );
    let r = api.call(Method::GET, stats, &read, None).await;
    assert_eq!(r.body["source"], "embedded");

    let r = api
        .call(
            Method::GET,
            "/v1/namespaces/home/brokers/nope/stats",
            &read,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

tests!(
    broker_create_shows_the_secret_once_and_rotates_it,
    on_publish_url_is_stored_cleared_and_malformed_is_400,
    expiration_is_validated_in_seconds,
    whole_number_expirations_written_as_floats_are_accepted,
    operator_managed_brokers_refuse_changes_without_the_marker,
    either_spelling_of_the_auth_type_must_say_token,
    broker_limits_are_validated_against_the_table_and_carried_by_the_state,
    brokers_show_their_websocket_endpoint,
    managed_brokers_advertise_the_endpoints_their_resource_sends,
    stats_show_what_brokers_report_with_their_polls,
);
