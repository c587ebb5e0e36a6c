//! The clients the scenarios are written against: one [`Protocol`] for each of rumqttc's APIs
//! (3.1.1 at the crate's root, 5.0 in its `v5` module), so a scenario is written once and runs
//! on both, and a [`Client`] with the few operations the scenarios use.
//!
//! Each client's event loop runs in its own task and forwards every event to the test through a
//! channel ([`Events`]), so a test waits for exact events and never sleeps. Aborting that task
//! drops the socket without DISCONNECT: an abrupt client death.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
pub(crate) use rumqttc::QoS;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::common::{TestBroker, WAIT};

/// A PUBLISH as a subscriber received it, in either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Msg {
    pub(crate) topic: String,
    pub(crate) qos: QoS,
    pub(crate) payload: Vec<u8>,
    pub(crate) retain: bool,
    pub(crate) dup: bool,
    pub(crate) pkid: u16,
}

impl Msg {
    /// What the scenarios compare: topic, QoS, payload and RETAIN.
    pub(crate) fn summary(&self) -> (String, QoS, Vec<u8>, bool) {
        (
            self.topic.clone(),
            self.qos,
            self.payload.clone(),
            self.retain,
        )
    }
}

/// One protocol version: how a scenario's options and connection are made in it.
pub(crate) trait Protocol {
    type Options: Clone;
    type Client: Client;

    /// Options for client `id` against `b` (a clean session, keep-alive 30 s).
    fn options(b: &TestBroker, id: &str) -> Self::Options;
    /// The session outlives the connection (3.1.1: CleanSession 0; 5.0: a Session Expiry
    /// Interval of 300 s).
    fn keep_session(o: &mut Self::Options);
    /// The next connection resumes the kept session (5.0: Clean Start 0; 3.1.1: CleanSession
    /// 0 does both).
    fn resume(o: &mut Self::Options);
    /// A will, sent when the connection ends without DISCONNECT.
    fn will(o: &mut Self::Options, topic: &str, payload: &[u8], qos: QoS, retain: bool);
    /// The test acknowledges received messages itself ([`Client::ack`]).
    fn manual_acks(o: &mut Self::Options);
    /// Connects and waits for CONNACK, which must be a success; whether a session was present.
    fn connect(o: Self::Options) -> impl Future<Output = (Self::Client, bool)>;
}

/// A connected client.
pub(crate) trait Client {
    /// Subscribes and waits for SUBACK: the granted QoS of the filter, `None` for a failure.
    fn subscribe(&mut self, filter: &str, qos: QoS) -> impl Future<Output = Vec<Option<QoS>>>;
    /// Publishes and waits for the end of the exchange (PUBACK for QoS 1, PUBCOMP for QoS 2).
    fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: &[u8],
    ) -> impl Future<Output = ()>;
    /// The next PUBLISH.
    fn publish_msg(&mut self) -> impl Future<Output = Msg>;
    /// Waits for the broker's PUBREL (the client answered the PUBREC of a QoS 2 delivery).
    fn pubrel(&mut self) -> impl Future<Output = ()>;
    /// Acknowledges a received message (with [`Protocol::manual_acks`]).
    fn ack(&mut self, m: &Msg) -> impl Future<Output = ()>;
    /// Asserts that no PUBLISH arrives within `d` (used only to check absence).
    fn expect_no_publish(&mut self, d: Duration) -> impl Future<Output = ()>;
    /// Sends DISCONNECT 0x00 and waits until the broker has closed the connection.
    fn disconnect(self) -> impl Future<Output = ()>;
    /// Drops the connection without DISCONNECT.
    fn kill(self) -> impl Future<Output = ()>;
}

// === Events: a client's event loop in a task ===

/// rumqttc's event loop, in either API.
pub(crate) trait EventLoop: Send + 'static {
    type Event: Debug + Send + 'static;
    fn next(&mut self) -> impl Future<Output = Result<Self::Event, String>> + Send;
}

impl EventLoop for rumqttc::EventLoop {
    type Event = rumqttc::Event;
    async fn next(&mut self) -> Result<rumqttc::Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

impl EventLoop for rumqttc::v5::EventLoop {
    type Event = rumqttc::v5::Event;
    async fn next(&mut self) -> Result<rumqttc::v5::Event, String> {
        self.poll().await.map_err(|e| e.to_string())
    }
}

/// The events of a client's event loop, which runs in its own task until its connection fails.
pub(crate) struct Events<E> {
    rx: mpsc::UnboundedReceiver<Result<E, String>>,
    task: JoinHandle<()>,
}

impl<E: Debug + Send + 'static> Events<E> {
    pub(crate) fn spawn(mut eventloop: impl EventLoop<Event = E>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = eventloop.next().await;
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    return;
                }
            }
        });
        Events { rx, task }
    }

    /// The next event that `pick` accepts (others are skipped), within [`WAIT`]; panics when
    /// the connection fails first.
    pub(crate) async fn next<T>(&mut self, mut pick: impl FnMut(E) -> Option<T>) -> T {
        let fut = async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(ev)) => {
                        if let Some(t) = pick(ev) {
                            return t;
                        }
                    }
                    Some(Err(e)) => panic!("client connection failed: {e}"),
                    None => panic!("client event loop ended"),
                }
            }
        };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("expected event in time")
    }

    /// Asserts that no event `pick` accepts arrives within `d`.
    pub(crate) async fn none_within<T: Debug>(
        &mut self,
        d: Duration,
        mut pick: impl FnMut(E) -> Option<T>,
    ) {
        let r = tokio::time::timeout(d, async {
            loop {
                match self.rx.recv().await {
                    Some(Ok(ev)) => {
                        if let Some(t) = pick(ev) {
                            return t;
                        }
                    }
                    Some(Err(e)) => panic!("client connection failed: {e}"),
                    None => std::future::pending::<()>().await,
                }
            }
        })
        .await;
        if let Ok(t) = r {
            panic!("expected nothing, got {t:?}");
        }
    }

    /// Waits until the connection has ended.
    pub(crate) async fn closed(mut self) {
        let fut = async { while let Some(Ok(_)) = self.rx.recv().await {} };
        tokio::time::timeout(WAIT, fut)
            .await
            .expect("the broker closes the connection after DISCONNECT");
    }

    /// Ends the event loop: the socket is dropped without DISCONNECT.
    pub(crate) async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// === MQTT 3.1.1 ===

/// rumqttc's 3.1.1 API.
pub(crate) struct V311;

/// A 3.1.1 client.
pub(crate) struct V311Client {
    pub(crate) client: rumqttc::AsyncClient,
    events: Events<rumqttc::Event>,
}

impl V311Client {
    async fn incoming<T>(&mut self, mut pick: impl FnMut(rumqttc::Packet) -> Option<T>) -> T {
        self.events
            .next(|ev| match ev {
                rumqttc::Event::Incoming(p) => pick(p),
                rumqttc::Event::Outgoing(_) => None,
            })
            .await
    }
}

impl Protocol for V311 {
    type Options = rumqttc::MqttOptions;
    type Client = V311Client;

    fn options(b: &TestBroker, id: &str) -> rumqttc::MqttOptions {
        let addr = b.addr();
        let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    fn keep_session(o: &mut rumqttc::MqttOptions) {
        o.set_clean_session(false);
    }

    fn resume(_: &mut rumqttc::MqttOptions) {}

    fn will(o: &mut rumqttc::MqttOptions, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        o.set_last_will(rumqttc::LastWill::new(topic, payload.to_vec(), qos, retain));
    }

    fn manual_acks(o: &mut rumqttc::MqttOptions) {
        o.set_manual_acks(true);
    }

    async fn connect(o: rumqttc::MqttOptions) -> (V311Client, bool) {
        let (client, eventloop) = rumqttc::AsyncClient::new(o, 64);
        let mut c = V311Client {
            client,
            events: Events::spawn(eventloop),
        };
        let ack = c
            .incoming(|p| match p {
                rumqttc::Packet::ConnAck(a) => Some(a),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{ack:?}");
        (c, ack.session_present)
    }
}

impl Client for V311Client {
    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<Option<QoS>> {
        self.client.subscribe(filter, qos).await.unwrap();
        let codes = self
            .incoming(|p| match p {
                rumqttc::Packet::SubAck(a) => Some(a.return_codes),
                _ => None,
            })
            .await;
        codes
            .into_iter()
            .map(|c| match c {
                rumqttc::SubscribeReasonCode::Success(q) => Some(q),
                rumqttc::SubscribeReasonCode::Failure => None,
            })
            .collect()
    }

    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, Bytes::copy_from_slice(payload))
            .await
            .unwrap();
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.incoming(|p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()))
                    .await
            }
            QoS::ExactlyOnce => {
                self.incoming(|p| matches!(p, rumqttc::Packet::PubComp(_)).then_some(()))
                    .await
            }
        }
    }

    async fn publish_msg(&mut self) -> Msg {
        let p = self
            .incoming(|p| match p {
                rumqttc::Packet::Publish(p) => Some(p),
                _ => None,
            })
            .await;
        Msg {
            topic: p.topic,
            qos: p.qos,
            payload: p.payload.to_vec(),
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
        }
    }

    async fn pubrel(&mut self) {
        self.incoming(|p| matches!(p, rumqttc::Packet::PubRel(_)).then_some(()))
            .await
    }

    async fn ack(&mut self, m: &Msg) {
        let mut p = rumqttc::Publish::new(&m.topic, m.qos, m.payload.clone());
        p.pkid = m.pkid;
        self.client.ack(&p).await.unwrap();
    }

    async fn expect_no_publish(&mut self, d: Duration) {
        self.events
            .none_within(d, |ev| match ev {
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p),
                _ => None,
            })
            .await
    }

    async fn disconnect(self) {
        self.client.disconnect().await.unwrap();
        self.events.closed().await
    }

    async fn kill(self) {
        self.events.kill().await
    }
}

// === MQTT 5.0 ===

pub(crate) mod v5 {
    //! rumqttc's `v5` API, with what the 5.0-only tests use besides the scenarios.

    use std::time::Duration;

    use bytes::Bytes;
    pub(crate) use rumqttc::v5::mqttbytes::v5::{
        ConnAck, Filter, LastWill, LastWillProperties, Packet, Publish, PublishProperties,
        SubscribeProperties,
    };
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, SubscribeReasonCode};
    pub(crate) use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    use super::{Client, Events, Msg, Protocol, QoS};
    use crate::common::TestBroker;

    /// rumqttc's 5.0 API.
    pub(crate) struct V5;

    /// A 5.0 client.
    pub(crate) struct V5Client {
        pub(crate) client: AsyncClient,
        events: Events<Event>,
    }

    /// The scenarios' QoS as rumqttc's `v5` module spells it.
    pub(crate) fn qos(q: QoS) -> rumqttc::v5::mqttbytes::QoS {
        match q {
            QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
        }
    }

    fn from_v5(q: rumqttc::v5::mqttbytes::QoS) -> QoS {
        match q {
            rumqttc::v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
        }
    }

    /// A PUBLISH's topic as text.
    pub(crate) fn topic(p: &Publish) -> &str {
        std::str::from_utf8(&p.topic).unwrap()
    }

    /// A will with an optional Will Delay Interval.
    pub(crate) fn with_will(o: &mut MqttOptions, topic: &str, payload: &[u8], delay: Option<u32>) {
        o.set_last_will(LastWill::new(
            topic,
            payload.to_vec(),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            delay.map(|d| LastWillProperties {
                delay_interval: Some(d),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
        ));
    }

    impl V5Client {
        /// The next incoming packet that `pick` accepts; other events are skipped.
        pub(crate) async fn incoming<T>(&mut self, mut pick: impl FnMut(Packet) -> Option<T>) -> T {
            self.events
                .next(|ev| match ev {
                    Event::Incoming(p) => pick(p),
                    Event::Outgoing(_) => None,
                })
                .await
        }

        /// The next PUBLISH as rumqttc's `v5` module gives it (with its properties).
        pub(crate) async fn publish_v5(&mut self) -> Publish {
            self.incoming(|p| match p {
                Packet::Publish(p) => Some(p),
                _ => None,
            })
            .await
        }

        /// Waits for SUBACK.
        pub(crate) async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
            self.incoming(|p| match p {
                Packet::SubAck(a) => Some(a.return_codes),
                _ => None,
            })
            .await
        }

        /// Waits for the end of a publish exchange at `q`.
        pub(crate) async fn acked(&mut self, q: QoS) {
            match q {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.incoming(|p| matches!(p, Packet::PubAck(_)).then_some(()))
                        .await
                }
                QoS::ExactlyOnce => {
                    self.incoming(|p| matches!(p, Packet::PubComp(_)).then_some(()))
                        .await
                }
            }
        }

        /// Connects and waits for a successful CONNACK, which it returns.
        pub(crate) async fn connect_v5(o: MqttOptions) -> (V5Client, ConnAck) {
            let (client, eventloop) = AsyncClient::new(o, 64);
            let mut c = V5Client {
                client,
                events: Events::spawn(eventloop),
            };
            let ack = c
                .incoming(|p| match p {
                    Packet::ConnAck(a) => Some(a),
                    _ => None,
                })
                .await;
            assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
            (c, ack)
        }
    }

    impl Protocol for V5 {
        type Options = MqttOptions;
        type Client = V5Client;

        fn options(b: &TestBroker, id: &str) -> MqttOptions {
            let addr = b.addr();
            let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
            o.set_keep_alive(Duration::from_secs(30));
            o
        }

        fn keep_session(o: &mut MqttOptions) {
            o.set_session_expiry_interval(Some(300));
        }

        fn resume(o: &mut MqttOptions) {
            o.set_clean_start(false);
        }

        fn will(o: &mut MqttOptions, topic: &str, payload: &[u8], q: QoS, retain: bool) {
            o.set_last_will(LastWill::new(topic, payload.to_vec(), qos(q), retain, None));
        }

        fn manual_acks(o: &mut MqttOptions) {
            o.set_manual_acks(true);
        }

        async fn connect(o: MqttOptions) -> (V5Client, bool) {
            let (c, ack) = V5Client::connect_v5(o).await;
            (c, ack.session_present)
        }
    }

    impl Client for V5Client {
        async fn subscribe(&mut self, filter: &str, q: QoS) -> Vec<Option<QoS>> {
            self.client.subscribe(filter, qos(q)).await.unwrap();
            self.suback()
                .await
                .into_iter()
                .map(|c| match c {
                    SubscribeReasonCode::Success(q) => Some(from_v5(q)),
                    _ => None,
                })
                .collect()
        }

        async fn publish(&mut self, topic: &str, q: QoS, retain: bool, payload: &[u8]) {
            self.client
                .publish(topic, qos(q), retain, Bytes::copy_from_slice(payload))
                .await
                .unwrap();
            self.acked(q).await;
        }

        async fn publish_msg(&mut self) -> Msg {
            let p = self.publish_v5().await;
            Msg {
                topic: topic(&p).to_owned(),
                qos: from_v5(p.qos),
                payload: p.payload.to_vec(),
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
            }
        }

        async fn pubrel(&mut self) {
            self.incoming(|p| matches!(p, Packet::PubRel(_)).then_some(()))
                .await
        }

        async fn ack(&mut self, m: &Msg) {
            let mut p = Publish::new(&m.topic, qos(m.qos), m.payload.clone(), None);
            p.pkid = m.pkid;
            self.client.ack(&p).await.unwrap();
        }

        async fn expect_no_publish(&mut self, d: Duration) {
            self.events
                .none_within(d, |ev| match ev {
                    Event::Incoming(Packet::Publish(p)) => Some(p),
                    _ => None,
                })
                .await
        }

        async fn disconnect(self) {
            self.client.disconnect().await.unwrap();
            self.events.closed().await
        }

        async fn kill(self) {
            self.events.kill().await
        }
    }
}
