//! Replicas of one broker joined through a real `nats-server` on loopback (`[cluster]`).
//!
//! Each test starts its own `nats-server` (Debian's package, found on PATH or in /usr/sbin) on
//! a port of its choosing and two brokers in this process, each with its own replica id. When
//! the binary is absent the tests print why and pass without running; the cluster tier
//! (`scripts/test cluster`) installs it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestBroker, WAIT, sub_opts};
use starling_codec::{Packet, PubAck, PubRec, PubRel, Publish, QoS, ReasonCode};
use tokio::net::TcpStream;

type Raw = common::RawClient<TcpStream>;

fn nats_server_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A `nats-server` process on a loopback port it picks itself, with JetStream in a directory
/// of its own unless started without; killed when dropped.
struct Nats {
    child: Child,
    url: String,
    _store: Option<tempfile::TempDir>,
}

impl Nats {
    fn start() -> Option<Nats> {
        Self::start_on("-1")
    }

    /// On `port` ("-1": one the server picks), with JetStream (a fresh store: what an earlier
    /// server on the port kept is gone).
    fn start_on(port: &str) -> Option<Nats> {
        Self::launch(port, true, None)
    }

    /// Core NATS only: no JetStream.
    fn start_without_jetstream() -> Option<Nats> {
        Self::launch("-1", false, None)
    }

    /// With JetStream and the configuration file `config` (its settings under the ones of the
    /// command line: address, port, JetStream store).
    fn start_with_config(config: &std::path::Path) -> Option<Nats> {
        Self::launch("-1", true, Some(config))
    }

    fn launch(port: &str, jetstream: bool, config: Option<&std::path::Path>) -> Option<Nats> {
        let Some(bin) = nats_server_binary() else {
            println!("skipped: nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        let store = jetstream.then(|| tempfile::tempdir().expect("a store directory"));
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", port, "-m", "0"]
            .map(str::to_owned)
            .to_vec();
        if let Some(dir) = &store {
            args.extend(["-js".to_owned(), "-sd".to_owned()]);
            args.push(dir.path().display().to_string());
        }
        if let Some(config) = config {
            args.extend(["-c".to_owned(), config.display().to_string()]);
        }
        let mut child = Command::new(bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("nats-server said where it listens")
                .expect("nats-server log");
            if let Some(at) = line.find("Listening for client connections on ") {
                let addr = line[at + "Listening for client connections on ".len()..].trim();
                break format!("nats://{addr}");
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Some(Nats {
            child,
            url,
            _store: store,
        })
    }
}

impl Nats {
    fn port(&self) -> String {
        self.url.rsplit(':').next().unwrap().to_owned()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn replica(nats: &Nats, id: &str) -> TestBroker {
    let url = nats.url.clone();
    let id = id.to_owned();
    TestBroker::with(move |c| {
        c.cluster.nats = vec![url];
        c.cluster.replica_id = Some(id);
    })
    .await
}

/// Replica `id`, once `/readyz` answers 200.
async fn ready_replica(nats: &Nats, id: &str) -> TestBroker {
    let broker = replica(nats, id).await;
    await_readyz(&broker, 200).await;
    broker
}

/// A client `id` of `broker` with the subscriptions `filters`, in that order.
async fn subscriber(broker: &TestBroker, id: &str, filters: &[(&str, QoS)]) -> Raw {
    let mut c = broker.client(id).await;
    for &(filter, qos) in filters {
        c.subscribe(filter, sub_opts(qos)).await;
    }
    c
}

/// Publishes on `c` and asserts the publication was accepted.
async fn publish_ok(c: &mut Raw, topic: &str, qos: QoS, payload: &[u8]) {
    assert_eq!(
        c.publish(topic, qos, payload).await,
        Some(ReasonCode::SUCCESS),
        "{topic}"
    );
}

async fn puback(c: &mut Raw, packet_id: u16) {
    c.send(Packet::PubAck(PubAck {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    }))
    .await
}

async fn pubrec(c: &mut Raw, packet_id: u16) {
    c.send(Packet::PubRec(PubRec {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    }))
    .await
}

async fn pubcomp(c: &mut Raw, packet_id: u16) {
    c.send(Packet::PubComp(starling_codec::PubComp {
        packet_id,
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    }))
    .await
}

/// The next PUBLISH, acknowledged (QoS 1: PUBACK; QoS 2: PUBREC), answering the PUBRELs
/// that arrive before it with PUBCOMP.
async fn next(c: &mut Raw) -> Publish {
    loop {
        match c.recv().await {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => puback(c, p.packet_id.unwrap()).await,
                    QoS::ExactlyOnce => pubrec(c, p.packet_id.unwrap()).await,
                }
                return p;
            }
            Packet::PubRel(PubRel { packet_id, .. }) => pubcomp(c, packet_id).await,
            other => panic!("expected PUBLISH or PUBREL, got {other:?}"),
        }
    }
}

/// Publishes probes on `from` until `to` (subscribed to `probe/#`) gets one: the replicas see
/// each other's messages from then on (later probes are skipped by [`next_not_probe`]).
async fn await_link(from: &mut Raw, to: &mut Raw) {
    tokio::time::timeout(WAIT, async {
        loop {
            from.publish("probe/x", QoS::AtMostOnce, b"p").await;
            if let Ok(p) = tokio::time::timeout(Duration::from_millis(50), to.recv()).await {
                match p {
                    Packet::Publish(p) if p.topic.as_str() == "probe/x" => return,
                    other => panic!("expected a probe, got {other:?}"),
                }
            }
        }
    })
    .await
    .expect("the replicas reach each other through NATS");
}

/// Publishes QoS 1 probes on `c` until one is acknowledged with success: the tenant's
/// JetStream stream (set up in the background when the replica starts) takes messages.
async fn await_stream(c: &mut Raw) {
    tokio::time::timeout(WAIT, async {
        while c.publish("probe/stream", QoS::AtLeastOnce, b"s").await != Some(ReasonCode::SUCCESS) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the tenant's stream is set up");
}

/// Waits for replicas `a` and `b` to be ready, then checks that a QoS 0 and a QoS 1 message
/// `payload` on `t/x` from a client of `a` reach a subscriber of `b` (to `t/#`); returns both
/// clients.
async fn carries_across(a: &TestBroker, b: &TestBroker, payload: &[u8]) -> (Raw, Raw) {
    await_readyz(a, 200).await;
    await_readyz(b, 200).await;
    let mut on_b = subscriber(
        b,
        "sub-b",
        &[("t/#", QoS::AtLeastOnce), ("probe/#", QoS::AtMostOnce)],
    )
    .await;
    let mut publisher = a.client("pub-a").await;
    await_link(&mut publisher, &mut on_b).await;
    await_stream(&mut publisher).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let ack = publisher.publish("t/x", qos, payload).await;
        assert!(ack.is_none_or(|r| r == ReasonCode::SUCCESS), "{ack:?}");
        let p = next_not_probe(&mut on_b).await;
        assert_eq!((p.qos, &p.payload[..]), (qos, payload));
    }
    (publisher, on_b)
}

/// Reads deliveries, skipping late probes, until one on another topic.
async fn next_not_probe(c: &mut Raw) -> Publish {
    loop {
        let p = next(c).await;
        if !p.topic.as_str().starts_with("probe/") {
            return p;
        }
    }
}

#[tokio::test]
async fn messages_cross_replicas_in_order_once_at_each_qos() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = replica(&nats, "a").await;
        let b = replica(&nats, "b").await;
        let mut on_b = subscriber(
            &b,
            "sub-b",
            &[("t/#", QoS::ExactlyOnce), ("probe/#", QoS::AtMostOnce)],
        )
        .await;
        let mut on_a = subscriber(&a, "sub-a", &[("t/#", QoS::ExactlyOnce)]).await;
        let mut publisher = a.client("pub-a").await;
        await_link(&mut publisher, &mut on_b).await;
        await_stream(&mut publisher).await;
        const N: usize = 50;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let topic = format!("t/q{}", qos as u8);
            for i in 0..N {
                let ack = publisher
                    .publish(&topic, qos, i.to_string().as_bytes())
                    .await;
                assert!(ack.is_none_or(|r| r == ReasonCode::SUCCESS), "{ack:?}");
            }
            for (who, c) in [("replica b", &mut on_b), ("replica a", &mut on_a)] {
                for i in 0..N {
                    let p = next_not_probe(c).await;
                    assert_eq!(p.topic.as_str(), topic, "{who}");
                    assert_eq!(p.qos, qos, "{who}");
                    assert_eq!(&p.payload[..], i.to_string().as_bytes(), "{who}: in order");
                }
            }
        }
        // Nothing more (the last PUBRELs aside): the publisher's own replica did not route its
        // messages twice.
        for c in [&mut on_a, &mut on_b] {
            while let Ok(p) = tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
                match p {
                    Packet::PubRel(r) => pubcomp(c, r.packet_id).await,
                    Packet::Publish(p) if p.topic.as_str().starts_with("probe/") => {}
                    other => panic!("expected nothing more, got {other:?}"),
                }
            }
        }
        let m = a.metrics().await;
        assert!(
            common::metric(&m, "starling_cluster_sent_total") >= (3 * N) as f64,
            "{m}"
        );
        let m = b.metrics().await;
        assert!(
            common::metric(&m, "starling_cluster_received_total") >= (3 * N) as f64,
            "{m}"
        );
    })
    .await
    .expect("within a minute");
}

#[tokio::test]
async fn escaped_topics_properties_and_retained_cross_replicas() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = replica(&nats, "a").await;
        let b = replica(&nats, "b").await;
        let mut on_b = subscriber(
            &b,
            "watch-b",
            &[("probe/#", QoS::AtMostOnce), ("odd/#", QoS::AtLeastOnce)],
        )
        .await;
        let mut publisher = a.client("pub-a").await;
        await_link(&mut publisher, &mut on_b).await;
        await_stream(&mut publisher).await;

        // A topic with every character NATS treats specially, and properties.
        let topic = "odd/a.b/*/>/ /~/$x//é";
        let mut p = common::publish(topic, QoS::AtLeastOnce, b"payload", Some(7));
        p.properties.content_type = Some("text/plain".to_owned().into());
        p.properties.user_properties = vec![("k".to_owned().into(), "v".to_owned().into())];
        p.properties.message_expiry_interval = Some(3600);
        publisher.send(Packet::Publish(p)).await;
        assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
        let got = next_not_probe(&mut on_b).await;
        assert_eq!(got.topic.as_str(), topic);
        assert_eq!(&got.payload[..], b"payload");
        assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
        assert_eq!(got.properties.user_properties.len(), 1);
        let left = got.properties.message_expiry_interval.expect("expiry kept");
        assert!((3500..=3600).contains(&left), "{left}");

        // A retained message published on a is kept on b.
        let mut r = common::publish("odd/retained", QoS::AtLeastOnce, b"kept", Some(8));
        r.retain = true;
        publisher.send(Packet::Publish(r)).await;
        assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
        assert_eq!(&next_not_probe(&mut on_b).await.payload[..], b"kept");
        // Once b has read the tenant's retained messages from JetStream (it is ready).
        await_readyz(&b, 200).await;
        let mut late = subscriber(&b, "late-b", &[("odd/retained", QoS::AtLeastOnce)]).await;
        let p = next(&mut late).await;
        assert!(p.retain && &p.payload[..] == b"kept", "{p:?}");
    })
    .await
    .expect("within a minute");
}

/// Waits until `/readyz` answers `status`.
async fn await_readyz(broker: &TestBroker, status: u16) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if common::http_get(broker.broker.http, "/readyz").await.0 == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("/readyz never answered {status}"));
}

#[tokio::test]
async fn losing_nats_refuses_durable_publications_and_readiness_until_it_returns() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let a = ready_replica(&nats, "a").await;
        let mut publisher = a.client("pub").await;
        await_stream(&mut publisher).await;
        let port = nats.port();
        drop(nats);
        await_readyz(&a, 503).await;
        assert_eq!(
            publisher.publish("x", QoS::AtLeastOnce, b"2").await,
            Some(ReasonCode::UNSPECIFIED_ERROR),
            "a QoS 1 message that cannot reach the other replicas is refused"
        );
        assert_eq!(
            publisher.publish("x", QoS::ExactlyOnce, b"3").await,
            Some(ReasonCode::UNSPECIFIED_ERROR)
        );
        // A server that lost JetStream's state: the replica sets the stream up again.
        let _back = Nats::start_on(&port).expect("nats-server restarts");
        await_readyz(&a, 200).await;
        await_stream(&mut publisher).await;
    })
    .await
    .expect("within 90 seconds");
}

#[tokio::test]
async fn a_second_connection_on_another_replica_takes_the_client_id_over_with_0x8e() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = replica(&nats, "a").await;
        let b = replica(&nats, "b").await;
        let mut watch = subscriber(&b, "watch", &[("probe/#", QoS::AtMostOnce)]).await;
        let mut first = a.client("device-1").await;
        await_link(&mut first, &mut watch).await;
        let mut second = b.client("device-1").await;
        first
            .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
            .await;
        // The newer connection stays.
        second
            .subscribe("still/here", sub_opts(QoS::AtMostOnce))
            .await;
        // A connection with another client id on a is left alone.
        let mut other = subscriber(&a, "device-2", &[("probe/#", QoS::AtMostOnce)]).await;
        let mut from_b = b.client("pub-b").await;
        await_link(&mut from_b, &mut other).await;
    })
    .await
    .expect("within a minute");
}

#[tokio::test]
async fn a_shared_group_with_members_on_two_replicas_gets_each_message_once() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = replica(&nats, "a").await;
        let b = replica(&nats, "b").await;
        let mut on_a = subscriber(&a, "member-a", &[("$share/g/s/#", QoS::AtLeastOnce)]).await;
        let mut on_b = subscriber(&b, "member-b", &[("$share/g/s/#", QoS::AtLeastOnce)]).await;
        let mut publisher = a.client("pub-a").await;
        await_stream(&mut publisher).await;
        // Both replicas have joined the group's queue group once each member got a probe.
        let (mut seen_a, mut seen_b) = (false, false);
        while !(seen_a && seen_b) {
            publisher.publish("s/probe", QoS::AtMostOnce, b"p").await;
            for (seen, c) in [(&mut seen_a, &mut on_a), (&mut seen_b, &mut on_b)] {
                if let Ok(p) = tokio::time::timeout(Duration::from_millis(20), next(c)).await {
                    assert_eq!(p.topic.as_str(), "s/probe");
                    *seen = true;
                }
            }
        }
        const N: usize = 100;
        for i in 0..N {
            publisher
                .publish("s/data", QoS::AtLeastOnce, i.to_string().as_bytes())
                .await;
        }
        // One task per member; a read is given up (never while acknowledging) only to see
        // whether the other member has received the rest.
        let total = Arc::new(AtomicUsize::new(0));
        let collect = |mut c: Raw, total: Arc<AtomicUsize>| {
            tokio::spawn(async move {
                let mut payloads = Vec::new();
                while total.load(Ordering::SeqCst) < N {
                    let Ok(p) = tokio::time::timeout(Duration::from_millis(50), c.recv()).await
                    else {
                        continue;
                    };
                    let Packet::Publish(p) = p else {
                        panic!("expected PUBLISH, got {p:?}")
                    };
                    if p.qos == QoS::AtLeastOnce {
                        puback(&mut c, p.packet_id.unwrap()).await;
                    }
                    if p.topic.as_str() == "s/data" {
                        payloads.push(
                            std::str::from_utf8(&p.payload)
                                .unwrap()
                                .parse::<usize>()
                                .unwrap(),
                        );
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                }
                (c, payloads)
            })
        };
        let task_a = collect(on_a, total.clone());
        let task_b = collect(on_b, total.clone());
        let (mut on_a, from_a) = task_a.await.unwrap();
        let (mut on_b, from_b) = task_b.await.unwrap();
        let mut got = vec![0u32; N];
        for &i in from_a.iter().chain(&from_b) {
            got[i] += 1;
        }
        let (n_a, n_b) = (from_a.len(), from_b.len());
        assert!(got.iter().all(|&n| n == 1), "each message once: {got:?}");
        assert!(
            n_a > 0 && n_b > 0,
            "both replicas' members got some: {n_a} and {n_b}"
        );
        for c in [&mut on_a, &mut on_b] {
            while let Ok(p) = tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
                match p {
                    Packet::Publish(p) if p.topic.as_str() == "s/probe" => {}
                    other => panic!("expected nothing more, got {other:?}"),
                }
            }
        }
    })
    .await
    .expect("within a minute");
}

/// The reason code and reason string of the acknowledgement of one QoS 1 PUBLISH.
async fn puback_of(c: &mut Raw, topic: &str, payload: &[u8], id: u16) -> (ReasonCode, String) {
    c.send(Packet::Publish(common::publish(
        topic,
        QoS::AtLeastOnce,
        payload,
        Some(id),
    )))
    .await;
    match c.recv().await {
        Packet::PubAck(a) => (
            a.reason,
            a.properties
                .reason_string
                .map(|s| s.to_string())
                .unwrap_or_default(),
        ),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_qos_1_or_2_message_is_acknowledged_once_the_tenants_stream_holds_it() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = replica(&nats, "a").await;
        let js = async_nats::jetstream::new(
            async_nats::connect(nats.url.as_str())
                .await
                .expect("a NATS client"),
        );
        let name = starling_broker::cluster::link::stream_name("default");
        let mut publisher = a.client("pub").await;
        // Ready means the tenant's stream is set up: QoS 1 is taken from then on.
        await_readyz(&a, 200).await;
        let (reason, why) = puback_of(&mut publisher, "d/first", b"f", 1).await;
        assert_eq!(reason, ReasonCode::SUCCESS, "{why}");
        let mut stream = js.get_stream(&name).await.expect("the tenant's stream");
        let config = &stream.cached_info().config;
        assert_eq!(
            config.subjects,
            ["starling.default.dmsg.>", "starling.default.dsys.>"]
        );
        assert_eq!(config.num_replicas, 1, "one NATS server: one copy");
        assert_eq!(config.max_age, Duration::from_secs(86_400));
        assert_eq!(config.max_bytes, 1 << 30);
        for i in 0..20u16 {
            let payload = format!("m{i}");
            let (qos, topic) = if i % 2 == 0 {
                (QoS::AtLeastOnce, "d/one")
            } else {
                (QoS::ExactlyOnce, "$d/two")
            };
            publish_ok(&mut publisher, topic, qos, payload.as_bytes()).await;
            // Acknowledged: the stream has it, as the PUBLISH packet that carries it.
            let last = stream
                .get_last_raw_message_by_subject(
                    &starling_broker::cluster::subject::durable_topic_to_subject("default", topic),
                )
                .await
                .expect("the message is in the stream");
            assert!(
                last.payload.ends_with(payload.as_bytes()),
                "{:?}",
                last.payload
            );
        }
        // QoS 0 does not load JetStream.
        publisher.publish("d/zero", QoS::AtMostOnce, b"0").await;
        publish_ok(&mut publisher, "d/one", QoS::AtLeastOnce, b"after").await;
        let info = stream.info().await.expect("stream info");
        // The first, the 20 and the last; no QoS 0.
        assert_eq!(info.state.messages, 22);
    })
    .await
    .expect("within a minute");
}

#[tokio::test]
async fn without_jetstream_qos_1_and_2_are_refused_with_a_reason_and_qos_0_still_flows() {
    let Some(nats) = Nats::start_without_jetstream() else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = replica(&nats, "a").await;
        let b = replica(&nats, "b").await;
        // Not ready: QoS 1 and 2 publications would be refused.
        assert_eq!(common::http_get(a.broker.http, "/readyz").await.0, 503);
        let mut on_b = subscriber(
            &b,
            "sub-b",
            &[("probe/#", QoS::AtMostOnce), ("j/#", QoS::AtLeastOnce)],
        )
        .await;
        let mut publisher = a.client("pub-a").await;
        await_link(&mut publisher, &mut on_b).await;
        let (reason, why) = puback_of(&mut publisher, "j/1", b"1", 1).await;
        assert_eq!(reason, ReasonCode::UNSPECIFIED_ERROR);
        assert_eq!(why, "the tenant's JetStream stream is not ready");
        assert_eq!(common::http_get(a.broker.http, "/readyz").await.0, 503);
        assert_eq!(
            publisher.publish("j/2", QoS::ExactlyOnce, b"2").await,
            Some(ReasonCode::UNSPECIFIED_ERROR)
        );
        publisher.publish("j/0", QoS::AtMostOnce, b"0").await;
        let p = next_not_probe(&mut on_b).await;
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("j/0", &b"0"[..]),
            "the refused messages reached no one; QoS 0 did"
        );
    })
    .await
    .expect("within a minute");
}

/// Publishes a retained message and returns the acknowledgement's reason (QoS 1).
async fn publish_retained(
    c: &mut Raw,
    topic: &str,
    payload: &[u8],
    expiry: Option<u32>,
) -> ReasonCode {
    let mut p = common::publish(topic, QoS::AtLeastOnce, payload, Some(c.next_id()));
    p.retain = true;
    p.properties.message_expiry_interval = expiry;
    c.send(Packet::Publish(p)).await;
    match c.recv().await {
        Packet::PubAck(a) => a.reason,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// The retained message a new subscription to `topic` on `broker` gets now, if one comes
/// within a short while (presence is awaited by calling this again).
async fn retained_now(broker: &TestBroker, id: &str, topic: &str) -> Option<Publish> {
    let mut c = broker.client(id).await;
    c.subscribe(topic, sub_opts(QoS::AtLeastOnce)).await;
    match tokio::time::timeout(Duration::from_millis(300), c.recv()).await {
        Ok(Packet::Publish(p)) => {
            assert!(p.retain, "{p:?}");
            Some(p)
        }
        Ok(other) => panic!("expected a retained PUBLISH, got {other:?}"),
        Err(_) => None,
    }
}

/// Waits until a new subscription to `topic` on `broker` gets `payload` (`None`: nothing).
async fn await_retained(broker: &TestBroker, topic: &str, payload: Option<&[u8]>) {
    tokio::time::timeout(WAIT, async {
        loop {
            let got = retained_now(broker, "reader", topic).await;
            if got.as_ref().map(|p| &p.payload[..]) == payload {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{topic} never held {payload:?}"));
}

#[tokio::test]
async fn retained_messages_are_served_by_a_replica_started_later_and_after_every_replica_restarted()
{
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let a = ready_replica(&nats, "a").await;
        let mut publisher = a.client("pub-a").await;
        let topics = ["r/1", "r/a.b/*/>/ /é", "$app/r", "r//"];
        for (i, topic) in topics.iter().enumerate() {
            let payload = format!("retained {i}");
            assert_eq!(
                publish_retained(&mut publisher, topic, payload.as_bytes(), None).await,
                ReasonCode::SUCCESS
            );
        }
        // Acknowledged once stored: a replica started now has them all when it is ready.
        let b = ready_replica(&nats, "b").await;
        for (i, topic) in topics.iter().enumerate() {
            let p = retained_now(&b, "reader", topic)
                .await
                .unwrap_or_else(|| panic!("{topic} is retained on b"));
            assert_eq!(p.topic.as_str(), *topic);
            assert_eq!(p.payload, format!("retained {i}").as_bytes());
        }
        let mut wild = subscriber(&b, "wild", &[("r/#", QoS::AtLeastOnce)]).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next(&mut wild).await.topic.as_str().to_owned());
        }
        got.sort();
        assert_eq!(got, ["r//", "r/1", "r/a.b/*/>/ /é"]);

        // Every replica stops; new ones read the messages back from JetStream.
        drop((publisher, wild));
        a.broker.shutdown().await;
        b.broker.shutdown().await;
        for id in ["a", "b"] {
            let again = ready_replica(&nats, id).await;
            for (i, topic) in topics.iter().enumerate() {
                let p = retained_now(&again, "reader", topic)
                    .await
                    .unwrap_or_else(|| panic!("{topic} is retained on {id} restarted"));
                assert_eq!(p.payload, format!("retained {i}").as_bytes());
            }
            again.broker.shutdown().await;
        }
    })
    .await
    .expect("within 90 seconds");
}

#[tokio::test]
async fn deleting_and_expiring_retained_messages_reach_every_replica() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let a = ready_replica(&nats, "a").await;
        let mut publisher = a.client("pub-a").await;
        assert_eq!(
            publish_retained(&mut publisher, "d/kept", b"kept", None).await,
            ReasonCode::SUCCESS
        );
        assert_eq!(
            publish_retained(&mut publisher, "d/gone", b"soon deleted", None).await,
            ReasonCode::SUCCESS
        );
        assert_eq!(
            publish_retained(&mut publisher, "d/expires", b"short-lived", Some(3)).await,
            ReasonCode::SUCCESS
        );
        let b = ready_replica(&nats, "b").await;
        await_retained(&b, "d/gone", Some(b"soon deleted")).await;
        let p = retained_now(&b, "reader", "d/expires")
            .await
            .expect("not expired yet");
        let left = p.properties.message_expiry_interval.expect("expiry kept");
        assert!((1..=3).contains(&left), "{left}");

        // An empty retained payload deletes it on every replica.
        assert_eq!(
            publish_retained(&mut publisher, "d/gone", b"", None).await,
            ReasonCode::SUCCESS
        );
        await_retained(&b, "d/gone", None).await;
        await_retained(&a, "d/gone", None).await;
        // The expired one is served by no replica, and is purged from the bucket.
        await_retained(&b, "d/expires", None).await;
        await_retained(&a, "d/expires", None).await;
        let js =
            async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.expect("NATS"));
        let kv = js
            .get_key_value("starling-retained-default")
            .await
            .expect("the tenant's bucket");
        tokio::time::timeout(WAIT, async {
            while kv.get("d.expires").await.expect("read").is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the expired value is purged");
        assert!(kv.get("d.gone").await.expect("read").is_none());
        assert!(
            kv.get("d.kept").await.expect("read").is_some(),
            "the others stay"
        );
        // A replica started now has only what is left.
        let c = ready_replica(&nats, "c").await;
        assert_eq!(
            retained_now(&c, "reader", "d/kept")
                .await
                .map(|p| p.payload),
            Some(bytes::Bytes::from_static(b"kept"))
        );
        for gone in ["d/gone", "d/expires"] {
            assert!(retained_now(&c, "reader", gone).await.is_none(), "{gone}");
        }
    })
    .await
    .expect("within 90 seconds");
}

/// JetStream takes QoS 1 messages but not retained ones (the tenant's bucket is sealed, as an
/// operator might do, so its writes fail): a retained QoS 1 publication is refused with 0x80
/// and a reason, and the replica keeps serving the retained message it had.
#[tokio::test]
async fn a_retained_qos1_publish_jetstream_does_not_store_is_refused_and_undone() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = ready_replica(&nats, "a").await;
        let mut publisher = a.client("pub-a").await;
        assert_eq!(
            publish_retained(&mut publisher, "kept", b"first", None).await,
            ReasonCode::SUCCESS
        );
        let js =
            async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.expect("NATS"));
        let mut stream = js
            .get_stream("KV_starling-retained-default")
            .await
            .expect("the tenant's bucket");
        let mut config = stream.cached_info().config.clone();
        config.sealed = true;
        js.update_stream(config).await.expect("the bucket sealed");
        assert!(stream.info().await.expect("info").config.sealed);

        let mut p = common::publish(
            "kept",
            QoS::AtLeastOnce,
            b"second",
            Some(publisher.next_id()),
        );
        p.retain = true;
        publisher.send(Packet::Publish(p)).await;
        match publisher.recv().await {
            Packet::PubAck(ack) => {
                assert_eq!(ack.reason, ReasonCode::UNSPECIFIED_ERROR, "{ack:?}");
                let why = ack.properties.reason_string.expect("a reason string");
                assert!(why.contains("retained message was not stored"), "{why}");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
        // What this replica serves went back to what JetStream holds.
        let p = retained_now(&a, "reader", "kept")
            .await
            .expect("still retained");
        assert_eq!(&p.payload[..], b"first");
        // Other QoS 1 messages are still taken.
        publish_ok(&mut publisher, "plain", QoS::AtLeastOnce, b"1").await;
    })
    .await
    .expect("within a minute");
}

/// A connection of `id` to `broker` whose session lasts an hour after it, resuming the
/// session unless `clean`.
async fn persistent(broker: &TestBroker, id: &str, clean: bool) -> (Raw, bool) {
    let mut c = broker.raw().await;
    let mut connect = common::connect_v5(id);
    connect.clean_start = clean;
    connect.properties.session_expiry_interval = Some(3600);
    let ack = c.connect(connect).await;
    assert_eq!(ack.reason, ReasonCode::SUCCESS, "{ack:?}");
    (c, ack.session_present)
}

/// Publishes `topic` at QoS 1 on `publisher` until `subscriber` gets it (its subscription's
/// consumer is set up in the background), acknowledging it.
async fn await_consumer(publisher: &mut Raw, subscriber: &mut Raw, topic: &str) {
    tokio::time::timeout(WAIT, async {
        loop {
            publish_ok(publisher, topic, QoS::AtLeastOnce, b"r").await;
            if let Ok(p) = tokio::time::timeout(Duration::from_millis(200), next(subscriber)).await
            {
                assert_eq!(p.topic.as_str(), topic);
                return;
            }
        }
    })
    .await
    .expect("the session's consumer reads");
}

/// A session of `id` on replica `a` (clean, kept an hour) subscribed to `filter`, and a client of
/// replica `b` whose QoS 1 publication on `ready` has reached it (the session's consumer reads).
async fn persistent_subscriber(
    a: &TestBroker,
    b: &TestBroker,
    id: &str,
    filter: &str,
    qos: QoS,
    ready: &str,
) -> (Raw, Raw) {
    let (mut sub, present) = persistent(a, id, true).await;
    assert!(!present);
    sub.subscribe(filter, sub_opts(qos)).await;
    let mut publisher = b.client("pub-b").await;
    await_consumer(&mut publisher, &mut sub, ready).await;
    (sub, publisher)
}

/// Reads `n` deliveries on `c`, acknowledging them, skipping late readiness probes.
async fn collect(c: &mut Raw, n: usize, skip: &str) -> Vec<(String, QoS, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = next(c).await;
        if p.topic.as_str() == skip {
            continue;
        }
        got.push((
            p.topic.to_string(),
            p.qos,
            String::from_utf8_lossy(&p.payload).into_owned(),
        ));
    }
    got
}

#[tokio::test]
async fn a_persistent_session_resumes_on_another_replica_with_every_message_it_missed() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let a = ready_replica(&nats, "a").await;
        let b = ready_replica(&nats, "b").await;
        let (mut sub, mut publisher) =
            persistent_subscriber(&a, &b, "keeper", "k/#", QoS::ExactlyOnce, "k/ready").await;

        // One QoS 1 message reaches the subscriber on a, which goes without acknowledging it.
        publish_ok(&mut publisher, "k/one", QoS::AtLeastOnce, b"0").await;
        let first = loop {
            match sub.recv().await {
                Packet::Publish(p) if p.topic.as_str() == "k/ready" => {
                    puback(&mut sub, p.packet_id.unwrap()).await
                }
                Packet::Publish(p) => break p,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        };
        assert_eq!(&first.payload[..], b"0");
        drop(sub);

        // Published while the session is offline, on both replicas, at QoS 1 and 2.
        const N: usize = 20;
        let mut on_a = a.client("pub-a").await;
        for i in 1..=N {
            publish_ok(
                &mut publisher,
                "k/one",
                QoS::AtLeastOnce,
                i.to_string().as_bytes(),
            )
            .await;
            publish_ok(
                &mut on_a,
                "k/two",
                QoS::ExactlyOnce,
                i.to_string().as_bytes(),
            )
            .await;
        }

        // Resumed on b: the session, its subscription, and every message it had not
        // acknowledged, in order per topic, once each.
        let (mut back, present) = persistent(&b, "keeper", false).await;
        assert!(present, "session_present=1 on another replica");
        let got = collect(&mut back, 2 * N + 1, "k/ready").await;
        let of = |topic: &str| -> Vec<String> {
            got.iter()
                .filter(|(t, ..)| t == topic)
                .map(|(_, _, p)| p.clone())
                .collect()
        };
        let expected_one: Vec<String> = (0..=N).map(|i| i.to_string()).collect();
        let expected_two: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
        assert_eq!(of("k/one"), expected_one, "{got:?}");
        assert_eq!(of("k/two"), expected_two, "{got:?}");
        assert!(
            got.iter()
                .all(|(t, q, _)| (t == "k/one") == (*q == QoS::AtLeastOnce)),
            "{got:?}"
        );
        // Nothing twice.
        loop {
            match tokio::time::timeout(Duration::from_millis(1500), back.recv()).await {
                Err(_) => break,
                Ok(Packet::PubRel(r)) => pubcomp(&mut back, r.packet_id).await,
                Ok(Packet::Publish(p)) if p.topic.as_str() == "k/ready" => {}
                Ok(other) => panic!("expected nothing more, got {other:?}"),
            }
        }
        // The subscription lives on b now: a message published on a reaches it there.
        publish_ok(&mut on_a, "k/after", QoS::AtLeastOnce, b"x").await;
        let p = next(&mut back).await;
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("k/after", &b"x"[..]));
        // Replica a let the session go (it gave back what it held, which b got above).
        assert!(a.broker.default_tenant.session("keeper").is_none());
    })
    .await
    .expect("within 90 seconds");
}

#[tokio::test]
async fn a_clean_start_on_another_replica_ends_the_session_kept_in_jetstream() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = ready_replica(&nats, "a").await;
        let b = ready_replica(&nats, "b").await;
        let (sub, mut publisher) =
            persistent_subscriber(&a, &b, "gone", "g/#", QoS::AtLeastOnce, "g/ready").await;
        drop(sub);
        publish_ok(&mut publisher, "g/x", QoS::AtLeastOnce, b"x").await;
        let (mut fresh, present) = persistent(&b, "gone", true).await;
        assert!(!present);
        fresh.expect_silence(Duration::from_millis(1500)).await;
        drop(fresh);
        // Nor does a later resumption on a find the old session: what it resumes is b's new
        // one, without the old subscription or the message queued for it.
        let (mut again, present) = persistent(&a, "gone", false).await;
        assert!(present, "the clean session of b is the one kept now");
        publish_ok(&mut publisher, "g/y", QoS::AtLeastOnce, b"y").await;
        again.expect_silence(Duration::from_millis(1500)).await;
    })
    .await
    .expect("within a minute");
}

#[tokio::test]
async fn a_qos_2_delivery_awaiting_pubcomp_moves_with_its_session_and_is_not_sent_again() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let a = ready_replica(&nats, "a").await;
        let b = ready_replica(&nats, "b").await;
        let (mut sub, mut publisher) =
            persistent_subscriber(&a, &b, "twice-never", "e/#", QoS::ExactlyOnce, "e/ready").await;
        publish_ok(&mut publisher, "e/once", QoS::ExactlyOnce, b"1").await;
        // Received and PUBREC'd on a; its PUBREL arrives; the client goes before PUBCOMP.
        let p = loop {
            let p = sub.recv_publish().await;
            if p.topic.as_str() == "e/once" {
                break p;
            }
        };
        let id = p.packet_id.unwrap();
        pubrec(&mut sub, id).await;
        loop {
            match sub.recv().await {
                Packet::PubRel(r) if r.packet_id == id => break,
                Packet::Publish(p) if p.topic.as_str() == "e/ready" => {}
                other => panic!("expected PUBREL, got {other:?}"),
            }
        }
        drop(sub);
        // On b: the PUBREL again, under the same packet id, and not the message.
        let (mut back, present) = persistent(&b, "twice-never", false).await;
        assert!(present);
        loop {
            match back.recv().await {
                Packet::PubRel(r) => {
                    assert_eq!(r.packet_id, id);
                    pubcomp(&mut back, id).await;
                    break;
                }
                Packet::Publish(p) if p.topic.as_str() == "e/ready" => {}
                other => panic!("expected PUBREL, got {other:?}"),
            }
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(2500), back.recv()).await {
                Err(_) => break,
                Ok(Packet::Publish(p)) if p.topic.as_str() == "e/ready" => {}
                Ok(other) => panic!("the message came twice: {other:?}"),
            }
        }
    })
    .await
    .expect("within 90 seconds");
}

/// The value of `metric` (a counter or gauge without labels) on `broker`'s `/metrics`.
async fn metric(broker: &TestBroker, metric: &str) -> f64 {
    let (_, body) = common::http_get(broker.broker.http, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{metric} in {body}"))
}

/// Publishers flooding a replica with QoS 0 faster than it can send to NATS are slowed down
/// (their sockets are not read while the queue to NATS is nearly full): every message is sent
/// on to the other replicas, none dropped at a full queue.
#[tokio::test]
async fn a_qos0_flood_is_slowed_to_what_nats_takes_not_dropped() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(120), async {
        let a = ready_replica(&nats, "a").await;
        const PUBLISHERS: usize = 4;
        const N: usize = 50_000;
        let mut flood = bytes::BytesMut::new();
        for i in 0..N {
            Packet::Publish(common::publish(
                "flood/x",
                QoS::AtMostOnce,
                i.to_string().as_bytes(),
                None,
            ))
            .encode(starling_codec::ProtocolVersion::V5, &mut flood)
            .expect("encodable");
        }
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let mut c = a.client(&format!("flood-{p}")).await;
            let flood = flood.clone();
            tasks.push(tokio::spawn(async move {
                c.send_bytes(&flood).await;
                c
            }));
        }
        let mut publishers = Vec::new();
        for t in tasks {
            publishers.push(t.await.expect("a publisher"));
        }
        let total = (PUBLISHERS * N) as f64;
        tokio::time::timeout(Duration::from_secs(90), async {
            while metric(&a, "starling_cluster_sent_total").await < total {
                let dropped = metric(&a, "starling_cluster_errors_total").await;
                assert_eq!(dropped, 0.0, "messages dropped at a full queue to NATS");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("every message is sent to NATS");
        assert_eq!(metric(&a, "starling_cluster_errors_total").await, 0.0);
        drop(publishers);
    })
    .await
    .expect("within two minutes");
}

/// A tenant removed from the directory (what the control plane's 410 Gone for a deleted broker
/// does, `control::follow`) has its retained-message bucket deleted from JetStream. The
/// directory is driven directly: a control plane is not needed to show what removal does.
#[tokio::test]
async fn a_deleted_tenants_retained_bucket_is_deleted() {
    use starling_broker::auth::directory::{Directory, TenantState};
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let metrics = Arc::new(starling_broker::metrics::Metrics::new());
        let stop = tokio_util::sync::CancellationToken::new();
        let config = starling_broker::cluster::ClusterConfig {
            nats: vec![nats.url.clone()],
            ..Default::default()
        };
        let link = starling_broker::cluster::link::Link::connect(
            &config,
            "a".into(),
            metrics.clone(),
            stop.clone(),
        )
        .await
        .expect("connected");
        let directory = Directory::new(
            starling_broker::config::Config::default().limits(),
            Default::default(),
            metrics,
            Default::default(),
            None,
        );
        directory.set_cluster(link.clone());
        let js =
            async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.expect("NATS"));
        let bucket = starling_broker::cluster::retained::bucket_name("gone-soon");
        let other = starling_broker::cluster::retained::bucket_name("stays");
        for tenant in ["gone-soon", "stays"] {
            directory
                .apply(tenant, &TenantState::default())
                .expect("a tenant");
        }
        // Their buckets are made once the tenants join the replicas; a retained message in one.
        let mut made = Vec::new();
        for name in [&bucket, &other] {
            made.push(
                tokio::time::timeout(WAIT, async {
                    loop {
                        if let Ok(kv) = js.get_key_value(name).await {
                            return kv;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await
                .expect("the tenant's bucket is made"),
            );
        }
        let kv = &made[0];
        kv.put("a.b", bytes::Bytes::from_static(b"x"))
            .await
            .expect("a value");

        assert!(directory.remove("gone-soon"));
        tokio::time::timeout(WAIT, async {
            while js.get_key_value(&bucket).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the deleted tenant's bucket is deleted");
        assert!(
            js.get_key_value(&other).await.is_ok(),
            "another tenant's bucket is left alone"
        );
        stop.cancel();
    })
    .await
    .expect("within a minute");
}

#[tokio::test]
async fn a_qos_2_message_received_and_not_released_moves_with_the_publishers_session() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = ready_replica(&nats, "a").await;
        let b = ready_replica(&nats, "b").await;
        let mut watch = subscriber(
            &b,
            "watch",
            &[("w/#", QoS::ExactlyOnce), ("probe/#", QoS::AtMostOnce)],
        )
        .await;
        let (mut publisher, _) = persistent(&a, "sender", true).await;
        await_link(&mut publisher, &mut watch).await;
        // PUBLISH, PUBREC; the publisher goes before its PUBREL.
        publisher
            .send(Packet::Publish(common::publish(
                "w/once",
                QoS::ExactlyOnce,
                b"1",
                Some(7),
            )))
            .await;
        match publisher.recv().await {
            Packet::PubRec(r) => assert_eq!((r.packet_id, r.reason), (7, ReasonCode::SUCCESS)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        drop(publisher);
        let p = next_not_probe(&mut watch).await;
        assert_eq!(&p.payload[..], b"1");
        // On b, the resent PUBLISH is answered and not delivered again; PUBREL completes it.
        let (mut back, present) = persistent(&b, "sender", false).await;
        assert!(present);
        let mut again = common::publish("w/once", QoS::ExactlyOnce, b"1", Some(7));
        again.dup = true;
        back.send(Packet::Publish(again)).await;
        match back.recv().await {
            Packet::PubRec(r) => assert_eq!((r.packet_id, r.reason), (7, ReasonCode::SUCCESS)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        back.send(Packet::PubRel(PubRel {
            packet_id: 7,
            reason: ReasonCode::SUCCESS,
            properties: Default::default(),
        }))
        .await;
        match back.recv().await {
            Packet::PubComp(c) => assert_eq!((c.packet_id, c.reason), (7, ReasonCode::SUCCESS)),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        loop {
            match tokio::time::timeout(Duration::from_millis(1500), watch.recv()).await {
                Err(_) => break,
                Ok(Packet::PubRel(r)) => pubcomp(&mut watch, r.packet_id).await,
                Ok(Packet::Publish(p)) if p.topic.as_str().starts_with("probe/") => {}
                Ok(other) => panic!("delivered twice: {other:?}"),
            }
        }
    })
    .await
    .expect("within a minute");
}

// === decentralized auth: an account per tenant, a user per broker ===

/// A NATS connection with `creds` and `inbox` whose server errors (permission violations)
/// come out of the receiver; requests wait at most `timeout`.
async fn nats_as(
    nats: &Nats,
    creds: &std::path::Path,
    inbox: &str,
    timeout: Duration,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_credentials_file(creds)
        .await
        .expect("a credentials file")
        .custom_inbox_prefix(inbox)
        .request_timeout(Some(timeout))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url.as_str())
        .await
        .expect("connected with the credentials");
    (client, rx)
}

/// Waits for the server to refuse `what` (`Publish` or `Subscription`) on `subject`.
async fn refused(
    errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    subject: &str,
) {
    let wanted = format!("Permissions Violation for {what} to \"{subject}\"");
    tokio::time::timeout(WAIT, async {
        loop {
            let e = errors.recv().await.expect("the connection lives");
            if e.contains(&wanted) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never refused: {wanted}"));
}

/// The NATS server configuration the operator writes for the chart's NATS, on a real server:
/// the operator's login publishes the accounts of two tenants; two replicas of one, logged in
/// as the user minted for it, work together (QoS 0 and 1 across replicas, retained, a session
/// resumed on the other replica); that user is refused every subject, stream, bucket and
/// inbox of the other tenant, whose account is out of its sight altogether.
#[tokio::test]
async fn a_brokers_own_nats_user_serves_its_tenant_across_replicas_and_touches_no_other() {
    use futures_util::TryStreamExt;
    use starling_broker::cluster::credentials::{
        Permissions, ServerKeys, inbox_prefix, now_secs, publish_account,
    };
    let keys = ServerKeys::generate();
    let dir = tempfile::tempdir().expect("a directory");
    let config = dir.path().join("nats.conf");
    let accounts = dir.path().join("accounts");
    std::fs::write(
        &config,
        keys.server_config(&accounts.display().to_string(), now_secs())
            .expect("the server configuration"),
    )
    .expect("written");
    let Some(nats) = Nats::start_with_config(&config) else {
        return;
    };
    let creds_of = |tenant: &str, name: &str, permissions: &Permissions| {
        let path = dir.path().join(format!("{name}.creds"));
        let creds = keys
            .user_creds(tenant, name, permissions, now_secs())
            .expect("credentials");
        std::fs::write(&path, creds).expect("written");
        path
    };
    let broker_of = |tenant: &str| {
        creds_of(
            tenant,
            tenant,
            &Permissions::for_tenants(&[tenant], &inbox_prefix(tenant)),
        )
    };
    // The test brokers' tenant is `default`; another broker's is `other`.
    let mine = broker_of("default");
    let theirs = broker_of("other");
    let (long, short) = (WAIT, Duration::from_millis(500));
    tokio::time::timeout(Duration::from_secs(120), async {
        // Without credentials, no way in.
        assert!(async_nats::connect(nats.url.as_str()).await.is_err());
        // The operator's login publishes the two tenants' accounts.
        let publisher_creds = dir.path().join("publisher.creds");
        std::fs::write(
            &publisher_creds,
            keys.publisher_creds(now_secs()).expect("credentials"),
        )
        .expect("written");
        let (publisher_nats, _) = nats_as(&nats, &publisher_creds, "_INBOX", long).await;
        for tenant in ["default", "other"] {
            publish_account(
                &publisher_nats,
                keys.account_jwt(tenant, now_secs()).expect("jwt"),
            )
            .await
            .expect("the account is published");
        }

        // (a) Two replicas of `default` logged in as its user: ready (streams set up, the
        // retained bucket read), messages at QoS 0 and 1 across, retained, a session resumed
        // on the other replica.
        let with_creds = |id: &'static str| {
            let (url, creds) = (nats.url.clone(), mine.clone());
            TestBroker::with(move |c| {
                c.cluster.nats = vec![url];
                c.cluster.replica_id = Some(id.to_owned());
                c.cluster.creds = Some(creds);
                c.cluster.inbox_prefix = Some(inbox_prefix("default"));
            })
        };
        let a = with_creds("a").await;
        let b = with_creds("b").await;
        let (mut publisher, _on_b) = carries_across(&a, &b, b"across").await;
        assert_eq!(
            publish_retained(&mut publisher, "t/kept", b"kept", None).await,
            ReasonCode::SUCCESS
        );
        await_retained(&b, "t/kept", Some(b"kept")).await;
        let (sub, mut from_b) =
            persistent_subscriber(&a, &b, "keeper", "k/#", QoS::AtLeastOnce, "k/ready").await;
        drop(sub);
        publish_ok(&mut from_b, "k/missed", QoS::AtLeastOnce, b"m").await;
        let (mut back, present) = persistent(&b, "keeper", false).await;
        assert!(present, "session_present=1 on the other replica");
        let got = collect(&mut back, 1, "k/ready").await;
        assert_eq!(
            got,
            [("k/missed".to_owned(), QoS::AtLeastOnce, "m".to_owned())]
        );

        // Tenant `other`, through its own user, has a stream with a message and a bucket.
        let (other, _) = nats_as(&nats, &theirs, &inbox_prefix("other"), long).await;
        let js_other = async_nats::jetstream::new(other);
        let stream = starling_broker::cluster::link::stream_name("other");
        js_other
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: starling_broker::cluster::subject::durable_subjects("other").to_vec(),
                ..Default::default()
            })
            .await
            .expect("the other tenant makes its stream");
        let bucket = starling_broker::cluster::retained::bucket_name("other");
        js_other
            .create_stream(async_nats::jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                ..Default::default()
            })
            .await
            .expect("the other tenant makes its bucket");
        js_other
            .publish("starling.other.dmsg.secret", "s".into())
            .await
            .expect("sent")
            .await
            .expect("stored");

        // (b) The user of `default` may touch none of it: the server refuses each attempt.
        let (x, mut errors) = nats_as(&nats, &mine, &inbox_prefix("default"), short).await;
        for subject in ["starling.other.msg.t", "starling.other.dmsg.t"] {
            x.publish(subject, "forged".into()).await.expect("sent");
            refused(&mut errors, "Publish", subject).await;
        }
        for subject in [
            "starling.other.>",
            "starling.>",
            "_INBOX_starling.other.>",
            "_INBOX.>",
            "$KV.>",
        ] {
            let _sub = x.subscribe(subject).await.expect("sent");
            refused(&mut errors, "Subscription", subject).await;
        }
        let js_x = async_nats::jetstream::ContextBuilder::new()
            .timeout(short)
            .build(x.clone());
        assert!(js_x.get_stream(&stream).await.is_err());
        refused(
            &mut errors,
            "Publish",
            &format!("$JS.API.STREAM.INFO.{stream}"),
        )
        .await;
        assert!(js_x.delete_stream(&stream).await.is_err());
        refused(
            &mut errors,
            "Publish",
            &format!("$JS.API.STREAM.DELETE.{stream}"),
        )
        .await;
        assert!(js_x.get_key_value(&bucket).await.is_err());
        refused(
            &mut errors,
            "Publish",
            &format!("$JS.API.STREAM.INFO.KV_{bucket}"),
        )
        .await;
        let forged = format!("$KV.{bucket}.forged");
        x.publish(forged.clone(), "f".into()).await.expect("sent");
        refused(&mut errors, "Publish", &forged).await;
        assert!(
            js_x.create_consumer_on_stream(
                async_nats::jetstream::consumer::pull::Config::default(),
                stream.as_str()
            )
            .await
            .is_err()
        );
        refused(
            &mut errors,
            "Publish",
            &format!("$JS.API.CONSUMER.CREATE.{stream}"),
        )
        .await;
        x.publish("starling-sessions.other.6b", "f".into())
            .await
            .expect("sent");
        refused(&mut errors, "Publish", "starling-sessions.other.6b").await;

        // The other tenant's data is untouched, and the user of `default` reaches its own.
        let mut s = js_other.get_stream(&stream).await.expect("its stream");
        assert_eq!(s.info().await.expect("info").state.messages, 1);
        let own = starling_broker::cluster::link::stream_name("default");
        assert!(js_x.get_stream(&own).await.is_ok());

        // Each tenant is an account of its own: even a user of `default` allowed every
        // subject (which no broker gets) sees no stream of `other`; in one shared account it
        // could have made a stream of its own sourcing the other tenant's.
        let everything = Permissions {
            publish: vec![">".into()],
            subscribe: vec![">".into()],
        };
        let wide = creds_of("default", "wide", &everything);
        let (w, _) = nats_as(&nats, &wide, "_INBOX", long).await;
        let js_w = async_nats::jetstream::new(w);
        let missing = js_w
            .get_stream(&stream)
            .await
            .expect_err("not in this account");
        assert!(missing.to_string().contains("not found"), "{missing}");
        let mut names: Vec<String> = js_w.stream_names().try_collect().await.expect("names");
        names.sort();
        assert_eq!(
            names,
            [
                "KV_starling-retained-default".to_owned(),
                own.clone(),
                format!("{own}_SESSIONS"),
            ]
        );
    })
    .await
    .expect("within two minutes");
}

/// Encoded QoS 0 PUBLISHes to send at once (so that the replica packs them into frames).
fn burst(messages: impl IntoIterator<Item = (String, String)>) -> bytes::BytesMut {
    let mut out = bytes::BytesMut::new();
    for (topic, payload) in messages {
        Packet::Publish(common::publish(
            &topic,
            QoS::AtMostOnce,
            payload.as_bytes(),
            None,
        ))
        .encode(starling_codec::ProtocolVersion::V5, &mut out)
        .expect("encodable");
    }
    out
}

/// A burst of QoS 0 messages from another replica arrives in frames of up to 256; a subscriber
/// that reads all it is sent, with room for about one frame in its queue, gets every message
/// in order: the replica lets the subscriber's connection write a frame's messages before it
/// takes the next frame (before, it went on with every frame NATS had handed over and dropped
/// what did not fit).
#[tokio::test]
async fn a_qos0_burst_from_another_replica_is_not_dropped_at_a_subscriber_that_keeps_up() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let a = ready_replica(&nats, "a").await;
        let url = nats.url.clone();
        let b = TestBroker::with(move |c| {
            c.cluster.nats = vec![url];
            c.cluster.replica_id = Some("b".into());
            c.limits.max_queued_messages = Some(300);
        })
        .await;
        await_readyz(&b, 200).await;
        let mut sub = subscriber(
            &b,
            "sub",
            &[("burst/#", QoS::AtMostOnce), ("probe/#", QoS::AtMostOnce)],
        )
        .await;
        let mut publisher = a.client("pub").await;
        await_link(&mut publisher, &mut sub).await;
        // Late probes are drained: one more probe round trip after the last one seen.
        while let Ok(p) = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await {
            assert!(
                matches!(p, Packet::Publish(_)),
                "expected PUBLISH, got {p:?}"
            );
        }

        const N: usize = 5_000;
        publisher
            .send_bytes(&burst(
                (0..N).map(|i| ("burst/x".to_owned(), i.to_string())),
            ))
            .await;
        for i in 0..N {
            let p = next_not_probe(&mut sub).await;
            assert_eq!(p.topic.as_str(), "burst/x");
            assert_eq!(
                std::str::from_utf8(&p.payload).unwrap(),
                i.to_string(),
                "in order, none dropped"
            );
        }
        // The series appears with the first drop.
        let (_, body) = common::http_get(b.broker.http, "/metrics").await;
        assert!(
            !body.contains("reason=\"queue_full\""),
            "nothing dropped at the full queue: {body}"
        );
    })
    .await
    .expect("within 90 s");
}

/// QoS 0 messages sent in a burst travel in frames: a shared group with members on two
/// replicas still gets each matching one once (the group's filter picks them out of the
/// frames), an ordinary subscriber on the other replica gets every one in order, interleaved
/// with QoS 1 messages of the same publisher, and a group whose only member is on the
/// publisher's replica gets every one too (its queue subscription is on the connection that
/// echoes).
#[tokio::test]
async fn batched_qos0_messages_reach_shared_groups_once_and_subscribers_in_order() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(90), async {
        let a = ready_replica(&nats, "a").await;
        let b = ready_replica(&nats, "b").await;
        let mut g_a = subscriber(&a, "g-a", &[("$share/g/s/+", QoS::AtMostOnce)]).await;
        let mut g_b = subscriber(&b, "g-b", &[("$share/g/s/+", QoS::AtMostOnce)]).await;
        let mut solo = subscriber(&a, "solo", &[("$share/solo/s/#", QoS::AtMostOnce)]).await;
        let mut watch = subscriber(
            &b,
            "watch",
            &[("#", QoS::AtLeastOnce), ("probe/#", QoS::AtMostOnce)],
        )
        .await;
        let mut publisher = a.client("pub").await;
        await_link(&mut publisher, &mut watch).await;
        await_stream(&mut publisher).await;
        // Both group members and the solo member are in their queue groups once each got a
        // probe (probes on their own topic, which the watcher skips).
        let (mut seen_a, mut seen_b, mut seen_solo) = (false, false, false);
        while !(seen_a && seen_b && seen_solo) {
            publisher.publish("s/probe", QoS::AtMostOnce, b"p").await;
            for (seen, c) in [
                (&mut seen_a, &mut g_a),
                (&mut seen_b, &mut g_b),
                (&mut seen_solo, &mut solo),
            ] {
                while let Ok(p) = tokio::time::timeout(Duration::from_millis(20), c.recv()).await {
                    let Packet::Publish(p) = p else {
                        panic!("expected PUBLISH, got {p:?}")
                    };
                    assert_eq!(p.topic.as_str(), "s/probe");
                    *seen = true;
                }
            }
        }
        // Drain the watcher's probes.
        while let Ok(p) = tokio::time::timeout(Duration::from_millis(300), watch.recv()).await {
            let Packet::Publish(p) = p else {
                panic!("expected PUBLISH, got {p:?}")
            };
            if p.qos == QoS::AtLeastOnce {
                puback(&mut watch, p.packet_id.unwrap()).await;
            }
        }

        // Rounds of a QoS 0 burst (matching the groups: s/data; not matching: other/x) and
        // one QoS 1 message, all from one publisher.
        const ROUNDS: usize = 5;
        const PER_ROUND: usize = 400;
        for r in 0..ROUNDS {
            let messages = (0..PER_ROUND).map(|i| {
                let n = r * PER_ROUND + i;
                let topic = if i % 3 == 0 { "other/x" } else { "s/data" };
                (topic.to_owned(), n.to_string())
            });
            publisher.send_bytes(&burst(messages)).await;
            publish_ok(
                &mut publisher,
                "q1/x",
                QoS::AtLeastOnce,
                format!("q{r}").as_bytes(),
            )
            .await;
        }
        let total = ROUNDS * PER_ROUND;
        let matching: Vec<usize> = (0..total).filter(|n| (n % PER_ROUND) % 3 != 0).collect();

        // The watcher on B: everything, in publication order.
        let mut expected: Vec<String> = Vec::new();
        for r in 0..ROUNDS {
            expected.extend((0..PER_ROUND).map(|i| (r * PER_ROUND + i).to_string()));
            expected.push(format!("q{r}"));
        }
        for want in &expected {
            let p = next_not_probe(&mut watch).await;
            assert_eq!(std::str::from_utf8(&p.payload).unwrap(), want, "in order");
        }

        // The solo group on A (the publisher's replica): every matching message.
        for &n in &matching {
            let p = next(&mut solo).await;
            assert_eq!(p.topic.as_str(), "s/data");
            assert_eq!(std::str::from_utf8(&p.payload).unwrap(), n.to_string());
        }

        // The group with two members: each matching message once, across both.
        let total_seen = Arc::new(AtomicUsize::new(0));
        let collect = |mut c: Raw, seen: Arc<AtomicUsize>, want: usize| {
            tokio::spawn(async move {
                let mut payloads = Vec::new();
                while seen.load(Ordering::SeqCst) < want {
                    let Ok(p) = tokio::time::timeout(Duration::from_millis(50), c.recv()).await
                    else {
                        continue;
                    };
                    let Packet::Publish(p) = p else {
                        panic!("expected PUBLISH, got {p:?}")
                    };
                    assert_eq!(p.topic.as_str(), "s/data", "only what the filter matches");
                    payloads.push(
                        std::str::from_utf8(&p.payload)
                            .unwrap()
                            .parse::<usize>()
                            .unwrap(),
                    );
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                (c, payloads)
            })
        };
        let task_a = collect(g_a, total_seen.clone(), matching.len());
        let task_b = collect(g_b, total_seen.clone(), matching.len());
        let (mut g_a, from_a) = task_a.await.unwrap();
        let (mut g_b, from_b) = task_b.await.unwrap();
        let mut got = vec![0u32; total];
        for &n in from_a.iter().chain(&from_b) {
            got[n] += 1;
        }
        for (n, &times) in got.iter().enumerate() {
            let want = u32::from(matching.contains(&n));
            assert_eq!(times, want, "message {n}");
        }
        // Each member's share is in publication order.
        for from in [&from_a, &from_b] {
            assert!(from.windows(2).all(|w| w[0] < w[1]), "in order: {from:?}");
        }
        for c in [&mut g_a, &mut g_b, &mut solo] {
            c.expect_silence(Duration::from_millis(300)).await;
        }
        let m = a.metrics().await;
        assert_eq!(
            common::metric(&m, "starling_cluster_errors_total"),
            0.0,
            "{m}"
        );
    })
    .await
    .expect("within 90 seconds");
}

/// Malformed frames on a tenant's batch subject (from any NATS client) are dropped and counted;
/// nothing panics, and well-formed messages still flow after them.
#[tokio::test]
async fn malformed_frames_are_dropped_and_counted() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = ready_replica(&nats, "a").await;
        let b = ready_replica(&nats, "b").await;
        let mut watch = subscriber(&b, "watch", &[("#", QoS::AtMostOnce)]).await;
        let mut publisher = a.client("pub").await;
        await_link(&mut publisher, &mut watch).await;
        let raw = async_nats::connect(nats.url.as_str()).await.expect("NATS");
        let subject = starling_broker::cluster::subject::batch_subject("default");
        let mut good = bytes::BytesMut::from(&[starling_broker::cluster::frame::VERSION, 0][..]);
        Packet::Publish(common::publish("m/ok", QoS::AtMostOnce, b"fine", None))
            .encode(starling_codec::ProtocolVersion::V5, &mut good)
            .expect("encodable");
        let good = good.to_vec();
        let bad: Vec<Vec<u8>> = vec![
            vec![],
            vec![starling_broker::cluster::frame::VERSION],
            vec![0x30, 0, 1, b'a'],
            vec![starling_broker::cluster::frame::VERSION, 7],
            good[..good.len() - 1].to_vec(),
            [&good[..], &[0]].concat(),
        ];
        let before = common::metric(&b.metrics().await, "starling_cluster_errors_total");
        for body in &bad {
            raw.publish(subject.clone(), bytes::Bytes::from(body.clone()))
                .await
                .expect("sent");
        }
        raw.publish(subject.clone(), bytes::Bytes::from(good.clone()))
            .await
            .expect("sent");
        raw.flush().await.expect("flushed");
        // The entry before the bytes left over is delivered (what precedes a malformed entry
        // is not held back), then the good frame's.
        let mut ok = 0;
        while ok < 2 {
            let p = next(&mut watch).await;
            if p.topic.as_str() == "m/ok" {
                assert_eq!(&p.payload[..], b"fine");
                ok += 1;
                continue;
            }
            assert!(p.topic.as_str().starts_with("probe/"), "{p:?}");
        }
        let after = common::metric(&b.metrics().await, "starling_cluster_errors_total");
        assert_eq!(
            after - before,
            bad.len() as f64,
            "each malformed frame counted"
        );
        watch.expect_silence(Duration::from_millis(300)).await;
    })
    .await
    .expect("within a minute");
}

/// Replica `id` that takes another for dead after 1 s unheard.
async fn quick_replica(nats: &Nats, id: &str) -> TestBroker {
    let url = nats.url.clone();
    let id = id.to_owned();
    let broker = TestBroker::with(move |c| {
        c.cluster.nats = vec![url];
        c.cluster.replica_id = Some(id);
        c.cluster.replica_timeout_secs = 1;
    })
    .await;
    await_readyz(&broker, 200).await;
    broker
}

#[tokio::test]
async fn a_delayed_will_of_a_replica_that_stopped_is_published_by_another_at_its_time_once() {
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let a = quick_replica(&nats, "a").await;
        let b = quick_replica(&nats, "b").await;
        let mut watcher = subscriber(
            &b,
            "watcher",
            &[("will/#", QoS::AtLeastOnce), ("probe/#", QoS::AtMostOnce)],
        )
        .await;
        let mut probe = a.client("probe").await;
        await_link(&mut probe, &mut watcher).await;
        drop(probe);
        let mut c = a.raw().await;
        let mut connect = common::connect_v5("delayed");
        connect.properties.session_expiry_interval = Some(60);
        connect.will = Some(starling_codec::Will {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "will/delayed".into(),
            payload: bytes::Bytes::from_static(b"gone"),
            properties: starling_codec::WillProperties {
                will_delay_interval: Some(2),
                ..Default::default()
            },
        });
        assert_eq!(c.connect(connect).await.reason, ReasonCode::SUCCESS);
        // A stops gracefully: the connection closes (0x8B), its will waits for its delay, and
        // A no longer runs its timer; B, told that A left, publishes it when it is due.
        let stopped = tokio::time::Instant::now();
        a.broker.shutdown().await;
        let will = next_not_probe(&mut watcher).await;
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            ("will/delayed", &b"gone"[..])
        );
        assert!(
            stopped.elapsed() >= Duration::from_millis(1500),
            "published before its delay: {:?}",
            stopped.elapsed()
        );
        // Once.
        watcher.expect_silence(Duration::from_millis(2500)).await;
    })
    .await
    .expect("within a minute");
}

/// A broker whose every listener takes tokens (what the operator runs) has no clients of the
/// default tenant, so the default tenant stays off NATS: ready (which waits for the streams and
/// buckets of every tenant joined) with none of its own made, where a broker without
/// authentication makes them.
#[tokio::test]
async fn a_broker_taking_only_tokens_keeps_the_default_tenant_off_nats() {
    use futures_util::TryStreamExt;
    let Some(nats) = Nats::start() else { return };
    tokio::time::timeout(Duration::from_secs(60), async {
        let js =
            async_nats::jetstream::new(async_nats::connect(nats.url.as_str()).await.expect("NATS"));
        let url = nats.url.clone();
        let tokens = TestBroker::with(move |c| {
            c.cluster.nats = vec![url];
            c.cluster.replica_id = Some("t".into());
            c.auth.mode = starling_broker::config::AuthMode::Token;
            // Tenants whose keys are embedded in the tokens (any key: none connects here).
            c.embedded_tenants = true;
        })
        .await;
        await_readyz(&tokens, 200).await;
        let names: Vec<String> = js.stream_names().try_collect().await.expect("names");
        assert!(names.is_empty(), "{names:?}");
        let open = ready_replica(&nats, "o").await;
        let mut names: Vec<String> = js.stream_names().try_collect().await.expect("names");
        names.sort();
        assert_eq!(
            names,
            [
                "KV_starling-retained-default",
                "STARLING_default",
                "STARLING_default_SESSIONS"
            ]
        );
        drop(open);
    })
    .await
    .expect("within a minute");
}

// === TLS to NATS ===

/// `[cluster]` over TLS on a real `nats-server` that wants a client certificate
/// (`verify: true`): two replicas given the servers' CA (`tls_ca`) and a client certificate
/// (`tls_cert`, `tls_key`) on `tls://` URLs turn ready and carry QoS 0 and QoS 1 (JetStream)
/// messages across; a replica trusting another CA, and one without a client certificate,
/// never get in and stay unready.
#[tokio::test]
async fn replicas_join_nats_over_tls_with_a_client_certificate_and_refuse_a_server_they_do_not_trust()
 {
    let pki = common::transport::Pki::new();
    let dir = tempfile::tempdir().expect("a directory");
    let clients = common::transport::client_pki(dir.path(), "nats");
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
            pki.files.cert, pki.files.key, clients.ca
        ),
    )
    .expect("written");
    let Some(nats) = Nats::start_with_config(&config) else {
        return;
    };
    let url = nats.url.replacen("nats://", "tls://", 1);
    let with_tls = |id: &'static str, ca: PathBuf, cert: Option<(PathBuf, PathBuf)>| {
        let url = url.clone();
        TestBroker::with(move |c| {
            c.cluster.nats = vec![url];
            c.cluster.replica_id = Some(id.to_owned());
            c.cluster.tls_ca = Some(ca);
            if let Some((cert, key)) = cert {
                c.cluster.tls_cert = Some(cert);
                c.cluster.tls_key = Some(key);
            }
        })
    };
    let client_cert = Some((clients.cert.clone(), clients.key.clone()));
    tokio::time::timeout(Duration::from_secs(90), async {
        // Started first, so they have had every chance to get in by the time the others are
        // ready: the CA of the client certificates does not sign the server's certificate.
        let untrusting = with_tls("c", clients.ca.clone(), client_cert.clone()).await;
        let anonymous = with_tls("d", pki.files.ca_cert.clone(), None).await;
        let a = with_tls("a", pki.files.ca_cert.clone(), client_cert.clone()).await;
        let b = with_tls("b", pki.files.ca_cert.clone(), client_cert.clone()).await;
        carries_across(&a, &b, b"over tls").await;
        for (who, broker) in [("untrusting", &untrusting), ("anonymous", &anonymous)] {
            let (status, _) = common::http_get(broker.broker.http, "/readyz").await;
            assert_eq!(status, 503, "the {who} replica is not in the cluster");
            let mut c = broker.client(&format!("{who}-pub")).await;
            assert_eq!(
                c.publish("t/x", QoS::AtLeastOnce, b"refused").await,
                Some(ReasonCode::UNSPECIFIED_ERROR),
                "the {who} replica refuses durable work"
            );
        }
    })
    .await
    .expect("within 90 s");
}
