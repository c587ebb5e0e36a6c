//! The harness of the rumqttc tests, one source for both of rumqttc's APIs: `rumqttc_client!()`
//! expands to a `Client` (a client whose event loop runs in its own task and forwards every
//! event through a channel, so a test waits for exact events and never sleeps; aborting the
//! task drops the socket without DISCONNECT), `options` and `connect`, written against the
//! names the test file imports: rumqttc's 3.1.1 API in `rumqttc_v311.rs`, its `v5` module in
//! `rumqttc_v5.rs` (`AsyncClient`, `MqttOptions`, `Event`, `Packet`, `Publish`, `ConnAck`,
//! `ConnectReturnCode`, `QoS`, `SubscribeReasonCode`).
#![allow(unused_macros, unused_imports)]

/// Runs a test body under an overall bound.
macro_rules! timed {
    ($body:expr) => {
        tokio::time::timeout(std::time::Duration::from_secs(30), $body)
            .await
            .expect("test timed out")
    };
}
pub(crate) use timed;

/// The client, `options` and `connect` (see the module documentation).
macro_rules! rumqttc_client {
    () => {
        /// Bound of every single wait; the whole test has its own bound too.
        const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

        /// A rumqttc client whose events arrive on a channel.
        struct Client {
            client: AsyncClient,
            events: mpsc::UnboundedReceiver<Result<Event, String>>,
            task: JoinHandle<()>,
        }

        fn options(b: &TestBroker, id: &str) -> MqttOptions {
            let addr = b.addr();
            let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
            o.set_keep_alive(Duration::from_secs(30));
            o
        }

        /// Connects and waits for CONNACK; panics unless it is a success.
        async fn connect(o: MqttOptions) -> (Client, ConnAck) {
            let (client, mut eventloop) = AsyncClient::new(o, 64);
            let (tx, events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    let ev = eventloop.poll().await;
                    let stop = ev.is_err();
                    if tx.send(ev.map_err(|e| e.to_string())).is_err() || stop {
                        return;
                    }
                }
            });
            let mut c = Client {
                client,
                events,
                task,
            };
            let ack = c
                .next_incoming(|p| match p {
                    Packet::ConnAck(a) => Some(a),
                    _ => None,
                })
                .await;
            assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
            (c, ack)
        }

        impl Client {
            /// The next incoming packet that `pick` accepts; other events are skipped.
            async fn next_incoming<T>(&mut self, mut pick: impl FnMut(Packet) -> Option<T>) -> T {
                let fut = async {
                    loop {
                        match self.events.recv().await {
                            Some(Ok(Event::Incoming(p))) => {
                                if let Some(t) = pick(p) {
                                    return t;
                                }
                            }
                            Some(Ok(Event::Outgoing(_))) => {}
                            Some(Err(e)) => panic!("client connection failed: {e}"),
                            None => panic!("client event loop ended"),
                        }
                    }
                };
                tokio::time::timeout(WAIT, fut)
                    .await
                    .expect("expected event in time")
            }

            async fn publish_msg(&mut self) -> Publish {
                self.next_incoming(|p| match p {
                    Packet::Publish(p) => Some(p),
                    _ => None,
                })
                .await
            }

            /// Asserts that no PUBLISH arrives within `d` (used only to check absence).
            async fn expect_no_publish(&mut self, d: Duration) {
                let r = tokio::time::timeout(d, async {
                    loop {
                        match self.events.recv().await {
                            Some(Ok(Event::Incoming(Packet::Publish(p)))) => return p,
                            Some(Ok(_)) => {}
                            Some(Err(e)) => panic!("client connection failed: {e}"),
                            None => std::future::pending::<()>().await,
                        }
                    }
                })
                .await;
                if let Ok(p) = r {
                    panic!("expected no PUBLISH, got {p:?}");
                }
            }

            async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
                self.client.subscribe(filter, qos).await.unwrap();
                self.suback().await
            }

            async fn suback(&mut self) -> Vec<SubscribeReasonCode> {
                self.next_incoming(|p| match p {
                    Packet::SubAck(a) => Some(a.return_codes),
                    _ => None,
                })
                .await
            }

            /// Publishes and waits for the end of the exchange (PUBACK for QoS 1, PUBCOMP for QoS 2).
            async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
                self.client
                    .publish(topic, qos, retain, Bytes::copy_from_slice(payload))
                    .await
                    .unwrap();
                self.acked(qos).await;
            }

            async fn acked(&mut self, qos: QoS) {
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        self.next_incoming(|p| matches!(p, Packet::PubAck(_)).then_some(()))
                            .await
                    }
                    QoS::ExactlyOnce => {
                        self.next_incoming(|p| matches!(p, Packet::PubComp(_)).then_some(()))
                            .await
                    }
                }
            }

            /// Sends DISCONNECT 0x00 and waits until the broker has closed the connection.
            async fn disconnect(mut self) {
                self.client.disconnect().await.unwrap();
                let fut = async {
                    loop {
                        match self.events.recv().await {
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => return,
                        }
                    }
                };
                tokio::time::timeout(WAIT, fut)
                    .await
                    .expect("the broker closes the connection after DISCONNECT");
            }

            /// Drops the connection without DISCONNECT.
            async fn kill(self) {
                self.task.abort();
                let _ = self.task.await;
            }
        }
    };
}
pub(crate) use rumqttc_client;
