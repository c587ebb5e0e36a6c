//! A session never holds more than its current token allows: resuming with another token
//! re-checks what the session carries, and revocation, expiry and the retirement of the
//! signing key end the session (not only the connection), its will included.
//!
//! The tenant is fed through `Directory::apply`, the path the control plane's state feed,
//! the key files and `starling-dev` all take.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::tokens::{acl, now, with_password};
use common::*;
use starling_broker::auth::directory::TenantState;
use starling_broker::config::AuthMode;
use starling_codec::{
    Auth, AuthProperties, Connect, ConnectProperties, MqttString, Packet, ProtocolVersion, QoS,
    ReasonCode, Will, WillProperties,
};
use starling_token::{Jwks, SigningKey, TopicAcl};
use tokio::net::TcpStream;

macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(Duration::from_secs(60), $body)
            .await
            .expect("test timed out")
    };
}

const TENANT: &str = "acme";
const SESSIONS: &str = "starling_sessions";

/// A token broker with one tenant whose keys and revocations the test sets.
struct Fixture {
    b: TestBroker,
    keys: Vec<Arc<SigningKey>>,
    revoked: HashSet<String>,
}

async fn fixture() -> Fixture {
    fixture_with(None, vec![Arc::new(SigningKey::generate().unwrap())]).await
}

/// A broker on `data_dir` (durable sessions) whose tenant trusts `keys`.
async fn fixture_with(data_dir: Option<std::path::PathBuf>, keys: Vec<Arc<SigningKey>>) -> Fixture {
    let b = TestBroker::with(move |c| {
        c.auth.mode = AuthMode::Token;
        c.auth.clock_skew_secs = 0;
        c.embedded_tenants = true;
        c.data_dir = data_dir;
    })
    .await;
    let f = Fixture {
        b,
        keys,
        revoked: HashSet::new(),
    };
    f.apply();
    f
}

impl Fixture {
    fn apply(&self) {
        let state = TenantState {
            jwks: Jwks {
                keys: self.keys.iter().map(|k| k.public_jwk()).collect(),
            },
            revoked: self.revoked.clone(),
            hook: None,
            limits: Default::default(),
        };
        self.b.broker.directory.apply(TENANT, &state).unwrap();
    }

    fn revoke(&mut self, jti: &str) {
        self.revoked.insert(jti.to_string());
        self.apply();
    }

    /// A token signed by the tenant's newest key.
    fn token(&self, sub: &str, jti: &str, acl: TopicAcl, exp: Option<i64>) -> String {
        self.token_by(self.keys.last().unwrap(), sub, jti, acl, exp)
    }

    fn token_by(
        &self,
        key: &SigningKey,
        sub: &str,
        jti: &str,
        acl: TopicAcl,
        exp: Option<i64>,
    ) -> String {
        key.sign_claims(&starling_token::Claims {
            sub: sub.to_string(),
            jti: jti.to_string(),
            iat: now(),
            exp,
            nbf: None,
            topic_acl: acl,
        })
    }

    async fn connect(&self, connect: Connect) -> (RawClient<TcpStream>, starling_codec::ConnAck) {
        let mut c = if connect.protocol == ProtocolVersion::V5 {
            self.b.raw().await
        } else {
            self.b.raw_v3().await
        };
        let ack = c.connect(connect).await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}");
        (c, ack)
    }

    /// A connected client with its own token (`jti-{id}`) allowed everything.
    async fn client(&self, id: &str) -> RawClient<TcpStream> {
        let token = self.token(id, &format!("jti-{id}"), TopicAcl::All, None);
        self.connect(with_password(id, &token)).await.0
    }

    async fn sessions(&self) -> f64 {
        metric(&self.b.metrics().await, SESSIONS)
    }

    async fn wait_for_sessions(&self, n: f64) {
        wait_for_series(self.b.broker.http, SESSIONS, |v| v == n).await;
    }
}

/// A v5 CONNECT with `token`, a session that outlives the connection (`expiry` s) and Clean
/// Start as given.
fn persistent(id: &str, token: &str, expiry: u32, clean: bool) -> Connect {
    Connect {
        clean_start: clean,
        properties: ConnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
        ..with_password(id, token)
    }
}

fn will(topic: &str, delay: Option<u32>) -> Will {
    Will {
        qos: QoS::AtMostOnce,
        retain: false,
        topic: MqttString::from(topic.to_string()),
        payload: Bytes::from_static(b"gone"),
        properties: WillProperties {
            will_delay_interval: delay,
            ..Default::default()
        },
    }
}

/// Reads PUBLISHes until one on `marker`; returns the topics of those before it.
async fn topics_before(c: &mut RawClient<TcpStream>, marker: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        match c.recv().await {
            Packet::Publish(p) if p.topic.as_str() == marker => return before,
            Packet::Publish(p) => before.push(p.topic.as_str().to_string()),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// Publishes `marker` and asserts it is the first thing `watcher` receives: a will published
/// before it would arrive first.
async fn assert_no_will_before_marker(
    publisher: &mut RawClient<TcpStream>,
    watcher: &mut RawClient<TcpStream>,
) {
    publisher
        .publish("wills/marker", QoS::AtLeastOnce, b"m")
        .await;
    let p = watcher.recv_publish().await;
    assert_eq!(p.topic.as_str(), "wills/marker", "a will was published");
}

#[tokio::test]
async fn resuming_with_a_narrower_token_drops_what_the_new_token_may_not_read() {
    timed!(async {
        let f = fixture().await;
        let mut publisher = f.client("publisher").await;
        let wide = f.token(
            "reader",
            "j-wide",
            acl(&[], &["secret/#", "public/#"]),
            None,
        );
        let (mut c, _) = f.connect(persistent("reader", &wide, 3600, true)).await;
        c.subscribe("secret/#", sub_opts(QoS::AtLeastOnce)).await;
        c.subscribe("public/#", sub_opts(QoS::AtLeastOnce)).await;
        // One message in flight (received, never acknowledged), then the connection drops.
        publisher
            .publish("secret/inflight", QoS::AtLeastOnce, b"1")
            .await;
        assert_eq!(c.recv_publish().await.topic.as_str(), "secret/inflight");
        drop(c);
        // Two more wait in the session (queued, or in flight on the closing connection).
        publisher
            .publish("secret/queued", QoS::AtLeastOnce, b"2")
            .await;
        publisher
            .publish("public/queued", QoS::AtLeastOnce, b"3")
            .await;

        let narrow = f.token("reader", "j-narrow", acl(&[], &["public/#"]), None);
        let (mut c, ack) = f.connect(persistent("reader", &narrow, 3600, false)).await;
        assert!(ack.session_present);
        publisher
            .publish("secret/after", QoS::AtLeastOnce, b"4")
            .await;
        publisher
            .publish("public/after", QoS::AtLeastOnce, b"5")
            .await;
        let got = topics_before(&mut c, "public/after").await;
        assert_eq!(got, vec!["public/queued".to_string()], "received {got:?}");
        let dropped = metric(
            &f.b.metrics().await,
            "starling_dropped_total{reason=\"not_readable\"}",
        );
        assert_eq!(
            dropped, 2.0,
            "secret/inflight and secret/queued are counted"
        );
    })
}

#[tokio::test]
async fn resuming_a_3_1_1_session_with_a_narrower_token_drops_its_forbidden_subscription() {
    timed!(async {
        let f = fixture().await;
        let mut publisher = f.client("publisher").await;
        let wide = f.token("old", "j-wide", acl(&[], &["secret/#", "public/#"]), None);
        let v3 = |token: &str, clean| Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: clean,
            ..with_password("old", token)
        };
        let (mut c, _) = f.connect(v3(&wide, false)).await;
        c.subscribe("secret/#", sub_opts(QoS::AtLeastOnce)).await;
        c.subscribe("public/#", sub_opts(QoS::AtLeastOnce)).await;
        c.disconnect().await;
        f.wait_for_sessions(2.0).await;
        publisher.publish("secret/q", QoS::AtLeastOnce, b"1").await;

        let narrow = f.token("old", "j-narrow", acl(&[], &["public/#"]), None);
        let (mut c, ack) = f.connect(v3(&narrow, false)).await;
        assert!(ack.session_present);
        publisher.publish("secret/a", QoS::AtLeastOnce, b"2").await;
        publisher.publish("public/a", QoS::AtLeastOnce, b"3").await;
        let got = topics_before(&mut c, "public/a").await;
        assert!(got.is_empty(), "received {got:?}");
    })
}

#[tokio::test]
async fn revoking_a_token_ends_its_offline_session() {
    timed!(async {
        let mut f = fixture().await;
        let token = f.token("dev", "j-dev", TopicAcl::All, None);
        let (mut c, _) = f.connect(persistent("dev", &token, 3600, true)).await;
        c.subscribe("t/#", sub_opts(QoS::AtLeastOnce)).await;
        c.disconnect().await;
        f.wait_for_sessions(1.0).await;
        f.revoke("j-dev");
        f.wait_for_sessions(0.0).await;
        let fresh = f.token("dev", "j-dev-2", TopicAcl::All, None);
        let (_c, ack) = f.connect(persistent("dev", &fresh, 3600, false)).await;
        assert!(!ack.session_present, "the revoked token's session is gone");
    })
}

/// A persistent session read back from the store after a restart keeps the credential it was
/// served with: revoking that token, or retiring its key, ends the session although its client
/// has not connected since.
#[tokio::test]
async fn a_session_read_back_after_a_restart_still_ends_with_its_token_or_its_key() {
    timed!(async {
        let dir = tempfile::tempdir().unwrap();
        let old_key = Arc::new(SigningKey::generate().unwrap());
        let f = fixture_with(Some(dir.path().into()), vec![old_key.clone()]).await;
        let revoked = f.token("revoked", "j-revoked", TopicAcl::All, None);
        let retired = f.token("retired", "j-retired", TopicAcl::All, None);
        for (id, token) in [("revoked", &revoked), ("retired", &retired)] {
            let (mut c, _) = f.connect(persistent(id, token, 3600, true)).await;
            c.subscribe("t/#", sub_opts(QoS::AtLeastOnce)).await;
            c.disconnect().await;
        }
        f.wait_for_sessions(2.0).await;
        f.b.broker.shutdown().await;

        // Back on the same data directory: both sessions are restored.
        let mut f = fixture_with(Some(dir.path().into()), vec![old_key]).await;
        f.wait_for_sessions(2.0).await;
        f.revoke("j-revoked");
        f.wait_for_sessions(1.0).await;
        f.keys = vec![Arc::new(SigningKey::generate().unwrap())];
        f.apply();
        f.wait_for_sessions(0.0).await;
        let fresh = f.token("revoked", "j-fresh", TopicAcl::All, None);
        let (_c, ack) = f.connect(persistent("revoked", &fresh, 3600, false)).await;
        assert!(!ack.session_present, "the revoked token's session is gone");
        f.b.broker.shutdown().await;

        // Ended for good: a second restart does not bring them back.
        let f = fixture_with(Some(dir.path().into()), f.keys.clone()).await;
        let fresh = f.token("retired", "j-fresh-2", TopicAcl::All, None);
        let (_c, ack) = f.connect(persistent("retired", &fresh, 3600, false)).await;
        assert!(!ack.session_present, "the retired key's session is gone");
    })
}

#[tokio::test]
async fn a_revoked_client_back_with_a_narrower_token_gets_nothing_of_its_old_session() {
    timed!(async {
        let mut f = fixture().await;
        let mut publisher = f.client("publisher").await;
        let wide = f.token("dev", "j-wide", acl(&[], &["secret/#", "public/#"]), None);
        let (mut c, _) = f.connect(persistent("dev", &wide, 3600, true)).await;
        c.subscribe("secret/#", sub_opts(QoS::AtLeastOnce)).await;
        f.revoke("j-wide");
        c.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
        f.wait_for_sessions(1.0).await;
        publisher.publish("secret/x", QoS::AtLeastOnce, b"1").await;

        let narrow = f.token("dev", "j-narrow", acl(&[], &["public/#"]), None);
        let (mut c, ack) = f.connect(persistent("dev", &narrow, 3600, false)).await;
        assert!(!ack.session_present, "the revoked token's session is gone");
        c.subscribe("public/#", sub_opts(QoS::AtLeastOnce)).await;
        publisher.publish("secret/y", QoS::AtLeastOnce, b"2").await;
        publisher.publish("public/m", QoS::AtLeastOnce, b"3").await;
        let got = topics_before(&mut c, "public/m").await;
        assert!(got.is_empty(), "received {got:?}");
    })
}

#[tokio::test]
async fn an_offline_session_ends_when_its_token_expires() {
    timed!(async {
        let f = fixture().await;
        let exp = now() + 2;
        let token = f.token("short", "j-short", TopicAcl::All, Some(exp));
        let (mut c, _) = f.connect(persistent("short", &token, 3600, true)).await;
        c.subscribe("t/#", sub_opts(QoS::AtLeastOnce)).await;
        c.disconnect().await;
        assert_eq!(f.sessions().await, 1.0);
        f.wait_for_sessions(0.0).await;
        assert!(now() >= exp, "the session ended before its token expired");
    })
}

#[tokio::test]
async fn connack_lowers_the_session_expiry_to_what_the_token_has_left() {
    timed!(async {
        let f = fixture().await;
        let exp = now() + 100;
        let token = f.token("lowered", "j-lowered", TopicAcl::All, Some(exp));
        let (_c, ack) = f.connect(persistent("lowered", &token, 3600, true)).await;
        let told = ack
            .properties
            .session_expiry_interval
            .expect("the CONNACK says the lowered expiry");
        assert!((98..=100).contains(&told), "session expiry {told}");
        // What the token outlasts is granted as asked, and the CONNACK says nothing.
        let token = f.token("short-ask", "j-short-ask", TopicAcl::All, Some(exp));
        let (_c, ack) = f.connect(persistent("short-ask", &token, 10, true)).await;
        assert_eq!(ack.properties.session_expiry_interval, None);
        // A token without `exp` lowers nothing.
        let token = f.token("no-exp", "j-no-exp", TopicAcl::All, None);
        let (_c, ack) = f.connect(persistent("no-exp", &token, 3600, true)).await;
        assert_eq!(ack.properties.session_expiry_interval, None);
    })
}

#[tokio::test]
async fn a_key_that_leaves_the_key_set_disconnects_and_ends_the_sessions_it_signed() {
    timed!(async {
        let mut f = fixture().await;
        let old = f.keys[0].clone();
        f.keys.push(Arc::new(SigningKey::generate().unwrap()));
        f.apply();
        let mut publisher = f.client("publisher").await;
        // A connected and an offline session signed by the old key, one by the new key.
        let t = f.token_by(&old, "live", "j-live", TopicAcl::All, None);
        let (mut live, _) = f.connect(persistent("live", &t, 3600, true)).await;
        live.subscribe("k/#", sub_opts(QoS::AtMostOnce)).await;
        let t = f.token_by(&old, "away", "j-away", TopicAcl::All, None);
        let (mut away, _) = f.connect(persistent("away", &t, 3600, true)).await;
        away.subscribe("k/#", sub_opts(QoS::AtLeastOnce)).await;
        away.disconnect().await;
        let (mut fresh, _) = f
            .connect(persistent(
                "fresh",
                &f.token("fresh", "j-fresh", TopicAcl::All, None),
                3600,
                true,
            ))
            .await;
        fresh.subscribe("k/#", sub_opts(QoS::AtMostOnce)).await;
        f.wait_for_sessions(4.0).await;

        // Rotation with retire_after=0: the old key leaves the set.
        f.keys.remove(0);
        f.apply();
        live.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
        f.wait_for_sessions(2.0).await;
        publisher.publish("k/x", QoS::AtMostOnce, b"x").await;
        assert_eq!(fresh.recv_publish().await.topic.as_str(), "k/x");
    })
}

#[tokio::test]
async fn a_revocation_while_the_broker_is_writing_never_publishes_the_will() {
    timed!(async {
        let mut f = fixture().await;
        let mut publisher = f.client("publisher").await;
        let mut watcher = f.client("watcher").await;
        watcher
            .subscribe("wills/#", sub_opts(QoS::AtMostOnce))
            .await;
        let token = f.token("victim", "j-victim", TopicAcl::All, None);
        let (mut victim, _) = f
            .connect(Connect {
                will: Some(will("wills/victim", None)),
                ..with_password("victim", &token)
            })
            .await;
        victim.subscribe("flood/#", sub_opts(QoS::AtMostOnce)).await;
        // The victim stops reading; far more than the socket buffers hold is sent to it, so
        // the broker is blocked writing to it when the revocation comes.
        let payload = vec![0x5a; 64 * 1024];
        for _ in 0..400 {
            publisher
                .publish("flood/x", QoS::AtMostOnce, &payload)
                .await;
        }
        publisher.publish("sync", QoS::AtLeastOnce, b"").await;
        f.revoke("j-victim");
        f.wait_for_sessions(2.0).await;
        assert_no_will_before_marker(&mut publisher, &mut watcher).await;
        drop(victim);
    })
}

#[tokio::test]
async fn reauthentication_with_a_token_that_forbids_the_will_topic_discards_the_will() {
    timed!(async {
        let f = fixture().await;
        let mut publisher = f.client("publisher").await;
        let mut watcher = f.client("watcher").await;
        watcher
            .subscribe("wills/#", sub_opts(QoS::AtMostOnce))
            .await;
        let first = f.token("ra", "j-first", acl(&["wills/#", "x"], &["x"]), None);
        let (mut c, _) = f
            .connect(Connect {
                will: Some(will("wills/ra", None)),
                properties: ConnectProperties {
                    authentication_method: Some("starling-jwt".into()),
                    authentication_data: Some(Bytes::from(first)),
                    ..Default::default()
                },
                ..starling_codec::Connect {
                    username: None,
                    password: None,
                    ..connect_v5("ra")
                }
            })
            .await;
        let second = f.token("ra", "j-second", acl(&["x"], &["x"]), None);
        c.send(Packet::Auth(Auth {
            reason: ReasonCode::RE_AUTHENTICATE,
            properties: AuthProperties {
                authentication_method: Some("starling-jwt".into()),
                authentication_data: Some(Bytes::from(second)),
                ..Default::default()
            },
        }))
        .await;
        match c.recv().await {
            Packet::Auth(a) => assert_eq!(a.reason, ReasonCode::SUCCESS),
            other => panic!("expected AUTH success, got {other:?}"),
        }
        // An abrupt close would publish the will, but the new token may not publish there.
        drop(c);
        f.wait_for_sessions(2.0).await;
        assert_no_will_before_marker(&mut publisher, &mut watcher).await;
    })
}

#[tokio::test]
async fn revocation_discards_a_delayed_will_with_the_session() {
    timed!(async {
        let mut f = fixture().await;
        let mut publisher = f.client("publisher").await;
        let mut watcher = f.client("watcher").await;
        watcher
            .subscribe("wills/#", sub_opts(QoS::AtMostOnce))
            .await;
        let token = f.token("late", "j-late", TopicAcl::All, None);
        let (c, _) = f
            .connect(Connect {
                will: Some(will("wills/late", Some(3600))),
                ..persistent("late", &token, 3600, true)
            })
            .await;
        // An abrupt close: the will waits for its delay in the offline session.
        drop(c);
        f.wait_for_sessions(3.0).await;
        f.revoke("j-late");
        // The session ends now; a session that ends publishes its pending will
        // [MQTT-3.1.2-8], but not one ended by revocation.
        f.wait_for_sessions(2.0).await;
        assert_no_will_before_marker(&mut publisher, &mut watcher).await;
    })
}
