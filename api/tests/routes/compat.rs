//! The Cloudflare-compatible routes' envelope and conventions (more in `tests/compat.rs`).

use crate::client::*;

async fn compat_routes_use_the_envelope_and_400_on_name_conflict() {
    let api = api().await;
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces"),
            BOOTSTRAP,
            Some(json!({"name": "home"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["success"], true);
    assert_eq!(r.body["result"]["name"], "home");
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces"),
            BOOTSTRAP,
            Some(json!({"name": "home"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["success"], false);
    assert_eq!(r.body["result"], Value::Null);
    assert_eq!(r.body["errors"][0]["code"], 10_005);
    // wrangler's body: no auth type; others send auth_type or authType.
    for (name, body) in [
        (
            "w",
            json!({"name": "w", "description": "x", "expiration": 3600, "on_publish": {"url": null}}),
        ),
        ("s", json!({"name": "s", "auth_type": "TOKEN"})),
        ("c", json!({"name": "c", "authType": "TOKEN"})),
    ] {
        let r = api
            .call(
                Method::POST,
                &format!("{C}/namespaces/home/brokers"),
                BOOTSTRAP,
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["result"]["authType"], "TOKEN");
        assert_eq!(
            r.body["result"]["endpoint"],
            format!("mqtts://{name}.home.example.test:8883")
        );
        assert!(
            r.body["result"].get("secret").is_none(),
            "no secret on compatible routes"
        );
    }
    let r = api
        .call(
            Method::GET,
            &format!("{C}/namespaces/home/brokers"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.body["result"].as_array().unwrap().len(), 3);
    let r = api
        .call(
            Method::PATCH,
            &format!("{C}/namespaces/home/brokers/w"),
            BOOTSTRAP,
            Some(json!({"description": "y", "expiration": -1})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["result"]["expiration"].clone()),
        (StatusCode::OK, Value::Null)
    );
    let r = api
        .call(
            Method::GET,
            &format!("{C}/namespaces/home/brokers/w"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.body["result"]["description"], "y");
    let r = api
        .call(
            Method::DELETE,
            &format!("{C}/namespaces/home"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "namespace still has brokers"
    );
    for b in ["w", "s", "c"] {
        let r = api
            .call(
                Method::DELETE,
                &format!("{C}/namespaces/home/brokers/{b}"),
                BOOTSTRAP,
                None,
            )
            .await;
        assert_eq!(
            (r.status, r.body["result"].clone()),
            (StatusCode::OK, Value::Null)
        );
    }
    let r = api
        .call(
            Method::DELETE,
            &format!("{C}/namespaces/home"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["success"].clone()),
        (StatusCode::OK, Value::Bool(true))
    );
    let r = api
        .call(
            Method::GET,
            &format!("{C}/namespaces/home"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["errors"][0]["code"].clone()),
        (StatusCode::NOT_FOUND, json!(10_004))
    );
}

tests!(compat_routes_use_the_envelope_and_400_on_name_conflict,);
