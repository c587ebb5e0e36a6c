//! Namespaces on the native routes, and paging of lists on both route sets.

use crate::client::*;

async fn namespaces_native_crud_and_409_on_name_conflict() {
    let api = api().await;
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces",
            BOOTSTRAP,
            Some(json!({"name": "Home", "description": "d"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["name"], "Home");
    assert_eq!(r.body["id"].as_str().unwrap().len(), 32);
    assert!(r.body["created_on"].as_str().unwrap().ends_with('Z'));
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces",
            BOOTSTRAP,
            Some(json!({"name": "home"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.body["status"], 409);
    assert_eq!(
        api.call(Method::GET, "/v1/namespaces/HOME", BOOTSTRAP, None)
            .await
            .status,
        StatusCode::OK
    );
    let r = api
        .call(Method::GET, "/v1/namespaces", BOOTSTRAP, None)
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        api.call(Method::DELETE, "/v1/namespaces/home", BOOTSTRAP, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.call(Method::GET, "/v1/namespaces/home", BOOTSTRAP, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces",
            BOOTSTRAP,
            Some(json!({"name": "1bad"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body["detail"].as_str().unwrap().contains("RFC 1035"));
}

async fn lists_page_with_cursors_on_both_route_sets() {
    let api = api().await;
    for n in ["a", "b", "c"] {
        api.call(
            Method::POST,
            "/v1/namespaces",
            BOOTSTRAP,
            Some(json!({"name": n})),
        )
        .await;
    }
    let r = api
        .call(Method::GET, "/v1/namespaces?limit=2", BOOTSTRAP, None)
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 2);
    let cursor = r.body["nextCursor"].as_str().unwrap().to_string();
    let r = api
        .call(
            Method::GET,
            &format!("/v1/namespaces?limit=2&cursor={cursor}"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.body["items"][0]["name"], "c");
    assert_eq!(r.body["nextCursor"], Value::Null);
    let r = api
        .call(
            Method::GET,
            &format!("{C}/namespaces?per_page=2"),
            BOOTSTRAP,
            None,
        )
        .await;
    assert_eq!(r.body["result_info"]["count"], 2);
    assert!(r.body["result_info"]["cursor"].is_string());
    assert_eq!(
        api.call(Method::GET, "/v1/namespaces?limit=0", BOOTSTRAP, None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.call(Method::GET, "/v1/namespaces?cursor=!!", BOOTSTRAP, None)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
}

tests!(
    namespaces_native_crud_and_409_on_name_conflict,
    lists_page_with_cursors_on_both_route_sets,
);
