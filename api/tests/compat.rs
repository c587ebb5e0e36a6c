//! Cloudflare compatibility through `app(state).oneshot(..)` over a real SQLite store: what
//! Cloudflare's CLI (wrangler) and the curl lines of Cloudflare's docs send, and what scripts
//! written against Cloudflare's answers read, on the compatible routes (`/client/v4/...`), with
//! the native routes' answer to the same request beside it. `scripts/tiers/48-wrangler.sh` runs
//! the CLI itself against `starling-dev`.

mod common;

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{BOOTSTRAP, Resp};
use serde_json::{Value, json};
use starling_api::config::Config;

const ACCOUNT: &str = "00000000000000000000000000000001";
const C: &str = "/client/v4/accounts/00000000000000000000000000000001/pubsub";
const JSON: &str = "application/json";
/// What wrangler sends its JSON bodies as (undici's default for a string body).
const WRANGLER: &str = "text/plain;charset=UTF-8";
/// What `curl -d` sends.
const CURL_D: &str = "application/x-www-form-urlencoded";

struct Api {
    app: Router,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn api() -> Api {
    let (state, guard) = common::app_state(Config::default()).await;
    Api {
        app: starling_api::app(state),
        _guard: guard,
    }
}

impl Api {
    /// A request with exactly these headers (no Content-Type unless given) and this raw body.
    async fn raw(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        common::oneshot(&self.app, req).await
    }

    /// A request with the bootstrap token as a bearer token and `body` sent as `content_type`.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: Option<&str>,
    ) -> Resp {
        let auth = format!("Bearer {BOOTSTRAP}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        self.raw(method, uri, &headers, body).await
    }

    async fn get(&self, uri: &str) -> Resp {
        self.call(Method::GET, uri, None, None).await
    }

    /// An admin token of a second account, and that account's id.
    async fn other_account(&self) -> (String, String) {
        let r = self
            .call(
                Method::POST,
                "/v1/accounts",
                Some(JSON),
                Some(r#"{"name":"other"}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        (
            r.body["adminToken"].as_str().unwrap().to_string(),
            r.body["id"].as_str().unwrap().to_string(),
        )
    }
}

/// The envelope of a failure: status, `errors[0].code`, `errors[0].message`, with the envelope's
/// other members checked.
fn envelope_error(r: &Resp) -> (StatusCode, u64, String) {
    assert_eq!(r.headers["content-type"], JSON, "{:?}", r.body);
    assert_eq!(r.body["success"], false, "{:?}", r.body);
    assert_eq!(r.body["result"], Value::Null, "{:?}", r.body);
    assert_eq!(r.body["messages"], json!([]), "{:?}", r.body);
    let e = &r.body["errors"][0];
    (
        r.status,
        e["code"].as_u64().unwrap(),
        e["message"].as_str().unwrap().to_string(),
    )
}

/// A problem's status, code and detail.
fn problem(r: &Resp) -> (StatusCode, u64, String) {
    assert_eq!(
        r.headers["content-type"], "application/problem+json",
        "{:?}",
        r.body
    );
    assert_eq!(r.body["status"], r.status.as_u16(), "{:?}", r.body);
    (
        r.status,
        r.body["code"].as_u64().unwrap(),
        r.body["detail"].as_str().unwrap().to_string(),
    )
}

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        mod run {
            $(
                #[tokio::test]
                async fn $name() {
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name()).await.expect("timed out");
                }
            )*
        }
    };
}

/// Compatible routes read the body as JSON whatever the Content-Type: none, wrangler's
/// `text/plain;charset=UTF-8`, `curl -d`'s form type, JSON itself. A body that is not JSON is a
/// 400 in the envelope, JSON of the wrong shape a 422.
async fn compat_bodies_are_json_whatever_the_content_type() {
    let api = api().await;
    for (i, ct) in [None, Some(WRANGLER), Some(CURL_D), Some(JSON)]
        .into_iter()
        .enumerate()
    {
        let name = format!("ns{i}");
        let r = api
            .call(
                Method::POST,
                &format!("{C}/namespaces"),
                ct,
                Some(&format!(
                    r#"{{"name":"{name}","description":"via {}"}}"#,
                    ct.unwrap_or("none")
                )),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{ct:?}: {:?}", r.body);
        assert_eq!(r.body["result"]["name"], name.as_str());
        assert_eq!(
            r.body["result"]["description"],
            format!("via {}", ct.unwrap_or("none"))
        );
        // wrangler's broker create and update bodies.
        let r = api
            .call(
                Method::POST,
                &format!("{C}/namespaces/{name}/brokers"),
                ct,
                Some(r#"{"name":"b","description":"d","expiration":3600}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{ct:?}: {:?}", r.body);
        assert_eq!(r.body["result"]["expiration"], 3600);
        let r = api
            .call(
                Method::PATCH,
                &format!("{C}/namespaces/{name}/brokers/b"),
                ct,
                Some(r#"{"description":"changed","expiration":60}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{ct:?}: {:?}", r.body);
        assert_eq!(
            (
                r.body["result"]["description"].clone(),
                r.body["result"]["expiration"].clone()
            ),
            (json!("changed"), json!(60))
        );
    }
    // wrangler revokes with an empty text/plain body.
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces/ns0/brokers/b/revocations?jti=j1"),
            Some(WRANGLER),
            Some(""),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    // Not JSON: 400 with the envelope, whatever the Content-Type claims.
    for (ct, body) in [
        (Some(CURL_D), "name=x"),
        (Some(JSON), "{\"name\":"),
        (Some(WRANGLER), "hello"),
        (None, ""),
        (Some(JSON), "   "),
    ] {
        let r = api
            .call(Method::POST, &format!("{C}/namespaces"), ct, Some(body))
            .await;
        let (status, code, message) = envelope_error(&r);
        assert_eq!(
            (status, code),
            (StatusCode::BAD_REQUEST, 10_001),
            "{body:?}"
        );
        assert!(
            message.contains("not JSON") || message.contains("empty"),
            "{body:?}: {message}"
        );
    }
    // JSON of the wrong shape: 422, also in the envelope.
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces"),
            Some(WRANGLER),
            Some(r#"{"name": 5}"#),
        )
        .await;
    let (status, code, message) = envelope_error(&r);
    assert_eq!((status, code), (StatusCode::UNPROCESSABLE_ENTITY, 10_001));
    assert!(message.contains("shape"), "{message}");
    // JSON that is not an object (serde would read an array into the fields in order): 422 on
    // both route sets.
    for body in ["[null, null]", "[\"x\"]", "\"name\"", "5", "null"] {
        let r = api
            .call(
                Method::POST,
                &format!("{C}/namespaces"),
                Some(JSON),
                Some(body),
            )
            .await;
        let (status, code, message) = envelope_error(&r);
        assert_eq!(
            (status, code),
            (StatusCode::UNPROCESSABLE_ENTITY, 10_001),
            "{body}"
        );
        assert!(message.contains("JSON object"), "{message}");
        let r = api
            .call(
                Method::PATCH,
                &format!("{C}/namespaces/ns0/brokers/b"),
                Some(WRANGLER),
                Some(body),
            )
            .await;
        assert_eq!(
            envelope_error(&r).0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}"
        );
        let r = api
            .call(
                Method::PATCH,
                "/v1/namespaces/ns0/brokers/b",
                Some(JSON),
                Some(body),
            )
            .await;
        assert_eq!(problem(&r).0, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let listed = api.get(&format!("{C}/namespaces")).await;
    assert_eq!(
        listed.body["result"].as_array().unwrap().len(),
        4,
        "nothing made by the refused bodies: {:?}",
        listed.body
    );
}

/// Native routes keep requiring JSON: anything but `application/json` (or `application/*+json`)
/// is a 415 problem that names the type to send.
async fn native_bodies_need_json_and_a_415_names_it() {
    let api = api().await;
    for (ct, shown) in [
        (None, "none"),
        (Some(WRANGLER), "`text/plain;charset=UTF-8`"),
        (Some(CURL_D), "`application/x-www-form-urlencoded`"),
    ] {
        let r = api
            .call(Method::POST, "/v1/namespaces", ct, Some(r#"{"name":"n"}"#))
            .await;
        let (status, code, detail) = problem(&r);
        assert_eq!(
            (status, code),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, 10_011),
            "{ct:?}"
        );
        assert!(
            detail.contains("Content-Type: application/json") && detail.contains(shown),
            "{detail}"
        );
        assert!(
            r.body["type"]
                .as_str()
                .unwrap()
                .ends_with("/unsupported-media-type")
        );
    }
    for (i, ct) in [
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ]
    .into_iter()
    .enumerate()
    {
        let r = api
            .call(
                Method::POST,
                "/v1/namespaces",
                Some(ct),
                Some(&format!(r#"{{"name":"n{i}"}}"#)),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{ct}: {:?}", r.body);
    }
    let r = api
        .call(Method::POST, "/v1/namespaces", Some(JSON), Some("name=x"))
        .await;
    assert_eq!(problem(&r).0, StatusCode::BAD_REQUEST);
}

/// Every answer under /client/v4 is an envelope: failed authentication is 403 with code 10000
/// "Authentication error" (our explanation in `error_chain`), unknown routes 404 with 7000 "No
/// route for that URI", a wrong method 405. Natively the same failures are problems (401 with
/// the same code 10000; 404 with 10004).
async fn compat_failures_are_envelopes_with_cloudflares_codes() {
    let api = api().await;
    let account_routes = [
        format!("{C}/namespaces"),
        "/client/v4/accounts".to_string(),
        "/client/v4/memberships".to_string(),
        "/client/v4/user/tokens/verify".to_string(),
        format!("/client/v4/accounts/{ACCOUNT}"),
    ];
    for uri in &account_routes {
        for headers in [
            vec![],
            vec![("authorization", "Bearer sat_not-a-token")],
            vec![("authorization", "Basic abc")],
            vec![("x-auth-key", "sat_not-a-token"), ("x-auth-email", "a@b.c")],
        ] {
            let r = api.raw(Method::GET, uri, &headers, None).await;
            let (status, code, message) = envelope_error(&r);
            assert_eq!(
                (status, code, message.as_str()),
                (StatusCode::FORBIDDEN, 10_000, "Authentication error"),
                "{uri} {headers:?}"
            );
            let chain = &r.body["errors"][0]["error_chain"][0];
            assert!(
                chain["message"].as_str().unwrap().contains("Bearer"),
                "{chain}"
            );
        }
    }
    let r = api.raw(Method::GET, "/v1/namespaces", &[], None).await;
    let (status, code, _) = problem(&r);
    assert_eq!(
        (status, code),
        (StatusCode::UNAUTHORIZED, 10_000),
        "the same code natively"
    );

    for uri in [
        "/client/v4",
        "/client/v4/",
        "/client/v4/zones",
        "/client/v4/user/tokens",
        "/client/v4/accounts/00000000000000000000000000000001/workers/scripts",
        "/client/v4/accounts/00000000000000000000000000000001/pubsub",
        "/client/v4/accounts/00000000000000000000000000000001/pubsub/nope",
        "/client/v4/accounts/00000000000000000000000000000001/pubsub/namespaces/a/brokers/b/nope",
    ] {
        let r = api.get(uri).await;
        assert_eq!(
            envelope_error(&r),
            (
                StatusCode::NOT_FOUND,
                7_000,
                "No route for that URI".to_string()
            ),
            "{uri}"
        );
    }
    for (m, uri) in [
        (Method::PUT, format!("{C}/namespaces")),
        (Method::PATCH, format!("{C}/namespaces/x")),
        (Method::POST, "/client/v4/memberships".to_string()),
        (Method::DELETE, "/client/v4/accounts".to_string()),
    ] {
        let r = api.call(m.clone(), &uri, None, None).await;
        let (status, code, _) = envelope_error(&r);
        assert_eq!(
            (status, code),
            (StatusCode::METHOD_NOT_ALLOWED, 10_010),
            "{m} {uri}"
        );
    }
    // Objects that are not there, and role refusals, are envelopes too.
    let r = api.get(&format!("{C}/namespaces/missing")).await;
    assert_eq!(envelope_error(&r).1, 10_004);
    let r = api.get("/v1/nope").await;
    assert_eq!(
        (problem(&r).0, problem(&r).1),
        (StatusCode::NOT_FOUND, 10_004)
    );
}

/// `X-Auth-Key` (with or without `X-Auth-Email`) is an API token on the compatible routes, as
/// in Cloudflare's first docs; the native routes take only `Authorization: Bearer`.
async fn x_auth_key_is_an_api_token_on_compatible_routes_only() {
    let api = api().await;
    for headers in [
        vec![("x-auth-key", BOOTSTRAP)],
        vec![
            ("x-auth-key", BOOTSTRAP),
            ("x-auth-email", "ops@example.com"),
        ],
    ] {
        let r = api
            .raw(Method::GET, &format!("{C}/namespaces"), &headers, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{headers:?}: {:?}", r.body);
        let r = api
            .raw(
                Method::POST,
                &format!("{C}/namespaces"),
                &headers,
                Some(r#"{"name":"keyed"}"#),
            )
            .await;
        assert!(
            matches!(r.status, StatusCode::OK | StatusCode::BAD_REQUEST),
            "{:?}",
            r.body
        );
        let r = api
            .raw(Method::GET, "/client/v4/memberships", &headers, None)
            .await;
        assert_eq!(r.body["result"][0]["account"]["id"], ACCOUNT);
        let r = api.raw(Method::GET, "/v1/namespaces", &headers, None).await;
        assert_eq!(
            problem(&r).0,
            StatusCode::UNAUTHORIZED,
            "native: bearer only"
        );
    }
    assert_eq!(
        api.get(&format!("{C}/namespaces/keyed")).await.status,
        StatusCode::OK,
        "created with X-Auth-Key"
    );
}

/// Account discovery: `GET /v1/account` shows the token's account and the token;
/// `/client/v4/accounts`, `/accounts/{id}`, `/memberships` and `/user/tokens/verify` answer in
/// Cloudflare's shapes, paged by number as its CLI pages them; each token sees only its account.
async fn tokens_discover_their_account_on_both_route_sets() {
    let api = api().await;
    let (other, other_id) = api.other_account().await;
    for (token, account, name, bootstrap) in [
        (
            BOOTSTRAP.to_string(),
            ACCOUNT.to_string(),
            "bootstrap",
            true,
        ),
        (other.clone(), other_id.clone(), "other", false),
    ] {
        let get = |uri: String| {
            let auth = format!("Bearer {token}");
            let api = &api;
            async move {
                api.raw(Method::GET, &uri, &[("authorization", &auth)], None)
                    .await
            }
        };
        let r = get("/v1/account".into()).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(
            (
                r.body["id"].as_str().unwrap(),
                r.body["name"].as_str().unwrap()
            ),
            (account.as_str(), name)
        );
        assert!(r.body["created_on"].as_str().unwrap().ends_with('Z'));
        assert_eq!(r.body["token"]["role"], "admin");
        assert_eq!(r.body["token"]["bootstrap"], bootstrap);
        assert!(
            !r.body.to_string().contains(&token),
            "the token itself is never shown"
        );
        let token_id = r.body["token"]["id"].as_str().unwrap().to_string();

        let r = get("/client/v4/accounts".into()).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["success"], true);
        assert_eq!(
            r.body["result"],
            json!([{"id": account, "name": name, "type": "standard", "created_on": r.body["result"][0]["created_on"]}])
        );
        assert_eq!(
            r.body["result_info"],
            json!({"page": 1, "per_page": 20, "total_pages": 1, "count": 1, "total_count": 1})
        );
        let r = get("/client/v4/accounts?page=2&per_page=5".into()).await;
        assert_eq!(r.body["result"], json!([]));
        assert_eq!(r.body["result_info"]["page"], 2);

        let r = get(format!("/client/v4/accounts/{account}")).await;
        assert_eq!(r.body["result"]["id"], account.as_str());
        let foreign = if account == ACCOUNT {
            &other_id
        } else {
            ACCOUNT
        };
        let r = get(format!("/client/v4/accounts/{foreign}")).await;
        assert_eq!(envelope_error(&r).0, StatusCode::NOT_FOUND);

        // wrangler's request: /memberships?page=1, then `result[].account`.
        let r = get("/client/v4/memberships?page=1".into()).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        let m = &r.body["result"][0];
        assert_eq!(
            (
                m["id"].as_str().unwrap(),
                m["status"].as_str().unwrap(),
                m["account"]["id"].as_str().unwrap(),
                m["account"]["name"].as_str().unwrap(),
                m["roles"].clone()
            ),
            (
                token_id.as_str(),
                "accepted",
                account.as_str(),
                name,
                json!(["admin"])
            )
        );
        assert_eq!(r.body["result_info"]["total_count"], 1);

        let r = get("/client/v4/user/tokens/verify".into()).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.body["result"],
            json!({"id": token_id, "status": "active"})
        );
        assert_eq!(
            r.body["messages"][0]["message"],
            "This API Token is valid and active"
        );
        // No user behind an API token: Cloudflare's 9109, which its CLI's `whoami` expects.
        let r = get("/client/v4/user".into()).await;
        assert_eq!(
            envelope_error(&r),
            (
                StatusCode::FORBIDDEN,
                9_109,
                "Unauthorized to access requested resource".to_string()
            )
        );
    }
    // Any role may ask.
    let r = api
        .call(
            Method::POST,
            "/v1/tokens",
            Some(JSON),
            Some(r#"{"name":"r","role":"read"}"#),
        )
        .await;
    let read = r.body["token"].as_str().unwrap().to_string();
    let auth = format!("Bearer {read}");
    let r = api
        .raw(
            Method::GET,
            "/v1/account",
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(
        (r.body["id"].as_str(), r.body["token"]["role"].as_str()),
        (Some(ACCOUNT), Some("read"))
    );
    let r = api
        .raw(
            Method::GET,
            "/client/v4/memberships",
            &[("authorization", &auth)],
            None,
        )
        .await;
    assert_eq!(r.body["result"][0]["roles"], json!(["read"]));
    for bad in ["page=0", "per_page=0", "per_page=1001", "page=x"] {
        let r = api.get(&format!("/client/v4/memberships?{bad}")).await;
        assert_eq!(envelope_error(&r).0, StatusCode::BAD_REQUEST, "{bad}");
    }
}

/// Credentials: with `clientid` values, one token per id whatever smaller `number` comes with
/// them (wrangler always sends `number=1`); a larger `number`, or one outside 1..=100, is 400.
/// The same on both route sets.
async fn credentials_issue_one_token_per_client_id() {
    let api = api().await;
    api.call(
        Method::POST,
        "/v1/namespaces",
        Some(JSON),
        Some(r#"{"name":"home"}"#),
    )
    .await;
    let r = api
        .call(
            Method::POST,
            "/v1/namespaces/home/brokers",
            Some(JSON),
            Some(r#"{"name":"b1"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    for base in [
        "/v1/namespaces/home/brokers/b1/credentials?topicAcl=%23&".to_string(),
        format!("{C}/namespaces/home/brokers/b1/credentials?"),
    ] {
        let compat = base.starts_with("/client");
        let tokens = |r: &Resp| -> BTreeSet<String> {
            let map = if compat { &r.body["result"] } else { &r.body };
            map.as_object()
                .unwrap_or_else(|| panic!("{:?}", r.body))
                .keys()
                .cloned()
                .collect()
        };
        for q in [
            "number=1&type=TOKEN&clientid=dev-a&clientid=dev-b&clientid=dev-c",
            "number=2&clientid=dev-a&clientid=dev-b&clientid=dev-c",
            "number=3&clientid=dev-a&clientid=dev-b&clientid=dev-c",
            "clientid=dev-a&clientid=dev-b&clientid=dev-c",
        ] {
            let r = api.get(&format!("{base}{q}")).await;
            assert_eq!(r.status, StatusCode::OK, "{base}{q}: {:?}", r.body);
            assert_eq!(
                tokens(&r),
                BTreeSet::from(["dev-a".into(), "dev-b".into(), "dev-c".into()]),
                "{q}"
            );
        }
        let r = api.get(&format!("{base}number=4")).await;
        assert_eq!(tokens(&r).len(), 4, "without ids, number tokens");
        for q in [
            "number=3&clientid=dev-a&clientid=dev-b",
            "number=0&clientid=dev-a",
            "number=101",
        ] {
            let r = api.get(&format!("{base}{q}")).await;
            let (status, _, message) = if compat {
                envelope_error(&r)
            } else {
                problem(&r)
            };
            assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
            assert!(message.contains("number"), "{q}: {message}");
        }
        let many: String = (0..101).map(|i| format!("clientid=c{i}&")).collect();
        let r = api.get(&format!("{base}{many}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "101 client ids");
    }
}

/// Broker objects carry `auth_type` beside `authType`, leave `on_publish` out when there is no
/// hook (and show it once there is one), on both route sets.
async fn broker_objects_carry_auth_type_and_no_empty_hook() {
    let api = api().await;
    api.call(
        Method::POST,
        &format!("{C}/namespaces"),
        Some(WRANGLER),
        Some(r#"{"name":"home"}"#),
    )
    .await;
    let r = api
        .call(
            Method::POST,
            &format!("{C}/namespaces/home/brokers"),
            Some(WRANGLER),
            Some(r#"{"name":"b1"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let native = "/v1/namespaces/home/brokers/b1";
    let compat = format!("{C}/namespaces/home/brokers/b1");
    let check = |b: &Value, hook: Option<&str>| {
        assert_eq!(
            (b["authType"].as_str(), b["auth_type"].as_str()),
            (Some("TOKEN"), Some("TOKEN")),
            "{b}"
        );
        match hook {
            None => assert!(b.get("on_publish").is_none(), "no hook, no key: {b}"),
            Some(url) => assert_eq!(b["on_publish"], json!({ "url": url }), "{b}"),
        }
    };
    check(&r.body["result"], None);
    check(&api.get(native).await.body, None);
    check(&api.get(&compat).await.body["result"], None);
    let listed = api.get(&format!("{C}/namespaces/home/brokers")).await;
    check(&listed.body["result"][0], None);
    let hook = "https://hook.example/in";
    let r = api
        .call(
            Method::PATCH,
            &compat,
            Some(WRANGLER),
            Some(&format!(r#"{{"on_publish":{{"url":"{hook}"}}}}"#)),
        )
        .await;
    check(&r.body["result"], Some(hook));
    check(&api.get(native).await.body, Some(hook));
    let r = api
        .call(
            Method::PATCH,
            native,
            Some(JSON),
            Some(r#"{"on_publish":{"url":null}}"#),
        )
        .await;
    check(&r.body, None);
    check(&api.get(&compat).await.body["result"], None);
}

/// `name` in a change is refused with a clear error rather than ignored (brokers cannot be
/// renamed); the broker's own name, in any case, is accepted and changes nothing.
async fn renaming_a_broker_is_refused_on_both_route_sets() {
    let api = api().await;
    api.call(
        Method::POST,
        "/v1/namespaces",
        Some(JSON),
        Some(r#"{"name":"home"}"#),
    )
    .await;
    api.call(
        Method::POST,
        "/v1/namespaces/home/brokers",
        Some(JSON),
        Some(r#"{"name":"b1","description":"before"}"#),
    )
    .await;
    let native = "/v1/namespaces/home/brokers/b1";
    let compat = format!("{C}/namespaces/home/brokers/b1");
    for uri in [native, compat.as_str()] {
        let r = api
            .call(
                Method::PATCH,
                uri,
                Some(JSON),
                Some(r#"{"name":"b2","description":"renamed?"}"#),
            )
            .await;
        let (status, code, message) = if uri == native {
            problem(&r)
        } else {
            envelope_error(&r)
        };
        assert_eq!((status, code), (StatusCode::BAD_REQUEST, 10_001), "{uri}");
        assert!(message.contains("cannot be renamed"), "{message}");
    }
    let r = api.get(native).await;
    assert_eq!(
        (r.body["name"].as_str(), r.body["description"].as_str()),
        (Some("b1"), Some("before")),
        "nothing changed"
    );
    assert_eq!(
        api.get("/v1/namespaces/home/brokers/b2").await.status,
        StatusCode::NOT_FOUND
    );
    for (uri, name) in [(native, "b1"), (compat.as_str(), "B1")] {
        let r = api
            .call(
                Method::PATCH,
                uri,
                Some(JSON),
                Some(&format!(r#"{{"name":"{name}","description":"{uri}"}}"#)),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {:?}", r.body);
    }
    assert_eq!(api.get(native).await.body["description"], compat.as_str());
}

tests!(
    compat_bodies_are_json_whatever_the_content_type,
    native_bodies_need_json_and_a_415_names_it,
    compat_failures_are_envelopes_with_cloudflares_codes,
    x_auth_key_is_an_api_token_on_compatible_routes_only,
    tokens_discover_their_account_on_both_route_sets,
    credentials_issue_one_token_per_client_id,
    broker_objects_carry_auth_type_and_no_empty_hook,
    renaming_a_broker_is_refused_on_both_route_sets,
);
