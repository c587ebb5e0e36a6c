//! The store conformance suite: the same behaviour tests run against SQLite and against a real
//! Postgres (one fresh database per test), so both backends always get the same tests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use starling_api::keys::{Kek, new_hook_key_record, new_key_record};
use starling_api::store::{
    Account, ApiTokenRecord, AuditEntry, Broker, IssuedCredential, KeyStatus, Namespace,
    REVOCATION_GRACE_SECS, Role, Store, StoreError,
};

const T: i64 = 1_800_000_000;

fn kek() -> Kek {
    Kek::from_bytes(&[9u8; 32]).unwrap()
}

fn hook_key(broker_id: &str) -> starling_api::store::KeyRecord {
    new_hook_key_record(&kek(), broker_id, T).unwrap()
}

async fn account(store: &dyn Store, id: &str) {
    store
        .ensure_account(&Account {
            id: id.into(),
            name: id.into(),
            created_at: T,
        })
        .await
        .unwrap();
}

fn ns(account: &str, name: &str) -> Namespace {
    Namespace {
        id: ulid::Ulid::new().to_string(),
        account_id: account.into(),
        name: name.into(),
        description: String::new(),
        created_at: T,
        modified_at: T,
    }
}

async fn broker_in(store: &dyn Store, ns: &Namespace, name: &str) -> Broker {
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let b = Broker {
        id: id.clone(),
        account_id: ns.account_id.clone(),
        namespace_id: ns.id.clone(),
        namespace_name: ns.name.clone(),
        name: name.into(),
        description: String::new(),
        auth_type: "TOKEN".into(),
        expiration: None,
        on_publish_url: None,
        limits: None,
        managed_by: None,
        endpoint: None,
        ws_endpoint: None,
        version: 1,
        created_at: T,
        modified_at: T,
    };
    let keys = [
        new_key_record(&kek(), &id, KeyStatus::Current, T).unwrap(),
        new_key_record(&kek(), &id, KeyStatus::Next, T + 1).unwrap(),
    ];
    store
        .create_broker(&b, "hash", &keys, Some(&hook_key(&id)))
        .await
        .unwrap();
    store.get_broker_by_id(&id).await.unwrap().unwrap()
}

async fn setup(store: &dyn Store) -> (Namespace, Broker) {
    account(store, "acct1").await;
    let n = ns("acct1", "home");
    store.create_namespace(&n).await.unwrap();
    let b = broker_in(store, &n, "b1").await;
    (n, b)
}

async fn namespace_names_are_unique_across_accounts_ignoring_case(store: Arc<dyn Store>) {
    account(&*store, "acct1").await;
    account(&*store, "acct2").await;
    store.create_namespace(&ns("acct1", "Home")).await.unwrap();
    let err = store
        .create_namespace(&ns("acct2", "home"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        store
            .get_namespace("acct1", "HOME")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get_namespace("acct2", "home")
            .await
            .unwrap()
            .is_none(),
        "other account sees nothing"
    );
}

async fn namespace_pages_follow_the_cursor(store: Arc<dyn Store>) {
    account(&*store, "acct1").await;
    for name in ["e", "b", "d", "a", "c"] {
        store.create_namespace(&ns("acct1", name)).await.unwrap();
    }
    let p1 = store.list_namespaces("acct1", None, 2).await.unwrap();
    assert_eq!(
        p1.items.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let p2 = store
        .list_namespaces("acct1", p1.next_after.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(
        p2.items.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["c", "d"]
    );
    let p3 = store
        .list_namespaces("acct1", p2.next_after.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(
        p3.items.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["e"]
    );
    assert_eq!(p3.next_after, None);
}

async fn namespace_with_brokers_cannot_be_deleted(store: Arc<dyn Store>) {
    let (n, b) = setup(&*store).await;
    assert!(matches!(
        store.delete_namespace("acct1", &n.name).await,
        Err(StoreError::NotEmpty)
    ));
    store.delete_broker(&b.id, T).await.unwrap();
    store.delete_namespace("acct1", &n.name).await.unwrap();
    assert!(matches!(
        store.delete_namespace("acct1", &n.name).await,
        Err(StoreError::NotFound)
    ));
}

async fn broker_names_are_unique_per_namespace(store: Arc<dyn Store>) {
    let (n, b) = setup(&*store).await;
    let mut dup = b.clone();
    dup.id = "other".into();
    dup.name = "B1".into();
    let err = store.create_broker(&dup, "h", &[], None).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let n2 = ns("acct1", "work");
    store.create_namespace(&n2).await.unwrap();
    broker_in(&*store, &n2, "b1").await;
    assert!(
        store
            .get_broker("acct1", "HOME", "b1")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .get_broker("acct2", "home", "b1")
            .await
            .unwrap()
            .is_none()
    );
    let page = store.list_brokers(&n.id, None, 10).await.unwrap();
    assert_eq!(page.items.len(), 1);
}

async fn broker_changes_bump_the_version_and_are_announced(store: Arc<dyn Store>) {
    let (_, b) = setup(&*store).await;
    let mut feed = store.changes();
    let mut changed = b.clone();
    changed.description = "new".into();
    changed.expiration = Some(60);
    changed.endpoint = Some("mqtts://devices.example.org:8883".into());
    changed.ws_endpoint = Some("wss://devices.example.org:443/mqtt".into());
    let stored = store.update_broker(&changed, T + 5).await.unwrap();
    assert_eq!(stored.version, b.version + 1);
    assert_eq!(
        (stored.description.as_str(), stored.expiration),
        ("new", Some(60))
    );
    assert_eq!(
        (stored.endpoint.as_deref(), stored.ws_endpoint.as_deref()),
        (
            Some("mqtts://devices.example.org:8883"),
            Some("wss://devices.example.org:443/mqtt")
        ),
        "advertised endpoints are stored"
    );
    let got = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*got, b.id.as_str());
}

async fn rotation_moves_next_to_current_and_current_to_retiring(store: Arc<dyn Store>) {
    let (_, b) = setup(&*store).await;
    let before = store.list_keys(&b.id).await.unwrap();
    let cur = before
        .iter()
        .find(|k| k.status == KeyStatus::Current)
        .unwrap()
        .kid
        .clone();
    let next = before
        .iter()
        .find(|k| k.status == KeyStatus::Next)
        .unwrap()
        .kid
        .clone();
    let new_next = new_key_record(&kek(), &b.id, KeyStatus::Next, T + 10).unwrap();
    store
        .rotate_keys(&b.id, &new_next, &hook_key(&b.id), T + 100, T)
        .await
        .unwrap();
    let after = store.list_keys(&b.id).await.unwrap();
    let status = |kid: &str| {
        after
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| (k.status, k.retire_at))
    };
    assert_eq!(status(&cur), Some((KeyStatus::Retiring, Some(T + 100))));
    assert_eq!(status(&next), Some((KeyStatus::Current, None)));
    assert_eq!(status(&new_next.kid), Some((KeyStatus::Next, None)));
    assert_eq!(
        store
            .get_broker_by_id(&b.id)
            .await
            .unwrap()
            .unwrap()
            .version,
        b.version + 1
    );
    // The sealed seed survives the round trip through the database.
    let k = after.iter().find(|k| k.kid == next).unwrap();
    assert_eq!(
        kek().open(&k.sealed_seed, &b.id, &k.kid).unwrap().kid(),
        next
    );
}

async fn retired_keys_leave_the_state_and_are_collected(store: Arc<dyn Store>) {
    let (_, b) = setup(&*store).await;
    let new_next = new_key_record(&kek(), &b.id, KeyStatus::Next, T + 10).unwrap();
    store
        .rotate_keys(&b.id, &new_next, &hook_key(&b.id), T + 100, T)
        .await
        .unwrap();
    assert_eq!(
        store
            .broker_state(&b.id, T + 99)
            .await
            .unwrap()
            .unwrap()
            .keys
            .len(),
        3
    );
    assert_eq!(
        store
            .broker_state(&b.id, T + 100)
            .await
            .unwrap()
            .unwrap()
            .keys
            .len(),
        2
    );
    let v = store
        .get_broker_by_id(&b.id)
        .await
        .unwrap()
        .unwrap()
        .version;
    assert_eq!(
        store.collect_retired_keys(T + 100).await.unwrap(),
        2,
        "the retired token key and the retired hook key"
    );
    assert_eq!(store.list_keys(&b.id).await.unwrap().len(), 2);
    assert_eq!(store.list_hook_keys(&b.id).await.unwrap().len(), 1);
    assert_eq!(
        store
            .get_broker_by_id(&b.id)
            .await
            .unwrap()
            .unwrap()
            .version,
        v + 1
    );
    assert_eq!(store.collect_retired_keys(T + 100).await.unwrap(), 0);
}

/// A broker's hook key lives apart from its token keys: created with the broker, in the state
/// as a hook key only, rotated (the old one retiring), collected at `retire_at`, deleted with
/// the broker; a broker from before hook keys gets exactly one.
async fn hook_keys_are_apart_from_token_keys_and_given_once(store: Arc<dyn Store>) {
    let (_, b) = setup(&*store).await;
    let hooks = store.list_hook_keys(&b.id).await.unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].status, KeyStatus::Current);
    let first = hooks[0].kid.clone();
    let state = store.broker_state(&b.id, T).await.unwrap().unwrap();
    assert_eq!(state.hook_keys.len(), 1);
    assert!(state.keys.iter().all(|k| k.kid != first), "not a token key");
    assert!(
        kek()
            .open_hook_current(&b.id, &state.hook_keys)
            .unwrap()
            .is_some()
    );
    assert!(
        !store
            .ensure_hook_key(&b.id, &hook_key(&b.id))
            .await
            .unwrap()
    );
    assert_eq!(store.list_hook_keys(&b.id).await.unwrap().len(), 1);

    // A broker created before hook keys existed.
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let old = Broker {
        id: id.clone(),
        name: "old".into(),
        ..b.clone()
    };
    let keys = [new_key_record(&kek(), &id, KeyStatus::Current, T).unwrap()];
    store.create_broker(&old, "h", &keys, None).await.unwrap();
    assert!(
        store
            .brokers_without_hook_key(100)
            .await
            .unwrap()
            .contains(&id)
    );
    let v = store.get_broker_by_id(&id).await.unwrap().unwrap().version;
    assert!(store.ensure_hook_key(&id, &hook_key(&id)).await.unwrap());
    assert!(!store.ensure_hook_key(&id, &hook_key(&id)).await.unwrap());
    assert_eq!(store.list_hook_keys(&id).await.unwrap().len(), 1);
    assert_eq!(
        store.get_broker_by_id(&id).await.unwrap().unwrap().version,
        v + 1,
        "brokers learn of their hook key"
    );
    assert!(
        store
            .brokers_without_hook_key(100)
            .await
            .unwrap()
            .is_empty()
    );

    // Rotation: a new current hook key, the first retiring until retire_at.
    let next = new_key_record(&kek(), &b.id, KeyStatus::Next, T + 5).unwrap();
    let second = hook_key(&b.id);
    store
        .rotate_keys(&b.id, &next, &second, T + 100, T)
        .await
        .unwrap();
    let state = store.broker_state(&b.id, T + 99).await.unwrap().unwrap();
    let live: Vec<_> = state
        .hook_keys
        .iter()
        .map(|k| (k.kid.clone(), k.status))
        .collect();
    assert_eq!(
        live,
        [
            (first.clone(), KeyStatus::Retiring),
            (second.kid.clone(), KeyStatus::Current)
        ]
    );
    let state = store.broker_state(&b.id, T + 100).await.unwrap().unwrap();
    assert_eq!(state.hook_keys.len(), 1, "gone from the state at retire_at");
    store.collect_retired_keys(T + 100).await.unwrap();
    assert_eq!(store.list_hook_keys(&b.id).await.unwrap().len(), 1);
    store.delete_broker(&b.id, T).await.unwrap();
    assert!(store.list_hook_keys(&b.id).await.unwrap().is_empty());
}

async fn revocations_are_bounded_and_expired_ones_collected(store: Arc<dyn Store>) {
    let (_, b) = setup(&*store).await;
    store
        .record_credentials(
            &b.id,
            &[IssuedCredential {
                jti: "short".into(),
                client_id: "c".into(),
                kid: "k".into(),
                issued_at: T,
                expires_at: Some(T + 10),
            }],
        )
        .await
        .unwrap();
    store
        .add_revocations(
            &b.id,
            &["short".into(), "forever".into(), "forever".into()],
            3,
            T,
        )
        .await
        .unwrap();
    let live = store.list_revocations(&b.id, T).await.unwrap();
    assert_eq!(live.len(), 2);
    assert_eq!(
        live.iter().find(|r| r.jti == "short").unwrap().expires_at,
        Some(T + 10)
    );
    let err = store
        .add_revocations(&b.id, &["x".into(), "y".into()], 3, T)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::RevocationCap(3)), "{err:?}");
    assert_eq!(
        store.list_revocations(&b.id, T).await.unwrap().len(),
        2,
        "a refused batch adds nothing"
    );
    // Once no broker can accept `short` (its exp plus the largest clock skew) it no longer
    // counts, and is collected.
    let gone = T + 10 + REVOCATION_GRACE_SECS;
    store
        .add_revocations(&b.id, &["x".into(), "y".into()], 3, gone)
        .await
        .unwrap();
    assert_eq!(store.list_revocations(&b.id, gone).await.unwrap().len(), 3);
    store
        .delete_revocations(&b.id, &["x".into()])
        .await
        .unwrap();
    assert_eq!(store.list_revocations(&b.id, gone).await.unwrap().len(), 2);
    store.collect_expired(gone).await.unwrap();
}

/// A broker accepts a token until its `exp` plus its clock skew, so the revocation stays in the
/// broker's state (and in the store) until `exp` plus the largest skew any broker accepts.
async fn a_revocation_stays_in_the_state_until_exp_plus_the_largest_clock_skew(
    store: Arc<dyn Store>,
) {
    let (_, b) = setup(&*store).await;
    let exp = T + 60;
    store
        .record_credentials(&b.id, &[issued("j1", "k", Some(exp))])
        .await
        .unwrap();
    store
        .add_revocations(&b.id, &["j1".into()], 10, T)
        .await
        .unwrap();
    let in_state = |now| {
        let store = store.clone();
        let id = b.id.clone();
        async move {
            let s = store.broker_state(&id, now).await.unwrap().unwrap();
            s.revocations.iter().any(|r| r.jti == "j1")
        }
    };
    // A broker with the default 30 s skew still takes the token 30 s after exp.
    assert!(in_state(exp + 30).await, "revoked token accepted again");
    assert!(in_state(exp + REVOCATION_GRACE_SECS - 1).await);
    store
        .collect_expired(exp + REVOCATION_GRACE_SECS - 1)
        .await
        .unwrap();
    assert!(
        in_state(exp + REVOCATION_GRACE_SECS - 1).await,
        "collected early"
    );
    assert!(!in_state(exp + REVOCATION_GRACE_SECS).await);
    assert_eq!(
        store
            .collect_expired(exp + REVOCATION_GRACE_SECS)
            .await
            .unwrap(),
        2,
        "the revocation and the issuance record"
    );
}

/// A revocation of a token without `exp` lasts as long as the token could verify: until the key
/// that signed it leaves the key set. A `jti` this api never issued goes once every key the
/// broker had when it was revoked is gone. So no revocation fills the cap forever.
async fn a_revocation_of_a_token_without_exp_goes_when_its_key_is_retired(store: Arc<dyn Store>) {
    let (_, b) = setup(&*store).await;
    let keys = store.list_keys(&b.id).await.unwrap();
    let current = keys
        .iter()
        .find(|k| k.status == KeyStatus::Current)
        .unwrap()
        .kid
        .clone();
    store
        .record_credentials(&b.id, &[issued("forever", &current, None)])
        .await
        .unwrap();
    store
        .add_revocations(&b.id, &["forever".into(), "unknown".into()], 10, T)
        .await
        .unwrap();
    let live = store.list_revocations(&b.id, T).await.unwrap();
    assert_eq!(live.len(), 2);
    let forever = live.iter().find(|r| r.jti == "forever").unwrap();
    assert_eq!(forever.kid.as_deref(), Some(current.as_str()));
    assert_eq!(forever.expires_at, None);
    assert_eq!(store.collect_expired(T + 1_000_000).await.unwrap(), 0);

    // Rotation: the signing key retires at T + 100; the revocation stays while it verifies.
    let next = new_key_record(&kek(), &b.id, KeyStatus::Next, (T + 10) * 1_000_000).unwrap();
    store
        .rotate_keys(&b.id, &next, &hook_key(&b.id), T + 100, T + 10)
        .await
        .unwrap();
    store.collect_retired_keys(T + 99).await.unwrap();
    assert_eq!(
        store.list_revocations(&b.id, T + 99).await.unwrap().len(),
        2
    );
    store.collect_retired_keys(T + 100).await.unwrap();
    let live = store.list_revocations(&b.id, T + 100).await.unwrap();
    assert_eq!(
        live.iter().map(|r| r.jti.as_str()).collect::<Vec<_>>(),
        ["unknown"],
        "the token can no longer verify, so its revocation went with its key"
    );
    // The key that was next at the revocation retires with the second rotation: no key the
    // broker had then is left, so the unknown `jti` goes too.
    let next = new_key_record(&kek(), &b.id, KeyStatus::Next, (T + 200) * 1_000_000).unwrap();
    store
        .rotate_keys(&b.id, &next, &hook_key(&b.id), T + 300, T + 200)
        .await
        .unwrap();
    store.collect_retired_keys(T + 300).await.unwrap();
    assert!(
        store
            .list_revocations(&b.id, T + 300)
            .await
            .unwrap()
            .is_empty()
    );
}

fn issued(jti: &str, kid: &str, expires_at: Option<i64>) -> IssuedCredential {
    IssuedCredential {
        jti: jti.into(),
        client_id: "c".into(),
        kid: kid.into(),
        issued_at: T,
        expires_at,
    }
}

async fn deleted_broker_leaves_a_tombstone_and_is_announced(store: Arc<dyn Store>) {
    let (_, b) = setup(&*store).await;
    let mut feed = store.changes();
    assert_eq!(
        store.broker_secret_hash(&b.id).await.unwrap(),
        Some(("hash".into(), false))
    );
    store.delete_broker(&b.id, T).await.unwrap();
    assert_eq!(
        store.broker_secret_hash(&b.id).await.unwrap(),
        Some(("hash".into(), true))
    );
    assert!(store.get_broker_by_id(&b.id).await.unwrap().is_none());
    assert!(store.broker_state(&b.id, T).await.unwrap().is_none());
    assert!(store.list_keys(&b.id).await.unwrap().is_empty());
    let got = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*got, b.id.as_str());
    assert!(matches!(
        store.delete_broker(&b.id, T).await,
        Err(StoreError::NotFound)
    ));
}

async fn api_tokens_are_found_by_hash_and_scoped_to_their_account(store: Arc<dyn Store>) {
    account(&*store, "acct1").await;
    account(&*store, "acct2").await;
    let t = ApiTokenRecord {
        id: "t1".into(),
        account_id: "acct1".into(),
        name: "ci".into(),
        role: Role::Write,
        token_hash: "abc".into(),
        system: false,
        created_at: T,
    };
    store.put_api_token(&t, false).await.unwrap();
    assert_eq!(store.find_api_token("abc").await.unwrap(), Some(t.clone()));
    assert!(matches!(
        store.put_api_token(&t, false).await,
        Err(StoreError::Conflict(_))
    ));
    let mut rotated = t.clone();
    rotated.token_hash = "def".into();
    store.put_api_token(&rotated, true).await.unwrap();
    assert_eq!(store.find_api_token("abc").await.unwrap(), None);
    assert!(matches!(
        store.delete_api_token("acct2", "t1").await,
        Err(StoreError::NotFound)
    ));
    store.delete_api_token("acct1", "t1").await.unwrap();
    let left = store.list_api_tokens("acct1", None, 10).await.unwrap();
    assert!(left.items.is_empty());
    assert_eq!(left.next_after, None);
}

async fn api_token_pages_follow_the_id_cursor(store: Arc<dyn Store>) {
    account(&*store, "acct1").await;
    account(&*store, "acct2").await;
    let token = |account_id: &str, id: &str| ApiTokenRecord {
        id: id.into(),
        account_id: account_id.into(),
        name: format!("t-{id}"),
        role: Role::Read,
        token_hash: format!("hash-{account_id}-{id}"),
        system: false,
        created_at: T,
    };
    // ULIDs, stored out of order; the other account's token sorts between them.
    let ids = [
        "01HZZZZZZZZZZZZZZZZZZZZZZ5",
        "01HZZZZZZZZZZZZZZZZZZZZZZ2",
        "01HZZZZZZZZZZZZZZZZZZZZZZ4",
        "01HZZZZZZZZZZZZZZZZZZZZZZ1",
        "01HZZZZZZZZZZZZZZZZZZZZZZ3",
    ];
    for id in ids {
        store
            .put_api_token(&token("acct1", id), false)
            .await
            .unwrap();
    }
    store
        .put_api_token(&token("acct2", "01HZZZZZZZZZZZZZZZZZZZZZZ25"), false)
        .await
        .unwrap();
    let ids_of = |p: &starling_api::store::Page<ApiTokenRecord>| {
        p.items.iter().map(|t| t.id.clone()).collect::<Vec<_>>()
    };
    let p1 = store.list_api_tokens("acct1", None, 2).await.unwrap();
    assert_eq!(
        ids_of(&p1),
        ["01HZZZZZZZZZZZZZZZZZZZZZZ1", "01HZZZZZZZZZZZZZZZZZZZZZZ2"]
    );
    assert_eq!(p1.next_after.as_deref(), Some("01HZZZZZZZZZZZZZZZZZZZZZZ2"));
    let p2 = store
        .list_api_tokens("acct1", p1.next_after.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(
        ids_of(&p2),
        ["01HZZZZZZZZZZZZZZZZZZZZZZ3", "01HZZZZZZZZZZZZZZZZZZZZZZ4"]
    );
    let p3 = store
        .list_api_tokens("acct1", p2.next_after.as_deref(), 2)
        .await
        .unwrap();
    assert_eq!(ids_of(&p3), ["01HZZZZZZZZZZZZZZZZZZZZZZ5"]);
    assert_eq!(p3.next_after, None);
    // A page exactly as long as what is left says there is no more.
    let all = store.list_api_tokens("acct1", None, 5).await.unwrap();
    assert_eq!(all.items.len(), 5);
    assert_eq!(all.next_after, None);
    let other = store.list_api_tokens("acct2", None, 10).await.unwrap();
    assert_eq!(ids_of(&other), ["01HZZZZZZZZZZZZZZZZZZZZZZ25"]);
}

async fn twenty_concurrent_identical_creates_give_one_success(store: Arc<dyn Store>) {
    account(&*store, "acct1").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.create_namespace(&ns("acct1", "race")).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok, 1);
}

async fn audit_log_lists_newest_first(store: Arc<dyn Store>) {
    for (i, action) in ["a", "b", "c"].iter().enumerate() {
        store
            .audit(&AuditEntry {
                id: format!("01J{i:023}"),
                account_id: "acct1".into(),
                actor: "t1".into(),
                action: action.to_string(),
                target: "x".into(),
                at: T + i as i64,
            })
            .await
            .unwrap();
    }
    let log = store.list_audit("acct1", 2).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["c", "b"]
    );
    assert!(store.list_audit("acct2", 10).await.unwrap().is_empty());
}

async fn issued_records_page_newest_first_and_show_revocations(store: Arc<dyn Store>) {
    let (ns, b) = setup(&*store).await;
    let other = broker_in(&*store, &ns, "other").await;
    let record = |jti: &str, client: &str, at: i64| IssuedCredential {
        jti: jti.into(),
        client_id: client.into(),
        kid: "k".into(),
        issued_at: at,
        expires_at: Some(at + 100),
    };
    // Two records share an issue time: the jti orders them.
    let records = vec![
        record("j1", "a", T),
        record("j2", "b", T + 1),
        record("j3", "a", T + 1),
        record("j4", "b", T + 2),
        record("j5", "a", T + 3),
    ];
    store.record_credentials(&b.id, &records).await.unwrap();
    store
        .record_credentials(&other.id, &[record("x1", "a", T + 9)])
        .await
        .unwrap();
    store
        .add_revocations(&b.id, &["j3".into()], 10, T)
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut before: Option<(i64, String)> = None;
    loop {
        let page = store
            .list_issued(
                &b.id,
                None,
                before.as_ref().map(|(a, j)| (*a, j.as_str())),
                2,
            )
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(
            page.items
                .iter()
                .map(|r| (r.credential.jti.clone(), r.revoked)),
        );
        match page.next_after {
            Some(c) => {
                let (at, jti) = c.split_once(':').unwrap();
                before = Some((at.parse().unwrap(), jti.to_string()));
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![
            ("j5".to_string(), false),
            ("j4".into(), false),
            ("j3".into(), true),
            ("j2".into(), false),
            ("j1".into(), false),
        ],
        "newest first, each once, another broker's left out"
    );
    let only_a = store.list_issued(&b.id, Some("a"), None, 10).await.unwrap();
    let jtis: Vec<&str> = only_a
        .items
        .iter()
        .map(|r| r.credential.jti.as_str())
        .collect();
    assert_eq!(jtis, vec!["j5", "j3", "j1"]);
    assert_eq!(only_a.next_after, None);
    assert_eq!(only_a.items[0].credential, record("j5", "a", T + 3));
    // Expired records are collected with their revocations once no broker can accept their
    // tokens: past `exp` plus the largest clock skew a broker accepts.
    store.collect_expired(T + 101).await.unwrap();
    let kept = store.list_issued(&b.id, None, None, 10).await.unwrap();
    assert_eq!(kept.items.len(), 5, "a broker may still take them");
    store
        .collect_expired(T + 101 + REVOCATION_GRACE_SECS)
        .await
        .unwrap();
    let left = store.list_issued(&b.id, None, None, 10).await.unwrap();
    let jtis: Vec<&str> = left
        .items
        .iter()
        .map(|r| r.credential.jti.as_str())
        .collect();
    assert_eq!(jtis, vec!["j5", "j4"]);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = crate::common::sqlite().await;
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(store)).await.expect("timed out");
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _guard) = crate::common::postgres().await;
                    tokio::time::timeout(std::time::Duration::from_secs(60), super::$name(store)).await.expect("timed out");
                }
            )*
        }
    };
}

conformance!(
    namespace_names_are_unique_across_accounts_ignoring_case,
    namespace_pages_follow_the_cursor,
    namespace_with_brokers_cannot_be_deleted,
    broker_names_are_unique_per_namespace,
    broker_changes_bump_the_version_and_are_announced,
    rotation_moves_next_to_current_and_current_to_retiring,
    retired_keys_leave_the_state_and_are_collected,
    hook_keys_are_apart_from_token_keys_and_given_once,
    revocations_are_bounded_and_expired_ones_collected,
    a_revocation_stays_in_the_state_until_exp_plus_the_largest_clock_skew,
    a_revocation_of_a_token_without_exp_goes_when_its_key_is_retired,
    deleted_broker_leaves_a_tombstone_and_is_announced,
    api_tokens_are_found_by_hash_and_scoped_to_their_account,
    api_token_pages_follow_the_id_cursor,
    twenty_concurrent_identical_creates_give_one_success,
    audit_log_lists_newest_first,
    issued_records_page_newest_first_and_show_revocations,
);
