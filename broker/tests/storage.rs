//! The durable store (`--data-dir`): retained messages and persistent sessions survive a
//! restart of the broker on the same directory; a store that cannot be written refuses
//! durable work with a clear reason code and recovers; a store that does not read back stops
//! the start unless `--storage-repair`; a deleted tenant's state goes.
//!
//! Each test starts the in-process broker on a scratch data directory, drives it with real
//! MQTT clients over TCP (rumqttc's `v5` module, and the raw client of `common` where a test
//! needs exact packets: an unacknowledged PUBLISH, a PUBREL held back), shuts it down
//! gracefully and starts it again on the same directory.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{RawClient, TestBroker, connect_v5, sub_opts};
use starling_broker::config::Config;
use starling_broker::storage::Faults;
use starling_codec::{
    ConnectProperties, Packet, PubComp, PubRec, PubRel, Publish, PublishProperties, QoS,
    ReasonCode, Will, WillProperties,
};
use tokio::net::TcpStream;

async fn timed<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

async fn broker_on(dir: &Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::with(move |c: &mut Config| c.data_dir = Some(dir)).await
}

/// A CONNECT that keeps its session for an hour; `clean` sets Clean Start.
fn persistent(id: &str, clean: bool) -> starling_codec::Connect {
    starling_codec::Connect {
        clean_start: clean,
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            ..Default::default()
        },
        ..connect_v5(id)
    }
}

fn retained(topic: &str, payload: &[u8], expiry: Option<u32>, id: u16) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: topic.to_string().into(),
        packet_id: Some(id),
        properties: PublishProperties {
            message_expiry_interval: expiry,
            ..Default::default()
        },
        payload: Bytes::copy_from_slice(payload),
    }
}

async fn puback(c: &mut RawClient<TcpStream>) -> ReasonCode {
    match c.recv().await {
        Packet::PubAck(a) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn retained_messages_survive_a_restart_with_what_is_left_of_their_expiry() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let b = broker_on(dir.path()).await;
        let mut p = b.client("ret-pub").await;
        for (i, (topic, payload, expiry)) in [
            ("ret/a", &b"kept"[..], Some(600)),
            ("ret/b", b"forever", None),
            ("ret/c", b"replaced", None),
            ("ret/c", b"replacement", None),
            ("ret/d", b"cleared", None),
            ("ret/d", b"", None),
        ]
        .into_iter()
        .enumerate()
        {
            p.send(Packet::Publish(retained(
                topic,
                payload,
                expiry,
                i as u16 + 1,
            )))
            .await;
            assert_eq!(puback(&mut p).await, ReasonCode::SUCCESS);
        }
        b.broker.shutdown().await;

        let b = broker_on(dir.path()).await;
        assert!(b.broker.is_ready(), "ready once restored");
        let mut s = b.client("ret-sub").await;
        s.subscribe("ret/#", sub_opts(QoS::AtLeastOnce)).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = s.recv_publish().await;
            assert!(m.retain);
            got.push((
                m.topic.as_str().to_string(),
                m.payload.to_vec(),
                m.properties.message_expiry_interval,
            ));
        }
        got.sort();
        assert_eq!(got[0].0, "ret/a");
        assert_eq!(got[0].1, b"kept");
        let left = got[0].2.expect("the expiry is still running");
        assert!((1..=600).contains(&left), "{left}");
        assert_eq!(
            got[1..],
            [
                ("ret/b".to_string(), b"forever".to_vec(), None),
                ("ret/c".to_string(), b"replacement".to_vec(), None),
            ]
        );
        s.expect_silence(Duration::from_millis(300)).await;
        b.broker.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_persistent_session_comes_back_with_its_subscriptions_and_queue() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let b = broker_on(dir.path()).await;
        let mut s = b.raw().await;
        assert!(!s.connect(persistent("sess", true)).await.session_present);
        s.subscribe_with("q/#", sub_opts(QoS::AtLeastOnce), Some(7))
            .await;
        s.disconnect().await;
        // Queued while the subscriber is offline, each acknowledged once on disk.
        let mut p = b.client("sess-pub").await;
        for i in 0..5u8 {
            assert_eq!(
                p.publish("q/x", QoS::AtLeastOnce, &[i]).await,
                Some(ReasonCode::SUCCESS)
            );
        }
        // A clean session and QoS 0 are not kept.
        let mut clean = b.client("clean").await;
        clean.subscribe("q/#", sub_opts(QoS::AtLeastOnce)).await;
        p.publish("q/zero", QoS::AtMostOnce, b"0").await;
        b.broker.shutdown().await;

        let b = broker_on(dir.path()).await;
        let mut s = b.raw().await;
        let ack = s.connect(persistent("sess", false)).await;
        assert_eq!(ack.reason, ReasonCode::SUCCESS);
        assert!(ack.session_present, "the session was restored");
        for i in 0..5u8 {
            let m = s.recv_publish().await;
            assert_eq!((m.topic.as_str(), &m.payload[..]), ("q/x", &[i][..]));
            assert_eq!(m.properties.subscription_identifiers, vec![7]);
            s.send(Packet::PubAck(starling_codec::PubAck {
                packet_id: m.packet_id.unwrap(),
                reason: ReasonCode::SUCCESS,
                properties: Default::default(),
            }))
            .await;
        }
        // The subscription itself came back: a new message is routed to it.
        let mut p = b.client("sess-pub").await;
        p.publish("q/y", QoS::AtLeastOnce, b"new").await;
        let m = s.recv_publish().await;
        assert_eq!(&m.payload[..], b"new");
        let mut clean = b.raw().await;
        assert!(
            !clean
                .connect(persistent("clean", false))
                .await
                .session_present,
            "a clean session is not kept"
        );
        b.broker.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn in_flight_messages_are_resent_with_dup_and_qos2_receipts_await_their_pubrel() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let b = broker_on(dir.path()).await;
        let mut s = b.raw().await;
        s.connect(persistent("inflight", true)).await;
        s.subscribe("f/#", sub_opts(QoS::ExactlyOnce)).await;
        let mut p = b.client("inflight-pub").await;
        p.publish("f/1", QoS::AtLeastOnce, b"one").await;
        p.publish("f/2", QoS::ExactlyOnce, b"two").await;
        // Received and not acknowledged.
        let first = s.recv_publish().await;
        let second = s.recv_publish().await;
        assert_eq!(&first.payload[..], b"one");
        assert_eq!(&second.payload[..], b"two");
        // Our own QoS 2 message: PUBREC, and the PUBREL held back.
        s.send(Packet::Publish(common::publish(
            "f/own",
            QoS::ExactlyOnce,
            b"own",
            Some(900),
        )))
        .await;
        // The broker delivers it to us too (we subscribe to f/#); skip that.
        let rec = loop {
            match s.recv().await {
                Packet::PubRec(r) => break r,
                Packet::Publish(_) => {}
                other => panic!("expected PUBREC, got {other:?}"),
            }
        };
        assert_eq!((rec.packet_id, rec.reason), (900, ReasonCode::SUCCESS));
        b.broker.shutdown().await;

        let b = broker_on(dir.path()).await;
        let mut s = b.raw().await;
        let ack = s.connect(persistent("inflight", false)).await;
        assert!(ack.session_present);
        let again1 = s.recv_publish().await;
        let again2 = s.recv_publish().await;
        for (again, before) in [(&again1, &first), (&again2, &second)] {
            assert!(again.dup, "a resent PUBLISH has DUP set");
            assert_eq!(again.packet_id, before.packet_id);
            assert_eq!(again.payload, before.payload);
            assert_eq!(again.qos, before.qos);
        }
        // The QoS 2 receipt is still owned: its PUBREL completes it.
        s.send(Packet::PubRel(PubRel {
            packet_id: 900,
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        let comp = loop {
            match s.recv().await {
                Packet::PubComp(c) => break c,
                Packet::Publish(_) => {}
                other => panic!("expected PUBCOMP, got {other:?}"),
            }
        };
        assert_eq!(
            comp,
            PubComp {
                packet_id: 900,
                reason: ReasonCode::SUCCESS,
                properties: Default::default(),
            }
        );
        // PUBREC for the QoS 2 delivery: the broker goes on with PUBREL.
        s.send(Packet::PubRec(PubRec {
            packet_id: second.packet_id.unwrap(),
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        let rel = loop {
            match s.recv().await {
                Packet::PubRel(r) => break r,
                Packet::Publish(_) => {}
                other => panic!("expected PUBREL, got {other:?}"),
            }
        };
        assert_eq!(rel.packet_id, second.packet_id.unwrap());
        b.broker.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_delayed_will_is_published_after_a_restart() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let b = broker_on(dir.path()).await;
        let mut dying = b.raw().await;
        let mut c = persistent("willing", true);
        c.will = Some(Will {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "w/gone".into(),
            payload: Bytes::from_static(b"bye"),
            properties: WillProperties {
                will_delay_interval: Some(2),
                ..Default::default()
            },
        });
        assert_eq!(dying.connect(c).await.reason, ReasonCode::SUCCESS);
        let mut watcher = b.raw().await;
        watcher.connect(persistent("watcher", true)).await;
        watcher.subscribe("w/#", sub_opts(QoS::AtLeastOnce)).await;
        // Gone without DISCONNECT: the will waits for its delay.
        drop(dying);
        b.broker.shutdown().await;

        let b = broker_on(dir.path()).await;
        let mut watcher = b.raw().await;
        assert!(
            watcher
                .connect(persistent("watcher", false))
                .await
                .session_present
        );
        let m = watcher.recv_publish().await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), ("w/gone", &b"bye"[..]));
        b.broker.shutdown().await;
    })
    .await
}

/// The store's writes fail through [`Faults`], the engine trait's switch: a full or failing
/// disk cannot be had on demand on every machine the tests run on.
#[tokio::test]
async fn a_store_that_cannot_be_written_refuses_durable_work_and_recovers() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let faults = Faults::default();
        let mut config = Config::default();
        config
            .listeners
            .push(starling_broker::config::ListenerConfig::new(
                starling_broker::config::ListenerKind::Mqtt,
                "127.0.0.1:0".parse().unwrap(),
            ));
        config.http.bind = "127.0.0.1:0".parse().unwrap();
        config.data_dir = Some(dir.path().to_path_buf());
        let broker =
            starling_broker::server::start_with_faults(config.clone(), Some(faults.clone()))
                .await
                .unwrap();
        let b = TestBroker { broker };
        let mut s = b.raw().await;
        s.connect(persistent("fault-sub", true)).await;
        s.subscribe("d/#", sub_opts(QoS::AtLeastOnce)).await;
        s.disconnect().await;
        let mut p = b.client("fault-pub").await;
        assert_eq!(
            p.publish("d/x", QoS::AtLeastOnce, b"before").await,
            Some(ReasonCode::SUCCESS)
        );

        faults.disk_full();
        assert_eq!(
            p.publish("d/x", QoS::AtLeastOnce, b"full").await,
            Some(ReasonCode::QUOTA_EXCEEDED)
        );
        assert_eq!(
            p.publish("d/x", QoS::ExactlyOnce, b"full").await,
            Some(ReasonCode::QUOTA_EXCEEDED)
        );
        let mut refused = b.raw().await;
        assert_eq!(
            refused
                .connect(persistent("new-session", true))
                .await
                .reason,
            ReasonCode::QUOTA_EXCEEDED,
            "a new persistent session is refused"
        );
        // QoS 0 never touches the disk.
        p.publish("d/x", QoS::AtMostOnce, b"zero").await;

        faults.io_error();
        // The writer retries the failed commit; once it fails with the I/O error, that is
        // the reason given.
        let mut reason = ReasonCode::QUOTA_EXCEEDED;
        for _ in 0..100 {
            reason = p.publish("d/x", QoS::AtLeastOnce, b"io").await.unwrap();
            if reason == ReasonCode::UNSPECIFIED_ERROR {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(reason, ReasonCode::UNSPECIFIED_ERROR);
        assert!(
            common::metric(
                &b.metrics().await,
                "starling_dropped_total{reason=\"storage_failed\"}"
            ) >= 3.0
        );

        faults.clear();
        let mut reason = ReasonCode::UNSPECIFIED_ERROR;
        for _ in 0..100 {
            reason = p.publish("d/x", QoS::AtLeastOnce, b"after").await.unwrap();
            if reason == ReasonCode::SUCCESS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(reason, ReasonCode::SUCCESS, "the store recovers");
        b.broker.shutdown().await;

        // What was acknowledged is there; what was refused is not.
        let b = broker_on(dir.path()).await;
        let mut s = b.raw().await;
        assert!(
            s.connect(persistent("fault-sub", false))
                .await
                .session_present
        );
        let first = s.recv_publish().await;
        assert_eq!(&first.payload[..], b"before");
        let mut rest = Vec::new();
        loop {
            let m = s.recv_publish().await;
            s.send(Packet::PubAck(starling_codec::PubAck {
                packet_id: m.packet_id.unwrap(),
                reason: ReasonCode::SUCCESS,
                properties: Default::default(),
            }))
            .await;
            if &m.payload[..] == b"after" {
                break;
            }
            rest.push(m.payload.to_vec());
        }
        // Only messages whose commit failed after they were queued (0x97 or 0x80, retried
        // and written later) may come before; none that was refused up front.
        assert!(rest.iter().all(|p| p == b"full" || p == b"io"), "{rest:?}");
        b.broker.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_corrupt_store_stops_the_start_unless_repair_is_asked() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let b = broker_on(dir.path()).await;
        let mut p = b.client("c-pub").await;
        p.send(Packet::Publish(retained("c/a", b"x", None, 1)))
            .await;
        assert_eq!(puback(&mut p).await, ReasonCode::SUCCESS);
        b.broker.shutdown().await;
        let file = dir.path().join("store").join("state.redb");
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::write(&file, vec![0xA5u8; len as usize]).unwrap();

        let mut config = Config::default();
        config
            .listeners
            .push(starling_broker::config::ListenerConfig::new(
                starling_broker::config::ListenerKind::Mqtt,
                "127.0.0.1:0".parse().unwrap(),
            ));
        config.http.bind = "127.0.0.1:0".parse().unwrap();
        config.data_dir = Some(dir.path().to_path_buf());
        let err = starling_broker::start(config.clone())
            .await
            .expect_err("a corrupt store stops the start")
            .to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("--storage-repair"), "{err}");

        // A truncated file too.
        std::fs::write(&file, b"").unwrap();
        let truncated = dir.path().join("store").join("state.redb");
        std::fs::write(&truncated, vec![0u8; 100]).unwrap();
        assert!(starling_broker::start(config.clone()).await.is_err());

        config.storage.repair = true;
        let broker = starling_broker::start(config).await.expect("repair starts");
        let aside: Vec<String> = std::fs::read_dir(dir.path().join("store"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("state.redb.broken-"))
            .collect();
        assert_eq!(aside.len(), 1, "the bad file is moved aside");
        broker.shutdown().await;
    })
    .await
}
