//! The batches QoS 0 messages travel in between replicas.
//!
//! A replica sends the QoS 0 messages it publishes in a tenant, in publication order, packed into
//! NATS messages on the tenant's batch subject ([`super::subject::batch_subject`]) instead of one
//! NATS message each. The body of such a message, a *frame*, is:
//!
//! ```text
//! frame     = VERSION entry+
//! entry     = flags [publisher] packet
//! flags     = one byte: 0 (no publisher) or 1 (a publisher follows); any other value is malformed
//! publisher = length (u16, big-endian) and that many bytes of UTF-8: the publisher's client id
//! packet    = the MQTT 5.0 PUBLISH packet of the message (QoS 0; its Message Expiry Interval
//!             is the time the message had left when it was sent)
//! ```
//!
//! Decoding is strict: a frame that does not start with [`VERSION`], is empty after it, has an
//! entry cut short, a flags byte other than 0 or 1, a publisher that is not UTF-8, a packet that
//! is not a well-formed PUBLISH of QoS 0, or bytes left over, is malformed. Nothing here panics
//! on any input (a property test feeds it arbitrary bytes).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use starling_codec::{Decoder, Direction, Packet, ProtocolVersion, Publish, QoS};

use crate::message::Message;

/// The first byte of every frame (no MQTT packet starts with it, so a frame is never mistaken
/// for the bare PUBLISH packet of the per-topic form).
pub const VERSION: u8 = 0x01;
/// The largest MQTT packet read from a frame (an MQTT packet is at most 256 MiB).
const MAX_PACKET: u32 = 268_435_460;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed frame: {0}")]
pub struct Malformed(pub &'static str);

/// The PUBLISH that carries `message` to the other replicas at `qos` (packet id 1 above QoS 0,
/// which the receiver does not use), its Message Expiry Interval the time it has left; `None`
/// when it has expired.
pub(super) fn carried(message: &Message, qos: QoS) -> Option<Publish> {
    let mut properties = message.properties.clone();
    if let Some(at) = message.expires_at {
        let left = at.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        properties.message_expiry_interval =
            Some(u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX));
    }
    Some(Publish {
        dup: false,
        qos,
        retain: message.retain,
        topic: message.topic.clone(),
        packet_id: (qos != QoS::AtMostOnce).then_some(1),
        properties,
        payload: message.payload.clone(),
    })
}

/// The message `packet` carries from another replica (what [`carried`] made): one PUBLISH
/// on `topic` with nothing after it, published by `publisher`; its Message Expiry Interval
/// counts from now. `None` when it is anything else.
pub(super) fn uncarried(
    packet: &[u8],
    topic: &str,
    publisher: Option<Arc<str>>,
) -> Option<Message> {
    let mut decoder = Decoder::with_version(Direction::ToServer, ProtocolVersion::V5, MAX_PACKET);
    let mut buf = BytesMut::from(packet);
    let Ok(Some(Packet::Publish(p))) = decoder.decode(&mut buf) else {
        return None;
    };
    if !buf.is_empty() || p.topic.as_str() != topic {
        return None;
    }
    let expires_at = p
        .properties
        .message_expiry_interval
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(u64::from(s)));
    Some(Message::new(
        p.topic.as_str(),
        &p.payload,
        p.qos,
        p.retain,
        &p.properties,
        expires_at,
        publisher,
    ))
}

/// Appends `message` (QoS 0) to `out` as one entry; `false` (nothing appended) when it has
/// expired or cannot be encoded.
pub fn push_entry(out: &mut BytesMut, message: &Message) -> bool {
    let Some(publish) = carried(message, QoS::AtMostOnce) else {
        return false;
    };
    let packet = Packet::Publish(publish);
    let start = out.len();
    let publisher = message
        .publisher
        .as_deref()
        .and_then(|p| u16::try_from(p.len()).ok().map(|n| (p, n)));
    out.reserve(
        3 + publisher.map_or(0, |(p, _)| p.len()) + packet.encoded_len(ProtocolVersion::V5),
    );
    match publisher {
        Some((p, n)) => {
            out.put_u8(1);
            out.put_u16(n);
            out.put_slice(p.as_bytes());
        }
        None => out.put_u8(0),
    }
    if packet.encode(ProtocolVersion::V5, out).is_err() {
        out.truncate(start);
        return false;
    }
    true
}

/// One entry of a frame, read without decoding its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The publisher's client id.
    pub publisher: Option<&'a str>,
    /// The topic, as the packet says (checked again when the packet is decoded).
    pub topic: &'a str,
    /// The packet's RETAIN flag.
    pub retain: bool,
    /// The whole PUBLISH packet.
    pub packet: &'a [u8],
}

impl Entry<'_> {
    /// The message of this entry: its packet decoded and checked (a PUBLISH of QoS 0, with
    /// nothing after it).
    pub fn message(&self) -> Result<Message, Malformed> {
        let message = uncarried(
            self.packet,
            self.topic,
            self.publisher.map(Arc::<str>::from),
        )
        .ok_or(Malformed("not a PUBLISH packet"))?;
        if message.qos != QoS::AtMostOnce {
            return Err(Malformed("a batched message of QoS 1 or 2"));
        }
        Ok(message)
    }
}

/// The entries of `frame`, in order; an error ends them (what follows a malformed entry
/// cannot be found).
pub fn entries(frame: &[u8]) -> Result<Entries<'_>, Malformed> {
    match frame.split_first() {
        Some((&VERSION, rest)) if !rest.is_empty() => Ok(Entries { rest }),
        Some((&VERSION, _)) => Err(Malformed("no entries")),
        _ => Err(Malformed("unknown version")),
    }
}

/// The entries of a frame ([`entries`]).
#[derive(Debug)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let entry = read_entry(self.rest);
        match entry {
            Ok((entry, rest)) => {
                self.rest = rest;
                Some(Ok(entry))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn split(bytes: &[u8], n: usize) -> Result<(&[u8], &[u8]), Malformed> {
    if bytes.len() < n {
        return Err(Malformed("an entry is cut short"));
    }
    Ok(bytes.split_at(n))
}

fn read_entry(bytes: &[u8]) -> Result<(Entry<'_>, &[u8]), Malformed> {
    let (flags, rest) = split(bytes, 1)?;
    let (publisher, rest) = match flags[0] {
        0 => (None, rest),
        1 => {
            let (len, rest) = split(rest, 2)?;
            let (p, rest) = split(rest, usize::from(u16::from_be_bytes([len[0], len[1]])))?;
            let p = std::str::from_utf8(p).map_err(|_| Malformed("a publisher is not UTF-8"))?;
            (Some(p), rest)
        }
        _ => return Err(Malformed("unknown flags")),
    };
    let (publish, rest) = split_publish(rest)?;
    if publish.qos != 0 {
        return Err(Malformed("not a PUBLISH packet of QoS 0"));
    }
    Ok((
        Entry {
            publisher,
            topic: publish.topic,
            retain: publish.retain,
            packet: publish.packet,
        },
        rest,
    ))
}

/// What the start of a PUBLISH packet says, read without decoding the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishHead<'a> {
    /// The topic (checked again when the packet is decoded).
    pub topic: &'a str,
    /// The QoS bits of the fixed header.
    pub qos: u8,
    /// The RETAIN flag.
    pub retain: bool,
    /// The whole packet.
    pub packet: &'a [u8],
}

/// The PUBLISH packet at the start of `bytes` (its fixed header, remaining length and topic
/// checked, the rest not) and what follows it.
pub fn split_publish(bytes: &[u8]) -> Result<(PublishHead<'_>, &[u8]), Malformed> {
    // The fixed header: PUBLISH, then the remaining length (1 to 4 bytes).
    let (&first, after) = bytes
        .split_first()
        .ok_or(Malformed("an entry is cut short"))?;
    if first & 0xF0 != 0x30 {
        return Err(Malformed("not a PUBLISH packet"));
    }
    let mut remaining: usize = 0;
    let mut i = 0;
    loop {
        let &b = after.get(i).ok_or(Malformed("an entry is cut short"))?;
        remaining |= usize::from(b & 0x7F) << (7 * i);
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i == 4 {
            return Err(Malformed("a remaining length is too long"));
        }
    }
    let header = 1 + i;
    let (packet, rest) = split(bytes, header + remaining)?;
    let body = &packet[header..];
    let (len, body) = split(body, 2)?;
    let (topic, _) = split(body, usize::from(u16::from_be_bytes([len[0], len[1]])))?;
    let topic = std::str::from_utf8(topic).map_err(|_| Malformed("a topic is not UTF-8"))?;
    Ok((
        PublishHead {
            topic,
            qos: (first >> 1) & 3,
            retain: first & 1 == 1,
            packet,
        },
        rest,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use starling_codec::PublishProperties;

    fn message(topic: &str, payload: &[u8], publisher: Option<&str>) -> Message {
        let properties = PublishProperties {
            content_type: Some("text/plain".into()),
            ..PublishProperties::default()
        };
        Message::new(
            topic,
            payload,
            QoS::AtMostOnce,
            false,
            &properties,
            None,
            publisher.map(Arc::from),
        )
    }

    fn frame(messages: &[Message]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u8(VERSION);
        for m in messages {
            assert!(push_entry(&mut out, m));
        }
        out
    }

    fn decode_all(frame: &[u8]) -> Result<Vec<Message>, Malformed> {
        entries(frame)?.map(|e| e?.message()).collect()
    }

    #[test]
    fn messages_come_back_as_they_were_sent_in_order() {
        let sent = [
            message("a/b", b"one", Some("pub-1")),
            message("$SYS/x", b"", None),
            message("a//", &[0, 255, 7], Some("")),
            message("caf\u{e9}/x y", &vec![7; 300], Some("p\u{e9}")),
        ];
        let got = decode_all(&frame(&sent)).expect("well-formed");
        assert_eq!(got.len(), sent.len());
        for (s, g) in sent.iter().zip(&got) {
            assert_eq!(s.topic.as_str(), g.topic.as_str());
            assert_eq!(s.payload, g.payload);
            assert_eq!(s.publisher, g.publisher);
            assert_eq!(g.qos, QoS::AtMostOnce);
            assert_eq!(s.properties.content_type, g.properties.content_type);
        }
        let f = frame(&sent);
        let topics: Vec<_> = entries(&f)
            .expect("well-formed")
            .map(|e| e.expect("an entry").topic)
            .collect();
        assert_eq!(topics, ["a/b", "$SYS/x", "a//", "caf\u{e9}/x y"]);
    }

    #[test]
    fn the_time_left_travels_and_an_expired_message_does_not() {
        let mut m = message("a", b"x", None);
        m.expires_at = Some(tokio::time::Instant::now() + Duration::from_secs(30));
        let got = decode_all(&frame(&[m.clone()])).expect("well-formed");
        let left = got[0]
            .properties
            .message_expiry_interval
            .expect("an expiry");
        assert!((29..=30).contains(&left), "{left}");
        m.expires_at = Some(tokio::time::Instant::now());
        let mut out = BytesMut::new();
        assert!(!push_entry(&mut out, &m));
        assert!(out.is_empty());
    }

    #[test]
    fn malformed_frames_are_refused() {
        let good = frame(&[message("a/b", b"payload", Some("p"))]);
        assert!(decode_all(&good).is_ok());
        // Empty, an unknown version, no entries.
        assert!(decode_all(&[]).is_err());
        assert!(decode_all(&[0x30]).is_err());
        assert!(decode_all(&[VERSION]).is_err());
        // Cut short anywhere.
        for n in 1..good.len() {
            assert!(decode_all(&good[..n]).is_err(), "cut at {n}");
        }
        // Bytes left over after the last entry.
        let mut more = good.clone();
        more.put_u8(0);
        assert!(decode_all(&more).is_err());
        // Unknown flags.
        let mut flags = good.clone();
        flags[1] = 2;
        assert!(decode_all(&flags).is_err());
        // A publisher that is not UTF-8.
        let mut bad = good.clone();
        bad[4] = 0xFF;
        assert!(decode_all(&bad).is_err());
        // A QoS 1 PUBLISH.
        let mut qos1 = BytesMut::new();
        qos1.put_slice(&[VERSION, 0]);
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a".into(),
            packet_id: Some(1),
            properties: PublishProperties::default(),
            payload: bytes::Bytes::from_static(b"x"),
        })
        .encode(ProtocolVersion::V5, &mut qos1)
        .expect("encodable");
        assert!(decode_all(&qos1).is_err());
        // Another packet than PUBLISH.
        assert!(decode_all(&[VERSION, 0, 0xC0, 0]).is_err());
        // A topic with a wildcard, which no PUBLISH may carry.
        let mut wild = good.clone();
        let at = wild.iter().position(|&b| b == b'/').expect("the topic");
        wild[at] = b'+';
        assert!(decode_all(&wild).is_err());
    }

    proptest! {
        /// Arbitrary bytes never panic, whatever they hold.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_all(&bytes);
            let mut with_version = vec![VERSION];
            with_version.extend_from_slice(&bytes);
            let _ = decode_all(&with_version);
        }

        /// A good frame with one byte changed never panics.
        #[test]
        fn a_changed_byte_never_panics(at in 0usize..64, to in any::<u8>()) {
            let mut f = frame(&[message("a/b", b"payload", Some("p")), message("c", b"", None)]);
            let at = at % f.len();
            f[at] = to;
            let _ = decode_all(&f);
        }
    }
}
