//! Decode and encode throughput: PUBLISH with 64 B and 4 KiB payloads (5.0 and 3.1.1) and a
//! CONNECT with a will, credentials and properties. Criterion reports bytes per second from the
//! encoded packet size; packets per second is one over the time per iteration.
//!
//! `cargo bench -p starling-codec -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use starling_codec::{
    Connect, ConnectProperties, Decoder, Direction, MqttString, Packet, ProtocolVersion, Publish,
    QoS, Will, WillProperties,
};

fn publish(payload: usize) -> Packet {
    let mut p = Publish::new(
        "sensors/building-7/floor-3/temperature",
        vec![0xA5; payload],
    );
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(4242);
    p.properties.message_expiry_interval = Some(3600);
    p.properties.user_properties = vec![(MqttString::from("trace"), MqttString::from("abc123"))];
    Packet::Publish(p)
}

fn connect() -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttString::from("device-0123456789abcdef"),
        will: Some(Will {
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: MqttString::from("devices/device-0123456789abcdef/status"),
            payload: Bytes::from_static(b"offline"),
            properties: WillProperties {
                will_delay_interval: Some(30),
                ..WillProperties::default()
            },
        }),
        username: Some(MqttString::from("ignored")),
        password: Some(Bytes::from(vec![b'x'; 300])),
        properties: ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(100),
            maximum_packet_size: Some(65536),
            topic_alias_maximum: Some(10),
            ..ConnectProperties::default()
        },
    }))
}

fn bench_packet(c: &mut Criterion, name: &str, packet: &Packet, version: ProtocolVersion) {
    let mut encoded = BytesMut::new();
    packet.encode(version, &mut encoded).expect("encodes");
    let encoded = encoded.freeze();
    let len = encoded.len() as u64;
    let is_connect = matches!(packet, Packet::Connect(_));

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(len));
    group.bench_function("decode", |b| {
        b.iter_batched(
            || {
                let decoder = if is_connect {
                    Decoder::new(Direction::ToServer, 1 << 20)
                } else {
                    Decoder::with_version(Direction::ToServer, version, 1 << 20)
                };
                (decoder, BytesMut::from(&encoded[..]))
            },
            |(mut decoder, mut buf)| black_box(decoder.decode(&mut buf)),
            BatchSize::SmallInput,
        );
    });
    let mut out = BytesMut::with_capacity(encoded.len() * 2);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(packet.encode(version, &mut out))
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_packet(c, "publish_64B_v5", &publish(64), ProtocolVersion::V5);
    bench_packet(c, "publish_4KiB_v5", &publish(4096), ProtocolVersion::V5);
    bench_packet(
        c,
        "publish_64B_v3_1_1",
        &publish(64),
        ProtocolVersion::V3_1_1,
    );
    bench_packet(
        c,
        "publish_4KiB_v3_1_1",
        &publish(4096),
        ProtocolVersion::V3_1_1,
    );
    bench_packet(c, "connect_v5", &connect(), ProtocolVersion::V5);
}

criterion_group!(codec, benches);
criterion_main!(codec);
